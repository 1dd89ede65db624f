/* A test-only hook that stalls one shard's loop once, so that a test can
 * prove that a stuck shard stops the systemd watchdog (server/watchdog.h)
 * and fails /healthz: RINGBUSD_TEST_STALL_SHARD=SHARD:AFTER_MS:FOR_MS makes
 * shard SHARD sleep FOR_MS, AFTER_MS after its loop starts turning. Never
 * set it in production. Without it, a loop turn pays one predictable
 * branch. */
#ifndef RB_COMMON_STALL_H
#define RB_COMMON_STALL_H

#include <stdint.h>

#include "common/err.h"

/* The environment variable of the hook. */
#define RB_STALL_ENV "RINGBUSD_TEST_STALL_SHARD"
/* The longest stall and the latest start the hook accepts. */
#define RB_STALL_MS_MAX 60000u

/* The shard the hook stalls, or -1 (no hook: the usual case). Written by
 * rb_stall_init before the shard threads start, read-only after. */
extern int rb_stall__shard;
void rb_stall__run(uint32_t shard_id, uint64_t now_ms);

/* Reads the hook from the environment, for shard ids below shard_limit;
 * before the shards start. RB_ECONFIG for a malformed value. */
int rb_stall_init(uint32_t shard_limit, rb_err *err);

/* Called once per loop turn by each shard. */
static inline void rb_stall_point(uint32_t shard_id, uint64_t now_ms)
{
    if (__builtin_expect(rb_stall__shard >= 0, 0)) {
        rb_stall__run(shard_id, now_ms);
    }
}

#endif
