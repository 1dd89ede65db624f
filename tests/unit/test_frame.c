/* Tests of the frame codec (common/frame.c): round trips of every kind,
 * golden bytes from docs/PROTOCOL.md, truncation at every offset, header
 * and body validation, UTF-8 and topic rules, encoder capacity, and
 * randomized round trips and garbage input with a fixed, printed seed. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "common/frame.h"
#include "tests/unit/death.h"

#define MAX_FRAME RB_FRAME_BYTES_DEFAULT
#define BUF_BYTES 65536

Suite *rb_frame_suite(void);

/* ---- helpers ---- */

static uint8_t buf[BUF_BYTES];
static uint8_t buf2[BUF_BYTES];

static rb_bytes str(const char *s)
{
    return (rb_bytes){(const uint8_t *)s, strlen(s)};
}

static rb_bytes raw(const void *p, size_t len)
{
    return (rb_bytes){(const uint8_t *)p, len};
}

static int bytes_eq(rb_bytes a, rb_bytes b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static int bytes_is(rb_bytes a, const char *s)
{
    return bytes_eq(a, str(s));
}

static int dec(const uint8_t *p, size_t len, rb_frame *f, rb_err *err)
{
    rb_err_clear(err);
    return rb_frame_decode(p, len, MAX_FRAME, f, err);
}

/* A byte builder for hand-made frames, independent of the encoders. */
typedef struct bb {
    uint8_t b[BUF_BYTES];
    size_t n;
} bb;

static bb w;

static void bb_u8(bb *b, uint8_t v)
{
    b->b[b->n++] = v;
}

static void bb_u16(bb *b, uint16_t v)
{
    bb_u8(b, (uint8_t)v);
    bb_u8(b, (uint8_t)(v >> 8));
}

static void bb_u32(bb *b, uint32_t v)
{
    bb_u16(b, (uint16_t)v);
    bb_u16(b, (uint16_t)(v >> 16));
}

static void bb_u64(bb *b, uint64_t v)
{
    bb_u32(b, (uint32_t)v);
    bb_u32(b, (uint32_t)(v >> 32));
}

static void bb_mem(bb *b, const void *p, size_t len)
{
    memcpy(b->b + b->n, p, len);
    b->n += len;
}

static void bb_topic(bb *b, const char *t)
{
    bb_u8(b, (uint8_t)strlen(t));
    bb_mem(b, t, strlen(t));
}

/* Starts a frame of kind; bb_end patches the size. */
static void bb_begin(bb *b, uint8_t kind)
{
    b->n = 0;
    bb_u32(b, 0);
    bb_u8(b, RB_PROTOCOL_VERSION);
    bb_u8(b, kind);
    bb_u16(b, 0);
    bb_u64(b, 1);
}

static void set_size(uint8_t *p, uint32_t size)
{
    p[0] = (uint8_t)size;
    p[1] = (uint8_t)(size >> 8);
    p[2] = (uint8_t)(size >> 16);
    p[3] = (uint8_t)(size >> 24);
}

static size_t bb_end(bb *b)
{
    set_size(b->b, (uint32_t)b->n);
    return b->n;
}

/* ---- sample frames, one per kind ---- */

static const rb_mutate_add sample_adds[] = {
    {{(const uint8_t *)"a", 1}, RB_CURSOR_SEQ, 10},
    {{(const uint8_t *)"b", 1}, RB_CURSOR_NOW, 0},
};
static const rb_bytes sample_removes[] = {{(const uint8_t *)"c", 1}};
static const rb_bytes sample_live[] = {{(const uint8_t *)"a", 1}, {(const uint8_t *)"bb", 2}};

static size_t sample_messages(uint8_t *out, size_t cap)
{
    size_t items = rb_frame_messages_item_size(1, 1) + rb_frame_messages_item_size(1, 0);
    size_t n = rb_frame_encode_messages_head(out, cap, 0, 5, 2, items);
    if (n == 0 || cap - n < items) {
        return 0;
    }
    size_t a = rb_frame_encode_messages_item(out + n, cap - n, str("a"), 11, str("x"));
    size_t b = rb_frame_encode_messages_item(out + n + a, cap - n - a, str("b"), 1, str(""));
    ck_assert(a != 0 && b != 0);
    return n + a + b;
}

static size_t sample(uint8_t kind, uint8_t *out, size_t cap)
{
    switch (kind) {
    case RB_FRAME_HELLO:
        return rb_frame_encode_hello(out, cap, 7, 1, str("client"), str("secret"));
    case RB_FRAME_STARTED:
        return rb_frame_encode_started_client(out, cap, 7, 30000, RB_CAP_STREAM | RB_CAP_PUBLISH,
                                              MAX_FRAME, str("node-1"), 0x0123456789abcdefull,
                                              str("anon-1"));
    case RB_FRAME_ERROR:
        return rb_frame_encode_error(out, cap, 9, RB_WIRE_INVALID_TOPIC, str("bad topic"));
    case RB_FRAME_PING:
        return rb_frame_encode_ping(out, cap, 0, 0x1122334455667788ull);
    case RB_FRAME_PONG:
        return rb_frame_encode_pong(out, cap, 0, 0x1122334455667788ull);
    case RB_FRAME_CLOSE:
        return rb_frame_encode_close(out, cap, 0, RB_WIRE_OK, str("bye"));
    case RB_FRAME_PUBLISH:
        return rb_frame_encode_publish(out, cap, 3, str("orders.eu"), str("k1"), str("hello"));
    case RB_FRAME_PUBLISH_ACK:
        return rb_frame_encode_publish_ack(out, cap, 3, str("orders.eu"), 42, 0);
    case RB_FRAME_MUTATE:
        return rb_frame_encode_mutate(out, cap, 4, 5, 0, sample_adds, 2, sample_removes, 1,
                                      0xfedcba9876543210ull);
    case RB_FRAME_MESSAGES:
        return sample_messages(out, cap);
    case RB_FRAME_TOPICS_LIVE:
        return rb_frame_encode_topics_live(out, cap, 0, sample_live, 2);
    case RB_FRAME_CATCHUP_COMPLETE:
        return rb_frame_encode_catchup_complete(out, cap, 0, 5);
    case RB_FRAME_GOING_AWAY:
        return rb_frame_encode_going_away(out, cap, 0, 1500, str("server shutting down"));
    case RB_FRAME_TOPIC_ERROR:
        return rb_frame_encode_topic_error(out, cap, 0, 5, str("orders.eu"), RB_WIRE_CURSOR_AHEAD,
                                           str("cursor 10 is beyond the head 5"));
    case RB_FRAME_AUTH:
        return rb_frame_encode_auth(out, cap, 11, raw("\1\3\0abc", 6));
    case RB_FRAME_REGISTER:
    case RB_FRAME_UNREGISTER:
        return rb_frame_encode_register(out, cap, kind, 12, str("echo"), str("svc"));
    case RB_FRAME_REQUEST:
        return rb_frame_encode_request(out, cap, 13, 5000, str("anon-1"), str("echo"), str("hi"));
    case RB_FRAME_REQUEST_ACK:
        return rb_frame_encode_request_ack(out, cap, 13, 0);
    case RB_FRAME_RESPONSE:
        return rb_frame_encode_response(out, cap, 13, RB_WIRE_APPLICATION_ERROR, str("no"),
                                        str("data"));
    case RB_FRAME_LAGGED:
        return rb_frame_encode_lagged(out, cap, 0, str("cursor.a"), 17);
    default:
        ck_abort_msg("no sample for kind %u", (unsigned)kind);
        return 0;
    }
}

/* ---- round trips ---- */

START_TEST(test_frame_hello_round_trips)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_hello(buf, sizeof buf, 42, 1, str("cli"), raw("\0\1\2", 3));
    ck_assert_uint_eq(n, 16 + 2 + 2 + 3 + 2 + 3);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.hdr.size, n);
    ck_assert_uint_eq(f.hdr.version, RB_PROTOCOL_VERSION);
    ck_assert_uint_eq(f.hdr.kind, RB_FRAME_HELLO);
    ck_assert_uint_eq(f.hdr.flags, 0);
    ck_assert_uint_eq(f.hdr.corr_id, 42);
    ck_assert_uint_eq(f.u.hello.protocol_version, 1);
    ck_assert(bytes_is(f.u.hello.client_name, "cli"));
    ck_assert(bytes_eq(f.u.hello.credentials, raw("\0\1\2", 3)));
}
END_TEST

START_TEST(test_frame_hello_with_empty_strings_round_trips)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_hello(buf, sizeof buf, 0, 1, str(""), str(""));
    ck_assert_uint_eq(n, 22);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.u.hello.client_name.len, 0);
    ck_assert_uint_eq(f.u.hello.credentials.len, 0);
}
END_TEST

START_TEST(test_frame_started_round_trips)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_started(buf, sizeof buf, UINT64_MAX, 30000, RB_CAP_STREAM,
                                       RB_FRAME_BYTES_MAX, str("node-é"), UINT64_MAX - 1);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.hdr.corr_id, UINT64_MAX);
    ck_assert_uint_eq(f.u.started.keepalive_ms, 30000);
    ck_assert_uint_eq(f.u.started.capabilities, RB_CAP_STREAM);
    ck_assert_uint_eq(f.u.started.max_frame_bytes, RB_FRAME_BYTES_MAX);
    ck_assert(bytes_is(f.u.started.server_id, "node-é"));
    ck_assert(f.u.started.has_epoch);
    ck_assert_uint_eq(f.u.started.epoch, UINT64_MAX - 1);
}
END_TEST

