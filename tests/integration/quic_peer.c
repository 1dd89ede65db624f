/* A QUIC test peer on the engine (transports/quic.c) and HTTP/3
 * (transports/h3.c) over a real UDP socket on 127.0.0.1: ringbus/1
 * connections get their bus stream bytes echoed back (bytes held until the
 * peer acknowledges them, consumption reported only when they fit), h3
 * connections get GET /healthz ("ok"), POST /echo (the body back) and 404.
 * Third-party clients (gtlsclient) and libringbus's quic transport test
 * against it. Prints "port N" when ready; runs until SIGTERM. Not a
 * ringbus server: the daemon's QUIC listener serves sessions. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "transports/h3.h"
#include "transports/quic.h"

#define ECHO_RING_BYTES (8u << 20)
#define BATCH_MAX       64

typedef struct peer_conn {
    struct peer_conn *prev, *next; /* the peer's open connections */
    rb_quic_conn *qc;
    rb_h3 *h3;
    uint8_t *ring;
    uint64_t written; /* bytes copied into the ring */
    uint64_t acked;   /* bytes of the ring the peer acknowledged */
    size_t deferred;  /* received bytes not yet reported as consumed */
    bool fin;
} peer_conn;

typedef struct peer {
    int fd;
    rb_quic_path local;
    rb_quic_engine *e;
    uint32_t window;
    uint64_t sent;
    peer_conn *conns; /* every connection with state, freed at exit */
} peer;

static volatile sig_atomic_t stopping;

