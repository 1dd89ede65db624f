/* libFuzzer target for the CLI's JSON input (cli/cmdjson.c on libjansson)
 * and output (cli/json.c): each input is one stdin line of `ringbus stream`.
 * 1. rb_cmd_parse accepts a well-formed command (topics 1..255 bytes
 *    without NUL, a nonzero mutate_id when there are adds, lengths that
 *    match the strings) or refuses with RB_EINVAL / RB_ENOMEM and a
 *    message; either way rb_cmd_free leaves nothing behind (ASan checks).
 * 2. A document jansson accepts is written back with the CLI's own writer
 *    (rb_json_put_*) and must parse again to the same tree.
 * 3. The placeholders rb_cmd_parse puts in place of integers above
 *    INT64_MAX change no verdict on the syntax (against jansson reading
 *    every integer as a real).
 * 4. base64 the CLI accepts decodes to bytes that encode and decode back.
 * Any other outcome traps.
 *
 * Build and run with `make fuzz T=cli` (clang 14 with libFuzzer);
 * `make test` replays tests/fuzz/corpus/cli through the same target. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cmdjson.h"
#include "cli/json.h"
#include "common/base64.h"
#include "common/limits.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* How cmdjson.c calls jansson. */
#define FLAGS (JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

static void check_topic(const char *t, size_t len)
{
    CHECK(t != NULL && len >= 1 && len <= RB_TOPIC_BYTES_MAX && strlen(t) == len);
}

static void check_cmd(const char *line, size_t len)
{
    rb_cmd cmd;
    rb_err err = {0};
    int rc = rb_cmd_parse(line, len, &cmd, &err);
    if (rc != 0) {
        CHECK(rc == RB_EINVAL || rc == RB_ENOMEM);
        CHECK(err.msg[0] != '\0');
        CHECK(cmd.adds == NULL && cmd.removes == NULL && cmd.topic == NULL && cmd.data == NULL);
        return;
    }
    switch (cmd.kind) {
    case RB_CMD_MUTATE:
        CHECK(cmd.add_count == 0 || cmd.mutate_id != 0);
        for (size_t i = 0; i < cmd.add_count; i++) {
            check_topic(cmd.adds[i].topic, strlen(cmd.adds[i].topic));
            CHECK(!cmd.adds[i].is_now || cmd.adds[i].cursor == 0);
        }
        for (size_t i = 0; i < cmd.remove_count; i++) {
            check_topic(cmd.removes[i], strlen(cmd.removes[i]));
        }
        break;
    case RB_CMD_CLOSE:
        CHECK(cmd.add_count == 0 && cmd.remove_count == 0 && cmd.topic == NULL);
        break;
    case RB_CMD_PUBLISH:
        check_topic(cmd.topic, cmd.topic_len);
        CHECK(cmd.data != NULL || cmd.data_len == 0);
        break;
    default:
        CHECK(0);
    }
    rb_cmd_free(&cmd);
}

static void put_value(rb_json_buf *b, const json_t *v);

static void put_members(rb_json_buf *b, const json_t *v)
{
    if (json_is_object(v)) {
        const char *key;
        json_t *m;
        bool first = true;
        rb_json_put_raw(b, "{", 1);
        json_object_foreach((json_t *)v, key, m)
        {
            rb_json_put_raw(b, first ? "" : ",", first ? 0 : 1);
            rb_json_put_str(b, key, strlen(key));
            rb_json_put_raw(b, ":", 1);
            put_value(b, m);
            first = false;
        }
        rb_json_put_raw(b, "}", 1);
        return;
    }
    rb_json_put_raw(b, "[", 1);
    for (size_t i = 0; i < json_array_size(v); i++) {
        rb_json_put_raw(b, i > 0 ? "," : "", i > 0 ? 1 : 0);
        put_value(b, json_array_get(v, i));
    }
    rb_json_put_raw(b, "]", 1);
}

static void put_value(rb_json_buf *b, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_NULL:
        rb_json_put_raw(b, "null", 4);
        break;
    case JSON_TRUE:
        rb_json_put_raw(b, "true", 4);
        break;
    case JSON_FALSE:
        rb_json_put_raw(b, "false", 5);
        break;
    case JSON_INTEGER:
        if (json_integer_value(v) >= 0) {
            rb_json_put_u64(b, (uint64_t)json_integer_value(v));
        } else {
            rb_json_put_raw(b, "-1", 2); /* any negative integer */
        }
        break;
    case JSON_REAL:
        rb_json_put_raw(b, "-1.5", 4); /* any real */
        break;
    case JSON_STRING:
        rb_json_put_str(b, json_string_value(v), json_string_length(v));
        break;
    default:
        put_members(b, v);
    }
}

