/* Subscription streams (DESIGN §2 "Single writer per stream", "Catch-up
 * then live"). Each connection has at most one stream, owned by its shard;
 * this file is the only code that writes MESSAGES, TOPICS_LIVE and
 * CATCHUP_COMPLETE to it. Per added topic (an entry):
 *   1. register live interest on this shard (committed blocks for the topic
 *      now reach the entry's pending buffer) and ask the owner for its head
 *      (an RB_INTEREST_SUB or _QUERY record; the reply travels the same FIFO
 *      queue as the owner's blocks, so every later commit reaches us);
 *   2. the head is the ceiling; history (cursor, ceiling] is read from
 *      storage in batches shared across streams (bounded readers per shard);
 *   3. pending blocks are merged through the high-water mark (seq <= hwm
 *      dropped; a hole is read from storage, never skipped);
 *   4. TOPICS_LIVE, then live blocks go straight to the send queue as
 *      references (no copy per subscriber).
 * A wave (one Mutate that adds topics) ends with CATCHUP_COMPLETE when all
 * its entries are live, done (history_only) or removed. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/hash.h"
#include "common/log.h"
#include "server/ephemeral.h"
#include "server/interest.h"
#include "server/server.h"

enum {
    E_WAIT_HEAD = 1,
    E_CATCHUP,
    E_LIVE
};

typedef struct entry entry;
typedef struct subtopic subtopic;

struct entry {
    entry *hash_next;
    entry *tprev;
    entry *tnext;
    entry *qnext;
    rb_stream *stream;
    subtopic *sub;
    uint64_t token;
    uint64_t ceiling;
    uint64_t cursor; /* the add's cursor (the head for "now") */
    uint64_t hwm;    /* highest seq delivered, or the cursor */
    uint32_t wave;   /* wave slot + 1, 0 when not part of a wave */
    uint8_t state;
    bool history_only;
    bool from_now;
    bool queued;
    bool reading;
    bool dead;
    bool marked; /* named by a remove of the Mutate being validated */
    rb_seg *pend_head;
    rb_seg *pend_tail;
    uint64_t pend_bytes;
    /* Ephemeral topics (server/ephemeral.h): live at once, no history.
     * hwm is the last seq sent or counted as skipped; the lag list holds
     * the blocks after it that wait for the send queue to drain. */
    bool eph;
    bool echo;
    bool eph_fresh;   /* no block yet: the first one sets hwm */
    bool lag_listed;  /* on the stream's list of lagging entries */
    uint64_t skipped; /* dropped since the last LAGGED, told before the next message */
    rb_seg *lag_head;
    rb_seg *lag_tail;
    uint64_t lag_bytes;
    entry *lag_prev;
    entry *lag_next;
    uint8_t name_len;
    char name[RB_TOPIC_BYTES_MAX + 1];
};

struct subtopic {
    subtopic *hash_next;
    entry *head;
    uint32_t count;
    uint8_t name_len;
    char name[RB_TOPIC_BYTES_MAX + 1];
};

typedef struct wave {
    uint64_t mutate_id;
    uint64_t corr;
    uint32_t remaining;
    bool used;
    uint64_t start_ms; /* loop time of its MUTATE */
} wave;

struct rb_stream {
    rb_conn *conn;
    entry **buckets;
    uint32_t bucket_count;
    uint32_t entry_count;
    uint32_t wave_count;
    uint64_t next_token;
    entry *lag_first;   /* ephemeral entries with a lag list */
    uint64_t lag_bytes; /* block bytes of all their lag lists */
    wave waves[RB_STREAM_WAVES_MAX];
};

typedef struct reader {
    rb_read_req req;
    struct rb_subs *subs;
    rb_read_range *ranges;
    entry **entries;
    uint8_t *arena;
    bool busy;
} reader;

/* One unique add of a Mutate, after collapsing duplicates. */
typedef struct add_item {
    uint64_t hash;
    rb_bytes topic;
    uint64_t cursor;
    bool now;
} add_item;

struct rb_subs {
    rb_shard *shard;
    subtopic **buckets;
    uint32_t bucket_count;
    uint32_t count;
    rb_pool entry_pool;
    rb_pool sub_pool;
    rb_pool stream_pool;
    entry *q_head;
    entry *q_tail;
    reader *readers;
    uint32_t reader_count;
    add_item *scratch;
    uint32_t scratch_cap;
    uint64_t epoch; /* the store's epoch, announced in STARTED */
};

static void read_done(rb_read_req *req);
static entry *cq_pop(rb_subs *s);

static void stream_on_xmsg(void *ctx, rb_xmsg *m);

/* Entries of one shard: every stream at topics_per_stream, within the
 * shard's bound (subscribed topics are at most as many). */
static uint32_t stream_entries_max(const rb_config *cfg)
{
    uint64_t n = (uint64_t)cfg->max_connections * cfg->topics_per_stream;
    return n < RB_SHARD_ENTRIES_MAX ? (uint32_t)n : RB_SHARD_ENTRIES_MAX;
}

static int stream_init(rb_shard *sh, rb_err *err)
{
    const rb_config *cfg = &sh->server->cfg;
    rb_subs *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "shard %u: subscriptions", sh->id);
    }
    sh->subs = s;
    s->shard = sh;
    /* Shards start once storage is ready, so the epoch is known. */
    s->epoch = sh->server->storage_ops->epoch(sh->server->storage);
    s->bucket_count = 1024;
    s->buckets = calloc(s->bucket_count, sizeof *s->buckets);
    s->reader_count = cfg->catchup_queries_in_flight;
    s->readers = calloc(s->reader_count, sizeof *s->readers);
    if (s->buckets == NULL || s->readers == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "shard %u: subscription tables", sh->id);
    }
    /* A reader's arena holds two frames' worth of rows, so one row of any
     * accepted size always fits. */
    size_t arena = 2 * (size_t)cfg->max_frame_bytes;
    for (uint32_t i = 0; i < s->reader_count; i++) {
        reader *r = &s->readers[i];
        r->ranges = calloc(cfg->catchup_topics_per_query, sizeof *r->ranges);
        r->entries = calloc(cfg->catchup_topics_per_query, sizeof *r->entries);
        r->arena = malloc(arena);
        if (r->ranges == NULL || r->entries == NULL || r->arena == NULL) {
            return rb_err_set(err, RB_ENOMEM, 0, "shard %u: catch-up readers", sh->id);
        }
        r->req.ranges = r->ranges;
        r->req.arena = r->arena;
        r->req.arena_cap = arena;
        r->req.done = read_done;
        r->req.ctx = r;
        r->subs = s;
    }
    uint32_t entries = stream_entries_max(cfg);
    int rc = rb_pool_init(&s->entry_pool, "entries", sizeof(entry), entries, err);
    rc = rc ? rc : rb_pool_init(&s->sub_pool, "subtopics", sizeof(subtopic), entries, err);
    rc =
        rc ? rc
           : rb_pool_init(&s->stream_pool, "streams", sizeof(rb_stream), cfg->max_connections, err);
    if (rc == 0) {
        rb_mailbox_register(&sh->mail, RB_XK_HEAD, stream_on_xmsg, sh);
        rb_mailbox_register(&sh->mail, RB_XK_BLOCK, stream_on_xmsg, sh);
    }
    return rc;
}

uint64_t rb_stream_epoch(const rb_shard *sh)
{
    RB_ASSERT(sh->subs != NULL && sh->subs->epoch != 0);
    return sh->subs->epoch;
}

static bool stream_idle(rb_shard *sh)
{
    rb_subs *s = sh->subs;
    for (uint32_t i = 0; i < s->reader_count; i++) {
        if (s->readers[i].busy) {
            return false;
        }
    }
    return true;
}

