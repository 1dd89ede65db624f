/* The auth worker pool: a few threads ([auth] workers) that run slow
 * credential checks (argon2id password hashes) so that a shard's loop never
 * waits for one. It owns the threads and a bounded queue of jobs; what a
 * job's result means is left to the session that submitted it.
 *
 * A job's done callback runs on a worker thread, not on the submitter's
 * shard: it must only hand the job back (e.g. through the shard's mailbox)
 * and touch nothing of the shard. */
#ifndef RB_SERVER_AUTH_POOL_H
#define RB_SERVER_AUTH_POOL_H

#include <stdint.h>

#include "common/err.h"
#include "common/loop.h"
#include "server/auth.h"

typedef struct rb_auth_pool rb_auth_pool;
typedef struct rb_auth_job rb_auth_job;
typedef void (*rb_auth_job_fn)(rb_auth_job *job, void *ctx);

struct rb_auth_job {
    /* in: set by the submitter */
    uint8_t credentials[RB_AUTH_CREDENTIALS_BYTES_MAX];
    uint32_t credentials_len;
    int64_t now_s;
    rb_auth_job_fn done;
    void *ctx;
    /* out: set before done runs; credentials are wiped by then */
    int rc; /* 0, RB_EINVAL (unauthorized), RB_ECLOSED (pool stopping) */
    rb_err err;
    rb_identity identity; /* the submitter releases it */
    /* the verifier that checked it: after a reload (rb_auth_pool_set_auth)
     * an older one, whose user the submitter looks up again */
    const rb_auth *verified_by;
    /* The worker's own small loop, valid during done: done may queue
     * rb_loop_wake_remote on it (to wake the submitter's shard); the
     * worker submits it after done returns. */
    rb_loop *worker_loop;
    /* the pool's while queued; free for the submitter once done runs */
    rb_auth_job *next;
};

/* Starts worker_count threads (1..RB_AUTH_WORKERS_MAX) verifying against
 * auth, which must outlive the pool. Returns 0 with *out, or RB_ESYS /
 * RB_ENOMEM. */
int rb_auth_pool_start(rb_auth_pool **out, const rb_auth *auth, uint32_t worker_count, rb_err *err);

/* Queues job; the pool owns it until its done callback runs (exactly once,
 * on a worker thread, never before this returns 0). Returns RB_ELIMIT
 * when RB_AUTH_QUEUE_MAX jobs wait (done never runs then) or RB_ECLOSED
 * after stop began. Never blocks on a hash. */
int rb_auth_pool_submit(rb_auth_pool *pool, rb_auth_job *job);

/* A reload: jobs taken from now on verify against auth. Returns once no
 * job runs against the previous verifier any more, which the caller may
 * then free (a finished job's verified_by still names it, never read). */
void rb_auth_pool_set_auth(rb_auth_pool *pool, const rb_auth *auth);

/* Jobs waiting or running, for metrics and tests. */
uint32_t rb_auth_pool_pending(rb_auth_pool *pool);

/* Stops the pool: jobs still queued complete with RB_ECLOSED, running ones
 * finish, the threads are joined, and pool is freed. */
void rb_auth_pool_stop(rb_auth_pool *pool);

#endif
