/* peerload: `ringbus bench` against the systems a user would consider
 * instead of ringbus, so that every figure comes from the same engine
 * (bench/bench.c: pacing, windows, order checks, the latency histogram,
 * the figures). This file holds only the wire protocols, as rb_bench
 * drivers:
 *
 *   nats://host:port   NATS core: PUB/SUB/MSG, PING/PONG, -ERR. Core NATS
 *                      has no publish ack, so a PING follows every
 *                      window/4 publishes and its PONG acknowledges them
 *                      (the server answers in order, after routing them);
 *                      at most `window` publishes are unacknowledged, as
 *                      with ringbus's acks.
 *   js://host:port     NATS JetStream: a file-storage stream over the
 *                      topics, created (and deleted) through $JS.API;
 *                      each PUB carries a reply inbox and waits for its
 *                      JSON ack, at most `window` in flight. Replay is an
 *                      ephemeral push consumer from the first message.
 *   redis://host:port  Redis RESP: PUBLISH (its integer reply is the ack,
 *                      at most `window` pipelined) and SUBSCRIBE.
 *
 * Usage: peerload --url URL MODE [the options of ringbus bench]. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"

/* A connection's send buffer grows to this, as ringbus's default. */
#define TX_BYTES_MAX ((size_t)8 << 20)
#define TX_BYTES_MIN ((size_t)64 << 10)
#define RX_BYTES_MIN ((size_t)64 << 10)
/* The longest protocol line (NATS INFO can be long). */
#define LINE_BYTES_MAX ((size_t)64 << 10)
/* The largest message body accepted. */
#define BODY_BYTES_MAX ((size_t)64 << 20)
/* Reads per process call, so one firehose cannot starve the others. */
#define READS_PER_PROCESS_MAX 16
/* NATS PINGs in flight (acks and syncs). */
#define PING_RING 256
/* NATS: a partial batch is pinged once its oldest publish is this old. */
#define PARTIAL_PING_NS 1000000
/* An API reply kept for a request (JetStream). */
#define API_REPLY_BYTES 4096
/* Subscription ids: topics use 1..TOPICS; these are reserved. */
#define SID_ACK 1000001
#define SID_API 1000002

typedef enum proto {
    P_NATS = 0,
    P_JS,
    P_REDIS,
} proto;

typedef struct pconn {
    proto proto;
    int fd;
    bool dead;
    rb_bench_sink *sink;
    uint32_t window;
    uint64_t inflight; /* publishes not yet acknowledged */
    uint8_t *tx;
    size_t tx_off, tx_len, tx_cap;
    uint8_t *rx;
    size_t rx_off, rx_len, rx_cap;
    /* NATS */
    uint32_t ping_counts[PING_RING]; /* publishes each PING acks; 0 = a sync */
    uint32_t ping_head, ping_count;
    uint32_t batch;
    uint64_t unpinged;
    int64_t unpinged_since_ns;
    uint64_t syncs_done;
    char inbox[64];
    char stream[80];
    bool api_ready;
    char api_reply[API_REPLY_BYTES];
    /* Redis */
    uint64_t subscribed;
    uint64_t sub_wanted;
    bool pong_seen;
} pconn;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int ms_until(int64_t deadline_ns)
{
    int64_t left = deadline_ns - now_ns();
    return left <= 0 ? 0 : (int)((left + 999999) / 1000000);
}

