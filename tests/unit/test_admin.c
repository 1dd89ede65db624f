/* Tests of the HTTP route table (server/admin.c): /healthz by liveness and
 * /readyz by readiness, a query string ignored, a wrong method on a route, and paths that are
 * not routes left to the caller, over HTTP/1.1 and HTTP/3 alike; JSON
 * sections registered by the daemon (rb_admin_add_json). */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <check.h>

#include "server/admin.h"
#include "transports/http.h"

static bool route(const char *head, const atomic_bool *ready, rb_http_response *resp)
{
    rb_http_request req;
    rb_err err;
    ck_assert_int_eq(rb_http_parse_request((const uint8_t *)head, strlen(head), &req, &err), 0);
    rb_admin admin = {.ready = ready};
    rb_http_router r = rb_admin_router(&admin);
    return r.route(r.ctx, &req, resp);
}

START_TEST(test_admin_readyz_follows_readiness_healthz_does_not)
{
    atomic_bool ready = true;
    rb_http_response resp;
    ck_assert(route("GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n", &ready, &resp));
    ck_assert_int_eq(resp.status, 200);
    ck_assert_str_eq(resp.body, "ok");
    ck_assert(route("GET /readyz HTTP/1.1\r\nHost: h\r\n\r\n", &ready, &resp));
    ck_assert_int_eq(resp.status, 200);
    atomic_store(&ready, false);
    ck_assert(route("GET /readyz?probe=1 HTTP/1.1\r\nHost: h\r\n\r\n", &ready, &resp));
    ck_assert_int_eq(resp.status, 503);
    ck_assert_ptr_nonnull(strstr(resp.body, "not ready"));
    /* Alive while waiting for storage: a liveness probe must not restart
     * a daemon that only waits. */
    ck_assert(route("GET /healthz?probe=1 HTTP/1.1\r\nHost: h\r\n\r\n", &ready, &resp));
    ck_assert_int_eq(resp.status, 200);
}
END_TEST

START_TEST(test_admin_wrong_method_on_a_route_is_405)
{
    atomic_bool ready = true;
    rb_http_response resp;
    ck_assert(route("POST /healthz HTTP/1.1\r\nHost: h\r\n\r\n", &ready, &resp));
    ck_assert_int_eq(resp.status, 405);
    ck_assert_ptr_nonnull(strstr(resp.extra_headers, "Allow: GET"));
}
END_TEST

START_TEST(test_admin_other_paths_are_not_routes)
{
    atomic_bool ready = true;
    rb_http_response resp;
    ck_assert(!route("GET /ringbus HTTP/1.1\r\nHost: h\r\n\r\n", &ready, &resp));
    ck_assert(!route("GET /healthz/ HTTP/1.1\r\nHost: h\r\n\r\n", &ready, &resp));
    ck_assert(!route("GET /HEALTHZ HTTP/1.1\r\nHost: h\r\n\r\n", &ready, &resp));
}
END_TEST

START_TEST(test_admin_h3_route_serves_the_same_table)
{
    atomic_bool ready = true;
    rb_admin admin = {.ready = &ready};
    rb_h3_response resp;
    rb_h3_request req = {.method = "GET", .path = "/readyz?x=1", .authority = ""};
    ck_assert_int_eq(rb_admin_h3_route(&admin, NULL, 0, &req, &resp), RB_H3_ANSWERED);
    ck_assert_uint_eq(resp.status, 200);
    ck_assert_uint_eq(resp.body_len, 5);
    ck_assert_mem_eq(resp.body, "ready", 5);
    atomic_store(&ready, false);
    ck_assert_int_eq(rb_admin_h3_route(&admin, NULL, 0, &req, &resp), RB_H3_ANSWERED);
    ck_assert_uint_eq(resp.status, 503);
    req.method = "POST";
    rb_admin_h3_route(&admin, NULL, 0, &req, &resp);
    ck_assert_uint_eq(resp.status, 405);
    req = (rb_h3_request){.method = "GET", .path = "/nope", .authority = ""};
    rb_admin_h3_route(&admin, NULL, 0, &req, &resp);
    ck_assert_uint_eq(resp.status, 404);
}
END_TEST

