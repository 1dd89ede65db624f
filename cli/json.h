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

/* ---- base64 ---- */

/* Encoded size of len bytes, without a terminator. */
size_t rb_base64_encoded_len(size_t len);
/* Writes the encoding of data to out (rb_base64_encoded_len(len) bytes). */
void rb_base64_encode(char *out, const void *data, size_t len);
/* Decodes padded base64 text into out (at least len / 4 * 3 bytes).
 * Returns 0 and the size in *out_len, or RB_EINVAL for bad characters,
 * lengths or padding. */
int rb_base64_decode(const char *text, size_t len, uint8_t *out, size_t *out_len, rb_err *err);

#endif