static bool same(const json_t *a, const json_t *b)
{
    if (json_typeof(a) != json_typeof(b)) {
        return false;
    }
    switch (json_typeof(a)) {
    case JSON_INTEGER:
        return json_integer_value(a) < 0 ? json_integer_value(b) < 0
                                         : json_integer_value(a) == json_integer_value(b);
    case JSON_STRING:
        return json_equal(a, b);
    case JSON_ARRAY:
        if (json_array_size(a) != json_array_size(b)) {
            return false;
        }
        for (size_t i = 0; i < json_array_size(a); i++) {
            if (!same(json_array_get(a, i), json_array_get(b, i))) {
                return false;
            }
        }
        return true;
    case JSON_OBJECT: {
        const char *key;
        json_t *m;
        if (json_object_size(a) != json_object_size(b)) {
            return false;
        }
        json_object_foreach((json_t *)a, key, m)
        {
            const json_t *n = json_object_get(b, key);
            if (n == NULL || !same(m, n)) {
                return false;
            }
        }
        return true;
    }
    default:
        return true;
    }
}

/* What jansson accepts, the CLI's writer writes back to the same tree. */
static void check_writer(const char *text, size_t len)
{
    json_t *doc = json_loadb(text, len, FLAGS, NULL);
    if (doc == NULL) {
        return;
    }
    rb_json_buf b;
    rb_json_buf_init(&b);
    put_value(&b, doc);
    CHECK(!b.oom);
    json_error_t je;
    json_t *again = json_loadb(b.ptr, b.len, FLAGS, &je);
    CHECK(again != NULL);
    CHECK(same(doc, again));
    json_decref(again);
    json_decref(doc);
    rb_json_buf_deinit(&b);
}

/* The placeholders of integers above INT64_MAX change no verdict on the
 * syntax: rb_cmd_parse says "bad JSON" exactly when jansson, reading every
 * integer as a real (of any size), refuses the line. Refusals for a
 * number's size are left out: jansson reports only the first error, and
 * stops at a too big real where a placeholder would read on. */
static void check_big_ints(const char *line, size_t len)
{
    rb_cmd cmd;
    rb_err err = {0};
    int rc = rb_cmd_parse(line, len, &cmd, &err);
    if (rc == 0) {
        rb_cmd_free(&cmd);
    }
    bool ours = rc == RB_EINVAL && strncmp(err.msg, "bad JSON: ", 10) == 0;
    json_error_t je;
    json_t *doc = json_loadb(line, len, FLAGS | JSON_DECODE_INT_AS_REAL, &je);
    bool theirs = doc == NULL;
    json_decref(doc);
    if (rc == RB_ENOMEM || (ours && strstr(err.msg, "too big") != NULL) ||
        (theirs && (json_error_code(&je) == json_error_numeric_overflow ||
                    json_error_code(&je) == json_error_out_of_memory))) {
        return;
    }
    CHECK(ours == theirs);
}

static void check_base64(const char *text, size_t len)
{
    uint8_t *out = malloc(len / 4 * 3 + 1);
    CHECK(out != NULL);
    size_t n = 0;
    rb_err err = {0};
    if (rb_base64_decode(text, len, out, len / 4 * 3 + 1, &n, 0, &err) == 0) {
        CHECK(n <= len / 4 * 3);
        size_t elen = rb_base64_encoded_len(n, 0);
        char *enc = malloc(elen + 1);
        CHECK(enc != NULL);
        rb_base64_encode(enc, out, n, 0);
        uint8_t *back = malloc(elen / 4 * 3 + 1);
        size_t m = 0;
        CHECK(back != NULL &&
              rb_base64_decode(enc, elen, back, elen / 4 * 3 + 1, &m, 0, &err) == 0);
        CHECK(m == n && (n == 0 || memcmp(back, out, n) == 0));
        free(back);
        free(enc);
    } else {
        CHECK(err.msg[0] != '\0');
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536) {
        return 0;
    }
    /* A NUL-terminated copy: cli.c hands lines over like this. */
    char *line = malloc(size + 1);
    CHECK(line != NULL);
    memcpy(line, data, size);
    line[size] = '\0';
    check_cmd(line, size);
    check_writer(line, size);
    check_big_ints(line, size);
    check_base64(line, size);
    free(line);
    return 0;
}
