/* Per-home free lists with batched returns; see freelist.h. A free item's
 * first word links it into a list. */
#include "server/freelist.h"

#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/limits.h"
#include "common/poison.h"

/* One pool's chain of items waiting in a thread's return cache. */
typedef struct return_slot {
    rb_freelist *pool;
    void *head;
    void *tail;
    uint32_t count;
} return_slot;

static _Thread_local uint32_t thread_home;
static _Thread_local return_slot returns[RB_FREELIST_RETURN_POOLS_MAX];

static void *next_of(void *item)
{
    void *n;
    memcpy(&n, item, sizeof n);
    return n;
}

static void set_next(void *item, void *n)
{
    memcpy(item, &n, sizeof n);
}

int rb_freelist_init(rb_freelist *fl, const char *name, size_t item_bytes, uint32_t max,
                     uint32_t home, rb_freelist_budget *budget, rb_err *err)
{
    if (item_bytes < sizeof(void *) || max == 0) {
        return rb_err_set(err, RB_EINVAL, 0, "pool %s: item %zu bytes, max %u", name, item_bytes,
                          max);
    }
    memset(fl, 0, sizeof *fl);
    fl->name = name;
    fl->item_bytes = item_bytes;
    fl->max = max;
    fl->home = home;
    fl->budget = budget;
    atomic_init(&fl->returned, NULL);
    return 0;
}

void rb_freelist_deinit(rb_freelist *fl)
{
    if (fl->name == NULL) {
        return;
    }
    uint32_t freed = 0;
    void *lists[2] = {fl->local, atomic_exchange(&fl->returned, NULL)};
    for (int i = 0; i < 2; i++) {
        void *item = lists[i];
        while (item != NULL) {
            void *n = next_of(item);
            rb_unpoison_item(item, fl->item_bytes);
            free(item);
            freed++;
            item = n;
        }
    }
    /* Every item came back: none is leaked or still in use. */
    RB_ASSERT(freed == fl->allocated);
    if (fl->budget != NULL) {
        fl->budget->used_bytes -= (uint64_t)fl->allocated * fl->item_bytes;
    }
    fl->local = NULL;
    fl->allocated = 0;
    fl->name = NULL;
}

void *rb_freelist_get(rb_freelist *fl)
{
    RB_ASSERT(fl->home == thread_home);
    void *item = fl->local;
    if (item == NULL && atomic_load_explicit(&fl->returned, memory_order_relaxed) != NULL) {
        /* Acquire: the returning threads' writes to the items are seen. */
        item = atomic_exchange_explicit(&fl->returned, NULL, memory_order_acquire);
    }
    if (item != NULL) {
        fl->local = next_of(item);
        rb_unpoison_item(item, fl->item_bytes);
        return item;
    }
    if (fl->allocated >= fl->max) {
        return NULL;
    }
    if (fl->budget != NULL && fl->budget->used_bytes + fl->item_bytes > fl->budget->limit_bytes) {
        return NULL;
    }
    /* Growth happens until the bound is reached, then items only recycle. */
    item = malloc(fl->item_bytes);
    if (item == NULL) {
        return NULL;
    }
    fl->allocated++;
    if (fl->budget != NULL) {
        fl->budget->used_bytes += fl->item_bytes;
    }
    return item;
}

int rb_freelist_has_free(rb_freelist *fl)
{
    return fl->local != NULL || atomic_load_explicit(&fl->returned, memory_order_relaxed) != NULL;
}

static void push_chain(rb_freelist *fl, void *head, void *tail)
{
    void *old = atomic_load_explicit(&fl->returned, memory_order_relaxed);
    do {
        set_next(tail, old);
        /* Release: the items' contents are written before the home sees them. */
    } while (!atomic_compare_exchange_weak_explicit(&fl->returned, &old, head, memory_order_release,
                                                    memory_order_relaxed));
}

static void slot_flush(return_slot *s)
{
    if (s->count > 0) {
        push_chain(s->pool, s->head, s->tail);
    }
    memset(s, 0, sizeof *s);
}

void rb_freelist_put(rb_freelist *fl, void *item)
{
    RB_ASSERT(item != NULL);
    rb_poison_item(item, fl->item_bytes);
    if (fl->home == thread_home) {
        set_next(item, fl->local);
        fl->local = item;
        return;
    }
    return_slot *free_slot = NULL;
    for (uint32_t i = 0; i < RB_FREELIST_RETURN_POOLS_MAX; i++) {
        return_slot *s = &returns[i];
        if (s->pool == fl) {
            set_next(item, s->head);
            s->head = item;
            if (++s->count >= RB_FREELIST_RETURN_BATCH) {
                slot_flush(s);
            }
            return;
        }
        if (s->pool == NULL && free_slot == NULL) {
            free_slot = s;
        }
    }
    if (free_slot == NULL) {
        /* Every slot holds another pool: the first goes home now. */
        free_slot = &returns[0];
        slot_flush(free_slot);
    }
    set_next(item, NULL);
    *free_slot = (return_slot){.pool = fl, .head = item, .tail = item, .count = 1};
}

void rb_freelist_bind_thread(uint32_t home)
{
    thread_home = home;
}

void rb_freelist_flush_returns(void)
{
    for (uint32_t i = 0; i < RB_FREELIST_RETURN_POOLS_MAX; i++) {
        if (returns[i].pool != NULL) {
            slot_flush(&returns[i]);
        }
    }
}
