/* TCP links: the accepted socket under a session. This file owns the fd
 * (TCP_NODELAY, multishot receive, sendmsg, shutdown(SHUT_WR), the linger
 * before close) and the connection's transport stack (transports/layer.h):
 * tls, ws or wss layers decode received bytes before the session sees them,
 * and at flush time encode the session's queued frames into socket bytes
 * (the wire queue) that sendmsg writes. Plain tcp writes the session's send
 * queue itself, zero-copy, and releases bytes as the socket takes them.
 * The client protocol is server/session.c's. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/assert.h"
#include "common/log.h"
#include "server/link.h"
#include "server/server.h"
#include "transports/tls.h"
#include "transports/ws.h"

struct rb_link_tcp {
    rb_link base;
    rb_shard *shard;
    rb_conn *session; /* NULL while the slot is free */
    uint64_t id;      /* the session's, for logs */
    int fd;
    uint8_t inflight_count; /* ring operations not yet completed */
    bool recv_armed;
    bool sending;
    bool shutting;      /* shutdown was asked: close in order once all is sent */
    bool closed;        /* close ran: the fd is closed or closing */
    bool layers_closed; /* rb_stack_close has run */
    bool peer_eof;      /* the peer closed its side */
    bool lingering;     /* all sent; reading to discard until the peer closes */
    bool held;          /* the session paused: receive buffers are kept, not read */
    uint16_t close_status;
    /* receive buffers that arrived while held, oldest first, chained
     * through the shard's recv_pins (at most the loop's buffer count) */
    uint32_t pin_count;
    uint16_t pin_head;
    uint16_t pin_tail;
    rb_op recv_op;
    rb_op send_op;
    rb_op close_op;
    struct iovec *tx_iov; /* from the shard's iov pool while a send is in flight */
    struct msghdr tx_msg;
    /* transport layers (empty for tcp) and the socket bytes they made from
     * the send queue: with layers, sendmsg writes these */
    rb_stack stack;
    rb_sendq wire;
};

/* What a layered link's wire queue may hold (common/limits.h). */
#define WIRE_QUOTA_BYTES ((uint64_t)RB_LINK_WIRE_CHUNKS_MAX * RB_CHUNK_BYTES)

#define TCP_FROM(ptr, field) RB_CONTAINER_OF(ptr, rb_link_tcp, field)
#define TCP_OF(link)         RB_CONTAINER_OF(link, rb_link_tcp, base)

static void tcp_recv_done(rb_op *op, int res, uint32_t flags);
static void tcp_send_done(rb_op *op, int res, uint32_t flags);
static void tcp_close_done(rb_op *op, int res, uint32_t flags);
static void tcp_closing_drained(rb_link_tcp *t);
static void tcp_down(rb_link_tcp *t);
static void tcp_try_release(rb_link_tcp *t);
static void tcp_rearm(rb_link_tcp *t);
static void pin_keep(rb_link_tcp *t, uint16_t bid, uint32_t len);
static void pin_drop(rb_link_tcp *t);

/* A kept receive buffer: its length and the next one of the same link. */
struct rb_recv_pin {
    uint32_t len;
    uint16_t next;
};

size_t rb_link_tcp_bytes(void)
{
    return sizeof(rb_link_tcp);
}

int rb_link_tcp_table_init(rb_shard *sh, rb_err *err)
{
    sh->tcp_links = calloc(sh->conn_max, sizeof *sh->tcp_links);
    sh->recv_pins = calloc(RB_RECV_BUF_COUNT, sizeof *sh->recv_pins);
    if (sh->tcp_links == NULL || sh->recv_pins == NULL) {
        free(sh->tcp_links);
        free(sh->recv_pins);
        sh->tcp_links = NULL;
        sh->recv_pins = NULL;
        return rb_err_set(err, RB_ENOMEM, 0, "shard %u: %u tcp links", sh->id, sh->conn_max);
    }
    /* Slots are set up when taken (tcp_reset): untouched, the table costs
     * no memory until connections arrive. */
    sh->wire_budget.limit_bytes = (uint64_t)sh->conn_max * WIRE_QUOTA_BYTES;
    sh->wire_budget.used_bytes = 0;
    return 0;
}

