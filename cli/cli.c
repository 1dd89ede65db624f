/* The `ringbus` command-line client: ping, pub, sub and stream over
 * libringbus (pub, sub and stream on its resilient session, which
 * reconnects), printing one JSON line per event on stdout (flushed per line)
 * and one clear line on stderr per failure. Exit status: 0 success, 1 a
 * runtime failure, 2 a usage error. The protocol itself is left to the
 * library; JSON output to json.c and stream commands (parsed by libjansson)
 * to cmdjson.c. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "cli/cmdjson.h"
#include "cli/json.h"
#include "cli/top.h"
#include "client/ringbus.h"
#include "common/assert.h"
#include "common/frame.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE   2

#define DEFAULT_URL        "tcp://127.0.0.1:7400"
#define DEFAULT_TIMEOUT_MS 10000
/* A stdin line (a payload or a stream command) may not exceed this. */
#define LINE_BYTES_MAX ((size_t)8 << 20)
/* Publishes of `pub` in flight; acks print in publish order from a ring
 * of this size. */
#define PUB_WINDOW 4096
/* The poll tick of loops that may run forever (sub, stream). */
#define TICK_MS 1000

static const char usage_text[] =
    "usage: ringbus [--url URL]... [--no-reconnect] [--timeout SECONDS] [--name NAME] [--ca FILE]\n"
    "               [--insecure]\n"
    "               [--tls-library openssl|wolfssl] [--origin ORIGIN] [--token TOKEN | "
    "--token-file FILE |\n"
    "               --user NAME --password-file FILE] [--cert FILE --key FILE]\n"
    "               COMMAND [ARGS]\n"
    "\n"
    "  --url URL          server URL (default " DEFAULT_URL "); tcp://host[:port],\n"
    "                     IPv6 as tcp://[::1]:7400, tls://host[:port],\n"
    "                     ws://host[:port][/path], wss://host[:port][/path],\n"
    "                     quic://host[:port] (UDP); give --url again (or URLs separated\n"
    "                     by commas, at most 16) for failover: pub, sub and stream\n"
    "                     reconnect to the next one after a loss\n"
    "  --no-reconnect     pub, sub, stream: end at the first loss of the connection\n"
    "                     (by default they reconnect with backoff, re-add their topics\n"
    "                     after the last message printed and re-send unacknowledged\n"
    "                     publishes with their idempotency keys; a reconnect prints\n"
    "                     {\"event\":\"reconnecting\",...} and {\"event\":\"reconnected\",...});\n"
    "                     every such key holds a place in the server's dedup table for its\n"
    "                     window, so pub to one topic faster than [dedup] keys_per_topic per\n"
    "                     window_ms (about 546/s by default) gets dedup_full: raise them, or\n"
    "                     give --no-reconnect (no keys, nothing re-sent)\n"
    "  --ca FILE          tls, wss, quic: trust the CAs in FILE (PEM) instead of the system store\n"
    "  --insecure         tls, wss, quic: do not verify the server certificate (testing only)\n"
    "  --tls-library LIB  tls, wss: openssl (default) or wolfssl\n"
    "  --origin ORIGIN    ws, wss: send this Origin header (for listeners with origins)\n"
    "  --token TOKEN      sign in with a JWT (visible to other local users in ps;\n"
    "                     prefer --token-file)\n"
    "  --token-file FILE  sign in with the JWT in FILE (one trailing newline is dropped)\n"
    "  --user NAME        sign in as NAME with the password in --password-file\n"
    "  --password-file FILE  the password: FILE's first line\n"
    "  --cert FILE, --key FILE  tls, wss: client certificate and key (PEM) for\n"
    "                     listeners with client_ca\n"
    "  --timeout SECONDS  connect and request timeout (default 10)\n"
    "  --name NAME        client name sent to the server\n"
    "  --help, --version\n"
    "\n"
    "commands:\n"
    "  ping [--count N]                 round-trip time to the server\n"
    "  pub TOPIC [PAYLOAD]              publish PAYLOAD, or each stdin line (a trailing CR\n"
    "                                   is dropped); print each ack\n"
    "  pub --file PATH TOPIC            publish the whole file (- = all of stdin) as one message\n"
    "  pub --key KEY TOPIC PAYLOAD      (or with --file) publish with idempotency key KEY\n"
    "                                   (1..255 bytes): a repeat within the server's dedup\n"
    "                                   window prints the original ack with \"duplicate\":true\n"
    "                                   (after pub, --key is this key; give the TLS --key\n"
    "                                   before the command)\n"
    "  sub [--history-only] [--count N] [--timeout SECONDS] TOPIC[@CURSOR]...\n"
    "                                   subscribe; CURSOR is a seq, 0 or now (default);\n"
    "                                   exits 1 when --timeout ends the run before --count\n"
    "                                   messages (or the --history-only history) arrived,\n"
    "                                   and on a topic_error (a cursor the store cannot serve);\n"
    "                                   an ephemeral topic that dropped messages for a slow\n"
    "                                   reader prints "
    "{\"event\":\"lagged\",\"topic\":...,\"skipped\":N}\n"
    "                                   and goes on (--count counts messages only)\n"
    "  stream                           JSON commands on stdin, JSON events on stdout; the\n"
    "                                   first event is started (server_id, epoch). One strict\n"
    "                                   JSON object a line (seqs, cursors and epochs up to\n"
    "                                   2^64-1); a bad line ends the run, naming its line and\n"
    "                                   column\n"
    "  serve [--as SERVICE] METHOD -- COMMAND [ARGS]\n"
    "                                   answer calls of METHOD (under this connection's client\n"
    "                                   id, or in SERVICE's group of responders), one at a time:\n"
    "                                   COMMAND runs with the payload on stdin; its stdout is\n"
    "                                   the response (a non-zero exit: an application error);\n"
    "                                   prints {\"event\":\"serving\",\"client_id\":...} first\n"
    "  call DESTINATION METHOD [PAYLOAD] [--timeout-ms N]\n"
    "                                   call METHOD at DESTINATION (a client id or a service);\n"
    "                                   prints the response payload and exits 0, or prints the\n"
    "                                   error code name on stderr and exits 1\n"
    "  bench MODE [OPTIONS]             load and measure (ringbus bench --help)\n"
    "  top [--admin URL] [--interval SECONDS] [--rows N] [--once]\n"
    "                                   live view of a daemon from its http listener's\n"
    "                                   /metrics and /v1/connz (default " RB_TOP_DEFAULT_ADMIN
    "):\n"
    "                                   connections, rates, slowest consumers; --once prints\n"
    "                                   one plain-text snapshot (ringbus top --help)\n";

typedef struct cli {
    const char *url; /* the first of urls */
    const char *urls[RINGBUS_SESSION_URLS_MAX];
    size_t url_count;                          /* 0 = DEFAULT_URL */
    char *url_lists[RINGBUS_SESSION_URLS_MAX]; /* owned: copies of comma-separated --url values */
    size_t url_list_count;
    bool no_reconnect; /* --no-reconnect */
    const char *name;
    const char *ca_file;       /* --ca */
    bool insecure;             /* --insecure */
    int tls_library;           /* --tls-library: RINGBUS_TLS_OPENSSL | RINGBUS_TLS_WOLFSSL */
    const char *origin;        /* --origin */
    const char *token;         /* --token */
    const char *token_file;    /* --token-file */
    const char *user;          /* --user */
    const char *password_file; /* --password-file */
    const char *cert_file;     /* --cert */
    const char *key_file;      /* --key */
    int timeout_ms;
    ringbus_conn *conn;       /* ping, serve, call */
    ringbus_session *session; /* pub, sub, stream */
    rb_json_buf out;
    bool closed; /* a CLOSED event was printed */
    int closed_status;
    bool failed; /* something printed makes the exit status nonzero */
} cli;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One line on stderr, prefixed with the program name. */
static void say(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "ringbus: %s\n", line);
}

static int usage_error(const char *what)
{
    say("%s (try --help)", what);
    return EXIT_USAGE;
}

/* ---- output ---- */