static void fail(pconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(pconn *c, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    c->dead = true;
    if (c->sink != NULL) {
        rb_bench_sink_closed(c->sink, why);
    }
}

/* ---- sockets and buffers ---- */

static int parse_url(const char *url, proto *p, char *host, size_t host_len, char *port)
{
    const char *rest;
    if (strncmp(url, "nats://", 7) == 0) {
        *p = P_NATS;
        rest = url + 7;
    } else if (strncmp(url, "js://", 5) == 0) {
        *p = P_JS;
        rest = url + 5;
    } else if (strncmp(url, "redis://", 8) == 0) {
        *p = P_REDIS;
        rest = url + 8;
    } else {
        return -1;
    }
    const char *colon = strrchr(rest, ':');
    size_t n = colon != NULL ? (size_t)(colon - rest) : strlen(rest);
    if (n == 0 || n >= host_len) {
        return -1;
    }
    memcpy(host, rest, n);
    host[n] = '\0';
    snprintf(port, 8, "%s", colon != NULL ? colon + 1 : (*p == P_REDIS ? "6379" : "4222"));
    return 0;
}

static int tcp_connect(const char *host, const char *port, int64_t deadline_ns, char *why,
                       size_t why_bytes)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        snprintf(why, why_bytes, "%s:%s: %s", host, port, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
        snprintf(why, why_bytes, "%s:%s: connect: %s", host, port, strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int err = 0;
    socklen_t len = sizeof err;
    if (fd >= 0 && (poll(&pfd, 1, ms_until(deadline_ns)) != 1 ||
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)) {
        snprintf(why, why_bytes, "%s:%s: connect: %s", host, port,
                 err != 0 ? strerror(err) : "timed out");
        close(fd);
        return -1;
    }
    int one = 1;
    if (fd >= 0) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

/* Room for n more bytes of output, or NULL when the buffer is at its bound. */
static uint8_t *tx_reserve(pconn *c, size_t n)
{
    if (c->tx_off > 0 && c->tx_cap - c->tx_len < n) {
        memmove(c->tx, c->tx + c->tx_off, c->tx_len - c->tx_off);
        c->tx_len -= c->tx_off;
        c->tx_off = 0;
    }
    if (c->tx_cap - c->tx_len < n) {
        size_t want = c->tx_len + n;
        if (want > TX_BYTES_MAX) {
            return NULL;
        }
        size_t cap = c->tx_cap * 2 > want ? c->tx_cap * 2 : want;
        cap = cap > TX_BYTES_MAX ? TX_BYTES_MAX : cap;
        uint8_t *p = realloc(c->tx, cap);
        if (p == NULL) {
            return NULL;
        }
        c->tx = p;
        c->tx_cap = cap;
    }
    return c->tx + c->tx_len;
}

static bool tx_put(pconn *c, const void *p, size_t n)
{
    uint8_t *dst = tx_reserve(c, n);
    if (dst == NULL) {
        return false;
    }
    memcpy(dst, p, n);
    c->tx_len += n;
    return true;
}

static bool tx_str(pconn *c, const char *s)
{
    return tx_put(c, s, strlen(s));
}

static int pc_flush(void *conn)
{
    pconn *c = conn;
    if (c->dead || c->tx_len == c->tx_off) {
        return c->dead ? RB_BENCH_FAIL : RB_BENCH_OK;
    }
    ssize_t n = send(c->fd, c->tx + c->tx_off, c->tx_len - c->tx_off, MSG_NOSIGNAL);
    if (n > 0) {
        c->tx_off += (size_t)n;
        if (c->tx_off == c->tx_len) {
            c->tx_off = c->tx_len = 0;
        }
    } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        fail(c, "send: %s", strerror(errno));
        return RB_BENCH_FAIL;
    }
    return RB_BENCH_OK;
}

static int pc_fd(void *conn)
{
    return ((pconn *)conn)->fd;
}

static bool pc_want_write(void *conn)
{
    const pconn *c = conn;
    return !c->dead && c->tx_len > c->tx_off;
}

/* Makes the receive buffer hold at least need bytes from rx_off. */
static bool rx_fit(pconn *c, size_t need)
{
    if (c->rx_off > 0) {
        memmove(c->rx, c->rx + c->rx_off, c->rx_len - c->rx_off);
        c->rx_len -= c->rx_off;
        c->rx_off = 0;
    }
    if (need <= c->rx_cap) {
        return true;
    }
    uint8_t *p = realloc(c->rx, need);
    if (p == NULL) {
        return false;
    }
    c->rx = p;
    c->rx_cap = need;
    return true;
}

static void pc_free(pconn *c)
{
    if (c->fd >= 0) {
        close(c->fd);
    }
    free(c->tx);
    free(c->rx);
    free(c);
}

static void pc_close(void *conn)
{
    pc_free(conn);
}

static pconn *pc_new(const char *url, uint32_t window, rb_bench_sink *sink, int64_t deadline_ns,
                     char *why, size_t why_bytes)
{
    char host[256];
    char port[8];
    proto p;
    if (parse_url(url, &p, host, sizeof host, port) != 0) {
        snprintf(why, why_bytes, "%s: expected nats://, js:// or redis://HOST:PORT", url);
        return NULL;
    }
    pconn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        snprintf(why, why_bytes, "out of memory");
        return NULL;
    }
    c->proto = p;
    c->sink = sink;
    c->window = window;
    c->batch = window / 4 > 0 ? window / 4 : 1;
    c->tx = malloc(TX_BYTES_MIN);
    c->rx = malloc(RX_BYTES_MIN);
    c->tx_cap = TX_BYTES_MIN;
    c->rx_cap = RX_BYTES_MIN;
    c->fd =
        c->tx != NULL && c->rx != NULL ? tcp_connect(host, port, deadline_ns, why, why_bytes) : -1;
    if (c->fd < 0) {
        pc_free(c);
        return NULL;
    }
    snprintf(c->inbox, sizeof c->inbox, "_INBOX.pl%ld%llx", (long)getpid(),
             (unsigned long long)((uintptr_t)c ^ (uint64_t)now_ns()));
    return c;
}

/* Reads what is available (bounded) and hands it to parse. */
static int pc_read(pconn *c, void (*parse)(pconn *))
{
    for (int i = 0; i < READS_PER_PROCESS_MAX && !c->dead; i++) {
        if (c->rx_len == c->rx_cap && !rx_fit(c, c->rx_cap * 2)) {
            fail(c, "receive: %s", "out of memory");
            break;
        }
        ssize_t n = recv(c->fd, c->rx + c->rx_len, c->rx_cap - c->rx_len, 0);
        if (n == 0) {
            fail(c, "%s", "the server closed the connection");
            break;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                fail(c, "recv: %s", strerror(errno));
            }
            break;
        }
        c->rx_len += (size_t)n;
        parse(c);
        if (c->rx_off == c->rx_len) {
            c->rx_off = c->rx_len = 0;
        } else if (c->rx_off > c->rx_cap / 2) {
            rx_fit(c, 0);
        }
    }
    pc_flush(c);
    return c->dead ? RB_BENCH_FAIL : RB_BENCH_OK;
}

