/* Stream commands: one JSON line parsed by libjansson, then validated whole
 * into rb_cmd. jansson owns the syntax and is strict: a duplicate key, bytes
 * after the value, a raw control character, a lone surrogate or bytes that
 * are not UTF-8 fail the line, with the column jansson reports. "\u0000" is
 * allowed in strings (a payload may hold NUL; a topic may not). Topic
 * content beyond its length is left to the server (which answers
 * invalid_topic), so that the CLI shows the server's own error.
 *
 * Integers above INT64_MAX: jansson's json_int_t is int64_t and it refuses
 * a whole document holding a larger integer, but seqs, cursors and epochs
 * are u64 (an epoch is random: half of them are above INT64_MAX). They are
 * accepted up to UINT64_MAX: before jansson reads the line, each integer
 * token above INT64_MAX outside strings is replaced, in a copy, by a
 * placeholder of the same length (spaces, then the real "-K.0" for entry
 * K - 1 of a table of the tokens), so every column stays the line's own.
 * No command takes a real, so a placeholder is read only where a u64 is
 * expected, and each entry is taken at most once: a real typed by hand that
 * equals a placeholder fails the line rather than standing in for one. */
#include "cli/cmdjson.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/json.h"
#include "common/assert.h"
#include "common/base64.h"
#include "common/limits.h"

/* An integer token above INT64_MAX, replaced by a placeholder. */
typedef struct big_int {
    size_t start; /* its bytes in the line */
    size_t len;
    uint64_t value;
    bool fits;  /* at most UINT64_MAX; value is valid */
    bool taken; /* read by a field already */
} big_int;

typedef struct doc {
    json_t *root;  /* owned */
    char *text;    /* owned: the line with placeholders, or NULL if it needed none */
    big_int *bigs; /* owned, in line order */
    size_t big_count;
    size_t big_cap;
} doc;

static int bad(rb_err *err, const char *what)
{
    return rb_err_set(err, RB_EINVAL, 0, "%s", what);
}

/* ---- integers above INT64_MAX ---- */

/* A number token starts after one of these (or at the start of the line);
 * digits after anything else are a fraction, an exponent, a negative
 * number or not a value at all, and are left to jansson. */
static bool value_may_start(const char *line, size_t i)
{
    return i == 0 || (line[i - 1] != '\0' && strchr(" \t\r\n:,[", line[i - 1]) != NULL);
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int add_big(doc *d, const char *line, size_t len, size_t start, size_t n, rb_err *err)
{
    if (d->text == NULL) {
        d->text = malloc(len + 1);
        if (d->text == NULL) {
            return rb_err_set(err, RB_ENOMEM, 0, "bad JSON: out of memory");
        }
        memcpy(d->text, line, len);
        d->text[len] = '\0';
    }
    if (d->big_count == d->big_cap) {
        size_t cap = d->big_cap == 0 ? 4 : d->big_cap * 2;
        big_int *bigs = realloc(d->bigs, cap * sizeof *bigs);
        if (bigs == NULL) {
            return rb_err_set(err, RB_ENOMEM, 0, "bad JSON: out of memory");
        }
        d->bigs = bigs;
        d->big_cap = cap;
    }
    big_int *b = &d->bigs[d->big_count++];
    *b = (big_int){.start = start, .len = n};
    b->fits = n < 20 || (n == 20 && memcmp(line + start, "18446744073709551615", 20) <= 0);
    for (size_t i = 0; b->fits && i < n; i++) {
        b->value = b->value * 10 + (uint64_t)(line[start + i] - '0');
    }
    char ph[32];
    int ph_len = snprintf(ph, sizeof ph, "-%zu.0", d->big_count);
    /* "-K.0" is at most 19 bytes while K < 10^16: a line of 10^16 tokens of
     * 19 digits would be beyond any line the CLI reads (8 MiB). */
    RB_ASSERT(ph_len > 0);
    RB_ASSERT((size_t)ph_len <= n);
    memset(d->text + start, ' ', n - (size_t)ph_len);
    memcpy(d->text + start + n - (size_t)ph_len, ph, (size_t)ph_len);
    return 0;
}

/* Finds the integer tokens above INT64_MAX and puts placeholders in their
 * place. Only string boundaries are tracked: a token is digits outside a
 * string, after a delimiter, with no fraction or exponent after it. Should
 * the line be malformed, jansson says so at the same column as without
 * placeholders. */
static int replace_big_ints(doc *d, const char *line, size_t len, rb_err *err)
{
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        if (in_string) {
            if (line[i] == '\\') {
                i++; /* the escaped byte */
            } else if (line[i] == '"') {
                in_string = false;
            }
            continue;
        }
        in_string = line[i] == '"';
        if (line[i] < '1' || line[i] > '9' || !value_may_start(line, i)) {
            continue;
        }
        size_t end = i;
        while (end < len && is_digit(line[end])) {
            end++;
        }
        size_t n = end - i;
        bool integral = end == len || (line[end] != '.' && line[end] != 'e' && line[end] != 'E');
        bool big = n > 19 || (n == 19 && memcmp(line + i, "9223372036854775807", 19) > 0);
        if (integral && big) {
            int rc = add_big(d, line, len, i, n, err);
            if (rc != 0) {
                return rc;
            }
        }
        i = end - 1;
    }
    return 0;
}

