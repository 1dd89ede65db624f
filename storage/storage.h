/* The storage interface (DESIGN §2): append a batch of messages to a topic
 * (returns the committed seq range), read ranges for many (topic, after,
 * ceiling) at once, and read heads. Two backends implement it: memory (the
 * embedded default) and postgres.
 *
 * Requests are caller-owned structs (no allocation per request): fill the
 * inputs, call the function, and the request's done callback runs exactly
 * once, later, on the calling shard's loop thread (never before the call
 * returns). A request and everything its inputs point to belong to the
 * backend from the call until done runs. */
#ifndef RB_STORAGE_STORAGE_H
#define RB_STORAGE_STORAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/frame.h"
#include "common/loop.h"
#include "config/config.h"

typedef struct rb_storage rb_storage;             /* one per process */
typedef struct rb_storage_shard rb_storage_shard; /* one per shard, used on its thread */

/* Append: payloads[0..count) become seqs first_seq..last_seq of topic, in
 * order, committed before done runs with status 0. On failure status is a
 * negative RB_E code (RB_ESTORAGE: backend down, ack nothing) and err says
 * why.
 *
 * Idempotency keys (docs/PROTOCOL.md §7.1): keys, when not NULL, holds one
 * key per payload (len 0: none; a key at most once per request). A backend
 * that keeps keys durably (postgres) claims each key in the transaction of
 * the append, within dedup_window_ms of the key's last commit on any node
 * or before a restart: a payload whose key is found unexpired is not
 * stored, and dup_seqs[i] gets the seq it was stored with the first time;
 * the other payloads get first_seq..last_seq in order (last_seq =
 * first_seq - 1 when every one was a duplicate) and dup_seqs[i] = 0.
 * dup_seqs (count entries, zeroed by the caller) is required with keys.
 * The memory backend keeps no keys (the owner's table is the window there)
 * and leaves dup_seqs zero. */
typedef struct rb_append_req rb_append_req;
struct rb_append_req {
    /* in */
    rb_bytes topic;
    const rb_bytes *payloads;
    uint32_t count;
    const rb_bytes *keys;
    uint32_t dedup_window_ms;
    void (*done)(rb_append_req *req);
    void *ctx;
    /* out */
    int status;
    rb_err err;
    uint64_t first_seq;
    uint64_t last_seq;
    uint64_t *dup_seqs;
    /* backend-private */
    rb_task task;
    rb_append_req *next;
};

/* One range of a read: rows with after < seq <= ceiling, oldest first, at
 * most rows_max of them, and as many as fit in the request's arena. */
typedef struct rb_read_range {
    /* in */
    rb_bytes topic;
    uint64_t after;
    uint64_t ceiling;
    uint32_t rows_max;
    /* out */
    int status;          /* 0, or RB_ERANGE: after+1 is older than retained */
    uint32_t row_count;  /* rows written to the arena for this range */
    size_t rows_offset;  /* where they start in the arena */
    size_t rows_bytes;   /* how many arena bytes they take */
    uint64_t last_seq;   /* seq of the last row returned (after when none) */
    bool complete;       /* true when last_seq reached ceiling (or no more rows) */
    uint64_t oldest_seq; /* oldest retained seq of the topic (0 when empty) */
} rb_read_range;

/* Rows are written to the arena as MESSAGES items
 * (rb_frame_encode_messages_item: topic, seq, payload), range after range,
 * so that they can be copied straight into a frame. A range whose next row
 * does not fit stops there (complete = false); the arena holds at least one
 * row of any size the daemon accepts when arena_cap >= max_frame_bytes. */
typedef struct rb_read_req rb_read_req;
struct rb_read_req {
    /* in */
    rb_read_range *ranges;
    uint32_t range_count;
    uint8_t *arena;
    size_t arena_cap;
    void (*done)(rb_read_req *req);
    void *ctx;
    /* out */
    int status; /* 0 (each range has its own status) or a whole-request error */
    rb_err err;
    size_t arena_used;
    /* backend-private */
    rb_task task;
    rb_read_req *next;
};

