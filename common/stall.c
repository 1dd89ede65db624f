/* The test-only shard stall (common/stall.h). */
#include "common/stall.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "common/log.h"

int rb_stall__shard = -1;

/* Touched only by the stalled shard's thread. */
static uint64_t stall_after_ms;
static uint64_t stall_for_ms;
static uint64_t stall_first_turn_ms;
static bool stall_done;

static int parse_ms(const char *p, char **end, uint64_t *out)
{
    if (*p < '0' || *p > '9') {
        return -1;
    }
    errno = 0;
    unsigned long long v = strtoull(p, end, 10);
    if (errno != 0 || v > RB_STALL_MS_MAX) {
        return -1;
    }
    *out = v;
    return 0;
}

int rb_stall_init(uint32_t shard_limit, rb_err *err)
{
    const char *text = getenv(RB_STALL_ENV);
    if (text == NULL) {
        return 0;
    }
    /* SHARD:AFTER_MS:FOR_MS, each a decimal number. */
    char *end = NULL;
    uint64_t shard = 0;
    bool ok = parse_ms(text, &end, &shard) == 0 && shard < shard_limit && *end == ':';
    ok = ok && parse_ms(end + 1, &end, &stall_after_ms) == 0 && *end == ':';
    ok = ok && parse_ms(end + 1, &end, &stall_for_ms) == 0 && *end == '\0';
    if (!ok) {
        return rb_err_set(err, RB_ECONFIG, 0,
                          "%s: expected SHARD:AFTER_MS:FOR_MS (a shard below %u, times at most "
                          "%u), got \"%.64s\"",
                          RB_STALL_ENV, shard_limit, RB_STALL_MS_MAX, text);
    }
    rb_stall__shard = (int)shard;
    RB_LOG_WARN(0, "test hook %s is set: shard %d will stall for %llu ms", RB_STALL_ENV,
                rb_stall__shard, (unsigned long long)stall_for_ms);
    return 0;
}

void rb_stall__run(uint32_t shard_id, uint64_t now_ms)
{
    if ((int)shard_id != rb_stall__shard || stall_done) {
        return;
    }
    if (stall_first_turn_ms == 0) {
        stall_first_turn_ms = now_ms;
    }
    if (now_ms - stall_first_turn_ms < stall_after_ms) {
        return;
    }
    stall_done = true;
    RB_LOG_WARN(0, "test hook: stalling for %llu ms", (unsigned long long)stall_for_ms);
    struct timespec ts = {.tv_sec = (time_t)(stall_for_ms / 1000),
                          .tv_nsec = (long)(stall_for_ms % 1000) * 1000000L};
    /* Bounded: each interrupted sleep resumes with what is left. */
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    RB_LOG_WARN(0, "test hook: stall over");
}
