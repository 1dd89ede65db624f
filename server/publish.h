/* Publish intake and acks (DESIGN §2 "Topic owners", §5a: policy is checked
 * at publish intake). On the connection's shard the intake validates a
 * PUBLISH once (topic, size, the connection's in-flight bound), hashes the
 * topic once and writes one record for the topic's owner shard; the owner
 * decodes those records with rb_publish_next and answers each publish
 * exactly once with rb_publish_ack, which brings PUBLISH_ACK or ERROR back
 * to the connection. The owner never sees a connection.
 *
 * An ack is never dropped for lack of an envelope: it goes in an envelope
 * of the owner's when one can be had, else it is written over the publish
 * record it answers (the record is no longer needed once committed) and
 * the publish's own envelope carries it home. That envelope is the credit
 * every publish brings with it, so acks need nothing that publishes could
 * have used up.
 *
 * Reply addresses name a request's origin (shard, connection slot and
 * generation, correlation id) for any subsystem that answers on another
 * shard; a reply to a connection that went away finds nothing. */
#ifndef RB_SERVER_PUBLISH_H
#define RB_SERVER_PUBLISH_H

#include <stdint.h>

#include "common/frame.h"
#include "server/mailbox.h"

typedef struct rb_shard rb_shard;
typedef struct rb_conn rb_conn;
typedef struct rb_subsystem rb_subsystem;

/* Where an answer goes: shard, connection slot, its generation (stale
 * answers are dropped) and the request's correlation id. */
typedef struct rb_reply_addr {
    uint16_t shard;
    uint32_t conn_index;
    uint32_t conn_gen;
    uint64_t corr;
} rb_reply_addr;

/* The reply address of a request with correlation id corr on c. */
rb_reply_addr rb_reply_addr_of(const rb_conn *c, uint64_t corr);

/* The live connection a reply address names on shard sh (which must be
 * addr->shard), or NULL when it closed or its slot was reused. */
rb_conn *rb_reply_conn(rb_shard *sh, const rb_reply_addr *addr);

/* For the frame handler of any subsystem whose frame found every shard
 * envelope out (c is open): c is paused like a publisher short of
 * envelopes. The session keeps the frame and stops reading c, and the
 * frame is handled again, in FIFO order with the paused publishers, once
 * envelopes come back. The handler must have changed nothing for it. */
void rb_publish_wait_for_envelope(rb_conn *c);

/* Why a publish failed, sent as the ERROR's message by the intake. */
typedef enum rb_publish_reason {
    RB_PUBLISH_OK = 0,
    RB_PUBLISH_STORAGE_UNAVAILABLE, /* the append failed: not committed */
    RB_PUBLISH_STORAGE_REFUSED,     /* storage refused to start the append */
    RB_PUBLISH_TOPIC_LIMIT,         /* the owner shard owns RB_OWNER_TOPICS_MAX topics */
    RB_PUBLISH_BATCH_LIMIT,         /* the owner shard has RB_OWNER_BATCHES_MAX batches */
    RB_PUBLISH_DEDUP_TOPIC_FULL,    /* the topic holds RB_DEDUP_KEYS_PER_TOPIC_MAX keys */
    RB_PUBLISH_DEDUP_TOTAL_FULL,    /* the owner shard holds RB_DEDUP_KEYS_MAX keys */
    RB_PUBLISH_REASON_COUNT
} rb_publish_reason;

/* One publish as its owner sees it: topic and payload point into the
 * envelope it came in, valid until its ack. */
typedef struct rb_publish {
    rb_reply_addr reply;
    uint64_t topic_hash;
    rb_bytes topic;
    rb_bytes key; /* the idempotency key; len 0 = none */
    rb_bytes payload;
    rb_xmsg *src;  /* the envelope, held until every publish in it is acked */
    uint8_t *slot; /* its record in src */
} rb_publish;

/* The subsystem: registers the RB_XK_ACK handler and takes the sessions'
 * PUBLISH frames (rb_session_take_frames). A refused publish is answered
 * with ERROR; otherwise the ack follows when the owner has committed it. */
extern const rb_subsystem rb_publish_subsystem;

/* Owner side. A PUBLISH envelope m is held from rb_publish_begin until
 * rb_publish_end and the ack of each of its publishes, whichever is last;
 * in between, rb_publish_next decodes its records in order (false after
 * the last). */
void rb_publish_begin(rb_xmsg *m);
bool rb_publish_next(rb_xmsg *m, const uint8_t **cursor, rb_publish *out);
void rb_publish_end(rb_shard *sh, rb_xmsg *m);

/* Answers pub (exactly once per publish): seq when code is RB_WIRE_OK,
 * else code and reason; flags (RB_ACK_*) go into the PUBLISH_ACK. Never
 * fails; pub's topic, key and payload are invalid afterwards. sh is the
 * owner's shard. */
void rb_publish_ack(rb_shard *sh, const rb_publish *pub, uint64_t seq, uint16_t code,
                    rb_publish_reason reason, uint8_t flags);

#endif
