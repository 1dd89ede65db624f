/* Leveled logging to stderr, one line per call, naming the shard (a
 * thread-local set by the shard thread) and the connection id. When stderr
 * is connected to journald (JOURNAL_STREAM), lines carry sd-daemon "<N>"
 * priority prefixes instead of a level word. */
#ifndef RB_COMMON_LOG_H
#define RB_COMMON_LOG_H

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

/* Logs one line (the message passes through rb_log_escape). conn_id 0
 * means "no connection". */
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
