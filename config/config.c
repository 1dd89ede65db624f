/* The configuration schema: every key's type, default and range, applied to
 * the tree config/toml.c parses, plus the checks that span keys (queue sizes
 * against the frame size, listener clashes, Postgres settings). Syntax is
 * left to toml.c; what the values mean at run time is left to their users. */
#include "config/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/assert.h"
#include "common/base64.h"
#include "common/log.h"
#include "common/pattern.h"
#include "config/toml.h"

/* Postgres connections per shard: 64 x RB_SHARDS_MAX already exceeds what
 * one Postgres server accepts. */
#define PG_POOL_SIZE_MAX 64
/* Messages per group-commit batch; bounds one INSERT's parameter memory. */
#define PG_BATCH_MESSAGES_MAX 65536
/* Retention by age; a century is "forever" for a message bus. */
#define PG_RETENTION_AGE_S_MAX (100ull * 366 * 24 * 3600)
/* Longest key path (section.key or listener[N].key) shown in messages. */
#define PATH_BYTES_MAX 96
/* Keys longer than this get no "did you mean" suggestion. */
#define SUGGEST_KEY_BYTES_MAX 64

#define DEFAULT_ADDRESS "127.0.0.1"
#define DEFAULT_WS_PATH "/ringbus"

typedef struct loader {
    const char *name;
    rb_err *err;
    rb_config *cfg;
    const rb_toml_value *root;
} loader;

typedef enum field_kind {
    FK_U16,
    FK_U32,
    FK_U64,
    FK_BOOL,
    FK_STRING,
    FK_SECTION,
    FK_CUSTOM,
} field_kind;

typedef struct field field;
typedef int (*field_fn)(loader *ld, const char *path, const rb_toml_value *v, void *base);

typedef struct section {
    const char *path; /* "" for the root */
    const field *fields;
    size_t field_count;
} section;

struct field {
    const char *name;
    field_kind kind;
    size_t offset; /* into rb_config, or rb_listener_config for listener keys */
    uint64_t min;
    uint64_t max;
    size_t bytes; /* FK_STRING: capacity including the NUL */
    const section *sub;
    field_fn fn;
    uint32_t transports; /* listener keys: bit per rb_transport_kind it applies to */
};

#define U32(n, m, lo, hi)                                                                          \
    {                                                                                              \
        .name = (n), .kind = FK_U32, .offset = offsetof(rb_config, m), .min = (lo), .max = (hi)    \
    }
#define U64(n, m, lo, hi)                                                                          \
    {                                                                                              \
        .name = (n), .kind = FK_U64, .offset = offsetof(rb_config, m), .min = (lo), .max = (hi)    \
    }
#define BOOL(n, m)                                                                                 \
    {                                                                                              \
        .name = (n), .kind = FK_BOOL, .offset = offsetof(rb_config, m)                             \
    }
#define STR(n, s, m)                                                                               \
    {                                                                                              \
        .name = (n), .kind = FK_STRING, .offset = offsetof(s, m), .bytes = sizeof(((s *)0)->m)     \
    }
#define SECTION(n, sec)                                                                            \
    {                                                                                              \
        .name = (n), .kind = FK_SECTION, .sub = &(sec)                                             \
    }
#define CUSTOM(n, f)                                                                               \
    {                                                                                              \
        .name = (n), .kind = FK_CUSTOM, .fn = (f)                                                  \
    }
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

#define T_ALL        0x3Fu
#define T_TLS        ((1u << RB_TRANSPORT_TLS) | (1u << RB_TRANSPORT_WSS) | (1u << RB_TRANSPORT_QUIC))
#define T_WS         ((1u << RB_TRANSPORT_WS) | (1u << RB_TRANSPORT_WSS))
#define T_QUIC       (1u << RB_TRANSPORT_QUIC)
#define T_TLS_STREAM ((1u << RB_TRANSPORT_TLS) | (1u << RB_TRANSPORT_WSS))

static int log_level_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int log_format_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int server_id_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int backend_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int password_file_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int listeners_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int address_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int ws_path_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int origins_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int transport_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int tls_library_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int auth_mode_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int auth_users_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int auth_jwt_keys_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int cluster_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);
static int topic_classes_fn(loader *ld, const char *path, const rb_toml_value *v, void *base);

static const field limits_fields[] = {
    U32("max_connections", max_connections, 1, RB_CONNS_PER_SHARD_MAX),
    U32("max_frame_bytes", max_frame_bytes, RB_FRAME_BYTES_MIN, RB_FRAME_BYTES_MAX),
    U64("send_queue_bytes", send_queue_bytes, 1, RB_SEND_QUEUE_BYTES_MAX),
    U64("pending_buffer_bytes", pending_buffer_bytes, 1, RB_PENDING_BYTES_MAX),
    U32("topics_per_stream", topics_per_stream, 1, RB_TOPICS_PER_STREAM_MAX),
    U32("rpc_calls_per_connection", rpc_calls_per_connection, 1, RB_RPC_PER_CONN_MAX),
    U32("rpc_serves_per_connection", rpc_serves_per_connection, 1, RB_RPC_PER_CONN_MAX),
    U32("rpc_methods_per_connection", rpc_methods_per_connection, 1, RB_RPC_PER_CONN_MAX),
    U32("max_connections_total", max_connections_total, 1, RB_CONNS_TOTAL_MAX),
    U32("max_connections_per_address", max_connections_per_address, 1, RB_CONNS_TOTAL_MAX),
    U32("connection_rate_per_address", connection_rate_per_address, 1, RB_RATE_PER_SECOND_MAX),
    U32("publish_rate", publish_rate, 1, RB_RATE_PER_SECOND_MAX),
    U32("publish_burst", publish_burst, 1, RB_RATE_PER_SECOND_MAX),
    U32("mutates_per_second", mutates_per_second, 1, RB_RATE_PER_SECOND_MAX),
    U32("shard_queue_slots", shard_queue_slots, RB_SHARD_QUEUE_SLOTS_MIN, RB_SHARD_QUEUE_SLOTS_MAX),
    U32("shard_envelopes", shard_envelopes, RB_SHARD_XMSG_MIN, RB_SHARD_XMSG_MAX),
    U64("shard_block_bytes", shard_block_bytes, 1, RB_SHARD_BLOCK_BYTES_MAX),
    U32("shard_block_envelopes", shard_block_envelopes, RB_SHARD_BARE_XMSG_MIN,
        RB_SHARD_BARE_XMSG_MAX),
};
static const section limits_section = {"limits", limits_fields, COUNT(limits_fields)};

static const field timeouts_fields[] = {
    U32("keepalive_ms", keepalive_ms, 1, RB_DURATION_MS_MAX),
    U32("pong_timeout_ms", pong_timeout_ms, 1, RB_DURATION_MS_MAX),
    U32("handshake_timeout_ms", handshake_timeout_ms, 1, RB_DURATION_MS_MAX),
    U32("close_grace_ms", close_grace_ms, 1, RB_DURATION_MS_MAX),
    U32("shutdown_grace_ms", shutdown_grace_ms, 1, RB_SHUTDOWN_MS_MAX),
    U32("reconnect_hint_ms", reconnect_hint_ms, 0, RB_SHUTDOWN_MS_MAX),
};
static const section timeouts_section = {"timeouts", timeouts_fields, COUNT(timeouts_fields)};

static const field catchup_fields[] = {
    U32("topics_per_query", catchup_topics_per_query, 1, RB_CATCHUP_TOPICS_MAX),
    U32("rows_per_topic", catchup_rows_per_topic, 1, RB_CATCHUP_ROWS_MAX),
    U32("queries_in_flight", catchup_queries_in_flight, 1, RB_CATCHUP_INFLIGHT_MAX),
};
static const section catchup_section = {"catchup", catchup_fields, COUNT(catchup_fields)};

static const field dedup_fields[] = {
    U32("window_ms", dedup_window_ms, 1, RB_DEDUP_WINDOW_MS_MAX),
    U32("keys_per_topic", dedup_keys_per_topic, 1, RB_DEDUP_KEYS_MAX),
    U32("keys_per_shard", dedup_keys_per_shard, 1, RB_DEDUP_KEYS_MAX),
};
static const section dedup_section = {"dedup", dedup_fields, COUNT(dedup_fields)};

static const field memory_fields[] = {
    U64("retention_messages", memory_retention_messages, 1, RB_MEMORY_RETENTION_MESSAGES_MAX),
    U64("retention_bytes", memory_retention_bytes, 1, RB_MEMORY_RETENTION_BYTES_MAX),
};
static const section memory_section = {"storage.memory", memory_fields, COUNT(memory_fields)};

static const field postgres_fields[] = {
    STR("conninfo", rb_config, pg_conninfo),
    CUSTOM("password_file", password_file_fn),
    U32("pool_size", pg_pool_size, 1, PG_POOL_SIZE_MAX),
    U32("statement_timeout_ms", pg_statement_timeout_ms, 1, RB_DURATION_MS_MAX),
    U32("batch_messages", pg_batch_messages, 1, PG_BATCH_MESSAGES_MAX),
    U64("retention_messages", pg_retention_messages, 0, INT64_MAX),
    U64("retention_age_s", pg_retention_age_s, 0, PG_RETENTION_AGE_S_MAX),
};
static const section postgres_section = {"storage.postgres", postgres_fields,
                                         COUNT(postgres_fields)};

static const field storage_fields[] = {
    CUSTOM("backend", backend_fn),
    SECTION("memory", memory_section),
    SECTION("postgres", postgres_section),
};
static const section storage_section = {"storage", storage_fields, COUNT(storage_fields)};

