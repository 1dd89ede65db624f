/* The session's reconnect delay: exponential backoff with full jitter. */
#ifndef RB_CLIENT_BACKOFF_H
#define RB_CLIENT_BACKOFF_H

#include <stdint.h>

/* The delay before attempt (1 = the first after a loss): uniform in
 * [0, min(cap_ms, base_ms * 2^(attempt-1))], drawn from random (any 64
 * bits). The spread keeps clients that lost one node together from coming
 * back together. */
static inline uint32_t rb_backoff_ms(uint32_t base_ms, uint32_t cap_ms, uint32_t attempt,
                                     uint64_t random)
{
    uint64_t ceiling_ms = base_ms;
    for (uint32_t i = 1; i < attempt && ceiling_ms < cap_ms; i++) {
        ceiling_ms *= 2;
    }
    if (ceiling_ms > cap_ms) {
        ceiling_ms = cap_ms;
    }
    return (uint32_t)(random % (ceiling_ms + 1));
}

/* xorshift64*: the session's jitter source, seeded once per session. */
static inline uint64_t rb_backoff_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * UINT64_C(2685821657736338717);
}

#endif
