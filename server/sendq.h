/* A session's send queue: encoded frames from the moment they are queued
 * until the link releases them. Three cursors over the bytes ever queued:
 *
 *   acked <= written <= tail
 *
 * tail is where the next frame goes; written is how far the link has
 * written; acked is how far it released. Bytes before acked are gone;
 * bytes between acked and written are kept until the peer acknowledges
 * them (a link that may have to resend) or released at once (TCP releases
 * what the socket took); bytes after written are still to be written.
 *
 * A frame is queued whole or not at all: every chunk and segment it needs
 * is had before a byte is copied, and a refusal leaves the queue as it was.
 *
 * Memory: the queue takes chunks and segments from the shard's pools and
 * charges them to its own quota and to the shard's budget (rb_send_budget).
 * A chunk costs RB_CHUNK_BYTES; a segment referencing a shared block costs
 * the bytes it references plus RB_SEND_SEG_CHARGE_BYTES. Frames over the
 * quota are refused; the closing frames (ERROR, CLOSE) may use a reserve of
 * RB_SEND_CLOSE_RESERVE_BYTES beyond it, so a connection closed for being
 * over quota still says why. Used by one shard thread. */
#ifndef RB_SERVER_SENDQ_H
#define RB_SERVER_SENDQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "common/pool.h"
#include "config/config.h"

typedef struct rb_block rb_block;

/* Segments of a connection's send queue and of a stream's pending buffer:
 * either an owned chunk (data is the chunk) or a reference to a shared
 * block (fan-out without copying). */
typedef struct rb_seg rb_seg;
struct rb_seg {
    rb_seg *next;
    uint8_t *data;
    uint32_t len; /* bytes filled */
    uint32_t off; /* bytes already sent (released, in a send queue) */
    uint32_t cap;
    rb_block *ref;  /* shared block this segment points into, or NULL */
    uint8_t *chunk; /* owned chunk from the shard's chunk pool, or NULL */
};

/* A position in a byte stream of frames: bytes left of the current frame
 * (0 at a boundary), and the part of its u32 size field seen so far. */
typedef struct rb_frame_cursor {
    uint32_t left;
    uint8_t size_have;
    uint8_t size[4];
} rb_frame_cursor;

/* The shard's send memory: the sum of its queues' charges. Derived from
 * the config (rb_send_budget_bytes) so that every connection can reach
 * its quota at once: one connection's backlog never makes another's frames
 * fail. */
typedef struct rb_send_budget {
    uint64_t limit_bytes;
    uint64_t used_bytes;
} rb_send_budget;

typedef struct rb_sendq {
    rb_pool *chunks;
    rb_pool *segs;
    rb_send_budget *budget;
    uint64_t quota_bytes;
    uint64_t charge_bytes; /* what this queue holds, charged as above */
    rb_seg *head;          /* holds the acked cursor (head->off) */
    rb_seg *tail;
    rb_seg *wseg;  /* segment holding the written cursor, NULL when written == tail */
    uint32_t woff; /* the written cursor's offset in wseg */
    uint64_t tail_pos;
    uint64_t written_pos;
    uint64_t acked_pos;
    /* A queue of frames (not of encoded socket bytes) follows their
     * boundaries at the acked cursor, for rb_sendq_drop_unstarted. */
    bool frames;
    rb_frame_cursor acked_frame;
} rb_sendq;

/* Flags of rb_sendq_append. */
enum {
    RB_SENDQ_RESERVE = 1, /* a closing frame: may use the reserve beyond the quota */
};

/* The per-connection quota and the shard budget for a config. */
uint64_t rb_send_quota_bytes(const rb_config *cfg);
uint64_t rb_send_budget_bytes(const rb_config *cfg);

/* An empty queue drawing from chunks and segs (pools of RB_CHUNK_BYTES and
 * sizeof(rb_seg) items), charged to budget up to quota_bytes. */
void rb_sendq_init(rb_sendq *q, rb_pool *chunks, rb_pool *segs, rb_send_budget *budget,
                   uint64_t quota_bytes);

/* The queue holds whole ringbus frames: from now on it follows their
 * boundaries (4 bytes read per frame released), so that
 * rb_sendq_drop_unstarted can cut it on one. Call on an empty queue. */
void rb_sendq_track_frames(rb_sendq *q);

/* Drops every queued frame that has not started to go out: what is
 * written or released stays, and so do the first `busy` unsent bytes (a
 * write in flight) and the rest of the frame they end in, so the queue
 * still ends on a frame boundary. Returns the bytes dropped. Only for a
 * queue that tracks frames (else it drops nothing). */
uint64_t rb_sendq_drop_unstarted(rb_sendq *q, uint64_t busy);

/* Returns every chunk, segment and block reference; the queue is empty. */
void rb_sendq_drop_all(rb_sendq *q);

/* Bytes queued and not yet released (tail - acked). */
static inline uint64_t rb_sendq_bytes(const rb_sendq *q)
{
    return q->tail_pos - q->acked_pos;
}

/* Bytes queued and not yet written (tail - written). */
static inline uint64_t rb_sendq_unsent(const rb_sendq *q)
{
    return q->tail_pos - q->written_pos;
}

/* Queues len bytes at p (copied) as one unit. Returns 0, or RB_ELIMIT with
 * nothing queued (over the quota, the budget, or a pool dry). */
int rb_sendq_append(rb_sendq *q, const uint8_t *p, size_t len, unsigned flags);

/* Queues a frame of two parts (both copied) as one unit. Same returns. */
int rb_sendq_append2(rb_sendq *q, const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len);

/* Queues a frame whose head (head_len bytes, copied) is followed by len
 * bytes at p inside block b (referenced, not copied). Same returns. */
int rb_sendq_append_ref(rb_sendq *q, const uint8_t *head, size_t head_len, rb_block *b,
                        const uint8_t *p, size_t len);

/* Space for len contiguous bytes at the tail (len <= RB_CHUNK_BYTES), or
 * NULL when refused as above; rb_sendq_commit queues what was written
 * there. Nothing else may touch the queue in between. */
uint8_t *rb_sendq_reserve(rb_sendq *q, size_t len);
void rb_sendq_commit(rb_sendq *q, size_t len);

/* Up to iov_max spans of unsent bytes, from the written cursor on; returns
 * how many (0 when nothing is unsent). The spans stay valid until the bytes
 * are released. */
int rb_sendq_peek(const rb_sendq *q, struct iovec *iov, int iov_max);

/* The first unsent span: its bytes in *len (0 when nothing is unsent). */
const uint8_t *rb_sendq_peek_one(const rb_sendq *q, size_t *len);

/* The link wrote n more bytes (n <= unsent). */
void rb_sendq_written(rb_sendq *q, size_t n);

/* The link releases n more bytes (n <= written - acked): the peer
 * acknowledged them, or the link keeps no copy. Emptied chunks and
 * segments go back to their pools at once. */
void rb_sendq_release(rb_sendq *q, size_t n);

/* Everything written but not released is to be written again (a link
 * that lost it). */
void rb_sendq_rewind(rb_sendq *q);

#endif
