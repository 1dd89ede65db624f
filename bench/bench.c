/* `ringbus bench`: the measuring engine (modes, pacing, the latency
 * histogram, figures as a table or JSON) and the ringbus driver over
 * libringbus. Other protocols plug in as rb_bench_driver tables (see
 * bench/peerload.c); the wire is left to the drivers.
 *
 * Every message carries a 16-byte head: the intended send time (ns), the
 * publisher index, the topic index and a counter per (publisher, topic),
 * so that every subscriber checks count, order and latency the same way
 * whatever the system. */
#include "bench/bench.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "client/ringbus.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE   2

#define WHY_BYTES 256
/* The head every payload starts with; also the smallest message. */
#define HEAD_BYTES   16
#define SIZE_MAX_ALL (512u << 10)
#define COUNT_MAX    UINT64_C(1000000000)
#define PUBS_MAX     1024
#define SUBS_MAX     4096
#define TOPICS_MAX   4096
#define WINDOW_MAX   1048576
#define CONNS_MAX    200000
#define RATE_MAX     100000000.0
/* --sub-url may repeat: the subscribers of a cluster's other nodes. */
#define SUB_URLS_MAX 8
/* The sub_url field: the URLs joined by commas. */
#define SUB_URLS_TEXT_BYTES 1024
/* Defaults. */
#define SIZE_DEFAULT         256
#define COUNT_DEFAULT        100000
#define CONNS_DEFAULT        1000
#define WINDOW_DEFAULT       4096
#define LATENCY_RATE_DEFAULT 10000.0
#define LATENCY_SECONDS      5
#define FANOUT_SUBS_DEFAULT  8
#define DURATION_NS_DEFAULT  (INT64_C(60) * 1000000000)
#define CONNECT_NS_MAX       (INT64_C(10) * 1000000000)
/* The longest single poll, so that deadlines and stop flags are seen. */
#define TICK_NS INT64_C(100000000)
/* After the last publish is acknowledged, deliveries may lag; a run ends
 * when nothing arrived for this long (the missing ones count as lost). */
#define DRAIN_IDLE_NS INT64_C(2000000000)
/* conns: time the daemon gets to settle before its RSS is read. */
#define CONNS_SETTLE_NS INT64_C(500000000)

/* The latency histogram: HDR-style, log buckets with HIST_SUB_BITS of
 * mantissa (relative error under 1/2^(HIST_SUB_BITS-1), 0.8%). */
#define HIST_SUB_BITS 8
#define HIST_HALF     (1u << (HIST_SUB_BITS - 1))
#define HIST_BUCKETS  ((64 - HIST_SUB_BITS + 1) * HIST_HALF + (1u << HIST_SUB_BITS))

typedef enum mode {
    MODE_PUBSUB = 0,
    MODE_FANOUT,
    MODE_LATENCY,
    MODE_CATCHUP,
    MODE_CONNS,
} mode;

static const char *const mode_names[] = {"pubsub", "fanout", "latency", "catchup", "conns"};

typedef struct opts {
    mode mode;
    const char *url;
    /* Where subscribers connect, round-robin (subscriber i on
     * sub_urls[i % sub_url_count]); none = url. */
    const char *sub_urls[SUB_URLS_MAX];
    uint32_t sub_url_count;
    const char *prefix;
    uint32_t size;
    uint64_t count;
    uint32_t publishers;
    uint32_t subscribers;
    uint32_t topics;
    uint32_t window;
    double rate; /* messages/s over all publishers; 0 = as fast as acks allow */
    int64_t duration_ns;
    long pid;
    bool json;
    bool count_set, subs_set, rate_set;
} opts;

typedef struct hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    uint64_t max;
    double sum;
} hist;

typedef struct bench bench;

struct rb_bench_sink {
    bench *b;
    void *conn;
    bool closed;
    bool complete;
    char why[WHY_BYTES];
    /* publisher */
    uint32_t pub_index;
    uint64_t quota;
    uint64_t sent;
    uint64_t acked;
    uint64_t ack_errors;
    /* subscriber */
    uint64_t delivered;
    uint64_t order_errors;
    uint64_t bad;
    uint32_t *next; /* [publishers * topics] expected counters */
    hist *lat;      /* latency mode only */
    int64_t first_ns;
    int64_t last_ns; /* last delivery or ack */
};

typedef struct group {
    uint32_t n;
    rb_bench_sink *sinks; /* [n] */
} group;

/* The connections one thread polls. */
typedef struct poller {
    uint32_t n;
    struct pollfd *pfds;   /* [n] */
    rb_bench_sink **sinks; /* [n] */
} poller;

struct bench {
    const rb_bench_driver *drv;
    opts o;
    char **topics; /* [o.topics] */
    size_t *topic_lens;
    uint8_t *payload;   /* [o.size], the publisher thread's scratch */
    uint32_t *counters; /* [publishers * topics], next counter to publish */
    uint64_t next_msg;  /* publishes started, for pacing */
    int64_t t0_ns;
    int64_t deadline_ns;
    atomic_llong pub_done_ns; /* 0 while publishing */
    char run_id[64];
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void put_u16(uint8_t *p, uint16_t v)
{
    memcpy(p, &v, sizeof v);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}

static void put_i64(uint8_t *p, int64_t v)
{
    memcpy(p, &v, sizeof v);
}

/* ---- the histogram ---- */

static uint32_t hist_index(uint64_t v)
{
    if (v < (1u << HIST_SUB_BITS)) {
        return (uint32_t)v;
    }
    uint32_t msb = 63u - (uint32_t)__builtin_clzll(v);
    uint32_t shift = msb - HIST_SUB_BITS + 1;
    return shift * HIST_HALF + (uint32_t)(v >> shift);
}

/* The highest value that lands in bucket index. */
static uint64_t hist_value(uint32_t index)
{
    if (index < (1u << HIST_SUB_BITS)) {
        return index;
    }
    uint32_t shift = (index >> (HIST_SUB_BITS - 1)) - 1;
    uint64_t mant = index - (uint64_t)shift * HIST_HALF;
    return ((mant + 1) << shift) - 1;
}

static void hist_record(hist *h, int64_t v)
{
    uint64_t u = v > 0 ? (uint64_t)v : 0;
    h->counts[hist_index(u)]++;
    h->total++;
    h->sum += (double)u;
    if (u > h->max) {
        h->max = u;
    }
}

/* The smallest recorded value v with at least q of the values <= v (the
 * bucket's upper edge, never above the exact maximum). */
static uint64_t hist_quantile(const hist *h, double q)
{
    if (h->total == 0) {
        return 0;
    }
    uint64_t want = (uint64_t)(q * (double)h->total + 0.999999);
    want = want == 0 ? 1 : want;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= want) {
            uint64_t v = hist_value(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

static void hist_merge(hist *into, const hist *from)
{
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        into->counts[i] += from->counts[i];
    }
    into->total += from->total;
    into->sum += from->sum;
    into->max = from->max > into->max ? from->max : into->max;
}

/* ---- sinks (drivers report here) ---- */

void rb_bench_sink_message(rb_bench_sink *sink, const void *payload, size_t len)
{
    const bench *b = sink->b;
    sink->delivered++;
    if (len < HEAD_BYTES) {
        sink->bad++;
        return;
    }
    int64_t sent_ns;
    uint16_t pub;
    uint16_t topic;
    uint32_t counter;
    const uint8_t *p = payload;
    memcpy(&sent_ns, p, 8);
    memcpy(&pub, p + 8, 2);
    memcpy(&topic, p + 10, 2);
    memcpy(&counter, p + 12, 4);
    if (pub >= b->o.publishers || topic >= b->o.topics || sink->next == NULL) {
        sink->bad++;
        return;
    }
    uint32_t *next = &sink->next[(size_t)pub * b->o.topics + topic];
    if (*next != counter) {
        sink->order_errors++;
    }
    *next = counter + 1;
    if (sink->lat != NULL) {
        hist_record(sink->lat, now_ns() - sent_ns);
    }
}

void rb_bench_sink_acked(rb_bench_sink *sink, uint64_t ok_count, uint64_t err_count)
{
    sink->acked += ok_count;
    sink->ack_errors += err_count;
}

void rb_bench_sink_complete(rb_bench_sink *sink)
{
    sink->complete = true;
}

void rb_bench_sink_closed(rb_bench_sink *sink, const char *why)
{
    if (!sink->closed) {
        sink->closed = true;
        snprintf(sink->why, sizeof sink->why, "%s", why != NULL ? why : "closed");
    }
}

/* ---- connections ---- */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "ringbus bench: %s\n", line);
}

