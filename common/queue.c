/* rb_spsc: the single-producer/single-consumer ring. head and tail are
 * free-running 32-bit counters (slot = counter & mask); their difference is
 * the fill level, exact under wrap-around because capacity < 2^31. Each side
 * keeps a cached copy of the other side's counter and reloads it (acquire)
 * only when the cache says full or empty, so the common case touches no
 * shared cache line but the slot itself. */
#include "common/queue.h"

#include <assert.h>
#include <stdlib.h>

#include "common/assert.h"

static_assert(RB_SPSC_SLOTS_MAX <= (1u << 31), "counters stay exact under wrap-around");

int rb_spsc_init(rb_spsc *q, uint32_t slots, rb_err *err)
{
    RB_ASSERT(q != NULL);
    if (slots < 2 || slots > RB_SPSC_SLOTS_MAX || (slots & (slots - 1)) != 0) {
        return rb_err_set(err, RB_EINVAL, 0, "spsc init: %u slots is not a power of two in [2, %u]",
                          slots, RB_SPSC_SLOTS_MAX);
    }
    void **array = calloc(slots, sizeof *array);
    if (array == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "spsc init: cannot allocate %u slots", slots);
    }
    atomic_init(&q->head, 0);
    atomic_init(&q->tail, 0);
    q->tail_cache = 0;
    q->head_cache = 0;
    q->slots = array;
    q->mask = slots - 1;
    return 0;
}

void rb_spsc_deinit(rb_spsc *q)
{
    RB_ASSERT(q != NULL);
    free(q->slots);
    q->slots = NULL;
    q->mask = 0;
}

bool rb_spsc_push(rb_spsc *q, void *item)
{
    RB_ASSERT(item != NULL);
    RB_ASSERT(q->slots != NULL);
    /* Only this thread writes tail, so a relaxed load sees its own value. */
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
    uint32_t capacity = q->mask + 1;
    if (tail - q->head_cache == capacity) {
        /* Acquire: the consumer's reads of the slots it freed happen before
         * we overwrite them. */
        q->head_cache = atomic_load_explicit(&q->head, memory_order_acquire);
        if (tail - q->head_cache == capacity) {
            return false;
        }
    }
    RB_ASSERT(tail - q->head_cache < capacity);
    q->slots[tail & q->mask] = item;
    /* Release: the slot (and whatever item points to) is visible before the
     * consumer can see the new tail. */
    atomic_store_explicit(&q->tail, tail + 1, memory_order_release);
    return true;
}

void *rb_spsc_pop(rb_spsc *q)
{
    RB_ASSERT(q->slots != NULL);
    uint32_t head = atomic_load_explicit(&q->head, memory_order_relaxed);
    if (head == q->tail_cache) {
        q->tail_cache = atomic_load_explicit(&q->tail, memory_order_acquire);
        if (head == q->tail_cache) {
            return NULL;
        }
    }
    void *item = q->slots[head & q->mask];
    RB_ASSERT(item != NULL);
    /* Release: our read of the slot happens before the producer reuses it. */
    atomic_store_explicit(&q->head, head + 1, memory_order_release);
    return item;
}

uint32_t rb_spsc_pop_many(rb_spsc *q, void **out, uint32_t max)
{
    RB_ASSERT(q->slots != NULL);
    RB_ASSERT(out != NULL || max == 0);
    uint32_t head = atomic_load_explicit(&q->head, memory_order_relaxed);
    if (q->tail_cache - head < max) {
        q->tail_cache = atomic_load_explicit(&q->tail, memory_order_acquire);
    }
    uint32_t available = q->tail_cache - head;
    RB_ASSERT(available <= q->mask + 1);
    uint32_t n = available < max ? available : max;
    for (uint32_t i = 0; i < n; i++) {
        out[i] = q->slots[(head + i) & q->mask];
    }
    if (n > 0) {
        atomic_store_explicit(&q->head, head + n, memory_order_release);
    }
    return n;
}

uint32_t rb_spsc_count(const rb_spsc *q)
{
    /* head first: tail only grows, so tail read later is >= the head read
     * now. From a third thread the difference could exceed the capacity
     * (head moved on in between), hence the clamp. */
    uint32_t head = atomic_load_explicit(&q->head, memory_order_acquire);
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_acquire);
    uint32_t count = tail - head;
    uint32_t capacity = q->mask + 1;
    return count < capacity ? count : capacity;
}

uint32_t rb_spsc_capacity(const rb_spsc *q)
{
    return q->mask + 1;
}