static void emit(cli *c)
{
    if (c->out.oom) {
        say("out of memory formatting output");
        exit(EXIT_RUNTIME);
    }
    rb_json_put_raw(&c->out, "\n", 1);
    fwrite(c->out.ptr, 1, c->out.len, stdout);
    fflush(stdout);
    rb_json_buf_reset(&c->out);
}

static void put_key(rb_json_buf *b, const char *key)
{
    rb_json_put_raw(b, ",", 1);
    rb_json_put_str(b, key, strlen(key));
    rb_json_put_raw(b, ":", 1);
}

static void put_payload(rb_json_buf *b, const void *payload, size_t len)
{
    if (rb_utf8_valid(payload, len)) {
        put_key(b, "data");
        rb_json_put_str(b, payload, len);
    } else {
        put_key(b, "data_b64");
        rb_json_put_base64(b, payload, len);
    }
}

/* ,"key":"the wire code's name" */
static void put_code(rb_json_buf *b, const char *key, int code)
{
    const char *name = ringbus_wire_code_name(code);
    put_key(b, key);
    rb_json_put_str(b, name, strlen(name));
}

/* ,"key":"text" */
static void put_text(rb_json_buf *b, const char *key, const char *text)
{
    put_key(b, key);
    rb_json_put_str(b, text, strlen(text));
}

static void put_error(cli *c, int code, const char *message)
{
    rb_json_put_raw(&c->out, "{\"event\":\"error\"", 16);
    put_code(&c->out, "code", code);
    put_text(&c->out, "message", message);
    rb_json_put_raw(&c->out, "}", 1);
}

static void put_topics(rb_json_buf *b, const char *const *topics, size_t count)
{
    rb_json_put_raw(b, "[", 1);
    for (size_t i = 0; i < count; i++) {
        if (i > 0) {
            rb_json_put_raw(b, ",", 1);
        }
        rb_json_put_str(b, topics[i], strlen(topics[i]));
    }
    rb_json_put_raw(b, "]", 1);
}

static void print_event(cli *c, const ringbus_event *ev)
{
    rb_json_buf *b = &c->out;
    switch (ev->kind) {
    case RINGBUS_EVENT_MESSAGE:
        rb_json_put_raw(b, "{\"event\":\"message\"", 18);
        put_key(b, "topic");
        rb_json_put_str(b, ev->topic, ev->topic_len);
        put_key(b, "seq");
        rb_json_put_u64(b, ev->seq);
        put_payload(b, ev->payload, ev->payload_len);
        if (ev->mutate_id != 0) {
            put_key(b, "mutate_id");
            rb_json_put_u64(b, ev->mutate_id);
        }
        break;
    case RINGBUS_EVENT_TOPICS_LIVE:
        rb_json_put_raw(b, "{\"event\":\"topics_live\"", 22);
        put_key(b, "topics");
        put_topics(b, ev->topics, ev->topic_count);
        break;
    case RINGBUS_EVENT_CATCHUP_COMPLETE:
        rb_json_put_raw(b, "{\"event\":\"catchup_complete\"", 27);
        put_key(b, "mutate_id");
        rb_json_put_u64(b, ev->mutate_id);
        break;
    case RINGBUS_EVENT_ERROR:
        put_error(c, ev->code, ev->message);
        emit(c);
        return;
    case RINGBUS_EVENT_REQUEST:
        rb_json_put_raw(b, "{\"event\":\"request\"", 18);
        put_text(b, "method", ev->method);
        put_text(b, "caller", ev->caller);
        put_payload(b, ev->payload, ev->payload_len);
        break;
    case RINGBUS_EVENT_RESPONSE:
        rb_json_put_raw(b, "{\"event\":\"response\"", 19);
        put_code(b, "code", ev->code);
        put_payload(b, ev->payload, ev->payload_len);
        break;
    case RINGBUS_EVENT_TOPIC_ERROR:
        rb_json_put_raw(b, "{\"event\":\"topic_error\"", 22);
        put_key(b, "topic");
        rb_json_put_str(b, ev->topic, ev->topic_len);
        put_key(b, "mutate_id");
        rb_json_put_u64(b, ev->mutate_id);
        put_code(b, "code", ev->code);
        put_text(b, "message", ev->message);
        break;
    case RINGBUS_EVENT_LAGGED:
        rb_json_put_raw(b, "{\"event\":\"lagged\"", 17);
        put_key(b, "topic");
        rb_json_put_str(b, ev->topic, ev->topic_len);
        put_key(b, "skipped");
        rb_json_put_u64(b, ev->skipped);
        break;
    case RINGBUS_EVENT_RECONNECTING:
        rb_json_put_raw(b, "{\"event\":\"reconnecting\"", 23);
        put_key(b, "attempt");
        rb_json_put_u64(b, ev->attempt);
        put_key(b, "delay_ms");
        rb_json_put_u64(b, ev->delay_ms);
        put_code(b, "code", ev->code);
        put_text(b, "message", ev->message);
        break;
    case RINGBUS_EVENT_RECONNECTED:
        rb_json_put_raw(b, "{\"event\":\"reconnected\"", 22);
        put_text(b, "url", ev->message);
        put_key(b, "attempt");
        rb_json_put_u64(b, ev->attempt);
        put_key(b, "mutate_id");
        rb_json_put_u64(b, ev->mutate_id);
        break;
    case RINGBUS_EVENT_CLOSED:
        rb_json_put_raw(b, "{\"event\":\"closed\"", 17);
        put_code(b, "status", ev->code);
        if (ev->message[0] != '\0') {
            put_text(b, "message", ev->message);
        }
        c->closed = true;
        c->closed_status = ev->code;
        break;
    }
    rb_json_put_raw(b, "}", 1);
    emit(c);
}

/* ---- argument helpers ---- */

static int parse_count(const char *text, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = text[0] >= '0' && text[0] <= '9' ? strtoull(text, &end, 10) : 0;
    if (end == NULL || *end != '\0' || errno != 0 || v == 0) {
        return -1;
    }
    *out = v;
    return 0;
}

/* Seconds (fractions allowed, > 0, at most a day) to milliseconds. */
static int parse_seconds(const char *text, int *ms)
{
    char *end = NULL;
    errno = 0;
    double s = strtod(text, &end);
    if (end == text || *end != '\0' || errno != 0 || !(s > 0) || s > 86400) {
        return -1;
    }
    *ms = (int)(s * 1000 + 0.5);
    *ms = *ms > 0 ? *ms : 1;
    return 0;
}

/* Takes the value of option name at argv[*i]: "--name=v" or "--name v". */
static const char *opt_value(int argc, char **argv, int *i, const char *name)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) == 0 && argv[*i][n] == '=') {
        return argv[*i] + n + 1;
    }
    if (strcmp(argv[*i], name) == 0 && *i + 1 < argc) {
        return argv[++*i];
    }
    return NULL;
}

