/* Topic owners (DESIGN §2): a topic is owned by shard hash(topic) % shards.
 * The owner is the only appender of its topics on this node: it batches the
 * publishes that reach it from every shard's intake (group commit: all that
 * arrive while an append is in flight go in the next one), learns the seq
 * range at commit, acks the publishers (server/publish.c carries the acks)
 * and fans each committed batch out once per interested shard as one
 * shared, reference-counted block. It also keeps which shards have live
 * subscribers per topic and answers their head queries (the ceiling of the
 * live gate).
 *
 * Nothing committed is dropped for lack of memory: committed batches wait,
 * in commit order, until their block and envelopes can be had, and while
 * they wait (or a subscribing shard's queue is backed up) no new append
 * starts, so publishers see their acks slow down instead. Head replies that
 * find no envelope are retried the same way. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/hash.h"
#include "common/log.h"
#include "server/ephemeral.h"
#include "server/interest.h"
#include "server/publish.h"
#include "server/seq.h"
#include "server/server.h"

/* Head record: conn index, gen, token, head, status, topic len, topic. */
#define HEAD_REC_FIXED (4 + 4 + 8 + 8 + 4 + 1)

/* Where a batched publish came from: its envelope and record, enough to
 * decode it again for the ack. */
typedef struct pub_ref {
    rb_xmsg *src;
    uint8_t *slot;
} pub_ref;

typedef struct rb_topic rb_topic;
typedef struct dedup_ent dedup_ent;

/* A retry of a key whose first publish is not committed yet: answered
 * with that publish's outcome. */
typedef struct dedup_wait {
    struct dedup_wait *next;
    pub_ref pub;
} dedup_wait;

/* One idempotency key of a topic: pending (seq 0) from the claim until its
 * publish's append commits or fails, then committed until expires_ms. */
struct dedup_ent {
    dedup_ent *hash_next;
    dedup_ent *fifo_next; /* the topic's committed keys, oldest first */
    rb_topic *topic;
    uint64_t seq;
    uint64_t expires_ms;
    dedup_wait *waiters;
    uint8_t key_len;
    uint8_t key[RB_IDEMPOTENCY_KEY_BYTES_MAX];
};

/* The keys of a batch sent to a durable store (postgres), which claims them
 * in the append's transaction: held from the append's start to the acks,
 * only by batches with keys. */
typedef struct batch_keys {
    rb_bytes keys[RB_OWNER_BATCH_MESSAGES_MAX];
    uint64_t dup_seqs[RB_OWNER_BATCH_MESSAGES_MAX]; /* nonzero: a duplicate of that seq */
} batch_keys;

/* The content duplicates of an ephemeral batch (rb_eph_dedup_find): held
 * only by batches that have one. */
typedef struct eph_dups {
    uint64_t dup_seqs[RB_OWNER_BATCH_MESSAGES_MAX]; /* nonzero: a duplicate of that seq */
} eph_dups;

_Static_assert(RB_OWNER_BATCH_MESSAGES_MAX <= RB_PG_APPEND_KEYED_MAX,
               "a batch with keys is one keyed append");

typedef struct batch {
    struct batch *next;
    rb_topic *topic;
    uint32_t count;
    uint32_t item_bytes;
    rb_append_req req;
    /* after commit: the block being fanned out and the shards it has not
     * reached yet */
    rb_block *blk;
    bool fan_planned;
    uint64_t fan_left[RB_SHARDS_MAX / 64];
    rb_bytes payloads[RB_OWNER_BATCH_MESSAGES_MAX];
    pub_ref pubs[RB_OWNER_BATCH_MESSAGES_MAX];
    dedup_ent *keys[RB_OWNER_BATCH_MESSAGES_MAX]; /* the claimed key of each, or NULL */
    uint32_t key_count;                           /* how many of them are not NULL */
    batch_keys *durable;                          /* while a durable store checks the keys */
    eph_dups *dups;                               /* an ephemeral batch's content duplicates */
    uint32_t stored;    /* after commit: publishes stored (the others are duplicates) */
    uint64_t append_ns; /* CLOCK_MONOTONIC when its append was requested */
} batch;

typedef struct waiter {
    struct waiter *next;
    uint16_t shard;
    uint32_t conn_index;
    uint32_t conn_gen;
    uint64_t token;
    uint64_t head; /* the answer, once answered */
    int32_t status;
} waiter;

/* One heads request for many topics: the ceilings of the live gate. */
typedef struct refresh {
    rb_owner *owner;
    rb_heads_req req;
    uint32_t count;
    rb_topic *topics[RB_OWNER_REFRESH_TOPICS_MAX];
    rb_bytes names[RB_OWNER_REFRESH_TOPICS_MAX];
    uint64_t heads[RB_OWNER_REFRESH_TOPICS_MAX];
} refresh;

struct rb_topic {
    rb_topic *hash_next;
    const rb_topic_class *cls; /* server/ephemeral.h */
    uint64_t eph_assigned;     /* ephemeral: the last seq given to an accepted publish */
    rb_topic *dirty_next;
    rb_owner *owner;
    uint64_t head;
    bool refresh_queued; /* on the owner's refresh list */
    bool refreshing;     /* in a heads request in flight */
    bool dirty;
    uint8_t name_len;
    char name[RB_TOPIC_BYTES_MAX + 1];
    uint32_t topicz; /* its /v1/topicz slot (rb_topicz_head) */
    batch *inflight;
    batch *fill_head;
    batch *fill_tail;
    waiter *waiters;   /* head queries answered by the next refresh */
    waiter *answers;   /* answered, waiting for an envelope */
    bool replies_left; /* answered but some replies found no envelope */
    rb_topic *refresh_next;
    rb_topic *reply_next;
    bool announce_queued; /* the cluster's peers still have to be told of interest */
    rb_topic *announce_next;
    uint64_t interest[RB_SHARDS_MAX / 64]; /* shards with live subscribers */
    uint32_t peers;                        /* cluster peers with live subscribers (by index) */
    rb_seq seq;                            /* what was fanned out, in seq order */
    bool hole_queued;                      /* on the owner's hole list */
    uint64_t hole_after;                   /* the hole the sequencer asked for */
    uint64_t hole_ceiling;
    rb_topic *hole_next;
    uint32_t dedup_count;  /* keys pending or committed */
    dedup_ent *dedup_head; /* committed keys, oldest (first to expire) first */
    dedup_ent *dedup_tail;
    bool dedup_listed; /* on the owner's list of topics with committed keys */
    rb_topic *dedup_next;
};

/* One storage read of the holes of many topics (DESIGN §2: holes are
 * fetched once per topic at the owner). */
typedef struct hole_reader {
    rb_read_req req;
    rb_read_range ranges[RB_OWNER_HOLE_TOPICS_MAX];
    rb_topic *topics[RB_OWNER_HOLE_TOPICS_MAX];
    uint8_t *arena;
    bool busy;
} hole_reader;

struct rb_owner {
    rb_shard *shard;
    rb_topic **buckets;
    uint32_t bucket_count;
    uint32_t topic_count;
    rb_topic *dirty;
    uint32_t busy; /* appends and head refreshes in flight */
    rb_topic *refresh_head;
    rb_topic *refresh_tail;
    rb_topic *replies; /* topics with head replies left to send */
    batch *done_head;  /* committed batches waiting for their block, in order */
    batch *done_tail;
    rb_block *send_head; /* released blocks waiting for envelopes, in order */
    rb_block *send_tail;
    rb_block *fwd_head; /* committed blocks waiting for envelopes to peers, in order */
    rb_block *fwd_tail;
    const rb_owner_peers *peers; /* the replica plane's hooks; NULL without a cluster */
    rb_topic *announce_head;     /* topics whose interest change found no envelope */
    rb_topic *announce_tail;
    rb_topic *holes_head; /* topics whose sequencer asked for a hole */
    rb_topic *holes_tail;
    hole_reader holes;
    dedup_ent **dedup_buckets; /* (topic, key) -> entry */
    uint32_t dedup_bucket_count;
    rb_topic *dedup_topics;  /* topics with committed keys */
    uint64_t dedup_sweep_ms; /* no committed key expires before this */
    rb_pool dedup_pool;
    rb_pool dedup_wait_pool;
    rb_pool batch_keys_pool;
    rb_pool eph_dups_pool;
    rb_pool refresh_pool;
    rb_pool topic_pool;
    rb_pool batch_pool;
    rb_pool waiter_pool;
};

