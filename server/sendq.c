/* The send queue (server/sendq.h): segments between three cursors, whole
 * frames or nothing, charged to a quota and the shard's budget. */
#include "server/sendq.h"

#include <string.h>

#include "common/assert.h"
#include "common/limits.h"
#include "server/server.h"

uint64_t rb_send_quota_bytes(const rb_config *cfg)
{
    /* A partly filled tail chunk is charged whole: one chunk of slack keeps
     * send_queue_bytes of frames within the quota. */
    return cfg->send_queue_bytes + RB_CHUNK_BYTES;
}

uint64_t rb_send_budget_bytes(const rb_config *cfg)
{
    return (uint64_t)cfg->max_connections *
           (rb_send_quota_bytes(cfg) + RB_SEND_CLOSE_RESERVE_BYTES);
}

void rb_sendq_init(rb_sendq *q, rb_pool *chunks, rb_pool *segs, rb_send_budget *budget,
                   uint64_t quota_bytes)
{
    memset(q, 0, sizeof *q);
    q->chunks = chunks;
    q->segs = segs;
    q->budget = budget;
    q->quota_bytes = quota_bytes;
}

static uint64_t seg_charge(const rb_seg *s)
{
    return s->chunk != NULL ? RB_CHUNK_BYTES : (uint64_t)s->cap + RB_SEND_SEG_CHARGE_BYTES;
}

/* True when charge more bytes fit the quota (plus the reserve for closing
 * frames) and the shard's budget. */
static bool charge_fits(const rb_sendq *q, uint64_t charge, unsigned flags)
{
    uint64_t limit =
        q->quota_bytes + ((flags & RB_SENDQ_RESERVE) ? RB_SEND_CLOSE_RESERVE_BYTES : 0);
    if (q->charge_bytes + charge > limit) {
        return false;
    }
    return q->budget->used_bytes + charge <= q->budget->limit_bytes;
}

static void charge_add(rb_sendq *q, uint64_t charge)
{
    q->charge_bytes += charge;
    q->budget->used_bytes += charge;
}

static void seg_put(rb_sendq *q, rb_seg *s)
{
    uint64_t charge = seg_charge(s);
    RB_ASSERT(q->charge_bytes >= charge);
    RB_ASSERT(q->budget->used_bytes >= charge);
    q->charge_bytes -= charge;
    q->budget->used_bytes -= charge;
    if (s->chunk != NULL) {
        rb_pool_put(q->chunks, s->chunk);
    }
    if (s->ref != NULL) {
        rb_block_unref(s->ref);
    }
    rb_pool_put(q->segs, s);
}

/* A chunk segment, not yet linked or charged; NULL when a pool is dry. */
static rb_seg *chunk_seg_get(rb_sendq *q)
{
    rb_seg *s = rb_pool_get(q->segs);
    if (s == NULL) {
        return NULL;
    }
    memset(s, 0, sizeof *s);
    s->chunk = rb_pool_get(q->chunks);
    if (s->chunk == NULL) {
        rb_pool_put(q->segs, s);
        return NULL;
    }
    s->data = s->chunk;
    s->cap = RB_CHUNK_BYTES;
    return s;
}

static void seg_link(rb_sendq *q, rb_seg *s)
{
    if (q->tail == NULL) {
        q->head = s;
    } else {
        q->tail->next = s;
    }
    q->tail = s;
    if (q->wseg == NULL) {
        /* The queue was empty: the written cursor starts at s. */
        q->wseg = s;
        q->woff = 0;
    }
}

/* Room left in the tail chunk. */
static size_t tail_room(const rb_sendq *q)
{
    const rb_seg *t = q->tail;
    return t != NULL && t->chunk != NULL ? t->cap - t->len : 0;
}

/* Gets and charges the n chunk segments a frame needs, linked into *list;
 * all or none. */