/* Processes until done(c) or the deadline. */
static int pc_wait(pconn *c, bool (*done)(const pconn *), void (*parse)(pconn *),
                   int64_t deadline_ns, const char *what, char *why, size_t why_bytes)
{
    while (!done(c)) {
        if (c->dead) {
            snprintf(why, why_bytes, "%s: connection failed", what);
            return RB_BENCH_FAIL;
        }
        int left = ms_until(deadline_ns);
        if (left == 0) {
            snprintf(why, why_bytes, "%s: timed out", what);
            return RB_BENCH_FAIL;
        }
        pc_flush(c);
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN | (pc_want_write(c) ? POLLOUT : 0)};
        if (poll(&pfd, 1, left) > 0) {
            pc_read(c, parse);
        }
    }
    return RB_BENCH_OK;
}

/* ---- NATS and JetStream ---- */

/* Splits a line into at most max space-separated tokens. */
static int split(char *line, size_t len, char **tok, size_t *tok_len, int max)
{
    int n = 0;
    size_t i = 0;
    while (i < len && n < max) {
        while (i < len && (line[i] == ' ' || line[i] == '\t')) {
            i++;
        }
        if (i == len) {
            break;
        }
        tok[n] = line + i;
        while (i < len && line[i] != ' ' && line[i] != '\t') {
            i++;
        }
        tok_len[n] = (size_t)(tok[n] - line) <= i ? i - (size_t)(tok[n] - line) : 0;
        n++;
    }
    return n;
}

static uint64_t to_u64(const char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    return v;
}

static bool has_error(const uint8_t *p, size_t n)
{
    return memmem(p, n, "\"error\"", 7) != NULL;
}

/* A message on subscription sid: body is the payload after any headers. */
static void nats_msg(pconn *c, uint64_t sid, const uint8_t *body, size_t len, bool status_only)
{
    if (sid == SID_ACK) {
        c->inflight = c->inflight > 0 ? c->inflight - 1 : 0;
        bool bad = status_only || has_error(body, len);
        rb_bench_sink_acked(c->sink, bad ? 0 : 1, bad ? 1 : 0);
    } else if (sid == SID_API) {
        size_t n = len < API_REPLY_BYTES - 1 ? len : API_REPLY_BYTES - 1;
        memcpy(c->api_reply, body, n);
        c->api_reply[n] = '\0';
        c->api_ready = true;
    } else if (!status_only) {
        rb_bench_sink_message(c->sink, body, len);
    }
}

static void nats_pong(pconn *c)
{
    if (c->ping_count == 0) {
        return;
    }
    uint32_t n = c->ping_counts[c->ping_head];
    c->ping_head = (c->ping_head + 1) % PING_RING;
    c->ping_count--;
    if (n == 0) {
        c->syncs_done++;
        return;
    }
    c->inflight -= n;
    rb_bench_sink_acked(c->sink, n, 0);
}

