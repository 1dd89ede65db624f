/* The HTTP route table (server/admin.h). */
#include "server/admin.h"

#include <dirent.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/limits.h"
#include "server/server.h"

/* Every route takes GET alone. */
typedef struct route {
    const char *path;
    void (*answer)(const rb_admin *admin, rb_http_span query, rb_http_response *resp);
} route;

/* Dynamic bodies are written here; an answer is valid until the next
 * route call on the same thread (the front ends copy it before that). */
static _Thread_local char body_buf[RB_ADMIN_BODY_BYTES_MAX];

typedef struct body {
    size_t len;
    bool full;
} body;

__attribute__((format(printf, 2, 3))) static void put(body *b, const char *fmt, ...)
{
    if (b->full) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(body_buf + b->len, sizeof body_buf - b->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof body_buf - b->len) {
        b->full = true;
        body_buf[b->len] = '\0';
        return;
    }
    b->len += (size_t)n;
}

static void answer_body(rb_http_response *resp, int status, const char *type, const body *b)
{
    resp->status = b->full ? 500 : status;
    resp->extra_headers = "";
    resp->content_type = b->full ? NULL : type;
    resp->body = b->full ? "answer larger than the admin body limit" : body_buf;
    resp->body_len = b->full ? 0 : b->len;
}

/* The first shard whose loop has not turned within RB_ADMIN_STALL_MS, or
 * -1; *age_ms says for how long. */
static int stalled_shard(const rb_server *srv, uint64_t *age_ms)
{
    if (srv == NULL || srv->shards == NULL) {
        return -1;
    }
    uint64_t now = rb_clock_ms();
    for (uint32_t i = 0; i < srv->shard_count; i++) {
        uint64_t last = RB_STAT_GET(&srv->shards[i], last_turn_ms);
        if (last != 0 && now > last && now - last > RB_ADMIN_STALL_MS) {
            *age_ms = now - last;
            return (int)i;
        }
    }
    return -1;
}

int rb_admin_stalled_shard(const struct rb_server *srv, uint64_t *age_ms)
{
    return stalled_shard(srv, age_ms);
}

/* 200 while every shard's loop turns: what a liveness probe wants. */
static void healthz(const rb_admin *admin, rb_http_span query, rb_http_response *resp)
{
    (void)query;
    uint64_t age = 0;
    int s = stalled_shard(admin->server, &age);
    body b = {0};
    if (s >= 0) {
        put(&b, "shard %d has not turned for %llu ms", s, (unsigned long long)age);
        answer_body(resp, 503, NULL, &b);
        return;
    }
    resp->status = 200;
    resp->extra_headers = "";
    resp->body = "ok";
}

/* 200 while the daemon serves, 503 while it starts or stops: what a load
 * balancer's readiness check wants. */
static void readyz(const rb_admin *admin, rb_http_span query, rb_http_response *resp)
{
    (void)query;
    bool ready = atomic_load(admin->ready);
    uint64_t age = 0;
    int s = ready ? stalled_shard(admin->server, &age) : -1;
    resp->extra_headers = "";
    if (!ready) {
        resp->status = 503;
        resp->body = "not ready (waiting for storage, or stopping)";
        return;
    }
    if (s >= 0) {
        body b = {0};
        put(&b, "not ready: shard %d has not turned for %llu ms", s, (unsigned long long)age);
        answer_body(resp, 503, NULL, &b);
        return;
    }
    const rb_server *srv = admin->server;
    uint32_t unreachable =
        srv != NULL && srv->storage_ops != NULL && srv->storage_ops->unreachable_shards != NULL
            ? srv->storage_ops->unreachable_shards(srv->storage)
            : 0;
    if (unreachable > 0) {
        body b = {0};
        put(&b, "not ready: storage unreachable from %u shard%s", unreachable,
            unreachable == 1 ? "" : "s");
        answer_body(resp, 503, NULL, &b);
        return;
    }
    char why[160];
    if (srv != NULL && admin->ready_check != NULL && !admin->ready_check(srv, why, sizeof why)) {
        body b = {0};
        put(&b, "not ready: %s", why);
        answer_body(resp, 503, NULL, &b);
        return;
    }
    resp->status = 200;
    resp->body = "ready";
}