static int64_t connect_deadline(const bench *b)
{
    int64_t d = now_ns() + CONNECT_NS_MAX;
    return d < b->deadline_ns ? d : b->deadline_ns;
}

/* The server subscriber i connects to. */
static const char *sub_url_of(const bench *b, uint32_t i)
{
    return b->o.sub_url_count > 0 ? b->o.sub_urls[i % b->o.sub_url_count] : b->o.url;
}

/* Connects n connections into g; subscribers get their order table and,
 * with lat, a histogram. Returns 0 or EXIT_RUNTIME (said why). */
static int group_open(bench *b, group *g, uint32_t n, bool subscriber, bool lat)
{
    g->n = 0;
    g->sinks = calloc(n + 1, sizeof *g->sinks);
    if (g->sinks == NULL) {
        say("out of memory");
        return EXIT_RUNTIME;
    }
    for (uint32_t i = 0; i < n; i++) {
        rb_bench_sink *s = &g->sinks[i];
        s->b = b;
        s->pub_index = i;
        if (subscriber) {
            s->next = calloc((size_t)b->o.publishers * b->o.topics, sizeof *s->next);
            s->lat = lat ? calloc(1, sizeof *s->lat) : NULL;
            if (s->next == NULL || (lat && s->lat == NULL)) {
                say("out of memory");
                return EXIT_RUNTIME;
            }
        }
        char why[WHY_BYTES] = "";
        const char *url = subscriber ? sub_url_of(b, i) : b->o.url;
        if (b->drv->connect(url, b->o.window, connect_deadline(b), s, &s->conn, why, sizeof why) !=
            RB_BENCH_OK) {
            say("connect %s (%u of %u): %s", url, i + 1, n, why);
            free(s->next);
            free(s->lat);
            return EXIT_RUNTIME;
        }
        g->n++;
    }
    return 0;
}

static void group_close(bench *b, group *g)
{
    for (uint32_t i = 0; i < g->n; i++) {
        b->drv->close(g->sinks[i].conn);
        free(g->sinks[i].next);
        free(g->sinks[i].lat);
    }
    free(g->sinks);
    g->sinks = NULL;
    g->n = 0;
}

static int group_subscribe(bench *b, group *g)
{
    for (uint32_t i = 0; i < g->n; i++) {
        char why[WHY_BYTES] = "";
        if (b->drv->subscribe(g->sinks[i].conn, (const char *const *)b->topics, b->o.topics,
                              connect_deadline(b), why, sizeof why) != RB_BENCH_OK) {
            say("subscribe %s (subscriber %u): %s", sub_url_of(b, i), i + 1, why);
            return EXIT_RUNTIME;
        }
    }
    return 0;
}

/* Builds the poll set of up to two groups. */
static int poller_init(poller *pl, group *a, group *c)
{
    uint32_t n = a->n + (c != NULL ? c->n : 0);
    pl->n = n;
    pl->pfds = calloc(n + 1, sizeof *pl->pfds);
    pl->sinks = calloc(n + 1, sizeof *pl->sinks);
    if (pl->pfds == NULL || pl->sinks == NULL) {
        say("out of memory");
        return EXIT_RUNTIME;
    }
    for (uint32_t i = 0; i < n; i++) {
        pl->sinks[i] = i < a->n ? &a->sinks[i] : &c->sinks[i - a->n];
    }
    return 0;
}

static void poller_deinit(poller *pl)
{
    free(pl->pfds);
    free(pl->sinks);
}

/* Flushes, waits at most wait_ns for any connection to be ready, and
 * processes the ready ones, stamping progress times. */
static void poller_turn(bench *b, poller *pl, int64_t wait_ns)
{
    const rb_bench_driver *drv = b->drv;
    for (uint32_t i = 0; i < pl->n; i++) {
        rb_bench_sink *s = pl->sinks[i];
        if (!s->closed && drv->want_write(s->conn)) {
            drv->flush(s->conn);
        }
        pl->pfds[i].fd = s->closed ? -1 : drv->fd(s->conn);
        pl->pfds[i].events = POLLIN | (!s->closed && drv->want_write(s->conn) ? POLLOUT : 0);
        pl->pfds[i].revents = 0;
    }
    wait_ns = wait_ns < 0 ? 0 : (wait_ns > TICK_NS ? TICK_NS : wait_ns);
    struct timespec ts = {.tv_sec = wait_ns / 1000000000, .tv_nsec = wait_ns % 1000000000};
    int n = ppoll(pl->pfds, pl->n, &ts, NULL);
    if (n <= 0) {
        return;
    }
    int64_t now = 0;
    for (uint32_t i = 0; i < pl->n; i++) {
        rb_bench_sink *s = pl->sinks[i];
        if (pl->pfds[i].revents == 0 || s->closed) {
            continue;
        }
        uint64_t before = s->delivered + s->acked + s->ack_errors;
        if (drv->process(s->conn) != RB_BENCH_OK) {
            rb_bench_sink_closed(s, "connection closed");
        }
        if (s->delivered + s->acked + s->ack_errors != before) {
            now = now != 0 ? now : now_ns();
            s->first_ns = s->first_ns != 0 ? s->first_ns : now;
            s->last_ns = now;
        }
    }
}

/* ---- publishing ---- */

static bool pub_sink_done(const rb_bench_sink *s)
{
    return s->closed || s->acked + s->ack_errors >= s->quota;
}

static bool pubs_done(const group *g)
{
    for (uint32_t i = 0; i < g->n; i++) {
        if (!pub_sink_done(&g->sinks[i])) {
            return false;
        }
    }
    return true;
}

static int64_t intended_ns(const bench *b, uint64_t msg_index)
{
    if (b->o.rate <= 0) {
        return 0;
    }
    return b->t0_ns + (int64_t)((double)msg_index * 1e9 / b->o.rate);
}

/* Publishes what the windows and the pace allow on s. Returns true when it
 * stopped for the pace (not for the window or the quota). */
