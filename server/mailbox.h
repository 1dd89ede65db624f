/* The mailbox of a shard (DESIGN §2 "Thread per core, shared nothing"):
 * envelopes (rb_xmsg) of encoded records, shared reference-counted blocks of
 * encoded MESSAGES items, the bounded single-producer queues between shards,
 * and a kind -> handler table that subsystems register into. It leaves the
 * meaning of every kind to the subsystem that registered it, and waking the
 * receiving shard's loop to the wake callback it is given.
 *
 * Order: everything one mailbox sends to one destination (records via
 * reserve/commit and whole envelopes via rb_mailbox_send) arrives there in
 * the order it was written. A full queue never refuses or drops an
 * envelope: it waits, in order, in the destination's backlog (linked
 * through the envelopes, so bounded by the envelope pool), and producers
 * read rb_mailbox_backlog to hold back new work.
 *
 * Threading: a mailbox is used by its shard's thread alone; envelopes and
 * blocks cross to other threads only through the queues, and go back to
 * their home pool wherever their last user lets go. */
#ifndef RB_SERVER_MAILBOX_H
#define RB_SERVER_MAILBOX_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/err.h"
#include "common/limits.h"
#include "common/queue.h"
#include "server/freelist.h"

typedef struct rb_mailbox rb_mailbox;
typedef struct rb_block rb_block;
typedef struct rb_xmsg rb_xmsg;

/* An immutable, reference-counted block of encoded MESSAGES items of one
 * topic, shared by every shard and stream it fans out to. Blocks come in
 * size classes (a small batch does not pin a max_frame_bytes block); it
 * goes back to its home shard's free list when the last reference drops. */
struct rb_block {
    atomic_uint refs;
    rb_freelist *home;
    uint64_t first_seq;
    uint64_t last_seq;
    uint32_t count;
    uint32_t bytes; /* item bytes used in data */
    uint32_t cap;
    uint8_t topic_len;
    char topic[RB_TOPIC_BYTES_MAX + 1];
    uint8_t *data; /* points at the bytes after this header */
    /* the producing owner's, before the block is shared */
    rb_block *seq_next;
    uint64_t fan_left[RB_SHARDS_MAX / 64];
    /* the committing owner's: its forward list to cluster peers, and the
     * peers (by index) the block has not been handed to yet */
    rb_block *fwd_next;
    uint32_t peer_left;
};

/* Kinds of envelopes. Each kind has exactly one handler per shard,
 * registered by the subsystem that owns it (rb_mailbox_register). */
enum {
    RB_XK_PUBLISH = 1,      /* publish intake -> owner: publishes of owned topics */
    RB_XK_ACK = 2,          /* owner -> publish intake: acks and errors of publishes */
    RB_XK_INTEREST = 3,     /* streams -> owner: subscribe, unsubscribe, head queries */
    RB_XK_HEAD = 4,         /* owner -> streams: head replies to interest records */
    RB_XK_BLOCK = 5,        /* owner -> streams: ptr is a committed block to fan out */
    RB_XK_QUIC_DGRAM = 6,   /* QUIC endpoint -> QUIC endpoint: datagrams for the
                             * receiver's connections (server/quic_ep.c) */
    RB_XK_RPC = 7,          /* RPC records between callers, the directory and
                             * responders (server/rpc.c) */
    RB_XK_CLUSTER = 8,      /* owners and the acceptor -> the shards that hold replica
                             * links: local interest, adopted links (server/cluster.c) */
    RB_XK_PEER_TOPIC = 9,   /* link shards -> owners: a peer's interest, a peer's link
                             * reset (server/owner.c) */
    RB_XK_REPLICA_OUT = 10, /* owner -> link shard: ptr is a committed block for the
                             * peer whose index is in count (bare) */
    RB_XK_REPLICA_IN = 11,  /* link shard -> owner: ptr is a block a peer committed */
};

/* An envelope: a kind and records encoded back to back in data (or, for
 * RB_XK_BLOCK, a block in ptr). The receiver's handler owns it and gives it
 * back with rb_xmsg_put when done (it may keep it across turns). */
struct rb_xmsg {
    rb_xmsg *next; /* backlog link while waiting for a queue slot */
    uint16_t kind;
    uint16_t from_shard;
    uint8_t mark;     /* free for the receiver's use; 0 when sent */
    uint32_t count;   /* records in data */
    uint32_t pending; /* records not yet finished by the receiver */
    rb_freelist *home;
    rb_block *ptr;  /* RB_XK_BLOCK's block, or the large buffer behind data */
    uint32_t bytes; /* used bytes of data */
    uint32_t cap;
    uint8_t *data; /* encoded records, cap bytes */
};

/* A handler of one kind: runs on the receiving shard's thread and owns m. */
typedef void rb_mail_fn(void *ctx, rb_xmsg *m);

/* Wakes shard `to` (its loop), which has new envelopes queued. Returns
 * false when the wake could not be posted (retried at the next flush). */
typedef bool rb_mail_wake_fn(void *ctx, uint32_t to);

typedef struct rb_mail_lane rb_mail_lane;

