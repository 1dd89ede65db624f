/* The systemd watchdog (server/watchdog.h). */
#include "server/watchdog.h"

#include <stdbool.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "common/log.h"
#include "common/loop.h"
#include "common/stall.h"
#include "server/admin.h"
#include "server/server.h"

/* The main thread's watchdog state (no other thread touches it). */
static uint64_t ping_every_ms; /* 0: the watchdog is off */
static uint64_t next_ping_ms;
static bool withholding;

int rb_watchdog_init(uint32_t shard_count, rb_err *err)
{
    int rc = rb_stall_init(shard_count, err);
    if (rc != 0) {
        return rc;
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
