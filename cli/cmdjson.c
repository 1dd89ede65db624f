/* Stream commands: JSON lines validated whole into rb_cmd. Topic content
 * beyond its length is left to the server (which answers invalid_topic), so
 * that the CLI shows the server's own error. */
#include "cli/cmdjson.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/json.h"
#include "common/limits.h"

static int bad(rb_err *err, const char *what)
{
    return rb_err_set(err, RB_EINVAL, 0, "%s", what);
}

/* Every key of obj is in allowed (NULL-terminated) and appears once. */
static int check_keys(const rb_json_value *obj, const char *const *allowed, const char *where,
                      rb_err *err)
{
    for (size_t i = 0; i < obj->count; i++) {
        const rb_json_value *m = &obj->items[i];
        bool known = false;
        for (size_t k = 0; allowed[k] != NULL && !known; k++) {
            known = strlen(allowed[k]) == m->key_len && memcmp(allowed[k], m->key, m->key_len) == 0;
        }
        if (!known) {
            return rb_err_set(err, RB_EINVAL, 0, "%s: unknown key \"%.64s\"", where, m->key);
        }
        for (size_t j = 0; j < i; j++) {
            if (obj->items[j].key_len == m->key_len &&
                memcmp(obj->items[j].key, m->key, m->key_len) == 0) {
                return rb_err_set(err, RB_EINVAL, 0, "%s: duplicate key \"%.64s\"", where, m->key);
            }
        }
    }
    return 0;
}

static int take_topic(const rb_json_value *v, const char *where, char **out, size_t *out_len,
                      rb_err *err)
{
    if (v == NULL || v->type != RB_JSON_STRING) {
        return rb_err_set(err, RB_EINVAL, 0, "%s: topic must be a string", where);
    }
    if (v->str_len == 0 || v->str_len > RB_TOPIC_BYTES_MAX) {
        return rb_err_set(err, RB_EINVAL, 0, "%s: topic must be 1..%d bytes", where,
                          RB_TOPIC_BYTES_MAX);
    }
    if (memchr(v->str, '\0', v->str_len) != NULL) {
        return rb_err_set(err, RB_EINVAL, 0, "%s: topic contains NUL", where);
    }
    *out = strdup(v->str);
    if (*out == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "%s: out of memory", where);
    }
    if (out_len != NULL) {
        *out_len = v->str_len;
    }
    return 0;
}

/* A cursor is a non-negative integer, its decimal string, or "now"; absent
 * means "now". */
static int take_cursor(const rb_json_value *v, rb_cmd_add *add, const char *where, rb_err *err)
{
    add->is_now = v == NULL;
    if (v == NULL) {
        return 0;
    }
    if (v->type == RB_JSON_NUMBER && v->is_uint) {
        add->cursor = v->uint_value;
        return 0;
    }
    if (v->type == RB_JSON_STRING && strcmp(v->str, "now") == 0) {
        add->is_now = true;
        return 0;
    }
    if (v->type == RB_JSON_STRING && v->str_len > 0 && v->str_len <= 20 &&
        strspn(v->str, "0123456789") == v->str_len) {
        errno = 0;
        unsigned long long c = strtoull(v->str, NULL, 10);
        if (errno == 0) {
            add->cursor = c;
            return 0;
        }
    }
    return rb_err_set(err, RB_EINVAL, 0, "%s: cursor must be a non-negative integer or \"now\"",
                      where);
}