static void stream_deinit(rb_shard *sh)
{
    rb_subs *s = sh->subs;
    if (s == NULL) {
        return;
    }
    /* Entries removed while queued are freed when popped; pop them now. */
    entry *e;
    while ((e = cq_pop(s)) != NULL) {
        RB_ASSERT(e->dead);
        rb_pool_put(&s->entry_pool, e);
    }
    for (uint32_t i = 0; i < s->reader_count; i++) {
        RB_ASSERT(!s->readers[i].busy);
        free(s->readers[i].ranges);
        free(s->readers[i].entries);
        free(s->readers[i].arena);
    }
    free(s->readers);
    free(s->buckets);
    free(s->scratch);
    rb_pool_deinit(&s->stream_pool);
    rb_pool_deinit(&s->sub_pool);
    rb_pool_deinit(&s->entry_pool);
    free(s);
    sh->subs = NULL;
}

/* ---- shard subscription index ---- */

static subtopic *sub_find(rb_subs *s, const uint8_t *name, size_t len, uint64_t h)
{
    for (subtopic *t = s->buckets[h & (s->bucket_count - 1)]; t != NULL; t = t->hash_next) {
        if (t->name_len == len && memcmp(t->name, name, len) == 0) {
            return t;
        }
    }
    return NULL;
}

static void sub_grow(rb_subs *s)
{
    uint32_t n = s->bucket_count * 2;
    subtopic **b = calloc(n, sizeof *b);
    if (b == NULL) {
        return;
    }
    for (uint32_t i = 0; i < s->bucket_count; i++) {
        subtopic *t = s->buckets[i];
        while (t != NULL) {
            subtopic *next = t->hash_next;
            uint64_t h = rb_hash_bytes((const uint8_t *)t->name, t->name_len) & (n - 1);
            t->hash_next = b[h];
            b[h] = t;
            t = next;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->bucket_count = n;
}

/* Registers e for live blocks of its topic on this shard; false when a
 * limit refused it. The owner hears SUB for the first local subscriber. */
static bool sub_register(rb_subs *s, entry *e)
{
    uint64_t h = rb_hash_bytes((const uint8_t *)e->name, e->name_len);
    subtopic *t = sub_find(s, (const uint8_t *)e->name, e->name_len, h);
    uint8_t op = RB_INTEREST_QUERY;
    if (t == NULL) {
        t = rb_pool_get(&s->sub_pool);
        if (t == NULL) {
            return false;
        }
        memset(t, 0, sizeof *t);
        t->name_len = e->name_len;
        memcpy(t->name, e->name, e->name_len);
        if (s->count >= s->bucket_count) {
            sub_grow(s);
        }
        uint32_t b = (uint32_t)(h & (s->bucket_count - 1));
        t->hash_next = s->buckets[b];
        s->buckets[b] = t;
        s->count++;
        op = RB_INTEREST_SUB;
    }
    /* An ephemeral entry asks for no head: the shard's interest is enough. */
    bool ask = op == RB_INTEREST_SUB || !e->eph;
    if (ask && rb_interest_send(s->shard, op, e->stream->conn, e->token, (const uint8_t *)e->name,
                                e->name_len) != 0) {
        if (t->count == 0) {
            /* Undo the new subtopic: nothing was sent for it. */
            uint32_t b = (uint32_t)(h & (s->bucket_count - 1));
            s->buckets[b] = t->hash_next;
            s->count--;
            rb_pool_put(&s->sub_pool, t);
        }
        return false;
    }
    e->sub = t;
    e->tprev = NULL;
    e->tnext = t->head;
    if (t->head != NULL) {
        t->head->tprev = e;
    }
    t->head = e;
    t->count++;
    return true;
}

static void sub_unregister(rb_subs *s, entry *e)
{
    subtopic *t = e->sub;
    if (t == NULL) {
        return;
    }
    if (e->tprev != NULL) {
        e->tprev->tnext = e->tnext;
    } else {
        t->head = e->tnext;
    }
    if (e->tnext != NULL) {
        e->tnext->tprev = e->tprev;
    }
    e->sub = NULL;
    RB_ASSERT(t->count > 0);
    if (--t->count > 0) {
        return;
    }
    if (rb_interest_send(s->shard, RB_INTEREST_UNSUB, NULL, 0, (const uint8_t *)t->name,
                         t->name_len) != 0) {
        /* The owner keeps sending this shard blocks nobody reads; they are
         * dropped on arrival. */
        RB_LOG_WARN(0, "topic %s: unsubscribe could not be queued", t->name);
    }
    uint64_t h = rb_hash_bytes((const uint8_t *)t->name, t->name_len);
    subtopic **pp = &s->buckets[h & (s->bucket_count - 1)];
    while (*pp != t) {
        pp = &(*pp)->hash_next;
    }
    *pp = t->hash_next;
    s->count--;
    rb_pool_put(&s->sub_pool, t);
}

/* ---- stream entries ---- */

static entry *entry_find(rb_stream *st, const uint8_t *name, size_t len)
{
    if (st->bucket_count == 0) {
        return NULL;
    }
    uint64_t h = rb_hash_bytes(name, len);
    for (entry *e = st->buckets[h & (st->bucket_count - 1)]; e != NULL; e = e->hash_next) {
        if (e->name_len == len && memcmp(e->name, name, len) == 0) {
            return e;
        }
    }
    return NULL;
}

static bool entry_table_fit(rb_stream *st, uint32_t more)
{
    uint32_t want = st->bucket_count == 0 ? 16 : st->bucket_count;
    while (want < st->entry_count + more) {
        want *= 2;
    }
    if (want == st->bucket_count) {
        return true;
    }
    entry **b = calloc(want, sizeof *b);
    if (b == NULL) {
        return false;
    }
    for (uint32_t i = 0; i < st->bucket_count; i++) {
        entry *e = st->buckets[i];
        while (e != NULL) {
            entry *next = e->hash_next;
            uint64_t h = rb_hash_bytes((const uint8_t *)e->name, e->name_len) & (want - 1);
            e->hash_next = b[h];
            b[h] = e;
            e = next;
        }
    }
    free(st->buckets);
    st->buckets = b;
    st->bucket_count = want;
    return true;
}

static void entry_unlink(rb_stream *st, entry *e)
{
    uint64_t h = rb_hash_bytes((const uint8_t *)e->name, e->name_len);
    entry **pp = &st->buckets[h & (st->bucket_count - 1)];
    while (*pp != e) {
        pp = &(*pp)->hash_next;
    }
    *pp = e->hash_next;
    st->entry_count--;
}

static void pending_drop(rb_shard *sh, entry *e)
{
    rb_seg *s = e->pend_head;
    while (s != NULL) {
        rb_seg *next = s->next;
        rb_block_unref(s->ref);
        rb_pool_put(&sh->seg_pool, s);
        s = next;
    }
    e->pend_head = NULL;
    e->pend_tail = NULL;
    RB_STAT_SUB(sh, pending_bytes, e->pend_bytes);
    e->pend_bytes = 0;
}

/* ---- frames ---- */

static void send_catchup_complete(rb_conn *c, const wave *w)
{
    uint8_t buf[RB_FRAME_HEADER_BYTES + 8];
    /* Server-initiated: tied to its MUTATE by mutate_id, corr_id 0. */
    size_t n = rb_frame_encode_catchup_complete(buf, sizeof buf, 0, w->mutate_id);
    if (rb_conn_append(c, buf, n) != 0) {
        /* Never a silently missing CATCHUP_COMPLETE: the client learns why. */
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED,
                      "send queue full: no room for CATCHUP_COMPLETE of mutate %llu",
                      (unsigned long long)w->mutate_id);
    }
}

/* A per-topic outcome (docs/PROTOCOL.md §8.5): TOPIC_ERROR naming the
 * topic, in the wave mutate_id (0 for a live topic outside a wave). */
static void send_topic_error(rb_conn *c, uint64_t mutate_id, rb_bytes topic, uint16_t code,
                             const char *msg)
{
    uint8_t buf[RB_FRAME_HEADER_BYTES + 8 + 1 + RB_TOPIC_BYTES_MAX + 4 + RB_ERR_MSG_BYTES_MAX];
    size_t len = strnlen(msg, RB_ERR_MSG_BYTES_MAX - 1);
    size_t n = rb_frame_encode_topic_error(buf, sizeof buf, 0, mutate_id, topic, code,
                                           (rb_bytes){(const uint8_t *)msg, len});
    RB_ASSERT(n > 0);
    if (rb_conn_append(c, buf, n) != 0) {
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED, "send queue full");
    }
}

