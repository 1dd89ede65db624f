/* Unit tests of the [auth] section and the connection limits of
 * config/config.c: modes, users with hashes and permission patterns, JWT
 * keys with their files, limits, and every refusal with file:line:column. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "config/config.h"

Suite *rb_auth_config_suite(void);

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define HASH     "$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
#define SECRET   "0123456789abcdef0123456789abcdef"
#define PUBKEY                                                                                     \
    "-----BEGIN PUBLIC KEY-----\n"                                                                 \
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"                                                       \
    "-----END PUBLIC KEY-----\n"

static rb_config cfg;
static char secret_path[64];
static char short_path[64];
static char pub_path[64];

static void write_file(char *path, const char *text)
{
    snprintf(path, 64, "/tmp/rb_auth_cfg_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static void setup(void)
{
    write_file(secret_path, SECRET "\n");
    write_file(short_path, "short\n");
    write_file(pub_path, PUBKEY);
}

static void teardown(void)
{
    unlink(secret_path);
    unlink(short_path);
    unlink(pub_path);
}

/* Expands @SECRET@, @SHORT@ and @PUB@ to the temporary files. */
static const char *expand(const char *text)
{
    static char out[8192];
    size_t n = 0;
    while (*text != '\0' && n < sizeof out - 80) {
        const char *with = NULL;
        size_t skip = 0;
        if (strncmp(text, "@SECRET@", 8) == 0) {
            with = secret_path, skip = 8;
        } else if (strncmp(text, "@SHORT@", 7) == 0) {
            with = short_path, skip = 7;
        } else if (strncmp(text, "@PUB@", 5) == 0) {
            with = pub_path, skip = 5;
        }
        if (with != NULL) {
            n += (size_t)snprintf(out + n, sizeof out - n, "%s", with);
            text += skip;
        } else {
            out[n++] = *text++;
        }
    }
    out[n] = '\0';
    return out;
}

static const rb_config *load_ok(const char *text)
{
    rb_err err = {0};
    const char *t = expand(text);
    int rc = rb_config_load_string(t, strlen(t), "c.toml", &cfg, &err);
    ck_assert_msg(rc == 0, "load failed: %s", err.msg);
    return &cfg;
}

static void expect_error(const char *text, const char *msg)
{
    rb_err err = {0};
    const char *t = expand(text);
    int rc = rb_config_load_string(t, strlen(t), "c.toml", &cfg, &err);
    ck_assert_msg(rc == RB_ECONFIG, "input %s: want RB_ECONFIG, got %d", t, rc);
    ck_assert_msg(strstr(err.msg, msg) != NULL, "want \"%s\" in \"%s\"", msg, err.msg);
}

static bool pattern_is(const rb_config *c, uint32_t i, const char *want)
{
    rb_bytes b = rb_config_pattern(c, i);
    return b.len == strlen(want) && memcmp(b.ptr, want, b.len) == 0;
}

START_TEST(test_auth_config_defaults_are_mode_none_and_documented_limits)
{
    const rb_config *c = load_ok("");
    ck_assert_int_eq(c->auth_mode, RB_AUTH_MODE_NONE);
    ck_assert_uint_eq(c->auth_failure_delay_ms, 1000);
    ck_assert_uint_eq(c->auth_failures_per_minute, 30);
    ck_assert_uint_eq(c->auth_clock_skew_s, 30);
    ck_assert_uint_eq(c->auth_workers, 2);
    ck_assert_uint_eq(c->auth_user_count, 0);
    ck_assert_uint_eq(c->auth_jwt_key_count, 0);
    ck_assert_uint_eq(c->max_connections_total, 65536);
    ck_assert_uint_eq(c->max_connections_per_address, 1024);
    ck_assert_uint_eq(c->connection_rate_per_address, 1000);
    ck_assert_uint_eq(c->publish_rate, 1000000000);
    ck_assert_uint_eq(c->publish_burst, 1000000000);
    ck_assert_uint_eq(c->mutates_per_second, 1000);
    ck_assert_uint_eq(c->listeners[0].max_connections, 65536);
}
END_TEST

