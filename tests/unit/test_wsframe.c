/* Tests of the WebSocket framing and handshake both roles share
 * (transports/wsframe.c): base64 and Sec-WebSocket-Accept against RFC
 * 6455's example; frames written in one role and parsed in the other
 * (masked client frames, unmasked server frames, 7-, 16- and 64-bit
 * lengths, a message in fragments with control frames between them), fed
 * whole, cut at every byte and into a small output buffer; bad input in
 * each role (masking the wrong way, reserved bits, text, unknown opcodes,
 * the fragment sequence, control frames, Close payloads, the size bound);
 * and the client's handshake against the server's WebSocket layer, then
 * frames both ways through it. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "common/frame.h"
#include "server/admin.h"
#include "transports/layer.h"
#include "transports/ws.h"
#include "transports/wsframe.h"

#define WIRE_BYTES (1u << 18)

static uint8_t wire[WIRE_BYTES];
static uint8_t got[WIRE_BYTES];
static uint8_t sent[WIRE_BYTES];

static const uint8_t key_a[4] = {1, 2, 3, 4};
static const uint8_t key_b[4] = {0xff, 0, 0x55, 0xaa};

/* Appends a frame as the given role writes it. */
static size_t put(uint8_t *out, rb_wsframe_role writer, uint8_t op, bool fin, const uint8_t *p,
                  size_t len, const uint8_t *key)
{
    const uint8_t *k = writer == RB_WSFRAME_CLIENT ? key : NULL;
    size_t n = rb_wsframe_header(out, op, fin, len, k);
    if (k != NULL) {
        rb_wsframe_mask(out + n, p, len, k, 0);
    } else if (len > 0) {
        memcpy(out + n, p, len);
    }
    return n + len;
}

/* What a parser reported over a whole input. */
typedef struct seen {
    size_t data_len;
    int messages_begun;
    int messages_ended;
    int pings;
    int pongs;
    int closes;
    uint16_t close_code;
    uint8_t ping[RB_WSFRAME_CONTROL_BYTES_MAX];
    size_t ping_len;
} seen;

/* Feeds in[0..len) in pieces of `step` bytes (0: whole), out_cap bytes of
 * output at a time. Returns the parser's first error, or 0. */
static int feed(rb_wsframe_parser *ps, const uint8_t *in, size_t len, size_t step, size_t out_cap,
                seen *s, rb_err *err)
{
    static uint8_t out[WIRE_BYTES];
    size_t off = 0;
    while (off < len) {
        size_t piece = step == 0 || len - off < step ? len - off : step;
        const uint8_t *p = in + off;
        size_t left = piece;
        for (;;) {
            rb_wsframe_event ev;
            size_t used;
            int rc = rb_wsframe_parse(ps, p, left, &used, out, out_cap, &ev, err);
            if (rc != 0) {
                return rc;
            }
            ck_assert_uint_le(used, left);
            p += used;
            left -= used;
            if (ev.kind == RB_WSFRAME_NONE) {
                ck_assert_uint_eq(left, 0);
                break;
            }
            switch (ev.kind) {
            case RB_WSFRAME_DATA:
                ck_assert_uint_le(ev.len, out_cap);
                memcpy(got + s->data_len, ev.data, ev.len);
                s->data_len += ev.len;
                s->messages_begun += ev.message_begin;
                s->messages_ended += ev.message_end;
                break;
            case RB_WSFRAME_PING:
                s->pings++;
                memcpy(s->ping, ev.data, ev.len);
                s->ping_len = ev.len;
                break;
            case RB_WSFRAME_PONG:
                s->pongs++;
                break;
            case RB_WSFRAME_CLOSE:
                s->closes++;
                s->close_code = ev.close_code;
                break;
            default:
                ck_abort();
            }
        }
        off += piece;
    }
    return 0;
}

/* The test stream as `writer` sends it: whole messages of 0, 3, 200 and
 * 70001 bytes, a message in three fragments (the middle one empty) with a
 * Ping and a Pong between them, and a Close 1000 "bye". Returns its length;
 * the payload bytes are in sent[0..*want). */