static void wave_entry_done(rb_stream *st, entry *e)
{
    if (e->wave == 0) {
        return;
    }
    wave *w = &st->waves[e->wave - 1];
    e->wave = 0;
    RB_ASSERT(w->used && w->remaining > 0);
    if (--w->remaining > 0) {
        return;
    }
    if (st->conn->state != RB_CONN_CLOSING && st->conn->state != RB_CONN_CLOSED) {
        rb_shard *sh = st->conn->shard;
        uint64_t took = rb_loop_now_ms(sh->loop) - w->start_ms;
        RB_STAT_ADD(
            sh, catchup_wave[rb_stat_bucket(rb_stat_wave_le_ms, RB_STAT_WAVE_BUCKETS, took)], 1);
        RB_STAT_ADD(sh, catchup_wave_ms, took);
        send_catchup_complete(st->conn, w);
    }
    w->used = false;
    st->wave_count--;
    rb_conn_maybe_finish_drain(st->conn);
}

static void lag_unlist(rb_stream *st, entry *e)
{
    if (!e->lag_listed) {
        return;
    }
    if (e->lag_prev == NULL) {
        st->lag_first = e->lag_next;
    } else {
        e->lag_prev->lag_next = e->lag_next;
    }
    if (e->lag_next != NULL) {
        e->lag_next->lag_prev = e->lag_prev;
    }
    e->lag_prev = NULL;
    e->lag_next = NULL;
    e->lag_listed = false;
}

/* Gives back the lag list's blocks (the entry leaves: nothing to tell). */
static void lag_drop_all(rb_shard *sh, rb_stream *st, entry *e)
{
    rb_seg *seg = e->lag_head;
    while (seg != NULL) {
        rb_seg *next = seg->next;
        rb_block_unref(seg->ref);
        rb_pool_put(&sh->seg_pool, seg);
        seg = next;
    }
    RB_ASSERT(st->lag_bytes >= e->lag_bytes);
    st->lag_bytes -= e->lag_bytes;
    e->lag_head = NULL;
    e->lag_tail = NULL;
    e->lag_bytes = 0;
    lag_unlist(st, e);
}

/* Removes e from its stream; its memory goes back now or, when a read or
 * the catch-up queue still holds it, when they let go. */
static void entry_remove(rb_subs *s, entry *e, bool complete_wave)
{
    rb_stream *st = e->stream;
    sub_unregister(s, e);
    entry_unlink(st, e);
    pending_drop(s->shard, e);
    lag_drop_all(s->shard, st, e);
    if (complete_wave) {
        wave_entry_done(st, e);
    }
    e->wave = 0;
    e->stream = NULL;
    e->dead = true;
    if (!e->queued && !e->reading) {
        rb_pool_put(&s->entry_pool, e);
    }
}

static uint64_t entry_mutate_id(const entry *e)
{
    return e->wave != 0 ? e->stream->waves[e->wave - 1].mutate_id : 0;
}

/* Ends e with a per-topic outcome: TOPIC_ERROR in its wave, then the topic
 * leaves the stream (its wave completes without it). */
static void entry_fail(rb_subs *s, entry *e, uint16_t code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void entry_fail(rb_subs *s, entry *e, uint16_t code, const char *fmt, ...)
{
    char msg[RB_ERR_MSG_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    send_topic_error(e->stream->conn, entry_mutate_id(e),
                     (rb_bytes){(const uint8_t *)e->name, e->name_len}, code, msg);
    entry_remove(s, e, true);
}

static bool conn_live(const rb_conn *c)
{
    return c->state == RB_CONN_OPEN || c->state == RB_CONN_DRAINING;
}

/* Sends the items of block b after e->hwm as one MESSAGES frame that
 * references the block. False when the connection was closed for lag. */
static bool send_block(entry *e, rb_block *b, uint64_t mutate_id)
{
    rb_conn *c = e->stream->conn;
    const uint8_t *items = b->data;
    uint32_t bytes = b->bytes;
    uint32_t count = b->count;
    if (b->first_seq <= e->hwm) {
        /* Skip the items already delivered; the rest are contiguous. */
        rb_frame_iter it;
        rb_frame_iter_init(&it, (rb_bytes){b->data, b->bytes}, b->count);
        rb_message_item m;
        while (count > 0 && rb_frame_next_item(&it, &m) && m.seq <= e->hwm) {
            size_t sz = rb_frame_messages_item_size(m.topic.len, m.payload.len);
            items += sz;
            bytes -= (uint32_t)sz;
            count--;
        }
    }
    if (count == 0) {
        return true;
    }
    if (rb_conn_send_full(c, bytes + RB_FRAME_MESSAGES_HEAD_BYTES)) {
        RB_STAT_ADD(c->shard, slow_consumer_closes, 1);
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED,
                      "subscriber too slow: send queue over %llu bytes at topic %s seq %llu",
                      (unsigned long long)c->shard->server->cfg.send_queue_bytes, e->name,
                      (unsigned long long)b->first_seq);
        return false;
    }
    uint8_t head[RB_FRAME_MESSAGES_HEAD_BYTES];
    size_t n = rb_frame_encode_messages_head(head, sizeof head, 0, mutate_id, count, bytes);
    if (rb_conn_append_frame_ref(c, head, n, b, items, bytes) != 0) {
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED, "server send buffers exhausted");
        return false;
    }
    RB_STAT_ADD(c->shard, deliveries, count);
    RB_STAT_ADD(c->shard, delivery_bytes, bytes);
    rb_connz_msgs_out(c, count);
    e->hwm = b->last_seq;
    return true;
}

static void send_topics_live(entry *e)
{
    uint8_t buf[RB_FRAME_HEADER_BYTES + 4 + 1 + RB_TOPIC_BYTES_MAX];
    rb_bytes t = {(const uint8_t *)e->name, e->name_len};
    size_t n = rb_frame_encode_topics_live(buf, sizeof buf, 0, &t, 1);
    if (rb_conn_append(e->stream->conn, buf, n) != 0) {
        rb_conn_close(e->stream->conn, RB_WIRE_RESOURCE_EXHAUSTED,
                      "send queue full: no room for TOPICS_LIVE");
    }
}

/* ---- ephemeral topics: lag instead of a close ---- */

/* Bytes a LAGGED frame takes at most. */
#define LAGGED_FRAME_BYTES (RB_FRAME_HEADER_BYTES + 1 + RB_TOPIC_BYTES_MAX + 8)

/* True when a frame of bytes of an ephemeral topic may go to the send
 * queue now: it stays within 1/RB_EPH_SENDQ_DIVISOR of send_queue_bytes
 * and of the queue's quota
 * (the rest is kept for stored topics, which are closed when it is full),
 * or the queue is empty (a frame larger than that share still goes). */
static bool eph_room(const rb_conn *c, uint64_t bytes)
{
    const rb_sendq *q = &c->sendq;
    uint64_t want = bytes + RB_FRAME_MESSAGES_HEAD_BYTES + LAGGED_FRAME_BYTES;
    if (rb_conn_send_full(c, want)) {
        return false;
    }
    /* By bytes and by what they are charged (block references count their
     * block), like the catch-up pause. */
    uint64_t share = c->shard->server->cfg.send_queue_bytes / RB_EPH_SENDQ_DIVISOR;
    return rb_sendq_bytes(q) == 0 ||
           (rb_sendq_bytes(q) + want <= share &&
            q->charge_bytes + want <= q->quota_bytes / RB_EPH_SENDQ_DIVISOR);
}

/* Messages of b after e->hwm that e would deliver (its own are left out
 * when echo is off). */