/* The table entry v stands for, or NULL when v is no placeholder. */
static big_int *placeholder(doc *d, const json_t *v)
{
    if (!json_is_real(v)) {
        return NULL;
    }
    double k = -json_real_value(v);
    if (!(k >= 1 && k <= (double)d->big_count) || k != (double)(size_t)k) {
        return NULL;
    }
    return &d->bigs[(size_t)k - 1];
}

/* Reads v as a u64: a non-negative integer or a placeholder not yet taken
 * whose token is at most UINT64_MAX. */
static bool take_u64(doc *d, const json_t *v, uint64_t *out)
{
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        *out = (uint64_t)i;
        return i >= 0;
    }
    big_int *b = placeholder(d, v);
    if (b == NULL || b->taken) {
        return false;
    }
    b->taken = true;
    *out = b->value;
    return b->fits;
}

/* ---- parsing ---- */

/* jansson's message with its context ("near '-1.0'") naming the token of
 * the line, when the error ends on a placeholder. */
static int syntax_error(const doc *d, const char *line, const json_error_t *je, rb_err *err)
{
    const char *near = strstr(je->text, " near '");
    for (size_t i = 0; near != NULL && i < d->big_count; i++) {
        const big_int *b = &d->bigs[i];
        if ((size_t)je->position == b->start + b->len) {
            return rb_err_set(err, RB_EINVAL, 0, "bad JSON: column %d: %.*s near '%.*s'",
                              je->column, (int)(near - je->text), je->text,
                              (int)(b->len < 64 ? b->len : 64), line + b->start);
        }
    }
    return rb_err_set(err, RB_EINVAL, 0, "bad JSON: column %d: %s", je->column, je->text);
}

static int load(doc *d, const char *line, size_t len, rb_err *err)
{
    int rc = replace_big_ints(d, line, len, err);
    if (rc != 0) {
        return rc;
    }
    json_error_t je;
    d->root = json_loadb(d->text != NULL ? d->text : line, len,
                         JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (d->root == NULL) {
        return json_error_code(&je) == json_error_out_of_memory
                   ? rb_err_set(err, RB_ENOMEM, 0, "bad JSON: out of memory")
                   : syntax_error(d, line, &je, err);
    }
    return 0;
}

static void doc_free(doc *d)
{
    json_decref(d->root);
    free(d->text);
    free(d->bigs);
    memset(d, 0, sizeof *d);
}

/* Every key of obj is in allowed (NULL-terminated); jansson has refused
 * duplicates already. */
static int check_keys(const json_t *obj, const char *const *allowed, const char *where, rb_err *err)
{
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)obj, key, value)
    {
        bool known = false;
        for (size_t k = 0; allowed[k] != NULL && !known; k++) {
            known = strcmp(allowed[k], key) == 0;
        }
        if (!known) {
            return rb_err_set(err, RB_EINVAL, 0, "%s: unknown key \"%.64s\"", where, key);
        }
    }
    return 0;
}

