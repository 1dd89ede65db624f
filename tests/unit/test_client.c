/* Unit tests of libringbus and the CLI's pieces that need no daemon: URL
 * parsing, JSON escaping, base64, stream command parsing (on libjansson), and a real
 * socket peer (a forked child on 127.0.0.1 speaking the protocol with the
 * shared rb_frame codec) for connect, auto-pong, publish acks and events. */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <check.h>

#include "cli/cmdjson.h"
#include "cli/json.h"
#include "client/ringbus.h"
#include "client/transport.h"
#include "client/url.h"
#include "common/frame.h"

/* ---- URLs ---- */

START_TEST(test_url_tcp_with_port_parses)
{
    rb_url u;
    rb_err e = {0};
    ck_assert_int_eq(rb_url_parse("tcp://127.0.0.1:7999", &u, &e), 0);
    ck_assert_int_eq(u.scheme, RB_URL_TCP);
    ck_assert_str_eq(u.host, "127.0.0.1");
    ck_assert_int_eq(u.port, 7999);
    ck_assert(!u.host_is_ipv6);
}
END_TEST

START_TEST(test_url_without_port_uses_scheme_default)
{
    static const struct {
        const char *text;
        rb_url_scheme scheme;
        int port;
    } cases[] = {{"tcp://localhost", RB_URL_TCP, 7400}, {"tls://h", RB_URL_TLS, 7401},
                 {"ws://h", RB_URL_WS, 7402},           {"wss://h", RB_URL_WSS, 7403},
                 {"quic://h", RB_URL_QUIC, 7404},       {"tcp://h/", RB_URL_TCP, 7400}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rb_url u;
        rb_err e = {0};
        ck_assert_msg(rb_url_parse(cases[i].text, &u, &e) == 0, "%s: %s", cases[i].text, e.msg);
        ck_assert_int_eq(u.scheme, cases[i].scheme);
        ck_assert_int_eq(u.port, cases[i].port);
    }
}
END_TEST

START_TEST(test_url_ipv6_literal_needs_brackets_and_parses)
{
    rb_url u;
    rb_err e = {0};
    ck_assert_int_eq(rb_url_parse("tcp://[::1]:7401", &u, &e), 0);
    ck_assert_str_eq(u.host, "::1");
    ck_assert(u.host_is_ipv6);
    ck_assert_int_eq(u.port, 7401);
    ck_assert_int_eq(rb_url_parse("tcp://[::1]", &u, &e), 0);
    ck_assert_int_eq(u.port, 7400);
    ck_assert_int_eq(rb_url_parse("tcp://::1:7400", &u, &e), RB_EINVAL);
    ck_assert_msg(strstr(e.msg, "brackets") != NULL, "%s", e.msg);
}
END_TEST

START_TEST(test_url_ws_keeps_its_path)
{
    rb_url u;
    rb_err e = {0};
    ck_assert_int_eq(rb_url_parse("wss://bus.example.com:443/ringbus?x=1", &u, &e), 0);
    ck_assert_str_eq(u.host, "bus.example.com");
    ck_assert_int_eq(u.port, 443);
    ck_assert_str_eq(u.path, "/ringbus?x=1");
    ck_assert_int_eq(rb_url_parse("ws://h", &u, &e), 0);
    ck_assert_str_eq(u.path, "/ringbus");
    ck_assert_int_eq(rb_url_parse("ws://h/", &u, &e), 0);
    ck_assert_str_eq(u.path, "/");
}
END_TEST

START_TEST(test_url_malformed_is_rejected_with_a_message)
{
    static const char *const bad[] = {
        "",          "127.0.0.1:7400", "http://h",    "tcp://",         "tcp://:7400",
        "tcp://h:0", "tcp://h:65536",  "tcp://h:abc", "tcp://h:",       "tcp://[::1",
        "tcp://[]",  "tcp://h:7400/x", "tcp://u@h",   "tcp://h h",      "tcp://[::1]x",
        "TCP://h",   "tcp://h:123456", "tcp:/h",      "tcp://[::1]:-1", "tcp://h:+1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rb_url u;
        rb_err e = {0};
        ck_assert_msg(rb_url_parse(bad[i], &u, &e) == RB_EINVAL, "accepted \"%s\"", bad[i]);
        ck_assert_msg(strstr(e.msg, "url") != NULL, "%s: %s", bad[i], e.msg);
    }
}
END_TEST

START_TEST(test_url_longer_than_limit_is_rejected)
{
    char *text = malloc(RB_URL_BYTES_MAX + 16);
    ck_assert_ptr_nonnull(text);
    strcpy(text, "tcp://");
    memset(text + 6, 'a', RB_URL_BYTES_MAX);
    text[RB_URL_BYTES_MAX + 6] = '\0';
    rb_url u;
    rb_err e = {0};
    ck_assert_int_eq(rb_url_parse(text, &u, &e), RB_EINVAL);
    free(text);
}
END_TEST

/* ---- JSON output and base64 ---- */

START_TEST(test_json_string_escapes_quotes_backslash_and_controls)
{
    rb_json_buf b;
    rb_json_buf_init(&b);
    const char in[] = "a\"b\\c\n\t\x01\x1f\x7f\0z\xc3\xa9";
    rb_json_put_str(&b, in, sizeof in - 1);
    ck_assert_str_eq(b.ptr, "\"a\\\"b\\\\c\\n\\t\\u0001\\u001f\\u007f\\u0000z\xc3\xa9\"");
    rb_json_buf_reset(&b);
    rb_json_put_str(&b, "", 0);
    ck_assert_str_eq(b.ptr, "\"\"");
    rb_json_buf_deinit(&b);
}
END_TEST

START_TEST(test_json_u64_prints_the_full_range)
{
    rb_json_buf b;
    rb_json_buf_init(&b);
    rb_json_put_u64(&b, 0);
    rb_json_put_raw(&b, ",", 1);
    rb_json_put_u64(&b, UINT64_MAX);
    ck_assert_str_eq(b.ptr, "0,18446744073709551615");
    rb_json_buf_deinit(&b);
}
END_TEST

/* ---- stream commands ---- */

static int parse_cmd(const char *line, rb_cmd *cmd, rb_err *e)
{
    return rb_cmd_parse(line, strlen(line), cmd, e);
}

