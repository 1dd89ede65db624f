/* rb_holdq: a FIFO of paused publishers (DESIGN G5, issue 10's
 * backpressure): sessions whose next frame waits for shard envelopes or
 * for acks are queued here by the publish intake and resumed in the order
 * they paused, so no publisher waits behind one that paused later. The
 * queue is intrusive (each session embeds one rb_hold_link), so it needs
 * no memory of its own and its length is bounded by the session table;
 * every operation is O(1). One shard thread uses a queue. */
#ifndef RB_SERVER_HOLDQ_H
#define RB_SERVER_HOLDQ_H

#include <stdbool.h>
#include <stdint.h>

typedef struct rb_hold_link {
    struct rb_hold_link *prev;
    struct rb_hold_link *next;
    bool queued;
} rb_hold_link;

typedef struct rb_holdq {
    rb_hold_link *head;
    rb_hold_link *tail;
    uint32_t count;
} rb_holdq;

/* Queues l (not queued) last, or first for one that goes back to the
 * place it had. */
void rb_holdq_push_tail(rb_holdq *q, rb_hold_link *l);
void rb_holdq_push_head(rb_holdq *q, rb_hold_link *l);

/* Takes the first link off the queue, or NULL when it is empty. */
rb_hold_link *rb_holdq_pop(rb_holdq *q);

/* Takes l off the queue wherever it is; nothing when it is not queued. */
void rb_holdq_remove(rb_holdq *q, rb_hold_link *l);

#endif