static void on_publish_envelope(void *ctx, rb_xmsg *m);
static void on_interest_envelope(void *ctx, rb_xmsg *m);
static void on_peer_topic_envelope(void *ctx, rb_xmsg *m);
static void on_replica_in(void *ctx, rb_xmsg *m);
_Static_assert(RB_CLUSTER_PEERS_MAX <= 32, "peer bits fit rb_topic.peers");

static int owner_init(rb_shard *sh, rb_err *err)
{
    rb_owner *o = calloc(1, sizeof *o);
    if (o == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "shard %u: owner", sh->id);
    }
    o->shard = sh;
    o->bucket_count = 1024;
    o->buckets = calloc(o->bucket_count, sizeof *o->buckets);
    int rc = o->buckets == NULL ? rb_err_set(err, RB_ENOMEM, 0, "owner buckets") : 0;
    rc = rc ? rc
            : rb_pool_init(&o->topic_pool, "topics", sizeof(rb_topic), RB_OWNER_TOPICS_MAX, err);
    rc =
        rc ? rc : rb_pool_init(&o->batch_pool, "batches", sizeof(batch), RB_OWNER_BATCHES_MAX, err);
    rc = rc ? rc
            : rb_pool_init(&o->waiter_pool, "waiters", sizeof(waiter), RB_OWNER_WAITERS_MAX, err);
    rc = rc ? rc
            : rb_pool_init(&o->refresh_pool, "refreshes", sizeof(refresh), RB_OWNER_REFRESHES_MAX,
                           err);
    /* Two frames of rows: one row of any accepted size always fits. */
    const rb_config *cfg = &sh->server->cfg;
    o->dedup_bucket_count = 1024;
    while (o->dedup_bucket_count < cfg->dedup_keys_per_shard) {
        o->dedup_bucket_count *= 2;
    }
    o->dedup_buckets = rc == 0 ? calloc(o->dedup_bucket_count, sizeof *o->dedup_buckets) : NULL;
    if (rc == 0 && o->dedup_buckets == NULL) {
        rc = rb_err_set(err, RB_ENOMEM, 0, "shard %u: idempotency keys", sh->id);
    }
    rc = rc ? rc
            : rb_pool_init(&o->dedup_pool, "idempotency keys", sizeof(dedup_ent),
                           cfg->dedup_keys_per_shard, err);
    rc = rc ? rc
            : rb_pool_init(&o->dedup_wait_pool, "idempotent retries", sizeof(dedup_wait),
                           RB_DEDUP_WAITERS_MAX, err);
    rc = rc ? rc
            : rb_pool_init(&o->batch_keys_pool, "keyed appends", sizeof(batch_keys),
                           RB_OWNER_KEYED_APPENDS_MAX, err);
    rc = rc ? rc
            : rb_pool_init(&o->eph_dups_pool, "ephemeral duplicates", sizeof(eph_dups),
                           RB_OWNER_EPH_DUP_BATCHES_MAX, err);
    size_t arena = 2 * (size_t)sh->server->cfg.max_frame_bytes;
    o->holes.arena = rc == 0 ? malloc(arena) : NULL;
    if (rc == 0 && o->holes.arena == NULL) {
        rc = rb_err_set(err, RB_ENOMEM, 0, "shard %u: hole reader", sh->id);
    }
    o->holes.req.ranges = o->holes.ranges;
    o->holes.req.arena = o->holes.arena;
    o->holes.req.arena_cap = arena;
    o->holes.req.ctx = o;
    sh->owner = o;
    if (rc == 0) {
        rb_mailbox_register(&sh->mail, RB_XK_PUBLISH, on_publish_envelope, sh);
        rb_mailbox_register(&sh->mail, RB_XK_INTEREST, on_interest_envelope, sh);
        rb_mailbox_register(&sh->mail, RB_XK_PEER_TOPIC, on_peer_topic_envelope, sh);
        rb_mailbox_register(&sh->mail, RB_XK_REPLICA_IN, on_replica_in, sh);
    }
    return rc;
}

static void owner_deinit(rb_shard *sh)
{
    rb_owner *o = sh->owner;
    if (o == NULL) {
        return;
    }
    for (uint32_t i = 0; o->dedup_buckets != NULL && i < o->dedup_bucket_count; i++) {
        dedup_ent *e = o->dedup_buckets[i];
        while (e != NULL) {
            dedup_ent *next = e->hash_next;
            RB_ASSERT(e->waiters == NULL);
            rb_pool_put(&o->dedup_pool, e);
            e = next;
        }
    }
    for (uint32_t i = 0; i < o->bucket_count; i++) {
        rb_topic *t = o->buckets[i];
        while (t != NULL) {
            rb_topic *next = t->hash_next;
            RB_ASSERT(t->inflight == NULL && t->fill_head == NULL);
            while (t->waiters != NULL) {
                waiter *w = t->waiters;
                t->waiters = w->next;
                rb_pool_put(&o->waiter_pool, w);
            }
            while (t->answers != NULL) {
                waiter *w = t->answers;
                t->answers = w->next;
                rb_pool_put(&o->waiter_pool, w);
            }
            rb_seq_deinit(&t->seq);
            rb_pool_put(&o->topic_pool, t);
            t = next;
        }
    }
    RB_ASSERT(!o->holes.busy);
    while (o->send_head != NULL) {
        rb_block *b = o->send_head;
        o->send_head = b->seq_next;
        rb_block_unref(b);
    }
    while (o->fwd_head != NULL) {
        rb_block *b = o->fwd_head;
        o->fwd_head = b->fwd_next;
        rb_block_unref(b);
    }
    free(o->holes.arena);
    free(o->buckets);
    free(o->dedup_buckets);
    rb_pool_deinit(&o->dedup_wait_pool);
    rb_pool_deinit(&o->batch_keys_pool);
    rb_pool_deinit(&o->eph_dups_pool);
    rb_pool_deinit(&o->dedup_pool);
    rb_pool_deinit(&o->refresh_pool);
    rb_pool_deinit(&o->waiter_pool);
    rb_pool_deinit(&o->batch_pool);
    rb_pool_deinit(&o->topic_pool);
    free(o);
    sh->owner = NULL;
}

static bool owner_idle(rb_shard *sh)
{
    rb_owner *o = sh->owner;
    return o->busy == 0 && o->dirty == NULL && o->refresh_head == NULL && o->done_head == NULL &&
           o->replies == NULL && o->send_head == NULL && o->fwd_head == NULL &&
           o->announce_head == NULL && !o->holes.busy;
}

static void grow_buckets(rb_owner *o)
{
    uint32_t n = o->bucket_count * 2;
    rb_topic **b = calloc(n, sizeof *b);
    if (b == NULL) {
        return; /* Longer chains, still correct. */
    }
    for (uint32_t i = 0; i < o->bucket_count; i++) {
        rb_topic *t = o->buckets[i];
        while (t != NULL) {
            rb_topic *next = t->hash_next;
            uint64_t h = rb_hash_bytes((const uint8_t *)t->name, t->name_len) & (n - 1);
            t->hash_next = b[h];
            b[h] = t;
            t = next;
        }
    }
    free(o->buckets);
    o->buckets = b;
    o->bucket_count = n;
}

/* The owner state of a topic, created on first use; NULL when the shard's
 * topic bound is reached. A new topic loads its head from storage. */
static rb_topic *topic_get(rb_owner *o, const uint8_t *name, size_t len, uint64_t h)
{
    for (rb_topic *t = o->buckets[h & (o->bucket_count - 1)]; t != NULL; t = t->hash_next) {
        if (t->name_len == len && memcmp(t->name, name, len) == 0) {
            return t;
        }
    }
    rb_topic *t = rb_pool_get(&o->topic_pool);
    if (t == NULL) {
        return NULL;
    }
    memset(t, 0, sizeof *t);
    t->owner = o;
    t->cls = rb_topic_class_of(o->shard, (rb_bytes){name, len});
    if (t->cls->ephemeral) {
        /* Its seqs continue above the last run's (RB_EPH_SEQ_BASE_SHIFT). */
        t->head = rb_eph_seq_base();
        t->eph_assigned = t->head;
        rb_seq_skip(&t->seq, t->head);
    }
    rb_seq_init(&t->seq);
    t->name_len = (uint8_t)len;
    memcpy(t->name, name, len);
    if (o->topic_count >= o->bucket_count) {
        grow_buckets(o);
    }
    uint32_t b = (uint32_t)(h & (o->bucket_count - 1));
    t->hash_next = o->buckets[b];
    o->buckets[b] = t;
    o->topic_count++;
    return t;
}

