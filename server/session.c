/* Client sessions of one shard: the slot table, reassembly of frames from
 * the link's bytes into the shared frame decoder, the bounded send queue
 * the link drains, the session timer (handshake, keepalive, pong deadline,
 * partial-frame deadline, close grace) and the close sequence with its
 * half-close drain. A session reaches its peer only through its link
 * (server/link.h): it never knows whether that is a TCP socket with tls/ws
 * layers or anything else. Frames are handed to server/owner.c (PUBLISH)
 * and server/stream.c (MUTATE); this file answers HELLO, PING, PONG and
 * CLOSE itself. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "common/assert.h"
#include "common/log.h"
#include "server/link.h"
#include "server/server.h"

#define CONN_FROM(ptr, field) RB_CONTAINER_OF(ptr, rb_conn, field)

static void conn_timer_fired(rb_timer *t);
static void conn_rearm_timer(rb_conn *c);
static void conn_queue_flush(rb_conn *c);
static void conn_queue_flush_raw(rb_conn *c);
static void conn_try_free(rb_conn *c);
static void conn_feed(rb_conn *c, const uint8_t *p, size_t len);
static void tx_consume(rb_conn *c, size_t n);
static bool conn_reading(const rb_conn *c);
static void finish_close(rb_conn *c);

int rb_conn_table_init(rb_shard *sh, rb_err *err)
{
    const rb_config *cfg = &sh->server->cfg;
    sh->conn_max = cfg->max_connections;
    sh->conns = calloc(sh->conn_max, sizeof *sh->conns);
    if (sh->conns == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "shard %u: %u connection slots", sh->id, sh->conn_max);
    }
    for (uint32_t i = sh->conn_max; i-- > 0;) {
        rb_conn *c = &sh->conns[i];
        c->index = i;
        c->shard = sh;
        c->free_next = sh->conn_free;
        sh->conn_free = c;
    }
    return 0;
}

void rb_conn_table_deinit(rb_shard *sh)
{
    free(sh->conns);
    sh->conns = NULL;
}

rb_conn *rb_conn_lookup(rb_shard *sh, uint32_t index, uint32_t gen)
{
    if (index >= sh->conn_max) {
        return NULL;
    }
    rb_conn *c = &sh->conns[index];
    if (c->gen != gen || c->state == RB_CONN_FREE || c->state == RB_CONN_CLOSED) {
        return NULL;
    }
    return c;
}

rb_conn *rb_session_open(rb_shard *sh, rb_link *l)
{
    rb_conn *c = sh->conn_free;
    if (c == NULL) {
        return NULL;
    }
    sh->conn_free = c->free_next;
    RB_ASSERT(c->state == RB_CONN_FREE);
    RB_ASSERT(c->link == NULL);
    uint32_t gen = c->gen + 1;
    uint32_t index = c->index;
    memset(c, 0, sizeof *c);
    c->shard = sh;
    c->link = l;
    c->index = index;
    c->gen = gen;
    c->id = atomic_fetch_add(&sh->server->next_conn_id, 1) + 1;
    c->state = RB_CONN_HANDSHAKE;
    c->timer.fn = conn_timer_fired;
    c->last_tx_ms = rb_loop_now_ms(sh->loop);
    atomic_fetch_add(&sh->conn_count, 1);
    conn_rearm_timer(c);
    return c;
}

/* ---- send queue ---- */

rb_seg *rb_seg_new(rb_shard *sh)
{
    rb_seg *s = rb_pool_get(&sh->seg_pool);
    if (s == NULL) {
        return NULL;
    }
    memset(s, 0, sizeof *s);
    return s;
}

void rb_seg_free(rb_shard *sh, rb_seg *s)
{
    if (s->chunk != NULL) {
        rb_pool_put(&sh->chunk_pool, s->chunk);
    }
    if (s->ref != NULL) {
        rb_block_unref(s->ref);
    }
    rb_pool_put(&sh->seg_pool, s);
}

static void seg_link(rb_conn *c, rb_seg *s)
{
    if (c->tx_tail == NULL) {
        c->tx_head = s;
    } else {
        c->tx_tail->next = s;
    }
    c->tx_tail = s;
}

bool rb_conn_send_full(const rb_conn *c, uint64_t extra)
{
    return c->tx_bytes + extra > c->shard->server->cfg.send_queue_bytes;
}

/* Returns space for len contiguous bytes at the tail of the send queue
 * (len <= RB_CHUNK_BYTES), or NULL when no chunk can be had. */