START_TEST(test_cmd_full_mutate_parses_every_field)
{
    rb_cmd cmd;
    rb_err e = {0};
    const char *line = "{\"mutate_id\":7,\"add\":[{\"topic\":\"a\",\"cursor\":0},"
                       "{\"topic\":\"b\",\"cursor\":\"now\"},{\"topic\":\"c\",\"cursor\":42},"
                       "{\"topic\":\"d\"},{\"topic\":\"e\",\"cursor\":\"9\"}],"
                       "\"remove\":[\"x\",\"y\"],\"history_only\":true,"
                       "\"epoch\":18446744073709551615}";
    ck_assert_msg(parse_cmd(line, &cmd, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(cmd.kind, RB_CMD_MUTATE);
    ck_assert_uint_eq(cmd.mutate_id, 7);
    ck_assert_uint_eq(cmd.epoch, UINT64_MAX);
    ck_assert(cmd.history_only);
    ck_assert_uint_eq(cmd.add_count, 5);
    ck_assert_str_eq(cmd.adds[0].topic, "a");
    ck_assert(!cmd.adds[0].is_now && cmd.adds[0].cursor == 0);
    ck_assert(cmd.adds[1].is_now);
    ck_assert(!cmd.adds[2].is_now && cmd.adds[2].cursor == 42);
    ck_assert(cmd.adds[3].is_now);
    ck_assert(!cmd.adds[4].is_now && cmd.adds[4].cursor == 9);
    ck_assert_uint_eq(cmd.remove_count, 2);
    ck_assert_str_eq(cmd.removes[1], "y");
    rb_cmd_free(&cmd);
}
END_TEST

START_TEST(test_cmd_remove_only_needs_no_mutate_id)
{
    rb_cmd cmd;
    rb_err e = {0};
    ck_assert_int_eq(parse_cmd("{\"remove\":[\"c\"]}", &cmd, &e), 0);
    ck_assert_int_eq(cmd.kind, RB_CMD_MUTATE);
    ck_assert_uint_eq(cmd.mutate_id, 0);
    ck_assert_uint_eq(cmd.remove_count, 1);
    rb_cmd_free(&cmd);
}
END_TEST

START_TEST(test_cmd_close_and_publish_parse)
{
    rb_cmd cmd;
    rb_err e = {0};
    ck_assert_int_eq(parse_cmd(" {\"close\" : true} ", &cmd, &e), 0);
    ck_assert_int_eq(cmd.kind, RB_CMD_CLOSE);
    rb_cmd_free(&cmd);
    ck_assert_int_eq(parse_cmd("{\"publish\":{\"topic\":\"a\",\"data\":\"x\\u0000y\"}}", &cmd, &e),
                     0);
    ck_assert_int_eq(cmd.kind, RB_CMD_PUBLISH);
    ck_assert_str_eq(cmd.topic, "a");
    ck_assert_uint_eq(cmd.data_len, 3);
    ck_assert(memcmp(cmd.data, "x\0y", 3) == 0);
    rb_cmd_free(&cmd);
    ck_assert_int_eq(parse_cmd("{\"publish\":{\"topic\":\"a\",\"data_b64\":\"/w==\"}}", &cmd, &e),
                     0);
    ck_assert_uint_eq(cmd.data_len, 1);
    ck_assert_uint_eq(cmd.data[0], 0xff);
    rb_cmd_free(&cmd);
}
END_TEST

START_TEST(test_cmd_malformed_lines_are_rejected_with_a_reason)
{
    static const struct {
        const char *line;
        const char *why;
    } bad[] = {
        {"", "bad JSON"},
        {"{\"close\":true", "bad JSON"},
        {"[1]", "JSON object"},
        {"\"close\"", "JSON object"},
        {"{}", "nothing to do"},
        {"{\"mutate_id\":7}", "nothing to do"},
        {"{\"frob\":1}", "unknown key"},
        {"{\"close\":true,\"close\":true}", "duplicate object key"},
        {"{\"close\":false}", "close: must be true"},
        {"{\"close\":1}", "close: must be true"},
        {"{\"close\":true,\"mutate_id\":1}", "no other keys"},
        {"{\"add\":[{\"topic\":\"a\"}]}", "mutate_id: required"},
        {"{\"mutate_id\":0,\"add\":[{\"topic\":\"a\"}]}", "mutate_id: required"},
        {"{\"mutate_id\":-1,\"add\":[]}", "mutate_id"},
        {"{\"mutate_id\":1.5,\"add\":[]}", "mutate_id"},
        {"{\"mutate_id\":1,\"add\":[],\"epoch\":-3}", "epoch: must be an integer"},
        {"{\"mutate_id\":1,\"add\":[],\"epoch\":\"7\"}", "epoch: must be an integer"},
        {"{\"mutate_id\":\"7\",\"add\":[]}", "mutate_id"},
        {"{\"mutate_id\":9223372036854775808,\"add\":[]}", "mutate_id"},
        {"{\"mutate_id\":1,\"add\":{\"topic\":\"a\"}}", "add: must be an array"},
        {"{\"mutate_id\":1,\"add\":[\"a\"]}", "add[0]: must be an object"},
        {"{\"mutate_id\":1,\"add\":[{\"cursor\":0}]}", "add[0]: topic must be a string"},
        {"{\"mutate_id\":1,\"add\":[{\"topic\":\"\"}]}", "add[0]: topic must be 1..255"},
        {"{\"mutate_id\":1,\"add\":[{\"topic\":\"a\\u0000b\"}]}", "contains NUL"},
        {"{\"mutate_id\":1,\"add\":[{\"topic\":\"a\",\"cursor\":-1}]}", "cursor"},
        {"{\"mutate_id\":1,\"add\":[{\"topic\":\"a\",\"cursor\":\"later\"}]}", "cursor"},
        {"{\"mutate_id\":1,\"add\":[{\"topic\":\"a\",\"cursor\":\"99999999999999999999\"}]}",
         "cursor"},
        {"{\"mutate_id\":1,\"add\":[{\"topic\":\"a\",\"cursor\":true}]}", "cursor"},
        {"{\"mutate_id\":1,\"add\":[{\"topic\":\"a\",\"from\":0}]}", "add[0]: unknown key"},
        {"{\"remove\":\"c\"}", "remove: must be an array"},
        {"{\"remove\":[1]}", "remove[0]: topic must be a string"},
        {"{\"remove\":[],\"history_only\":1}", "history_only"},
        {"{\"publish\":\"x\"}", "publish: must be an object"},
        {"{\"publish\":{\"data\":\"x\"}}", "publish: topic must be a string"},
        {"{\"publish\":{\"topic\":\"a\",\"data\":1}}", "data must be a string"},
        {"{\"publish\":{\"topic\":\"a\",\"data\":\"x\",\"data_b64\":\"eA==\"}}", "not both"},
        {"{\"publish\":{\"topic\":\"a\",\"data_b64\":\"e\"}}", "base64"},
        {"{\"publish\":{\"topic\":\"a\",\"qos\":1}}", "unknown key"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rb_cmd cmd;
        rb_err e = {0};
        ck_assert_msg(parse_cmd(bad[i].line, &cmd, &e) == RB_EINVAL, "accepted %s", bad[i].line);
        ck_assert_msg(strstr(e.msg, bad[i].why) != NULL, "%s: got \"%s\", want \"%s\"", bad[i].line,
                      e.msg, bad[i].why);
    }
}
END_TEST

START_TEST(test_cmd_strings_decode_escapes_surrogates_and_nul)
{
    rb_cmd cmd;
    rb_err e = {0};
    const char *line = "{\"publish\":{\"topic\":\"a\",\"data\":\"a\\u00e9\\ud83d\\ude00\\n\\/"
                       "\\u0000\xc3\xa9\"}}";
    ck_assert_msg(parse_cmd(line, &cmd, &e) == 0, "%s", e.msg);
    const char want[] = "a\xc3\xa9\xf0\x9f\x98\x80\n/\0\xc3\xa9";
    ck_assert_uint_eq(cmd.data_len, sizeof want - 1);
    ck_assert(memcmp(cmd.data, want, sizeof want - 1) == 0);
    rb_cmd_free(&cmd);
}
END_TEST

START_TEST(test_cmd_malformed_json_is_rejected_with_its_column)
{
    static const char *const bad[] = {
        "",
        "{",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\":1,}",
        "[1,]",
        "[1 2]",
        "01",
        "1.",
        "-",
        "1e",
        "tru",
        "\"abc",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "{} x",
        "{a:1}",
        "\"\x01\"",
        "\"\xff\"",
        "'a'",
        "nul",
        "\"\xed\xa0\x80\"",
        "\"\xc0\x80\"",
        "{\"a\\u0000\":1}",
        "[1e400]",
        "[-9223372036854775809]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rb_cmd cmd;
        rb_err e = {0};
        ck_assert_msg(parse_cmd(bad[i], &cmd, &e) == RB_EINVAL, "accepted %s", bad[i]);
        ck_assert_msg(strncmp(e.msg, "bad JSON: column ", 17) == 0, "%s: %s", bad[i], e.msg);
    }
}
END_TEST

START_TEST(test_cmd_errors_name_the_column_and_the_token)
{
    static const struct {
        const char *line;
        const char *msg;
    } cases[] = {
        {"{\"close\":true,\"close\":true}",
         "bad JSON: column 21: duplicate object key near '\"close\"'"},
        {"{\"publish\":{\"topic\":\"a\",\"data\":\"x\",\"topic\":\"b\"}}",
         "bad JSON: column 42: duplicate object key near '\"topic\"'"},
        {"{\"close\":true} x", "bad JSON: column 16: end of file expected near 'x'"},
        /* Columns count characters, not bytes. */
        {"{\"remove\":[\"\xc3\xa9\" \"b\"]}", "bad JSON: column 18: ']' expected near '\"b\"'"},
        /* An error on an integer above INT64_MAX names the line's token. */
        {"{\"epoch\" 18446744073709551615}",
         "bad JSON: column 29: ':' expected near '18446744073709551615'"},
        {"{18446744073709551615:1}",
         "bad JSON: column 21: too big integer near '18446744073709551615'"},
        {"{\"epoch\":18446744073709551615 x}", "bad JSON: column 31: '}' expected near 'x'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rb_cmd cmd;
        rb_err e = {0};
        ck_assert_int_eq(parse_cmd(cases[i].line, &cmd, &e), RB_EINVAL);
        ck_assert_msg(strcmp(e.msg, cases[i].msg) == 0, "%s: got \"%s\"", cases[i].line, e.msg);
    }
    /* A NUL byte in the line, in a string and after the value. */
    rb_cmd cmd;
    rb_err e = {0};
    ck_assert_int_eq(rb_cmd_parse("{\"remove\":[\"a\0b\"]}", 18, &cmd, &e), RB_EINVAL);
    ck_assert_str_eq(e.msg, "bad JSON: column 13: control character 0x0 near '\"a'");
    ck_assert_int_eq(rb_cmd_parse("{\"close\":true}\0", 15, &cmd, &e), RB_EINVAL);
    ck_assert_str_eq(e.msg, "bad JSON: column 15: end of file expected near end of file");
}
END_TEST

START_TEST(test_cmd_integers_above_int64_max_are_read_as_u64)
{
    rb_cmd cmd;
    rb_err e = {0};
    const char *line = "{\"epoch\":9223372036854775808,\"mutate_id\":9223372036854775807,"
                       "\"add\":[{\"topic\":\"a\",\"cursor\":18446744073709551615},"
                       "{\"topic\":\"18446744073709551615\",\"cursor\":\t18446744073709551614 },"
                       "{\"topic\":\"c\",\"cursor\":9223372036854775807}]}";
    ck_assert_msg(parse_cmd(line, &cmd, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(cmd.epoch, (uint64_t)1 << 63);
    ck_assert_uint_eq(cmd.mutate_id, INT64_MAX);
    ck_assert_uint_eq(cmd.add_count, 3);
    ck_assert(!cmd.adds[0].is_now && cmd.adds[0].cursor == UINT64_MAX);
    ck_assert_str_eq(cmd.adds[1].topic, "18446744073709551615");
    ck_assert(!cmd.adds[1].is_now && cmd.adds[1].cursor == UINT64_MAX - 1);
    ck_assert(!cmd.adds[2].is_now && cmd.adds[2].cursor == INT64_MAX);
    rb_cmd_free(&cmd);
}
END_TEST

START_TEST(test_cmd_integers_above_u64_and_stand_ins_are_refused_by_field)
{
    static const struct {
        const char *line;
        const char *why;
    } bad[] = {
        {"{\"remove\":[],\"epoch\":18446744073709551616}", "epoch: must be an integer"},
        {"{\"remove\":[],\"epoch\":123456789012345678901234567890}", "epoch: must be an integer"},
        {"{\"remove\":[],\"epoch\":18446744073709551615.0}", "epoch: must be an integer"},
        {"{\"remove\":[],\"epoch\":18446744073709551615e0}", "epoch: must be an integer"},
        {"{\"mutate_id\":1,\"add\":[{\"topic\":\"a\",\"cursor\":18446744073709551616}]}",
         "add[0]: cursor"},
        {"{\"mutate_id\":18446744073709551615,\"add\":[]}", "mutate_id: must be"},
        {"{\"remove\":[18446744073709551615]}", "remove[0]: topic must be a string"},
        {"{\"remove\":[],\"history_only\":18446744073709551615}", "history_only"},
        {"{\"publish\":{\"topic\":\"a\",\"data\":18446744073709551615}}", "data must be a string"},
        /* A real that looks like the placeholder of a large integer does not
         * stand in for one. */
        {"{\"remove\":[],\"epoch\":-1.0}", "epoch: must be an integer"},
        {"{\"epoch\":-1.0,\"mutate_id\":1,\"add\":[{\"topic\":\"a\",\"cursor\":"
         "18446744073709551615}]}",
         "add[0]: cursor"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rb_cmd cmd;
        rb_err e = {0};
        ck_assert_msg(parse_cmd(bad[i].line, &cmd, &e) == RB_EINVAL, "accepted %s", bad[i].line);
        ck_assert_msg(strstr(e.msg, bad[i].why) != NULL, "%s: got \"%s\", want \"%s\"", bad[i].line,
                      e.msg, bad[i].why);
    }
}
END_TEST

START_TEST(test_cmd_deep_nesting_is_refused_without_crashing)
{
    size_t depth = 100000;
    char *line = malloc(2 * depth + 16);
    ck_assert_ptr_nonnull(line);
    strcpy(line, "{\"remove\":");
    memset(line + 10, '[', depth);
    memset(line + 10 + depth, ']', depth);
    strcpy(line + 10 + 2 * depth, "}");
    rb_cmd cmd;
    rb_err e = {0};
    ck_assert_int_eq(parse_cmd(line, &cmd, &e), RB_EINVAL);
    ck_assert_msg(strstr(e.msg, "bad JSON: column ") != NULL, "%s", e.msg);
    free(line);
}
END_TEST

START_TEST(test_cmd_topic_of_255_bytes_is_accepted_and_256_rejected)
{
    char line[600];
    char topic[257];
    memset(topic, 't', 256);
    topic[255] = '\0';
    snprintf(line, sizeof line, "{\"remove\":[\"%s\"]}", topic);
    rb_cmd cmd;
    rb_err e = {0};
    ck_assert_int_eq(parse_cmd(line, &cmd, &e), 0);
    rb_cmd_free(&cmd);
    topic[255] = 't';
    topic[256] = '\0';
    snprintf(line, sizeof line, "{\"remove\":[\"%s\"]}", topic);
    ck_assert_int_eq(parse_cmd(line, &cmd, &e), RB_EINVAL);
}
END_TEST

/* ---- a protocol peer in a forked child ---- */

#define PEER_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "peer: %s:%d: %s\n", __FILE__, __LINE__, #cond);                       \
            _exit(1);                                                                              \
        }                                                                                          \
    } while (0)

enum {
    PEER_PING = 1 << 0,          /* sends PING 77 after STARTED; requires the PONG */
    PEER_REFUSE = 1 << 1,        /* answers HELLO with ERROR unauthorized */
    PEER_EOF = 1 << 2,           /* closes right after STARTED */
    PEER_HUGE = 1 << 3,          /* sends a header above max_frame_bytes after STARTED */
    PEER_EXPECT_MUTATE = 1 << 4, /* requires the mutate of mutate_test */
    PEER_RPC = 1 << 5,           /* sends STARTED with a client id; requires the rpc_test calls */
};

#define PEER_MAX_FRAME 65536u
#define PEER_EPOCH     0x8000000000000001ull

typedef struct peer {
    pid_t pid;
    int port;
    char url[64];
} peer;

static void peer_send(int fd, const uint8_t *p, size_t n)
{
    PEER_CHECK(n > 0);
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        PEER_CHECK(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

static bool read_full(int fd, uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r <= 0) {
            return false;
        }
        p += r;
        n -= (size_t)r;
    }
    return true;
}

/* Reads one frame into buf; false at EOF. */
static bool peer_read(int fd, uint8_t *buf, rb_frame *f)
{
    if (!read_full(fd, buf, RB_FRAME_HEADER_BYTES)) {
        return false;
    }
    rb_frame_header hdr;
    rb_err e = {0};
    PEER_CHECK(rb_frame_header_decode(buf, 16, PEER_MAX_FRAME, &hdr, &e) == 0);
    PEER_CHECK(read_full(fd, buf + 16, hdr.size - 16));
    PEER_CHECK(rb_frame_decode(buf, hdr.size, PEER_MAX_FRAME, f, &e) == 0);
    return true;
}

static rb_bytes str_bytes(const char *s)
{
    return (rb_bytes){(const uint8_t *)s, strlen(s)};
}

static bool bytes_eq(rb_bytes b, const char *s)
{
    return b.len == strlen(s) && memcmp(b.ptr, s, b.len) == 0;
}

/* Checks the mutate of the client tests and answers it with a history
 * frame of two messages, TOPICS_LIVE and CATCHUP_COMPLETE. */
static void peer_on_mutate(int fd, const rb_frame *f, uint8_t *out)
{
    PEER_CHECK(f->u.mutate.mutate_id == 5);
    PEER_CHECK(f->hdr.corr_id == (RINGBUS_CORR_MUTATE | 5));
    PEER_CHECK(f->u.mutate.flags == 0);
    PEER_CHECK(f->u.mutate.add_count == 2 && f->u.mutate.remove_count == 1);
    rb_frame_iter it;
    rb_mutate_add add;
    rb_frame_iter_init(&it, f->u.mutate.adds, 2);
    PEER_CHECK(rb_frame_next_add(&it, &add) && bytes_eq(add.topic, "a"));
    PEER_CHECK(add.cursor_kind == RB_CURSOR_SEQ && add.cursor == 0);
    PEER_CHECK(rb_frame_next_add(&it, &add) && bytes_eq(add.topic, "b"));
    PEER_CHECK(add.cursor_kind == RB_CURSOR_NOW);
    rb_bytes t;
    rb_frame_iter_init(&it, f->u.mutate.removes, 1);
    PEER_CHECK(rb_frame_next_topic(&it, &t) && bytes_eq(t, "c"));
    PEER_CHECK(f->u.mutate.has_epoch);
    if (f->u.mutate.epoch != 0) {
        /* Cursors of another epoch: "a" is refused alone, "b" goes live. */
        PEER_CHECK(f->u.mutate.epoch == PEER_EPOCH - 1);
        peer_send(fd, out,
                  rb_frame_encode_topic_error(out, 4096, 0, 5, str_bytes("a"),
                                              RB_WIRE_EPOCH_MISMATCH, str_bytes("other epoch")));
        rb_bytes b = str_bytes("b");
        peer_send(fd, out, rb_frame_encode_topics_live(out, 4096, 0, &b, 1));
        peer_send(fd, out, rb_frame_encode_catchup_complete(out, 4096, 0, 5));
        return;
    }

    size_t items =
        rb_frame_encode_messages_item(out + 64, 4096, str_bytes("a"), 1, str_bytes("one"));
    items += rb_frame_encode_messages_item(out + 64 + items, 4096, str_bytes("a"), 2,
                                           (rb_bytes){(const uint8_t *)"\xff\x00", 2});
    size_t head =
        rb_frame_encode_messages_head(out + 64 - RB_FRAME_MESSAGES_HEAD_BYTES, 64, 0, 5, 2, items);
    peer_send(fd, out + 64 - head, head + items);
    rb_bytes live[2] = {str_bytes("a"), str_bytes("b")};
    peer_send(fd, out, rb_frame_encode_topics_live(out, 4096, 0, live, 2));
    peer_send(fd, out, rb_frame_encode_catchup_complete(out, 4096, 0, 5));
}

static void peer_on_publish(int fd, const rb_frame *f, uint8_t *out, uint64_t *seq)
{
    rb_bytes topic = f->u.publish.topic;
    if (bytes_eq(topic, "bad topic")) {
        peer_send(fd, out,
                  rb_frame_encode_error(out, 4096, f->hdr.corr_id, RB_WIRE_INVALID_TOPIC,
                                        str_bytes("topic: contains a space at byte 3")));
        return;
    }
    *seq += 1;
    PEER_CHECK(f->u.publish.payload.len == 8);
    uint64_t want;
    memcpy(&want, f->u.publish.payload.ptr, 8);
    PEER_CHECK(want == *seq); /* payloads carry their expected seq */
    /* Even seqs are acked as duplicates: the flag must reach the result. */
    uint8_t flags = *seq % 2 == 0 ? RB_ACK_DUPLICATE : 0;
    peer_send(fd, out, rb_frame_encode_publish_ack(out, 4096, f->hdr.corr_id, topic, *seq, flags));
}

/* RPC as rpc_test expects it: "m" registers once (echoed), again is
 * already_registered; a call of "echo" is answered with its payload, of
 * "self" by sending the client a REQUEST (id 99) whose RESPONSE it must
 * answer with "pong", then the call's RESPONSE; anything else is
 * recipient_not_found. Returns true once the responder part is done. */
static bool peer_on_rpc(int fd, const rb_frame *f, uint8_t *out, uint64_t *self_corr)
{
    uint64_t corr = f->hdr.corr_id;
    rb_bytes none = {0};
    if (f->hdr.kind == RB_FRAME_REGISTER) {
        static int registered;
        if (registered++ == 0) {
            peer_send(fd, out,
                      rb_frame_encode_register(out, 4096, RB_FRAME_REGISTER, corr, f->u.reg.method,
                                               f->u.reg.service));
        } else {
            peer_send(fd, out,
                      rb_frame_encode_error(out, 4096, corr, RB_WIRE_ALREADY_REGISTERED,
                                            str_bytes("twice")));
        }
        return false;
    }
    if (f->hdr.kind == RB_FRAME_RESPONSE) {
        PEER_CHECK(corr == 99 && f->u.response.code == 0);
        PEER_CHECK(bytes_eq(f->u.response.payload, "pong"));
        peer_send(fd, out,
                  rb_frame_encode_response(out, 4096, *self_corr, 0, none, str_bytes("done")));
        return true;
    }
    if (f->hdr.kind == RB_FRAME_REQUEST_ACK) {
        PEER_CHECK(corr == 99 && f->u.request_ack.flags == 0);
        return false;
    }
    PEER_CHECK(f->hdr.kind == RB_FRAME_REQUEST);
    PEER_CHECK(f->u.request.timeout_ms == 2000);
    if (bytes_eq(f->u.request.method, "echo")) {
        peer_send(fd, out, rb_frame_encode_request_ack(out, 4096, corr, 0));
        peer_send(fd, out,
                  rb_frame_encode_response(out, 4096, corr, 0, none, f->u.request.payload));
    } else if (bytes_eq(f->u.request.method, "self")) {
        *self_corr = corr;
        peer_send(fd, out,
                  rb_frame_encode_request(out, 4096, 99, 8000, str_bytes("anon-9"),
                                          str_bytes("ping"), str_bytes("hi")));
    } else {
        peer_send(fd, out,
                  rb_frame_encode_response(out, 4096, corr, RB_WIRE_RECIPIENT_NOT_FOUND,
                                           str_bytes("nobody"), none));
    }
    return false;
}

/* Answers HELLO as flags say, then sends what the flags ask for. */
static void peer_handshake(int fd, int flags, uint8_t *in, uint8_t *out)
{
    rb_frame f;
    PEER_CHECK(peer_read(fd, in, &f) && f.hdr.kind == RB_FRAME_HELLO);
    PEER_CHECK(f.u.hello.protocol_version == RB_PROTOCOL_VERSION);
    PEER_CHECK(bytes_eq(f.u.hello.client_name, "unit-test"));
    PEER_CHECK(bytes_eq(f.u.hello.credentials, "tok"));
    if (flags & PEER_REFUSE) {
        peer_send(fd, out,
                  rb_frame_encode_error(out, 4096, 0, RB_WIRE_UNAUTHORIZED,
                                        str_bytes("bad credentials")));
        _exit(0);
    }
    if (flags & PEER_RPC) {
        peer_send(fd, out,
                  rb_frame_encode_started_client(out, 4096, 0, 1234, 7, PEER_MAX_FRAME,
                                                 str_bytes("peer-1"), PEER_EPOCH,
                                                 str_bytes("anon-5")));
    } else {
        peer_send(fd, out,
                  rb_frame_encode_started(out, 4096, 0, 1234, 3, PEER_MAX_FRAME,
                                          str_bytes("peer-1"), PEER_EPOCH));
    }
    if (flags & PEER_EOF) {
        _exit(0);
    }
    if (flags & PEER_HUGE) {
        uint8_t hdr[16] = {0};
        uint32_t size = PEER_MAX_FRAME + 1;
        memcpy(hdr, &size, 4);
        hdr[4] = RB_PROTOCOL_VERSION;
        hdr[5] = RB_FRAME_MESSAGES;
        peer_send(fd, hdr, 16);
    }
    if (flags & PEER_PING) {
        peer_send(fd, out, rb_frame_encode_ping(out, 4096, 9, 77));
    }
}

/* Serves one connection until the client's CLOSE; exits the child. */
static _Noreturn void peer_serve(int fd, int flags)
{
    uint8_t *in = malloc(PEER_MAX_FRAME);
    uint8_t *out = malloc(8192);
    rb_frame f;
    PEER_CHECK(in != NULL && out != NULL);
    peer_handshake(fd, flags, in, out);
    bool pong = false;
    bool mutated = false;
    bool rpc_done = false;
    uint64_t self_corr = 0;
    uint64_t seq = 0;
    while (peer_read(fd, in, &f)) {
        switch (f.hdr.kind) {
        case RB_FRAME_PONG:
            PEER_CHECK(f.u.ping.nonce == 77 && f.hdr.corr_id == 9);
            pong = true;
            break;
        case RB_FRAME_PING:
            peer_send(fd, out, rb_frame_encode_pong(out, 4096, 0, f.u.ping.nonce));
            break;
        case RB_FRAME_PUBLISH:
            peer_on_publish(fd, &f, out, &seq);
            break;
        case RB_FRAME_MUTATE:
            peer_on_mutate(fd, &f, out);
            mutated = true;
            break;
        case RB_FRAME_REGISTER:
        case RB_FRAME_REQUEST:
        case RB_FRAME_REQUEST_ACK:
        case RB_FRAME_RESPONSE:
            PEER_CHECK(flags & PEER_RPC);
            rpc_done = peer_on_rpc(fd, &f, out, &self_corr) || rpc_done;
            break;
        case RB_FRAME_CLOSE:
            if (flags & PEER_HUGE) {
                /* The client says why it gives up, then hangs up. */
                PEER_CHECK(f.u.close.status == RB_WIRE_TOO_LARGE);
                _exit(0);
            }
            PEER_CHECK(f.u.close.status == RB_WIRE_OK);
            PEER_CHECK(!(flags & PEER_PING) || pong);
            PEER_CHECK(!(flags & PEER_EXPECT_MUTATE) || mutated);
            PEER_CHECK(!(flags & PEER_RPC) || rpc_done);
            peer_send(fd, out, rb_frame_encode_close(out, 4096, 0, RB_WIRE_OK, str_bytes("")));
            _exit(0);
        default:
            PEER_CHECK(!"unexpected frame kind");
        }
    }
    /* The client went away without CLOSE: fine unless something was required. */
    PEER_CHECK(!(flags & (PEER_PING | PEER_EXPECT_MUTATE | PEER_HUGE)));
    _exit(0);
}

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(fd, 8), 0);
    socklen_t len = sizeof sa;
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

static peer peer_start(int flags)
{
    peer p = {0};
    int lfd = listen_any(&p.port);
    snprintf(p.url, sizeof p.url, "tcp://127.0.0.1:%d", p.port);
    p.pid = fork();
    ck_assert_int_ge(p.pid, 0);
    if (p.pid == 0) {
        alarm(20);
        signal(SIGPIPE, SIG_IGN);
        int fd = accept(lfd, NULL, NULL);
        PEER_CHECK(fd >= 0);
        close(lfd);
        peer_serve(fd, flags);
    }
    close(lfd);
    return p;
}

static int peer_wait(peer *p)
{
    int status = 0;
    ck_assert_int_eq(waitpid(p->pid, &status, 0), p->pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static ringbus_options test_options(void)
{
    ringbus_options o;
    ringbus_options_init(&o);
    o.client_name = "unit-test";
    o.credentials = "tok";
    o.credentials_len = 3;
    o.connect_timeout_ms = 5000;
    o.request_timeout_ms = 5000;
    return o;
}

static ringbus_conn *connect_peer(peer *p, const ringbus_options *o)
{
    ringbus_conn *conn = NULL;
    ringbus_error err = {0};
    int rc = ringbus_connect(p->url, o, &conn, &err);
    ck_assert_msg(rc == 0, "connect: %s", err.message);
    return conn;
}

/* Half-closes, expects CLOSED ok as the next event, and reaps the peer. */
static void close_cleanly(ringbus_conn *conn, peer *p)
{
    ringbus_error err = {0};
    ck_assert_int_eq(ringbus_half_close(conn, &err), 0);
    ringbus_event ev;
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_CLOSED);
    ck_assert_int_eq(ev.code, RINGBUS_WIRE_OK);
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 10, &err), RINGBUS_ECLOSED);
    ck_assert_int_eq(ringbus_fd(conn), -1);
    ringbus_close(conn);
    ck_assert_int_eq(peer_wait(p), 0);
}

START_TEST(test_client_connect_reports_started_fields)
{
    peer p = peer_start(0);
    ringbus_options o = test_options();
    ringbus_conn *conn = connect_peer(&p, &o);
    ck_assert_uint_eq(ringbus_keepalive_ms(conn), 1234);
    ck_assert_uint_eq(ringbus_max_frame_bytes(conn), PEER_MAX_FRAME);
    ck_assert_uint_eq(ringbus_capabilities(conn), 3);
    ck_assert_str_eq(ringbus_server_id(conn), "peer-1");
    ck_assert_uint_eq(ringbus_epoch(conn), PEER_EPOCH);
    ck_assert_int_ge(ringbus_fd(conn), 0);
    ck_assert(!ringbus_want_write(conn));
    close_cleanly(conn, &p);
}
END_TEST

START_TEST(test_client_answers_server_ping_with_pong)
{
    peer p = peer_start(PEER_PING);
    ringbus_options o = test_options();
    ringbus_conn *conn = connect_peer(&p, &o);
    uint64_t rtt_ns = 0;
    ringbus_error err = {0};
    /* Our own ping round trip also drives the processing that pongs. */
    ck_assert_msg(ringbus_ping(conn, &rtt_ns, &err) == 0, "%s", err.message);
    ck_assert_uint_gt(rtt_ns, 0);
    close_cleanly(conn, &p); /* the peer exits nonzero without its pong */
}
END_TEST

START_TEST(test_client_publish_sync_returns_the_seq)
{
    peer p = peer_start(PEER_PING);
    ringbus_options o = test_options();
    ringbus_conn *conn = connect_peer(&p, &o);
    for (uint64_t want = 1; want <= 3; want++) {
        uint64_t seq = 0;
        ringbus_error err = {0};
        ck_assert_msg(ringbus_publish_sync(conn, "t", 1, &want, 8, &seq, &err) == 0, "%s",
                      err.message);
        ck_assert_uint_eq(seq, want);
    }
    close_cleanly(conn, &p);
}
END_TEST

START_TEST(test_client_rpc_register_call_and_respond)
{
    peer p = peer_start(PEER_RPC);
    ringbus_options o = test_options();
    ringbus_conn *conn = connect_peer(&p, &o);
    ringbus_error err = {0};
    ck_assert_str_eq(ringbus_client_id(conn), "anon-5");
    ck_assert_msg(ringbus_register(conn, "m", NULL, &err) == 0, "%s", err.message);
    ck_assert_int_eq(ringbus_register(conn, "m", NULL, &err), RINGBUS_ESERVER);
    ck_assert_int_eq(err.wire_code, RINGBUS_WIRE_ALREADY_REGISTERED);
    ck_assert_int_eq(ringbus_register(conn, "", NULL, &err), RINGBUS_EINVAL);
    ringbus_call_result res = {0};
    ck_assert_msg(ringbus_call_sync(conn, "anon-9", "echo", "abc", 3, 2000, &res, &err) == 0, "%s",
                  err.message);
    ck_assert_int_eq(res.code, 0);
    ck_assert_uint_eq(res.payload_len, 3);
    ck_assert_mem_eq(res.payload, "abc", 3);
    ck_assert_int_eq(ringbus_call_sync(conn, "x", "other", NULL, 0, 2000, &res, &err),
                     RINGBUS_ESERVER);
    ck_assert_int_eq(res.code, RINGBUS_WIRE_RECIPIENT_NOT_FOUND);
    ck_assert_int_eq(err.wire_code, RINGBUS_WIRE_RECIPIENT_NOT_FOUND);
    ck_assert_str_eq(res.message, "nobody");
    /* An async call whose responder is this connection itself. */
    uint64_t call_id = 0;
    ck_assert_int_eq(ringbus_call(conn, "anon-9", "self", NULL, 0, 2000, &call_id, &err), 0);
    ck_assert(call_id & RINGBUS_CORR_CALL);
    ringbus_event ev;
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_REQUEST);
    ck_assert_str_eq(ev.method, "ping");
    ck_assert_str_eq(ev.caller, "anon-9");
    ck_assert_uint_eq(ev.timeout_ms, 8000);
    ck_assert_uint_eq(ev.payload_len, 2);
    ck_assert_int_eq(
        ringbus_respond(conn, ev.corr_id, RINGBUS_WIRE_UNKNOWN_METHOD, NULL, NULL, 0, &err),
        RINGBUS_EINVAL);
    ck_assert_int_eq(ringbus_request_ack(conn, ev.corr_id, &err), 0);
    ck_assert_int_eq(ringbus_respond(conn, ev.corr_id, 0, NULL, "pong", 4, &err), 0);
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_RESPONSE);
    ck_assert_uint_eq(ev.corr_id, call_id);
    ck_assert_int_eq(ev.code, 0);
    ck_assert_uint_eq(ev.payload_len, 4);
    ck_assert_mem_eq(ev.payload, "done", 4);
    close_cleanly(conn, &p);
}
END_TEST

START_TEST(test_client_publish_error_ack_carries_wire_code)
{
    peer p = peer_start(0);
    ringbus_options o = test_options();
    ringbus_conn *conn = connect_peer(&p, &o);
    ringbus_error err = {0};
    uint64_t seq = 0;
    ck_assert_int_eq(ringbus_publish_sync(conn, "bad topic", 9, "x", 1, &seq, &err),
                     RINGBUS_ESERVER);
    ck_assert_int_eq(err.wire_code, RINGBUS_WIRE_INVALID_TOPIC);
    ck_assert_msg(strstr(err.message, "invalid_topic") != NULL, "%s", err.message);
    ck_assert_msg(strstr(err.message, "space") != NULL, "%s", err.message);
    close_cleanly(conn, &p);
}
END_TEST

typedef struct acks {
    uint64_t count;
    uint64_t seqs[2000];
    int failures;
} acks;

static void count_ack(const ringbus_publish_result *res, void *ctx)
{
    acks *a = ctx;
    if (res->status != 0 || strcmp(res->topic, "t") != 0 || a->count >= 2000 ||
        res->duplicate != (res->seq % 2 == 0)) {
        a->failures++;
        return;
    }
    a->seqs[a->count++] = res->seq;
}

START_TEST(test_client_pipelines_publishes_through_a_small_window)
{
    peer p = peer_start(PEER_PING);
    ringbus_options o = test_options();
    o.publish_window = 64;
    ringbus_conn *conn = connect_peer(&p, &o);
    acks *a = calloc(1, sizeof *a);
    ck_assert_ptr_nonnull(a);
    ringbus_error err = {0};
    bool saw_full = false;
    for (uint64_t i = 1; i <= 2000;) {
        int rc = ringbus_publish(conn, "t", 1, &i, 8, NULL, &err, count_ack, a);
        if (rc == RINGBUS_EAGAIN) {
            saw_full = true;
            ck_assert_int_ge(ringbus_process(conn, 1000, &err), 0);
            continue;
        }
        ck_assert_msg(rc == 0, "%s", err.message);
        i++;
    }
    while (a->count + (uint64_t)a->failures < 2000) {
        ck_assert_int_ge(ringbus_process(conn, 1000, &err), 0);
    }
    ck_assert(saw_full);
    ck_assert_int_eq(a->failures, 0);
    for (uint64_t i = 0; i < 2000; i++) {
        ck_assert_uint_eq(a->seqs[i], i + 1);
    }
    close_cleanly(conn, &p);
    free(a);
}
END_TEST

START_TEST(test_client_full_window_refuses_with_eagain)
{
    peer p = peer_start(0);
    ringbus_options o = test_options();
    o.publish_window = 4;
    ringbus_conn *conn = connect_peer(&p, &o);
    acks *a = calloc(1, sizeof *a);
    ringbus_error err = {0};
    for (uint64_t i = 1; i <= 4; i++) {
        ck_assert_int_eq(ringbus_publish(conn, "t", 1, &i, 8, NULL, &err, count_ack, a), 0);
    }
    uint64_t five = 5;
    ck_assert_int_eq(ringbus_publish(conn, "t", 1, &five, 8, NULL, &err, count_ack, a),
                     RINGBUS_EAGAIN);
    ck_assert(ringbus_want_write(conn));
    ck_assert_uint_eq(a->count, 0); /* callbacks never run inside publish */
    while (a->count < 4) {
        ck_assert_int_ge(ringbus_process(conn, 1000, &err), 0);
    }
    ck_assert_int_eq(ringbus_publish(conn, "t", 1, &five, 8, NULL, &err, count_ack, a), 0);
    while (a->count < 5) {
        ck_assert_int_ge(ringbus_process(conn, 1000, &err), 0);
    }
    close_cleanly(conn, &p);
    free(a);
}
END_TEST

START_TEST(test_client_publish_arguments_are_checked)
{
    peer p = peer_start(0);
    ringbus_options o = test_options();
    ringbus_conn *conn = connect_peer(&p, &o);
    ringbus_error err = {0};
    char big_topic[300];
    memset(big_topic, 'a', sizeof big_topic);
    ck_assert_int_eq(ringbus_publish(conn, "", 0, "x", 1, NULL, &err, NULL, NULL), RINGBUS_EINVAL);
    ck_assert_int_eq(ringbus_publish(conn, big_topic, 256, "x", 1, NULL, &err, NULL, NULL),
                     RINGBUS_EINVAL);
    char *payload = calloc(1, PEER_MAX_FRAME);
    ck_assert_int_eq(ringbus_publish(conn, "t", 1, payload, PEER_MAX_FRAME, NULL, &err, NULL, NULL),
                     RINGBUS_ELIMIT);
    ck_assert_msg(strstr(err.message, "max_frame_bytes") != NULL, "%s", err.message);
    free(payload);
    ck_assert(!ringbus_want_write(conn));
    close_cleanly(conn, &p);
}
END_TEST

static void expect_mutate_events(ringbus_conn *conn)
{
    ringbus_event ev;
    ringbus_error err = {0};
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_MESSAGE);
    ck_assert_str_eq(ev.topic, "a");
    ck_assert_uint_eq(ev.seq, 1);
    ck_assert_uint_eq(ev.mutate_id, 5);
    ck_assert_uint_eq(ev.payload_len, 3);
    ck_assert(memcmp(ev.payload, "one", 3) == 0);
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_uint_eq(ev.seq, 2);
    ck_assert(ev.payload_len == 2 && memcmp(ev.payload, "\xff\x00", 2) == 0);
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_TOPICS_LIVE);
    ck_assert_uint_eq(ev.topic_count, 2);
    ck_assert_str_eq(ev.topics[0], "a");
    ck_assert_str_eq(ev.topics[1], "b");
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_CATCHUP_COMPLETE);
    ck_assert_uint_eq(ev.mutate_id, 5);
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 50, &err), 0);
}