START_TEST(test_frame_started_client_id_round_trips_and_is_optional)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_started_client(buf, sizeof buf, 1, 30000, RB_CAP_RPC, MAX_FRAME,
                                              str("node"), 9, str("anon-42"));
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert(f.u.started.has_epoch);
    ck_assert_uint_eq(f.u.started.epoch, 9);
    ck_assert(bytes_is(f.u.started.client_id, "anon-42"));
    /* A server before client ids ends after the epoch. */
    set_size(buf, (uint32_t)(n - 9));
    ck_assert_int_eq(dec(buf, n - 9, &f, &err), 0);
    ck_assert(f.u.started.has_epoch);
    ck_assert_uint_eq(f.u.started.client_id.len, 0);
    /* Part of a client id is bad_frame. */
    set_size(buf, (uint32_t)(n - 1));
    ck_assert_int_eq(dec(buf, n - 1, &f, &err), RB_EPROTO);
    ck_assert_msg(strstr(err.msg, "client_id") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(test_frame_rpc_frames_round_trip)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_register(buf, sizeof buf, RB_FRAME_UNREGISTER, 5, str("m"), str(""));
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.hdr.kind, RB_FRAME_UNREGISTER);
    ck_assert(bytes_is(f.u.reg.method, "m"));
    ck_assert_uint_eq(f.u.reg.service.len, 0);
    n = rb_frame_encode_request(buf, sizeof buf, 6, 50, str("svc"), str("méthode"), str("p"));
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.u.request.timeout_ms, 50);
    ck_assert(bytes_is(f.u.request.peer, "svc"));
    ck_assert(bytes_is(f.u.request.method, "méthode"));
    ck_assert(bytes_is(f.u.request.payload, "p"));
    n = rb_frame_encode_request_ack(buf, sizeof buf, 6, RB_REQUEST_ACK_CANCEL);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.u.request_ack.flags, RB_REQUEST_ACK_CANCEL);
    n = rb_frame_encode_response(buf, sizeof buf, 6, RB_WIRE_OK, str(""), str("answer"));
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.u.response.code, RB_WIRE_OK);
    ck_assert(bytes_is(f.u.response.payload, "answer"));
}
END_TEST

/* docs/PROTOCOL.md section 12's worked example. */
START_TEST(test_frame_request_bytes_match_the_protocol_document)
{
    static const uint8_t want[] = {
        0x26, 0, 0,   0,   1,   0x12, 0,   0,   7, 0,   0,   0,   0,   0, 0, 0, 0x88, 0x13, 0,
        0,    6, 'a', 'n', 'o', 'n',  '-', '2', 4, 'e', 'c', 'h', 'o', 2, 0, 0, 0,    'h',  'i',
    };
    size_t n =
        rb_frame_encode_request(buf, sizeof buf, 7, 5000, str("anon-2"), str("echo"), str("hi"));
    ck_assert_uint_eq(n, sizeof want);
    ck_assert_mem_eq(buf, want, sizeof want);
}
END_TEST

START_TEST(test_frame_rpc_empty_method_and_unknown_ack_flags_are_bad_frame)
{
    rb_frame f;
    rb_err err;
    /* REGISTER with a zero-length method: u8 0, u8 0. */
    size_t n = rb_frame_encode_register(buf, sizeof buf, RB_FRAME_REGISTER, 1, str("m"), str(""));
    buf[RB_FRAME_HEADER_BYTES] = 0;
    buf[RB_FRAME_HEADER_BYTES + 1] = 0;
    set_size(buf, (uint32_t)(n - 1));
    ck_assert_int_eq(dec(buf, n - 1, &f, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
    ck_assert_msg(strstr(err.msg, "method length 0") != NULL, "%s", err.msg);
    n = rb_frame_encode_request_ack(buf, sizeof buf, 1, 0);
    buf[RB_FRAME_HEADER_BYTES] = 0x02;
    ck_assert_int_eq(dec(buf, n, &f, &err), RB_EPROTO);
    ck_assert_msg(strstr(err.msg, "flags") != NULL, "%s", err.msg);
    /* A REQUEST whose destination is empty. */
    n = rb_frame_encode_request(buf, sizeof buf, 1, 0, str("d"), str("m"), str(""));
    buf[RB_FRAME_HEADER_BYTES + 4] = 0;
    ck_assert_int_eq(dec(buf, n, &f, &err), RB_EPROTO);
    ck_assert_msg(strstr(err.msg, "peer length 0") != NULL, "%s", err.msg);
}
END_TEST

/* A server that predates epochs ends STARTED after server_id. */
START_TEST(test_frame_started_without_epoch_decodes_as_no_epoch)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_started(buf, sizeof buf, 1, 30000, RB_CAP_STREAM, MAX_FRAME,
                                       str("old"), 77);
    set_size(buf, (uint32_t)(n - 8));
    ck_assert_int_eq(dec(buf, n - 8, &f, &err), 0);
    ck_assert(bytes_is(f.u.started.server_id, "old"));
    ck_assert(!f.u.started.has_epoch);
    ck_assert_uint_eq(f.u.started.epoch, 0);
    /* Part of an epoch is not an epoch. */
    set_size(buf, (uint32_t)(n - 4));
    ck_assert_int_eq(dec(buf, n - 4, &f, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
    ck_assert_msg(strstr(err.msg, "epoch") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(test_frame_mutate_without_epoch_decodes_as_epoch_zero)
{
    rb_frame f;
    rb_err err;
    size_t n =
        rb_frame_encode_mutate(buf, sizeof buf, 4, 5, 0, sample_adds, 2, sample_removes, 1, 9);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert(f.u.mutate.has_epoch);
    ck_assert_uint_eq(f.u.mutate.epoch, 9);
    set_size(buf, (uint32_t)(n - 8));
    ck_assert_int_eq(dec(buf, n - 8, &f, &err), 0);
    ck_assert(!f.u.mutate.has_epoch);
    ck_assert_uint_eq(f.u.mutate.epoch, 0);
    ck_assert_uint_eq(f.u.mutate.remove_count, 1);
}
END_TEST

START_TEST(test_frame_topic_error_round_trips)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_topic_error(buf, sizeof buf, 0, UINT64_MAX, str("日本.注文"),
                                           RB_WIRE_EPOCH_MISMATCH, str("from epoch 1"));
    ck_assert_uint_eq(n, 16 + 8 + 1 + strlen("日本.注文") + 2 + 2 + strlen("from epoch 1"));
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.hdr.kind, RB_FRAME_TOPIC_ERROR);
    ck_assert_uint_eq(f.u.topic_error.mutate_id, UINT64_MAX);
    ck_assert(bytes_is(f.u.topic_error.topic, "日本.注文"));
    ck_assert_uint_eq(f.u.topic_error.code, RB_WIRE_EPOCH_MISMATCH);
    ck_assert(bytes_is(f.u.topic_error.message, "from epoch 1"));
    ck_assert_str_eq(rb_frame_kind_name(RB_FRAME_TOPIC_ERROR), "TOPIC_ERROR");
    ck_assert_str_eq(rb_wire_code_name(RB_WIRE_EPOCH_MISMATCH), "epoch_mismatch");
    ck_assert_str_eq(rb_wire_code_name(RB_WIRE_CURSOR_AHEAD), "cursor_ahead");
}
END_TEST

START_TEST(test_frame_topic_error_with_empty_topic_is_bad_frame)
{
    rb_frame f;
    rb_err err;
    size_t n =
        rb_frame_encode_topic_error(buf, sizeof buf, 0, 1, str("t"), RB_WIRE_OUT_OF_RANGE, str(""));
    buf[16 + 8] = 0; /* topic length 0 */
    ck_assert_int_eq(dec(buf, n, &f, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
}
END_TEST

START_TEST(test_frame_error_and_close_round_trip)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_error(buf, sizeof buf, 77, RB_WIRE_TOO_LARGE, str("too big"));
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.hdr.kind, RB_FRAME_ERROR);
    ck_assert_uint_eq(f.hdr.corr_id, 77);
    ck_assert_uint_eq(f.u.error.code, RB_WIRE_TOO_LARGE);
    ck_assert(bytes_is(f.u.error.message, "too big"));
    n = rb_frame_encode_close(buf, sizeof buf, 0, RB_WIRE_GOING_AWAY, str(""));
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.hdr.kind, RB_FRAME_CLOSE);
    ck_assert_uint_eq(f.u.close.status, RB_WIRE_GOING_AWAY);
    ck_assert_uint_eq(f.u.close.message.len, 0);
}
END_TEST

START_TEST(test_frame_ping_pong_and_catchup_complete_round_trip)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_ping(buf, sizeof buf, 0, 0xDEADBEEFCAFEF00Dull);
    ck_assert_uint_eq(n, 24);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.hdr.kind, RB_FRAME_PING);
    ck_assert_uint_eq(f.u.ping.nonce, 0xDEADBEEFCAFEF00Dull);
    n = rb_frame_encode_pong(buf, sizeof buf, 0, 1);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.hdr.kind, RB_FRAME_PONG);
    ck_assert_uint_eq(f.u.ping.nonce, 1);
    n = rb_frame_encode_catchup_complete(buf, sizeof buf, 0, 99);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.hdr.kind, RB_FRAME_CATCHUP_COMPLETE);
    ck_assert_uint_eq(f.u.catchup_complete.mutate_id, 99);
}
END_TEST

START_TEST(test_frame_publish_round_trips_with_and_without_key)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_publish(buf, sizeof buf, 5, str("t"), str("key-1"), raw("\0x", 2));
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert(bytes_is(f.u.publish.topic, "t"));
    ck_assert(bytes_is(f.u.publish.idempotency_key, "key-1"));
    ck_assert(bytes_eq(f.u.publish.payload, raw("\0x", 2)));
    n = rb_frame_encode_publish(buf, sizeof buf, 6, str("t"), str(""), str(""));
    ck_assert_uint_eq(n, 16 + 2 + 1 + 4);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.u.publish.idempotency_key.len, 0);
    ck_assert_uint_eq(f.u.publish.payload.len, 0);
}
END_TEST

START_TEST(test_frame_publish_with_255_byte_key_round_trips)
{
    rb_frame f;
    rb_err err;
    char key[256];
    memset(key, 'k', 255);
    key[255] = '\0';
    size_t n = rb_frame_encode_publish(buf, sizeof buf, 5, str("t"), str(key), str("p"));
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert(bytes_is(f.u.publish.idempotency_key, key));
    ck_assert(bytes_is(f.u.publish.payload, "p"));
}
END_TEST

