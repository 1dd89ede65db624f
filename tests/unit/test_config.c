/* Unit tests of config/config.c: defaults, every key landing in rb_config,
 * unknown keys, wrong types, ranges, checks across keys, listeners, files
 * and the shipped example. Tests that read config/ringbusd.example.toml run
 * from the repository root, as `make test-unit` does. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <check.h>

#include "common/limits.h"
#include "config/config.h"

#define COUNT(a)     (sizeof(a) / sizeof((a)[0]))
#define EXAMPLE_PATH "config/ringbusd.example.toml"

/* rb_config is about half a megabyte: tests keep it in static storage,
 * not on the stack. Each call reuses the same buffer. */
static const rb_config *load_ok(const char *text)
{
    static rb_config cfg;
    rb_err err = {0};
    int rc = rb_config_load_string(text, strlen(text), "c.toml", &cfg, &err);
    ck_assert_msg(rc == 0, "load failed: %s", err.msg);
    return &cfg;
}

static void expect_error(const char *text, const char *msg)
{
    static rb_config cfg;
    rb_err err = {0};
    int rc = rb_config_load_string(text, strlen(text), "c.toml", &cfg, &err);
    ck_assert_msg(rc == RB_ECONFIG, "input %s: want RB_ECONFIG, got %d", text, rc);
    ck_assert_str_eq(err.msg, msg);
}

typedef struct error_case {
    const char *text;
    const char *msg;
} error_case;

/* Writes len bytes to a new temporary file; returns its path (static). */
static const char *temp_file(const char *bytes, size_t len)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/rb_config_test_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, bytes + done, len - done);
        ck_assert_int_gt(n, 0);
        done += (size_t)n;
    }
    close(fd);
    return path;
}