static bool is_opt(const char *arg, const char *name)
{
    size_t n = strlen(name);
    return strncmp(arg, name, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

/* Adds the URLs of one --url value (one URL, or several separated by
 * commas). Returns 0 or -1 after saying why. */
static int add_urls(cli *c, const char *value)
{
    if (c->url_list_count == RINGBUS_SESSION_URLS_MAX) {
        say("at most %d URLs (try --help)", RINGBUS_SESSION_URLS_MAX);
        return -1;
    }
    char *copy = strdup(value);
    if (copy == NULL) {
        say("out of memory");
        return -1;
    }
    c->url_lists[c->url_list_count++] = copy;
    for (char *save = NULL, *u = strtok_r(copy, ",", &save); u != NULL;
         u = strtok_r(NULL, ",", &save)) {
        if (c->url_count == RINGBUS_SESSION_URLS_MAX) {
            say("at most %d URLs (try --help)", RINGBUS_SESSION_URLS_MAX);
            return -1;
        }
        c->urls[c->url_count++] = u;
    }
    if (c->url_count == 0) {
        say("--url needs a URL (try --help)");
        return -1;
    }
    c->url = c->urls[0];
    return 0;
}

/* Parses a global option at argv[*i]. Returns 1 when it was one, 0 when
 * it is not a global option, or an exit status (2) after an error. */
static int global_opt(cli *c, int argc, char **argv, int *i)
{
    const char *arg = argv[*i];
    const char *v;
    if (is_opt(arg, "--url")) {
        if ((v = opt_value(argc, argv, i, "--url")) == NULL || v[0] == '\0') {
            return -usage_error("--url needs a URL");
        }
        return add_urls(c, v) == 0 ? 1 : -EXIT_USAGE;
    }
    if (strcmp(arg, "--no-reconnect") == 0) {
        c->no_reconnect = true;
        return 1;
    }
    if (is_opt(arg, "--ca")) {
        if ((v = opt_value(argc, argv, i, "--ca")) == NULL) {
            return -usage_error("--ca needs a PEM file");
        }
        c->ca_file = v;
        return 1;
    }
    if (is_opt(arg, "--origin")) {
        if ((v = opt_value(argc, argv, i, "--origin")) == NULL) {
            return -usage_error("--origin needs an origin such as https://app.example.com");
        }
        c->origin = v;
        return 1;
    }
    if (strcmp(arg, "--insecure") == 0) {
        c->insecure = true;
        return 1;
    }
    if (is_opt(arg, "--tls-library")) {
        if ((v = opt_value(argc, argv, i, "--tls-library")) == NULL ||
            (strcmp(v, "openssl") != 0 && strcmp(v, "wolfssl") != 0)) {
            return -usage_error("--tls-library needs openssl or wolfssl");
        }
        c->tls_library = strcmp(v, "wolfssl") == 0 ? RINGBUS_TLS_WOLFSSL : RINGBUS_TLS_OPENSSL;
        return 1;
    }
    static const struct {
        const char *name;
        size_t offset;
        const char *needs;
    } files[] = {
        {"--token-file", offsetof(cli, token_file), "a file holding a JWT"},
        {"--token", offsetof(cli, token), "a JWT"},
        {"--user", offsetof(cli, user), "a user name"},
        {"--password-file", offsetof(cli, password_file), "a file holding the password"},
        {"--cert", offsetof(cli, cert_file), "a PEM certificate file"},
        {"--key", offsetof(cli, key_file), "a PEM key file"},
    };
    for (size_t k = 0; k < sizeof files / sizeof files[0]; k++) {
        if (is_opt(arg, files[k].name)) {
            if ((v = opt_value(argc, argv, i, files[k].name)) == NULL) {
                say("%s needs %s (try --help)", files[k].name, files[k].needs);
                return -EXIT_USAGE;
            }
            *(const char **)(void *)((char *)c + files[k].offset) = v;
            return 1;
        }
    }
    if (is_opt(arg, "--name")) {
        if ((v = opt_value(argc, argv, i, "--name")) == NULL) {
            return -usage_error("--name needs a name");
        }
        c->name = v;
        return 1;
    }
    if (is_opt(arg, "--timeout")) {
        v = opt_value(argc, argv, i, "--timeout");
        if (v == NULL || parse_seconds(v, &c->timeout_ms) != 0) {
            return -usage_error("--timeout needs a number of seconds in (0, 86400]");
        }
        return 1;
    }
    return 0;
}

/* ---- connecting ---- */

/* Secrets read from files: a token or a password. */
#define SECRET_FILE_BYTES_MAX 16384

/* Reads the first line of path (without CR LF) into out. Returns its
 * length, or -1 after saying why. */
static long read_secret(const char *path, const char *what, char *out, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        say("%s %s: %s", what, path, strerror(errno));
        return -1;
    }
    size_t n = fread(out, 1, cap - 1, f);
    bool more = n == cap - 1 && fgetc(f) != EOF;
    fclose(f);
    char *nl = memchr(out, '\n', n);
    if (nl == NULL && more) {
        explicit_bzero(out, cap);
        say("%s %s: longer than %zu bytes", what, path, cap - 2);
        return -1;
    }
    n = nl != NULL ? (size_t)(nl - out) : n;
    if (n > 0 && out[n - 1] == '\r') {
        n--;
    }
    out[n] = '\0';
    if (n == 0) {
        say("%s %s: empty", what, path);
        return -1;
    }
    return (long)n;
}

/* Fills the sign-in options from the flags; secret is the caller's buffer
 * for a token or password read from a file. Returns 0 or an exit status. */
static int sign_in_options(const cli *c, ringbus_options *o, char *secret, size_t cap)
{
    if (c->token != NULL && c->token_file != NULL) {
        return usage_error("give --token or --token-file, not both");
    }
    if ((c->token != NULL || c->token_file != NULL) && c->user != NULL) {
        return usage_error("give a token or --user, not both");
    }
    if ((c->user == NULL) != (c->password_file == NULL)) {
        return usage_error("--user and --password-file go together");
    }
    if ((c->cert_file == NULL) != (c->key_file == NULL)) {
        return usage_error("--cert and --key go together");
    }
    o->token = c->token;
    o->user = c->user;
    o->tls_cert_file = c->cert_file;
    o->tls_key_file = c->key_file;
    if (c->token_file != NULL) {
        if (read_secret(c->token_file, "--token-file", secret, cap) < 0) {
            return EXIT_RUNTIME;
        }
        o->token = secret;
    } else if (c->password_file != NULL) {
        long n = read_secret(c->password_file, "--password-file", secret, cap);
        if (n < 0) {
            return EXIT_RUNTIME;
        }
        o->password = secret;
        o->password_len = (size_t)n;
    }
    return 0;
}

static void on_event(const ringbus_event *ev, void *ctx)
{
    print_event(ctx, ev);
}

static void cli_options(const cli *c, ringbus_options *o)
{
    ringbus_options_init(o);
    o->client_name = c->name != NULL ? c->name : "ringbus-cli";
    o->connect_timeout_ms = c->timeout_ms;
    o->request_timeout_ms = c->timeout_ms;
    o->publish_window = PUB_WINDOW;
    o->tls_ca_file = c->ca_file;
    o->tls_insecure = c->insecure;
    o->tls_library = c->tls_library;
    o->ws_origin = c->origin;
}

/* A plain connection (ping, serve, call): the first URL that answers. */
static int cli_connect(cli *c, bool with_callback)
{
    ringbus_options o;
    cli_options(c, &o);
    if (with_callback) {
        o.on_event = on_event;
        o.event_ctx = c;
    }
    static char secret[SECRET_FILE_BYTES_MAX];
    int status = sign_in_options(c, &o, secret, sizeof secret);
    if (status != 0) {
        return status;
    }
    ringbus_error err;
    int rc = RINGBUS_EINVAL;
    size_t count = c->url_count > 0 ? c->url_count : 1;
    for (size_t i = 0; i < count; i++) {
        rc = ringbus_connect(c->url_count > 0 ? c->urls[i] : c->url, &o, &c->conn, &err);
        if (rc == 0 || rc == RINGBUS_EINVAL || rc == RINGBUS_ESERVER) {
            break;
        }
    }
    explicit_bzero(secret, sizeof secret);
    if (rc != 0) {
        say("%s", err.message);
        return rc == RINGBUS_EINVAL ? EXIT_USAGE : EXIT_RUNTIME;
    }
    return 0;
}

/* The resilient session of pub, sub and stream (one connection that ends
 * at the first loss with --no-reconnect). */
static int cli_session(cli *c, bool with_callback)
{
    ringbus_options o;
    cli_options(c, &o);
    static char secret[SECRET_FILE_BYTES_MAX];
    int status = sign_in_options(c, &o, secret, sizeof secret);
    if (status != 0) {
        return status;
    }
    ringbus_session_options so;
    ringbus_session_options_init(&so);
    const char *one[1] = {c->url};
    so.urls = c->url_count > 0 ? c->urls : one;
    so.url_count = c->url_count > 0 ? c->url_count : 1;
    so.conn = &o;
    so.no_reconnect = c->no_reconnect;
    if (with_callback) {
        so.on_event = on_event;
        so.event_ctx = c;
    }
    ringbus_error err;
    int rc = ringbus_session_open(&so, &c->session, &err);
    explicit_bzero(secret, sizeof secret);
    if (rc != 0) {
        say("%s", err.message);
        return rc == RINGBUS_EINVAL ? EXIT_USAGE : EXIT_RUNTIME;
    }
    return 0;
}

/* ---- ping ---- */

static int cmd_ping(cli *c, int argc, char **argv)
{
    uint64_t count = 1;
    for (int i = 0; i < argc; i++) {
        int g = global_opt(c, argc, argv, &i);
        if (g < 0) {
            return -g;
        }
        if (g == 0 && is_opt(argv[i], "--count")) {
            const char *v = opt_value(argc, argv, &i, "--count");
            if (v == NULL || parse_count(v, &count) != 0) {
                return usage_error("--count needs a positive integer");
            }
        } else if (g == 0) {
            return usage_error("ping: unexpected argument");
        }
    }
    int rc = cli_connect(c, true);
    for (uint64_t i = 0; rc == 0 && i < count; i++) {
        ringbus_error err;
        uint64_t rtt_ns = 0;
        if (ringbus_ping(c->conn, &rtt_ns, &err) != 0) {
            say("ping %s: %s", c->url, err.message);
            rc = EXIT_RUNTIME;
            break;
        }
        printf("pong from %s: rtt %.3f ms\n", ringbus_server_id(c->conn), (double)rtt_ns / 1e6);
        fflush(stdout);
    }
    return rc;
}

/* ---- stdin lines ---- */

typedef struct line_reader {
    char *buf; /* owned */
    size_t start, len, cap;
    bool eof;
    uint64_t line_no; /* of the last line taken */
} line_reader;

/* Reads once from stdin (call when poll says it is readable). */
static int lines_fill(line_reader *lr)
{
    if (lr->start > 0) {
        memmove(lr->buf, lr->buf + lr->start, lr->len - lr->start);
        lr->len -= lr->start;
        lr->start = 0;
    }
    if (lr->cap - lr->len < 65536 && lr->cap < LINE_BYTES_MAX + 1) {
        size_t next = lr->cap == 0 ? 131072 : lr->cap * 2;
        char *p = realloc(lr->buf, next);
        if (p == NULL) {
            say("stdin: out of memory");
            return -1;
        }
        lr->buf = p;
        lr->cap = next;
    }
    if (lr->cap == lr->len) {
        return 0; /* full of whole lines: take some first */
    }
    ssize_t n = read(STDIN_FILENO, lr->buf + lr->len, lr->cap - lr->len);
    if (n < 0 && errno != EINTR && errno != EAGAIN) {
        say("stdin: read: %s", strerror(errno));
        return -1;
    }
    lr->eof = n == 0;
    lr->len += n > 0 ? (size_t)n : 0;
    return 0;
}

/* Peeks at the next whole line (the last one may lack its newline at EOF).
 * Returns 1 with *line, 0 when none is whole yet, -1 when it is too long. */
static int lines_peek(line_reader *lr, const char **line, size_t *len)
{
    const char *s = lr->buf + lr->start;
    size_t avail = lr->len - lr->start;
    const char *nl = avail > 0 ? memchr(s, '\n', avail) : NULL;
    size_t n = nl != NULL ? (size_t)(nl - s) : avail;
    if (n > LINE_BYTES_MAX) {
        say("stdin line %llu: longer than %zu bytes", (unsigned long long)lr->line_no + 1,
            LINE_BYTES_MAX);
        return -1;
    }
    if (nl == NULL && !(lr->eof && avail > 0)) {
        return 0;
    }
    *line = s;
    *len = n;
    return 1;
}

static void lines_take(line_reader *lr, size_t len)
{
    lr->start += len;
    if (lr->start < lr->len) {
        lr->start++; /* the newline */
    }
    lr->line_no++;
}

static bool lines_done(const line_reader *lr)
{
    return lr->eof && lr->start == lr->len;
}

/* ---- pub ---- */

/* pub_one's "no room yet": distinct from every exit status. */
#define PUB_WAIT (-1)

typedef struct pub_slot {
    bool done;
    bool duplicate;
    int status;
    int wire_code;
    uint64_t seq;
    char *message; /* owned, when status != 0 */
} pub_slot;

typedef struct pub_state {
    cli *c;
    const char *topic;
    const char *key; /* --key, or NULL: the session makes one per publish */
    pub_slot ring[PUB_WINDOW];
    uint64_t head; /* next to print */
    uint64_t next; /* next to publish */
} pub_state;

static void pub_done(const ringbus_publish_result *res, void *ctx)
{
    pub_slot *slot = ctx;
    slot->done = true;
    slot->status = res->status;
    slot->wire_code = res->status == RINGBUS_ESERVER ? res->wire_code : RINGBUS_WIRE_UNAVAILABLE;
    slot->seq = res->seq;
    slot->duplicate = res->duplicate;
    slot->message = res->status != 0 ? strdup(res->message) : NULL;
}

/* Prints the acks that are complete, in publish order. */
static void pub_print_ready(pub_state *ps)
{
    while (ps->head < ps->next && ps->ring[ps->head % PUB_WINDOW].done) {
        pub_slot *s = &ps->ring[ps->head % PUB_WINDOW];
        if (s->status == 0) {
            rb_json_put_raw(&ps->c->out, "{\"topic\":", 9);
            rb_json_put_str(&ps->c->out, ps->topic, strlen(ps->topic));
            put_key(&ps->c->out, "seq");
            rb_json_put_u64(&ps->c->out, s->seq);
            if (s->duplicate) {
                rb_json_put_raw(&ps->c->out, ",\"duplicate\":true", 17);
            }
            rb_json_put_raw(&ps->c->out, "}", 1);
        } else {
            put_error(ps->c, s->wire_code, s->message != NULL ? s->message : "");
            ps->c->failed = true;
        }
        emit(ps->c);
        free(s->message);
        memset(s, 0, sizeof *s);
        ps->head++;
    }
}

/* Publishes one payload. Returns 0, PUB_WAIT when it must wait for room,
 * or an exit status (2, 1) after an error. */
static int pub_one(pub_state *ps, const char *payload, size_t len)
{
    if (ps->next - ps->head >= PUB_WINDOW) {
        return PUB_WAIT;
    }
    pub_slot *slot = &ps->ring[ps->next % PUB_WINDOW];
    ringbus_error err;
    size_t key_len = ps->key != NULL ? strlen(ps->key) : 0;
    int rc = ringbus_session_publish(ps->c->session, ps->topic, strlen(ps->topic), ps->key, key_len,
                                     payload, len, NULL, &err, pub_done, slot);
    if (rc == RINGBUS_EAGAIN) {
        return PUB_WAIT;
    }
    if (rc != 0) {
        say("%s", err.message);
        return rc == RINGBUS_EINVAL ? EXIT_USAGE : EXIT_RUNTIME;
    }
    ps->next++;
    return 0;
}

/* Publishes what stdin has; returns 0 or an exit status. */
static int pub_lines(pub_state *ps, line_reader *lr)
{
    for (;;) {
        const char *line;
        size_t len;
        int rc = lines_peek(lr, &line, &len);
        if (rc <= 0) {
            return rc < 0 ? EXIT_RUNTIME : 0;
        }
        /* A file written on Windows ends its lines with CR LF: the CR is
         * not part of the payload. */
        rc = pub_one(ps, line, len > 0 && line[len - 1] == '\r' ? len - 1 : len);
        if (rc != 0) {
            return rc == PUB_WAIT ? 0 : rc;
        }
        lines_take(lr, len);
    }
}

/* Processes the connection once; returns 0 or an exit status. */
static int pub_turn(pub_state *ps, int wait_ms)
{
    ringbus_error err;
    int rc = ringbus_session_process(ps->c->session, wait_ms, &err);
    pub_print_ready(ps);
    if (ps->c->closed || rc == RINGBUS_ECLOSED) {
        say("%s: connection closed before every ack arrived", ps->c->url);
        return EXIT_RUNTIME;
    }
    if (rc < 0) {
        say("%s", err.message);
        return EXIT_RUNTIME;
    }
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits at most the timeout for the ack of a single publish. */
static int pub_wait_one(pub_state *ps)
{
    int64_t deadline_ms = now_ms() + ps->c->timeout_ms;
    int rc = 0;
    while (rc == 0 && ps->head < ps->next) {
        int64_t left_ms = deadline_ms - now_ms();
        if (left_ms <= 0) {
            say("%s: timed out waiting for the ack", ps->c->url);
            return EXIT_RUNTIME;
        }
        rc = pub_turn(ps, (int)left_ms);
    }
    return rc;
}

static int pub_stdin(pub_state *ps)
{
    line_reader lr = {0};
    int64_t idle_ms = 0;
    int rc = 0;
    while (rc == 0 && !(lines_done(&lr) && ps->head == ps->next)) {
        /* Publish what is buffered first, so freed room never waits a tick. */
        uint64_t before = ps->head;
        rc = pub_lines(ps, &lr);
        if (rc != 0) {
            break;
        }
        const char *line;
        size_t len;
        /* Read stdin only when every whole line it gave is published. */
        bool want_stdin = !lr.eof && lines_peek(&lr, &line, &len) == 0;
        struct pollfd pfd[2] = {
            {.fd = want_stdin ? STDIN_FILENO : -1, .events = POLLIN},
            {.fd = ringbus_session_fd(ps->c->session), .events = POLLIN},
        };
        int n = poll(pfd, 2, TICK_MS);
        if (pfd[0].revents != 0 && lines_fill(&lr) != 0) {
            rc = EXIT_RUNTIME;
            break;
        }
        rc = pub_turn(ps, 0);
        idle_ms = (n == 0 && ps->head == before && lr.eof) ? idle_ms + TICK_MS : 0;
        if (rc == 0 && idle_ms >= ps->c->timeout_ms) {
            say("%s: timed out waiting for acks", ps->c->url);
            rc = EXIT_RUNTIME;
        }
    }
    free(lr.buf);
    return rc;
}

/* Reads all of fd (a file, or stdin for "-") into *out, refusing more than
 * limit bytes: the payload of one message cannot exceed the server's
 * max_frame_bytes. Returns 0 or an exit status after saying why. */
static int read_whole(int fd, const char *path, size_t limit, char **out, size_t *out_len)
{
    size_t cap = limit < 65536 ? limit + 1 : 65536, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (buf == NULL) {
            say("pub --file %s: out of memory", path);
            return EXIT_RUNTIME;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            say("pub --file %s: read: %s", path, strerror(errno));
            free(buf);
            return EXIT_RUNTIME;
        }
        len += (size_t)n;
        if (len > limit) {
            say("pub --file %s: larger than the server's max_frame_bytes (%zu)", path, limit);
            free(buf);
            return EXIT_RUNTIME;
        }
        if (n == 0) {
            break;
        }
        if (len == cap) {
            cap = cap * 2 > limit + 1 ? limit + 1 : cap * 2;
            char *p = realloc(buf, cap);
            if (p == NULL) {
                free(buf);
            }
            buf = p;
        }
    }
    *out = buf;
    *out_len = len;
    return 0;
}

/* pub --file: the whole file (or all of stdin) is one message. */
static int pub_file(pub_state *ps, const char *path)
{
    int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        say("pub --file %s: open: %s", path, strerror(errno));
        return EXIT_RUNTIME;
    }
    char *payload = NULL;
    size_t len = 0;
    const ringbus_conn *conn = ringbus_session_conn(ps->c->session);
    size_t limit = conn != NULL ? ringbus_max_frame_bytes(conn) : RB_FRAME_BYTES_MAX;
    int rc = read_whole(fd, path, limit, &payload, &len);
    if (fd != STDIN_FILENO) {
        close(fd);
    }
    if (rc == 0) {
        rc = pub_one(ps, payload, len);
        RB_ASSERT(rc != PUB_WAIT); /* the first publish always has room */
        rc = rc == 0 ? pub_wait_one(ps) : rc;
    }
    free(payload);
    return rc;
}

