/* The HTTP route table (server/admin.h). */
#include "server/admin.h"

#include <stddef.h>

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

bool rb_admin_route(void *ctx, const rb_http_request *req, rb_http_response *resp)
{
    const rb_admin *admin = ctx;
    rb_http_span path = rb_http_target_path(req);
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (!rb_http_span_is(path, routes[i].path)) {
            continue;
        }
        if (!rb_http_span_is(req->method, routes[i].method)) {
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