static int take_topic(const json_t *v, const char *where, char **out, size_t *out_len, rb_err *err)
{
    if (!json_is_string(v)) {
        return rb_err_set(err, RB_EINVAL, 0, "%s: topic must be a string", where);
    }
    size_t len = json_string_length(v);
    if (len == 0 || len > RB_TOPIC_BYTES_MAX) {
        return rb_err_set(err, RB_EINVAL, 0, "%s: topic must be 1..%d bytes", where,
                          RB_TOPIC_BYTES_MAX);
    }
    if (memchr(json_string_value(v), '\0', len) != NULL) {
        return rb_err_set(err, RB_EINVAL, 0, "%s: topic contains NUL", where);
    }
    *out = strdup(json_string_value(v));
    if (*out == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "%s: out of memory", where);
    }
    if (out_len != NULL) {
        *out_len = len;
    }
    return 0;
}

/* A cursor is a non-negative integer, its decimal string, or "now"; absent
 * means "now". */
static int take_cursor(doc *d, const json_t *v, rb_cmd_add *add, const char *where, rb_err *err)
{
    add->is_now = v == NULL;
    if (v == NULL || take_u64(d, v, &add->cursor)) {
        return 0;
    }
    add->cursor = 0;
    const char *s = json_string_value(v);
    size_t len = json_is_string(v) ? json_string_length(v) : 0;
    if (s != NULL && strcmp(s, "now") == 0) {
        add->is_now = true;
        return 0;
    }
    if (len > 0 && len <= 20 && strspn(s, "0123456789") == len) {
        errno = 0;
        unsigned long long c = strtoull(s, NULL, 10);
        if (errno == 0) {
            add->cursor = c;
            return 0;
        }
    }
    return rb_err_set(err, RB_EINVAL, 0, "%s: cursor must be a non-negative integer or \"now\"",
                      where);
}

