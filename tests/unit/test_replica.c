/* Unit tests of transports/replica.c: every frame encodes and decodes back,
 * headers and bodies outside the rules are refused with RB_EPROTO, batch
 * items are checked against their topic and seqs, and the handshake MACs
 * depend on every input. */
#include <string.h>

#include <check.h>

#include "common/frame.h"
#include "transports/replica.h"

static const uint8_t NONCE_D[RB_REPLICA_NONCE_BYTES] = {1, 2, 3};
static const uint8_t NONCE_A[RB_REPLICA_NONCE_BYTES] = {4, 5, 6};
static const uint8_t SECRET[] = "0123456789abcdef0123456789abcdef";
#define CID   ((rb_bytes){(const uint8_t *)"prod", 4})
#define TOPIC ((rb_bytes){(const uint8_t *)"orders", 6})

static uint8_t buf[4096];

static void decode_ok(size_t n, rb_replica_frame *f)
{
    rb_err err = {0};
    uint32_t size = 0;
    ck_assert_uint_gt(n, 0);
    ck_assert_int_eq(rb_replica_header(buf, n, RB_REPLICA_FRAME_BYTES_MAX, &size, &err), 0);
    ck_assert_uint_eq(size, n);
    ck_assert_msg(rb_replica_decode(buf, n, f, &err) == 0, "%s", err.msg);
}

