/* Leveled logging to stderr, one line per call, naming the shard (a
 * thread-local set by the shard thread) and the connection id. When stderr
 * is connected to journald (JOURNAL_STREAM), lines carry sd-daemon "<N>"
 * priority prefixes instead of a level word. */
#ifndef RB_COMMON_LOG_H
#define RB_COMMON_LOG_H

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

/* Logs one line. conn_id 0 means "no connection". */
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