static bool pub_fill_one(bench *b, rb_bench_sink *s, int64_t now)
{
    uint32_t t_count = b->o.topics;
    while (s->sent < s->quota && !s->closed) {
        int64_t due = intended_ns(b, b->next_msg);
        if (b->o.rate > 0 && due > now) {
            return true;
        }
        uint32_t t = (uint32_t)(s->sent % t_count);
        uint32_t *counter = &b->counters[(size_t)s->pub_index * t_count + t];
        put_i64(b->payload, b->o.rate > 0 ? due : now);
        put_u16(b->payload + 8, (uint16_t)s->pub_index);
        put_u16(b->payload + 10, (uint16_t)t);
        put_u32(b->payload + 12, *counter);
        int rc = b->drv->publish(s->conn, b->topics[t], b->topic_lens[t], b->payload, b->o.size);
        if (rc == RB_BENCH_FULL) {
            return false;
        }
        if (rc != RB_BENCH_OK) {
            rb_bench_sink_closed(s, "publish failed");
            return false;
        }
        (*counter)++;
        s->sent++;
        b->next_msg++;
    }
    return false;
}

/* Publishes on every publisher; returns how long the caller may wait. */
static int64_t pub_fill(bench *b, group *g)
{
    int64_t now = now_ns();
    bool paced = false;
    for (uint32_t i = 0; i < g->n; i++) {
        paced |= pub_fill_one(b, &g->sinks[i], now);
        if (!g->sinks[i].closed) {
            b->drv->flush(g->sinks[i].conn);
        }
    }
    if (paced) {
        return intended_ns(b, b->next_msg) - now_ns();
    }
    return TICK_NS;
}

static void pub_quotas(group *g, uint64_t count)
{
    for (uint32_t i = 0; i < g->n; i++) {
        g->sinks[i].quota = count / g->n + (i < count % g->n ? 1 : 0);
    }
}

/* Publishes count messages over g until every one is acknowledged, a
 * publisher fails, or the deadline passes. */
static void pub_run(bench *b, group *g)
{
    poller pl;
    if (poller_init(&pl, g, NULL) != 0) {
        poller_deinit(&pl);
        return;
    }
    while (!pubs_done(g) && now_ns() < b->deadline_ns) {
        int64_t wait_ns = pub_fill(b, g);
        poller_turn(b, &pl, wait_ns);
    }
    poller_deinit(&pl);
}

/* ---- receiving ---- */

/* Tracks when deliveries last progressed, to end a run whose missing
 * messages will not come. */
typedef struct drain {
    uint64_t last_total;
    int64_t last_ns;
} drain;

/* True when every subscriber has expected messages (or is closed). */
static bool subs_done(const group *g, uint64_t expected, uint64_t *total)
{
    bool done = true;
    *total = 0;
    for (uint32_t i = 0; i < g->n; i++) {
        const rb_bench_sink *s = &g->sinks[i];
        *total += s->delivered;
        if (!s->closed && s->delivered < expected) {
            done = false;
        }
    }
    return done;
}

/* True when the run should stop waiting for deliveries. */
static bool drain_over(bench *b, drain *d, uint64_t total, int64_t now)
{
    if (total != d->last_total || d->last_ns == 0) {
        d->last_total = total;
        d->last_ns = now;
    }
    int64_t pub_done = atomic_load(&b->pub_done_ns);
    if (pub_done == 0) {
        return false;
    }
    int64_t since = d->last_ns > pub_done ? d->last_ns : pub_done;
    return now - since > DRAIN_IDLE_NS;
}

typedef struct sub_job {
    bench *b;
    group *g;
    uint64_t expected; /* per subscriber */
} sub_job;

static void *sub_thread(void *arg)
{
    sub_job *job = arg;
    bench *b = job->b;
    poller pl;
    if (poller_init(&pl, job->g, NULL) == 0) {
        drain d = {0};
        for (;;) {
            uint64_t total;
            if (subs_done(job->g, job->expected, &total)) {
                break;
            }
            int64_t now = now_ns();
            if (now >= b->deadline_ns || drain_over(b, &d, total, now)) {
                break;
            }
            poller_turn(b, &pl, TICK_NS);
        }
    }
    poller_deinit(&pl);
    return NULL;
}

/* ---- figures ---- */

typedef enum fkind {
    F_STR = 0,
    F_U64,
    F_F64,
    F_BOOL,
} fkind;

typedef struct field {
    const char *key;
    fkind kind;
    const char *unit; /* for the table */
    const char *s;
    uint64_t u;
    double d;
} field;

#define FIELDS_MAX 40

typedef struct figure {
    field f[FIELDS_MAX];
    int n;
} figure;

static field *fig_add(figure *fg, const char *key, fkind kind, const char *unit)
{
    if (fg->n >= FIELDS_MAX) {
        static field spare;
        return &spare;
    }
    field *f = &fg->f[fg->n++];
    memset(f, 0, sizeof *f);
    f->key = key;
    f->kind = kind;
    f->unit = unit;
    return f;
}

static void fig_str(figure *fg, const char *key, const char *v)
{
    fig_add(fg, key, F_STR, "")->s = v;
}

static void fig_u64(figure *fg, const char *key, uint64_t v, const char *unit)
{
    fig_add(fg, key, F_U64, unit)->u = v;
}

static void fig_f64(figure *fg, const char *key, double v, const char *unit)
{
    fig_add(fg, key, F_F64, unit)->d = v;
}

static void fig_bool(figure *fg, const char *key, bool v)
{
    fig_add(fg, key, F_BOOL, "")->u = v;
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            printf("\\%c", ch);
        } else if (ch < 0x20) {
            printf("\\u%04x", ch);
        } else {
            putchar(ch);
        }
    }
    putchar('"');
}

static void fig_print(const figure *fg, bool json)
{
    for (int i = 0; i < fg->n; i++) {
        const field *f = &fg->f[i];
        if (json) {
            printf("%s", i == 0 ? "{" : ",");
            json_str(f->key);
            putchar(':');
        } else {
            printf("  %-18s ", f->key);
        }
        switch (f->kind) {
        case F_STR:
            json ? json_str(f->s) : (void)printf("%s", f->s);
            break;
        case F_U64:
            printf("%" PRIu64, f->u);
            break;
        case F_F64:
            printf(json ? "%.6g" : "%.3f", f->d);
            break;
        case F_BOOL:
            printf("%s", f->u ? "true" : "false");
            break;
        }
        if (!json) {
            printf("%s%s\n", f->unit[0] != '\0' ? " " : "", f->unit);
        }
    }
    printf(json ? "}\n" : "\n");
    fflush(stdout);
}

/* The fields every figure starts with. */
static void fig_head(const bench *b, figure *fg)
{
    fig_str(fg, "system", b->drv->system);
    fig_str(fg, "mode", mode_names[b->o.mode]);
    fig_str(fg, "url", b->o.url);
    /* fig_str keeps the pointer until fig_print: the text outlives it. */
    static char subs[SUB_URLS_TEXT_BYTES];
    size_t n = 0;
    subs[0] = '\0';
    for (uint32_t i = 0; i < b->o.sub_url_count && n < sizeof subs; i++) {
        int w = snprintf(subs + n, sizeof subs - n, "%s%s", i > 0 ? "," : "", b->o.sub_urls[i]);
        n += w > 0 ? (size_t)w : 0;
    }
    if (b->o.sub_url_count > 0) {
        fig_str(fg, "sub_url", subs);
    }
    if (!b->o.json) {
        printf("%s bench %s  %s%s%s\n", b->drv->system, mode_names[b->o.mode], b->o.url,
               b->o.sub_url_count > 0 ? " -> " : "", subs);
        fg->n = 0; /* the line above says them */
    }
}