void rb_link_tcp_table_deinit(rb_shard *sh)
{
    free(sh->tcp_links);
    sh->tcp_links = NULL;
    free(sh->recv_pins);
    sh->recv_pins = NULL;
}

/* A refused tcp connection gets one ERROR frame written directly: the
 * socket is new, so its send buffer has room, and the fd is closed at once.
 * Layered transports could not read a bare frame: they are just closed. */
static void refuse_fd(int fd, const rb_listener *l, uint16_t code, const char *why)
{
    if (l->cfg.transport != RB_TRANSPORT_TCP) {
        close(fd);
        return;
    }
    uint8_t buf[256];
    rb_bytes msg = {(const uint8_t *)why, strlen(why)};
    size_t n = rb_frame_encode_error(buf, sizeof buf, 0, code, msg);
    if (n > 0) {
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    close(fd);
}

/* True while a closing link still reads, only to discard: closing a
 * socket with unread input makes the kernel send a reset that can destroy
 * the peer's copy of our last frames (a peer still writing, like a client
 * flooding PINGs or a WebSocket client in mid-message, then never reads
 * our ERROR and CLOSE). Plain tcp and layered links alike. */
static bool tcp_lingers(const rb_link_tcp *t)
{
    return !t->peer_eof && !t->closed && !rb_session_reading(t->session);
}

/* ---- the transport stack's sinks ---- */

static bool sink_deliver(void *owner, const uint8_t *p, size_t len)
{
    rb_link_tcp *t = owner;
    if (!rb_session_reading(t->session)) {
        return false;
    }
    rb_session_recv(t->session, p, len);
    return rb_session_reading(t->session);
}

/* Socket bytes made by the layers go to the wire queue (copied). Returns 0
 * or RB_ELIMIT past the wire queue's bound. */
static int sink_wire(void *owner, const uint8_t *p, size_t len)
{
    rb_link_tcp *t = owner;
    if (rb_sendq_append(&t->wire, p, len, 0) != 0) {
        return RB_ELIMIT;
    }
    rb_session_want_send(t->session);
    return 0;
}

static void sink_ended(void *owner, rb_layer_end how, const char *why)
{
    rb_link_tcp *t = owner;
    rb_session_ended(t->session, how, why);
}

static int tcp_stack_build(rb_link_tcp *t, const rb_listener *l, rb_err *err)
{
    rb_server *srv = t->shard->server;
    rb_stack_sink sink = {
        .deliver = sink_deliver, .wire = sink_wire, .ended = sink_ended, .owner = t};
    rb_stack_init(&t->stack, &sink);
    rb_layer *layer;
    if (l->tls != NULL) {
        int rc = rb_tls_layer_new(&layer, l->tls, err);
        if (rc != 0) {
            return rc;
        }
        rb_stack_push(&t->stack, layer);
    }
    /* An http listener is the WebSocket layer's HTTP phase without an
     * upgrade path: every request goes to the admin routes. */
    if (l->cfg.transport == RB_TRANSPORT_WS || l->cfg.transport == RB_TRANSPORT_WSS ||
        l->cfg.transport == RB_TRANSPORT_HTTP) {
        rb_ws_options o = {.listener = &l->cfg,
                           .max_frame_bytes = srv->cfg.max_frame_bytes,
                           .router = rb_admin_router(&srv->admin)};
        int rc = rb_ws_layer_new(&layer, &o, err);
        if (rc != 0) {
            return rc;
        }
        rb_stack_push(&t->stack, layer);
    }
    return 0;
}

/* "address:port" (IPv6 in brackets) of the peer, or "?" when unknown. */
static void peer_text(int fd, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[INET6_ADDRSTRLEN] = "?";
    snprintf(out, cap, "?");
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0) {
        return;
    }
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        snprintf(out, cap, "%s:%u", host, ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        snprintf(out, cap, "[%s]:%u", host, ntohs(a->sin6_port));
    }
}