uint8_t *rb_conn_reserve(rb_conn *c, size_t len)
{
    RB_ASSERT(len <= RB_CHUNK_BYTES);
    rb_seg *t = c->tx_tail;
    if (t != NULL && t->chunk != NULL && t->cap - t->len >= len) {
        return t->data + t->len;
    }
    rb_seg *s = rb_seg_new(c->shard);
    if (s == NULL) {
        return NULL;
    }
    s->chunk = rb_pool_get(&c->shard->chunk_pool);
    if (s->chunk == NULL) {
        rb_pool_put(&c->shard->seg_pool, s);
        return NULL;
    }
    s->data = s->chunk;
    s->cap = RB_CHUNK_BYTES;
    seg_link(c, s);
    return s->data;
}

void rb_conn_commit(rb_conn *c, size_t len)
{
    rb_seg *t = c->tx_tail;
    RB_ASSERT(t != NULL && t->chunk != NULL);
    RB_ASSERT(t->len + len <= t->cap);
    t->len += (uint32_t)len;
    c->tx_bytes += len;
    conn_queue_flush(c);
}

int rb_conn_append(rb_conn *c, const uint8_t *p, size_t len)
{
    while (len > 0) {
        size_t room = 0;
        rb_seg *t = c->tx_tail;
        if (t != NULL && t->chunk != NULL) {
            room = t->cap - t->len;
        }
        if (room == 0) {
            if (rb_conn_reserve(c, RB_CHUNK_BYTES) == NULL) {
                return RB_ELIMIT;
            }
            t = c->tx_tail;
            room = t->cap - t->len;
        }
        size_t n = len < room ? len : room;
        memcpy(t->data + t->len, p, n);
        t->len += (uint32_t)n;
        c->tx_bytes += n;
        p += n;
        len -= n;
    }
    conn_queue_flush(c);
    return 0;
}

int rb_conn_append_frame_ref(rb_conn *c, const uint8_t *head, size_t head_len, rb_block *b,
                             const uint8_t *p, size_t len)
{
    /* Everything is obtained before anything is queued, so a refusal
     * never leaves half a frame in the send queue. */
    uint8_t *h = rb_conn_reserve(c, head_len);
    rb_seg *s = h != NULL ? rb_seg_new(c->shard) : NULL;
    if (s == NULL) {
        return RB_ELIMIT;
    }
    memcpy(h, head, head_len);
    rb_conn_commit(c, head_len);
    rb_block_ref(b);
    s->ref = b;
    s->data = (uint8_t *)p;
    s->len = (uint32_t)len;
    s->cap = (uint32_t)len;
    seg_link(c, s);
    c->tx_bytes += len;
    conn_queue_flush(c);
    return 0;
}

void rb_segs_drop_all(rb_shard *sh, rb_seg **head, rb_seg **tail, uint64_t *bytes)
{
    rb_seg *s = *head;
    while (s != NULL) {
        rb_seg *next = s->next;
        rb_seg_free(sh, s);
        s = next;
    }
    *head = NULL;
    *tail = NULL;
    *bytes = 0;
}

static void tx_drop_all(rb_conn *c)
{
    rb_segs_drop_all(c->shard, &c->tx_head, &c->tx_tail, &c->tx_bytes);
}

/* Queues the connection for a send pass at the end of the turn. */
static void conn_queue_flush_raw(rb_conn *c)
{
    if (c->flush_queued) {
        return;
    }
    c->flush_queued = true;
    c->flush_next = c->shard->flush_list;
    c->shard->flush_list = c;
}

/* The same for frames: they count as traffic for the keepalive. */
static void conn_queue_flush(rb_conn *c)
{
    c->last_tx_ms = rb_loop_now_ms(c->shard->loop);
    conn_queue_flush_raw(c);
}

void rb_conn_flush_all(rb_shard *sh)
{
    rb_conn *c = sh->flush_list;
    sh->flush_list = NULL;
    while (c != NULL) {
        rb_conn *next = c->flush_next;
        c->flush_queued = false;
        if (c->link != NULL && c->state != RB_CONN_CLOSED) {
            c->link->ops->start_send(c->link);
        }
        conn_try_free(c);
        c = next;
    }
}

void rb_segs_consume(rb_shard *sh, rb_seg **head, rb_seg **tail, uint64_t *bytes, size_t n)
{
    while (n > 0) {
        rb_seg *s = *head;
        RB_ASSERT(s != NULL);
        size_t avail = s->len - s->off;
        size_t take = n < avail ? n : avail;
        s->off += (uint32_t)take;
        n -= take;
        *bytes -= take;
        if (s->off == s->len) {
            /* Sent segments go back to the pool at once, the tail chunk
             * too: an idle connection holds no send memory. */
            *head = s->next;
            if (*head == NULL) {
                *tail = NULL;
            }
            rb_seg_free(sh, s);
        }
    }
}

