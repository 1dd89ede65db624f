/* Topic owners (DESIGN §2): a topic is owned by shard hash(topic) % shards.
 * The owner is the only appender of its topics: it batches the publishes
 * that reach it from every shard (group commit: all that arrive while an
 * append is in flight go in the next one), learns the seq range at commit,
 * acks the publishers through their shards, and fans each committed batch
 * out once per interested shard as one shared, reference-counted block.
 * It also keeps which shards have live subscribers per topic and answers
 * their head queries (the ceiling of the live gate).
 *
 * This file also owns the publisher side: validating a PUBLISH on the
 * connection's shard, forwarding it, and turning ack records into
 * PUBLISH_ACK or ERROR frames. */
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/hash.h"
#include "common/log.h"
#include "server/server.h"

/* Publish record: conn index, gen, corr, payload len, topic len, topic,
 * payload. */
#define PUB_REC_FIXED (4 + 4 + 8 + 4 + 1)
/* Ack record: conn index, gen, corr, seq, code, topic len, topic, message
 * len, message. */
#define ACK_REC_FIXED (4 + 4 + 8 + 8 + 2 + 1 + 2)
/* Interest record: op, conn index, gen, token, topic len, topic. */
#define INT_REC_FIXED (1 + 4 + 4 + 8 + 1)
/* Head record: conn index, gen, token, head, status, topic len, topic. */
#define HEAD_REC_FIXED (4 + 4 + 8 + 8 + 4 + 1)

typedef struct reply_to {
    rb_xmsg *src;
    uint32_t conn_index;
    uint32_t conn_gen;
    uint64_t corr;
    uint16_t shard;
} reply_to;

typedef struct rb_topic rb_topic;

typedef struct batch {
    struct batch *next;
    rb_topic *topic;
    uint32_t count;
    uint32_t item_bytes;
    rb_append_req req;
    rb_bytes payloads[RB_OWNER_BATCH_MESSAGES_MAX];
    reply_to replies[RB_OWNER_BATCH_MESSAGES_MAX];
} batch;

typedef struct waiter {
    struct waiter *next;
    uint16_t shard;
    uint32_t conn_index;
    uint32_t conn_gen;
    uint64_t token;
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
    rb_topic *dirty_next;
    rb_owner *owner;
    uint64_t head;
    bool refresh_queued; /* on the owner's refresh list */
    bool refreshing;     /* in a heads request in flight */
    bool dirty;
    uint8_t name_len;
    char name[RB_TOPIC_BYTES_MAX + 1];
    batch *inflight;
    batch *fill_head;
    batch *fill_tail;
    waiter *waiters; /* head queries answered by the next refresh */
    rb_topic *refresh_next;
    uint64_t interest[RB_SHARDS_MAX / 64]; /* shards with live subscribers */
};

struct rb_owner {
    rb_shard *shard;
    rb_topic **buckets;
    uint32_t bucket_count;
    uint32_t topic_count;
    rb_topic *dirty;
    uint32_t busy; /* appends and head refreshes in flight */
    rb_topic *refresh_head;
    rb_topic *refresh_tail;
    rb_pool refresh_pool;
    rb_pool topic_pool;
    rb_pool batch_pool;
    rb_pool waiter_pool;
};

static void owner_on_xmsg(void *ctx, rb_xmsg *m);

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
    sh->owner = o;
    if (rc == 0) {
        rb_mailbox_register(&sh->mail, RB_XK_PUBLISH, owner_on_xmsg, sh);
        rb_mailbox_register(&sh->mail, RB_XK_ACK, owner_on_xmsg, sh);
        rb_mailbox_register(&sh->mail, RB_XK_INTEREST, owner_on_xmsg, sh);
    }
    return rc;
}

