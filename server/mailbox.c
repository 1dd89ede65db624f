/* The shard mailbox; see mailbox.h. Each destination has a lane: the
 * envelope being filled for it and the backlog of envelopes that found its
 * queue full, both sent before anything newer so order holds. */
#include "server/mailbox.h"

#include <stddef.h>
#include <stdlib.h>

#include "common/assert.h"
#include "common/log.h"
#include "common/poison.h"

/* A free block's home stays readable under ASan (common/poison.h), so a
 * reference to a freed block asserts in rb_block_ref/unref. */
_Static_assert(offsetof(rb_block, home) + sizeof(rb_freelist *) <= RB_POISON_SKIP_BYTES,
               "rb_block.home is in the words a free item keeps readable");

struct rb_mail_lane {
    rb_xmsg *outbox; /* the envelope being filled, or NULL */
    rb_xmsg *backlog_head;
    rb_xmsg *backlog_tail;
    uint32_t backlog_count;
    bool wake; /* something was pushed since the last wake */
};

/* Envelopes popped per call of the queue, and calls per producer per drain:
 * 1024 envelopes per producer per turn before timers and sockets get a go. */
#define DRAIN_BATCH  64
#define DRAIN_ROUNDS 16

/* Block classes: data capacities growing 4x from RB_BLOCK_CLASS_MIN_BYTES,
 * the last one exactly block_bytes; all draw on one byte budget. */
static int blocks_init(rb_mailbox *mb, const rb_mailbox_options *opt, rb_err *err)
{
    mb->block_budget.limit_bytes = opt->block_budget;
    mb->block_budget.used_bytes = 0;
    uint32_t n = 0;
    uint64_t cap = RB_BLOCK_CLASS_MIN_BYTES;
    while (cap < opt->block_bytes && n + 1 < RB_BLOCK_CLASSES_MAX) {
        mb->block_caps[n++] = (uint32_t)cap;
        cap *= 4;
    }
    mb->block_caps[n++] = opt->block_bytes;
    for (uint32_t i = 0; i < n; i++) {
        size_t item = sizeof(rb_block) + mb->block_caps[i];
        uint64_t max = opt->block_budget / item + 1;
        int rc = rb_freelist_init(&mb->blocks[i], "blocks", item,
                                  max > UINT32_MAX ? UINT32_MAX : (uint32_t)max, opt->home,
                                  &mb->block_budget, err);
        if (rc != 0) {
            for (uint32_t k = 0; k < i; k++) {
                rb_freelist_deinit(&mb->blocks[k]);
            }
            return rc;
        }
    }
    mb->block_class_count = n;
    return 0;
}

int rb_mailbox_init(rb_mailbox *mb, const rb_mailbox_options *opt, rb_err *err)
{
    RB_ASSERT(opt->count >= 1 && opt->id < opt->count);
    RB_ASSERT(opt->wake != NULL);
    memset(mb, 0, sizeof *mb);
    mb->id = opt->id;
    mb->count = opt->count;
    mb->all = opt->all;
    mb->wake = opt->wake;
    mb->wake_ctx = opt->wake_ctx;
    mb->block_bytes = opt->block_bytes;
    mb->inbox = calloc(opt->count, sizeof *mb->inbox);
    mb->lanes = calloc(opt->count, sizeof *mb->lanes);
    if (mb->inbox == NULL || mb->lanes == NULL) {
        free(mb->inbox);
        free(mb->lanes);
        return rb_err_set(err, RB_ENOMEM, 0, "shard %u: mailbox of %u lanes", opt->id, opt->count);
    }
    uint32_t made = 0;
    int rc = 0;
    while (rc == 0 && made < opt->count) {
        rc = rb_spsc_init(&mb->inbox[made], opt->queue_slots, err);
        made += rc == 0 ? 1 : 0;
    }
    if (rc != 0) {
        goto undo_queues;
    }
    rc = rb_freelist_init(&mb->xmsg_pool, "envelopes", sizeof(rb_xmsg) + RB_XMSG_DATA_BYTES,
                          opt->xmsg_max, opt->home, NULL, err);
    if (rc != 0) {
        goto undo_queues;
    }
    rc = rb_freelist_init(&mb->bare_pool, "block envelopes", sizeof(rb_xmsg), opt->bare_max,
                          opt->home, NULL, err);
    if (rc != 0) {
        goto undo_xmsg_pool;
    }
    rc = blocks_init(mb, opt, err);
    if (rc != 0) {
        goto undo_bare_pool;
    }
    return 0;
undo_bare_pool:
    rb_freelist_deinit(&mb->bare_pool);
undo_xmsg_pool:
    rb_freelist_deinit(&mb->xmsg_pool);
undo_queues:
    for (uint32_t i = 0; i < made; i++) {
        rb_spsc_deinit(&mb->inbox[i]);
    }
    free(mb->inbox);
    free(mb->lanes);
    mb->inbox = NULL;
    mb->lanes = NULL;
    return rc;
}

