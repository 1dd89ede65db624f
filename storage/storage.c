/* Picks the storage backend the configuration names. Backends live in their
 * own files; this one only maps the config's choice to an ops table. */
#include "storage/storage.h"

#include "common/assert.h"

const rb_storage_ops *rb_storage_ops_for(const rb_config *cfg)
{
    switch (cfg->storage_backend) {
    case RB_STORAGE_MEMORY:
        return &rb_storage_memory_ops;
    case RB_STORAGE_POSTGRES:
        return &rb_storage_postgres_ops;
    }
    return NULL;
}

/* Deferred-task bodies shared by the backends: each runs the request's
 * done callback on the shard's loop. */
void rb_storage__append_told(rb_task *task)
{
    rb_append_req *req = RB_CONTAINER_OF(task, rb_append_req, task);
    req->done(req);
}

void rb_storage__read_told(rb_task *task)
{
    rb_read_req *req = RB_CONTAINER_OF(task, rb_read_req, task);
    req->done(req);
}

void rb_storage__heads_told(rb_task *task)
{
    rb_heads_req *req = RB_CONTAINER_OF(task, rb_heads_req, task);
    req->done(req);
}

static void tells_flush(rb_task *task)
{
    rb_storage_tells *t = RB_CONTAINER_OF(task, rb_storage_tells, flush);
    rb_task *done = t->head;
    t->head = NULL;
    t->tail = NULL;
    t->flush_queued = false;
    /* A done may issue new requests: they join a fresh list and a fresh
     * flush, so none runs inside its own call. */
    while (done != NULL) {
        rb_task *next = done->next;
        RB_ASSERT(t->admitted > 0);
        t->admitted--;
        done->fn(done);
        done = next;
    }
}

void rb_storage__tells_init(rb_storage_tells *t, rb_loop *loop)
{
    *t = (rb_storage_tells){.loop = loop};
    t->flush.fn = tells_flush;
}

void rb_storage__tell_later(rb_storage_tells *t, rb_task *task, void (*fn)(rb_task *task))
{
    task->fn = fn;
    task->next = NULL;
    if (t->tail == NULL) {
        t->head = task;
    } else {
        t->tail->next = task;
    }
    t->tail = task;
    if (!t->flush_queued) {
        t->flush_queued = true;
        rb_loop_defer(t->loop, &t->flush);
    }
}

void rb_storage__tells_deinit(const rb_storage_tells *t)
{
    RB_ASSERT(t->admitted == 0);
    RB_ASSERT(!t->flush_queued);
}
