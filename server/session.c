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
#include <time.h>

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
static size_t conn_feed(rb_conn *c, const uint8_t *p, size_t len);
static void hold_drop(rb_conn *c);

/* Every state change goes through here: the gauge of connections by
 * transport and state (RB_CONN_FREE is not counted). */
static void conn_set_state(rb_conn *c, rb_conn_state to)
{
    if (c->state != RB_CONN_FREE) {
        RB_STAT_SUB(c->shard, conn_states[c->transport][c->state], 1);
    }
    if (to != RB_CONN_FREE) {
        RB_STAT_ADD(c->shard, conn_states[c->transport][to], 1);
    }
    c->state = to;
}
void rb_session_take_frames(rb_shard *sh, rb_frame_kind kind, rb_client_frame_fn *fn)
{
    RB_ASSERT(kind >= 1 && kind <= RB_FRAME_KIND_LAST && fn != NULL);
    RB_ASSERT(sh->client_frames[kind] == NULL);
    sh->client_frames[kind] = fn;
}

void rb_session_on_closed(rb_shard *sh, rb_conn_closed_fn *fn)
{
    RB_ASSERT(fn != NULL && sh->closed_fn_count < RB_SESSION_CLOSED_FNS_MAX);
    sh->closed_fns[sh->closed_fn_count++] = fn;
}

static bool conn_reading(const rb_conn *c);
static void finish_close(rb_conn *c);
static void identity_drop(rb_conn *c);
static void refuse_now(rb_conn *c);
static void send_started(rb_conn *c, uint64_t corr);
static void check_password(rb_conn *c, const rb_frame *f);

