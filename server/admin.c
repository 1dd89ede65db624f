/* The HTTP route table (server/admin.h). */
#include "server/admin.h"

#include <stddef.h>
#include <string.h>

typedef struct route {
    const char *path;
    const char *method; /* the one method the route takes */
    void (*answer)(const rb_admin *admin, rb_http_response *resp);
} route;

/* 200 while the daemon serves, 503 while it starts or stops: what a load
 * balancer's health check wants. */
static void healthz(const rb_admin *admin, rb_http_response *resp)
{
    bool ready = atomic_load(admin->ready);
    resp->status = ready ? 200 : 503;
    resp->extra_headers = "";
    resp->body = ready ? "ok" : "not ready (starting or stopping)";
}

static const route routes[] = {
    {RB_ADMIN_HEALTH_PATH, "GET", healthz},
};

rb_http_router rb_admin_router(const rb_admin *admin)
{
    return (rb_http_router){.route = rb_admin_route, .ctx = (void *)admin};
}

/* The route for method and path (without its query): true with *resp
 * filled, false when the path is not a route. */
static bool lookup(const rb_admin *admin, rb_http_span method, rb_http_span path,
                   rb_http_response *resp)
{
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (!rb_http_span_is(path, routes[i].path)) {
            continue;
        }
        if (!rb_http_span_is(method, routes[i].method)) {
            resp->status = 405;
            resp->extra_headers = "Allow: GET\r\n";
            resp->body = "only GET is supported";
            return true;
        }
        routes[i].answer(admin, resp);
        return true;
    }
    return false;
}

bool rb_admin_route(void *ctx, const rb_http_request *req, rb_http_response *resp)
{
    return lookup(ctx, req->method, rb_http_target_path(req), resp);
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
    rb_http_response r;
    if (!lookup(admin, method, path, &r)) {
        r.status = 404;
        r.body = "no such path";
    }
    /* HTTP/3 has no Allow header here: the body says it. The body is
     * static text; rb_h3 copies it. */
    resp->status = (uint16_t)r.status;
    resp->content_type = "text/plain; charset=utf-8";
    resp->body = (const uint8_t *)r.body;
    resp->body_len = strlen(r.body);
    return RB_H3_ANSWERED;
}
