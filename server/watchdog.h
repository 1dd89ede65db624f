/* The systemd watchdog: when the unit sets WatchdogSec= (WATCHDOG_USEC in
 * the environment, sd_watchdog_enabled), the main thread sends WATCHDOG=1
 * every half interval, but only while every shard's loop turns: the check
 * is /healthz's (rb_admin_stalled_shard over each shard's relaxed
 * last_turn_ms heartbeat), so a stuck shard stops the pings and systemd
 * restarts the daemon. The shards' hot path gains nothing but the test
 * hook's one predictable branch.
 *
 * Test only: RINGBUSD_TEST_STALL_SHARD=SHARD:AFTER_MS:FOR_MS makes shard
 * SHARD sleep FOR_MS once, AFTER_MS after its loop starts turning, to prove
 * that a stalled shard stops the pings (tests/integration/test_systemd.py).
 * Never set it in production. */
#ifndef RB_SERVER_WATCHDOG_H
#define RB_SERVER_WATCHDOG_H

#include <signal.h>
#include <stdint.h>

#include "common/err.h"

/* The environment variable of the test-only stall hook. */
#define RB_WATCHDOG_TEST_STALL_ENV "RINGBUSD_TEST_STALL_SHARD"
/* The longest test stall and the latest start the hook accepts. */
#define RB_WATCHDOG_TEST_STALL_MS_MAX 60000u

struct rb_server;

/* The shard the test hook stalls, or -1 (no hook: the usual case). Written
 * by rb_watchdog_init before the shard threads start, read-only after. */
extern int rb_watchdog__stall_shard;
void rb_watchdog__stall(uint32_t shard_id, uint64_t now_ms);

/* Reads the watchdog interval and the test hook from the environment;
 * before the shards start. RB_ECONFIG for a malformed hook value. */
int rb_watchdog_init(rb_err *err);

/* Waits for one of the signals in set, like sigwait, sending WATCHDOG=1
 * for srv's shards meanwhile when the watchdog is enabled; returns the
 * signal. The main thread's wait. */
int rb_watchdog_sigwait(const struct rb_server *srv, const sigset_t *set);

/* Called once per loop turn by each shard: a branch, and the test stall
 * when the hook names this shard. */
static inline void rb_watchdog_test_stall_point(uint32_t shard_id, uint64_t now_ms)
{
    if (__builtin_expect(rb_watchdog__stall_shard >= 0, 0)) {
        rb_watchdog__stall(shard_id, now_ms);
    }
}

#endif