START_TEST(test_frame_publish_ack_round_trips)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_publish_ack(buf, sizeof buf, 5, str("orders"), UINT64_MAX,
                                           RB_ACK_DUPLICATE);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.hdr.corr_id, 5);
    ck_assert(bytes_is(f.u.publish_ack.topic, "orders"));
    ck_assert_uint_eq(f.u.publish_ack.seq, UINT64_MAX);
    ck_assert(f.u.publish_ack.has_flags);
    ck_assert_uint_eq(f.u.publish_ack.flags, RB_ACK_DUPLICATE);
}
END_TEST

/* A server that predates the flags ends the ack after seq. */
START_TEST(test_frame_publish_ack_without_flags_decodes)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_publish_ack(buf, sizeof buf, 5, str("orders"), 7, RB_ACK_DUPLICATE);
    n--;
    buf[0] = (uint8_t)n;
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.u.publish_ack.seq, 7);
    ck_assert(!f.u.publish_ack.has_flags);
    ck_assert_uint_eq(f.u.publish_ack.flags, 0);
}
END_TEST

START_TEST(test_frame_mutate_round_trips_adds_and_removes)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_mutate(buf, sizeof buf, 4, 5, RB_MUTATE_HISTORY_ONLY, sample_adds, 2,
                                      sample_removes, 1, 0);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.u.mutate.mutate_id, 5);
    ck_assert_uint_eq(f.u.mutate.flags, RB_MUTATE_HISTORY_ONLY);
    ck_assert_uint_eq(f.u.mutate.add_count, 2);
    ck_assert_uint_eq(f.u.mutate.remove_count, 1);
    rb_frame_iter it;
    rb_mutate_add add;
    rb_frame_iter_init(&it, f.u.mutate.adds, f.u.mutate.add_count);
    ck_assert(rb_frame_next_add(&it, &add));
    ck_assert(bytes_is(add.topic, "a"));
    ck_assert_uint_eq(add.cursor_kind, RB_CURSOR_SEQ);
    ck_assert_uint_eq(add.cursor, 10);
    ck_assert(rb_frame_next_add(&it, &add));
    ck_assert(bytes_is(add.topic, "b"));
    ck_assert_uint_eq(add.cursor_kind, RB_CURSOR_NOW);
    ck_assert_uint_eq(add.cursor, 0);
    ck_assert(!rb_frame_next_add(&it, &add));
    rb_bytes topic;
    rb_frame_iter_init(&it, f.u.mutate.removes, f.u.mutate.remove_count);
    ck_assert(rb_frame_next_topic(&it, &topic));
    ck_assert(bytes_is(topic, "c"));
    ck_assert(!rb_frame_next_topic(&it, &topic));
}
END_TEST

START_TEST(test_frame_mutate_with_empty_lists_round_trips)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_mutate(buf, sizeof buf, 4, 0, 0, NULL, 0, NULL, 0, 0);
    ck_assert_uint_eq(n, 16 + 8 + 1 + 4 + 4 + 8);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.u.mutate.add_count, 0);
    ck_assert_uint_eq(f.u.mutate.remove_count, 0);
    rb_frame_iter it;
    rb_mutate_add add;
    rb_bytes topic;
    rb_frame_iter_init(&it, f.u.mutate.adds, 0);
    ck_assert(!rb_frame_next_add(&it, &add));
    rb_frame_iter_init(&it, f.u.mutate.removes, 0);
    ck_assert(!rb_frame_next_topic(&it, &topic));
}
END_TEST

START_TEST(test_frame_messages_round_trip_from_shared_items)
{
    rb_frame f;
    rb_err err;
    size_t n = sample_messages(buf, sizeof buf);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.u.messages.mutate_id, 5);
    ck_assert_uint_eq(f.u.messages.count, 2);
    rb_frame_iter it;
    rb_message_item item;
    rb_frame_iter_init(&it, f.u.messages.items, f.u.messages.count);
    ck_assert(rb_frame_next_item(&it, &item));
    ck_assert(bytes_is(item.topic, "a"));
    ck_assert_uint_eq(item.seq, 11);
    ck_assert(bytes_is(item.payload, "x"));
    ck_assert(rb_frame_next_item(&it, &item));
    ck_assert(bytes_is(item.topic, "b"));
    ck_assert_uint_eq(item.seq, 1);
    ck_assert_uint_eq(item.payload.len, 0);
    ck_assert(!rb_frame_next_item(&it, &item));
}
END_TEST

START_TEST(test_frame_empty_messages_and_topics_live_round_trip)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_messages_head(buf, sizeof buf, 0, 0, 0, 0);
    ck_assert_uint_eq(n, RB_FRAME_MESSAGES_HEAD_BYTES);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.u.messages.count, 0);
    n = rb_frame_encode_topics_live(buf, sizeof buf, 0, NULL, 0);
    ck_assert_uint_eq(n, 20);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.u.topics_live.count, 0);
    rb_frame_iter it;
    rb_bytes topic;
    rb_frame_iter_init(&it, f.u.topics_live.topics, 0);
    ck_assert(!rb_frame_next_topic(&it, &topic));
}
END_TEST

START_TEST(test_frame_topics_live_round_trips)
{
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_topics_live(buf, sizeof buf, 0, sample_live, 2);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert_uint_eq(f.u.topics_live.count, 2);
    rb_frame_iter it;
    rb_bytes topic;
    rb_frame_iter_init(&it, f.u.topics_live.topics, f.u.topics_live.count);
    ck_assert(rb_frame_next_topic(&it, &topic));
    ck_assert(bytes_is(topic, "a"));
    ck_assert(rb_frame_next_topic(&it, &topic));
    ck_assert(bytes_is(topic, "bb"));
    ck_assert(!rb_frame_next_topic(&it, &topic));
}
END_TEST

START_TEST(test_frame_max_length_topics_round_trip_in_every_kind)
{
    char t[256];
    memset(t, 'x', 255);
    t[255] = '\0';
    rb_bytes topic = str(t);
    rb_frame f;
    rb_err err;
    size_t n = rb_frame_encode_publish(buf, sizeof buf, 1, topic, str(""), str("p"));
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert(bytes_eq(f.u.publish.topic, topic));
    n = rb_frame_encode_publish_ack(buf, sizeof buf, 1, topic, 1, 0);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    ck_assert(bytes_eq(f.u.publish_ack.topic, topic));
    rb_mutate_add add = {topic, RB_CURSOR_SEQ, 0};
    n = rb_frame_encode_mutate(buf, sizeof buf, 1, 1, 0, &add, 1, &topic, 1, 1);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    n = rb_frame_encode_topics_live(buf, sizeof buf, 0, &topic, 1);
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    size_t item = rb_frame_messages_item_size(255, 0);
    n = rb_frame_encode_messages_head(buf, sizeof buf, 0, 0, 1, item);
    n += rb_frame_encode_messages_item(buf + n, sizeof buf - n, topic, 1, str(""));
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
    rb_frame_iter it;
    rb_message_item mi;
    rb_frame_iter_init(&it, f.u.messages.items, 1);
    ck_assert(rb_frame_next_item(&it, &mi));
    ck_assert(bytes_eq(mi.topic, topic));
}
END_TEST

/* ---- golden bytes (the worked examples of docs/PROTOCOL.md) ---- */

START_TEST(test_frame_hello_encodes_to_documented_bytes)
{
    static const uint8_t want[] = {
        0x19, 0x00, 0x00, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x01, 0x00, 0x03, 0x00, 0x63, 0x6c, 0x69, 0x00, 0x00,
    };
    size_t n = rb_frame_encode_hello(buf, sizeof buf, 1, 1, str("cli"), str(""));
    ck_assert_uint_eq(n, sizeof want);
    ck_assert_mem_eq(buf, want, sizeof want);
}
END_TEST

START_TEST(test_frame_publish_encodes_to_documented_bytes)
{
    static const uint8_t want[] = {
        0x1e, 0x00, 0x00, 0x00, 0x01, 0x07, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x06, 0x6f, 0x72, 0x64, 0x65, 0x72, 0x73, 0x00, 0x02, 0x00, 0x00, 0x00, 0x68, 0x69,
    };
    size_t n = rb_frame_encode_publish(buf, sizeof buf, 2, str("orders"), str(""), str("hi"));
    ck_assert_uint_eq(n, sizeof want);
    ck_assert_mem_eq(buf, want, sizeof want);
}
END_TEST

/* ---- truncation (loop tests over every kind) ---- */

/* Kinds inside 1..RB_FRAME_KIND_LAST without a frame yet. */
static bool kind_reserved(uint8_t kind)
{
    return strcmp(rb_frame_kind_name(kind), "UNKNOWN") == 0;
}

/* Where a frame of kind may legally end early: before an appended field
 * that older peers omit (0 when there is none). STARTED's sample ends with
 * a client id of 2 + 6 bytes after its 8-byte epoch: either may be left off. */
static bool optional_tail(uint8_t kind, size_t tail)
{
    if (kind == RB_FRAME_PUBLISH_ACK) {
        return tail == 1; /* flags */
    }
    if (kind == RB_FRAME_STARTED) {
        return tail == 8 || tail == 16;
    }
    return kind == RB_FRAME_MUTATE && tail == 8;
}

START_TEST(test_frame_every_short_prefix_needs_more_bytes)
{
    uint8_t kind = (uint8_t)_i;
    if (kind_reserved(kind)) {
        return;
    }
    size_t n = sample(kind, buf, sizeof buf);
    ck_assert_uint_gt(n, 0);
    for (size_t len = 0; len < n; len++) {
        rb_frame f;
        rb_err err;
        memcpy(buf2, buf, len);
        ck_assert_msg(dec(buf2, len, &f, &err) == RB_EAGAIN, "%s cut at %zu: %s",
                      rb_frame_kind_name(kind), len, err.msg);
    }
    rb_frame f;
    rb_err err;
    ck_assert_int_eq(dec(buf, n, &f, &err), 0);
}
END_TEST

