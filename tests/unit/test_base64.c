/* common/base64: the one base64 of the tree, in the variants its users
 * need (the CLI: padded standard; WebSocket keys: padded standard; argon2
 * PHC fields: unpadded standard; JWT segments: unpadded url). */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <check.h>

#include "common/base64.h"

Suite *rb_base64_suite(void);

START_TEST(test_base64_matches_rfc4648_vectors)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const enc[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    static const char *const nopad[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        for (unsigned flags = 0; flags <= RB_BASE64_NOPAD; flags += RB_BASE64_NOPAD) {
            const char *want = flags ? nopad[i] : enc[i];
            char out[16] = {0};
            size_t n = strlen(plain[i]);
            ck_assert_uint_eq(rb_base64_encoded_len(n, flags), strlen(want));
            rb_base64_encode(out, plain[i], n, flags);
            ck_assert_str_eq(out, want);
            uint8_t back[16];
            size_t back_len = 99;
            rb_err e = {0};
            ck_assert_int_eq(
                rb_base64_decode(want, strlen(want), back, sizeof back, &back_len, flags, &e), 0);
            ck_assert_uint_eq(back_len, n);
            ck_assert(memcmp(back, plain[i], n) == 0);
        }
    }
}
END_TEST

START_TEST(test_base64_round_trips_every_byte_in_both_alphabets)
{
    uint8_t in[256];
    for (int i = 0; i < 256; i++) {
        in[i] = (uint8_t)i;
    }
    for (unsigned flags = 0; flags < 4; flags++) {
        char enc[400];
        size_t n = rb_base64_encoded_len(256, flags);
        rb_base64_encode(enc, in, sizeof in, flags);
        for (size_t k = 0; k < n; k++) {
            bool url_char = enc[k] == '-' || enc[k] == '_';
            bool std_char = enc[k] == '+' || enc[k] == '/';
            ck_assert(!(flags & RB_BASE64_URL) ? !url_char : !std_char);
        }
        uint8_t out[300];
        size_t out_len = 0;
        rb_err e = {0};
        ck_assert_int_eq(rb_base64_decode(enc, n, out, sizeof out, &out_len, flags, &e), 0);
        ck_assert_uint_eq(out_len, 256);
        ck_assert(memcmp(in, out, 256) == 0);
        /* The other alphabet does not read it. */
        ck_assert_int_eq(
            rb_base64_decode(enc, n, out, sizeof out, &out_len, flags ^ RB_BASE64_URL, &e),
            RB_EINVAL);
    }
}
END_TEST

START_TEST(test_base64_malformed_input_is_rejected)
{
    static const char *const bad[] = {
        "Zg=", "Zg", "Z===", "Zh==", "Zm9=", "Zm9v!A==", "Zg==Zg==", "=Zm9", "Zm 9"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t out[16];
        size_t n;
        rb_err e = {0};
        ck_assert_msg(rb_base64_decode(bad[i], strlen(bad[i]), out, sizeof out, &n, 0, &e) ==
                          RB_EINVAL,
                      "accepted \"%s\"", bad[i]);
    }
    static const char *const bad_nopad[] = {"Z", "Zm9vY", "Zg==", "Zm9v!A", "Zm 9"};
    for (size_t i = 0; i < sizeof bad_nopad / sizeof bad_nopad[0]; i++) {
        size_t n;
        ck_assert_msg(rb_base64_decode(bad_nopad[i], strlen(bad_nopad[i]), NULL, 0, &n,
                                       RB_BASE64_NOPAD, NULL) == RB_EINVAL,
                      "accepted \"%s\"", bad_nopad[i]);
    }
    rb_err e = {0};
    size_t n;
    ck_assert_int_eq(rb_base64_decode("Zm9v!A==", 8, NULL, 0, &n, 0, &e), RB_EINVAL);
    ck_assert_str_eq(e.msg, "base64: bad character at 4");
}
END_TEST

START_TEST(test_base64_checks_without_writing_and_respects_the_cap)
{
    size_t n = 0;
    ck_assert_int_eq(rb_base64_decode("Zm9vYmFy", 8, NULL, 0, &n, 0, NULL), 0);
    ck_assert_uint_eq(n, 6);
    uint8_t out[5];
    rb_err e = {0};
    ck_assert_int_eq(rb_base64_decode("Zm9vYmFy", 8, out, sizeof out, &n, 0, &e), RB_EINVAL);
    ck_assert_str_eq(e.msg, "base64: more than 5 bytes");
}
END_TEST

Suite *rb_base64_suite(void)
{
    Suite *s = suite_create("base64");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_base64_matches_rfc4648_vectors);
    tcase_add_test(tc, test_base64_round_trips_every_byte_in_both_alphabets);
    tcase_add_test(tc, test_base64_malformed_input_is_rejected);
    tcase_add_test(tc, test_base64_checks_without_writing_and_respects_the_cap);
    suite_add_tcase(s, tc);
    return s;
}