static int cmd_pub(cli *c, int argc, char **argv)
{
    const char *pos[2] = {NULL, NULL};
    const char *file = NULL;
    const char *key = NULL;
    int pos_count = 0;
    for (int i = 0; i < argc; i++) {
        if (is_opt(argv[i], "--key")) {
            /* After the command --key is the idempotency key, not the TLS
             * key file of the global options. */
            if ((key = opt_value(argc, argv, &i, "--key")) == NULL || key[0] == '\0' ||
                strlen(key) > 255) {
                return usage_error("pub --key needs an idempotency key of 1..255 bytes");
            }
            continue;
        }
        int g = argv[i][0] == '-' && argv[i][1] == '-' ? global_opt(c, argc, argv, &i) : 0;
        if (g < 0) {
            return -g;
        }
        if (g == 0 && is_opt(argv[i], "--file")) {
            if ((file = opt_value(argc, argv, &i, "--file")) == NULL || file[0] == '\0') {
                return usage_error("--file needs a PATH (- for stdin)");
            }
        } else if (g == 0 && argv[i][0] == '-' && argv[i][1] == '-') {
            return usage_error("pub: unknown option");
        } else if (g == 0 && pos_count < 2) {
            pos[pos_count++] = argv[i];
        } else if (g == 0) {
            return usage_error("pub: too many arguments (TOPIC [PAYLOAD])");
        }
    }
    if (pos_count == 0) {
        return usage_error("pub: missing TOPIC");
    }
    if (file != NULL && pos[1] != NULL) {
        return usage_error("pub: give PAYLOAD or --file, not both");
    }
    if (key != NULL && file == NULL && pos[1] == NULL) {
        return usage_error("pub --key: give PAYLOAD or --file (one key is one message)");
    }
    pub_state *ps = calloc(1, sizeof *ps);
    int rc = ps != NULL ? cli_session(c, true) : EXIT_RUNTIME;
    if (rc == 0) {
        ps->c = c;
        ps->topic = pos[0];
        ps->key = key;
        if (file != NULL) {
            rc = pub_file(ps, file);
        } else if (pos[1] != NULL) {
            rc = pub_one(ps, pos[1], strlen(pos[1]));
            RB_ASSERT(rc != PUB_WAIT); /* the first publish always has room */
            rc = rc == 0 ? pub_wait_one(ps) : rc;
        } else {
            rc = pub_stdin(ps);
        }
    }
    for (size_t i = 0; ps != NULL && i < PUB_WINDOW; i++) {
        free(ps->ring[i].message);
    }
    free(ps);
    return rc != 0 ? rc : (c->failed ? EXIT_RUNTIME : 0);
}