/* Heads: the committed head (last seq, 0 when empty) of each topic. */
typedef struct rb_heads_req rb_heads_req;
struct rb_heads_req {
    /* in */
    const rb_bytes *topics;
    uint32_t count;
    uint64_t *heads; /* caller's array of count, filled before done */
    void (*done)(rb_heads_req *req);
    void *ctx;
    /* out */
    int status;
    rb_err err;
    /* backend-private */
    rb_task task;
    rb_heads_req *next;
};

typedef struct rb_storage_ops {
    const char *name;
    int (*open)(const rb_config *cfg, rb_storage **out, rb_err *err);
    void (*close)(rb_storage *st);
    /* On the shard's thread, after its loop exists. */
    int (*shard_open)(rb_storage *st, rb_loop *loop, uint32_t shard_id, rb_storage_shard **out,
                      rb_err *err);
    void (*shard_close)(rb_storage_shard *sh);
    /* Each returns 0 (done will run) or a negative RB_E code (done never
     * runs), e.g. RB_ELIMIT when the shard's in-flight bound is reached. */
    int (*append)(rb_storage_shard *sh, rb_append_req *req);
    int (*read)(rb_storage_shard *sh, rb_read_req *req);
    int (*heads)(rb_storage_shard *sh, rb_heads_req *req);
    /* Optional (NULL: ready as soon as open returns). After open, true once
     * the backend can serve (e.g. Postgres reached and migrated); open
     * returns at once and the backend keeps trying, logging why, so the
     * daemon can wait for this before it starts its shards. Any thread. */
    bool (*ready)(rb_storage *st);
    /* The store's epoch (DESIGN §5a): a nonzero u64 naming its seq space,
     * so that a cursor is only meaningful in the epoch it came from.
     * memory: random, chosen at open (a restart starts a new seq space);
     * postgres: created once per database by the schema migration and
     * read when the backend becomes ready. Valid once ready is true (at
     * once when ready is NULL) and fixed until close. Any thread. */
    uint64_t (*epoch)(rb_storage *st);
    /* Optional (NULL: nothing to migrate). Applies the backend's schema
     * migrations and returns (ringbusd --migrate-only); blocking. */
    int (*migrate)(const rb_config *cfg, rb_err *err);
    /* Optional (NULL: none). Connections lost or attempts failed since
     * open, each retried after a backoff (ringbus_storage_reconnects_total).
     * Any thread. */
    uint64_t (*reconnects)(rb_storage *st);
    /* Optional (NULL: always reachable). Shards that have no connection
     * to the store ready now (their requests fail at once); GET /readyz
     * answers 503 while it is above 0. Any thread. */
    uint32_t (*unreachable_shards)(rb_storage *st);
} rb_storage_ops;

extern const rb_storage_ops rb_storage_memory_ops;
extern const rb_storage_ops rb_storage_postgres_ops;

/* For backends: the requests a shard has finished, told in call order from
 * one deferred task, so that no done runs inside the call that issued it.
 * `admitted` counts requests whose done has not run yet. */
typedef struct rb_storage_tells {
    rb_loop *loop;
    rb_task flush; /* deferred on the loop while head is not empty */
    rb_task *head;
    rb_task *tail;
    bool flush_queued;
    uint32_t admitted;
} rb_storage_tells;

void rb_storage__tells_init(rb_storage_tells *t, rb_loop *loop);
/* Queues a finished request (its embedded task); fn runs its done later. */
void rb_storage__tell_later(rb_storage_tells *t, rb_task *task, void (*fn)(rb_task *task));
/* Asserts every done has run (a pending one would touch freed memory). */
void rb_storage__tells_deinit(const rb_storage_tells *t);

/* Task bodies that run a request's done callback. */
void rb_storage__append_told(rb_task *task);
void rb_storage__read_told(rb_task *task);
void rb_storage__heads_told(rb_task *task);

/* The ops for cfg->storage_backend, or NULL when not built in. */
const rb_storage_ops *rb_storage_ops_for(const rb_config *cfg);

#endif
