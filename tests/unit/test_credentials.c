/* Tests of the credentials format of HELLO and AUTH (common/frame.c,
 * docs/PROTOCOL.md section 6.5) and of the AUTH frame: round trips, golden
 * bytes, every refusal with its message, and that refusals never echo the
 * secret bytes. */
#include <signal.h>
#include <stdint.h>
#include <string.h>

#include <check.h>

#include "common/frame.h"
#include "tests/unit/death.h"

Suite *rb_credentials_suite(void);

static uint8_t buf[RB_AUTH_CREDENTIALS_BYTES_MAX + 64];
static uint8_t fbuf[RB_AUTH_CREDENTIALS_BYTES_MAX + 64];

static rb_bytes str(const char *s)
{
    return (rb_bytes){(const uint8_t *)s, strlen(s)};
}

static rb_bytes raw(const void *p, size_t len)
{
    return (rb_bytes){(const uint8_t *)p, len};
}

static int bytes_is(rb_bytes a, const char *s)
{
    return a.len == strlen(s) && (a.len == 0 || memcmp(a.ptr, s, a.len) == 0);
}

static int refuse(rb_bytes in, rb_err *err)
{
    rb_credentials c;
    rb_err_clear(err);
    int rc = rb_credentials_decode(in, &c, err);
    if (rc == RB_EINVAL) {
        ck_assert_int_eq(err->cause, RB_WIRE_UNAUTHORIZED);
        ck_assert_uint_eq(c.kind, RB_CRED_NONE);
    }
    return rc;
}

START_TEST(test_credentials_empty_means_none)
{
    rb_credentials c;
    rb_err err;
    ck_assert_int_eq(rb_credentials_decode(raw(NULL, 0), &c, &err), 0);
    ck_assert_uint_eq(c.kind, RB_CRED_NONE);
}
END_TEST

START_TEST(test_credentials_token_round_trips)
{
    const char *jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln-_";
    size_t n = rb_credentials_encode_token(buf, sizeof buf, str(jwt));
    ck_assert_uint_eq(n, 3 + strlen(jwt));
    rb_credentials c;
    rb_err err;
    ck_assert_int_eq(rb_credentials_decode(raw(buf, n), &c, &err), 0);
    ck_assert_uint_eq(c.kind, RB_CRED_TOKEN);
    ck_assert(bytes_is(c.token, jwt));
}
END_TEST

START_TEST(test_credentials_password_round_trips)
{
    size_t n = rb_credentials_encode_password(buf, sizeof buf, str("alice-é"), raw("p\0w", 3));
    ck_assert_uint_eq(n, 1 + 1 + 8 + 2 + 3);
    rb_credentials c;
    rb_err err;
    ck_assert_int_eq(rb_credentials_decode(raw(buf, n), &c, &err), 0);
    ck_assert_uint_eq(c.kind, RB_CRED_PASSWORD);
    ck_assert(bytes_is(c.user, "alice-é"));
    ck_assert_uint_eq(c.password.len, 3);
    ck_assert_mem_eq(c.password.ptr, "p\0w", 3);
}
END_TEST

START_TEST(test_credentials_encode_to_documented_bytes)
{
    static const uint8_t tok[] = {0x01, 0x03, 0x00, 'a', '.', 'b'};
    static const uint8_t pw[] = {0x02, 0x02, 'b', 'o', 0x02, 0x00, 'p', 'w'};
    ck_assert_uint_eq(rb_credentials_encode_token(buf, sizeof buf, str("a.b")), sizeof tok);
    ck_assert_mem_eq(buf, tok, sizeof tok);
    ck_assert_uint_eq(rb_credentials_encode_password(buf, sizeof buf, str("bo"), str("pw")),
                      sizeof pw);
    ck_assert_mem_eq(buf, pw, sizeof pw);
}
END_TEST

