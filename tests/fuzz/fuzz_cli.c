/* libFuzzer target for the CLI's JSON input (cli/json.c and cli/cmdjson.c):
 * each input is one stdin line of `ringbus stream`.
 * 1. rb_cmd_parse accepts a well-formed command (topics 1..255 bytes
 *    without NUL, a nonzero mutate_id when there are adds, lengths that
 *    match the strings) or refuses with RB_EINVAL / RB_ENOMEM and a
 *    message; either way rb_cmd_free leaves nothing behind (ASan checks).
 * 2. A document rb_json_parse accepts is written back with the CLI's own
 *    writer (rb_json_put_*) and must parse again to the same tree.
 * 3. base64 the CLI accepts decodes to bytes that encode and decode back.
 * Any other outcome traps.
 *
 * Build and run with `make fuzz T=cli` (clang 14 with libFuzzer);
 * `make test` replays tests/fuzz/corpus/cli through the same target. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cmdjson.h"
#include "cli/json.h"
#include "common/frame.h"
#include "common/limits.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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

static void put_value(rb_json_buf *b, const rb_json_value *v, int depth);

static void put_members(rb_json_buf *b, const rb_json_value *v, int depth)
{
    bool obj = v->type == RB_JSON_OBJECT;
    rb_json_put_raw(b, obj ? "{" : "[", 1);
    for (size_t i = 0; i < v->count; i++) {
        if (i > 0) {
            rb_json_put_raw(b, ",", 1);
        }
        if (obj) {
            rb_json_put_str(b, v->items[i].key, v->items[i].key_len);
            rb_json_put_raw(b, ":", 1);
        }
        put_value(b, &v->items[i], depth + 1);
    }
    rb_json_put_raw(b, obj ? "}" : "]", 1);
}

static void put_value(rb_json_buf *b, const rb_json_value *v, int depth)
{
    CHECK(depth <= RB_JSON_DEPTH_MAX);
    switch (v->type) {
    case RB_JSON_NULL:
        rb_json_put_raw(b, "null", 4);
        break;
    case RB_JSON_BOOL:
        rb_json_put_raw(b, v->boolean ? "true" : "false", v->boolean ? 4 : 5);
        break;
    case RB_JSON_NUMBER:
        if (v->is_uint) {
            rb_json_put_u64(b, v->uint_value);
        } else {
            rb_json_put_raw(b, "-1", 2); /* any number that is not a u64 */
        }
        break;
    case RB_JSON_STRING:
        rb_json_put_str(b, v->str, v->str_len);
        break;
    default:
        put_members(b, v, depth);
    }
}

static bool all_utf8(const rb_json_value *v)
{
    if (v->key != NULL && !rb_utf8_valid((const uint8_t *)v->key, v->key_len)) {
        return false;
    }
    if (v->type == RB_JSON_STRING && !rb_utf8_valid((const uint8_t *)v->str, v->str_len)) {
        return false;
    }
    for (size_t i = 0; (v->type == RB_JSON_ARRAY || v->type == RB_JSON_OBJECT) && i < v->count;
         i++) {
        if (!all_utf8(&v->items[i])) {
            return false;
        }
    }
    return true;
}

static bool same(const rb_json_value *a, const rb_json_value *b)
{
    if (a->type != b->type || a->key_len != b->key_len ||
        (a->key_len > 0 && memcmp(a->key, b->key, a->key_len) != 0)) {
        return false;
    }
    switch (a->type) {
    case RB_JSON_BOOL:
        return a->boolean == b->boolean;
    case RB_JSON_NUMBER:
        return a->is_uint == b->is_uint && (!a->is_uint || a->uint_value == b->uint_value);
    case RB_JSON_STRING:
        return a->str_len == b->str_len && memcmp(a->str, b->str, a->str_len) == 0 &&
               b->str[b->str_len] == '\0';
    case RB_JSON_ARRAY:
    case RB_JSON_OBJECT:
        if (a->count != b->count) {
            return false;
        }
        for (size_t i = 0; i < a->count; i++) {
            if (!same(&a->items[i], &b->items[i])) {
                return false;
            }
        }
        return true;
    default:
        return true;
    }
}

static void check_json(const char *text, size_t len)
{
    rb_json_value *doc = NULL;
    rb_err err = {0};
    int rc = rb_json_parse(text, len, &doc, &err);
    if (rc != 0) {
        CHECK(rc == RB_EINVAL || rc == RB_ENOMEM);
        CHECK(err.msg[0] != '\0');
        return;
    }
    if (all_utf8(doc)) {
        rb_json_buf b;
        rb_json_buf_init(&b);
        put_value(&b, doc, 0);
        CHECK(!b.oom);
        rb_json_value *again = NULL;
        CHECK(rb_json_parse(b.ptr, b.len, &again, &err) == 0);
        CHECK(same(doc, again));
        rb_json_free(again);
        rb_json_buf_deinit(&b);
    }
    rb_json_free(doc);
}

static void check_base64(const char *text, size_t len)
{
    uint8_t *out = malloc(len / 4 * 3 + 1);
    CHECK(out != NULL);
    size_t n = 0;
    rb_err err = {0};
    if (rb_base64_decode(text, len, out, &n, &err) == 0) {
        CHECK(n <= len / 4 * 3);
        size_t elen = rb_base64_encoded_len(n);
        char *enc = malloc(elen + 1);
        CHECK(enc != NULL);
        rb_base64_encode(enc, out, n);
        uint8_t *back = malloc(elen / 4 * 3 + 1);
        size_t m = 0;
        CHECK(back != NULL && rb_base64_decode(enc, elen, back, &m, &err) == 0);
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
    check_json(line, size);
    check_base64(line, size);
    free(line);
    return 0;
}