static const field auth_fields[] = {
    CUSTOM("mode", auth_mode_fn),
    U32("failure_delay_ms", auth_failure_delay_ms, 1, RB_AUTH_FAILURE_DELAY_MS_MAX),
    U32("failures_per_minute", auth_failures_per_minute, 1, RB_RATE_PER_SECOND_MAX),
    U32("clock_skew_s", auth_clock_skew_s, 0, RB_AUTH_CLOCK_SKEW_S_MAX),
    U32("workers", auth_workers, 1, RB_AUTH_WORKERS_MAX),
    CUSTOM("user", auth_users_fn),
    CUSTOM("jwt_key", auth_jwt_keys_fn),
};
static const section auth_section = {"auth", auth_fields, COUNT(auth_fields)};

static const field root_fields[] = {
    U32("shards", shards, 1, RB_SHARDS_MAX), BOOL("pin_shards", pin_shards),
    CUSTOM("log_level", log_level_fn),       CUSTOM("log_format", log_format_fn),
    CUSTOM("server_id", server_id_fn),       SECTION("limits", limits_section),
    SECTION("timeouts", timeouts_section),   SECTION("catchup", catchup_section),
    SECTION("storage", storage_section),     SECTION("auth", auth_section),
    CUSTOM("listener", listeners_fn),        CUSTOM("cluster", cluster_fn),
    SECTION("dedup", dedup_section),         CUSTOM("topic_class", topic_classes_fn),
};
static const section root_section = {"", root_fields, COUNT(root_fields)};

/* Listener keys; transports says which transports accept each. */
static const field listener_fields[] = {
    {.name = "transport", .kind = FK_CUSTOM, .fn = transport_fn, .transports = T_ALL},
    {.name = "address", .kind = FK_CUSTOM, .fn = address_fn, .transports = T_ALL},
    {.name = "port",
     .kind = FK_U16,
     .offset = offsetof(rb_listener_config, port),
     .min = 1,
     .max = 65535,
     .transports = T_ALL},
    {.name = "cert",
     .kind = FK_STRING,
     .offset = offsetof(rb_listener_config, cert),
     .bytes = RB_PATH_BYTES_MAX,
     .transports = T_TLS},
    {.name = "key",
     .kind = FK_STRING,
     .offset = offsetof(rb_listener_config, key),
     .bytes = RB_PATH_BYTES_MAX,
     .transports = T_TLS},
    {.name = "client_ca",
     .kind = FK_STRING,
     .offset = offsetof(rb_listener_config, client_ca),
     .bytes = RB_PATH_BYTES_MAX,
     .transports = T_TLS},
    {.name = "tls_library", .kind = FK_CUSTOM, .fn = tls_library_fn, .transports = T_TLS_STREAM},
    {.name = "max_connections",
     .kind = FK_U32,
     .offset = offsetof(rb_listener_config, max_connections),
     .min = 1,
     .max = RB_CONNS_TOTAL_MAX,
     .transports = T_ALL},
    {.name = "quic_retry",
     .kind = FK_BOOL,
     .offset = offsetof(rb_listener_config, quic_retry),
     .transports = T_QUIC},
    {.name = "path", .kind = FK_CUSTOM, .fn = ws_path_fn, .transports = T_WS},
    {.name = "origins", .kind = FK_CUSTOM, .fn = origins_fn, .transports = T_WS},
};
static const section listener_section = {"listener", listener_fields, COUNT(listener_fields)};

static const char *const transport_names[] = {"tcp", "tls", "ws", "wss", "quic", "http"};
static const uint16_t transport_ports[] = {7400, 7401, 7402, 7403, 7404, 7420};
_Static_assert(sizeof transport_names / sizeof transport_names[0] == RB_TRANSPORT_KINDS,
               "a name per transport");

/* ---- errors ---- */

__attribute__((format(printf, 4, 5))) static int fail_pos(loader *ld, uint32_t line, uint32_t col,
                                                          const char *fmt, ...)
{
    char msg[RB_ERR_MSG_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (line == 0) {
        return rb_err_set(ld->err, RB_ECONFIG, 0, "%s: %s", ld->name, msg);
    }
    return rb_err_set(ld->err, RB_ECONFIG, 0, "%s:%u:%u: %s", ld->name, line, col, msg);
}

/* An error about a value, at the value's position; v may be NULL. */
__attribute__((format(printf, 4, 5))) static int fail_value(loader *ld, const rb_toml_value *v,
                                                            const char *path, const char *fmt, ...)
{
    char msg[RB_ERR_MSG_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    uint32_t line = v != NULL ? rb_toml_line(v) : 0;
    uint32_t col = v != NULL ? rb_toml_column(v) : 0;
    return fail_pos(ld, line, col, "%s: %s", path, msg);
}

static const char *a_type(const rb_toml_value *v)
{
    return rb_toml_type_article(rb_toml_type_of(v));
}

static int expect_type(loader *ld, const char *path, const rb_toml_value *v, rb_toml_type type,
                       const char *wanted)
{
    if (rb_toml_type_of(v) == type) {
        return 0;
    }
    return fail_value(ld, v, path, "expected %s, got %s", wanted, a_type(v));
}

/* Copies text for a message, control characters shown as '?'. */
static void show(char *out, size_t cap, const char *text, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        out[i] = c < 0x20 || c == 0x7F ? '?' : (char)c;
    }
    out[n] = '\0';
}

/* prefix.key for messages, cut to cap; control characters shown as '?'. */
static void join_path(char *out, size_t cap, const char *prefix, const char *key, size_t key_len)
{
    size_t n = strnlen(prefix, cap - 1);
    memcpy(out, prefix, n);
    if (n > 0 && n + 1 < cap) {
        out[n++] = '.';
    }
    show(out + n, cap - n, key, key_len);
}

/* Edit distance between two short strings (both under
 * SUGGEST_KEY_BYTES_MAX), ignoring ASCII case: "Port" is a typo of "port". */
static size_t edit_distance(const char *a, size_t a_len, const char *b, size_t b_len)
{
    size_t prev[SUGGEST_KEY_BYTES_MAX + 1];
    size_t cur[SUGGEST_KEY_BYTES_MAX + 1];
    RB_ASSERT(a_len <= SUGGEST_KEY_BYTES_MAX);
    RB_ASSERT(b_len <= SUGGEST_KEY_BYTES_MAX);
    for (size_t j = 0; j <= b_len; j++) {
        prev[j] = j;
    }
    for (size_t i = 1; i <= a_len; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= b_len; j++) {
            bool same = tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1]);
            size_t sub = prev[j - 1] + (same ? 0 : 1);
            size_t del = prev[j] + 1;
            size_t ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (b_len + 1) * sizeof prev[0]);
    }
    return prev[b_len];
}

/* The known key of sec nearest to key, if it is near enough to be a typo. */
static const char *suggest(const section *sec, const char *key, size_t key_len)
{
    const char *best = NULL;
    size_t best_distance = 3;
    if (key_len > SUGGEST_KEY_BYTES_MAX) {
        return NULL;
    }
    for (size_t i = 0; i < sec->field_count; i++) {
        const char *name = sec->fields[i].name;
        size_t d = edit_distance(key, key_len, name, strlen(name));
        if (d < best_distance) {
            best = name;
            best_distance = d;
        }
    }
    return best;
}

static int unknown_key(loader *ld, const section *sec, const char *prefix, const rb_toml_key *k)
{
    char path[PATH_BYTES_MAX];
    join_path(path, sizeof path, prefix, k->text, k->len);
    const char *near = suggest(sec, k->text, k->len);
    if (near == NULL) {
        return fail_pos(ld, k->line, k->column, "unknown key \"%s\"", path);
    }
    return fail_pos(ld, k->line, k->column, "unknown key \"%s\" (did you mean \"%s%s%s\"?)", path,
                    prefix, prefix[0] != '\0' ? "." : "", near);
}

/* ---- fields ---- */

static const field *find_field(const section *sec, const rb_toml_key *k)
{
    for (size_t i = 0; i < sec->field_count; i++) {
        const char *name = sec->fields[i].name;
        if (strlen(name) == k->len && memcmp(name, k->text, k->len) == 0) {
            return &sec->fields[i];
        }
    }
    return NULL;
}

static int get_integer(loader *ld, const char *path, const rb_toml_value *v, uint64_t min,
                       uint64_t max, uint64_t *out)
{
    int rc = expect_type(ld, path, v, RB_TOML_INTEGER, "an integer");
    if (rc < 0) {
        return rc;
    }
    int64_t n = rb_toml_integer(v);
    if (n < 0 || (uint64_t)n < min || (uint64_t)n > max) {
        return fail_value(ld, v, path, "%lld is out of range [%llu, %llu]", (long long)n,
                          (unsigned long long)min, (unsigned long long)max);
    }
    *out = (uint64_t)n;
    return 0;
}

/* A string without NUL bytes; the text stays owned by the document. */
static int get_string(loader *ld, const char *path, const rb_toml_value *v, const char **text,
                      size_t *len)
{
    int rc = expect_type(ld, path, v, RB_TOML_STRING, "a string");
    if (rc < 0) {
        return rc;
    }
    *text = rb_toml_string(v, len);
    if (strlen(*text) != *len) {
        return fail_value(ld, v, path, "contains a NUL character");
    }
    return 0;
}

static int copy_string(loader *ld, const char *path, const rb_toml_value *v, char *dst,
                       size_t bytes)
{
    const char *text = NULL;
    size_t len = 0;
    int rc = get_string(ld, path, v, &text, &len);
    if (rc < 0) {
        return rc;
    }
    if (len >= bytes) {
        return fail_value(ld, v, path, "%zu bytes is longer than the limit of %zu", len, bytes - 1);
    }
    memcpy(dst, text, len + 1);
    return 0;
}

static int load_section(loader *ld, const section *sec, const rb_toml_value *table, void *base);

