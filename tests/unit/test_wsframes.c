/* Tests of the WebSocket layer's own frame parser (transports/ws.c) on a
 * plain stack: masked client frames with 7-, 16- and 64-bit lengths, a
 * message in fragments with a Ping between them, every masking-key offset,
 * fed whole and cut at every byte boundary; the frame bytes delivered up
 * must equal the ringbus frames sent, and the Pong must echo the Ping.
 * Malformed headers (a control frame that is not final or too long, a
 * 64-bit length with its top bit set) close with 1002. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "common/frame.h"
#include "server/admin.h"
#include "transports/layer.h"
#include "transports/ws.h"

#define BUF_BYTES (1u << 18)

typedef struct wsh {
    rb_stack st;
    rb_listener_config cfg;
    uint8_t up[BUF_BYTES]; /* frame bytes out of the top */
    size_t up_len;
    uint8_t wire[BUF_BYTES]; /* bytes the layer wrote (101, Pong, Close) */
    size_t wire_len;
    int ended;
} wsh;

static atomic_bool ready = true;
static rb_admin admin = {.ready = &ready};

static bool w_deliver(void *owner, const uint8_t *p, size_t len)
{
    wsh *h = owner;
    ck_assert_uint_le(h->up_len + len, sizeof h->up);
    memcpy(h->up + h->up_len, p, len);
    h->up_len += len;
    return true;
}

static int w_wire(void *owner, const uint8_t *p, size_t len)
{
    wsh *h = owner;
    ck_assert_uint_le(h->wire_len + len, sizeof h->wire);
    memcpy(h->wire + h->wire_len, p, len);
    h->wire_len += len;
    return 0;
}

static void w_ended(void *owner, rb_layer_end how, const char *why)
{
    (void)why;
    ((wsh *)owner)->ended = (int)how;
}

static wsh *open_ws(void)
{
    wsh *h = calloc(1, sizeof *h);
    ck_assert_ptr_nonnull(h);
    h->cfg.transport = RB_TRANSPORT_WS;
    strcpy(h->cfg.path, "/ringbus");
    rb_stack_sink sink = {w_deliver, w_wire, w_ended, h};
    rb_stack_init(&h->st, &sink);
    rb_ws_options o = {
        .listener = &h->cfg, .max_frame_bytes = 1u << 17, .router = rb_admin_router(&admin)};
    rb_layer *l;
    rb_err err;
    ck_assert_int_eq(rb_ws_layer_new(&l, &o, &err), 0);
    rb_stack_push(&h->st, l);
    const char *req = "GET /ringbus HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ringbus.v1\r\n\r\n";
    ck_assert_int_eq(rb_stack_recv(&h->st, (const uint8_t *)req, strlen(req), &err), 0);
    ck_assert(rb_stack_ready(&h->st));
    ck_assert_ptr_nonnull(memmem(h->wire, h->wire_len, "HTTP/1.1 101 ", 13));
    h->wire_len = 0;
    return h;
}

static void close_ws(wsh *h)
{
    rb_stack_deinit(&h->st);
    free(h);
}

