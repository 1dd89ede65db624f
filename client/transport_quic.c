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
#define QUIC_CLIENT_RECV_PER_PASS 128
/* How long close waits for the server to acknowledge what was written. */
#define QUIC_CLIENT_CLOSE_FLUSH_MS 200
/* Datagrams per sendmmsg / recvmmsg. */
#define QUIC_CLIENT_BATCH       32
#define QUIC_CLIENT_DGRAM_BYTES 2048

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
    uint64_t timer_at; /* what the timerfd is armed for */
    bool refused;      /* ICMP port unreachable: nobody serves this address */
    /* datagrams written by the engine, sent in one sendmmsg */
    uint32_t out_count;
    struct mmsghdr out_msgs[QUIC_CLIENT_BATCH];
    struct iovec out_iov[QUIC_CLIENT_BATCH];
    uint8_t out_buf[QUIC_CLIENT_BATCH][RB_QUIC_DATAGRAM_BYTES_MAX];
} quic_client;

/* Sends the batch; a full socket buffer loses the rest (QUIC resends). */
static void out_flush(quic_client *q)
{
    uint32_t done = 0;
    while (done < q->out_count) {
        int n = sendmmsg(q->udp, q->out_msgs + done, q->out_count - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            q->refused = q->refused || (n < 0 && errno == ECONNREFUSED);
            break;
        }
        done += (uint32_t)n;
    }
    q->out_count = 0;
}

static int client_send(void *ctx, const rb_quic_path *path, const uint8_t *p, size_t len)
{
    (void)path;
    quic_client *q = ctx;
    if (q->out_count == QUIC_CLIENT_BATCH) {
        out_flush(q);
    }
    RB_ASSERT(len <= RB_QUIC_DATAGRAM_BYTES_MAX);
    uint32_t i = q->out_count++;
    memcpy(q->out_buf[i], p, len);
    q->out_iov[i].iov_base = q->out_buf[i];
    q->out_iov[i].iov_len = len;
    memset(&q->out_msgs[i], 0, sizeof q->out_msgs[i]);
    q->out_msgs[i].msg_hdr.msg_iov = &q->out_iov[i];
    q->out_msgs[i].msg_hdr.msg_iovlen = 1;
    return 0;
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
    out_flush(q);
    uint64_t at = rb_quic_engine_expiry(q->e);
    if (at == q->timer_at) {
        return;
    }
    q->timer_at = at;
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
    static _Thread_local uint8_t buf[QUIC_CLIENT_BATCH][QUIC_CLIENT_DGRAM_BYTES];
    struct mmsghdr msgs[QUIC_CLIENT_BATCH];
    struct iovec iov[QUIC_CLIENT_BATCH];
    for (int pass = 0; pass < QUIC_CLIENT_RECV_PER_PASS / QUIC_CLIENT_BATCH; pass++) {
        for (int i = 0; i < QUIC_CLIENT_BATCH; i++) {
            iov[i].iov_base = buf[i];
            iov[i].iov_len = sizeof buf[i];
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(q->udp, msgs, QUIC_CLIENT_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            q->refused = q->refused || (n < 0 && errno == ECONNREFUSED);
            break;
        }
        uint64_t now = (uint64_t)rb_client_now_ns();
        for (int i = 0; i < n; i++) {
            rb_quic_engine_recv(q->e, &q->path, buf[i], msgs[i].msg_len, now);
        }
        if (n < QUIC_CLIENT_BATCH) {
            break;
        }
    }
    uint64_t expirations;
    if (read(q->timer, &expirations, sizeof expirations) == (ssize_t)sizeof expirations) {
        q->timer_at = 0; /* fired: arm it again below */
    }
    rb_quic_engine_timeout(q->e, (uint64_t)rb_client_now_ns());
    arm_timer(q);
}

static void quic_close(rb_client_transport *tp);

/* A UDP socket connected to ai (a connected socket reports ICMP errors). */
static int open_udp(quic_client *q, const struct addrinfo *ai, const char *url_text, rb_err *err)
{
    int fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        int e = errno;
        if (fd >= 0) {
            close(fd);
        }
        return rb_err_set(err, RB_ESYS, e, "connect %s", url_text);
    }
    memcpy(&q->path.remote.ss, ai->ai_addr, ai->ai_addrlen);
    q->path.remote.len = ai->ai_addrlen;
    q->path.local.len = sizeof q->path.local.ss;
    (void)getsockname(fd, (struct sockaddr *)&q->path.local.ss, &q->path.local.len);
    q->udp = fd;
    return 0;
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
        if (q->refused) {
            return rb_err_set(err, RB_ESYS, ECONNREFUSED, "connect %s: QUIC handshake", url_text);
        }
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

/* One attempt on one address; tp->layer holds what it set up. */
static int connect_one(rb_client_transport *tp, const struct addrinfo *ai, const rb_url *url,
                       const char *url_text, int64_t deadline_ns, rb_err *err)
{
    quic_client *q = calloc(1, sizeof *q);
    if (q == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "connect %s: out of memory", url_text);
    }
    q->udp = -1;
    q->timer = -1;
    q->timer_at = UINT64_MAX;
    tp->layer = q;
    q->rx = malloc(QUIC_CLIENT_WINDOW_BYTES);
    q->tx = malloc(QUIC_CLIENT_TX_BYTES);
    int rc = q->rx == NULL || q->tx == NULL
                 ? rb_err_set(err, RB_ENOMEM, 0, "connect %s: out of memory", url_text)
                 : 0;
    rc = rc ? rc : open_udp(q, ai, url_text, err);
    rc = rc ? rc : open_epoll(tp, q, url_text, err);
    rc = rc ? rc : start_engine(tp, q, url, url_text, err);
    rc = rc ? rc : handshake(tp, q, url_text, deadline_ns, err);
    return rc;
}

/* Tries each address of url in turn: an address nobody serves (ICMP port
 * unreachable, as for ::1 when the server listens on 127.0.0.1 only) moves
 * on to the next; a timeout or a TLS failure ends the attempt. */
static int quic_connect(rb_client_transport *tp, const rb_url *url, const char *url_text,
                        int64_t deadline_ns, rb_err *err)
{
    RB_ASSERT(tp->fd == -1);
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
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        rc = connect_one(tp, ai, url, url_text, deadline_ns, err);
        if (rc == 0) {
            break;
        }
        quic_close(tp);
        if (err == NULL || err->cause != ECONNREFUSED) {
            break;
        }
    }
    freeaddrinfo(res);
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
        out_flush(q);
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