START_TEST(test_auth_config_users_keys_and_limits_are_loaded)
{
    const rb_config *c = load_ok("[limits]\nmax_connections_total = 500\npublish_rate = 10\n"
                                 "mutates_per_second = 7\nmax_connections_per_address = 9\n"
                                 "connection_rate_per_address = 3\n"
                                 "[auth]\nmode = \"required\"\nfailure_delay_ms = 5\n"
                                 "clock_skew_s = 0\nworkers = 4\nfailures_per_minute = 2\n"
                                 "[[auth.user]]\nname = \"alice\"\npassword_hash = \"" HASH "\"\n"
                                 "publish = [\"orders.>\"]\n"
                                 "subscribe = [\"orders.*\", \"news.>\"]\n"
                                 "subscribe_deny = [\"orders.secret\"]\npublish_rate = 3\n"
                                 "[[auth.user]]\nname = \"bob\"\n"
                                 "[[auth.jwt_key]]\nkid = \"k1\"\nalgorithm = \"HS256\"\n"
                                 "secret_file = \"@SECRET@\"\n"
                                 "[[auth.jwt_key]]\nalgorithm = \"ES256\"\n"
                                 "public_key_file = \"@PUB@\"\n"
                                 "[[listener]]\ntransport = \"tcp\"\nmax_connections = 20\n");
    ck_assert_int_eq(c->auth_mode, RB_AUTH_MODE_REQUIRED);
    ck_assert_uint_eq(c->auth_failure_delay_ms, 5);
    ck_assert_uint_eq(c->auth_clock_skew_s, 0);
    ck_assert_uint_eq(c->auth_workers, 4);
    ck_assert_uint_eq(c->auth_failures_per_minute, 2);
    ck_assert_uint_eq(c->max_connections_total, 500);
    ck_assert_uint_eq(c->max_connections_per_address, 9);
    ck_assert_uint_eq(c->connection_rate_per_address, 3);
    ck_assert_uint_eq(c->publish_rate, 10);
    ck_assert_uint_eq(c->publish_burst, 10); /* follows the rate */
    ck_assert_uint_eq(c->mutates_per_second, 7);
    ck_assert_uint_eq(c->listeners[0].max_connections, 20);
    ck_assert_uint_eq(c->auth_user_count, 2);
    const rb_auth_user_config *a = &c->auth_users[0];
    ck_assert_str_eq(a->name, "alice");
    ck_assert_str_eq(a->password_hash, HASH);
    ck_assert_uint_eq(a->publish_rate, 3);
    ck_assert_str_eq(a->where, "c.toml:13:1: auth.user[1]");
    ck_assert_uint_eq(a->lists[RB_PERM_PUBLISH].count, 1);
    ck_assert(pattern_is(c, a->lists[RB_PERM_PUBLISH].first, "orders.>"));
    ck_assert_uint_eq(a->lists[RB_PERM_SUBSCRIBE].count, 2);
    ck_assert(pattern_is(c, a->lists[RB_PERM_SUBSCRIBE].first + 1, "news.>"));
    ck_assert_uint_eq(a->lists[RB_PERM_SUBSCRIBE_DENY].count, 1);
    ck_assert(pattern_is(c, a->lists[RB_PERM_SUBSCRIBE_DENY].first, "orders.secret"));
    ck_assert_uint_eq(a->lists[RB_PERM_PUBLISH_DENY].count, 0);
    ck_assert_str_eq(c->auth_users[1].name, "bob");
    ck_assert_str_eq(c->auth_users[1].password_hash, "");
    ck_assert_uint_eq(c->auth_jwt_key_count, 2);
    ck_assert_str_eq(c->auth_jwt_keys[0].kid, "k1");
    ck_assert_int_eq(c->auth_jwt_keys[0].algorithm, RB_JWT_HS256);
    ck_assert_str_eq(c->auth_jwt_keys[0].path, secret_path);
    ck_assert_int_eq(c->auth_jwt_keys[1].algorithm, RB_JWT_ES256);
    ck_assert_str_eq(c->auth_jwt_keys[1].kid, "");
    ck_assert_str_eq(rb_jwt_alg_name(RB_JWT_RS256), "RS256");
}
END_TEST

START_TEST(test_auth_config_explicit_burst_is_kept)
{
    const rb_config *c = load_ok("[limits]\npublish_rate = 10\npublish_burst = 50\n");
    ck_assert_uint_eq(c->publish_burst, 50);
}
END_TEST