static const rb_link_ops tcp_ops;

/* Resets slot t of shard sh for fd; the session is attached by the caller. */
static void tcp_reset(rb_shard *sh, rb_link_tcp *t, int fd, const rb_listener *l)
{
    RB_ASSERT(t->inflight_count == 0);
    RB_ASSERT(t->session == NULL);
    memset(t, 0, sizeof *t);
    t->shard = sh;
    t->fd = fd;
    t->base.ops = &tcp_ops;
    t->base.kind = l->cfg.transport;
    t->base.answers_before_hello = l->cfg.transport != RB_TRANSPORT_TCP;
    t->base.hold_bytes_max = RB_SESSION_HOLD_BYTES_MAX;
    t->recv_op.done = tcp_recv_done;
    t->send_op.done = tcp_send_done;
    t->close_op.done = tcp_close_done;
    peer_text(fd, t->base.peer, sizeof t->base.peer);
    rb_sendq_init(&t->wire, &sh->chunk_pool, &sh->seg_pool, &sh->wire_budget, WIRE_QUOTA_BYTES);
}

void rb_link_tcp_adopt(rb_shard *sh, int fd, const rb_listener *l, bool counted)
{
    if (counted) {
        /* The acceptor counted it as this shard's load while handing it over. */
        atomic_fetch_sub(&sh->conn_count, 1);
    }
    if (sh->stopping) {
        refuse_fd(fd, l, RB_WIRE_UNAVAILABLE, "server is shutting down");
        return;
    }
    if (sh->conn_free == NULL) {
        char peer[RB_LINK_PEER_BYTES_MAX];
        peer_text(fd, peer, sizeof peer);
        RB_LOG_WARN(0, "connection table full (%u): refusing fd %d (peer %s)", sh->conn_max, fd,
                    peer);
        refuse_fd(fd, l, RB_WIRE_RESOURCE_EXHAUSTED, "connection limit reached");
        return;
    }
    rb_addr_key key;
    rb_admit admit = rb_addr_check(sh, fd, l, &key);
    if (admit != RB_ADMIT_OK) {
        refuse_fd(fd, l,
                  admit == RB_ADMIT_FAILURES ? RB_WIRE_UNAUTHORIZED : RB_WIRE_RESOURCE_EXHAUSTED,
                  admit == RB_ADMIT_FAILURES ? "too many failed sign-ins from this address"
                                             : rb_admit_name(admit));
        return;
    }
    /* Session slot i is carried by tcp link i: both are free together. */
    rb_link_tcp *t = &sh->tcp_links[sh->conn_free->index];
    tcp_reset(sh, t, fd, l);
    rb_conn *c = rb_session_open(sh, &t->base);
    RB_ASSERT(c != NULL);
    rb_conn_addr_counted(c, l, &key);
    t->session = c;
    t->id = c->id;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int unsent = (int)RB_KERNEL_UNSENT_BYTES_MAX;
    setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &unsent, sizeof unsent);
    rb_err err;
    if (l->cfg.transport != RB_TRANSPORT_TCP && tcp_stack_build(t, l, &err) != 0) {
        RB_LOG_ERROR(t->id, "%s transport: %s%s", rb_transport_name(l->cfg.transport), err.msg,
                     rb_session_peer_once(c));
        tcp_down(t);
        return;
    }
    if (rb_loop_recv_multishot(sh->loop, fd, &t->recv_op) != 0) {
        RB_LOG_ERROR(t->id, "no submission entry for recv");
        tcp_down(t);
        return;
    }
    t->recv_armed = true;
    t->inflight_count++;
    RB_LOG_DEBUG(t->id, "accepted fd %d from %s on %s://%s:%u", fd, t->base.peer,
                 rb_transport_name(l->cfg.transport), l->cfg.address, l->cfg.port);
}

/* ---- sending ---- */

/* The queue sendmsg writes: the session's own (plain tcp, zero-copy) or
 * the wire queue the layers fill. */
