/* The TOML subset parser: a single pass over validated UTF-8 with one byte
 * of lookahead (a few at string delimiters), building the tree as it goes.
 * Recursion happens only inside values (arrays, inline tables) and is bounded
 * by RB_CONFIG_NESTING_MAX. It knows nothing about ringbus keys. */
#include "config/toml.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/limits.h"

/* Table flags: how a table came to exist decides what may extend it later. */
#define TBL_HEADER   0x1 /* defined by its own [header] (or [[header]] item) */
#define TBL_DOTTED   0x2 /* created by a dotted key in a key/value line */
#define TBL_INLINE   0x4 /* part of an inline table: sealed */
#define ARR_OF_TABLE 0x8 /* an array made by [[header]] lines */

/* Key parts in one key; each part is a table level, so the nesting limit
 * bounds them too. */
#define KEY_PARTS_MAX RB_CONFIG_NESTING_MAX
/* Longest key path or token quoted in an error message. */
#define SHOW_BYTES_MAX 96

typedef struct entry {
    char *key;
    size_t key_len;
    uint32_t line;
    uint32_t column;
    rb_toml_value *value;
} entry;

struct rb_toml_value {
    rb_toml_type type;
    uint8_t flags;
    uint8_t depth; /* tables and arrays above it, the root table being 0 */
    uint32_t line;
    uint32_t column;
    union {
        struct {
            char *bytes;
            size_t len;
        } str;
        int64_t integer;
        bool boolean;
        struct {
            rb_toml_value **items;
            size_t count;
            size_t cap;
        } array;
        struct {
            entry *entries;
            size_t count;
            size_t cap;
        } table;
    } u;
};

typedef struct parser {
    const char *text;
    size_t len;
    size_t pos;
    uint32_t line;
    uint32_t col;
    const char *name;
    rb_err *err;
    rb_toml_value *root;
    rb_toml_value *current;       /* the table key/value lines go into */
    char section[SHOW_BYTES_MAX]; /* the current header's key, for messages */
} parser;

typedef struct seg {
    char *text;
    size_t len;
    uint32_t line;
    uint32_t col;
} seg;

typedef struct keypath {
    seg segs[KEY_PARTS_MAX];
    size_t count;
} keypath;

/* A growable byte string, always NUL-terminated once it has storage. */
typedef struct sbuf {
    char *data;
    size_t len;
    size_t cap;
} sbuf;

static int parse_value(parser *p, uint8_t depth, rb_toml_value **out);

/* ---- cursor ---- */

static int peek(const parser *p)
{
    return p->pos < p->len ? (unsigned char)p->text[p->pos] : -1;
}

static int peek_at(const parser *p, size_t ahead)
{
    return p->pos + ahead < p->len ? (unsigned char)p->text[p->pos + ahead] : -1;
}

static void advance(parser *p)
{
    RB_ASSERT(p->pos < p->len);
    unsigned char c = (unsigned char)p->text[p->pos++];
    if (c == '\n') {
        p->line++;
        p->col = 1;
    } else if ((c & 0xC0) != 0x80) {
        /* Continuation bytes belong to the character their lead byte counted. */
        p->col++;
    }
}

static void advance_n(parser *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        advance(p);
    }
}

static bool is_control(int c)
{
    return (c >= 0 && c < 0x20 && c != '\t') || c == 0x7F;
}