static void owner_deinit(rb_shard *sh)
{
    rb_owner *o = sh->owner;
    if (o == NULL) {
        return;
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
            rb_pool_put(&o->topic_pool, t);
            t = next;
        }
    }
    free(o->buckets);
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
    return o->busy == 0 && o->dirty == NULL && o->refresh_head == NULL;
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
static rb_topic *topic_get(rb_owner *o, const uint8_t *name, size_t len)
{
    uint64_t h = rb_hash_bytes(name, len);
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

static void send_ack(rb_shard *sh, const reply_to *r, rb_topic *t, uint64_t seq, uint16_t code,
                     const char *msg)
{
    size_t msg_len = msg != NULL ? strlen(msg) : 0;
    size_t len = ACK_REC_FIXED + t->name_len + msg_len;
    uint8_t *p = rb_mailbox_reserve(&sh->mail, r->shard, RB_XK_ACK, len);
    if (p == NULL) {
        /* No envelope: the publisher's connection never gets this ack and
         * will see its publish time out; the shard logs it once here. */
        RB_LOG_ERROR(0, "no envelope for an ack to shard %u", r->shard);
        return;
    }
    uint16_t ml = (uint16_t)msg_len;
    p = rb_rec_put(p, &r->conn_index, 4);
    p = rb_rec_put(p, &r->conn_gen, 4);
    p = rb_rec_put(p, &r->corr, 8);
    p = rb_rec_put(p, &seq, 8);
    p = rb_rec_put(p, &code, 2);
    p = rb_rec_put(p, &t->name_len, 1);
    p = rb_rec_put(p, t->name, t->name_len);
    p = rb_rec_put(p, &ml, 2);
    rb_rec_put(p, msg, msg_len);
    rb_mailbox_commit(&sh->mail, r->shard, len);
}

static void release_src(rb_xmsg *m)
{
    RB_ASSERT(m->pending > 0);
    if (--m->pending == 0) {
        rb_xmsg_put(m);
    }
}

static void fail_batch(rb_shard *sh, batch *b, uint16_t code, const char *msg)
{
    for (uint32_t i = 0; i < b->count; i++) {
        send_ack(sh, &b->replies[i], b->topic, 0, code, msg);
        release_src(b->replies[i].src);
    }
}

/* ---- fan-out ---- */

static bool has_interest(const rb_topic *t)
{
    for (size_t i = 0; i < RB_SHARDS_MAX / 64; i++) {
        if (t->interest[i] != 0) {
            return true;
        }
    }
    return false;
}

static rb_block *build_block(rb_shard *sh, rb_topic *t, const batch *b)
{
    rb_block *blk = rb_mailbox_block(&sh->mail);
    if (blk == NULL) {
        return NULL;
    }
    blk->first_seq = b->req.first_seq;
    blk->last_seq = b->req.last_seq;
    blk->count = b->count;
    blk->topic_len = t->name_len;
    memcpy(blk->topic, t->name, t->name_len);
    blk->topic[t->name_len] = '\0';
    rb_bytes topic = {(const uint8_t *)t->name, t->name_len};
    for (uint32_t i = 0; i < b->count; i++) {
        size_t n = rb_frame_encode_messages_item(blk->data + blk->bytes, blk->cap - blk->bytes,
                                                 topic, b->req.first_seq + i, b->payloads[i]);
        RB_ASSERT(n > 0);
        blk->bytes += (uint32_t)n;
    }
    return blk;
}

static void fan_out(rb_shard *sh, rb_topic *t, const batch *b)
{
    if (!has_interest(t)) {
        return;
    }
    rb_block *blk = build_block(sh, t, b);
    if (blk == NULL) {
        /* Subscribers will see a seq jump and repair from storage. */
        RB_LOG_WARN(0, "topic %s: no block for fan-out of seq %llu..%llu", t->name,
                    (unsigned long long)b->req.first_seq, (unsigned long long)b->req.last_seq);
        return;
    }
    for (uint32_t s = 0; s < sh->server->shard_count; s++) {
        if ((t->interest[s / 64] & (1ull << (s % 64))) == 0) {
            continue;
        }
        rb_xmsg *m = rb_mailbox_xmsg(&sh->mail);
        if (m == NULL) {
            RB_LOG_WARN(0, "topic %s: no envelope for fan-out to shard %u", t->name, s);
            continue;
        }
        m->kind = RB_XK_BLOCK;
        rb_block_ref(blk);
        m->ptr = blk;
        rb_mailbox_send(&sh->mail, s, m);
    }
    rb_block_unref(blk);
}

/* ---- appends ---- */

static void start_append(rb_topic *t);
static void start_refreshes(rb_owner *o);

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
        RB_LOG_ERROR(0, "topic %s: append of %u failed: %s", t->name, b->count, req->err.msg);
        fail_batch(sh, b, RB_WIRE_UNAVAILABLE, "storage unavailable: publish not committed");
    } else {
        RB_ASSERT(req->last_seq - req->first_seq + 1 == b->count);
        if (req->last_seq > t->head) {
            t->head = req->last_seq;
        }
        fan_out(sh, t, b);
        for (uint32_t i = 0; i < b->count; i++) {
            send_ack(sh, &b->replies[i], t, req->first_seq + i, RB_WIRE_OK, NULL);
            release_src(b->replies[i].src);
        }
    }
    rb_pool_put(&o->batch_pool, b);
    if (t->fill_head != NULL) {
        start_append(t);
    }
}