/* Moves cursor fc over n queued bytes starting `from` bytes into the send
 * queue. Every frame starts with its u32 size, so this reads 4 bytes per
 * frame and skips the rest. */
static void frames_walk(const rb_conn *c, rb_frame_cursor *fc, size_t from, size_t n)
{
    const rb_seg *s = c->tx_head;
    size_t at = s != NULL ? s->off : 0;
    /* Bounded by from + n: each pass moves at least one byte or segment. */
    while (n > 0) {
        RB_ASSERT(s != NULL);
        if (at == s->len) {
            s = s->next;
            at = s != NULL ? s->off : 0;
            continue;
        }
        if (from > 0) {
            size_t skip = s->len - at < from ? s->len - at : from;
            at += skip;
            from -= skip;
            continue;
        }
        if (fc->left == 0) {
            /* At a frame start, or inside its size field. */
            fc->size[fc->size_have++] = s->data[at++];
            n--;
            if (fc->size_have == 4) {
                uint32_t size = (uint32_t)fc->size[0] | (uint32_t)fc->size[1] << 8 |
                                (uint32_t)fc->size[2] << 16 | (uint32_t)fc->size[3] << 24;
                /* The server encodes every frame it queues. */
                RB_ASSERT(size >= RB_FRAME_HEADER_BYTES);
                fc->left = size - 4;
                fc->size_have = 0;
            }
            continue;
        }
        size_t step = s->len - at;
        step = step < n ? step : n;
        step = step < fc->left ? step : fc->left;
        at += step;
        n -= step;
        fc->left -= (uint32_t)step;
    }
}

static void tx_consume(rb_conn *c, size_t n)
{
    frames_walk(c, &c->tx_frame, 0, n);
    rb_segs_consume(c->shard, &c->tx_head, &c->tx_tail, &c->tx_bytes, n);
}

/* Copies len queued bytes starting at offset `from` of the queue; false
 * when fewer are queued. */
static bool tx_peek(const rb_conn *c, size_t from, uint8_t *out, size_t len)
{
    for (const rb_seg *s = c->tx_head; s != NULL && len > 0; s = s->next) {
        size_t avail = s->len - s->off;
        if (from >= avail) {
            from -= avail;
            continue;
        }
        size_t take = avail - from < len ? avail - from : len;
        memcpy(out, s->data + s->off + from, take);
        out += take;
        len -= take;
        from = 0;
    }
    return len == 0;
}

/* Queued bytes up to the end of the frame that byte `at` of the queue
 * falls in (at itself when it is a frame boundary). */
static uint64_t frame_end_after(const rb_conn *c, uint64_t at)
{
    rb_frame_cursor fc = c->tx_frame;
    frames_walk(c, &fc, 0, at);
    if (fc.size_have == 0) {
        return at + fc.left;
    }
    uint8_t size[4];
    memcpy(size, fc.size, fc.size_have);
    bool whole = tx_peek(c, at, size + fc.size_have, 4u - fc.size_have);
    RB_ASSERT(whole);
    uint32_t total = (uint32_t)size[0] | (uint32_t)size[1] << 8 | (uint32_t)size[2] << 16 |
                     (uint32_t)size[3] << 24;
    return at + total - fc.size_have;
}

/* A reaped connection's queued frames cannot reach a client that does not
 * read them, and they would stand between it and the CLOSE that says why.
 * Drops every queued frame the link has not started; the rest of the one
 * it is writing stays, so the closing frames follow on a frame boundary
 * (the client resumes from its cursor: nothing is lost silently, G4). */
static void tx_drop_unstarted(rb_conn *c)
{
    if (c->tx_trimmed) {
        return;
    }
    c->tx_trimmed = true;
    /* Bytes the link has handed to the socket may be written still: they
     * and the rest of their last frame stay. */
    uint64_t busy = c->link->ops->busy_bytes(c->link);
    RB_ASSERT(busy <= c->tx_bytes);
    uint64_t keep = frame_end_after(c, busy);
    RB_ASSERT(keep <= c->tx_bytes);
    uint64_t dropped = c->tx_bytes - keep;
    rb_seg **link = &c->tx_head;
    rb_seg *last = NULL;
    uint64_t left = keep;
    while (*link != NULL && left > 0) {
        rb_seg *s = *link;
        uint64_t avail = s->len - s->off;
        if (avail >= left) {
            s->len = s->off + (uint32_t)left;
            left = 0;
        } else {
            left -= avail;
        }
        last = s;
        link = &s->next;
    }
    rb_seg *rest = *link;
    *link = NULL;
    c->tx_tail = last;
    c->tx_bytes = keep;
    while (rest != NULL) {
        rb_seg *next = rest->next;
        rb_seg_free(c->shard, rest);
        rest = next;
    }
    if (dropped > 0) {
        RB_LOG_DEBUG(c->id, "dropped %llu queued bytes the client will not get",
                     (unsigned long long)dropped);
    }
}