void rb_mailbox_discard(rb_mailbox *mb)
{
    if (mb->lanes == NULL) {
        return;
    }
    for (uint32_t i = 0; i < mb->count; i++) {
        rb_mail_lane *l = &mb->lanes[i];
        if (l->outbox != NULL) {
            rb_xmsg_put(l->outbox);
            l->outbox = NULL;
        }
        while (l->backlog_head != NULL) {
            rb_xmsg *m = l->backlog_head;
            l->backlog_head = m->next;
            rb_xmsg_put(m);
        }
        l->backlog_tail = NULL;
        l->backlog_count = 0;
        void *m;
        while ((m = rb_spsc_pop(&mb->inbox[i])) != NULL) {
            rb_xmsg_put(m);
        }
    }
    rb_freelist_flush_returns();
}

void rb_mailbox_deinit(rb_mailbox *mb)
{
    if (mb->lanes == NULL) {
        return;
    }
    for (uint32_t i = 0; i < mb->block_class_count; i++) {
        rb_freelist_deinit(&mb->blocks[i]);
    }
    rb_freelist_deinit(&mb->bare_pool);
    rb_freelist_deinit(&mb->xmsg_pool);
    for (uint32_t i = 0; i < mb->count; i++) {
        rb_spsc_deinit(&mb->inbox[i]);
    }
    free(mb->inbox);
    free(mb->lanes);
    mb->inbox = NULL;
    mb->lanes = NULL;
}

void rb_mailbox_register(rb_mailbox *mb, uint16_t kind, rb_mail_fn *fn, void *ctx)
{
    RB_ASSERT(kind > 0 && kind < RB_MAIL_KINDS_MAX);
    RB_ASSERT(mb->handlers[kind].fn == NULL);
    mb->handlers[kind].fn = fn;
    mb->handlers[kind].ctx = ctx;
}

/* ---- envelopes and blocks ---- */

rb_xmsg *rb_mailbox_xmsg(rb_mailbox *mb)
{
    rb_xmsg *m = rb_freelist_get(&mb->xmsg_pool);
    if (m == NULL) {
        return NULL;
    }
    memset(m, 0, sizeof *m);
    m->home = &mb->xmsg_pool;
    m->from_shard = (uint16_t)mb->id;
    m->cap = RB_XMSG_DATA_BYTES;
    m->data = (uint8_t *)(m + 1);
    return m;
}

rb_xmsg *rb_mailbox_xmsg_bare(rb_mailbox *mb)
{
    rb_xmsg *m = rb_freelist_get(&mb->bare_pool);
    if (m == NULL) {
        return NULL;
    }
    memset(m, 0, sizeof *m);
    m->home = &mb->bare_pool;
    m->from_shard = (uint16_t)mb->id;
    return m;
}

void rb_xmsg_put(rb_xmsg *m)
{
    if (m->ptr != NULL) {
        rb_block_unref(m->ptr);
    }
    rb_freelist_put(m->home, m);
}

rb_block *rb_mailbox_block(rb_mailbox *mb, size_t bytes)
{
    uint32_t c = 0;
    while (c < mb->block_class_count && mb->block_caps[c] < bytes) {
        c++;
    }
    if (c == mb->block_class_count) {
        return NULL;
    }
    rb_block *b = rb_freelist_get(&mb->blocks[c]);
    /* The budget is spent: a free block of a larger class will do. */
    for (uint32_t k = c + 1; b == NULL && k < mb->block_class_count; k++) {
        if (rb_freelist_has_free(&mb->blocks[k])) {
            b = rb_freelist_get(&mb->blocks[k]);
            c = k;
        }
    }
    if (b == NULL) {
        return NULL;
    }
    memset(b, 0, sizeof *b);
    atomic_init(&b->refs, 1);
    b->home = &mb->blocks[c];
    b->cap = mb->block_caps[c];
    b->data = (uint8_t *)(b + 1);
    return b;
}

void rb_block_ref(rb_block *b)
{
    /* A free block has no home (below): a reference to it is a bug. */
    RB_ASSERT(b->home != NULL);
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
}

void rb_block_unref(rb_block *b)
{
    RB_ASSERT(b->home != NULL);
    if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) {
        rb_freelist *home = b->home;
        b->home = NULL;
        rb_freelist_put(home, b);
    }
}

/* ---- sending ---- */

static void lane_backlog(rb_mail_lane *l, rb_xmsg *m)
{
    m->next = NULL;
    if (l->backlog_tail == NULL) {
        l->backlog_head = m;
    } else {
        l->backlog_tail->next = m;
    }
    l->backlog_tail = m;
    l->backlog_count++;
}

/* Pushes the lane's backlog into the queue to `to` while there are slots. */
static void lane_push(rb_mailbox *mb, uint32_t to)
{
    rb_mail_lane *l = &mb->lanes[to];
    rb_spsc *q = &mb->all[to]->inbox[mb->id];
    while (l->backlog_head != NULL) {
        rb_xmsg *m = l->backlog_head;
        /* Read before the push: once queued, m is the receiver's, and its
         * link word is the pool's again as soon as it lets m go. */
        rb_xmsg *next = m->next;
        if (!rb_spsc_push(q, m)) {
            return;
        }
        l->backlog_head = next;
        if (l->backlog_head == NULL) {
            l->backlog_tail = NULL;
        }
        l->backlog_count--;
        l->wake = true;
        if (to == mb->id) {
            mb->self_pending = true;
        }
    }
}