struct rb_mailbox {
    uint32_t id;
    uint32_t count;
    rb_mailbox *const *all; /* [count], every shard's mailbox (not owned) */
    rb_spsc *inbox;         /* [count], inbox[i] is produced by mailbox i */
    rb_mail_lane *lanes;    /* [count], what this mailbox sends to each */
    bool self_pending;      /* this mailbox queued envelopes to itself */
    bool inbox_left;        /* the last drain stopped at its bound */
    rb_mail_wake_fn *wake;
    void *wake_ctx;
    uint32_t block_bytes; /* data bytes of the largest block class */
    uint32_t block_class_count;
    uint32_t block_caps[RB_BLOCK_CLASSES_MAX];
    rb_freelist_budget block_budget;
    rb_freelist xmsg_pool;
    rb_freelist bare_pool;
    rb_freelist blocks[RB_BLOCK_CLASSES_MAX];
    struct {
        rb_mail_fn *fn;
        void *ctx;
    } handlers[RB_MAIL_KINDS_MAX];
};

typedef struct rb_mailbox_options {
    uint32_t id;            /* this shard's index in all */
    uint32_t count;         /* shards */
    rb_mailbox *const *all; /* [count], kept; entries need not be initialized yet */
    uint32_t queue_slots;   /* per (producer, consumer) pair, a power of two */
    uint32_t xmsg_max;      /* envelopes this mailbox may have out at once */
    uint32_t bare_max;      /* envelopes without data (a block in ptr) */
    uint32_t home;          /* rb_freelist home of the shard's thread (0 in tests) */
    uint64_t block_budget;  /* bytes all this mailbox's blocks may take */
    uint32_t block_bytes;   /* data bytes of the largest block (max_frame_bytes) */
    rb_mail_wake_fn *wake;
    void *wake_ctx;
} rb_mailbox_options;

/* Sets up the queues, pools and an empty handler table. On failure what was
 * set up is undone. */
int rb_mailbox_init(rb_mailbox *mb, const rb_mailbox_options *opt, rb_err *err);

/* Gives back every envelope still queued to this mailbox or held in its
 * outboxes and backlogs. Call it for every mailbox (all threads stopped)
 * before any rb_mailbox_deinit: envelopes go back to other mailboxes' pools. */
void rb_mailbox_discard(rb_mailbox *mb);

/* Frees the queues and pools; every envelope and block must be back. */
void rb_mailbox_deinit(rb_mailbox *mb);

/* Registers the handler of `kind` (asserts it had none). */
void rb_mailbox_register(rb_mailbox *mb, uint16_t kind, rb_mail_fn *fn, void *ctx);

/* An empty envelope from this mailbox's pool, or NULL when the pool is dry. */
rb_xmsg *rb_mailbox_xmsg(rb_mailbox *mb);

/* An envelope without record space (cap 0) for a block in ptr, from this
 * mailbox's pool of them, or NULL. */
rb_xmsg *rb_mailbox_xmsg_bare(rb_mailbox *mb);

/* Gives an envelope back to its home pool, with the block it holds. */
void rb_xmsg_put(rb_xmsg *m);

/* An empty block with refs 1 and room for at least `bytes` (at most the
 * largest class), from the smallest class that has one, or NULL when the
 * block budget is spent and no class large enough has a free block. */
rb_block *rb_mailbox_block(rb_mailbox *mb, size_t bytes);
void rb_block_ref(rb_block *b);
void rb_block_unref(rb_block *b);

/* Queues envelope m (owned by the mailbox from now on) for shard `to`,
 * after every record already written for `to`. Never fails: a full queue
 * keeps it in the backlog. Sent at the next rb_mailbox_flush. */
void rb_mailbox_send(rb_mailbox *mb, uint32_t to, rb_xmsg *m);

/* Space for a record of len bytes in the envelope of `kind` being filled for
 * shard `to`; an envelope of another kind or without room is queued first.
 * A record larger than an envelope gets a block-sized envelope of its own.
 * NULL when no envelope (or block) can be had, or len exceeds a block: the
 * caller holds the work back or refuses it. */
uint8_t *rb_mailbox_reserve(rb_mailbox *mb, uint32_t to, uint16_t kind, size_t len);

/* Commits len bytes of the record reserved last for `to`. */
void rb_mailbox_commit(rb_mailbox *mb, uint32_t to, size_t len);

/* Envelopes waiting for a slot in the queue to `to`. */
uint32_t rb_mailbox_backlog(const rb_mailbox *mb, uint32_t to);

/* End of turn: queues the envelopes being filled, pushes backlogs in order
 * and wakes the shards that got something. */
void rb_mailbox_flush(rb_mailbox *mb);

/* Runs the handlers of envelopes queued to this mailbox, a bounded number
 * per producer so one busy producer cannot starve the others. */
void rb_mailbox_drain(rb_mailbox *mb);

/* How long the shard may sleep waiting for events, given that it would
 * sleep idle_ms: 0 when it sent envelopes to itself or a drain stopped at
 * its bound, 1 while a backlog waits for queue slots (the consumer does
 * not wake the producer when it frees them), else idle_ms. */
int rb_mailbox_wait_ms(rb_mailbox *mb, int idle_ms);

/* In-process record fields (native byte order; records never leave the
 * process). */
static inline uint8_t *rb_rec_put(uint8_t *p, const void *v, size_t n)
{
    if (n == 0) {
        return p;
    }
    memcpy(p, v, n);
    return p + n;
}

static inline const uint8_t *rb_rec_get(const uint8_t *p, void *v, size_t n)
{
    memcpy(v, p, n);
    return p + n;
}

#endif