static const ringbus_add test_adds[2] = {{"a", 0, false}, {"b", 0, true}};
static const char *const test_removes[1] = {"c"};

/* ringbus.h: ws_origin is 1..255 bytes of printable ASCII without spaces
 * (it goes into the upgrade request as it is); other schemes ignore it. */
START_TEST(test_client_ws_origin_is_checked_before_connecting)
{
    ringbus_options o = test_options();
    ringbus_conn *conn = NULL;
    ringbus_error err = {0};
    char origin[257];
    memset(origin, 'o', 256);
    origin[256] = '\0';
    o.ws_origin = origin;
    ck_assert_int_eq(ringbus_connect("ws://127.0.0.1:1", &o, &conn, &err), RINGBUS_EINVAL);
    ck_assert_str_eq(err.message, "options: ws_origin must be 1 to 255 bytes");
    o.ws_origin = "";
    ck_assert_int_eq(ringbus_connect("ws://127.0.0.1:1", &o, &conn, &err), RINGBUS_EINVAL);
    o.ws_origin = "https://a\r\nX: 1";
    ck_assert_int_eq(ringbus_connect("ws://127.0.0.1:1", &o, &conn, &err), RINGBUS_EINVAL);
    ck_assert_str_eq(err.message, "options: ws_origin byte 10 is not printable ASCII");
    ck_assert_ptr_null(conn);
    /* The longest one passes, and a tcp:// connection ignores it. */
    origin[255] = '\0';
    o.ws_origin = origin;
    peer p = peer_start(0);
    conn = connect_peer(&p, &o);
    close_cleanly(conn, &p);
}
END_TEST