static uint64_t eph_count(const entry *e, const rb_block *b)
{
    if (e->echo) {
        return b->last_seq - (b->first_seq > e->hwm ? b->first_seq - 1 : e->hwm);
    }
    const rb_conn *c = e->stream->conn;
    rb_frame_iter it;
    rb_frame_iter_init(&it, (rb_bytes){b->data, b->bytes}, b->count);
    rb_message_item m;
    uint64_t n = 0;
    for (uint32_t i = 0; rb_frame_next_item(&it, &m); i++) {
        n += m.seq > e->hwm && !rb_eph_origin_is(b, i, (uint16_t)c->shard->id, c->index, c->gen);
    }
    return n;
}

/* b is dropped for e: what it would have delivered is counted, told by
 * the LAGGED before e's next message. */
static void eph_skip(entry *e, const rb_block *b)
{
    uint64_t n = eph_count(e, b);
    e->skipped += n;
    RB_STAT_ADD(e->stream->conn->shard, ephemeral_lagged, n);
    e->hwm = b->last_seq;
}

/* One MESSAGES frame of n items (bytes at p inside b). False when the
 * connection was closed. */
static bool eph_frame(rb_conn *c, rb_block *b, const uint8_t *p, size_t bytes, uint32_t n)
{
    uint8_t head[RB_FRAME_MESSAGES_HEAD_BYTES];
    size_t len = rb_frame_encode_messages_head(head, sizeof head, 0, 0, n, bytes);
    if (rb_conn_append_frame_ref(c, head, len, b, p, bytes) != 0) {
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED, "server send buffers exhausted");
        return false;
    }
    RB_STAT_ADD(c->shard, deliveries, n);
    RB_STAT_ADD(c->shard, delivery_bytes, bytes);
    return true;
}

/* The items of b after hwm that are not e's connection's own, as runs of
 * MESSAGES frames referencing the block. */
static bool eph_send_filtered(entry *e, rb_block *b)
{
    rb_conn *c = e->stream->conn;
    rb_frame_iter it;
    rb_frame_iter_init(&it, (rb_bytes){b->data, b->bytes}, b->count);
    rb_message_item m;
    const uint8_t *p = b->data;
    const uint8_t *run = NULL;
    size_t run_bytes = 0;
    uint32_t run_count = 0;
    for (uint32_t i = 0; rb_frame_next_item(&it, &m); i++) {
        size_t sz = rb_frame_messages_item_size(m.topic.len, m.payload.len);
        bool own = rb_eph_origin_is(b, i, (uint16_t)c->shard->id, c->index, c->gen);
        if (m.seq > e->hwm && !own) {
            run = run_count == 0 ? p : run;
            run_bytes += sz;
            run_count++;
        } else if (run_count > 0) {
            if (!eph_frame(c, b, run, run_bytes, run_count)) {
                return false;
            }
            run_bytes = 0;
            run_count = 0;
        }
        p += sz;
    }
    if (run_count > 0 && !eph_frame(c, b, run, run_bytes, run_count)) {
        return false;
    }
    e->hwm = b->last_seq;
    return true;
}

/* Delivers b to e, after the LAGGED its skipped messages are owed (a seq
 * jump counts as skipped too: never a silent gap). False when the
 * connection was closed. */
static bool eph_send(entry *e, rb_block *b)
{
    rb_conn *c = e->stream->conn;
    if (b->first_seq > e->hwm + 1) {
        e->skipped += b->first_seq - e->hwm - 1;
        e->hwm = b->first_seq - 1;
    }
    if (e->skipped > 0) {
        uint8_t buf[LAGGED_FRAME_BYTES];
        size_t n = rb_frame_encode_lagged(
            buf, sizeof buf, 0, (rb_bytes){(const uint8_t *)e->name, e->name_len}, e->skipped);
        if (rb_conn_append(c, buf, n) != 0) {
            rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED, "send queue full: no room for LAGGED");
            return false;
        }
        e->skipped = 0;
    }
    if (e->echo) {
        return send_block(e, b, 0);
    }
    return eph_send_filtered(e, b);
}

/* Drops e's oldest waiting block (counted as skipped). */
static void lag_drop_oldest(rb_shard *sh, entry *e)
{
    rb_stream *st = e->stream;
    rb_seg *seg = e->lag_head;
    rb_block *b = seg->ref;
    e->lag_head = seg->next;
    if (e->lag_head == NULL) {
        e->lag_tail = NULL;
    }
    e->lag_bytes -= b->bytes;
    st->lag_bytes -= b->bytes;
    eph_skip(e, b);
    rb_block_unref(b);
    rb_pool_put(&sh->seg_pool, seg);
    if (e->lag_head == NULL) {
        lag_unlist(st, e);
    }
}

/* b waits behind a full send queue. The stream's lag lists hold at most
 * send_queue_bytes / RB_EPH_LAG_DIVISOR of block bytes: past it e's oldest
 * are dropped, and b itself when nothing of e's is left to drop. */
static void lag_push(rb_subs *s, entry *e, rb_block *b)
{
    rb_stream *st = e->stream;
    uint64_t limit = s->shard->server->cfg.send_queue_bytes / RB_EPH_LAG_DIVISOR;
    while (st->lag_bytes + b->bytes > limit && e->lag_head != NULL) {
        lag_drop_oldest(s->shard, e);
    }
    rb_seg *seg = st->lag_bytes + b->bytes > limit ? NULL : rb_pool_get(&s->shard->seg_pool);
    if (seg == NULL) {
        eph_skip(e, b);
        return;
    }
    memset(seg, 0, sizeof *seg);
    rb_block_ref(b);
    seg->ref = b;
    if (e->lag_tail == NULL) {
        e->lag_head = seg;
    } else {
        e->lag_tail->next = seg;
    }
    e->lag_tail = seg;
    e->lag_bytes += b->bytes;
    st->lag_bytes += b->bytes;
    if (!e->lag_listed) {
        e->lag_listed = true;
        e->lag_prev = NULL;
        e->lag_next = st->lag_first;
        if (st->lag_first != NULL) {
            st->lag_first->lag_prev = e;
        }
        st->lag_first = e;
    }
}

/* A live block of an ephemeral topic: straight to the send queue when
 * nothing of e waits and there is room, else behind what waits. */
static void eph_on_block(rb_subs *s, entry *e, rb_block *b)
{
    if (e->eph_fresh) {
        /* Live at once: the first block after the add is where it starts. */
        e->eph_fresh = false;
        e->hwm = b->first_seq - 1;
    }
    if (e->lag_head == NULL && eph_room(e->stream->conn, b->bytes)) {
        (void)eph_send(e, b);
        return;
    }
    lag_push(s, e, b);
}

/* The send queue drained: the lag lists go out, oldest first per entry,
 * as far as there is room. */
static void eph_flush(rb_subs *s, rb_stream *st)
{
    rb_conn *c = st->conn;
    while (st->lag_first != NULL) {
        entry *e = st->lag_first;
        rb_seg *seg = e->lag_head;
        rb_block *b = seg->ref;
        if (!eph_room(c, b->bytes)) {
            return;
        }
        e->lag_head = seg->next;
        if (e->lag_head == NULL) {
            e->lag_tail = NULL;
            lag_unlist(st, e);
        }
        e->lag_bytes -= b->bytes;
        st->lag_bytes -= b->bytes;
        bool ok = eph_send(e, b);
        rb_block_unref(b);
        rb_pool_put(&s->shard->seg_pool, seg);
        if (!ok) {
            return;
        }
    }
}

static void cq_push(rb_subs *s, entry *e);

/* True when the send queue is more than half full, by its bytes or by the
 * memory they are charged (chunks and block references against the
 * connection's quota): catch-up (the history and the merge of buffered
 * blocks) waits for it to drain. */
static bool conn_paused(const rb_conn *c)
{
    const rb_sendq *q = &c->sendq;
    uint64_t limit = c->shard->server->cfg.send_queue_bytes / RB_CATCHUP_PAUSE_DIVISOR;
    return rb_sendq_bytes(q) > limit || q->charge_bytes > q->quota_bytes / RB_CATCHUP_PAUSE_DIVISOR;
}

