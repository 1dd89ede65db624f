/* The per-topic sequencer of a topic owner (DESIGN §2 "Topic owners",
 * "Sequencing across nodes"). Storage assigns seqs; several nodes commit to
 * one topic, so the blocks an owner commits itself can leave holes (another
 * node's commits) and hole reads can come back after later commits. The
 * sequencer releases blocks to fan-out in seq order with contiguous ranges:
 * it holds blocks that arrive ahead of a hole, asks for the hole once per
 * topic (one read, however many subscribers), and when it learns that the
 * head moved past what it released (a head read for a new subscriber) it
 * fetches the difference at once, so a quiet topic's subscribers see the
 * other node's messages without waiting for a next publish here.
 *
 * It owns the blocks it holds (one reference each) and hands each released
 * block's reference to ops->release. Pure logic: the owner does the reads
 * and the sending. Single-threaded (the owner's shard). */
#ifndef RB_SERVER_SEQ_H
#define RB_SERVER_SEQ_H

#include <stdbool.h>
#include <stdint.h>

#include "server/mailbox.h"

typedef struct rb_seq {
    uint64_t next;  /* the next seq to release; 0 while nothing is known */
    uint64_t known; /* the highest seq known to be committed */
    rb_block *held; /* blocks ahead of a hole, by first_seq (seq_next links) */
    uint32_t held_count;
    bool fetching; /* a hole read is outstanding */
} rb_seq;

typedef struct rb_seq_ops {
    /* Block b (whose reference passes) continues the released range. */
    void (*release)(void *ctx, rb_block *b);
    /* Read (after, ceiling] from storage and answer with rb_seq_fill for
     * each block of rows, then rb_seq_fill_done; may answer later. */
    void (*fetch)(void *ctx, uint64_t after, uint64_t ceiling);
} rb_seq_ops;

void rb_seq_init(rb_seq *q);

/* Drops the held blocks. */
void rb_seq_deinit(rb_seq *q);

/* A block committed by this node (reference passes). */
void rb_seq_commit(rb_seq *q, rb_block *b, const rb_seq_ops *ops, void *ctx);

/* Every seq up to head is committed (a head read). Before anything is known
 * it only sets the start: subscribers read what is below from storage. */
void rb_seq_head(rb_seq *q, uint64_t head, const rb_seq_ops *ops, void *ctx);

/* Nobody needs seqs up to last (they committed while no shard subscribed):
 * the released range jumps past them. */
void rb_seq_skip(rb_seq *q, uint64_t last);

/* A block of the outstanding hole read (reference passes). */
void rb_seq_fill(rb_seq *q, rb_block *b, const rb_seq_ops *ops, void *ctx);

/* The hole read is over; storage holds nothing more up to upto (rows
 * removed by retention are skipped). upto below next means the read failed:
 * the hole is asked for again. */
void rb_seq_fill_done(rb_seq *q, uint64_t upto, const rb_seq_ops *ops, void *ctx);

/* True while blocks wait for a hole. */
bool rb_seq_holding(const rb_seq *q);

#endif