int rb_conn_table_init(rb_shard *sh, rb_err *err)
{
    const rb_config *cfg = &sh->server->cfg;
    sh->conn_max = cfg->max_connections;
    sh->conns = calloc(sh->conn_max, sizeof *sh->conns);
    sh->connz = calloc(sh->conn_max, sizeof *sh->connz);
    if (sh->conns == NULL || sh->connz == NULL) {
        free(sh->conns);
        sh->conns = NULL;
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
    free(sh->connz);
    sh->connz = NULL;
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
    /* Every link says what of the queue it holds (the reap trims the rest). */
    RB_ASSERT(l->ops->busy_bytes != NULL);
    uint32_t gen = c->gen + 1;
    uint32_t index = c->index;
    memset(c, 0, sizeof *c);
    c->shard = sh;
    c->link = l;
    c->index = index;
    c->gen = gen;
    c->id = atomic_fetch_add(&sh->server->next_conn_id, 1) + 1;
    rb_sendq_init(&c->sendq, &sh->chunk_pool, &sh->seg_pool, &sh->send_budget,
                  rb_send_quota_bytes(&sh->server->cfg));
    rb_sendq_track_frames(&c->sendq);
    c->transport = (uint8_t)l->kind;
    c->state = RB_CONN_FREE;
    conn_set_state(c, RB_CONN_HANDSHAKE);
    rb_connz_open(c);
    RB_STAT_ADD(sh, accepted[c->transport], 1);
    RB_STAT_ADD(sh, open[c->transport], 1);
    c->timer.fn = conn_timer_fired;
    c->last_tx_ms = rb_loop_now_ms(sh->loop);
    atomic_fetch_add(&sh->conn_count, 1);
    conn_rearm_timer(c);
    return c;
}

/* ---- send queue ---- */

bool rb_conn_send_full(const rb_conn *c, uint64_t extra)
{
    /* Over send_queue_bytes, or a frame of extra bytes (a new chunk and a
     * block reference at worst) would be refused by the quota. */
    const rb_sendq *q = &c->sendq;
    return rb_sendq_bytes(q) + extra > c->shard->server->cfg.send_queue_bytes ||
           q->charge_bytes + extra + RB_SEND_SEG_CHARGE_BYTES + RB_CHUNK_BYTES > q->quota_bytes;
}

uint8_t *rb_conn_reserve(rb_conn *c, size_t len)
{
    return rb_sendq_reserve(&c->sendq, len);
}

void rb_conn_commit(rb_conn *c, size_t len)
{
    rb_sendq_commit(&c->sendq, len);
    RB_STAT_ADD(c->shard, bytes_out, len);
    conn_queue_flush(c);
}

int rb_conn_append(rb_conn *c, const uint8_t *p, size_t len)
{
    if (rb_sendq_append(&c->sendq, p, len, 0) != 0) {
        return RB_ELIMIT;
    }
    RB_STAT_ADD(c->shard, bytes_out, len);
    conn_queue_flush(c);
    return 0;
}

int rb_conn_append_frame(rb_conn *c, const uint8_t *head, size_t head_len, const uint8_t *p,
                         size_t len)
{
    if (rb_sendq_append2(&c->sendq, head, head_len, p, len) != 0) {
        return RB_ELIMIT;
    }
    RB_STAT_ADD(c->shard, bytes_out, head_len + len);
    conn_queue_flush(c);
    return 0;
}

/* The closing frames may use the send queue's reserve beyond the quota. */
static int append_closing(rb_conn *c, const uint8_t *p, size_t len)
{
    if (rb_sendq_append(&c->sendq, p, len, RB_SENDQ_RESERVE) != 0) {
        return RB_ELIMIT;
    }
    RB_STAT_ADD(c->shard, bytes_out, len);
    conn_queue_flush(c);
    return 0;
}

int rb_conn_append_frame_ref(rb_conn *c, const uint8_t *head, size_t head_len, rb_block *b,
                             const uint8_t *p, size_t len)
{
    if (rb_sendq_append_ref(&c->sendq, head, head_len, b, p, len) != 0) {
        return RB_ELIMIT;
    }
    RB_STAT_ADD(c->shard, bytes_out, head_len + len);
    conn_queue_flush(c);
    return 0;
}

/* A reaped connection's queued frames cannot reach a client that does not
 * read them, and they would stand between it and the CLOSE that says why:
 * the frames the link has not started go (the client resumes from its
 * cursor: nothing is lost silently, G4); the one it is writing is
 * finished, and the closing frames follow it. */
static void tx_drop_unstarted(rb_conn *c)
{
    if (c->tx_trimmed) {
        return;
    }
    c->tx_trimmed = true;
    uint64_t dropped = rb_sendq_drop_unstarted(&c->sendq, c->link->ops->busy_bytes(c->link));
    if (dropped > 0) {
        RB_LOG_DEBUG(c->id, "dropped %llu queued bytes the client will not get",
                     (unsigned long long)dropped);
    }
}

static void tx_drop_all(rb_conn *c)
{
    rb_sendq_drop_all(&c->sendq);
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

/* c's introspection slot (server/connz.h) from what its stream holds. */
static void connz_sync(rb_conn *c, bool topic_names)
{
    if (rb_connz_sync(c, rb_stream_topic_count(c), topic_names)) {
        char text[RB_CONNZ_TOPICS_TEXT_BYTES_MAX];
        bool more = false;
        size_t n = rb_stream_topic_names(c, text, sizeof text - 1, &more);
        rb_connz_topic_names(c, text, n, more);
    }
}

/* The same for frames: they count as traffic for the keepalive. */
static void conn_queue_flush(rb_conn *c)
{
    c->last_tx_ms = rb_loop_now_ms(c->shard->loop);
    rb_connz_frame_out(c);
    RB_STAT_ADD(c->shard, frames_out, 1);
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
        connz_sync(c, false);
        conn_try_free(c);
        c = next;
    }
}

static void finish_close(rb_conn *c)
{
    if (c->state == RB_CONN_CLOSED) {
        return;
    }
    conn_set_state(c, RB_CONN_CLOSED);
    rb_timer_disarm(c->shard->loop, &c->timer);
    rb_stream_conn_closed(c);
    for (uint32_t i = 0; i < c->shard->closed_fn_count; i++) {
        c->shard->closed_fns[i](c);
    }
    connz_sync(c, false);
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
    hold_drop(c);
    identity_drop(c);
    rb_conn_addr_release(c);
    rb_connz_free(c);
    RB_LOG_DEBUG(c->id, "freed");
    conn_set_state(c, RB_CONN_FREE);
    c->free_next = sh->conn_free;
    sh->conn_free = c;
    atomic_fetch_sub(&sh->conn_count, 1);
    RB_STAT_SUB(sh, open[c->transport], 1);
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
    if (c->held && c->state == RB_CONN_OPEN) {
        /* The held frames came before the end: they are answered first
         * (their CLOSE, if any, starts the half-close drain). */
        c->eof_held = true;
        return;
    }
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
    conn_set_state(c, RB_CONN_CLOSING);
    stop_reading(c);
    c->close_deadline_ms = rb_loop_now_ms(c->shard->loop) + c->shard->cfg->close_grace_ms;
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
    conn_set_state(c, RB_CONN_CLOSING);
    stop_reading(c);
    if (!c->link->ops->ready(c->link)) {
        /* Before the link's handshake is done no frame can go out: the
         * link closes on its own (an HTTP answer, or nothing). */
        tx_drop_all(c);
    } else if (append_closing(c, buf, n) != 0) {
        /* No room even in the reserve: the link still ends in order, so
         * that the caller's connection and stream stay valid until the
         * turn is over (callers close while walking them). */
        RB_LOG_DEBUG(c->id, "no room for the CLOSE frame");
    }
    c->close_deadline_ms = rb_loop_now_ms(c->shard->loop) + c->shard->cfg->close_grace_ms;
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
    if (rb_conn_append(c, buf, n) != 0) {
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED, "send queue full: no room for ERROR %s",
                      rb_wire_code_name(code));
        return RB_ELIMIT;
    }
    return 0;
}

/* An error that ends the connection: ERROR{code} then CLOSE{code}, both
 * in the send queue's reserve when the quota is spent. */
static void conn_fail(rb_conn *c, uint64_t corr_id, uint16_t code, const char *msg)
{
    if (conn_reading(c) || c->state == RB_CONN_DRAINING) {
        if (code == RB_WIRE_RESOURCE_EXHAUSTED || rb_conn_send_full(c, 0)) {
            tx_drop_unstarted(c);
        }
        uint8_t buf[RB_FRAME_HEADER_BYTES + 4 + RB_ERR_MSG_BYTES_MAX];
        rb_bytes m = {(const uint8_t *)msg, strnlen(msg, RB_ERR_MSG_BYTES_MAX - 1)};
        size_t n = rb_frame_encode_error(buf, sizeof buf, corr_id, code, m);
        RB_ASSERT(n > 0);
        (void)append_closing(c, buf, n);
    }
    rb_conn_close(c, code, "%s", msg);
}

/* A session told GOING_AWAY leaves as soon as nothing it asked for is in
 * flight: what it published is acknowledged, its waves are complete, its
 * calls answered. */
static bool nothing_in_flight(rb_conn *c)
{
    return rb_stream_waves_done(c) && c->publishes_in_flight == 0 && c->rpc_call_count == 0;
}