static void topic_mark_dirty(rb_topic *t)
{
    if (!t->dirty) {
        t->dirty = true;
        t->dirty_next = t->owner->dirty;
        t->owner->dirty = t;
    }
}

/* ---- acks ---- */

static void ack_ref(rb_shard *sh, const pub_ref *r, uint64_t seq, uint16_t code,
                    rb_publish_reason reason, uint8_t flags)
{
    rb_publish pub;
    const uint8_t *cursor = r->slot;
    bool ok = rb_publish_next(r->src, &cursor, &pub);
    RB_ASSERT(ok);
    rb_publish_ack(sh, &pub, seq, code, reason, flags);
}

/* ---- idempotency keys ----
 *
 * The owner is the only appender of its topics on this node, so looking a
 * key up and claiming it is one step here: a publish whose key is new
 * claims it (pending) and joins a batch; a retry that finds it committed
 * and unexpired is answered with the original seq and RB_ACK_DUPLICATE at
 * once; a retry that finds it pending waits for the first publish's
 * outcome (the same seq as a duplicate, or the same error, after which the
 * key is vacant again). A committed key lives for the window after its
 * commit; expired keys are dropped oldest first when their topic is next
 * touched, and from every topic when the shard's table is full. */

/* The idempotency-key window of a stored topic: its class's, else [dedup]. */
static uint32_t key_window_ms(const rb_shard *sh, const rb_topic *t)
{
    uint32_t w = t->cls->dedup_window_ms;
    return w != 0 ? w : sh->server->cfg.dedup_window_ms;
}

static uint64_t dedup_hash(const rb_topic *t, rb_bytes key)
{
    return rb_hash_bytes(key.ptr, key.len) ^ ((uint64_t)(uintptr_t)t * 0x9e3779b97f4a7c15ull);
}

static dedup_ent **dedup_slot(rb_owner *o, const rb_topic *t, rb_bytes key)
{
    dedup_ent **pp = &o->dedup_buckets[dedup_hash(t, key) & (o->dedup_bucket_count - 1)];
    while (*pp != NULL) {
        dedup_ent *e = *pp;
        if (e->topic == t && e->key_len == key.len && memcmp(e->key, key.ptr, key.len) == 0) {
            break;
        }
        pp = &e->hash_next;
    }
    return pp;
}

static void dedup_free(rb_owner *o, dedup_ent *e)
{
    dedup_ent **pp = dedup_slot(o, e->topic, (rb_bytes){e->key, e->key_len});
    RB_ASSERT(*pp == e);
    *pp = e->hash_next;
    RB_ASSERT(e->topic->dedup_count > 0);
    e->topic->dedup_count--;
    rb_pool_put(&o->dedup_pool, e);
}

/* Drops t's expired keys; returns when the next of them expires (UINT64_MAX
 * when t holds none committed). */
static uint64_t dedup_expire(rb_owner *o, rb_topic *t, uint64_t now)
{
    while (t->dedup_head != NULL && t->dedup_head->expires_ms <= now) {
        dedup_ent *e = t->dedup_head;
        t->dedup_head = e->fifo_next;
        if (t->dedup_head == NULL) {
            t->dedup_tail = NULL;
        }
        dedup_free(o, e);
    }
    return t->dedup_head != NULL ? t->dedup_head->expires_ms : UINT64_MAX;
}

/* The table is full: drops the expired keys of every topic, at most once
 * until the earliest remaining key expires. */
static void dedup_sweep(rb_owner *o, uint64_t now)
{
    if (now < o->dedup_sweep_ms) {
        return;
    }
    uint64_t next = UINT64_MAX;
    rb_topic **pp = &o->dedup_topics;
    while (*pp != NULL) {
        rb_topic *t = *pp;
        uint64_t at = dedup_expire(o, t, now);
        if (t->dedup_head == NULL) {
            t->dedup_listed = false;
            *pp = t->dedup_next;
            continue;
        }
        next = at < next ? at : next;
        pp = &t->dedup_next;
    }
    o->dedup_sweep_ms = next;
}

/* The key's first publish committed as seq: the key is committed for the
 * window, and the retries that waited get seq as duplicates. */
static void dedup_commit(rb_shard *sh, dedup_ent *e, uint64_t seq)
{
    rb_owner *o = sh->owner;
    rb_topic *t = e->topic;
    e->seq = seq;
    e->expires_ms = rb_loop_now_ms(sh->loop) + key_window_ms(sh, e->topic);
    e->fifo_next = NULL;
    if (t->dedup_tail == NULL) {
        t->dedup_head = e;
    } else {
        t->dedup_tail->fifo_next = e;
    }
    t->dedup_tail = e;
    if (!t->dedup_listed) {
        t->dedup_listed = true;
        t->dedup_next = o->dedup_topics;
        o->dedup_topics = t;
    }
    if (e->expires_ms < o->dedup_sweep_ms) {
        o->dedup_sweep_ms = e->expires_ms;
    }
    while (e->waiters != NULL) {
        dedup_wait *w = e->waiters;
        e->waiters = w->next;
        ack_ref(sh, &w->pub, seq, RB_WIRE_OK, RB_PUBLISH_OK, RB_ACK_DUPLICATE);
        rb_pool_put(&o->dedup_wait_pool, w);
    }
}

/* The key's first publish failed: the waiting retries get the same error
 * and the key is vacant. */
static void dedup_fail(rb_shard *sh, dedup_ent *e, uint16_t code, rb_publish_reason reason)
{
    rb_owner *o = sh->owner;
    while (e->waiters != NULL) {
        dedup_wait *w = e->waiters;
        e->waiters = w->next;
        ack_ref(sh, &w->pub, 0, code, reason, 0);
        rb_pool_put(&o->dedup_wait_pool, w);
    }
    dedup_free(o, e);
}

/* Looks pub's key up and claims it in one step. Returns the claimed
 * (pending) entry for a new key, or NULL when pub was answered here: a
 * duplicate, a retry now waiting for the first publish, or a full table. */
static dedup_ent *dedup_claim(rb_shard *sh, rb_topic *t, const rb_publish *pub)
{
    rb_owner *o = sh->owner;
    const rb_config *cfg = &sh->server->cfg;
    uint64_t now = rb_loop_now_ms(sh->loop);
    dedup_expire(o, t, now);
    dedup_ent **pp = dedup_slot(o, t, pub->key);
    dedup_ent *e = *pp;
    if (e != NULL && e->seq != 0) {
        ack_ref(sh, &(pub_ref){.src = pub->src, .slot = pub->slot}, e->seq, RB_WIRE_OK,
                RB_PUBLISH_OK, RB_ACK_DUPLICATE);
        return NULL;
    }
    if (e != NULL) {
        dedup_wait *w = rb_pool_get(&o->dedup_wait_pool);
        if (w == NULL) {
            rb_publish_ack(sh, pub, 0, RB_WIRE_DEDUP_FULL, RB_PUBLISH_DEDUP_TOTAL_FULL, 0);
            return NULL;
        }
        w->pub = (pub_ref){.src = pub->src, .slot = pub->slot};
        w->next = e->waiters;
        e->waiters = w;
        return NULL;
    }
    if (t->dedup_count >= cfg->dedup_keys_per_topic) {
        rb_publish_ack(sh, pub, 0, RB_WIRE_DEDUP_FULL, RB_PUBLISH_DEDUP_TOPIC_FULL, 0);
        return NULL;
    }
    e = rb_pool_get(&o->dedup_pool);
    if (e == NULL) {
        dedup_sweep(o, now);
        e = rb_pool_get(&o->dedup_pool);
        if (e == NULL) {
            rb_publish_ack(sh, pub, 0, RB_WIRE_DEDUP_FULL, RB_PUBLISH_DEDUP_TOTAL_FULL, 0);
            return NULL;
        }
        pp = dedup_slot(o, t, pub->key); /* the sweep may have changed the chain */
    }
    memset(e, 0, offsetof(dedup_ent, key));
    e->topic = t;
    e->key_len = (uint8_t)pub->key.len;
    memcpy(e->key, pub->key.ptr, pub->key.len);
    *pp = e;
    t->dedup_count++;
    return e;
}

static void batch_put(rb_owner *o, batch *b)
{
    if (b->dups != NULL) {
        rb_pool_put(&o->eph_dups_pool, b->dups);
        b->dups = NULL;
    }
    if (b->durable != NULL) {
        rb_pool_put(&o->batch_keys_pool, b->durable);
        b->durable = NULL;
    }
    rb_pool_put(&o->batch_pool, b);
}