static rb_sendq *tcp_out(rb_link_tcp *t)
{
    return rb_stack_empty(&t->stack) ? rb_session_sendq(t->session) : &t->wire;
}

/* True when a send pass has something to write. */
static bool tcp_output_pending(rb_link_tcp *t)
{
    uint64_t queued = rb_sendq_unsent(rb_session_sendq(t->session));
    if (rb_stack_empty(&t->stack)) {
        return queued > 0;
    }
    return rb_sendq_unsent(&t->wire) > 0 || (queued > 0 && rb_stack_ready(&t->stack));
}

/* Encodes queued frames through the layers into the wire queue, a bounded
 * amount per pass; the session's bytes are released as the layers take
 * them (the wire queue holds them from then on). Returns false when the
 * link went down. */
static bool tcp_encode(rb_link_tcp *t)
{
    rb_err err;
    rb_sendq *q = rb_session_sendq(t->session);
    while (rb_sendq_unsent(q) > 0 && rb_sendq_unsent(&t->wire) < RB_STACK_WIRE_BYTES_PER_PASS &&
           rb_stack_ready(&t->stack)) {
        size_t n;
        const uint8_t *p = rb_sendq_peek_one(q, &n);
        n = n < RB_STACK_WIRE_BYTES_PER_PASS ? n : RB_STACK_WIRE_BYTES_PER_PASS;
        if (rb_stack_send(&t->stack, p, n, &err) != 0) {
            RB_LOG_INFO(t->id, "transport: %s%s", err.msg, rb_session_peer_once(t->session));
            tcp_down(t);
            return false;
        }
        rb_sendq_written(q, n);
        rb_sendq_release(q, n);
    }
    if (rb_stack_flush(&t->stack, &err) != 0) {
        RB_LOG_INFO(t->id, "transport: %s%s", err.msg, rb_session_peer_once(t->session));
        tcp_down(t);
        return false;
    }
    return true;
}

/* Prepares a send pass: encodes through the layers, and when a shutdown
 * waits and all is written, closes in order. True when there is something
 * to write. */
static bool tcp_prepare_send(rb_link_tcp *t)
{
    if (!rb_stack_empty(&t->stack) && !tcp_encode(t)) {
        return false;
    }
    if (rb_sendq_unsent(tcp_out(t)) == 0 && t->shutting) {
        /* Layers write their closing bytes, sent in this pass. */
        tcp_closing_drained(t);
        if (t->closed) {
            return false;
        }
    }
    return rb_sendq_unsent(tcp_out(t)) > 0;
}

static void tcp_start_send(rb_link *link)
{
    rb_link_tcp *t = TCP_OF(link);
    if (t->sending || t->closed) {
        return;
    }
    if (!tcp_prepare_send(t) || t->closed) {
        return;
    }
    if (t->tx_iov == NULL) {
        t->tx_iov = rb_pool_get(&t->shard->iov_pool);
        if (t->tx_iov == NULL) {
            /* Every iov array is in flight; try again next turn. */
            rb_session_want_send(t->session);
            return;
        }
    }
    int n = rb_sendq_peek(tcp_out(t), t->tx_iov, RB_SEND_IOV_MAX);
    if (n == 0) {
        rb_pool_put(&t->shard->iov_pool, t->tx_iov);
        t->tx_iov = NULL;
        return;
    }
    memset(&t->tx_msg, 0, sizeof t->tx_msg);
    t->tx_msg.msg_iov = t->tx_iov;
    t->tx_msg.msg_iovlen = (size_t)n;
    if (rb_loop_sendmsg(t->shard->loop, t->fd, &t->tx_msg, &t->send_op) != 0) {
        rb_session_want_send(t->session);
        return;
    }
    t->sending = true;
    t->inflight_count++;
}