static int load_field(loader *ld, const field *f, const char *path, const rb_toml_value *v,
                      void *base)
{
    char *dst = (char *)base + f->offset;
    uint64_t n = 0;
    int rc = 0;
    switch (f->kind) {
    case FK_U16:
    case FK_U32:
    case FK_U64:
        rc = get_integer(ld, path, v, f->min, f->max, &n);
        if (rc == 0 && f->kind == FK_U16) {
            *(uint16_t *)(void *)dst = (uint16_t)n;
        } else if (rc == 0 && f->kind == FK_U32) {
            *(uint32_t *)(void *)dst = (uint32_t)n;
        } else if (rc == 0) {
            *(uint64_t *)(void *)dst = n;
        }
        return rc;
    case FK_BOOL:
        rc = expect_type(ld, path, v, RB_TOML_BOOL, "a boolean");
        if (rc == 0) {
            *(bool *)(void *)dst = rb_toml_bool(v);
        }
        return rc;
    case FK_STRING:
        return copy_string(ld, path, v, dst, f->bytes);
    case FK_SECTION:
        rc = expect_type(ld, path, v, RB_TOML_TABLE, "a table");
        return rc < 0 ? rc : load_section(ld, f->sub, v, base);
    case FK_CUSTOM:
        return f->fn(ld, path, v, base);
    }
    RB_ASSERT(!"unknown field kind");
    return RB_EINVAL;
}

static int load_section(loader *ld, const section *sec, const rb_toml_value *table, void *base)
{
    RB_ASSERT(rb_toml_type_of(table) == RB_TOML_TABLE);
    for (size_t i = 0; i < rb_toml_count(table); i++) {
        rb_toml_key k;
        const rb_toml_value *v = rb_toml_entry(table, i, &k);
        const field *f = find_field(sec, &k);
        if (f == NULL) {
            return unknown_key(ld, sec, sec->path, &k);
        }
        char path[PATH_BYTES_MAX];
        join_path(path, sizeof path, sec->path, k.text, k.len);
        int rc = load_field(ld, f, path, v, base);
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

/* ---- custom keys ---- */

static int log_level_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_config *cfg = base;
    const char *text = NULL;
    size_t len = 0;
    rb_log_level level;
    int rc = get_string(ld, path, v, &text, &len);
    if (rc < 0) {
        return rc;
    }
    if (rb_log_level_parse(text, &level) != 0) {
        char shown[32];
        show(shown, sizeof shown, text, len);
        return fail_value(ld, v, path, "\"%s\" is not one of error, warn, info, debug", shown);
    }
    snprintf(cfg->log_level, sizeof cfg->log_level, "%s", text);
    return 0;
}

static int log_format_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_config *cfg = base;
    const char *text = NULL;
    size_t len = 0;
    rb_log_format format;
    int rc = get_string(ld, path, v, &text, &len);
    if (rc < 0) {
        return rc;
    }
    if (rb_log_format_parse(text, &format) != 0) {
        char shown[32];
        show(shown, sizeof shown, text, len);
        return fail_value(ld, v, path, "\"%s\" is not one of text, logfmt, json", shown);
    }
    snprintf(cfg->log_format, sizeof cfg->log_format, "%s", text);
    return 0;
}

static int server_id_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_config *cfg = base;
    int rc = copy_string(ld, path, v, cfg->server_id, sizeof cfg->server_id);
    if (rc < 0) {
        return rc;
    }
    if (cfg->server_id[0] == '\0') {
        return fail_value(ld, v, path, "must not be empty");
    }
    for (const char *c = cfg->server_id; *c != '\0'; c++) {
        if ((unsigned char)*c <= 0x20 || *c == 0x7F) {
            return fail_value(ld, v, path, "must not contain spaces or control characters");
        }
    }
    return 0;
}

/* A string that must be one of names: *index is its position, else an
 * error at the value listing the names. */
static int one_of(loader *ld, const char *path, const rb_toml_value *v, const char *const *names,
                  size_t count, size_t *index)
{
    const char *text = NULL;
    size_t len = 0;
    int rc = get_string(ld, path, v, &text, &len);
    if (rc < 0) {
        return rc;
    }
    for (size_t i = 0; i < count; i++) {
        if (strcmp(text, names[i]) == 0) {
            *index = i;
            return 0;
        }
    }
    char list[128];
    size_t n = 0;
    for (size_t i = 0; i < count && n < sizeof list; i++) {
        n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", i > 0 ? ", " : "", names[i]);
    }
    char shown[32];
    show(shown, sizeof shown, text, len);
    return fail_value(ld, v, path, "\"%s\" is not one of %s", shown, list);
}

static int backend_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    static const char *const names[] = {
        [RB_STORAGE_MEMORY] = "memory", [RB_STORAGE_POSTGRES] = "postgres"};
    size_t i = 0;
    int rc = one_of(ld, path, v, names, COUNT(names), &i);
    if (rc == 0) {
        ((rb_config *)base)->storage_backend = (rb_storage_backend)i;
    }
    return rc;
}

/* Checks that file is a readable regular file; when head is not NULL,
 * reads up to head_cap - 1 of its first bytes into head (NUL-terminated)
 * and its size into *size. */
static int check_file(loader *ld, const char *path, const rb_toml_value *v, const char *file,
                      char *head, size_t head_cap, uint64_t *size)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd == -1) {
        int e = errno;
        char why[128];
        return fail_value(ld, v, path, "cannot read \"%s\": %s", file,
                          strerror_r(e, why, sizeof why));
    }
    struct stat st;
    bool regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    ssize_t n = 0;
    if (regular && head != NULL) {
        n = read(fd, head, head_cap - 1);
        head[n > 0 ? n : 0] = '\0';
        *size = (uint64_t)st.st_size;
    }
    close(fd);
    if (!regular) {
        return fail_value(ld, v, path, "\"%s\" is not a regular file", file);
    }
    if (n < 0) {
        return fail_value(ld, v, path, "cannot read \"%s\"", file);
    }
    return 0;
}

/* The daemon reads the password file later; checking it now makes
 * --check-config and start-up fail early with the file's name. */
static int password_file_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_config *cfg = base;
    int rc = copy_string(ld, path, v, cfg->pg_password_file, sizeof cfg->pg_password_file);
    if (rc < 0 || cfg->pg_password_file[0] == '\0') {
        return rc;
    }
    return check_file(ld, path, v, cfg->pg_password_file, NULL, 0, NULL);
}

/* ---- listeners ---- */

static int transport_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    size_t i = 0;
    int rc = one_of(ld, path, v, transport_names, COUNT(transport_names), &i);
    if (rc == 0) {
        ((rb_listener_config *)base)->transport = (rb_transport_kind)i;
    }
    return rc;
}

static int tls_library_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    static const char *const names[] = {
        [RB_TLS_LIBRARY_OPENSSL] = "openssl", [RB_TLS_LIBRARY_WOLFSSL] = "wolfssl"};
    size_t i = 0;
    int rc = one_of(ld, path, v, names, COUNT(names), &i);
    if (rc == 0) {
        ((rb_listener_config *)base)->tls_library = (rb_tls_library)i;
    }
    return rc;
}

static int address_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_listener_config *l = base;
    unsigned char bytes[16];
    int rc = copy_string(ld, path, v, l->address, sizeof l->address);
    if (rc < 0) {
        return rc;
    }
    if (inet_pton(AF_INET, l->address, bytes) == 1 || inet_pton(AF_INET6, l->address, bytes) == 1) {
        return 0;
    }
    char shown[64];
    show(shown, sizeof shown, l->address, strlen(l->address));
    return fail_value(ld, v, path, "\"%s\" is not an IPv4 or IPv6 address literal%s", shown,
                      l->address[0] == '[' ? " (write IPv6 without brackets)" : "");
}

/* The path is matched against the HTTP request target of the upgrade. */
static int ws_path_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_listener_config *l = base;
    int rc = copy_string(ld, path, v, l->path, sizeof l->path);
    if (rc < 0) {
        return rc;
    }
    if (l->path[0] != '/') {
        return fail_value(ld, v, path, "must start with '/'");
    }
    for (const char *c = l->path; *c != '\0'; c++) {
        unsigned char u = (unsigned char)*c;
        if (u <= 0x20 || u >= 0x7F || u == '?' || u == '#') {
            return fail_value(ld, v, path, "must be printable ASCII without spaces, '?' or '#'");
        }
    }
    return 0;
}

static int origins_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_listener_config *l = base;
    int rc = expect_type(ld, path, v, RB_TOML_ARRAY, "an array of strings");
    if (rc < 0) {
        return rc;
    }
    size_t count = rb_toml_count(v);
    if (count > RB_WS_ORIGINS_MAX) {
        return fail_value(ld, rb_toml_item(v, RB_WS_ORIGINS_MAX), path, "more than %d origins",
                          RB_WS_ORIGINS_MAX);
    }
    for (size_t i = 0; i < count; i++) {
        char item_path[PATH_BYTES_MAX];
        const rb_toml_value *item = rb_toml_item(v, i);
        snprintf(item_path, sizeof item_path, "%s[%zu]", path, i + 1);
        rc = copy_string(ld, item_path, item, l->origins[i], sizeof l->origins[i]);
        if (rc < 0) {
            return rc;
        }
        if (l->origins[i][0] == '\0') {
            return fail_value(ld, item, item_path, "must not be empty");
        }
    }
    l->origin_count = (uint32_t)count;
    return 0;
}

static const char *transports_text(uint32_t mask)
{
    if (mask == T_QUIC) {
        return "quic";
    }
    if (mask == T_TLS_STREAM) {
        return "tls, wss";
    }
    return mask == T_TLS ? "tls, wss, quic" : "ws, wss";
}