/* The durable store found pub's key committed as seq (before a restart, or
 * by another node): the retries that waited get seq as duplicates too, and
 * the key is vacant here again (the store answers the next retry). */
static void dedup_found_stored(rb_shard *sh, dedup_ent *e, uint64_t seq)
{
    rb_owner *o = sh->owner;
    while (e->waiters != NULL) {
        dedup_wait *w = e->waiters;
        e->waiters = w->next;
        ack_ref(sh, &w->pub, seq, RB_WIRE_OK, RB_PUBLISH_OK, RB_ACK_DUPLICATE);
        rb_pool_put(&o->dedup_wait_pool, w);
    }
    dedup_free(o, e);
}

static uint64_t dup_seq_of(const batch *b, uint32_t i)
{
    if (b->dups != NULL) {
        return b->dups->dup_seqs[i];
    }
    return b->durable != NULL ? b->durable->dup_seqs[i] : 0;
}

static void fail_batch(rb_shard *sh, batch *b, uint16_t code, rb_publish_reason reason)
{
    for (uint32_t i = 0; i < b->count; i++) {
        ack_ref(sh, &b->pubs[i], 0, code, reason, 0);
        if (b->keys[i] != NULL) {
            dedup_fail(sh, b->keys[i], code, reason);
        }
    }
}

/* ---- fan-out ---- */

/* True when a shard that subscribes to t, or that holds the link of a peer
 * that does, is backed up: new appends of t wait, so its subscribers are
 * not buried. */
static bool fanout_backed_up(rb_shard *sh, const rb_topic *t)
{
    for (uint32_t s = 0; s < sh->server->shard_count; s++) {
        if ((t->interest[s / 64] & (1ull << (s % 64))) != 0 &&
            rb_mailbox_backlog(&sh->mail, s) >= RB_OWNER_FANOUT_BACKLOG_MAX) {
            return true;
        }
    }
    for (uint32_t i = 0; t->peers >> i != 0; i++) {
        if ((t->peers & (1u << i)) != 0 &&
            rb_mailbox_backlog(&sh->mail, rb_peer_link_shard(sh->server, i)) >=
                RB_OWNER_FANOUT_BACKLOG_MAX) {
            return true;
        }
    }
    return false;
}

/* The publisher of a batched publish, for the origins of an echo = false
 * block (the record layout of server/publish.c). */
static void origin_of(const pub_ref *r, uint16_t *shard, uint32_t *index, uint32_t *gen)
{
    rb_publish pub;
    const uint8_t *cursor = r->slot;
    bool ok = rb_publish_next(r->src, &cursor, &pub);
    RB_ASSERT(ok);
    *shard = pub.reply.shard;
    *index = pub.reply.conn_index;
    *gen = pub.reply.conn_gen;
}

static rb_block *build_block(rb_shard *sh, rb_topic *t, const batch *b)
{
    bool origins = t->cls->ephemeral && !t->cls->echo;
    size_t extra = origins ? (size_t)b->stored * RB_EPH_ORIGIN_BYTES : 0;
    rb_block *blk = rb_mailbox_block(&sh->mail, b->item_bytes + extra);
    if (blk == NULL) {
        return NULL;
    }
    blk->first_seq = b->req.first_seq;
    blk->last_seq = b->req.last_seq;
    blk->count = b->stored;
    blk->topic_len = t->name_len;
    memcpy(blk->topic, t->name, t->name_len);
    blk->topic[t->name_len] = '\0';
    rb_bytes topic = {(const uint8_t *)t->name, t->name_len};
    uint64_t seq = b->req.first_seq;
    for (uint32_t i = 0; i < b->count; i++) {
        if (dup_seq_of(b, i) != 0) {
            continue; /* not stored again: its subscribers had it */
        }
        size_t n = rb_frame_encode_messages_item(blk->data + blk->bytes, blk->cap - blk->bytes,
                                                 topic, seq++, b->payloads[i]);
        RB_ASSERT(n > 0);
        blk->bytes += (uint32_t)n;
    }
    RB_ASSERT(seq == b->req.last_seq + 1);
    for (uint32_t i = 0, k = 0; origins && i < b->count; i++) {
        if (dup_seq_of(b, i) == 0) {
            uint16_t from;
            uint32_t idx;
            uint32_t gen;
            origin_of(&b->pubs[i], &from, &idx, &gen);
            rb_eph_origin_put(blk, k++, from, idx, gen);
        }
    }
    return blk;
}

static bool any_interest(const rb_topic *t)
{
    for (size_t i = 0; i < RB_SHARDS_MAX / 64; i++) {
        if (t->interest[i] != 0) {
            return true;
        }
    }
    return false;
}

/* The sequencer released b (in seq order): it goes to the shards that
 * subscribe now, after the blocks released before it. */
static void seq_release(void *ctx, rb_block *b)
{
    rb_topic *t = ctx;
    rb_owner *o = t->owner;
    memcpy(b->fan_left, t->interest, sizeof b->fan_left);
    b->seq_next = NULL;
    if (o->send_tail == NULL) {
        o->send_head = b;
    } else {
        o->send_tail->seq_next = b;
    }
    o->send_tail = b;
}

static void seq_fetch(void *ctx, uint64_t after, uint64_t ceiling)
{
    rb_topic *t = ctx;
    rb_owner *o = t->owner;
    RB_ASSERT(!t->hole_queued);
    t->hole_after = after;
    t->hole_ceiling = ceiling;
    t->hole_queued = true;
    t->hole_next = NULL;
    if (o->holes_tail == NULL) {
        o->holes_head = t;
    } else {
        o->holes_tail->hole_next = t;
    }
    o->holes_tail = t;
}

static const rb_seq_ops seq_ops = {.release = seq_release, .fetch = seq_fetch};

/* Sends released blocks, in order, as far as envelopes allow. */
static void send_released(rb_owner *o)
{
    rb_shard *sh = o->shard;
    while (o->send_head != NULL) {
        rb_block *b = o->send_head;
        for (uint32_t s = 0; s < sh->server->shard_count; s++) {
            if ((b->fan_left[s / 64] & (1ull << (s % 64))) == 0) {
                continue;
            }
            rb_xmsg *m = rb_mailbox_xmsg_bare(&sh->mail);
            if (m == NULL) {
                rb_shard_poll_soon(sh);
                return;
            }
            m->kind = RB_XK_BLOCK;
            rb_block_ref(b);
            m->ptr = b;
            rb_mailbox_send(&sh->mail, s, m);
            b->fan_left[s / 64] &= ~(1ull << (s % 64));
        }
        o->send_head = b->seq_next;
        if (o->send_head == NULL) {
            o->send_tail = NULL;
        }
        rb_block_unref(b);
    }
}

static void start_append(rb_topic *t);
static void finish_committed(rb_owner *o);

/* Hands b to the link shards of the peers left in b->peer_left, in peer
 * order, as far as envelopes allow. Returns false when one was missing
 * (what is left stays in peer_left). */
static bool forward_some(rb_shard *sh, rb_block *b)
{
    while (b->peer_left != 0) {
        uint32_t i = (uint32_t)__builtin_ctz(b->peer_left);
        rb_xmsg *m = rb_mailbox_xmsg_bare(&sh->mail);
        if (m == NULL) {
            rb_shard_poll_soon(sh);
            return false;
        }
        m->kind = RB_XK_REPLICA_OUT;
        m->count = i;
        rb_block_ref(b);
        m->ptr = b;
        rb_mailbox_send(&sh->mail, rb_peer_link_shard(sh->server, i), m);
        b->peer_left &= ~(1u << i);
    }
    return true;
}

/* Sends the forward list on, in order (the flush hook retries). */
static void send_forwards(rb_owner *o)
{
    while (o->fwd_head != NULL) {
        rb_block *b = o->fwd_head;
        if (!forward_some(o->shard, b)) {
            return;
        }
        o->fwd_head = b->fwd_next;
        if (o->fwd_head == NULL) {
            o->fwd_tail = NULL;
        }
        rb_block_unref(b);
    }
}

/* The committed block goes once to each peer with live subscribers of t,
 * as a reference to the block local fan-out uses (DESIGN §2), in commit
 * order. It is never dropped: a block that finds no envelope waits on the
 * forward list (holding a reference) with every block committed after it,
 * and the appends wait until the list is empty (start_append). */