/* ---- /metrics ---- */

static uint64_t sum(const rb_server *srv, size_t offset)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < srv->shard_count; i++) {
        const uint8_t *st = (const uint8_t *)&srv->shards[i].stats + offset;
        total += __atomic_load_n((const uint64_t *)st, __ATOMIC_RELAXED);
    }
    return total;
}

#define SUM(srv, field) sum((srv), offsetof(rb_shard_stats, field))

static void metric_head(body *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(body *b, const char *name, const char *help, uint64_t v)
{
    metric_head(b, name, "counter", help);
    put(b, "%s %llu\n", name, (unsigned long long)v);
}

static void gauge(body *b, const char *name, const char *help, uint64_t v)
{
    metric_head(b, name, "gauge", help);
    put(b, "%s %llu\n", name, (unsigned long long)v);
}

const uint64_t rb_stat_latency_le_ns[RB_STAT_LATENCY_BUCKETS] = {
    100000,   250000,    500000,    1000000,   2500000,    5000000,    10000000,   25000000,
    50000000, 100000000, 250000000, 500000000, 1000000000, 2500000000, 5000000000, 10000000000};
const uint64_t rb_stat_batch_le[RB_STAT_BATCH_BUCKETS] = {1,  2,   4,   8,   16,  32,
                                                          64, 128, 256, 512, 1024};
const uint64_t rb_stat_wave_le_ms[RB_STAT_WAVE_BUCKETS] = {
    1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000};

/* A Prometheus histogram from per-shard, per-bucket counts at offset (n
 * bounds and +Inf), the bounds divided by scale (1e9: ns to seconds). */
static void histogram(body *b, const rb_server *srv, const char *name, const char *help,
                      size_t offset, const uint64_t *le, uint32_t n, double scale,
                      size_t sum_offset)
{
    metric_head(b, name, "histogram", help);
    uint64_t cum = 0;
    for (uint32_t i = 0; i <= n; i++) {
        cum += sum(srv, offset + i * sizeof(uint64_t));
        if (i < n) {
            put(b, "%s_bucket{le=\"%.9g\"} %llu\n", name, (double)le[i] / scale,
                (unsigned long long)cum);
        } else {
            put(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
        }
    }
    put(b, "%s_sum %.9g\n%s_count %llu\n", name, (double)sum(srv, sum_offset) / scale, name,
        (unsigned long long)cum);
}

/* Resident memory and open fds of the process, from /proc/self. */
static void process_metrics(body *b)
{
    long page = sysconf(_SC_PAGESIZE);
    unsigned long size = 0;
    unsigned long resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%lu %lu", &size, &resident) != 2) {
            resident = 0;
        }
        fclose(f);
    }
    gauge(b, "ringbus_process_resident_memory_bytes", "Resident memory of the daemon.",
          (uint64_t)resident * (uint64_t)(page > 0 ? page : 4096));
    uint64_t fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d != NULL) {
        while (readdir(d) != NULL) {
            fds++;
        }
        closedir(d);
        fds = fds >= 3 ? fds - 3 : 0; /* ".", ".." and the directory's own fd */
    }
    gauge(b, "ringbus_process_open_fds", "Open file descriptors of the daemon.", fds);
}

