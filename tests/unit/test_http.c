/* Tests of transports/http.c (the bounded request-head parser) and of the
 * WebSocket layer driven through a stack with test sinks: the upgrade
 * answer, Sec-WebSocket-Accept, masking, fragments, the 1003 and 1009
 * closes, and the framing of outgoing frames cut anywhere, with a Pong
 * waiting for the message it arrived in. */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "common/frame.h"
#include "server/admin.h"
#include "transports/http.h"
#include "transports/layer.h"
#include "transports/ws.h"

/* ---- the parser ---- */

static int parse(const char *text, rb_http_request *req, rb_err *err)
{
    return rb_http_parse_request((const uint8_t *)text, strlen(text), req, err);
}

START_TEST(test_http_incomplete_head_wants_more)
{
    rb_http_request req;
    rb_err err = {0};
    ck_assert_int_eq(parse("", &req, &err), RB_EAGAIN);
    ck_assert_int_eq(parse("GET / HTTP/1.1\r\nHost: a\r\n", &req, &err), RB_EAGAIN);
    ck_assert_int_eq(parse("GET / HTTP/1.1\r\nHost: a\r\n\r", &req, &err), RB_EAGAIN);
}
END_TEST

START_TEST(test_http_bytes_that_cannot_start_a_request_are_refused_at_once)
{
    rb_http_request req;
    rb_err err = {0};
    /* A ringbus HELLO and a TLS ClientHello: no line end yet, no waiting. */
    static const uint8_t hello[] = {0x20, 0, 0, 0, 1, 1, 0, 0};
    static const uint8_t client_hello[] = {0x16, 0x03, 0x01, 0x00, 0xf4, 0x01};
    ck_assert_int_eq(rb_http_parse_request(hello, sizeof hello, &req, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, 400);
    ck_assert_str_eq(err.msg, "malformed request line: bad method");
    ck_assert_int_eq(rb_http_parse_request(client_hello, sizeof client_hello, &req, &err),
                     RB_EPROTO);
    ck_assert_int_eq(parse(" GET", &req, &err), RB_EPROTO);
    /* 32 token characters may still be a method; 33 are not. */
    ck_assert_int_eq(parse("ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEF", &req, &err), RB_EAGAIN);
    ck_assert_int_eq(parse("ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFG", &req, &err), RB_EPROTO);
    ck_assert_int_eq(parse("GE", &req, &err), RB_EAGAIN);
    ck_assert_int_eq(parse("GET /a", &req, &err), RB_EAGAIN);
}
END_TEST

START_TEST(test_http_minimal_request_parses_with_trimmed_values)
{
    rb_http_request req;
    rb_err err = {0};
    const char *text = "GET /ringbus?x=1 HTTP/1.1\r\nHost:  a.example \r\nX-Empty:\r\n\r\nrest";
    ck_assert_int_eq(parse(text, &req, &err), 0);
    ck_assert(rb_http_span_eq(req.method, "GET"));
    ck_assert_uint_eq(req.target.len, strlen("/ringbus?x=1"));
    ck_assert_int_eq(req.version_minor, 1);
    ck_assert_uint_eq(req.header_count, 2);
    ck_assert_uint_eq(req.head_bytes, strlen(text) - 4);
    const rb_http_header *h = rb_http_find(&req, "host");
    ck_assert_ptr_nonnull(h);
    ck_assert(rb_http_span_eq(h->value, "a.example"));
    ck_assert_uint_eq(rb_http_find(&req, "x-empty")->value.len, 0);
    ck_assert_ptr_null(rb_http_find(&req, "Upgrade"));
}
END_TEST

START_TEST(test_http_tokens_are_case_insensitive_and_trimmed)
{
    rb_http_span v = {"keep-alive , Upgrade", 20};
    ck_assert(rb_http_has_token(v, "upgrade"));
    ck_assert(rb_http_has_token(v, "KEEP-ALIVE"));
    ck_assert(!rb_http_has_token(v, "up"));
    rb_http_span empty = {"", 0};
    ck_assert(!rb_http_has_token(empty, "x"));
}
END_TEST

START_TEST(test_http_malformed_heads_are_400)
{
    static const char *const bad[] = {
        "GET / HTTP/1.1\nHost: a\n\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\n",
        "GET / HTTP/1.1\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET  / HTTP/1.1\r\n\r\n",
        "G(T / HTTP/1.1\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
        "GET / HTTP/1.1 \r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        "\r\n\r\n",
        "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        "GET /\x7f HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rb_http_request req;
        rb_err err = {0};
        ck_assert_msg(parse(bad[i], &req, &err) == RB_EPROTO, "case %zu", i);
        ck_assert_int_eq(err.cause, 400);
        ck_assert(err.msg[0] != '\0');
    }
}
END_TEST

static char *head_of(size_t bytes)
{
    /* "GET / HTTP/1.1\r\nX: aaaa...\r\n\r\n" of exactly `bytes`. */
    const char *start = "GET / HTTP/1.1\r\nX: ";
    char *p = malloc(bytes + 1);
    size_t s = strlen(start);
    memcpy(p, start, s);
    memset(p + s, 'a', bytes - s - 4);
    memcpy(p + bytes - 4, "\r\n\r\n", 4);
    p[bytes] = '\0';
    return p;
}

START_TEST(test_http_head_at_the_limit_parses_and_one_past_is_431)
{
    rb_http_request req;
    rb_err err = {0};
    char *at = head_of(RB_HTTP_HEAD_BYTES_MAX);
    ck_assert_int_eq(parse(at, &req, &err), 0);
    char *past = head_of(RB_HTTP_HEAD_BYTES_MAX + 1);
    ck_assert_int_eq(parse(past, &req, &err), RB_ELIMIT);
    ck_assert_int_eq(err.cause, 431);
    free(at);
    free(past);
}
END_TEST

static int parse_fields(uint32_t count, rb_http_request *req, rb_err *err)
{
    char text[RB_HTTP_HEAD_BYTES_MAX];
    size_t n = (size_t)snprintf(text, sizeof text, "GET / HTTP/1.1\r\n");
    for (uint32_t i = 0; i < count; i++) {
        n += (size_t)snprintf(text + n, sizeof text - n, "H%u: v\r\n", i);
    }
    snprintf(text + n, sizeof text - n, "\r\n");
    return parse(text, req, err);
}

START_TEST(test_http_header_count_at_the_limit_parses_and_one_past_is_431)
{
    rb_http_request req;
    rb_err err = {0};
    ck_assert_int_eq(parse_fields(RB_HTTP_HEADERS_MAX, &req, &err), 0);
    ck_assert_uint_eq(req.header_count, RB_HTTP_HEADERS_MAX);
    ck_assert_uint_eq(rb_http_count(&req, "h1"), 1);
    ck_assert_int_eq(parse_fields(RB_HTTP_HEADERS_MAX + 1, &req, &err), RB_ELIMIT);
    ck_assert_int_eq(err.cause, 431);
}
END_TEST

/* ---- the WebSocket layer through a stack ---- */

typedef struct sinks {
    uint8_t up[1 << 17];
    size_t up_len;
    uint8_t wire[1 << 17];
    size_t wire_len;
    int ended;
} sinks;

static bool t_deliver(void *owner, const uint8_t *p, size_t len)
{
    sinks *s = owner;
    ck_assert_uint_le(s->up_len + len, sizeof s->up);
    memcpy(s->up + s->up_len, p, len);
    s->up_len += len;
    return true;
}

static int t_wire(void *owner, const uint8_t *p, size_t len)
{
    sinks *s = owner;
    ck_assert_uint_le(s->wire_len + len, sizeof s->wire);
    memcpy(s->wire + s->wire_len, p, len);
    s->wire_len += len;
    return 0;
}

static void t_ended(void *owner, rb_layer_end how, const char *why)
{
    (void)why;
    ((sinks *)owner)->ended = (int)how;
}

static rb_listener_config ws_cfg;
static atomic_bool ws_ready;
static rb_admin ws_admin;

static void ws_stack(rb_stack *st, sinks *s)
{
    memset(s, 0, sizeof *s);
    memset(&ws_cfg, 0, sizeof ws_cfg);
    snprintf(ws_cfg.path, sizeof ws_cfg.path, "/ringbus");
    atomic_store(&ws_ready, true);
    rb_stack_sink sink = {t_deliver, t_wire, t_ended, s};
    rb_stack_init(st, &sink);
    ws_admin.ready = &ws_ready;
    rb_ws_options o = {
        .listener = &ws_cfg, .max_frame_bytes = 4096, .router = rb_admin_router(&ws_admin)};
    rb_layer *l;
    rb_err err;
    ck_assert_int_eq(rb_ws_layer_new(&l, &o, &err), 0);
    rb_stack_push(st, l);
}

static void upgrade(rb_stack *st, sinks *s)
{
    const char *req = "GET /ringbus HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: x, ringbus.v1\r\n\r\n";
    rb_err err;
    /* Fed in two pieces: the head may arrive in any cut. */
    ck_assert_int_eq(rb_stack_recv(st, (const uint8_t *)req, 30, &err), 0);
    ck_assert(!rb_stack_ready(st));
    ck_assert_int_eq(rb_stack_recv(st, (const uint8_t *)req + 30, strlen(req) - 30, &err), 0);
    ck_assert(rb_stack_ready(st));
    s->wire[s->wire_len] = 0;
    ck_assert_ptr_nonnull(strstr((char *)s->wire, "HTTP/1.1 101 "));
    ck_assert_ptr_nonnull(
        strstr((char *)s->wire, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    ck_assert_ptr_nonnull(strstr((char *)s->wire, "Sec-WebSocket-Protocol: ringbus.v1\r\n"));
    s->wire_len = 0;
}

/* A masked client frame. */
static size_t client_frame(uint8_t *out, uint8_t b0, const uint8_t *p, size_t len)
{
    static const uint8_t key[4] = {0x12, 0x34, 0x56, 0x78};
    size_t n = 0;
    out[n++] = b0;
    if (len < 126) {
        out[n++] = (uint8_t)(0x80 | len);
    } else {
        out[n++] = 0x80 | 126;
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    }
    memcpy(out + n, key, 4);
    n += 4;
    for (size_t i = 0; i < len; i++) {
        out[n + i] = p[i] ^ key[i % 4];
    }
    return n + len;
}

static uint16_t close_code_sent(rb_stack *st, sinks *s)
{
    s->wire_len = 0;
    rb_stack_close(st, RB_WIRE_BAD_FRAME);
    ck_assert_uint_ge(s->wire_len, 4);
    ck_assert_uint_eq(s->wire[0], 0x88);
    return (uint16_t)(s->wire[2] << 8 | s->wire[3]);
}

START_TEST(test_ws_fragments_and_an_interleaved_ping_deliver_one_frame)
{
    rb_stack st;
    sinks s;
    ws_stack(&st, &s);
    upgrade(&st, &s);
    uint8_t hello[64], wire[256];
    size_t hn = rb_frame_encode_hello(hello, sizeof hello, 1, 1,
                                      (rb_bytes){(const uint8_t *)"u", 1}, (rb_bytes){NULL, 0});
    size_t n = client_frame(wire, 0x02, hello, 3);
    n += client_frame(wire + n, 0x89, (const uint8_t *)"hi", 2);
    n += client_frame(wire + n, 0x80, hello + 3, hn - 3);
    rb_err err;
    for (size_t i = 0; i < n; i++) {
        /* One byte at a time: every cut of every header. */
        ck_assert_int_eq(rb_stack_recv(&st, wire + i, 1, &err), 0);
    }
    ck_assert_uint_eq(s.up_len, hn);
    ck_assert_mem_eq(s.up, hello, hn);
    uint8_t pong[] = {0x8a, 2, 'h', 'i'};
    ck_assert_uint_eq(s.wire_len, sizeof pong);
    ck_assert_mem_eq(s.wire, pong, sizeof pong);
    rb_stack_deinit(&st);
}
END_TEST

START_TEST(test_ws_text_is_1003_and_oversize_is_1009_before_its_payload)
{
    rb_stack st;
    sinks s;
    ws_stack(&st, &s);
    upgrade(&st, &s);
    uint8_t wire[64];
    size_t n = client_frame(wire, 0x81, (const uint8_t *)"{}", 2);
    rb_err err;
    ck_assert_int_eq(rb_stack_recv(&st, wire, n, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
    ck_assert_uint_eq(close_code_sent(&st, &s), 1003);
    rb_stack_deinit(&st);

    ws_stack(&st, &s);
    upgrade(&st, &s);
    /* Header of a 5000-byte frame (over 4096) and one payload byte. */
    uint8_t big[] = {0x82, 0x80 | 126, 5000 >> 8, 5000 & 0xff, 0, 0, 0, 0, 'x'};
    ck_assert_int_eq(rb_stack_recv(&st, big, sizeof big, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_TOO_LARGE);
    ck_assert_uint_eq(s.up_len, 0);
    ck_assert_uint_eq(close_code_sent(&st, &s), 1009);
    rb_stack_deinit(&st);
}
END_TEST

START_TEST(test_ws_outgoing_frames_cut_anywhere_become_one_message_each)
{
    rb_stack st;
    sinks s;
    ws_stack(&st, &s);
    upgrade(&st, &s);
    uint8_t frames[2 * 300];
    size_t a = rb_frame_encode_ping(frames, sizeof frames, 0, 7);
    uint8_t blob[200];
    memset(blob, 'b', sizeof blob);
    size_t b =
        rb_frame_encode_error(frames + a, sizeof frames - a, 0, 1, (rb_bytes){blob, sizeof blob});
    rb_err err;
    /* Cut inside the first size field, then inside the second frame; a
     * Ping arrives while the second message is half framed. */
    ck_assert_int_eq(rb_stack_send(&st, frames, 2, &err), 0);
    ck_assert_int_eq(rb_stack_send(&st, frames + 2, a + 10 - 2, &err), 0);
    uint8_t ping[16];
    size_t pn = client_frame(ping, 0x89, (const uint8_t *)"p", 1);
    ck_assert_int_eq(rb_stack_recv(&st, ping, pn, &err), 0);
    ck_assert_int_eq(rb_stack_send(&st, frames + a + 10, b - 10, &err), 0);
    ck_assert_int_eq(rb_stack_flush(&st, &err), 0);
    size_t off = 0;
    ck_assert_uint_eq(s.wire[off], 0x82);
    ck_assert_uint_eq(s.wire[off + 1], a);
    ck_assert_mem_eq(s.wire + off + 2, frames, a);
    off += 2 + a;
    ck_assert_uint_eq(s.wire[off], 0x82);
    ck_assert_uint_eq(s.wire[off + 1], 126);
    ck_assert_uint_eq((size_t)(s.wire[off + 2] << 8 | s.wire[off + 3]), b);
    ck_assert_mem_eq(s.wire + off + 4, frames + a, b);
    off += 4 + b;
    uint8_t pong[] = {0x8a, 1, 'p'};
    ck_assert_uint_eq(s.wire_len, off + sizeof pong);
    ck_assert_mem_eq(s.wire + off, pong, sizeof pong);
    rb_stack_deinit(&st);
}
END_TEST

START_TEST(test_ws_healthz_and_a_wrong_path_are_answered_over_http)
{
    rb_stack st;
    sinks s;
    ws_stack(&st, &s);
    const char *req = "GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n";
    rb_err err;
    ck_assert_int_eq(rb_stack_recv(&st, (const uint8_t *)req, strlen(req), &err), 0);
    s.wire[s.wire_len] = 0;
    ck_assert_ptr_nonnull(strstr((char *)s.wire, "HTTP/1.1 200 OK\r\n"));
    ck_assert_int_eq(s.ended, RB_LAYER_END_DONE);
    rb_stack_deinit(&st);

    ws_stack(&st, &s);
    atomic_store(&ws_ready, false);
    req = "GET /readyz HTTP/1.1\r\nHost: h\r\n\r\n";
    ck_assert_int_eq(rb_stack_recv(&st, (const uint8_t *)req, strlen(req), &err), 0);
    s.wire[s.wire_len] = 0;
    ck_assert_ptr_nonnull(strstr((char *)s.wire, "HTTP/1.1 503 "));
    rb_stack_deinit(&st);

    ws_stack(&st, &s);
    req = "GET /nope HTTP/1.1\r\nHost: h\r\n\r\n";
    ck_assert_int_eq(rb_stack_recv(&st, (const uint8_t *)req, strlen(req), &err), 0);
    s.wire[s.wire_len] = 0;
    ck_assert_ptr_nonnull(strstr((char *)s.wire, "HTTP/1.1 404 "));
    ck_assert(!rb_stack_ready(&st));
    rb_stack_deinit(&st);
}
END_TEST

START_TEST(test_ws_accept_key_matches_rfc6455_example)
{
    char out[29];
    rb_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out);
    ck_assert_str_eq(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    ck_assert_uint_eq(rb_ws_close_code(RB_WIRE_OK), 1000);
    ck_assert_uint_eq(rb_ws_close_code(RB_WIRE_TOO_LARGE), 1009);
    ck_assert_uint_eq(rb_ws_close_code(RB_WIRE_RESOURCE_EXHAUSTED), 1008);
}
END_TEST

Suite *rb_http_suite(void);

Suite *rb_http_suite(void)
{
    Suite *s = suite_create("http");
    TCase *tc = tcase_create("parser");
    tcase_add_test(tc, test_http_incomplete_head_wants_more);
    tcase_add_test(tc, test_http_bytes_that_cannot_start_a_request_are_refused_at_once);
    tcase_add_test(tc, test_http_minimal_request_parses_with_trimmed_values);
    tcase_add_test(tc, test_http_tokens_are_case_insensitive_and_trimmed);
    tcase_add_test(tc, test_http_malformed_heads_are_400);
    tcase_add_test(tc, test_http_head_at_the_limit_parses_and_one_past_is_431);
    tcase_add_test(tc, test_http_header_count_at_the_limit_parses_and_one_past_is_431);
    suite_add_tcase(s, tc);
    TCase *ws = tcase_create("ws");
    tcase_add_test(ws, test_ws_fragments_and_an_interleaved_ping_deliver_one_frame);
    tcase_add_test(ws, test_ws_text_is_1003_and_oversize_is_1009_before_its_payload);
    tcase_add_test(ws, test_ws_outgoing_frames_cut_anywhere_become_one_message_each);
    tcase_add_test(ws, test_ws_healthz_and_a_wrong_path_are_answered_over_http);
    tcase_add_test(ws, test_ws_accept_key_matches_rfc6455_example);
    suite_add_tcase(s, ws);
    return s;
}