/* Catch-up reached the ceiling: merge the pending blocks through the hwm,
 * then go live (or finish a history_only entry). */
static void catchup_finish(rb_subs *s, entry *e)
{
    rb_shard *sh = s->shard;
    uint64_t mid = entry_mutate_id(e);
    while (e->pend_head != NULL) {
        rb_seg *seg = e->pend_head;
        rb_block *b = seg->ref;
        if (b->first_seq > e->hwm + 1) {
            /* A hole between what we have and what was buffered: read it. */
            e->ceiling = b->first_seq - 1;
            e->state = E_CATCHUP;
            cq_push(s, e);
            return;
        }
        if (conn_paused(e->stream->conn)) {
            /* The buffered blocks are held to pending_buffer_bytes, not to
             * the room left in the send queue: like the history, wait for
             * the queue to drain (the catch-up queue resumes the merge)
             * rather than reap a client that is reading. */
            e->state = E_CATCHUP;
            cq_push(s, e);
            return;
        }
        e->pend_head = seg->next;
        if (e->pend_head == NULL) {
            e->pend_tail = NULL;
        }
        e->pend_bytes -= b->bytes;
        RB_STAT_SUB(sh, pending_bytes, b->bytes);
        bool ok = send_block(e, b, mid);
        rb_block_unref(b);
        rb_pool_put(&sh->seg_pool, seg);
        if (!ok) {
            return;
        }
    }
    rb_stream *st = e->stream;
    if (e->history_only) {
        entry_remove(s, e, true);
        return;
    }
    bool announce = e->state != E_LIVE && e->wave != 0;
    e->state = E_LIVE;
    if (announce) {
        send_topics_live(e);
        wave_entry_done(st, e);
    }
}

/* ---- catch-up reads ---- */

static void cq_push(rb_subs *s, entry *e)
{
    if (e->queued) {
        return;
    }
    e->queued = true;
    e->qnext = NULL;
    if (s->q_tail == NULL) {
        s->q_head = e;
    } else {
        s->q_tail->qnext = e;
    }
    s->q_tail = e;
}

static entry *cq_pop(rb_subs *s)
{
    entry *e = s->q_head;
    if (e != NULL) {
        s->q_head = e->qnext;
        if (s->q_head == NULL) {
            s->q_tail = NULL;
        }
        e->queued = false;
    }
    return e;
}

static void catchup_pump(rb_subs *s)
{
    const rb_config *cfg = &s->shard->server->cfg;
    for (uint32_t i = 0; i < s->reader_count && s->q_head != NULL; i++) {
        reader *r = &s->readers[i];
        if (r->busy) {
            continue;
        }
        uint32_t n = 0;
        entry *paused_head = NULL;
        entry *paused_tail = NULL;
        while (n < cfg->catchup_topics_per_query && s->q_head != NULL) {
            entry *e = cq_pop(s);
            if (e->dead) {
                rb_pool_put(&s->entry_pool, e);
                continue;
            }
            if (conn_paused(e->stream->conn)) {
                /* Its send queue is full enough; wait for it to drain. */
                e->qnext = NULL;
                e->queued = true;
                if (paused_tail == NULL) {
                    paused_head = e;
                } else {
                    paused_tail->qnext = e;
                }
                paused_tail = e;
                continue;
            }
            rb_read_range *rg = &r->ranges[n];
            memset(rg, 0, sizeof *rg);
            rg->topic = (rb_bytes){(const uint8_t *)e->name, e->name_len};
            rg->after = e->hwm;
            rg->ceiling = e->ceiling;
            rg->rows_max = cfg->catchup_rows_per_topic;
            r->entries[n++] = e;
            e->reading = true;
        }
        if (paused_head != NULL) {
            /* Paused entries go to the back so the rest keep moving. */
            if (s->q_tail == NULL) {
                s->q_head = paused_head;
            } else {
                s->q_tail->qnext = paused_head;
            }
            s->q_tail = paused_tail;
        }
        if (n == 0) {
            return;
        }
        r->req.range_count = n;
        r->req.status = 0;
        r->req.arena_used = 0;
        int rc = s->shard->server->storage_ops->read(s->shard->storage, &r->req);
        if (rc != 0) {
            for (uint32_t k = 0; k < n; k++) {
                r->entries[k]->reading = false;
                cq_push(s, r->entries[k]);
            }
            return;
        }
        r->busy = true;
    }
}

/* Copies the rows of one range into MESSAGES frames of the entry's wave,
 * each within max_frame_bytes. */
static bool send_rows(entry *e, const uint8_t *rows, size_t bytes, uint32_t count)
{
    rb_conn *c = e->stream->conn;
    size_t limit = c->shard->server->cfg.max_frame_bytes - RB_FRAME_MESSAGES_HEAD_BYTES;
    uint64_t mid = entry_mutate_id(e);
    rb_frame_iter it;
    rb_frame_iter_init(&it, (rb_bytes){rows, bytes}, count);
    const uint8_t *start = rows;
    size_t fbytes = 0;
    uint32_t fcount = 0;
    rb_message_item m;
    bool more = true;
    while (more) {
        more = rb_frame_next_item(&it, &m);
        size_t sz = more ? rb_frame_messages_item_size(m.topic.len, m.payload.len) : 0;
        if (fcount > 0 && (!more || fbytes + sz > limit)) {
            uint8_t head[RB_FRAME_MESSAGES_HEAD_BYTES];
            rb_frame_encode_messages_head(head, sizeof head, 0, mid, fcount, fbytes);
            if (rb_conn_append_frame(c, head, sizeof head, start, fbytes) != 0) {
                /* Nothing of the frame was queued: CLOSE can follow. */
                rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED,
                              "send queue full during catch-up of topic %s", e->name);
                return false;
            }
            rb_connz_msgs_out(c, fcount);
            RB_STAT_ADD(c->shard, catchup_rows, fcount);
            start += fbytes;
            fbytes = 0;
            fcount = 0;
        }
        if (more) {
            fbytes += sz;
            fcount++;
            e->hwm = m.seq;
        }
    }
    return true;
}

static void range_done(rb_subs *s, entry *e, const rb_read_req *req, const rb_read_range *rg)
{
    rb_conn *c = e->stream->conn;
    if (!conn_live(c)) {
        return;
    }
    if (req->status != 0 || (rg->status != 0 && rg->status != RB_ERANGE)) {
        entry_fail(s, e, RB_WIRE_UNAVAILABLE, "topic %s: history read failed: %s", e->name,
                   req->status != 0 ? req->err.msg : "storage error");
        return;
    }
    if (rg->status == RB_ERANGE && e->hwm == e->cursor) {
        entry_fail(s, e, RB_WIRE_OUT_OF_RANGE,
                   "topic %s: cursor %llu is older than the oldest retained seq %llu", e->name,
                   (unsigned long long)e->hwm, (unsigned long long)rg->oldest_seq);
        return;
    }
    if (rg->status == RB_ERANGE) {
        entry_fail(s, e, RB_WIRE_OUT_OF_RANGE,
                   "topic %s: retention overtook the catch-up: seqs %llu..%llu were trimmed "
                   "before they were sent",
                   e->name, (unsigned long long)e->hwm + 1, (unsigned long long)rg->oldest_seq - 1);
        return;
    }
    if (rg->row_count > 0 &&
        !send_rows(e, req->arena + rg->rows_offset, rg->rows_bytes, rg->row_count)) {
        return;
    }
    if (rg->complete || e->hwm >= e->ceiling) {
        if (e->hwm < e->ceiling) {
            /* Storage has nothing more below the ceiling. */
            e->hwm = e->ceiling;
        }
        catchup_finish(s, e);
    } else {
        cq_push(s, e);
    }
}