/* MSG subject sid [reply] size / HMSG subject sid [reply] hdr total.
 * Returns the bytes used after the line, or -1 when more must arrive. */
static long nats_msg_line(pconn *c, char *line, size_t len, const uint8_t *after, size_t avail,
                          size_t *need)
{
    char *tok[6];
    size_t tl[6];
    bool hmsg = line[0] == 'H';
    int n = split(line, len, tok, tl, 6);
    int want = hmsg ? 5 : 4;
    if (n != want && n != want + 1) {
        fail(c, "bad %s line", hmsg ? "HMSG" : "MSG");
        return 0;
    }
    uint64_t sid = to_u64(tok[2], tl[2]);
    uint64_t total = to_u64(tok[n - 1], tl[n - 1]);
    uint64_t hdr = hmsg ? to_u64(tok[n - 2], tl[n - 2]) : 0;
    if (total > BODY_BYTES_MAX || hdr > total) {
        fail(c, "%s", "message too large");
        return 0;
    }
    if (avail < total + 2) {
        *need = (size_t)(after - (const uint8_t *)line) + (size_t)total + 2;
        return -1;
    }
    /* A header block with no body is a status (e.g. 503 no responders). */
    nats_msg(c, sid, after + hdr, (size_t)(total - hdr), hmsg && total == hdr);
    return (long)(total + 2);
}

/* Handles one control line; returns false when it is not known. */
static bool nats_control(pconn *c, const char *line, size_t len)
{
    if (len >= 4 && memcmp(line, "PING", 4) == 0) {
        tx_str(c, "PONG\r\n");
    } else if (len >= 4 && memcmp(line, "PONG", 4) == 0) {
        nats_pong(c);
    } else if (len >= 4 && memcmp(line, "-ERR", 4) == 0) {
        char text[200];
        snprintf(text, sizeof text, "%.*s", (int)len, line);
        fail(c, "server: %s", text);
    } else if (!(len >= 3 && memcmp(line, "+OK", 3) == 0) &&
               !(len >= 4 && memcmp(line, "INFO", 4) == 0)) {
        return false;
    }
    return true;
}

static void nats_parse(pconn *c)
{
    while (!c->dead && c->rx_off < c->rx_len) {
        char *line = (char *)c->rx + c->rx_off;
        size_t avail = c->rx_len - c->rx_off;
        char *nl = memchr(line, '\n', avail);
        if (nl == NULL) {
            if (avail > LINE_BYTES_MAX) {
                fail(c, "%s", "protocol line too long");
            }
            return;
        }
        size_t len = (size_t)(nl - line);
        len -= len > 0 && line[len - 1] == '\r' ? 1 : 0;
        size_t used = (size_t)(nl - line) + 1;
        if (line[0] == 'M' || line[0] == 'H') {
            size_t need = 0;
            long body = nats_msg_line(c, line, len, (uint8_t *)nl + 1, avail - used, &need);
            if (body < 0) {
                if (!rx_fit(c, need)) {
                    fail(c, "%s", "out of memory");
                }
                return;
            }
            used += (size_t)body;
        } else if (!nats_control(c, line, len)) {
            char text[64];
            snprintf(text, sizeof text, "%.*s", (int)(len < 40 ? len : 40), line);
            fail(c, "unexpected line: %s", text);
            return;
        }
        c->rx_off += used;
    }
}

static bool ping_push(pconn *c, uint32_t count)
{
    if (c->ping_count == PING_RING || !tx_str(c, "PING\r\n")) {
        return false;
    }
    c->ping_counts[(c->ping_head + c->ping_count) % PING_RING] = count;
    c->ping_count++;
    return true;
}

static bool syncs_reached(const pconn *c)
{
    return c->syncs_done > 0;
}

/* Sends PING and waits for every PONG up to it. */
static int nats_sync(pconn *c, int64_t deadline_ns, const char *what, char *why, size_t why_bytes)
{
    c->syncs_done = 0;
    if (!ping_push(c, 0)) {
        snprintf(why, why_bytes, "%s: send buffer full", what);
        return RB_BENCH_FAIL;
    }
    return pc_wait(c, syncs_reached, nats_parse, deadline_ns, what, why, why_bytes);
}

static bool got_info(const pconn *c)
{
    return c->rx_len >= 6 && memchr(c->rx, '\n', c->rx_len) != NULL;
}

