/* The client transport table and the plain TCP transport: name lookup with
 * a deadline (getaddrinfo_a), nonblocking connect tried on each address in
 * turn, TCP_NODELAY, and nonblocking reads and writes. TLS and WebSocket
 * live in transport_tls.c and transport_ws.c, QUIC in transport_quic.c,
 * behind the same ops table. */
#include "client/transport.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "client/ringbus.h"
#include "common/assert.h"

int64_t rb_client_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int rb_client_ms_until(int64_t deadline_ns)
{
    int64_t left_ns = deadline_ns - rb_client_now_ns();
    if (left_ns <= 0) {
        return 0;
    }
    int64_t ms = (left_ns + 999999) / 1000000;
    return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}

/* A lookup is shared by the caller and glibc's notification thread: the
 * last one to let go frees it, so a lookup that outlives its deadline is
 * neither waited for nor leaked. */
typedef struct lookup {
    atomic_int refs;
    struct gaicb cb;
    struct addrinfo hints;
    char port[8];
    char host[RB_ADDRESS_BYTES_MAX];
} lookup;

static void lookup_unref(lookup *lk)
{
    if (atomic_fetch_sub(&lk->refs, 1) == 1) {
        if (lk->cb.ar_result != NULL) {
            freeaddrinfo(lk->cb.ar_result);
        }
        free(lk);
    }
}

static void lookup_done(union sigval sv)
{
    lookup_unref(sv.sival_ptr);
}

/* Starts the lookup of url's host; returns it with one reference for the
 * caller, or NULL with *err set. */
static lookup *lookup_start(const rb_url *url, const char *url_text, rb_err *err)
{
    lookup *lk = calloc(1, sizeof *lk);
    if (lk == NULL) {
        rb_err_set(err, RB_ENOMEM, 0, "connect %s: out of memory", url_text);
        return NULL;
    }
    atomic_init(&lk->refs, 2);
    snprintf(lk->port, sizeof lk->port, "%u", (unsigned)url->port);
    snprintf(lk->host, sizeof lk->host, "%s", url->host);
    lk->hints.ai_socktype = SOCK_STREAM;
    lk->hints.ai_protocol = IPPROTO_TCP;
    lk->hints.ai_flags = AI_NUMERICSERV;
    lk->cb.ar_name = lk->host;
    lk->cb.ar_service = lk->port;
    lk->cb.ar_request = &lk->hints;
    struct sigevent sev = {0};
    sev.sigev_notify = SIGEV_THREAD;
    sev.sigev_notify_function = lookup_done;
    sev.sigev_value.sival_ptr = lk;
    struct gaicb *list[1] = {&lk->cb};
    int rc = getaddrinfo_a(GAI_NOWAIT, list, 1, &sev);
    if (rc != 0) {
        free(lk);
        rb_err_set(err, RB_ESYS, 0, "connect %s: resolve %s: %s", url_text, url->host,
                   gai_strerror(rc));
        return NULL;
    }
    return lk;
}

/* Waits for the lookup until deadline_ns. Returns 0 when it succeeded. */
static int lookup_wait(lookup *lk, const char *url_text, int64_t deadline_ns, rb_err *err)
{
    const struct gaicb *list[1] = {&lk->cb};
    for (;;) {
        int rc = gai_error(&lk->cb);
        if (rc == 0) {
            return 0;
        }
        if (rc != EAI_INPROGRESS) {
            return rb_err_set(err, RB_ESYS, 0, "connect %s: resolve %s: %s", url_text, lk->host,
                              gai_strerror(rc));
        }
        int left_ms = rb_client_ms_until(deadline_ns);
        if (left_ms == 0) {
            return rb_err_set(err, RB_ETIMEDOUT, 0, "connect %s: resolve %s: timed out", url_text,
                              lk->host);
        }
        struct timespec ts = {left_ms / 1000, (long)(left_ms % 1000) * 1000000};
        (void)gai_suspend(list, 1, &ts);
    }
}

/* Connects one socket to ai before deadline_ns; returns the fd or a
 * negative RB_E code with *err naming the URL. */
