/* The memory storage backend: the embedded default. Messages live in this
 * process only (lost on restart), with retention bounded per topic by
 * [storage.memory] retention_messages and retention_bytes. One rb_storage is
 * shared by every shard; it owns the topic table, the topics and their
 * payload bytes. Each request's work is done synchronously inside the call;
 * only its done callback is deferred to the calling shard's loop.
 *
 * Locking. The topic table is split into RB_MEMORY_STRIPES stripes by the
 * topic's hash, each an open-addressing table under its own rwlock, taken
 * only to find or create a topic (topics are never removed before close, so
 * a topic pointer stays valid after the stripe lock is dropped). Each topic
 * has its own writer-preferring rwlock: an append holds it for writing
 * while it links entries and evicts; a read holds it for reading while it
 * copies payloads into the caller's arena; heads hold it to read the head.
 * No lock is held across I/O or a callback, and no two locks are held at
 * once except stripe -> nothing (topic locks are taken after the stripe
 * lock is dropped), so there is no lock order to get wrong.
 *
 * Memory layout. Each append copies its payloads, outside any lock, into one
 * block (a malloc per batch, not per message); the topic keeps a ring of
 * entries (payload pointer, length, block) for seqs oldest..head. A block
 * counts its entries still retained and is freed, outside the lock, when
 * the last one is evicted; so a topic holds at most retention_bytes (or one
 * larger message) plus the evicted part of its oldest batch, and
 * 24 bytes x next_pow2(retention_messages) of entries. The entry ring grows
 * by doubling, under the topic's lock, up to that bound. */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "common/assert.h"
#include "common/limits.h"
#include "storage/storage.h"

/* Topics one process stores: bounds the table (and so the memory that
 * topics alone can take, about 400 bytes each plus their messages); an
 * append that would create one more fails with RB_ELIMIT. */
#define RB_MEMORY_TOPICS_MAX (1u << 20)

/* Stripes of the topic table: enough that shards creating and looking up
 * topics rarely meet on one lock, few enough to sit in a few pages. */
#define RB_MEMORY_STRIPES  64u
#define MEMORY_STRIPE_BITS 6u
static_assert((1u << MEMORY_STRIPE_BITS) == RB_MEMORY_STRIPES, "stripe bits match");

/* Smallest stripe table and smallest entry ring (both powers of two). */
#define MEMORY_STRIPE_SLOTS_MIN 16u
#define MEMORY_ENTRIES_MIN      16u

/* Requests per shard whose done has not run yet. Work is synchronous, so
 * this only bounds what one loop turn must drain; it is far above what a
 * shard's callers keep in flight (topic owners, bounded catch-up queries),
 * and reaching it means a caller forgot its own bound: RB_ELIMIT. */
#define RB_MEMORY_INFLIGHT_MAX 65536u

/* The payloads of one append, back to back. */
typedef struct mem_block {
    struct mem_block *next_free; /* links blocks to free after unlocking */
    uint32_t live_count;         /* entries of this block not yet evicted */
    uint8_t data[];
} mem_block;

typedef struct mem_entry {
    const uint8_t *payload; /* inside block->data */
    mem_block *block;
    uint32_t len;
} mem_entry;

typedef struct mem_topic {
    pthread_rwlock_t lock;
    /* Guarded by lock. Retained seqs are head - count + 1 .. head. */
    uint64_t head;
    uint64_t count;
    uint64_t bytes;     /* payload bytes of the retained entries */
    mem_entry *entries; /* ring of entries_cap (a power of two) */
    uint64_t entries_cap;
    uint64_t start; /* ring index of the oldest entry */
    /* Immutable after creation. */
    uint64_t hash;
    uint8_t name_len;
    uint8_t name[];
} mem_topic;

typedef struct mem_stripe {
    _Alignas(64) pthread_rwlock_t lock; /* own cache line(s): stripes are hit by all shards */
    mem_topic **slots;                  /* open addressing, slot_count a power of two */
    uint32_t slot_count;
    uint32_t topic_count;
} mem_stripe;