static bool is_bare_key_char(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/* ---- errors ---- */

__attribute__((format(printf, 4, 5))) static int fail_at(parser *p, uint32_t line, uint32_t col,
                                                         const char *fmt, ...)
{
    char msg[RB_ERR_MSG_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return rb_err_set(p->err, RB_ECONFIG, 0, "%s:%u:%u: %s", p->name, line, col, msg);
}

#define fail(p, ...) fail_at((p), (p)->line, (p)->col, __VA_ARGS__)

static int fail_nomem(parser *p)
{
    return rb_err_set(p->err, RB_ENOMEM, 0, "%s: out of memory while parsing", p->name);
}

/* Names the character at the cursor for "expected X, found Y" messages. */
static const char *describe_next(const parser *p, char *buf, size_t cap)
{
    int c = peek(p);
    if (c < 0) {
        return "end of file";
    }
    if (c == '\n' || (c == '\r' && peek_at(p, 1) == '\n')) {
        return "end of line";
    }
    if (c == '\r') {
        return "a carriage return";
    }
    if (c == ' ' || c == '\t') {
        return "whitespace";
    }
    if (c < 0x20 || c == 0x7F) {
        snprintf(buf, cap, "control character U+%04X", (unsigned)c);
        return buf;
    }
    size_t n = 1;
    while (n < 4 && (peek_at(p, n) & 0xC0) == 0x80) {
        n++;
    }
    snprintf(buf, cap, "'%.*s'", (int)n, p->text + p->pos);
    return buf;
}

/* Copies bytes for a message, replacing control characters with '?'. */
static void show(char *out, size_t cap, const char *text, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        char c = text[i];
        out[i] = is_control((unsigned char)c) ? '?' : c;
    }
    out[n] = '\0';
}

/* The dotted key parts[0..upto] for messages, prefixed by the section when
 * the key is relative to it. */
static void show_key(const parser *p, const keypath *kp, size_t upto, bool in_section, char *out,
                     size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    if (in_section && p->section[0] != '\0') {
        n = (size_t)snprintf(out, cap, "%s.", p->section);
    }
    for (size_t i = 0; i <= upto && n + 1 < cap; i++) {
        show(out + n, cap - n, kp->segs[i].text, kp->segs[i].len);
        n += strlen(out + n);
        if (i < upto && n + 1 < cap) {
            out[n++] = '.';
            out[n] = '\0';
        }
    }
}

const char *rb_toml_type_article(rb_toml_type type)
{
    switch (type) {
    case RB_TOML_STRING:
        return "a string";
    case RB_TOML_INTEGER:
        return "an integer";
    case RB_TOML_BOOL:
        return "a boolean";
    case RB_TOML_ARRAY:
        return "an array";
    case RB_TOML_TABLE:
        return "a table";
    }
    return "a value";
}

/* ---- nodes ---- */

static void value_free(rb_toml_value *v)
{
    if (v == NULL) {
        return;
    }
    if (v->type == RB_TOML_STRING) {
        free(v->u.str.bytes);
    } else if (v->type == RB_TOML_ARRAY) {
        for (size_t i = 0; i < v->u.array.count; i++) {
            value_free(v->u.array.items[i]);
        }
        free(v->u.array.items);
    } else if (v->type == RB_TOML_TABLE) {
        for (size_t i = 0; i < v->u.table.count; i++) {
            free(v->u.table.entries[i].key);
            value_free(v->u.table.entries[i].value);
        }
        free(v->u.table.entries);
    }
    free(v);
}

/* A new node at the given depth; containers deeper than the limit fail. */
static int value_new(parser *p, rb_toml_type type, uint8_t depth, uint32_t line, uint32_t col,
                     rb_toml_value **out)
{
    bool container = type == RB_TOML_ARRAY || type == RB_TOML_TABLE;
    if (container && depth > RB_CONFIG_NESTING_MAX) {
        return fail_at(p, line, col, "nesting deeper than %d levels", RB_CONFIG_NESTING_MAX);
    }
    rb_toml_value *v = calloc(1, sizeof *v);
    if (v == NULL) {
        return fail_nomem(p);
    }
    v->type = type;
    v->depth = depth;
    v->line = line;
    v->column = col;
    *out = v;
    return 0;
}

static entry *table_find(rb_toml_value *t, const char *key, size_t len)
{
    RB_ASSERT(t->type == RB_TOML_TABLE);
    for (size_t i = 0; i < t->u.table.count; i++) {
        entry *e = &t->u.table.entries[i];
        if (e->key_len == len && memcmp(e->key, key, len) == 0) {
            return e;
        }
    }
    return NULL;
}

/* Adds key s = v to table t, which takes v whether or not this succeeds. */
static int table_add(parser *p, rb_toml_value *t, const seg *s, rb_toml_value *v)
{
    RB_ASSERT(t->type == RB_TOML_TABLE);
    RB_ASSERT(table_find(t, s->text, s->len) == NULL);
    if (t->u.table.count == RB_TOML_TABLE_KEYS_MAX) {
        value_free(v);
        return fail_at(p, s->line, s->col, "more than %d keys in one table",
                       RB_TOML_TABLE_KEYS_MAX);
    }
    if (t->u.table.count == t->u.table.cap) {
        size_t cap = t->u.table.cap == 0 ? 8 : t->u.table.cap * 2;
        entry *e = realloc(t->u.table.entries, cap * sizeof *e);
        if (e == NULL) {
            value_free(v);
            return fail_nomem(p);
        }
        t->u.table.entries = e;
        t->u.table.cap = cap;
    }
    char *key = malloc(s->len + 1);
    if (key == NULL) {
        value_free(v);
        return fail_nomem(p);
    }
    memcpy(key, s->text, s->len);
    key[s->len] = '\0';
    t->u.table.entries[t->u.table.count++] =
        (entry){.key = key, .key_len = s->len, .line = s->line, .column = s->col, .value = v};
    return 0;
}

/* Appends v to array a, which takes v whether or not this succeeds. */
static int array_add(parser *p, rb_toml_value *a, rb_toml_value *v)
{
    RB_ASSERT(a->type == RB_TOML_ARRAY);
    if (a->u.array.count == a->u.array.cap) {
        size_t cap = a->u.array.cap == 0 ? 4 : a->u.array.cap * 2;
        rb_toml_value **items = realloc(a->u.array.items, cap * sizeof *items);
        if (items == NULL) {
            value_free(v);
            return fail_nomem(p);
        }
        a->u.array.items = items;
        a->u.array.cap = cap;
    }
    a->u.array.items[a->u.array.count++] = v;
    return 0;
}

/* ---- byte strings ---- */

static int sbuf_put(parser *p, sbuf *b, const char *bytes, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap == 0 ? 32 : b->cap;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char *data = realloc(b->data, cap);
        if (data == NULL) {
            return fail_nomem(p);
        }
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static int sbuf_putc(parser *p, sbuf *b, char c)
{
    return sbuf_put(p, b, &c, 1);
}

/* Copies the character at the cursor (all its UTF-8 bytes) and moves on. */
static int take_char(parser *p, sbuf *b)
{
    size_t n = 1;
    while (p->pos + n < p->len && ((unsigned char)p->text[p->pos + n] & 0xC0) == 0x80) {
        n++;
    }
    int rc = sbuf_put(p, b, p->text + p->pos, n);
    advance_n(p, n);
    return rc;
}

static size_t utf8_encode(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid UTF-8 sequence at s[0..avail), or 0 if invalid
 * (overlong forms, surrogates and code points past U+10FFFF included). */
static size_t utf8_valid_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (avail < n) {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
        return 0;
    }
    return n;
}

/* TOML documents are UTF-8; checking once up front lets everything after
 * treat multi-byte characters as opaque. */
static int check_utf8(parser *p)
{
    while (p->pos < p->len) {
        const unsigned char *s = (const unsigned char *)p->text + p->pos;
        size_t n = utf8_valid_len(s, p->len - p->pos);
        if (n == 0) {
            return fail(p, "invalid UTF-8 (byte 0x%02X)", s[0]);
        }
        advance_n(p, n);
    }
    p->pos = 0;
    p->line = 1;
    p->col = 1;
    return 0;
}

/* ---- whitespace, comments, line ends ---- */

static void skip_ws(parser *p)
{
    while (peek(p) == ' ' || peek(p) == '\t') {
        advance(p);
    }
}

static int skip_comment(parser *p)
{
    RB_ASSERT(peek(p) == '#');
    advance(p);
    for (int c = peek(p); c >= 0 && c != '\n'; c = peek(p)) {
        if (c == '\r' && peek_at(p, 1) == '\n') {
            break;
        }
        if (is_control(c)) {
            return fail(p, "control character U+%04X in a comment", (unsigned)c);
        }
        advance(p);
    }
    return 0;
}

/* Skips whitespace, comments and newlines, as allowed inside arrays. */
static int skip_blank(parser *p)
{
    for (;;) {
        skip_ws(p);
        int c = peek(p);
        if (c == '#') {
            int rc = skip_comment(p);
            if (rc < 0) {
                return rc;
            }
        } else if (c == '\n') {
            advance(p);
        } else if (c == '\r' && peek_at(p, 1) == '\n') {
            advance_n(p, 2);
        } else {
            return 0;
        }
    }
}

/* After a key/value or a header: optional whitespace and comment, then a
 * newline or the end of the file. */
static int expect_eol(parser *p, const char *after)
{
    skip_ws(p);
    if (peek(p) == '#') {
        int rc = skip_comment(p);
        if (rc < 0) {
            return rc;
        }
    }
    int c = peek(p);
    if (c < 0) {
        return 0;
    }
    if (c == '\n') {
        advance(p);
        return 0;
    }
    if (c == '\r' && peek_at(p, 1) == '\n') {
        advance_n(p, 2);
        return 0;
    }
    char buf[32];
    return fail(p, "expected end of line after %s, found %s", after,
                describe_next(p, buf, sizeof buf));
}

/* ---- strings ---- */

static int hex_digit(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* \uXXXX or \UXXXXXXXX with the cursor on 'u'/'U'. */
static int parse_unicode_escape(parser *p, sbuf *b, uint32_t line, uint32_t col)
{
    size_t digits = peek(p) == 'u' ? 4 : 8;
    advance(p);
    uint32_t cp = 0;
    for (size_t i = 0; i < digits; i++) {
        int d = hex_digit(peek(p));
        if (d < 0) {
            return fail_at(p, line, col, "invalid unicode escape: expected %zu hex digits", digits);
        }
        cp = cp * 16 + (uint32_t)d;
        advance(p);
    }
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        return fail_at(p, line, col, "invalid unicode escape: U+%04X is not a Unicode scalar value",
                       (unsigned)cp);
    }
    char out[4];
    return sbuf_put(p, b, out, utf8_encode(cp, out));
}

/* An escape sequence with the cursor on the backslash. */
static int parse_escape(parser *p, sbuf *b)
{
    uint32_t line = p->line;
    uint32_t col = p->col;
    advance(p);
    int c = peek(p);
    static const char from[] = "btnfr\"\\";
    static const char to[] = "\b\t\n\f\r\"\\";
    const char *hit = c > 0 ? strchr(from, c) : NULL;
    if (hit != NULL) {
        advance(p);
        return sbuf_putc(p, b, to[hit - from]);
    }
    if (c == 'u' || c == 'U') {
        return parse_unicode_escape(p, b, line, col);
    }
    if (c > 0x20 && c < 0x7F) {
        return fail_at(p, line, col, "invalid escape '\\%c'", c);
    }
    return fail_at(p, line, col, "invalid escape: '\\' must be followed by an escape character");
}

/* "..." or '...' on one line; the cursor is on the opening quote. */
static int parse_line_string(parser *p, sbuf *b)
{
    uint32_t line = p->line;
    uint32_t col = p->col;
    int quote = peek(p);
    advance(p);
    for (;;) {
        int c = peek(p);
        if (c < 0 || c == '\n' || c == '\r') {
            return fail_at(p, line, col, "unterminated string");
        }
        int rc;
        if (c == quote) {
            advance(p);
            return 0;
        } else if (c == '\\' && quote == '"') {
            rc = parse_escape(p, b);
        } else if (is_control(c)) {
            rc = fail(p, "control character U+%04X in a string", (unsigned)c);
        } else {
            rc = take_char(p, b);
        }
        if (rc < 0) {
            return rc;
        }
    }
}

/* A backslash that ends a line in a """ string: true if only whitespace
 * follows it up to the newline. */
static bool is_line_ending_backslash(const parser *p)
{
    size_t k = 1;
    while (peek_at(p, k) == ' ' || peek_at(p, k) == '\t') {
        k++;
    }
    return peek_at(p, k) == '\n' || (peek_at(p, k) == '\r' && peek_at(p, k + 1) == '\n');
}

/* One step inside a multi-line string other than its closing quotes. */
static int multiline_step(parser *p, sbuf *b, int quote)
{
    int c = peek(p);
    if (c == '\\' && quote == '"') {
        if (!is_line_ending_backslash(p)) {
            return parse_escape(p, b);
        }
        advance(p);
        while (peek(p) == ' ' || peek(p) == '\t' || peek(p) == '\n' ||
               (peek(p) == '\r' && peek_at(p, 1) == '\n')) {
            advance(p);
        }
        return 0;
    }
    if (c == '\r' && peek_at(p, 1) == '\n') {
        /* Newlines are normalised to LF. */
        advance_n(p, 2);
        return sbuf_putc(p, b, '\n');
    }
    if (c == '\n') {
        advance(p);
        return sbuf_putc(p, b, '\n');
    }
    if (is_control(c)) {
        return fail(p, "control character U+%04X in a string", (unsigned)c);
    }
    return take_char(p, b);
}

/* """...""" or '''...'''; the cursor is on the first of three quotes. */
static int parse_multiline_string(parser *p, sbuf *b)
{
    uint32_t line = p->line;
    uint32_t col = p->col;
    int quote = peek(p);
    advance_n(p, 3);
    /* A newline right after the opening delimiter is trimmed. */
    if (peek(p) == '\n') {
        advance(p);
    } else if (peek(p) == '\r' && peek_at(p, 1) == '\n') {
        advance_n(p, 2);
    }
    for (;;) {
        int c = peek(p);
        if (c < 0) {
            return fail_at(p, line, col, "unterminated multi-line string");
        }
        if (c != quote) {
            int rc = multiline_step(p, b, quote);
            if (rc < 0) {
                return rc;
            }
            continue;
        }
        size_t run = 0;
        while (peek_at(p, run) == quote) {
            run++;
        }
        /* Up to two quotes may sit just before the closing three; a longer
         * run closes after five and leaves the rest to expect_eol. */
        size_t take = run >= 3 ? (run > 5 ? 5 : run) : run;
        for (size_t i = 0; i < (run >= 3 ? take - 3 : run); i++) {
            int rc = sbuf_putc(p, b, (char)quote);
            if (rc < 0) {
                return rc;
            }
        }
        advance_n(p, take);
        if (run >= 3) {
            return 0;
        }
    }
}

/* Any string value; the cursor is on its first quote. */
static int parse_string(parser *p, sbuf *b)
{
    int quote = peek(p);
    if (peek_at(p, 1) == quote && peek_at(p, 2) == quote) {
        return parse_multiline_string(p, b);
    }
    return parse_line_string(p, b);
}

/* ---- keys ---- */

static void keypath_free(keypath *kp)
{
    for (size_t i = 0; i < kp->count; i++) {
        free(kp->segs[i].text);
    }
    kp->count = 0;
}

static int parse_simple_key(parser *p, seg *s)
{
    sbuf b = {0};
    int rc = 0;
    int c = peek(p);
    if (c == '"' || c == '\'') {
        rc = parse_line_string(p, &b);
    } else if (is_bare_key_char(c)) {
        while (rc == 0 && is_bare_key_char(peek(p))) {
            rc = sbuf_putc(p, &b, (char)peek(p));
            advance(p);
        }
    } else {
        char buf[32];
        rc = fail(p, "expected a key, found %s", describe_next(p, buf, sizeof buf));
    }
    if (rc == 0 && b.data == NULL) {
        rc = sbuf_put(p, &b, "", 0); /* the empty quoted key "" */
    }
    if (rc < 0) {
        free(b.data);
        return rc;
    }
    s->text = b.data;
    s->len = b.len;
    return 0;
}

/* A dotted key; the caller frees kp whatever this returns. */
static int parse_key(parser *p, keypath *kp)
{
    for (;;) {
        if (kp->count == KEY_PARTS_MAX) {
            return fail(p, "key has more than %d parts (nesting limit)", KEY_PARTS_MAX);
        }
        seg *s = &kp->segs[kp->count];
        s->line = p->line;
        s->col = p->col;
        int rc = parse_simple_key(p, s);
        if (rc < 0) {
            return rc;
        }
        kp->count++;
        skip_ws(p);
        if (peek(p) != '.') {
            return 0;
        }
        advance(p);
        skip_ws(p);
    }
}

/* Walks the leading parts of a key/value line's dotted key from table t,
 * creating tables as needed, and checks the last part is still free. Dotted
 * keys may only walk through tables that dotted keys created. */
static int resolve_dotted(parser *p, rb_toml_value *t, const keypath *kp, bool in_inline,
                          rb_toml_value **out)
{
    char shown[SHOW_BYTES_MAX];
    for (size_t i = 0; i + 1 < kp->count; i++) {
        const seg *s = &kp->segs[i];
        entry *e = table_find(t, s->text, s->len);
        if (e == NULL) {
            rb_toml_value *child = NULL;
            int rc = value_new(p, RB_TOML_TABLE, (uint8_t)(t->depth + 1), s->line, s->col, &child);
            if (rc < 0) {
                return rc;
            }
            child->flags = TBL_DOTTED | (in_inline ? TBL_INLINE : 0);
            rc = table_add(p, t, s, child);
            if (rc < 0) {
                return rc;
            }
            t = child;
            continue;
        }
        show_key(p, kp, i, !in_inline, shown, sizeof shown);
        rb_toml_value *v = e->value;
        if (v->type != RB_TOML_TABLE) {
            return fail_at(p, s->line, s->col, "key \"%s\" is %s (at %u:%u), not a table", shown,
                           rb_toml_type_article(v->type), v->line, v->column);
        }
        bool sealed = (v->flags & TBL_INLINE) != 0 && (!in_inline || (v->flags & TBL_DOTTED) == 0);
        if (sealed) {
            return fail_at(p, s->line, s->col, "cannot add keys to inline table \"%s\" (at %u:%u)",
                           shown, v->line, v->column);
        }
        if ((v->flags & TBL_DOTTED) == 0) {
            return fail_at(p, s->line, s->col,
                           "cannot add keys to table \"%s\" with dotted keys: a [header] made it "
                           "(at %u:%u)",
                           shown, v->line, v->column);
        }
        t = v;
    }
    const seg *last = &kp->segs[kp->count - 1];
    entry *e = table_find(t, last->text, last->len);
    if (e != NULL) {
        show_key(p, kp, kp->count - 1, !in_inline, shown, sizeof shown);
        return fail_at(p, last->line, last->col, "duplicate key \"%s\" (first defined at %u:%u)",
                       shown, e->line, e->column);
    }
    *out = t;
    return 0;
}

/* key = value inside table t (the current section or an inline table). */
static int parse_keyval(parser *p, rb_toml_value *t, bool in_inline)
{
    keypath kp = {0};
    char shown[SHOW_BYTES_MAX];
    rb_toml_value *target = NULL;
    rb_toml_value *v = NULL;
    int rc = parse_key(p, &kp);
    if (rc < 0) {
        goto out;
    }
    skip_ws(p);
    if (peek(p) != '=') {
        char buf[32];
        show_key(p, &kp, kp.count - 1, !in_inline, shown, sizeof shown);
        rc = fail(p, "expected '=' after key \"%s\", found %s", shown,
                  describe_next(p, buf, sizeof buf));
        goto out;
    }
    advance(p);
    skip_ws(p);
    rc = resolve_dotted(p, t, &kp, in_inline, &target);
    if (rc < 0) {
        goto out;
    }
    rc = parse_value(p, (uint8_t)(target->depth + 1), &v);
    if (rc < 0) {
        goto out;
    }
    rc = table_add(p, target, &kp.segs[kp.count - 1], v);
out:
    keypath_free(&kp);
    return rc;
}

/* ---- values ---- */

static int parse_array(parser *p, rb_toml_value *a)
{
    advance(p); /* '[' */
    for (;;) {
        int rc = skip_blank(p);
        if (rc < 0) {
            return rc;
        }
        if (peek(p) == ']') {
            advance(p);
            return 0;
        }
        rb_toml_value *item = NULL;
        rc = parse_value(p, (uint8_t)(a->depth + 1), &item);
        if (rc == 0) {
            rc = array_add(p, a, item);
        }
        if (rc == 0) {
            rc = skip_blank(p);
        }
        if (rc < 0) {
            return rc;
        }
        if (peek(p) == ',') {
            advance(p);
        } else if (peek(p) != ']') {
            char buf[32];
            return fail(p, "expected ',' or ']' in array, found %s",
                        describe_next(p, buf, sizeof buf));
        }
    }
}

/* { k = v, ... } on one line, without a trailing comma; sealed afterwards. */
static int parse_inline_table(parser *p, rb_toml_value *t)
{
    t->flags = TBL_INLINE;
    advance(p); /* '{' */
    skip_ws(p);
    if (peek(p) == '}') {
        advance(p);
        return 0;
    }
    for (;;) {
        int rc = parse_keyval(p, t, true);
        if (rc < 0) {
            return rc;
        }
        skip_ws(p);
        if (peek(p) == '}') {
            advance(p);
            return 0;
        }
        if (peek(p) != ',') {
            char buf[32];
            return fail(p, "expected ',' or '}' in inline table, found %s",
                        describe_next(p, buf, sizeof buf));
        }
        advance(p);
        skip_ws(p);
    }
}

/* Parses digits of the given radix with '_' only between digits. */
static int parse_digits(parser *p, const char *tok, size_t len, size_t i, unsigned radix,
                        uint64_t limit, uint64_t *out)
{
    uint64_t acc = 0;
    bool prev_digit = false;
    char shown[SHOW_BYTES_MAX];
    show(shown, sizeof shown, tok, len);
    if (i == len) {
        return fail(p, "invalid integer \"%s\": no digits", shown);
    }
    for (; i < len; i++) {
        if (tok[i] == '_') {
            if (!prev_digit || i + 1 == len) {
                return fail(p, "invalid integer \"%s\": '_' must sit between digits", shown);
            }
            prev_digit = false;
            continue;
        }
        int d = hex_digit(tok[i]);
        if (d < 0 || (unsigned)d >= radix) {
            return fail(p, "invalid integer \"%s\": unexpected '%c'", shown, tok[i]);
        }
        if (acc > (limit - (uint64_t)d) / radix) {
            return fail(p, "integer \"%s\" is out of range (64-bit signed)", shown);
        }
        acc = acc * radix + (uint64_t)d;
        prev_digit = true;
    }
    *out = acc;
    return 0;
}

static int parse_integer(parser *p, const char *tok, size_t len, int64_t *out)
{
    char shown[SHOW_BYTES_MAX];
    uint64_t v;
    if (len >= 2 && tok[0] == '0' && strchr("xob", tok[1]) != NULL) {
        unsigned radix = tok[1] == 'x' ? 16 : tok[1] == 'o' ? 8 : 2;
        int rc = parse_digits(p, tok, len, 2, radix, INT64_MAX, &v);
        *out = (int64_t)v;
        return rc;
    }
    size_t i = 0;
    bool negative = false;
    if (tok[0] == '+' || tok[0] == '-') {
        negative = tok[0] == '-';
        i = 1;
    }
    if (i + 1 < len && tok[i] == '0' && (isdigit((unsigned char)tok[i + 1]) || tok[i + 1] == '_')) {
        show(shown, sizeof shown, tok, len);
        return fail(p, "invalid integer \"%s\": leading zeros are not allowed", shown);
    }
    uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    int rc = parse_digits(p, tok, len, i, 10, limit, &v);
    if (rc < 0) {
        return rc;
    }
    *out = negative ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    return 0;
}

static bool is_token_char(int c)
{
    return is_bare_key_char(c) || c == '+' || c == '.' || c == ':';
}

static bool looks_like_date(const char *tok, size_t len)
{
    /* 1979-05-27 or 07:32:00: four digits and '-', or two digits and ':'. */
    bool d4 = len >= 5 && isdigit((unsigned char)tok[0]) && isdigit((unsigned char)tok[3]) &&
              tok[4] == '-';
    bool t2 = len >= 3 && isdigit((unsigned char)tok[0]) && isdigit((unsigned char)tok[1]) &&
              tok[2] == ':';
    return d4 || t2;
}

/* A bare token: boolean, integer, or a float/date we reject. */
static int parse_scalar(parser *p, rb_toml_value *v)
{
    const char *tok = p->text + p->pos;
    size_t len = 0;
    while (is_token_char(peek_at(p, len))) {
        len++;
    }
    char shown[SHOW_BYTES_MAX];
    show(shown, sizeof shown, tok, len);
    if (len == 0) {
        char buf[32];
        return fail(p, "expected a value, found %s", describe_next(p, buf, sizeof buf));
    }
    if ((len == 4 && memcmp(tok, "true", 4) == 0) || (len == 5 && memcmp(tok, "false", 5) == 0)) {
        v->type = RB_TOML_BOOL;
        v->u.boolean = len == 4;
        advance_n(p, len);
        return 0;
    }
    size_t sign = tok[0] == '+' || tok[0] == '-' ? 1 : 0;
    bool numeric = sign < len && tok[sign] >= '0' && tok[sign] <= '9';
    bool special =
        len - sign == 3 && (memcmp(tok + sign, "inf", 3) == 0 || memcmp(tok + sign, "nan", 3) == 0);
    bool prefixed = len >= 2 && tok[0] == '0' && strchr("xob", tok[1]) != NULL;
    bool fraction = memchr(tok, '.', len) != NULL || memchr(tok, 'e', len) != NULL ||
                    memchr(tok, 'E', len) != NULL;
    if (numeric && looks_like_date(tok, len)) {
        return fail(p, "dates and times are not supported (\"%s\")", shown);
    }
    if (special || (numeric && !prefixed && fraction)) {
        return fail(p, "floats are not supported (\"%s\")", shown);
    }
    if (!numeric) {
        return fail(p, "invalid value \"%s\" (strings need quotes)", shown);
    }
    v->type = RB_TOML_INTEGER;
    int rc = parse_integer(p, tok, len, &v->u.integer);
    if (rc == 0) {
        advance_n(p, len);
    }
    return rc;
}

static int parse_value(parser *p, uint8_t depth, rb_toml_value **out)
{
    int c = peek(p);
    rb_toml_type type = c == '"' || c == '\'' ? RB_TOML_STRING
                        : c == '['            ? RB_TOML_ARRAY
                        : c == '{'            ? RB_TOML_TABLE
                                              : RB_TOML_INTEGER;
    rb_toml_value *v = NULL;
    int rc = value_new(p, type, depth, p->line, p->col, &v);
    if (rc < 0) {
        return rc;
    }
    if (type == RB_TOML_STRING) {
        sbuf b = {0};
        rc = parse_string(p, &b);
        if (rc == 0 && b.data == NULL) {
            rc = sbuf_put(p, &b, "", 0);
        }
        v->u.str.bytes = b.data;
        v->u.str.len = b.len;
    } else if (type == RB_TOML_ARRAY) {
        rc = parse_array(p, v);
    } else if (type == RB_TOML_TABLE) {
        rc = parse_inline_table(p, v);
    } else {
        rc = parse_scalar(p, v);
    }
    if (rc < 0) {
        value_free(v);
        return rc;
    }
    *out = v;
    return 0;
}

/* ---- table headers ---- */

/* Walks a header's leading parts from the root; arrays of tables resolve
 * to their last table. */
static int resolve_header(parser *p, const keypath *kp, rb_toml_value **out)
{
    char shown[SHOW_BYTES_MAX];
    rb_toml_value *t = p->root;
    for (size_t i = 0; i + 1 < kp->count; i++) {
        const seg *s = &kp->segs[i];
        entry *e = table_find(t, s->text, s->len);
        if (e == NULL) {
            rb_toml_value *child = NULL;
            int rc = value_new(p, RB_TOML_TABLE, (uint8_t)(t->depth + 1), s->line, s->col, &child);
            if (rc == 0) {
                rc = table_add(p, t, s, child);
            }
            if (rc < 0) {
                return rc;
            }
            t = child;
            continue;
        }
        rb_toml_value *v = e->value;
        show_key(p, kp, i, false, shown, sizeof shown);
        if (v->type == RB_TOML_ARRAY && (v->flags & ARR_OF_TABLE) != 0) {
            t = v->u.array.items[v->u.array.count - 1];
        } else if (v->type != RB_TOML_TABLE) {
            return fail_at(p, s->line, s->col, "key \"%s\" is %s (at %u:%u), not a table", shown,
                           rb_toml_type_article(v->type), v->line, v->column);
        } else if ((v->flags & TBL_INLINE) != 0) {
            return fail_at(p, s->line, s->col, "cannot add keys to inline table \"%s\" (at %u:%u)",
                           shown, v->line, v->column);
        } else {
            t = v;
        }
    }
    *out = t;
    return 0;
}

/* [a.b]: the last part names a table not yet defined by a header, dotted
 * keys or an inline table. */
static int define_table(parser *p, rb_toml_value *t, const seg *s, const char *shown, uint32_t line,
                        uint32_t col)
{
    entry *e = table_find(t, s->text, s->len);
    if (e == NULL) {
        rb_toml_value *v = NULL;
        int rc = value_new(p, RB_TOML_TABLE, (uint8_t)(t->depth + 1), line, col, &v);
        if (rc < 0) {
            return rc;
        }
        v->flags = TBL_HEADER;
        p->current = v;
        return table_add(p, t, s, v);
    }
    rb_toml_value *v = e->value;
    if (v->type != RB_TOML_TABLE) {
        return fail_at(p, line, col, "cannot define table [%s]: it is already %s (at %u:%u)", shown,
                       rb_toml_type_article(v->type), v->line, v->column);
    }
    if ((v->flags & TBL_HEADER) != 0) {
        return fail_at(p, line, col, "table [%s] is defined twice (first at %u:%u)", shown, v->line,
                       v->column);
    }
    if ((v->flags & (TBL_DOTTED | TBL_INLINE)) != 0) {
        return fail_at(p, line, col, "table [%s] is already defined by %s (at %u:%u)", shown,
                       (v->flags & TBL_INLINE) != 0 ? "an inline table" : "dotted keys", v->line,
                       v->column);
    }
    /* A table an earlier header created on its way is now defined here. */
    v->flags = TBL_HEADER;
    v->line = line;
    v->column = col;
    p->current = v;
    return 0;
}

/* [[a.b]]: appends a table to the array of tables a.b, creating it. */
static int append_table(parser *p, rb_toml_value *t, const seg *s, const char *shown, uint32_t line,
                        uint32_t col)
{
    entry *e = table_find(t, s->text, s->len);
    rb_toml_value *arr = NULL;
    int rc;
    if (e == NULL) {
        rc = value_new(p, RB_TOML_ARRAY, (uint8_t)(t->depth + 1), line, col, &arr);
        if (rc < 0) {
            return rc;
        }
        arr->flags = ARR_OF_TABLE;
        rc = table_add(p, t, s, arr);
        if (rc < 0) {
            return rc;
        }
    } else if (e->value->type == RB_TOML_ARRAY && (e->value->flags & ARR_OF_TABLE) != 0) {
        arr = e->value;
    } else {
        rb_toml_value *v = e->value;
        return fail_at(p, line, col,
                       "cannot define array of tables [[%s]]: it is already %s (at %u:%u)", shown,
                       rb_toml_type_article(v->type), v->line, v->column);
    }
    rb_toml_value *item = NULL;
    rc = value_new(p, RB_TOML_TABLE, (uint8_t)(arr->depth + 1), line, col, &item);
    if (rc < 0) {
        return rc;
    }
    item->flags = TBL_HEADER;
    p->current = item;
    return array_add(p, arr, item);
}

static int parse_header(parser *p)
{
    uint32_t line = p->line;
    uint32_t col = p->col;
    bool aot = peek_at(p, 1) == '[';
    keypath kp = {0};
    char shown[SHOW_BYTES_MAX];
    char buf[32];
    rb_toml_value *t = NULL;
    advance_n(p, aot ? 2 : 1);
    skip_ws(p);
    int rc = parse_key(p, &kp);
    if (rc < 0) {
        goto out;
    }
    if (peek(p) != ']' || (aot && peek_at(p, 1) != ']')) {
        rc = fail(p, "expected '%s' to close the header, found %s", aot ? "]]" : "]",
                  describe_next(p, buf, sizeof buf));
        goto out;
    }
    advance_n(p, aot ? 2 : 1);
    rc = resolve_header(p, &kp, &t);
    if (rc < 0) {
        goto out;
    }
    show_key(p, &kp, kp.count - 1, false, shown, sizeof shown);
    const seg *last = &kp.segs[kp.count - 1];
    if (aot) {
        rc = append_table(p, t, last, shown, line, col);
    } else {
        rc = define_table(p, t, last, shown, line, col);
    }
    if (rc < 0) {
        goto out;
    }
    snprintf(p->section, sizeof p->section, "%s", shown);
    rc = expect_eol(p, "a table header");
out:
    keypath_free(&kp);
    return rc;
}

/* ---- document ---- */

static int parse_document(parser *p)
{
    /* A UTF-8 byte order mark is not content. */
    if (p->len >= 3 && memcmp(p->text, "\xEF\xBB\xBF", 3) == 0) {
        p->pos = 3;
    }
    while (p->pos < p->len) {
        skip_ws(p);
        int c = peek(p);
        int rc;
        if (c == '[') {
            rc = parse_header(p);
        } else if (c < 0 || c == '#' || c == '\n' || c == '\r') {
            rc = expect_eol(p, "whitespace");
        } else {
            rc = parse_keyval(p, p->current, false);
            if (rc == 0) {
                rc = expect_eol(p, "a value");
            }
        }
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

int rb_toml_parse(rb_toml *doc, const char *text, size_t len, const char *name, rb_err *err)
{
    RB_ASSERT(doc != NULL);
    RB_ASSERT(text != NULL || len == 0);
    doc->root = NULL;
    if (len > RB_CONFIG_FILE_BYTES_MAX) {
        return rb_err_set(err, RB_ECONFIG, 0, "%s: %zu bytes is more than the limit of %u bytes",
                          name, len, (unsigned)RB_CONFIG_FILE_BYTES_MAX);
    }
    parser p = {.text = text, .len = len, .line = 1, .col = 1, .name = name, .err = err};
    int rc = check_utf8(&p);
    if (rc < 0) {
        return rc;
    }
    rc = value_new(&p, RB_TOML_TABLE, 0, 1, 1, &p.root);
    if (rc < 0) {
        return rc;
    }
    p.root->flags = TBL_HEADER;
    p.current = p.root;
    rc = parse_document(&p);
    if (rc < 0) {
        value_free(p.root);
        return rc;
    }
    doc->root = p.root;
    return 0;
}

void rb_toml_deinit(rb_toml *doc)
{
    value_free(doc->root);
    doc->root = NULL;
}

/* ---- accessors ---- */

const rb_toml_value *rb_toml_root(const rb_toml *doc)
{
    return doc->root;
}

rb_toml_type rb_toml_type_of(const rb_toml_value *value)
{
    return value->type;
}

const char *rb_toml_type_name(rb_toml_type type)
{
    switch (type) {
    case RB_TOML_STRING:
        return "string";
    case RB_TOML_INTEGER:
        return "integer";
    case RB_TOML_BOOL:
        return "boolean";
    case RB_TOML_ARRAY:
        return "array";
    case RB_TOML_TABLE:
        return "table";
    }
    return "?";
}

uint32_t rb_toml_line(const rb_toml_value *value)
{
    return value->line;
}

uint32_t rb_toml_column(const rb_toml_value *value)
{
    return value->column;
}

const char *rb_toml_string(const rb_toml_value *value, size_t *len)
{
    RB_ASSERT(value->type == RB_TOML_STRING);
    if (len != NULL) {
        *len = value->u.str.len;
    }
    return value->u.str.bytes;
}

int64_t rb_toml_integer(const rb_toml_value *value)
{
    RB_ASSERT(value->type == RB_TOML_INTEGER);
    return value->u.integer;
}

bool rb_toml_bool(const rb_toml_value *value)
{
    RB_ASSERT(value->type == RB_TOML_BOOL);
    return value->u.boolean;
}

size_t rb_toml_count(const rb_toml_value *value)
{
    RB_ASSERT(value->type == RB_TOML_ARRAY || value->type == RB_TOML_TABLE);
    return value->type == RB_TOML_ARRAY ? value->u.array.count : value->u.table.count;
}

const rb_toml_value *rb_toml_item(const rb_toml_value *array, size_t index)
{
    RB_ASSERT(array->type == RB_TOML_ARRAY);
    RB_ASSERT(index < array->u.array.count);
    return array->u.array.items[index];
}

bool rb_toml_is_table_array(const rb_toml_value *array)
{
    return array->type == RB_TOML_ARRAY && (array->flags & ARR_OF_TABLE) != 0;
}

const rb_toml_value *rb_toml_entry(const rb_toml_value *table, size_t index, rb_toml_key *key)
{
    RB_ASSERT(table->type == RB_TOML_TABLE);
    RB_ASSERT(index < table->u.table.count);
    const entry *e = &table->u.table.entries[index];
    if (key != NULL) {
        *key =
            (rb_toml_key){.text = e->key, .len = e->key_len, .line = e->line, .column = e->column};
    }
    return e->value;
}

const rb_toml_value *rb_toml_get(const rb_toml_value *table, const char *key)
{
    RB_ASSERT(table->type == RB_TOML_TABLE);
    const entry *e = table_find((rb_toml_value *)table, key, strlen(key));
    return e != NULL ? e->value : NULL;
}