/* Loads the keys of one listener after its transport is known. */
static int load_listener_keys(loader *ld, const rb_toml_value *t, const char *prefix,
                              rb_listener_config *l)
{
    for (size_t i = 0; i < rb_toml_count(t); i++) {
        rb_toml_key k;
        const rb_toml_value *v = rb_toml_entry(t, i, &k);
        const field *f = find_field(&listener_section, &k);
        if (f == NULL) {
            return unknown_key(ld, &listener_section, prefix, &k);
        }
        char path[PATH_BYTES_MAX];
        join_path(path, sizeof path, prefix, k.text, k.len);
        if ((f->transports & (1u << l->transport)) == 0) {
            return fail_pos(ld, k.line, k.column, "%s: not valid for transport \"%s\" (only %s)",
                            path, transport_names[l->transport], transports_text(f->transports));
        }
        int rc = load_field(ld, f, path, v, l);
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

static int load_listener(loader *ld, const rb_toml_value *t, size_t number, rb_listener_config *l)
{
    char prefix[32];
    snprintf(prefix, sizeof prefix, "listener[%zu]", number);
    int rc = expect_type(ld, prefix, t, RB_TOML_TABLE, "a table");
    if (rc < 0) {
        return rc;
    }
    memset(l, 0, sizeof *l);
    const rb_toml_value *tv = rb_toml_get(t, "transport");
    if (tv == NULL) {
        return fail_value(
            ld, t, prefix,
            "missing required key \"transport\" (one of tcp, tls, ws, wss, quic, http)");
    }
    char path[PATH_BYTES_MAX];
    snprintf(path, sizeof path, "%s.transport", prefix);
    rc = transport_fn(ld, path, tv, l);
    if (rc < 0) {
        return rc;
    }
    snprintf(l->address, sizeof l->address, "%s", DEFAULT_ADDRESS);
    l->port = transport_ports[l->transport];
    if ((T_WS & (1u << l->transport)) != 0) {
        snprintf(l->path, sizeof l->path, "%s", DEFAULT_WS_PATH);
    }
    rc = load_listener_keys(ld, t, prefix, l);
    if (rc < 0) {
        return rc;
    }
    if ((T_TLS & (1u << l->transport)) != 0 && (l->cert[0] == '\0' || l->key[0] == '\0')) {
        return fail_value(ld, t, prefix, "transport \"%s\" needs \"%s\" (a PEM file)",
                          transport_names[l->transport], l->cert[0] == '\0' ? "cert" : "key");
    }
    return 0;
}

/* Parses a validated address literal into bytes; returns its family. */
static int address_bytes(const char *address, unsigned char bytes[16])
{
    memset(bytes, 0, 16);
    if (inet_pton(AF_INET, address, bytes) == 1) {
        return AF_INET;
    }
    int ok = inet_pton(AF_INET6, address, bytes);
    RB_ASSERT(ok == 1);
    return AF_INET6;
}

/* Two listeners clash when they would bind the same port of the same
 * protocol (QUIC is UDP, the rest TCP) on the same address, or one of them
 * on the wildcard address of the same family. */
static bool listeners_clash(const rb_listener_config *a, const rb_listener_config *b)
{
    static const unsigned char zero[16];
    unsigned char ab[16];
    unsigned char bb[16];
    bool a_udp = a->transport == RB_TRANSPORT_QUIC;
    bool b_udp = b->transport == RB_TRANSPORT_QUIC;
    if (a_udp != b_udp || a->port != b->port) {
        return false;
    }
    int af = address_bytes(a->address, ab);
    if (af != address_bytes(b->address, bb)) {
        return false;
    }
    size_t n = af == AF_INET ? 4 : 16;
    return memcmp(ab, bb, n) == 0 || memcmp(ab, zero, n) == 0 || memcmp(bb, zero, n) == 0;
}

static int check_listener_clashes(loader *ld, const rb_toml_value *array)
{
    const rb_config *cfg = ld->cfg;
    for (uint32_t i = 1; i < cfg->listener_count; i++) {
        const rb_listener_config *a = &cfg->listeners[i];
        for (uint32_t j = 0; j < i; j++) {
            if (!listeners_clash(a, &cfg->listeners[j])) {
                continue;
            }
            char prefix[32];
            snprintf(prefix, sizeof prefix, "listener[%u]", i + 1);
            const rb_toml_value *first = rb_toml_item(array, j);
            return fail_value(ld, rb_toml_item(array, i), prefix,
                              "%s port %u/%s clashes with listener[%u] (at %u:%u)", a->address,
                              a->port, a->transport == RB_TRANSPORT_QUIC ? "udp" : "tcp", j + 1,
                              rb_toml_line(first), rb_toml_column(first));
        }
    }
    return 0;
}

static int listeners_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_config *cfg = base;
    int rc = expect_type(ld, path, v, RB_TOML_ARRAY, "an array of tables ([[listener]])");
    if (rc < 0) {
        return rc;
    }
    size_t count = rb_toml_count(v);
    if (count == 0) {
        return 0; /* the default listener stays */
    }
    if (count > RB_LISTENERS_MAX) {
        return fail_value(ld, rb_toml_item(v, RB_LISTENERS_MAX), path, "more than %d listeners",
                          RB_LISTENERS_MAX);
    }
    cfg->listener_count = 0;
    for (size_t i = 0; i < count; i++) {
        rc = load_listener(ld, rb_toml_item(v, i), i + 1, &cfg->listeners[i]);
        if (rc < 0) {
            return rc;
        }
        cfg->listener_count++;
    }
    return check_listener_clashes(ld, v);
}

static const rb_toml_value *lookup(const loader *ld, const char *section_name, const char *key);

/* ---- [auth] ---- */

static int auth_mode_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    static const char *const names[] = {
        [RB_AUTH_MODE_NONE] = "none", [RB_AUTH_MODE_REQUIRED] = "required"};
    size_t i = 0;
    int rc = one_of(ld, path, v, names, COUNT(names), &i);
    if (rc == 0) {
        ((rb_config *)base)->auth_mode = (rb_auth_mode)i;
    }
    return rc;
}

/* Remembers "file:line:column" of v for errors found after load. */
static void where_of(const loader *ld, const rb_toml_value *v, const char *path, char *out,
                     size_t cap)
{
    snprintf(out, cap, "%.200s:%u:%u: %s", ld->name, rb_toml_line(v), rb_toml_column(v), path);
}

/* Unpadded standard base64 of at least min_bytes decoded bytes. */
static bool b64_field_ok(const char *s, size_t len, size_t min_bytes)
{
    size_t n = 0;
    return rb_base64_decode(s, len, NULL, 0, &n, RB_BASE64_NOPAD, NULL) == 0 && n >= min_bytes;
}

/* A PHC argon2id string: $argon2id$v=19$m=M,t=T,p=P$salt$hash with the
 * cost parameters inside the limits of common/limits.h, so a hash in the
 * file cannot make one verification take gigabytes or minutes. */
static int check_password_hash(loader *ld, const char *path, const rb_toml_value *v, const char *h)
{
    unsigned m = 0;
    unsigned t = 0;
    unsigned p = 0;
    int used = 0;
    if (strncmp(h, "$argon2id$", 10) != 0) {
        return fail_value(ld, v, path,
                          "not an argon2id hash (make one with ringbusd --hash-password)");
    }
    if (sscanf(h, "$argon2id$v=19$m=%u,t=%u,p=%u$%n", &m, &t, &p, &used) != 3 || used == 0) {
        return fail_value(ld, v, path, "expected $argon2id$v=19$m=M,t=T,p=P$salt$hash");
    }
    if (m < RB_ARGON2_MEMORY_KIB_MIN || m > RB_ARGON2_MEMORY_KIB_MAX || t < 1 ||
        t > RB_ARGON2_TIME_COST_MAX || p < 1 || p > RB_ARGON2_PARALLELISM_MAX) {
        return fail_value(ld, v, path,
                          "m=%u,t=%u,p=%u outside m in [%u, %u], t in [1, %u], p in [1, %u]", m, t,
                          p, RB_ARGON2_MEMORY_KIB_MIN, RB_ARGON2_MEMORY_KIB_MAX,
                          RB_ARGON2_TIME_COST_MAX, RB_ARGON2_PARALLELISM_MAX);
    }
    const char *salt = h + used;
    const char *dollar = strchr(salt, '$');
    if (dollar == NULL || !b64_field_ok(salt, (size_t)(dollar - salt), 8) ||
        !b64_field_ok(dollar + 1, strlen(dollar + 1), 16)) {
        return fail_value(ld, v, path, "salt (>= 8 bytes) or hash (>= 16 bytes) is not base64");
    }
    return 0;
}

static int user_name_check(loader *ld, const char *path, const rb_toml_value *v, const char *name)
{
    size_t len = strlen(name);
    uint8_t cred[RB_AUTH_USER_BYTES_MAX + 8];
    rb_credentials c;
    if (len == 0 || len > RB_AUTH_USER_BYTES_MAX) {
        return fail_value(ld, v, path, "must be 1..%d bytes", RB_AUTH_USER_BYTES_MAX);
    }
    if (strncmp(name, RB_ANON_ID_PREFIX, strlen(RB_ANON_ID_PREFIX)) == 0) {
        return fail_value(ld, v, path, "must not start with \"%s\" (server-assigned ids)",
                          RB_ANON_ID_PREFIX);
    }
    /* The rules of a user name on the wire, checked by the wire decoder. */
    size_t n =
        rb_credentials_encode_password(cred, sizeof cred, (rb_bytes){(const uint8_t *)name, len},
                                       (rb_bytes){(const uint8_t *)"x", 1});
    rb_err why;
    if (rb_credentials_decode((rb_bytes){cred, n}, &c, &why) != 0) {
        return fail_value(ld, v, path, "%s", why.msg + strlen("credentials: user: "));
    }
    return 0;
}