static void on_term(int sig)
{
    (void)sig;
    stopping = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int peer_send(void *ctx, const rb_quic_path *path, const uint8_t *p, size_t len)
{
    peer *pr = ctx;
    if (sendto(pr->fd, p, len, 0, (const struct sockaddr *)&path->remote.ss, path->remote.len) <
        0) {
        return errno == EAGAIN ? -3 : -1;
    }
    pr->sent++;
    return 0;
}

static int route(void *ctx, rb_h3 *h3, int64_t sid, const rb_h3_request *req, rb_h3_response *resp)
{
    (void)ctx;
    (void)h3;
    (void)sid;
    resp->content_type = "text/plain";
    if (strcmp(req->path, "/healthz") == 0 && strcmp(req->method, "GET") == 0) {
        resp->status = 200;
        resp->body = (const uint8_t *)"ok\n";
        resp->body_len = 3;
    } else if (strcmp(req->path, "/echo") == 0 && strcmp(req->method, "POST") == 0) {
        resp->status = 200;
        resp->body = req->body;
        resp->body_len = req->body_len;
    } else {
        resp->status = 404;
        resp->body = (const uint8_t *)"not found\n";
        resp->body_len = 10;
    }
    return RB_H3_ANSWERED;
}

static void conn_forget(peer *pr, peer_conn *pc)
{
    if (pc->prev != NULL) {
        pc->prev->next = pc->next;
    } else {
        pr->conns = pc->next;
    }
    if (pc->next != NULL) {
        pc->next->prev = pc->prev;
    }
    rb_h3_free(pc->h3);
    free(pc->ring);
    free(pc);
}

static int on_established(void *ctx, rb_quic_conn *qc, rb_quic_alpn alpn)
{
    peer *pr = ctx;
    peer_conn *pc = calloc(1, sizeof *pc);
    if (pc == NULL) {
        return -1;
    }
    pc->qc = qc;
    pc->next = pr->conns;
    if (pr->conns != NULL) {
        pr->conns->prev = pc;
    }
    pr->conns = pc;
    rb_quic_conn_set_user(qc, pc);
    if (alpn == RB_QUIC_ALPN_H3) {
        rb_h3_config hc = {.max_body_bytes = pr->window, .route = route};
        rb_err err = {0};
        if (rb_h3_new(&pc->h3, qc, &hc, &err) != 0) {
            fprintf(stderr, "quic_peer: %s\n", err.msg);
            rb_quic_conn_set_user(qc, NULL);
            conn_forget(pr, pc);
            return -1;
        }
        return 0;
    }
    pc->ring = malloc(ECHO_RING_BYTES);
    if (pc->ring == NULL) {
        rb_quic_conn_set_user(qc, NULL);
        conn_forget(pr, pc);
        return -1;
    }
    return 0;
}

/* Echoes p into the ring (two sends when it wraps). */
static void echo(peer_conn *pc, const uint8_t *p, size_t len)
{
    while (len > 0) {
        size_t at = (size_t)(pc->written % ECHO_RING_BYTES);
        size_t n = ECHO_RING_BYTES - at < len ? ECHO_RING_BYTES - at : len;
        memcpy(pc->ring + at, p, n);
        rb_err err = {0};
        if (rb_quic_bus_send(pc->qc, pc->ring + at, n, &err) != 0) {
            fprintf(stderr, "quic_peer: echo: %s\n", err.msg);
            rb_quic_conn_close(pc->qc, 6, "echo backlog", now_ns());
            return;
        }
        pc->written += n;
        p += n;
        len -= n;
    }
}

/* Consumption is reported while the unacknowledged echo fits half the
 * ring, so the peer can never send more than the ring holds. */
static void release(peer *pr, peer_conn *pc)
{
    if (pc->deferred > 0 && pc->written - pc->acked + pr->window <= ECHO_RING_BYTES / 2) {
        rb_quic_bus_consumed(pc->qc, pc->deferred);
        pc->deferred = 0;
    }
}

static void on_recv(void *ctx, rb_quic_conn *qc, const uint8_t *p, size_t len, bool fin)
{
    peer_conn *pc = rb_quic_conn_user(qc);
    if (pc == NULL || pc->ring == NULL) {
        return;
    }
    echo(pc, p, len);
    pc->deferred += len;
    release(ctx, pc);
    if (fin && !pc->fin) {
        pc->fin = true;
        rb_quic_bus_finish(qc);
    }
}

static void on_acked(void *ctx, rb_quic_conn *qc, uint64_t len)
{
    peer_conn *pc = rb_quic_conn_user(qc);
    if (pc != NULL) {
        pc->acked += len;
        release(ctx, pc);
    }
}

static void on_closed(void *ctx, rb_quic_conn *qc, const rb_quic_end *end)
{
    (void)end;
    peer_conn *pc = rb_quic_conn_user(qc);
    if (pc != NULL) {
        rb_quic_conn_set_user(qc, NULL);
        conn_forget(ctx, pc);
    }
}

static int open_socket(peer *pr)
{
    pr->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (pr->fd < 0 || bind(pr->fd, (struct sockaddr *)&sin, sizeof sin) != 0) {
        perror("quic_peer: bind");
        return -1;
    }
    int buf = 4 << 20;
    (void)setsockopt(pr->fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    (void)setsockopt(pr->fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    pr->local.local.len = sizeof(struct sockaddr_in);
    if (getsockname(pr->fd, (struct sockaddr *)&pr->local.local.ss, &pr->local.local.len) != 0) {
        perror("quic_peer: getsockname");
        return -1;
    }
    return 0;
}

static void drain(peer *pr)
{
    static uint8_t buf[65536];
    for (int i = 0; i < BATCH_MAX; i++) {
        rb_quic_path path = pr->local;
        path.remote.len = sizeof path.remote.ss;
        ssize_t n = recvfrom(pr->fd, buf, sizeof buf, 0, (struct sockaddr *)&path.remote.ss,
                             &path.remote.len);
        if (n < 0) {
            return;
        }
        rb_quic_engine_recv(pr->e, &path, buf, (size_t)n, now_ns());
    }
}

static int run(peer *pr)
{
    printf("port %u\n", ntohs(((struct sockaddr_in *)&pr->local.local.ss)->sin_port));
    fflush(stdout);
    while (!stopping) {
        uint64_t exp = rb_quic_engine_expiry(pr->e);
        uint64_t now = now_ns();
        int timeout_ms = 1000;
        if (exp != UINT64_MAX) {
            timeout_ms = exp <= now ? 0 : (int)((exp - now + 999999) / 1000000);
            timeout_ms = timeout_ms > 1000 ? 1000 : timeout_ms;
        }
        struct pollfd pfd = {.fd = pr->fd, .events = POLLIN};
        (void)poll(&pfd, 1, timeout_ms);
        drain(pr);
        rb_quic_engine_timeout(pr->e, now_ns());
    }
    return 0;
}

int main(int argc, char **argv)
{
    rb_quic_config cfg;
    rb_quic_config_default(&cfg, RB_QUIC_SERVER);
    /* One echo reference per received packet's worth of bytes. */
    cfg.send_refs_max = RB_QUIC_SEND_REFS_MAX;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--cert") == 0 && i + 1 < argc) {
            cfg.cert_file = argv[++i];
        } else if (strcmp(argv[i], "--key") == 0 && i + 1 < argc) {
            cfg.key_file = argv[++i];
        } else if (strcmp(argv[i], "--retry") == 0) {
            cfg.retry = true;
        } else if (strcmp(argv[i], "--window") == 0 && i + 1 < argc) {
            cfg.stream_window_bytes = (uint32_t)strtoul(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "usage: quic_peer --cert F --key F [--retry] [--window BYTES]\n");
            return 2;
        }
    }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    peer pr = {.window = cfg.stream_window_bytes};
    rb_err err = {0};
    if (open_socket(&pr) != 0 || rb_quic_secret_generate(cfg.secret, &err) != 0) {
        return 1;
    }
    rb_quic_handler h = {
        .send = peer_send,
        .established = on_established,
        .bus_recv = on_recv,
        .bus_acked = on_acked,
        .closed = on_closed,
        .ctx = &pr,
    };
    if (rb_quic_engine_new(&pr.e, &cfg, &h, &err) != 0) {
        fprintf(stderr, "quic_peer: %s\n", err.msg);
        return 1;
    }
    int rc = run(&pr);
    /* The engine tells no one about connections still open at exit. */
    while (pr.conns != NULL) {
        conn_forget(&pr, pr.conns);
    }
    rb_quic_engine_free(pr.e);
    close(pr.fd);
    return rc;
}