/* ---- sub ---- */

typedef struct sub_args {
    bool history_only;
    uint64_t count; /* 0 = unbounded */
    int timeout_ms; /* 0 = none */
    ringbus_add *adds;
    size_t add_count;
} sub_args;

/* Parses TOPIC[@CURSOR]; a topic containing '@' needs an explicit cursor. */
static int parse_topic_arg(char *arg, ringbus_add *add)
{
    char *at = strrchr(arg, '@');
    add->topic = arg;
    add->is_now = true;
    if (at == NULL) {
        return 0;
    }
    const char *cur = at + 1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = cur[0] >= '0' && cur[0] <= '9' ? strtoull(cur, &end, 10) : 0;
    bool now = strcmp(cur, "now") == 0;
    if (!now && (end == NULL || *end != '\0' || errno != 0)) {
        return -1;
    }
    *at = '\0';
    if (now) {
        return 0;
    }
    add->is_now = false;
    add->cursor = v;
    return 0;
}

static int sub_opt(cli *c, sub_args *a, int argc, char **argv, int *i)
{
    const char *v;
    if (strcmp(argv[*i], "--history-only") == 0) {
        a->history_only = true;
        return 1;
    }
    if (is_opt(argv[*i], "--count")) {
        v = opt_value(argc, argv, i, "--count");
        return (v != NULL && parse_count(v, &a->count) == 0)
                   ? 1
                   : -usage_error("--count needs a positive integer");
    }
    if (is_opt(argv[*i], "--timeout")) {
        v = opt_value(argc, argv, i, "--timeout");
        return (v != NULL && parse_seconds(v, &a->timeout_ms) == 0)
                   ? 1
                   : -usage_error("--timeout needs a number of seconds in (0, 86400]");
    }
    return global_opt(c, argc, argv, i);
}