static int pattern_list_fn(loader *ld, const char *path, const rb_toml_value *v,
                           rb_pattern_range *range)
{
    rb_config *cfg = ld->cfg;
    int rc = expect_type(ld, path, v, RB_TOML_ARRAY, "an array of topic patterns");
    if (rc < 0) {
        return rc;
    }
    size_t count = rb_toml_count(v);
    if (count > RB_PATTERNS_PER_LIST_MAX) {
        return fail_value(ld, rb_toml_item(v, RB_PATTERNS_PER_LIST_MAX), path,
                          "more than %d patterns", RB_PATTERNS_PER_LIST_MAX);
    }
    range->first = cfg->auth_pattern_count;
    range->count = 0;
    for (size_t i = 0; i < count; i++) {
        char item_path[PATH_BYTES_MAX];
        const rb_toml_value *item = rb_toml_item(v, i);
        const char *text = NULL;
        size_t len = 0;
        snprintf(item_path, sizeof item_path, "%.80s[%zu]", path, i + 1);
        rc = get_string(ld, item_path, item, &text, &len);
        if (rc < 0) {
            return rc;
        }
        rb_err why;
        if (rb_pattern_validate((rb_bytes){(const uint8_t *)text, len}, &why) != 0) {
            return fail_value(ld, item, item_path, "%s", why.msg);
        }
        if (cfg->auth_pattern_count >= RB_AUTH_PATTERNS_MAX ||
            cfg->auth_pattern_bytes_len + len > RB_AUTH_PATTERN_BYTES_MAX) {
            return fail_value(ld, item, item_path,
                              "more than %d patterns (or %u bytes) in all users",
                              RB_AUTH_PATTERNS_MAX, RB_AUTH_PATTERN_BYTES_MAX);
        }
        memcpy(cfg->auth_pattern_bytes + cfg->auth_pattern_bytes_len, text, len);
        cfg->auth_patterns[cfg->auth_pattern_count++] =
            (rb_pattern_ref){.off = cfg->auth_pattern_bytes_len, .len = (uint8_t)len};
        cfg->auth_pattern_bytes_len += (uint32_t)len;
        range->count++;
    }
    return 0;
}

static const char *const perm_list_names[RB_PERM_LISTS] = {
    [RB_PERM_PUBLISH] = "publish",
    [RB_PERM_SUBSCRIBE] = "subscribe",
    [RB_PERM_PUBLISH_DENY] = "publish_deny",
    [RB_PERM_SUBSCRIBE_DENY] = "subscribe_deny",
};

static const field user_fields[] = {
    {.name = "name"},         {.name = "password_hash"}, {.name = "publish"},
    {.name = "subscribe"},    {.name = "publish_deny"},  {.name = "subscribe_deny"},
    {.name = "publish_rate"},
};
static const section user_section = {"auth.user", user_fields, COUNT(user_fields)};

static int load_user_key(loader *ld, const char *path, const rb_toml_key *k, const rb_toml_value *v,
                         rb_auth_user_config *u)
{
    for (int i = 0; i < RB_PERM_LISTS; i++) {
        if (strlen(perm_list_names[i]) == k->len &&
            memcmp(k->text, perm_list_names[i], k->len) == 0) {
            return pattern_list_fn(ld, path, v, &u->lists[i]);
        }
    }
    if (k->len == 4 && memcmp(k->text, "name", 4) == 0) {
        int rc = copy_string(ld, path, v, u->name, sizeof u->name);
        return rc < 0 ? rc : user_name_check(ld, path, v, u->name);
    }
    if (k->len == 13 && memcmp(k->text, "password_hash", 13) == 0) {
        int rc = copy_string(ld, path, v, u->password_hash, sizeof u->password_hash);
        return rc < 0 ? rc : check_password_hash(ld, path, v, u->password_hash);
    }
    if (k->len == 12 && memcmp(k->text, "publish_rate", 12) == 0) {
        uint64_t n = 0;
        int rc = get_integer(ld, path, v, 1, RB_RATE_PER_SECOND_MAX, &n);
        u->publish_rate = (uint32_t)n;
        return rc;
    }
    return unknown_key(ld, &user_section, ld->cfg->auth_user_count == 0 ? "auth.user" : "auth.user",
                       k);
}

static int load_user(loader *ld, const rb_toml_value *t, size_t number, rb_auth_user_config *u)
{
    char prefix[32];
    snprintf(prefix, sizeof prefix, "auth.user[%zu]", number);
    int rc = expect_type(ld, prefix, t, RB_TOML_TABLE, "a table ([[auth.user]])");
    if (rc < 0) {
        return rc;
    }
    memset(u, 0, sizeof *u);
    where_of(ld, t, prefix, u->where, sizeof u->where);
    for (size_t i = 0; i < rb_toml_count(t); i++) {
        rb_toml_key k;
        const rb_toml_value *v = rb_toml_entry(t, i, &k);
        char path[PATH_BYTES_MAX];
        join_path(path, sizeof path, prefix, k.text, k.len);
        rc = load_user_key(ld, path, &k, v, u);
        if (rc < 0) {
            return rc;
        }
    }
    if (u->name[0] == '\0') {
        return fail_value(ld, t, prefix, "missing required key \"name\"");
    }
    return 0;
}

static int auth_users_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_config *cfg = base;
    int rc = expect_type(ld, path, v, RB_TOML_ARRAY, "an array of tables ([[auth.user]])");
    if (rc < 0) {
        return rc;
    }
    size_t count = rb_toml_count(v);
    if (count > RB_AUTH_USERS_MAX) {
        return fail_value(ld, rb_toml_item(v, RB_AUTH_USERS_MAX), path, "more than %d users",
                          RB_AUTH_USERS_MAX);
    }
    for (size_t i = 0; i < count; i++) {
        rb_auth_user_config *u = &cfg->auth_users[i];
        rc = load_user(ld, rb_toml_item(v, i), i + 1, u);
        if (rc < 0) {
            return rc;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(cfg->auth_users[j].name, u->name) == 0) {
                char prefix[32];
                snprintf(prefix, sizeof prefix, "auth.user[%zu]", i + 1);
                const rb_toml_value *first = rb_toml_item(v, j);
                return fail_value(ld, rb_toml_get(rb_toml_item(v, i), "name"), prefix,
                                  "name \"%s\" already used by auth.user[%zu] (at %u:%u)", u->name,
                                  j + 1, rb_toml_line(first), rb_toml_column(first));
            }
        }
        cfg->auth_user_count++;
    }
    return 0;
}

static const field jwt_key_fields[] = {
    {.name = "kid"},
    {.name = "algorithm"},
    {.name = "secret_file"},
    {.name = "public_key_file"},
};
static const section jwt_key_section = {"auth.jwt_key", jwt_key_fields, COUNT(jwt_key_fields)};
static const char *const jwt_alg_names[] = {"HS256", "RS256", "ES256"};

/* An HS256 secret shorter than the hash (32 bytes) is guessable; a key file
 * above 64 KiB is not a key. */
#define JWT_SECRET_BYTES_MIN   32
#define JWT_KEY_FILE_BYTES_MAX (64u * 1024u)

static int check_key_file(loader *ld, const char *path, const rb_toml_value *v,
                          const rb_jwt_key_config *key)
{
    char head[4096];
    uint64_t size = 0;
    int rc = check_file(ld, path, v, key->path, head, sizeof head, &size);
    if (rc < 0) {
        return rc;
    }
    if (size > JWT_KEY_FILE_BYTES_MAX) {
        return fail_value(ld, v, path, "\"%s\" is %llu bytes, above %u", key->path,
                          (unsigned long long)size, JWT_KEY_FILE_BYTES_MAX);
    }
    if (key->algorithm == RB_JWT_HS256) {
        /* One trailing newline (from echo or an editor) is not part of it. */
        uint64_t n =
            size > 0 && size <= sizeof head - 1 && head[size - 1] == '\n' ? size - 1 : size;
        if (n < JWT_SECRET_BYTES_MIN) {
            return fail_value(ld, v, path, "\"%s\" holds %llu bytes; HS256 needs at least %d",
                              key->path, (unsigned long long)n, JWT_SECRET_BYTES_MIN);
        }
        return 0;
    }
    if (strstr(head, "-----BEGIN PUBLIC KEY-----") == NULL) {
        return fail_value(ld, v, path, "\"%s\" holds no PEM public key (BEGIN PUBLIC KEY)",
                          key->path);
    }
    return 0;
}

