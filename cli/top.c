/* `ringbus top` (cli/top.h): samples GET /metrics and GET /v1/connz of
 * one daemon over plain HTTP/1.1, prints connections by transport, the
 * rates between two samples and the slowest consumers (the connections
 * with the most send-queue bytes). Live mode redraws the terminal every
 * interval until interrupted; --once prints one plain-text snapshot (two
 * samples an interval apart, for the rates) and exits. Everything a peer
 * chose (identity, client name) is printed with non-printable bytes
 * replaced, so it cannot drive the terminal. */
#include "cli/top.h"

#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The largest answer top reads (a /v1/connz page is far below it). */
#define TOP_BODY_BYTES_MAX ((size_t)1 << 20)
/* Rows of the slowest-consumers table: default and most. */
#define TOP_ROWS_DEFAULT 10
#define TOP_ROWS_MAX     100
/* Seconds between samples: default, least and most. */
#define TOP_INTERVAL_DEFAULT_S 2.0
#define TOP_INTERVAL_MIN_S     0.1
#define TOP_INTERVAL_MAX_S     3600.0
#define TOP_HOST_BYTES_MAX     256
#define TRANSPORTS             6

static const char *const transports[TRANSPORTS] = {"tcp", "tls", "ws", "wss", "quic", "http"};

static const char top_usage[] =
    "usage: ringbus top [--admin URL] [--interval SECONDS] [--rows N] [--once]\n"
    "  --admin URL         the daemon's http listener (default " RB_TOP_DEFAULT_ADMIN ")\n"
    "  --interval SECONDS  time between samples, 0.1..3600 (default 2)\n"
    "  --rows N            slowest consumers shown, 1..100 (default 10)\n"
    "  --once              print one plain-text snapshot (rates over one interval) and exit\n";

typedef struct target {
    char host[TOP_HOST_BYTES_MAX];
    char port[8];
    int timeout_ms;
} target;

typedef struct sample {
    double conns[TRANSPORTS];
    double pub_ok, pub_err, deliveries, frames_in, bytes_in, bytes_out, slow_closes, uptime_s;
    double at_s;   /* CLOCK_MONOTONIC seconds */
    json_t *connz; /* the /v1/connz answer, owned */
} sample;

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void say(const char *what, const char *detail)
{
    fprintf(stderr, "ringbus top: %s%s%s\n", what, detail[0] != '\0' ? ": " : "", detail);
}

/* http://host[:port] with an optional trailing '/'; IPv6 as [::1]. */
static bool parse_admin(const char *url, target *t)
{
    const char *p = strncmp(url, "http://", 7) == 0 ? url + 7 : NULL;
    if (p == NULL || *p == '\0') {
        return false;
    }
    const char *host_end;
    const char *rest;
    if (*p == '[') {
        host_end = strchr(p, ']');
        if (host_end == NULL) {
            return false;
        }
        p++;
        rest = host_end + 1;
    } else {
        host_end = p + strcspn(p, ":/");
        rest = host_end;
    }
    size_t hlen = (size_t)(host_end - p);
    if (hlen == 0 || hlen >= sizeof t->host) {
        return false;
    }
    memcpy(t->host, p, hlen);
    t->host[hlen] = '\0';
    snprintf(t->port, sizeof t->port, "7420");
    if (*rest == ':') {
        char *end;
        long port = strtol(rest + 1, &end, 10);
        if (end == rest + 1 || port < 1 || port > 65535) {
            return false;
        }
        snprintf(t->port, sizeof t->port, "%ld", port);
        rest = end;
    }
    return *rest == '\0' || strcmp(rest, "/") == 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits for fd to be ready for events within the deadline. */
static bool wait_fd(int fd, short events, double deadline)
{
    int left = (int)((deadline - now_s()) * 1000.0);
    if (left <= 0) {
        return false;
    }
    struct pollfd p = {.fd = fd, .events = events};
    return poll(&p, 1, left) == 1;
}

static int dial(const target *t, double deadline)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(t->host, t->port, &hints, &res) != 0) {
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = res; a != NULL && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            continue;
        }
        int err = 0;
        socklen_t len = sizeof err;
        if ((connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) ||
            !wait_fd(fd, POLLOUT, deadline) ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

/* GET path: the body (malloc'd, NUL-terminated) of a 200 answer, or NULL
 * after saying why. The server closes after one answer. */
static char *http_get(const target *t, const char *path)
{
    double deadline = now_s() + t->timeout_ms / 1000.0;
    int fd = dial(t, deadline);
    if (fd < 0) {
        say("cannot connect to the admin listener", t->host);
        return NULL;
    }
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                     path, t->host);
    char *buf = malloc(TOP_BODY_BYTES_MAX + 1);
    size_t len = 0;
    bool ok = buf != NULL && send(fd, req, (size_t)n, MSG_NOSIGNAL) == n;
    while (ok && len < TOP_BODY_BYTES_MAX) {
        if (!wait_fd(fd, POLLIN, deadline)) {
            ok = false;
            break;
        }
        ssize_t got = recv(fd, buf + len, TOP_BODY_BYTES_MAX - len, 0);
        if (got <= 0) {
            ok = got == 0;
            break;
        }
        len += (size_t)got;
    }
    close(fd);
    if (!ok || len == 0) {
        say("no answer from the admin listener for", path);
        free(buf);
        return NULL;
    }
    buf[len] = '\0';
    char *body = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.1 200 ", 13) != 0 || body == NULL) {
        char *eol = strchr(buf, '\r');
        if (eol != NULL) {
            *eol = '\0';
        }
        say(path, buf);
        free(buf);
        return NULL;
    }
    memmove(buf, body + 4, len - (size_t)(body + 4 - buf) + 1);
    return buf;
}