static void metrics(const rb_admin *admin, rb_http_span query, rb_http_response *resp)
{
    (void)query;
    const rb_server *srv = admin->server;
    body b = {0};
    if (srv == NULL || srv->shards == NULL) {
        put(&b, "# no server\n");
        answer_body(resp, 503, NULL, &b);
        return;
    }
    metric_head(&b, "ringbus_connections_accepted_total", "counter",
                "Client connections accepted, by listener transport.");
    for (int k = 0; k < RB_TRANSPORT_KINDS; k++) {
        put(&b, "ringbus_connections_accepted_total{transport=\"%s\"} %llu\n",
            rb_transport_name((rb_transport_kind)k),
            (unsigned long long)sum(srv, offsetof(rb_shard_stats, accepted) +
                                             (size_t)k * sizeof(uint64_t)));
    }
    metric_head(&b, "ringbus_connections", "gauge",
                "Client connections open now, by listener transport.");
    for (int k = 0; k < RB_TRANSPORT_KINDS; k++) {
        put(&b, "ringbus_connections{transport=\"%s\"} %llu\n",
            rb_transport_name((rb_transport_kind)k),
            (unsigned long long)sum(srv,
                                    offsetof(rb_shard_stats, open) + (size_t)k * sizeof(uint64_t)));
    }
    static const char *const states[RB_CONN_STATE_COUNT] = {[RB_CONN_HANDSHAKE] = "handshake",
                                                            [RB_CONN_OPEN] = "open",
                                                            [RB_CONN_DRAINING] = "draining",
                                                            [RB_CONN_CLOSING] = "closing",
                                                            [RB_CONN_CLOSED] = "closed"};
    metric_head(&b, "ringbus_connection_states", "gauge",
                "Client connections now, by listener transport and session state.");
    for (int k = 0; k < RB_TRANSPORT_KINDS; k++) {
        for (int st = RB_CONN_HANDSHAKE; st < RB_CONN_STATE_COUNT; st++) {
            size_t off = offsetof(rb_shard_stats, conn_states) +
                         ((size_t)k * RB_CONN_STATE_COUNT + (size_t)st) * sizeof(uint64_t);
            put(&b, "ringbus_connection_states{transport=\"%s\",state=\"%s\"} %llu\n",
                rb_transport_name((rb_transport_kind)k), states[st],
                (unsigned long long)sum(srv, off));
        }
    }
    counter(&b, "ringbus_frames_received_total", "Client frames decoded.", SUM(srv, frames_in));
    counter(&b, "ringbus_received_bytes_total", "Frame bytes received from clients.",
            SUM(srv, bytes_in));
    metric_head(&b, "ringbus_publishes_total", "counter",
                "Publishes answered by their topic's owner, by outcome (ok: stored and "
                "acknowledged; error: answered with an error code).");
    put(&b, "ringbus_publishes_total{outcome=\"ok\"} %llu\n",
        (unsigned long long)SUM(srv, publishes_ok));
    put(&b, "ringbus_publishes_total{outcome=\"error\"} %llu\n",
        (unsigned long long)SUM(srv, publishes_failed));
    metric_head(&b, "ringbus_publish_errors_total", "counter",
                "Publishes answered with an error by their topic's owner, by wire code (codes "
                "seen so far).");
    uint64_t unnamed = 0; /* reserved numbers share one series */
    for (uint16_t k = 1; k <= RB_WIRE_CODE_LAST; k++) {
        uint64_t v =
            sum(srv, offsetof(rb_shard_stats, publish_errors) + (size_t)k * sizeof(uint64_t));
        const char *name = rb_wire_code_name(k);
        if (strcmp(name, "unknown") == 0) {
            unnamed += v;
        } else if (v > 0) {
            put(&b, "ringbus_publish_errors_total{code=\"%s\"} %llu\n", name,
                (unsigned long long)v);
        }
    }
    if (unnamed > 0) {
        put(&b, "ringbus_publish_errors_total{code=\"unknown\"} %llu\n",
            (unsigned long long)unnamed);
    }
    counter(&b, "ringbus_publish_duplicates_total",
            "Publishes acknowledged as duplicates (an idempotency key or ephemeral content seen "
            "before): counted in outcome ok, not stored or delivered again.",
            SUM(srv, publish_duplicates));
    counter(&b, "ringbus_deliveries_total", "Live messages queued to subscribers.",
            SUM(srv, deliveries));
    counter(&b, "ringbus_delivery_bytes_total", "Encoded bytes of those messages.",
            SUM(srv, delivery_bytes));
    counter(&b, "ringbus_slow_consumer_closes_total",
            "Subscribers closed with resource_exhausted for a full send queue.",
            SUM(srv, slow_consumer_closes));
    counter(&b, "ringbus_publisher_pauses_total",
            "Times the server stopped reading a publisher until envelopes or acks freed up.",
            SUM(srv, publisher_pauses));
    gauge(&b, "ringbus_publishers_paused", "Publishers the server is not reading now.",
          SUM(srv, publishers_paused));
    counter(&b, "ringbus_quic_datagrams_forwarded_total",
            "QUIC datagrams that reached another shard's socket and were forwarded to the shard "
            "owning their connection.",
            SUM(srv, quic_forwarded));
    counter(&b, "ringbus_quic_datagrams_forward_dropped_total",
            "QUIC datagrams for another shard's connection dropped because that shard's mailbox "
            "was full (the peer retransmits).",
            SUM(srv, quic_forward_dropped));
    counter(&b, "ringbus_ephemeral_duplicates_total",
            "Ephemeral publishes not delivered again: the same content within their class's "
            "dedup window.",
            SUM(srv, ephemeral_duplicates));
    counter(&b, "ringbus_ephemeral_lagged_total",
            "Ephemeral messages dropped for subscribers that fell behind (each told by LAGGED).",
            SUM(srv, ephemeral_lagged));
    metric_head(&b, "ringbus_loop_turns_total", "counter", "Turns of each shard's loop.");
    for (uint32_t i = 0; i < srv->shard_count; i++) {
        put(&b, "ringbus_loop_turns_total{shard=\"%u\"} %llu\n", i,
            (unsigned long long)RB_STAT_GET(&srv->shards[i], loop_turns));
    }
    metric_head(&b, "ringbus_loop_busy_seconds_total", "counter",
                "Time each shard's loop spent outside its io_uring wait.");
    for (uint32_t i = 0; i < srv->shard_count; i++) {
        put(&b, "ringbus_loop_busy_seconds_total{shard=\"%u\"} %.6f\n", i,
            (double)RB_STAT_GET(&srv->shards[i], busy_ns) / 1e9);
    }
    counter(&b, "ringbus_frames_sent_total", "Frames queued to clients.", SUM(srv, frames_out));
    counter(&b, "ringbus_sent_bytes_total", "Frame bytes queued to clients.", SUM(srv, bytes_out));
    counter(&b, "ringbus_catchup_rows_total", "History rows queued to subscribers in catch-up.",
            SUM(srv, catchup_rows));
    metric_head(&b, "ringbus_storage_errors_total", "counter",
                "Storage requests the store refused or failed, by kind.");
    static const char *const store_ops[RB_STAT_STORE_OPS] = {"append", "read", "heads"};
    for (uint32_t i = 0; i < RB_STAT_STORE_OPS; i++) {
        put(&b, "ringbus_storage_errors_total{op=\"%s\"} %llu\n", store_ops[i],
            (unsigned long long)sum(srv, offsetof(rb_shard_stats, storage_errors) +
                                             (size_t)i * sizeof(uint64_t)));
    }
    counter(&b, "ringbus_storage_reconnects_total",
            "Store connections lost or attempts failed, each retried after a backoff (postgres).",
            srv->storage_ops != NULL && srv->storage_ops->reconnects != NULL
                ? srv->storage_ops->reconnects(srv->storage)
                : 0);
    gauge(&b, "ringbus_pending_buffer_bytes",
          "Live message bytes buffered for subscribers still in catch-up.",
          SUM(srv, pending_bytes));
    gauge(&b, "ringbus_send_queue_bytes",
          "Memory charged to the connections' send queues (frames not yet acknowledged by the "
          "transport).",
          SUM(srv, sendq_bytes));
    histogram(&b, srv, "ringbus_commit_latency_seconds",
              "Time from a batch's append request to its successful completion.",
              offsetof(rb_shard_stats, commit_latency), rb_stat_latency_le_ns,
              RB_STAT_LATENCY_BUCKETS, 1e9, offsetof(rb_shard_stats, commit_latency_ns));
    histogram(&b, srv, "ringbus_commit_batch_messages", "Publishes in each committed batch.",
              offsetof(rb_shard_stats, commit_batch), rb_stat_batch_le, RB_STAT_BATCH_BUCKETS, 1,
              offsetof(rb_shard_stats, commit_batch_msgs));
    histogram(&b, srv, "ringbus_catchup_duration_seconds",
              "Time from a MUTATE that adds topics to its CATCHUP_COMPLETE.",
              offsetof(rb_shard_stats, catchup_wave), rb_stat_wave_le_ms, RB_STAT_WAVE_BUCKETS, 1e3,
              offsetof(rb_shard_stats, catchup_wave_ms));
    gauge(&b, "ringbus_shards", "Shards (threads) of the daemon.", srv->shard_count);
    gauge(&b, "ringbus_ready", "1 once storage is ready and the listeners are open.",
          atomic_load(admin->ready) ? 1 : 0);
    gauge(&b, "ringbus_uptime_seconds", "Seconds since the daemon started its shards.",
          (rb_clock_ms() - admin->started_ms) / 1000u);
    process_metrics(&b);
    answer_body(resp, 200, "text/plain; version=0.0.4; charset=utf-8", &b);
}