/* Reads a whole file into a NUL-terminated heap buffer. */
static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s (run from the repository root)", path);
    char *buf = malloc(RB_CONFIG_FILE_BYTES_MAX + 1);
    ck_assert_ptr_nonnull(buf);
    size_t n = fread(buf, 1, RB_CONFIG_FILE_BYTES_MAX, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* ---- defaults ---- */

START_TEST(test_config_defaults_match_the_design)
{
    static rb_config cfg;
    rb_config_defaults(&cfg);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    ck_assert_uint_eq(cfg.shards, cpus < 1 ? 1 : cpus > RB_SHARDS_MAX ? RB_SHARDS_MAX : cpus);
    ck_assert(!cfg.pin_shards);
    ck_assert_str_eq(cfg.log_level, "info");
    ck_assert_uint_eq(cfg.max_connections, RB_CONNS_PER_SHARD_DEFAULT);
    ck_assert_uint_eq(cfg.max_frame_bytes, 1u << 20);
    ck_assert_uint_eq(cfg.send_queue_bytes, 8u << 20);
    ck_assert_uint_eq(cfg.pending_buffer_bytes, 64u << 20);
    ck_assert_uint_eq(cfg.topics_per_stream, 100000);
    ck_assert_uint_eq(cfg.rpc_calls_per_connection, 256);
    ck_assert_uint_eq(cfg.rpc_serves_per_connection, 256);
    ck_assert_uint_eq(cfg.rpc_methods_per_connection, 64);
    ck_assert_uint_eq(cfg.keepalive_ms, 30000);
    ck_assert_uint_eq(cfg.pong_timeout_ms, 30000);
    ck_assert_uint_eq(cfg.handshake_timeout_ms, 10000);
    ck_assert_uint_eq(cfg.close_grace_ms, 2000);
    ck_assert_uint_eq(cfg.catchup_topics_per_query, 256);
    ck_assert_uint_eq(cfg.catchup_rows_per_topic, 64);
    ck_assert_uint_eq(cfg.catchup_queries_in_flight, 4);
    ck_assert_int_eq(cfg.storage_backend, RB_STORAGE_MEMORY);
    ck_assert_uint_eq(cfg.memory_retention_messages, 100000);
    ck_assert_uint_eq(cfg.memory_retention_bytes, 64ull << 20);
    ck_assert_str_eq(cfg.pg_conninfo, "");
    ck_assert_str_eq(cfg.pg_password_file, "");
    ck_assert_uint_eq(cfg.pg_pool_size, 2);
    ck_assert_uint_eq(cfg.pg_statement_timeout_ms, 5000);
    ck_assert_uint_eq(cfg.pg_batch_messages, 1024);
    ck_assert_uint_eq(cfg.pg_retention_messages, 0);
    ck_assert_uint_eq(cfg.pg_retention_age_s, 0);
    ck_assert_uint_eq(cfg.listener_count, 1);
    ck_assert_int_eq(cfg.listeners[0].transport, RB_TRANSPORT_TCP);
    ck_assert_str_eq(cfg.listeners[0].address, "127.0.0.1");
    ck_assert_uint_eq(cfg.listeners[0].port, 7400);
}
END_TEST

START_TEST(test_config_default_server_id_is_the_hostname)
{
    char host[HOST_NAME_MAX + 1] = {0};
    ck_assert_int_eq(gethostname(host, sizeof host), 0);
    static rb_config cfg;
    rb_config_defaults(&cfg);
    ck_assert_int_eq(strncmp(cfg.server_id, host, RB_SERVER_ID_BYTES_MAX), 0);
    ck_assert_uint_gt(strlen(cfg.server_id), 0);
}
END_TEST

START_TEST(test_config_empty_file_gives_the_defaults)
{
    static rb_config want;
    rb_config_defaults(&want);
    const rb_config *cfg = load_ok("");
    ck_assert_mem_eq(cfg, &want, sizeof want);
    cfg = load_ok("# nothing\n[limits]\n[storage.postgres]\n");
    ck_assert_mem_eq(cfg, &want, sizeof want);
}
END_TEST

START_TEST(test_config_transport_names_are_stable)
{
    ck_assert_str_eq(rb_transport_name(RB_TRANSPORT_TCP), "tcp");
    ck_assert_str_eq(rb_transport_name(RB_TRANSPORT_TLS), "tls");
    ck_assert_str_eq(rb_transport_name(RB_TRANSPORT_WS), "ws");
    ck_assert_str_eq(rb_transport_name(RB_TRANSPORT_WSS), "wss");
    ck_assert_str_eq(rb_transport_name(RB_TRANSPORT_QUIC), "quic");
}
END_TEST

/* ---- values ---- */

START_TEST(test_config_every_key_lands_in_its_field)
{
    const rb_config *cfg =
        load_ok("shards = 3\npin_shards = true\nlog_level = 'debug'\n"
                "server_id = \"n-7\"\n"
                "[limits]\nmax_connections = 100\nmax_frame_bytes = 0x10000\n"
                "send_queue_bytes = 1_000_000\npending_buffer_bytes = 2_000_000\n"
                "topics_per_stream = 50\nshard_block_envelopes = 4\n"
                "[timeouts]\nkeepalive_ms = 1\npong_timeout_ms = 2\n"
                "handshake_timeout_ms = 3\nclose_grace_ms = 86_400_000\n"
                "[catchup]\ntopics_per_query = 4096\nrows_per_topic = 1\n"
                "queries_in_flight = 64\n"
                "[storage]\nbackend = 'postgres'\n"
                "memory = { retention_messages = 7, retention_bytes = 8 }\n"
                "[storage.postgres]\nconninfo = 'dbname=rb'\npool_size = 64\n"
                "statement_timeout_ms = 9\nbatch_messages = 10\n"
                "retention_messages = 11\nretention_age_s = 12\n");
    ck_assert_uint_eq(cfg->shards, 3);
    ck_assert(cfg->pin_shards);
    ck_assert_str_eq(cfg->log_level, "debug");
    ck_assert_str_eq(cfg->server_id, "n-7");
    ck_assert_uint_eq(cfg->max_connections, 100);
    ck_assert_uint_eq(cfg->max_frame_bytes, 65536);
    ck_assert_uint_eq(cfg->send_queue_bytes, 1000000);
    ck_assert_uint_eq(cfg->pending_buffer_bytes, 2000000);
    ck_assert_uint_eq(cfg->topics_per_stream, 50);
    ck_assert_uint_eq(cfg->shard_block_envelopes, 4);
    ck_assert_uint_eq(cfg->keepalive_ms, 1);
    ck_assert_uint_eq(cfg->pong_timeout_ms, 2);
    ck_assert_uint_eq(cfg->handshake_timeout_ms, 3);
    ck_assert_uint_eq(cfg->close_grace_ms, 86400000);
    ck_assert_uint_eq(cfg->catchup_topics_per_query, 4096);
    ck_assert_uint_eq(cfg->catchup_rows_per_topic, 1);
    ck_assert_uint_eq(cfg->catchup_queries_in_flight, 64);
    ck_assert_int_eq(cfg->storage_backend, RB_STORAGE_POSTGRES);
    ck_assert_uint_eq(cfg->memory_retention_messages, 7);
    ck_assert_uint_eq(cfg->memory_retention_bytes, 8);
    ck_assert_str_eq(cfg->pg_conninfo, "dbname=rb");
    ck_assert_uint_eq(cfg->pg_pool_size, 64);
    ck_assert_uint_eq(cfg->pg_statement_timeout_ms, 9);
    ck_assert_uint_eq(cfg->pg_batch_messages, 10);
    ck_assert_uint_eq(cfg->pg_retention_messages, 11);
    ck_assert_uint_eq(cfg->pg_retention_age_s, 12);
}
END_TEST

/* [dedup] keys land in their fields whatever comes after them (a later
 * backend = "memory" once reset them to the defaults). */
START_TEST(test_config_dedup_keys_land_before_and_after_the_backend)
{
    static const char *const texts[] = {
        "[dedup]\nwindow_ms = 500\nkeys_per_topic = 7\nkeys_per_shard = 9\n"
        "[storage]\nbackend = 'memory'\n",
        "[storage]\nbackend = 'memory'\n"
        "[dedup]\nwindow_ms = 500\nkeys_per_topic = 7\nkeys_per_shard = 9\n",
    };
    for (size_t i = 0; i < COUNT(texts); i++) {
        const rb_config *cfg = load_ok(texts[i]);
        ck_assert_uint_eq(cfg->dedup_window_ms, 500);
        ck_assert_uint_eq(cfg->dedup_keys_per_topic, 7);
        ck_assert_uint_eq(cfg->dedup_keys_per_shard, 9);
    }
}
END_TEST

START_TEST(test_config_dotted_keys_reach_sections)
{
    const rb_config *cfg =
        load_ok("limits.max_frame_bytes = 8192\nstorage.memory.retention_bytes = 5\n");
    ck_assert_uint_eq(cfg->max_frame_bytes, 8192);
    ck_assert_uint_eq(cfg->memory_retention_bytes, 5);
}
END_TEST

START_TEST(test_config_range_bounds_are_inclusive)
{
    const rb_config *cfg =
        load_ok("shards = 256\n[limits]\nmax_frame_bytes = 4096\nsend_queue_bytes = 4096\n"
                "pending_buffer_bytes = 4096\n");
    ck_assert_uint_eq(cfg->shards, 256);
    ck_assert_uint_eq(cfg->send_queue_bytes, 4096);
    cfg = load_ok("shards = 1\n[limits]\nmax_frame_bytes = 67108864\n"
                  "send_queue_bytes = 1073741824\npending_buffer_bytes = 1073741824\n");
    ck_assert_uint_eq(cfg->shards, 1);
    ck_assert_uint_eq(cfg->max_frame_bytes, RB_FRAME_BYTES_MAX);
}
END_TEST

/* ---- unknown keys ---- */

static const error_case unknown_keys[] = {
    {"colour = 1", "c.toml:1:1: unknown key \"colour\""},
    {"# c\n\n[limits]\nmax_frame_byte = 4096", "c.toml:4:1: unknown key \"limits.max_frame_byte\" "
                                               "(did you mean \"limits.max_frame_bytes\"?)"},
    {"[limit]", "c.toml:1:2: unknown key \"limit\" (did you mean \"limits\"?)"},
    {"limits.Max_Frame_Bytes = 1", "c.toml:1:8: unknown key \"limits.Max_Frame_Bytes\" (did you "
                                   "mean \"limits.max_frame_bytes\"?)"},
    {"shard = 2", "c.toml:1:1: unknown key \"shard\" (did you mean \"shards\"?)"},
    {"[storage.postgres]\nconn_info = 'x'",
     "c.toml:2:1: unknown key \"storage.postgres.conn_info\" (did you mean "
     "\"storage.postgres.conninfo\"?)"},
    {"[storage.disk]", "c.toml:1:10: unknown key \"storage.disk\""},
    {"[timeouts]\nidle_ms = 5", "c.toml:2:1: unknown key \"timeouts.idle_ms\""},
    {"[[listener]]\ntransport = 'tcp'\nprot = 1",
     "c.toml:3:1: unknown key \"listener[1].prot\" (did you mean \"listener[1].port\"?)"},
    {"[[listener]]\ntransport = 'tcp'\n[[listener]]\ntransport = 'ws'\nport = 1\nhostname = 'x'",
     "c.toml:6:1: unknown key \"listener[2].hostname\""},
    {"\"a\\nb\" = 1", "c.toml:1:1: unknown key \"a?b\""},
};

START_TEST(test_config_unknown_key_names_line_and_column)
{
    expect_error(unknown_keys[_i].text, unknown_keys[_i].msg);
}
END_TEST

/* ---- types ---- */

static const error_case wrong_types[] = {
    {"shards = '4'", "c.toml:1:10: shards: expected an integer, got a string"},
    {"pin_shards = 1", "c.toml:1:14: pin_shards: expected a boolean, got an integer"},
    {"log_level = 3", "c.toml:1:13: log_level: expected a string, got an integer"},
    {"server_id = []", "c.toml:1:13: server_id: expected a string, got an array"},
    {"limits = 5", "c.toml:1:10: limits: expected a table, got an integer"},
    {"[[limits]]", "c.toml:1:1: limits: expected a table, got an array"},
    {"[timeouts]\nkeepalive_ms = true",
     "c.toml:2:16: timeouts.keepalive_ms: expected an integer, got a boolean"},
    {"[storage]\nbackend = { a = 1 }",
     "c.toml:2:11: storage.backend: expected a string, got a table"},
    {"[storage.postgres]\nconninfo = 5",
     "c.toml:2:12: storage.postgres.conninfo: expected a string, got an integer"},
    {"[listener]\ntransport = 'tcp'",
     "c.toml:1:1: listener: expected an array of tables ([[listener]]), got a table"},
    {"listener = [1]", "c.toml:1:13: listener[1]: expected a table, got an integer"},
    {"[[listener]]\ntransport = 'tcp'\nport = '7400'",
     "c.toml:3:8: listener[1].port: expected an integer, got a string"},
    {"[[listener]]\ntransport = 1", "c.toml:2:13: listener[1].transport: expected a string, got an "
                                    "integer"},
    {"[[listener]]\ntransport = 'ws'\norigins = 'https://a'",
     "c.toml:3:11: listener[1].origins: expected an array of strings, got a string"},
    {"[[listener]]\ntransport = 'ws'\norigins = ['https://a', 2]",
     "c.toml:3:25: listener[1].origins[2]: expected a string, got an integer"},
    {"server_id = \"a\\u0000b\"", "c.toml:1:13: server_id: contains a NUL character"},
};

START_TEST(test_config_wrong_type_names_key_and_types)
{
    expect_error(wrong_types[_i].text, wrong_types[_i].msg);
}
END_TEST

/* ---- ranges ---- */

static const error_case zero_durations[] = {
    {"[timeouts]\nkeepalive_ms = 0",
     "c.toml:2:16: timeouts.keepalive_ms: 0 is out of range [1, 86400000]"},
    {"[timeouts]\npong_timeout_ms = 0",
     "c.toml:2:19: timeouts.pong_timeout_ms: 0 is out of range [1, 86400000]"},
    {"[timeouts]\nhandshake_timeout_ms = -5",
     "c.toml:2:24: timeouts.handshake_timeout_ms: -5 is out of range [1, 86400000]"},
    {"[timeouts]\nclose_grace_ms = 0",
     "c.toml:2:18: timeouts.close_grace_ms: 0 is out of range [1, 86400000]"},
    {"[timeouts]\nclose_grace_ms = 86400001",
     "c.toml:2:18: timeouts.close_grace_ms: 86400001 is out of range [1, 86400000]"},
    {"[storage.postgres]\nstatement_timeout_ms = 0",
     "c.toml:2:24: storage.postgres.statement_timeout_ms: 0 is out of range [1, 86400000]"},
};

START_TEST(test_config_zero_or_negative_duration_is_an_error)
{
    expect_error(zero_durations[_i].text, zero_durations[_i].msg);
}
END_TEST

static const error_case out_of_range[] = {
    {"shards = 0", "c.toml:1:10: shards: 0 is out of range [1, 256]"},
    {"shards = 257", "c.toml:1:10: shards: 257 is out of range [1, 256]"},
    {"[limits]\nmax_frame_bytes = 0",
     "c.toml:2:19: limits.max_frame_bytes: 0 is out of range [4096, 67108864]"},
    {"[limits]\nmax_frame_bytes = 4095",
     "c.toml:2:19: limits.max_frame_bytes: 4095 is out of range [4096, 67108864]"},
    {"[limits]\nmax_frame_bytes = 67108865",
     "c.toml:2:19: limits.max_frame_bytes: 67108865 is out of range [4096, 67108864]"},
    {"[limits]\nsend_queue_bytes = -1",
     "c.toml:2:20: limits.send_queue_bytes: -1 is out of range [1, 1073741824]"},
    {"[limits]\npending_buffer_bytes = 0",
     "c.toml:2:24: limits.pending_buffer_bytes: 0 is out of range [1, 1073741824]"},
    {"[limits]\nshard_block_envelopes = 3",
     "c.toml:2:25: limits.shard_block_envelopes: 3 is out of range [4, 65536]"},
    {"[limits]\nshard_block_envelopes = 65537",
     "c.toml:2:25: limits.shard_block_envelopes: 65537 is out of range [4, 65536]"},
    {"[limits]\nmax_connections = 0",
     "c.toml:2:19: limits.max_connections: 0 is out of range [1, 1048576]"},
    {"[limits]\nrpc_calls_per_connection = 65537",
     "c.toml:2:28: limits.rpc_calls_per_connection: 65537 is out of range [1, 65536]"},
    {"[limits]\ntopics_per_stream = 1000001",
     "c.toml:2:21: limits.topics_per_stream: 1000001 is out of range [1, 1000000]"},
    {"[catchup]\ntopics_per_query = 0",
     "c.toml:2:20: catchup.topics_per_query: 0 is out of range [1, 4096]"},
    {"[catchup]\nrows_per_topic = 4097",
     "c.toml:2:18: catchup.rows_per_topic: 4097 is out of range [1, 4096]"},
    {"[catchup]\nqueries_in_flight = 65",
     "c.toml:2:21: catchup.queries_in_flight: 65 is out of range [1, 64]"},
    {"[storage.memory]\nretention_messages = 0",
     "c.toml:2:22: storage.memory.retention_messages: 0 is out of range [1, 100000000]"},
    {"[storage.memory]\nretention_bytes = 0",
     "c.toml:2:19: storage.memory.retention_bytes: 0 is out of range [1, 1099511627776]"},
    {"[storage.postgres]\npool_size = 65",
     "c.toml:2:13: storage.postgres.pool_size: 65 is out of range [1, 64]"},
    {"[storage.postgres]\nbatch_messages = 0",
     "c.toml:2:18: storage.postgres.batch_messages: 0 is out of range [1, 65536]"},
    {"[storage.postgres]\nretention_age_s = -1",
     "c.toml:2:19: storage.postgres.retention_age_s: -1 is out of range [0, 3162240000]"},
    {"[[listener]]\ntransport = 'tcp'\nport = 0",
     "c.toml:3:8: listener[1].port: 0 is out of range [1, 65535]"},
    {"[[listener]]\ntransport = 'tcp'\nport = 65536",
     "c.toml:3:8: listener[1].port: 65536 is out of range [1, 65535]"},
};

START_TEST(test_config_out_of_range_value_names_key_and_range)
{
    expect_error(out_of_range[_i].text, out_of_range[_i].msg);
}
END_TEST

/* ---- enumerations and strings ---- */

static const error_case bad_strings[] = {
    {"log_level = 'verbose'",
     "c.toml:1:13: log_level: \"verbose\" is not one of error, warn, info, debug"},
    {"log_level = 'INFO'",
     "c.toml:1:13: log_level: \"INFO\" is not one of error, warn, info, debug"},
    {"server_id = ''", "c.toml:1:13: server_id: must not be empty"},
    {"server_id = 'a b'", "c.toml:1:13: server_id: must not contain spaces or control characters"},
    {"server_id = '01234567890123456789012345678901234567890123456789012345678901234'",
     "c.toml:1:13: server_id: 65 bytes is longer than the limit of 64"},
    {"[storage]\nbackend = 'sqlite'",
     "c.toml:2:11: storage.backend: \"sqlite\" is not one of memory, postgres"},
};

START_TEST(test_config_bad_string_value_is_explained)
{
    expect_error(bad_strings[_i].text, bad_strings[_i].msg);
}
END_TEST

/* STARTED may carry RB_SERVER_ID_BYTES_MAX bytes; the config takes as many. */
START_TEST(test_config_server_id_of_the_wire_maximum_loads)
{
    const rb_config *cfg =
        load_ok("server_id = '0123456789012345678901234567890123456789012345678901234567890123'");
    ck_assert_uint_eq(strlen(cfg->server_id), RB_SERVER_ID_BYTES_MAX);
}
END_TEST

START_TEST(test_config_every_log_level_is_accepted)
{
    const char *levels[] = {"error", "warn", "info", "debug"};
    for (size_t i = 0; i < COUNT(levels); i++) {
        char text[64];
        snprintf(text, sizeof text, "log_level = \"%s\"", levels[i]);
        const rb_config *cfg = load_ok(text);
        ck_assert_str_eq(cfg->log_level, levels[i]);
    }
}
END_TEST

START_TEST(test_config_server_id_at_limit_is_accepted)
{
    const rb_config *cfg =
        load_ok("server_id = '012345678901234567890123456789012345678901234567890123456789012'");
    ck_assert_uint_eq(strlen(cfg->server_id), RB_SERVER_ID_BYTES_MAX - 1);
}
END_TEST

/* ---- checks across keys ---- */

static const error_case cross_errors[] = {
    {"[limits]\nmax_frame_bytes = 16777216\nsend_queue_bytes = 1048576",
     "c.toml:3:20: limits.send_queue_bytes: 1048576 is less than limits.max_frame_bytes "
     "(16777216)"},
    /* Only the frame size is set: it is the value to blame. */
    {"[limits]\nmax_frame_bytes = 67108864\npending_buffer_bytes = 67108864",
     "c.toml:2:19: limits.send_queue_bytes: 8388608 is less than limits.max_frame_bytes "
     "(67108864)"},
    {"[limits]\nmax_frame_bytes = 8192\npending_buffer_bytes = 8191",
     "c.toml:3:24: limits.pending_buffer_bytes: 8191 is less than limits.max_frame_bytes (8192)"},
    {"[storage]\nbackend = 'postgres'",
     "c.toml:2:11: storage.backend: \"postgres\" needs storage.postgres.conninfo (a libpq "
     "connection string)"},
    {"[storage]\nbackend = 'postgres'\n[storage.postgres]\nconninfo = ''",
     "c.toml:2:11: storage.backend: \"postgres\" needs storage.postgres.conninfo (a libpq "
     "connection string)"},
    {"[storage.postgres]\npassword_file = '/nonexistent/ringbus/pw'",
     "c.toml:2:17: storage.postgres.password_file: cannot read \"/nonexistent/ringbus/pw\": No "
     "such file or directory"},
    {"[storage.postgres]\npassword_file = '/'",
     "c.toml:2:17: storage.postgres.password_file: \"/\" is not a regular file"},
};

START_TEST(test_config_cross_key_rule_names_the_key_set)
{
    expect_error(cross_errors[_i].text, cross_errors[_i].msg);
}
END_TEST

START_TEST(test_config_queues_equal_to_frame_size_are_accepted)
{
    const rb_config *cfg = load_ok("[limits]\nmax_frame_bytes = 65536\nsend_queue_bytes = 65536\n"
                                   "pending_buffer_bytes = 65536\n");
    ck_assert_uint_eq(cfg->pending_buffer_bytes, 65536);
}
END_TEST

START_TEST(test_config_readable_password_file_is_accepted)
{
    const char *path = temp_file("secret\n", 7);
    char text[256];
    snprintf(text, sizeof text,
             "[storage]\nbackend = 'postgres'\n[storage.postgres]\nconninfo = 'dbname=x'\n"
             "password_file = '%s'\n",
             path);
    const rb_config *cfg = load_ok(text);
    unlink(path);
    ck_assert_str_eq(cfg->pg_password_file, path);
    ck_assert_int_eq(cfg->storage_backend, RB_STORAGE_POSTGRES);
}
END_TEST

/* ---- listeners ---- */

START_TEST(test_config_listener_defaults_depend_on_transport)
{
    const rb_config *cfg =
        load_ok("[[listener]]\ntransport = 'tcp'\n"
                "[[listener]]\ntransport = 'tls'\ncert = 'c.pem'\nkey = 'k.pem'\n"
                "[[listener]]\ntransport = 'ws'\n"
                "[[listener]]\ntransport = 'wss'\ncert = 'c'\nkey = 'k'\n"
                "[[listener]]\ntransport = 'quic'\ncert = 'c'\nkey = 'k'\n"
                "client_ca = 'ca.pem'\n");
    ck_assert_uint_eq(cfg->listener_count, 5);
    for (uint32_t i = 0; i < 5; i++) {
        ck_assert_int_eq(cfg->listeners[i].transport, (rb_transport_kind)i);
        ck_assert_uint_eq(cfg->listeners[i].port, 7400 + i);
        ck_assert_str_eq(cfg->listeners[i].address, "127.0.0.1");
        ck_assert_uint_eq(cfg->listeners[i].origin_count, 0);
    }
    ck_assert_str_eq(cfg->listeners[0].path, "");
    ck_assert_str_eq(cfg->listeners[1].cert, "c.pem");
    ck_assert_str_eq(cfg->listeners[1].key, "k.pem");
    ck_assert_str_eq(cfg->listeners[1].client_ca, "");
    ck_assert_str_eq(cfg->listeners[2].path, "/ringbus");
    ck_assert_str_eq(cfg->listeners[3].path, "/ringbus");
    ck_assert_str_eq(cfg->listeners[4].client_ca, "ca.pem");
    ck_assert_int_eq(cfg->listeners[1].tls_library, RB_TLS_LIBRARY_OPENSSL);
    ck_assert_int_eq(cfg->listeners[3].tls_library, RB_TLS_LIBRARY_OPENSSL);
}
END_TEST

START_TEST(test_config_tls_library_is_per_listener)
{
    const rb_config *cfg = load_ok(
        "[[listener]]\ntransport = 'tls'\ncert = 'c'\nkey = 'k'\ntls_library = 'wolfssl'\n"
        "[[listener]]\ntransport = 'wss'\ncert = 'c'\nkey = 'k'\ntls_library = 'openssl'\n");
    ck_assert_int_eq(cfg->listeners[0].tls_library, RB_TLS_LIBRARY_WOLFSSL);
    ck_assert_int_eq(cfg->listeners[1].tls_library, RB_TLS_LIBRARY_OPENSSL);
}
END_TEST

START_TEST(test_config_listener_keys_are_loaded)
{
    const rb_config *cfg = load_ok("[[listener]]\ntransport = 'wss'\naddress = '::'\nport = 443\n"
                                   "cert = '/c'\nkey = '/k'\nclient_ca = '/ca'\npath = '/bus/v1'\n"
                                   "origins = ['https://a.example', 'https://b.example']\n");
    ck_assert_uint_eq(cfg->listener_count, 1);
    const rb_listener_config *l = &cfg->listeners[0];
    ck_assert_int_eq(l->transport, RB_TRANSPORT_WSS);
    ck_assert_str_eq(l->address, "::");
    ck_assert_uint_eq(l->port, 443);
    ck_assert_str_eq(l->client_ca, "/ca");
    ck_assert_str_eq(l->path, "/bus/v1");
    ck_assert_uint_eq(l->origin_count, 2);
    ck_assert_str_eq(l->origins[1], "https://b.example");
}
END_TEST

START_TEST(test_config_quic_retry_is_loaded)
{
    const rb_config *cfg = load_ok("[[listener]]\ntransport = 'quic'\ncert = '/c'\nkey = '/k'\n"
                                   "quic_retry = true\n[[listener]]\ntransport = 'quic'\n"
                                   "port = 7405\ncert = '/c'\nkey = '/k'\n");
    ck_assert_uint_eq(cfg->listener_count, 2);
    ck_assert(cfg->listeners[0].quic_retry);
    ck_assert_uint_eq(cfg->listeners[0].port, 7404);
    ck_assert(!cfg->listeners[1].quic_retry);
}
END_TEST

START_TEST(test_config_empty_listener_array_keeps_the_default)
{
    const rb_config *cfg = load_ok("listener = []\n");
    ck_assert_uint_eq(cfg->listener_count, 1);
    ck_assert_uint_eq(cfg->listeners[0].port, 7400);
}
END_TEST

START_TEST(test_config_listeners_up_to_the_limit_are_accepted)
{
    char text[4096];
    size_t n = 0;
    for (int i = 0; i < RB_LISTENERS_MAX; i++) {
        n += (size_t)snprintf(text + n, sizeof text - n, "[[listener]]\ntransport='tcp'\nport=%d\n",
                              8000 + i);
    }
    const rb_config *cfg = load_ok(text);
    ck_assert_uint_eq(cfg->listener_count, RB_LISTENERS_MAX);
    snprintf(text + n, sizeof text - n, "[[listener]]\ntransport='tcp'\nport=9000\n");
    expect_error(text, "c.toml:97:1: listener: more than 32 listeners");
}
END_TEST

START_TEST(test_config_listener_without_clash_is_accepted)
{
    /* Same port, different protocol; same port, different family; different ports. */
    const rb_config *cfg =
        load_ok("[[listener]]\ntransport = 'tcp'\nport = 7000\n"
                "[[listener]]\ntransport = 'quic'\nport = 7000\ncert='c'\nkey='k'\n"
                "[[listener]]\ntransport = 'tcp'\naddress = '::'\nport = 7000\n"
                "[[listener]]\ntransport = 'tcp'\naddress = '127.0.0.2'\nport = 7000\n"
                "[[listener]]\ntransport = 'ws'\nport = 7001\n");
    ck_assert_uint_eq(cfg->listener_count, 5);
}
END_TEST

static const error_case listener_errors[] = {
    {"[[listener]]\naddress = '0.0.0.0'",
     "c.toml:1:1: listener[1]: missing required key \"transport\" (one of tcp, tls, ws, wss, "
     "quic, http)"},
    {"[[listener]]\ntransport = 'https'",
     "c.toml:2:13: listener[1].transport: \"https\" is not one of tcp, tls, ws, wss, quic, "
     "http"},
    {"[[listener]]\ntransport = 'tcp'\naddress = 'localhost'",
     "c.toml:3:11: listener[1].address: \"localhost\" is not an IPv4 or IPv6 address literal"},
    {"[[listener]]\ntransport = 'tcp'\naddress = '[::1]'",
     "c.toml:3:11: listener[1].address: \"[::1]\" is not an IPv4 or IPv6 address literal (write "
     "IPv6 without brackets)"},
    {"[[listener]]\ntransport = 'tcp'\naddress = '1.2.3.256'",
     "c.toml:3:11: listener[1].address: \"1.2.3.256\" is not an IPv4 or IPv6 address literal"},
    {"[[listener]]\ntransport = 'tls'\nkey = 'k'",
     "c.toml:1:1: listener[1]: transport \"tls\" needs \"cert\" (a PEM file)"},
    {"\n[[listener]]\ntransport = 'wss'\ncert = 'c'",
     "c.toml:2:1: listener[1]: transport \"wss\" needs \"key\" (a PEM file)"},
    {"[[listener]]\ntransport = 'quic'\ncert = ''\nkey = 'k'",
     "c.toml:1:1: listener[1]: transport \"quic\" needs \"cert\" (a PEM file)"},
    {"[[listener]]\ntransport = 'tcp'\ncert = 'c'",
     "c.toml:3:1: listener[1].cert: not valid for transport \"tcp\" (only tls, wss, quic)"},
    {"[[listener]]\ntransport = 'ws'\nclient_ca = 'c'",
     "c.toml:3:1: listener[1].client_ca: not valid for transport \"ws\" (only tls, wss, quic)"},
    {"[[listener]]\ntransport = 'tls'\ncert='c'\nkey='k'\npath = '/x'",
     "c.toml:5:1: listener[1].path: not valid for transport \"tls\" (only ws, wss)"},
    {"[[listener]]\ntransport = 'quic'\norigins = []",
     "c.toml:3:1: listener[1].origins: not valid for transport \"quic\" (only ws, wss)"},
    {"[[listener]]\ntransport = 'tls'\ncert='c'\nkey='k'\nquic_retry = true",
     "c.toml:5:1: listener[1].quic_retry: not valid for transport \"tls\" (only quic)"},
    {"[[listener]]\ntransport = 'tls'\ncert='c'\nkey='k'\ntls_library = 'gnutls'",
     "c.toml:5:15: listener[1].tls_library: \"gnutls\" is not one of openssl, wolfssl"},
    {"[[listener]]\ntransport = 'quic'\ncert='c'\nkey='k'\ntls_library = 'openssl'",
     "c.toml:5:1: listener[1].tls_library: not valid for transport \"quic\" (only tls, wss)"},
    {"[[listener]]\ntransport = 'ws'\npath = 'ringbus'",
     "c.toml:3:8: listener[1].path: must start with '/'"},
    {"[[listener]]\ntransport = 'ws'\npath = '/a b'",
     "c.toml:3:8: listener[1].path: must be printable ASCII without spaces, '?' or '#'"},
    {"[[listener]]\ntransport = 'ws'\npath = '/a?b=1'",
     "c.toml:3:8: listener[1].path: must be printable ASCII without spaces, '?' or '#'"},
    {"[[listener]]\ntransport = 'ws'\norigins = ['']",
     "c.toml:3:12: listener[1].origins[1]: must not be empty"},
    {"[[listener]]\ntransport = 'ws'\norigins = ['1','2','3','4','5','6','7','8','9','10','11',"
     "'12','13','14','15','16','17']",
     "c.toml:3:83: listener[1].origins: more than 16 origins"},
};

START_TEST(test_config_bad_listener_is_explained)
{
    expect_error(listener_errors[_i].text, listener_errors[_i].msg);
}
END_TEST

static const error_case listener_clashes[] = {
    {"[[listener]]\ntransport = 'tcp'\n[[listener]]\ntransport = 'tcp'",
     "c.toml:3:1: listener[2]: 127.0.0.1 port 7400/tcp clashes with listener[1] (at 1:1)"},
    {"[[listener]]\ntransport = 'tcp'\n[[listener]]\ntransport = 'ws'\nport = 7400",
     "c.toml:3:1: listener[2]: 127.0.0.1 port 7400/tcp clashes with listener[1] (at 1:1)"},
    {"[[listener]]\ntransport = 'tcp'\naddress = '0.0.0.0'\n[[listener]]\ntransport = 'tcp'",
     "c.toml:4:1: listener[2]: 127.0.0.1 port 7400/tcp clashes with listener[1] (at 1:1)"},
    {"[[listener]]\ntransport = 'tcp'\naddress = '::1'\n[[listener]]\ntransport = 'tcp'\n"
     "[[listener]]\ntransport = 'tcp'\naddress = '0:0:0:0:0:0:0:1'",
     "c.toml:6:1: listener[3]: 0:0:0:0:0:0:0:1 port 7400/tcp clashes with listener[1] (at 1:1)"},
    {"[[listener]]\ntransport = 'quic'\ncert='c'\nkey='k'\nport=9\n"
     "[[listener]]\ntransport = 'quic'\ncert='c'\nkey='k'\nport=9\naddress='::'\n"
     "[[listener]]\ntransport = 'quic'\ncert='c'\nkey='k'\nport=9\naddress='::2'\n",
     "c.toml:12:1: listener[3]: ::2 port 9/udp clashes with listener[2] (at 6:1)"},
};

START_TEST(test_config_listeners_on_the_same_address_and_port_clash)
{
    expect_error(listener_clashes[_i].text, listener_clashes[_i].msg);
}
END_TEST

/* ---- syntax and files ---- */

START_TEST(test_config_syntax_error_names_the_file)
{
    static rb_config cfg;
    rb_err err = {0};
    const char *text = "[limits]\nmax_frame_bytes 4096\n";
    ck_assert_int_eq(rb_config_load_string(text, strlen(text), "ringbusd.toml", &cfg, &err),
                     RB_ECONFIG);
    ck_assert_str_eq(err.msg, "ringbusd.toml:2:17: expected '=' after key "
                              "\"limits.max_frame_bytes\", found '4'");
}
END_TEST

START_TEST(test_config_missing_file_is_a_system_error_naming_it)
{
    static rb_config cfg;
    rb_err err = {0};
    ck_assert_int_eq(rb_config_load_file("/nonexistent/ringbusd.toml", &cfg, &err), RB_ESYS);
    ck_assert_str_eq(err.msg, "config /nonexistent/ringbusd.toml: open: No such file or directory");
}
END_TEST

START_TEST(test_config_file_error_names_the_path)
{
    const char *text = "shards = 0\n";
    const char *path = temp_file(text, strlen(text));
    static rb_config cfg;
    rb_err err = {0};
    int rc = rb_config_load_file(path, &cfg, &err);
    unlink(path);
    ck_assert_int_eq(rc, RB_ECONFIG);
    char want[128];
    snprintf(want, sizeof want, "%s:1:10: shards: 0 is out of range [1, 256]", path);
    ck_assert_str_eq(err.msg, want);
}
END_TEST

/* A valid config of exactly len bytes: a setting, then comment lines. */
static char *padded_config(size_t len)
{
    char *text = malloc(len);
    ck_assert_ptr_nonnull(text);
    memset(text, 'x', len);
    memcpy(text, "shards = 2\n#", 12);
    for (size_t i = 80; i < len; i += 80) {
        text[i] = '\n';
        if (i + 1 < len) {
            text[i + 1] = '#';
        }
    }
    return text;
}

START_TEST(test_config_file_at_size_limit_loads)
{
    char *text = padded_config(RB_CONFIG_FILE_BYTES_MAX);
    const char *path = temp_file(text, RB_CONFIG_FILE_BYTES_MAX);
    free(text);
    static rb_config cfg;
    rb_err err = {0};
    int rc = rb_config_load_file(path, &cfg, &err);
    unlink(path);
    ck_assert_msg(rc == 0, "%s", err.msg);
    ck_assert_uint_eq(cfg.shards, 2);
}
END_TEST

START_TEST(test_config_file_one_byte_past_size_limit_fails)
{
    size_t len = (size_t)RB_CONFIG_FILE_BYTES_MAX + 1;
    char *text = padded_config(len);
    const char *path = temp_file(text, len);
    static rb_config cfg;
    rb_err err = {0};
    int rc = rb_config_load_file(path, &cfg, &err);
    unlink(path);
    ck_assert_int_eq(rc, RB_ECONFIG);
    char want[128];
    snprintf(want, sizeof want, "%s: file is larger than the limit of 1048576 bytes", path);
    ck_assert_str_eq(err.msg, want);
    rc = rb_config_load_string(text, len, "c.toml", &cfg, &err);
    ck_assert_int_eq(rc, RB_ECONFIG);
    ck_assert_str_eq(err.msg, "c.toml: 1048577 bytes is more than the limit of 1048576 bytes");
    free(text);
}
END_TEST

/* ---- the shipped example ---- */

START_TEST(test_config_example_file_loads_to_the_defaults)
{
    static rb_config want;
    rb_config_defaults(&want);
    static rb_config cfg;
    rb_err err = {0};
    int rc = rb_config_load_file(EXAMPLE_PATH, &cfg, &err);
    ck_assert_msg(rc == 0, "%s", err.msg);
    ck_assert_mem_eq(&cfg, &want, sizeof want);
}
END_TEST

/* Turns every "#key = value" and "#[section]" line into a setting. */
static void uncomment_settings(char *text)
{
    char *out = text;
    for (char *line = text; *line != '\0';) {
        char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) + 1 : strlen(line);
        bool setting = line[0] == '#' && (line[1] == '[' || (line[1] >= 'a' && line[1] <= 'z'));
        size_t skip = setting ? 1 : 0;
        memmove(out, line + skip, len - skip);
        out += len - skip;
        line += len;
    }
    *out = '\0';
}