static void finish_close(rb_conn *c)
{
    if (c->state == RB_CONN_CLOSED) {
        return;
    }
    c->state = RB_CONN_CLOSED;
    rb_timer_disarm(c->shard->loop, &c->timer);
    rb_stream_conn_closed(c);
    if (c->link != NULL) {
        /* The link may release at once, freeing the slot. */
        c->link->ops->close(c->link);
        return;
    }
    conn_try_free(c);
}

/* ---- closing ---- */

static void conn_try_free(rb_conn *c)
{
    /* A slot still on the flush list is freed by rb_conn_flush_all: reused
     * now, its cleared link would cut the list. */
    if (c->state != RB_CONN_CLOSED || c->link != NULL || c->flush_queued) {
        return;
    }
    rb_shard *sh = c->shard;
    tx_drop_all(c);
    if (c->rx_buf != NULL) {
        rb_pool_put(c->rx_need <= RB_CHUNK_BYTES ? &sh->chunk_pool : &sh->rxbig_pool, c->rx_buf);
        c->rx_buf = NULL;
    }
    RB_LOG_DEBUG(c->id, "freed");
    c->state = RB_CONN_FREE;
    c->free_next = sh->conn_free;
    sh->conn_free = c;
    atomic_fetch_sub(&sh->conn_count, 1);
}

void rb_conn_abort(rb_conn *c)
{
    finish_close(c);
}

void rb_session_link_released(rb_conn *c)
{
    RB_ASSERT(c->state == RB_CONN_CLOSED);
    RB_ASSERT(c->link != NULL);
    c->link = NULL;
    conn_try_free(c);
}

void rb_session_link_down(rb_conn *c)
{
    finish_close(c);
}

void rb_session_peer_eof(rb_conn *c)
{
    /* Our own close or a half-close drain finishes on its own clock. */
    if (c->state != RB_CONN_CLOSING && c->state != RB_CONN_DRAINING) {
        finish_close(c);
    }
}

/* Stops taking frames; the link decides whether it still reads to discard. */
static void stop_reading(rb_conn *c)
{
    c->link->ops->stop_reading(c->link);
}

const char *rb_session_peer_once(rb_conn *c)
{
    /* One per shard thread: the caller logs it before the next call. */
    static _Thread_local char note[RB_LINK_PEER_BYTES_MAX + 16];
    if (c->peer_logged || c->link == NULL) {
        return "";
    }
    c->peer_logged = true;
    snprintf(note, sizeof note, " (peer %s)", c->link->peer);
    return note;
}

void rb_session_ended(rb_conn *c, rb_layer_end how, const char *why)
{
    /* A layer ended the input cleanly (close_notify, WS Close, an HTTP
     * answer): what is queued goes out if the link can carry it, then the
     * link closes in order, all within the close grace. */
    if (c->state == RB_CONN_CLOSING || c->state == RB_CONN_CLOSED || c->state == RB_CONN_FREE) {
        return;
    }
    if (how == RB_LAYER_END_DONE && strncmp(why, "HTTP 200", 8) != 0) {
        RB_LOG_INFO(c->id, "closing: %s%s", why, rb_session_peer_once(c));
    } else {
        RB_LOG_DEBUG(c->id, "closing: %s", why);
    }
    c->state = RB_CONN_CLOSING;
    stop_reading(c);
    c->close_deadline_ms = rb_loop_now_ms(c->shard->loop) + c->shard->server->cfg.close_grace_ms;
    conn_rearm_timer(c);
    c->link->ops->shutdown(c->link, RB_WIRE_OK);
}

