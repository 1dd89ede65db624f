/* Rate and connection limits of issue 13: token buckets (per-connection
 * publish rate and Mutates per second, per-address connection rate and
 * failed sign-ins) and the table of source addresses that counts
 * connections per address. It owns only the arithmetic and the table; the
 * acceptor and the session decide when to ask and what to answer (each
 * refusal has its wire code: resource_exhausted for the limits,
 * unauthorized for sign-in failures).
 *
 * The table is sized once at start and never allocates afterwards; it is
 * owned by one thread (the acceptor shard) and takes no locks. */
#ifndef RB_SERVER_LIMITER_H
#define RB_SERVER_LIMITER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/err.h"

/* A token bucket: rate tokens per period_ms, at most burst saved up.
 * Integer arithmetic in units of 1/period_ms token, so it is exact to the
 * millisecond from 1 a minute to 10^9 a second. */
typedef struct rb_bucket {
    uint64_t level; /* in units; one token is period_ms units */
    uint64_t last_ms;
    uint32_t rate;
    uint32_t period_ms;
    uint32_t burst;
} rb_bucket;

/* Starts full. rate and burst must be >= 1, period_ms in [1, 3600000]. */
void rb_bucket_init_period(rb_bucket *b, uint32_t rate, uint32_t period_ms, uint32_t burst,
                           uint64_t now_ms);
/* rate_per_s tokens a second. */
void rb_bucket_init(rb_bucket *b, uint32_t rate_per_s, uint32_t burst, uint64_t now_ms);

/* Takes n tokens when there are that many (true), else takes none. A clock
 * that goes backwards adds nothing. */
bool rb_bucket_take(rb_bucket *b, uint32_t n, uint64_t now_ms);

/* Gives back n tokens taken by rb_bucket_take (a taken operation that did
 * not happen after all); never above the burst. */
void rb_bucket_give(rb_bucket *b, uint32_t n);

/* Milliseconds until n tokens will be there (0 = now); n above the burst
 * never fits and returns UINT64_MAX. */
uint64_t rb_bucket_wait_ms(const rb_bucket *b, uint32_t n, uint64_t now_ms);

/* True when the bucket is full at now_ms (nothing to remember). */
bool rb_bucket_full(const rb_bucket *b, uint64_t now_ms);

/* ---- source addresses ---- */

typedef struct rb_addr_key {
    uint8_t bytes[16]; /* IPv4 as ::ffff:a.b.c.d, so each address has one key */
} rb_addr_key;

/* The key of a peer's sockaddr (AF_INET or AF_INET6); false otherwise. */
bool rb_addr_key_of(const struct sockaddr *sa, socklen_t len, rb_addr_key *out);

typedef enum rb_admit {
    RB_ADMIT_OK = 0,
    RB_ADMIT_PER_ADDRESS = 1, /* limits.max_connections_per_address */
    RB_ADMIT_RATE = 2,        /* limits.connection_rate_per_address */
    RB_ADMIT_FAILURES = 3,    /* auth.failures_per_minute used up */
    RB_ADMIT_TABLE_FULL = 4,  /* more distinct addresses than the table holds */
    RB_ADMIT_TOTAL = 5,       /* limits.max_connections_total (the caller counts) */
    RB_ADMIT_LISTENER = 6,    /* the listener's max_connections (the caller counts) */
} rb_admit;

typedef struct rb_addr_limits {
    uint32_t conns_per_address;
    uint32_t conn_rate_per_s;
    uint32_t failures_per_minute;
} rb_addr_limits;

typedef struct rb_addr_table rb_addr_table;

/* Addresses the table may track: slots are a power of two at least twice
 * the expected connections, capped here (each slot is ~80 bytes). */
#define RB_ADDR_TABLE_SLOTS_MAX (1u << 20)
#define RB_ADDR_TABLE_SLOTS_MIN 64

/* Allocates a table for about expected_conns connections (slots = the
 * next power of two of 2 x expected_conns, within the bounds above) with
 * a random hash seed. Returns 0 or RB_ENOMEM / RB_ESYS. */
int rb_addr_table_new(rb_addr_table **out, uint32_t expected_conns, rb_addr_limits limits,
                      rb_err *err);
void rb_addr_table_free(rb_addr_table *t);

/* A new connection from key: checks failures, the per-address cap and
 * the rate, in that order, and counts the connection when admitted. A
 * refused attempt still uses up rate, so a storm stays refused. */
rb_admit rb_addr_admit(rb_addr_table *t, const rb_addr_key *key, uint64_t now_ms);

/* A connection counted by rb_addr_admit has closed. */
void rb_addr_release(rb_addr_table *t, const rb_addr_key *key);

/* A failed sign-in from key. Returns true when the address has now used
 * up auth.failures_per_minute (later attempts are refused at admit). */
bool rb_addr_failure(rb_addr_table *t, const rb_addr_key *key, uint64_t now_ms);

/* Connections counted for key, and addresses tracked (for tests, metrics). */
uint32_t rb_addr_conns(const rb_addr_table *t, const rb_addr_key *key);
uint32_t rb_addr_tracked(const rb_addr_table *t);

/* "per_address", "rate", ... for logs. */
const char *rb_admit_name(rb_admit a);

#endif