static size_t build(rb_wsframe_role writer, size_t *want)
{
    size_t w = 0;
    size_t n = 0;
    size_t sizes[] = {0, 3, 200, 70001};
    for (int i = 0; i < 4; i++) {
        for (size_t j = 0; j < sizes[i]; j++) {
            sent[w + j] = (uint8_t)(j * 31 + (size_t)i);
        }
        n +=
            put(wire + n, writer, RB_WS_OP_BINARY, true, sent + w, sizes[i], i & 1 ? key_a : key_b);
        w += sizes[i];
    }
    for (size_t j = 0; j < 301; j++) {
        sent[w + j] = (uint8_t)(j * 7);
    }
    n += put(wire + n, writer, RB_WS_OP_BINARY, false, sent + w, 7, key_b);
    n += put(wire + n, writer, RB_WS_OP_PING, true, (const uint8_t *)"ping!", 5, key_a);
    n += put(wire + n, writer, RB_WS_OP_CONT, false, NULL, 0, key_a);
    n += put(wire + n, writer, RB_WS_OP_PONG, true, NULL, 0, key_b);
    n += put(wire + n, writer, RB_WS_OP_CONT, true, sent + w + 7, 294, key_a);
    w += 301;
    uint8_t close[2 + RB_WSFRAME_REASON_BYTES_MAX];
    size_t cn = rb_wsframe_close_payload(close, 1000, "bye");
    n += put(wire + n, writer, RB_WS_OP_CLOSE, true, close, cn, key_b);
    *want = w;
    return n;
}

static void check_seen(const seen *s, size_t want)
{
    ck_assert_uint_eq(s->data_len, want);
    ck_assert_mem_eq(got, sent, want);
    ck_assert_int_eq(s->messages_begun, 5);
    ck_assert_int_eq(s->messages_ended, 5);
    ck_assert_int_eq(s->pings, 1);
    ck_assert_uint_eq(s->ping_len, 5);
    ck_assert_mem_eq(s->ping, "ping!", 5);
    ck_assert_int_eq(s->pongs, 1);
    ck_assert_int_eq(s->closes, 1);
    ck_assert_uint_eq(s->close_code, 1000);
}

/* _i: 0 client frames to a server parser, 1 server frames to a client parser. */
static void roundtrip(int dir, size_t step, size_t out_cap)
{
    rb_wsframe_role writer = dir == 0 ? RB_WSFRAME_CLIENT : RB_WSFRAME_SERVER;
    rb_wsframe_role reader = dir == 0 ? RB_WSFRAME_SERVER : RB_WSFRAME_CLIENT;
    size_t want;
    size_t n = build(writer, &want);
    rb_wsframe_parser ps;
    rb_wsframe_parser_init(&ps, reader, 1u << 17);
    seen s = {0};
    rb_err err;
    ck_assert_msg(feed(&ps, wire, n, step, out_cap, &s, &err) == 0, "step %zu cap %zu: %s", step,
                  out_cap, err.msg);
    check_seen(&s, want);
}

START_TEST(test_wsframe_roundtrip_whole)
{
    roundtrip(_i, 0, WIRE_BYTES);
}
END_TEST

START_TEST(test_wsframe_roundtrip_small_out)
{
    roundtrip(_i, 0, 5);
}
END_TEST

START_TEST(test_wsframe_roundtrip_byte_by_byte)
{
    roundtrip(_i, 1, 16384);
}
END_TEST

START_TEST(test_wsframe_roundtrip_every_cut)
{
    rb_wsframe_role writer = _i == 0 ? RB_WSFRAME_CLIENT : RB_WSFRAME_SERVER;
    rb_wsframe_role reader = _i == 0 ? RB_WSFRAME_SERVER : RB_WSFRAME_CLIENT;
    size_t want;
    size_t n = build(writer, &want);
    for (size_t cut = 1; cut < n; cut += cut < 400 || cut > n - 400 ? 1 : 331) {
        rb_wsframe_parser ps;
        rb_wsframe_parser_init(&ps, reader, 0);
        seen s = {0};
        rb_err err;
        ck_assert_msg(feed(&ps, wire, cut, 0, 4096, &s, &err) == 0, "cut %zu: %s", cut, err.msg);
        ck_assert_msg(feed(&ps, wire + cut, n - cut, 0, 4096, &s, &err) == 0, "cut %zu: %s", cut,
                      err.msg);
        check_seen(&s, want);
    }
}
END_TEST