static int parse_adds(doc *d, const json_t *list, rb_cmd *cmd, rb_err *err)
{
    static const char *const keys[] = {"topic", "cursor", NULL};
    if (!json_is_array(list)) {
        return bad(err, "add: must be an array of {\"topic\",\"cursor\"} objects");
    }
    cmd->adds = calloc(json_array_size(list) + 1, sizeof *cmd->adds);
    if (cmd->adds == NULL) {
        return bad(err, "add: out of memory");
    }
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *a = json_array_get(list, i);
        char where[32];
        snprintf(where, sizeof where, "add[%zu]", i);
        if (!json_is_object(a)) {
            return rb_err_set(err, RB_EINVAL, 0, "%s: must be an object", where);
        }
        int rc = check_keys(a, keys, where, err);
        if (rc == 0) {
            rc = take_topic(json_object_get(a, "topic"), where, &cmd->adds[i].topic, NULL, err);
        }
        if (rc == 0) {
            cmd->add_count++;
            rc = take_cursor(d, json_object_get(a, "cursor"), &cmd->adds[i], where, err);
        }
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

static int parse_removes(const json_t *list, rb_cmd *cmd, rb_err *err)
{
    if (!json_is_array(list)) {
        return bad(err, "remove: must be an array of topic strings");
    }
    cmd->removes = calloc(json_array_size(list) + 1, sizeof *cmd->removes);
    if (cmd->removes == NULL) {
        return bad(err, "remove: out of memory");
    }
    for (size_t i = 0; i < json_array_size(list); i++) {
        char where[32];
        snprintf(where, sizeof where, "remove[%zu]", i);
        int rc = take_topic(json_array_get(list, i), where, &cmd->removes[i], NULL, err);
        if (rc != 0) {
            return rc;
        }
        cmd->remove_count++;
    }
    return 0;
}

static int parse_mutate(doc *d, rb_cmd *cmd, rb_err *err)
{
    const json_t *id = json_object_get(d->root, "mutate_id");
    const json_t *ho = json_object_get(d->root, "history_only");
    const json_t *add = json_object_get(d->root, "add");
    const json_t *rem = json_object_get(d->root, "remove");
    const json_t *epoch = json_object_get(d->root, "epoch");
    cmd->kind = RB_CMD_MUTATE;
    if (add == NULL && rem == NULL) {
        return bad(err, "command has nothing to do: expected add, remove, close or publish");
    }
    if (id != NULL && (!take_u64(d, id, &cmd->mutate_id) || cmd->mutate_id >> 63 != 0)) {
        return bad(err, "mutate_id: must be an integer in 1..2^63-1");
    }
    if (ho != NULL && !json_is_boolean(ho)) {
        return bad(err, "history_only: must be true or false");
    }
    if (epoch != NULL && !take_u64(d, epoch, &cmd->epoch)) {
        return bad(err, "epoch: must be an integer in 0..2^64-1 (from the started event)");
    }
    cmd->history_only = json_is_true(ho);
    int rc = add != NULL ? parse_adds(d, add, cmd, err) : 0;
    if (rc == 0 && rem != NULL) {
        rc = parse_removes(rem, cmd, err);
    }
    if (rc == 0 && cmd->add_count > 0 && cmd->mutate_id == 0) {
        rc = bad(err, "mutate_id: required (nonzero) when adding topics");
    }
    return rc;
}

static int parse_publish(const json_t *pub, rb_cmd *cmd, rb_err *err)
{
    static const char *const keys[] = {"topic", "data", "data_b64", NULL};
    cmd->kind = RB_CMD_PUBLISH;
    if (!json_is_object(pub)) {
        return bad(err, "publish: must be an object {\"topic\",\"data\"}");
    }
    int rc = check_keys(pub, keys, "publish", err);
    if (rc == 0) {
        rc =
            take_topic(json_object_get(pub, "topic"), "publish", &cmd->topic, &cmd->topic_len, err);
    }
    if (rc != 0) {
        return rc;
    }
    const json_t *data = json_object_get(pub, "data");
    const json_t *b64 = json_object_get(pub, "data_b64");
    if (data != NULL && b64 != NULL) {
        return bad(err, "publish: give data or data_b64, not both");
    }
    const json_t *v = data != NULL ? data : b64;
    if (v != NULL && !json_is_string(v)) {
        return bad(err, "publish: data must be a string");
    }
    size_t len = v != NULL ? json_string_length(v) : 0;
    cmd->data = malloc(len + 1);
    if (cmd->data == NULL) {
        return bad(err, "publish: out of memory");
    }
    if (b64 != NULL) {
        return rb_base64_decode(json_string_value(b64), len, cmd->data, len, &cmd->data_len, 0,
                                err) == 0
                   ? 0
                   : bad(err, "publish: data_b64 is not valid base64");
    }
    if (v != NULL) {
        memcpy(cmd->data, json_string_value(v), len);
    }
    cmd->data_len = len;
    return 0;
}

static int parse_doc(doc *d, rb_cmd *cmd, rb_err *err)
{
    static const char *const keys[] = {"mutate_id", "add",   "remove",  "history_only",
                                       "epoch",     "close", "publish", NULL};
    if (!json_is_object(d->root)) {
        return bad(err, "a command must be a JSON object");
    }
    int rc = check_keys(d->root, keys, "command", err);
    if (rc != 0) {
        return rc;
    }
    const json_t *close = json_object_get(d->root, "close");
    const json_t *pub = json_object_get(d->root, "publish");
    if ((close != NULL || pub != NULL) && json_object_size(d->root) != 1) {
        return bad(err, "close and publish commands take no other keys");
    }
    if (close != NULL) {
        cmd->kind = RB_CMD_CLOSE;
        return json_is_true(close) ? 0 : bad(err, "close: must be true");
    }
    if (pub != NULL) {
        return parse_publish(pub, cmd, err);
    }
    return parse_mutate(d, cmd, err);
}

int rb_cmd_parse(const char *line, size_t len, rb_cmd *cmd, rb_err *err)
{
    memset(cmd, 0, sizeof *cmd);
    doc d = {0};
    int rc = load(&d, line, len, err);
    if (rc == 0) {
        rc = parse_doc(&d, cmd, err);
    }
    doc_free(&d);
    if (rc != 0) {
        rb_cmd_free(cmd);
    }
    return rc;
}

void rb_cmd_free(rb_cmd *cmd)
{
    for (size_t i = 0; i < cmd->add_count; i++) {
        free(cmd->adds[i].topic);
    }
    for (size_t i = 0; i < cmd->remove_count; i++) {
        free(cmd->removes[i]);
    }
    free(cmd->adds);
    free(cmd->removes);
    free(cmd->topic);
    free(cmd->data);
    memset(cmd, 0, sizeof *cmd);
}
