/* Hot reload (docs/OPERATIONS.md "Reload"): which settings of a re-read
 * configuration apply to the running daemon and which need a restart, and
 * the hand-over of the new configuration to every shard. The main thread
 * builds a generation (an rb_reload_gen: the new config with every
 * restart-only setting put back to the value the daemon runs with), sends
 * its address to each shard as MSG_RING data, and frees the previous
 * generation only once every shard has switched; a shard swaps its
 * rb_shard.cfg (and, when users or keys changed, rb_shard.auth) pointer in
 * its own loop, between two turns. Reading the file, building the
 * verifier, listeners and TLS are left to main.c. */
#include "server/reload.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/assert.h"
#include "common/log.h"

/* How a setting reacts to a reload. */
typedef enum field_class {
    FIELD_LIVE,    /* applies at once (each use reads the shard's config) */
    FIELD_LOWER,   /* may go down live; above its start value it sizes tables: restart */
    FIELD_RESTART, /* kept at its running value, logged "restart to apply" */
} field_class;

typedef struct field {
    const char *name; /* the TOML key, as the log line and docs name it */
    size_t off;
    size_t size;
    field_class cls;
} field;

#define F(key, member, cls)                                                                        \
    {                                                                                              \
        key, offsetof(rb_config, member), sizeof(((rb_config *)0)->member), cls                    \
    }

/* Every scalar setting of rb_config; the tables (users, keys, peers,
 * listeners) are compared below. */
static const field fields[] = {
    F("shards", shards, FIELD_RESTART),
    F("pin_shards", pin_shards, FIELD_RESTART),
    F("log_level", log_level, FIELD_LIVE),
    F("log_format", log_format, FIELD_LIVE),
    F("server_id", server_id, FIELD_RESTART),
    F("limits.max_connections", max_connections, FIELD_RESTART),
    F("limits.max_frame_bytes", max_frame_bytes, FIELD_RESTART),
    F("limits.send_queue_bytes", send_queue_bytes, FIELD_RESTART),
    F("limits.pending_buffer_bytes", pending_buffer_bytes, FIELD_RESTART),
    F("limits.topics_per_stream", topics_per_stream, FIELD_LOWER),
    F("limits.rpc_calls_per_connection", rpc_calls_per_connection, FIELD_LIVE),
    F("limits.rpc_serves_per_connection", rpc_serves_per_connection, FIELD_LIVE),
    F("limits.rpc_methods_per_connection", rpc_methods_per_connection, FIELD_LIVE),
    F("limits.max_connections_total", max_connections_total, FIELD_LIVE),
    F("limits.max_connections_per_address", max_connections_per_address, FIELD_RESTART),
    F("limits.connection_rate_per_address", connection_rate_per_address, FIELD_RESTART),
    F("limits.publish_rate", publish_rate, FIELD_LIVE),
    F("limits.publish_burst", publish_burst, FIELD_LIVE),
    F("limits.mutates_per_second", mutates_per_second, FIELD_LIVE),
    F("limits.shard_queue_slots", shard_queue_slots, FIELD_RESTART),
    F("limits.shard_envelopes", shard_envelopes, FIELD_RESTART),
    F("limits.shard_block_bytes", shard_block_bytes, FIELD_RESTART),
    F("limits.shard_block_envelopes", shard_block_envelopes, FIELD_RESTART),
    F("auth.mode", auth_mode, FIELD_RESTART),
    F("auth.failure_delay_ms", auth_failure_delay_ms, FIELD_LIVE),
    F("auth.failures_per_minute", auth_failures_per_minute, FIELD_RESTART),
    F("auth.clock_skew_s", auth_clock_skew_s, FIELD_RESTART),
    F("auth.workers", auth_workers, FIELD_RESTART),
    F("timeouts.keepalive_ms", keepalive_ms, FIELD_LIVE),
    F("timeouts.pong_timeout_ms", pong_timeout_ms, FIELD_LIVE),
    F("timeouts.handshake_timeout_ms", handshake_timeout_ms, FIELD_LIVE),
    F("timeouts.close_grace_ms", close_grace_ms, FIELD_LIVE),
    F("timeouts.shutdown_grace_ms", shutdown_grace_ms, FIELD_LIVE),
    F("timeouts.reconnect_hint_ms", reconnect_hint_ms, FIELD_LIVE),
    F("catchup.topics_per_query", catchup_topics_per_query, FIELD_RESTART),
    F("catchup.rows_per_topic", catchup_rows_per_topic, FIELD_RESTART),
    F("catchup.queries_in_flight", catchup_queries_in_flight, FIELD_RESTART),
    F("dedup.window_ms", dedup_window_ms, FIELD_RESTART),
    F("dedup.keys_per_topic", dedup_keys_per_topic, FIELD_RESTART),
    F("dedup.keys_per_shard", dedup_keys_per_shard, FIELD_RESTART),
    F("storage.backend", storage_backend, FIELD_RESTART),
    F("storage.memory.retention_messages", memory_retention_messages, FIELD_RESTART),
    F("storage.memory.retention_bytes", memory_retention_bytes, FIELD_RESTART),
    F("storage.postgres.conninfo", pg_conninfo, FIELD_RESTART),
    F("storage.postgres.password_file", pg_password_file, FIELD_RESTART),
    F("storage.postgres.pool_size", pg_pool_size, FIELD_RESTART),
    F("storage.postgres.statement_timeout_ms", pg_statement_timeout_ms, FIELD_RESTART),
    F("storage.postgres.batch_messages", pg_batch_messages, FIELD_RESTART),
    F("storage.postgres.retention_messages", pg_retention_messages, FIELD_RESTART),
    F("storage.postgres.retention_age_s", pg_retention_age_s, FIELD_RESTART),
    F("cluster.node_id", cluster_node_id, FIELD_RESTART),
    F("cluster.cluster_id", cluster_id, FIELD_RESTART),
    F("cluster.secret_file", cluster_secret_file, FIELD_RESTART),
    F("cluster.address", cluster_address, FIELD_RESTART),
    F("cluster.port", cluster_port, FIELD_RESTART),
};