static int parse_adds(const rb_json_value *list, rb_cmd *cmd, rb_err *err)
{
    static const char *const keys[] = {"topic", "cursor", NULL};
    if (list->type != RB_JSON_ARRAY) {
        return bad(err, "add: must be an array of {\"topic\",\"cursor\"} objects");
    }
    cmd->adds = calloc(list->count + 1, sizeof *cmd->adds);
    if (cmd->adds == NULL) {
        return bad(err, "add: out of memory");
    }
    for (size_t i = 0; i < list->count; i++) {
        const rb_json_value *a = &list->items[i];
        char where[32];
        snprintf(where, sizeof where, "add[%zu]", i);
        if (a->type != RB_JSON_OBJECT) {
            return rb_err_set(err, RB_EINVAL, 0, "%s: must be an object", where);
        }
        int rc = check_keys(a, keys, where, err);
        if (rc == 0) {
            rc = take_topic(rb_json_get(a, "topic"), where, &cmd->adds[i].topic, NULL, err);
        }
        if (rc == 0) {
            cmd->add_count++;
            rc = take_cursor(rb_json_get(a, "cursor"), &cmd->adds[i], where, err);
        }
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

static int parse_removes(const rb_json_value *list, rb_cmd *cmd, rb_err *err)
{
    if (list->type != RB_JSON_ARRAY) {
        return bad(err, "remove: must be an array of topic strings");
    }
    cmd->removes = calloc(list->count + 1, sizeof *cmd->removes);
    if (cmd->removes == NULL) {
        return bad(err, "remove: out of memory");
    }
    for (size_t i = 0; i < list->count; i++) {
        char where[32];
        snprintf(where, sizeof where, "remove[%zu]", i);
        int rc = take_topic(&list->items[i], where, &cmd->removes[i], NULL, err);
        if (rc != 0) {
            return rc;
        }
        cmd->remove_count++;
    }
    return 0;
}

static int parse_mutate(const rb_json_value *doc, rb_cmd *cmd, rb_err *err)
{
    const rb_json_value *id = rb_json_get(doc, "mutate_id");
    const rb_json_value *ho = rb_json_get(doc, "history_only");
    const rb_json_value *add = rb_json_get(doc, "add");
    const rb_json_value *rem = rb_json_get(doc, "remove");
    const rb_json_value *epoch = rb_json_get(doc, "epoch");
    cmd->kind = RB_CMD_MUTATE;
    if (add == NULL && rem == NULL) {
        return bad(err, "command has nothing to do: expected add, remove, close or publish");
    }
    if (id != NULL && (id->type != RB_JSON_NUMBER || !id->is_uint || id->uint_value >> 63 != 0)) {
        return bad(err, "mutate_id: must be an integer in 1..2^63-1");
    }
    if (ho != NULL && ho->type != RB_JSON_BOOL) {
        return bad(err, "history_only: must be true or false");
    }
    if (epoch != NULL && (epoch->type != RB_JSON_NUMBER || !epoch->is_uint)) {
        return bad(err, "epoch: must be an integer in 0..2^64-1 (from the started event)");
    }
    cmd->epoch = epoch != NULL ? epoch->uint_value : 0;
    cmd->mutate_id = id != NULL ? id->uint_value : 0;
    cmd->history_only = ho != NULL && ho->boolean;
    int rc = add != NULL ? parse_adds(add, cmd, err) : 0;
    if (rc == 0 && rem != NULL) {
        rc = parse_removes(rem, cmd, err);
    }
    if (rc == 0 && cmd->add_count > 0 && cmd->mutate_id == 0) {
        rc = bad(err, "mutate_id: required (nonzero) when adding topics");
    }
    return rc;
}

static int parse_publish(const rb_json_value *pub, rb_cmd *cmd, rb_err *err)
{
    static const char *const keys[] = {"topic", "data", "data_b64", NULL};
    cmd->kind = RB_CMD_PUBLISH;
    if (pub->type != RB_JSON_OBJECT) {
        return bad(err, "publish: must be an object {\"topic\",\"data\"}");
    }
    int rc = check_keys(pub, keys, "publish", err);
    if (rc == 0) {
        rc = take_topic(rb_json_get(pub, "topic"), "publish", &cmd->topic, &cmd->topic_len, err);
    }
    if (rc != 0) {
        return rc;
    }
    const rb_json_value *data = rb_json_get(pub, "data");
    const rb_json_value *b64 = rb_json_get(pub, "data_b64");
    if (data != NULL && b64 != NULL) {
        return bad(err, "publish: give data or data_b64, not both");
    }
    const rb_json_value *d = data != NULL ? data : b64;
    if (d != NULL && d->type != RB_JSON_STRING) {
        return bad(err, "publish: data must be a string");
    }
    size_t len = d != NULL ? d->str_len : 0;
    cmd->data = malloc(len + 1);
    if (cmd->data == NULL) {
        return bad(err, "publish: out of memory");
    }
    if (b64 != NULL) {
        return rb_base64_decode(b64->str, b64->str_len, cmd->data, &cmd->data_len, err) == 0
                   ? 0
                   : bad(err, "publish: data_b64 is not valid base64");
    }
    if (d != NULL) {
        memcpy(cmd->data, d->str, len);
    }
    cmd->data_len = len;
    return 0;
}

static int parse_doc(const rb_json_value *doc, rb_cmd *cmd, rb_err *err)
{
    static const char *const keys[] = {"mutate_id", "add",   "remove",  "history_only",
                                       "epoch",     "close", "publish", NULL};
    if (doc->type != RB_JSON_OBJECT) {
        return bad(err, "a command must be a JSON object");
    }
    int rc = check_keys(doc, keys, "command", err);
    if (rc != 0) {
        return rc;
    }
    const rb_json_value *close = rb_json_get(doc, "close");
    const rb_json_value *pub = rb_json_get(doc, "publish");
    if ((close != NULL || pub != NULL) && doc->count != 1) {
        return bad(err, "close and publish commands take no other keys");
    }
    if (close != NULL) {
        cmd->kind = RB_CMD_CLOSE;
        return close->type == RB_JSON_BOOL && close->boolean ? 0 : bad(err, "close: must be true");
    }
    if (pub != NULL) {
        return parse_publish(pub, cmd, err);
    }
    return parse_mutate(doc, cmd, err);
}

int rb_cmd_parse(const char *line, size_t len, rb_cmd *cmd, rb_err *err)
{
    memset(cmd, 0, sizeof *cmd);
    rb_json_value *doc = NULL;
    rb_err e = {0};
    int rc = rb_json_parse(line, len, &doc, &e);
    if (rc != 0) {
        return rb_err_set(err, rc, 0, "bad JSON: %s", e.msg);
    }
    rc = parse_doc(doc, cmd, err);
    rb_json_free(doc);
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