/* ringbus.h: mutate_id is 1..2^63-1 with adds (0 allowed without): the top
 * bit marks a Mutate's correlation id. */
START_TEST(test_client_mutate_id_range_is_checked)
{
    peer p = peer_start(0);
    ringbus_options o = test_options();
    ringbus_conn *conn = connect_peer(&p, &o);
    ringbus_error err = {0};
    ck_assert_int_eq(ringbus_mutate(conn, 0, test_adds, 1, NULL, 0, false, &err), RINGBUS_EINVAL);
    ck_assert_int_eq(ringbus_mutate(conn, RINGBUS_CORR_MUTATE, test_adds, 1, NULL, 0, false, &err),
                     RINGBUS_EINVAL);
    ck_assert_str_eq(err.message, "mutate: mutate_id must be in 1..2^63-1");
    ck_assert_int_eq(ringbus_mutate(conn, UINT64_MAX, NULL, 0, test_removes, 1, false, &err),
                     RINGBUS_EINVAL);
    ck_assert(!ringbus_want_write(conn));
    close_cleanly(conn, &p);
}
END_TEST

START_TEST(test_client_mutate_yields_messages_live_and_complete_in_order)
{
    peer p = peer_start(PEER_EXPECT_MUTATE);
    ringbus_options o = test_options();
    ringbus_conn *conn = connect_peer(&p, &o);
    ringbus_error err = {0};
    ck_assert_int_eq(ringbus_mutate(conn, 5, test_adds, 2, test_removes, 1, false, &err), 0);
    expect_mutate_events(conn);
    close_cleanly(conn, &p);
}
END_TEST

