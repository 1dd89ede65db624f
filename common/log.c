/* Logging: one formatted line per call, written with a single write(2) so
 * lines from different shards never interleave. */
#include "common/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/assert.h"

/* A log line longer than this is cut; it is for humans, not payloads. */
#define LOG_LINE_BYTES_MAX 1024
/* The longest escape of one input byte or character: "\u{NNNN}". */
#define LOG_ESCAPE_BYTES_MAX 8

static atomic_int log_level = RB_LOG_INFO;
static _Thread_local int log_shard = -1;
static atomic_int log_journal = -1; /* -1 unknown, 0 no, 1 yes */

void rb_log_set_level(rb_log_level level)
{
    atomic_store(&log_level, (int)level);
}

rb_log_level rb_log_get_level(void)
{
    return (rb_log_level)atomic_load(&log_level);
}

int rb_log_level_parse(const char *text, rb_log_level *level)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(text, names[i]) == 0) {
            *level = (rb_log_level)i;
            return 0;
        }
    }
    return -1;
}

void rb_log_set_shard(int shard_id)
{
    log_shard = shard_id;
}

static bool to_journal(void)
{
    int j = atomic_load(&log_journal);
    if (j < 0) {
        j = getenv("JOURNAL_STREAM") != NULL ? 1 : 0;
        atomic_store(&log_journal, j);
    }
    return j == 1;
}

/* Length of the valid UTF-8 sequence at p (2..4), or 0; *cp is its code
 * point. Overlong forms, surrogates and values past U+10FFFF are invalid. */
static size_t utf8_seq(const uint8_t *p, size_t len, uint32_t *cp)
{
    static const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    size_t n = p[0] >= 0xF0 ? 4 : p[0] >= 0xE0 ? 3 : p[0] >= 0xC0 ? 2 : 0;
    if (n == 0 || p[0] > 0xF4 || n > len) {
        return 0;
    }
    uint32_t v = p[0] & (0x7Fu >> n);
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) {
            return 0;
        }
        v = v << 6 | (p[i] & 0x3Fu);
    }
    if (v < min_cp[n] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
        return 0;
    }
    *cp = v;
    return n;
}

/* Code points that break or reorder a line when shown: C1 controls, the
 * line and paragraph separators, bidirectional embeddings and isolates. */
static bool cp_hidden(uint32_t cp)
{
    return (cp >= 0x80 && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029 ||
           (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069);
}

/* The escape of the character at p into esc; returns bytes of input used. */
static size_t escape_one(const uint8_t *p, size_t len, char esc[LOG_ESCAPE_BYTES_MAX + 1])
{
    uint8_t b = p[0];
    uint32_t cp = 0;
    size_t n = b >= 0x80 ? utf8_seq(p, len, &cp) : 1;
    if (b == '\\') {
        snprintf(esc, LOG_ESCAPE_BYTES_MAX + 1, "\\\\");
    } else if (b == '\n' || b == '\r' || b == '\t') {
        snprintf(esc, LOG_ESCAPE_BYTES_MAX + 1, "\\%c", b == '\n' ? 'n' : b == '\r' ? 'r' : 't');
    } else if (b < 0x20 || b == 0x7F || n == 0) {
        snprintf(esc, LOG_ESCAPE_BYTES_MAX + 1, "\\x%02X", b);
        n = 1;
    } else if (b >= 0x80 && cp_hidden(cp)) {
        snprintf(esc, LOG_ESCAPE_BYTES_MAX + 1, "\\u{%04X}", (unsigned)(cp & 0xFFFFu));
    } else {
        memcpy(esc, p, n);
        esc[n] = '\0';
    }
    return n;
}

size_t rb_log_escape(char *out, size_t cap, const void *p, size_t len)
{
    RB_ASSERT(cap >= 8);
    const uint8_t *in = p;
    size_t o = 0;
    size_t i = 0;
    /* Bounded by len: each pass consumes at least one input byte. */
    while (i < len) {
        char esc[LOG_ESCAPE_BYTES_MAX + 1];
        size_t used = escape_one(in + i, len - i, esc);
        size_t n = strlen(esc);
        if (o + n > cap - 4) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(out + o, esc, n);
        o += n;
        i += used;
    }
    out[o] = '\0';
    return o;
}

void rb_log(rb_log_level level, uint64_t conn_id, const char *fmt, ...)
{
    static const char *const words[] = {"error", "warn", "info", "debug"};
    static const int prio[] = {3, 4, 6, 7};
    if ((int)level > atomic_load(&log_level)) {
        return;
    }
    char line[LOG_LINE_BYTES_MAX];
    size_t n = 0;
    int w;
    if (to_journal()) {
        w = snprintf(line, sizeof line, "<%d>", prio[level]);
    } else {
        w = snprintf(line, sizeof line, "ringbusd %s: ", words[level]);
    }
    n = (size_t)w;
    if (log_shard >= 0) {
        w = snprintf(line + n, sizeof line - n, "shard %d: ", log_shard);
    } else {
        w = snprintf(line + n, sizeof line - n, "main: ");
    }
    n += (size_t)w;
    if (conn_id != 0) {
        w = snprintf(line + n, sizeof line - n, "conn %llu: ", (unsigned long long)conn_id);
        n += (size_t)w;
    }
    char raw[LOG_LINE_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    w = vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    if (w < 0) {
        return;
    }
    size_t raw_len = (size_t)w < sizeof raw ? (size_t)w : sizeof raw - 1;
    n += rb_log_escape(line + n, sizeof line - n - 1, raw, raw_len);
    line[n++] = '\n';
    ssize_t r = write(STDERR_FILENO, line, n);
    (void)r;
}

_Noreturn void rb_assert_fail(const char *file, int line, const char *expr)
{
    char msg[LOG_LINE_BYTES_MAX];
    int n = snprintf(msg, sizeof msg, "ringbusd: assertion failed: %s:%d: %s (shard %d)\n", file,
                     line, expr, log_shard);
    if (n > 0) {
        ssize_t r = write(STDERR_FILENO, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg);
        (void)r;
    }
    abort();
}