START_TEST(test_config_example_settings_are_valid_and_show_the_defaults)
{
    char *text = read_all(EXAMPLE_PATH);
    uncomment_settings(text);
    /* The cluster sample needs a secret file and Postgres: checked in
     * test_config_example_cluster_section_is_valid. */
    char *cluster = strstr(text, "\n[cluster]\n");
    ck_assert_ptr_nonnull(cluster);
    cluster[1] = '\0';
    static rb_config cfg;
    rb_err err = {0};
    int rc = rb_config_load_string(text, strlen(text), "uncommented example", &cfg, &err);
    free(text);
    ck_assert_msg(rc == 0, "%s", err.msg);
    /* Machine-dependent defaults are shown with sample values. */
    ck_assert_uint_eq(cfg.shards, 4);
    ck_assert_str_eq(cfg.server_id, "node-1");
    ck_assert_uint_eq(cfg.listener_count, 6);
    for (uint32_t i = 0; i < 5; i++) {
        ck_assert_int_eq(cfg.listeners[i].transport, (rb_transport_kind)i);
        ck_assert_uint_eq(cfg.listeners[i].port, 7400 + i);
    }
    ck_assert_int_eq(cfg.listeners[5].transport, RB_TRANSPORT_HTTP);
    ck_assert_uint_eq(cfg.listeners[5].port, 7420);
    ck_assert_uint_eq(cfg.listeners[3].origin_count, 1);
    /* Everything else equals the embedded default. */
    static rb_config want;
    rb_config_defaults(&want);
    want.shards = cfg.shards;
    memcpy(want.server_id, cfg.server_id, sizeof want.server_id);
    want.listener_count = cfg.listener_count;
    memcpy(want.listeners, cfg.listeners, sizeof want.listeners);
    /* The topic class sample is one ephemeral class. */
    ck_assert_uint_eq(cfg.topic_class_count, 1);
    ck_assert_str_eq(cfg.topic_classes[0].pattern, "cursor.>");
    ck_assert_int_eq(cfg.topic_classes[0].storage, RB_TOPIC_EPHEMERAL);
    ck_assert(!cfg.topic_classes[0].echo);
    want.topic_class_count = cfg.topic_class_count;
    memcpy(want.topic_classes, cfg.topic_classes, sizeof want.topic_classes);
    ck_assert_mem_eq(&cfg, &want, sizeof want);
}
END_TEST