static void tcp_send_done(rb_op *op, int res, uint32_t flags)
{
    (void)flags;
    rb_link_tcp *t = TCP_FROM(op, send_op);
    RB_ASSERT(t->sending);
    t->sending = false;
    t->inflight_count--;
    if (t->closed) {
        tcp_try_release(t);
        return;
    }
    if (res < 0) {
        if (res == -EAGAIN || res == -EINTR) {
            rb_session_want_send(t->session);
            return;
        }
        RB_LOG_DEBUG(t->id, "send: %s", strerror(-res));
        tcp_down(t);
        return;
    }
    /* TCP keeps no copy: what the socket took is released. */
    rb_sendq *q = tcp_out(t);
    rb_sendq_written(q, (size_t)res);
    rb_sendq_release(q, (size_t)res);
    if (tcp_output_pending(t)) {
        rb_session_want_send(t->session);
        return;
    }
    rb_pool_put(&t->shard->iov_pool, t->tx_iov);
    t->tx_iov = NULL;
    if (t->shutting) {
        tcp_closing_drained(t);
        return;
    }
    rb_session_send_drained(t->session);
}

/* Everything queued before the shutdown went out: the layers write their
 * closing bytes (WS Close, TLS close_notify), then the write side shuts. */
static void tcp_closing_drained(rb_link_tcp *t)
{
    if (!rb_stack_empty(&t->stack) && !t->layers_closed) {
        t->layers_closed = true;
        rb_stack_close(&t->stack, t->close_status);
        if (rb_sendq_unsent(&t->wire) > 0) {
            rb_session_want_send(t->session);
            return;
        }
    }
    shutdown(t->fd, SHUT_WR);
    if (tcp_lingers(t) && t->recv_armed) {
        /* The peer sees our FIN and closes; its EOF or the grace ends it. */
        t->lingering = true;
        return;
    }
    tcp_down(t);
}

/* ---- receiving ---- */

/* Received bytes through the layers; what they wrote meanwhile (handshake
 * records, an HTTP answer, a Pong) is flushed into the wire queue. */
static void tcp_stack_recv(rb_link_tcp *t, const uint8_t *p, size_t len)
{
    rb_err err;
    int rc = rb_stack_recv(&t->stack, p, len, &err);
    if (rc != 0 && rb_session_reading(t->session)) {
        rb_session_fail(t->session, (uint16_t)err.cause, err.msg);
    }
    if (!t->closed && rb_stack_flush(&t->stack, &err) != 0) {
        RB_LOG_INFO(t->id, "transport: %s%s", err.msg, rb_session_peer_once(t->session));
        tcp_down(t);
    }
}

/* Received socket bytes, through the layers if there are any. */
static void tcp_deliver(rb_link_tcp *t, const uint8_t *p, size_t len)
{
    if (rb_stack_empty(&t->stack)) {
        rb_session_recv(t->session, p, len);
    } else {
        tcp_stack_recv(t, p, len);
    }
}

static void tcp_recv_done(rb_op *op, int res, uint32_t flags)
{
    rb_link_tcp *t = TCP_FROM(op, recv_op);
    rb_loop *loop = t->shard->loop;
    bool more = (flags & RB_LOOP_F_MORE) != 0;
    if ((flags & RB_LOOP_F_BUFFER) != 0) {
        uint16_t bid = RB_LOOP_BUFFER_ID(flags);
        if (res > 0 && !t->closed && rb_session_reading(t->session) &&
            (t->held || t->pin_count > 0)) {
            /* Paused: the bytes wait in their buffer, in order. */
            pin_keep(t, bid, (uint32_t)res);
        } else {
            if (res > 0 && !t->closed && rb_session_reading(t->session)) {
                tcp_deliver(t, rb_loop_buf(loop, bid), (size_t)res);
            }
            rb_loop_buf_return(loop, bid);
        }
    }
    if (more) {
        return;
    }
    t->recv_armed = false;
    t->inflight_count--;
    if (t->closed) {
        tcp_try_release(t);
        return;
    }
    if (res == 0) {
        RB_LOG_DEBUG(t->id, "peer closed");
        t->peer_eof = true;
        if (t->lingering) {
            tcp_down(t);
        } else {
            rb_session_peer_eof(t->session);
        }
        return;
    }
    if (res < 0 && res != -ENOBUFS && res != -EINTR && res != -EAGAIN && res != -ECANCELED) {
        RB_LOG_DEBUG(t->id, "recv: %s", strerror(-res));
        tcp_down(t);
        return;
    }
    /* The multishot recv ended (buffers ran dry, a pause or stop cancelled
     * it, or the kernel chose to stop): re-arm while the session reads and
     * is not paused, or the link lingers. */
    tcp_rearm(t);
}