static const struct {
    const char *text;
    const char *msg;
} auth_errors[] = {
    {"[auth]\nmode = \"open\"\n", "c.toml:2:8: auth.mode: \"open\" is not one of none, required"},
    {"[auth]\nmode = \"required\"\n",
     "c.toml:2:8: auth.mode: \"required\" needs a [[auth.jwt_key]], a [[auth.user]] with a "
     "password_hash, or users and a listener with client_ca"},
    {"[auth]\nmode = \"required\"\n[[auth.user]]\nname = \"bob\"\n", "c.toml:2:8: auth.mode"},
    {"[auth]\nclock_skew_s = 301\n",
     "c.toml:2:16: auth.clock_skew_s: 301 is out of range [0, 300]"},
    {"[auth]\nworkers = 0\n", "auth.workers: 0 is out of range [1, 16]"},
    {"[auth]\nfailure_delay_ms = 0\n", "auth.failure_delay_ms: 0 is out of range [1, 60000]"},
    {"[limits]\npublish_rate = 0\n", "limits.publish_rate: 0 is out of range"},
    {"[limits]\nmax_connections_per_address = 0\n", "limits.max_connections_per_address: 0"},
    {"[[listener]]\ntransport = \"tcp\"\nmax_connections = 0\n",
     "c.toml:3:19: listener[1].max_connections: 0 is out of range"},
    {"[[auth.user]]\npassword_hash = \"" HASH "\"\n",
     "c.toml:1:1: auth.user[1]: missing required key \"name\""},
    {"[[auth.user]]\nname = \"a b\"\n",
     "c.toml:2:8: auth.user[1].name: control character or space at byte 1"},
    {"[[auth.user]]\nname = \"\"\n", "c.toml:2:8: auth.user[1].name: must be 1..255 bytes"},
    {"[[auth.user]]\nname = \"anon-7\"\n",
     "c.toml:2:8: auth.user[1].name: must not start with \"anon-\" (server-assigned ids)"},
    {"[[auth.user]]\nname = \"a\"\n[[auth.user]]\nname = \"a\"\n",
     "c.toml:4:8: auth.user[2]: name \"a\" already used by auth.user[1] (at 1:1)"},
    {"[[auth.user]]\nname = \"a\"\npasword_hash = \"x\"\n",
     "c.toml:3:1: unknown key \"auth.user.pasword_hash\" (did you mean "
     "\"auth.user.password_hash\"?)"},
    {"[[auth.user]]\nname = \"a\"\npassword_hash = \"$2b$10$abc\"\n",
     "c.toml:3:17: auth.user[1].password_hash: not an argon2id hash (make one with ringbusd "
     "--hash-password)"},
    {"[[auth.user]]\nname = \"a\"\npassword_hash = \"$argon2id$v=19$m=65536$x$y\"\n",
     "auth.user[1].password_hash: expected $argon2id$v=19$m=M,t=T,p=P$salt$hash"},
    {"[[auth.user]]\nname = \"a\"\n"
     "password_hash = \"$argon2id$v=19$m=4194304,t=3,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\n",
     "auth.user[1].password_hash: m=4194304,t=3,p=1 outside m in [8, 262144]"},
    {"[[auth.user]]\nname = \"a\"\npassword_hash = \"$argon2id$v=19$m=65536,t=3,p=1$c2$aGFz\"\n",
     "auth.user[1].password_hash: salt (>= 8 bytes) or hash (>= 16 bytes) is not base64"},
    {"[[auth.user]]\nname = \"a\"\npublish = \"orders.>\"\n",
     "c.toml:3:11: auth.user[1].publish: expected an array of topic patterns, got a string"},
    {"[[auth.user]]\nname = \"a\"\nsubscribe = [\"ok\", \"a.>.b\"]\n",
     "c.toml:3:20: auth.user[1].subscribe[2]: pattern: '>' must be the last segment (byte 2)"},
    {"[[auth.user]]\nname = \"a\"\npublish_deny = [\"x*\"]\n",
     "c.toml:3:17: auth.user[1].publish_deny[1]: pattern: '*' and '>' must be a whole segment"},
    {"[[auth.user]]\nname = \"a\"\npublish = [1]\n",
     "auth.user[1].publish[1]: expected a string, got an integer"},
    {"[[auth.jwt_key]]\nsecret_file = \"@SECRET@\"\n",
     "c.toml:1:1: auth.jwt_key[1]: missing required key \"algorithm\" (HS256, RS256, ES256)"},
    {"[[auth.jwt_key]]\nalgorithm = \"none\"\n",
     "c.toml:2:13: auth.jwt_key[1].algorithm: \"none\" is not one of HS256, RS256, ES256"},
    {"[[auth.jwt_key]]\nalgorithm = \"HS256\"\n",
     "c.toml:1:1: auth.jwt_key[1]: HS256 needs \"secret_file\""},
    {"[[auth.jwt_key]]\nalgorithm = \"RS256\"\nsecret_file = \"@SECRET@\"\n",
     "c.toml:3:15: auth.jwt_key[1].secret_file: RS256 takes \"public_key_file\", not "
     "\"secret_file\""},
    {"[[auth.jwt_key]]\nalgorithm = \"HS256\"\npublic_key_file = \"@PUB@\"\n",
     "auth.jwt_key[1].public_key_file: HS256 takes \"secret_file\", not \"public_key_file\""},
    {"[[auth.jwt_key]]\nalgorithm = \"HS256\"\nsecret_file = \"@SECRET@\"\n"
     "public_key_file = \"@PUB@\"\n",
     "c.toml:4:19: auth.jwt_key[1].public_key_file: give only one of secret_file and "
     "public_key_file"},
    {"[[auth.jwt_key]]\nalgorithm = \"HS256\"\nsecret_file = \"@SHORT@\"\n",
     "holds 5 bytes; HS256 needs at least 32"},
    {"[[auth.jwt_key]]\nalgorithm = \"ES256\"\npublic_key_file = \"@SECRET@\"\n",
     "holds no PEM public key (BEGIN PUBLIC KEY)"},
    {"[[auth.jwt_key]]\nalgorithm = \"HS256\"\nsecret_file = \"/nonexistent/jwt.secret\"\n",
     "c.toml:3:15: auth.jwt_key[1].secret_file: cannot read \"/nonexistent/jwt.secret\": No such "
     "file or directory"},
    {"[[auth.jwt_key]]\nkid = \"\"\nalgorithm = \"HS256\"\nsecret_file = \"@SECRET@\"\n",
     "c.toml:2:7: auth.jwt_key[1].kid: must not be empty"},
    {"[[auth.jwt_key]]\nkid = \"a\"\nalgorithm = \"HS256\"\nsecret_file = \"@SECRET@\"\n"
     "[[auth.jwt_key]]\nkid = \"a\"\nalgorithm = \"ES256\"\npublic_key_file = \"@PUB@\"\n",
     "auth.jwt_key[2]: kid \"a\" already used by auth.jwt_key[1]"},
    {"[[auth.jwt_key]]\nalgorithm = \"HS256\"\nsecret_file = \"@SECRET@\"\n"
     "[[auth.jwt_key]]\nalgorithm = \"ES256\"\npublic_key_file = \"@PUB@\"\n",
     "auth.jwt_key[2]: a second key without kid (auth.jwt_key[1] has none); give each a kid"},
    {"[[auth.jwt_key]]\nalgorithm = \"HS256\"\nsecret = \"x\"\n",
     "c.toml:3:1: unknown key \"auth.jwt_key.secret\""},
};