START_TEST(test_config_example_documents_every_key)
{
    static const char *const keys[] = {
        "shards",
        "pin_shards",
        "log_level",
        "server_id",
        "[limits]",
        "max_connections",
        "max_frame_bytes",
        "send_queue_bytes",
        "pending_buffer_bytes",
        "topics_per_stream",
        "max_connections_total",
        "max_connections_per_address",
        "connection_rate_per_address",
        "publish_rate",
        "publish_burst",
        "mutates_per_second",
        "[auth]",
        "mode",
        "failure_delay_ms",
        "failures_per_minute",
        "clock_skew_s",
        "workers",
        "[timeouts]",
        "keepalive_ms",
        "pong_timeout_ms",
        "handshake_timeout_ms",
        "close_grace_ms",
        "[catchup]",
        "topics_per_query",
        "rows_per_topic",
        "queries_in_flight",
        "[storage]",
        "backend",
        "[storage.memory]",
        "retention_messages",
        "retention_bytes",
        "[storage.postgres]",
        "conninfo",
        "password_file",
        "pool_size",
        "statement_timeout_ms",
        "batch_messages",
        "retention_age_s",
        "[[listener]]",
        "transport",
        "address",
        "port",
        "cert",
        "key",
        "client_ca",
        "path",
        "origins",
        "[cluster]",
        "node_id",
        "cluster_id",
        "secret_file",
        "[[cluster.peer]]",
        "id",
        "[[topic_class]]",
        "pattern",
        "storage",
        "dedup_window_ms",
        "max_message_bytes",
        "echo",
    };
    char *text = read_all(EXAMPLE_PATH);
    for (size_t i = 0; i < COUNT(keys); i++) {
        char setting[64];
        snprintf(setting, sizeof setting, keys[i][0] == '[' ? "\n#%s\n" : "\n#%s = ", keys[i]);
        char active[64];
        snprintf(active, sizeof active, keys[i][0] == '[' ? "\n%s\n" : "\n%s = ", keys[i]);
        ck_assert_msg(strstr(text, setting) != NULL || strstr(text, active) != NULL,
                      "example does not show %s", keys[i]);
    }
    free(text);
}
END_TEST

