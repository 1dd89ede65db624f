/* Publish intake, reply addresses and ack delivery; see publish.h.
 *
 * Records (native byte order, never leave the process):
 *   publish: u32 record bytes, u32 conn index, u32 conn gen, u64 corr,
 *            u64 topic hash, u32 payload len, u8 topic len, u8 key len,
 *            topic, idempotency key, payload
 *   ack:     u32 record bytes, u8 live, u32 conn index, u32 conn gen,
 *            u64 corr, u64 seq, u16 code, u8 reason, u8 flags, u8 topic len,
 *            topic
 * An ack is never longer than the publish it answers, so it can be written
 * over it; its topic even lands on the same bytes. A returned envelope
 * holds one ack per publish: those already sent in an owner's envelope are
 * marked not live. */
#include "server/publish.h"

#include <string.h>

#include "common/assert.h"
#include "common/hash.h"
#include "common/log.h"
#include "server/ephemeral.h"
#include "server/server.h"

#define PUB_REC_FIXED (4 + 4 + 4 + 8 + 8 + 4 + 1 + 1)
#define ACK_REC_FIXED (4 + 1 + 4 + 4 + 8 + 8 + 2 + 1 + 1 + 1)
#define ACK_LIVE_AT   4

_Static_assert(ACK_REC_FIXED <= PUB_REC_FIXED, "an ack fits over its publish");
_Static_assert(ACK_REC_FIXED == PUB_REC_FIXED, "the topic stays where it was");

/* The envelope's mark: some acks were written into it, so it goes home as
 * an RB_XK_ACK envelope instead of straight back to its pool. */
#define MARK_ACKS_INSIDE 1

static const char *const reason_text[RB_PUBLISH_REASON_COUNT] = {
    [RB_PUBLISH_OK] = "",
    [RB_PUBLISH_STORAGE_UNAVAILABLE] = "storage unavailable: publish not committed",
    [RB_PUBLISH_STORAGE_REFUSED] = "storage refused the append",
    [RB_PUBLISH_TOPIC_LIMIT] = "owner shard is at its topic limit",
    [RB_PUBLISH_BATCH_LIMIT] = "owner shard is at its batch limit",
    [RB_PUBLISH_DEDUP_TOPIC_FULL] = "the topic holds its limit of idempotency keys within the "
                                    "dedup window; retry later or publish without a key",
    [RB_PUBLISH_DEDUP_TOTAL_FULL] = "the owner shard holds its limit of idempotency keys within "
                                    "the dedup window; retry later or publish without a key",
};

rb_reply_addr rb_reply_addr_of(const rb_conn *c, uint64_t corr)
{
    return (rb_reply_addr){
        .shard = (uint16_t)c->shard->id, .conn_index = c->index, .conn_gen = c->gen, .corr = corr};
}

rb_conn *rb_reply_conn(rb_shard *sh, const rb_reply_addr *addr)
{
    RB_ASSERT(addr->shard == sh->id);
    return rb_conn_lookup(sh, addr->conn_index, addr->conn_gen);
}

/* ---- intake, on the connection's shard ---- */

/* Why a paused publisher waits (rb_conn.hold_why). */
enum {
    HOLD_ENVELOPE = 1, /* every envelope of the shard is out */
    HOLD_ACKS = 2,     /* RB_CONN_PUBLISHES_IN_FLIGHT_MAX publishes await their ack */
};

/* The publish cannot be taken now: the session keeps the frame and stops
 * reading the publisher (TCP flow control backs it off) until the resume
 * pass at the end of a turn finds room. Nothing is refused or lost, and
 * the publisher's later frames keep their order behind it. */
static void pause_publisher(rb_conn *c, uint8_t why)
{
    c->hold_why = why;
    if (!c->link_held) {
        RB_STAT_ADD(c->shard, publisher_pauses, 1); /* not a resume held again */
    }
    rb_session_hold(c);
    rb_holdq_push_tail(&c->shard->publish_held, &c->hold_link);
    RB_STAT_SET(c->shard, publishers_paused, c->shard->publish_held.count);
    /* Envelopes come back from other shards without waking this one. */
    rb_shard_poll_soon(c->shard);
}

void rb_publish_wait_for_envelope(rb_conn *c)
{
    RB_ASSERT(c->state == RB_CONN_OPEN);
    pause_publisher(c, HOLD_ENVELOPE);
}