static void forward_to_peers(rb_owner *o, const rb_topic *t, rb_block *blk)
{
    blk->peer_left = t->peers;
    if (blk->peer_left == 0) {
        return;
    }
    if (o->fwd_head == NULL && forward_some(o->shard, blk)) {
        return;
    }
    rb_block_ref(blk);
    blk->fwd_next = NULL;
    if (o->fwd_tail == NULL) {
        o->fwd_head = blk;
    } else {
        o->fwd_tail->fwd_next = blk;
    }
    o->fwd_tail = blk;
}

/* Turns committed batches into blocks for the sequencer and acks them, in
 * commit order, as far as block memory allows. The acks wait for the
 * block: it is built from the publishes' bytes, which their acks
 * overwrite. */
static void finish_committed(rb_owner *o)
{
    rb_shard *sh = o->shard;
    while (o->done_head != NULL) {
        batch *b = o->done_head;
        rb_topic *t = b->topic;
        /* Ephemeral topics stay on this node: their seqs are its own. */
        uint32_t peers = t->cls->ephemeral ? 0 : t->peers;
        if (b->stored == 0) {
            /* Every publish was a duplicate: no new seq, nothing to send. */
        } else if (any_interest(t) || peers != 0) {
            rb_block *blk = build_block(sh, t, b);
            if (blk == NULL) {
                rb_shard_poll_soon(sh);
                break;
            }
            if (peers != 0) {
                forward_to_peers(o, t, blk);
            }
            if (any_interest(t)) {
                rb_seq_commit(&t->seq, blk, &seq_ops, t);
            } else {
                rb_seq_skip(&t->seq, b->req.last_seq);
                rb_block_unref(blk);
            }
        } else {
            rb_seq_skip(&t->seq, b->req.last_seq);
        }
        o->done_head = b->next;
        if (o->done_head == NULL) {
            o->done_tail = NULL;
        }
        /* In publish order, duplicates included (acks of one topic keep
         * their connection's publish order). */
        uint64_t seq = b->req.first_seq;
        for (uint32_t i = 0; i < b->count; i++) {
            uint64_t dup = dup_seq_of(b, i);
            if (dup != 0) {
                ack_ref(sh, &b->pubs[i], dup, RB_WIRE_OK, RB_PUBLISH_OK, RB_ACK_DUPLICATE);
                if (b->keys[i] != NULL) {
                    dedup_found_stored(sh, b->keys[i], dup);
                }
                continue;
            }
            ack_ref(sh, &b->pubs[i], seq, RB_WIRE_OK, RB_PUBLISH_OK, 0);
            if (b->keys[i] != NULL) {
                dedup_commit(sh, b->keys[i], seq);
            }
            seq++;
        }
        batch_put(o, b);
        if (t->fill_head != NULL) {
            start_append(t);
        }
    }
    send_released(o);
}

/* ---- hole reads ---- */

/* Cuts the rows of one range into blocks for the sequencer. Returns the
 * last seq handed over (after when none could be). */
static uint64_t rows_to_blocks(rb_shard *sh, rb_topic *t, const uint8_t *rows, size_t bytes,
                               uint32_t count, uint64_t after)
{
    size_t cap = sh->server->cfg.max_frame_bytes - RB_FRAME_MESSAGES_HEAD_BYTES;
    rb_frame_iter it;
    rb_frame_iter_init(&it, (rb_bytes){rows, bytes}, count);
    rb_message_item m;
    uint64_t fed = after;
    const uint8_t *p = rows;
    bool more = rb_frame_next_item(&it, &m);
    while (more) {
        /* The items that fit one frame make one block of the right class. */
        rb_frame_iter look = it;
        rb_message_item x = m;
        size_t take = 0;
        uint32_t n = 0;
        bool more_x = true;
        while (more_x) {
            size_t sz = rb_frame_messages_item_size(x.topic.len, x.payload.len);
            if (n > 0 && take + sz > cap) {
                break;
            }
            take += sz;
            n++;
            more_x = rb_frame_next_item(&look, &x);
        }
        rb_block *blk = rb_mailbox_block(&sh->mail, take);
        if (blk == NULL) {
            return fed;
        }
        blk->first_seq = m.seq;
        blk->topic_len = t->name_len;
        memcpy(blk->topic, t->name, t->name_len);
        blk->topic[t->name_len] = '\0';
        memcpy(blk->data, p, take);
        blk->bytes = (uint32_t)take;
        blk->count = n;
        for (uint32_t i = 1; i < n; i++) {
            rb_frame_next_item(&it, &m);
        }
        blk->last_seq = m.seq;
        p += take;
        fed = blk->last_seq;
        rb_seq_fill(&t->seq, blk, &seq_ops, t);
        more = rb_frame_next_item(&it, &m);
    }
    return fed;
}

static void hole_read_done(rb_read_req *req)
{
    rb_owner *o = req->ctx;
    rb_shard *sh = o->shard;
    o->holes.busy = false;
    o->busy--;
    for (uint32_t i = 0; i < req->range_count; i++) {
        rb_topic *t = o->holes.topics[i];
        const rb_read_range *rg = &o->holes.ranges[i];
        uint64_t upto = 0;
        if (req->status == 0 && rg->status == 0) {
            uint64_t fed = rows_to_blocks(sh, t, req->arena + rg->rows_offset, rg->rows_bytes,
                                          rg->row_count, rg->after);
            if (fed > rg->after) {
                RB_STAT_ADD(sh, holes_repaired, 1);
                RB_STAT_ADD(sh, repaired_seqs, fed - rg->after);
            }
            bool all = fed == (rg->row_count > 0 ? rg->last_seq : rg->after);
            upto = !all ? fed : rg->complete ? rg->ceiling : rg->last_seq;
        } else if (req->status == 0 && rg->status == RB_ERANGE && rg->oldest_seq > 0) {
            /* Retention removed the start of the hole: go on from what is left. */
            upto = rg->oldest_seq - 1;
        } else {
            RB_LOG_WARN(0, "topic %s: reading the hole after seq %llu failed; retrying", t->name,
                        (unsigned long long)rg->after);
            rb_shard_poll_soon(sh);
        }
        rb_seq_fill_done(&t->seq, upto, &seq_ops, t);
    }
    send_released(o);
}

static void start_hole_read(rb_owner *o)
{
    rb_shard *sh = o->shard;
    hole_reader *hr = &o->holes;
    if (hr->busy || o->holes_head == NULL) {
        return;
    }
    uint32_t n = 0;
    while (o->holes_head != NULL && n < RB_OWNER_HOLE_TOPICS_MAX) {
        rb_topic *t = o->holes_head;
        o->holes_head = t->hole_next;
        t->hole_queued = false;
        rb_read_range *rg = &hr->ranges[n];
        memset(rg, 0, sizeof *rg);
        rg->topic = (rb_bytes){(const uint8_t *)t->name, t->name_len};
        rg->after = t->hole_after;
        rg->ceiling = t->hole_ceiling;
        rg->rows_max = sh->server->cfg.catchup_rows_per_topic;
        hr->topics[n++] = t;
    }
    if (o->holes_head == NULL) {
        o->holes_tail = NULL;
    }
    hr->req.range_count = n;
    hr->req.status = 0;
    hr->req.arena_used = 0;
    hr->req.done = hole_read_done;
    if (sh->server->storage_ops->read(sh->storage, &hr->req) != 0) {
        /* Storage refused: every range is asked for again next turn. */
        for (uint32_t i = 0; i < n; i++) {
            rb_seq_fill_done(&hr->topics[i]->seq, 0, &seq_ops, hr->topics[i]);
        }
        rb_shard_poll_soon(sh);
        return;
    }
    hr->busy = true;
    o->busy++;
}

static void start_refreshes(rb_owner *o);
static void topic_mark_dirty(rb_topic *t);

/* A committed batch joins the owner's done list (in commit order), its
 * block and fan-out still to be made by finish_committed. */
static void done_push(rb_owner *o, batch *b)
{
    b->next = NULL;
    b->blk = NULL;
    b->fan_planned = false;
    if (o->done_tail == NULL) {
        o->done_head = b;
    } else {
        o->done_tail->next = b;
    }
    o->done_tail = b;
}