/* A setting's value for the log: numbers by their size, text fields
 * quoted (config text, never peer bytes). */
static const char *value_text(const field *f, const rb_config *cfg, char *buf, size_t cap)
{
    const uint8_t *p = (const uint8_t *)cfg + f->off;
    uint64_t v = 0;
    if (f->size == 1) {
        v = *p;
    } else if (f->size == 2) {
        uint16_t x;
        memcpy(&x, p, sizeof x);
        v = x;
    } else if (f->size == 4) {
        uint32_t x;
        memcpy(&x, p, sizeof x);
        v = x;
    } else if (f->size == 8) {
        memcpy(&v, p, sizeof v);
    } else {
        snprintf(buf, cap, "\"%.*s\"", (int)strnlen((const char *)p, f->size), (const char *)p);
        return buf;
    }
    snprintf(buf, cap, "%llu", (unsigned long long)v);
    return buf;
}

static void log_restart(const char *name)
{
    RB_LOG_WARN(0, "reload: %s changed; restart to apply", name);
}

static bool users_equal(const rb_config *a, const rb_config *b)
{
    if (a->auth_user_count != b->auth_user_count) {
        return false;
    }
    for (uint32_t i = 0; i < a->auth_user_count; i++) {
        const rb_auth_user_config *ua = &a->auth_users[i];
        const rb_auth_user_config *ub = &b->auth_users[i];
        if (strcmp(ua->name, ub->name) != 0 || strcmp(ua->password_hash, ub->password_hash) != 0 ||
            ua->publish_rate != ub->publish_rate) {
            return false;
        }
        for (int l = 0; l < RB_PERM_LISTS; l++) {
            if (ua->lists[l].count != ub->lists[l].count) {
                return false;
            }
            for (uint32_t k = 0; k < ua->lists[l].count; k++) {
                rb_bytes pa = rb_config_pattern(a, ua->lists[l].first + k);
                rb_bytes pb = rb_config_pattern(b, ub->lists[l].first + k);
                if (pa.len != pb.len || memcmp(pa.ptr, pb.ptr, pa.len) != 0) {
                    return false;
                }
            }
        }
    }
    return true;
}

static bool keys_equal(const rb_config *a, const rb_config *b)
{
    if (a->auth_jwt_key_count != b->auth_jwt_key_count) {
        return false;
    }
    for (uint32_t i = 0; i < a->auth_jwt_key_count; i++) {
        const rb_jwt_key_config *ka = &a->auth_jwt_keys[i];
        const rb_jwt_key_config *kb = &b->auth_jwt_keys[i];
        if (strcmp(ka->kid, kb->kid) != 0 || ka->algorithm != kb->algorithm ||
            strcmp(ka->path, kb->path) != 0) {
            return false;
        }
    }
    return true;
}

bool rb_reload_auth_changed(const rb_config *cur, const rb_config *fresh)
{
    return !users_equal(cur, fresh) || !keys_equal(cur, fresh);
}