static void no_parse(pconn *c)
{
    (void)c;
}

static int nats_handshake(pconn *c, int64_t deadline_ns, char *why, size_t why_bytes)
{
    if (pc_wait(c, got_info, no_parse, deadline_ns, "INFO", why, why_bytes) != 0) {
        return RB_BENCH_FAIL;
    }
    if (memcmp(c->rx, "INFO", 4) != 0) {
        snprintf(why, why_bytes, "expected INFO from the server");
        return RB_BENCH_FAIL;
    }
    c->rx_off = (size_t)((uint8_t *)memchr(c->rx, '\n', c->rx_len) - c->rx) + 1;
    tx_str(c, "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"peerload\",\"lang\":\"c\","
              "\"version\":\"0.1\",\"protocol\":1,\"echo\":true,\"headers\":true,"
              "\"no_responders\":true}\r\n");
    if (c->proto == P_JS) {
        char sub[160];
        snprintf(sub, sizeof sub, "SUB %s.a %d\r\nSUB %s.r %d\r\n", c->inbox, SID_ACK, c->inbox,
                 SID_API);
        tx_str(c, sub);
    }
    return nats_sync(c, deadline_ns, "CONNECT", why, why_bytes);
}

static int nats_subscribe(void *conn, const char *const *topics, uint32_t topic_count,
                          int64_t deadline_ns, char *why, size_t why_bytes)
{
    pconn *c = conn;
    for (uint32_t i = 0; i < topic_count; i++) {
        char line[320];
        snprintf(line, sizeof line, "SUB %s %u\r\n", topics[i], i + 1);
        if (!tx_str(c, line)) {
            snprintf(why, why_bytes, "SUB: send buffer full");
            return RB_BENCH_FAIL;
        }
    }
    return nats_sync(c, deadline_ns, "SUB", why, why_bytes);
}

static int nats_publish(void *conn, const char *topic, size_t topic_len, const void *payload,
                        size_t len)
{
    pconn *c = conn;
    if (c->dead) {
        return RB_BENCH_FAIL;
    }
    if (c->inflight >= c->window) {
        return RB_BENCH_FULL;
    }
    uint8_t *p = tx_reserve(c, topic_len + len + 128);
    if (p == NULL) {
        return RB_BENCH_FULL;
    }
    size_t n = 0;
    memcpy(p, "PUB ", 4);
    n += 4;
    memcpy(p + n, topic, topic_len);
    n += topic_len;
    if (c->proto == P_JS) {
        n += (size_t)sprintf((char *)p + n, " %s.a", c->inbox);
    }
    n += (size_t)sprintf((char *)p + n, " %zu\r\n", len);
    memcpy(p + n, payload, len);
    n += len;
    memcpy(p + n, "\r\n", 2);
    c->tx_len += n + 2;
    c->inflight++;
    if (c->proto == P_NATS && c->unpinged++ == 0) {
        c->unpinged_since_ns = now_ns();
    }
    if (c->proto == P_NATS && c->unpinged >= c->batch && ping_push(c, (uint32_t)c->unpinged)) {
        c->unpinged = 0;
    }
    return RB_BENCH_OK;
}

/* Core NATS: a partial batch gets its PING once no other is in flight and
 * its oldest publish is PARTIAL_PING_NS old, so that the last publishes
 * are acknowledged without a PING per publish. */
static int nats_flush(void *conn)
{
    pconn *c = conn;
    if (c->proto == P_NATS && c->unpinged > 0 && c->ping_count == 0 &&
        now_ns() - c->unpinged_since_ns >= PARTIAL_PING_NS && ping_push(c, (uint32_t)c->unpinged)) {
        c->unpinged = 0;
    }
    return pc_flush(c);
}

static int nats_process(void *conn)
{
    return pc_read(conn, nats_parse);
}

/* ---- JetStream API ---- */

/* The topic prefix of this process's run (set by prepare): one run per
 * process. */
static char js_prefix[80];

/* The stream that holds the topics under prefix. */
static void stream_name(const char *prefix, char *out, size_t out_len)
{
    size_t n = 0;
    n += (size_t)snprintf(out, out_len, "RB_");
    for (const char *p = prefix; *p != '\0' && n + 1 < out_len; p++) {
        bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9');
        out[n++] = ok ? *p : '_';
    }
    out[n] = '\0';
}

static bool api_answered(const pconn *c)
{
    return c->api_ready;
}