static void append_done(rb_append_req *req)
{
    batch *b = req->ctx;
    rb_topic *t = b->topic;
    rb_owner *o = t->owner;
    rb_shard *sh = o->shard;
    RB_ASSERT(t->inflight == b);
    t->inflight = NULL;
    o->busy--;
    if (req->status != 0) {
        RB_STAT_ADD(sh, storage_errors[RB_STAT_STORE_APPEND], 1);
        RB_LOG_ERROR(0, "topic %s: append of %u failed: %s", t->name, b->count, req->err.msg);
        fail_batch(sh, b, RB_WIRE_UNAVAILABLE, RB_PUBLISH_STORAGE_UNAVAILABLE);
        batch_put(o, b);
        if (t->fill_head != NULL) {
            start_append(t);
        }
        return;
    }
    uint64_t took = rb_clock_ns() - b->append_ns;
    RB_STAT_ADD(
        sh, commit_latency[rb_stat_bucket(rb_stat_latency_le_ns, RB_STAT_LATENCY_BUCKETS, took)],
        1);
    RB_STAT_ADD(sh, commit_latency_ns, took);
    RB_STAT_ADD(sh, commit_batch[rb_stat_bucket(rb_stat_batch_le, RB_STAT_BATCH_BUCKETS, b->count)],
                1);
    RB_STAT_ADD(sh, commit_batch_msgs, b->count);
    b->stored = b->count;
    if (b->durable != NULL) {
        /* Duplicates found by the store: the block carries the others. */
        rb_bytes topic = {(const uint8_t *)t->name, t->name_len};
        b->item_bytes = 0;
        for (uint32_t i = 0; i < b->count; i++) {
            if (b->durable->dup_seqs[i] != 0) {
                RB_ASSERT(b->keys[i] != NULL);
                b->stored--;
            } else {
                b->item_bytes +=
                    (uint32_t)rb_frame_messages_item_size(topic.len, b->payloads[i].len);
            }
        }
    }
    RB_ASSERT(req->last_seq + 1 - req->first_seq == b->stored);
    if (req->last_seq > t->head) {
        t->head = req->last_seq;
    }
    rb_topicz_head(o->shard, &t->topicz, t->name, t->name_len, t->head, b->stored);
    done_push(o, b);
    finish_committed(o);
}

/* An ephemeral topic never touches storage: its filled batches are
 * committed at once, in order, with the seqs their publishes were given at
 * intake (eph_assigned), and go the way of a committed append: block,
 * sequencer, acks. "Accepted for fan-out" is this moment. */
static void eph_commit(rb_topic *t)
{
    rb_owner *o = t->owner;
    while (t->fill_head != NULL) {
        batch *b = t->fill_head;
        t->fill_head = b->next;
        b->next = NULL;
        uint32_t dups = 0;
        for (uint32_t i = 0; i < b->count; i++) {
            dups += dup_seq_of(b, i) != 0;
        }
        memset(&b->req, 0, sizeof b->req);
        b->stored = b->count - dups;
        b->req.first_seq = t->head + 1;
        b->req.last_seq = t->head + b->stored;
        t->head = b->req.last_seq;
        done_push(o, b);
    }
    t->fill_tail = NULL;
    RB_ASSERT(t->head == t->eph_assigned);
    finish_committed(o);
}

static void start_append(rb_topic *t)
{
    rb_owner *o = t->owner;
    rb_shard *sh = o->shard;
    if (t->inflight != NULL || t->fill_head == NULL) {
        return;
    }
    if (o->done_head != NULL || o->send_head != NULL || o->fwd_head != NULL ||
        rb_seq_holding(&t->seq) || fanout_backed_up(sh, t)) {
        /* Back-pressure: committed work waits for memory or a subscriber's
         * queue; the publishes wait in their batch. */
        topic_mark_dirty(t);
        rb_shard_poll_soon(sh);
        return;
    }
    if (t->cls->ephemeral) {
        eph_commit(t);
        return;
    }
    batch *b = t->fill_head;
    const rb_config *cfg = &sh->server->cfg;
    bool durable = b->key_count > 0 && cfg->storage_backend != RB_STORAGE_MEMORY;
    batch_keys *keys = durable ? rb_pool_get(&o->batch_keys_pool) : NULL;
    if (durable && keys == NULL) {
        /* Every keyed append slot is busy: the batch waits for one. */
        topic_mark_dirty(t);
        rb_shard_poll_soon(sh);
        return;
    }
    t->fill_head = b->next;
    if (t->fill_head == NULL) {
        t->fill_tail = NULL;
    }
    b->next = NULL;
    memset(&b->req, 0, sizeof b->req);
    b->req.topic = (rb_bytes){(const uint8_t *)t->name, t->name_len};
    b->req.payloads = b->payloads;
    b->req.count = b->count;
    b->durable = keys;
    if (keys != NULL) {
        for (uint32_t i = 0; i < b->count; i++) {
            const dedup_ent *e = b->keys[i];
            keys->keys[i] = e != NULL ? (rb_bytes){e->key, e->key_len} : (rb_bytes){0};
            keys->dup_seqs[i] = 0;
        }
        b->req.keys = keys->keys;
        b->req.dup_seqs = keys->dup_seqs;
        b->req.dedup_window_ms = key_window_ms(sh, t);
    }
    b->req.done = append_done;
    b->req.ctx = b;
    b->append_ns = rb_clock_ns();
    int rc = sh->server->storage_ops->append(sh->storage, &b->req);
    if (rc != 0) {
        RB_STAT_ADD(sh, storage_errors[RB_STAT_STORE_APPEND], 1);
        fail_batch(sh, b, rc == RB_ELIMIT ? RB_WIRE_RESOURCE_EXHAUSTED : RB_WIRE_UNAVAILABLE,
                   RB_PUBLISH_STORAGE_REFUSED);
        batch_put(o, b);
        if (t->fill_head != NULL) {
            topic_mark_dirty(t);
        }
        return;
    }
    t->inflight = b;
    o->busy++;
}

static void send_replies_left(rb_owner *o);
static void send_announces(rb_owner *o);

static void owner_flush(rb_shard *sh)
{
    rb_owner *o = sh->owner;
    send_forwards(o);
    finish_committed(o);
    send_announces(o);
    start_hole_read(o);
    send_replies_left(o);
    start_refreshes(o);
    rb_topic *t = o->dirty;
    o->dirty = NULL;
    while (t != NULL) {
        rb_topic *next = t->dirty_next;
        t->dirty = false;
        start_append(t);
        t = next;
    }
}

/* ---- head loading and interest ---- */

static bool send_head(rb_shard *sh, const char *name, uint8_t name_len, uint64_t head,
                      const waiter *w, int32_t status)
{
    size_t len = HEAD_REC_FIXED + name_len;
    uint8_t *p = rb_mailbox_reserve(&sh->mail, w->shard, RB_XK_HEAD, len);
    if (p == NULL) {
        return false;
    }
    p = rb_rec_put(p, &w->conn_index, 4);
    p = rb_rec_put(p, &w->conn_gen, 4);
    p = rb_rec_put(p, &w->token, 8);
    p = rb_rec_put(p, &head, 8);
    p = rb_rec_put(p, &status, 4);
    p = rb_rec_put(p, &name_len, 1);
    rb_rec_put(p, name, name_len);
    rb_mailbox_commit(&sh->mail, w->shard, len);
    return true;
}

/* Sends t's answered head replies; those that find no envelope stay, in
 * order, for the next turn. */
static void send_answers(rb_owner *o, rb_topic *t)
{
    while (t->answers != NULL) {
        waiter *w = t->answers;
        if (!send_head(o->shard, t->name, t->name_len, w->head, w, w->status)) {
            if (!t->replies_left) {
                t->replies_left = true;
                t->reply_next = o->replies;
                o->replies = t;
            }
            rb_shard_poll_soon(o->shard);
            return;
        }
        t->answers = w->next;
        rb_pool_put(&o->waiter_pool, w);
    }
}

static void send_replies_left(rb_owner *o)
{
    rb_topic *t = o->replies;
    o->replies = NULL;
    while (t != NULL) {
        rb_topic *next = t->reply_next;
        t->replies_left = false;
        send_answers(o, t);
        t = next;
    }
}

/* The waiting head queries get their answer: the head now, or status. */
static void reply_waiters(rb_owner *o, rb_topic *t, int32_t status)
{
    waiter **tail = &t->answers;
    while (*tail != NULL) {
        tail = &(*tail)->next;
    }
    while (t->waiters != NULL) {
        waiter *w = t->waiters;
        t->waiters = w->next;
        w->head = t->head;
        w->status = status;
        w->next = NULL;
        *tail = w;
        tail = &w->next;
    }
    if (!t->replies_left) {
        send_answers(o, t);
    }
}