/* The running users point into the running patterns: all go back. */
static void keep_auth(const rb_config *cur, rb_config *fresh)
{
    memcpy(fresh->auth_users, cur->auth_users, sizeof fresh->auth_users);
    fresh->auth_user_count = cur->auth_user_count;
    memcpy(fresh->auth_jwt_keys, cur->auth_jwt_keys, sizeof fresh->auth_jwt_keys);
    fresh->auth_jwt_key_count = cur->auth_jwt_key_count;
    memcpy(fresh->auth_patterns, cur->auth_patterns, sizeof fresh->auth_patterns);
    fresh->auth_pattern_count = cur->auth_pattern_count;
    memcpy(fresh->auth_pattern_bytes, cur->auth_pattern_bytes, sizeof fresh->auth_pattern_bytes);
    fresh->auth_pattern_bytes_len = cur->auth_pattern_bytes_len;
}

/* The topic classes, but where each was written (moving a class down the
 * file is no change). */
static bool classes_equal(const rb_config *a, const rb_config *b)
{
    if (a->topic_class_count != b->topic_class_count) {
        return false;
    }
    for (uint32_t i = 0; i < a->topic_class_count; i++) {
        const rb_topic_class_config *ca = &a->topic_classes[i];
        const rb_topic_class_config *cb = &b->topic_classes[i];
        if (strcmp(ca->pattern, cb->pattern) != 0 || ca->storage != cb->storage ||
            ca->dedup_window_ms != cb->dedup_window_ms ||
            ca->max_message_bytes != cb->max_message_bytes || ca->echo != cb->echo) {
            return false;
        }
    }
    return true;
}

/* Users and keys (live when auth_live, else kept), the topic classes (their
 * matchers and each topic's class are built at start) and the cluster tables,
 * which need a restart: a difference is logged and the running one copied
 * back into fresh. */
static void diff_tables(const rb_config *cur, rb_config *fresh, bool auth_live)
{
    if (!users_equal(cur, fresh)) {
        if (auth_live) {
            RB_LOG_INFO(0, "reload: auth.user changed");
        } else {
            log_restart("auth.user");
        }
    }
    if (!keys_equal(cur, fresh)) {
        if (auth_live) {
            RB_LOG_INFO(0, "reload: auth.jwt_key changed");
        } else {
            log_restart("auth.jwt_key");
        }
    }
    if (!auth_live) {
        keep_auth(cur, fresh);
    }
    if (!classes_equal(cur, fresh)) {
        log_restart("topic_class");
    }
    memcpy(fresh->topic_classes, cur->topic_classes, sizeof fresh->topic_classes);
    fresh->topic_class_count = cur->topic_class_count;
    if (cur->cluster_peer_count != fresh->cluster_peer_count ||
        memcmp(cur->cluster_peers, fresh->cluster_peers, sizeof cur->cluster_peers) != 0) {
        log_restart("cluster.peer");
    }
    memcpy(fresh->cluster_peers, cur->cluster_peers, sizeof fresh->cluster_peers);
    fresh->cluster_peer_count = cur->cluster_peer_count;
    if (cur->cluster_secret_len != fresh->cluster_secret_len ||
        memcmp(cur->cluster_secret, fresh->cluster_secret, sizeof cur->cluster_secret) != 0) {
        log_restart("cluster.secret_file (its contents)");
    }
    memcpy(fresh->cluster_secret, cur->cluster_secret, sizeof fresh->cluster_secret);
    fresh->cluster_secret_len = cur->cluster_secret_len;
}

uint32_t rb_reload_diff(const rb_config *boot, const rb_config *cur, rb_config *fresh,
                        bool auth_live)
{
    uint32_t live = 0;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const field *f = &fields[i];
        uint8_t *to = (uint8_t *)fresh + f->off;
        const uint8_t *from = (const uint8_t *)cur + f->off;
        if (memcmp(to, from, f->size) == 0) {
            continue;
        }
        if (f->cls == FIELD_LOWER) {
            /* Only topics_per_stream is of this class (a uint32_t). */
            uint32_t want;
            uint32_t start;
            memcpy(&want, to, sizeof want);
            memcpy(&start, (const uint8_t *)boot + f->off, sizeof start);
            if (want > start) {
                RB_LOG_WARN(0, "reload: %s %u is above its start value %u; restart to apply",
                            f->name, want, start);
                memcpy(to, from, f->size);
                continue;
            }
        }
        if (f->cls == FIELD_RESTART) {
            log_restart(f->name);
            memcpy(to, from, f->size);
            continue;
        }
        char was[64];
        char now[64];
        RB_LOG_INFO(0, "reload: %s changed: %s -> %s", f->name, value_text(f, cur, was, sizeof was),
                    value_text(f, fresh, now, sizeof now));
        live++;
    }
    diff_tables(cur, fresh, auth_live);
    return live;
}