/* ---- [cluster] ---- */

static const char SECRET[] = "0123456789abcdef0123456789abcdef-cluster\n";

/* A secret file with mode; its path (static, reused). */
static const char *secret_file(const char *bytes, mode_t mode)
{
    const char *path = temp_file(bytes, strlen(bytes));
    ck_assert_int_eq(chmod(path, mode), 0);
    return path;
}

static char cluster_text[8192];

/* A valid two-peer cluster config with extra appended inside [cluster]
 * (before the peers) and tail after them. */
static const char *cluster_config(const char *secret_path, const char *backend, const char *extra,
                                  const char *tail)
{
    snprintf(cluster_text, sizeof cluster_text,
             "[storage]\nbackend = \"%s\"\n[storage.postgres]\nconninfo = \"dbname=x\"\n"
             "[cluster]\nnode_id = 2\ncluster_id = \"prod\"\nsecret_file = \"%s\"\n%s"
             "[[cluster.peer]]\nid = 1\naddress = \"127.0.0.1\"\nport = 7411\n"
             "[[cluster.peer]]\nid = 3\naddress = \"::1\"\n%s",
             backend, secret_path, extra, tail);
    return cluster_text;
}

START_TEST(test_config_cluster_keys_land_in_their_fields)
{
    const char *path = secret_file(SECRET, 0600);
    const rb_config *cfg = load_ok(cluster_config(path, "postgres", "port = 7412\n", ""));
    ck_assert_uint_eq(cfg->cluster_node_id, 2);
    ck_assert_str_eq(cfg->cluster_id, "prod");
    ck_assert_str_eq(cfg->cluster_address, "127.0.0.1");
    ck_assert_uint_eq(cfg->cluster_port, 7412);
    ck_assert_uint_eq(cfg->cluster_secret_len, strlen(SECRET) - 1);
    ck_assert_int_eq(memcmp(cfg->cluster_secret, SECRET, strlen(SECRET) - 1), 0);
    ck_assert_uint_eq(cfg->cluster_peer_count, 2);
    ck_assert_uint_eq(cfg->cluster_peers[0].id, 1);
    ck_assert_uint_eq(cfg->cluster_peers[0].port, 7411);
    ck_assert_str_eq(cfg->cluster_peers[1].address, "::1");
    ck_assert_uint_eq(cfg->cluster_peers[1].port, RB_CLUSTER_PORT_DEFAULT);
    unlink(path);
}
END_TEST

