/* QUIC links: a session (server/session.c) over the bus stream of one
 * ringbus/1 QUIC connection served by the shard's endpoint (quic_ep.c).
 * The session's send queue is handed to the engine by reference (no copy)
 * and released only as the peer acknowledges it; received bytes go to the
 * session as they arrive and flow control reopens as it takes them. A
 * shutdown waits until everything queued is acknowledged, then ends the
 * connection with CONNECTION_CLOSE carrying the wire status, all inside the
 * session's close grace (the session closes the link when the grace ends). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "common/assert.h"
#include "common/frame.h"
#include "common/log.h"
#include "server/link.h"
#include "server/server.h"
#include "transports/quic.h"

/* Spans handed to the engine per pass. */
#define LINK_QUIC_IOV_MAX 64

struct rb_link_quic {
    rb_link base;
    rb_shard *shard;
    rb_conn *session; /* NULL while the slot is free */
    rb_quic_conn *qc; /* NULL once the connection is gone */
    uint64_t id;
    bool reading;
    bool held; /* the session paused: consumption is not reported */
    bool shutting;
    bool closed;
    uint16_t close_status;
    uint64_t handed;     /* bytes given to the engine and not yet acknowledged */
    uint64_t unreported; /* bytes the session took while paused, not yet consumed */
};

#define QUIC_OF(link) RB_CONTAINER_OF(link, rb_link_quic, base)

int rb_link_quic_table_init(rb_shard *sh, rb_err *err)
{
    sh->quic_links = calloc(sh->conn_max, sizeof *sh->quic_links);
    if (sh->quic_links == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "shard %u: %u quic links", sh->id, sh->conn_max);
    }
    return 0;
}

void rb_link_quic_table_deinit(rb_shard *sh)
{
    free(sh->quic_links);
    sh->quic_links = NULL;
}

/* Ends the QUIC connection (once); the engine forgets the owner's bytes. */
static void quic_end(rb_link_quic *q, uint16_t status, const char *why)
{
    if (q->qc == NULL) {
        return;
    }
    rb_quic_conn_set_user(q->qc, NULL);
    rb_quic_conn_close(q->qc, status, why, 0);
    q->qc = NULL;
    q->handed = 0;
}

/* Hands unsent bytes to the engine, by reference, as far as it takes. */
static void quic_push(rb_link_quic *q)
{
    rb_sendq *sq = rb_session_sendq(q->session);
    struct iovec iov[LINK_QUIC_IOV_MAX];
    while (rb_sendq_unsent(sq) > 0) {
        int n = rb_sendq_peek(sq, iov, LINK_QUIC_IOV_MAX);
        for (int i = 0; i < n; i++) {
            rb_err err;
            if (rb_quic_bus_send(q->qc, iov[i].iov_base, iov[i].iov_len, &err) != 0) {
                /* Out of send references: acknowledgements free them. */
                return;
            }
            rb_sendq_written(sq, iov[i].iov_len);
            q->handed += iov[i].iov_len;
        }
    }
}

/* After a push or an acknowledgement: a drained queue is reported, and a
 * waiting shutdown completes. */
static void quic_progress(rb_link_quic *q)
{
    rb_sendq *sq = rb_session_sendq(q->session);
    if (rb_sendq_unsent(sq) > 0 || q->handed > 0) {
        return;
    }
    if (q->shutting) {
        quic_end(q, q->close_status, rb_wire_code_name(q->close_status));
        rb_session_link_down(q->session);
        return;
    }
    rb_session_send_drained(q->session);
}

static void quic_start_send(rb_link *link)
{
    rb_link_quic *q = QUIC_OF(link);
    if (q->closed || q->qc == NULL) {
        return;
    }
    quic_push(q);
    quic_progress(q);
}

static void quic_stop_reading(rb_link *link)
{
    QUIC_OF(link)->reading = false;
    QUIC_OF(link)->held = false;
}

/* A paused session keeps what the engine delivers (the peer can send no
 * more than the stream window past what was consumed); consumption is
 * reported once the session reads again, so flow control backs the peer
 * off meanwhile. */
static void quic_hold_reading(rb_link *link, bool hold)
{
    rb_link_quic *q = QUIC_OF(link);
    q->held = hold;
    if (!hold && q->unreported > 0 && q->qc != NULL) {
        rb_quic_bus_consumed(q->qc, (size_t)q->unreported);
        q->unreported = 0;
    }
}

static void quic_shutdown(rb_link *link, uint16_t wire_status)
{
    rb_link_quic *q = QUIC_OF(link);
    if (q->shutting || q->closed) {
        return;
    }
    q->shutting = true;
    q->close_status = wire_status;
    if (q->qc == NULL) {
        rb_session_link_down(q->session);
        return;
    }
    rb_session_want_send(q->session);
}

static void quic_close(rb_link *link)
{
    rb_link_quic *q = QUIC_OF(link);
    if (q->closed) {
        return;
    }
    q->closed = true;
    /* The grace ran out, or the session was aborted: say so and go. */
    quic_end(q, q->shutting ? q->close_status : RB_WIRE_UNAVAILABLE, "connection closed");
    rb_conn *c = q->session;
    q->session = NULL;
    rb_session_link_released(c);
}