/* ---- /v1/varz ---- */

static void varz(const rb_admin *admin, rb_http_span query, rb_http_response *resp)
{
    (void)query;
    const rb_server *srv = admin->server;
    body b = {0};
    if (srv == NULL) {
        put(&b, "{\"error\":\"no server\"}");
        answer_body(resp, 503, "application/json", &b);
        return;
    }
    const rb_config *c = atomic_load_explicit(&srv->cfg_shown, memory_order_acquire);
    c = c != NULL ? c : &srv->cfg; /* the newest reload's, else the start config */
    /* The version and server id come from the build and the config file,
     * never from a peer; they hold no quotes (config validates server_id). */
    put(&b,
        "{\"version\":\"%s\",\"server_id\":\"%s\",\"uptime_s\":%llu,\"ready\":%s,"
        "\"shards\":%u,\"listeners\":[",
        admin->version != NULL ? admin->version : "", c->server_id,
        (unsigned long long)((rb_clock_ms() - admin->started_ms) / 1000u),
        atomic_load(admin->ready) ? "true" : "false", srv->shard_count);
    for (uint32_t i = 0; i < c->listener_count; i++) {
        const rb_listener_config *l = &c->listeners[i];
        put(&b, "%s{\"transport\":\"%s\",\"address\":\"%s\",\"port\":%u}", i > 0 ? "," : "",
            rb_transport_name(l->transport), l->address, l->port);
    }
    put(&b,
        "],\"limits\":{\"max_connections_per_shard\":%u,\"max_frame_bytes\":%u,"
        "\"send_queue_bytes\":%llu,\"pending_buffer_bytes\":%llu,\"topics_per_stream\":%u},"
        "\"timeouts_ms\":{\"keepalive\":%u,\"handshake\":%u,\"close_grace\":%u}}",
        c->max_connections, c->max_frame_bytes, (unsigned long long)c->send_queue_bytes,
        (unsigned long long)c->pending_buffer_bytes, c->topics_per_stream, c->keepalive_ms,
        c->handshake_timeout_ms, c->close_grace_ms);
    answer_body(resp, 200, "application/json", &b);
}