START_TEST(test_config_no_cluster_section_is_one_node)
{
    const rb_config *cfg = load_ok("");
    ck_assert_uint_eq(cfg->cluster_node_id, 0);
    ck_assert_uint_eq(cfg->cluster_peer_count, 0);
    ck_assert_uint_eq(cfg->cluster_port, 7410);
}
END_TEST

START_TEST(test_config_cluster_with_memory_store_names_the_backend)
{
    const char *path = secret_file(SECRET, 0600);
    expect_error(cluster_config(path, "memory", "", ""),
                 "c.toml:2:11: storage.backend: [cluster] needs \"postgres\" (every node shares "
                 "one database), not \"memory\"");
    char text[512];
    snprintf(text, sizeof text,
             "[cluster]\nnode_id = 1\ncluster_id = \"c\"\nsecret_file = \"%s\"\n", path);
    expect_error(text, "c.toml:2:11: cluster: needs storage.backend = \"postgres\" (every node "
                       "shares one database); the default is \"memory\"");
    unlink(path);
}
END_TEST

START_TEST(test_config_cluster_secret_readable_by_others_is_refused)
{
    const char *path = secret_file(SECRET, 0644);
    char want[512];
    snprintf(want, sizeof want,
             "c.toml:8:15: cluster.secret_file: \"%s\" has mode 0644: group and others must "
             "have no access (chmod 600)",
             path);
    expect_error(cluster_config(path, "postgres", "", ""), want);
    unlink(path);
}
END_TEST