struct rb_reload_gen {
    rb_config cfg;
    atomic_uint switched; /* shards running on cfg */
    atomic_uint sent;     /* 1 once complete: the shards' acquire pairs with it */
    const rb_auth *auth;  /* the new verifier, or NULL when it did not change */
    uint32_t listener_count;
    uint32_t retired_count;
    uint32_t retired[RB_LISTENERS_MAX];
};

rb_reload_gen *rb_reload_gen_new(void)
{
    rb_reload_gen *g = calloc(1, sizeof *g);
    if (g != NULL) {
        atomic_init(&g->switched, 0);
    }
    return g;
}

rb_config *rb_reload_gen_config(rb_reload_gen *g)
{
    return &g->cfg;
}

void rb_reload_gen_listeners(rb_reload_gen *g, uint32_t listener_count, const uint32_t *retired,
                             uint32_t retired_count)
{
    RB_ASSERT(listener_count <= RB_LISTENERS_MAX && retired_count <= RB_LISTENERS_MAX);
    g->listener_count = listener_count;
    g->retired_count = retired_count;
    memcpy(g->retired, retired, retired_count * sizeof *retired);
}

void rb_reload_gen_auth(rb_reload_gen *g, const rb_auth *auth)
{
    g->auth = auth;
}

void rb_reload_gen_free(rb_reload_gen *g)
{
    free(g);
}

void rb_reload_on_shard(rb_shard *sh, uint64_t payload)
{
    rb_reload_gen *g = (rb_reload_gen *)(uintptr_t)payload;
    RB_ASSERT(g != NULL);
    /* MSG_RING orders nothing for the compiler or for TSan: this does. */
    RB_ASSERT(atomic_load_explicit(&g->sent, memory_order_acquire) == 1);
    sh->cfg = &g->cfg;
    if (g->auth != NULL) {
        sh->auth = g->auth;
        rb_session_reauth_all(sh);
    }
    if (sh->listeners != NULL) {
        rb_acceptor_reload(sh, g->listener_count, g->retired, g->retired_count);
    }
    RB_LOG_DEBUG(0, "reload: running the new configuration");
    atomic_fetch_add_explicit(&g->switched, 1, memory_order_release);
}

/* User-space addresses fit below the kind bits of MSG_RING data. */
static bool fits_payload(const rb_reload_gen *g)
{
    return ((uint64_t)(uintptr_t)g >> RB_REMOTE_KIND_SHIFT) == 0;
}

/* A ring of the main thread's own only to post MSG_RING to shards, made
 * at the first reload. */
static rb_loop *loop;

void rb_reload_deinit(void)
{
    if (loop != NULL) {
        rb_loop_deinit(loop);
        loop = NULL;
    }
}

int rb_reload_hand_over(rb_server *srv, rb_reload_gen *g, rb_err *err)
{
    if (!fits_payload(g)) {
        return rb_err_set(err, RB_EINVAL, 0, "reload: configuration address out of range");
    }
    if (loop == NULL) {
        rb_loop_options opt = {.sq_entries = 8, .recv_buf_count = 1, .recv_buf_bytes = 64};
        int rc = rb_loop_init(&loop, &opt, err);
        if (rc != 0) {
            loop = NULL;
            return rc;
        }
    }
    uint64_t data = RB_REMOTE(RB_REMOTE_RELOAD, (uintptr_t)g);
    atomic_store_explicit(&srv->listeners_published, srv->listener_count, memory_order_release);
    atomic_store_explicit(&g->sent, 1, memory_order_release);
    for (uint32_t i = 0; i < srv->shard_count; i++) {
        int fd = atomic_load(&srv->shards[i].ring_fd);
        int rc = rb_loop_wake_remote(loop, fd, data);
        rc = rc ? rc : rb_loop_run_once(loop, 0, err);
        if (rc != 0) {
            return rb_err_set(err, RB_ELIMIT, 0, "reload: cannot reach shard %u", i);
        }
    }
    return 0;
}

bool rb_reload_wait(rb_server *srv, rb_reload_gen *g, uint32_t timeout_ms)
{
    for (uint32_t waited_ms = 0;; waited_ms++) {
        if (atomic_load_explicit(&g->switched, memory_order_acquire) == srv->shard_count) {
            return true;
        }
        if (waited_ms >= timeout_ms) {
            return false;
        }
        usleep(1000);
    }
}
