/* The per-topic sequencer; see seq.h. */
#include "server/seq.h"

#include <string.h>

#include "common/assert.h"

void rb_seq_init(rb_seq *q)
{
    memset(q, 0, sizeof *q);
}

void rb_seq_deinit(rb_seq *q)
{
    while (q->held != NULL) {
        rb_block *b = q->held;
        q->held = b->seq_next;
        rb_block_unref(b);
    }
    q->held_count = 0;
}

static void note_known(rb_seq *q, uint64_t seq)
{
    if (seq > q->known) {
        q->known = seq;
    }
}

/* Releases b when it continues the range (trimmed ones are released too:
 * streams skip what they already have), drops it when it is all behind. */
static void release_in_order(rb_seq *q, rb_block *b, const rb_seq_ops *ops, void *ctx)
{
    RB_ASSERT(b->first_seq <= q->next);
    if (b->last_seq < q->next) {
        rb_block_unref(b);
        return;
    }
    q->next = b->last_seq + 1;
    ops->release(ctx, b);
}

static void drain_held(rb_seq *q, const rb_seq_ops *ops, void *ctx)
{
    while (q->held != NULL && q->held->first_seq <= q->next) {
        rb_block *b = q->held;
        q->held = b->seq_next;
        q->held_count--;
        b->seq_next = NULL;
        release_in_order(q, b, ops, ctx);
    }
}

/* Asks for the first gap, if there is one and no read is out. */
static void maybe_fetch(rb_seq *q, const rb_seq_ops *ops, void *ctx)
{
    if (q->fetching || q->next == 0) {
        return;
    }
    uint64_t ceiling = q->held != NULL ? q->held->first_seq - 1 : q->known;
    if (ceiling < q->next) {
        return;
    }
    q->fetching = true;
    ops->fetch(ctx, q->next - 1, ceiling);
}

static void hold(rb_seq *q, rb_block *b)
{
    rb_block **pp = &q->held;
    while (*pp != NULL && (*pp)->first_seq < b->first_seq) {
        pp = &(*pp)->seq_next;
    }
    b->seq_next = *pp;
    *pp = b;
    q->held_count++;
}

void rb_seq_commit(rb_seq *q, rb_block *b, const rb_seq_ops *ops, void *ctx)
{
    RB_ASSERT(b->first_seq >= 1 && b->first_seq <= b->last_seq);
    note_known(q, b->last_seq);
    if (q->next == 0) {
        q->next = b->first_seq;
    }
    if (b->first_seq <= q->next) {
        release_in_order(q, b, ops, ctx);
        drain_held(q, ops, ctx);
    } else {
        hold(q, b);
    }
    maybe_fetch(q, ops, ctx);
}

void rb_seq_head(rb_seq *q, uint64_t head, const rb_seq_ops *ops, void *ctx)
{
    note_known(q, head);
    if (q->next == 0) {
        q->next = head + 1;
        return;
    }
    maybe_fetch(q, ops, ctx);
}

void rb_seq_skip(rb_seq *q, uint64_t last)
{
    note_known(q, last);
    if (q->next != 0 && q->next <= last) {
        q->next = last + 1;
    }
    while (q->held != NULL && q->held->last_seq <= last) {
        rb_block *b = q->held;
        q->held = b->seq_next;
        q->held_count--;
        rb_block_unref(b);
    }
}

void rb_seq_fill(rb_seq *q, rb_block *b, const rb_seq_ops *ops, void *ctx)
{
    RB_ASSERT(q->fetching);
    note_known(q, b->last_seq);
    if (b->first_seq > q->next) {
        /* Rows start past the gap (retention removed its start). */
        q->next = b->first_seq;
    }
    release_in_order(q, b, ops, ctx);
    drain_held(q, ops, ctx);
}

void rb_seq_fill_done(rb_seq *q, uint64_t upto, const rb_seq_ops *ops, void *ctx)
{
    RB_ASSERT(q->fetching);
    q->fetching = false;
    if (upto >= q->next) {
        q->next = upto + 1;
        drain_held(q, ops, ctx);
    }
    maybe_fetch(q, ops, ctx);
}

bool rb_seq_holding(const rb_seq *q)
{
    return q->held != NULL;
}
