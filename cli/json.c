/* JSON output with escaping, and base64. Parsing is libjansson's
 * (cmdjson.c); output stays a small writer, since the CLI prints a line per
 * message and every seq and epoch as an unsigned 64-bit number. */
#include "cli/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    size_t n = rb_base64_encoded_len(len);
    char *out = buf_grow(b, n + 2);
    if (out == NULL) {
        return;
    }
    out[0] = '"';
    rb_base64_encode(out + 1, data, len);
    out[n + 1] = '"';
    b->len += n + 2;
    b->ptr[b->len] = '\0';
}

/* ---- base64 ---- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t rb_base64_encoded_len(size_t len)
{
    return (len + 2) / 3 * 4;
}

void rb_base64_encode(char *out, const void *data, size_t len)
{
    const uint8_t *p = data;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len) {
            v |= (uint32_t)p[i + 1] << 8;
        }
        if (i + 2 < len) {
            v |= p[i + 2];
        }
        out[o++] = b64_alphabet[(v >> 18) & 63];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? b64_alphabet[v & 63] : '=';
    }
}

static int b64_value(char c)
{
    const char *at = c != '\0' ? strchr(b64_alphabet, c) : NULL;
    return at != NULL ? (int)(at - b64_alphabet) : -1;
}

int rb_base64_decode(const char *text, size_t len, uint8_t *out, size_t *out_len, rb_err *err)
{
    if (len % 4 != 0) {
        return rb_err_set(err, RB_EINVAL, 0, "base64: length %zu is not a multiple of 4", len);
    }
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        bool last = i + 4 == len;
        int pad = (last && text[i + 3] == '=') ? (text[i + 2] == '=' ? 2 : 1) : 0;
        uint32_t v = 0;
        for (int k = 0; k < 4; k++) {
            int d = k >= 4 - pad ? 0 : b64_value(text[i + (size_t)k]);
            if (d < 0) {
                return rb_err_set(err, RB_EINVAL, 0, "base64: bad character at %zu", i + (size_t)k);
            }
            v = (v << 6) | (uint32_t)d;
        }
        /* Bits under the padding must be zero (canonical encoding). */
        if ((pad == 1 && (v & 0xff) != 0) || (pad == 2 && (v & 0xffff) != 0)) {
            return rb_err_set(err, RB_EINVAL, 0, "base64: nonzero bits before padding");
        }
        out[o++] = (uint8_t)(v >> 16);
        if (pad < 2) {
            out[o++] = (uint8_t)(v >> 8);
        }
        if (pad < 1) {
            out[o++] = (uint8_t)v;
        }
    }
    *out_len = o;
    return 0;
}