static double per_s(uint64_t n, int64_t ns)
{
    return ns > 0 ? (double)n * 1e9 / (double)ns : 0;
}

/* ---- pubsub and fanout ---- */

typedef struct totals {
    uint64_t sent, acked, ack_errors, delivered, order_errors, bad;
    int64_t pub_end_ns, sub_end_ns;
    uint32_t closed;
} totals;

static void sum_group(const group *g, totals *t, bool pub)
{
    for (uint32_t i = 0; i < g->n; i++) {
        const rb_bench_sink *s = &g->sinks[i];
        t->sent += s->sent;
        t->acked += s->acked;
        t->ack_errors += s->ack_errors;
        t->delivered += s->delivered;
        t->order_errors += s->order_errors;
        t->bad += s->bad;
        int64_t *end = pub ? &t->pub_end_ns : &t->sub_end_ns;
        *end = s->last_ns > *end ? s->last_ns : *end;
        if (s->closed) {
            t->closed++;
            say("%s %u: %s", pub ? "publisher" : "subscriber", i + 1, s->why);
        }
    }
}

static void fig_shape(const bench *b, figure *fg)
{
    fig_u64(fg, "size", b->o.size, "B");
    fig_u64(fg, "publishers", b->o.publishers, "");
    fig_u64(fg, "subscribers", b->o.subscribers, "");
    fig_u64(fg, "topics", b->o.topics, "");
    fig_u64(fg, "window", b->o.window, "msgs");
    fig_f64(fg, "rate", b->o.rate, "msg/s (0 = unpaced)");
}

static int pubsub_report(bench *b, const group *pubs, const group *subs)
{
    totals t = {0};
    sum_group(pubs, &t, true);
    sum_group(subs, &t, false);
    uint64_t expected = b->o.count * subs->n;
    bool has_subs = subs->n > 0;
    int64_t end_ns = has_subs ? t.sub_end_ns : t.pub_end_ns;
    int64_t elapsed_ns = end_ns > b->t0_ns ? end_ns - b->t0_ns : 0;
    double rate = per_s(has_subs ? t.delivered : t.acked, elapsed_ns);
    bool complete = t.acked == b->o.count && t.ack_errors == 0 && t.delivered == expected &&
                    t.order_errors == 0 && t.bad == 0 && t.closed == 0;
    figure fg = {0};
    fig_head(b, &fg);
    fig_shape(b, &fg);
    fig_u64(&fg, "published", t.sent, "msgs");
    fig_u64(&fg, "acked", t.acked, "msgs");
    fig_u64(&fg, "ack_errors", t.ack_errors, "");
    fig_u64(&fg, "expected", expected, "deliveries");
    fig_u64(&fg, "delivered", t.delivered, "deliveries");
    fig_u64(&fg, "lost", expected > t.delivered ? expected - t.delivered : 0, "");
    fig_u64(&fg, "order_errors", t.order_errors + t.bad, "");
    fig_f64(&fg, "elapsed_s", (double)elapsed_ns / 1e9, "s");
    fig_f64(&fg, "pub_msgs_per_s", per_s(t.acked, t.pub_end_ns - b->t0_ns), "msg/s (acked)");
    fig_f64(&fg, "msgs_per_s", rate, has_subs ? "msg/s (delivered)" : "msg/s (acked)");
    fig_f64(&fg, "mb_per_s", rate * b->o.size / 1e6, "MB/s of payload");
    fig_bool(&fg, "complete", complete);
    fig_print(&fg, b->o.json);
    return complete ? 0 : EXIT_RUNTIME;
}

static int pubsub_measure(bench *b, group *pubs, group *subs)
{
    pub_quotas(pubs, b->o.count);
    sub_job job = {.b = b, .g = subs, .expected = b->o.count};
    pthread_t th;
    b->t0_ns = now_ns();
    if (subs->n > 0 && pthread_create(&th, NULL, sub_thread, &job) != 0) {
        say("pthread_create: %s", strerror(errno));
        return EXIT_RUNTIME;
    }
    pub_run(b, pubs);
    atomic_store(&b->pub_done_ns, now_ns());
    if (subs->n > 0) {
        pthread_join(th, NULL);
    }
    return pubsub_report(b, pubs, subs);
}

static int run_pubsub(bench *b)
{
    group subs = {0};
    group pubs = {0};
    int rc = group_open(b, &subs, b->o.subscribers, true, false);
    rc = rc ? rc : group_subscribe(b, &subs);
    rc = rc ? rc : group_open(b, &pubs, b->o.publishers, false, false);
    rc = rc ? rc : pubsub_measure(b, &pubs, &subs);
    group_close(b, &pubs);
    group_close(b, &subs);
    return rc;
}

/* ---- latency ---- */

static int latency_report(bench *b, const group *pubs, const group *subs)
{
    totals t = {0};
    sum_group(pubs, &t, true);
    sum_group(subs, &t, false);
    static hist all;
    memset(&all, 0, sizeof all);
    /* One histogram over every subscriber's deliveries. */
    for (uint32_t i = 0; i < subs->n; i++) {
        hist_merge(&all, subs->sinks[i].lat);
    }
    uint64_t expected = b->o.count * subs->n;
    int64_t elapsed_ns = t.sub_end_ns > b->t0_ns ? t.sub_end_ns - b->t0_ns : 0;
    bool complete = t.delivered == expected && t.acked == b->o.count && t.order_errors == 0 &&
                    t.bad == 0 && t.closed == 0;
    figure fg = {0};
    fig_head(b, &fg);
    fig_shape(b, &fg);
    fig_u64(&fg, "published", t.sent, "msgs");
    fig_u64(&fg, "delivered", t.delivered, "deliveries");
    fig_u64(&fg, "lost", expected > t.delivered ? expected - t.delivered : 0, "");
    fig_u64(&fg, "order_errors", t.order_errors + t.bad, "");
    fig_f64(&fg, "achieved_rate", per_s(t.delivered / subs->n, elapsed_ns), "msg/s");
    fig_f64(&fg, "p50_us", (double)hist_quantile(&all, 0.50) / 1e3, "us");
    fig_f64(&fg, "p90_us", (double)hist_quantile(&all, 0.90) / 1e3, "us");
    fig_f64(&fg, "p99_us", (double)hist_quantile(&all, 0.99) / 1e3, "us");
    fig_f64(&fg, "p999_us", (double)hist_quantile(&all, 0.999) / 1e3, "us");
    fig_f64(&fg, "max_us", (double)all.max / 1e3, "us");
    fig_f64(&fg, "mean_us", all.total > 0 ? all.sum / (double)all.total / 1e3 : 0, "us");
    fig_bool(&fg, "complete", complete);
    fig_print(&fg, b->o.json);
    return complete ? 0 : EXIT_RUNTIME;
}

/* One thread paces the publisher and reads the subscriber, so both use the
 * same clock; latency runs from each message's intended send time. */
