/* Leveled logging to stderr, one line per call, naming the shard (a
 * thread-local set by the shard thread) and the connection id, in one of
 * three formats (log_format): "text" (ringbusd LEVEL: shard N: conn C: msg),
 * "logfmt" (ts=... level=... shard=N conn=C msg="...") or "json" (one
 * object per line, the same keys). When stderr is journald's stream
 * (JOURNAL_STREAM names stderr's device and inode), every line starts with
 * an sd-daemon "<N>" priority prefix, and the text format drops its
 * "ringbusd LEVEL: " (the journal has both). */
#ifndef RB_COMMON_LOG_H
#define RB_COMMON_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum rb_log_level {
    RB_LOG_ERROR = 0,
    RB_LOG_WARN = 1,
    RB_LOG_INFO = 2,
    RB_LOG_DEBUG = 3,
} rb_log_level;

/* Sets the process-wide threshold; lines above it are dropped. */
void rb_log_set_level(rb_log_level level);
rb_log_level rb_log_get_level(void);

/* Parses "error", "warn", "info", "debug"; returns 0 or -1. */
int rb_log_level_parse(const char *text, rb_log_level *level);

typedef enum rb_log_format {
    RB_LOG_FORMAT_TEXT = 0,
    RB_LOG_FORMAT_LOGFMT = 1,
    RB_LOG_FORMAT_JSON = 2,
} rb_log_format;

/* Sets the process-wide line format (default text). */
void rb_log_set_format(rb_log_format format);

/* Parses "text", "logfmt", "json"; returns 0 or -1. */
int rb_log_format_parse(const char *text, rb_log_format *format);

/* Names the calling thread's shard in every line it logs; -1 means main. */
void rb_log_set_shard(int shard_id);

/* Writes len bytes of p into out (cap >= 8 bytes, always NUL-terminated) so
 * that they cannot forge or corrupt a log line: a backslash becomes "\\",
 * newline, CR and tab "\n", "\r", "\t", other control bytes, DEL and bytes
 * that are not valid UTF-8 "\xNN", and the Unicode line separators, C1
 * controls and bidirectional overrides "\u{NNNN}". Valid UTF-8 text passes
 * unchanged. Output that does not fit ends in "..." at a character
 * boundary. Returns the length written. rb_log applies it to every message,
 * so a peer-supplied string (client name, HTTP target, header, topic, a
 * library's error text) reaches the log only escaped, exactly once. */
size_t rb_log_escape(char *out, size_t cap, const void *p, size_t len);

/* One line's fields: shard -1 is the main thread, conn_id 0 no connection,
 * unix_ms the wall clock (logfmt and json print it as ts, RFC 3339 UTC). */
typedef struct rb_log_fields {
    rb_log_format format;
    bool journal; /* start with "<N>", the level's syslog priority */
    rb_log_level level;
    int shard;
    uint64_t conn_id;
    uint64_t unix_ms;
} rb_log_fields;

/* The smallest line buffer rb_log_format_line takes: the longest fields. */
#define RB_LOG_LINE_BYTES_MIN 160

/* Formats one line into out (cap >= RB_LOG_LINE_BYTES_MIN; it ends in "\n" and a NUL) and
 * returns its length without the NUL. The message (len bytes of msg) passes
 * through rb_log_escape first; logfmt and json then quote it, escaping '"'
 * and '\' (so a value decodes to exactly the text format's message, and a
 * peer's bytes can end neither the value nor the line). A message that does
 * not fit ends in "..." inside its quotes. */
size_t rb_log_format_line(char *out, size_t cap, const rb_log_fields *f, const char *msg,
                          size_t len);

/* Logs one line (rb_log_format_line, one write(2)). conn_id 0 means "no
 * connection". */
void rb_log(rb_log_level level, uint64_t conn_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define RB_LOG_ERROR(conn_id, ...) rb_log(RB_LOG_ERROR, (conn_id), __VA_ARGS__)
#define RB_LOG_WARN(conn_id, ...)  rb_log(RB_LOG_WARN, (conn_id), __VA_ARGS__)
#define RB_LOG_INFO(conn_id, ...)  rb_log(RB_LOG_INFO, (conn_id), __VA_ARGS__)
#define RB_LOG_DEBUG(conn_id, ...)                                                                 \
    do {                                                                                           \
        if (rb_log_get_level() >= RB_LOG_DEBUG) {                                                  \
            rb_log(RB_LOG_DEBUG, (conn_id), __VA_ARGS__);                                          \
        }                                                                                          \
    } while (0)

#endif