/* A PUBLISH frame from c (HELLO done), handed over by the session. */
static void on_publish_frame(rb_conn *c, const rb_frame *f)
{
    rb_shard *sh = c->shard;
    uint64_t corr = f->hdr.corr_id;
    rb_bytes topic = f->u.publish.topic;
    rb_bytes payload = f->u.publish.payload;
    rb_bytes key = f->u.publish.idempotency_key;
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
    /* Permissions (server/policy.c): refused publishes change nothing and
     * leave the connection open. */
    if (!rb_conn_may(c, RB_POLICY_PUBLISH, topic)) {
        rb_conn_send_error(c, corr, RB_WIRE_FORBIDDEN, "%s may not publish to %.*s", rb_conn_who(c),
                           (int)topic.len, (const char *)topic.ptr);
        return;
    }
    size_t max_payload = sh->server->cfg.max_frame_bytes - RB_FRAME_MESSAGES_HEAD_BYTES -
                         rb_frame_messages_item_size(topic.len, 0);
    /* The topic's class ([[topic_class]] max_message_bytes) may lower it. */
    const rb_topic_class *cls = rb_topic_class_of(sh, topic);
    if (cls->max_message_bytes != 0 && cls->max_message_bytes < max_payload) {
        max_payload = cls->max_message_bytes;
    }
    if (payload.len > max_payload) {
        rb_conn_send_error(c, corr, RB_WIRE_TOO_LARGE,
                           "payload of %zu bytes exceeds the limit of %zu for this topic",
                           payload.len, max_payload);
        return;
    }
    if (c->publishes_in_flight >= RB_CONN_PUBLISHES_IN_FLIGHT_MAX) {
        pause_publisher(c, HOLD_ACKS);
        return;
    }
    uint64_t hash = rb_hash_bytes(topic.ptr, topic.len);
    uint32_t to = (uint32_t)(hash % sh->server->shard_count);
    size_t len = PUB_REC_FIXED + topic.len + key.len + payload.len;
    uint8_t *p = rb_mailbox_reserve(&sh->mail, to, RB_XK_PUBLISH, len);
    if (p == NULL) {
        pause_publisher(c, HOLD_ENVELOPE);
        return;
    }
    uint32_t rec = (uint32_t)len;
    uint32_t plen = (uint32_t)payload.len;
    uint8_t tlen = (uint8_t)topic.len;
    uint8_t klen = (uint8_t)key.len;
    p = rb_rec_put(p, &rec, 4);
    p = rb_rec_put(p, &c->index, 4);
    p = rb_rec_put(p, &c->gen, 4);
    p = rb_rec_put(p, &corr, 8);
    p = rb_rec_put(p, &hash, 8);
    p = rb_rec_put(p, &plen, 4);
    p = rb_rec_put(p, &tlen, 1);
    p = rb_rec_put(p, &klen, 1);
    p = rb_rec_put(p, topic.ptr, topic.len);
    p = rb_rec_put(p, key.ptr, key.len);
    rb_rec_put(p, payload.ptr, payload.len);
    rb_mailbox_commit(&sh->mail, to, len);
    c->publishes_in_flight++;
}

/* ---- at the owner ---- */

void rb_publish_begin(rb_xmsg *m)
{
    RB_ASSERT(m->kind == RB_XK_PUBLISH);
    /* One hold per publish and one for the reader itself. */
    m->pending = m->count + 1;
    m->mark = 0;
}

bool rb_publish_next(rb_xmsg *m, const uint8_t **cursor, rb_publish *out)
{
    const uint8_t *p = *cursor == NULL ? m->data : *cursor;
    if (p == m->data + m->bytes) {
        return false;
    }
    RB_ASSERT(p + PUB_REC_FIXED <= m->data + m->bytes);
    uint32_t rec;
    uint32_t plen;
    uint8_t tlen;
    uint8_t klen;
    out->slot = (uint8_t *)p;
    out->src = m;
    out->reply.shard = m->from_shard;
    p = rb_rec_get(p, &rec, 4);
    p = rb_rec_get(p, &out->reply.conn_index, 4);
    p = rb_rec_get(p, &out->reply.conn_gen, 4);
    p = rb_rec_get(p, &out->reply.corr, 8);
    p = rb_rec_get(p, &out->topic_hash, 8);
    p = rb_rec_get(p, &plen, 4);
    p = rb_rec_get(p, &tlen, 1);
    p = rb_rec_get(p, &klen, 1);
    out->topic = (rb_bytes){p, tlen};
    out->key = (rb_bytes){p + tlen, klen};
    out->payload = (rb_bytes){p + tlen + klen, plen};
    RB_ASSERT(rec == PUB_REC_FIXED + tlen + klen + plen);
    *cursor = out->slot + rec;
    RB_ASSERT(*cursor <= m->data + m->bytes);
    return true;
}

