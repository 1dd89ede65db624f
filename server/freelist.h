/* rb_freelist: a bounded pool of fixed-size items owned by one shard (its
 * home) and handed between shards: items are taken only on the home
 * thread, from a free list no other thread touches (no lock, no atomic on
 * the hot path), and may be given back from any thread. An item freed on
 * another shard waits in that thread's return cache and goes home with
 * others of its pool in one batch (one compare-and-swap per batch, at the
 * latest at that shard's next rb_freelist_flush_returns), where the home
 * takes the whole returned chain with one exchange when its own list is
 * empty. Items are allocated on first demand up to `max` (and within an
 * optional byte budget shared with other pools of the same home) and then
 * recycled, never freed before rb_freelist_deinit.
 *
 * Threading: rb_freelist_bind_thread names the home a thread runs as;
 * rb_freelist_get only on the pool's home thread; rb_freelist_put and
 * rb_freelist_flush_returns on any thread; init and deinit while no other
 * thread uses the pool. */
#ifndef RB_SERVER_FREELIST_H
#define RB_SERVER_FREELIST_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* A byte budget several pools of one home allocate from (home thread). */
typedef struct rb_freelist_budget {
    uint64_t used_bytes;
    uint64_t limit_bytes;
} rb_freelist_budget;

typedef struct rb_freelist {
    const char *name;
    size_t item_bytes;
    uint32_t max;
    uint32_t home;              /* the home's id (rb_freelist_bind_thread), 0 = unbound threads */
    rb_freelist_budget *budget; /* NULL: only max bounds the pool */
    /* home thread only */
    void *local;
    uint32_t allocated;
    /* any thread: chains of items given back from other homes */
    _Atomic(void *) returned;
} rb_freelist;

/* item_bytes >= sizeof(void *), max >= 1; home is the id of the thread
 * that takes items (0 for a pool used on unbound threads, as in tests). */
int rb_freelist_init(rb_freelist *fl, const char *name, size_t item_bytes, uint32_t max,
                     uint32_t home, rb_freelist_budget *budget, rb_err *err);

/* Frees every item; all must be back (asserted), including those still in
 * return caches: flush them first. */
void rb_freelist_deinit(rb_freelist *fl);

/* An item (contents undefined), or NULL when max items (or the budget) are
 * out: the caller holds the work back or refuses it. Home thread only. */
void *rb_freelist_get(rb_freelist *fl);

/* True when an item can be had without allocating (free or returned). */
int rb_freelist_has_free(rb_freelist *fl);

/* Gives an item back, from any thread. */
void rb_freelist_put(rb_freelist *fl, void *item);

/* The calling thread runs as home `home` (a shard id + 1; 0 unbinds). */
void rb_freelist_bind_thread(uint32_t home);

/* Sends every item this thread holds for other homes back to them. */
void rb_freelist_flush_returns(void);

#endif