static void send_going_away(rb_conn *c, uint64_t now)
{
    const rb_config *cfg = c->shard->cfg;
    /* Spread the returns: a hint per connection in [0, reconnect_hint_ms]. */
    uint64_t x = (c->id + now) * 0x9E3779B97F4A7C15ull;
    x ^= x >> 29;
    uint32_t hint = (uint32_t)(x % ((uint64_t)cfg->reconnect_hint_ms + 1));
    static const char why[] = "server shutting down";
    uint8_t buf[RB_FRAME_HEADER_BYTES + 4 + 2 + sizeof why];
    size_t n = rb_frame_encode_going_away(buf, sizeof buf, 0, hint,
                                          (rb_bytes){(const uint8_t *)why, sizeof why - 1});
    RB_ASSERT(n > 0);
    if (rb_conn_append(c, buf, n) != 0 || nothing_in_flight(c)) {
        rb_conn_close(c, RB_WIRE_GOING_AWAY, "server shutting down");
        return;
    }
    c->leave_by_ms = now + cfg->shutdown_grace_ms;
    conn_rearm_timer(c);
}

void rb_conn_shutdown_all(rb_shard *sh)
{
    uint64_t now = rb_loop_now_ms(sh->loop);
    for (uint32_t i = 0; i < sh->conn_max; i++) {
        rb_conn *c = &sh->conns[i];
        if (c->state == RB_CONN_HANDSHAKE && !c->link->answers_before_hello) {
            finish_close(c);
        } else if (c->state == RB_CONN_HANDSHAKE) {
            /* A pending WS upgrade is answered 503; TLS just closes. */
            rb_conn_close(c, RB_WIRE_GOING_AWAY, "server shutting down");
        } else if (c->state == RB_CONN_OPEN && c->leave_by_ms == 0) {
            send_going_away(c, now);
        }
        /* A draining session (the client's CLOSE ok) finishes on its own
         * clock, within the close grace. */
    }
}

void rb_conn_maybe_finish_drain(rb_conn *c)
{
    /* CLOSE ok promises that everything before it was delivered, so it
     * waits for the waves, the acks, the calls' outcomes and the send queue. */
    if (c->state == RB_CONN_DRAINING && nothing_in_flight(c) && rb_sendq_bytes(&c->sendq) == 0) {
        rb_conn_close(c, RB_WIRE_OK, "closed");
    } else if (c->state == RB_CONN_OPEN && c->leave_by_ms != 0 && nothing_in_flight(c)) {
        rb_conn_close(c, RB_WIRE_GOING_AWAY, "server shutting down");
    }
}

/* ---- timer ---- */