START_TEST(test_credentials_largest_token_is_accepted_and_one_more_refused)
{
    static char tok[RB_AUTH_TOKEN_BYTES_MAX + 2];
    memset(tok, 'A', sizeof tok - 1);
    tok[RB_AUTH_TOKEN_BYTES_MAX] = '\0';
    size_t n = rb_credentials_encode_token(buf, sizeof buf, str(tok));
    ck_assert_uint_eq(n, RB_AUTH_CREDENTIALS_BYTES_MAX);
    rb_err err;
    ck_assert_int_eq(refuse(raw(buf, n), &err), 0);
    /* One byte more, built by hand since the encoder asserts the bound. */
    buf[0] = RB_CRED_TOKEN;
    buf[1] = (uint8_t)((RB_AUTH_TOKEN_BYTES_MAX + 1) & 0xff);
    buf[2] = (uint8_t)((RB_AUTH_TOKEN_BYTES_MAX + 1) >> 8);
    memset(buf + 3, 'A', RB_AUTH_TOKEN_BYTES_MAX + 1);
    ck_assert_int_eq(refuse(raw(buf, RB_AUTH_TOKEN_BYTES_MAX + 4), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "credentials: token: 8193 bytes, not in [1, 8192]");
}
END_TEST

START_TEST(test_credentials_token_with_a_foreign_byte_is_refused_without_echo)
{
    static const uint8_t in[] = {0x01, 0x04, 0x00, 'a', 'b', '%', 'c'};
    rb_err err;
    ck_assert_int_eq(refuse(raw(in, sizeof in), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "credentials: token: byte 2 is not base64url or '.'");
    ck_assert_ptr_null(strchr(err.msg, '%'));
}
END_TEST

START_TEST(test_credentials_empty_token_is_refused)
{
    static const uint8_t in[] = {0x01, 0x00, 0x00};
    rb_err err;
    ck_assert_int_eq(refuse(raw(in, sizeof in), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "credentials: token: 0 bytes, not in [1, 8192]");
}
END_TEST

START_TEST(test_credentials_unknown_kind_is_refused)
{
    static const uint8_t in[] = {0x07, 0x00};
    rb_err err;
    ck_assert_int_eq(refuse(raw(in, sizeof in), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "credentials: kind 7 unknown (1 token, 2 user and password)");
}
END_TEST

START_TEST(test_credentials_trailing_bytes_are_refused)
{
    size_t n = rb_credentials_encode_password(buf, sizeof buf, str("bo"), str("pw"));
    buf[n] = 0;
    rb_err err;
    ck_assert_int_eq(refuse(raw(buf, n + 1), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "credentials: 1 trailing bytes");
}
END_TEST

START_TEST(test_credentials_every_truncation_is_refused)
{
    size_t n = rb_credentials_encode_password(buf, sizeof buf, str("bob"), str("secret"));
    rb_err err;
    for (size_t cut = 1; cut < n; cut++) {
        ck_assert_msg(refuse(raw(buf, cut), &err) == RB_EINVAL, "cut %zu accepted", cut);
        ck_assert_ptr_null(strstr(err.msg, "secret"));
    }
    n = rb_credentials_encode_token(buf, sizeof buf, str("a.b.c"));
    for (size_t cut = 1; cut < n; cut++) {
        ck_assert_msg(refuse(raw(buf, cut), &err) == RB_EINVAL, "token cut %zu accepted", cut);
    }
}
END_TEST

START_TEST(test_credentials_user_rules_are_enforced)
{
    static const uint8_t empty[] = {0x02, 0x00, 0x01, 0x00, 'p'};
    static const uint8_t space[] = {0x02, 0x03, 'a', ' ', 'b', 0x01, 0x00, 'p'};
    static const uint8_t ctrl[] = {0x02, 0x02, 'a', 0x01, 0x01, 0x00, 'p'};
    static const uint8_t utf8[] = {0x02, 0x02, 'a', 0xff, 0x01, 0x00, 'p'};
    rb_err err;
    ck_assert_int_eq(refuse(raw(empty, sizeof empty), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "credentials: user: empty");
    ck_assert_int_eq(refuse(raw(space, sizeof space), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "credentials: user: control character or space at byte 1");
    ck_assert_int_eq(refuse(raw(ctrl, sizeof ctrl), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "credentials: user: control character or space at byte 1");
    ck_assert_int_eq(refuse(raw(utf8, sizeof utf8), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "credentials: user: invalid UTF-8 at byte 1");
}
END_TEST

START_TEST(test_credentials_password_length_bounds_are_enforced)
{
    static const uint8_t empty[] = {0x02, 0x01, 'a', 0x00, 0x00};
    rb_err err;
    ck_assert_int_eq(refuse(raw(empty, sizeof empty), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "credentials: password: 0 bytes, not in [1, 1024]");
    static uint8_t pw[RB_AUTH_PASSWORD_BYTES_MAX + 1];
    memset(pw, 'x', sizeof pw);
    size_t n = rb_credentials_encode_password(buf, sizeof buf, str("a"),
                                              raw(pw, RB_AUTH_PASSWORD_BYTES_MAX));
    ck_assert_int_eq(refuse(raw(buf, n), &err), 0);
    buf[3] = (uint8_t)((RB_AUTH_PASSWORD_BYTES_MAX + 1) & 0xff);
    buf[4] = (uint8_t)((RB_AUTH_PASSWORD_BYTES_MAX + 1) >> 8);
    buf[n] = 'x';
    ck_assert_int_eq(refuse(raw(buf, n + 1), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "credentials: password: 1025 bytes, not in [1, 1024]");
}
END_TEST

START_TEST(test_credentials_encoders_refuse_small_capacity)
{
    ck_assert_uint_eq(rb_credentials_encode_token(buf, 5, str("a.b")), 0);
    ck_assert_uint_eq(rb_credentials_encode_token(buf, 6, str("a.b")), 6);
    ck_assert_uint_eq(rb_credentials_encode_password(buf, 7, str("bo"), str("pw")), 0);
    ck_assert_uint_eq(rb_credentials_encode_password(buf, 8, str("bo"), str("pw")), 8);
}
END_TEST

START_TEST(test_credentials_encoding_an_empty_user_aborts)
{
    RB_DEATH_TEST();
    (void)rb_credentials_encode_password(buf, sizeof buf, str(""), str("pw"));
}
END_TEST

START_TEST(test_frame_auth_round_trips_credentials)
{
    size_t c = rb_credentials_encode_token(buf, sizeof buf, str("h.p.s"));
    size_t n = rb_frame_encode_auth(fbuf, sizeof fbuf, 9, raw(buf, c));
    ck_assert_uint_eq(n, 16 + 2 + c);
    rb_frame f;
    rb_err err;
    ck_assert_int_eq(rb_frame_decode(fbuf, n, RB_FRAME_BYTES_DEFAULT, &f, &err), 0);
    ck_assert_uint_eq(f.hdr.kind, RB_FRAME_AUTH);
    ck_assert_uint_eq(f.hdr.corr_id, 9);
    ck_assert_uint_eq(f.u.auth.credentials.len, c);
    rb_credentials cr;
    ck_assert_int_eq(rb_credentials_decode(f.u.auth.credentials, &cr, &err), 0);
    ck_assert(bytes_is(cr.token, "h.p.s"));
    ck_assert_str_eq(rb_frame_kind_name(RB_FRAME_AUTH), "AUTH");
}
END_TEST

START_TEST(test_frame_auth_encodes_to_documented_bytes)
{
    /* The server's answer to an accepted AUTH: empty credentials. */
    static const uint8_t want[] = {0x12, 0x00, 0x00, 0x00, 0x01, 0x0d, 0x00, 0x00, 0x05,
                                   0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    size_t n = rb_frame_encode_auth(fbuf, sizeof fbuf, 5, raw(NULL, 0));
    ck_assert_uint_eq(n, sizeof want);
    ck_assert_mem_eq(fbuf, want, sizeof want);
}
END_TEST

START_TEST(test_frame_auth_with_credentials_past_the_body_is_bad_frame)
{
    size_t n = rb_frame_encode_auth(fbuf, sizeof fbuf, 5, str("abc"));
    fbuf[16] = 4; /* claims 4 bytes, 3 follow */
    rb_frame f;
    rb_err err;
    ck_assert_int_eq(rb_frame_decode(fbuf, n, RB_FRAME_BYTES_DEFAULT, &f, &err), RB_EPROTO);
    ck_assert_int_eq(err.cause, RB_WIRE_BAD_FRAME);
    ck_assert_str_eq(err.msg, "AUTH: credentials: truncated (needs 4 bytes, 3 left)");
}
END_TEST

Suite *rb_credentials_suite(void)
{
    Suite *s = suite_create("credentials");
    TCase *tc = tcase_create("decode");
    tcase_add_test(tc, test_credentials_empty_means_none);
    tcase_add_test(tc, test_credentials_token_round_trips);
    tcase_add_test(tc, test_credentials_password_round_trips);
    tcase_add_test(tc, test_credentials_encode_to_documented_bytes);
    tcase_add_test(tc, test_credentials_largest_token_is_accepted_and_one_more_refused);
    tcase_add_test(tc, test_credentials_token_with_a_foreign_byte_is_refused_without_echo);
    tcase_add_test(tc, test_credentials_empty_token_is_refused);
    tcase_add_test(tc, test_credentials_unknown_kind_is_refused);
    tcase_add_test(tc, test_credentials_trailing_bytes_are_refused);
    tcase_add_test(tc, test_credentials_every_truncation_is_refused);
    tcase_add_test(tc, test_credentials_user_rules_are_enforced);
    tcase_add_test(tc, test_credentials_password_length_bounds_are_enforced);
    tcase_add_test(tc, test_credentials_encoders_refuse_small_capacity);
    tcase_add_test_raise_signal(tc, test_credentials_encoding_an_empty_user_aborts, SIGABRT);
    suite_add_tcase(s, tc);
    tc = tcase_create("auth_frame");
    tcase_add_test(tc, test_frame_auth_round_trips_credentials);
    tcase_add_test(tc, test_frame_auth_encodes_to_documented_bytes);
    tcase_add_test(tc, test_frame_auth_with_credentials_past_the_body_is_bad_frame);
    suite_add_tcase(s, tc);
    return s;
}
