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
    va_list ap;
    va_start(ap, fmt);
    w = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    if (w < 0) {
        return;
    }
    n += (size_t)w;
    if (n > sizeof line - 2) {
        n = sizeof line - 2;
    }
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