/* ---- /v1/connz ---- */

typedef int introspect_fn(const rb_server *srv, rb_http_span query, char *out, size_t cap,
                          size_t *len);

/* A route answered by rb_connz_answer or rb_topicz_answer: JSON on 200,
 * their one-line reason otherwise. */
static void introspect(const rb_admin *admin, rb_http_span query, rb_http_response *resp,
                       introspect_fn *answer)
{
    body b = {0};
    if (admin->server == NULL || admin->server->shards == NULL) {
        put(&b, "{\"error\":\"no server\"}");
        answer_body(resp, 503, "application/json", &b);
        return;
    }
    int status = answer(admin->server, query, body_buf, sizeof body_buf, &b.len);
    b.full = b.len >= sizeof body_buf;
    answer_body(resp, status, status == 200 ? "application/json" : NULL, &b);
}

static void connz(const rb_admin *admin, rb_http_span query, rb_http_response *resp)
{
    introspect(admin, query, resp, rb_connz_answer);
}

static void topicz(const rb_admin *admin, rb_http_span query, rb_http_response *resp)
{
    introspect(admin, query, resp, rb_topicz_answer);
}

/* ---- JSON sections ---- */

void rb_admin_set_ready_check(rb_admin *admin, rb_admin_ready_fn *check)
{
    admin->ready_check = check;
}