static void refresh_done(rb_heads_req *req)
{
    refresh *r = req->ctx;
    rb_owner *o = r->owner;
    o->busy--;
    if (req->status != 0) {
        RB_STAT_ADD(o->shard, storage_errors[RB_STAT_STORE_HEADS], 1);
        RB_LOG_ERROR(0, "heads of %u topics: %s", r->count, req->err.msg);
    }
    for (uint32_t i = 0; i < r->count; i++) {
        rb_topic *t = r->topics[i];
        t->refreshing = false;
        /* The committed head in storage, or what this owner committed
         * since, whichever is higher: every batch committed after the
         * interest bit was set reaches the subscriber's shard live. */
        if (req->status == 0 && r->heads[i] > t->head) {
            t->head = r->heads[i];
        }
        rb_topicz_head(o->shard, &t->topicz, t->name, t->name_len, t->head, 0);
        reply_waiters(o, t, req->status == 0 ? 0 : RB_ESTORAGE);
        if (req->status == 0 && any_interest(t)) {
            /* Another node may have committed past what was fanned out:
             * the sequencer reads the difference now, not at the next
             * publish here. */
            rb_seq_head(&t->seq, t->head, &seq_ops, t);
        }
    }
    rb_pool_put(&o->refresh_pool, r);
}

static void queue_refresh(rb_owner *o, rb_topic *t)
{
    if (t->refresh_queued || t->refreshing) {
        return;
    }
    t->refresh_queued = true;
    t->refresh_next = NULL;
    if (o->refresh_tail == NULL) {
        o->refresh_head = t;
    } else {
        o->refresh_tail->refresh_next = t;
    }
    o->refresh_tail = t;
}

/* Reads the heads of queued topics from storage, many per request, so that
 * a Mutate adding thousands of topics costs a few queries. Topics left
 * over (no request could be had) wait for the next turn. */
static void start_refreshes(rb_owner *o)
{
    rb_shard *sh = o->shard;
    while (o->refresh_head != NULL) {
        refresh *r = rb_pool_get(&o->refresh_pool);
        if (r == NULL) {
            return;
        }
        r->owner = o;
        r->count = 0;
        while (o->refresh_head != NULL && r->count < RB_OWNER_REFRESH_TOPICS_MAX) {
            rb_topic *t = o->refresh_head;
            o->refresh_head = t->refresh_next;
            t->refresh_queued = false;
            t->refreshing = true;
            r->topics[r->count] = t;
            r->names[r->count] = (rb_bytes){(const uint8_t *)t->name, t->name_len};
            r->count++;
        }
        if (o->refresh_head == NULL) {
            o->refresh_tail = NULL;
        }
        memset(&r->req, 0, sizeof r->req);
        r->req.topics = r->names;
        r->req.count = r->count;
        r->req.heads = r->heads;
        r->req.done = refresh_done;
        r->req.ctx = r;
        if (sh->server->storage_ops->heads(sh->storage, &r->req) != 0) {
            for (uint32_t i = 0; i < r->count; i++) {
                r->topics[i]->refreshing = false;
                reply_waiters(o, r->topics[i], RB_ESTORAGE);
            }
            rb_pool_put(&o->refresh_pool, r);
            return;
        }
        o->busy++;
    }
}

/* The node's peers learn when t gains its first or loses its last local
 * subscriber (server/cluster.c keeps the set and tells every link). A
 * change that finds no envelope waits on the announce list, and the flush
 * hook sends the topic's state then (the records are idempotent). */
static bool tell_peers(rb_shard *sh, const rb_topic *t, bool on)
{
    const rb_owner_peers *peers = sh->owner->peers;
    return peers == NULL || peers->local_interest(sh, t->name, t->name_len, on);
}

static void announce_interest(rb_shard *sh, rb_topic *t, bool had)
{
    rb_owner *o = sh->owner;
    bool has = any_interest(t);
    if (had == has || t->announce_queued) {
        return;
    }
    if (!tell_peers(sh, t, has)) {
        t->announce_queued = true;
        t->announce_next = NULL;
        if (o->announce_tail == NULL) {
            o->announce_head = t;
        } else {
            o->announce_tail->announce_next = t;
        }
        o->announce_tail = t;
        rb_shard_poll_soon(sh);
    }
}

static void send_announces(rb_owner *o)
{
    rb_shard *sh = o->shard;
    while (o->announce_head != NULL) {
        rb_topic *t = o->announce_head;
        if (!tell_peers(sh, t, any_interest(t))) {
            rb_shard_poll_soon(sh);
            return;
        }
        t->announce_queued = false;
        o->announce_head = t->announce_next;
        if (o->announce_head == NULL) {
            o->announce_tail = NULL;
        }
    }
}

static void on_interest(rb_shard *sh, uint16_t from, const uint8_t *p)
{
    rb_owner *o = sh->owner;
    uint8_t op;
    uint32_t idx;
    uint32_t gen;
    uint64_t token;
    uint8_t tlen;
    p = rb_rec_get(p, &op, 1);
    p = rb_rec_get(p, &idx, 4);
    p = rb_rec_get(p, &gen, 4);
    p = rb_rec_get(p, &token, 8);
    p = rb_rec_get(p, &tlen, 1);
    waiter q = {.shard = from, .conn_index = idx, .conn_gen = gen, .token = token};
    rb_topic *t = topic_get(o, p, tlen, rb_hash_bytes(p, tlen));
    if (t == NULL) {
        if (op != RB_INTEREST_UNSUB && !send_head(sh, (const char *)p, tlen, 0, &q, RB_ELIMIT)) {
            RB_LOG_ERROR(0, "owner topic table full (%u) and no envelope for the refusal",
                         RB_OWNER_TOPICS_MAX);
        }
        return;
    }
    bool had = any_interest(t);
    if (op == RB_INTEREST_UNSUB) {
        t->interest[from / 64] &= ~(1ull << (from % 64));
        announce_interest(sh, t, had);
        return;
    }
    if (op == RB_INTEREST_SUB) {
        t->interest[from / 64] |= 1ull << (from % 64);
        announce_interest(sh, t, had);
    }
    if (t->cls->ephemeral) {
        /* No history and no ceiling: the stream went live at once and
         * waits for no head. */
        return;
    }
    /* The ceiling is read from storage after the interest is set, so it
     * covers what other nodes committed too. */
    waiter *w = rb_pool_get(&o->waiter_pool);
    if (w == NULL) {
        if (!send_head(sh, t->name, t->name_len, t->head, &q, RB_ELIMIT)) {
            RB_LOG_ERROR(0, "topic %s: head queries full (%u) and no envelope for the refusal",
                         t->name, RB_OWNER_WAITERS_MAX);
        }
        return;
    }
    *w = q;
    w->next = t->waiters;
    t->waiters = w;
    queue_refresh(o, t);
}

/* ---- publishes arriving at the owner ---- */

static batch *fill_batch(rb_topic *t, size_t item_bytes)
{
    rb_owner *o = t->owner;
    batch *b = t->fill_tail;
    uint32_t cap = o->shard->server->cfg.max_frame_bytes - RB_FRAME_MESSAGES_HEAD_BYTES;
    if (b != NULL && b->count < RB_OWNER_BATCH_MESSAGES_MAX && b->item_bytes + item_bytes <= cap) {
        return b;
    }
    b = rb_pool_get(&o->batch_pool);
    if (b == NULL) {
        return NULL;
    }
    b->next = NULL;
    b->topic = t;
    b->count = 0;
    b->item_bytes = 0;
    b->key_count = 0;
    b->durable = NULL;
    b->dups = NULL;
    b->stored = 0;
    if (t->fill_tail == NULL) {
        t->fill_head = b;
    } else {
        t->fill_tail->next = b;
    }
    t->fill_tail = b;
    return b;
}

/* An ephemeral publish joins its topic's batch with the next seq, or as a
 * content duplicate of an earlier one within the class's window (acked in
 * its place in the batch with that seq and RB_ACK_DUPLICATE, delivered to
 * nobody). Idempotency keys are not kept for ephemeral topics: content
 * dedup takes their place. */