static void release(rb_shard *sh, rb_xmsg *m)
{
    RB_ASSERT(m->pending > 0);
    if (--m->pending > 0) {
        return;
    }
    if (m->mark == MARK_ACKS_INSIDE) {
        /* The publishes' own envelope carries the acks written into it
         * home; the mailbox never refuses it. */
        m->kind = RB_XK_ACK;
        rb_mailbox_send(&sh->mail, m->from_shard, m);
        return;
    }
    rb_xmsg_put(m);
}

void rb_publish_end(rb_shard *sh, rb_xmsg *m)
{
    release(sh, m);
}

static void put_ack(uint8_t *p, uint32_t rec, const rb_publish *pub, uint64_t seq, uint16_t code,
                    rb_publish_reason reason, uint8_t flags)
{
    uint8_t live = 1;
    uint8_t r = (uint8_t)reason;
    uint8_t tlen = (uint8_t)pub->topic.len;
    p = rb_rec_put(p, &rec, 4);
    p = rb_rec_put(p, &live, 1);
    p = rb_rec_put(p, &pub->reply.conn_index, 4);
    p = rb_rec_put(p, &pub->reply.conn_gen, 4);
    p = rb_rec_put(p, &pub->reply.corr, 8);
    p = rb_rec_put(p, &seq, 8);
    p = rb_rec_put(p, &code, 2);
    p = rb_rec_put(p, &r, 1);
    p = rb_rec_put(p, &flags, 1);
    p = rb_rec_put(p, &tlen, 1);
    if (p != pub->topic.ptr) {
        memmove(p, pub->topic.ptr, tlen);
    }
}

void rb_publish_ack(rb_shard *sh, const rb_publish *pub, uint64_t seq, uint16_t code,
                    rb_publish_reason reason, uint8_t flags)
{
    RB_ASSERT(reason < RB_PUBLISH_REASON_COUNT);
    RB_ASSERT((code == RB_WIRE_OK) == (reason == RB_PUBLISH_OK));
    size_t len = ACK_REC_FIXED + pub->topic.len;
    uint8_t *p = rb_mailbox_reserve(&sh->mail, pub->reply.shard, RB_XK_ACK, len);
    if (p != NULL) {
        put_ack(p, (uint32_t)len, pub, seq, code, reason, flags);
        rb_mailbox_commit(&sh->mail, pub->reply.shard, len);
        /* The slot stays a (not live) ack, in case the envelope goes home
         * carrying other acks. */
        pub->slot[ACK_LIVE_AT] = 0;
    } else {
        uint32_t rec;
        memcpy(&rec, pub->slot, 4);
        put_ack(pub->slot, rec, pub, seq, code, reason, flags);
        pub->src->mark = MARK_ACKS_INSIDE;
    }
    release(sh, pub->src);
}

/* ---- acks arriving at the publisher's shard ---- */

static void deliver_ack(rb_conn *c, uint64_t corr, rb_bytes topic, uint64_t seq, uint16_t code,
                        uint8_t reason, uint8_t flags)
{
    RB_ASSERT(c->publishes_in_flight > 0);
    c->publishes_in_flight--;
    if (code == RB_WIRE_OK) {
        RB_STAT_ADD(c->shard, publishes_ok, 1);
        if (flags & RB_ACK_DUPLICATE) {
            RB_STAT_ADD(c->shard, publish_duplicates, 1);
        }
    } else {
        RB_STAT_ADD(c->shard, publishes_failed, 1);
        RB_STAT_ADD(c->shard, publish_errors[code <= RB_WIRE_CODE_LAST ? code : RB_WIRE_INTERNAL],
                    1);
    }
    if (c->state == RB_CONN_CLOSING) {
        return;
    }
    if (code == RB_WIRE_OK) {
        uint8_t *out = rb_conn_reserve(c, RB_FRAME_HEADER_BYTES + 1 + RB_TOPIC_BYTES_MAX + 8 + 1);
        if (out == NULL) {
            rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED, "send queue full");
            return;
        }
        size_t n = rb_frame_encode_publish_ack(out, RB_CHUNK_BYTES, corr, topic, seq, flags);
        rb_conn_commit(c, n);
    } else {
        const char *why = reason < RB_PUBLISH_REASON_COUNT ? reason_text[reason] : "";
        if (rb_conn_send_error(c, corr, code, "%s", why) != 0) {
            rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED, "send queue full");
            return;
        }
    }
    if (rb_conn_send_full(c, 0)) {
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED,
                      "send queue over its limit: the client does not read its acks");
        return;
    }
    rb_conn_maybe_finish_drain(c);
}