static void decode_bad(size_t n, const char *msg)
{
    rb_err err = {0};
    rb_replica_frame f;
    ck_assert_int_eq(rb_replica_decode(buf, n, &f, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, msg);
}

/* A batch of three messages of TOPIC from seq 5; returns the frame size. */
static size_t batch_frame(uint64_t first, uint32_t count, rb_bytes item_topic)
{
    uint8_t items[1024];
    size_t n = 0;
    for (uint32_t i = 0; i < count; i++) {
        n += rb_frame_encode_messages_item(items + n, sizeof items - n, item_topic, first + i,
                                           (rb_bytes){(const uint8_t *)"pay", 3});
    }
    size_t h = rb_replica_encode_batch_head(buf, sizeof buf, TOPIC, first, first + count - 1, count,
                                            (uint32_t)n);
    ck_assert_uint_gt(h, 0);
    memcpy(buf + h, items, n);
    return h + n;
}

START_TEST(test_replica_handshake_frames_round_trip)
{
    rb_replica_frame f;
    decode_ok(rb_replica_encode_hello(buf, sizeof buf, 7, CID, NONCE_D), &f);
    ck_assert_int_eq(f.kind, RB_REPLICA_HELLO);
    ck_assert_uint_eq(f.u.hello.node_id, 7);
    ck_assert_uint_eq(f.u.hello.cluster_id.len, 4);
    ck_assert_int_eq(memcmp(f.u.hello.nonce, NONCE_D, sizeof NONCE_D), 0);
    uint8_t mac[RB_REPLICA_MAC_BYTES] = {9};
    decode_ok(rb_replica_encode_challenge(buf, sizeof buf, 1023, NONCE_A, mac), &f);
    ck_assert_uint_eq(f.u.challenge.node_id, 1023);
    ck_assert_int_eq(memcmp(f.u.challenge.mac, mac, sizeof mac), 0);
    decode_ok(rb_replica_encode_auth(buf, sizeof buf, mac), &f);
    ck_assert_int_eq(f.kind, RB_REPLICA_AUTH);
    ck_assert_int_eq(memcmp(f.u.mac, mac, sizeof mac), 0);
    decode_ok(rb_replica_encode_empty(buf, sizeof buf, RB_REPLICA_WELCOME), &f);
    ck_assert_int_eq(f.kind, RB_REPLICA_WELCOME);
    decode_ok(rb_replica_encode_interest(buf, sizeof buf, true, TOPIC), &f);
    ck_assert(f.u.interest.on);
    ck_assert_uint_eq(f.u.interest.topic.len, 6);
}
END_TEST

START_TEST(test_replica_batch_round_trips_and_items_walk)
{
    rb_replica_frame f;
    decode_ok(batch_frame(5, 3, TOPIC), &f);
    ck_assert_uint_eq(f.u.batch.first_seq, 5);
    ck_assert_uint_eq(f.u.batch.last_seq, 7);
    rb_frame_iter it;
    rb_message_item m;
    rb_frame_iter_init(&it, f.u.batch.items, f.u.batch.count);
    uint64_t seq = 5;
    while (rb_frame_next_item(&it, &m)) {
        ck_assert_uint_eq(m.seq, seq++);
    }
    ck_assert_uint_eq(seq, 8);
}
END_TEST

START_TEST(test_replica_batch_with_wrong_items_is_refused)
{
    size_t n = batch_frame(5, 3, (rb_bytes){(const uint8_t *)"other!", 6});
    decode_bad(n, "malformed replica batch frame");
    /* A seq out of order in the items. */
    n = batch_frame(5, 3, TOPIC);
    size_t item = rb_frame_messages_item_size(6, 3);
    buf[n - item + 1 + 6] ^= 1;
    decode_bad(n, "malformed replica batch frame");
    /* A count that disagrees with the range. */
    n = batch_frame(5, 3, TOPIC);
    buf[RB_REPLICA_HEADER_BYTES + 1 + 6 + 16] = 2;
    decode_bad(n, "malformed replica batch frame");
    /* Items cut short: the header's size shrinks with them. */
    n = batch_frame(5, 3, TOPIC);
    buf[0] = (uint8_t)(n - 1);
    decode_bad(n - 1, "malformed replica batch frame");
}
END_TEST

START_TEST(test_replica_bad_headers_are_refused)
{
    rb_err err = {0};
    uint32_t size = 0;
    size_t n = rb_replica_encode_empty(buf, sizeof buf, RB_REPLICA_PING);
    buf[0] = 7;
    ck_assert_int_eq(rb_replica_header(buf, n, 1024, &size, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "replica frame of 7 bytes is outside [8, 1024]");
    buf[0] = 0;
    buf[1] = 8; /* 2048 */
    ck_assert_int_eq(rb_replica_header(buf, n, 1024, &size, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "replica frame of 2048 bytes is outside [8, 1024]");
    rb_replica_encode_empty(buf, sizeof buf, RB_REPLICA_PING);
    buf[4] = 2;
    ck_assert_int_eq(rb_replica_header(buf, n, 1024, &size, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "replica version 2 is not 1");
    buf[4] = 1;
    buf[5] = RB_REPLICA_KIND_LAST + 1;
    ck_assert_int_eq(rb_replica_header(buf, n, 1024, &size, &err), RB_EPROTO);
    buf[5] = 0;
    ck_assert_int_eq(rb_replica_header(buf, n, 1024, &size, &err), RB_EPROTO);
    ck_assert_str_eq(err.msg, "replica frame kind 0 (flags 0) is unknown");
}
END_TEST

START_TEST(test_replica_bad_bodies_are_refused)
{
    /* Trailing bytes after a PING. */
    rb_replica_encode_empty(buf, sizeof buf, RB_REPLICA_PING);
    buf[0] = 9;
    decode_bad(9, "malformed replica ping frame");
    /* A hello from node 0 or 1024. */
    size_t n = rb_replica_encode_hello(buf, sizeof buf, 0, CID, NONCE_D);
    decode_bad(n, "malformed replica hello frame");
    n = rb_replica_encode_hello(buf, sizeof buf, 1024, CID, NONCE_D);
    decode_bad(n, "malformed replica hello frame");
    /* A hello whose cluster id runs past the frame. */
    n = rb_replica_encode_hello(buf, sizeof buf, 3, CID, NONCE_D);
    buf[RB_REPLICA_HEADER_BYTES + 2] = 200;
    decode_bad(n, "malformed replica hello frame");
    /* Interest: op 2, empty topic, invalid UTF-8. */
    n = rb_replica_encode_interest(buf, sizeof buf, true, TOPIC);
    buf[RB_REPLICA_HEADER_BYTES] = 2;
    decode_bad(n, "malformed replica interest frame");
    n = rb_replica_encode_interest(buf, sizeof buf, true, (rb_bytes){(const uint8_t *)"\xff", 1});
    decode_bad(n, "malformed replica interest frame");
    /* An AUTH short of its MAC. */
    uint8_t mac[RB_REPLICA_MAC_BYTES] = {0};
    n = rb_replica_encode_auth(buf, sizeof buf, mac);
    buf[0] = (uint8_t)(n - 1);
    decode_bad(n - 1, "malformed replica auth frame");
}
END_TEST

START_TEST(test_replica_encoders_refuse_what_does_not_fit)
{
    ck_assert_uint_eq(rb_replica_encode_hello(buf, 10, 1, CID, NONCE_D), 0);
    ck_assert_uint_eq(rb_replica_encode_empty(buf, 7, RB_REPLICA_PING), 0);
    ck_assert_uint_eq(rb_replica_encode_interest(buf, sizeof buf, true, (rb_bytes){NULL, 0}), 0);
    ck_assert_uint_eq(rb_replica_encode_batch_head(buf, 20, TOPIC, 1, 1, 1, 10), 0);
}
END_TEST

START_TEST(test_replica_mac_depends_on_every_input)
{
    uint8_t base[RB_REPLICA_MAC_BYTES];
    uint8_t other[RB_REPLICA_MAC_BYTES];
    rb_replica_mac(SECRET, 32, 'D', CID, 1, 2, NONCE_D, NONCE_A, base);
    rb_replica_mac(SECRET, 32, 'D', CID, 1, 2, NONCE_D, NONCE_A, other);
    ck_assert(rb_replica_mac_equal(base, other));
    rb_replica_mac(SECRET, 31, 'D', CID, 1, 2, NONCE_D, NONCE_A, other);
    ck_assert(!rb_replica_mac_equal(base, other));
    rb_replica_mac(SECRET, 32, 'A', CID, 1, 2, NONCE_D, NONCE_A, other);
    ck_assert(!rb_replica_mac_equal(base, other));
    rb_replica_mac(SECRET, 32, 'D', (rb_bytes){(const uint8_t *)"prox", 4}, 1, 2, NONCE_D, NONCE_A,
                   other);
    ck_assert(!rb_replica_mac_equal(base, other));
    rb_replica_mac(SECRET, 32, 'D', CID, 2, 1, NONCE_D, NONCE_A, other);
    ck_assert(!rb_replica_mac_equal(base, other));
    rb_replica_mac(SECRET, 32, 'D', CID, 1, 2, NONCE_A, NONCE_D, other);
    ck_assert(!rb_replica_mac_equal(base, other));
    other[0] = base[0];
    memcpy(other, base, sizeof other);
    other[RB_REPLICA_MAC_BYTES - 1] ^= 1;
    ck_assert(!rb_replica_mac_equal(base, other));
}
END_TEST

/* The MAC is HMAC-SHA256 over exactly the documented bytes (computed here
 * with Python's hmac for these inputs), so another implementation can
 * join: label, role, id length, id, from, to, both nonces. */
START_TEST(test_replica_mac_is_the_documented_hmac)
{
    static const uint8_t want[RB_REPLICA_MAC_BYTES] = {
        0xcf, 0x53, 0x88, 0x40, 0xb5, 0xd3, 0xf9, 0xdf, 0x47, 0x99, 0x52,
        0x9b, 0x9b, 0x00, 0x2c, 0xad, 0x94, 0xef, 0x3e, 0x63, 0xf0, 0x04,
        0xd6, 0xf0, 0x4b, 0x93, 0x61, 0xb5, 0x6c, 0x58, 0x56, 0xd1};
    uint8_t got[RB_REPLICA_MAC_BYTES];
    rb_replica_mac(SECRET, 32, 'A', CID, 3, 1, NONCE_D, NONCE_A, got);
    ck_assert_int_eq(memcmp(got, want, sizeof want), 0);
}
END_TEST

START_TEST(test_replica_nonces_are_fresh)
{
    uint8_t a[RB_REPLICA_NONCE_BYTES];
    uint8_t b[RB_REPLICA_NONCE_BYTES];
    rb_err err = {0};
    ck_assert_int_eq(rb_replica_nonce(a, &err), 0);
    ck_assert_int_eq(rb_replica_nonce(b, &err), 0);
    ck_assert_int_ne(memcmp(a, b, sizeof a), 0);
}
END_TEST

Suite *rb_replica_suite(void);

Suite *rb_replica_suite(void)
{
    Suite *s = suite_create("replica");
    TCase *tc = tcase_create("frames");
    tcase_add_test(tc, test_replica_handshake_frames_round_trip);
    tcase_add_test(tc, test_replica_batch_round_trips_and_items_walk);
    tcase_add_test(tc, test_replica_batch_with_wrong_items_is_refused);
    tcase_add_test(tc, test_replica_bad_headers_are_refused);
    tcase_add_test(tc, test_replica_bad_bodies_are_refused);
    tcase_add_test(tc, test_replica_encoders_refuse_what_does_not_fit);
    suite_add_tcase(s, tc);
    tc = tcase_create("handshake");
    tcase_add_test(tc, test_replica_mac_depends_on_every_input);
    tcase_add_test(tc, test_replica_nonces_are_fresh);
    tcase_add_test(tc, test_replica_mac_is_the_documented_hmac);
    suite_add_tcase(s, tc);
    return s;
}