START_TEST(test_frame_size_shorter_than_body_is_bad_frame_at_every_offset)
{
    uint8_t kind = (uint8_t)_i;
    if (kind_reserved(kind)) {
        return;
    }
    size_t n = sample(kind, buf, sizeof buf);
    for (size_t cut = RB_FRAME_HEADER_BYTES; cut < n; cut++) {
        rb_frame f;
        rb_err err;
        memcpy(buf2, buf, cut);
        set_size(buf2, (uint32_t)cut);
        int rc = dec(buf2, cut, &f, &err);
        if (optional_tail(kind, n - cut)) {
            ck_assert_msg(rc == 0, "%s without its appended field: %s", rb_frame_kind_name(kind),
                          err.msg);
            continue;
        }
        ck_assert_msg(rc == RB_EPROTO && err.cause == RB_WIRE_BAD_FRAME, "%s cut at %zu: %d %s",
                      rb_frame_kind_name(kind), cut, rc, err.msg);
    }
}
END_TEST

START_TEST(test_frame_trailing_bytes_are_bad_frame_for_every_kind)
{
    uint8_t kind = (uint8_t)_i;
    if (kind_reserved(kind)) {
        return;
    }
    size_t n = sample(kind, buf, sizeof buf);
    buf[n] = 0;
    set_size(buf, (uint32_t)(n + 1));
    rb_frame f;
    rb_err err;
    ck_assert_int_eq(dec(buf, n + 1, &f, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
    ck_assert_msg(strstr(err.msg, "1 trailing bytes") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(test_frame_encoder_returns_zero_when_capacity_is_one_short)
{
    uint8_t kind = (uint8_t)_i;
    if (kind_reserved(kind)) {
        return;
    }
    size_t n = sample(kind, buf, sizeof buf);
    ck_assert_uint_eq(sample(kind, buf2, n - 1), 0);
    ck_assert_uint_eq(sample(kind, buf2, n), n);
    ck_assert_mem_eq(buf, buf2, n);
    ck_assert_uint_eq(sample(kind, buf2, 0), 0);
}
END_TEST

START_TEST(test_frame_bytes_past_the_frame_are_ignored)
{
    uint8_t kind = (uint8_t)_i;
    if (kind_reserved(kind)) {
        return;
    }
    size_t n = sample(kind, buf, sizeof buf);
    size_t m = sample(RB_FRAME_PING, buf + n, sizeof buf - n);
    rb_frame f;
    rb_err err;
    ck_assert_int_eq(dec(buf, n + m, &f, &err), 0);
    ck_assert_uint_eq(f.hdr.size, n);
    ck_assert_uint_eq(f.hdr.kind, kind);
}
END_TEST

/* ---- header ---- */

static size_t header(uint8_t *p, uint32_t size, uint8_t version, uint8_t kind, uint16_t flags)
{
    bb_begin(&w, kind);
    w.b[4] = version;
    w.b[6] = (uint8_t)flags;
    w.b[7] = (uint8_t)(flags >> 8);
    set_size(w.b, size);
    memcpy(p, w.b, 16);
    return 16;
}

static int hdr_decode(const uint8_t *p, rb_frame_header *h, rb_err *err)
{
    rb_err_clear(err);
    return rb_frame_header_decode(p, 16, MAX_FRAME, h, err);
}

START_TEST(test_frame_header_needs_sixteen_bytes)
{
    rb_frame_header h;
    rb_err err;
    header(buf, 24, 1, RB_FRAME_PING, 0);
    for (size_t len = 0; len < 16; len++) {
        ck_assert_int_eq(rb_frame_header_decode(buf, len, MAX_FRAME, &h, &err), RB_EAGAIN);
    }
    ck_assert_int_eq(rb_frame_header_decode(buf, 16, MAX_FRAME, &h, &err), 0);
    ck_assert_uint_eq(h.size, 24);
}
END_TEST

START_TEST(test_frame_size_below_header_is_bad_frame)
{
    rb_frame_header h;
    rb_err err;
    header(buf, 3, 1, RB_FRAME_PING, 0);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
    ck_assert_str_eq(err.msg, "frame size 3 below header 16");
    header(buf, 15, 1, RB_FRAME_PING, 0);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), RB_EPROTO);
    header(buf, 0, 1, RB_FRAME_PING, 0);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), RB_EPROTO);
}
END_TEST

START_TEST(test_frame_size_of_exactly_header_is_accepted_by_header)
{
    rb_frame_header h;
    rb_err err;
    header(buf, 16, 1, RB_FRAME_PING, 0);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), 0);
    /* ...but a PING needs its nonce. */
    rb_frame f;
    ck_assert_int_eq(dec(buf, 16, &f, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "PING: nonce: truncated (needs 8 bytes, 0 left)");
}
END_TEST

START_TEST(test_frame_size_above_max_is_too_large)
{
    rb_frame_header h;
    rb_err err;
    header(buf, MAX_FRAME + 1, 1, RB_FRAME_PUBLISH, 0);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_TOO_LARGE);
    ck_assert_str_eq(err.msg, "frame size 1048577 above max_frame_bytes 1048576");
    header(buf, MAX_FRAME, 1, RB_FRAME_PUBLISH, 0);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), 0);
}
END_TEST

START_TEST(test_frame_size_of_four_gib_is_too_large)
{
    rb_frame_header h;
    rb_err err;
    header(buf, UINT32_MAX, 1, RB_FRAME_PUBLISH, 0);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_TOO_LARGE);
    rb_frame f;
    ck_assert_int_eq(dec(buf, 16, &f, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_TOO_LARGE);
}
END_TEST

START_TEST(test_frame_size_is_checked_before_version)
{
    rb_frame_header h;
    rb_err err;
    header(buf, UINT32_MAX, 9, 0, 1);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_TOO_LARGE);
}
END_TEST

START_TEST(test_frame_unknown_version_is_unsupported)
{
    rb_frame_header h;
    rb_err err;
    header(buf, 24, 2, RB_FRAME_PING, 0);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_UNSUPPORTED_VERSION);
    ck_assert_str_eq(err.msg, "protocol version 2 unsupported (this server speaks 1)");
    header(buf, 24, 0, RB_FRAME_PING, 0);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_UNSUPPORTED_VERSION);
}
END_TEST

START_TEST(test_frame_kind_zero_and_past_last_are_bad_frame)
{
    rb_frame_header h;
    rb_err err;
    header(buf, 24, 1, 0, 0);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
    ck_assert_str_eq(err.msg, "frame kind 0 unknown");
    header(buf, 24, 1, RB_FRAME_KIND_LAST + 1, 0);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
    header(buf, 24, 1, 255, 0);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
}
END_TEST

/* GOING_AWAY (14): the hint and the message round-trip; a truncated body
 * is bad_frame. */