/* Sends a $JS.API request and waits for its reply (in c->api_reply). */
static int js_request(pconn *c, const char *subject, const char *body, int64_t deadline_ns,
                      char *why, size_t why_bytes)
{
    char head[512];
    snprintf(head, sizeof head, "PUB %s %s.r %zu\r\n", subject, c->inbox, strlen(body));
    c->api_ready = false;
    if (!tx_str(c, head) || !tx_str(c, body) || !tx_str(c, "\r\n")) {
        snprintf(why, why_bytes, "%s: send buffer full", subject);
        return RB_BENCH_FAIL;
    }
    return pc_wait(c, api_answered, nats_parse, deadline_ns, subject, why, why_bytes);
}

static int js_admin(const char *url, const char *prefix, int64_t deadline_ns, bool create,
                    char *why, size_t why_bytes)
{
    pconn *c = pc_new(url, 1, NULL, deadline_ns, why, why_bytes);
    if (c == NULL) {
        return RB_BENCH_FAIL;
    }
    char name[80];
    char subject[200];
    char body[512];
    stream_name(prefix, name, sizeof name);
    int rc = nats_handshake(c, deadline_ns, why, why_bytes);
    snprintf(subject, sizeof subject, "$JS.API.STREAM.DELETE.%s", name);
    rc = rc ? rc : js_request(c, subject, "", deadline_ns, why, why_bytes);
    if (rc == 0 && create) {
        snprintf(subject, sizeof subject, "$JS.API.STREAM.CREATE.%s", name);
        snprintf(body, sizeof body,
                 "{\"name\":\"%s\",\"subjects\":[\"%s.>\"],\"storage\":\"file\","
                 "\"retention\":\"limits\",\"discard\":\"old\",\"num_replicas\":1}",
                 name, prefix);
        rc = js_request(c, subject, body, deadline_ns, why, why_bytes);
        if (rc == 0 && has_error((uint8_t *)c->api_reply, strlen(c->api_reply))) {
            snprintf(why, why_bytes, "stream create: %.200s", c->api_reply);
            rc = RB_BENCH_FAIL;
        }
    }
    pc_free(c);
    return rc;
}

static int js_prepare(const char *url, const char *prefix, int64_t deadline_ns, char *why,
                      size_t why_bytes)
{
    snprintf(js_prefix, sizeof js_prefix, "%s", prefix);
    return js_admin(url, prefix, deadline_ns, true, why, why_bytes);
}

static void js_cleanup(const char *url, const char *prefix, int64_t deadline_ns)
{
    char why[256];
    (void)js_admin(url, prefix, deadline_ns, false, why, sizeof why);
}

/* An ephemeral push consumer of topic from its first message; its API
 * reply is checked when it arrives (an error closes the run). */
static int js_replay(void *conn, const char *topic, char *why, size_t why_bytes)
{
    pconn *c = conn;
    char name[80];
    char line[512];
    char body[768];
    stream_name(js_prefix, name, sizeof name);
    snprintf(body, sizeof body,
             "{\"stream_name\":\"%s\",\"config\":{\"deliver_subject\":\"%s.d\","
             "\"deliver_policy\":\"all\",\"ack_policy\":\"none\",\"replay_policy\":\"instant\","
             "\"filter_subject\":\"%s\"}}",
             name, c->inbox, topic);
    snprintf(line, sizeof line, "SUB %s.d 1\r\nPUB $JS.API.CONSUMER.CREATE.%s %s.r %zu\r\n",
             c->inbox, name, c->inbox, strlen(body));
    c->api_ready = false;
    if (!tx_str(c, line) || !tx_str(c, body) || !tx_str(c, "\r\n")) {
        snprintf(why, why_bytes, "consumer create: send buffer full");
        return RB_BENCH_FAIL;
    }
    pc_flush(c);
    return RB_BENCH_OK;
}

static int js_process(void *conn)
{
    pconn *c = conn;
    int rc = pc_read(c, nats_parse);
    if (c->api_ready && has_error((uint8_t *)c->api_reply, strlen(c->api_reply))) {
        fail(c, "JetStream API: %.200s", c->api_reply);
        return RB_BENCH_FAIL;
    }
    return rc;
}

/* ---- Redis ---- */

/* A parsed RESP reply: kind is + - : or *, with up to 3 elements of an
 * array (bulk strings or integers). */
typedef struct resp {
    char kind;
    const uint8_t *str; /* + - */
    size_t str_len;
    uint32_t count;
    const uint8_t *el[3];
    size_t el_len[3];
} resp;