static int chunks_get(rb_sendq *q, size_t n, unsigned flags, rb_seg **list)
{
    *list = NULL;
    if (!charge_fits(q, (uint64_t)n * RB_CHUNK_BYTES, flags)) {
        return RB_ELIMIT;
    }
    rb_seg **link = list;
    for (size_t i = 0; i < n; i++) {
        rb_seg *s = chunk_seg_get(q);
        if (s == NULL) {
            while (*list != NULL) {
                rb_seg *next = (*list)->next;
                rb_pool_put(q->chunks, (*list)->chunk);
                rb_pool_put(q->segs, *list);
                *list = next;
            }
            return RB_ELIMIT;
        }
        *link = s;
        link = &s->next;
    }
    charge_add(q, (uint64_t)n * RB_CHUNK_BYTES);
    return 0;
}

/* Copies len bytes at p from segment s on (its chunks already linked);
 * returns the segment the next byte goes to. */
static rb_seg *copy_in(rb_seg *s, const uint8_t *p, size_t len)
{
    while (len > 0) {
        RB_ASSERT(s != NULL && s->chunk != NULL);
        if (s->len == s->cap) {
            s = s->next;
            continue;
        }
        size_t n = s->cap - s->len < len ? s->cap - s->len : len;
        memcpy(s->data + s->len, p, n);
        s->len += (uint32_t)n;
        p += n;
        len -= n;
    }
    return s;
}

/* Queues a_len bytes at a then b_len at b as one unit. */
static int append_parts(rb_sendq *q, const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len,
                        unsigned flags)
{
    size_t len = a_len + b_len;
    if (len == 0) {
        return 0;
    }
    size_t room = tail_room(q);
    size_t need = len > room ? len - room : 0;
    size_t n = (need + RB_CHUNK_BYTES - 1) / RB_CHUNK_BYTES;
    rb_seg *list;
    if (chunks_get(q, n, flags, &list) != 0) {
        return RB_ELIMIT;
    }
    rb_seg *s = room > 0 ? q->tail : list;
    while (list != NULL) {
        rb_seg *next = list->next;
        list->next = NULL;
        seg_link(q, list);
        list = next;
    }
    s = copy_in(s, a, a_len);
    copy_in(s, b, b_len);
    q->tail_pos += len;
    return 0;
}

int rb_sendq_append(rb_sendq *q, const uint8_t *p, size_t len, unsigned flags)
{
    return append_parts(q, p, len, NULL, 0, flags);
}

int rb_sendq_append2(rb_sendq *q, const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len)
{
    return append_parts(q, a, a_len, b, b_len, 0);
}

int rb_sendq_append_ref(rb_sendq *q, const uint8_t *head, size_t head_len, rb_block *b,
                        const uint8_t *p, size_t len)
{
    RB_ASSERT(head_len <= RB_CHUNK_BYTES);
    size_t n = tail_room(q) >= head_len ? 0 : 1;
    uint64_t ref_charge = (uint64_t)len + RB_SEND_SEG_CHARGE_BYTES;
    if (!charge_fits(q, n * RB_CHUNK_BYTES + ref_charge, 0)) {
        return RB_ELIMIT;
    }
    rb_seg *s = rb_pool_get(q->segs);
    if (s == NULL) {
        return RB_ELIMIT;
    }
    if (rb_sendq_append(q, head, head_len, 0) != 0) {
        rb_pool_put(q->segs, s);
        return RB_ELIMIT;
    }
    memset(s, 0, sizeof *s);
    rb_block_ref(b);
    s->ref = b;
    s->data = (uint8_t *)p;
    s->len = (uint32_t)len;
    s->cap = (uint32_t)len;
    charge_add(q, ref_charge);
    seg_link(q, s);
    q->tail_pos += len;
    return 0;
}

uint8_t *rb_sendq_reserve(rb_sendq *q, size_t len)
{
    RB_ASSERT(len <= RB_CHUNK_BYTES);
    if (tail_room(q) >= len) {
        return q->tail->data + q->tail->len;
    }
    rb_seg *list;
    if (chunks_get(q, 1, 0, &list) != 0) {
        return NULL;
    }
    seg_link(q, list);
    return list->data;
}

