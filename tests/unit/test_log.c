/* Tests of the log's escaping (rb_log_escape, and rb_log through it): text
 * passes unchanged, control bytes, backslashes, invalid UTF-8, C1 controls,
 * line separators and bidi overrides are escaped, output is bounded, and a
 * logged line with a forged newline stays one line. */
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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

/* 2026-01-02T03:04:05.678Z */
#define TS_MS 1767323045678ull

static const char *line(rb_log_format format, bool journal, int shard, uint64_t conn,
                        const char *msg)
{
    static char out[1025];
    rb_log_fields f = {.format = format,
                       .journal = journal,
                       .level = RB_LOG_WARN,
                       .shard = shard,
                       .conn_id = conn,
                       .unix_ms = TS_MS};
    size_t n = rb_log_format_line(out, sizeof out, &f, msg, strlen(msg));
    ck_assert_uint_eq(n, strlen(out));
    return out;
}

START_TEST(test_log_format_text_keeps_its_prefixes)
{
    ck_assert_str_eq(line(RB_LOG_FORMAT_TEXT, false, 1, 7, "a\"b"),
                     "ringbusd warn: shard 1: conn 7: a\"b\n");
    ck_assert_str_eq(line(RB_LOG_FORMAT_TEXT, false, -1, 0, "up"), "ringbusd warn: main: up\n");
    ck_assert_str_eq(line(RB_LOG_FORMAT_TEXT, true, 0, 0, "x\ny"), "<4>shard 0: x\\ny\n");
}
END_TEST

START_TEST(test_log_format_logfmt_quotes_the_message)
{
    ck_assert_str_eq(line(RB_LOG_FORMAT_LOGFMT, false, 1, 7, "HELLO from \"x\" \\ y\nz"),
                     "ts=2026-01-02T03:04:05.678Z level=warn shard=1 conn=7 "
                     "msg=\"HELLO from \\\"x\\\" \\\\\\\\ y\\\\nz\"\n");
    ck_assert_str_eq(line(RB_LOG_FORMAT_LOGFMT, false, -1, 0, "up"),
                     "ts=2026-01-02T03:04:05.678Z level=warn msg=\"up\"\n");
    ck_assert_str_eq(line(RB_LOG_FORMAT_LOGFMT, true, -1, 0, "up"),
                     "<4>ts=2026-01-02T03:04:05.678Z level=warn msg=\"up\"\n");
}
END_TEST

START_TEST(test_log_format_json_escapes_the_message)
{
    ck_assert_str_eq(line(RB_LOG_FORMAT_JSON, false, 3, 42, "a\"}\x1b\xff\xe2\x80\xae"),
                     "{\"ts\":\"2026-01-02T03:04:05.678Z\",\"level\":\"warn\",\"shard\":3,"
                     "\"conn\":42,\"msg\":\"a\\\"}\\\\x1B\\\\xFF\\\\u{202E}\"}\n");
    ck_assert_str_eq(line(RB_LOG_FORMAT_JSON, true, -1, 0, ""),
                     "<4>{\"ts\":\"2026-01-02T03:04:05.678Z\",\"level\":\"warn\",\"msg\":\"\"}\n");
}
END_TEST

START_TEST(test_log_format_long_message_is_cut_inside_its_quotes)
{
    char msg[2000];
    memset(msg, '"', sizeof msg - 1);
    msg[sizeof msg - 1] = '\0';
    char out[RB_LOG_LINE_BYTES_MIN];
    rb_log_fields f = {.format = RB_LOG_FORMAT_JSON,
                       .level = RB_LOG_DEBUG,
                       .shard = 255,
                       .conn_id = UINT64_MAX,
                       .unix_ms = TS_MS};
    size_t n = rb_log_format_line(out, sizeof out, &f, msg, strlen(msg));
    ck_assert_uint_eq(n, strlen(out));
    ck_assert_uint_lt(n, sizeof out);
    ck_assert_str_eq(out + n - 8, "\\\"...\"}\n");
    f.format = RB_LOG_FORMAT_LOGFMT;
    n = rb_log_format_line(out, sizeof out, &f, msg, strlen(msg));
    ck_assert_uint_lt(n, sizeof out);
    ck_assert_str_eq(out + n - 7, "\\\"...\"\n");
}
END_TEST

