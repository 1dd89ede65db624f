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
    int rc = pthread_mutex_init(&pool->mu, NULL);
    if (rc != 0) {
        return rb_err_set(err, RB_ESYS, rc, "pool %s: mutex", name);
    }
    pool->free_list = NULL;
    pool->name = name;
    pool->item_bytes = item_bytes;
    pool->allocated = 0;
    pool->max = max;
    pool->in_use = 0;
    return 0;
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
    pthread_mutex_destroy(&pool->mu);
}

void *rb_pool_get(rb_pool *pool)
{
    pthread_mutex_lock(&pool->mu);
    void *item = pool->free_list;
    if (item != NULL) {
        pool->free_list = *(void **)item;
        pool->in_use++;
        pthread_mutex_unlock(&pool->mu);
        rb_unpoison_item(item, pool->item_bytes);
        return item;
    }
    if (pool->allocated >= pool->max) {
        pthread_mutex_unlock(&pool->mu);
        return NULL;
    }
    pool->allocated++;
    pool->in_use++;
    pthread_mutex_unlock(&pool->mu);
    /* Growth happens until the bound is reached, then items only recycle. */
    item = malloc(pool->item_bytes);
    if (item == NULL) {
        pthread_mutex_lock(&pool->mu);
        pool->allocated--;
        pool->in_use--;
        pthread_mutex_unlock(&pool->mu);
    }
    return item;
}

void rb_pool_put(rb_pool *pool, void *item)
{
    RB_ASSERT(item != NULL);
    rb_poison_item(item, pool->item_bytes);
    pthread_mutex_lock(&pool->mu);
    RB_ASSERT(pool->in_use > 0);
    *(void **)item = pool->free_list;
    pool->free_list = item;
    pool->in_use--;
    pthread_mutex_unlock(&pool->mu);
}

uint32_t rb_pool_in_use(rb_pool *pool)
{
    pthread_mutex_lock(&pool->mu);
    uint32_t n = pool->in_use;
    pthread_mutex_unlock(&pool->mu);
    return n;
}
