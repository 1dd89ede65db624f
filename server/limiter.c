/* Token buckets and the source-address table (server/limiter.h). The table
 * is open addressing with linear probing, keyed by XXH3 with a per-process
 * seed so that addresses an attacker picks cannot be made to collide.
 * Entries that hold no connection and whose buckets have refilled carry no
 * information; they are dropped (backward-shift deletion, so probes stay
 * short without tombstones) when the table gets full. */
#include "server/limiter.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <xxhash.h>

#include "common/assert.h"

void rb_bucket_init_period(rb_bucket *b, uint32_t rate, uint32_t period_ms, uint32_t burst,
                           uint64_t now_ms)
{
    RB_ASSERT(rate >= 1 && burst >= 1);
    RB_ASSERT(period_ms >= 1 && period_ms <= 3600000);
    b->rate = rate;
    b->period_ms = period_ms;
    b->burst = burst;
    b->level = (uint64_t)burst * period_ms;
    b->last_ms = now_ms;
}

void rb_bucket_init(rb_bucket *b, uint32_t rate_per_s, uint32_t burst, uint64_t now_ms)
{
    rb_bucket_init_period(b, rate_per_s, 1000, burst, now_ms);
}

/* Each millisecond adds rate units (rate tokens per period_ms ms). */
static uint64_t level_at(const rb_bucket *b, uint64_t now_ms)
{
    uint64_t cap = (uint64_t)b->burst * b->period_ms;
    if (now_ms <= b->last_ms) {
        return b->level;
    }
    uint64_t elapsed = now_ms - b->last_ms;
    /* Past a full refill the product could only overflow. */
    if (elapsed > cap / b->rate) {
        return cap;
    }
    uint64_t level = b->level + elapsed * b->rate;
    return level < cap ? level : cap;
}

bool rb_bucket_take(rb_bucket *b, uint32_t n, uint64_t now_ms)
{
    uint64_t level = level_at(b, now_ms);
    if (now_ms > b->last_ms) {
        b->last_ms = now_ms;
    }
    b->level = level;
    uint64_t want = (uint64_t)n * b->period_ms;
    if (level < want) {
        return false;
    }
    b->level = level - want;
    return true;
}

void rb_bucket_give(rb_bucket *b, uint32_t n)
{
    uint64_t cap = (uint64_t)b->burst * b->period_ms;
    uint64_t level = b->level + (uint64_t)n * b->period_ms;
    b->level = level < cap ? level : cap;
}

uint64_t rb_bucket_wait_ms(const rb_bucket *b, uint32_t n, uint64_t now_ms)
{
    if (n > b->burst) {
        return UINT64_MAX;
    }
    uint64_t level = level_at(b, now_ms);
    uint64_t want = (uint64_t)n * b->period_ms;
    if (level >= want) {
        return 0;
    }
    return (want - level + b->rate - 1) / b->rate;
}

bool rb_bucket_full(const rb_bucket *b, uint64_t now_ms)
{
    return level_at(b, now_ms) == (uint64_t)b->burst * b->period_ms;
}

/* ---- addresses ---- */

bool rb_addr_key_of(const struct sockaddr *sa, socklen_t len, rb_addr_key *out)
{
    memset(out, 0, sizeof *out);
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        out->bytes[10] = 0xff;
        out->bytes[11] = 0xff;
        memcpy(out->bytes + 12, &in->sin_addr, 4);
        return true;
    }
    if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        memcpy(out->bytes, &in6->sin6_addr, 16);
        return true;
    }
    return false;
}

typedef struct entry {
    rb_addr_key key;
    bool used;
    uint32_t conns;
    rb_bucket rate;
    rb_bucket failures;
} entry;

struct rb_addr_table {
    entry *slots;
    uint32_t mask;
    uint32_t used;
    uint64_t seed;
    rb_addr_limits limits;
};

int rb_addr_table_new(rb_addr_table **out, uint32_t expected_conns, rb_addr_limits limits,
                      rb_err *err)
{
    RB_ASSERT(limits.conns_per_address >= 1);
    RB_ASSERT(limits.conn_rate_per_s >= 1 && limits.failures_per_minute >= 1);
    uint64_t want = (uint64_t)expected_conns * 2;
    uint32_t slots = RB_ADDR_TABLE_SLOTS_MIN;
    while (slots < want && slots < RB_ADDR_TABLE_SLOTS_MAX) {
        slots <<= 1;
    }
    rb_addr_table *t = calloc(1, sizeof *t);
    if (t == NULL || (t->slots = calloc(slots, sizeof *t->slots)) == NULL) {
        free(t);
        return rb_err_set(err, RB_ENOMEM, 0, "address table: out of memory (%u slots)", slots);
    }
    if (getrandom(&t->seed, sizeof t->seed, 0) != (ssize_t)sizeof t->seed) {
        rb_addr_table_free(t);
        return rb_err_set(err, RB_ESYS, errno, "address table: getrandom");
    }
    t->mask = slots - 1;
    t->limits = limits;
    *out = t;
    return 0;
}

void rb_addr_table_free(rb_addr_table *t)
{
    if (t != NULL) {
        free(t->slots);
        free(t);
    }
}