/* One sample line "name{labels} value" into s. */
static void metric_line(sample *s, const char *line)
{
    char name[128];
    char labels[256] = "";
    double v;
    if (sscanf(line, "%127[a-z_]{%255[^}]} %lf", name, labels, &v) != 3 &&
        sscanf(line, "%127[a-z_] %lf", name, &v) != 2) {
        return;
    }
    if (strcmp(name, "ringbus_connections") == 0) {
        for (int k = 0; k < TRANSPORTS; k++) {
            char want[32];
            snprintf(want, sizeof want, "transport=\"%s\"", transports[k]);
            s->conns[k] += strcmp(labels, want) == 0 ? v : 0;
        }
    } else if (strcmp(name, "ringbus_publishes_total") == 0) {
        *(strcmp(labels, "outcome=\"ok\"") == 0 ? &s->pub_ok : &s->pub_err) += v;
    }
    struct {
        const char *name;
        double *to;
    } plain[] = {{"ringbus_deliveries_total", &s->deliveries},
                 {"ringbus_frames_received_total", &s->frames_in},
                 {"ringbus_received_bytes_total", &s->bytes_in},
                 {"ringbus_delivery_bytes_total", &s->bytes_out},
                 {"ringbus_slow_consumer_closes_total", &s->slow_closes},
                 {"ringbus_uptime_seconds", &s->uptime_s}};
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        if (strcmp(name, plain[i].name) == 0) {
            *plain[i].to = v;
        }
    }
}