/* Arms the multishot receive again when it is needed and not armed.
 * False when it could not be armed (no submission entry). */
static bool tcp_arm(rb_link_tcp *t)
{
    if (t->recv_armed || t->closed || t->fd < 0 || t->peer_eof) {
        return true;
    }
    bool reading = rb_session_reading(t->session) && !t->held && t->pin_count == 0;
    if (!reading && !tcp_lingers(t)) {
        return true;
    }
    if (rb_loop_recv_multishot(t->shard->loop, t->fd, &t->recv_op) != 0) {
        return false;
    }
    t->recv_armed = true;
    t->inflight_count++;
    return true;
}

static void tcp_rearm(rb_link_tcp *t)
{
    if (!tcp_arm(t)) {
        tcp_down(t);
    }
}

/* ---- pausing: receive buffers kept while the session holds a frame ---- */

static void pin_keep(rb_link_tcp *t, uint16_t bid, uint32_t len)
{
    struct rb_recv_pin *pins = t->shard->recv_pins;
    pins[bid] = (struct rb_recv_pin){.len = len, .next = 0};
    if (t->pin_count == 0) {
        t->pin_head = bid;
    } else {
        pins[t->pin_tail].next = bid;
    }
    t->pin_tail = bid;
    t->pin_count++;
}

/* Takes the oldest kept buffer off the link's list. */
static uint16_t pin_pop(rb_link_tcp *t, uint32_t *len)
{
    RB_ASSERT(t->pin_count > 0);
    uint16_t bid = t->pin_head;
    *len = t->shard->recv_pins[bid].len;
    t->pin_head = t->shard->recv_pins[bid].next;
    t->pin_count--;
    return bid;
}

/* Gives every kept buffer back to the loop unread (the session reads no
 * more). */
static void pin_drop(rb_link_tcp *t)
{
    while (t->pin_count > 0) {
        uint32_t len;
        rb_loop_buf_return(t->shard->loop, pin_pop(t, &len));
    }
}

static void tcp_hold_reading(rb_link *link, bool hold)
{
    rb_link_tcp *t = TCP_OF(link);
    if (t->closed) {
        return;
    }
    if (hold) {
        t->held = true;
        if (t->recv_armed && t->fd >= 0) {
            /* Buffers the kernel filled before the cancel are kept. */
            rb_loop_cancel_op(t->shard->loop, &t->recv_op);
        }
        return;
    }
    t->held = false;
    while (t->pin_count > 0 && !t->held && !t->closed && rb_session_reading(t->session)) {
        uint32_t len;
        uint16_t bid = pin_pop(t, &len);
        tcp_deliver(t, rb_loop_buf(t->shard->loop, bid), len);
        rb_loop_buf_return(t->shard->loop, bid);
    }
    if (t->closed) {
        return;
    }
    if (!rb_session_reading(t->session)) {
        pin_drop(t);
    }
    tcp_rearm(t);
}

/* ---- closing ---- */

/* The link failed or finished: the session closes, which closes the link. */
static void tcp_down(rb_link_tcp *t)
{
    if (!t->closed) {
        rb_session_link_down(t->session);
    }
}

static void tcp_try_release(rb_link_tcp *t)
{
    if (!t->closed || t->inflight_count > 0 || t->session == NULL) {
        return;
    }
    rb_shard *sh = t->shard;
    pin_drop(t);
    rb_sendq_drop_all(&t->wire);
    rb_stack_deinit(&t->stack);
    if (t->tx_iov != NULL) {
        rb_pool_put(&sh->iov_pool, t->tx_iov);
        t->tx_iov = NULL;
    }
    rb_conn *c = t->session;
    t->session = NULL;
    rb_session_link_released(c);
}