START_TEST(test_auth_config_error_names_file_line_column_and_key)
{
    expect_error(auth_errors[_i].text, auth_errors[_i].msg);
}
END_TEST

START_TEST(test_auth_config_required_with_a_token_key_or_password_user_loads)
{
    ck_assert_int_eq(load_ok("[auth]\nmode = \"required\"\n[[auth.jwt_key]]\nalgorithm = "
                             "\"HS256\"\nsecret_file = \"@SECRET@\"\n")
                         ->auth_mode,
                     RB_AUTH_MODE_REQUIRED);
    ck_assert_int_eq(load_ok("[auth]\nmode = \"required\"\n[[auth.user]]\nname = \"a\"\n"
                             "password_hash = \"" HASH "\"\n")
                         ->auth_user_count,
                     1);
}
END_TEST

START_TEST(test_auth_config_pattern_list_limit_is_enforced)
{
    static char text[64 * 1024];
    size_t n = (size_t)snprintf(text, sizeof text, "[[auth.user]]\nname = \"a\"\npublish = [");
    for (int i = 0; i <= 1024; i++) {
        n += (size_t)snprintf(text + n, sizeof text - n, "%s\"t%d\"", i ? "," : "", i);
    }
    snprintf(text + n, sizeof text - n, "]\n");
    expect_error(text, "auth.user[1].publish: more than 1024 patterns");
    /* Exactly 1024 loads. */
    char *last = strstr(text, ",\"t1024\"");
    ck_assert_ptr_nonnull(last);
    snprintf(last, 4, "]\n");
    ck_assert_uint_eq(load_ok(text)->auth_users[0].lists[RB_PERM_PUBLISH].count, 1024);
}
END_TEST

Suite *rb_auth_config_suite(void)
{
    Suite *s = suite_create("auth_config");
    TCase *tc = tcase_create("auth");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_auth_config_defaults_are_mode_none_and_documented_limits);
    tcase_add_test(tc, test_auth_config_users_keys_and_limits_are_loaded);
    tcase_add_test(tc, test_auth_config_explicit_burst_is_kept);
    tcase_add_loop_test(tc, test_auth_config_error_names_file_line_column_and_key, 0,
                        COUNT(auth_errors));
    tcase_add_test(tc, test_auth_config_required_with_a_token_key_or_password_user_loads);
    tcase_add_test(tc, test_auth_config_pattern_list_limit_is_enforced);
    suite_add_tcase(s, tc);
    return s;
}