int rb_admin_add_json(rb_admin *admin, const char *path, rb_admin_json_fn json, rb_err *err)
{
    if (admin->section_count == RB_ADMIN_SECTIONS_MAX) {
        return rb_err_set(err, RB_ELIMIT, 0, "admin route %s: more than %u JSON sections", path,
                          RB_ADMIN_SECTIONS_MAX);
    }
    admin->sections[admin->section_count++] = (rb_admin_section){.path = path, .json = json};
    return 0;
}

static void section(const rb_admin *admin, const rb_admin_section *sec, rb_http_response *resp)
{
    body b = {0};
    if (admin->server == NULL) {
        put(&b, "{\"error\":\"no server\"}");
        answer_body(resp, 503, "application/json", &b);
        return;
    }
    b.len = sec->json(admin->server, body_buf, sizeof body_buf);
    b.full = b.len >= sizeof body_buf;
    answer_body(resp, 200, "application/json", &b);
}

static bool refuse_method(rb_http_span method, rb_http_response *resp)
{
    if (rb_http_span_is(method, "GET")) {
        return false;
    }
    resp->status = 405;
    resp->extra_headers = "Allow: GET\r\n";
    resp->body = "only GET is supported";
    return true;
}

static const route routes[] = {
    {RB_ADMIN_HEALTH_PATH, healthz},
    {"/readyz", readyz},
    {"/metrics", metrics},
    {"/v1/varz", varz},
    {"/v1/connz", connz},
    {"/v1/topicz", topicz},
};

rb_http_router rb_admin_router(const rb_admin *admin)
{
    return (rb_http_router){.route = rb_admin_route, .ctx = (void *)admin};
}

/* The route for method and path (without its query): true with *resp
 * filled, false when the path is not a route. */
static bool lookup(const rb_admin *admin, rb_http_span method, rb_http_span path,
                   rb_http_span query, rb_http_response *resp)
{
    memset(resp, 0, sizeof *resp);
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (!rb_http_span_is(path, routes[i].path)) {
            continue;
        }
        if (!refuse_method(method, resp)) {
            routes[i].answer(admin, query, resp);
        }
        return true;
    }
    for (uint32_t i = 0; i < admin->section_count; i++) {
        if (rb_http_span_is(path, admin->sections[i].path)) {
            if (!refuse_method(method, resp)) {
                section(admin, &admin->sections[i], resp);
            }
            return true;
        }
    }
    return false;
}

bool rb_admin_route(void *ctx, const rb_http_request *req, rb_http_response *resp)
{
    rb_http_span path = rb_http_target_path(req);
    size_t rest = req->target.len - path.len;
    rb_http_span query = {path.ptr + path.len + (rest > 0 ? 1 : 0), rest > 0 ? rest - 1 : 0};
    return lookup(ctx, req->method, path, query, resp);
}

int rb_admin_h3_route(void *ctx, rb_h3 *h3, int64_t stream_id, const rb_h3_request *req,
                      rb_h3_response *resp)
{
    (void)h3;
    (void)stream_id;
    const rb_admin *admin = ctx;
    const char *q = strchr(req->path, '?');
    rb_http_span path = {req->path, q != NULL ? (size_t)(q - req->path) : strlen(req->path)};
    rb_http_span method = {req->method, strlen(req->method)};
    rb_http_span query = {q != NULL ? q + 1 : "", q != NULL ? strlen(q + 1) : 0};
    rb_http_response r;
    if (!lookup(admin, method, path, query, &r)) {
        r.status = 404;
        r.body = "no such path";
    }
    /* HTTP/3 has no Allow header here: the body says it. rb_h3 copies the
     * body before the next route call. */
    resp->status = (uint16_t)r.status;
    resp->content_type = r.content_type != NULL ? r.content_type : "text/plain; charset=utf-8";
    resp->body = (const uint8_t *)r.body;
    resp->body_len = r.body_len != 0 ? r.body_len : strlen(r.body);
    return RB_H3_ANSWERED;
}