START_TEST(test_config_cluster_short_secret_is_refused)
{
    const char *path = secret_file("short\n", 0400);
    char want[512];
    snprintf(want, sizeof want,
             "c.toml:8:15: cluster.secret_file: \"%s\" holds 5 bytes; the secret needs at least "
             "32",
             path);
    expect_error(cluster_config(path, "postgres", "", ""), want);
    unlink(path);
}
END_TEST

static const error_case cluster_errors[] = {
    {"node_id = 0\n", "c.toml:9:11: cluster.node_id: 0 is out of range [1, 1023]"},
    {"port = 0\n", "c.toml:9:8: cluster.port: 0 is out of range [1, 65535]"},
    {"address = \"localhost\"\n",
     "c.toml:9:11: cluster.address: \"localhost\" is not an IPv4 or IPv6 address literal"},
    {"nodes = 3\n", NULL}, /* unknown key: message checked by prefix */
};

START_TEST(test_config_bad_cluster_key_is_explained)
{
    const char *path = secret_file(SECRET, 0600);
    const error_case *c = &cluster_errors[_i];
    if (c->msg != NULL) {
        /* node_id given twice is a TOML error; give the bad one alone. */
        char extra[128];
        snprintf(extra, sizeof extra, "%s", c->text);
        const char *text = cluster_config(path, "postgres", extra, "");
        if (strncmp(c->text, "node_id", 7) == 0) {
            char *dup = strstr(cluster_text, "node_id = 2\n");
            memmove(dup, dup + 12, strlen(dup + 12) + 1);
            expect_error(text, "c.toml:8:11: cluster.node_id: 0 is out of range [1, 1023]");
        } else {
            expect_error(text, c->msg);
        }
    } else {
        static rb_config cfg;
        rb_err err = {0};
        const char *text = cluster_config(path, "postgres", c->text, "");
        int rc = rb_config_load_string(text, strlen(text), "c.toml", &cfg, &err);
        ck_assert_int_eq(rc, RB_ECONFIG);
        ck_assert_msg(strstr(err.msg, "c.toml:9:1: ") == err.msg, "got %s", err.msg);
    }
    unlink(path);
}
END_TEST

START_TEST(test_config_cluster_peer_rules)
{
    const char *path = secret_file(SECRET, 0600);
    expect_error(
        cluster_config(path, "postgres", "", "[[cluster.peer]]\nid = 3\naddress = \"::2\"\n"),
        "c.toml:17:6: cluster.peer[3].id: 3 is already the id of cluster.peer[2]");
    expect_error(
        cluster_config(path, "postgres", "", "[[cluster.peer]]\nid = 2\naddress = \"::2\"\n"),
        "c.toml:17:6: cluster.peer[3].id: 2 is this node's own cluster.node_id");
    expect_error(cluster_config(path, "postgres", "", "[[cluster.peer]]\nid = 4\n"),
                 "c.toml:16:1: cluster.peer[3]: missing required key \"address\"");
    expect_error("[storage]\nbackend = \"postgres\"\n[storage.postgres]\nconninfo = \"x\"\n"
                 "[cluster]\nnode_id = 1\n",
                 "c.toml:5:1: cluster: missing required key \"cluster_id\"");
    unlink(path);
}
END_TEST

START_TEST(test_config_cluster_peers_up_to_the_limit_are_accepted)
{
    const char *path = secret_file(SECRET, 0600);
    static char text[16384];
    int n = snprintf(text, sizeof text,
                     "[storage]\nbackend = \"postgres\"\n[storage.postgres]\nconninfo = \"x\"\n"
                     "[cluster]\nnode_id = 1000\ncluster_id = \"c\"\nsecret_file = \"%s\"\n",
                     path);
    for (int i = 1; i <= RB_CLUSTER_PEERS_MAX + 1; i++) {
        n += snprintf(text + n, sizeof text - (size_t)n,
                      "[[cluster.peer]]\nid = %d\naddress = \"10.0.0.%d\"\n", i, i);
        if (i == RB_CLUSTER_PEERS_MAX) {
            ck_assert_uint_eq(load_ok(text)->cluster_peer_count, RB_CLUSTER_PEERS_MAX);
        }
    }
    static rb_config cfg;
    rb_err err = {0};
    ck_assert_int_eq(rb_config_load_string(text, strlen(text), "c.toml", &cfg, &err), RB_ECONFIG);
    ck_assert_msg(strstr(err.msg, "more than 32 peers") != NULL, "got %s", err.msg);
    unlink(path);
}
END_TEST

START_TEST(test_config_example_cluster_section_is_valid)
{
    char *text = read_all(EXAMPLE_PATH);
    uncomment_settings(text);
    const char *cluster = strstr(text, "\n[cluster]\n");
    ck_assert_ptr_nonnull(cluster);
    const char *path = secret_file(SECRET, 0600);
    static char doc[8192];
    snprintf(doc, sizeof doc,
             "[storage]\nbackend = \"postgres\"\n[storage.postgres]\n"
             "conninfo = \"x\"\n%s",
             cluster);
    char *sf = strstr(doc, "/etc/ringbus/cluster.secret");
    ck_assert_ptr_nonnull(sf);
    char rest[4096];
    snprintf(rest, sizeof rest, "%s", sf + strlen("/etc/ringbus/cluster.secret"));
    snprintf(sf, sizeof doc - (size_t)(sf - doc), "%s%s", path, rest);
    free(text);
    const rb_config *cfg = load_ok(doc);
    ck_assert_uint_eq(cfg->cluster_node_id, 1);
    ck_assert_uint_eq(cfg->cluster_port, RB_CLUSTER_PORT_DEFAULT);
    ck_assert_uint_eq(cfg->cluster_peer_count, 1);
    unlink(path);
}
END_TEST

/* ---- topic classes ---- */

START_TEST(test_config_topic_classes_land_in_order_with_defaults)
{
    const rb_config *cfg = load_ok("[[topic_class]]\npattern = 'cursor.>'\nstorage = 'none'\n"
                                   "dedup_window_ms = 500\nmax_message_bytes = 4096\n"
                                   "echo = false\n"
                                   "[[topic_class]]\npattern = 'orders.*'\n");
    ck_assert_uint_eq(cfg->topic_class_count, 2);
    const rb_topic_class_config *a = &cfg->topic_classes[0];
    ck_assert_str_eq(a->pattern, "cursor.>");
    ck_assert_int_eq(a->storage, RB_TOPIC_EPHEMERAL);
    ck_assert_uint_eq(a->dedup_window_ms, 500);
    ck_assert_uint_eq(a->max_message_bytes, 4096);
    ck_assert(!a->echo);
    ck_assert_str_eq(a->where, "c.toml:1:1: topic_class[1]");
    const rb_topic_class_config *b = &cfg->topic_classes[1];
    ck_assert_int_eq(b->storage, RB_TOPIC_STORED);
    ck_assert_uint_eq(b->dedup_window_ms, 0);
    ck_assert_uint_eq(b->max_message_bytes, 0);
    ck_assert(b->echo);
    ck_assert_uint_eq(load_ok("")->topic_class_count, 0);
}
END_TEST