void rb_conn_close(rb_conn *c, uint16_t status, const char *fmt, ...)
{
    if (c->state == RB_CONN_CLOSING || c->state == RB_CONN_CLOSED || c->state == RB_CONN_FREE) {
        return;
    }
    char msg[RB_ERR_MSG_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (status != RB_WIRE_OK && status != RB_WIRE_GOING_AWAY) {
        RB_LOG_INFO(c->id, "closing: %s: %s%s", rb_wire_code_name(status), msg,
                    rb_session_peer_once(c));
    } else {
        RB_LOG_DEBUG(c->id, "closing: %s: %s", rb_wire_code_name(status), msg);
    }
    uint8_t buf[RB_FRAME_HEADER_BYTES + 4 + RB_ERR_MSG_BYTES_MAX];
    rb_bytes m = {(const uint8_t *)msg, strlen(msg)};
    size_t n = rb_frame_encode_close(buf, sizeof buf, 0, status, m);
    RB_ASSERT(n > 0);
    if (status == RB_WIRE_RESOURCE_EXHAUSTED || rb_conn_send_full(c, 0)) {
        tx_drop_unstarted(c);
    }
    c->state = RB_CONN_CLOSING;
    stop_reading(c);
    if (!c->link->ops->ready(c->link)) {
        /* Before the link's handshake is done no frame can go out: the
         * link closes on its own (an HTTP answer, or nothing). */
        tx_drop_all(c);
    } else if (rb_conn_append(c, buf, n) != 0) {
        finish_close(c);
        return;
    }
    c->close_deadline_ms = rb_loop_now_ms(c->shard->loop) + c->shard->server->cfg.close_grace_ms;
    conn_rearm_timer(c);
    c->link->ops->shutdown(c->link, status);
}

int rb_conn_send_error(rb_conn *c, uint64_t corr_id, uint16_t code, const char *fmt, ...)
{
    char msg[RB_ERR_MSG_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    uint8_t buf[RB_FRAME_HEADER_BYTES + 4 + RB_ERR_MSG_BYTES_MAX];
    rb_bytes m = {(const uint8_t *)msg, strlen(msg)};
    size_t n = rb_frame_encode_error(buf, sizeof buf, corr_id, code, m);
    RB_ASSERT(n > 0);
    return rb_conn_append(c, buf, n);
}

/* An error that ends the connection: ERROR{code} then CLOSE{code}; the
 * ERROR carries the offending frame's corr_id when its header was read. */
static void conn_fail(rb_conn *c, uint64_t corr_id, uint16_t code, const char *msg)
{
    if (c->state == RB_CONN_CLOSING || c->state == RB_CONN_CLOSED || c->state == RB_CONN_FREE) {
        return;
    }
    if (code == RB_WIRE_RESOURCE_EXHAUSTED || rb_conn_send_full(c, 0)) {
        tx_drop_unstarted(c);
    }
    rb_conn_send_error(c, corr_id, code, "%s", msg);
    rb_conn_close(c, code, "%s", msg);
}

void rb_conn_shutdown_all(rb_shard *sh)
{
    for (uint32_t i = 0; i < sh->conn_max; i++) {
        rb_conn *c = &sh->conns[i];
        if (c->state == RB_CONN_HANDSHAKE && !c->link->answers_before_hello) {
            finish_close(c);
        } else if (c->state == RB_CONN_HANDSHAKE) {
            /* A pending WS upgrade is answered 503; TLS just closes. */
            rb_conn_close(c, RB_WIRE_GOING_AWAY, "server shutting down");
        } else if (c->state == RB_CONN_OPEN || c->state == RB_CONN_DRAINING) {
            rb_conn_close(c, RB_WIRE_GOING_AWAY, "server shutting down");
        }
    }
}

void rb_conn_maybe_finish_drain(rb_conn *c)
{
    /* CLOSE ok promises that everything before it was delivered, so it
     * waits for the waves, the acks and the send queue. */
    if (c->state == RB_CONN_DRAINING && rb_stream_waves_done(c) && c->publishes_in_flight == 0 &&
        c->tx_bytes == 0) {
        rb_conn_close(c, RB_WIRE_OK, "closed");
    }
}

/* ---- timer ---- */

static void conn_rearm_timer(rb_conn *c)
{
    const rb_config *cfg = &c->shard->server->cfg;
    uint64_t now = rb_loop_now_ms(c->shard->loop);
    uint64_t due;
    if (c->state == RB_CONN_CLOSING || c->state == RB_CONN_DRAINING) {
        due = c->close_deadline_ms;
    } else if (c->state == RB_CONN_HANDSHAKE) {
        due = c->last_tx_ms + cfg->handshake_timeout_ms;
    } else if (c->pong_wait) {
        due = c->ping_sent_ms + cfg->pong_timeout_ms;
    } else {
        due = c->last_tx_ms + cfg->keepalive_ms;
    }
    if (c->partial_since_ms != 0 && c->state != RB_CONN_CLOSING) {
        uint64_t pd = c->partial_since_ms + cfg->handshake_timeout_ms;
        due = pd < due ? pd : due;
    }
    rb_timer_arm(c->shard->loop, &c->timer, due > now ? due - now : 0);
}

static void send_ping(rb_conn *c)
{
    uint8_t buf[RB_FRAME_HEADER_BYTES + 8];
    c->ping_nonce = c->ping_nonce * 6364136223846793005ull + c->id + 1442695040888963407ull;
    size_t n = rb_frame_encode_ping(buf, sizeof buf, 0, c->ping_nonce);
    if (rb_conn_append(c, buf, n) != 0) {
        conn_fail(c, 0, RB_WIRE_RESOURCE_EXHAUSTED, "send queue full");
        return;
    }
    c->pong_wait = true;
    c->ping_sent_ms = rb_loop_now_ms(c->shard->loop);
}

static void conn_timer_fired(rb_timer *t)
{
    rb_conn *c = CONN_FROM(t, timer);
    const rb_config *cfg = &c->shard->server->cfg;
    uint64_t now = rb_loop_now_ms(c->shard->loop);
    if (c->state == RB_CONN_CLOSING) {
        if (c->link->ops->lingering(c->link)) {
            RB_LOG_DEBUG(c->id, "peer did not close within the close grace");
        } else {
            uint64_t unsent = c->tx_bytes + c->link->ops->unsent_bytes(c->link);
            RB_LOG_INFO(c->id, "close grace expired with %llu bytes unsent%s",
                        (unsigned long long)unsent, rb_session_peer_once(c));
        }
        finish_close(c);
        return;
    }
    if (c->state == RB_CONN_DRAINING && now >= c->close_deadline_ms) {
        c->state = RB_CONN_OPEN;
        rb_conn_close(c, RB_WIRE_DEADLINE_EXCEEDED, "half-close drain exceeded the close grace");
        /* The one grace is spent: one more flush attempt, then close. */
        c->close_deadline_ms = now + RB_LOOP_TICK_MS;
        conn_rearm_timer(c);
        return;
    }
    if (c->partial_since_ms != 0 && now >= c->partial_since_ms + cfg->handshake_timeout_ms) {
        conn_fail(c, 0, RB_WIRE_DEADLINE_EXCEEDED, "frame not completed in time");
        return;
    }
    if (c->state == RB_CONN_HANDSHAKE) {
        if (now >= c->last_tx_ms + cfg->handshake_timeout_ms) {
            bool layers = !c->link->ops->ready(c->link);
            RB_LOG_INFO(c->id, "%s within %u ms%s",
                        layers ? "transport handshake not completed" : "no HELLO",
                        cfg->handshake_timeout_ms, rb_session_peer_once(c));
            conn_fail(c, 0, RB_WIRE_DEADLINE_EXCEEDED, "no HELLO within the handshake timeout");
            return;
        }
    } else if (c->state == RB_CONN_OPEN) {
        if (c->pong_wait && now >= c->ping_sent_ms + cfg->pong_timeout_ms) {
            rb_conn_close(c, RB_WIRE_DEADLINE_EXCEEDED, "no PONG within %u ms",
                          cfg->pong_timeout_ms);
            return;
        }
        if (!c->pong_wait && now >= c->last_tx_ms + cfg->keepalive_ms) {
            send_ping(c);
        }
    }
    if (c->state != RB_CONN_CLOSED && c->state != RB_CONN_FREE) {
        conn_rearm_timer(c);
    }
}

/* ---- receive and frame dispatch ---- */

static void on_hello(rb_conn *c, const rb_frame *f)
{
    const rb_config *cfg = &c->shard->server->cfg;
    if (c->state != RB_CONN_HANDSHAKE) {
        conn_fail(c, f->hdr.corr_id, RB_WIRE_BAD_FRAME, "HELLO sent twice");
        return;
    }
    if (f->u.hello.protocol_version != RB_PROTOCOL_VERSION) {
        char msg[96];
        snprintf(msg, sizeof msg, "protocol version %u not supported (server speaks %u)",
                 f->u.hello.protocol_version, RB_PROTOCOL_VERSION);
        conn_fail(c, f->hdr.corr_id, RB_WIRE_UNSUPPORTED_VERSION, msg);
        return;
    }
    uint8_t buf[RB_FRAME_HEADER_BYTES + 24 + RB_SERVER_ID_BYTES_MAX];
    rb_bytes id = {(const uint8_t *)cfg->server_id, strlen(cfg->server_id)};
    size_t n = rb_frame_encode_started(buf, sizeof buf, f->hdr.corr_id, cfg->keepalive_ms,
                                       RB_CAP_STREAM | RB_CAP_PUBLISH, cfg->max_frame_bytes, id);
    RB_ASSERT(n > 0);
    c->state = RB_CONN_OPEN;
    rb_conn_append(c, buf, n);
    conn_rearm_timer(c);
    RB_LOG_DEBUG(c->id, "HELLO from %.*s", (int)f->u.hello.client_name.len,
                 (const char *)f->u.hello.client_name.ptr);
}

static void on_frame(rb_conn *c, const rb_frame *f)
{
    uint8_t kind = f->hdr.kind;
    if (c->state == RB_CONN_HANDSHAKE && kind != RB_FRAME_HELLO) {
        conn_fail(c, f->hdr.corr_id, RB_WIRE_BAD_FRAME, "the first frame must be HELLO");
        return;
    }
    switch (kind) {
    case RB_FRAME_HELLO:
        on_hello(c, f);
        break;
    case RB_FRAME_PING: {
        uint8_t buf[RB_FRAME_HEADER_BYTES + 8];
        size_t n = rb_frame_encode_pong(buf, sizeof buf, f->hdr.corr_id, f->u.ping.nonce);
        if (rb_conn_append(c, buf, n) != 0) {
            conn_fail(c, f->hdr.corr_id, RB_WIRE_RESOURCE_EXHAUSTED, "send queue full");
        }
        break;
    }
    case RB_FRAME_PONG:
        /* Only the current nonce counts: an old or wrong echo changes nothing. */
        if (c->pong_wait && f->u.ping.nonce == c->ping_nonce) {
            c->pong_wait = false;
            conn_rearm_timer(c);
        }
        break;
    case RB_FRAME_CLOSE:
        if (f->u.close.status == RB_WIRE_OK) {
            c->state = RB_CONN_DRAINING;
            stop_reading(c);
            c->close_deadline_ms =
                rb_loop_now_ms(c->shard->loop) + c->shard->server->cfg.close_grace_ms;
            conn_rearm_timer(c);
            rb_conn_maybe_finish_drain(c);
        } else {
            RB_LOG_DEBUG(c->id, "client closed with %s", rb_wire_code_name(f->u.close.status));
            finish_close(c);
        }
        break;
    case RB_FRAME_PUBLISH:
        rb_owner_on_publish(c, f);
        break;
    case RB_FRAME_MUTATE:
        rb_stream_on_mutate(c, f);
        break;
    case RB_FRAME_AUTH:
        /* AUTH replaces a token; a connection that did not sign in with one
         * has nothing to replace, which PROTOCOL.md 6.5 answers like any
         * refused AUTH. */
        rb_conn_send_error(c, f->hdr.corr_id, RB_WIRE_UNAUTHORIZED,
                           "AUTH: this connection did not sign in with a token");
        rb_conn_close(c, RB_WIRE_UNAUTHORIZED, "AUTH without a token to replace");
        break;
    default: {
        char msg[96];
        snprintf(msg, sizeof msg, "%s is not a client frame", rb_frame_kind_name(kind));
        conn_fail(c, f->hdr.corr_id, RB_WIRE_BAD_FRAME, msg);
        break;
    }
    }
}

static bool conn_reading(const rb_conn *c)
{
    return c->state == RB_CONN_HANDSHAKE || c->state == RB_CONN_OPEN;
}

/* The corr_id field of a frame header at p (16 bytes were read), whether
 * or not the rest of the header is valid: fatal errors echo it. */
static uint64_t header_corr_id(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = v << 8 | p[8 + i];
    }
    return v;
}

/* Decodes one whole frame at p and dispatches it; false when the connection
 * was failed. */
static bool handle_frame(rb_conn *c, const uint8_t *p, size_t len)
{
    rb_frame f;
    rb_err err;
    int rc = rb_frame_decode(p, len, c->shard->server->cfg.max_frame_bytes, &f, &err);
    if (rc != 0) {
        conn_fail(c, header_corr_id(p), (uint16_t)(rc == RB_EPROTO ? err.cause : RB_WIRE_BAD_FRAME),
                  err.msg);
        return false;
    }
    on_frame(c, &f);
    return conn_reading(c);
}

/* Checks a complete header; false when the connection was failed. */
static bool check_header(rb_conn *c, const uint8_t *p, rb_frame_header *hdr)
{
    rb_err err;
    int rc = rb_frame_header_decode(p, RB_FRAME_HEADER_BYTES, c->shard->server->cfg.max_frame_bytes,
                                    hdr, &err);
    if (rc != 0) {
        conn_fail(c, header_corr_id(p), (uint16_t)err.cause, err.msg);
        return false;
    }
    return true;
}

/* Starts buffering a frame of hdr->size bytes whose first `have` bytes are
 * at p. The buffer is a chunk for frames that fit one, else a large buffer
 * from the shard's bounded pool of max_frame_bytes buffers. */
static bool start_partial(rb_conn *c, const rb_frame_header *hdr, const uint8_t *p, size_t have)
{
    rb_shard *sh = c->shard;
    c->rx_need = hdr->size;
    c->rx_buf =
        hdr->size <= RB_CHUNK_BYTES ? rb_pool_get(&sh->chunk_pool) : rb_pool_get(&sh->rxbig_pool);
    if (c->rx_buf == NULL) {
        conn_fail(c, hdr->corr_id, RB_WIRE_RESOURCE_EXHAUSTED,
                  "no receive buffer for a large frame");
        return false;
    }
    memcpy(c->rx_buf, p, have);
    c->rx_len = (uint32_t)have;
    if (c->partial_since_ms == 0) {
        c->partial_since_ms = rb_loop_now_ms(sh->loop);
        conn_rearm_timer(c);
    }
    return true;
}

static void end_partial(rb_conn *c)
{
    rb_shard *sh = c->shard;
    if (c->rx_buf != NULL) {
        rb_pool_put(c->rx_need <= RB_CHUNK_BYTES ? &sh->chunk_pool : &sh->rxbig_pool, c->rx_buf);
        c->rx_buf = NULL;
    }
    c->rx_len = 0;
    c->rx_need = 0;
    c->hdr_len = 0;
    c->partial_since_ms = 0;
}

/* Continues a partly received header or frame; returns bytes consumed or
 * -1 when the connection was failed. */
static ssize_t feed_partial(rb_conn *c, const uint8_t *p, size_t len)
{
    size_t used = 0;
    if (c->rx_buf == NULL) {
        size_t take = RB_FRAME_HEADER_BYTES - c->hdr_len;
        take = take < len ? take : len;
        memcpy(c->hdr_bytes + c->hdr_len, p, take);
        c->hdr_len += (uint32_t)take;
        used = take;
        if (c->hdr_len < RB_FRAME_HEADER_BYTES) {
            return (ssize_t)used;
        }
        rb_frame_header hdr;
        if (!check_header(c, c->hdr_bytes, &hdr)) {
            return -1;
        }
        if (!start_partial(c, &hdr, c->hdr_bytes, RB_FRAME_HEADER_BYTES)) {
            return -1;
        }
        c->hdr_len = 0;
    }
    size_t take = c->rx_need - c->rx_len;
    take = take < len - used ? take : len - used;
    memcpy(c->rx_buf + c->rx_len, p + used, take);
    c->rx_len += (uint32_t)take;
    used += take;
    if (c->rx_len == c->rx_need) {
        bool ok = handle_frame(c, c->rx_buf, c->rx_len);
        end_partial(c);
        if (!ok) {
            return -1;
        }
    }
    return (ssize_t)used;
}

/* The shared frame decoder: whole frames are decoded in place in the
 * receive buffer; only a frame that straddles buffers is copied. */
static void conn_feed(rb_conn *c, const uint8_t *p, size_t len)
{
    while (len > 0 && conn_reading(c)) {
        if (c->hdr_len > 0 || c->rx_buf != NULL) {
            ssize_t used = feed_partial(c, p, len);
            if (used < 0) {
                return;
            }
            p += used;
            len -= (size_t)used;
            continue;
        }
        if (len < RB_FRAME_HEADER_BYTES) {
            memcpy(c->hdr_bytes, p, len);
            c->hdr_len = (uint32_t)len;
            if (c->partial_since_ms == 0) {
                c->partial_since_ms = rb_loop_now_ms(c->shard->loop);
                conn_rearm_timer(c);
            }
            return;
        }
        rb_frame_header hdr;
        if (!check_header(c, p, &hdr)) {
            return;
        }
        if (hdr.size > len) {
            if (start_partial(c, &hdr, p, len)) {
                return;
            }
            return;
        }
        if (!handle_frame(c, p, hdr.size)) {
            return;
        }
        p += hdr.size;
        len -= hdr.size;
    }
}

/* ---- the link's side ---- */

bool rb_session_reading(const rb_conn *c)
{
    return conn_reading(c);
}

void rb_session_recv(rb_conn *c, const uint8_t *p, size_t len)
{
    conn_feed(c, p, len);
}

rb_seg *rb_session_send_head(rb_conn *c)
{
    /* A reserved but uncommitted chunk can be left empty before newer
     * segments; it goes back to the pool here. */
    rb_seg *s = c->tx_head;
    while (s != NULL && s->len == s->off && s->next != NULL) {
        c->tx_head = s->next;
        rb_seg_free(c->shard, s);
        s = c->tx_head;
    }
    return c->tx_bytes > 0 ? s : NULL;
}

uint64_t rb_session_send_bytes(const rb_conn *c)
{
    return c->tx_bytes;
}

void rb_session_sent(rb_conn *c, size_t n)
{
    RB_ASSERT(n <= c->tx_bytes);
    tx_consume(c, n);
}

void rb_session_send_drained(rb_conn *c)
{
    if (c->state == RB_CONN_OPEN || c->state == RB_CONN_DRAINING) {
        rb_stream_on_send_drained(c);
    }
}

void rb_session_want_send(rb_conn *c)
{
    conn_queue_flush_raw(c);
}

void rb_session_fail(rb_conn *c, uint16_t code, const char *msg)
{
    conn_fail(c, 0, code, msg);
}
