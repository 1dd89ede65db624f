/* JSON output with escaping, base64, and a recursive-descent parser bounded
 * in depth (RB_JSON_DEPTH_MAX) and by the caller's line length. */
#include "cli/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/frame.h"

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

/* ---- parsing ---- */

typedef struct parser {
    const char *s;
    size_t len;
    size_t pos;
    int depth;
    rb_err *err;
} parser;

static int fail(parser *p, const char *what)
{
    return rb_err_set(p->err, RB_EINVAL, 0, "column %zu: %s", p->pos + 1, what);
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len && strchr(" \t\r\n", p->s[p->pos]) != NULL && p->s[p->pos] != '\0') {
        p->pos++;
    }
}

static int parse_value(parser *p, rb_json_value *v);

static int hex4(parser *p, uint32_t *out)
{
    if (p->len - p->pos < 4) {
        return fail(p, "truncated \\u escape");
    }
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos++];
        int d = (c >= '0' && c <= '9')   ? c - '0'
                : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                         : -1;
        if (d < 0) {
            return fail(p, "bad hex digit in \\u escape");
        }
        v = (v << 4) | (uint32_t)d;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decodes \uXXXX (and a following low surrogate) after the 'u'. */
static int unicode_escape(parser *p, char *out, size_t *n)
{
    uint32_t cp;
    int rc = hex4(p, &cp);
    if (rc != 0) {
        return rc;
    }
    if (cp >= 0xdc00 && cp <= 0xdfff) {
        return fail(p, "lone low surrogate in \\u escape");
    }
    if (cp >= 0xd800 && cp <= 0xdbff) {
        uint32_t lo;
        if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
            return fail(p, "high surrogate without a low surrogate");
        }
        p->pos += 2;
        if ((rc = hex4(p, &lo)) != 0) {
            return rc;
        }
        if (lo < 0xdc00 || lo > 0xdfff) {
            return fail(p, "high surrogate without a low surrogate");
        }
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    *n += put_utf8(out + *n, cp);
    return 0;
}

static int escape(parser *p, char *out, size_t *n)
{
    static const char from[] = "\"\\/bfnrt";
    static const char to[] = "\"\\/\b\f\n\r\t";
    if (p->pos >= p->len) {
        return fail(p, "unterminated string");
    }
    char c = p->s[p->pos++];
    if (c == 'u') {
        return unicode_escape(p, out, n);
    }
    const char *at = c != '\0' ? strchr(from, c) : NULL;
    if (at == NULL) {
        p->pos--;
        return fail(p, "bad escape in string");
    }
    out[(*n)++] = to[at - from];
    return 0;
}

/* Parses a string at '"'; returns it decoded, NUL-terminated, in *out. */
static int parse_string(parser *p, char **out, size_t *out_len)
{
    p->pos++;
    /* Decoded text is never longer than its source. */
    char *buf = malloc(p->len - p->pos + 1);
    if (buf == NULL) {
        return rb_err_set(p->err, RB_ENOMEM, 0, "json: out of memory");
    }
    size_t n = 0;
    int rc = 0;
    for (;;) {
        if (p->pos >= p->len) {
            rc = fail(p, "unterminated string");
            break;
        }
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') {
            p->pos++;
            break;
        }
        if (c < 0x20) {
            rc = fail(p, "control character in string");
            break;
        }
        p->pos++;
        if (c == '\\') {
            if ((rc = escape(p, buf, &n)) != 0) {
                break;
            }
        } else {
            buf[n++] = (char)c;
        }
    }
    if (rc == 0 && !rb_utf8_valid((const uint8_t *)buf, n)) {
        rc = fail(p, "string is not valid UTF-8");
    }
    if (rc != 0) {
        free(buf);
        return rc;
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return 0;
}

static size_t digits(parser *p)
{
    size_t start = p->pos;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        p->pos++;
    }
    return p->pos - start;
}

static int parse_number(parser *p, rb_json_value *v)
{
    bool neg = p->s[p->pos] == '-';
    p->pos += neg ? 1 : 0;
    size_t int_start = p->pos;
    size_t int_digits = digits(p);
    if (int_digits == 0 || (int_digits > 1 && p->s[int_start] == '0')) {
        return fail(p, "bad number");
    }
    bool integral = true;
    if (p->pos < p->len && p->s[p->pos] == '.') {
        p->pos++;
        integral = false;
        if (digits(p) == 0) {
            return fail(p, "bad number: no digits after '.'");
        }
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        integral = false;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) {
            p->pos++;
        }
        if (digits(p) == 0) {
            return fail(p, "bad number: no digits in exponent");
        }
    }
    v->type = RB_JSON_NUMBER;
    v->is_uint = integral && !neg;
    for (size_t i = int_start; v->is_uint && i < int_start + int_digits; i++) {
        uint64_t d = (uint64_t)(p->s[i] - '0');
        if (v->uint_value > (UINT64_MAX - d) / 10) {
            v->is_uint = false;
        }
        v->uint_value = v->uint_value * 10 + d;
    }
    return 0;
}

