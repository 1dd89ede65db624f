/* rb_spsc: a bounded, lock-free ring of `void *` slots with exactly one
 * producer thread and one consumer thread, the queue between two shards.
 * The ring is allocated once at init (capacity a power of two) and never
 * grows: a full ring refuses the push, so the producer applies its own
 * back-pressure. The queue owns only its slot array; the items are the
 * caller's and pass from producer to consumer with the push/pop (the pop
 * acquires what the push released: everything the producer wrote before
 * pushing is visible to the consumer after popping).
 *
 * Threading: rb_spsc_push only from the producer thread, rb_spsc_pop and
 * rb_spsc_pop_many only from the consumer thread; rb_spsc_count and
 * rb_spsc_capacity from either. init and deinit while no thread uses it. */
#ifndef RB_COMMON_QUEUE_H
#define RB_COMMON_QUEUE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"

/* The largest ring: 16 Mi slots (128 MiB of pointers) is far above any
 * shard queue (RB_SHARD_QUEUE_SLOTS) and keeps index arithmetic on 32-bit
 * counters exact (capacity must stay below 2^31). */
#define RB_SPSC_SLOTS_MAX (1u << 24)

/* Bytes between the consumer's and the producer's fields, so that each
 * side writes its own cache line. Padding (not _Alignas) keeps the struct
 * safe to embed in malloc'd memory. */
#define RB_SPSC_LINE_BYTES 64

typedef struct rb_spsc {
    /* Written by the consumer. */
    _Atomic uint32_t head; /* next slot to pop (free-running counter) */
    uint32_t tail_cache;   /* consumer's last view of tail */
    char pad_consumer[RB_SPSC_LINE_BYTES - 2 * sizeof(uint32_t)];
    /* Written by the producer. */
    _Atomic uint32_t tail; /* next slot to push (free-running counter) */
    uint32_t head_cache;   /* producer's last view of head */
    char pad_producer[RB_SPSC_LINE_BYTES - 2 * sizeof(uint32_t)];
    /* Read-only after init. */
    void **slots; /* owned: capacity pointers */
    uint32_t mask;
} rb_spsc;

/* Allocates a ring of `slots` entries. slots must be a power of two in
 * [2, RB_SPSC_SLOTS_MAX], else RB_EINVAL; RB_ENOMEM when allocation fails.
 * Returns 0 with *q ready and empty. */
int rb_spsc_init(rb_spsc *q, uint32_t slots, rb_err *err);

/* Frees the slot array. Items still queued are the caller's to drain first
 * (the queue does not know what they are). */
void rb_spsc_deinit(rb_spsc *q);

/* Producer: queues item (never NULL; NULL is the empty answer of pop).
 * Returns false, leaving the ring unchanged, when it is full. */
bool rb_spsc_push(rb_spsc *q, void *item);

/* Consumer: the oldest item, or NULL when the ring is empty. */
void *rb_spsc_pop(rb_spsc *q);

/* Consumer: moves up to max oldest items into out[0..), in order, and
 * returns how many (0 when empty). */
uint32_t rb_spsc_pop_many(rb_spsc *q, void **out, uint32_t max);

/* Items queued at some instant during the call, in [0, capacity]. Exact
 * when the other side is idle. */
uint32_t rb_spsc_count(const rb_spsc *q);

/* The number of slots chosen at init. */
uint32_t rb_spsc_capacity(const rb_spsc *q);

#endif