static void tcp_close_done(rb_op *op, int res, uint32_t flags)
{
    (void)res;
    (void)flags;
    rb_link_tcp *t = TCP_FROM(op, close_op);
    t->inflight_count--;
    tcp_try_release(t);
}

static void tcp_close(rb_link *link)
{
    rb_link_tcp *t = TCP_OF(link);
    if (t->closed) {
        return;
    }
    t->closed = true;
    if (t->fd >= 0) {
        rb_loop_cancel_fd(t->shard->loop, t->fd, NULL);
        if (rb_loop_close(t->shard->loop, t->fd, &t->close_op) == 0) {
            t->inflight_count++;
        } else {
            close(t->fd);
        }
        t->fd = -1;
    }
    tcp_try_release(t);
}

static void tcp_stop_reading(rb_link *link)
{
    rb_link_tcp *t = TCP_OF(link);
    /* A pause ends with reading: what it kept is never read. */
    t->held = false;
    pin_drop(t);
    if (tcp_lingers(t)) {
        /* Reading to discard needs the receive armed (without it the
         * shutdown closes at once instead of lingering). */
        (void)tcp_arm(t);
        return;
    }
    if (t->recv_armed && t->fd >= 0) {
        /* The cancelled recv's completion still arrives and is ignored. Only
         * the recv: a send waiting for room must finish, or the frames it
         * carries (and the CLOSE after them) would be cut off. */
        rb_loop_cancel_op(t->shard->loop, &t->recv_op);
    }
}

static void tcp_shutdown(rb_link *link, uint16_t wire_status)
{
    rb_link_tcp *t = TCP_OF(link);
    if (wire_status != RB_WIRE_OK && !t->shutting && t->fd >= 0) {
        /* The room kept free in the kernel's send buffer is for the
         * closing frames of a client that may have stopped reading. */
        int unlimited = 0x7fffffff;
        setsockopt(t->fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &unlimited, sizeof unlimited);
    }
    t->shutting = true;
    t->close_status = wire_status;
    rb_session_want_send(t->session);
}

static bool tcp_ready(const rb_link *link)
{
    const rb_link_tcp *t = TCP_OF(link);
    return rb_stack_empty(&t->stack) || rb_stack_ready(&t->stack);
}

static bool tcp_lingering(const rb_link *link)
{
    return TCP_OF(link)->lingering;
}

static uint64_t tcp_unsent_bytes(const rb_link *link)
{
    return rb_sendq_unsent(&TCP_OF(link)->wire);
}

static uint64_t tcp_busy_bytes(const rb_link *link)
{
    const rb_link_tcp *t = TCP_OF(link);
    if (!t->sending || !rb_stack_empty(&t->stack)) {
        /* Layers copy what they take: the session's bytes are never busy. */
        return 0;
    }
    uint64_t n = 0;
    for (size_t i = 0; i < t->tx_msg.msg_iovlen; i++) {
        n += t->tx_iov[i].iov_len;
    }
    return n;
}

static size_t tcp_peer_cert_name(const rb_link *l, char *out, size_t cap)
{
    const rb_link_tcp *t = (const rb_link_tcp *)(const void *)l;
    for (uint32_t i = 0; i < t->stack.count; i++) {
        const rb_layer *layer = t->stack.layers[i];
        if (layer->ops->peer_cert_name != NULL) {
            return layer->ops->peer_cert_name(layer, out, cap);
        }
    }
    return 0;
}

static const rb_link_ops tcp_ops = {
    .start_send = tcp_start_send,
    .stop_reading = tcp_stop_reading,
    .hold_reading = tcp_hold_reading,
    .shutdown = tcp_shutdown,
    .close = tcp_close,
    .ready = tcp_ready,
    .lingering = tcp_lingering,
    .unsent_bytes = tcp_unsent_bytes,
    .busy_bytes = tcp_busy_bytes,
    .peer_cert_name = tcp_peer_cert_name,
};
