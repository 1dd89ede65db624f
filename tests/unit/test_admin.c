/* Tests of the HTTP route table (server/admin.c): /healthz by liveness and
 * /readyz by readiness, a query string ignored, a wrong method on a route, and paths that are
 * not routes left to the caller, over HTTP/1.1 and HTTP/3 alike; JSON
 * sections registered by the daemon (rb_admin_add_json); the introspection
 * routes (server/connz.c) on a fake one-shard server: a slot that keeps
 * changing is left out after its bounded retries, paging and the limit
 * clamp, a query reaching them over HTTP/3, and the topicz table's bound. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <check.h>

#include "server/admin.h"
#include "server/server.h"
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

/* ---- /v1/connz and /v1/topicz on a fake server ---- */

#define FAKE_CONNS 3

static rb_server zsrv;
static rb_shard zshard;
static rb_connz_slot zslots[FAKE_CONNS];
static char zout[RB_ADMIN_BODY_BYTES_MAX];

static void fake_server_setup(void)
{
    memset(&zsrv, 0, sizeof zsrv);
    memset(&zshard, 0, sizeof zshard);
    memset(zslots, 0, sizeof zslots);
    strcpy(zsrv.cfg.server_id, "unit");
    zsrv.shard_count = 1;
    zsrv.shards = &zshard;
    zshard.server = &zsrv;
    zshard.conn_max = FAKE_CONNS;
    zshard.connz = zslots;
    for (uint32_t i = 0; i < FAKE_CONNS; i++) {
        zslots[i].id = 10 + i;
        zslots[i].state = RB_CONN_OPEN;
        zslots[i].pending_bytes = 100 * i;
    }
}

static int connz_query(const char *q, size_t *len)
{
    rb_http_span span = {q, strlen(q)};
    int status = rb_connz_answer(&zsrv, span, zout, sizeof zout - 1, len);
    zout[*len] = '\0';
    return status;
}

START_TEST(test_connz_a_slot_that_keeps_changing_is_left_out_and_counted)
{
    fake_server_setup();
    zslots[1].seq = 1; /* odd: its shard is forever rewriting it */
    size_t len;
    ck_assert_int_eq(connz_query("", &len), 200);
    ck_assert_ptr_nonnull(strstr(zout, "\"total\":2,"));
    ck_assert_ptr_nonnull(strstr(zout, "\"num_connections\":2,\"skipped\":1}"));
    ck_assert_ptr_null(strstr(zout, "\"cid\":11,"));
}
END_TEST

START_TEST(test_connz_pages_sort_and_clamp_the_limit)
{
    fake_server_setup();
    size_t len;
    ck_assert_int_eq(connz_query("sort=pending&offset=1&limit=1", &len), 200);
    /* Descending send-queue bytes: 12, 11, 10; the second page is 11. */
    ck_assert_ptr_nonnull(strstr(zout, "\"connections\":[{\"cid\":11,"));
    ck_assert_ptr_nonnull(strstr(zout, "\"num_connections\":1,"));
    ck_assert_int_eq(connz_query("limit=129", &len), 200);
    ck_assert_ptr_nonnull(strstr(zout, "\"limit\":128,\"limit_max\":128,\"limit_clamped\":true"));
    ck_assert_int_eq(connz_query("offset=7", &len), 200);
    ck_assert_ptr_nonnull(strstr(zout, "\"connections\":[],\"num_connections\":0"));
    ck_assert_int_eq(connz_query("limit=1&&sort=age&", &len), 200);
    ck_assert_int_eq(connz_query("limit=", &len), 400);
    ck_assert_str_eq(zout, "limit: \"\" is not an integer from 1 to 4294967295 (larger asks are "
                           "clamped to the page maximum)");
}
END_TEST

START_TEST(test_connz_query_reaches_the_route_over_h3)
{
    fake_server_setup();
    atomic_bool ready = true;
    rb_admin admin = {.ready = &ready, .server = &zsrv};
    rb_h3_response resp;
    rb_h3_request req = {.method = "GET", .path = "/v1/connz?state=nope", .authority = ""};
    rb_admin_h3_route(&admin, NULL, 0, &req, &resp);
    ck_assert_uint_eq(resp.status, 400);
    req.path = "/v1/topicz?sort=rate";
    rb_admin_h3_route(&admin, NULL, 0, &req, &resp);
    ck_assert_uint_eq(resp.status, 200);
    ck_assert_str_eq(resp.content_type, "application/json");
}
END_TEST

START_TEST(test_topicz_tracks_the_first_slots_then_counts_the_rest)
{
    fake_server_setup();
    rb_err err = {0};
    ck_assert_int_eq(rb_topicz_subsystem.init(&zshard, &err), 0);
    uint32_t handles[RB_TOPICZ_SLOTS_MAX + 2] = {0};
    char name[16];
    for (uint32_t i = 0; i < RB_TOPICZ_SLOTS_MAX + 2; i++) {
        int n = snprintf(name, sizeof name, "t%05u", i);
        rb_topicz_head(&zshard, &handles[i], name, (size_t)n, i + 1, 1);
    }
    ck_assert_uint_eq(handles[0], 1);
    ck_assert_uint_eq(handles[RB_TOPICZ_SLOTS_MAX - 1], RB_TOPICZ_SLOTS_MAX);
    ck_assert_uint_eq(handles[RB_TOPICZ_SLOTS_MAX], UINT32_MAX);
    ck_assert_uint_eq(zshard.topicz.count, RB_TOPICZ_SLOTS_MAX);
    ck_assert_uint_eq(zshard.topicz.untracked, 2);
    /* A second commit of a tracked topic adds to it. */
    rb_topicz_head(&zshard, &handles[0], "t00000", 6, 5, 3);
    ck_assert_uint_eq(zshard.topicz.slots[0].head, 5);
    ck_assert_uint_eq(zshard.topicz.slots[0].publishes, 4);
    size_t len;
    rb_http_span q = {"sort=head&limit=1", 17};
    ck_assert_int_eq(rb_topicz_answer(&zsrv, q, zout, sizeof zout - 1, &len), 200);
    zout[len] = '\0';
    ck_assert_ptr_nonnull(strstr(zout, "\"total\":4096,"));
    ck_assert_ptr_nonnull(strstr(zout, "\"untracked_topics\":2,"));
    ck_assert_ptr_nonnull(
        strstr(zout, "\"topics\":[{\"topic\":\"t04095\",\"owner_shard\":0,\"head\":4096,"));
    rb_topicz_subsystem.deinit(&zshard);
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
    TCase *tz = tcase_create("introspection");
    tcase_add_test(tz, test_connz_a_slot_that_keeps_changing_is_left_out_and_counted);
    tcase_add_test(tz, test_connz_pages_sort_and_clamp_the_limit);
    tcase_add_test(tz, test_connz_query_reaches_the_route_over_h3);
    tcase_add_test(tz, test_topicz_tracks_the_first_slots_then_counts_the_rest);
    suite_add_tcase(s, tz);
    return s;
}