START_TEST(test_frame_going_away_round_trips)
{
    size_t n = rb_frame_encode_going_away(buf, sizeof buf, 0, 1500, str("deploy"));
    ck_assert_uint_eq(n, RB_FRAME_HEADER_BYTES + 4 + 2 + 6);
    rb_frame f;
    rb_err err;
    ck_assert_int_eq(rb_frame_decode(buf, n, RB_FRAME_BYTES_MAX, &f, &err), 0);
    ck_assert_int_eq(f.hdr.kind, RB_FRAME_GOING_AWAY);
    ck_assert_uint_eq(f.u.going_away.reconnect_delay_ms, 1500);
    ck_assert_uint_eq(f.u.going_away.message.len, 6);
    ck_assert_str_eq(rb_frame_kind_name(RB_FRAME_GOING_AWAY), "GOING_AWAY");
    header(buf, RB_FRAME_HEADER_BYTES + 3, 1, RB_FRAME_GOING_AWAY, 0);
    ck_assert_int_eq(rb_frame_decode(buf, RB_FRAME_HEADER_BYTES + 3, RB_FRAME_BYTES_MAX, &f, &err),
                     RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
}
END_TEST

/* LAGGED (21): topic and skipped count round-trip; skipped 0 is
 * bad_frame (a lag always skips something). */
START_TEST(test_frame_lagged_round_trips_and_refuses_zero)
{
    size_t n = rb_frame_encode_lagged(buf, sizeof buf, 0, str("cursor.a"), 1ull << 40);
    ck_assert_uint_eq(n, RB_FRAME_HEADER_BYTES + 1 + 8 + 8);
    rb_frame f;
    rb_err err;
    ck_assert_int_eq(rb_frame_decode(buf, n, RB_FRAME_BYTES_MAX, &f, &err), 0);
    ck_assert_int_eq(f.hdr.kind, RB_FRAME_LAGGED);
    ck_assert_uint_eq(f.u.lagged.skipped, 1ull << 40);
    ck_assert_uint_eq(f.u.lagged.topic.len, 8);
    ck_assert_str_eq(rb_frame_kind_name(RB_FRAME_LAGGED), "LAGGED");
    memset(buf + n - 8, 0, 8);
    ck_assert_int_eq(rb_frame_decode(buf, n, RB_FRAME_BYTES_MAX, &f, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
    ck_assert_msg(strstr(err.msg, "skipped: 0") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(test_frame_nonzero_flags_are_bad_frame)
{
    rb_frame_header h;
    rb_err err;
    header(buf, 24, 1, RB_FRAME_PING, 0x8000);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
    ck_assert_str_eq(err.msg, "PING: header flags 0x8000 not zero");
    header(buf, 24, 1, RB_FRAME_PING, 1);
    ck_assert_int_eq(hdr_decode(buf, &h, &err), RB_EPROTO);
}
END_TEST

START_TEST(test_frame_refused_header_still_reports_corr_id)
{
    rb_frame_header h;
    rb_err err;
    bb_begin(&w, 0);
    w.b[8] = 0x2A;
    set_size(w.b, 24);
    ck_assert_int_eq(hdr_decode(w.b, &h, &err), RB_EPROTO);
    ck_assert_uint_eq(h.corr_id, 0x2A);
}
END_TEST

/* ---- body validation ---- */

static int dec_w(rb_frame *f, rb_err *err)
{
    size_t n = bb_end(&w);
    return dec(w.b, n, f, err);
}

START_TEST(test_frame_mutate_topic_length_zero_names_the_add)
{
    rb_frame f;
    rb_err err;
    bb_begin(&w, RB_FRAME_MUTATE);
    bb_u64(&w, 1);
    bb_u8(&w, 0);
    bb_u32(&w, 4);
    for (int i = 0; i < 3; i++) {
        bb_topic(&w, "ok");
        bb_u8(&w, RB_CURSOR_SEQ);
        bb_u64(&w, 0);
    }
    bb_u8(&w, 0); /* add 3: empty topic */
    bb_u8(&w, RB_CURSOR_SEQ);
    bb_u64(&w, 0);
    bb_u8(&w, 0);
    bb_u32(&w, 0);
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
    ck_assert_str_eq(err.msg, "MUTATE: add 3: topic length 0");
}
END_TEST

START_TEST(test_frame_mutate_unknown_cursor_kind_is_bad_frame)
{
    rb_frame f;
    rb_err err;
    bb_begin(&w, RB_FRAME_MUTATE);
    bb_u64(&w, 1);
    bb_u8(&w, 0);
    bb_u32(&w, 1);
    bb_topic(&w, "t");
    bb_u8(&w, 2);
    bb_u64(&w, 0);
    bb_u32(&w, 0);
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "MUTATE: add 0: cursor_kind 2 unknown");
}
END_TEST

START_TEST(test_frame_mutate_now_with_nonzero_cursor_is_bad_frame)
{
    rb_frame f;
    rb_err err;
    bb_begin(&w, RB_FRAME_MUTATE);
    bb_u64(&w, 1);
    bb_u8(&w, 0);
    bb_u32(&w, 1);
    bb_topic(&w, "t");
    bb_u8(&w, RB_CURSOR_NOW);
    bb_u64(&w, 7);
    bb_u32(&w, 0);
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "MUTATE: add 0: cursor 7 with cursor_kind now (must be 0)");
}
END_TEST

START_TEST(test_frame_mutate_unknown_flag_bits_are_bad_frame)
{
    rb_frame f;
    rb_err err;
    bb_begin(&w, RB_FRAME_MUTATE);
    bb_u64(&w, 1);
    bb_u8(&w, 0x02);
    bb_u32(&w, 0);
    bb_u32(&w, 0);
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "MUTATE: flags 0x02 has unknown bits");
}
END_TEST

START_TEST(test_frame_mutate_remove_with_empty_topic_is_bad_frame)
{
    rb_frame f;
    rb_err err;
    bb_begin(&w, RB_FRAME_MUTATE);
    bb_u64(&w, 1);
    bb_u8(&w, 0);
    bb_u32(&w, 0);
    bb_u32(&w, 2);
    bb_topic(&w, "x");
    bb_u8(&w, 0);
    bb_u8(&w, 0);
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "MUTATE: remove 1: topic length 0");
}
END_TEST

START_TEST(test_frame_huge_add_count_with_small_body_is_refused)
{
    rb_frame f;
    rb_err err;
    bb_begin(&w, RB_FRAME_MUTATE);
    bb_u64(&w, 1);
    bb_u8(&w, 0);
    bb_u32(&w, UINT32_MAX);
    bb_topic(&w, "t");
    bb_u8(&w, 0);
    bb_u64(&w, 0);
    bb_u32(&w, 0);
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
    ck_assert_str_eq(err.msg, "MUTATE: add_count 4294967295 needs at least 47244640245 bytes, "
                              "15 left");
}
END_TEST

START_TEST(test_frame_huge_remove_item_and_topic_counts_are_refused)
{
    rb_frame f;
    rb_err err;
    bb_begin(&w, RB_FRAME_MUTATE);
    bb_u64(&w, 1);
    bb_u8(&w, 0);
    bb_u32(&w, 0);
    bb_u32(&w, UINT32_MAX);
    bb_topic(&w, "t");
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_msg(strstr(err.msg, "remove_count 4294967295") != NULL, "%s", err.msg);
    bb_begin(&w, RB_FRAME_MESSAGES);
    bb_u64(&w, 0);
    bb_u32(&w, 0x80000000u);
    bb_topic(&w, "t");
    bb_u64(&w, 1);
    bb_u32(&w, 0);
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_msg(strstr(err.msg, "MESSAGES: count 2147483648") != NULL, "%s", err.msg);
    bb_begin(&w, RB_FRAME_TOPICS_LIVE);
    bb_u32(&w, 2);
    bb_topic(&w, "t");
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "TOPICS_LIVE: count 2 needs at least 4 bytes, 2 left");
}
END_TEST

START_TEST(test_frame_payload_length_past_the_frame_is_bad_frame)
{
    rb_frame f;
    rb_err err;
    bb_begin(&w, RB_FRAME_PUBLISH);
    bb_topic(&w, "t");
    bb_u8(&w, 0);
    bb_u32(&w, UINT32_MAX);
    bb_mem(&w, "abc", 3);
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "PUBLISH: payload: truncated (needs 4294967295 bytes, 3 left)");
}
END_TEST

START_TEST(test_frame_publish_topic_length_zero_is_bad_frame)
{
    rb_frame f;
    rb_err err;
    bb_begin(&w, RB_FRAME_PUBLISH);
    bb_u8(&w, 0);
    bb_u8(&w, 0);
    bb_u32(&w, 0);
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "PUBLISH: topic length 0");
}
END_TEST