static bool take_sample(const target *t, int rows, sample *s)
{
    memset(s, 0, sizeof *s);
    char *metrics = http_get(t, "/metrics");
    if (metrics == NULL) {
        return false;
    }
    for (char *line = strtok(metrics, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (line[0] != '#') {
            metric_line(s, line);
        }
    }
    free(metrics);
    char path[96];
    snprintf(path, sizeof path, "/v1/connz?state=open&sort=pending&limit=%d", rows);
    char *body = http_get(t, path);
    if (body == NULL) {
        return false;
    }
    json_error_t jerr;
    s->connz = json_loads(body, 0, &jerr);
    free(body);
    if (s->connz == NULL) {
        say("/v1/connz is not JSON", jerr.text);
        return false;
    }
    s->at_s = now_s();
    return true;
}

/* A peer's string for the terminal: printable ASCII, the rest '?', cut to
 * width. */
static void put_cell(const char *text, int width)
{
    char cell[64];
    int n = 0;
    for (const char *p = text != NULL ? text : ""; *p != '\0' && n < width && n < 63; p++) {
        cell[n++] = (*p >= 0x20 && *p < 0x7f) ? *p : '?';
    }
    cell[n] = '\0';
    printf("%-*s ", width, cell);
}

static const char *jstr(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v != NULL ? v : "";
}

static long long jint(const json_t *o, const char *key)
{
    return (long long)json_integer_value(json_object_get(o, key));
}

static double rate(double now, double before, double dt)
{
    return dt > 0 && now >= before ? (now - before) / dt : 0;
}

static void print_view(const target *t, const sample *a, const sample *b, int rows)
{
    double dt = a != NULL ? b->at_s - a->at_s : 0;
    double clients = 0;
    for (int k = 0; k < TRANSPORTS - 1; k++) {
        clients += b->conns[k];
    }
    printf("ringbus top  http://%s:%s  server %s  up %.0f s\n", t->host, t->port,
           jstr(b->connz, "server_id"), b->uptime_s);
    printf("connections: %.0f (tcp %.0f, tls %.0f, ws %.0f, wss %.0f, quic %.0f) + http %.0f\n",
           clients, b->conns[0], b->conns[1], b->conns[2], b->conns[3], b->conns[4], b->conns[5]);
    if (a != NULL) {
        printf("rates over %.1f s: publishes %.1f/s ok, %.1f/s error; deliveries %.1f/s; "
               "frames in %.1f/s; bytes in %.0f/s, out %.0f/s\n",
               dt, rate(b->pub_ok, a->pub_ok, dt), rate(b->pub_err, a->pub_err, dt),
               rate(b->deliveries, a->deliveries, dt), rate(b->frames_in, a->frames_in, dt),
               rate(b->bytes_in, a->bytes_in, dt), rate(b->bytes_out, a->bytes_out, dt));
    }
    printf("totals: publishes %.0f ok, %.0f error; deliveries %.0f; slow-consumer closes %.0f\n\n",
           b->pub_ok, b->pub_err, b->deliveries, b->slow_closes);
    printf("slowest consumers (by send-queue bytes, top %d):\n", rows);
    printf("%-8s %-9s %-22s %-16s %-16s %10s %10s %10s %6s %8s\n", "CID", "TRANSPORT", "PEER",
           "IDENTITY", "NAME", "PENDING", "OUT_MSGS", "IN_MSGS", "TOPICS", "AGE_S");
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(b->connz, "connections"), i, c)
    {
        printf("%-8lld ", jint(c, "cid"));
        put_cell(jstr(c, "transport"), 9);
        put_cell(jstr(c, "peer"), 22);
        put_cell(jstr(c, "identity"), 16);
        put_cell(jstr(c, "name"), 16);
        printf("%10lld %10lld %10lld %6lld %8.1f\n", jint(c, "pending_bytes"), jint(c, "out_msgs"),
               jint(c, "in_msgs"), jint(c, "topics"), (double)jint(c, "age_ms") / 1000.0);
    }
    fflush(stdout);
}

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static int top_run(const target *t, double interval_s, int rows, bool once)
{
    sample prev = {0};
    sample cur = {0};
    bool have_prev = false;
    if (once) {
        if (!take_sample(t, rows, &prev)) {
            json_decref(prev.connz);
            return 1;
        }
        sleep_s(interval_s);
        int rc = take_sample(t, rows, &cur) ? 0 : 1;
        if (rc == 0) {
            print_view(t, &prev, &cur, rows);
        }
        json_decref(prev.connz);
        json_decref(cur.connz);
        return rc;
    }
    signal(SIGINT, on_sigint);
    signal(SIGTERM, on_sigint);
    /* Until interrupted: sample, redraw, wait. */
    while (!interrupted) {
        if (!take_sample(t, rows, &cur)) {
            json_decref(cur.connz);
            json_decref(prev.connz);
            return 1;
        }
        fputs("\033[H\033[2J", stdout);
        print_view(t, have_prev ? &prev : NULL, &cur, rows);
        json_decref(prev.connz);
        prev = cur;
        cur.connz = NULL;
        have_prev = true;
        sleep_s(interval_s);
    }
    json_decref(prev.connz);
    return 0;
}

int rb_top_cli(int argc, char **argv, int timeout_ms)
{
    target t = {.timeout_ms = timeout_ms};
    const char *admin = RB_TOP_DEFAULT_ADMIN;
    double interval_s = TOP_INTERVAL_DEFAULT_S;
    int rows = TOP_ROWS_DEFAULT;
    bool once = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        char *end = NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(top_usage, stdout);
            return 0;
        } else if (strcmp(a, "--once") == 0) {
            once = true;
        } else if (strcmp(a, "--admin") == 0 && has_value) {
            admin = argv[++i];
        } else if (strcmp(a, "--interval") == 0 && has_value) {
            interval_s = strtod(argv[++i], &end);
            if (*end != '\0' || !(interval_s >= TOP_INTERVAL_MIN_S) ||
                interval_s > TOP_INTERVAL_MAX_S) {
                say("--interval needs seconds in [0.1, 3600]", argv[i]);
                return 2;
            }
        } else if (strcmp(a, "--rows") == 0 && has_value) {
            long v = strtol(argv[++i], &end, 10);
            if (*end != '\0' || v < 1 || v > TOP_ROWS_MAX) {
                say("--rows needs an integer in [1, 100]", argv[i]);
                return 2;
            }
            rows = (int)v;
        } else {
            say("unknown option or missing value (try ringbus top --help)", a);
            return 2;
        }
    }
    if (!parse_admin(admin, &t)) {
        say("--admin needs http://host[:port]", admin);
        return 2;
    }
    return top_run(&t, interval_s, rows, once);
}