/* Input each role refuses, with the Close status it answers with. */
static const struct {
    rb_wsframe_role reader;
    uint8_t bytes[24];
    size_t len;
    uint16_t code;
    uint16_t status;
    const char *why;
} bad[] = {
    {RB_WSFRAME_SERVER, {0x82, 0x01, 'x'}, 3, 1002, RB_WIRE_BAD_FRAME, "must be masked"},
    {RB_WSFRAME_CLIENT, {0x82, 0x81, 1, 2, 3, 4, 'x'}, 7, 1002, RB_WIRE_BAD_FRAME, "not be masked"},
    {RB_WSFRAME_SERVER, {0xc2, 0x80, 1, 2, 3, 4}, 6, 1002, RB_WIRE_BAD_FRAME, "reserved bits"},
    {RB_WSFRAME_CLIENT, {0x92, 0x00}, 2, 1002, RB_WIRE_BAD_FRAME, "reserved bits"},
    {RB_WSFRAME_SERVER, {0x81, 0x80, 1, 2, 3, 4}, 6, 1003, RB_WIRE_BAD_FRAME, "text"},
    {RB_WSFRAME_CLIENT, {0x81, 0x00}, 2, 1003, RB_WIRE_BAD_FRAME, "text"},
    {RB_WSFRAME_SERVER, {0x83, 0x80, 1, 2, 3, 4}, 6, 1002, RB_WIRE_BAD_FRAME, "unknown opcode 3"},
    {RB_WSFRAME_CLIENT, {0x8b, 0x00}, 2, 1002, RB_WIRE_BAD_FRAME, "unknown opcode 11"},
    {RB_WSFRAME_CLIENT, {0x80, 0x00}, 2, 1002, RB_WIRE_BAD_FRAME, "continuation without"},
    {RB_WSFRAME_CLIENT,
     {0x02, 0x00, 0x82, 0x00},
     4,
     1002,
     RB_WIRE_BAD_FRAME,
     "inside a fragmented"},
    {RB_WSFRAME_CLIENT, {0x09, 0x00}, 2, 1002, RB_WIRE_BAD_FRAME, "must be final"},
    {RB_WSFRAME_SERVER,
     {0x89, 0x80 | 126, 0, 126, 1, 2, 3, 4},
     8,
     1002,
     RB_WIRE_BAD_FRAME,
     "at most 125"},
    {RB_WSFRAME_CLIENT,
     {0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1},
     10,
     1002,
     RB_WIRE_BAD_FRAME,
     "top bit"},
    {RB_WSFRAME_CLIENT, {0x88, 0x01, 0x03}, 3, 1002, RB_WIRE_BAD_FRAME, "one byte"},
    {RB_WSFRAME_CLIENT, {0x88, 0x02, 0x03, 0xed}, 4, 1002, RB_WIRE_BAD_FRAME, "Close status 1005"},
    {RB_WSFRAME_CLIENT, {0x88, 0x03, 0x03, 0xe8, 0xff}, 5, 1007, RB_WIRE_BAD_FRAME, "not UTF-8"},
};

START_TEST(test_wsframe_bad_input)
{
    rb_wsframe_parser ps;
    rb_wsframe_parser_init(&ps, bad[_i].reader, 128);
    seen s = {0};
    rb_err err;
    int rc = feed(&ps, bad[_i].bytes, bad[_i].len, 0, 64, &s, &err);
    ck_assert_int_eq(rc, RB_EPROTO);
    ck_assert_int_eq(err.cause, bad[_i].status);
    ck_assert_uint_eq(ps.fail_code, bad[_i].code);
    ck_assert_msg(strstr(ps.fail_reason, bad[_i].why) != NULL, "%s", ps.fail_reason);
    ck_assert_uint_eq(s.data_len, 0);
    /* A parser that failed keeps failing. */
    size_t used;
    rb_wsframe_event ev;
    uint8_t out[8];
    ck_assert_int_eq(
        rb_wsframe_parse(&ps, bad[_i].bytes, bad[_i].len, &used, out, sizeof out, &ev, &err),
        RB_EPROTO);
    ck_assert_int_eq(err.cause, bad[_i].status);
}
END_TEST