START_TEST(test_client_mutate_carries_the_epoch_and_topic_error_is_an_event)
{
    peer p = peer_start(PEER_EXPECT_MUTATE);
    ringbus_options o = test_options();
    ringbus_conn *conn = connect_peer(&p, &o);
    ringbus_error err = {0};
    ck_assert_int_eq(
        ringbus_mutate_epoch(conn, 5, PEER_EPOCH - 1, test_adds, 2, test_removes, 1, false, &err),
        0);
    ringbus_event ev;
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_TOPIC_ERROR);
    ck_assert_str_eq(ev.topic, "a");
    ck_assert_uint_eq(ev.topic_len, 1);
    ck_assert_int_eq(ev.code, RINGBUS_WIRE_EPOCH_MISMATCH);
    ck_assert_str_eq(ev.message, "other epoch");
    ck_assert_uint_eq(ev.mutate_id, 5);
    ck_assert_str_eq(ringbus_wire_code_name(ev.code), "epoch_mismatch");
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_TOPICS_LIVE);
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_CATCHUP_COMPLETE);
    close_cleanly(conn, &p);
}
END_TEST

typedef struct seen {
    int kinds[16];
    int count;
    uint64_t seqs[4];
    int closed_code;
} seen;

static void record_event(const ringbus_event *ev, void *ctx)
{
    seen *s = ctx;
    if (s->count < 16) {
        s->kinds[s->count] = ev->kind;
    }
    if (ev->kind == RINGBUS_EVENT_MESSAGE && s->count < 4) {
        s->seqs[s->count] = ev->seq;
    }
    if (ev->kind == RINGBUS_EVENT_CLOSED) {
        s->closed_code = ev->code;
    }
    s->count++;
}