/* The msg value of a logfmt or json line: from its opening quote to the
 * first quote that no backslash escapes; what follows must end the line.
 * Returns false when a peer's bytes could have closed it early. */
static bool value_ends_the_line(const char *out, rb_log_format format)
{
    const char *p = strstr(out, format == RB_LOG_FORMAT_JSON ? "\"msg\":\"" : " msg=\"");
    ck_assert_ptr_nonnull(p);
    p = strchr(p, '=') != NULL && format == RB_LOG_FORMAT_LOGFMT ? strchr(p, '"') + 1
                                                                 : strstr(p, ":\"") + 2;
    for (; *p != '\0' && *p != '"'; p++) {
        if (*p == '\\') {
            p++;
            ck_assert(*p == '\\' || *p == '"');
        }
        ck_assert((unsigned char)*p >= 0x20 && *p != 0x7f);
    }
    return strcmp(p, format == RB_LOG_FORMAT_JSON ? "\"}\n" : "\"\n") == 0;
}

START_TEST(test_log_format_random_bytes_stay_inside_the_value)
{
    unsigned seed = 20261204u;
    printf("test_log_format_random_bytes_stay_inside_the_value: seed %u\n", seed);
    srand(seed);
    static const char pool[] = "\"\\\n\r\t}{=x \x1b\x7f\xc2\x85\xe2\x80\xae\xff\xc3";
    for (int round = 0; round < 2000; round++) {
        char msg[1200];
        size_t len = (size_t)(rand() % (int)sizeof msg);
        for (size_t i = 0; i < len; i++) {
            msg[i] = rand() % 2 ? pool[rand() % (int)(sizeof pool - 1)] : (char)(rand() % 256);
        }
        rb_log_format format = round % 2 ? RB_LOG_FORMAT_JSON : RB_LOG_FORMAT_LOGFMT;
        rb_log_fields f = {.format = format,
                           .level = RB_LOG_INFO,
                           .shard = round % 3 - 1,
                           .conn_id = (uint64_t)round,
                           .unix_ms = TS_MS};
        char out[1025];
        size_t n = rb_log_format_line(out, sizeof out, &f, msg, len);
        ck_assert_uint_lt(n, sizeof out);
        ck_assert_ptr_eq(strchr(out, '\n'), out + n - 1);
        ck_assert(value_ends_the_line(out, format));
    }
}
END_TEST

START_TEST(test_log_format_parse_names)
{
    rb_log_format f = RB_LOG_FORMAT_TEXT;
    ck_assert_int_eq(rb_log_format_parse("json", &f), 0);
    ck_assert_int_eq(f, RB_LOG_FORMAT_JSON);
    ck_assert_int_eq(rb_log_format_parse("logfmt", &f), 0);
    ck_assert_int_eq(f, RB_LOG_FORMAT_LOGFMT);
    ck_assert_int_eq(rb_log_format_parse("text", &f), 0);
    ck_assert_int_eq(f, RB_LOG_FORMAT_TEXT);
    ck_assert_int_eq(rb_log_format_parse("JSON", &f), -1);
    ck_assert_int_eq(rb_log_format_parse("", &f), -1);
}
END_TEST

START_TEST(test_log_format_small_buffer_aborts)
{
    RB_DEATH_TEST();
    char out[RB_LOG_LINE_BYTES_MIN - 1];
    rb_log_fields f = {.format = RB_LOG_FORMAT_JSON};
    rb_log_format_line(out, sizeof out, &f, "x", 1);
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
    tc = tcase_create("format");
    tcase_add_test(tc, test_log_format_text_keeps_its_prefixes);
    tcase_add_test(tc, test_log_format_logfmt_quotes_the_message);
    tcase_add_test(tc, test_log_format_json_escapes_the_message);
    tcase_add_test(tc, test_log_format_long_message_is_cut_inside_its_quotes);
    tcase_add_test(tc, test_log_format_random_bytes_stay_inside_the_value);
    tcase_add_test(tc, test_log_format_parse_names);
    tcase_add_test_raise_signal(tc, test_log_format_small_buffer_aborts, SIGABRT);
    suite_add_tcase(s, tc);
    return s;
}