START_TEST(test_frame_invalid_utf8_in_strings_and_topics_is_bad_frame)
{
    rb_frame f;
    rb_err err;
    bb_begin(&w, RB_FRAME_HELLO);
    bb_u16(&w, 1);
    bb_u16(&w, 3);
    bb_mem(&w, "a\xC0\x80", 3);
    bb_u16(&w, 0);
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "HELLO: client_name: invalid UTF-8 at byte 1");
    bb_begin(&w, RB_FRAME_TOPICS_LIVE);
    bb_u32(&w, 1);
    bb_u8(&w, 2);
    bb_mem(&w, "\xED\xA0", 2);
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "TOPICS_LIVE: topic 0: topic: invalid UTF-8 at byte 0");
    bb_begin(&w, RB_FRAME_ERROR);
    bb_u16(&w, 1);
    bb_u16(&w, 1);
    bb_u8(&w, 0xFF);
    ck_assert_int_eq(dec_w(&f, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
}
END_TEST

START_TEST(test_frame_opaque_fields_accept_any_bytes)
{
    rb_frame f;
    rb_err err;
    bb_begin(&w, RB_FRAME_PUBLISH);
    bb_topic(&w, "t");
    bb_u8(&w, 2);
    bb_mem(&w, "\xFF\x00", 2);
    bb_u32(&w, 2);
    bb_mem(&w, "\xC0\x80", 2);
    ck_assert_int_eq(dec_w(&f, &err), 0);
    bb_begin(&w, RB_FRAME_HELLO);
    bb_u16(&w, 1);
    bb_u16(&w, 0);
    bb_u16(&w, 1);
    bb_u8(&w, 0xFF);
    ck_assert_int_eq(dec_w(&f, &err), 0);
    ck_assert_uint_eq(f.u.hello.credentials.ptr[0], 0xFF);
}
END_TEST

START_TEST(test_frame_decode_of_topic_allows_what_validate_refuses)
{
    /* The decoder checks only length and UTF-8; names are the handler's. */
    rb_frame f;
    rb_err err;
    bb_begin(&w, RB_FRAME_PUBLISH_ACK);
    bb_topic(&w, "$sys a");
    bb_u64(&w, 1);
    ck_assert_int_eq(dec_w(&f, &err), 0);
    ck_assert_int_eq(rb_topic_validate(f.u.publish_ack.topic, false, &err), RB_EINVAL);
}
END_TEST

/* ---- UTF-8 ---- */

static int u8v(const char *s)
{
    return rb_utf8_valid((const uint8_t *)s, strlen(s));
}

START_TEST(test_utf8_accepts_well_formed_text)
{
    ck_assert(rb_utf8_valid(NULL, 0));
    ck_assert(u8v("plain ascii"));
    ck_assert(u8v("\xC2\x80"));         /* U+0080 */
    ck_assert(u8v("\xDF\xBF"));         /* U+07FF */
    ck_assert(u8v("\xE0\xA0\x80"));     /* U+0800 */
    ck_assert(u8v("\xED\x9F\xBF"));     /* U+D7FF */
    ck_assert(u8v("\xEE\x80\x80"));     /* U+E000 */
    ck_assert(u8v("\xEF\xBF\xBF"));     /* U+FFFF */
    ck_assert(u8v("\xF0\x9F\x98\x80")); /* U+1F600, a valid 4-byte sequence */
    ck_assert(u8v("\xF4\x8F\xBF\xBF")); /* U+10FFFF */
    ck_assert(rb_utf8_valid((const uint8_t *)"\0", 1));
}
END_TEST

START_TEST(test_utf8_refuses_overlongs)
{
    ck_assert(!u8v("\xC0\x80"));
    ck_assert(!u8v("\xC1\xBF"));
    ck_assert(!u8v("\xE0\x80\x80"));
    ck_assert(!u8v("\xE0\x9F\xBF"));
    ck_assert(!u8v("\xF0\x80\x80\x80"));
    ck_assert(!u8v("\xF0\x8F\xBF\xBF"));
}
END_TEST

START_TEST(test_utf8_refuses_surrogates)
{
    ck_assert(!u8v("\xED\xA0\x80")); /* U+D800 */
    ck_assert(!u8v("\xED\xBF\xBF")); /* U+DFFF */
    ck_assert(!u8v("\xED\xA0\xBD\xED\xB8\x80"));
}
END_TEST

START_TEST(test_utf8_refuses_code_points_above_10ffff)
{
    ck_assert(!u8v("\xF4\x90\x80\x80"));
    ck_assert(!u8v("\xF5\x80\x80\x80"));
    ck_assert(!u8v("\xF7\xBF\xBF\xBF"));
    ck_assert(!u8v("\xF8\x88\x80\x80\x80"));
    ck_assert(!u8v("\xFF"));
    ck_assert(!u8v("\xFE"));
}
END_TEST

START_TEST(test_utf8_refuses_truncated_and_stray_sequences)
{
    ck_assert(!u8v("\xE2\x82"));
    ck_assert(!u8v("\xF0\x9F\x98"));
    ck_assert(!u8v("\xC2"));
    ck_assert(!u8v("\x80"));
    ck_assert(!u8v("a\xBF"));
    ck_assert(!u8v("\xE2\x28\xA1"));
    ck_assert(!u8v("\xF0\x9F\x98\x28"));
}
END_TEST

/* ---- topic names ---- */

static int topic(const char *s, bool allow_reserved, rb_err *err)
{
    rb_err_clear(err);
    return rb_topic_validate(str(s), allow_reserved, err);
}

START_TEST(test_topic_accepts_ordinary_names)
{
    rb_err err;
    ck_assert_int_eq(topic("orders.eu-west/1", false, &err), 0);
    ck_assert_int_eq(topic("日本.注文", false, &err), 0);
    ck_assert_int_eq(topic("a$b", false, &err), 0);
    ck_assert_int_eq(topic("\xF0\x9F\x98\x80", false, &err), 0);
}
END_TEST

START_TEST(test_topic_empty_is_refused)
{
    rb_err err;
    ck_assert_int_eq(topic("", false, &err), RB_EINVAL);
    ck_assert_int_eq(err.cause, RB_WIRE_INVALID_TOPIC);
    ck_assert_str_eq(err.msg, "topic: empty");
}
END_TEST

START_TEST(test_topic_of_255_bytes_is_accepted_and_256_refused)
{
    rb_err err;
    uint8_t t[256];
    memset(t, 'a', sizeof t);
    ck_assert_int_eq(rb_topic_validate(raw(t, 255), false, &err), 0);
    ck_assert_int_eq(rb_topic_validate(raw(t, 256), false, &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "topic: 256 bytes, above 255");
}
END_TEST

START_TEST(test_topic_with_a_space_is_refused)
{
    rb_err err;
    ck_assert_int_eq(topic("abc def", false, &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "topic: contains a space (U+0020) at byte 3");
    ck_assert_int_eq(topic("a\tb", false, &err), RB_EINVAL);
    ck_assert_int_eq(topic("a\nb", false, &err), RB_EINVAL);
}
END_TEST

START_TEST(test_topic_with_unicode_white_space_is_refused)
{
    static const char *const spaces[] = {
        "\xC2\xA0",     "\xC2\x85",     "\xE1\x9A\x80", "\xE2\x80\x80", "\xE2\x80\x8A",
        "\xE2\x80\xA8", "\xE2\x80\xA9", "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80",
    };
    rb_err err;
    char t[16];
    for (size_t i = 0; i < sizeof spaces / sizeof spaces[0]; i++) {
        snprintf(t, sizeof t, "a%sb", spaces[i]);
        ck_assert_int_eq(topic(t, false, &err), RB_EINVAL);
        ck_assert_msg(strstr(err.msg, "contains a space") != NULL, "%zu: %s", i, err.msg);
    }
    ck_assert_int_eq(topic("a\xC2\xA0", false, &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "topic: contains a space (U+00A0) at byte 1");
    /* U+200B ZERO WIDTH SPACE is not White_Space. */
    ck_assert_int_eq(topic("a\xE2\x80\x8B", false, &err), 0);
}
END_TEST

START_TEST(test_topic_with_a_control_character_is_refused)
{
    rb_err err;
    ck_assert_int_eq(topic("a\x01", false, &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "topic: contains a control character (U+0001) at byte 1");
    ck_assert_int_eq(topic("a\x7F", false, &err), RB_EINVAL);
    ck_assert_int_eq(topic("a\xC2\x80", false, &err), RB_EINVAL);
    ck_assert_int_eq(topic("a\xC2\x9F", false, &err), RB_EINVAL);
    ck_assert_int_eq(rb_topic_validate(raw("a\0b", 3), false, &err), RB_EINVAL);
}
END_TEST

START_TEST(test_topic_with_invalid_utf8_is_refused)
{
    rb_err err;
    ck_assert_int_eq(topic("ab\xC0\x80", false, &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "topic: invalid UTF-8 at byte 2");
}
END_TEST

START_TEST(test_topic_dollar_prefix_is_reserved_unless_allowed)
{
    rb_err err;
    ck_assert_int_eq(topic("$sys.conns", false, &err), RB_EINVAL);
    ck_assert_int_eq(err.cause, RB_WIRE_INVALID_TOPIC);
    ck_assert_msg(strstr(err.msg, "reserved") != NULL, "%s", err.msg);
    ck_assert_int_eq(topic("$sys.conns", true, &err), 0);
    ck_assert_int_eq(topic("$sys conns", true, &err), RB_EINVAL);
}
END_TEST

/* ---- encoders and names ---- */

START_TEST(test_frame_messages_head_and_item_refuse_small_capacity)
{
    ck_assert_uint_eq(
        rb_frame_encode_messages_head(buf, RB_FRAME_MESSAGES_HEAD_BYTES - 1, 0, 0, 0, 0), 0);
    size_t item = rb_frame_messages_item_size(1, 3);
    ck_assert_uint_eq(item, 1 + 1 + 8 + 4 + 3);
    ck_assert_uint_eq(rb_frame_encode_messages_item(buf, item - 1, str("t"), 1, str("abc")), 0);
    ck_assert_uint_eq(rb_frame_encode_messages_item(buf, item, str("t"), 1, str("abc")), item);
}
END_TEST

START_TEST(test_frame_largest_deliverable_payload_fills_one_messages_frame)
{
    uint32_t max = RB_FRAME_BYTES_MIN;
    size_t payload = rb_frame_message_payload_max(max, 3);
    ck_assert_uint_eq(payload, max - 28 - (1 + 3 + 8 + 4));
    ck_assert_uint_eq(RB_FRAME_MESSAGES_HEAD_BYTES + rb_frame_messages_item_size(3, payload), max);
    static uint8_t big[RB_FRAME_BYTES_MIN];
    memset(big, 'p', sizeof big);
    size_t item = rb_frame_messages_item_size(3, payload);
    size_t n = rb_frame_encode_messages_head(buf, sizeof buf, 0, 0, 1, item);
    n += rb_frame_encode_messages_item(buf + n, sizeof buf - n, str("abc"), 1, raw(big, payload));
    rb_frame f;
    rb_err err;
    ck_assert_int_eq(rb_frame_decode(buf, n, max, &f, &err), 0);
    set_size(buf, (uint32_t)n + 1);
    ck_assert_int_eq(rb_frame_header_decode(buf, n + 1, max, &f.hdr, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_TOO_LARGE);
}
END_TEST

START_TEST(test_frame_encoding_an_empty_topic_aborts)
{
    RB_DEATH_TEST();
    rb_frame_encode_publish_ack(buf, sizeof buf, 0, str(""), 1, 0);
}
END_TEST

START_TEST(test_frame_encoding_now_add_with_cursor_aborts)
{
    RB_DEATH_TEST();
    rb_mutate_add add = {str("t"), RB_CURSOR_NOW, 5};
    rb_frame_encode_mutate(buf, sizeof buf, 0, 1, 0, &add, 1, NULL, 0, 0);
}
END_TEST

START_TEST(test_frame_kind_and_code_names_are_stable)
{
    ck_assert_str_eq(rb_frame_kind_name(RB_FRAME_HELLO), "HELLO");
    ck_assert_str_eq(rb_frame_kind_name(RB_FRAME_PUBLISH_ACK), "PUBLISH_ACK");
    ck_assert_str_eq(rb_frame_kind_name(RB_FRAME_CATCHUP_COMPLETE), "CATCHUP_COMPLETE");
    ck_assert_str_eq(rb_frame_kind_name(0), "UNKNOWN");
    ck_assert_str_eq(rb_frame_kind_name(RB_FRAME_KIND_LAST + 1), "UNKNOWN");
    ck_assert_str_eq(rb_wire_code_name(RB_WIRE_OK), "ok");
    ck_assert_str_eq(rb_wire_code_name(RB_WIRE_RESOURCE_EXHAUSTED), "resource_exhausted");
    ck_assert_str_eq(rb_wire_code_name(RB_WIRE_OUT_OF_RANGE), "out_of_range");
    ck_assert_str_eq(rb_wire_code_name(RB_WIRE_CODE_LAST + 1), "unknown");
    ck_assert_str_eq(rb_wire_code_name(RB_WIRE_DEDUP_FULL), "dedup_full");
    /* 16, 17 and 19 are reserved for frames not built yet. */
    ck_assert_str_eq(rb_wire_code_name(16), "unknown");
    ck_assert_str_eq(rb_wire_code_name(RB_WIRE_RECIPIENT_NOT_FOUND), "recipient_not_found");
    ck_assert_str_eq(rb_wire_code_name(RB_WIRE_RESPONDER_BUSY), "responder_busy");
    for (uint16_t c = 0; c <= RB_WIRE_CODE_LAST; c++) {
        uint16_t back = 999;
        if (strcmp(rb_wire_code_name(c), "unknown") == 0) {
            continue; /* a reserved number without a code yet */
        }
        ck_assert_int_eq(rb_wire_code_parse(rb_wire_code_name(c), &back), 0);
        ck_assert_uint_eq(back, c);
    }
    uint16_t code;
    ck_assert_int_eq(rb_wire_code_parse("unknown", &code), -1);
    ck_assert_int_eq(rb_wire_code_parse("", &code), -1);
}
END_TEST

/* ---- randomized ---- */

#define RANDOM_ROUND_TRIPS 3000
#define RANDOM_GARBAGE     50000
#define LIST_MAX           12

static uint32_t rng_next(uint32_t *s)
{
    /* xorshift32: deterministic across platforms. */
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

static uint32_t rng_below(uint32_t *s, uint32_t n)
{
    return rng_next(s) % n;
}

static uint32_t test_seed(void)
{
    const char *env = getenv("RB_FRAME_SEED");
    return env != NULL ? (uint32_t)strtoul(env, NULL, 0) : 0x5EED2024u;
}

/* Writes random well-formed UTF-8 of 1..max bytes (no surrogates). */
static rb_bytes rand_text(uint32_t *s, uint8_t *out, size_t max, size_t min)
{
    size_t want = min + rng_below(s, (uint32_t)(max - min + 1));
    size_t n = 0;
    while (n < want) {
        uint32_t pick = rng_below(s, 4);
        if (pick == 0 || want - n < 4) {
            out[n++] = (uint8_t)(0x21 + rng_below(s, 0x5E));
        } else if (pick == 1) {
            uint32_t cp = 0xA1 + rng_below(s, 0x700);
            out[n++] = (uint8_t)(0xC0 | (cp >> 6));
            out[n++] = (uint8_t)(0x80 | (cp & 0x3F));
        } else if (pick == 2) {
            uint32_t cp = 0x3041 + rng_below(s, 0xA000);
            out[n++] = (uint8_t)(0xE0 | (cp >> 12));
            out[n++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            out[n++] = (uint8_t)(0x80 | (cp & 0x3F));
        } else {
            uint32_t cp = 0x10000 + rng_below(s, 0x100000);
            out[n++] = (uint8_t)(0xF0 | (cp >> 18));
            out[n++] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
            out[n++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            out[n++] = (uint8_t)(0x80 | (cp & 0x3F));
        }
    }
    ck_assert(rb_utf8_valid(out, n));
    return (rb_bytes){out, n};
}

static rb_bytes rand_blob(uint32_t *s, uint8_t *out, size_t max)
{
    size_t n = rng_below(s, (uint32_t)max + 1);
    for (size_t i = 0; i < n; i++) {
        out[i] = (uint8_t)rng_next(s);
    }
    return (rb_bytes){out, n};
}

static uint64_t rand_u64(uint32_t *s)
{
    uint64_t v = ((uint64_t)rng_next(s) << 32) | rng_next(s);
    /* Small values and the extremes are where encoding bugs live. */
    switch (rng_below(s, 4)) {
    case 0:
        return 0;
    case 1:
        return UINT64_MAX;
    case 2:
        return v & 0xFF;
    default:
        return v;
    }
}

/* Storage for the random frame's fields. */
static uint8_t text_pool[LIST_MAX * 2][300];
static rb_mutate_add rand_adds[LIST_MAX];
static rb_bytes rand_topics[LIST_MAX];
static uint64_t rand_seqs[LIST_MAX];
static rb_bytes rand_payloads[LIST_MAX];

static void check_random_mutate(uint32_t *s, uint32_t seed)
{
    uint32_t adds = rng_below(s, LIST_MAX), removes = rng_below(s, LIST_MAX);
    for (uint32_t i = 0; i < adds; i++) {
        rand_adds[i].topic = rand_text(s, text_pool[i], 255, 1);
        rand_adds[i].cursor_kind = (uint8_t)rng_below(s, 2);
        rand_adds[i].cursor = rand_adds[i].cursor_kind == RB_CURSOR_NOW ? 0 : rand_u64(s);
    }
    for (uint32_t i = 0; i < removes; i++) {
        rand_topics[i] = rand_text(s, text_pool[LIST_MAX + i], 255, 1);
    }
    uint64_t id = rand_u64(s);
    uint8_t flags = (uint8_t)rng_below(s, 2);
    uint64_t epoch = rand_u64(s);
    size_t n = rb_frame_encode_mutate(buf, sizeof buf, id, id, flags, rand_adds, adds, rand_topics,
                                      removes, epoch);
    rb_frame f;
    rb_err err;
    ck_assert_msg(dec(buf, n, &f, &err) == 0, "seed %u: %s", seed, err.msg);
    ck_assert_msg(f.u.mutate.mutate_id == id && f.u.mutate.flags == flags, "seed %u", seed);
    ck_assert_msg(f.u.mutate.has_epoch && f.u.mutate.epoch == epoch, "seed %u", seed);
    rb_frame_iter it;
    rb_mutate_add add;
    rb_frame_iter_init(&it, f.u.mutate.adds, f.u.mutate.add_count);
    for (uint32_t i = 0; i < adds; i++) {
        ck_assert_msg(rb_frame_next_add(&it, &add), "seed %u", seed);
        ck_assert_msg(bytes_eq(add.topic, rand_adds[i].topic) &&
                          add.cursor == rand_adds[i].cursor &&
                          add.cursor_kind == rand_adds[i].cursor_kind,
                      "seed %u add %u", seed, i);
    }
    ck_assert_msg(!rb_frame_next_add(&it, &add), "seed %u", seed);
    rb_bytes t;
    rb_frame_iter_init(&it, f.u.mutate.removes, f.u.mutate.remove_count);
    for (uint32_t i = 0; i < removes; i++) {
        ck_assert_msg(rb_frame_next_topic(&it, &t) && bytes_eq(t, rand_topics[i]), "seed %u", seed);
    }
    ck_assert_msg(!rb_frame_next_topic(&it, &t), "seed %u", seed);
}

static void check_random_messages(uint32_t *s, uint32_t seed)
{
    uint32_t count = rng_below(s, LIST_MAX);
    size_t items = 0;
    for (uint32_t i = 0; i < count; i++) {
        rand_topics[i] = rand_text(s, text_pool[i], 255, 1);
        rand_payloads[i] = rand_blob(s, text_pool[LIST_MAX + i], 299);
        rand_seqs[i] = rand_u64(s);
        items += rb_frame_messages_item_size(rand_topics[i].len, rand_payloads[i].len);
    }
    uint64_t id = rand_u64(s);
    size_t n = rb_frame_encode_messages_head(buf, sizeof buf, 0, id, count, items);
    for (uint32_t i = 0; i < count; i++) {
        n += rb_frame_encode_messages_item(buf + n, sizeof buf - n, rand_topics[i], rand_seqs[i],
                                           rand_payloads[i]);
    }
    rb_frame f;
    rb_err err;
    ck_assert_msg(dec(buf, n, &f, &err) == 0, "seed %u: %s", seed, err.msg);
    ck_assert_msg(f.u.messages.mutate_id == id && f.u.messages.count == count, "seed %u", seed);
    rb_frame_iter it;
    rb_message_item item;
    rb_frame_iter_init(&it, f.u.messages.items, count);
    for (uint32_t i = 0; i < count; i++) {
        ck_assert_msg(rb_frame_next_item(&it, &item), "seed %u", seed);
        ck_assert_msg(bytes_eq(item.topic, rand_topics[i]) && item.seq == rand_seqs[i] &&
                          bytes_eq(item.payload, rand_payloads[i]),
                      "seed %u item %u", seed, i);
    }
    ck_assert_msg(!rb_frame_next_item(&it, &item), "seed %u", seed);
}

static void check_random_publish(uint32_t *s, uint32_t seed)
{
    rb_bytes t = rand_text(s, text_pool[0], 255, 1);
    rb_bytes key = rand_blob(s, text_pool[1], 255);
    rb_bytes payload = rand_blob(s, text_pool[2], 299);
    uint64_t corr = rand_u64(s);
    size_t n = rb_frame_encode_publish(buf, sizeof buf, corr, t, key, payload);
    rb_frame f;
    rb_err err;
    ck_assert_msg(dec(buf, n, &f, &err) == 0, "seed %u: %s", seed, err.msg);
    ck_assert_msg(f.hdr.corr_id == corr && bytes_eq(f.u.publish.topic, t) &&
                      bytes_eq(f.u.publish.idempotency_key, key) &&
                      bytes_eq(f.u.publish.payload, payload),
                  "seed %u", seed);
}

static void check_random_hello_started(uint32_t *s, uint32_t seed)
{
    rb_bytes name = rand_text(s, text_pool[0], 280, 0);
    rb_bytes cred = rand_blob(s, text_pool[1], 299);
    uint16_t version = (uint16_t)rng_next(s);
    size_t n = rb_frame_encode_hello(buf, sizeof buf, 1, version, name, cred);
    rb_frame f;
    rb_err err;
    ck_assert_msg(dec(buf, n, &f, &err) == 0, "seed %u: %s", seed, err.msg);
    ck_assert_msg(f.u.hello.protocol_version == version && bytes_eq(f.u.hello.client_name, name) &&
                      bytes_eq(f.u.hello.credentials, cred),
                  "seed %u", seed);
    uint32_t ka = rng_next(s), mfb = rng_next(s);
    uint64_t caps = rand_u64(s);
    uint64_t epoch = rand_u64(s);
    n = rb_frame_encode_started(buf, sizeof buf, 1, ka, caps, mfb, name, epoch);
    ck_assert_msg(dec(buf, n, &f, &err) == 0, "seed %u: %s", seed, err.msg);
    ck_assert_msg(f.u.started.keepalive_ms == ka && f.u.started.capabilities == caps &&
                      f.u.started.max_frame_bytes == mfb && bytes_eq(f.u.started.server_id, name) &&
                      f.u.started.epoch == epoch,
                  "seed %u", seed);
}

START_TEST(test_frame_random_frames_round_trip)
{
    uint32_t seed = test_seed();
    uint32_t s = seed;
    for (int i = 0; i < RANDOM_ROUND_TRIPS; i++) {
        switch (rng_below(&s, 4)) {
        case 0:
            check_random_mutate(&s, seed);
            break;
        case 1:
            check_random_messages(&s, seed);
            break;
        case 2:
            check_random_publish(&s, seed);
            break;
        default:
            check_random_hello_started(&s, seed);
            break;
        }
    }
}
END_TEST

/* Walks every list of a decoded frame; the iterators assert their bounds. */
static void walk_lists(const rb_frame *f)
{
    rb_frame_iter it;
    rb_mutate_add add;
    rb_bytes t;
    rb_message_item item;
    if (f->hdr.kind == RB_FRAME_MUTATE) {
        rb_frame_iter_init(&it, f->u.mutate.adds, f->u.mutate.add_count);
        while (rb_frame_next_add(&it, &add)) {
        }
        rb_frame_iter_init(&it, f->u.mutate.removes, f->u.mutate.remove_count);
        while (rb_frame_next_topic(&it, &t)) {
        }
    } else if (f->hdr.kind == RB_FRAME_MESSAGES) {
        rb_frame_iter_init(&it, f->u.messages.items, f->u.messages.count);
        while (rb_frame_next_item(&it, &item)) {
        }
    } else if (f->hdr.kind == RB_FRAME_TOPICS_LIVE) {
        rb_frame_iter_init(&it, f->u.topics_live.topics, f->u.topics_live.count);
        while (rb_frame_next_topic(&it, &t)) {
        }
    }
}

START_TEST(test_frame_random_bytes_never_crash_the_decoder)
{
    uint32_t seed = test_seed() ^ 0xA5A5A5A5u;
    uint32_t s = seed;
    int decoded = 0;
    for (int i = 0; i < RANDOM_GARBAGE; i++) {
        size_t len = rng_below(&s, 64);
        for (size_t j = 0; j < len; j++) {
            /* Small bytes make plausible lengths and counts. */
            buf[j] = (uint8_t)(rng_below(&s, 2) ? rng_below(&s, 4) : rng_next(&s));
        }
        if (len >= 16 && rng_below(&s, 4) != 0) {
            header(buf, (uint32_t)len, 1, (uint8_t)(1 + rng_below(&s, RB_FRAME_KIND_LAST)), 0);
        }
        rb_frame f;
        rb_err err;
        int rc = dec(buf, len, &f, &err);
        ck_assert_msg(rc == 0 || rc == RB_EAGAIN || rc == RB_EPROTO, "seed %u: rc %d", seed, rc);
        if (rc == 0) {
            decoded++;
            walk_lists(&f);
        } else {
            ck_assert_msg(err.msg[0] != '\0', "seed %u: empty message", seed);
        }
        (void)rb_utf8_valid(buf, len);
        (void)rb_topic_validate(raw(buf, len), rng_below(&s, 2), &err);
    }
    ck_assert_msg(decoded > 0, "seed %u: garbage never reached a whole frame", seed);
}
END_TEST

/* ---- suite ---- */

static void add_loop(Suite *s, const char *name, const TTest *fn)
{
    TCase *tc = tcase_create(name);
    tcase_add_loop_test(tc, fn, 1, RB_FRAME_KIND_LAST + 1);
    suite_add_tcase(s, tc);
}

static TCase *tcase(Suite *s, const char *name)
{
    TCase *tc = tcase_create(name);
    suite_add_tcase(s, tc);
    return tc;
}

static void add_round_trips(Suite *s)
{
    TCase *tc = tcase(s, "round_trip");
    tcase_add_test(tc, test_frame_hello_round_trips);
    tcase_add_test(tc, test_frame_hello_with_empty_strings_round_trips);
    tcase_add_test(tc, test_frame_started_round_trips);
    tcase_add_test(tc, test_frame_started_client_id_round_trips_and_is_optional);
    tcase_add_test(tc, test_frame_rpc_frames_round_trip);
    tcase_add_test(tc, test_frame_request_bytes_match_the_protocol_document);
    tcase_add_test(tc, test_frame_rpc_empty_method_and_unknown_ack_flags_are_bad_frame);
    tcase_add_test(tc, test_frame_started_without_epoch_decodes_as_no_epoch);
    tcase_add_test(tc, test_frame_mutate_without_epoch_decodes_as_epoch_zero);
    tcase_add_test(tc, test_frame_topic_error_round_trips);
    tcase_add_test(tc, test_frame_topic_error_with_empty_topic_is_bad_frame);
    tcase_add_test(tc, test_frame_going_away_round_trips);
    tcase_add_test(tc, test_frame_lagged_round_trips_and_refuses_zero);
    tcase_add_test(tc, test_frame_error_and_close_round_trip);
    tcase_add_test(tc, test_frame_ping_pong_and_catchup_complete_round_trip);
    tcase_add_test(tc, test_frame_publish_round_trips_with_and_without_key);
    tcase_add_test(tc, test_frame_publish_with_255_byte_key_round_trips);
    tcase_add_test(tc, test_frame_publish_ack_round_trips);
    tcase_add_test(tc, test_frame_publish_ack_without_flags_decodes);
    tcase_add_test(tc, test_frame_mutate_round_trips_adds_and_removes);
    tcase_add_test(tc, test_frame_mutate_with_empty_lists_round_trips);
    tcase_add_test(tc, test_frame_messages_round_trip_from_shared_items);
    tcase_add_test(tc, test_frame_empty_messages_and_topics_live_round_trip);
    tcase_add_test(tc, test_frame_topics_live_round_trips);
    tcase_add_test(tc, test_frame_max_length_topics_round_trip_in_every_kind);
    tc = tcase(s, "golden_bytes");
    tcase_add_test(tc, test_frame_hello_encodes_to_documented_bytes);
    tcase_add_test(tc, test_frame_publish_encodes_to_documented_bytes);
}

static void add_header_and_body(Suite *s)
{
    TCase *tc = tcase(s, "header");
    tcase_add_test(tc, test_frame_header_needs_sixteen_bytes);
    tcase_add_test(tc, test_frame_size_below_header_is_bad_frame);
    tcase_add_test(tc, test_frame_size_of_exactly_header_is_accepted_by_header);
    tcase_add_test(tc, test_frame_size_above_max_is_too_large);
    tcase_add_test(tc, test_frame_size_of_four_gib_is_too_large);
    tcase_add_test(tc, test_frame_size_is_checked_before_version);
    tcase_add_test(tc, test_frame_unknown_version_is_unsupported);
    tcase_add_test(tc, test_frame_kind_zero_and_past_last_are_bad_frame);
    tcase_add_test(tc, test_frame_nonzero_flags_are_bad_frame);
    tcase_add_test(tc, test_frame_refused_header_still_reports_corr_id);
    tc = tcase(s, "body");
    tcase_add_test(tc, test_frame_mutate_topic_length_zero_names_the_add);
    tcase_add_test(tc, test_frame_mutate_unknown_cursor_kind_is_bad_frame);
    tcase_add_test(tc, test_frame_mutate_now_with_nonzero_cursor_is_bad_frame);
    tcase_add_test(tc, test_frame_mutate_unknown_flag_bits_are_bad_frame);
    tcase_add_test(tc, test_frame_mutate_remove_with_empty_topic_is_bad_frame);
    tcase_add_test(tc, test_frame_payload_length_past_the_frame_is_bad_frame);
    tcase_add_test(tc, test_frame_publish_topic_length_zero_is_bad_frame);
    tcase_add_test(tc, test_frame_invalid_utf8_in_strings_and_topics_is_bad_frame);
    tcase_add_test(tc, test_frame_opaque_fields_accept_any_bytes);
    tcase_add_test(tc, test_frame_decode_of_topic_allows_what_validate_refuses);
    tc = tcase(s, "huge_counts");
    tcase_add_test(tc, test_frame_huge_add_count_with_small_body_is_refused);
    tcase_add_test(tc, test_frame_huge_remove_item_and_topic_counts_are_refused);
}

static void add_text(Suite *s)
{
    TCase *tc = tcase(s, "utf8");
    tcase_add_test(tc, test_utf8_accepts_well_formed_text);
    tcase_add_test(tc, test_utf8_refuses_overlongs);
    tcase_add_test(tc, test_utf8_refuses_surrogates);
    tcase_add_test(tc, test_utf8_refuses_code_points_above_10ffff);
    tcase_add_test(tc, test_utf8_refuses_truncated_and_stray_sequences);
    tc = tcase(s, "topic");
    tcase_add_test(tc, test_topic_accepts_ordinary_names);
    tcase_add_test(tc, test_topic_empty_is_refused);
    tcase_add_test(tc, test_topic_of_255_bytes_is_accepted_and_256_refused);
    tcase_add_test(tc, test_topic_with_a_space_is_refused);
    tcase_add_test(tc, test_topic_with_unicode_white_space_is_refused);
    tcase_add_test(tc, test_topic_with_a_control_character_is_refused);
    tcase_add_test(tc, test_topic_with_invalid_utf8_is_refused);
    tcase_add_test(tc, test_topic_dollar_prefix_is_reserved_unless_allowed);
}

Suite *rb_frame_suite(void)
{
    Suite *s = suite_create("frame");
    add_round_trips(s);
    add_loop(s, "short_prefix", test_frame_every_short_prefix_needs_more_bytes);
    add_loop(s, "short_size", test_frame_size_shorter_than_body_is_bad_frame_at_every_offset);
    add_loop(s, "trailing_bytes", test_frame_trailing_bytes_are_bad_frame_for_every_kind);
    add_loop(s, "encoder_capacity", test_frame_encoder_returns_zero_when_capacity_is_one_short);
    add_loop(s, "bytes_past_frame", test_frame_bytes_past_the_frame_are_ignored);
    add_header_and_body(s);
    add_text(s);
    TCase *tc = tcase(s, "encoder_limits");
    tcase_add_test(tc, test_frame_messages_head_and_item_refuse_small_capacity);
    tcase_add_test(tc, test_frame_largest_deliverable_payload_fills_one_messages_frame);
    tcase_add_test_raise_signal(tc, test_frame_encoding_an_empty_topic_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, test_frame_encoding_now_add_with_cursor_aborts, SIGABRT);
    tc = tcase(s, "names");
    tcase_add_test(tc, test_frame_kind_and_code_names_are_stable);
    tc = tcase(s, "random");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_frame_random_frames_round_trip);
    tcase_add_test(tc, test_frame_random_bytes_never_crash_the_decoder);
    return s;
}