void rb_sendq_commit(rb_sendq *q, size_t len)
{
    rb_seg *t = q->tail;
    RB_ASSERT(t != NULL && t->chunk != NULL);
    RB_ASSERT(t->len + len <= t->cap);
    t->len += (uint32_t)len;
    q->tail_pos += len;
}

int rb_sendq_peek(const rb_sendq *q, struct iovec *iov, int iov_max)
{
    int n = 0;
    const rb_seg *s = q->wseg;
    uint32_t off = q->woff;
    while (s != NULL && n < iov_max) {
        if (s->len > off) {
            iov[n].iov_base = s->data + off;
            iov[n].iov_len = s->len - off;
            n++;
        }
        s = s->next;
        off = 0;
    }
    return n;
}

const uint8_t *rb_sendq_peek_one(const rb_sendq *q, size_t *len)
{
    struct iovec iov;
    if (rb_sendq_peek(q, &iov, 1) == 0) {
        *len = 0;
        return NULL;
    }
    *len = iov.iov_len;
    return iov.iov_base;
}

void rb_sendq_written(rb_sendq *q, size_t n)
{
    RB_ASSERT(n <= rb_sendq_unsent(q));
    q->written_pos += n;
    while (n > 0) {
        rb_seg *s = q->wseg;
        RB_ASSERT(s != NULL);
        size_t avail = s->len - q->woff;
        size_t take = n < avail ? n : avail;
        q->woff += (uint32_t)take;
        n -= take;
        if (q->woff == s->len && s->next != NULL) {
            q->wseg = s->next;
            q->woff = 0;
        }
    }
}

void rb_sendq_track_frames(rb_sendq *q)
{
    RB_ASSERT(rb_sendq_bytes(q) == 0);
    q->frames = true;
    memset(&q->acked_frame, 0, sizeof q->acked_frame);
}

/* Moves cursor fc over n queued bytes from the acked cursor on. Every
 * frame starts with its u32 size, so this reads 4 bytes per frame and
 * skips the rest. */
static void frames_walk(const rb_sendq *q, rb_frame_cursor *fc, uint64_t n)
{
    const rb_seg *s = q->head;
    size_t at = s != NULL ? s->off : 0;
    /* Bounded by n: each pass moves at least one byte or one segment. */
    while (n > 0) {
        RB_ASSERT(s != NULL);
        if (at == s->len) {
            s = s->next;
            at = s != NULL ? s->off : 0;
            continue;
        }
        if (fc->left == 0) {
            /* At a frame start, or inside its size field. */
            fc->size[fc->size_have++] = s->data[at++];
            n--;
            if (fc->size_have == 4) {
                uint32_t size = (uint32_t)fc->size[0] | (uint32_t)fc->size[1] << 8 |
                                (uint32_t)fc->size[2] << 16 | (uint32_t)fc->size[3] << 24;
                /* The server encodes every frame it queues. */
                RB_ASSERT(size >= RB_FRAME_HEADER_BYTES);
                fc->left = size - 4;
                fc->size_have = 0;
            }
            continue;
        }
        size_t step = s->len - at;
        step = step < n ? step : (size_t)n;
        step = step < fc->left ? step : fc->left;
        at += step;
        n -= step;
        fc->left -= (uint32_t)step;
    }
}

/* Copies len queued bytes from `from` bytes past the acked cursor; false
 * when fewer are queued. */
static bool bytes_at(const rb_sendq *q, uint64_t from, uint8_t *out, size_t len)
{
    for (const rb_seg *s = q->head; s != NULL && len > 0; s = s->next) {
        uint64_t avail = s->len - s->off;
        if (from >= avail) {
            from -= avail;
            continue;
        }
        size_t take = avail - from < len ? (size_t)(avail - from) : len;
        memcpy(out, s->data + s->off + from, take);
        out += take;
        len -= take;
        from = 0;
    }
    return len == 0;
}

/* Bytes past the acked cursor up to the end of the frame that the byte
 * `at` bytes past it falls in (at itself on a boundary). */
