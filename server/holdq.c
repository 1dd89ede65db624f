/* The FIFO of paused publishers; see holdq.h. */
#include "server/holdq.h"

#include <stddef.h>

#include "common/assert.h"

void rb_holdq_push_tail(rb_holdq *q, rb_hold_link *l)
{
    RB_ASSERT(!l->queued);
    l->queued = true;
    l->next = NULL;
    l->prev = q->tail;
    if (q->tail != NULL) {
        q->tail->next = l;
    } else {
        q->head = l;
    }
    q->tail = l;
    q->count++;
}

void rb_holdq_push_head(rb_holdq *q, rb_hold_link *l)
{
    RB_ASSERT(!l->queued);
    l->queued = true;
    l->prev = NULL;
    l->next = q->head;
    if (q->head != NULL) {
        q->head->prev = l;
    } else {
        q->tail = l;
    }
    q->head = l;
    q->count++;
}

void rb_holdq_remove(rb_holdq *q, rb_hold_link *l)
{
    if (!l->queued) {
        return;
    }
    RB_ASSERT(q->count > 0);
    if (l->prev != NULL) {
        l->prev->next = l->next;
    } else {
        q->head = l->next;
    }
    if (l->next != NULL) {
        l->next->prev = l->prev;
    } else {
        q->tail = l->prev;
    }
    l->prev = NULL;
    l->next = NULL;
    l->queued = false;
    q->count--;
}

rb_hold_link *rb_holdq_pop(rb_holdq *q)
{
    rb_hold_link *l = q->head;
    if (l != NULL) {
        rb_holdq_remove(q, l);
    }
    return l;
}