/* A section never reads the server: the pointer only has to be set. */
static const int fake_server;
static const struct rb_server *const some_server = (const struct rb_server *)&fake_server;

static size_t small_json(const struct rb_server *srv, char *out, size_t cap)
{
    ck_assert_ptr_eq(srv, some_server);
    return (size_t)snprintf(out, cap, "{\"n\":1}");
}

static size_t huge_json(const struct rb_server *srv, char *out, size_t cap)
{
    (void)srv;
    memset(out, 'x', cap);
    return cap;
}

static bool route_admin(const rb_admin *admin, const char *head, rb_http_response *resp)
{
    rb_http_request req;
    rb_err err;
    ck_assert_int_eq(rb_http_parse_request((const uint8_t *)head, strlen(head), &req, &err), 0);
    return rb_admin_route((void *)admin, &req, resp);
}

START_TEST(test_admin_json_sections_are_routes_of_the_same_table)
{
    atomic_bool ready = true;
    rb_admin admin = {.ready = &ready, .server = some_server};
    rb_err err;
    rb_http_response resp;
    ck_assert(!route_admin(&admin, "GET /v1/x HTTP/1.1\r\nHost: h\r\n\r\n", &resp));
    ck_assert_int_eq(rb_admin_add_json(&admin, "/v1/x", small_json, &err), 0);
    ck_assert_int_eq(rb_admin_add_json(&admin, "/v1/big", huge_json, &err), 0);
    ck_assert(route_admin(&admin, "GET /v1/x?pretty HTTP/1.1\r\nHost: h\r\n\r\n", &resp));
    ck_assert_int_eq(resp.status, 200);
    ck_assert_str_eq(resp.content_type, "application/json");
    ck_assert_uint_eq(resp.body_len, 7);
    ck_assert_mem_eq(resp.body, "{\"n\":1}", 7);
    ck_assert(route_admin(&admin, "DELETE /v1/x HTTP/1.1\r\nHost: h\r\n\r\n", &resp));
    ck_assert_int_eq(resp.status, 405);
    /* A body cut at the limit is an error, never a truncated document. */
    ck_assert(route_admin(&admin, "GET /v1/big HTTP/1.1\r\nHost: h\r\n\r\n", &resp));
    ck_assert_int_eq(resp.status, 500);
    /* Without a server (a daemon not yet started) it is unavailable. */
    admin.server = NULL;
    ck_assert(route_admin(&admin, "GET /v1/x HTTP/1.1\r\nHost: h\r\n\r\n", &resp));
    ck_assert_int_eq(resp.status, 503);
    /* The table is bounded. */
    while (admin.section_count < RB_ADMIN_SECTIONS_MAX) {
        ck_assert_int_eq(rb_admin_add_json(&admin, "/v1/more", small_json, &err), 0);
    }
    ck_assert_int_eq(rb_admin_add_json(&admin, "/v1/one-too-many", small_json, &err), RB_ELIMIT);
    ck_assert_ptr_nonnull(strstr(err.msg, "/v1/one-too-many"));
}
END_TEST

Suite *rb_admin_suite(void);

Suite *rb_admin_suite(void)
{
    Suite *s = suite_create("admin");
    TCase *tc = tcase_create("routes");
    tcase_add_test(tc, test_admin_readyz_follows_readiness_healthz_does_not);
    tcase_add_test(tc, test_admin_wrong_method_on_a_route_is_405);
    tcase_add_test(tc, test_admin_other_paths_are_not_routes);
    tcase_add_test(tc, test_admin_h3_route_serves_the_same_table);
    tcase_add_test(tc, test_admin_json_sections_are_routes_of_the_same_table);
    suite_add_tcase(s, tc);
    return s;
}
