/* The client's QUIC transport: the QUIC engine (transports/quic.c) in the
 * client role over a connected UDP socket, ALPN ringbus/1, the server
 * certificate verified against the system store or a given CA file (unless
 * insecure), the URL's host checked and sent as SNI (names only). The
 * session's bytes ride the one bidirectional stream.
 *
 * The pollable fd the connection logic sees is an epoll fd holding the UDP
 * socket and a timerfd armed at the engine's next expiry, so loss recovery
 * and pacing run whenever the caller polls for input and calls read. Bytes
 * written are copied into a ring the engine references until the server
 * acknowledges them; received bytes wait in a buffer as large as the stream
 * window, and flow control reopens as read takes them. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "client/transport.h"
#include "common/assert.h"
#include "common/frame.h"
#include "transports/quic.h"

/* Bytes written and not yet acknowledged; write takes no more. */
#define QUIC_CLIENT_TX_BYTES (4u << 20)
/* The receive window (and buffer) of the bus stream. */
#define QUIC_CLIENT_WINDOW_BYTES (1u << 20)
/* Datagrams read per pass, so one pass stays short. */
#define QUIC_CLIENT_RECV_PER_PASS 64
/* How long close waits for the server to acknowledge what was written. */
#define QUIC_CLIENT_CLOSE_FLUSH_MS 200

typedef struct quic_client {
    rb_quic_engine *e;
    rb_quic_conn *qc;
    int udp;
    int timer;
    rb_quic_path path;
    bool established;
    bool closed;
    bool peer_ok; /* closed by the peer with status OK */
    char close_msg[RB_ERR_MSG_BYTES_MAX];
    uint8_t *rx;
    size_t rx_off;
    size_t rx_len;
    bool rx_fin;
    uint8_t *tx;
    uint64_t tx_written;
    uint64_t tx_acked;
} quic_client;

static int client_send(void *ctx, const rb_quic_path *path, const uint8_t *p, size_t len)
{
    (void)path;
    quic_client *q = ctx;
    for (;;) {
        if (send(q->udp, p, len, MSG_NOSIGNAL) >= 0) {
            return 0;
        }
        if (errno != EINTR) {
            /* A full socket buffer or an ICMP error: the datagram counts
             * as lost and the engine's loss recovery resends. */
            return RB_ELIMIT;
        }
    }
}

static int client_established(void *ctx, rb_quic_conn *qc, rb_quic_alpn alpn)
{
    (void)qc;
    quic_client *q = ctx;
    q->established = alpn == RB_QUIC_ALPN_RINGBUS;
    return q->established ? 0 : -1;
}

static void client_recv(void *ctx, rb_quic_conn *qc, const uint8_t *p, size_t len, bool fin)
{
    (void)qc;
    quic_client *q = ctx;
    /* The server can send at most the window beyond what read consumed. */
    if (q->rx_off > 0 && q->rx_off + q->rx_len + len > QUIC_CLIENT_WINDOW_BYTES) {
        memmove(q->rx, q->rx + q->rx_off, q->rx_len);
        q->rx_off = 0;
    }
    RB_ASSERT(q->rx_off + q->rx_len + len <= QUIC_CLIENT_WINDOW_BYTES);
    memcpy(q->rx + q->rx_off + q->rx_len, p, len);
    q->rx_len += len;
    q->rx_fin = q->rx_fin || fin;
}

static void client_acked(void *ctx, rb_quic_conn *qc, uint64_t len)
{
    (void)qc;
    quic_client *q = ctx;
    q->tx_acked += len;
    RB_ASSERT(q->tx_acked <= q->tx_written);
}

static void client_closed(void *ctx, rb_quic_conn *qc, const rb_quic_end *end)
{
    (void)qc;
    quic_client *q = ctx;
    q->closed = true;
    q->qc = NULL;
    q->peer_ok = end->by_peer && end->app_error && end->code == RB_WIRE_OK;
    if (end->app_error) {
        snprintf(q->close_msg, sizeof q->close_msg, "QUIC: server closed with %s",
                 rb_wire_code_name((uint16_t)end->code));
    } else {
        snprintf(q->close_msg, sizeof q->close_msg, "QUIC: %s (error 0x%llx)", end->why,
                 (unsigned long long)end->code);
    }
}

static void arm_timer(quic_client *q)
{
    uint64_t at = rb_quic_engine_expiry(q->e);
    struct itimerspec its = {0};
    if (at != UINT64_MAX) {
        /* 0 would disarm: an expiry already due fires a nanosecond in. */
        at = at == 0 ? 1 : at;
        its.it_value.tv_sec = (time_t)(at / 1000000000u);
        its.it_value.tv_nsec = (long)(at % 1000000000u);
    }
    (void)timerfd_settime(q->timer, TFD_TIMER_ABSTIME, &its, NULL);
}