static void start_append(rb_topic *t)
{
    rb_owner *o = t->owner;
    rb_shard *sh = o->shard;
    if (t->inflight != NULL || t->fill_head == NULL) {
        return;
    }
    batch *b = t->fill_head;
    t->fill_head = b->next;
    if (t->fill_head == NULL) {
        t->fill_tail = NULL;
    }
    b->next = NULL;
    memset(&b->req, 0, sizeof b->req);
    b->req.topic = (rb_bytes){(const uint8_t *)t->name, t->name_len};
    b->req.payloads = b->payloads;
    b->req.count = b->count;
    b->req.done = append_done;
    b->req.ctx = b;
    int rc = sh->server->storage_ops->append(sh->storage, &b->req);
    if (rc != 0) {
        fail_batch(sh, b, rc == RB_ELIMIT ? RB_WIRE_RESOURCE_EXHAUSTED : RB_WIRE_UNAVAILABLE,
                   "storage refused the append");
        rb_pool_put(&o->batch_pool, b);
        if (t->fill_head != NULL) {
            topic_mark_dirty(t);
        }
        return;
    }
    t->inflight = b;
    o->busy++;
}

static void owner_flush(rb_shard *sh)
{
    rb_owner *o = sh->owner;
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

static void send_head(rb_shard *sh, rb_topic *t, uint16_t to, uint32_t idx, uint32_t gen,
                      uint64_t token, int32_t status)
{
    size_t len = HEAD_REC_FIXED + t->name_len;
    uint8_t *p = rb_mailbox_reserve(&sh->mail, to, RB_XK_HEAD, len);
    if (p == NULL) {
        RB_LOG_ERROR(0, "topic %s: no envelope for a head reply to shard %u", t->name, to);
        return;
    }
    p = rb_rec_put(p, &idx, 4);
    p = rb_rec_put(p, &gen, 4);
    p = rb_rec_put(p, &token, 8);
    p = rb_rec_put(p, &t->head, 8);
    p = rb_rec_put(p, &status, 4);
    p = rb_rec_put(p, &t->name_len, 1);
    rb_rec_put(p, t->name, t->name_len);
    rb_mailbox_commit(&sh->mail, to, len);
}

static void reply_waiters(rb_owner *o, rb_topic *t, int32_t status)
{
    while (t->waiters != NULL) {
        waiter *w = t->waiters;
        t->waiters = w->next;
        send_head(o->shard, t, w->shard, w->conn_index, w->conn_gen, w->token, status);
        rb_pool_put(&o->waiter_pool, w);
    }
}

static void refresh_done(rb_heads_req *req)
{
    refresh *r = req->ctx;
    rb_owner *o = r->owner;
    o->busy--;
    if (req->status != 0) {
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
        reply_waiters(o, t, req->status == 0 ? 0 : RB_ESTORAGE);
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
    rb_topic *t = topic_get(o, p, tlen);
    if (t == NULL) {
        RB_LOG_ERROR(0, "owner topic table full (%u)", RB_OWNER_TOPICS_MAX);
        return;
    }
    if (op == RB_INTEREST_UNSUB) {
        t->interest[from / 64] &= ~(1ull << (from % 64));
        return;
    }
    if (op == RB_INTEREST_SUB) {
        t->interest[from / 64] |= 1ull << (from % 64);
    }
    /* The ceiling is read from storage after the interest is set, so it
     * covers what other nodes committed too. */
    waiter *w = rb_pool_get(&o->waiter_pool);
    if (w == NULL) {
        send_head(sh, t, from, idx, gen, token, RB_ELIMIT);
        return;
    }
    *w = (waiter){
        .next = t->waiters, .shard = from, .conn_index = idx, .conn_gen = gen, .token = token};
    t->waiters = w;
    queue_refresh(o, t);
}

int rb_owner_interest(rb_shard *sh, uint8_t op, const rb_conn *c, uint64_t token,
                      const uint8_t *topic, uint8_t topic_len)
{
    uint32_t to = rb_topic_owner_shard(sh->server, topic, topic_len);
    size_t len = INT_REC_FIXED + topic_len;
    uint8_t *p = rb_mailbox_reserve(&sh->mail, to, RB_XK_INTEREST, len);
    if (p == NULL) {
        return RB_ELIMIT;
    }
    uint32_t idx = c != NULL ? c->index : 0;
    uint32_t gen = c != NULL ? c->gen : 0;
    p = rb_rec_put(p, &op, 1);
    p = rb_rec_put(p, &idx, 4);
    p = rb_rec_put(p, &gen, 4);
    p = rb_rec_put(p, &token, 8);
    p = rb_rec_put(p, &topic_len, 1);
    rb_rec_put(p, topic, topic_len);
    rb_mailbox_commit(&sh->mail, to, len);
    return 0;
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
    if (t->fill_tail == NULL) {
        t->fill_head = b;
    } else {
        t->fill_tail->next = b;
    }
    t->fill_tail = b;
    return b;
}

static void on_publish_record(rb_shard *sh, rb_xmsg *m, const uint8_t *p, const uint8_t **next)
{
    reply_to r = {.src = m, .shard = m->from_shard};
    uint32_t plen;
    uint8_t tlen;
    p = rb_rec_get(p, &r.conn_index, 4);
    p = rb_rec_get(p, &r.conn_gen, 4);
    p = rb_rec_get(p, &r.corr, 8);
    p = rb_rec_get(p, &plen, 4);
    p = rb_rec_get(p, &tlen, 1);
    const uint8_t *topic = p;
    const uint8_t *payload = p + tlen;
    *next = payload + plen;
    rb_topic *t = topic_get(sh->owner, topic, tlen);
    uint16_t code = RB_WIRE_RESOURCE_EXHAUSTED;
    const char *why = "owner shard is at its topic limit";
    batch *b = NULL;
    if (t != NULL) {
        b = fill_batch(t, rb_frame_messages_item_size(tlen, plen));
        why = "owner shard is at its batch limit";
    }
    if (b == NULL) {
        rb_topic tmp;
        tmp.name_len = tlen;
        memcpy(tmp.name, topic, tlen);
        send_ack(sh, &r, t != NULL ? t : &tmp, 0, code, why);
        release_src(m);
        return;
    }
    b->payloads[b->count] = (rb_bytes){payload, plen};
    b->replies[b->count] = r;
    b->count++;
    b->item_bytes += (uint32_t)rb_frame_messages_item_size(tlen, plen);
    topic_mark_dirty(t);
}

/* ---- acks arriving at the publisher's shard ---- */

static void on_ack_record(rb_shard *sh, const uint8_t *p, const uint8_t **next)
{
    uint32_t idx;
    uint32_t gen;
    uint64_t corr;
    uint64_t seq;
    uint16_t code;
    uint8_t tlen;
    uint16_t mlen;
    p = rb_rec_get(p, &idx, 4);
    p = rb_rec_get(p, &gen, 4);
    p = rb_rec_get(p, &corr, 8);
    p = rb_rec_get(p, &seq, 8);
    p = rb_rec_get(p, &code, 2);
    p = rb_rec_get(p, &tlen, 1);
    rb_bytes topic = {p, tlen};
    p += tlen;
    p = rb_rec_get(p, &mlen, 2);
    *next = p + mlen;
    rb_conn *c = rb_conn_lookup(sh, idx, gen);
    if (c == NULL) {
        return;
    }
    RB_ASSERT(c->publishes_in_flight > 0);
    c->publishes_in_flight--;
    if (c->state == RB_CONN_CLOSING) {
        return;
    }
    if (code == RB_WIRE_OK) {
        uint8_t *out = rb_conn_reserve(c, RB_FRAME_HEADER_BYTES + 1 + RB_TOPIC_BYTES_MAX + 8);
        if (out == NULL) {
            rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED, "send queue full");
            return;
        }
        size_t n = rb_frame_encode_publish_ack(out, RB_CHUNK_BYTES, corr, topic, seq);
        rb_conn_commit(c, n);
    } else {
        rb_conn_send_error(c, corr, code, "%.*s", (int)mlen, (const char *)(p));
    }
    if (rb_conn_send_full(c, 0)) {
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED,
                      "send queue over its limit: the client does not read its acks");
        return;
    }
    rb_conn_maybe_finish_drain(c);
}

