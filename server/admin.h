/* The daemon's HTTP routes, in one table that every HTTP front end calls:
 * `http` listeners and the HTTP/1.1 phase of ws and wss listeners (the
 * WebSocket layer, rb_admin_router), HTTP/3 on quic listeners
 * (rb_admin_h3_route):
 *   GET /healthz  200 while every shard's loop turned within
 *                 RB_ADMIN_STALL_MS, else 503 naming the stalled shard;
 *   GET /readyz   200 once storage is ready and the listeners are open,
 *                 while not stopping; else 503 with the reason;
 *   GET /metrics  Prometheus text format (docs/OPERATIONS.md lists the
 *                 names): per-shard counters summed at scrape;
 *   GET /v1/varz  JSON: version, uptime, shards, limits;
 *   GET /v1/connz JSON: the connections, paged and sorted (server/connz.h);
 *   GET /v1/topicz JSON: the topics this node owns, paged and sorted;
 * and the JSON sections that the daemon registers (rb_admin_add_json),
 * such as GET /v1/cluster from server/cluster.c.
 * The only I/O is reading /proc/self at a /metrics scrape. */
#ifndef RB_SERVER_ADMIN_H
#define RB_SERVER_ADMIN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "transports/h3.h"
#include "transports/http.h"

/* The health-check path. */
#define RB_ADMIN_HEALTH_PATH "/healthz"

/* A shard whose loop has not turned for this long fails /healthz (an idle
 * loop turns at least once a second). */
#define RB_ADMIN_STALL_MS 3000
/* The most JSON sections a daemon registers. */
#define RB_ADMIN_SECTIONS_MAX 8
/* The largest answer body (/metrics with RB_SHARDS_MAX shards fits). */
#define RB_ADMIN_BODY_BYTES_MAX (256u * 1024u)

struct rb_server;

/* A section writes its JSON body for a server into out (any thread) and
 * returns the length written, cap when it was cut short. */
typedef size_t (*rb_admin_json_fn)(const struct rb_server *srv, char *out, size_t cap);

typedef struct rb_admin_section {
    const char *path; /* static */
    rb_admin_json_fn json;
} rb_admin_section;

/* A readiness check of GET /readyz beyond the built-in ones (storage,
 * stalled shards): false with a one-line reason in why (cap bytes) when
 * the node should not get traffic. Any thread. */
typedef bool rb_admin_ready_fn(const struct rb_server *srv, char *why, size_t cap);

typedef struct rb_admin {
    const atomic_bool *ready;       /* the daemon's readiness; borrowed */
    rb_admin_ready_fn *ready_check; /* NULL: none (rb_admin_set_ready_check) */
    const struct rb_server *server; /* NULL in tests without a server */
    const char *version;            /* for /v1/varz */
    uint64_t started_ms;            /* rb_clock_ms() at start */
    rb_admin_section sections[RB_ADMIN_SECTIONS_MAX];
    uint32_t section_count;
} rb_admin;

/* Adds GET path answered with json's body; before the shards start (the
 * table is read without a lock). RB_ELIMIT past RB_ADMIN_SECTIONS_MAX. */
int rb_admin_add_json(rb_admin *admin, const char *path, rb_admin_json_fn json, rb_err *err);

/* Sets /readyz's extra check (the cluster's); before the shards start. */
void rb_admin_set_ready_check(rb_admin *admin, rb_admin_ready_fn *check);

/* The first of srv's shards whose loop has not turned within
 * RB_ADMIN_STALL_MS (*age_ms: for how long), or -1 when all turn: the
 * check behind /healthz, shared with the systemd watchdog (server/watchdog.h).
 * Any thread; it reads each shard's relaxed last_turn_ms. */
int rb_admin_stalled_shard(const struct rb_server *srv, uint64_t *age_ms);

/* The router for a (borrowed) admin: pass it to the HTTP front ends. */
rb_http_router rb_admin_router(const rb_admin *admin);

/* Answers req when its path is a route: true with *resp filled (405 for a
 * method the route does not take), false for any other path. */
bool rb_admin_route(void *ctx, const rb_http_request *req, rb_http_response *resp);

/* The same table as an HTTP/3 route (rb_h3_config.route, ctx the admin):
 * answers every request at once, 404 for a path that is not a route. */
int rb_admin_h3_route(void *ctx, rb_h3 *h3, int64_t stream_id, const rb_h3_request *req,
                      rb_h3_response *resp);

#endif