static void conn_rearm_timer(rb_conn *c)
{
    const rb_config *cfg = c->shard->cfg;
    uint64_t now = rb_loop_now_ms(c->shard->loop);
    uint64_t due;
    if (c->state == RB_CONN_CLOSING || c->state == RB_CONN_DRAINING) {
        due = c->close_deadline_ms;
    } else if (c->state == RB_CONN_HANDSHAKE) {
        due = c->last_tx_ms + cfg->handshake_timeout_ms;
    } else if (c->held) {
        /* A paused publisher is not read, so its PONG cannot be seen: no
         * keepalive runs until it resumes (token expiry still does). */
        due = now + cfg->keepalive_ms;
    } else if (c->pong_wait) {
        due = c->ping_sent_ms + cfg->pong_timeout_ms;
    } else {
        due = c->last_tx_ms + cfg->keepalive_ms;
    }
    if (c->partial_since_ms != 0 && c->state != RB_CONN_CLOSING) {
        uint64_t pd = c->partial_since_ms + cfg->handshake_timeout_ms;
        due = pd < due ? pd : due;
    }
    if (c->refuse_at_ms != 0 && c->refuse_at_ms < due) {
        due = c->refuse_at_ms;
    }
    if (c->expires_mono_ms != 0 && c->state == RB_CONN_OPEN && c->expires_mono_ms < due) {
        due = c->expires_mono_ms;
    }
    if (c->leave_by_ms != 0 && c->state == RB_CONN_OPEN && c->leave_by_ms < due) {
        due = c->leave_by_ms;
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
    const rb_config *cfg = c->shard->cfg;
    uint64_t now = rb_loop_now_ms(c->shard->loop);
    if (c->state == RB_CONN_CLOSING) {
        if (c->link->ops->lingering(c->link)) {
            RB_LOG_DEBUG(c->id, "peer did not close within the close grace");
        } else {
            uint64_t unsent = rb_sendq_unsent(&c->sendq) + c->link->ops->unsent_bytes(c->link);
            RB_LOG_INFO(c->id, "close grace expired with %llu bytes unsent%s",
                        (unsigned long long)unsent, rb_session_peer_once(c));
        }
        finish_close(c);
        return;
    }
    if (c->state == RB_CONN_DRAINING && now >= c->close_deadline_ms) {
        conn_set_state(c, RB_CONN_OPEN);
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
    if (c->refuse_at_ms != 0 && c->state == RB_CONN_HANDSHAKE) {
        if (now >= c->refuse_at_ms) {
            refuse_now(c);
            return;
        }
    } else if (c->state == RB_CONN_OPEN && c->leave_by_ms != 0 && now >= c->leave_by_ms) {
        RB_LOG_INFO(c->id, "still busy after shutdown_grace_ms (%u ms)", cfg->shutdown_grace_ms);
        rb_conn_close(c, RB_WIRE_GOING_AWAY, "server shutting down: shutdown grace over");
        return;
    } else if (c->state == RB_CONN_OPEN && c->expires_mono_ms != 0 && now >= c->expires_mono_ms) {
        RB_LOG_INFO(c->id, "token of %s expired", rb_conn_who(c));
        rb_conn_close(c, RB_WIRE_UNAUTHORIZED, "token expired");
        return;
    } else if (c->state == RB_CONN_HANDSHAKE) {
        if (now >= c->last_tx_ms + cfg->handshake_timeout_ms) {
            bool layers = !c->link->ops->ready(c->link);
            RB_LOG_INFO(c->id, "%s within %u ms%s",
                        layers ? "transport handshake not completed" : "no HELLO",
                        cfg->handshake_timeout_ms, rb_session_peer_once(c));
            conn_fail(c, 0, RB_WIRE_DEADLINE_EXCEEDED, "no HELLO within the handshake timeout");
            return;
        }
    } else if (c->state == RB_CONN_OPEN && !c->held) {
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

/* Wall-clock seconds, for token exp and nbf (a monotonic clock knows no
 * dates). */
static int64_t wall_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

/* A refused sign-in is answered after auth.failure_delay_ms, so guessing
 * costs time; meanwhile nothing more is read from the connection. */
static void refuse_later(rb_conn *c, uint64_t corr, const char *why)
{
    const rb_config *cfg = c->shard->cfg;
    char shown[RB_ERR_MSG_BYTES_MAX];
    rb_log_escape(shown, sizeof shown, why, strlen(why));
    RB_LOG_INFO(c->id, "sign-in refused: %s", shown);
    rb_conn_addr_failure(c);
    stop_reading(c);
    free(c->refuse_msg);
    c->refuse_msg = strdup(why);
    c->refuse_corr = corr;
    c->refuse_at_ms = rb_loop_now_ms(c->shard->loop) + cfg->auth_failure_delay_ms;
    conn_rearm_timer(c);
}

static void refuse_now(rb_conn *c)
{
    const char *msg = c->refuse_msg != NULL ? c->refuse_msg : "unauthorized";
    c->refuse_at_ms = 0;
    rb_conn_send_error(c, c->refuse_corr, RB_WIRE_UNAUTHORIZED, "%s", msg);
    rb_conn_close(c, RB_WIRE_UNAUTHORIZED, "sign-in refused");
    free(c->refuse_msg);
    c->refuse_msg = NULL;
}

/* Verifies HELLO's (or AUTH's) credentials into a new identity for c.
 * Returns 0, or RB_EINVAL with the reason in err. Password credentials
 * are not verified on a shard (argon2id is slow by design). */
static int sign_in(rb_conn *c, rb_bytes credentials, rb_identity **out, rb_err *err)
{
    rb_server *srv = c->shard->server;
    const rb_auth *auth = c->shard->auth;
    if (auth == NULL) {
        *out = &srv->anonymous; /* servers built without a verifier (unit tests) */
        return 0;
    }
    if (rb_auth_is_slow(credentials)) {
        if (srv->auth_pool == NULL) {
            /* No user has a password (the pool runs only then). */
            return rb_err_set(err, RB_EINVAL, RB_WIRE_UNAUTHORIZED,
                              "unknown user or wrong password");
        }
        return RB_EAGAIN; /* the caller hands it to the auth workers */
    }
    rb_identity id;
    char cn[RB_AUTH_USER_BYTES_MAX + 1];
    size_t cn_len = credentials.len == 0 && c->link != NULL && c->link->ops->peer_cert_name != NULL
                        ? c->link->ops->peer_cert_name(c->link, cn, sizeof cn)
                        : 0;
    /* No credentials on a client_ca listener: the certificate names the user. */
    int rc = cn_len > 0
                 ? rb_auth_verify_cert_user(auth, (rb_bytes){(const uint8_t *)cn, cn_len}, &id, err)
                 : rb_auth_verify(auth, credentials, wall_now_s(), &id, err);
    if (rc != 0) {
        return rc;
    }
    if (id.source == RB_IDENTITY_ANONYMOUS) {
        *out = &srv->anonymous;
        return 0;
    }
    *out = malloc(sizeof **out);
    if (*out == NULL) {
        rb_identity_release(&id);
        return rb_err_set(err, RB_ENOMEM, RB_WIRE_INTERNAL, "out of memory for the identity");
    }
    **out = id;
    return 0;
}

static void identity_drop(rb_conn *c)
{
    if (c->identity != NULL && c->identity != &c->shard->server->anonymous) {
        rb_identity_release(c->identity);
        free(c->identity);
    }
    c->identity = NULL;
    free(c->refuse_msg);
    c->refuse_msg = NULL;
}

/* The token's exp on the loop's clock: the connection closes then. */
static void set_expiry(rb_conn *c)
{
    c->expires_mono_ms = 0;
    if (c->identity->expires_at_s != 0) {
        int64_t left_s = c->identity->expires_at_s - wall_now_s();
        uint64_t left_ms = left_s > 0 ? (uint64_t)left_s * 1000 : 0;
        c->expires_mono_ms = rb_loop_now_ms(c->shard->loop) + left_ms;
    }
}

bool rb_conn_may(const rb_conn *c, rb_policy_action action, rb_bytes topic)
{
    RB_ASSERT(c->identity != NULL);
    return c->identity->policy == NULL || rb_policy_allows(c->identity->policy, action, topic);
}

void rb_session_reauth_all(rb_shard *sh)
{
    RB_ASSERT(sh->auth != NULL);
    for (uint32_t i = 0; i < sh->conn_max; i++) {
        rb_conn *c = &sh->conns[i];
        if (c->state == RB_CONN_FREE || c->identity == NULL) {
            continue;
        }
        /* Closing ones too: nothing may keep the old verifier's policies. */
        bool user_there = rb_auth_identity_refresh(sh->auth, c->identity);
        if (c->state != RB_CONN_OPEN && c->state != RB_CONN_DRAINING) {
            continue;
        }
        if (!user_there) {
            RB_LOG_INFO(c->id, "reload: user %s was removed; closing", rb_conn_who(c));
            rb_conn_close(c, RB_WIRE_UNAUTHORIZED, "user %s was removed", rb_conn_who(c));
            continue;
        }
        rb_stream_revoke(c);
    }
}

const char *rb_conn_who(const rb_conn *c)
{
    return c->identity != NULL && c->identity->name[0] != '\0' ? c->identity->name : "anonymous";
}

static void on_hello(rb_conn *c, const rb_frame *f)
{
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
    rb_connz_hello(c, rb_conn_who(c), f->u.hello.client_name.ptr, f->u.hello.client_name.len);
    rb_err err;
    int rc = sign_in(c, f->u.hello.credentials, &c->identity, &err);
    if (rc == RB_EAGAIN) {
        check_password(c, f);
        return;
    }
    if (rc != 0) {
        refuse_later(c, f->hdr.corr_id, err.msg);
        return;
    }
    send_started(c, f->hdr.corr_id);
    RB_LOG_DEBUG(c->id, "HELLO from %.*s as %s", (int)f->u.hello.client_name.len,
                 (const char *)f->u.hello.client_name.ptr, rb_conn_who(c));
}

/* The connection's publish and Mutate buckets (issue 13): a user's own
 * publish_rate is also the depth of its bucket. */
static void limits_start(rb_conn *c)
{
    const rb_config *cfg = c->shard->cfg; /* the newest reload's */
    uint64_t now = rb_loop_now_ms(c->shard->loop);
    uint32_t own = c->identity != NULL ? c->identity->publish_rate : 0;
    rb_bucket_init(&c->publish_bucket, own != 0 ? own : cfg->publish_rate,
                   own != 0 ? own : cfg->publish_burst, now);
    rb_bucket_init(&c->mutate_bucket, cfg->mutates_per_second, cfg->mutates_per_second, now);
    c->rate_logged_ms = 0;
}

/* Takes a token for a PUBLISH or MUTATE of an open connection; false (and
 * the frame answered resource_exhausted, correlated; the connection stays
 * usable) when its bucket is empty. */
static bool limits_allow(rb_conn *c, const rb_frame *f)
{
    uint8_t kind = f->hdr.kind;
    if (c->state != RB_CONN_OPEN || (kind != RB_FRAME_PUBLISH && kind != RB_FRAME_MUTATE)) {
        return true;
    }
    rb_bucket *b = kind == RB_FRAME_PUBLISH ? &c->publish_bucket : &c->mutate_bucket;
    uint64_t now = rb_loop_now_ms(c->shard->loop);
    if (rb_bucket_take(b, 1, now)) {
        return true;
    }
    const char *limit = kind == RB_FRAME_PUBLISH ? "publish_rate" : "mutates_per_second";
    if (c->rate_logged_ms == 0 || now - c->rate_logged_ms >= 1000) {
        c->rate_logged_ms = now;
        RB_LOG_WARN(c->id, "%s refused: %s of %u a second used up (%s, peer %s)",
                    rb_frame_kind_name(kind), limit, b->rate, rb_conn_who(c),
                    c->link != NULL ? c->link->peer : "gone");
    }
    rb_conn_send_error(c, f->hdr.corr_id, RB_WIRE_RESOURCE_EXHAUSTED,
                       "%s: %s of %u a second used up; retry in %llu ms", rb_frame_kind_name(kind),
                       limit, b->rate, (unsigned long long)rb_bucket_wait_ms(b, 1, now));
    return false;
}

static void send_started(rb_conn *c, uint64_t corr)
{
    const rb_config *cfg = c->shard->cfg;
    set_expiry(c);
    limits_start(c);
    uint8_t buf[RB_FRAME_HEADER_BYTES + 32 + RB_SERVER_ID_BYTES_MAX + RB_RPC_NAME_BYTES_MAX];
    rb_bytes id = {(const uint8_t *)cfg->server_id, strlen(cfg->server_id)};
    /* A signed-in connection is known by its identity (a token's sub, a
     * user's name); anonymous connections get a server-assigned identity
     * that others call them by; the connection id is unique in the process
     * and the prefix is refused as a service name, so nobody can take it
     * over. */
    const char *who =
        c->identity != NULL && c->identity->name[0] != '\0' ? c->identity->name : NULL;
    int id_len =
        who != NULL && strlen(who) < sizeof c->client_id
            ? snprintf(c->client_id, sizeof c->client_id, "%s", who)
            : snprintf(c->client_id, sizeof c->client_id, "anon-%llu", (unsigned long long)c->id);
    RB_ASSERT(id_len > 0 && (size_t)id_len < sizeof c->client_id);
    c->client_id_len = (uint8_t)id_len;
    rb_bytes client_id = {(const uint8_t *)c->client_id, c->client_id_len};
    size_t n = rb_frame_encode_started_client(
        buf, sizeof buf, corr, cfg->keepalive_ms, RB_CAP_STREAM | RB_CAP_PUBLISH | RB_CAP_RPC,
        cfg->max_frame_bytes, id, rb_stream_epoch(c->shard), client_id);
    RB_ASSERT(n > 0);
    conn_set_state(c, RB_CONN_OPEN);
    rb_connz_hello(c, rb_conn_who(c), NULL, 0);
    if (rb_conn_append(c, buf, n) != 0) {
        conn_fail(c, corr, RB_WIRE_RESOURCE_EXHAUSTED, "no send buffer for STARTED");
        return;
    }
    conn_rearm_timer(c);
}

/* ---- password sign-in on the auth workers ---- */

/* A password check in flight: the job and where its answer goes. The
 * connection may be gone when it comes back (index + gen tell). */
typedef struct auth_wait {
    rb_auth_job job;
    rb_shard *shard;
    uint32_t conn_index;
    uint32_t conn_gen;
    uint64_t corr;
} auth_wait;

/* On a worker thread: push onto the shard's list and wake its loop. */
static void password_checked(rb_auth_job *job, void *ctx)
{
    auth_wait *w = ctx;
    rb_shard *sh = w->shard;
    rb_auth_job *head = atomic_load(&sh->auth_done);
    do {
        job->next = head;
    } while (!atomic_compare_exchange_weak(&sh->auth_done, &head, job));
    if (job->worker_loop != NULL) {
        (void)rb_loop_wake_remote(job->worker_loop, atomic_load(&sh->ring_fd),
                                  RB_REMOTE(RB_REMOTE_AUTH, 0));
    }
}

static void check_password(rb_conn *c, const rb_frame *f)
{
    rb_server *srv = c->shard->server;
    auth_wait *w = calloc(1, sizeof *w);
    if (w == NULL) {
        conn_fail(c, 0, RB_WIRE_RESOURCE_EXHAUSTED, "no memory for the sign-in");
        return;
    }
    rb_bytes cred = f->u.hello.credentials;
    RB_ASSERT(cred.len <= sizeof w->job.credentials);
    memcpy(w->job.credentials, cred.ptr, cred.len);
    w->job.credentials_len = (uint32_t)cred.len;
    w->job.now_s = wall_now_s();
    w->job.done = password_checked;
    w->job.ctx = w;
    w->shard = c->shard;
    w->conn_index = c->index;
    w->conn_gen = c->gen;
    w->corr = f->hdr.corr_id;
    int rc = rb_auth_pool_submit(srv->auth_pool, &w->job);
    if (rc != 0) {
        explicit_bzero(w, sizeof *w);
        free(w);
        conn_fail(c, 0, RB_WIRE_RESOURCE_EXHAUSTED, "too many sign-ins waiting; try again");
        return;
    }
    c->signing_in = true;
}

static void password_answer(rb_shard *sh, auth_wait *w)
{
    rb_conn *c = rb_conn_lookup(sh, w->conn_index, w->conn_gen);
    bool waiting = c != NULL && c->signing_in && c->state == RB_CONN_HANDSHAKE;
    if (c != NULL) {
        c->signing_in = false;
    }
    /* Checked against the verifier before a reload: the user must still
     * be there, with its permissions as they are now. */
    if (waiting && w->job.rc == 0 && w->job.verified_by != sh->auth && sh->auth != NULL &&
        !rb_auth_identity_refresh(sh->auth, &w->job.identity)) {
        w->job.rc = rb_err_set(&w->job.err, RB_EINVAL, RB_WIRE_UNAUTHORIZED,
                               "unknown user or wrong password");
    }
    if (!waiting || w->job.rc != 0) {
        if (waiting) {
            refuse_later(c, w->corr, w->job.err.msg);
        }
        rb_identity_release(&w->job.identity);
        return;
    }
    c->identity = malloc(sizeof *c->identity);
    if (c->identity == NULL) {
        rb_identity_release(&w->job.identity);
        conn_fail(c, 0, RB_WIRE_RESOURCE_EXHAUSTED, "no memory for the identity");
        return;
    }
    *c->identity = w->job.identity;
    send_started(c, w->corr);
    RB_LOG_DEBUG(c->id, "signed in as %s", rb_conn_who(c));
}

void rb_session_auth_done(rb_shard *sh, uint64_t payload)
{
    (void)payload;
    rb_auth_job *job = atomic_exchange(&sh->auth_done, NULL);
    while (job != NULL) {
        rb_auth_job *next = job->next;
        auth_wait *w = job->ctx;
        password_answer(sh, w);
        free(w);
        job = next;
    }
}

/* AUTH replaces the token of a connection that signed in with one, for
 * the same sub (PROTOCOL.md 6.5). */
static void on_auth(rb_conn *c, const rb_frame *f)
{
    rb_err err;
    rb_identity *fresh = NULL;
    if (c->identity == NULL || c->identity->source != RB_IDENTITY_TOKEN) {
        rb_conn_send_error(c, f->hdr.corr_id, RB_WIRE_UNAUTHORIZED,
                           "AUTH: this connection did not sign in with a token");
        rb_conn_close(c, RB_WIRE_UNAUTHORIZED, "AUTH without a token to replace");
        return;
    }
    rb_credentials cr;
    if (rb_credentials_decode(f->u.auth.credentials, &cr, &err) != 0 || cr.kind != RB_CRED_TOKEN) {
        rb_conn_send_error(c, f->hdr.corr_id, RB_WIRE_UNAUTHORIZED, "AUTH: not a token");
        rb_conn_close(c, RB_WIRE_UNAUTHORIZED, "AUTH without a token");
        return;
    }
    if (sign_in(c, f->u.auth.credentials, &fresh, &err) != 0 ||
        strcmp(fresh->name, c->identity->name) != 0) {
        const char *why = fresh != NULL ? "AUTH: the token names another sub" : err.msg;
        rb_conn_send_error(c, f->hdr.corr_id, RB_WIRE_UNAUTHORIZED, "%s", why);
        rb_conn_close(c, RB_WIRE_UNAUTHORIZED, "AUTH refused");
        if (fresh != NULL) {
            rb_identity_release(fresh);
            free(fresh);
        }
        return;
    }
    rb_identity_release(c->identity);
    free(c->identity);
    c->identity = fresh;
    set_expiry(c);
    uint8_t buf[RB_FRAME_HEADER_BYTES + 2];
    size_t n = rb_frame_encode_auth(buf, sizeof buf, f->hdr.corr_id, (rb_bytes){NULL, 0});
    if (rb_conn_append(c, buf, n) != 0) {
        conn_fail(c, 0, RB_WIRE_RESOURCE_EXHAUSTED, "send queue full");
        return;
    }
    conn_rearm_timer(c);
}

static void on_frame(rb_conn *c, const rb_frame *f)
{
    uint8_t kind = f->hdr.kind;
    RB_STAT_ADD(c->shard, frames_in, 1);
    rb_connz_frame_in(c, kind, 1);
    if (c->signing_in || c->refuse_at_ms != 0) {
        conn_fail(c, f->hdr.corr_id, RB_WIRE_BAD_FRAME,
                  "a frame before STARTED (wait for it after HELLO)");
        return;
    }
    if (c->state == RB_CONN_HANDSHAKE && kind != RB_FRAME_HELLO) {
        conn_fail(c, f->hdr.corr_id, RB_WIRE_BAD_FRAME, "the first frame must be HELLO");
        return;
    }
    if (!limits_allow(c, f)) {
        connz_sync(c, false);
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
            conn_set_state(c, RB_CONN_DRAINING);
            stop_reading(c);
            c->close_deadline_ms = rb_loop_now_ms(c->shard->loop) + c->shard->cfg->close_grace_ms;
            conn_rearm_timer(c);
            rb_conn_maybe_finish_drain(c);
        } else {
            RB_LOG_DEBUG(c->id, "client closed with %s", rb_wire_code_name(f->u.close.status));
            finish_close(c);
        }
        break;
    case RB_FRAME_MUTATE:
        rb_stream_on_mutate(c, f);
        break;
    case RB_FRAME_AUTH:
        on_auth(c, f);
        break;
    default: {
        if (kind <= RB_FRAME_KIND_LAST && c->shard->client_frames[kind] != NULL) {
            c->shard->client_frames[kind](c, f);
            /* A held frame is decoded again on resume: it counts once. */
            rb_connz_frame_in(c, kind, c->held ? -1 : 0);
            if (c->held && kind == RB_FRAME_PUBLISH) {
                rb_bucket_give(&c->publish_bucket, 1);
            }
            break;
        }
        char msg[96];
        snprintf(msg, sizeof msg, "%s is not a client frame", rb_frame_kind_name(kind));
        conn_fail(c, f->hdr.corr_id, RB_WIRE_BAD_FRAME, msg);
        break;
    }
    }
    connz_sync(c, kind == RB_FRAME_MUTATE);
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
        if (c->held && ok) {
            /* The frame waits whole where it is, past any partial deadline. */
            c->rx_held = true;
            c->partial_since_ms = 0;
            return (ssize_t)used;
        }
        end_partial(c);
        if (!ok) {
            return -1;
        }
    }
    return (ssize_t)used;
}

/* The frame handler held the whole frame at p (it lives in a buffer the
 * caller wants back): it moves into rx_buf, where it waits. False when no
 * buffer could be had (the connection was failed). */
static bool hold_in_place(rb_conn *c, const rb_frame_header *hdr, const uint8_t *p)
{
    uint64_t partial_since_ms = c->partial_since_ms;
    if (!start_partial(c, hdr, p, hdr->size)) {
        return false;
    }
    c->partial_since_ms = partial_since_ms;
    c->rx_held = true;
    return true;
}

/* The shared frame decoder: whole frames are decoded in place in the
 * receive buffer; only a frame that straddles buffers is copied. Returns
 * the bytes taken: all of them, unless the session stopped reading or a
 * frame handler held a frame (which is then in rx_buf, taken). */
static size_t conn_feed(rb_conn *c, const uint8_t *p, size_t len)
{
    size_t taken = 0;
    while (taken < len && conn_reading(c) && !c->held) {
        const uint8_t *at = p + taken;
        size_t left = len - taken;
        if (c->hdr_len > 0 || c->rx_buf != NULL) {
            ssize_t used = feed_partial(c, at, left);
            if (used < 0) {
                return len;
            }
            taken += (size_t)used;
            continue;
        }
        if (left < RB_FRAME_HEADER_BYTES) {
            memcpy(c->hdr_bytes, at, left);
            c->hdr_len = (uint32_t)left;
            if (c->partial_since_ms == 0) {
                c->partial_since_ms = rb_loop_now_ms(c->shard->loop);
                conn_rearm_timer(c);
            }
            return len;
        }
        rb_frame_header hdr;
        if (!check_header(c, at, &hdr)) {
            return len;
        }
        if (hdr.size > left) {
            (void)start_partial(c, &hdr, at, left);
            return len;
        }
        if (!handle_frame(c, at, hdr.size)) {
            return len;
        }
        if (c->held && !hold_in_place(c, &hdr, at)) {
            return len;
        }
        taken += hdr.size;
    }
    return taken;
}

/* ---- publisher pause: the held frame and the bytes behind it ---- */

/* A chunk of the hold chain: this head, then the bytes [off, len). */
typedef struct hold_chunk {
    uint8_t *next;
    uint32_t off;
    uint32_t len;
} hold_chunk;

#define HOLD_CHUNK_DATA_BYTES (RB_CHUNK_BYTES - sizeof(hold_chunk))

static hold_chunk *chunk_of(uint8_t *p)
{
    return (hold_chunk *)(void *)p;
}

static void hold_drop(rb_conn *c)
{
    while (c->hold_head != NULL) {
        uint8_t *next = chunk_of(c->hold_head)->next;
        rb_pool_put(&c->shard->chunk_pool, c->hold_head);
        c->hold_head = next;
    }
    c->hold_tail = NULL;
    c->hold_bytes = 0;
}

uint64_t rb_session_hold_chunks(uint64_t bytes)
{
    return (bytes + HOLD_CHUNK_DATA_BYTES - 1) / HOLD_CHUNK_DATA_BYTES;
}

/* Keeps bytes that arrived behind the held frame, in order. */
static void hold_append(rb_conn *c, const uint8_t *p, size_t len)
{
    if (c->hold_bytes + len > c->link->hold_bytes_max) {
        hold_drop(c);
        conn_fail(c, 0, RB_WIRE_RESOURCE_EXHAUSTED,
                  "more input arrived behind a paused publish than the session keeps");
        return;
    }
    while (len > 0) {
        hold_chunk *t = c->hold_tail != NULL ? chunk_of(c->hold_tail) : NULL;
        if (t == NULL || t->len == HOLD_CHUNK_DATA_BYTES) {
            uint8_t *fresh = rb_pool_get(&c->shard->chunk_pool);
            if (fresh == NULL) {
                hold_drop(c);
                conn_fail(c, 0, RB_WIRE_RESOURCE_EXHAUSTED, "no buffer for input behind a pause");
                return;
            }
            *chunk_of(fresh) = (hold_chunk){0};
            if (t != NULL) {
                t->next = fresh;
            } else {
                c->hold_head = fresh;
            }
            c->hold_tail = fresh;
            t = chunk_of(fresh);
        }
        size_t n = HOLD_CHUNK_DATA_BYTES - t->len;
        n = n < len ? n : len;
        memcpy((uint8_t *)(t + 1) + t->len, p, n);
        t->len += (uint32_t)n;
        c->hold_bytes += (uint32_t)n;
        p += n;
        len -= n;
    }
}

void rb_session_hold(rb_conn *c)
{
    RB_ASSERT(c->state == RB_CONN_OPEN);
    RB_ASSERT(!c->held);
    c->held = true;
    /* The frame is decoded again on resume: it counts once. */
    RB_STAT_SUB(c->shard, frames_in, 1);
    if (!c->link_held) {
        /* Held again while the held bytes are fed: the link still is. */
        c->link_held = true;
        c->link->ops->hold_reading(c->link, true);
    }
    conn_rearm_timer(c);
}

/* Feeds the hold chain until it is empty or a frame is held again. */
static void hold_feed(rb_conn *c)
{
    while (c->hold_head != NULL && conn_reading(c) && !c->held) {
        hold_chunk *h = chunk_of(c->hold_head);
        size_t used = conn_feed(c, (uint8_t *)(h + 1) + h->off, h->len - h->off);
        if (c->hold_head == NULL) {
            return; /* the connection failed and dropped the chain */
        }
        h->off += (uint32_t)used;
        c->hold_bytes -= (uint32_t)used;
        if (h->off == h->len) {
            c->hold_head = h->next;
            if (c->hold_head == NULL) {
                c->hold_tail = NULL;
            }
            rb_pool_put(&c->shard->chunk_pool, (uint8_t *)h);
        }
    }
}

bool rb_session_resume(rb_conn *c)
{
    RB_ASSERT(c->held);
    c->held = false;
    if (!conn_reading(c)) {
        return true;
    }
    if (c->rx_held) {
        c->rx_held = false;
        bool ok = handle_frame(c, c->rx_buf, c->rx_len);
        if (c->held && ok) {
            c->rx_held = true;
            return false;
        }
        end_partial(c);
    }
    hold_feed(c);
    if (c->held || !conn_reading(c)) {
        return true;
    }
    hold_drop(c); /* empty, unless reading stopped */
    /* A PONG behind the held bytes could not be read: its deadline
     * starts again now. */
    c->ping_sent_ms = rb_loop_now_ms(c->shard->loop);
    conn_rearm_timer(c);
    c->link_held = false;
    c->link->ops->hold_reading(c->link, false);
    if (!c->held && c->eof_held && c->state != RB_CONN_FREE && c->state != RB_CONN_CLOSED) {
        c->eof_held = false;
        rb_session_peer_eof(c);
    }
    return true;
}

/* ---- the link's side ---- */

bool rb_session_reading(const rb_conn *c)
{
    return conn_reading(c);
}

void rb_session_recv(rb_conn *c, const uint8_t *p, size_t len)
{
    RB_STAT_ADD(c->shard, bytes_in, len);
    rb_connz_bytes_in(c, len);
    if (c->held) {
        hold_append(c, p, len);
        return;
    }
    RB_ASSERT(c->hold_head == NULL);
    size_t taken = conn_feed(c, p, len);
    if (c->held && taken < len && conn_reading(c)) {
        hold_append(c, p + taken, len - taken);
    }
}

rb_sendq *rb_session_sendq(rb_conn *c)
{
    return &c->sendq;
}

void rb_session_send_drained(rb_conn *c)
{
    connz_sync(c, false);
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