static void lane_enqueue(rb_mailbox *mb, uint32_t to, rb_xmsg *m)
{
    rb_mail_lane *l = &mb->lanes[to];
    lane_backlog(l, m);
    lane_push(mb, to);
}

static void lane_close_outbox(rb_mailbox *mb, uint32_t to)
{
    rb_mail_lane *l = &mb->lanes[to];
    if (l->outbox != NULL) {
        rb_xmsg *m = l->outbox;
        l->outbox = NULL;
        lane_enqueue(mb, to, m);
    }
}

void rb_mailbox_send(rb_mailbox *mb, uint32_t to, rb_xmsg *m)
{
    RB_ASSERT(to < mb->count);
    RB_ASSERT(m->kind > 0 && m->kind < RB_MAIL_KINDS_MAX);
    /* Records already written for `to` go first, to keep their order. */
    lane_close_outbox(mb, to);
    lane_enqueue(mb, to, m);
}

uint8_t *rb_mailbox_reserve(rb_mailbox *mb, uint32_t to, uint16_t kind, size_t len)
{
    RB_ASSERT(to < mb->count);
    rb_mail_lane *l = &mb->lanes[to];
    rb_xmsg *m = l->outbox;
    if (m != NULL && (m->kind != kind || m->cap - m->bytes < len)) {
        lane_close_outbox(mb, to);
        m = NULL;
    }
    if (m != NULL) {
        return m->data + m->bytes;
    }
    if (len > RB_XMSG_DATA_BYTES && len > mb->block_bytes) {
        return NULL;
    }
    m = rb_mailbox_xmsg(mb);
    if (m == NULL) {
        return NULL;
    }
    m->kind = kind;
    if (len > m->cap) {
        /* A record larger than an envelope travels in a block's bytes. */
        rb_block *b = rb_mailbox_block(mb, len);
        if (b == NULL) {
            rb_xmsg_put(m);
            return NULL;
        }
        m->ptr = b;
        m->data = b->data;
        m->cap = b->cap;
    }
    l->outbox = m;
    return m->data;
}

void rb_mailbox_commit(rb_mailbox *mb, uint32_t to, size_t len)
{
    rb_xmsg *m = mb->lanes[to].outbox;
    RB_ASSERT(m != NULL);
    RB_ASSERT(m->bytes + len <= m->cap);
    m->bytes += (uint32_t)len;
    m->count++;
}

uint32_t rb_mailbox_backlog(const rb_mailbox *mb, uint32_t to)
{
    RB_ASSERT(to < mb->count);
    return mb->lanes[to].backlog_count;
}

void rb_mailbox_flush(rb_mailbox *mb)
{
    /* Envelopes and blocks of other shards freed here this turn go home. */
    rb_freelist_flush_returns();
    for (uint32_t i = 0; i < mb->count; i++) {
        lane_close_outbox(mb, i);
        lane_push(mb, i);
        rb_mail_lane *l = &mb->lanes[i];
        if (l->wake && i != mb->id) {
            l->wake = !mb->wake(mb->wake_ctx, i);
        } else {
            l->wake = false;
        }
    }
}

/* ---- receiving ---- */

static void dispatch(rb_mailbox *mb, rb_xmsg *m)
{
    RB_ASSERT(m->kind > 0 && m->kind < RB_MAIL_KINDS_MAX);
    if (mb->handlers[m->kind].fn == NULL) {
        RB_LOG_ERROR(0, "envelope of kind %u from shard %u has no handler", m->kind, m->from_shard);
    }
    RB_ASSERT(mb->handlers[m->kind].fn != NULL);
    mb->handlers[m->kind].fn(mb->handlers[m->kind].ctx, m);
}

void rb_mailbox_drain(rb_mailbox *mb)
{
    void *items[DRAIN_BATCH];
    mb->inbox_left = false;
    for (uint32_t i = 0; i < mb->count; i++) {
        uint32_t n = 0;
        uint32_t rounds = DRAIN_ROUNDS;
        while (rounds > 0 && (n = rb_spsc_pop_many(&mb->inbox[i], items, DRAIN_BATCH)) > 0) {
            rounds--;
            for (uint32_t k = 0; k < n; k++) {
                dispatch(mb, items[k]);
            }
        }
        if (rounds == 0 && rb_spsc_count(&mb->inbox[i]) > 0) {
            mb->inbox_left = true;
        }
    }
}

int rb_mailbox_wait_ms(rb_mailbox *mb, int idle_ms)
{
    bool now = mb->self_pending || mb->inbox_left;
    mb->self_pending = false;
    if (now) {
        return 0;
    }
    for (uint32_t i = 0; i < mb->count; i++) {
        if (mb->lanes[i].backlog_count > 0) {
            return 1;
        }
    }
    return idle_ms;
}
