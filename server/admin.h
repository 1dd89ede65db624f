/* The daemon's HTTP routes (GET /healthz today), in one table that every
 * HTTP front end calls: the WebSocket layer's HTTP/1.1 phase on ws and wss
 * listeners (rb_admin_router), HTTP/3 on the QUIC engine (rb_admin_h3_route,
 * once a quic listener serves it), an `http` listener later. Answers are
 * plain text; nothing here does I/O. */
#ifndef RB_SERVER_ADMIN_H
#define RB_SERVER_ADMIN_H

#include <stdatomic.h>
#include <stdbool.h>

#include "transports/h3.h"
#include "transports/http.h"

/* The health-check path. */
#define RB_ADMIN_HEALTH_PATH "/healthz"

typedef struct rb_admin {
    const atomic_bool *ready; /* the daemon's readiness; borrowed */
} rb_admin;

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