static int latency_measure(bench *b, group *pubs, group *subs)
{
    poller pl;
    if (poller_init(&pl, pubs, subs) != 0) {
        poller_deinit(&pl);
        return EXIT_RUNTIME;
    }
    pub_quotas(pubs, b->o.count);
    b->t0_ns = now_ns();
    drain d = {0};
    for (;;) {
        uint64_t total;
        if (subs_done(subs, b->o.count, &total) && pubs_done(pubs)) {
            break;
        }
        int64_t now = now_ns();
        if (now >= b->deadline_ns || drain_over(b, &d, total, now)) {
            break;
        }
        int64_t wait_ns = pub_fill(b, pubs);
        if (atomic_load(&b->pub_done_ns) == 0 && pubs_done(pubs)) {
            atomic_store(&b->pub_done_ns, now_ns());
        }
        poller_turn(b, &pl, wait_ns);
    }
    poller_deinit(&pl);
    return latency_report(b, pubs, subs);
}

static int run_latency(bench *b)
{
    group subs = {0};
    group pubs = {0};
    int rc = group_open(b, &subs, b->o.subscribers, true, true);
    rc = rc ? rc : group_subscribe(b, &subs);
    rc = rc ? rc : group_open(b, &pubs, 1, false, false);
    rc = rc ? rc : latency_measure(b, &pubs, &subs);
    group_close(b, &pubs);
    group_close(b, &subs);
    return rc;
}

/* ---- catchup ---- */

static int catchup_report(bench *b, const group *pubs, const group *subs, int64_t replay_t0_ns)
{
    totals t = {0};
    sum_group(pubs, &t, true);
    sum_group(subs, &t, false);
    int64_t store_ns = t.pub_end_ns > b->t0_ns ? t.pub_end_ns - b->t0_ns : 0;
    int64_t replay_ns = t.sub_end_ns > replay_t0_ns ? t.sub_end_ns - replay_t0_ns : 0;
    double rate = per_s(t.delivered, replay_ns);
    bool complete = t.acked == b->o.count && t.delivered == b->o.count && t.order_errors == 0 &&
                    t.bad == 0 && t.closed == 0;
    figure fg = {0};
    fig_head(b, &fg);
    fig_u64(&fg, "size", b->o.size, "B");
    fig_u64(&fg, "window", b->o.window, "msgs");
    fig_str(&fg, "topic", b->topics[0]);
    fig_u64(&fg, "stored", t.acked, "msgs");
    fig_f64(&fg, "store_msgs_per_s", per_s(t.acked, store_ns), "msg/s (acked)");
    fig_u64(&fg, "delivered", t.delivered, "msgs");
    fig_u64(&fg, "lost", b->o.count > t.delivered ? b->o.count - t.delivered : 0, "");
    fig_u64(&fg, "order_errors", t.order_errors + t.bad, "");
    fig_f64(&fg, "elapsed_s", (double)replay_ns / 1e9, "s");
    fig_f64(&fg, "msgs_per_s", rate, "msg/s (replayed)");
    fig_f64(&fg, "mb_per_s", rate * b->o.size / 1e6, "MB/s of payload");
    fig_bool(&fg, "complete", complete);
    fig_print(&fg, b->o.json);
    return complete ? 0 : EXIT_RUNTIME;
}

/* Replays the stored topic to one fresh subscriber from its start. */
static void catchup_replay(bench *b, group *subs, int64_t *t0_ns)
{
    rb_bench_sink *s = &subs->sinks[0];
    poller pl;
    char why[WHY_BYTES] = "";
    if (poller_init(&pl, subs, NULL) != 0) {
        poller_deinit(&pl);
        return;
    }
    *t0_ns = now_ns();
    if (b->drv->replay(s->conn, b->topics[0], why, sizeof why) != RB_BENCH_OK) {
        rb_bench_sink_closed(s, why);
    }
    drain d = {0};
    atomic_store(&b->pub_done_ns, *t0_ns);
    while (!s->closed && s->delivered < b->o.count) {
        int64_t now = now_ns();
        if (now >= b->deadline_ns || drain_over(b, &d, s->delivered, now)) {
            break;
        }
        poller_turn(b, &pl, TICK_NS);
    }
    poller_deinit(&pl);
}

static int run_catchup(bench *b)
{
    if (b->drv->replay == NULL) {
        say("catchup: %s keeps no history to replay", b->drv->system);
        return EXIT_USAGE;
    }
    group subs = {0};
    group pubs = {0};
    int64_t replay_t0_ns = 0;
    int rc = group_open(b, &pubs, 1, false, false);
    if (rc == 0) {
        pub_quotas(&pubs, b->o.count);
        b->t0_ns = now_ns();
        pub_run(b, &pubs);
        rc = group_open(b, &subs, 1, true, false);
    }
    if (rc == 0) {
        catchup_replay(b, &subs, &replay_t0_ns);
        rc = catchup_report(b, &pubs, &subs, replay_t0_ns);
    }
    group_close(b, &pubs);
    group_close(b, &subs);
    return rc;
}

/* ---- conns ---- */

/* The resident set of pid in KiB, or -1. */
static long rss_kib(long pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) {
            break;
        }
    }
    fclose(f);
    return kib;
}

/* Makes room for n descriptors (plus stdio and slack) up to the hard
 * limit. */
static void raise_fd_limit(uint64_t n)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return;
    }
    rlim_t want = (rlim_t)n + 64;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Lets the connections idle (answering pings) for the settle time. */
static void conns_settle(bench *b, group *g)
{
    poller pl;
    if (poller_init(&pl, g, NULL) == 0) {
        int64_t until = now_ns() + CONNS_SETTLE_NS;
        int64_t now;
        while ((now = now_ns()) < until && now < b->deadline_ns) {
            poller_turn(b, &pl, until - now);
        }
    }
    poller_deinit(&pl);
}

static int run_conns(bench *b)
{
    long before = rss_kib(b->o.pid);
    if (before < 0) {
        say("conns: cannot read /proc/%ld/status: %s", b->o.pid, strerror(errno));
        return EXIT_RUNTIME;
    }
    raise_fd_limit(b->o.count);
    group g = {0};
    b->t0_ns = now_ns();
    int rc = group_open(b, &g, (uint32_t)b->o.count, false, false);
    int64_t open_ns = now_ns() - b->t0_ns;
    conns_settle(b, &g);
    long after = rss_kib(b->o.pid);
    uint32_t opened = g.n;
    bool complete = rc == 0 && opened == b->o.count && after >= 0;
    figure fg = {0};
    fig_head(b, &fg);
    fig_u64(&fg, "pid", (uint64_t)b->o.pid, "");
    fig_u64(&fg, "requested", b->o.count, "conns");
    fig_u64(&fg, "opened", opened, "conns");
    fig_f64(&fg, "open_s", (double)open_ns / 1e9, "s");
    fig_u64(&fg, "rss_before_kib", (uint64_t)before, "KiB");
    fig_u64(&fg, "rss_after_kib", (uint64_t)(after > 0 ? after : 0), "KiB");
    double per = opened > 0 && after >= before ? (double)(after - before) * 1024 / opened : 0;
    fig_f64(&fg, "bytes_per_conn", per, "B");
    fig_bool(&fg, "complete", complete);
    fig_print(&fg, b->o.json);
    group_close(b, &g);
    return complete ? 0 : EXIT_RUNTIME;
}

/* ---- options ---- */