/* Reads what the socket holds, runs due timers, writes, re-arms. */
static void pump(quic_client *q)
{
    static uint8_t buf[65536];
    for (int i = 0; i < QUIC_CLIENT_RECV_PER_PASS; i++) {
        ssize_t n = recv(q->udp, buf, sizeof buf, 0);
        if (n < 0) {
            break;
        }
        rb_quic_engine_recv(q->e, &q->path, buf, (size_t)n, (uint64_t)rb_client_now_ns());
    }
    uint64_t expirations;
    (void)read(q->timer, &expirations, sizeof expirations);
    rb_quic_engine_timeout(q->e, (uint64_t)rb_client_now_ns());
    arm_timer(q);
}

static void quic_close(rb_client_transport *tp);

/* A connected UDP socket to the first address of url that takes one. */
static int open_udp(quic_client *q, const rb_url *url, const char *url_text, rb_err *err)
{
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM, .ai_flags = AI_NUMERICSERV};
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)url->port);
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(url->host, port, &hints, &res);
    if (rc != 0) {
        return rb_err_set(err, RB_ESYS, 0, "connect %s: resolve %s: %s", url_text, url->host,
                          gai_strerror(rc));
    }
    rc = rb_err_set(err, RB_ESYS, 0, "connect %s: no address", url_text);
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            rc = rb_err_set(err, RB_ESYS, errno, "connect %s", url_text);
            if (fd >= 0) {
                close(fd);
            }
            continue;
        }
        memcpy(&q->path.remote.ss, ai->ai_addr, ai->ai_addrlen);
        q->path.remote.len = ai->ai_addrlen;
        q->path.local.len = sizeof q->path.local.ss;
        (void)getsockname(fd, (struct sockaddr *)&q->path.local.ss, &q->path.local.len);
        q->udp = fd;
        rc = 0;
        break;
    }
    freeaddrinfo(res);
    return rc;
}

static int open_epoll(rb_client_transport *tp, quic_client *q, const char *url_text, rb_err *err)
{
    q->timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    tp->fd = epoll_create1(EPOLL_CLOEXEC);
    if (q->timer < 0 || tp->fd < 0) {
        return rb_err_set(err, RB_ESYS, errno, "connect %s: timerfd/epoll", url_text);
    }
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.fd = q->udp;
    int rc = epoll_ctl(tp->fd, EPOLL_CTL_ADD, q->udp, &ev);
    ev.data.fd = q->timer;
    if (rc != 0 || epoll_ctl(tp->fd, EPOLL_CTL_ADD, q->timer, &ev) != 0) {
        return rb_err_set(err, RB_ESYS, errno, "connect %s: epoll_ctl", url_text);
    }
    return 0;
}

static int start_engine(rb_client_transport *tp, quic_client *q, const rb_url *url,
                        const char *url_text, rb_err *err)
{
    rb_quic_config cfg;
    rb_quic_config_default(&cfg, RB_QUIC_CLIENT);
    cfg.ca_file = tp->ca_file;
    cfg.insecure = tp->insecure;
    cfg.server_name = url->host;
    cfg.alpn = RB_QUIC_ALPN_RINGBUS;
    cfg.stream_window_bytes = QUIC_CLIENT_WINDOW_BYTES;
    cfg.send_refs_max = RB_QUIC_SEND_REFS_MAX;
    rb_quic_handler h = {
        .send = client_send,
        .established = client_established,
        .bus_recv = client_recv,
        .bus_acked = client_acked,
        .closed = client_closed,
        .ctx = q,
    };
    rb_err e = {0};
    int rc = rb_quic_engine_new(&q->e, &cfg, &h, &e);
    if (rc == 0) {
        rc = rb_quic_client_connect(q->e, &q->path, (uint64_t)rb_client_now_ns(), &q->qc, &e);
    }
    if (rc != 0) {
        return rb_err_set(err, rc == RB_ENOMEM ? RB_ENOMEM : RB_EINVAL, 0, "connect %s: %s",
                          url_text, e.msg);
    }
    arm_timer(q);
    return 0;
}

static int handshake(rb_client_transport *tp, quic_client *q, const char *url_text,
                     int64_t deadline_ns, rb_err *err)
{
    while (!q->established) {
        if (q->closed) {
            bool verify = strstr(q->close_msg, "TLS") != NULL;
            return rb_err_set(err, RB_ESYS, 0, "connect %s: QUIC handshake: %s%s", url_text,
                              q->close_msg,
                              verify ? " (server certificate not trusted? see --ca)" : "");
        }
        int rc = rb_client_wait(tp, POLLIN, deadline_ns, url_text, "QUIC handshake", err);
        if (rc != 0) {
            return rc;
        }
        pump(q);
    }
    return 0;
}