static int sub_parse(cli *c, sub_args *a, int argc, char **argv)
{
    a->adds = calloc((size_t)argc + 1, sizeof *a->adds);
    if (a->adds == NULL) {
        return EXIT_RUNTIME;
    }
    for (int i = 0; i < argc; i++) {
        int g = argv[i][0] == '-' && argv[i][1] == '-' ? sub_opt(c, a, argc, argv, &i) : 0;
        if (g < 0) {
            return -g;
        }
        if (g == 0 && argv[i][0] == '-' && argv[i][1] == '-') {
            return usage_error("sub: unknown option");
        }
        if (g == 0 && parse_topic_arg(argv[i], &a->adds[a->add_count++]) != 0) {
            say("sub: bad cursor in \"%s\": expected a seq, 0 or now (try --help)", argv[i]);
            return EXIT_USAGE;
        }
        if (g == 0 && (a->adds[a->add_count - 1].topic[0] == '\0')) {
            return usage_error("sub: empty topic");
        }
    }
    return a->add_count == 0 ? usage_error("sub: missing TOPIC") : 0;
}

/* Prints one event; returns -1 to go on, or the exit status. */
static int sub_event(cli *c, const sub_args *a, const ringbus_event *ev, uint64_t *messages)
{
    print_event(c, ev);
    switch (ev->kind) {
    case RINGBUS_EVENT_MESSAGE:
        *messages += 1;
        return (a->count != 0 && *messages >= a->count) ? 0 : -1;
    case RINGBUS_EVENT_CATCHUP_COMPLETE:
        return (a->history_only && ev->mutate_id == 1) ? 0 : -1;
    case RINGBUS_EVENT_ERROR:
    case RINGBUS_EVENT_CLOSED:
        return EXIT_RUNTIME;
    case RINGBUS_EVENT_TOPIC_ERROR:
        /* The topic left the stream: what sub was asked to follow is gone. */
        say("sub: topic %s: %s", ev->topic, ev->message);
        return EXIT_RUNTIME;
    case RINGBUS_EVENT_TOPICS_LIVE:
    case RINGBUS_EVENT_REQUEST:
    case RINGBUS_EVENT_RESPONSE:
    case RINGBUS_EVENT_RECONNECTING:
    case RINGBUS_EVENT_RECONNECTED:
    case RINGBUS_EVENT_LAGGED: /* the stream goes on: nothing to count or stop for */
        break;
    }
    return -1;
}

/* The --timeout ran out. Without --count or --history-only it is how long
 * to listen, so the run succeeded; with them, the run ended before what was
 * asked for arrived, and that is a failure a script must see. */
static int sub_timed_out(const sub_args *a, uint64_t messages)
{
    if (a->count != 0) {
        say("sub: timed out after %g s with %llu of %llu messages", a->timeout_ms / 1000.0,
            (unsigned long long)messages, (unsigned long long)a->count);
        return EXIT_RUNTIME;
    }
    if (a->history_only) {
        say("sub: timed out after %g s before the history was complete (%llu messages)",
            a->timeout_ms / 1000.0, (unsigned long long)messages);
        return EXIT_RUNTIME;
    }
    return 0;
}

static int sub_loop(cli *c, const sub_args *a)
{
    uint64_t messages = 0;
    /* A wall-clock deadline: a steady trickle of events must not extend it. */
    int64_t deadline_ms = a->timeout_ms != 0 ? now_ms() + a->timeout_ms : 0;
    for (;;) {
        int wait_ms = TICK_MS;
        if (deadline_ms != 0) {
            int64_t left_ms = deadline_ms - now_ms();
            if (left_ms <= 0) {
                return sub_timed_out(a, messages);
            }
            wait_ms = left_ms < TICK_MS ? (int)left_ms : TICK_MS;
        }
        ringbus_event ev;
        ringbus_error err;
        int rc = ringbus_session_next_event(c->session, &ev, wait_ms, &err);
        if (rc < 0) {
            say("%s", err.message);
            return EXIT_RUNTIME;
        }
        if (rc == 0) {
            continue;
        }
        int status = sub_event(c, a, &ev, &messages);
        if (status >= 0) {
            return status;
        }
    }
}

static int cmd_sub(cli *c, int argc, char **argv)
{
    sub_args a = {0};
    int rc = sub_parse(c, &a, argc, argv);
    if (rc == 0) {
        rc = cli_session(c, false);
    }
    if (rc == 0) {
        ringbus_error err;
        if (ringbus_session_mutate(c->session, 1, 0, a.adds, a.add_count, NULL, 0, a.history_only,
                                   &err) != 0) {
            say("sub: %s", err.message);
            rc = err.code == RINGBUS_EINVAL ? EXIT_USAGE : EXIT_RUNTIME;
        }
    }
    if (rc == 0) {
        rc = sub_loop(c, &a);
    }
    free(a.adds);
    return rc;
}

/* ---- stream ---- */

static void stream_ack(const ringbus_publish_result *res, void *ctx)
{
    cli *c = ctx;
    if (res->status != 0) {
        put_error(c, res->status == RINGBUS_ESERVER ? res->wire_code : RINGBUS_WIRE_UNAVAILABLE,
                  res->message);
    } else {
        rb_json_put_raw(&c->out, "{\"event\":\"publish_ack\"", 22);
        put_key(&c->out, "topic");
        rb_json_put_str(&c->out, res->topic, res->topic_len);
        put_key(&c->out, "seq");
        rb_json_put_u64(&c->out, res->seq);
        if (res->duplicate) {
            rb_json_put_raw(&c->out, ",\"duplicate\":true", 17);
        }
        rb_json_put_raw(&c->out, "}", 1);
    }
    emit(c);
}

static int stream_mutate(cli *c, const rb_cmd *cmd, ringbus_error *err)
{
    ringbus_add *adds = calloc(cmd->add_count + 1, sizeof *adds);
    if (adds == NULL) {
        snprintf(err->message, sizeof err->message, "out of memory");
        return RINGBUS_ENOMEM;
    }
    for (size_t i = 0; i < cmd->add_count; i++) {
        adds[i].topic = cmd->adds[i].topic;
        adds[i].cursor = cmd->adds[i].cursor;
        adds[i].is_now = cmd->adds[i].is_now;
    }
    int rc = ringbus_session_mutate(c->session, cmd->mutate_id, cmd->epoch, adds, cmd->add_count,
                                    (const char *const *)cmd->removes, cmd->remove_count,
                                    cmd->history_only, err);
    free(adds);
    return rc;
}

/* Sends one command, waiting out a full send buffer for at most the
 * timeout. Returns 0 or an exit status. */
static int stream_send(cli *c, const rb_cmd *cmd, uint64_t line_no)
{
    ringbus_error err;
    int rc;
    for (int waited_ms = 0;; waited_ms += 100) {
        if (cmd->kind == RB_CMD_CLOSE) {
            rc = ringbus_session_half_close(c->session, &err);
        } else if (cmd->kind == RB_CMD_PUBLISH) {
            rc = ringbus_session_publish(c->session, cmd->topic, cmd->topic_len, NULL, 0, cmd->data,
                                         cmd->data_len, NULL, &err, stream_ack, c);
        } else {
            rc = stream_mutate(c, cmd, &err);
        }
        if (rc != RINGBUS_EAGAIN || waited_ms >= c->timeout_ms) {
            break;
        }
        if (ringbus_session_process(c->session, 100, &err) == RINGBUS_ECLOSED) {
            return 0;
        }
    }
    if (rc == RINGBUS_ECLOSED) {
        return 0; /* the CLOSED event says why */
    }
    if (rc != 0) {
        say("stdin line %llu: %s", (unsigned long long)line_no, err.message);
        return EXIT_RUNTIME;
    }
    return 0;
}