static int connect_one(const struct addrinfo *ai, const char *url_text, int64_t deadline_ns,
                       rb_err *err)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd == -1) {
        return rb_err_set(err, RB_ESYS, errno, "connect %s: socket", url_text);
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == -1 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return rb_err_set(err, RB_ESYS, e, "connect %s", url_text);
    }
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int n;
    do {
        n = poll(&pfd, 1, rb_client_ms_until(deadline_ns));
    } while (n == -1 && errno == EINTR);
    if (n <= 0) {
        int e = n == 0 ? 0 : errno;
        close(fd);
        if (n == 0) {
            return rb_err_set(err, RB_ETIMEDOUT, 0, "connect %s: timed out", url_text);
        }
        return rb_err_set(err, RB_ESYS, e, "connect %s: poll", url_text);
    }
    int so_error = 0;
    socklen_t so_len = sizeof so_error;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &so_len) == -1 || so_error != 0) {
        int e = so_error != 0 ? so_error : errno;
        close(fd);
        return rb_err_set(err, RB_ESYS, e, "connect %s", url_text);
    }
    return fd;
}

/* Tries each address in turn; returns 0 with tp->fd set, or the last
 * error. */
static int connect_list(rb_client_transport *tp, const struct addrinfo *list, const char *url_text,
                        int64_t deadline_ns, rb_err *err)
{
    int rc = rb_err_set(err, RB_ESYS, 0, "connect %s: no address", url_text);
    for (const struct addrinfo *ai = list; ai != NULL; ai = ai->ai_next) {
        int fd = connect_one(ai, url_text, deadline_ns, err);
        if (fd >= 0) {
            tp->fd = fd;
            return 0;
        }
        rc = fd;
        if (rc == RB_ETIMEDOUT) {
            break;
        }
    }
    return rc;
}

/* A numeric address needs no resolver, hence no resolver thread: the
 * address list, or NULL when host is a name. */
static struct addrinfo *numeric_address(const rb_url *url)
{
    struct addrinfo hints = {0};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)url->port);
    struct addrinfo *res = NULL;
    return getaddrinfo(url->host, port, &hints, &res) == 0 ? res : NULL;
}

