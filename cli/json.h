/* JSON output for the CLI: a buffer that escapes strings and prints u64s,
 * and base64. It owns only syntax; the commands read from stdin are parsed
 * by libjansson in cmdjson.c. */
#ifndef RB_CLI_JSON_H
#define RB_CLI_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* ---- output ---- */

typedef struct rb_json_buf {
    char *ptr; /* owned; NUL-terminated */
    size_t len;
    size_t cap;
    bool oom; /* an append failed; the contents are incomplete */
} rb_json_buf;

void rb_json_buf_init(rb_json_buf *b);
void rb_json_buf_deinit(rb_json_buf *b);
void rb_json_buf_reset(rb_json_buf *b);
void rb_json_put_raw(rb_json_buf *b, const char *s, size_t len);
/* Appends s as a JSON string with quotes. s must be valid UTF-8; '"', '\\'
 * and control characters (U+0000..U+001F, U+007F) are escaped. */
void rb_json_put_str(rb_json_buf *b, const void *s, size_t len);
void rb_json_put_u64(rb_json_buf *b, uint64_t v);
/* Appends the base64 (RFC 4648, padded) of data, with quotes. */
void rb_json_put_base64(rb_json_buf *b, const void *data, size_t len);

#endif