/* Parses "<prefix><int>\r\n" at p; returns the bytes used, 0 when more must
 * arrive, -1 when malformed. */
static long resp_int(const uint8_t *p, size_t avail, int64_t *v)
{
    const uint8_t *nl = memchr(p, '\n', avail);
    if (nl == NULL) {
        return avail > LINE_BYTES_MAX ? -1 : 0;
    }
    bool neg = avail > 1 && p[1] == '-';
    *v = (int64_t)to_u64((const char *)p + 1 + neg, (size_t)(nl - p));
    *v = neg ? -*v : *v;
    return (long)(nl - p) + 1;
}

/* One array element (bulk string or integer). */
static long resp_element(const uint8_t *p, size_t avail, const uint8_t **s, size_t *len)
{
    int64_t v = 0;
    long used = resp_int(p, avail, &v);
    if (used <= 0) {
        return used;
    }
    if (p[0] == ':') {
        *s = p + 1;
        *len = (size_t)used - 3;
        return used;
    }
    if (p[0] != '$' || v < 0 || (uint64_t)v > BODY_BYTES_MAX) {
        return -1;
    }
    if (avail < (size_t)used + (size_t)v + 2) {
        return 0;
    }
    *s = p + used;
    *len = (size_t)v;
    return used + (long)v + 2;
}

/* Parses one reply at p; same results as resp_int. */
static long resp_parse(const uint8_t *p, size_t avail, resp *r)
{
    int64_t v = 0;
    long used = resp_int(p, avail, &v);
    if (used <= 0) {
        return used;
    }
    r->kind = (char)p[0];
    r->str = p + 1;
    r->str_len = (size_t)used - 3;
    if (r->kind != '*') {
        return r->kind == '+' || r->kind == '-' || r->kind == ':' ? used : -1;
    }
    if (v < 0 || v > 3) {
        return -1;
    }
    r->count = (uint32_t)v;
    for (uint32_t i = 0; i < r->count; i++) {
        long n = resp_element(p + used, avail - (size_t)used, &r->el[i], &r->el_len[i]);
        if (n <= 0) {
            return n;
        }
        used += n;
    }
    return used;
}

static bool el_is(const resp *r, uint32_t i, const char *s)
{
    return r->count > i && r->el_len[i] == strlen(s) && memcmp(r->el[i], s, r->el_len[i]) == 0;
}

static void redis_reply(pconn *c, const resp *r)
{
    if (r->kind == '*' && el_is(r, 0, "message") && r->count == 3) {
        rb_bench_sink_message(c->sink, r->el[2], r->el_len[2]);
    } else if (r->kind == '*' && el_is(r, 0, "subscribe")) {
        c->subscribed++;
    } else if (r->kind == ':' || (r->kind == '-' && c->inflight > 0)) {
        c->inflight = c->inflight > 0 ? c->inflight - 1 : 0;
        rb_bench_sink_acked(c->sink, r->kind == ':', r->kind == '-');
    } else if (r->kind == '+') {
        c->pong_seen = true;
    } else if (r->kind == '-') {
        char text[200];
        snprintf(text, sizeof text, "%.*s", (int)(r->str_len < 150 ? r->str_len : 150), r->str);
        fail(c, "server: %s", text);
    }
}

static void redis_parse(pconn *c)
{
    while (!c->dead && c->rx_off < c->rx_len) {
        resp r = {0};
        long used = resp_parse(c->rx + c->rx_off, c->rx_len - c->rx_off, &r);
        if (used < 0) {
            fail(c, "%s", "malformed RESP reply");
            return;
        }
        if (used == 0) {
            return; /* pc_read grows the buffer when it fills */
        }
        redis_reply(c, &r);
        c->rx_off += (size_t)used;
    }
}

static bool pong_arrived(const pconn *c)
{
    return c->pong_seen;
}

static bool all_subscribed(const pconn *c)
{
    return c->subscribed >= c->sub_wanted;
}

static bool bulk(pconn *c, const void *p, size_t len)
{
    char head[32];
    int n = snprintf(head, sizeof head, "$%zu\r\n", len);
    uint8_t *dst = tx_reserve(c, (size_t)n + len + 2);
    if (dst == NULL) {
        return false;
    }
    memcpy(dst, head, (size_t)n);
    memcpy(dst + n, p, len);
    memcpy(dst + n + len, "\r\n", 2);
    c->tx_len += (size_t)n + len + 2;
    return true;
}