static const char usage_text[] =
    "usage: ringbus [--url URL] bench MODE [OPTIONS]\n"
    "\n"
    "modes:\n"
    "  pubsub    P publishers -> S subscribers, each subscribed to all T topics\n"
    "  fanout    1 publisher -> S subscribers on one topic (S defaults to 8)\n"
    "  latency   publish -> deliver at a fixed rate to S subscribers (default 1);\n"
    "            percentiles over all deliveries from the intended send time\n"
    "            (corrected for coordinated omission)\n"
    "  catchup   store COUNT messages, then replay them to one subscriber from the start\n"
    "            (COUNT x SIZE must fit the store's retention, 64 MiB per topic by default)\n"
    "  conns     open COUNT idle connections; the daemon's RSS per connection (--pid)\n"
    "\n"
    "options:\n"
    "  --size BYTES        payload size, >= 16 (default 256)\n"
    "  --count N           messages (connections for conns); default 100000,\n"
    "                      latency: rate x 5 s, conns: 1000\n"
    "  --publishers P      publishing connections (pubsub; default 1)\n"
    "  --subscribers S     subscribing connections (pubsub 1, fanout 8, latency 1;\n"
    "                      pubsub allows 0)\n"
    "  --topics T          topics (pubsub; default 1)\n"
    "  --rate R            total publishes per second (latency default 10000; 0 = unpaced)\n"
    "  --window W          publishes in flight per publisher (default 4096)\n"
    "  --duration SECONDS  hard bound on the whole run (default 60)\n"
    "  --pid PID           the daemon's pid (conns)\n"
    "  --topic-prefix P    topics are P.t0, P.t1, ... (default bench)\n"
    "  --json              one JSON object per figure instead of a table\n"
    "  --url URL           server URL\n"
    "  --sub-url URL       the subscribers' server (default: --url), e.g. another\n"
    "                      node of a cluster; repeated (up to 8), subscribers are\n"
    "                      spread over them round-robin\n";

const char *rb_bench_usage(void)
{
    return usage_text;
}

static int usage_error(const char *what)
{
    say("%s (try ringbus bench --help)", what);
    return EXIT_USAGE;
}

static int parse_u64(const char *text, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = text[0] >= '0' && text[0] <= '9' ? strtoull(text, &end, 10) : 0;
    if (end == NULL || *end != '\0' || errno != 0 || v < lo || v > hi) {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_f64(const char *text, double lo, double hi, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || errno != 0 || !(v >= lo) || !(v <= hi)) {
        return -1;
    }
    *out = v;
    return 0;
}

/* The value of option name at argv[*i] ("--name=v" or "--name v"), or
 * NULL when argv[*i] is not that option. *missing is set when it is, but
 * has no value. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, bool *missing)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0 || (argv[*i][n] != '\0' && argv[*i][n] != '=')) {
        return NULL;
    }
    if (argv[*i][n] == '=') {
        return argv[*i] + n + 1;
    }
    if (*i + 1 < argc) {
        return argv[++*i];
    }
    *missing = true;
    return NULL;
}

typedef struct num_opt {
    const char *name;
    uint64_t lo, hi;
    size_t offset; /* of a uint32_t or uint64_t in opts */
    bool wide;
    const char *what;
} num_opt;

#define NUM(name, lo, hi, field, wide, what)                                                       \
    {                                                                                              \
        name, lo, hi, offsetof(opts, field), wide, what                                            \
    }

static const num_opt num_opts[] = {
    NUM("--size", HEAD_BYTES, SIZE_MAX_ALL, size, false, "--size needs 16..524288 bytes"),
    NUM("--count", 1, COUNT_MAX, count, true, "--count needs 1..1000000000"),
    NUM("--publishers", 1, PUBS_MAX, publishers, false, "--publishers needs 1..1024"),
    NUM("--subscribers", 0, SUBS_MAX, subscribers, false, "--subscribers needs 0..4096"),
    NUM("--topics", 1, TOPICS_MAX, topics, false, "--topics needs 1..4096"),
    NUM("--window", 1, WINDOW_MAX, window, false, "--window needs 1..1048576"),
};

/* Parses a numeric option; returns 1 when argv[*i] was one, 0 when not,
 * or -EXIT_USAGE. */
static int parse_num_opt(opts *o, int argc, char **argv, int *i)
{
    for (size_t k = 0; k < sizeof num_opts / sizeof num_opts[0]; k++) {
        const num_opt *no = &num_opts[k];
        bool missing = false;
        const char *v = opt_value(argc, argv, i, no->name, &missing);
        if (v == NULL && !missing) {
            continue;
        }
        uint64_t x;
        if (v == NULL || parse_u64(v, no->lo, no->hi, &x) != 0) {
            return -usage_error(no->what);
        }
        if (no->wide) {
            *(uint64_t *)(void *)((char *)o + no->offset) = x;
        } else {
            *(uint32_t *)(void *)((char *)o + no->offset) = (uint32_t)x;
        }
        o->count_set |= strcmp(no->name, "--count") == 0;
        o->subs_set |= strcmp(no->name, "--subscribers") == 0;
        return 1;
    }
    return 0;
}

/* Parses the other options; same results as parse_num_opt. */
static int parse_other_opt(opts *o, int argc, char **argv, int *i)
{
    bool missing = false;
    const char *v;
    double d;
    uint64_t x;
    if (strcmp(argv[*i], "--json") == 0) {
        o->json = true;
        return 1;
    }
    if ((v = opt_value(argc, argv, i, "--rate", &missing)) != NULL || missing) {
        if (v == NULL || parse_f64(v, 0, RATE_MAX, &o->rate) != 0) {
            return -usage_error("--rate needs 0..100000000 messages per second");
        }
        o->rate_set = true;
        return 1;
    }
    if ((v = opt_value(argc, argv, i, "--duration", &missing)) != NULL || missing) {
        if (v == NULL || parse_f64(v, 0.1, 86400, &d) != 0) {
            return -usage_error("--duration needs 0.1..86400 seconds");
        }
        o->duration_ns = (int64_t)(d * 1e9);
        return 1;
    }
    if ((v = opt_value(argc, argv, i, "--pid", &missing)) != NULL || missing) {
        if (v == NULL || parse_u64(v, 1, 0x7fffffff, &x) != 0) {
            return -usage_error("--pid needs a process id");
        }
        o->pid = (long)x;
        return 1;
    }
    if ((v = opt_value(argc, argv, i, "--url", &missing)) != NULL || missing) {
        o->url = v;
        return v != NULL ? 1 : -usage_error("--url needs a URL");
    }
    if ((v = opt_value(argc, argv, i, "--sub-url", &missing)) != NULL || missing) {
        if (v == NULL) {
            return -usage_error("--sub-url needs a URL");
        }
        if (o->sub_url_count == SUB_URLS_MAX) {
            return -usage_error("--sub-url: at most 8");
        }
        o->sub_urls[o->sub_url_count++] = v;
        return 1;
    }
    if ((v = opt_value(argc, argv, i, "--topic-prefix", &missing)) != NULL || missing) {
        o->prefix = v;
        return v != NULL && v[0] != '\0' && strlen(v) <= 64
                   ? 1
                   : -usage_error("--topic-prefix needs 1..64 bytes");
    }
    return 0;
}