static int load_jwt_key_fields(loader *ld, const rb_toml_value *t, const char *prefix,
                               rb_jwt_key_config *key, const rb_toml_value **file_v,
                               const char **file_key)
{
    for (size_t i = 0; i < rb_toml_count(t); i++) {
        rb_toml_key k;
        const rb_toml_value *v = rb_toml_entry(t, i, &k);
        char path[PATH_BYTES_MAX];
        join_path(path, sizeof path, prefix, k.text, k.len);
        const field *f = find_field(&jwt_key_section, &k);
        int rc = 0;
        if (f == NULL) {
            return unknown_key(ld, &jwt_key_section, "auth.jwt_key", &k);
        } else if (strcmp(f->name, "kid") == 0) {
            rc = copy_string(ld, path, v, key->kid, sizeof key->kid);
            if (rc == 0 && key->kid[0] == '\0') {
                rc = fail_value(ld, v, path,
                                "must not be empty (leave it out to match tokens without kid)");
            }
        } else if (strcmp(f->name, "algorithm") == 0) {
            const char *text = NULL;
            size_t len = 0;
            rc = get_string(ld, path, v, &text, &len);
            size_t a = 0;
            while (rc == 0 && a < COUNT(jwt_alg_names) && strcmp(text, jwt_alg_names[a]) != 0) {
                a++;
            }
            if (rc == 0 && a == COUNT(jwt_alg_names)) {
                char shown[32];
                show(shown, sizeof shown, text, len);
                rc = fail_value(ld, v, path, "\"%s\" is not one of HS256, RS256, ES256", shown);
            }
            key->algorithm = (rb_jwt_alg)a;
        } else if (*file_v != NULL) {
            rc = fail_value(ld, v, path, "give only one of secret_file and public_key_file");
        } else {
            *file_v = v;
            *file_key = f->name;
            rc = copy_string(ld, path, v, key->path, sizeof key->path);
        }
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

static int load_jwt_key(loader *ld, const rb_toml_value *t, size_t number, rb_jwt_key_config *key)
{
    char prefix[32];
    snprintf(prefix, sizeof prefix, "auth.jwt_key[%zu]", number);
    int rc = expect_type(ld, prefix, t, RB_TOML_TABLE, "a table ([[auth.jwt_key]])");
    if (rc < 0) {
        return rc;
    }
    memset(key, 0, sizeof *key);
    const rb_toml_value *file_v = NULL;
    const char *file_key = NULL;
    rc = load_jwt_key_fields(ld, t, prefix, key, &file_v, &file_key);
    if (rc < 0) {
        return rc;
    }
    if (rb_toml_get(t, "algorithm") == NULL) {
        return fail_value(ld, t, prefix,
                          "missing required key \"algorithm\" (HS256, RS256, ES256)");
    }
    const char *want = key->algorithm == RB_JWT_HS256 ? "secret_file" : "public_key_file";
    if (file_v == NULL) {
        return fail_value(ld, t, prefix, "%s needs \"%s\"", jwt_alg_names[key->algorithm], want);
    }
    char path[PATH_BYTES_MAX];
    snprintf(path, sizeof path, "%s.%s", prefix, file_key);
    if (strcmp(file_key, want) != 0) {
        return fail_value(ld, file_v, path, "%s takes \"%s\", not \"%s\"",
                          jwt_alg_names[key->algorithm], want, file_key);
    }
    if (key->path[0] == '\0') {
        return fail_value(ld, file_v, path, "must not be empty");
    }
    where_of(ld, file_v, path, key->where, sizeof key->where);
    return check_key_file(ld, path, file_v, key);
}

static int auth_jwt_keys_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_config *cfg = base;
    int rc = expect_type(ld, path, v, RB_TOML_ARRAY, "an array of tables ([[auth.jwt_key]])");
    if (rc < 0) {
        return rc;
    }
    size_t count = rb_toml_count(v);
    if (count > RB_AUTH_JWT_KEYS_MAX) {
        return fail_value(ld, rb_toml_item(v, RB_AUTH_JWT_KEYS_MAX), path, "more than %d keys",
                          RB_AUTH_JWT_KEYS_MAX);
    }
    for (size_t i = 0; i < count; i++) {
        rb_jwt_key_config *key = &cfg->auth_jwt_keys[i];
        rc = load_jwt_key(ld, rb_toml_item(v, i), i + 1, key);
        if (rc < 0) {
            return rc;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(cfg->auth_jwt_keys[j].kid, key->kid) == 0) {
                char prefix[32];
                snprintf(prefix, sizeof prefix, "auth.jwt_key[%zu]", i + 1);
                return fail_value(ld, rb_toml_item(v, i), prefix,
                                  key->kid[0] != '\0'
                                      ? "kid \"%s\" already used by auth.jwt_key[%zu]"
                                      : "%sa second key without kid (auth.jwt_key[%zu] has none); "
                                        "give each a kid",
                                  key->kid, j + 1);
            }
        }
        cfg->auth_jwt_key_count++;
    }
    return 0;
}

/* auth.mode = "required" with no way to sign in would refuse everyone. */
static int check_auth(loader *ld)
{
    const rb_config *cfg = ld->cfg;
    if (cfg->auth_mode != RB_AUTH_MODE_REQUIRED) {
        return 0;
    }
    bool any = cfg->auth_jwt_key_count > 0;
    for (uint32_t i = 0; i < cfg->auth_user_count && !any; i++) {
        any = cfg->auth_users[i].password_hash[0] != '\0';
    }
    for (uint32_t i = 0; i < cfg->listener_count && !any; i++) {
        any = cfg->listeners[i].client_ca[0] != '\0' && cfg->auth_user_count > 0;
    }
    if (!any) {
        return fail_value(ld, lookup(ld, "auth", "mode"), "auth.mode",
                          "\"required\" needs a [[auth.jwt_key]], a [[auth.user]] with a "
                          "password_hash, or users and a listener with client_ca");
    }
    return 0;
}

/* ---- [cluster] ---- */

static int cluster_id_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_config *cfg = base;
    int rc = copy_string(ld, path, v, cfg->cluster_id, sizeof cfg->cluster_id);
    if (rc < 0) {
        return rc;
    }
    if (cfg->cluster_id[0] == '\0') {
        return fail_value(ld, v, path, "must not be empty");
    }
    for (const char *c = cfg->cluster_id; *c != '\0'; c++) {
        if (!isalnum((unsigned char)*c) && *c != '.' && *c != '_' && *c != '-') {
            return fail_value(ld, v, path, "may hold only letters, digits, '.', '_' and '-'");
        }
    }
    return 0;
}

/* The secret is read at load (so --check-config proves it is usable) and
 * must be private to the daemon's user: anyone who can read it can join
 * the mesh. */
static int secret_file_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_config *cfg = base;
    int rc = copy_string(ld, path, v, cfg->cluster_secret_file, sizeof cfg->cluster_secret_file);
    if (rc < 0) {
        return rc;
    }
    const char *file = cfg->cluster_secret_file;
    if (file[0] == '\0') {
        return fail_value(ld, v, path, "must not be empty");
    }
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd == -1) {
        int e = errno;
        char why[128];
        return fail_value(ld, v, path, "cannot read \"%s\": %s", file,
                          strerror_r(e, why, sizeof why));
    }
    struct stat st;
    ssize_t n = -1;
    bool regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    if (regular && (st.st_mode & 077) == 0) {
        n = read(fd, cfg->cluster_secret, sizeof cfg->cluster_secret);
    }
    close(fd);
    if (!regular) {
        return fail_value(ld, v, path, "\"%s\" is not a regular file", file);
    }
    if ((st.st_mode & 077) != 0) {
        return fail_value(ld, v, path,
                          "\"%s\" has mode %04o: group and others must have no access "
                          "(chmod 600)",
                          file, (unsigned)(st.st_mode & 07777));
    }
    if (n < 0 || (uint64_t)st.st_size > RB_CLUSTER_SECRET_BYTES_MAX) {
        return fail_value(ld, v, path, "\"%s\" is not readable or above %u bytes", file,
                          RB_CLUSTER_SECRET_BYTES_MAX);
    }
    /* One trailing newline (from echo or an editor) is not part of it. */
    if (n > 0 && cfg->cluster_secret[n - 1] == '\n') {
        n--;
    }
    if (n < RB_CLUSTER_SECRET_BYTES_MIN) {
        return fail_value(ld, v, path, "\"%s\" holds %zd bytes; the secret needs at least %d", file,
                          n, RB_CLUSTER_SECRET_BYTES_MIN);
    }
    cfg->cluster_secret_len = (uint32_t)n;
    return 0;
}

static int literal_address(loader *ld, const char *path, const rb_toml_value *v, char *dst,
                           size_t cap)
{
    unsigned char bytes[16];
    int rc = copy_string(ld, path, v, dst, cap);
    if (rc < 0) {
        return rc;
    }
    if (inet_pton(AF_INET, dst, bytes) == 1 || inet_pton(AF_INET6, dst, bytes) == 1) {
        return 0;
    }
    char shown[64];
    show(shown, sizeof shown, dst, strlen(dst));
    return fail_value(ld, v, path, "\"%s\" is not an IPv4 or IPv6 address literal", shown);
}

static int cluster_address_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_config *cfg = base;
    return literal_address(ld, path, v, cfg->cluster_address, sizeof cfg->cluster_address);
}

static int peer_address_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_peer_config *p = base;
    return literal_address(ld, path, v, p->address, sizeof p->address);
}

static const field peer_fields[] = {
    {.name = "id",
     .kind = FK_U16,
     .offset = offsetof(rb_peer_config, id),
     .min = 1,
     .max = RB_CLUSTER_NODE_ID_MAX},
    CUSTOM("address", peer_address_fn),
    {.name = "port",
     .kind = FK_U16,
     .offset = offsetof(rb_peer_config, port),
     .min = 1,
     .max = 65535},
};
static const section peer_section = {"cluster.peer", peer_fields, COUNT(peer_fields)};

static int load_peer(loader *ld, const rb_toml_value *t, size_t number, rb_peer_config *p)
{
    char prefix[32];
    snprintf(prefix, sizeof prefix, "cluster.peer[%zu]", number);
    int rc = expect_type(ld, prefix, t, RB_TOML_TABLE, "a table ([[cluster.peer]])");
    if (rc < 0) {
        return rc;
    }
    memset(p, 0, sizeof *p);
    p->port = RB_CLUSTER_PORT_DEFAULT;
    for (size_t i = 0; i < rb_toml_count(t); i++) {
        rb_toml_key k;
        const rb_toml_value *v = rb_toml_entry(t, i, &k);
        const field *f = find_field(&peer_section, &k);
        if (f == NULL) {
            return unknown_key(ld, &peer_section, prefix, &k);
        }
        char path[PATH_BYTES_MAX];
        join_path(path, sizeof path, prefix, k.text, k.len);
        rc = load_field(ld, f, path, v, p);
        if (rc < 0) {
            return rc;
        }
    }
    if (p->id == 0 || p->address[0] == '\0') {
        return fail_value(ld, t, prefix, "missing required key \"%s\"",
                          p->id == 0 ? "id" : "address");
    }
    return 0;
}

static int peers_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_config *cfg = base;
    int rc = expect_type(ld, path, v, RB_TOML_ARRAY, "an array of tables ([[cluster.peer]])");
    if (rc < 0) {
        return rc;
    }
    size_t count = rb_toml_count(v);
    if (count > RB_CLUSTER_PEERS_MAX) {
        return fail_value(ld, rb_toml_item(v, RB_CLUSTER_PEERS_MAX), path, "more than %d peers",
                          RB_CLUSTER_PEERS_MAX);
    }
    for (size_t i = 0; i < count; i++) {
        rb_peer_config *p = &cfg->cluster_peers[i];
        rc = load_peer(ld, rb_toml_item(v, i), i + 1, p);
        for (size_t j = 0; rc == 0 && j < i; j++) {
            if (cfg->cluster_peers[j].id == p->id) {
                char prefix[32];
                snprintf(prefix, sizeof prefix, "cluster.peer[%zu].id", i + 1);
                rc = fail_value(ld, rb_toml_get(rb_toml_item(v, i), "id"), prefix,
                                "%u is already the id of cluster.peer[%zu]", p->id, j + 1);
            }
        }
        if (rc < 0) {
            return rc;
        }
        cfg->cluster_peer_count++;
    }
    return 0;
}