static int redis_subscribe(void *conn, const char *const *topics, uint32_t topic_count,
                           int64_t deadline_ns, char *why, size_t why_bytes)
{
    pconn *c = conn;
    char head[32];
    snprintf(head, sizeof head, "*%u\r\n", topic_count + 1);
    bool ok = tx_str(c, head) && bulk(c, "SUBSCRIBE", 9);
    for (uint32_t i = 0; ok && i < topic_count; i++) {
        ok = bulk(c, topics[i], strlen(topics[i]));
    }
    if (!ok) {
        snprintf(why, why_bytes, "SUBSCRIBE: send buffer full");
        return RB_BENCH_FAIL;
    }
    c->subscribed = 0;
    c->sub_wanted = topic_count;
    return pc_wait(c, all_subscribed, redis_parse, deadline_ns, "SUBSCRIBE", why, why_bytes);
}

static int redis_publish(void *conn, const char *topic, size_t topic_len, const void *payload,
                         size_t len)
{
    pconn *c = conn;
    if (c->dead) {
        return RB_BENCH_FAIL;
    }
    if (c->inflight >= c->window || tx_reserve(c, topic_len + len + 64) == NULL) {
        return RB_BENCH_FULL;
    }
    tx_str(c, "*3\r\n$7\r\nPUBLISH\r\n");
    bulk(c, topic, topic_len);
    bulk(c, payload, len);
    c->inflight++;
    return RB_BENCH_OK;
}

static int redis_process(void *conn)
{
    return pc_read(conn, redis_parse);
}

/* ---- connecting and the driver tables ---- */

static int pl_connect(const char *url, uint32_t window, int64_t deadline_ns, rb_bench_sink *sink,
                      void **conn, char *why, size_t why_bytes)
{
    pconn *c = pc_new(url, window, sink, deadline_ns, why, why_bytes);
    if (c == NULL) {
        return RB_BENCH_FAIL;
    }
    int rc;
    if (c->proto == P_REDIS) {
        tx_str(c, "*1\r\n$4\r\nPING\r\n");
        rc = pc_wait(c, pong_arrived, redis_parse, deadline_ns, "PING", why, why_bytes);
    } else {
        rc = nats_handshake(c, deadline_ns, why, why_bytes);
    }
    if (rc != 0) {
        pc_free(c);
        return RB_BENCH_FAIL;
    }
    *conn = c;
    return RB_BENCH_OK;
}

static const rb_bench_driver nats_driver = {
    .system = "nats",
    .connect = pl_connect,
    .subscribe = nats_subscribe,
    .publish = nats_publish,
    .flush = nats_flush,
    .fd = pc_fd,
    .want_write = pc_want_write,
    .process = nats_process,
    .close = pc_close,
};

static const rb_bench_driver js_driver = {
    .system = "nats-js",
    .prepare = js_prepare,
    .cleanup = js_cleanup,
    .connect = pl_connect,
    .subscribe = nats_subscribe,
    .replay = js_replay,
    .publish = nats_publish,
    .flush = nats_flush,
    .fd = pc_fd,
    .want_write = pc_want_write,
    .process = js_process,
    .close = pc_close,
};

static const rb_bench_driver redis_driver = {
    .system = "redis",
    .connect = pl_connect,
    .subscribe = redis_subscribe,
    .publish = redis_publish,
    .flush = pc_flush,
    .fd = pc_fd,
    .want_write = pc_want_write,
    .process = redis_process,
    .close = pc_close,
};

int main(int argc, char **argv)
{
    const char *url = NULL;
    int i = 1;
    for (; i + 1 < argc && strcmp(argv[i], "--url") == 0; i += 2) {
        url = argv[i + 1];
    }
    if (url == NULL || i >= argc) {
        fprintf(stderr,
                "usage: peerload --url nats://H:P|js://H:P|redis://H:P MODE [OPTIONS]\n\n%s",
                rb_bench_usage());
        return 2;
    }
    proto p;
    char host[256];
    char port[8];
    if (parse_url(url, &p, host, sizeof host, port) != 0) {
        fprintf(stderr, "peerload: %s: expected nats://, js:// or redis://HOST:PORT\n", url);
        return 2;
    }
    const rb_bench_driver *drv = p == P_NATS ? &nats_driver
                                 : p == P_JS ? &js_driver
                                             : &redis_driver;
    return rb_bench_main(drv, url, argc - i, argv + i);
}