static void read_done(rb_read_req *req)
{
    reader *r = req->ctx;
    rb_subs *s = r->subs;
    r->busy = false;
    /* One error per failed read, or per failed range of a read. */
    if (req->status != 0) {
        RB_STAT_ADD(s->shard, storage_errors[RB_STAT_STORE_READ], 1);
    }
    for (uint32_t i = 0; i < req->range_count; i++) {
        entry *e = r->entries[i];
        e->reading = false;
        int rs = r->ranges[i].status;
        if (req->status == 0 && rs != 0 && rs != RB_ERANGE) {
            RB_STAT_ADD(s->shard, storage_errors[RB_STAT_STORE_READ], 1);
        }
        if (e->dead) {
            if (!e->queued) {
                rb_pool_put(&s->entry_pool, e);
            }
            continue;
        }
        range_done(s, e, req, &r->ranges[i]);
    }
    catchup_pump(s);
}

/* ---- head replies from owners ---- */

static void head_ready(rb_subs *s, entry *e, uint64_t head)
{
    e->ceiling = head;
    if (e->from_now) {
        e->hwm = head;
        e->cursor = head;
    }
    if (e->hwm > head) {
        /* Never a silent jump: the client holds seqs this store never had
         * (another epoch, or a cursor made up). */
        entry_fail(s, e, RB_WIRE_CURSOR_AHEAD, "topic %s: cursor %llu is beyond the head %llu",
                   e->name, (unsigned long long)e->hwm, (unsigned long long)head);
        return;
    }
    if (e->hwm >= e->ceiling) {
        catchup_finish(s, e);
        return;
    }
    e->state = E_CATCHUP;
    cq_push(s, e);
}

static void on_head_record(rb_subs *s, const uint8_t *p, const uint8_t **next)
{
    uint32_t idx;
    uint32_t gen;
    uint64_t token;
    uint64_t head;
    int32_t status;
    uint8_t tlen;
    p = rb_rec_get(p, &idx, 4);
    p = rb_rec_get(p, &gen, 4);
    p = rb_rec_get(p, &token, 8);
    p = rb_rec_get(p, &head, 8);
    p = rb_rec_get(p, &status, 4);
    p = rb_rec_get(p, &tlen, 1);
    *next = p + tlen;
    rb_conn *c = rb_conn_lookup(s->shard, idx, gen);
    if (c == NULL || c->stream == NULL || !conn_live(c)) {
        return;
    }
    entry *e = entry_find(c->stream, p, tlen);
    if (e == NULL || e->token != token || e->state != E_WAIT_HEAD) {
        return;
    }
    if (status != 0) {
        bool limit = status == RB_ELIMIT;
        entry_fail(s, e, limit ? RB_WIRE_RESOURCE_EXHAUSTED : RB_WIRE_UNAVAILABLE, "topic %s: %s",
                   e->name,
                   limit ? "owner shard is at its head-query limit"
                         : "storage unavailable: the topic's head cannot be read");
        return;
    }
    head_ready(s, e, head);
}

/* ---- live blocks ---- */

/* Buffers b for e. False when it cannot: the connection is closed then,
 * and e may already be gone. */
static bool pending_add(rb_subs *s, entry *e, rb_block *b)
{
    rb_conn *c = e->stream->conn;
    uint64_t limit = s->shard->server->cfg.pending_buffer_bytes;
    if (e->pend_bytes + b->bytes > limit) {
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED,
                      "topic %s: live messages buffered during catch-up exceed %llu bytes", e->name,
                      (unsigned long long)limit);
        return false;
    }
    rb_seg *seg = rb_pool_get(&s->shard->seg_pool);
    if (seg == NULL) {
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED, "server buffers exhausted");
        return false;
    }
    memset(seg, 0, sizeof *seg);
    rb_block_ref(b);
    seg->ref = b;
    if (e->pend_tail == NULL) {
        e->pend_head = seg;
    } else {
        e->pend_tail->next = seg;
    }
    e->pend_tail = seg;
    e->pend_bytes += b->bytes;
    RB_STAT_ADD(s->shard, pending_bytes, b->bytes);
    return true;
}

static void on_block(rb_subs *s, rb_block *b)
{
    uint64_t h = rb_hash_bytes((const uint8_t *)b->topic, b->topic_len);
    subtopic *t = sub_find(s, (const uint8_t *)b->topic, b->topic_len, h);
    if (t == NULL) {
        return;
    }
    entry *e = t->head;
    while (e != NULL) {
        /* Delivery may close the connection and remove its entries. */
        entry *next = e->tnext;
        rb_conn *c = e->stream->conn;
        if (!conn_live(c) || (b->last_seq <= e->hwm && !e->eph_fresh)) {
            e = next;
            continue;
        }
        if (e->eph) {
            eph_on_block(s, e, b);
        } else if (e->state != E_LIVE) {
            (void)pending_add(s, e, b);
        } else if (b->first_seq > e->hwm + 1) {
            /* A seq jump (a lost fan-out): repair from storage, then this
             * block, without announcing the topic again. A refusal closes
             * the connection, which may free e at once. */
            if (!pending_add(s, e, b)) {
                e = next;
                continue;
            }
            e->ceiling = b->first_seq - 1;
            e->state = E_CATCHUP;
            cq_push(s, e);
        } else {
            send_block(e, b, 0);
        }
        e = next;
    }
}

static void stream_on_xmsg(void *ctx, rb_xmsg *m)
{
    rb_shard *sh = ctx;
    rb_subs *s = sh->subs;
    if (m->kind == RB_XK_BLOCK) {
        on_block(s, m->ptr);
    } else if (m->kind == RB_XK_HEAD) {
        const uint8_t *p = m->data;
        for (uint32_t i = 0; i < m->count; i++) {
            on_head_record(s, p, &p);
        }
        RB_ASSERT(p == m->data + m->bytes);
    }
    rb_xmsg_put(m);
    catchup_pump(s);
}

/* ---- MUTATE ---- */

static int add_cmp(const void *a, const void *b)
{
    const add_item *x = a;
    const add_item *y = b;
    if (x->hash != y->hash) {
        return x->hash < y->hash ? -1 : 1;
    }
    if (x->topic.len != y->topic.len) {
        return x->topic.len < y->topic.len ? -1 : 1;
    }
    return memcmp(x->topic.ptr, y->topic.ptr, x->topic.len);
}

/* Collects the adds into the shard's scratch array, sorted, with duplicate
 * topics collapsed to the lowest cursor ("now" is above every seq).
 * Returns the unique count, or -1 when the scratch cannot grow. */
static int collect_adds(rb_subs *s, const rb_frame *f)
{
    uint32_t n = f->u.mutate.add_count;
    if (n > s->scratch_cap) {
        add_item *a = realloc(s->scratch, (size_t)n * sizeof *a);
        if (a == NULL) {
            return -1;
        }
        s->scratch = a;
        s->scratch_cap = n;
    }
    rb_frame_iter it;
    rb_frame_iter_init(&it, f->u.mutate.adds, n);
    rb_mutate_add add;
    uint32_t i = 0;
    while (rb_frame_next_add(&it, &add)) {
        s->scratch[i++] = (add_item){.hash = rb_hash_bytes(add.topic.ptr, add.topic.len),
                                     .topic = add.topic,
                                     .cursor = add.cursor,
                                     .now = add.cursor_kind == RB_CURSOR_NOW};
    }
    if (n > 1) {
        /* A removes-only Mutate has no adds (and scratch may be NULL). */
        qsort(s->scratch, n, sizeof *s->scratch, add_cmp);
    }
    uint32_t u = 0;
    for (uint32_t k = 0; k < n; k++) {
        add_item *cur = &s->scratch[k];
        if (u > 0 && add_cmp(&s->scratch[u - 1], cur) == 0) {
            add_item *keep = &s->scratch[u - 1];
            if (keep->now || (!cur->now && cur->cursor < keep->cursor)) {
                keep->now = cur->now;
                keep->cursor = cur->cursor;
            }
            continue;
        }
        s->scratch[u++] = *cur;
    }
    return (int)u;
}

