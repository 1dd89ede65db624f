/* JSON for the CLI: an output buffer that escapes strings, base64, and a
 * small bounded parser for command lines read from stdin. It owns only
 * syntax; what a command means is left to cmdjson.c. */
#ifndef RB_CLI_JSON_H
#define RB_CLI_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Nesting of arrays and objects a parsed document may have; commands need 3. */
#define RB_JSON_DEPTH_MAX 32

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

/* ---- parsing ---- */

typedef enum rb_json_type {
    RB_JSON_NULL = 0,
    RB_JSON_BOOL = 1,
    RB_JSON_NUMBER = 2,
    RB_JSON_STRING = 3,
    RB_JSON_ARRAY = 4,
    RB_JSON_OBJECT = 5,
} rb_json_type;

typedef struct rb_json_value rb_json_value;
struct rb_json_value {
    rb_json_type type;
    bool boolean;
    bool is_uint;        /* NUMBER: a non-negative integer that fits 64 bits */
    uint64_t uint_value; /* valid when is_uint */
    char *str;           /* STRING: decoded, NUL-terminated (may contain NUL) */
    size_t str_len;
    rb_json_value *items; /* ARRAY, OBJECT: the elements or members, in order */
    size_t count;
    char *key; /* a member of an OBJECT: its decoded name */
    size_t key_len;
};

/* Parses one JSON document (RFC 8259; nothing but whitespace after it).
 * Returns 0 with *out owned by the caller (free with rb_json_free), or
 * RB_EINVAL with a message giving the byte column and the problem, or
 * RB_ENOMEM. */
int rb_json_parse(const char *text, size_t len, rb_json_value **out, rb_err *err);
void rb_json_free(rb_json_value *v);

/* The member of obj named key, or NULL. */
const rb_json_value *rb_json_get(const rb_json_value *obj, const char *key);

/* "null", "boolean", "number", ... */
const char *rb_json_type_name(rb_json_type type);

#endif