START_TEST(test_client_event_callback_receives_each_event_once)
{
    peer p = peer_start(PEER_EXPECT_MUTATE);
    ringbus_options o = test_options();
    seen s = {.closed_code = -1};
    o.on_event = record_event;
    o.event_ctx = &s;
    ringbus_conn *conn = connect_peer(&p, &o);
    ringbus_error err = {0};
    ringbus_event ev;
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 0, &err), RINGBUS_EINVAL);
    ck_assert_int_eq(ringbus_mutate(conn, 5, test_adds, 2, test_removes, 1, false, &err), 0);
    ck_assert_int_eq(ringbus_half_close(conn, &err), 0);
    while (s.closed_code < 0) {
        int rc = ringbus_process(conn, 1000, &err);
        ck_assert_msg(rc >= 0, "%s", err.message);
    }
    ck_assert_int_eq(s.count, 5);
    static const int want[5] = {RINGBUS_EVENT_MESSAGE, RINGBUS_EVENT_MESSAGE,
                                RINGBUS_EVENT_TOPICS_LIVE, RINGBUS_EVENT_CATCHUP_COMPLETE,
                                RINGBUS_EVENT_CLOSED};
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(s.kinds[i], want[i]);
    }
    ck_assert_uint_eq(s.seqs[1], 2);
    ck_assert_int_eq(s.closed_code, RINGBUS_WIRE_OK);
    ck_assert_int_eq(ringbus_process(conn, 0, &err), RINGBUS_ECLOSED);
    ringbus_close(conn);
    ck_assert_int_eq(peer_wait(&p), 0);
}
END_TEST

