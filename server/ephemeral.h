/* Topic classes and the parts of ephemeral topics that are not a stream's
 * or an owner's own state (docs/PROTOCOL.md "Ephemeral topics").
 *
 * Classes: each shard compiles the config's [[topic_class]] patterns at
 * start, one server/policy.c trie per class (the one pattern matcher of
 * the daemon), and rb_topic_class_of answers the first class in file order
 * that matches a topic, or the default stored class. Callers classify a
 * topic once where they keep state for it (the owner's topic, the stream's
 * entry) and at publish intake.
 *
 * Content dedup (owner side): a per-shard table of RB_EPH_DEDUP_SLOTS
 * recent payload hashes (XXH3, seeded per process, keyed by topic and
 * payload) with their seq and expiry. It is a bounded cache: a payload is
 * recognised within its class's window unless RB_EPH_DEDUP_PROBES newer
 * entries displaced it.
 *
 * Echo: a block of a class with echo = false carries the publisher of each
 * item after its items (rb_eph_origin_*), so a stream can leave out its own
 * connection's messages.
 *
 * Used by one shard thread each; the classes are read-only after init. */
#ifndef RB_SERVER_EPHEMERAL_H
#define RB_SERVER_EPHEMERAL_H

#include <stdbool.h>
#include <stdint.h>

#include "common/frame.h"
#include "config/config.h"

typedef struct rb_shard rb_shard;
typedef struct rb_block rb_block;
typedef struct rb_subsystem rb_subsystem;

/* Content-dedup entries per shard (24 bytes each), allocated at start only
 * when some class has a dedup window. */
#define RB_EPH_DEDUP_SLOTS (64u * 1024u)
/* Slots one lookup or insert probes (linear), so a lookup is bounded. */
#define RB_EPH_DEDUP_PROBES 8u
/* Bytes of one item's origin in an echo = false block: u16 shard, u32
 * connection index, u32 generation. */
#define RB_EPH_ORIGIN_BYTES 10u

typedef struct rb_topic_class {
    uint32_t index; /* 1 + its position in the config; 0 = the default class */
    bool ephemeral;
    bool echo;
    uint32_t dedup_window_ms;   /* ephemeral: content window (0 = off); stored: key window */
    uint32_t max_message_bytes; /* 0 = what max_frame_bytes allows */
} rb_topic_class;

/* The subsystem: compiles the classes and owns the dedup table. */
extern const rb_subsystem rb_ephemeral_subsystem;

/* The class of topic (a valid topic name): never NULL, valid while the
 * shard runs. Cost: one trie walk per class until one matches. */
const rb_topic_class *rb_topic_class_of(const rb_shard *sh, rb_bytes topic);

/* The seq before the first one of an ephemeral topic first used now:
 * the wall-clock millisecond << RB_EPH_SEQ_BASE_SHIFT. */
uint64_t rb_eph_seq_base(void);

/* Content dedup of an ephemeral publish of topic (by its hash) within
 * window_ms: returns the seq of an earlier publish of the same payload
 * still in its window, or 0 when there is none. */
uint64_t rb_eph_dedup_find(rb_shard *sh, uint64_t topic_hash, rb_bytes payload, uint32_t window_ms);

/* Remembers that payload was published to the topic as seq (evicting the
 * entry that expires first among the probed ones when all are live). */
void rb_eph_dedup_put(rb_shard *sh, uint64_t topic_hash, rb_bytes payload, uint64_t seq,
                      uint32_t window_ms);

/* Writes the origin of item i (shard, connection index, generation) into
 * the origin area of an echo = false block (after its item bytes). */
void rb_eph_origin_put(rb_block *b, uint32_t i, uint16_t shard, uint32_t conn_index,
                       uint32_t conn_gen);

/* True when item i of an echo = false block came from that connection. */
bool rb_eph_origin_is(const rb_block *b, uint32_t i, uint16_t shard, uint32_t conn_index,
                      uint32_t conn_gen);

#endif