struct rb_storage {
    mem_stripe stripes[RB_MEMORY_STRIPES];
    atomic_uint topic_count;
    atomic_uint shard_count;
    uint64_t retention_messages;
    uint64_t retention_bytes;
    uint64_t entries_cap_max; /* next power of two >= retention_messages */
    uint32_t max_frame_bytes;
    uint64_t epoch; /* random and nonzero, chosen at open; immutable */
};

struct rb_storage_shard {
    rb_storage *st;
    rb_loop *loop;
    uint32_t shard_id;
    rb_storage_tells tells; /* done requests, told in call order */
};

/* ---- topics ---- */

static uint64_t topic_hash(rb_bytes name)
{
    /* FNV-1a: short keys, no adversarial-collision concern beyond one
     * stripe's probe length, which the load factor bounds. */
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < name.len; i++) {
        h ^= name.ptr[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static mem_stripe *stripe_of(rb_storage *st, uint64_t hash)
{
    return &st->stripes[hash >> (64u - MEMORY_STRIPE_BITS)];
}

static int rwlock_init(pthread_rwlock_t *lock)
{
    /* Writer-preferring, so that a stream of readers cannot starve the
     * topic owner's appends. */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = pthread_rwlock_init(lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    return rc;
}

static void lock_read(pthread_rwlock_t *lock)
{
    int rc = pthread_rwlock_rdlock(lock);
    RB_ASSERT(rc == 0);
}

static void lock_write(pthread_rwlock_t *lock)
{
    int rc = pthread_rwlock_wrlock(lock);
    RB_ASSERT(rc == 0);
}

static void unlock(pthread_rwlock_t *lock)
{
    int rc = pthread_rwlock_unlock(lock);
    RB_ASSERT(rc == 0);
}

/* The caller holds s->lock. */
static mem_topic *stripe_find(const mem_stripe *s, uint64_t hash, rb_bytes name)
{
    uint32_t mask = s->slot_count - 1;
    uint32_t i = (uint32_t)hash & mask;
    for (uint32_t probe = 0; probe < s->slot_count; probe++) {
        mem_topic *t = s->slots[i];
        if (t == NULL) {
            return NULL;
        }
        if (t->hash == hash && t->name_len == name.len &&
            memcmp(t->name, name.ptr, name.len) == 0) {
            return t;
        }
        i = (i + 1) & mask;
    }
    return NULL;
}

static void slots_put(mem_topic **slots, uint32_t slot_count, mem_topic *t)
{
    uint32_t mask = slot_count - 1;
    uint32_t i = (uint32_t)t->hash & mask;
    while (slots[i] != NULL) {
        i = (i + 1) & mask;
    }
    slots[i] = t;
}

/* The caller holds s->lock for writing. Keeps the load at most 1/2, so
 * probes stay short and stripe_find always meets an empty slot. */
static int stripe_insert(mem_stripe *s, mem_topic *t)
{
    if ((s->topic_count + 1) * 2 > s->slot_count) {
        uint32_t grown = s->slot_count * 2;
        mem_topic **slots = calloc(grown, sizeof *slots);
        if (slots == NULL) {
            return RB_ENOMEM;
        }
        for (uint32_t i = 0; i < s->slot_count; i++) {
            if (s->slots[i] != NULL) {
                slots_put(slots, grown, s->slots[i]);
            }
        }
        free(s->slots);
        s->slots = slots;
        s->slot_count = grown;
    }
    slots_put(s->slots, s->slot_count, t);
    s->topic_count++;
    return 0;
}

static mem_topic *topic_find(rb_storage *st, rb_bytes name)
{
    uint64_t hash = topic_hash(name);
    mem_stripe *s = stripe_of(st, hash);
    lock_read(&s->lock);
    mem_topic *t = stripe_find(s, hash, name);
    unlock(&s->lock);
    return t;
}

static mem_topic *topic_new(rb_bytes name, uint64_t hash)
{
    mem_topic *t = calloc(1, sizeof *t + name.len);
    if (t == NULL) {
        return NULL;
    }
    if (rwlock_init(&t->lock) != 0) {
        free(t);
        return NULL;
    }
    t->hash = hash;
    t->name_len = (uint8_t)name.len;
    memcpy(t->name, name.ptr, name.len);
    return t;
}

static void topic_free(mem_topic *t)
{
    RB_ASSERT(t->count == 0);
    pthread_rwlock_destroy(&t->lock);
    free(t->entries);
    free(t);
}

/* Finds the topic or creates an empty one. The new topic is allocated
 * before the stripe lock is taken; a racing creator's copy is dropped. */
static int topic_get(rb_storage *st, rb_bytes name, mem_topic **out, rb_err *err)
{
    *out = topic_find(st, name);
    if (*out != NULL) {
        return 0;
    }
    uint64_t hash = topic_hash(name);
    mem_topic *fresh = topic_new(name, hash);
    if (fresh == NULL) {
        return rb_err_set(err, RB_ESTORAGE, 0, "memory topic %.*s: out of memory", (int)name.len,
                          (const char *)name.ptr);
    }
    mem_stripe *s = stripe_of(st, hash);
    int rc = 0;
    lock_write(&s->lock);
    *out = stripe_find(s, hash, name);
    if (*out == NULL) {
        if (atomic_fetch_add(&st->topic_count, 1) >= RB_MEMORY_TOPICS_MAX) {
            rc = rb_err_set(err, RB_ELIMIT, 0, "memory topic %.*s: %u topics stored already",
                            (int)name.len, (const char *)name.ptr, RB_MEMORY_TOPICS_MAX);
        } else if (stripe_insert(s, fresh) != 0) {
            rc = rb_err_set(err, RB_ESTORAGE, 0, "memory topic %.*s: out of memory", (int)name.len,
                            (const char *)name.ptr);
        }
        if (rc != 0) {
            atomic_fetch_sub(&st->topic_count, 1);
        } else {
            *out = fresh;
            fresh = NULL;
        }
    }
    unlock(&s->lock);
    if (fresh != NULL) {
        topic_free(fresh);
    }
    return rc;
}

/* ---- entries ---- */

/* The caller holds t->lock for writing. Drops the oldest entry; its block
 * joins *freed when this was its last retained entry. */
static void evict_oldest(mem_topic *t, mem_block **freed)
{
    RB_ASSERT(t->count > 0);
    mem_entry *e = &t->entries[t->start];
    RB_ASSERT(t->bytes >= e->len);
    RB_ASSERT(e->block->live_count > 0);
    t->bytes -= e->len;
    t->count--;
    t->start = (t->start + 1) & (t->entries_cap - 1);
    e->block->live_count--;
    if (e->block->live_count == 0) {
        e->block->next_free = *freed;
        *freed = e->block;
    }
}

static void blocks_free(mem_block *b)
{
    while (b != NULL) {
        mem_block *next = b->next_free;
        free(b);
        b = next;
    }
}

static uint64_t pow2_at_least(uint64_t n)
{
    uint64_t p = 1;
    while (p < n) {
        p <<= 1;
    }
    return p;
}

/* The caller holds t->lock for writing. Makes room for `adding` more
 * entries without changing what is stored; eviction keeps count within
 * retention_messages, so the ring never needs more than that. */
static int entries_reserve(rb_storage *st, mem_topic *t, uint64_t adding)
{
    uint64_t need = t->count + adding;
    if (need > st->retention_messages) {
        need = st->retention_messages;
    }
    if (need <= t->entries_cap) {
        return 0;
    }
    uint64_t cap = pow2_at_least(need < MEMORY_ENTRIES_MIN ? MEMORY_ENTRIES_MIN : need);
    RB_ASSERT(cap <= st->entries_cap_max);
    mem_entry *ring = malloc(cap * sizeof *ring);
    if (ring == NULL) {
        return RB_ENOMEM;
    }
    for (uint64_t i = 0; i < t->count; i++) {
        ring[i] = t->entries[(t->start + i) & (t->entries_cap - 1)];
    }
    free(t->entries);
    t->entries = ring;
    t->entries_cap = cap;
    t->start = 0;
    return 0;
}

/* ---- completions ---- */

static int shard_admit(rb_storage_shard *sh, rb_err *err, const char *what)
{
    if (sh->tells.admitted >= RB_MEMORY_INFLIGHT_MAX) {
        return rb_err_set(err, RB_ELIMIT, 0, "memory %s on shard %u: %u requests in flight", what,
                          sh->shard_id, RB_MEMORY_INFLIGHT_MAX);
    }
    sh->tells.admitted++;
    return 0;
}

/* ---- append ---- */

static bool topic_len_ok(rb_bytes topic)
{
    return topic.ptr != NULL && topic.len >= 1 && topic.len <= RB_TOPIC_BYTES_MAX;
}

static int append_validate(const rb_storage *st, rb_append_req *req, size_t *total)
{
    if (!topic_len_ok(req->topic)) {
        return rb_err_set(&req->err, RB_EINVAL, 0, "memory append: topic of %zu bytes",
                          req->topic.len);
    }
    if (req->count == 0 || req->payloads == NULL) {
        return rb_err_set(&req->err, RB_EINVAL, 0, "memory append %.*s: no payloads",
                          (int)req->topic.len, (const char *)req->topic.ptr);
    }
    *total = 0;
    for (uint32_t i = 0; i < req->count; i++) {
        rb_bytes p = req->payloads[i];
        if ((p.ptr == NULL && p.len > 0) || p.len > st->max_frame_bytes ||
            rb_frame_messages_item_size(req->topic.len, p.len) > st->max_frame_bytes) {
            return rb_err_set(&req->err, RB_EINVAL, 0,
                              "memory append %.*s: payload %u of %zu bytes does not fit "
                              "max_frame_bytes %u",
                              (int)req->topic.len, (const char *)req->topic.ptr, i, p.len,
                              st->max_frame_bytes);
        }
        *total += p.len;
    }
    return 0;
}

/* Links the block's payloads as the topic's next seqs, evicting the oldest
 * first whenever one more would exceed a retention bound (a message larger
 * than retention_bytes is kept alone). */
static int append_commit(rb_storage *st, mem_topic *t, mem_block *block, rb_append_req *req)
{
    mem_block *freed = NULL;
    lock_write(&t->lock);
    if (entries_reserve(st, t, req->count) != 0) {
        unlock(&t->lock);
        return RB_ENOMEM;
    }
    req->first_seq = t->head + 1;
    size_t offset = 0;
    for (uint32_t i = 0; i < req->count; i++) {
        uint32_t len = (uint32_t)req->payloads[i].len;
        while (t->count > 0 &&
               (t->count >= st->retention_messages || t->bytes + len > st->retention_bytes)) {
            evict_oldest(t, &freed);
        }
        RB_ASSERT(t->count < t->entries_cap);
        t->entries[(t->start + t->count) & (t->entries_cap - 1)] =
            (mem_entry){.payload = block->data + offset, .block = block, .len = len};
        offset += len;
        t->count++;
        t->bytes += len;
        t->head++;
    }
    req->last_seq = t->head;
    /* The block's own last entry was just added, so it cannot be free. */
    RB_ASSERT(block->live_count > 0);
    unlock(&t->lock);
    blocks_free(freed);
    return 0;
}

static void append_run(rb_storage *st, rb_append_req *req, size_t total)
{
    mem_topic *t = NULL;
    req->status = topic_get(st, req->topic, &t, &req->err);
    if (req->status != 0) {
        return;
    }
    mem_block *block = malloc(sizeof *block + total);
    if (block == NULL) {
        req->status =
            rb_err_set(&req->err, RB_ESTORAGE, 0, "memory append %.*s: out of memory for %zu bytes",
                       (int)req->topic.len, (const char *)req->topic.ptr, total);
        return;
    }
    block->next_free = NULL;
    block->live_count = req->count;
    size_t offset = 0;
    for (uint32_t i = 0; i < req->count; i++) {
        if (req->payloads[i].len > 0) {
            memcpy(block->data + offset, req->payloads[i].ptr, req->payloads[i].len);
        }
        offset += req->payloads[i].len;
    }
    if (append_commit(st, t, block, req) != 0) {
        free(block);
        req->status = rb_err_set(&req->err, RB_ESTORAGE, 0,
                                 "memory append %.*s: out of memory for %u entries",
                                 (int)req->topic.len, (const char *)req->topic.ptr, req->count);
    }
}

static int memory_append(rb_storage_shard *sh, rb_append_req *req)
{
    RB_ASSERT(req->done != NULL);
    rb_err_clear(&req->err);
    req->status = 0;
    req->first_seq = 0;
    req->last_seq = 0;
    size_t total = 0;
    int rc = append_validate(sh->st, req, &total);
    if (rc == 0) {
        rc = shard_admit(sh, &req->err, "append");
    }
    if (rc != 0) {
        req->status = rc;
        return rc;
    }
    append_run(sh->st, req, total);
    rb_storage__tell_later(&sh->tells, &req->task, rb_storage__append_told);
    return 0;
}

/* ---- read ---- */

static int read_validate(rb_read_req *req)
{
    if (req->range_count > 0 && req->ranges == NULL) {
        return rb_err_set(&req->err, RB_EINVAL, 0, "memory read: %u ranges without an array",
                          req->range_count);
    }
    if (req->arena == NULL && req->arena_cap > 0) {
        return rb_err_set(&req->err, RB_EINVAL, 0, "memory read: arena of %zu bytes is NULL",
                          req->arena_cap);
    }
    for (uint32_t i = 0; i < req->range_count; i++) {
        const rb_read_range *r = &req->ranges[i];
        if (!topic_len_ok(r->topic)) {
            return rb_err_set(&req->err, RB_EINVAL, 0, "memory read: range %u: topic of %zu bytes",
                              i, r->topic.len);
        }
        if (r->rows_max == 0) {
            return rb_err_set(&req->err, RB_EINVAL, 0, "memory read: range %u (%.*s): rows_max 0",
                              i, (int)r->topic.len, (const char *)r->topic.ptr);
        }
    }
    return 0;
}

/* The caller holds t->lock for reading. Copies rows seq..end (at most
 * rows_max) into the arena; sets *stopped when a row does not fit. */
static void range_copy(const mem_topic *t, rb_read_req *req, rb_read_range *r, uint64_t seq,
                       uint64_t end, bool *stopped)
{
    uint64_t oldest = t->head - t->count + 1;
    RB_ASSERT(seq >= oldest);
    while (seq <= end && r->row_count < r->rows_max) {
        const mem_entry *e = &t->entries[(t->start + (seq - oldest)) & (t->entries_cap - 1)];
        size_t size = rb_frame_messages_item_size(r->topic.len, e->len);
        if (size > req->arena_cap - req->arena_used) {
            *stopped = true;
            return;
        }
        rb_bytes payload = {e->len > 0 ? e->payload : NULL, e->len};
        size_t n = rb_frame_encode_messages_item(
            req->arena + req->arena_used, req->arena_cap - req->arena_used, r->topic, seq, payload);
        RB_ASSERT(n == size);
        req->arena_used += n;
        r->row_count++;
        r->last_seq = seq;
        seq++;
    }
}

static void range_read(rb_storage *st, rb_read_req *req, rb_read_range *r, bool *stopped)
{
    r->status = 0;
    r->row_count = 0;
    r->rows_offset = req->arena_used;
    r->rows_bytes = 0;
    r->last_seq = r->after;
    r->complete = false;
    r->oldest_seq = 0;
    mem_topic *t = topic_find(st, r->topic);
    if (t == NULL) {
        r->complete = true; /* an unknown topic is empty */
        return;
    }
    lock_read(&t->lock);
    uint64_t oldest = t->count > 0 ? t->head - t->count + 1 : 0;
    uint64_t end = r->ceiling < t->head ? r->ceiling : t->head;
    r->oldest_seq = oldest;
    if (r->after > 0 && oldest > 0 && r->after < oldest - 1) {
        /* The next seq the caller needs is gone: say so, never skip. */
        r->status = RB_ERANGE;
    } else if (r->after >= end) {
        r->complete = true;
    } else if (!*stopped) {
        uint64_t seq = r->after + 1 > oldest ? r->after + 1 : oldest;
        range_copy(t, req, r, seq, end, stopped);
        r->complete = r->last_seq >= end;
    }
    unlock(&t->lock);
    r->rows_bytes = req->arena_used - r->rows_offset;
}

static int memory_read(rb_storage_shard *sh, rb_read_req *req)
{
    RB_ASSERT(req->done != NULL);
    rb_err_clear(&req->err);
    req->status = 0;
    req->arena_used = 0;
    int rc = read_validate(req);
    if (rc == 0) {
        rc = shard_admit(sh, &req->err, "read");
    }
    if (rc != 0) {
        req->status = rc;
        return rc;
    }
    bool stopped = false;
    for (uint32_t i = 0; i < req->range_count; i++) {
        range_read(sh->st, req, &req->ranges[i], &stopped);
    }
    RB_ASSERT(req->arena_used <= req->arena_cap);
    rb_storage__tell_later(&sh->tells, &req->task, rb_storage__read_told);
    return 0;
}

/* ---- heads ---- */

static int memory_heads(rb_storage_shard *sh, rb_heads_req *req)
{
    RB_ASSERT(req->done != NULL);
    rb_err_clear(&req->err);
    req->status = 0;
    if (req->count > 0 && (req->topics == NULL || req->heads == NULL)) {
        req->status = rb_err_set(&req->err, RB_EINVAL, 0, "memory heads: %u topics without arrays",
                                 req->count);
        return req->status;
    }
    for (uint32_t i = 0; i < req->count; i++) {
        if (!topic_len_ok(req->topics[i])) {
            req->status = rb_err_set(&req->err, RB_EINVAL, 0, "memory heads: topic %u of %zu bytes",
                                     i, req->topics[i].len);
            return req->status;
        }
    }
    int rc = shard_admit(sh, &req->err, "heads");
    if (rc != 0) {
        req->status = rc;
        return rc;
    }
    for (uint32_t i = 0; i < req->count; i++) {
        mem_topic *t = topic_find(sh->st, req->topics[i]);
        req->heads[i] = 0;
        if (t != NULL) {
            lock_read(&t->lock);
            req->heads[i] = t->head;
            unlock(&t->lock);
        }
    }
    rb_storage__tell_later(&sh->tells, &req->task, rb_storage__heads_told);
    return 0;
}

/* ---- open and close ---- */

static int config_check(const rb_config *cfg, rb_err *err)
{
    if (cfg->memory_retention_messages < 1 ||
        cfg->memory_retention_messages > RB_MEMORY_RETENTION_MESSAGES_MAX) {
        return rb_err_set(err, RB_ECONFIG, 0,
                          "memory storage: retention_messages %llu is out of range [1, %llu]",
                          (unsigned long long)cfg->memory_retention_messages,
                          (unsigned long long)RB_MEMORY_RETENTION_MESSAGES_MAX);
    }
    if (cfg->memory_retention_bytes < 1 ||
        cfg->memory_retention_bytes > RB_MEMORY_RETENTION_BYTES_MAX) {
        return rb_err_set(err, RB_ECONFIG, 0,
                          "memory storage: retention_bytes %llu is out of range [1, %llu]",
                          (unsigned long long)cfg->memory_retention_bytes,
                          (unsigned long long)RB_MEMORY_RETENTION_BYTES_MAX);
    }
    if (cfg->max_frame_bytes < RB_FRAME_BYTES_MIN || cfg->max_frame_bytes > RB_FRAME_BYTES_MAX) {
        return rb_err_set(err, RB_ECONFIG, 0,
                          "memory storage: max_frame_bytes %u is out of range [%u, %u]",
                          cfg->max_frame_bytes, RB_FRAME_BYTES_MIN, RB_FRAME_BYTES_MAX);
    }
    return 0;
}

static void stripes_deinit(rb_storage *st, uint32_t stripe_count)
{
    for (uint32_t i = 0; i < stripe_count; i++) {
        mem_stripe *s = &st->stripes[i];
        for (uint32_t j = 0; j < s->slot_count; j++) {
            mem_topic *t = s->slots[j];
            if (t == NULL) {
                continue;
            }
            mem_block *freed = NULL;
            while (t->count > 0) {
                evict_oldest(t, &freed);
            }
            blocks_free(freed);
            topic_free(t);
        }
        free(s->slots);
        pthread_rwlock_destroy(&s->lock);
    }
}

/* A fresh nonzero epoch: every start of the memory store begins a new seq
 * space, and clients must be able to tell (0 means "no epoch known"). */
static int epoch_new(uint64_t *epoch, rb_err *err)
{
    *epoch = 0;
    while (*epoch == 0) {
        if (getrandom(epoch, sizeof *epoch, 0) != (ssize_t)sizeof *epoch) {
            return rb_err_set(err, RB_ESYS, errno, "memory storage: epoch: getrandom");
        }
    }
    return 0;
}

static int memory_open(const rb_config *cfg, rb_storage **out, rb_err *err)
{
    uint64_t epoch = 0;
    int rc = config_check(cfg, err);
    rc = rc ? rc : epoch_new(&epoch, err);
    if (rc != 0) {
        return rc;
    }
    rb_storage *st = aligned_alloc(_Alignof(rb_storage), sizeof *st);
    if (st == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "memory storage: allocation");
    }
    memset(st, 0, sizeof *st);
    uint32_t ready = 0;
    for (; ready < RB_MEMORY_STRIPES; ready++) {
        mem_stripe *s = &st->stripes[ready];
        s->slots = calloc(MEMORY_STRIPE_SLOTS_MIN, sizeof *s->slots);
        if (s->slots == NULL || rwlock_init(&s->lock) != 0) {
            free(s->slots);
            rc = rb_err_set(err, RB_ENOMEM, 0, "memory storage: topic table");
            goto undo_stripes;
        }
        s->slot_count = MEMORY_STRIPE_SLOTS_MIN;
    }
    atomic_init(&st->topic_count, 0);
    atomic_init(&st->shard_count, 0);
    st->retention_messages = cfg->memory_retention_messages;
    st->retention_bytes = cfg->memory_retention_bytes;
    st->entries_cap_max = pow2_at_least(
        st->retention_messages < MEMORY_ENTRIES_MIN ? MEMORY_ENTRIES_MIN : st->retention_messages);
    st->max_frame_bytes = cfg->max_frame_bytes;
    st->epoch = epoch;
    *out = st;
    return 0;
undo_stripes:
    stripes_deinit(st, ready);
    free(st);
    return rc;
}

static void memory_close(rb_storage *st)
{
    if (st == NULL) {
        return;
    }
    RB_ASSERT(atomic_load(&st->shard_count) == 0);
    stripes_deinit(st, RB_MEMORY_STRIPES);
    free(st);
}

static int memory_shard_open(rb_storage *st, rb_loop *loop, uint32_t shard_id,
                             rb_storage_shard **out, rb_err *err)
{
    RB_ASSERT(st != NULL);
    RB_ASSERT(loop != NULL);
    rb_storage_shard *sh = calloc(1, sizeof *sh);
    if (sh == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "memory storage: shard %u: allocation", shard_id);
    }
    sh->st = st;
    sh->loop = loop;
    sh->shard_id = shard_id;
    rb_storage__tells_init(&sh->tells, loop);
    atomic_fetch_add(&st->shard_count, 1);
    *out = sh;
    return 0;
}

static void memory_shard_close(rb_storage_shard *sh)
{
    if (sh == NULL) {
        return;
    }
    rb_storage__tells_deinit(&sh->tells);
    atomic_fetch_sub(&sh->st->shard_count, 1);
    free(sh);
}

static uint64_t memory_epoch(rb_storage *st)
{
    RB_ASSERT(st->epoch != 0);
    return st->epoch;
}

const rb_storage_ops rb_storage_memory_ops = {
    .name = "memory",
    .open = memory_open,
    .close = memory_close,
    .shard_open = memory_shard_open,
    .shard_close = memory_shard_close,
    .append = memory_append,
    .read = memory_read,
    .heads = memory_heads,
    .epoch = memory_epoch,
};