static const field cluster_fields[] = {
    {.name = "node_id",
     .kind = FK_U16,
     .offset = offsetof(rb_config, cluster_node_id),
     .min = 1,
     .max = RB_CLUSTER_NODE_ID_MAX},
    CUSTOM("cluster_id", cluster_id_fn),
    CUSTOM("secret_file", secret_file_fn),
    CUSTOM("address", cluster_address_fn),
    {.name = "port",
     .kind = FK_U16,
     .offset = offsetof(rb_config, cluster_port),
     .min = 1,
     .max = 65535},
    CUSTOM("peer", peers_fn),
};
static const section cluster_section = {"cluster", cluster_fields, COUNT(cluster_fields)};

static int cluster_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_config *cfg = base;
    int rc = expect_type(ld, path, v, RB_TOML_TABLE, "a table ([cluster])");
    rc = rc ? rc : load_section(ld, &cluster_section, v, base);
    if (rc < 0) {
        return rc;
    }
    static const char *const required[] = {"node_id", "cluster_id", "secret_file"};
    for (size_t i = 0; i < COUNT(required); i++) {
        if (rb_toml_get(v, required[i]) == NULL) {
            return fail_value(ld, v, "cluster", "missing required key \"%s\"", required[i]);
        }
    }
    for (uint32_t i = 0; i < cfg->cluster_peer_count; i++) {
        if (cfg->cluster_peers[i].id == cfg->cluster_node_id) {
            char prefix[32];
            snprintf(prefix, sizeof prefix, "cluster.peer[%u].id", i + 1);
            const rb_toml_value *peers = rb_toml_get(v, "peer");
            return fail_value(ld, rb_toml_get(rb_toml_item(peers, i), "id"), prefix,
                              "%u is this node's own cluster.node_id", cfg->cluster_node_id);
        }
    }
    return 0;
}

/* A cluster shares one Postgres: with the memory store each node would
 * number the same topic on its own. */
static int check_cluster(loader *ld)
{
    const rb_config *cfg = ld->cfg;
    if (cfg->cluster_node_id == 0 || cfg->storage_backend == RB_STORAGE_POSTGRES) {
        return 0;
    }
    const rb_toml_value *v = lookup(ld, "storage", "backend");
    if (v != NULL) {
        return fail_value(ld, v, "storage.backend",
                          "[cluster] needs \"postgres\" (every node shares one database), not "
                          "\"memory\"");
    }
    return fail_value(ld, lookup(ld, "cluster", "node_id"), "cluster",
                      "needs storage.backend = \"postgres\" (every node shares one database); "
                      "the default is \"memory\"");
}

/* ---- checks across keys ---- */

/* The value at section.key in the document, or NULL. */
static const rb_toml_value *lookup(const loader *ld, const char *section_name, const char *key)
{
    const rb_toml_value *t = ld->root;
    if (section_name != NULL) {
        t = rb_toml_get(t, section_name);
        if (t == NULL || rb_toml_type_of(t) != RB_TOML_TABLE) {
            return NULL;
        }
    }
    return rb_toml_get(t, key);
}

static int check_at_least_frame(loader *ld, const char *key, uint64_t value)
{
    const rb_config *cfg = ld->cfg;
    if (value >= cfg->max_frame_bytes) {
        return 0;
    }
    /* Blame the key the file set: this one, else the frame size. */
    const rb_toml_value *v = lookup(ld, "limits", key);
    if (v == NULL) {
        v = lookup(ld, "limits", "max_frame_bytes");
    }
    char path[PATH_BYTES_MAX];
    snprintf(path, sizeof path, "limits.%s", key);
    return fail_value(ld, v, path, "%llu is less than limits.max_frame_bytes (%u)",
                      (unsigned long long)value, cfg->max_frame_bytes);
}

/* ---- [[topic_class]] ---- */

static int class_pattern_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_topic_class_config *c = base;
    const char *text = NULL;
    size_t len = 0;
    int rc = get_string(ld, path, v, &text, &len);
    if (rc < 0) {
        return rc;
    }
    rb_err why;
    if (rb_pattern_validate((rb_bytes){(const uint8_t *)text, len}, &why) != 0) {
        return fail_value(ld, v, path, "%s", why.msg);
    }
    memcpy(c->pattern, text, len + 1);
    return 0;
}

static int class_storage_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    static const char *const names[] = {"stored", "none"};
    rb_topic_class_config *c = base;
    size_t i = 0;
    int rc = one_of(ld, path, v, names, COUNT(names), &i);
    if (rc == 0) {
        c->storage = i == 0 ? RB_TOPIC_STORED : RB_TOPIC_EPHEMERAL;
    }
    return rc;
}

static const field class_fields[] = {
    CUSTOM("pattern", class_pattern_fn),
    CUSTOM("storage", class_storage_fn),
    {.name = "dedup_window_ms",
     .kind = FK_U32,
     .offset = offsetof(rb_topic_class_config, dedup_window_ms),
     .min = 0,
     .max = RB_DEDUP_WINDOW_MS_MAX},
    {.name = "max_message_bytes",
     .kind = FK_U32,
     .offset = offsetof(rb_topic_class_config, max_message_bytes),
     .min = 1,
     .max = RB_FRAME_BYTES_MAX},
    {.name = "echo", .kind = FK_BOOL, .offset = offsetof(rb_topic_class_config, echo)},
};
static const section class_section = {"topic_class", class_fields, COUNT(class_fields)};

static int load_class(loader *ld, const rb_toml_value *t, size_t number, rb_topic_class_config *c)
{
    char prefix[32];
    snprintf(prefix, sizeof prefix, "topic_class[%zu]", number);
    int rc = expect_type(ld, prefix, t, RB_TOML_TABLE, "a table ([[topic_class]])");
    if (rc < 0) {
        return rc;
    }
    memset(c, 0, sizeof *c);
    c->echo = true;
    where_of(ld, t, prefix, c->where, sizeof c->where);
    for (size_t i = 0; i < rb_toml_count(t); i++) {
        rb_toml_key k;
        const rb_toml_value *v = rb_toml_entry(t, i, &k);
        const field *f = find_field(&class_section, &k);
        if (f == NULL) {
            return unknown_key(ld, &class_section, prefix, &k);
        }
        char path[PATH_BYTES_MAX];
        join_path(path, sizeof path, prefix, k.text, k.len);
        rc = load_field(ld, f, path, v, c);
        if (rc < 0) {
            return rc;
        }
    }
    if (c->pattern[0] == '\0') {
        return fail_value(ld, t, prefix, "missing required key \"pattern\"");
    }
    if (!c->echo && c->storage == RB_TOPIC_STORED) {
        /* History read from the store keeps no publisher, so a stored
         * topic could not keep the promise on catch-up. */
        return fail_value(ld, rb_toml_get(t, "echo"), prefix,
                          "echo = false needs storage = \"none\" (stored history does not "
                          "record its publisher)");
    }
    return 0;
}

static int topic_classes_fn(loader *ld, const char *path, const rb_toml_value *v, void *base)
{
    rb_config *cfg = base;
    int rc = expect_type(ld, path, v, RB_TOML_ARRAY, "an array of tables ([[topic_class]])");
    if (rc < 0) {
        return rc;
    }
    size_t count = rb_toml_count(v);
    if (count > RB_TOPIC_CLASSES_MAX) {
        return fail_value(ld, rb_toml_item(v, RB_TOPIC_CLASSES_MAX), path,
                          "more than %d topic classes", RB_TOPIC_CLASSES_MAX);
    }
    for (size_t i = 0; i < count; i++) {
        rb_topic_class_config *c = &cfg->topic_classes[i];
        rc = load_class(ld, rb_toml_item(v, i), i + 1, c);
        for (size_t j = 0; rc == 0 && j < i; j++) {
            if (strcmp(cfg->topic_classes[j].pattern, c->pattern) == 0) {
                char at[32];
                snprintf(at, sizeof at, "topic_class[%zu].pattern", i + 1);
                rc = fail_value(ld, rb_toml_get(rb_toml_item(v, i), "pattern"), at,
                                "\"%s\" is already the pattern of topic_class[%zu]", c->pattern,
                                j + 1);
            }
        }
        if (rc < 0) {
            return rc;
        }
        cfg->topic_class_count++;
    }
    return 0;
}

/* A class's max_message_bytes must be reachable: a message travels in one
 * MESSAGES frame of at most max_frame_bytes. */
static int check_topic_classes(loader *ld)
{
    const rb_config *cfg = ld->cfg;
    const rb_toml_value *arr = rb_toml_get(ld->root, "topic_class");
    for (uint32_t i = 0; i < cfg->topic_class_count; i++) {
        const rb_topic_class_config *c = &cfg->topic_classes[i];
        if (c->max_message_bytes <= cfg->max_frame_bytes) {
            continue;
        }
        char at[48];
        snprintf(at, sizeof at, "topic_class[%u].max_message_bytes", i + 1);
        return fail_value(ld, rb_toml_get(rb_toml_item(arr, i), "max_message_bytes"), at,
                          "%u is more than limits.max_frame_bytes (%u)", c->max_message_bytes,
                          cfg->max_frame_bytes);
    }
    return 0;
}

