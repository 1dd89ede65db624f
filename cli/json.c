/* JSON output with escaping, and base64 strings (common/base64). Parsing is libjansson's
 * (cmdjson.c); output stays a small writer, since the CLI prints a line per
 * message and every seq and epoch as an unsigned 64-bit number. */
#include "cli/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/base64.h"

/* ---- output ---- */

void rb_json_buf_init(rb_json_buf *b)
{
    memset(b, 0, sizeof *b);
}

void rb_json_buf_deinit(rb_json_buf *b)
{
    free(b->ptr);
    memset(b, 0, sizeof *b);
}

void rb_json_buf_reset(rb_json_buf *b)
{
    b->len = 0;
    b->oom = false;
    if (b->ptr != NULL) {
        b->ptr[0] = '\0';
    }
}

static char *buf_grow(rb_json_buf *b, size_t more)
{
    if (b->oom) {
        return NULL;
    }
    if (b->cap - b->len <= more) {
        size_t next = b->cap == 0 ? 256 : b->cap;
        while (next - b->len <= more) {
            next *= 2;
        }
        char *p = realloc(b->ptr, next);
        if (p == NULL) {
            b->oom = true;
            return NULL;
        }
        b->ptr = p;
        b->cap = next;
    }
    return b->ptr + b->len;
}

void rb_json_put_raw(rb_json_buf *b, const char *s, size_t len)
{
    char *p = buf_grow(b, len);
    if (p != NULL) {
        memcpy(p, s, len);
        b->len += len;
        b->ptr[b->len] = '\0';
    }
}

static size_t escape_byte(unsigned char c, char out[7])
{
    static const char hex[] = "0123456789abcdef";
    const char *two = NULL;
    switch (c) {
    case '"':
        two = "\\\"";
        break;
    case '\\':
        two = "\\\\";
        break;
    case '\n':
        two = "\\n";
        break;
    case '\r':
        two = "\\r";
        break;
    case '\t':
        two = "\\t";
        break;
    case '\b':
        two = "\\b";
        break;
    case '\f':
        two = "\\f";
        break;
    default:
        break;
    }
    if (two != NULL) {
        memcpy(out, two, 2);
        return 2;
    }
    if (c < 0x20 || c == 0x7f) {
        memcpy(out, "\\u00", 4);
        out[4] = hex[c >> 4];
        out[5] = hex[c & 0xf];
        return 6;
    }
    out[0] = (char)c;
    return 1;
}

void rb_json_put_str(rb_json_buf *b, const void *s, size_t len)
{
    const unsigned char *p = s;
    /* Worst case: every byte becomes \u00XX. */
    char *out = buf_grow(b, len * 6 + 2);
    if (out == NULL) {
        return;
    }
    size_t n = 0;
    out[n++] = '"';
    for (size_t i = 0; i < len; i++) {
        n += escape_byte(p[i], out + n);
    }
    out[n++] = '"';
    b->len += n;
    b->ptr[b->len] = '\0';
}

void rb_json_put_u64(rb_json_buf *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    rb_json_put_raw(b, tmp, (size_t)n);
}

void rb_json_put_base64(rb_json_buf *b, const void *data, size_t len)
{
    size_t n = rb_base64_encoded_len(len, 0);
    char *out = buf_grow(b, n + 2);
    if (out == NULL) {
        return;
    }
    out[0] = '"';
    rb_base64_encode(out + 1, data, len, 0);
    out[n + 1] = '"';
    b->len += n + 2;
    b->ptr[b->len] = '\0';
}