static uint64_t frame_end_after(const rb_sendq *q, uint64_t at)
{
    rb_frame_cursor fc = q->acked_frame;
    frames_walk(q, &fc, at);
    if (fc.size_have == 0) {
        return at + fc.left;
    }
    uint8_t size[4];
    memcpy(size, fc.size, fc.size_have);
    bool whole = bytes_at(q, at, size + fc.size_have, 4u - fc.size_have);
    RB_ASSERT(whole);
    uint32_t total = (uint32_t)size[0] | (uint32_t)size[1] << 8 | (uint32_t)size[2] << 16 |
                     (uint32_t)size[3] << 24;
    return at + total - fc.size_have;
}

uint64_t rb_sendq_drop_unstarted(rb_sendq *q, uint64_t busy)
{
    if (!q->frames) {
        return 0;
    }
    uint64_t written = q->written_pos - q->acked_pos;
    RB_ASSERT(written + busy <= rb_sendq_bytes(q));
    uint64_t keep = frame_end_after(q, written + busy);
    RB_ASSERT(keep <= rb_sendq_bytes(q));
    uint64_t dropped = rb_sendq_bytes(q) - keep;
    if (dropped == 0) {
        return 0;
    }
    rb_seg **link = &q->head;
    rb_seg *last = NULL;
    uint64_t left = keep;
    while (*link != NULL && left > 0) {
        rb_seg *s = *link;
        uint64_t avail = s->len - s->off;
        if (avail >= left) {
            s->len = s->off + (uint32_t)left;
            left = 0;
        } else {
            left -= avail;
        }
        last = s;
        link = &s->next;
    }
    rb_seg *rest = *link;
    *link = NULL;
    q->tail = last;
    if (last == NULL) {
        q->head = NULL;
    }
    while (rest != NULL) {
        rb_seg *next = rest->next;
        seg_put(q, rest);
        rest = next;
    }
    q->tail_pos = q->acked_pos + keep;
    /* The written cursor is within what stayed: find its segment again. */
    q->wseg = q->head;
    q->woff = q->head != NULL ? q->head->off : 0;
    uint64_t n = written;
    while (n > 0) {
        rb_seg *s = q->wseg;
        RB_ASSERT(s != NULL);
        uint64_t avail = s->len - q->woff;
        uint64_t take = n < avail ? n : avail;
        q->woff += (uint32_t)take;
        n -= take;
        if (q->woff == s->len && s->next != NULL) {
            q->wseg = s->next;
            q->woff = 0;
        }
    }
    return dropped;
}

void rb_sendq_release(rb_sendq *q, size_t n)
{
    RB_ASSERT(n <= q->written_pos - q->acked_pos);
    if (q->frames) {
        frames_walk(q, &q->acked_frame, n);
    }
    q->acked_pos += n;
    while (q->head != NULL) {
        rb_seg *s = q->head;
        size_t avail = s->len - s->off;
        size_t take = n < avail ? n : avail;
        s->off += (uint32_t)take;
        n -= take;
        if (s->off < s->len) {
            break;
        }
        /* Released segments go back at once, the tail chunk too: an idle
         * connection holds no send memory. A released segment is written,
         * so the written cursor is at its end or beyond. */
        if (s == q->wseg) {
            RB_ASSERT(q->woff == s->len);
            q->wseg = s->next;
            q->woff = 0;
        }
        q->head = s->next;
        if (q->head == NULL) {
            q->tail = NULL;
        }
        seg_put(q, s);
    }
    RB_ASSERT(n == 0);
}

void rb_sendq_rewind(rb_sendq *q)
{
    q->written_pos = q->acked_pos;
    q->wseg = q->head;
    q->woff = q->head != NULL ? q->head->off : 0;
}

void rb_sendq_drop_all(rb_sendq *q)
{
    rb_seg *s = q->head;
    while (s != NULL) {
        rb_seg *next = s->next;
        seg_put(q, s);
        s = next;
    }
    q->head = NULL;
    q->tail = NULL;
    q->wseg = NULL;
    q->woff = 0;
    q->tail_pos = 0;
    q->written_pos = 0;
    q->acked_pos = 0;
    memset(&q->acked_frame, 0, sizeof q->acked_frame);
}