/* Applies each mode's shape and defaults; returns 0 or EXIT_USAGE. */
static int mode_defaults(opts *o)
{
    bool single = o->mode == MODE_FANOUT || o->mode == MODE_LATENCY || o->mode == MODE_CATCHUP;
    if (single && (o->publishers != 1 || o->topics != 1)) {
        return usage_error("this mode has one publisher and one topic");
    }
    if (o->mode == MODE_LATENCY && o->subscribers == 0) {
        return usage_error("latency needs at least one subscriber");
    }
    if (o->mode == MODE_CATCHUP && o->subs_set && o->subscribers != 1) {
        return usage_error("this mode has one subscriber");
    }
    if (o->mode == MODE_FANOUT && !o->subs_set) {
        o->subscribers = FANOUT_SUBS_DEFAULT;
    }
    if (o->mode == MODE_FANOUT && o->subscribers == 0) {
        return usage_error("fanout needs at least one subscriber");
    }
    if (o->mode == MODE_LATENCY) {
        o->rate = o->rate_set ? o->rate : LATENCY_RATE_DEFAULT;
        if (o->rate <= 0) {
            return usage_error("latency needs a rate above 0");
        }
        o->count = o->count_set ? o->count : (uint64_t)(o->rate * LATENCY_SECONDS);
        o->count = o->count > 0 ? o->count : 1;
    }
    if (o->mode == MODE_CONNS) {
        o->count = o->count_set ? o->count : CONNS_DEFAULT;
        if (o->count > CONNS_MAX) {
            return usage_error("conns opens at most 200000 connections");
        }
        if (o->pid == 0) {
            return usage_error("conns needs --pid of the daemon");
        }
        o->window = 1;
    }
    if (o->mode == MODE_CATCHUP) {
        o->subscribers = 1;
    }
    return 0;
}

static int parse_mode(const char *name, mode *m)
{
    for (size_t i = 0; i < sizeof mode_names / sizeof mode_names[0]; i++) {
        if (strcmp(name, mode_names[i]) == 0) {
            *m = (mode)i;
            return 0;
        }
    }
    return -1;
}

/* Returns 0, EXIT_USAGE, or -1 after printing the help. */
static int parse_args(opts *o, int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        fputs(usage_text, stdout);
        return argc < 1 ? EXIT_USAGE : -1;
    }
    if (parse_mode(argv[0], &o->mode) != 0) {
        say("unknown mode \"%s\" (pubsub, fanout, latency, catchup, conns)", argv[0]);
        return EXIT_USAGE;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0) {
            fputs(usage_text, stdout);
            return -1;
        }
        int rc = parse_num_opt(o, argc, argv, &i);
        rc = rc != 0 ? rc : parse_other_opt(o, argc, argv, &i);
        if (rc < 0) {
            return -rc;
        }
        if (rc == 0) {
            say("bench %s: unexpected argument \"%s\" (try --help)", argv[0], argv[i]);
            return EXIT_USAGE;
        }
    }
    return mode_defaults(o);
}

/* ---- running ---- */

static int topics_init(bench *b)
{
    uint32_t n = b->o.topics;
    b->topics = calloc(n, sizeof *b->topics);
    b->topic_lens = calloc(n, sizeof *b->topic_lens);
    if (b->topics == NULL || b->topic_lens == NULL) {
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        char name[256];
        if (b->o.mode == MODE_CATCHUP) {
            snprintf(name, sizeof name, "%s.catchup.%s", b->o.prefix, b->run_id);
        } else {
            snprintf(name, sizeof name, "%s.t%u", b->o.prefix, i);
        }
        b->topics[i] = strdup(name);
        if (b->topics[i] == NULL) {
            return -1;
        }
        b->topic_lens[i] = strlen(name);
    }
    return 0;
}

static void bench_deinit(bench *b)
{
    for (uint32_t i = 0; b->topics != NULL && i < b->o.topics; i++) {
        free(b->topics[i]);
    }
    free(b->topics);
    free(b->topic_lens);
    free(b->payload);
    free(b->counters);
}

static int bench_init(bench *b)
{
    snprintf(b->run_id, sizeof b->run_id, "%ld-%" PRId64, (long)getpid(), now_ns());
    b->payload = calloc(1, b->o.size);
    b->counters = calloc((size_t)b->o.publishers * b->o.topics, sizeof *b->counters);
    if (b->payload == NULL || b->counters == NULL || topics_init(b) != 0) {
        say("out of memory");
        return EXIT_RUNTIME;
    }
    /* Filler bytes after the head, so that compression never flatters. */
    for (uint32_t i = HEAD_BYTES; i < b->o.size; i++) {
        b->payload[i] = (uint8_t)(i * 131u + 7u);
    }
    return 0;
}

static int run_mode(bench *b)
{
    switch (b->o.mode) {
    case MODE_PUBSUB:
    case MODE_FANOUT:
        return run_pubsub(b);
    case MODE_LATENCY:
        return run_latency(b);
    case MODE_CATCHUP:
        return run_catchup(b);
    case MODE_CONNS:
        return run_conns(b);
    }
    return EXIT_USAGE;
}

int rb_bench_main(const rb_bench_driver *drv, const char *url, int argc, char **argv)
{
    static bench b;
    memset(&b, 0, sizeof b);
    b.drv = drv;
    b.o = (opts){.url = url,
                 .prefix = "bench",
                 .size = SIZE_DEFAULT,
                 .count = COUNT_DEFAULT,
                 .publishers = 1,
                 .subscribers = 1,
                 .topics = 1,
                 .window = WINDOW_DEFAULT,
                 .duration_ns = DURATION_NS_DEFAULT};
    int rc = parse_args(&b.o, argc, argv);
    if (rc != 0) {
        return rc < 0 ? 0 : rc;
    }
    rc = bench_init(&b);
    /* Paced sends wake from timed polls: the default 50 us timer slack
     * would be measured as latency. */
    (void)prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    b.deadline_ns = now_ns() + b.o.duration_ns;
    char why[WHY_BYTES] = "";
    if (rc == 0 && drv->prepare != NULL &&
        drv->prepare(b.o.url, b.o.prefix, connect_deadline(&b), why, sizeof why) != 0) {
        say("prepare %s: %s", b.o.url, why);
        rc = EXIT_RUNTIME;
    }
    if (rc == 0) {
        rc = run_mode(&b);
        if (drv->cleanup != NULL) {
            drv->cleanup(b.o.url, b.o.prefix, now_ns() + CONNECT_NS_MAX);
        }
    }
    if (rc == EXIT_RUNTIME && now_ns() >= b.deadline_ns) {
        say("the run hit its --duration bound before it completed");
    }
    bench_deinit(&b);
    return rc;
}

/* ---- the ringbus driver ---- */

typedef struct rbd {
    ringbus_conn *conn;
    rb_bench_sink *sink;
    bool wave_done;
} rbd;

static void rbd_event(const ringbus_event *ev, void *ctx)
{
    rbd *d = ctx;
    char why[WHY_BYTES];
    switch (ev->kind) {
    case RINGBUS_EVENT_MESSAGE:
        rb_bench_sink_message(d->sink, ev->payload, ev->payload_len);
        break;
    case RINGBUS_EVENT_CATCHUP_COMPLETE:
        d->wave_done = true;
        rb_bench_sink_complete(d->sink);
        break;
    case RINGBUS_EVENT_ERROR:
    case RINGBUS_EVENT_TOPIC_ERROR:
    case RINGBUS_EVENT_CLOSED:
        snprintf(why, sizeof why, "%s: %s: %s",
                 ev->kind == RINGBUS_EVENT_ERROR         ? "server error"
                 : ev->kind == RINGBUS_EVENT_TOPIC_ERROR ? "topic error"
                                                         : "closed",
                 ringbus_wire_code_name(ev->code), ev->message);
        rb_bench_sink_closed(d->sink, why);
        break;
    case RINGBUS_EVENT_TOPICS_LIVE:
    case RINGBUS_EVENT_REQUEST:
    case RINGBUS_EVENT_RESPONSE:
    case RINGBUS_EVENT_RECONNECTING: /* sessions only; the bench uses plain connections */
    case RINGBUS_EVENT_RECONNECTED:
    case RINGBUS_EVENT_LAGGED: /* ephemeral topics: the skipped ones never reach the sink */
        break;
    }
}

