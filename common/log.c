/* Logging: one formatted line per call, written with a single write(2) so
 * lines from different shards never interleave. */
#include "common/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/assert.h"

/* A log line longer than this is cut; it is for humans, not payloads. */
#define LOG_LINE_BYTES_MAX 1024
/* The longest escape of one input byte or character: "\u{NNNN}". */
#define LOG_ESCAPE_BYTES_MAX 8

static atomic_int log_level = RB_LOG_INFO;
static _Thread_local int log_shard = -1;
static atomic_int log_journal = -1; /* -1 unknown, 0 no, 1 yes */
static atomic_int log_format = RB_LOG_FORMAT_TEXT;

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

void rb_log_set_format(rb_log_format format)
{
    atomic_store(&log_format, (int)format);
}

int rb_log_format_parse(const char *text, rb_log_format *format)
{
    static const char *const names[] = {"text", "logfmt", "json"};
    for (int i = 0; i < 3; i++) {
        if (strcmp(text, names[i]) == 0) {
            *format = (rb_log_format)i;
            return 0;
        }
    }
    return -1;
}

/* systemd sets JOURNAL_STREAM=DEV:INODE for the stream it connects to
 * stdout and stderr; a stderr redirected elsewhere since (a child of a
 * service with its own log file) is not the journal. */
static bool stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev = 0;
    unsigned long long ino = 0;
    struct stat st;
    if (js == NULL || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) != 0) {
        return false;
    }
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

static bool to_journal(void)
{
    int j = atomic_load(&log_journal);
    if (j < 0) {
        j = stderr_is_journal() ? 1 : 0;
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

/* Appends fmt to out[*n..cap) (cut at cap, which the callers size for). */
__attribute__((format(printf, 4, 5))) static void put(char *out, size_t cap, size_t *n,
                                                      const char *fmt, ...)
{
    if (*n >= cap) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(out + *n, cap - *n, fmt, ap);
    va_end(ap);
    if (w > 0) {
        *n += (size_t)w < cap - *n ? (size_t)w : cap - *n - 1;
    }
}

/* Length of the UTF-8 character whose first byte is b (the text passed
 * rb_log_escape, so it is valid). */
static size_t char_len(uint8_t b)
{
    return b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
}

/* Appends "text" with '"' and '\\' escaped, leaving room for tail_room
 * more bytes; text that does not fit ends in "..." inside the quotes. */
static void put_quoted(char *out, size_t cap, size_t *n, const char *text, size_t tail_room)
{
    RB_ASSERT(*n + tail_room + 5 <= cap);
    size_t o = *n;
    size_t end = cap - tail_room - 4; /* room for "...\"" */
    out[o++] = '"';
    /* Bounded by the text: each pass consumes one character. */
    for (size_t i = 0; text[i] != '\0';) {
        size_t len = char_len((uint8_t)text[i]);
        bool esc = text[i] == '"' || text[i] == '\\';
        if (o + len + (esc ? 1 : 0) > end) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (esc) {
            out[o++] = '\\';
        }
        memcpy(out + o, text + i, len);
        o += len;
        i += len;
    }
    out[o++] = '"';
    *n = o;
}

/* ts=2026-01-02T03:04:05.678Z */
static void put_time(char *out, size_t cap, size_t *n, uint64_t unix_ms)
{
    time_t secs = (time_t)(unix_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    put(out, cap, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1,
        tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(unix_ms % 1000));
}

/* The fields of logfmt and json, in the same order: ts, level, shard
 * (shard threads only), conn (connections only), msg. */
static void put_structured(char *out, size_t cap, size_t *n, const rb_log_fields *f,
                           const char *escaped)
{
    static const char *const words[] = {"error", "warn", "info", "debug"};
    bool json = f->format == RB_LOG_FORMAT_JSON;
    put(out, cap, n, json ? "{\"ts\":\"" : "ts=");
    put_time(out, cap, n, f->unix_ms);
    put(out, cap, n, json ? "\",\"level\":\"%s\"" : " level=%s", words[f->level]);
    if (f->shard >= 0) {
        put(out, cap, n, json ? ",\"shard\":%d" : " shard=%d", f->shard);
    }
    if (f->conn_id != 0) {
        put(out, cap, n, json ? ",\"conn\":%llu" : " conn=%llu", (unsigned long long)f->conn_id);
    }
    put(out, cap, n, json ? ",\"msg\":" : " msg=");
    put_quoted(out, cap, n, escaped, json ? 3 : 2); /* "}\n" or "\n", and the NUL */
    if (json) {
        out[(*n)++] = '}';
    }
}

size_t rb_log_format_line(char *out, size_t cap, const rb_log_fields *f, const char *msg,
                          size_t len)
{
    static const char *const words[] = {"error", "warn", "info", "debug"};
    static const int prio[] = {3, 4, 6, 7};
    RB_ASSERT(cap >= RB_LOG_LINE_BYTES_MIN);
    RB_ASSERT((unsigned)f->level <= RB_LOG_DEBUG);
    size_t n = 0;
    if (f->journal) {
        put(out, cap, &n, "<%d>", prio[f->level]);
    }
    if (f->format == RB_LOG_FORMAT_TEXT) {
        if (!f->journal) {
            put(out, cap, &n, "ringbusd %s: ", words[f->level]);
        }
        if (f->shard >= 0) {
            put(out, cap, &n, "shard %d: ", f->shard);
        } else {
            put(out, cap, &n, "main: ");
        }
        if (f->conn_id != 0) {
            put(out, cap, &n, "conn %llu: ", (unsigned long long)f->conn_id);
        }
        n += rb_log_escape(out + n, cap - n - 1, msg, len);
    } else {
        char escaped[LOG_LINE_BYTES_MAX];
        rb_log_escape(escaped, sizeof escaped, msg, len);
        put_structured(out, cap, &n, f, escaped);
    }
    out[n++] = '\n';
    out[n] = '\0';
    return n;
}

void rb_log(rb_log_level level, uint64_t conn_id, const char *fmt, ...)
{
    if ((int)level > atomic_load(&log_level)) {
        return;
    }
    char raw[LOG_LINE_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    if (w < 0) {
        return;
    }
    struct timespec ts = {0};
    rb_log_format format = (rb_log_format)atomic_load(&log_format);
    if (format != RB_LOG_FORMAT_TEXT) {
        clock_gettime(CLOCK_REALTIME, &ts);
    }
    rb_log_fields f = {.format = format,
                       .journal = to_journal(),
                       .level = level,
                       .shard = log_shard,
                       .conn_id = conn_id,
                       .unix_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u};
    char line[LOG_LINE_BYTES_MAX + 1];
    size_t raw_len = (size_t)w < sizeof raw ? (size_t)w : sizeof raw - 1;
    size_t n = rb_log_format_line(line, sizeof line, &f, raw, raw_len);
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
