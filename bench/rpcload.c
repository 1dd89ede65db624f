/* rpcload: request/reply round trips through a server, ringbus against
 * NATS, from one process with one responder connection and one caller
 * connection on the loopback:
 *
 *   tcp://host:port    ringbus RPC (docs/PROTOCOL.md section 12) over
 *                      libringbus: the responder registers "echo" and
 *                      answers every REQUEST with its payload (a response
 *                      before the ack is accepted, so it sends no ack, as
 *                      a NATS responder sends none);
 *   nats://host:port   NATS request/reply: the responder subscribes to
 *                      "echo" and publishes each payload to the reply
 *                      subject; the caller subscribes to its inbox.
 *
 * At most --concurrency calls are in flight; each call's round trip (send
 * to its response) is recorded. Prints one JSON line: calls, seconds,
 * calls per second, p50, p90 and p99 latency in microseconds.
 *
 * Usage: rpcload --url URL [--calls N] [--concurrency W] [--size BYTES] */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "client/ringbus.h"

/* Calls in flight, at most (the slot ring of send times). */
#define INFLIGHT_MAX 4096
/* The largest payload measured. */
#define SIZE_MAX_BYTES ((size_t)1 << 20)
/* A NATS read buffer: one message and its MSG line, at most. */
#define NATS_RX_BYTES (SIZE_MAX_BYTES + 4096)
/* A run gives up after this long without progress. */
#define STALL_NS (30LL * 1000000000LL)

typedef struct run {
    uint64_t calls, sent, done;
    uint32_t window;
    size_t size;
    uint8_t *payload;
    int64_t sent_ns[INFLIGHT_MAX]; /* by call index % INFLIGHT_MAX */
    int64_t *lat_ns;               /* [calls] */
    int64_t last_progress_ns;
} run;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "rpcload: %s: %s\n", what, why);
    exit(1);
}

static void finish_call(run *r, uint64_t index)
{
    if (index >= r->sent) {
        die("response", "for a call never sent");
    }
    int64_t t = now_ns();
    r->lat_ns[r->done] = t - r->sent_ns[index % INFLIGHT_MAX];
    r->done++;
    r->last_progress_ns = t;
}

/* ---- ringbus ---- */

static void rb_pump(ringbus_conn *resp, ringbus_conn *caller, run *r)
{
    ringbus_event ev;
    ringbus_error err;
    while (ringbus_next_event(resp, &ev, 0, &err) == 1) {
        if (ev.kind == RINGBUS_EVENT_REQUEST) {
            while (ringbus_respond(resp, ev.corr_id, 0, NULL, ev.payload, ev.payload_len, &err) ==
                   RINGBUS_EAGAIN) {
                ringbus_flush(resp, &err);
            }
        } else if (ev.kind == RINGBUS_EVENT_CLOSED) {
            die("responder", ev.message);
        }
    }
    while (ringbus_next_event(caller, &ev, 0, &err) == 1) {
        if (ev.kind == RINGBUS_EVENT_RESPONSE) {
            if (ev.code != 0) {
                die("call", ringbus_wire_code_name(ev.code));
            }
            finish_call(r, (ev.corr_id & ~RINGBUS_CORR_CALL) - 1);
        } else if (ev.kind == RINGBUS_EVENT_CLOSED) {
            die("caller", ev.message);
        }
    }
}

static void run_ringbus(const char *url, run *r)
{
    ringbus_conn *resp = NULL, *caller = NULL;
    ringbus_error err;
    ringbus_options o;
    ringbus_options_init(&o);
    if (ringbus_connect(url, &o, &resp, &err) != 0 || ringbus_connect(url, &o, &caller, &err)) {
        die("connect", err.message);
    }
    if (ringbus_register(resp, "echo", NULL, &err) != 0) {
        die("register", err.message);
    }
    const char *dest = ringbus_client_id(resp);
    r->last_progress_ns = now_ns();
    while (r->done < r->calls) {
        while (r->sent < r->calls && r->sent - r->done < r->window) {
            uint64_t id;
            int rc = ringbus_call(caller, dest, "echo", r->payload, r->size, 30000, &id, &err);
            if (rc == RINGBUS_EAGAIN) {
                break;
            }
            if (rc != 0) {
                die("call", err.message);
            }
            r->sent_ns[r->sent % INFLIGHT_MAX] = now_ns();
            r->sent++;
        }
        ringbus_flush(caller, &err);
        struct pollfd p[2] = {{.fd = ringbus_fd(resp), .events = POLLIN},
                              {.fd = ringbus_fd(caller), .events = POLLIN}};
        p[0].events |= ringbus_want_write(resp) ? POLLOUT : 0;
        p[1].events |= ringbus_want_write(caller) ? POLLOUT : 0;
        poll(p, 2, 100);
        ringbus_process(resp, 0, &err);
        ringbus_process(caller, 0, &err);
        rb_pump(resp, caller, r);
        ringbus_flush(resp, &err);
        if (now_ns() - r->last_progress_ns > STALL_NS) {
            die("ringbus", "no response for 30 s");
        }
    }
    ringbus_close(resp);
    ringbus_close(caller);
}