static int quic_connect(rb_client_transport *tp, const rb_url *url, const char *url_text,
                        int64_t deadline_ns, rb_err *err)
{
    RB_ASSERT(tp->fd == -1);
    quic_client *q = calloc(1, sizeof *q);
    if (q == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "connect %s: out of memory", url_text);
    }
    q->udp = -1;
    q->timer = -1;
    tp->layer = q;
    q->rx = malloc(QUIC_CLIENT_WINDOW_BYTES);
    q->tx = malloc(QUIC_CLIENT_TX_BYTES);
    int rc = q->rx == NULL || q->tx == NULL
                 ? rb_err_set(err, RB_ENOMEM, 0, "connect %s: out of memory", url_text)
                 : 0;
    rc = rc ? rc : open_udp(q, url, url_text, err);
    rc = rc ? rc : open_epoll(tp, q, url_text, err);
    rc = rc ? rc : start_engine(tp, q, url, url_text, err);
    rc = rc ? rc : handshake(tp, q, url_text, deadline_ns, err);
    if (rc != 0) {
        quic_close(tp);
    }
    return rc;
}

static ssize_t quic_read(rb_client_transport *tp, void *buf, size_t len, rb_err *err)
{
    quic_client *q = tp->layer;
    if (q->rx_len == 0) {
        pump(q);
    }
    if (q->rx_len > 0) {
        size_t n = len < q->rx_len ? len : q->rx_len;
        memcpy(buf, q->rx + q->rx_off, n);
        q->rx_off += n;
        q->rx_len -= n;
        if (q->rx_len == 0) {
            q->rx_off = 0;
        }
        if (q->qc != NULL) {
            rb_quic_bus_consumed(q->qc, n);
            rb_quic_engine_write(q->e, (uint64_t)rb_client_now_ns());
            arm_timer(q);
        }
        return (ssize_t)n;
    }
    if (q->rx_fin || (q->closed && q->peer_ok)) {
        return 0;
    }
    if (q->closed) {
        return rb_err_set(err, RB_ESYS, 0, "read: %s", q->close_msg);
    }
    return RB_EAGAIN;
}

static ssize_t quic_write(rb_client_transport *tp, const void *buf, size_t len, rb_err *err)
{
    quic_client *q = tp->layer;
    if (q->closed || q->qc == NULL) {
        return rb_err_set(err, RB_ESYS, 0, "write: %s", q->close_msg);
    }
    pump(q);
    uint64_t room = QUIC_CLIENT_TX_BYTES - (q->tx_written - q->tx_acked);
    size_t at = (size_t)(q->tx_written % QUIC_CLIENT_TX_BYTES);
    size_t n = len;
    n = n < room ? n : (size_t)room;
    n = n < QUIC_CLIENT_TX_BYTES - at ? n : QUIC_CLIENT_TX_BYTES - at;
    if (n == 0) {
        return len == 0 ? 0 : RB_EAGAIN;
    }
    memcpy(q->tx + at, buf, n);
    rb_err e = {0};
    if (rb_quic_bus_send(q->qc, q->tx + at, n, &e) != 0) {
        return e.code == RB_ELIMIT ? RB_EAGAIN : rb_err_set(err, RB_ESYS, 0, "write: %s", e.msg);
    }
    q->tx_written += n;
    rb_quic_engine_write(q->e, (uint64_t)rb_client_now_ns());
    arm_timer(q);
    return (ssize_t)n;
}

/* Gives the server a moment to acknowledge what was written, then closes
 * with status OK (the session's own CLOSE frame already said why). */
static void close_gracefully(quic_client *q)
{
    int64_t deadline = rb_client_now_ns() + (int64_t)QUIC_CLIENT_CLOSE_FLUSH_MS * 1000000;
    while (q->qc != NULL && q->tx_acked < q->tx_written && rb_client_now_ns() < deadline) {
        struct pollfd pfd = {.fd = q->udp, .events = POLLIN};
        int left_ms = rb_client_ms_until(deadline);
        uint64_t exp = rb_quic_engine_expiry(q->e);
        int64_t now = rb_client_now_ns();
        if (exp != UINT64_MAX && (int64_t)exp > now &&
            (int64_t)(exp - (uint64_t)now) / 1000000 < left_ms) {
            left_ms = (int)(((int64_t)exp - now) / 1000000) + 1;
        }
        (void)poll(&pfd, 1, left_ms);
        pump(q);
    }
    if (q->qc != NULL) {
        rb_quic_conn_close(q->qc, RB_WIRE_OK, "client closed", (uint64_t)rb_client_now_ns());
        q->qc = NULL;
    }
}

static void quic_close(rb_client_transport *tp)
{
    quic_client *q = tp->layer;
    if (q != NULL) {
        if (q->e != NULL) {
            close_gracefully(q);
            rb_quic_engine_free(q->e);
        }
        if (q->udp >= 0) {
            close(q->udp);
        }
        if (q->timer >= 0) {
            close(q->timer);
        }
        free(q->rx);
        free(q->tx);
        free(q);
        tp->layer = NULL;
    }
    if (tp->fd >= 0) {
        close(tp->fd);
        tp->fd = -1;
    }
}

static bool quic_read_pending(const rb_client_transport *tp)
{
    const quic_client *q = tp->layer;
    return q != NULL && q->rx_len > 0;
}

const rb_client_transport_ops rb_client_quic_ops = {
    .name = "quic",
    .connect = quic_connect,
    .read = quic_read,
    .write = quic_write,
    .close = quic_close,
    .read_pending = quic_read_pending,
};