static void eph_publish(rb_shard *sh, rb_topic *t, const rb_publish *pub, size_t item)
{
    rb_owner *o = sh->owner;
    uint32_t window_ms = t->cls->dedup_window_ms;
    uint64_t dup = rb_eph_dedup_find(sh, pub->topic_hash, pub->payload, window_ms);
    batch *b = fill_batch(t, item);
    if (b == NULL) {
        rb_publish_ack(sh, pub, 0, RB_WIRE_RESOURCE_EXHAUSTED, RB_PUBLISH_BATCH_LIMIT, 0);
        return;
    }
    if (dup != 0 && b->dups == NULL) {
        b->dups = rb_pool_get(&o->eph_dups_pool);
        if (b->dups == NULL) {
            /* No room to keep its place: answered at once, ahead of the
             * batch (the only case where its ack overtakes earlier ones). */
            rb_publish_ack(sh, pub, dup, RB_WIRE_OK, RB_PUBLISH_OK, RB_ACK_DUPLICATE);
            return;
        }
        memset(b->dups, 0, sizeof *b->dups);
    }
    if (dup == 0) {
        rb_eph_dedup_put(sh, pub->topic_hash, pub->payload, ++t->eph_assigned, window_ms);
        b->item_bytes += (uint32_t)item;
    } else {
        b->dups->dup_seqs[b->count] = dup;
        RB_STAT_ADD(sh, ephemeral_duplicates, 1);
    }
    b->payloads[b->count] = pub->payload;
    b->keys[b->count] = NULL;
    b->pubs[b->count] = (pub_ref){.src = pub->src, .slot = pub->slot};
    b->count++;
    topic_mark_dirty(t);
}

static void on_publish(rb_shard *sh, const rb_publish *pub)
{
    size_t item = rb_frame_messages_item_size(pub->topic.len, pub->payload.len);
    rb_topic *t = topic_get(sh->owner, pub->topic.ptr, pub->topic.len, pub->topic_hash);
    if (t == NULL) {
        rb_publish_ack(sh, pub, 0, RB_WIRE_RESOURCE_EXHAUSTED, RB_PUBLISH_TOPIC_LIMIT, 0);
        return;
    }
    if (t->cls->ephemeral) {
        eph_publish(sh, t, pub, item);
        return;
    }
    dedup_ent *key = NULL;
    if (pub->key.len > 0) {
        key = dedup_claim(sh, t, pub);
        if (key == NULL) {
            return;
        }
    }
    batch *b = fill_batch(t, item);
    if (b == NULL) {
        if (key != NULL) {
            dedup_fail(sh, key, RB_WIRE_RESOURCE_EXHAUSTED, RB_PUBLISH_BATCH_LIMIT);
        }
        rb_publish_ack(sh, pub, 0, RB_WIRE_RESOURCE_EXHAUSTED, RB_PUBLISH_BATCH_LIMIT, 0);
        return;
    }
    b->payloads[b->count] = pub->payload;
    b->keys[b->count] = key;
    b->key_count += key != NULL;
    b->pubs[b->count] = (pub_ref){.src = pub->src, .slot = pub->slot};
    b->count++;
    b->item_bytes += (uint32_t)item;
    topic_mark_dirty(t);
}

static void on_publish_envelope(void *ctx, rb_xmsg *m)
{
    rb_shard *sh = ctx;
    rb_publish pub;
    const uint8_t *cursor = NULL;
    /* The envelope lives until every publish in it is acked. */
    rb_publish_begin(m);
    while (rb_publish_next(m, &cursor, &pub)) {
        on_publish(sh, &pub);
    }
    rb_publish_end(sh, m);
}

static void on_interest_envelope(void *ctx, rb_xmsg *m)
{
    rb_shard *sh = ctx;
    const uint8_t *p = m->data;
    for (uint32_t i = 0; i < m->count; i++) {
        uint8_t tlen = p[RB_INTEREST_REC_FIXED - 1];
        on_interest(sh, m->from_shard, p);
        p += RB_INTEREST_REC_FIXED + tlen;
    }
    RB_ASSERT(p == m->data + m->bytes);
    rb_xmsg_put(m);
}

/* ---- the cluster's part ---- */

void rb_owner_attach_peers(rb_shard *sh, const rb_owner_peers *peers)
{
    sh->owner->peers = peers;
}

void rb_owner_repair_all(rb_shard *sh)
{
    rb_owner *o = sh->owner;
    for (uint32_t i = 0; i < o->bucket_count; i++) {
        for (rb_topic *t = o->buckets[i]; t != NULL; t = t->hash_next) {
            if (any_interest(t) && !t->cls->ephemeral) {
                /* Ephemeral topics have nothing in storage to repair from. */
                queue_refresh(o, t);
            }
        }
    }
}

/* Records: op, peer index, on, topic len, 4 unused bytes, topic (written
 * by server/cluster.c). */
#define PEER_REC_FIXED 8

static void on_peer_topic_envelope(void *ctx, rb_xmsg *m)
{
    rb_shard *sh = ctx;
    rb_owner *o = sh->owner;
    const uint8_t *p = m->data;
    for (uint32_t i = 0; i < m->count; i++) {
        uint8_t op = p[0];
        uint8_t peer = p[1];
        bool on = p[2] != 0;
        uint8_t tlen = p[3];
        const uint8_t *name = p + PEER_REC_FIXED;
        RB_ASSERT(peer < RB_CLUSTER_PEERS_MAX);
        if (op == 1) {
            /* A peer's interest, kept even for a topic nobody here reads. */
            rb_topic *t = topic_get(o, name, tlen, rb_hash_bytes(name, tlen));
            if (t == NULL) {
                RB_LOG_WARN(sh->id,
                            "owner topic table full (%u): peer interest dropped; the "
                            "peer reads that topic by repair",
                            RB_OWNER_TOPICS_MAX);
            } else if (on) {
                t->peers |= 1u << peer;
            } else {
                t->peers &= ~(1u << peer);
            }
        } else {
            /* The link to the peer reset: its interest is resent after the
             * next handshake, and what it did not deliver is read now. */
            for (uint32_t b = 0; b < o->bucket_count; b++) {
                for (rb_topic *t = o->buckets[b]; t != NULL; t = t->hash_next) {
                    t->peers &= ~(1u << peer);
                }
            }
            rb_owner_repair_all(sh);
        }
        p += PEER_REC_FIXED + tlen;
    }
    RB_ASSERT(p == m->data + m->bytes);
    rb_xmsg_put(m);
}

/* A block a peer committed, in whatever order it arrived: the sequencer
 * puts it in place (holding it ahead of a hole, dropping what was already
 * released). */
static void on_replica_in(void *ctx, rb_xmsg *m)
{
    rb_shard *sh = ctx;
    rb_owner *o = sh->owner;
    rb_block *b = m->ptr;
    m->ptr = NULL;
    rb_xmsg_put(m);
    const uint8_t *name = (const uint8_t *)b->topic;
    rb_topic *t = topic_get(o, name, b->topic_len, rb_hash_bytes(name, b->topic_len));
    if (t == NULL || t->cls->ephemeral) {
        /* An ephemeral topic here is one a peer stores (its config differs):
         * its seqs are not this node's, whose own they would break. */
        rb_block_unref(b);
        return;
    }
    if (b->last_seq > t->head) {
        t->head = b->last_seq;
    }
    rb_topicz_head(o->shard, &t->topicz, t->name, t->name_len, t->head, 0);
    if (!any_interest(t)) {
        rb_seq_skip(&t->seq, b->last_seq);
        rb_block_unref(b);
        return;
    }
    rb_seq_commit(&t->seq, b, &seq_ops, t);
    send_released(o);
}

/* Topics and their hash buckets, batches, head queries, heads requests and
 * the hole reader's arena, each pool at its bound. */
static uint64_t owner_memory_bytes(const rb_config *cfg)
{
    return (uint64_t)RB_OWNER_TOPICS_MAX * (sizeof(rb_topic) + 2 * sizeof(rb_topic *)) +
           (uint64_t)RB_OWNER_BATCHES_MAX * sizeof(batch) +
           (uint64_t)RB_OWNER_WAITERS_MAX * sizeof(waiter) +
           (uint64_t)cfg->dedup_keys_per_shard * (sizeof(dedup_ent) + 2 * sizeof(dedup_ent *)) +
           (uint64_t)RB_DEDUP_WAITERS_MAX * sizeof(dedup_wait) +
           (uint64_t)RB_OWNER_REFRESHES_MAX * sizeof(refresh) + 2ull * cfg->max_frame_bytes +
           (uint64_t)RB_OWNER_EPH_DUP_BATCHES_MAX * sizeof(eph_dups);
}

const rb_subsystem rb_owner_subsystem = {
    .name = "owners",
    .init = owner_init,
    .flush = owner_flush,
    .idle = owner_idle,
    .deinit = owner_deinit,
    .memory_bytes = owner_memory_bytes,
};