/* ---- NATS ---- */

typedef struct nats {
    int fd;
    uint8_t *rx;
    size_t rx_len;
    uint8_t *tx;
    size_t tx_len, tx_cap;
} nats;

static int tcp_connect(const char *hostport)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (colon == NULL || (size_t)(colon - hostport) >= sizeof host) {
        die("url", "nats://HOST:PORT");
    }
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0) {
        die("resolve", host);
    }
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        die("connect", strerror(errno));
    }
    freeaddrinfo(ai);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void nats_put(nats *n, const void *p, size_t len)
{
    if (n->tx_len + len > n->tx_cap) {
        n->tx_cap = (n->tx_len + len) * 2;
        n->tx = realloc(n->tx, n->tx_cap);
        if (n->tx == NULL) {
            die("nats", "out of memory");
        }
    }
    memcpy(n->tx + n->tx_len, p, len);
    n->tx_len += len;
}

static void nats_pub(nats *n, const char *subject, const char *reply, const void *p, size_t len)
{
    char line[160];
    int k = snprintf(line, sizeof line, "PUB %s %s %zu\r\n", subject, reply, len);
    nats_put(n, line, (size_t)k);
    nats_put(n, p, len);
    nats_put(n, "\r\n", 2);
}

static void nats_flush(nats *n)
{
    size_t off = 0;
    while (off < n->tx_len) {
        ssize_t w = write(n->fd, n->tx + off, n->tx_len - off);
        if (w < 0 && errno != EINTR && errno != EAGAIN) {
            die("nats write", strerror(errno));
        }
        off += w > 0 ? (size_t)w : 0;
    }
    n->tx_len = 0;
}

static void nats_open(nats *n, const char *hostport, const char *sub)
{
    memset(n, 0, sizeof *n);
    n->fd = tcp_connect(hostport);
    n->rx = malloc(NATS_RX_BYTES);
    if (n->rx == NULL) {
        die("nats", "out of memory");
    }
    const char *hello = "CONNECT {\"verbose\":false,\"pedantic\":false}\r\n";
    nats_put(n, hello, strlen(hello));
    nats_put(n, sub, strlen(sub));
    nats_put(n, "PING\r\n", 6);
    nats_flush(n);
}

/* Handles the whole protocol lines and messages buffered; on_msg gets
 * each MSG's reply subject (or "") and payload. */
static void nats_parse(nats *n,
                       void (*on_msg)(nats *, const char *, const uint8_t *, size_t, void *),
                       void *ctx)
{
    size_t pos = 0;
    for (;;) {
        uint8_t *end = memchr(n->rx + pos, '\n', n->rx_len - pos);
        if (end == NULL) {
            break;
        }
        size_t line_len = (size_t)(end - (n->rx + pos)) + 1;
        char line[512];
        size_t copy = line_len < sizeof line ? line_len : sizeof line - 1;
        memcpy(line, n->rx + pos, copy);
        line[copy] = '\0';
        if (strncmp(line, "MSG ", 4) == 0) {
            char subject[256], sid[32], a[256], b[32];
            int k = sscanf(line + 4, "%255s %31s %255s %31s", subject, sid, a, b);
            const char *reply = k == 4 ? a : "";
            size_t size = strtoull(k == 4 ? b : a, NULL, 10);
            if (n->rx_len - pos < line_len + size + 2) {
                break; /* the payload is not all here yet */
            }
            on_msg(n, reply, n->rx + pos + line_len, size, ctx);
            pos += line_len + size + 2;
            continue;
        }
        if (strncmp(line, "PING", 4) == 0) {
            nats_put(n, "PONG\r\n", 6);
        } else if (strncmp(line, "-ERR", 4) == 0) {
            die("nats", line);
        }
        pos += line_len;
    }
    memmove(n->rx, n->rx + pos, n->rx_len - pos);
    n->rx_len -= pos;
}

static void nats_read(nats *n)
{
    if (n->rx_len == NATS_RX_BYTES) {
        die("nats", "message larger than the read buffer");
    }
    ssize_t got = read(n->fd, n->rx + n->rx_len, NATS_RX_BYTES - n->rx_len);
    if (got <= 0) {
        die("nats read", got == 0 ? "closed" : strerror(errno));
    }
    n->rx_len += (size_t)got;
}

