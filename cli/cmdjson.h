/* The commands of `ringbus stream`, one JSON object per stdin line:
 *   {"mutate_id":7,"add":[{"topic":"a","cursor":0},{"topic":"b","cursor":"now"}],
 *    "remove":["c"],"history_only":false,"epoch":1234}
 *   {"close":true}
 *   {"publish":{"topic":"a","data":"x"}}   (or "data_b64":"eA==")
 * This module turns a line into an rb_cmd (the JSON parsed by libjansson,
 * strictly), rejecting anything else with a message that names the column
 * ("bad JSON: column 24: duplicate object key near '\"remove\"'") or the
 * field ("epoch: must be an integer in 0..2^64-1 ..."); integers are taken
 * up to UINT64_MAX. Sending it is left to cli.c. */
#ifndef RB_CLI_CMDJSON_H
#define RB_CLI_CMDJSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef enum rb_cmd_kind {
    RB_CMD_MUTATE = 1,
    RB_CMD_CLOSE = 2,
    RB_CMD_PUBLISH = 3,
} rb_cmd_kind;

typedef struct rb_cmd_add {
    char *topic; /* owned, NUL-terminated, 1..255 bytes */
    uint64_t cursor;
    bool is_now;
} rb_cmd_add;

typedef struct rb_cmd {
    rb_cmd_kind kind;
    /* MUTATE */
    uint64_t mutate_id; /* nonzero when add_count > 0 */
    uint64_t epoch;     /* the cursors' store epoch; 0 = none known */
    bool history_only;
    rb_cmd_add *adds; /* owned */
    size_t add_count;
    char **removes; /* owned, each NUL-terminated */
    size_t remove_count;
    /* PUBLISH */
    char *topic; /* owned */
    size_t topic_len;
    uint8_t *data; /* owned */
    size_t data_len;
} rb_cmd;

/* Parses one line (without its newline; it need not be NUL-terminated and
 * may hold NUL bytes, which are refused). Returns 0 with *cmd filled (free
 * with rb_cmd_free), or RB_EINVAL / RB_ENOMEM with a message and *cmd
 * empty. */
int rb_cmd_parse(const char *line, size_t len, rb_cmd *cmd, rb_err *err);
void rb_cmd_free(rb_cmd *cmd);

#endif