static void rbd_acked(const ringbus_publish_result *res, void *ctx)
{
    rb_bench_sink_acked(ctx, res->status == 0 ? 1 : 0, res->status == 0 ? 0 : 1);
}

static int ms_until(int64_t deadline_ns)
{
    int64_t left = deadline_ns - now_ns();
    return left <= 0 ? 0 : (int)((left + 999999) / 1000000);
}

static const char *rbd_ca_file;
static bool rbd_insecure;
static int rbd_tls_library;

void rb_bench_set_tls(const char *ca_file, bool insecure, int tls_library)
{
    rbd_ca_file = ca_file;
    rbd_insecure = insecure;
    rbd_tls_library = tls_library;
}

static const char *rbd_ws_origin;

void rb_bench_set_ws_origin(const char *origin)
{
    rbd_ws_origin = origin;
}

static struct {
    const char *token, *user, *password, *cert_file, *key_file;
    size_t password_len;
} rbd_sign_in;

void rb_bench_set_sign_in(const char *token, const char *user, const char *password,
                          size_t password_len, const char *cert_file, const char *key_file)
{
    rbd_sign_in.token = token;
    rbd_sign_in.user = user;
    rbd_sign_in.password = password;
    rbd_sign_in.password_len = password_len;
    rbd_sign_in.cert_file = cert_file;
    rbd_sign_in.key_file = key_file;
}

static int rbd_connect(const char *url, uint32_t window, int64_t deadline_ns, rb_bench_sink *sink,
                       void **conn, char *why, size_t why_bytes)
{
    rbd *d = calloc(1, sizeof *d);
    if (d == NULL) {
        snprintf(why, why_bytes, "out of memory");
        return RB_BENCH_FAIL;
    }
    d->sink = sink;
    ringbus_options o;
    ringbus_options_init(&o);
    o.client_name = "ringbus-bench";
    o.tls_ca_file = rbd_ca_file;
    o.tls_insecure = rbd_insecure;
    o.tls_library = rbd_tls_library;
    o.ws_origin = rbd_ws_origin;
    o.token = rbd_sign_in.token;
    o.user = rbd_sign_in.user;
    o.password = rbd_sign_in.password;
    o.password_len = rbd_sign_in.password_len;
    o.tls_cert_file = rbd_sign_in.cert_file;
    o.tls_key_file = rbd_sign_in.key_file;
    o.connect_timeout_ms = ms_until(deadline_ns) > 0 ? ms_until(deadline_ns) : 1;
    o.publish_window = window;
    o.on_event = rbd_event;
    o.event_ctx = d;
    ringbus_error err;
    if (ringbus_connect(url, &o, &d->conn, &err) != 0) {
        snprintf(why, why_bytes, "%s", err.message);
        free(d);
        return RB_BENCH_FAIL;
    }
    *conn = d;
    return RB_BENCH_OK;
}

/* Waits for the wave of the Mutate just queued to complete. */
static int rbd_wait_wave(rbd *d, int64_t deadline_ns, char *why, size_t why_bytes)
{
    ringbus_error err;
    while (!d->wave_done) {
        int left_ms = ms_until(deadline_ns);
        if (left_ms == 0) {
            snprintf(why, why_bytes, "timed out waiting for CATCHUP_COMPLETE");
            return RB_BENCH_FAIL;
        }
        if (ringbus_process(d->conn, left_ms, &err) < 0) {
            snprintf(why, why_bytes, "%s", err.message);
            return RB_BENCH_FAIL;
        }
    }
    return RB_BENCH_OK;
}

static int rbd_subscribe(void *conn, const char *const *topics, uint32_t topic_count,
                         int64_t deadline_ns, char *why, size_t why_bytes)
{
    rbd *d = conn;
    ringbus_add *adds = calloc(topic_count, sizeof *adds);
    if (adds == NULL) {
        snprintf(why, why_bytes, "out of memory");
        return RB_BENCH_FAIL;
    }
    for (uint32_t i = 0; i < topic_count; i++) {
        adds[i] = (ringbus_add){.topic = topics[i], .is_now = true};
    }
    ringbus_error err;
    d->wave_done = false;
    int rc = ringbus_mutate(d->conn, 1, adds, topic_count, NULL, 0, false, &err);
    free(adds);
    if (rc != 0) {
        snprintf(why, why_bytes, "%s", err.message);
        return RB_BENCH_FAIL;
    }
    return rbd_wait_wave(d, deadline_ns, why, why_bytes);
}

static int rbd_replay(void *conn, const char *topic, char *why, size_t why_bytes)
{
    rbd *d = conn;
    ringbus_add add = {.topic = topic, .cursor = 0};
    ringbus_error err;
    d->wave_done = false;
    if (ringbus_mutate(d->conn, 2, &add, 1, NULL, 0, true, &err) != 0) {
        snprintf(why, why_bytes, "%s", err.message);
        return RB_BENCH_FAIL;
    }
    return RB_BENCH_OK;
}

static int rbd_publish(void *conn, const char *topic, size_t topic_len, const void *payload,
                       size_t len)
{
    rbd *d = conn;
    int rc =
        ringbus_publish(d->conn, topic, topic_len, payload, len, NULL, NULL, rbd_acked, d->sink);
    if (rc == RINGBUS_EAGAIN) {
        return RB_BENCH_FULL;
    }
    return rc == 0 ? RB_BENCH_OK : RB_BENCH_FAIL;
}

static int rbd_flush(void *conn)
{
    rbd *d = conn;
    return ringbus_flush(d->conn, NULL) == 0 ? RB_BENCH_OK : RB_BENCH_FAIL;
}

static int rbd_fd(void *conn)
{
    return ringbus_fd(((rbd *)conn)->conn);
}

static bool rbd_want_write(void *conn)
{
    return ringbus_want_write(((rbd *)conn)->conn);
}

static int rbd_process(void *conn)
{
    rbd *d = conn;
    return ringbus_process(d->conn, 0, NULL) >= 0 ? RB_BENCH_OK : RB_BENCH_FAIL;
}

static void rbd_close(void *conn)
{
    rbd *d = conn;
    ringbus_close(d->conn);
    free(d);
}

const rb_bench_driver rb_bench_ringbus_driver = {
    .system = "ringbus",
    .connect = rbd_connect,
    .subscribe = rbd_subscribe,
    .replay = rbd_replay,
    .publish = rbd_publish,
    .flush = rbd_flush,
    .fd = rbd_fd,
    .want_write = rbd_want_write,
    .process = rbd_process,
    .close = rbd_close,
};

int rb_bench_cli(int argc, char **argv, const char *url)
{
    return rb_bench_main(&rb_bench_ringbus_driver, url, argc, argv);
}