static bool mutate_error(rb_conn *c, uint64_t corr, uint16_t code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static bool mutate_error(rb_conn *c, uint64_t corr, uint16_t code, const char *fmt, ...)
{
    char msg[RB_ERR_MSG_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    rb_conn_send_error(c, corr, code, "MUTATE: %s", msg);
    return false;
}

/* Marks (or unmarks) the entries the Mutate's removes name, each once,
 * and returns how many changed: with mark, the removes that will take a
 * topic off the stream (a topic named twice or not on the stream makes no
 * room). */
static uint32_t removes_mark(rb_stream *st, const rb_frame *f, bool mark)
{
    uint32_t changed = 0;
    rb_frame_iter it;
    rb_frame_iter_init(&it, f->u.mutate.removes, f->u.mutate.remove_count);
    rb_bytes topic;
    while (st != NULL && rb_frame_next_topic(&it, &topic)) {
        entry *e = entry_find(st, topic.ptr, topic.len);
        if (e != NULL && e->marked != mark) {
            e->marked = mark;
            changed++;
        }
    }
    return changed;
}

/* The mutate_id rules (DESIGN §3): nonzero with adds, never a wave still
 * in flight (with or without adds), and a free wave slot. */
static bool mutate_id_valid(rb_conn *c, const rb_frame *f, uint32_t unique)
{
    uint64_t corr = f->hdr.corr_id;
    uint64_t mid = f->u.mutate.mutate_id;
    rb_stream *st = c->stream;
    if (unique > 0 && mid == 0) {
        return mutate_error(c, corr, RB_WIRE_INVALID_ARGUMENT,
                            "mutate_id must be nonzero when adding topics");
    }
    for (uint32_t i = 0; mid != 0 && st != NULL && i < RB_STREAM_WAVES_MAX; i++) {
        if (st->waves[i].used && st->waves[i].mutate_id == mid) {
            return mutate_error(c, corr, RB_WIRE_INVALID_ARGUMENT,
                                "mutate_id %llu is a wave still in flight",
                                (unsigned long long)mid);
        }
    }
    if (unique > 0 && st != NULL && st->wave_count >= RB_STREAM_WAVES_MAX) {
        return mutate_error(c, corr, RB_WIRE_RESOURCE_EXHAUSTED, "more than %d waves in flight",
                            RB_STREAM_WAVES_MAX);
    }
    return true;
}

/* Checks the adds against the stream with the removes marked, and counts
 * into *added the topics that will be new on the stream afterwards. */
static bool adds_valid(rb_subs *s, rb_conn *c, const rb_frame *f, uint32_t unique, uint64_t *added)
{
    rb_stream *st = c->stream;
    bool history_only = (f->u.mutate.flags & RB_MUTATE_HISTORY_ONLY) != 0;
    rb_err err;
    *added = 0;
    for (uint32_t i = 0; i < unique; i++) {
        add_item *a = &s->scratch[i];
        if (rb_topic_validate(a->topic, true, &err) != 0) {
            return mutate_error(c, f->hdr.corr_id, RB_WIRE_INVALID_TOPIC, "%s", err.msg);
        }
        entry *e = st != NULL ? entry_find(st, a->topic.ptr, a->topic.len) : NULL;
        bool stays = e != NULL && !e->marked;
        if (stays && history_only) {
            return mutate_error(c, f->hdr.corr_id, RB_WIRE_INVALID_ARGUMENT,
                                "history_only add of topic %.*s that is live or catching up",
                                (int)a->topic.len, (const char *)a->topic.ptr);
        }
        *added += stays ? 0 : 1;
    }
    return true;
}

/* Checks the whole Mutate before any part applies. */
static bool mutate_valid(rb_subs *s, rb_conn *c, const rb_frame *f, uint32_t unique)
{
    const rb_config *cfg = s->shard->cfg;
    rb_stream *st = c->stream;
    rb_err err;
    if (!mutate_id_valid(c, f, unique)) {
        return false;
    }
    rb_frame_iter it;
    rb_frame_iter_init(&it, f->u.mutate.removes, f->u.mutate.remove_count);
    rb_bytes topic;
    while (rb_frame_next_topic(&it, &topic)) {
        if (rb_topic_validate(topic, true, &err) != 0) {
            return mutate_error(c, f->hdr.corr_id, RB_WIRE_INVALID_TOPIC, "%s", err.msg);
        }
    }
    /* Only removes of topics on the stream make room, and a topic removed
     * and added back by this Mutate counts as added. */
    uint32_t removed = removes_mark(st, f, true);
    uint64_t added = 0;
    bool ok = adds_valid(s, c, f, unique, &added);
    uint32_t unmarked = removes_mark(st, f, false);
    RB_ASSERT(unmarked == removed);
    if (!ok) {
        return false;
    }
    /* Permissions: one forbidden add rejects the whole Mutate. */
    for (uint32_t i = 0; i < unique; i++) {
        rb_bytes t = s->scratch[i].topic;
        if (!rb_conn_may(c, RB_POLICY_SUBSCRIBE, t)) {
            return mutate_error(c, f->hdr.corr_id, RB_WIRE_FORBIDDEN,
                                "%s may not subscribe to %.*s; nothing in this MUTATE applied",
                                rb_conn_who(c), (int)t.len, (const char *)t.ptr);
        }
    }
    uint64_t total = (st != NULL ? st->entry_count : 0) - removed + added;
    if (total > cfg->topics_per_stream) {
        return mutate_error(c, f->hdr.corr_id, RB_WIRE_RESOURCE_EXHAUSTED,
                            "a stream may hold at most %u topics", cfg->topics_per_stream);
    }
    return true;
}

static rb_stream *stream_get(rb_subs *s, rb_conn *c)
{
    if (c->stream == NULL) {
        rb_stream *st = rb_pool_get(&s->stream_pool);
        if (st == NULL) {
            return NULL;
        }
        memset(st, 0, sizeof *st);
        st->conn = c;
        c->stream = st;
    }
    return c->stream;
}

static entry *entry_add(rb_subs *s, rb_stream *st, const add_item *a, uint32_t wave_slot,
                        bool history_only, const rb_topic_class *cls)
{
    entry *e = rb_pool_get(&s->entry_pool);
    if (e == NULL) {
        return NULL;
    }
    memset(e, 0, sizeof *e);
    e->stream = st;
    e->token = ++st->next_token;
    e->name_len = (uint8_t)a->topic.len;
    memcpy(e->name, a->topic.ptr, a->topic.len);
    e->hwm = a->now ? 0 : a->cursor;
    e->cursor = e->hwm;
    e->from_now = a->now;
    e->history_only = history_only;
    e->state = E_WAIT_HEAD;
    e->wave = wave_slot + 1;
    if (cls->ephemeral) {
        RB_ASSERT(!history_only);
        e->eph = true;
        e->echo = cls->echo;
        e->eph_fresh = true;
        e->state = E_LIVE;
        e->hwm = 0;
        e->cursor = 0;
    }
    uint64_t h = a->hash & (st->bucket_count - 1);
    e->hash_next = st->buckets[h];
    st->buckets[h] = e;
    st->entry_count++;
    int rc;
    if (history_only) {
        rc = rb_interest_send(s->shard, RB_INTEREST_QUERY, st->conn, e->token,
                              (const uint8_t *)e->name, e->name_len);
    } else {
        rc = sub_register(s, e) ? 0 : RB_ELIMIT;
    }
    if (rc != 0) {
        entry_unlink(st, e);
        rb_pool_put(&s->entry_pool, e);
        return NULL;
    }
    return e;
}

static void apply_removes(rb_subs *s, rb_stream *st, const rb_frame *f)
{
    rb_frame_iter it;
    rb_frame_iter_init(&it, f->u.mutate.removes, f->u.mutate.remove_count);
    rb_bytes topic;
    while (rb_frame_next_topic(&it, &topic)) {
        entry *e = entry_find(st, topic.ptr, topic.len);
        if (e != NULL) {
            entry_remove(s, e, true);
        }
    }
}

static void apply_adds(rb_subs *s, rb_stream *st, const rb_frame *f, uint32_t unique)
{
    bool history_only = (f->u.mutate.flags & RB_MUTATE_HISTORY_ONLY) != 0;
    uint32_t slot = 0;
    while (st->waves[slot].used) {
        slot++;
    }
    wave *w = &st->waves[slot];
    *w = (wave){.mutate_id = f->u.mutate.mutate_id,
                .corr = f->hdr.corr_id,
                .used = true,
                .start_ms = rb_loop_now_ms(s->shard->loop)};
    st->wave_count++;
    /* Held by the wave itself until every add is placed, so an entry that
     * completes at once cannot end the wave early. */
    w->remaining = 1;
    uint64_t epoch = f->u.mutate.epoch;
    char msg[RB_ERR_MSG_BYTES_MAX];
    for (uint32_t i = 0; i < unique; i++) {
        add_item *a = &s->scratch[i];
        const rb_topic_class *cls = rb_topic_class_of(s->shard, a->topic);
        if (cls->ephemeral && (history_only || entry_find(st, a->topic.ptr, a->topic.len))) {
            /* No history to read and nothing to replay: a history_only add
             * delivers nothing and a re-add changes nothing. */
            continue;
        }
        if (!cls->ephemeral && epoch != 0 && epoch != s->epoch && !a->now && a->cursor != 0) {
            /* The cursor counts seqs of another seq space: "from the
             * beginning" and "now" mean the same in every epoch. */
            snprintf(msg, sizeof msg, "topic %.*s: cursor %llu is from epoch %016llx, not %016llx",
                     (int)a->topic.len, (const char *)a->topic.ptr, (unsigned long long)a->cursor,
                     (unsigned long long)epoch, (unsigned long long)s->epoch);
            send_topic_error(st->conn, w->mutate_id, a->topic, RB_WIRE_EPOCH_MISMATCH, msg);
            continue;
        }
        entry *e = entry_find(st, a->topic.ptr, a->topic.len);
        if (e != NULL) {
            /* Re-add: replay only from below what was already sent. */
            if (a->now || a->cursor >= e->hwm) {
                continue;
            }
            entry_remove(s, e, true);
        }
        w->remaining++;
        e = entry_add(s, st, a, slot, history_only, cls);
        if (e == NULL) {
            w->remaining--;
            snprintf(msg, sizeof msg, "topic %.*s: subscription limit of this shard reached",
                     (int)a->topic.len, (const char *)a->topic.ptr);
            send_topic_error(st->conn, w->mutate_id, a->topic, RB_WIRE_RESOURCE_EXHAUSTED, msg);
        } else if (e->eph) {
            /* Any cursor: no history, live at once. */
            send_topics_live(e);
            wave_entry_done(st, e);
        }
    }
    entry dummy = {.stream = st, .wave = slot + 1};
    wave_entry_done(st, &dummy);
}

void rb_stream_on_mutate(rb_conn *c, const rb_frame *f)
{
    rb_subs *s = c->shard->subs;
    if (c->state != RB_CONN_OPEN) {
        return;
    }
    int unique = collect_adds(s, f);
    if (unique < 0) {
        rb_conn_send_error(c, f->hdr.corr_id, RB_WIRE_RESOURCE_EXHAUSTED,
                           "MUTATE: no memory for %u adds", f->u.mutate.add_count);
        return;
    }
    if (!mutate_valid(s, c, f, (uint32_t)unique)) {
        return;
    }
    rb_stream *st = stream_get(s, c);
    if (st == NULL || !entry_table_fit(st, (uint32_t)unique)) {
        rb_conn_send_error(c, f->hdr.corr_id, RB_WIRE_RESOURCE_EXHAUSTED,
                           "MUTATE: stream limit of this shard reached");
        return;
    }
    apply_removes(s, st, f);
    if (unique > 0) {
        apply_adds(s, st, f, (uint32_t)unique);
    } else {
        wave w = {.mutate_id = f->u.mutate.mutate_id, .corr = f->hdr.corr_id};
        send_catchup_complete(c, &w);
    }
    catchup_pump(s);
}

/* ---- connection hooks ---- */

void rb_stream_conn_closed(rb_conn *c)
{
    rb_stream *st = c->stream;
    if (st == NULL) {
        return;
    }
    rb_subs *s = c->shard->subs;
    for (uint32_t i = 0; i < st->bucket_count; i++) {
        while (st->buckets[i] != NULL) {
            entry_remove(s, st->buckets[i], false);
        }
    }
    RB_ASSERT(st->entry_count == 0);
    free(st->buckets);
    c->stream = NULL;
    rb_pool_put(&s->stream_pool, st);
}

void rb_stream_revoke(rb_conn *c)
{
    rb_stream *st = c->stream;
    if (st == NULL) {
        return;
    }
    rb_subs *s = c->shard->subs;
    for (uint32_t i = 0; i < st->bucket_count; i++) {
        entry *e = st->buckets[i];
        while (e != NULL) {
            entry *next = e->hash_next;
            rb_bytes t = {(const uint8_t *)e->name, e->name_len};
            if (!rb_conn_may(c, RB_POLICY_SUBSCRIBE, t)) {
                char esc[RB_TOPIC_BYTES_MAX * 4 + 1];
                rb_auth_escape(esc, sizeof esc, t.ptr, t.len);
                RB_LOG_INFO(c->id, "reload: %s may no longer subscribe to %s", rb_conn_who(c), esc);
                entry_fail(s, e, RB_WIRE_FORBIDDEN,
                           "%s may no longer subscribe to %.*s (reloaded permissions)",
                           rb_conn_who(c), (int)t.len, (const char *)t.ptr);
                if (c->state == RB_CONN_CLOSING || c->state == RB_CONN_CLOSED) {
                    return; /* the send queue was full: closed, the stream goes with it */
                }
            }
            e = next;
        }
    }
}

bool rb_stream_waves_done(rb_conn *c)
{
    return c->stream == NULL || c->stream->wave_count == 0;
}

void rb_stream_on_send_drained(rb_conn *c)
{
    if (c->stream != NULL && c->stream->lag_first != NULL) {
        eph_flush(c->shard->subs, c->stream);
    }
    rb_conn_maybe_finish_drain(c);
    if (c->stream != NULL) {
        catchup_pump(c->shard->subs);
    }
}

/* Entries and subtopics with their hash tables (each at most twice its
 * entries), streams, the catch-up readers and the Mutate scratch array. */
static uint64_t stream_memory_bytes(const rb_config *cfg)
{
    uint64_t readers = (uint64_t)cfg->catchup_queries_in_flight *
                       (2ull * cfg->max_frame_bytes +
                        cfg->catchup_topics_per_query * (sizeof(rb_read_range) + sizeof(entry *)));
    uint64_t entries = stream_entries_max(cfg);
    return entries * (sizeof(entry) + 2 * sizeof(entry *)) +
           entries * (sizeof(subtopic) + 2 * sizeof(subtopic *)) +
           (uint64_t)cfg->max_connections * (sizeof(rb_stream) + 16 * sizeof(entry *)) + readers +
           (uint64_t)cfg->max_frame_bytes / 11 * sizeof(add_item);
}

const rb_subsystem rb_stream_subsystem = {
    .name = "streams",
    .init = stream_init,
    .idle = stream_idle,
    .deinit = stream_deinit,
    .memory_bytes = stream_memory_bytes,
};

uint32_t rb_stream_topic_count(const rb_conn *c)
{
    return c->stream != NULL ? c->stream->entry_count : 0;
}

size_t rb_stream_topic_names(const rb_conn *c, char *out, size_t cap, bool *more)
{
    const rb_stream *st = c->stream;
    size_t n = 0;
    *more = false;
    for (uint32_t b = 0; st != NULL && b < st->bucket_count && !*more; b++) {
        for (const entry *e = st->buckets[b]; e != NULL; e = e->hash_next) {
            size_t need = (n > 0 ? 1u : 0u) + e->name_len;
            if (n + need > cap) {
                *more = true;
                break;
            }
            if (n > 0) {
                out[n++] = ' ';
            }
            memcpy(out + n, e->name, e->name_len);
            n += e->name_len;
        }
    }
    return n;
}