static int parse_literal(parser *p, rb_json_value *v)
{
    static const struct {
        const char *word;
        rb_json_type type;
        bool value;
    } words[] = {{"true", RB_JSON_BOOL, true},
                 {"false", RB_JSON_BOOL, false},
                 {"null", RB_JSON_NULL, false}};
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(words[i].word);
        if (p->len - p->pos >= n && memcmp(p->s + p->pos, words[i].word, n) == 0) {
            p->pos += n;
            v->type = words[i].type;
            v->boolean = words[i].value;
            return 0;
        }
    }
    return fail(p, "unexpected character");
}

static rb_json_value *push_item(parser *p, rb_json_value *v)
{
    if ((v->count & (v->count - 1)) == 0) {
        size_t next = v->count == 0 ? 4 : v->count * 2;
        rb_json_value *items = realloc(v->items, next * sizeof *items);
        if (items == NULL) {
            rb_err_set(p->err, RB_ENOMEM, 0, "json: out of memory");
            return NULL;
        }
        v->items = items;
    }
    rb_json_value *item = &v->items[v->count++];
    memset(item, 0, sizeof *item);
    return item;
}

/* Parses the elements of an array or the members of an object after its
 * opening bracket. */
static int parse_container(parser *p, rb_json_value *v, char close)
{
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return 0;
    }
    for (;;) {
        rb_json_value *item = push_item(p, v);
        if (item == NULL) {
            return RB_ENOMEM;
        }
        int rc;
        if (close == '}') {
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != '"') {
                return fail(p, "expected a member name");
            }
            if ((rc = parse_string(p, &item->key, &item->key_len)) != 0) {
                return rc;
            }
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                return fail(p, "expected ':'");
            }
            p->pos++;
        }
        if ((rc = parse_value(p, item)) != 0) {
            return rc;
        }
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            return 0;
        }
        return fail(p, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int parse_value(parser *p, rb_json_value *v)
{
    skip_ws(p);
    if (p->pos >= p->len) {
        return fail(p, "unexpected end of input");
    }
    char c = p->s[p->pos];
    if (c == '{' || c == '[') {
        if (p->depth >= RB_JSON_DEPTH_MAX) {
            return fail(p, "nested too deeply");
        }
        p->depth++;
        v->type = c == '{' ? RB_JSON_OBJECT : RB_JSON_ARRAY;
        int rc = parse_container(p, v, c == '{' ? '}' : ']');
        p->depth--;
        return rc;
    }
    if (c == '"') {
        v->type = RB_JSON_STRING;
        return parse_string(p, &v->str, &v->str_len);
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        return parse_number(p, v);
    }
    return parse_literal(p, v);
}

static void free_children(rb_json_value *v)
{
    for (size_t i = 0; i < v->count; i++) {
        free_children(&v->items[i]);
    }
    free(v->items);
    free(v->str);
    free(v->key);
}

void rb_json_free(rb_json_value *v)
{
    if (v != NULL) {
        free_children(v);
        free(v);
    }
}

int rb_json_parse(const char *text, size_t len, rb_json_value **out, rb_err *err)
{
    *out = NULL;
    rb_json_value *v = calloc(1, sizeof *v);
    if (v == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "json: out of memory");
    }
    parser p = {.s = text, .len = len, .err = err};
    int rc = parse_value(&p, v);
    if (rc == 0) {
        skip_ws(&p);
        if (p.pos < p.len) {
            rc = fail(&p, "junk after the JSON value");
        }
    }
    if (rc != 0) {
        rb_json_free(v);
        return rc;
    }
    *out = v;
    return 0;
}

const rb_json_value *rb_json_get(const rb_json_value *obj, const char *key)
{
    if (obj == NULL || obj->type != RB_JSON_OBJECT) {
        return NULL;
    }
    size_t key_len = strlen(key);
    for (size_t i = 0; i < obj->count; i++) {
        const rb_json_value *m = &obj->items[i];
        if (m->key_len == key_len && memcmp(m->key, key, key_len) == 0) {
            return m;
        }
    }
    return NULL;
}

const char *rb_json_type_name(rb_json_type type)
{
    static const char *const names[] = {"null", "boolean", "number", "string", "array", "object"};
    return (unsigned)type < 6 ? names[type] : "unknown";
}
