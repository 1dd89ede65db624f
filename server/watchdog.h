/* The systemd watchdog: when the unit sets WatchdogSec= (WATCHDOG_USEC in
 * the environment, sd_watchdog_enabled), the main thread sends WATCHDOG=1
 * every half interval, but only while every shard's loop turns: the check
 * is /healthz's (rb_admin_stalled_shard over each shard's relaxed
 * last_turn_ms heartbeat), so a stuck shard stops the pings and systemd
 * restarts the daemon. The shards' hot path gains nothing but the test
 * hook's one predictable branch.
 *
 * The test-only hook that stalls a shard, to prove this, is common/stall.h. */
#ifndef RB_SERVER_WATCHDOG_H
#define RB_SERVER_WATCHDOG_H

#include <signal.h>
#include <stdint.h>

#include "common/err.h"

struct rb_server;

/* Reads the watchdog interval and the test stall hook (common/stall.h, for
 * shard_count shards) from the environment; before the shards start.
 * RB_ECONFIG for a malformed hook value. */
int rb_watchdog_init(uint32_t shard_count, rb_err *err);

/* Waits for one of the signals in set, like sigwait, sending WATCHDOG=1
 * for srv's shards meanwhile when the watchdog is enabled; returns the
 * signal. The main thread's wait. */
int rb_watchdog_sigwait(const struct rb_server *srv, const sigset_t *set);

#endif
