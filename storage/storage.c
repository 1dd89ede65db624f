/* Picks the storage backend the configuration names. Backends live in their
 * own files; this one only maps the config's choice to an ops table. */
#include "storage/storage.h"

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
