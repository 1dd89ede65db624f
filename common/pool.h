/* A bounded pool of fixed-size items. Items are allocated on first demand
 * up to `max` and then recycled, never freed before rb_pool_deinit, so the
 * pool's memory is bounded by item_bytes x max and the steady state does not
 * malloc. Single-threaded: a pool belongs to the thread that first takes an
 * item from it (its shard), which alone gets and puts; no lock is taken.
 * Items that travel between shards (mailbox blocks) have their own free
 * lists (server/freelist.c). Every get and put asserts that it runs on the
 * owning thread (a pthread_self() compare, no atomic). */
#ifndef RB_COMMON_POOL_H
#define RB_COMMON_POOL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct rb_pool {
    void *free_list;
    const char *name;
    size_t item_bytes;
    uint32_t allocated;
    uint32_t max;
    uint32_t in_use;
    pthread_t owner; /* the thread of the first get or put */
    bool owned;
} rb_pool;

/* item_bytes >= sizeof(void *); max >= 1. Allocates nothing yet. */
int rb_pool_init(rb_pool *pool, const char *name, size_t item_bytes, uint32_t max, rb_err *err);

/* Frees every item; all must have been returned (asserted). */
void rb_pool_deinit(rb_pool *pool);

/* An item of item_bytes (contents undefined), or NULL when max items are in
 * use or memory ran out: the caller refuses the work (RB_ELIMIT). */
void *rb_pool_get(rb_pool *pool);

/* Returns an item obtained from this pool. */
void rb_pool_put(rb_pool *pool, void *item);

/* While on, the calling thread takes over every pool it uses: for tearing
 * down the pools of threads it has joined (rb_server_join). */
void rb_pool_inherit(bool on);

/* Items taken and not yet returned (on the owning thread). */
uint32_t rb_pool_in_use(const rb_pool *pool);

#endif