/* The bound holds over a fragmented message, before its payload. */
START_TEST(test_wsframe_message_bound_is_1009)
{
    static const uint8_t p[100];
    size_t n = put(wire, RB_WSFRAME_CLIENT, RB_WS_OP_BINARY, false, p, 100, key_a);
    n += put(wire + n, RB_WSFRAME_CLIENT, RB_WS_OP_CONT, true, p, 28, key_b);
    rb_wsframe_parser ps;
    rb_wsframe_parser_init(&ps, RB_WSFRAME_SERVER, 128);
    seen s = {0};
    rb_err err;
    ck_assert_int_eq(feed(&ps, wire, n, 0, 256, &s, &err), 0);
    ck_assert_uint_eq(s.data_len, 128);
    rb_wsframe_parser_init(&ps, RB_WSFRAME_SERVER, 128);
    memset(&s, 0, sizeof s);
    n = put(wire, RB_WSFRAME_CLIENT, RB_WS_OP_BINARY, false, p, 100, key_a);
    size_t head = n;
    n += put(wire + n, RB_WSFRAME_CLIENT, RB_WS_OP_CONT, true, p, 29, key_b);
    ck_assert_int_eq(feed(&ps, wire, head + 6, 0, 256, &s, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_TOO_LARGE);
    ck_assert_uint_eq(ps.fail_code, 1009);
    ck_assert_uint_eq(s.data_len, 100);
}
END_TEST

START_TEST(test_wsframe_close_events)
{
    rb_wsframe_parser ps;
    rb_wsframe_parser_init(&ps, RB_WSFRAME_CLIENT, 0);
    uint8_t out[8];
    rb_wsframe_event ev;
    size_t used;
    rb_err err;
    /* An empty Close reports 1005 (no status). */
    const uint8_t empty[] = {0x88, 0x00};
    ck_assert_int_eq(rb_wsframe_parse(&ps, empty, 2, &used, out, sizeof out, &ev, &err), 0);
    ck_assert_int_eq(ev.kind, RB_WSFRAME_CLOSE);
    ck_assert_uint_eq(ev.close_code, 1005);
    ck_assert_uint_eq(ev.len, 0);
    /* A reason cut inside a UTF-8 sequence is dropped. */
    char reason[RB_WSFRAME_REASON_BYTES_MAX + 8];
    memset(reason, 'a', sizeof reason - 1);
    reason[sizeof reason - 1] = '\0';
    memcpy(reason + RB_WSFRAME_REASON_BYTES_MAX - 1, "\xc3\xa9", 2);
    uint8_t payload[2 + RB_WSFRAME_REASON_BYTES_MAX];
    ck_assert_uint_eq(rb_wsframe_close_payload(payload, 1001, reason), 2);
    ck_assert_uint_eq(payload[0] << 8 | payload[1], 1001);
    ck_assert_uint_eq(rb_wsframe_close_payload(payload, 1000, "ok"), 4);
    ck_assert_uint_eq(rb_wsframe_close_payload(payload, 1000, NULL), 2);
    ck_assert(rb_wsframe_close_code_ok(4000));
    ck_assert(!rb_wsframe_close_code_ok(1006));
    ck_assert(!rb_wsframe_close_code_ok(999));
}
END_TEST

START_TEST(test_wsframe_base64_and_accept)
{
    /* RFC 6455 1.3: the sample nonce and its accept value. */
    char key[RB_WSFRAME_KEY_BYTES];
    rb_wsframe_client_key((const uint8_t *)"the sample nonce", key);
    ck_assert_str_eq(key, "dGhlIHNhbXBsZSBub25jZQ==");
    ck_assert(rb_wsframe_key_ok(key, strlen(key)));
    ck_assert(!rb_wsframe_key_ok("dGhlIHNhbXBsZSBub25jZQ=", 23));
    ck_assert(!rb_wsframe_key_ok("dGhlIHNhbXBsZSBub25jZ!==", 24));
    char accept[RB_WSFRAME_ACCEPT_BYTES];
    rb_wsframe_accept_key(key, strlen(key), accept);
    ck_assert_str_eq(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}
END_TEST

START_TEST(test_wsframe_client_checks_the_answer)
{
    const char *accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
    const char *why;
    ck_assert_int_eq(
        rb_wsframe_client_check_answer("HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\n"
                                       "Sec-WebSocket-Accept:  s3pPLMBiTxaQ9kYGzzhZRbK+xOo= \r\n"
                                       "Sec-WebSocket-Protocol: ringbus.v1\r\n\r",
                                       accept, &why),
        0);
    ck_assert_int_eq(rb_wsframe_client_check_answer("HTTP/1.1 404 Not Found\r\n\r", accept, &why),
                     1);
    ck_assert_int_eq(
        rb_wsframe_client_check_answer("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                       "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOA=\r\n"
                                       "Sec-WebSocket-Protocol: ringbus.v1\r\n\r",
                                       accept, &why),
        -1);
    ck_assert_str_eq(why, "wrong Sec-WebSocket-Accept");
    ck_assert_int_eq(
        rb_wsframe_client_check_answer("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                       "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r",
                                       accept, &why),
        -1);
    ck_assert_str_eq(why, "subprotocol ringbus.v1 not selected");
    ck_assert_int_eq(
        rb_wsframe_client_check_answer("HTTP/1.1 101 Switching Protocols\r\n"
                                       "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                                       "Sec-WebSocket-Protocol: ringbus.v1\r\n\r",
                                       accept, &why),
        -1);
    ck_assert_str_eq(why, "no \"Upgrade: websocket\"");
}
END_TEST

/* ---- the client's pieces against the server's layer ---- */

typedef struct peer {
    rb_stack st;
    rb_listener_config cfg;
    size_t up_len;     /* bytes the layer delivered up, in got */
    uint8_t *wire_out; /* bytes the layer wrote */
    size_t wire_out_len;
} peer;

static atomic_bool ready = true;
static rb_admin admin = {.ready = &ready};

static bool p_deliver(void *owner, const uint8_t *p, size_t len)
{
    peer *h = owner;
    ck_assert_uint_le(h->up_len + len, sizeof got);
    memcpy(got + h->up_len, p, len);
    h->up_len += len;
    return true;
}

static int p_wire(void *owner, const uint8_t *p, size_t len)
{
    peer *h = owner;
    ck_assert_uint_le(h->wire_out_len + len, WIRE_BYTES);
    memcpy(h->wire_out + h->wire_out_len, p, len);
    h->wire_out_len += len;
    return 0;
}

static void p_ended(void *owner, rb_layer_end how, const char *why)
{
    (void)owner;
    (void)how;
    (void)why;
}

START_TEST(test_wsframe_client_against_the_server_layer)
{
    peer *h = calloc(1, sizeof *h);
    ck_assert_ptr_nonnull(h);
    h->wire_out = malloc(WIRE_BYTES);
    ck_assert_ptr_nonnull(h->wire_out);
    h->cfg.transport = RB_TRANSPORT_WS;
    strcpy(h->cfg.path, "/ringbus");
    rb_stack_sink sink = {p_deliver, p_wire, p_ended, h};
    rb_stack_init(&h->st, &sink);
    rb_ws_options o = {
        .listener = &h->cfg, .max_frame_bytes = 1u << 17, .router = rb_admin_router(&admin)};
    rb_layer *l;
    rb_err err;
    ck_assert_int_eq(rb_ws_layer_new(&l, &o, &err), 0);
    rb_stack_push(&h->st, l);

    /* The client's request, the server's 101, the client's check. */
    char key[RB_WSFRAME_KEY_BYTES], accept[RB_WSFRAME_ACCEPT_BYTES];
    rb_wsframe_client_key((const uint8_t *)"0123456789abcdef", key);
    rb_wsframe_accept_key(key, strlen(key), accept);
    char req[512];
    size_t n = rb_wsframe_client_request(req, sizeof req, "/ringbus", "h:7402", key, "https://a");
    ck_assert_int_eq(rb_stack_recv(&h->st, (const uint8_t *)req, n, &err), 0);
    ck_assert(rb_stack_ready(&h->st));
    h->wire_out[h->wire_out_len] = '\0';
    const char *why;
    ck_assert_int_eq(rb_wsframe_client_check_answer((const char *)h->wire_out, accept, &why), 0);
    h->wire_out_len = 0;

    /* Two ringbus frames as the client writes them (the second in two
     * fragments around a Ping), delivered up as they were. */
    uint8_t frames[2048];
    rb_bytes topic = {(const uint8_t *)"t", 1};
    size_t f1 = rb_frame_encode_publish(frames, sizeof frames, 1, topic, (rb_bytes){NULL, 0},
                                        (rb_bytes){(const uint8_t *)"hello", 5});
    size_t f2 = rb_frame_encode_publish(frames + f1, sizeof frames - f1, 2, topic,
                                        (rb_bytes){NULL, 0}, (rb_bytes){(const uint8_t *)"x", 1});
    ck_assert_uint_gt(f1, 0);
    ck_assert_uint_gt(f2, 0);
    n = put(wire, RB_WSFRAME_CLIENT, RB_WS_OP_BINARY, true, frames, f1, key_a);
    n += put(wire + n, RB_WSFRAME_CLIENT, RB_WS_OP_BINARY, false, frames + f1, 10, key_b);
    n += put(wire + n, RB_WSFRAME_CLIENT, RB_WS_OP_PING, true, (const uint8_t *)"hi", 2, key_a);
    n += put(wire + n, RB_WSFRAME_CLIENT, RB_WS_OP_CONT, true, frames + f1 + 10, f2 - 10, key_b);
    ck_assert_msg(rb_stack_recv(&h->st, wire, n, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(h->up_len, f1 + f2);
    ck_assert_mem_eq(got, frames, f1 + f2);

    /* What the server wrote back (the Pong, then a ringbus frame it
     * sends, then its Close) parses in the client role. */
    ck_assert_int_eq(rb_stack_send(&h->st, frames, f1, &err), 0);
    ck_assert_int_eq(rb_stack_flush(&h->st, &err), 0);
    rb_stack_close(&h->st, RB_WIRE_GOING_AWAY);
    rb_wsframe_parser ps;
    rb_wsframe_parser_init(&ps, RB_WSFRAME_CLIENT, 0);
    seen s = {0};
    memcpy(sent, h->wire_out, h->wire_out_len);
    ck_assert_int_eq(feed(&ps, sent, h->wire_out_len, 0, 4096, &s, &err), 0);
    ck_assert_int_eq(s.pings, 0);
    ck_assert_int_eq(s.pongs, 1);
    ck_assert_uint_eq(s.data_len, f1);
    ck_assert_mem_eq(got, frames, f1);
    ck_assert_int_eq(s.closes, 1);
    ck_assert_uint_eq(s.close_code, 1001);

    rb_stack_deinit(&h->st);
    free(h->wire_out);
    free(h);
}
END_TEST

Suite *rb_wsframe_roles_suite(void);

Suite *rb_wsframe_roles_suite(void)
{
    Suite *s = suite_create("wsframe_roles");
    TCase *tc = tcase_create("wsframe");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_wsframe_roundtrip_whole, 0, 2);
    tcase_add_loop_test(tc, test_wsframe_roundtrip_small_out, 0, 2);
    tcase_add_loop_test(tc, test_wsframe_roundtrip_byte_by_byte, 0, 2);
    tcase_add_loop_test(tc, test_wsframe_roundtrip_every_cut, 0, 2);
    tcase_add_loop_test(tc, test_wsframe_bad_input, 0, (int)(sizeof bad / sizeof bad[0]));
    tcase_add_test(tc, test_wsframe_message_bound_is_1009);
    tcase_add_test(tc, test_wsframe_close_events);
    tcase_add_test(tc, test_wsframe_base64_and_accept);
    tcase_add_test(tc, test_wsframe_client_checks_the_answer);
    tcase_add_test(tc, test_wsframe_client_against_the_server_layer);
    suite_add_tcase(s, tc);
    return s;
}