static const error_case class_errors[] = {
    {"[[topic_class]]\nstorage = 'none'\n",
     "c.toml:1:1: topic_class[1]: missing required key \"pattern\""},
    {"[[topic_class]]\npattern = 'a.>.b'\n",
     "c.toml:2:11: topic_class[1].pattern: pattern: '>' must be the last segment (byte 2)"},
    {"[[topic_class]]\npattern = 'a'\nstorage = 'disk'\n",
     "c.toml:3:11: topic_class[1].storage: \"disk\" is not one of stored, none"},
    {"[[topic_class]]\npattern = 'a'\necho = false\n",
     "c.toml:3:8: topic_class[1]: echo = false needs storage = \"none\" (stored history does "
     "not record its publisher)"},
    {"[[topic_class]]\npattern = 'a'\n[[topic_class]]\npattern = 'a'\n",
     "c.toml:4:11: topic_class[2].pattern: \"a\" is already the pattern of topic_class[1]"},
    {"[[topic_class]]\npattern = 'a'\nmax_message_bytes = 0\n",
     "c.toml:3:21: topic_class[1].max_message_bytes: 0 is out of range [1, 67108864]"},
    {"[[topic_class]]\npattern = 'a'\nmax_message_bytes = 2000000\n",
     "c.toml:3:21: topic_class[1].max_message_bytes: 2000000 is more than "
     "limits.max_frame_bytes (1048576)"},
    {"[[topic_class]]\npattern = 'a'\ndedup_window_ms = 99999999999\n",
     "c.toml:3:19: topic_class[1].dedup_window_ms: 99999999999 is out of range [0, 3600000]"},
    {"[[topic_class]]\npattern = 'a'\necko = true\n",
     "c.toml:3:1: unknown key \"topic_class[1].ecko\" (did you mean \"topic_class[1].echo\"?)"},
    {"topic_class = 3\n",
     "c.toml:1:15: topic_class: expected an array of tables ([[topic_class]]), got an integer"},
};

START_TEST(test_config_bad_topic_class_is_explained)
{
    expect_error(class_errors[_i].text, class_errors[_i].msg);
}
END_TEST

START_TEST(test_config_topic_classes_up_to_the_limit_are_accepted)
{
    static char text[RB_TOPIC_CLASSES_MAX * 48 + 64];
    size_t n = 0;
    for (int i = 0; i <= RB_TOPIC_CLASSES_MAX; i++) {
        n += (size_t)snprintf(text + n, sizeof text - n, "[[topic_class]]\npattern = 'c%d.>'\n", i);
        if (i == RB_TOPIC_CLASSES_MAX - 1) {
            ck_assert_uint_eq(load_ok(text)->topic_class_count, RB_TOPIC_CLASSES_MAX);
        }
    }
    static rb_config cfg;
    rb_err err = {0};
    ck_assert_int_eq(rb_config_load_string(text, n, "c.toml", &cfg, &err), RB_ECONFIG);
    ck_assert_msg(strstr(err.msg, "more than 64 topic classes") != NULL, "%s", err.msg);
}
END_TEST

Suite *rb_config_suite(void);

Suite *rb_config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("defaults");
    tcase_add_test(tc, test_config_defaults_match_the_design);
    tcase_add_test(tc, test_config_default_server_id_is_the_hostname);
    tcase_add_test(tc, test_config_empty_file_gives_the_defaults);
    tcase_add_test(tc, test_config_transport_names_are_stable);
    suite_add_tcase(s, tc);

    tc = tcase_create("values");
    tcase_add_test(tc, test_config_every_key_lands_in_its_field);
    tcase_add_test(tc, test_config_dedup_keys_land_before_and_after_the_backend);
    tcase_add_test(tc, test_config_dotted_keys_reach_sections);
    tcase_add_test(tc, test_config_range_bounds_are_inclusive);
    tcase_add_test(tc, test_config_every_log_level_is_accepted);
    tcase_add_test(tc, test_config_server_id_at_limit_is_accepted);
    suite_add_tcase(s, tc);

    tc = tcase_create("rejections");
    tcase_add_loop_test(tc, test_config_unknown_key_names_line_and_column, 0, COUNT(unknown_keys));
    tcase_add_loop_test(tc, test_config_wrong_type_names_key_and_types, 0, COUNT(wrong_types));
    tcase_add_loop_test(tc, test_config_zero_or_negative_duration_is_an_error, 0,
                        COUNT(zero_durations));
    tcase_add_loop_test(tc, test_config_out_of_range_value_names_key_and_range, 0,
                        COUNT(out_of_range));
    tcase_add_loop_test(tc, test_config_bad_string_value_is_explained, 0, COUNT(bad_strings));
    tcase_add_test(tc, test_config_server_id_of_the_wire_maximum_loads);
    suite_add_tcase(s, tc);

    tc = tcase_create("cross_key_rules");
    tcase_add_loop_test(tc, test_config_cross_key_rule_names_the_key_set, 0, COUNT(cross_errors));
    tcase_add_test(tc, test_config_queues_equal_to_frame_size_are_accepted);
    tcase_add_test(tc, test_config_readable_password_file_is_accepted);
    suite_add_tcase(s, tc);

    tc = tcase_create("listeners");
    tcase_add_test(tc, test_config_listener_defaults_depend_on_transport);
    tcase_add_test(tc, test_config_tls_library_is_per_listener);
    tcase_add_test(tc, test_config_listener_keys_are_loaded);
    tcase_add_test(tc, test_config_quic_retry_is_loaded);
    tcase_add_test(tc, test_config_empty_listener_array_keeps_the_default);
    tcase_add_test(tc, test_config_listeners_up_to_the_limit_are_accepted);
    tcase_add_test(tc, test_config_listener_without_clash_is_accepted);
    tcase_add_loop_test(tc, test_config_bad_listener_is_explained, 0, COUNT(listener_errors));
    tcase_add_loop_test(tc, test_config_listeners_on_the_same_address_and_port_clash, 0,
                        COUNT(listener_clashes));
    suite_add_tcase(s, tc);

    tc = tcase_create("files");
    tcase_add_test(tc, test_config_syntax_error_names_the_file);
    tcase_add_test(tc, test_config_missing_file_is_a_system_error_naming_it);
    tcase_add_test(tc, test_config_file_error_names_the_path);
    tcase_add_test(tc, test_config_file_at_size_limit_loads);
    tcase_add_test(tc, test_config_file_one_byte_past_size_limit_fails);
    suite_add_tcase(s, tc);

    tc = tcase_create("cluster");
    tcase_add_test(tc, test_config_cluster_keys_land_in_their_fields);
    tcase_add_test(tc, test_config_no_cluster_section_is_one_node);
    tcase_add_test(tc, test_config_cluster_with_memory_store_names_the_backend);
    tcase_add_test(tc, test_config_cluster_secret_readable_by_others_is_refused);
    tcase_add_test(tc, test_config_cluster_short_secret_is_refused);
    tcase_add_loop_test(tc, test_config_bad_cluster_key_is_explained, 0, COUNT(cluster_errors));
    tcase_add_test(tc, test_config_cluster_peer_rules);
    tcase_add_test(tc, test_config_cluster_peers_up_to_the_limit_are_accepted);
    suite_add_tcase(s, tc);

    tc = tcase_create("topic classes");
    tcase_add_test(tc, test_config_topic_classes_land_in_order_with_defaults);
    tcase_add_loop_test(tc, test_config_bad_topic_class_is_explained, 0, COUNT(class_errors));
    tcase_add_test(tc, test_config_topic_classes_up_to_the_limit_are_accepted);
    suite_add_tcase(s, tc);

    tc = tcase_create("example");
    tcase_add_test(tc, test_config_example_file_loads_to_the_defaults);
    tcase_add_test(tc, test_config_example_settings_are_valid_and_show_the_defaults);
    tcase_add_test(tc, test_config_example_documents_every_key);
    tcase_add_test(tc, test_config_example_cluster_section_is_valid);
    suite_add_tcase(s, tc);
    return s;
}
