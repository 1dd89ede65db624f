/* Hashing of names (topics): FNV-1a 64, stable across runs, builds and
 * nodes, so that a topic's owner shard is the same everywhere. */
#ifndef RB_COMMON_HASH_H
#define RB_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

static inline uint64_t rb_hash_bytes(const uint8_t *p, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

#endif