/* Runs the whole lines stdin has. Sets *closing after a close command. */
static int stream_lines(cli *c, line_reader *lr, bool *closing)
{
    const char *line;
    size_t len;
    int rc;
    while (!*closing && (rc = lines_peek(lr, &line, &len)) != 0) {
        if (rc < 0) {
            return EXIT_RUNTIME;
        }
        lines_take(lr, len);
        if (len == 0 || strspn(line, " \t\r") == len) {
            continue; /* blank lines are allowed */
        }
        rb_cmd cmd;
        rb_err err = {0};
        if (rb_cmd_parse(line, len, &cmd, &err) != 0) {
            say("stdin line %llu: %s", (unsigned long long)lr->line_no, err.msg);
            return EXIT_RUNTIME;
        }
        rc = stream_send(c, &cmd, lr->line_no);
        *closing = cmd.kind == RB_CMD_CLOSE;
        rb_cmd_free(&cmd);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* One turn: poll stdin (until closing) and the socket, run commands,
 * process the connection. Returns -1 to go on, or the exit status. */
static int stream_turn(cli *c, line_reader *lr, bool *closing, int *idle_ms)
{
    struct pollfd pfd[2] = {
        {.fd = *closing ? -1 : STDIN_FILENO, .events = POLLIN},
        {.fd = ringbus_session_fd(c->session), .events = POLLIN},
    };
    int n = poll(pfd, 2, TICK_MS);
    if (pfd[0].revents != 0 && lines_fill(lr) != 0) {
        return EXIT_RUNTIME;
    }
    int rc = stream_lines(c, lr, closing);
    if (rc != 0) {
        return rc;
    }
    if (!*closing && lines_done(lr)) {
        rb_cmd close_cmd = {.kind = RB_CMD_CLOSE};
        *closing = true; /* EOF on stdin is a half-close too */
        if ((rc = stream_send(c, &close_cmd, lr->line_no)) != 0) {
            return rc;
        }
    }
    ringbus_error err;
    int events = ringbus_session_process(c->session, 0, &err);
    if (c->closed || events == RINGBUS_ECLOSED) {
        return (*closing && c->closed_status == RINGBUS_WIRE_OK) ? 0 : EXIT_RUNTIME;
    }
    if (events < 0) {
        say("%s", err.message);
        return EXIT_RUNTIME;
    }
    *idle_ms = (*closing && n == 0 && events == 0) ? *idle_ms + TICK_MS : 0;
    if (*idle_ms >= c->timeout_ms) {
        say("%s: timed out waiting for the server to close", c->url);
        return EXIT_RUNTIME;
    }
    return -1;
}

static int cmd_stream(cli *c, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        int g = global_opt(c, argc, argv, &i);
        if (g < 0) {
            return -g;
        }
        if (g == 0) {
            return usage_error("stream: unexpected argument");
        }
    }
    int rc = cli_session(c, true);
    if (rc != 0) {
        return rc;
    }
    /* The epoch goes with the cursors a script saves (docs/PROTOCOL.md 8.1). */
    const ringbus_conn *conn = ringbus_session_conn(c->session);
    rb_json_put_raw(&c->out, "{\"event\":\"started\"", 18);
    put_key(&c->out, "server_id");
    rb_json_put_str(&c->out, ringbus_server_id(conn), strlen(ringbus_server_id(conn)));
    put_key(&c->out, "epoch");
    rb_json_put_u64(&c->out, ringbus_epoch(conn));
    rb_json_put_raw(&c->out, "}", 1);
    emit(c);
    line_reader lr = {0};
    bool closing = false;
    int idle_ms = 0;
    do {
        rc = stream_turn(c, &lr, &closing, &idle_ms);
    } while (rc < 0);
    free(lr.buf);
    return rc;
}

/* ---- serve and call (request/reply between clients) ---- */

/* What a served COMMAND may print: a response must fit one frame. */
static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#define SERVE_OUTPUT_BYTES_MAX ((size_t)64 << 20)

typedef struct child_io {
    const uint8_t *in; /* the payload, written to the child's stdin */
    size_t in_len, in_off;
    uint8_t *out; /* owned; what the child printed */
    size_t out_len, out_cap;
} child_io;

static int child_read(child_io *io, int fd)
{
    if (io->out_cap - io->out_len < 65536) {
        size_t cap = io->out_cap == 0 ? 65536 : io->out_cap * 2;
        if (cap > SERVE_OUTPUT_BYTES_MAX) {
            return -1;
        }
        uint8_t *p = realloc(io->out, cap);
        if (p == NULL) {
            return -1;
        }
        io->out = p;
        io->out_cap = cap;
    }
    ssize_t n = read(fd, io->out + io->out_len, io->out_cap - io->out_len);
    if (n < 0) {
        return errno == EINTR || errno == EAGAIN ? 1 : -1;
    }
    io->out_len += (size_t)n;
    return n == 0 ? 0 : 1;
}

/* Feeds the child's stdin and drains its stdout until it closes stdout or
 * deadline_ms passes. Returns 0, or -1 (timed out, too much output). */
static int child_pump(child_io *io, int in_fd, int out_fd, int64_t deadline_ns)
{
    for (;;) {
        struct pollfd p[2] = {{.fd = out_fd, .events = POLLIN}, {.fd = in_fd, .events = POLLOUT}};
        nfds_t n = in_fd >= 0 ? 2 : 1;
        int64_t left_ms = (deadline_ns - now_ns()) / 1000000;
        if (left_ms <= 0) {
            return -1;
        }
        if (poll(p, n, (int)(left_ms > 1000 ? 1000 : left_ms)) < 0 && errno != EINTR) {
            return -1;
        }
        if (n == 2 && (p[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t w = write(in_fd, io->in + io->in_off, io->in_len - io->in_off);
            if (w > 0) {
                io->in_off += (size_t)w;
            }
            if (w < 0 || io->in_off == io->in_len) {
                close(in_fd);
                in_fd = -1;
            }
        }
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            int r = child_read(io, out_fd);
            if (r <= 0) {
                if (in_fd >= 0) {
                    close(in_fd);
                }
                return r;
            }
        }
    }
}

/* Runs argv with io->in on stdin; returns its exit status (128 + signal
 * when killed, -1 when it could not run or overran timeout_ms). */
static int child_run(char **argv, child_io *io, uint32_t timeout_ms)
{
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0) {
        return -1;
    }
    if (pipe2(out, O_CLOEXEC) != 0) {
        close(in[0]);
        close(in[1]);
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        /* serve ignores SIGPIPE; the command gets the default back. */
        signal(SIGPIPE, SIG_DFL);
        dup2(in[0], 0);
        dup2(out[1], 1);
        execvp(argv[0], argv);
        fprintf(stderr, "ringbus: serve: %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    if (pid < 0) {
        close(in[1]);
        close(out[0]);
        return -1;
    }
    (void)fcntl(in[1], F_SETFL, O_NONBLOCK);
    int pumped = child_pump(io, in[1], out[0], now_ns() + (int64_t)timeout_ms * 1000000);
    close(out[0]);
    if (pumped != 0) {
        kill(pid, SIGKILL);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (pumped != 0) {
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Answers one REQUEST event by running the command. */
static int serve_request(cli *c, const ringbus_event *ev, char **cmd)
{
    ringbus_error err;
    if (ringbus_request_ack(c->conn, ev->corr_id, &err) != 0 || ringbus_flush(c->conn, &err) != 0) {
        say("serve: ack: %s", err.message);
        return EXIT_RUNTIME;
    }
    child_io io = {.in = ev->payload, .in_len = ev->payload_len};
    int status = child_run(cmd, &io, ev->timeout_ms);
    char why[96] = "";
    int code = 0;
    if (status != 0) {
        code = RINGBUS_WIRE_APPLICATION_ERROR;
        if (status < 0) {
            snprintf(why, sizeof why, "%s did not finish within %u ms", cmd[0], ev->timeout_ms);
        } else {
            snprintf(why, sizeof why, "%s exited with status %d", cmd[0], status);
        }
    }
    int rc = ringbus_respond(c->conn, ev->corr_id, code, why, io.out, io.out_len, &err);
    if (rc == RINGBUS_ELIMIT) {
        rc = ringbus_respond(c->conn, ev->corr_id, RINGBUS_WIRE_APPLICATION_ERROR,
                             "the command's output does not fit one frame", NULL, 0, &err);
    }
    free(io.out);
    if (rc != 0 || ringbus_flush(c->conn, &err) != 0) {
        say("serve: respond: %s", err.message);
        return EXIT_RUNTIME;
    }
    return 0;
}

static int serve_loop(cli *c, char **cmd)
{
    for (;;) {
        ringbus_event ev;
        ringbus_error err;
        int n = ringbus_next_event(c->conn, &ev, TICK_MS, &err);
        if (n < 0) {
            say("serve: %s", err.message);
            return EXIT_RUNTIME;
        }
        if (n == 0 || ev.kind != RINGBUS_EVENT_REQUEST) {
            if (n == 1 && ev.kind == RINGBUS_EVENT_CLOSED) {
                say("serve: connection closed: %s: %s", ringbus_wire_code_name(ev.code),
                    ev.message);
                return EXIT_RUNTIME;
            }
            continue;
        }
        int rc = serve_request(c, &ev, cmd);
        if (rc != 0) {
            return rc;
        }
    }
}

static int cmd_serve(cli *c, int argc, char **argv)
{
    const char *service = NULL;
    const char *method = NULL;
    int i = 0;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        int g = argv[i][0] == '-' && argv[i][1] == '-' ? global_opt(c, argc, argv, &i) : 0;
        if (g < 0) {
            return -g;
        }
        if (g == 0 && is_opt(argv[i], "--as")) {
            if ((service = opt_value(argc, argv, &i, "--as")) == NULL || service[0] == '\0') {
                return usage_error("--as needs a SERVICE name");
            }
        } else if (g == 0 && argv[i][0] == '-') {
            return usage_error("serve: unknown option");
        } else if (g == 0 && method == NULL) {
            method = argv[i];
        } else if (g == 0) {
            return usage_error("serve: one METHOD, then -- COMMAND [ARGS]");
        }
    }
    if (method == NULL) {
        return usage_error("serve: missing METHOD");
    }
    if (i + 1 >= argc) {
        return usage_error("serve: missing -- COMMAND");
    }
    /* A command that exits without reading all of its stdin makes the
     * payload write fail with EPIPE, which ends that write, not serve. */
    signal(SIGPIPE, SIG_IGN);
    int rc = cli_connect(c, false);
    if (rc != 0) {
        return rc;
    }
    ringbus_error err;
    if (ringbus_register(c->conn, method, service, &err) != 0) {
        say("serve %s: %s", method, err.message);
        return EXIT_RUNTIME;
    }
    rb_json_buf *b = &c->out;
    const char *id = ringbus_client_id(c->conn);
    rb_json_put_raw(b, "{\"event\":\"serving\"", 18);
    put_key(b, "client_id");
    rb_json_put_str(b, id, strlen(id));
    put_key(b, "method");
    rb_json_put_str(b, method, strlen(method));
    if (service != NULL) {
        put_key(b, "service");
        rb_json_put_str(b, service, strlen(service));
    }
    rb_json_put_raw(b, "}", 1);
    emit(c);
    return serve_loop(c, argv + i + 1);
}

static int cmd_call(cli *c, int argc, char **argv)
{
    const char *pos[3] = {NULL, NULL, NULL};
    int pos_count = 0;
    uint64_t timeout_ms = 0;
    for (int i = 0; i < argc; i++) {
        int g = argv[i][0] == '-' && argv[i][1] == '-' ? global_opt(c, argc, argv, &i) : 0;
        if (g < 0) {
            return -g;
        }
        if (g == 0 && is_opt(argv[i], "--timeout-ms")) {
            const char *v = opt_value(argc, argv, &i, "--timeout-ms");
            if (v == NULL || parse_count(v, &timeout_ms) != 0 ||
                timeout_ms > RB_RPC_TIMEOUT_MS_MAX) {
                return usage_error("--timeout-ms needs milliseconds in [1, 600000]");
            }
        } else if (g == 0 && argv[i][0] == '-' && argv[i][1] == '-') {
            return usage_error("call: unknown option");
        } else if (g == 0 && pos_count < 3) {
            pos[pos_count++] = argv[i];
        } else if (g == 0) {
            return usage_error("call: too many arguments (DESTINATION METHOD [PAYLOAD])");
        }
    }
    if (pos_count < 2) {
        return usage_error("call: missing DESTINATION or METHOD");
    }
    int rc = cli_connect(c, false);
    if (rc != 0) {
        return rc;
    }
    const char *payload = pos[2] != NULL ? pos[2] : "";
    ringbus_call_result res = {0};
    ringbus_error err;
    rc = ringbus_call_sync(c->conn, pos[0], pos[1], payload, strlen(payload), (uint32_t)timeout_ms,
                           &res, &err);
    if (rc == RINGBUS_ESERVER) {
        say("call %s %s: %s: %s", pos[0], pos[1], ringbus_wire_code_name(res.code), res.message);
        return EXIT_RUNTIME;
    }
    if (rc != 0) {
        say("call %s %s: %s", pos[0], pos[1], err.message);
        return rc == RINGBUS_EINVAL ? EXIT_USAGE : EXIT_RUNTIME;
    }
    if (res.payload_len > 0) {
        /* An empty answer may come without a buffer (fwrite wants one). */
        fwrite(res.payload, 1, res.payload_len, stdout);
    }
    fflush(stdout);
    return 0;
}

/* ---- main ---- */

static int run(cli *c, int argc, char **argv)
{
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("ringbus %s\n", ringbus_version());
            return 0;
        }
        int g = global_opt(c, argc, argv, &i);
        if (g < 0) {
            return -g;
        }
        if (g == 0) {
            say("unknown option \"%s\" (try --help)", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (i == argc) {
        return usage_error("missing command");
    }
    const char *cmd = argv[i];
    int sub_argc = argc - i - 1;
    char **sub_argv = argv + i + 1;
    if (strcmp(cmd, "ping") == 0) {
        return cmd_ping(c, sub_argc, sub_argv);
    }
    if (strcmp(cmd, "pub") == 0) {
        return cmd_pub(c, sub_argc, sub_argv);
    }
    if (strcmp(cmd, "sub") == 0) {
        return cmd_sub(c, sub_argc, sub_argv);
    }
    if (strcmp(cmd, "stream") == 0) {
        return cmd_stream(c, sub_argc, sub_argv);
    }
    if (strcmp(cmd, "serve") == 0) {
        return cmd_serve(c, sub_argc, sub_argv);
    }
    if (strcmp(cmd, "call") == 0) {
        return cmd_call(c, sub_argc, sub_argv);
    }
    if (strcmp(cmd, "top") == 0) {
        return rb_top_cli(sub_argc, sub_argv, c->timeout_ms);
    }
    if (strcmp(cmd, "bench") == 0) {
        rb_bench_set_tls(c->ca_file, c->insecure, c->tls_library);
        rb_bench_set_ws_origin(c->origin);
        static char secret[SECRET_FILE_BYTES_MAX];
        ringbus_options so;
        ringbus_options_init(&so);
        int status = sign_in_options(c, &so, secret, sizeof secret);
        if (status != 0) {
            return status;
        }
        rb_bench_set_sign_in(so.token, so.user, so.password, so.password_len, so.tls_cert_file,
                             so.tls_key_file);
        return rb_bench_cli(sub_argc, sub_argv, c->url);
    }
    say("unknown command \"%s\" (try --help)", cmd);
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    /* Scripts read events live: flush every line even into a pipe. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    cli c = {.url = DEFAULT_URL, .timeout_ms = DEFAULT_TIMEOUT_MS};
    rb_json_buf_init(&c.out);
    int rc = run(&c, argc, argv);
    ringbus_close(c.conn);
    ringbus_session_close(c.session);
    for (size_t i = 0; i < c.url_list_count; i++) {
        free(c.url_lists[i]);
    }
    rb_json_buf_deinit(&c.out);
    return rc;
}