/* Appends one masked client frame. */
static size_t put_frame(uint8_t *out, bool fin, uint8_t op, const uint8_t *payload, size_t len,
                        const uint8_t key[4])
{
    size_t n = 0;
    out[n++] = (uint8_t)((fin ? 0x80 : 0) | op);
    if (len < 126) {
        out[n++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        out[n++] = 0x80 | 126;
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    } else {
        out[n++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) {
            out[n++] = (uint8_t)((uint64_t)len >> (8 * i));
        }
    }
    memcpy(out + n, key, 4);
    n += 4;
    for (size_t i = 0; i < len; i++) {
        out[n + i] = payload[i] ^ key[i % 4];
    }
    return n + len;
}

/* A ringbus PUBLISH frame with a payload_len-byte payload. */
static size_t ringbus_frame(uint8_t *out, size_t cap, uint64_t corr, size_t payload_len)
{
    static uint8_t payload[1u << 17];
    for (size_t i = 0; i < payload_len; i++) {
        payload[i] = (uint8_t)(i * 31 + corr);
    }
    rb_bytes topic = {(const uint8_t *)"t", 1};
    size_t n = rb_frame_encode_publish(out, cap, corr, topic, (rb_bytes){NULL, 0},
                                       (rb_bytes){payload, payload_len});
    ck_assert_uint_gt(n, 0);
    return n;
}

static uint8_t frames[BUF_BYTES];
static uint8_t wire[BUF_BYTES];

/* Builds the test input: returns its length, the expected up bytes in
 * frames[0..*want). */
static size_t build_input(size_t *want)
{
    static const uint8_t keys[4][4] = {
        {1, 2, 3, 4}, {0xff, 0, 0x55, 0xaa}, {9, 8, 7, 6}, {0x80, 0x40, 0x20, 0x10}};
    size_t w = 0;
    size_t n = 0;
    /* 7-bit, 16-bit and 64-bit lengths, odd sizes so offsets vary. */
    size_t sizes[] = {3, 100, 1000, 70001};
    for (int i = 0; i < 4; i++) {
        size_t f = ringbus_frame(frames + w, sizeof frames - w, (uint64_t)i + 1, sizes[i]);
        n += put_frame(wire + n, true, 0x2, frames + w, f, keys[i]);
        w += f;
    }
    /* One message in three fragments with a Ping between them. */
    size_t f = ringbus_frame(frames + w, sizeof frames - w, 9, 301);
    size_t a = 7, b = 150;
    n += put_frame(wire + n, false, 0x2, frames + w, a, keys[1]);
    n += put_frame(wire + n, true, 0x9, (const uint8_t *)"ping!", 5, keys[2]);
    n += put_frame(wire + n, false, 0x0, frames + w + a, b, keys[3]);
    n += put_frame(wire + n, true, 0x0, frames + w + a + b, f - a - b, keys[0]);
    w += f;
    *want = w;
    return n;
}

static void check_pong(const wsh *h)
{
    /* Server frames are unmasked: 0x8a, length 5, "ping!". */
    ck_assert_uint_eq(h->wire_len, 7);
    ck_assert_uint_eq(h->wire[0], 0x8a);
    ck_assert_uint_eq(h->wire[1], 5);
    ck_assert_mem_eq(h->wire + 2, "ping!", 5);
}

START_TEST(test_ws_frames_whole)
{
    size_t want;
    size_t n = build_input(&want);
    wsh *h = open_ws();
    rb_err err;
    ck_assert_msg(rb_stack_recv(&h->st, wire, n, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(rb_stack_flush(&h->st, &err), 0);
    ck_assert_uint_eq(h->up_len, want);
    ck_assert_mem_eq(h->up, frames, want);
    check_pong(h);
    close_ws(h);
}
END_TEST

START_TEST(test_ws_frames_cut_at_every_byte)
{
    size_t want;
    size_t n = build_input(&want);
    /* Every cut in the first 600 bytes (headers, small frames, key
     * offsets), then every 97th: the rest is one long payload. */
    for (size_t cut = 1; cut < n; cut += cut < 600 ? 1 : 97) {
        wsh *h = open_ws();
        rb_err err;
        ck_assert_msg(rb_stack_recv(&h->st, wire, cut, &err) == 0, "cut %zu: %s", cut, err.msg);
        ck_assert_msg(rb_stack_recv(&h->st, wire + cut, n - cut, &err) == 0, "cut %zu: %s", cut,
                      err.msg);
        ck_assert_int_eq(rb_stack_flush(&h->st, &err), 0);
        ck_assert_msg(h->up_len == want && memcmp(h->up, frames, want) == 0, "cut %zu", cut);
        check_pong(h);
        close_ws(h);
    }
}
END_TEST

START_TEST(test_ws_frames_byte_by_byte)
{
    size_t want;
    size_t n = build_input(&want);
    wsh *h = open_ws();
    rb_err err;
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(rb_stack_recv(&h->st, wire + i, 1, &err) == 0, "byte %zu: %s", i, err.msg);
    }
    ck_assert_int_eq(rb_stack_flush(&h->st, &err), 0);
    ck_assert_uint_eq(h->up_len, want);
    ck_assert_mem_eq(h->up, frames, want);
    check_pong(h);
    close_ws(h);
}
END_TEST

/* Headers the parser refuses: each closes with 1002 and delivers nothing. */
static const struct {
    uint8_t bytes[16];
    size_t len;
} bad_heads[] = {
    {{0x09, 0x80, 1, 2, 3, 4}, 6},                                   /* Ping not final */
    {{0x89, 0x80 | 126, 0, 126, 1, 2, 3, 4}, 8},                     /* Ping of 126 bytes */
    {{0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4}, 14}, /* 2^63 + 1 */
};

START_TEST(test_ws_bad_heads_close_1002)
{
    wsh *h = open_ws();
    rb_err err;
    int rc = rb_stack_recv(&h->st, bad_heads[_i].bytes, bad_heads[_i].len, &err);
    ck_assert_int_ne(rc, 0);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
    ck_assert_ptr_nonnull(strstr(err.msg, "malformed frame header"));
    ck_assert_uint_eq(h->up_len, 0);
    /* The owner closes the stack with the error's status; the Close the
     * layer then writes carries 1002. */
    rb_stack_close(&h->st, (uint16_t)err.cause);
    ck_assert_uint_ge(h->wire_len, 4);
    ck_assert_uint_eq(h->wire[0], 0x88);
    ck_assert_uint_eq((unsigned)(h->wire[2] << 8 | h->wire[3]), 1002);
    close_ws(h);
}
END_TEST

Suite *rb_wsframes_suite(void);

Suite *rb_wsframes_suite(void)
{
    Suite *s = suite_create("wsframes");
    TCase *tc = tcase_create("parser");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ws_frames_whole);
    tcase_add_test(tc, test_ws_frames_cut_at_every_byte);
    tcase_add_test(tc, test_ws_frames_byte_by_byte);
    tcase_add_loop_test(tc, test_ws_bad_heads_close_1002, 0,
                        (int)(sizeof bad_heads / sizeof bad_heads[0]));
    suite_add_tcase(s, tc);
    return s;
}