static void on_ack_envelope(void *ctx, rb_xmsg *m)
{
    rb_shard *sh = ctx;
    const uint8_t *p = m->data;
    for (uint32_t i = 0; i < m->count; i++) {
        const uint8_t *rec_start = p;
        uint32_t rec;
        uint8_t live;
        rb_reply_addr addr = {.shard = (uint16_t)sh->id};
        uint64_t seq;
        uint16_t code;
        uint8_t reason;
        uint8_t flags;
        uint8_t tlen;
        p = rb_rec_get(p, &rec, 4);
        p = rb_rec_get(p, &live, 1);
        p = rb_rec_get(p, &addr.conn_index, 4);
        p = rb_rec_get(p, &addr.conn_gen, 4);
        p = rb_rec_get(p, &addr.corr, 8);
        p = rb_rec_get(p, &seq, 8);
        p = rb_rec_get(p, &code, 2);
        p = rb_rec_get(p, &reason, 1);
        p = rb_rec_get(p, &flags, 1);
        p = rb_rec_get(p, &tlen, 1);
        if (live) {
            rb_conn *c = rb_reply_conn(sh, &addr);
            if (c != NULL) {
                deliver_ack(c, addr.corr, (rb_bytes){p, tlen}, seq, code, reason, flags);
            }
        }
        p = rec_start + rec;
    }
    RB_ASSERT(p == m->data + m->bytes);
    rb_xmsg_put(m);
}

/* ---- resuming paused publishers ---- */

#define HELD_CONN(l) RB_CONTAINER_OF(l, rb_conn, hold_link)

/* End of turn: paused publishers are resumed in the order they paused,
 * each until it pauses again (one batch each). One that waits for
 * envelopes and finds none goes back first and ends the pass: the ones
 * behind it would find none either, and none overtakes it. One that
 * waits for its own acks does not hold up the others. */
static void publish_flush(rb_shard *sh)
{
    rb_holdq *q = &sh->publish_held;
    uint32_t turns = q->count;
    bool resumed = false;
    bool wants_envelopes = false;
    while (turns-- > 0 && q->count > 0) {
        rb_conn *c = HELD_CONN(rb_holdq_pop(q));
        if (!c->held || c->state != RB_CONN_OPEN) {
            continue; /* closing: it reads no more */
        }
        if (c->publishes_in_flight >= RB_CONN_PUBLISHES_IN_FLIGHT_MAX) {
            /* Its acks come by mail, which wakes the shard. */
            rb_holdq_push_tail(q, &c->hold_link);
            continue;
        }
        resumed = true;
        bool took = rb_session_resume(c);
        if (c->held && c->hold_why == HOLD_ENVELOPE) {
            wants_envelopes = true;
            if (!took) {
                rb_holdq_remove(q, &c->hold_link);
                rb_holdq_push_head(q, &c->hold_link);
                break;
            }
        }
    }
    /* Frames the resumed sessions queued go out at the next turn's start.
     * Envelopes come home from other shards without a wake, so while a
     * publisher waits for one the shard polls for them. */
    if (resumed || wants_envelopes) {
        rb_shard_poll_soon(sh);
    }
    RB_STAT_SET(sh, publishers_paused, q->count);
}

static void publish_conn_closed(rb_conn *c)
{
    rb_holdq_remove(&c->shard->publish_held, &c->hold_link);
    RB_STAT_SET(c->shard, publishers_paused, c->shard->publish_held.count);
}

static int publish_init(rb_shard *sh, rb_err *err)
{
    (void)err;
    rb_mailbox_register(&sh->mail, RB_XK_ACK, on_ack_envelope, sh);
    rb_session_take_frames(sh, RB_FRAME_PUBLISH, on_publish_frame);
    rb_session_on_closed(sh, publish_conn_closed);
    return 0;
}

const rb_subsystem rb_publish_subsystem = {
    .name = "publish",
    .init = publish_init,
    .flush = publish_flush,
};
