/* Auth worker threads (server/auth_pool.h). The queue is a mutex-guarded
 * list: it is touched once per sign-in with a password, never per message,
 * so a lock here costs nothing on the hot path. */
#include "server/auth_pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/limits.h"

struct rb_auth_pool {
    const rb_auth *auth;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    rb_auth_job *head;
    rb_auth_job *tail;
    uint32_t queued;
    uint32_t running;
    uint32_t running_old; /* jobs running against the verifier before set_auth's */
    pthread_cond_t old_done;
    bool stopping;
    uint32_t thread_count;
    pthread_t threads[RB_AUTH_WORKERS_MAX];
};

static void finish(rb_auth_job *job, rb_loop *loop)
{
    /* The password is not kept past its check. */
    explicit_bzero(job->credentials, sizeof job->credentials);
    job->credentials_len = 0;
    job->worker_loop = loop;
    job->done(job, job->ctx);
    if (loop != NULL) {
        rb_err err;
        (void)rb_loop_run_once(loop, 0, &err); /* submits the wake-ups */
    }
}

static void *worker_main(void *arg)
{
    rb_auth_pool *p = arg;
    /* A ring of its own only to post MSG_RING wake-ups to shards. */
    rb_loop *loop = NULL;
    rb_loop_options opt = {.sq_entries = 8, .recv_buf_count = 1, .recv_buf_bytes = 64};
    rb_err lerr;
    if (rb_loop_init(&loop, &opt, &lerr) != 0) {
        loop = NULL;
    }
    pthread_mutex_lock(&p->lock);
    /* A worker's loop: it ends only when the pool stops. */
    for (;;) {
        while (p->head == NULL && !p->stopping) {
            pthread_cond_wait(&p->wake, &p->lock);
        }
        if (p->head == NULL) {
            break;
        }
        rb_auth_job *job = p->head;
        p->head = job->next;
        if (p->head == NULL) {
            p->tail = NULL;
        }
        p->queued--;
        bool cancelled = p->stopping;
        const rb_auth *auth = p->auth;
        p->running++;
        pthread_mutex_unlock(&p->lock);
        job->verified_by = auth;
        if (cancelled) {
            job->rc =
                rb_err_set(&job->err, RB_ECLOSED, RB_WIRE_UNAVAILABLE, "auth: server stopping");
        } else {
            rb_bytes creds = {job->credentials, job->credentials_len};
            job->rc = rb_auth_verify(auth, creds, job->now_s, &job->identity, &job->err);
        }
        finish(job, loop);
        pthread_mutex_lock(&p->lock);
        p->running--;
        if (auth != p->auth) {
            RB_ASSERT(p->running_old > 0);
            p->running_old--;
            pthread_cond_broadcast(&p->old_done);
        }
    }
    pthread_mutex_unlock(&p->lock);
    rb_loop_deinit(loop);
    return NULL;
}

int rb_auth_pool_start(rb_auth_pool **out, const rb_auth *auth, uint32_t worker_count, rb_err *err)
{
    RB_ASSERT(auth != NULL);
    RB_ASSERT(worker_count >= 1 && worker_count <= RB_AUTH_WORKERS_MAX);
    rb_auth_pool *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "auth pool: out of memory");
    }
    p->auth = auth;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->old_done, NULL);
    for (uint32_t i = 0; i < worker_count; i++) {
        int rc = pthread_create(&p->threads[i], NULL, worker_main, p);
        if (rc != 0) {
            rb_auth_pool_stop(p);
            return rb_err_set(err, RB_ESYS, rc, "auth pool: pthread_create");
        }
        p->thread_count++;
    }
    *out = p;
    return 0;
}

int rb_auth_pool_submit(rb_auth_pool *p, rb_auth_job *job)
{
    RB_ASSERT(job != NULL && job->done != NULL);
    RB_ASSERT(job->credentials_len <= sizeof job->credentials);
    pthread_mutex_lock(&p->lock);
    int rc = 0;
    if (p->stopping) {
        rc = RB_ECLOSED;
    } else if (p->queued >= RB_AUTH_QUEUE_MAX) {
        rc = RB_ELIMIT;
    } else {
        job->next = NULL;
        memset(&job->identity, 0, sizeof job->identity);
        if (p->tail != NULL) {
            p->tail->next = job;
        } else {
            p->head = job;
        }
        p->tail = job;
        p->queued++;
        pthread_cond_signal(&p->wake);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

void rb_auth_pool_set_auth(rb_auth_pool *p, const rb_auth *auth)
{
    RB_ASSERT(auth != NULL);
    pthread_mutex_lock(&p->lock);
    /* Only one reload at a time (the main thread): nothing older runs. */
    RB_ASSERT(p->running_old == 0);
    if (auth != p->auth) {
        p->auth = auth;
        p->running_old = p->running;
        while (p->running_old > 0) {
            pthread_cond_wait(&p->old_done, &p->lock);
        }
    }
    pthread_mutex_unlock(&p->lock);
}

uint32_t rb_auth_pool_pending(rb_auth_pool *p)
{
    pthread_mutex_lock(&p->lock);
    uint32_t n = p->queued + p->running;
    pthread_mutex_unlock(&p->lock);
    return n;
}

void rb_auth_pool_stop(rb_auth_pool *p)
{
    if (p == NULL) {
        return;
    }
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (uint32_t i = 0; i < p->thread_count; i++) {
        pthread_join(p->threads[i], NULL);
    }
    /* With no threads (a failed start) nothing can be queued. */
    RB_ASSERT(p->head == NULL);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->old_done);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
