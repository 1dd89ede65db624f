/* Tests of the log's escaping (rb_log_escape, and rb_log through it): text
 * passes unchanged, control bytes, backslashes, invalid UTF-8, C1 controls,
 * line separators and bidi overrides are escaped, output is bounded, and a
 * logged line with a forged newline stays one line. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "common/log.h"
#include "tests/unit/death.h"

static const char *esc(const char *in, size_t len)
{
    static char out[256];
    size_t n = rb_log_escape(out, sizeof out, in, len);
    ck_assert_uint_eq(n, strlen(out));
    return out;
}

#define ESC(lit) esc((lit), sizeof(lit) - 1)

START_TEST(test_log_escape_plain_text_and_utf8_pass_unchanged)
{
    ck_assert_str_eq(ESC(""), "");
    ck_assert_str_eq(ESC("a"), "a");
    ck_assert_str_eq(ESC("client \"bench-7\" on topic a.b/c"), "client \"bench-7\" on topic a.b/c");
    ck_assert_str_eq(ESC("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x9a\x8c"),
                     "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x9a\x8c");
}
END_TEST

START_TEST(test_log_escape_control_bytes_and_backslash)
{
    ck_assert_str_eq(ESC("a\nringbusd error: forged"), "a\\nringbusd error: forged");
    ck_assert_str_eq(ESC("\r\t\\"), "\\r\\t\\\\");
    ck_assert_str_eq(ESC("\x1b[31mred"), "\\x1B[31mred");
    ck_assert_str_eq(ESC("nul\0byte"), "nul\\x00byte");
    ck_assert_str_eq(ESC("del\x7f"), "del\\x7F");
}
END_TEST

START_TEST(test_log_escape_invalid_utf8_byte_by_byte)
{
    ck_assert_str_eq(ESC("\xff"), "\\xFF");
    ck_assert_str_eq(ESC("\xc3"), "\\xC3");                            /* truncated sequence */
    ck_assert_str_eq(ESC("\xc0\xaf"), "\\xC0\\xAF");                   /* overlong '/' */
    ck_assert_str_eq(ESC("\xed\xa0\x80"), "\\xED\\xA0\\x80");          /* a surrogate */
    ck_assert_str_eq(ESC("\xf4\x90\x80\x80"), "\\xF4\\x90\\x80\\x80"); /* past U+10FFFF */
    ck_assert_str_eq(ESC("\xe2\x82"), "\\xE2\\x82");
}
END_TEST

START_TEST(test_log_escape_hidden_code_points)
{
    ck_assert_str_eq(ESC("\xc2\x85"), "\\u{0085}");         /* NEL */
    ck_assert_str_eq(ESC("a\xe2\x80\xa8z"), "a\\u{2028}z"); /* line separator */
    ck_assert_str_eq(ESC("\xe2\x80\xae"), "\\u{202E}");     /* right-to-left override */
    ck_assert_str_eq(ESC("\xe2\x81\xa6"), "\\u{2066}");     /* left-to-right isolate */
}
END_TEST

START_TEST(test_log_escape_output_is_bounded_at_a_character)
{
    char out[16];
    char in[64];
    memset(in, '\n', sizeof in);
    size_t n = rb_log_escape(out, sizeof out, in, sizeof in);
    ck_assert_uint_lt(n, sizeof out);
    ck_assert_str_eq(out, "\\n\\n\\n\\n\\n\\n...");
    memset(in, 'x', sizeof in);
    n = rb_log_escape(out, 8, in, 4);
    ck_assert_str_eq(out, "xxxx");
    n = rb_log_escape(out, 8, in, 5);
    ck_assert_str_eq(out, "xxxx...");
}
END_TEST

START_TEST(test_log_escape_tiny_buffer_aborts)
{
    RB_DEATH_TEST();
    char out[4];
    rb_log_escape(out, sizeof out, "x", 1);
}
END_TEST

/* rb_log writes to stderr: a pipe stands in for it. */
START_TEST(test_log_line_with_a_forged_newline_stays_one_line)
{
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    int saved = dup(STDERR_FILENO);
    dup2(fds[1], STDERR_FILENO);
    rb_log(RB_LOG_WARN, 7, "HELLO from %s", "x\nringbusd error: main: forged\x1b[0m");
    dup2(saved, STDERR_FILENO);
    close(fds[1]);
    char buf[512];
    ssize_t n = read(fds[0], buf, sizeof buf - 1);
    ck_assert_int_gt(n, 0);
    buf[n] = '\0';
    ck_assert_str_eq(buf, "ringbusd warn: main: conn 7: HELLO from "
                          "x\\nringbusd error: main: forged\\x1B[0m\n");
}
END_TEST

Suite *rb_log_suite(void);

Suite *rb_log_suite(void)
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("escape");
    tcase_add_test(tc, test_log_escape_plain_text_and_utf8_pass_unchanged);
    tcase_add_test(tc, test_log_escape_control_bytes_and_backslash);
    tcase_add_test(tc, test_log_escape_invalid_utf8_byte_by_byte);
    tcase_add_test(tc, test_log_escape_hidden_code_points);
    tcase_add_test(tc, test_log_escape_output_is_bounded_at_a_character);
    tcase_add_test_raise_signal(tc, test_log_escape_tiny_buffer_aborts, SIGABRT);
    suite_add_tcase(s, tc);
    tc = tcase_create("rb_log");
    tcase_add_test(tc, test_log_line_with_a_forged_newline_stays_one_line);
    suite_add_tcase(s, tc);
    return s;
}