static bool quic_ready(const rb_link *link)
{
    (void)link;
    return true;
}

static bool quic_lingering(const rb_link *link)
{
    (void)link;
    return false;
}

static uint64_t quic_unsent_bytes(const rb_link *link)
{
    (void)link;
    return 0;
}

static uint64_t quic_busy_bytes(const rb_link *link)
{
    /* What the engine holds by reference is marked written as it is
     * handed over: nothing past the written cursor is in use. */
    (void)link;
    return 0;
}

static const rb_link_ops quic_ops = {
    .start_send = quic_start_send,
    .stop_reading = quic_stop_reading,
    .hold_reading = quic_hold_reading,
    .shutdown = quic_shutdown,
    .close = quic_close,
    .ready = quic_ready,
    .lingering = quic_lingering,
    .unsent_bytes = quic_unsent_bytes,
    .busy_bytes = quic_busy_bytes,
};

static void peer_text(const rb_quic_conn *qc, char *out, size_t cap)
{
    const rb_quic_addr *a = rb_quic_conn_remote(qc);
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&a->ss;
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
        port = ntohs(sin->sin_port);
    } else if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a->ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
        port = ntohs(sin6->sin6_port);
    }
    /* A full address and port always fit RB_LINK_PEER_BYTES_MAX. */
    int n = snprintf(out, cap, "[%s]:%u", host, port & 0xffffu);
    RB_ASSERT(n > 0 && (size_t)n < cap);
}

int rb_link_quic_open(rb_shard *sh, const rb_listener *l, rb_quic_conn *qc)
{
    if (sh->conn_free == NULL) {
        RB_LOG_WARN(0, "connection table full (%u): refusing a quic connection", sh->conn_max);
        return -1;
    }
    /* Session slot i is carried by quic link i while it is a QUIC one. */
    rb_link_quic *q = &sh->quic_links[sh->conn_free->index];
    RB_ASSERT(q->session == NULL);
    memset(q, 0, sizeof *q);
    q->shard = sh;
    q->qc = qc;
    q->reading = true;
    q->base.ops = &quic_ops;
    q->base.kind = RB_TRANSPORT_QUIC;
    q->base.answers_before_hello = false;
    /* What the peer may send before the session consumes (the stream
     * window, as quic_ep.c sizes it), plus the delivery in hand. */
    uint32_t frame_bytes = sh->server->cfg.max_frame_bytes;
    q->base.hold_bytes_max =
        (frame_bytes < RB_QUIC_STREAM_WINDOW_DEFAULT ? RB_QUIC_STREAM_WINDOW_DEFAULT
                                                     : frame_bytes) +
        RB_SESSION_HOLD_BYTES_MAX;
    peer_text(qc, q->base.peer, sizeof q->base.peer);
    rb_conn *c = rb_session_open(sh, &q->base);
    RB_ASSERT(c != NULL);
    q->session = c;
    q->id = c->id;
    rb_quic_conn_set_user(qc, q);
    RB_LOG_DEBUG(q->id, "quic connection from %s on quic://%s:%u", q->base.peer, l->cfg.address,
                 l->cfg.port);
    return 0;
}

void rb_link_quic_recv(rb_quic_conn *qc, const uint8_t *p, size_t len, bool fin)
{
    rb_link_quic *q = rb_quic_conn_user(qc);
    if (q == NULL || q->session == NULL || q->closed) {
        return;
    }
    if (q->reading && rb_session_reading(q->session)) {
        bool held = q->held;
        rb_session_recv(q->session, p, len);
        if (held) {
            q->unreported += len;
        } else if (q->qc != NULL) {
            /* The session took them: the peer may send as many more. */
            rb_quic_bus_consumed(q->qc, len);
        }
    }
    if (fin && q->session != NULL && !q->closed) {
        rb_session_peer_eof(q->session);
    }
}

void rb_link_quic_acked(rb_quic_conn *qc, uint64_t len)
{
    rb_link_quic *q = rb_quic_conn_user(qc);
    if (q == NULL || q->session == NULL || q->closed) {
        return;
    }
    RB_ASSERT(len <= q->handed);
    q->handed -= len;
    rb_sendq_release(rb_session_sendq(q->session), len);
    /* Freed references may carry more; a drained queue is reported there. */
    rb_session_want_send(q->session);
}

void rb_link_quic_gone(rb_quic_conn *qc, const rb_quic_end *end)
{
    rb_link_quic *q = rb_quic_conn_user(qc);
    if (q == NULL || q->session == NULL) {
        return;
    }
    rb_quic_conn_set_user(qc, NULL);
    q->qc = NULL;
    q->handed = 0;
    if (!end->app_error || end->code != RB_WIRE_OK) {
        RB_LOG_DEBUG(q->id, "quic connection ended: %s (0x%llx)", end->why,
                     (unsigned long long)end->code);
    }
    if (!q->closed) {
        rb_session_link_down(q->session);
    }
}