static uint32_t home_of(const rb_addr_table *t, const rb_addr_key *key)
{
    return (uint32_t)XXH3_64bits_withSeed(key->bytes, sizeof key->bytes, t->seed) & t->mask;
}

static entry *find(const rb_addr_table *t, const rb_addr_key *key)
{
    for (uint32_t i = home_of(t, key), n = 0; n <= t->mask; i = (i + 1) & t->mask, n++) {
        entry *e = &t->slots[i];
        if (!e->used) {
            return NULL;
        }
        if (memcmp(e->key.bytes, key->bytes, sizeof key->bytes) == 0) {
            return e;
        }
    }
    return NULL;
}

/* Backward-shift deletion: later entries of the run move up so that every
 * entry stays reachable from its home slot. */
static void remove_at(rb_addr_table *t, uint32_t hole)
{
    t->slots[hole].used = false;
    t->used--;
    for (uint32_t i = (hole + 1) & t->mask; t->slots[i].used; i = (i + 1) & t->mask) {
        uint32_t home = home_of(t, &t->slots[i].key);
        /* Moves up when its home is not within (hole, i]. */
        bool between = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!between) {
            t->slots[hole] = t->slots[i];
            t->slots[i].used = false;
            hole = i;
        }
    }
}

static bool idle(const entry *e, uint64_t now_ms)
{
    return e->conns == 0 && rb_bucket_full(&e->rate, now_ms) &&
           rb_bucket_full(&e->failures, now_ms);
}

/* Drops idle entries; called when the table is three quarters full, so
 * its cost (one pass) is spread over many admits. */
static void sweep(rb_addr_table *t, uint64_t now_ms)
{
    for (uint32_t i = 0; i <= t->mask; i++) {
        while (t->slots[i].used && idle(&t->slots[i], now_ms)) {
            remove_at(t, i);
        }
    }
}

static entry *find_or_add(rb_addr_table *t, const rb_addr_key *key, uint64_t now_ms)
{
    entry *e = find(t, key);
    if (e != NULL) {
        return e;
    }
    if (t->used >= (t->mask + 1) / 4 * 3) {
        sweep(t, now_ms);
        if (t->used >= (t->mask + 1) / 4 * 3) {
            return NULL;
        }
    }
    uint32_t i = home_of(t, key);
    while (t->slots[i].used) {
        i = (i + 1) & t->mask;
    }
    e = &t->slots[i];
    memset(e, 0, sizeof *e);
    e->used = true;
    e->key = *key;
    rb_bucket_init(&e->rate, t->limits.conn_rate_per_s, t->limits.conn_rate_per_s, now_ms);
    rb_bucket_init_period(&e->failures, t->limits.failures_per_minute, 60000,
                          t->limits.failures_per_minute, now_ms);
    t->used++;
    return e;
}

rb_admit rb_addr_admit(rb_addr_table *t, const rb_addr_key *key, uint64_t now_ms)
{
    entry *e = find_or_add(t, key, now_ms);
    if (e == NULL) {
        return RB_ADMIT_TABLE_FULL;
    }
    bool rate_ok = rb_bucket_take(&e->rate, 1, now_ms);
    if (rb_bucket_wait_ms(&e->failures, 1, now_ms) != 0) {
        return RB_ADMIT_FAILURES;
    }
    if (e->conns >= t->limits.conns_per_address) {
        return RB_ADMIT_PER_ADDRESS;
    }
    if (!rate_ok) {
        return RB_ADMIT_RATE;
    }
    e->conns++;
    return RB_ADMIT_OK;
}

void rb_addr_release(rb_addr_table *t, const rb_addr_key *key)
{
    entry *e = find(t, key);
    RB_ASSERT(e != NULL);
    RB_ASSERT(e->conns > 0);
    e->conns--;
}

bool rb_addr_failure(rb_addr_table *t, const rb_addr_key *key, uint64_t now_ms)
{
    entry *e = find_or_add(t, key, now_ms);
    if (e == NULL) {
        return false;
    }
    (void)rb_bucket_take(&e->failures, 1, now_ms);
    return rb_bucket_wait_ms(&e->failures, 1, now_ms) != 0;
}

uint32_t rb_addr_conns(const rb_addr_table *t, const rb_addr_key *key)
{
    const entry *e = find(t, key);
    return e != NULL ? e->conns : 0;
}

uint32_t rb_addr_tracked(const rb_addr_table *t)
{
    return t->used;
}

const char *rb_admit_name(rb_admit a)
{
    switch (a) {
    case RB_ADMIT_OK:
        return "ok";
    case RB_ADMIT_PER_ADDRESS:
        return "max_connections_per_address";
    case RB_ADMIT_RATE:
        return "connection_rate_per_address";
    case RB_ADMIT_FAILURES:
        return "failures_per_minute";
    case RB_ADMIT_TABLE_FULL:
        return "address table full";
    case RB_ADMIT_TOTAL:
        return "max_connections_total";
    case RB_ADMIT_LISTENER:
        return "listener max_connections";
    }
    return "unknown";
}
