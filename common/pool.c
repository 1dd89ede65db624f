/* Bounded recycling pool; see pool.h. */
#include "common/pool.h"

#include <stdlib.h>

#include "common/assert.h"
#include "common/poison.h"

int rb_pool_init(rb_pool *pool, const char *name, size_t item_bytes, uint32_t max, rb_err *err)
{
    if (item_bytes < sizeof(void *) || max == 0) {
        return rb_err_set(err, RB_EINVAL, 0, "pool %s: item %zu bytes, max %u", name, item_bytes,
                          max);
    }
    pool->free_list = NULL;
    pool->name = name;
    pool->item_bytes = item_bytes;
    pool->allocated = 0;
    pool->max = max;
    pool->in_use = 0;
    pool->owned = false;
    return 0;
}

static _Thread_local bool inheriting;

void rb_pool_inherit(bool on)
{
    inheriting = on;
}

/* A pool is used by one thread only. */
static void check_owner(rb_pool *pool)
{
    pthread_t self = pthread_self();
    if (!pool->owned || inheriting) {
        pool->owner = self;
        pool->owned = true;
    }
    RB_ASSERT(pthread_equal(pool->owner, self));
}

void rb_pool_deinit(rb_pool *pool)
{
    RB_ASSERT(pool->in_use == 0);
    void *item = pool->free_list;
    while (item != NULL) {
        void *next = *(void **)item;
        rb_unpoison_item(item, pool->item_bytes);
        free(item);
        item = next;
    }
    pool->free_list = NULL;
}

void *rb_pool_get(rb_pool *pool)
{
    check_owner(pool);
    void *item = pool->free_list;
    if (item != NULL) {
        rb_unpoison_item(item, pool->item_bytes);
        pool->free_list = *(void **)item;
        pool->in_use++;
        return item;
    }
    if (pool->allocated >= pool->max) {
        return NULL;
    }
    /* Growth happens until the bound is reached, then items only recycle. */
    item = malloc(pool->item_bytes);
    if (item != NULL) {
        pool->allocated++;
        pool->in_use++;
    }
    return item;
}

void rb_pool_put(rb_pool *pool, void *item)
{
    RB_ASSERT(item != NULL);
    check_owner(pool);
    RB_ASSERT(pool->in_use > 0);
    rb_poison_item(item, pool->item_bytes);
    *(void **)item = pool->free_list;
    pool->free_list = item;
    pool->in_use--;
}

uint32_t rb_pool_in_use(const rb_pool *pool)
{
    return pool->in_use;
}