static void owner_on_xmsg(void *ctx, rb_xmsg *m)
{
    rb_shard *sh = ctx;
    const uint8_t *p = m->data;
    const uint8_t *end = m->data + m->bytes;
    if (m->kind == RB_XK_PUBLISH) {
        /* The envelope lives until every publish in it is committed. */
        m->pending = m->count + 1;
        for (uint32_t i = 0; i < m->count; i++) {
            on_publish_record(sh, m, p, &p);
        }
        RB_ASSERT(p == end);
        release_src(m);
        return;
    }
    if (m->kind == RB_XK_ACK) {
        for (uint32_t i = 0; i < m->count; i++) {
            on_ack_record(sh, p, &p);
        }
    } else if (m->kind == RB_XK_INTEREST) {
        for (uint32_t i = 0; i < m->count; i++) {
            uint8_t tlen = p[INT_REC_FIXED - 1];
            on_interest(sh, m->from_shard, p);
            p += INT_REC_FIXED + tlen;
        }
    }
    RB_ASSERT(p == end);
    rb_xmsg_put(m);
}

/* ---- PUBLISH on the connection's shard ---- */

void rb_owner_on_publish(rb_conn *c, const rb_frame *f)
{
    rb_shard *sh = c->shard;
    uint64_t corr = f->hdr.corr_id;
    rb_bytes topic = f->u.publish.topic;
    rb_bytes payload = f->u.publish.payload;
    rb_err err;
    if (c->state != RB_CONN_OPEN) {
        return;
    }
    if (rb_topic_validate(topic, false, &err) != 0) {
        uint16_t code =
            topic.len > 0 && topic.ptr[0] == '$' ? RB_WIRE_FORBIDDEN : RB_WIRE_INVALID_TOPIC;
        rb_conn_send_error(c, corr, code, "%s", err.msg);
        return;
    }
    size_t max_payload = sh->server->cfg.max_frame_bytes - RB_FRAME_MESSAGES_HEAD_BYTES -
                         rb_frame_messages_item_size(topic.len, 0);
    if (payload.len > max_payload) {
        rb_conn_send_error(c, corr, RB_WIRE_TOO_LARGE,
                           "payload of %zu bytes exceeds the limit of %zu for this topic",
                           payload.len, max_payload);
        return;
    }
    if (c->publishes_in_flight >= RB_CONN_PUBLISHES_IN_FLIGHT_MAX) {
        rb_conn_send_error(c, corr, RB_WIRE_RESOURCE_EXHAUSTED,
                           "more than %u publishes awaiting their ack",
                           RB_CONN_PUBLISHES_IN_FLIGHT_MAX);
        return;
    }
    uint32_t to = rb_topic_owner_shard(sh->server, topic.ptr, topic.len);
    size_t len = PUB_REC_FIXED + topic.len + payload.len;
    uint8_t *p = rb_mailbox_reserve(&sh->mail, to, RB_XK_PUBLISH, len);
    if (p == NULL) {
        rb_conn_send_error(c, corr, RB_WIRE_RESOURCE_EXHAUSTED,
                           "shard queues are full; retry the publish");
        return;
    }
    uint32_t plen = (uint32_t)payload.len;
    uint8_t tlen = (uint8_t)topic.len;
    p = rb_rec_put(p, &c->index, 4);
    p = rb_rec_put(p, &c->gen, 4);
    p = rb_rec_put(p, &corr, 8);
    p = rb_rec_put(p, &plen, 4);
    p = rb_rec_put(p, &tlen, 1);
    p = rb_rec_put(p, topic.ptr, topic.len);
    rb_rec_put(p, payload.ptr, payload.len);
    rb_mailbox_commit(&sh->mail, to, len);
    c->publishes_in_flight++;
}

const rb_subsystem rb_owner_subsystem = {
    .name = "owners",
    .init = owner_init,
    .flush = owner_flush,
    .idle = owner_idle,
    .deinit = owner_deinit,
};