START_TEST(test_client_half_close_refuses_new_requests)
{
    peer p = peer_start(0);
    ringbus_options o = test_options();
    ringbus_conn *conn = connect_peer(&p, &o);
    ringbus_error err = {0};
    ck_assert_int_eq(ringbus_half_close(conn, &err), 0);
    ck_assert_int_eq(ringbus_half_close(conn, &err), 0);
    ck_assert_int_eq(ringbus_publish(conn, "t", 1, "x", 1, NULL, &err, NULL, NULL),
                     RINGBUS_ECLOSED);
    ck_assert_int_eq(ringbus_mutate(conn, 1, test_adds, 1, NULL, 0, false, &err), RINGBUS_ECLOSED);
    ringbus_event ev;
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_CLOSED);
    ck_assert_int_eq(ev.code, RINGBUS_WIRE_OK);
    ringbus_close(conn);
    ck_assert_int_eq(peer_wait(&p), 0);
}
END_TEST

START_TEST(test_client_server_eof_yields_closed_unavailable)
{
    peer p = peer_start(PEER_EOF);
    ringbus_options o = test_options();
    ringbus_conn *conn = connect_peer(&p, &o);
    ringbus_event ev;
    ringbus_error err = {0};
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_CLOSED);
    ck_assert_int_eq(ev.code, RINGBUS_WIRE_UNAVAILABLE);
    ck_assert_msg(strstr(ev.message, "closed") != NULL, "%s", ev.message);
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 10, &err), RINGBUS_ECLOSED);
    ck_assert_int_eq(ringbus_publish(conn, "t", 1, "x", 1, NULL, &err, NULL, NULL),
                     RINGBUS_ECLOSED);
    ringbus_close(conn);
    ck_assert_int_eq(peer_wait(&p), 0);
}
END_TEST

START_TEST(test_client_frame_above_max_closes_with_too_large)
{
    peer p = peer_start(PEER_HUGE);
    ringbus_options o = test_options();
    ringbus_conn *conn = connect_peer(&p, &o);
    ringbus_event ev;
    ringbus_error err = {0};
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_CLOSED);
    ck_assert_int_eq(ev.code, RINGBUS_WIRE_TOO_LARGE);
    ck_assert_msg(strstr(ev.message, "protocol error") != NULL, "%s", ev.message);
    ringbus_close(conn);
    ck_assert_int_eq(peer_wait(&p), 0);
}
END_TEST

START_TEST(test_client_pending_publishes_fail_once_on_close)
{
    peer p = peer_start(0);
    ringbus_options o = test_options();
    ringbus_conn *conn = connect_peer(&p, &o);
    int calls = 0;
    ringbus_error err = {0};
    uint64_t one = 1;
    ck_assert_int_eq(ringbus_publish(conn, "t", 1, &one, 8, NULL, &err, NULL, NULL), 0);
    acks *a = calloc(1, sizeof *a);
    ck_assert_int_eq(ringbus_publish(conn, "t", 1, &one, 8, NULL, &err, count_ack, a), 0);
    ringbus_close(conn);
    calls = a->failures;
    ck_assert_int_eq(calls, 1);
    ck_assert_uint_eq(a->count, 0);
    free(a);
    ck_assert_int_eq(peer_wait(&p), 0);
}
END_TEST

START_TEST(test_client_connect_refused_names_the_url)
{
    int port;
    int lfd = listen_any(&port);
    close(lfd); /* nobody listens there now */
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
    ringbus_conn *conn = (ringbus_conn *)&port;
    ringbus_error err = {0};
    ck_assert_int_eq(ringbus_connect(url, NULL, &conn, &err), RINGBUS_ESYS);
    ck_assert_ptr_null(conn);
    ck_assert_int_eq(err.sys_errno, ECONNREFUSED);
    char want[128];
    snprintf(want, sizeof want, "connect %s: Connection refused", url);
    ck_assert_str_eq(err.message, want);
}
END_TEST

START_TEST(test_client_connect_times_out_without_started)
{
    int port;
    int lfd = listen_any(&port); /* accepts in the backlog, never answers */
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
    ringbus_options o = test_options();
    o.connect_timeout_ms = 200;
    ringbus_conn *conn = NULL;
    ringbus_error err = {0};
    ck_assert_int_eq(ringbus_connect(url, &o, &conn, &err), RINGBUS_ETIMEDOUT);
    ck_assert_msg(strstr(err.message, "STARTED") != NULL, "%s", err.message);
    close(lfd);
}
END_TEST

START_TEST(test_client_connect_refused_by_server_is_eserver)
{
    peer p = peer_start(PEER_REFUSE);
    ringbus_options o = test_options();
    ringbus_conn *conn = NULL;
    ringbus_error err = {0};
    ck_assert_int_eq(ringbus_connect(p.url, &o, &conn, &err), RINGBUS_ESERVER);
    ck_assert_int_eq(err.wire_code, RINGBUS_WIRE_UNAUTHORIZED);
    ck_assert_msg(strstr(err.message, "unauthorized: bad credentials") != NULL, "%s", err.message);
    ck_assert_int_eq(peer_wait(&p), 0);
}
END_TEST

START_TEST(test_client_unsupported_scheme_and_bad_url_fail_clearly)
{
    ringbus_conn *conn = NULL;
    ringbus_error err = {0};
    ringbus_options o = test_options();
    /* quic:// is built: a port nobody serves answers with ICMP, which ends
     * the handshake at once. */
    o.connect_timeout_ms = 3000;
    ck_assert_int_eq(ringbus_connect("quic://127.0.0.1:1", &o, &conn, &err), RINGBUS_ESYS);
    ck_assert_msg(strstr(err.message, "QUIC handshake: Connection refused") != NULL, "%s",
                  err.message);
    ck_assert_int_eq(ringbus_connect("nope://x", NULL, &conn, &err), RINGBUS_EINVAL);
    ck_assert_ptr_null(conn);
    o.connect_timeout_ms = -1;
    ck_assert_int_eq(ringbus_connect("tcp://127.0.0.1:1", &o, &conn, &err), RINGBUS_EINVAL);
}
END_TEST

/* The session keeps its publishes in one ring of publish_buffer_bytes:
 * with room for a few records only, 300 publishes wrap it many times and
 * each is answered once, in order, with its seq (the peer checks that
 * every payload arrives in order and acks even seqs as duplicates). */
typedef struct ring_answers {
    uint64_t next; /* the next seq expected */
    int dup_count;
    int bad;
} ring_answers;

static void ring_answer(const ringbus_publish_result *res, void *ctx)
{
    ring_answers *a = ctx;
    a->bad += res->status != 0 || res->seq != a->next;
    a->dup_count += res->duplicate;
    a->next++;
}

