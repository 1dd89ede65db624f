/* The systemd watchdog (server/watchdog.h). */
#include "server/watchdog.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "common/log.h"
#include "common/loop.h"
#include "server/admin.h"
#include "server/server.h"

int rb_watchdog__stall_shard = -1;

/* The main thread's watchdog state (no other thread touches it). */
static uint64_t ping_every_ms; /* 0: the watchdog is off */
static uint64_t next_ping_ms;
static bool withholding;

/* The test hook's stall, touched only by the stalled shard's thread. */
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
    if (errno != 0 || v > RB_WATCHDOG_TEST_STALL_MS_MAX) {
        return -1;
    }
    *out = v;
    return 0;
}

/* SHARD:AFTER_MS:FOR_MS, each a decimal number. */
static int parse_stall(const char *text, rb_err *err)
{
    char *end = NULL;
    uint64_t shard = 0;
    bool ok = parse_ms(text, &end, &shard) == 0 && shard < RB_SHARDS_MAX && *end == ':';
    ok = ok && parse_ms(end + 1, &end, &stall_after_ms) == 0 && *end == ':';
    ok = ok && parse_ms(end + 1, &end, &stall_for_ms) == 0 && *end == '\0';
    if (!ok) {
        return rb_err_set(err, RB_ECONFIG, 0,
                          "%s: expected SHARD:AFTER_MS:FOR_MS (each at most %u), got \"%.64s\"",
                          RB_WATCHDOG_TEST_STALL_ENV, RB_WATCHDOG_TEST_STALL_MS_MAX, text);
    }
    rb_watchdog__stall_shard = (int)shard;
    return 0;
}

int rb_watchdog_init(rb_err *err)
{
    const char *stall = getenv(RB_WATCHDOG_TEST_STALL_ENV);
    if (stall != NULL) {
        int rc = parse_stall(stall, err);
        if (rc != 0) {
            return rc;
        }
        RB_LOG_WARN(0, "test hook %s is set: shard %d will stall for %llu ms",
                    RB_WATCHDOG_TEST_STALL_ENV, rb_watchdog__stall_shard,
                    (unsigned long long)stall_for_ms);
    }
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec >= 2000) {
        ping_every_ms = usec / 2000;
        next_ping_ms = rb_clock_ms();
        RB_LOG_INFO(0,
                    "systemd watchdog: %llu ms, WATCHDOG=1 every %llu ms while every shard turns",
                    (unsigned long long)(usec / 1000), (unsigned long long)ping_every_ms);
    }
    return 0;
}

void rb_watchdog__stall(uint32_t shard_id, uint64_t now_ms)
{
    if ((int)shard_id != rb_watchdog__stall_shard || stall_done) {
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
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    RB_LOG_WARN(0, "test hook: stall over");
}

/* Sends WATCHDOG=1 when every shard turns; says once when it stops and
 * when it starts again. */
static void ping(const rb_server *srv)
{
    uint64_t age_ms = 0;
    int stalled = rb_admin_stalled_shard(srv, &age_ms);
    if (stalled >= 0) {
        if (!withholding) {
            RB_LOG_ERROR(0, "shard %d has not turned for %llu ms: withholding WATCHDOG=1", stalled,
                         (unsigned long long)age_ms);
        }
        withholding = true;
        return;
    }
    if (withholding) {
        RB_LOG_INFO(0, "every shard turns again: sending WATCHDOG=1");
    }
    withholding = false;
    sd_notify(0, "WATCHDOG=1");
}

int rb_watchdog_sigwait(const rb_server *srv, const sigset_t *set)
{
    /* Bounded by the signals that arrive: each pass either pings (and
     * moves the deadline on) or returns a signal. */
    for (;;) {
        int sig = 0;
        if (ping_every_ms == 0) {
            if (sigwait(set, &sig) == 0) {
                return sig;
            }
            continue;
        }
        uint64_t now = rb_clock_ms();
        if (now >= next_ping_ms) {
            ping(srv);
            next_ping_ms = now + ping_every_ms;
        }
        uint64_t wait_ms = next_ping_ms - now;
        struct timespec ts = {.tv_sec = (time_t)(wait_ms / 1000),
                              .tv_nsec = (long)(wait_ms % 1000) * 1000000L};
        sig = sigtimedwait(set, NULL, &ts);
        if (sig > 0) {
            return sig;
        }
    }
}