static void echo_msg(nats *n, const char *reply, const uint8_t *p, size_t len, void *ctx)
{
    (void)ctx;
    nats_pub(n, reply, "", p, len);
}

static void reply_msg(nats *n, const char *reply, const uint8_t *p, size_t len, void *ctx)
{
    (void)n;
    (void)reply;
    (void)p;
    (void)len;
    run *r = ctx;
    /* Replies come back in order of their requests (one responder, one
     * connection each way), so the oldest call in flight is answered. */
    finish_call(r, r->done);
}

static void run_nats(const char *hostport, run *r)
{
    nats resp, caller;
    nats_open(&resp, hostport, "SUB echo 1\r\n");
    nats_open(&caller, hostport, "SUB _INBOX.rpcload.* 2\r\n");
    /* Both subscriptions are in place once the PONGs arrived. */
    usleep(200000);
    r->last_progress_ns = now_ns();
    while (r->done < r->calls) {
        while (r->sent < r->calls && r->sent - r->done < r->window) {
            char inbox[64];
            snprintf(inbox, sizeof inbox, "_INBOX.rpcload.%llu", (unsigned long long)r->sent);
            nats_pub(&caller, "echo", inbox, r->payload, r->size);
            r->sent_ns[r->sent % INFLIGHT_MAX] = now_ns();
            r->sent++;
        }
        nats_flush(&caller);
        struct pollfd p[2] = {{.fd = resp.fd, .events = POLLIN},
                              {.fd = caller.fd, .events = POLLIN}};
        poll(p, 2, 100);
        if (p[0].revents & POLLIN) {
            nats_read(&resp);
            nats_parse(&resp, echo_msg, NULL);
            nats_flush(&resp);
        }
        if (p[1].revents & POLLIN) {
            nats_read(&caller);
            nats_parse(&caller, reply_msg, r);
        }
        if (now_ns() - r->last_progress_ns > STALL_NS) {
            die("nats", "no reply for 30 s");
        }
    }
    close(resp.fd);
    close(caller.fd);
    free(resp.rx);
    free(caller.rx);
    free(resp.tx);
    free(caller.tx);
}

/* ---- main ---- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_us(const run *r, double q)
{
    size_t i = (size_t)(q * (double)(r->calls - 1));
    return (double)r->lat_ns[i] / 1000.0;
}

int main(int argc, char **argv)
{
    const char *url = NULL;
    run *r = calloc(1, sizeof *r);
    if (r == NULL) {
        die("rpcload", "out of memory");
    }
    r->calls = 100000;
    r->window = 64;
    r->size = 16;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--url") == 0) {
            url = argv[i + 1];
        } else if (strcmp(argv[i], "--calls") == 0) {
            r->calls = strtoull(argv[i + 1], NULL, 10);
        } else if (strcmp(argv[i], "--concurrency") == 0) {
            r->window = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        } else if (strcmp(argv[i], "--size") == 0) {
            r->size = strtoull(argv[i + 1], NULL, 10);
        } else {
            die("usage", "rpcload --url URL [--calls N] [--concurrency W] [--size BYTES]");
        }
    }
    if (url == NULL || r->calls == 0 || r->window == 0 || r->window > INFLIGHT_MAX ||
        r->size > SIZE_MAX_BYTES) {
        die("usage", "rpcload --url URL [--calls N] [--concurrency 1..4096] [--size 0..1048576]");
    }
    r->payload = calloc(1, r->size + 1);
    r->lat_ns = calloc(r->calls, sizeof *r->lat_ns);
    if (r->payload == NULL || r->lat_ns == NULL) {
        die("rpcload", "out of memory");
    }
    memset(r->payload, 'p', r->size);
    int64_t t0 = now_ns();
    if (strncmp(url, "nats://", 7) == 0) {
        run_nats(url + 7, r);
    } else {
        run_ringbus(url, r);
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    qsort(r->lat_ns, r->calls, sizeof *r->lat_ns, cmp_i64);
    printf("{\"url\":\"%s\",\"calls\":%llu,\"concurrency\":%u,\"size\":%zu,\"seconds\":%.3f,"
           "\"calls_per_s\":%.0f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f}\n",
           url, (unsigned long long)r->calls, r->window, r->size, secs, (double)r->calls / secs,
           pct_us(r, 0.50), pct_us(r, 0.90), pct_us(r, 0.99));
    free(r->payload);
    free(r->lat_ns);
    free(r);
    return 0;
}