START_TEST(test_session_ring_wraps_and_answers_every_publish_once_in_order)
{
    peer p = peer_start(0);
    ringbus_options co = test_options();
    const char *urls[] = {p.url};
    ringbus_session_options o;
    ringbus_session_options_init(&o);
    o.urls = urls;
    o.url_count = 1;
    o.conn = &co;
    o.no_reconnect = true;        /* no keys: each record is header, topic, payload */
    o.publish_buffer_bytes = 512; /* a few records */
    ringbus_session *s = NULL;
    ringbus_error err;
    ck_assert_int_eq(ringbus_session_open(&o, &s, &err), 0);
    ring_answers a = {.next = 1};
    uint64_t sent = 0;
    int eagain = 0;
    while (a.next <= 300) {
        while (sent < 300) {
            uint64_t payload = sent + 1;
            int rc = ringbus_session_publish(s, "t", 1, NULL, 0, &payload, 8, NULL, &err,
                                             ring_answer, &a);
            if (rc == RINGBUS_EAGAIN) {
                eagain++;
                break;
            }
            ck_assert_msg(rc == 0, "%s", err.message);
            sent++;
        }
        ck_assert_int_ge(ringbus_session_process(s, 1000, &err), 0);
    }
    ck_assert_int_eq(a.bad, 0);
    ck_assert_int_eq(a.dup_count, 150);
    ck_assert_int_gt(eagain, 50); /* the ring, not the window, held them back */
    ck_assert_int_eq(ringbus_session_half_close(s, &err), 0);
    ringbus_event ev;
    ck_assert_int_eq(ringbus_session_next_event(s, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_CLOSED);
    ck_assert_int_eq(ev.code, RINGBUS_WIRE_OK);
    ringbus_session_close(s);
    ck_assert_int_eq(peer_wait(&p), 0);
}
END_TEST

START_TEST(test_client_names_codes)
{
    ck_assert_str_eq(ringbus_error_name(RINGBUS_ESERVER), "ESERVER");
    ck_assert_str_eq(ringbus_error_name(RINGBUS_ETIMEDOUT), "ETIMEDOUT");
    ck_assert_str_eq(ringbus_wire_code_name(RINGBUS_WIRE_RESOURCE_EXHAUSTED), "resource_exhausted");
    ck_assert_str_eq(ringbus_wire_code_name(RINGBUS_WIRE_OK), "ok");
    ck_assert_str_eq(ringbus_wire_code_name(-1), "unknown");
}
END_TEST

/* ---- naming a server that speaks something else ---- */

START_TEST(test_client_answer_hint_names_http_tls_and_plain_frames)
{
    static const uint8_t http[] = "HTTP/1.1 400 Bad Request\r\n";
    static const uint8_t alert[] = {21, 3, 3, 0, 2, 2, 10};
    uint8_t frame[64];
    size_t n = rb_frame_encode_error(frame, sizeof frame, 0, RB_WIRE_TOO_LARGE,
                                     (rb_bytes){(const uint8_t *)"x", 1});
    ck_assert_uint_gt(n, 0);
    ck_assert_str_eq(rb_client_answer_hint(RB_URL_TCP, http, sizeof http - 1),
                     "the server answered HTTP: is this a ws:// URL?");
    ck_assert_str_eq(rb_client_answer_hint(RB_URL_TCP, alert, sizeof alert),
                     "the server answered TLS: is this a tls:// URL?");
    ck_assert_str_eq(rb_client_answer_hint(RB_URL_WS, alert, sizeof alert),
                     "the server answered TLS: is this a wss:// URL?");
    ck_assert_str_eq(rb_client_answer_hint(RB_URL_WS, frame, n),
                     "the server answered ringbus frames, not HTTP: is this a tcp:// URL?");
    ck_assert_str_eq(rb_client_answer_hint(RB_URL_TLS, frame, n),
                     "the server answered plain ringbus frames, not TLS: is this a tcp:// URL?");
    ck_assert_str_eq(rb_client_answer_hint(RB_URL_TLS, http, sizeof http - 1),
                     "the server answered plain HTTP, not TLS: is this a ws:// URL?");
    ck_assert_str_eq(rb_client_answer_hint(RB_URL_WSS, frame, n),
                     "the server answered ringbus frames, not HTTP: is this a tls:// URL?");
}
END_TEST

START_TEST(test_client_answer_hint_stays_quiet_when_unsure)
{
    static const uint8_t http[] = "HTTP/1.1 101 Switching Protocols\r\n";
    uint8_t frame[64];
    size_t n = rb_frame_encode_error(frame, sizeof frame, 0, RB_WIRE_TOO_LARGE,
                                     (rb_bytes){(const uint8_t *)"x", 1});
    /* What the layer expects, too few bytes to tell, and noise. */
    ck_assert_ptr_null(rb_client_answer_hint(RB_URL_WS, http, sizeof http - 1));
    ck_assert_ptr_null(rb_client_answer_hint(RB_URL_TCP, frame, n));
    ck_assert_ptr_null(rb_client_answer_hint(RB_URL_TCP, (const uint8_t *)"HTTP", 4));
    ck_assert_ptr_null(rb_client_answer_hint(RB_URL_WS, frame, RB_FRAME_HEADER_BYTES - 1));
    ck_assert_ptr_null(rb_client_answer_hint(RB_URL_TCP, (const uint8_t *)"", 0));
    ck_assert_ptr_null(rb_client_answer_hint(RB_URL_TLS, (const uint8_t *)"\x16\x03\x03", 3));
    ck_assert_ptr_null(rb_client_answer_hint(RB_URL_QUIC, http, sizeof http - 1));
}
END_TEST

Suite *rb_client_suite(void);

Suite *rb_client_suite(void)
{
    Suite *s = suite_create("client");
    TCase *hint = tcase_create("answer hints");
    tcase_add_test(hint, test_client_answer_hint_names_http_tls_and_plain_frames);
    tcase_add_test(hint, test_client_answer_hint_stays_quiet_when_unsure);
    suite_add_tcase(s, hint);
    TCase *url = tcase_create("url");
    tcase_add_test(url, test_url_tcp_with_port_parses);
    tcase_add_test(url, test_url_without_port_uses_scheme_default);
    tcase_add_test(url, test_url_ipv6_literal_needs_brackets_and_parses);
    tcase_add_test(url, test_url_ws_keeps_its_path);
    tcase_add_test(url, test_url_malformed_is_rejected_with_a_message);
    tcase_add_test(url, test_url_longer_than_limit_is_rejected);
    suite_add_tcase(s, url);
    TCase *json = tcase_create("json");
    tcase_add_test(json, test_json_string_escapes_quotes_backslash_and_controls);
    tcase_add_test(json, test_json_u64_prints_the_full_range);
    suite_add_tcase(s, json);
    TCase *cmd = tcase_create("cmd");
    tcase_add_test(cmd, test_cmd_full_mutate_parses_every_field);
    tcase_add_test(cmd, test_cmd_remove_only_needs_no_mutate_id);
    tcase_add_test(cmd, test_cmd_close_and_publish_parse);
    tcase_add_test(cmd, test_cmd_malformed_lines_are_rejected_with_a_reason);
    tcase_add_test(cmd, test_cmd_topic_of_255_bytes_is_accepted_and_256_rejected);
    tcase_add_test(cmd, test_cmd_strings_decode_escapes_surrogates_and_nul);
    tcase_add_test(cmd, test_cmd_malformed_json_is_rejected_with_its_column);
    tcase_add_test(cmd, test_cmd_errors_name_the_column_and_the_token);
    tcase_add_test(cmd, test_cmd_integers_above_int64_max_are_read_as_u64);
    tcase_add_test(cmd, test_cmd_integers_above_u64_and_stand_ins_are_refused_by_field);
    tcase_add_test(cmd, test_cmd_deep_nesting_is_refused_without_crashing);
    suite_add_tcase(s, cmd);
    TCase *conn = tcase_create("conn");
    tcase_set_timeout(conn, 30);
    tcase_add_test(conn, test_client_connect_reports_started_fields);
    tcase_add_test(conn, test_client_answers_server_ping_with_pong);
    tcase_add_test(conn, test_client_publish_sync_returns_the_seq);
    tcase_add_test(conn, test_client_rpc_register_call_and_respond);
    tcase_add_test(conn, test_client_publish_error_ack_carries_wire_code);
    tcase_add_test(conn, test_client_pipelines_publishes_through_a_small_window);
    tcase_add_test(conn, test_client_full_window_refuses_with_eagain);
    tcase_add_test(conn, test_client_publish_arguments_are_checked);
    tcase_add_test(conn, test_client_mutate_id_range_is_checked);
    tcase_add_test(conn, test_client_ws_origin_is_checked_before_connecting);
    tcase_add_test(conn, test_client_mutate_yields_messages_live_and_complete_in_order);
    tcase_add_test(conn, test_client_mutate_carries_the_epoch_and_topic_error_is_an_event);
    tcase_add_test(conn, test_client_event_callback_receives_each_event_once);
    tcase_add_test(conn, test_client_half_close_refuses_new_requests);
    tcase_add_test(conn, test_client_server_eof_yields_closed_unavailable);
    tcase_add_test(conn, test_client_frame_above_max_closes_with_too_large);
    tcase_add_test(conn, test_client_pending_publishes_fail_once_on_close);
    tcase_add_test(conn, test_client_connect_refused_names_the_url);
    tcase_add_test(conn, test_client_connect_times_out_without_started);
    tcase_add_test(conn, test_client_connect_refused_by_server_is_eserver);
    tcase_add_test(conn, test_client_unsupported_scheme_and_bad_url_fail_clearly);
    tcase_add_test(conn, test_client_names_codes);
    tcase_add_test(conn, test_session_ring_wraps_and_answers_every_publish_once_in_order);
    suite_add_tcase(s, conn);
    return s;
}