static int tcp_connect(rb_client_transport *tp, const rb_url *url, const char *url_text,
                       int64_t deadline_ns, rb_err *err)
{
    RB_ASSERT(tp->fd == -1);
    int rc;
    struct addrinfo *numeric = numeric_address(url);
    if (numeric != NULL) {
        rc = connect_list(tp, numeric, url_text, deadline_ns, err);
        freeaddrinfo(numeric);
    } else {
        lookup *lk = lookup_start(url, url_text, err);
        if (lk == NULL) {
            return err != NULL ? err->code : RB_ESYS;
        }
        rc = lookup_wait(lk, url_text, deadline_ns, err);
        if (rc == 0) {
            rc = connect_list(tp, lk->cb.ar_result, url_text, deadline_ns, err);
        }
        lookup_unref(lk);
    }
    if (rc != 0) {
        return rc;
    }
    /* Frames are batched by the connection, so Nagle only adds latency. */
    int one = 1;
    (void)setsockopt(tp->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

static ssize_t tcp_read(rb_client_transport *tp, void *buf, size_t len, rb_err *err)
{
    for (;;) {
        ssize_t n = recv(tp->fd, buf, len, 0);
        if (n >= 0) {
            return n;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return RB_EAGAIN;
        }
        return rb_err_set(err, RB_ESYS, errno, "read");
    }
}

static ssize_t tcp_write(rb_client_transport *tp, const void *buf, size_t len, rb_err *err)
{
    for (;;) {
        /* MSG_NOSIGNAL: a reset peer is an error to report, not a SIGPIPE. */
        ssize_t n = send(tp->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0) {
            return n;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return RB_EAGAIN;
        }
        return rb_err_set(err, RB_ESYS, errno, "write");
    }
}

static void tcp_close(rb_client_transport *tp)
{
    if (tp->fd >= 0) {
        close(tp->fd);
        tp->fd = -1;
    }
}

const rb_client_transport_ops rb_client_tcp_ops = {
    .name = "tcp",
    .connect = tcp_connect,
    .read = tcp_read,
    .write = tcp_write,
    .close = tcp_close,
};

/* ---- tls: one of two libraries, chosen per connection ---- */

static int tls_any_connect(rb_client_transport *tp, const rb_url *url, const char *url_text,
                           int64_t deadline_ns, rb_err *err)
{
    tp->tls_impl =
        tp->tls_library == RINGBUS_TLS_WOLFSSL ? &rb_client_tls_wolf_ops : &rb_client_tls_ossl_ops;
    return tp->tls_impl->connect(tp, url, url_text, deadline_ns, err);
}

static ssize_t tls_any_read(rb_client_transport *tp, void *buf, size_t len, rb_err *err)
{
    return tp->tls_impl->read(tp, buf, len, err);
}

static ssize_t tls_any_write(rb_client_transport *tp, const void *buf, size_t len, rb_err *err)
{
    return tp->tls_impl->write(tp, buf, len, err);
}

static void tls_any_close(rb_client_transport *tp)
{
    if (tp->tls_impl != NULL) {
        tp->tls_impl->close(tp);
        tp->tls_impl = NULL;
        return;
    }
    rb_client_tcp_ops.close(tp);
}

static bool tls_any_read_pending(const rb_client_transport *tp)
{
    return tp->tls_impl != NULL && tp->tls_impl->read_pending(tp);
}

const rb_client_transport_ops rb_client_tls_ops = {
    .name = "tls",
    .connect = tls_any_connect,
    .read = tls_any_read,
    .write = tls_any_write,
    .close = tls_any_close,
    .read_pending = tls_any_read_pending,
};

const rb_client_transport_ops *rb_client_transport_for(rb_url_scheme scheme)
{
    switch (scheme) {
    case RB_URL_TCP:
        return &rb_client_tcp_ops;
    case RB_URL_TLS:
        return &rb_client_tls_ops;
    case RB_URL_WS:
        return &rb_client_ws_ops;
    case RB_URL_WSS:
        return &rb_client_wss_ops;
    case RB_URL_QUIC:
        return &rb_client_quic_ops;
    }
    return NULL;
}

typedef enum answer_kind {
    ANSWER_UNKNOWN = 0,
    ANSWER_HTTP,
    ANSWER_TLS,
    ANSWER_FRAMES,
} answer_kind;

static answer_kind answer_classify(const uint8_t *p, size_t len)
{
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        return ANSWER_HTTP;
    }
    /* A TLS record: alert (21) or handshake (22), version 3.x. */
    if (len >= 3 && (p[0] == 21 || p[0] == 22) && p[1] == 3 && p[2] <= 4) {
        return ANSWER_TLS;
    }
    rb_frame_header hdr;
    rb_err e;
    if (len >= RB_FRAME_HEADER_BYTES &&
        rb_frame_header_decode(p, len, RB_FRAME_BYTES_MAX, &hdr, &e) == 0 &&
        (hdr.kind == RB_FRAME_ERROR || hdr.kind == RB_FRAME_CLOSE)) {
        return ANSWER_FRAMES;
    }
    return ANSWER_UNKNOWN;
}

const char *rb_client_answer_hint(rb_url_scheme layer, const uint8_t *p, size_t len)
{
    answer_kind k = answer_classify(p, len);
    switch (layer) {
    case RB_URL_TCP:
        return k == ANSWER_HTTP  ? "the server answered HTTP: is this a ws:// URL?"
               : k == ANSWER_TLS ? "the server answered TLS: is this a tls:// URL?"
                                 : NULL;
    case RB_URL_TLS:
        return k == ANSWER_HTTP ? "the server answered plain HTTP, not TLS: is this a ws:// URL?"
               : k == ANSWER_FRAMES
                   ? "the server answered plain ringbus frames, not TLS: is this a tcp:// URL?"
                   : NULL;
    case RB_URL_WS:
        return k == ANSWER_TLS ? "the server answered TLS: is this a wss:// URL?"
               : k == ANSWER_FRAMES
                   ? "the server answered ringbus frames, not HTTP: is this a tcp:// URL?"
                   : NULL;
    case RB_URL_WSS:
        return k == ANSWER_FRAMES
                   ? "the server answered ringbus frames, not HTTP: is this a tls:// URL?"
                   : NULL;
    default:
        return NULL;
    }
}

const char *rb_client_tcp_answer_hint(const rb_client_transport *tp, const uint8_t *p, size_t len)
{
    return tp->ops == &rb_client_tcp_ops ? rb_client_answer_hint(RB_URL_TCP, p, len) : NULL;
}

int rb_client_wait(const rb_client_transport *tp, short events, int64_t deadline_ns,
                   const char *url_text, const char *what, rb_err *err)
{
    struct pollfd pfd = {.fd = tp->fd, .events = events};
    for (;;) {
        int left_ms = rb_client_ms_until(deadline_ns);
        int n = left_ms > 0 ? poll(&pfd, 1, left_ms) : 0;
        if (n > 0) {
            return 0;
        }
        if (n == 0) {
            return rb_err_set(err, RB_ETIMEDOUT, 0, "connect %s: %s: timed out", url_text, what);
        }
        if (errno != EINTR) {
            return rb_err_set(err, RB_ESYS, errno, "connect %s: poll", url_text);
        }
    }
}