static int check_cross(loader *ld)
{
    const rb_config *cfg = ld->cfg;
    int rc = check_at_least_frame(ld, "send_queue_bytes", cfg->send_queue_bytes);
    if (rc == 0) {
        rc = check_at_least_frame(ld, "pending_buffer_bytes", cfg->pending_buffer_bytes);
    }
    if (rc == 0) {
        rc = check_at_least_frame(ld, "shard_block_bytes", cfg->shard_block_bytes / 2);
    }
    if (rc == 0 && (cfg->shard_queue_slots & (cfg->shard_queue_slots - 1)) != 0) {
        rc = fail_value(ld, lookup(ld, "limits", "shard_queue_slots"), "limits.shard_queue_slots",
                        "%u is not a power of two", cfg->shard_queue_slots);
    }
    if (rc == 0 && cfg->storage_backend == RB_STORAGE_POSTGRES && cfg->pg_conninfo[0] == '\0') {
        rc = fail_value(ld, lookup(ld, "storage", "backend"), "storage.backend",
                        "\"postgres\" needs storage.postgres.conninfo (a libpq connection string)");
    }
    rc = rc ? rc : check_cluster(ld);
    rc = rc ? rc : check_topic_classes(ld);
    return rc ? rc : check_auth(ld);
}

/* ---- public ---- */

static uint32_t default_shards(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) {
        return 1;
    }
    return n > RB_SHARDS_MAX ? RB_SHARDS_MAX : (uint32_t)n;
}

static void default_server_id(char *out, size_t cap)
{
    char host[HOST_NAME_MAX + 1];
    if (gethostname(host, sizeof host) != 0 || host[0] == '\0') {
        snprintf(host, sizeof host, "ringbusd");
    }
    host[HOST_NAME_MAX] = '\0';
    snprintf(out, cap, "%.*s", (int)(cap - 1), host);
}

void rb_config_defaults(rb_config *cfg)
{
    RB_ASSERT(cfg != NULL);
    memset(cfg, 0, sizeof *cfg);
    cfg->shards = default_shards();
    cfg->pin_shards = false;
    snprintf(cfg->log_level, sizeof cfg->log_level, "info");
    snprintf(cfg->log_format, sizeof cfg->log_format, "text");
    default_server_id(cfg->server_id, sizeof cfg->server_id);
    cfg->max_connections = RB_CONNS_PER_SHARD_DEFAULT;
    cfg->max_frame_bytes = RB_FRAME_BYTES_DEFAULT;
    cfg->send_queue_bytes = RB_SEND_QUEUE_BYTES_DEFAULT;
    cfg->pending_buffer_bytes = RB_PENDING_BYTES_DEFAULT;
    cfg->topics_per_stream = RB_TOPICS_PER_STREAM_DEFAULT;
    cfg->rpc_calls_per_connection = RB_RPC_CALLS_PER_CONN_DEFAULT;
    cfg->rpc_serves_per_connection = RB_RPC_SERVES_PER_CONN_DEFAULT;
    cfg->rpc_methods_per_connection = RB_RPC_METHODS_PER_CONN_DEFAULT;
    cfg->shard_queue_slots = RB_SHARD_QUEUE_SLOTS_DEFAULT;
    cfg->shard_envelopes = RB_SHARD_XMSG_DEFAULT;
    cfg->shard_block_bytes = RB_SHARD_BLOCK_BYTES_DEFAULT;
    cfg->shard_block_envelopes = RB_SHARD_BARE_XMSG_DEFAULT;
    cfg->keepalive_ms = RB_KEEPALIVE_MS_DEFAULT;
    cfg->pong_timeout_ms = RB_PONG_TIMEOUT_MS_DEFAULT;
    cfg->handshake_timeout_ms = RB_HANDSHAKE_MS_DEFAULT;
    cfg->close_grace_ms = RB_CLOSE_GRACE_MS_DEFAULT;
    cfg->shutdown_grace_ms = RB_SHUTDOWN_GRACE_MS_DEFAULT;
    cfg->reconnect_hint_ms = RB_RECONNECT_HINT_MS_DEFAULT;
    cfg->catchup_topics_per_query = RB_CATCHUP_TOPICS_DEFAULT;
    cfg->catchup_rows_per_topic = RB_CATCHUP_ROWS_DEFAULT;
    cfg->catchup_queries_in_flight = RB_CATCHUP_INFLIGHT_DEFAULT;
    cfg->dedup_window_ms = RB_DEDUP_WINDOW_MS_DEFAULT;
    cfg->dedup_keys_per_topic = RB_DEDUP_KEYS_PER_TOPIC_DEFAULT;
    cfg->dedup_keys_per_shard = RB_DEDUP_KEYS_PER_SHARD_DEFAULT;
    cfg->storage_backend = RB_STORAGE_MEMORY;
    cfg->memory_retention_messages = RB_MEMORY_RETENTION_MESSAGES_DEFAULT;
    cfg->memory_retention_bytes = RB_MEMORY_RETENTION_BYTES_DEFAULT;
    cfg->pg_pool_size = 2;
    cfg->pg_statement_timeout_ms = 5000;
    cfg->pg_batch_messages = 1024;
    cfg->max_connections_total = RB_CONNS_TOTAL_DEFAULT;
    cfg->max_connections_per_address = RB_CONNS_PER_ADDRESS_DEFAULT;
    cfg->connection_rate_per_address = RB_CONN_RATE_PER_ADDRESS_DEFAULT;
    cfg->publish_rate = RB_PUBLISH_RATE_DEFAULT;
    cfg->publish_burst = RB_PUBLISH_RATE_DEFAULT;
    cfg->mutates_per_second = RB_MUTATES_PER_SECOND_DEFAULT;
    cfg->auth_mode = RB_AUTH_MODE_NONE;
    cfg->auth_failure_delay_ms = RB_AUTH_FAILURE_DELAY_MS_DEFAULT;
    cfg->auth_failures_per_minute = RB_AUTH_FAILURES_PER_MINUTE_DEFAULT;
    cfg->auth_clock_skew_s = RB_AUTH_CLOCK_SKEW_S_DEFAULT;
    cfg->auth_workers = RB_AUTH_WORKERS_DEFAULT;
    cfg->listener_count = 1;
    rb_listener_config *l = &cfg->listeners[0];
    l->transport = RB_TRANSPORT_TCP;
    snprintf(l->address, sizeof l->address, "%s", DEFAULT_ADDRESS);
    l->port = transport_ports[RB_TRANSPORT_TCP];
    l->max_connections = cfg->max_connections_total;
    snprintf(cfg->cluster_address, sizeof cfg->cluster_address, "%s", DEFAULT_ADDRESS);
    cfg->cluster_port = RB_CLUSTER_PORT_DEFAULT;
}

/* Defaults that follow other keys, applied once the file is loaded. */
static void derive_defaults(rb_config *cfg)
{
    if (cfg->publish_burst == 0) {
        cfg->publish_burst = cfg->publish_rate;
    }
    for (uint32_t i = 0; i < cfg->listener_count; i++) {
        if (cfg->listeners[i].max_connections == 0) {
            cfg->listeners[i].max_connections = cfg->max_connections_total;
        }
    }
}

rb_bytes rb_config_pattern(const rb_config *cfg, uint32_t i)
{
    RB_ASSERT(i < cfg->auth_pattern_count);
    const rb_pattern_ref *r = &cfg->auth_patterns[i];
    return (rb_bytes){(const uint8_t *)cfg->auth_pattern_bytes + r->off, r->len};
}

const char *rb_jwt_alg_name(rb_jwt_alg alg)
{
    RB_ASSERT((size_t)alg < COUNT(jwt_alg_names));
    return jwt_alg_names[alg];
}

int rb_config_load_string(const char *text, size_t len, const char *name, rb_config *cfg,
                          rb_err *err)
{
    RB_ASSERT(cfg != NULL);
    RB_ASSERT(name != NULL);
    rb_config_defaults(cfg);
    cfg->publish_burst = 0; /* follows publish_rate unless the file sets it */
    rb_toml doc;
    int rc = rb_toml_parse(&doc, text, len, name, err);
    if (rc < 0) {
        return rc;
    }
    loader ld = {.name = name, .err = err, .cfg = cfg, .root = rb_toml_root(&doc)};
    rc = load_section(&ld, &root_section, ld.root, cfg);
    if (rc == 0) {
        derive_defaults(cfg);
        rc = check_cross(&ld);
    }
    rb_toml_deinit(&doc);
    return rc;
}

/* Reads at most RB_CONFIG_FILE_BYTES_MAX + 1 bytes so that a file one byte
 * too long is told apart from one at the limit. */
static int read_file(const char *path, char **out, size_t *out_len, rb_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd == -1) {
        return rb_err_set(err, RB_ESYS, errno, "config %s: open", path);
    }
    size_t cap = (size_t)RB_CONFIG_FILE_BYTES_MAX + 1;
    char *buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return rb_err_set(err, RB_ENOMEM, 0, "config %s: out of memory", path);
    }
    size_t len = 0;
    while (len < cap) {
        ssize_t n = read(fd, buf + len, cap - len);
        if (n == -1 && errno == EINTR) {
            continue;
        }
        if (n == -1) {
            int e = errno;
            free(buf);
            close(fd);
            return rb_err_set(err, RB_ESYS, e, "config %s: read", path);
        }
        if (n == 0) {
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    *out = buf;
    *out_len = len;
    return 0;
}

int rb_config_load_file(const char *path, rb_config *cfg, rb_err *err)
{
    RB_ASSERT(path != NULL);
    char *text = NULL;
    size_t len = 0;
    int rc = read_file(path, &text, &len, err);
    if (rc < 0) {
        return rc;
    }
    if (len > RB_CONFIG_FILE_BYTES_MAX) {
        rc = rb_err_set(err, RB_ECONFIG, 0, "%s: file is larger than the limit of %u bytes", path,
                        (unsigned)RB_CONFIG_FILE_BYTES_MAX);
    } else {
        rc = rb_config_load_string(text, len, path, cfg, err);
    }
    free(text);
    return rc;
}

const char *rb_transport_name(rb_transport_kind kind)
{
    RB_ASSERT((size_t)kind < COUNT(transport_names));
    return transport_names[kind];
}
