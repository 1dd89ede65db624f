/* Tests of the HTTP route table (server/admin.c): /healthz by liveness and
 * /readyz by readiness, a query string ignored, a wrong method on a route, and paths that are
 * not routes left to the caller, over HTTP/1.1 and HTTP/3 alike. */
#include <stdatomic.h>
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

Suite *rb_admin_suite(void);

Suite *rb_admin_suite(void)
{
    Suite *s = suite_create("admin");
    TCase *tc = tcase_create("routes");
    tcase_add_test(tc, test_admin_readyz_follows_readiness_healthz_does_not);
    tcase_add_test(tc, test_admin_wrong_method_on_a_route_is_405);
    tcase_add_test(tc, test_admin_other_paths_are_not_routes);
    tcase_add_test(tc, test_admin_h3_route_serves_the_same_table);
    suite_add_tcase(s, tc);
    return s;
}
