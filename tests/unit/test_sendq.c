/* Tests of rb_sendq: whole frames or nothing when the pools, the quota or
 * the budget refuse; the closing reserve; the written and acknowledged
 * cursors (partial writes, release after ack, rewind); block references;
 * and that a released queue holds no memory. */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "common/limits.h"
#include "server/sendq.h"
#include "server/server.h"
#include "tests/unit/death.h"

typedef struct fixture {
    rb_pool chunks;
    rb_pool segs;
    rb_freelist blocks;
    rb_send_budget budget;
    rb_sendq q;
} fixture;

static void fx_init(fixture *f, uint32_t chunk_max, uint64_t quota, uint64_t budget)
{
    rb_err err = {0};
    memset(f, 0, sizeof *f);
    ck_assert_int_eq(rb_pool_init(&f->chunks, "chunks", RB_CHUNK_BYTES, chunk_max, &err), 0);
    ck_assert_int_eq(rb_pool_init(&f->segs, "segs", sizeof(rb_seg), 1024, &err), 0);
    ck_assert_int_eq(
        rb_freelist_init(&f->blocks, "blocks", sizeof(rb_block) + 4096, 4, 0, NULL, &err), 0);
    f->budget.limit_bytes = budget;
    rb_sendq_init(&f->q, &f->chunks, &f->segs, &f->budget, quota);
}

static void fx_deinit(fixture *f)
{
    rb_sendq_drop_all(&f->q);
    ck_assert_uint_eq(f->budget.used_bytes, 0);
    ck_assert_uint_eq(rb_pool_in_use(&f->chunks), 0);
    ck_assert_uint_eq(rb_pool_in_use(&f->segs), 0);
    rb_freelist_deinit(&f->blocks);
    rb_pool_deinit(&f->segs);
    rb_pool_deinit(&f->chunks);
}

static uint8_t *pattern(size_t len, uint8_t seed)
{
    uint8_t *p = malloc(len);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < len; i++) {
        p[i] = (uint8_t)(seed + i * 7);
    }
    return p;
}

/* Writes and releases everything unsent, checking the bytes against want. */
static void drain_and_check(rb_sendq *q, const uint8_t *want, size_t len)
{
    size_t got = 0;
    struct iovec iov[8];
    while (rb_sendq_unsent(q) > 0) {
        int n = rb_sendq_peek(q, iov, 8);
        ck_assert_int_gt(n, 0);
        size_t pass = 0;
        for (int i = 0; i < n; i++) {
            ck_assert_uint_le(got + iov[i].iov_len, len);
            ck_assert_mem_eq(iov[i].iov_base, want + got, iov[i].iov_len);
            got += iov[i].iov_len;
            pass += iov[i].iov_len;
        }
        rb_sendq_written(q, pass);
        rb_sendq_release(q, pass);
    }
    ck_assert_uint_eq(got, len);
}

START_TEST(test_sendq_empty_has_nothing_to_send)
{
    fixture f;
    fx_init(&f, 8, 1 << 20, 1 << 20);
    struct iovec iov[2];
    ck_assert_int_eq(rb_sendq_peek(&f.q, iov, 2), 0);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), 0);
    ck_assert_int_eq(rb_sendq_append(&f.q, (const uint8_t *)"", 0, 0), 0);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), 0);
    fx_deinit(&f);
}
END_TEST

START_TEST(test_sendq_frame_over_several_chunks_comes_out_whole)
{
    fixture f;
    fx_init(&f, 8, 1 << 20, 1 << 20);
    size_t len = 2 * RB_CHUNK_BYTES + 100;
    uint8_t *p = pattern(len, 1);
    ck_assert_int_eq(rb_sendq_append(&f.q, p, len, 0), 0);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), len);
    ck_assert_uint_eq(f.q.charge_bytes, 3 * RB_CHUNK_BYTES);
    drain_and_check(&f.q, p, len);
    /* Released chunks go back at once, the tail chunk too. */
    ck_assert_uint_eq(rb_pool_in_use(&f.chunks), 0);
    ck_assert_uint_eq(f.budget.used_bytes, 0);
    free(p);
    fx_deinit(&f);
}
END_TEST

START_TEST(test_sendq_pool_dry_queues_nothing_of_the_frame)
{
    fixture f;
    fx_init(&f, 2, 1 << 20, 1 << 20);
    uint8_t *small = pattern(100, 3);
    ck_assert_int_eq(rb_sendq_append(&f.q, small, 100, 0), 0);
    /* Needs the rest of the first chunk and two more: only one is left. */
    size_t len = 2 * RB_CHUNK_BYTES;
    uint8_t *big = pattern(len, 9);
    ck_assert_int_eq(rb_sendq_append(&f.q, big, len, 0), RB_ELIMIT);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), 100);
    ck_assert_uint_eq(rb_pool_in_use(&f.chunks), 1);
    /* The queue is as before: the small frame alone comes out. */
    drain_and_check(&f.q, small, 100);
    free(small);
    free(big);
    fx_deinit(&f);
}
END_TEST

START_TEST(test_sendq_over_quota_is_refused_whole)
{
    fixture f;
    fx_init(&f, 64, 2 * RB_CHUNK_BYTES, 1 << 30);
    uint8_t *p = pattern(RB_CHUNK_BYTES, 5);
    ck_assert_int_eq(rb_sendq_append(&f.q, p, RB_CHUNK_BYTES, 0), 0);
    ck_assert_int_eq(rb_sendq_append(&f.q, p, RB_CHUNK_BYTES, 0), 0);
    ck_assert_int_eq(rb_sendq_append(&f.q, p, 1, 0), RB_ELIMIT);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), 2 * RB_CHUNK_BYTES);
    free(p);
    fx_deinit(&f);
}
END_TEST

START_TEST(test_sendq_closing_frame_uses_the_reserve)
{
    fixture f;
    fx_init(&f, 64, RB_CHUNK_BYTES, 1 << 30);
    uint8_t *p = pattern(RB_CHUNK_BYTES, 5);
    ck_assert_int_eq(rb_sendq_append(&f.q, p, RB_CHUNK_BYTES, 0), 0);
    ck_assert_int_eq(rb_sendq_append(&f.q, p, 40, 0), RB_ELIMIT);
    ck_assert_int_eq(rb_sendq_append(&f.q, p, 40, RB_SENDQ_RESERVE), 0);
    /* The reserve is one chunk, not unbounded. */
    ck_assert_int_eq(rb_sendq_append(&f.q, p, RB_CHUNK_BYTES, RB_SENDQ_RESERVE), RB_ELIMIT);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), RB_CHUNK_BYTES + 40);
    free(p);
    fx_deinit(&f);
}
END_TEST

START_TEST(test_sendq_shard_budget_refuses_past_its_limit)
{
    fixture f;
    fx_init(&f, 64, 1 << 20, RB_CHUNK_BYTES);
    rb_sendq other;
    rb_sendq_init(&other, &f.chunks, &f.segs, &f.budget, 1 << 20);
    uint8_t *p = pattern(64, 5);
    ck_assert_int_eq(rb_sendq_append(&f.q, p, 64, 0), 0);
    ck_assert_int_eq(rb_sendq_append(&other, p, 64, 0), RB_ELIMIT);
    ck_assert_uint_eq(f.budget.used_bytes, RB_CHUNK_BYTES);
    drain_and_check(&f.q, p, 64);
    ck_assert_int_eq(rb_sendq_append(&other, p, 64, 0), 0);
    rb_sendq_drop_all(&other);
    free(p);
    fx_deinit(&f);
}
END_TEST

START_TEST(test_sendq_partial_writes_resume_where_they_stopped)
{
    fixture f;
    fx_init(&f, 8, 1 << 20, 1 << 20);
    size_t len = RB_CHUNK_BYTES + 500;
    uint8_t *p = pattern(len, 11);
    ck_assert_int_eq(rb_sendq_append(&f.q, p, len, 0), 0);
    size_t done = 0;
    size_t steps[] = {1, 999, RB_CHUNK_BYTES - 1000, 250, 250};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        size_t n;
        const uint8_t *s = rb_sendq_peek_one(&f.q, &n);
        ck_assert_ptr_nonnull(s);
        ck_assert_uint_ge(n, steps[i]);
        ck_assert_mem_eq(s, p + done, steps[i]);
        rb_sendq_written(&f.q, steps[i]);
        rb_sendq_release(&f.q, steps[i]);
        done += steps[i];
    }
    ck_assert_uint_eq(done, len);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), 0);
    free(p);
    fx_deinit(&f);
}
END_TEST

START_TEST(test_sendq_written_bytes_are_kept_until_acknowledged)
{
    fixture f;
    fx_init(&f, 8, 1 << 20, 1 << 20);
    size_t len = 3000;
    uint8_t *p = pattern(len, 13);
    ck_assert_int_eq(rb_sendq_append(&f.q, p, len, 0), 0);
    rb_sendq_written(&f.q, 2000);
    ck_assert_uint_eq(rb_sendq_unsent(&f.q), 1000);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), 3000);
    /* Appending after a partial write keeps the cursor where it was. */
    ck_assert_int_eq(rb_sendq_append(&f.q, p, 10, 0), 0);
    size_t n;
    const uint8_t *s = rb_sendq_peek_one(&f.q, &n);
    ck_assert_uint_eq(n, 1010);
    ck_assert_mem_eq(s, p + 2000, 1000);
    rb_sendq_release(&f.q, 1500);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), 1510);
    ck_assert_uint_eq(rb_pool_in_use(&f.chunks), 1);
    /* Lost: everything not acknowledged is written again. */
    rb_sendq_rewind(&f.q);
    s = rb_sendq_peek_one(&f.q, &n);
    ck_assert_uint_eq(n, 1510);
    ck_assert_mem_eq(s, p + 1500, 1500);
    rb_sendq_written(&f.q, n);
    rb_sendq_release(&f.q, n);
    ck_assert_uint_eq(rb_pool_in_use(&f.chunks), 0);
    free(p);
    fx_deinit(&f);
}
END_TEST

START_TEST(test_sendq_release_beyond_written_aborts)
{
    RB_DEATH_TEST();
    fixture f;
    fx_init(&f, 8, 1 << 20, 1 << 20);
    ck_assert_int_eq(rb_sendq_append(&f.q, (const uint8_t *)"abcd", 4, 0), 0);
    rb_sendq_written(&f.q, 2);
    rb_sendq_release(&f.q, 3);
}
END_TEST

START_TEST(test_sendq_block_reference_is_sent_and_dropped)
{
    fixture f;
    fx_init(&f, 8, 1 << 20, 1 << 20);
    rb_block *b = rb_freelist_get(&f.blocks);
    ck_assert_ptr_nonnull(b);
    atomic_init(&b->refs, 1);
    b->home = &f.blocks;
    b->data = (uint8_t *)(b + 1);
    memcpy(b->data, "payload-bytes", 13);
    ck_assert_int_eq(rb_sendq_append_ref(&f.q, (const uint8_t *)"HEAD", 4, b, b->data, 13), 0);
    ck_assert_uint_eq(atomic_load(&b->refs), 2);
    ck_assert_uint_eq(f.q.charge_bytes, RB_CHUNK_BYTES + 13 + RB_SEND_SEG_CHARGE_BYTES);
    drain_and_check(&f.q, (const uint8_t *)"HEADpayload-bytes", 17);
    ck_assert_uint_eq(atomic_load(&b->refs), 1);
    rb_block_unref(b);
    ck_assert(rb_freelist_has_free(&f.blocks));
    fx_deinit(&f);
}
END_TEST

START_TEST(test_sendq_block_reference_over_quota_takes_nothing)
{
    fixture f;
    fx_init(&f, 8, RB_CHUNK_BYTES + 100, 1 << 20);
    rb_block *b = rb_freelist_get(&f.blocks);
    atomic_init(&b->refs, 1);
    b->home = &f.blocks;
    b->data = (uint8_t *)(b + 1);
    ck_assert_int_eq(rb_sendq_append_ref(&f.q, (const uint8_t *)"HEAD", 4, b, b->data, 4000),
                     RB_ELIMIT);
    ck_assert_uint_eq(atomic_load(&b->refs), 1);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), 0);
    ck_assert_uint_eq(rb_pool_in_use(&f.chunks), 0);
    rb_block_unref(b);
    fx_deinit(&f);
}
END_TEST

START_TEST(test_sendq_two_part_frame_is_whole_or_nothing)
{
    fixture f;
    fx_init(&f, 2, 1 << 20, 1 << 20);
    uint8_t *body = pattern(2 * RB_CHUNK_BYTES, 17);
    ck_assert_int_eq(rb_sendq_append2(&f.q, (const uint8_t *)"HH", 2, body, 2 * RB_CHUNK_BYTES),
                     RB_ELIMIT);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), 0);
    ck_assert_int_eq(rb_sendq_append2(&f.q, (const uint8_t *)"HH", 2, body, 100), 0);
    uint8_t want[102];
    memcpy(want, "HH", 2);
    memcpy(want + 2, body, 100);
    drain_and_check(&f.q, want, sizeof want);
    free(body);
    fx_deinit(&f);
}
END_TEST

START_TEST(test_sendq_reserve_commit_queues_in_place)
{
    fixture f;
    fx_init(&f, 2, 1 << 20, 1 << 20);
    uint8_t *w = rb_sendq_reserve(&f.q, 6);
    ck_assert_ptr_nonnull(w);
    memcpy(w, "abcdef", 6);
    rb_sendq_commit(&f.q, 6);
    drain_and_check(&f.q, (const uint8_t *)"abcdef", 6);
    fx_deinit(&f);
}
END_TEST

/* A frame of len bytes (len >= 16): its size field, then a pattern. */
static void frame_of(uint8_t *out, size_t len, uint8_t seed)
{
    for (size_t i = 0; i < len; i++) {
        out[i] = (uint8_t)(seed + i);
    }
    out[0] = (uint8_t)len;
    out[1] = (uint8_t)(len >> 8);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 24);
}

/* Queues frames of these sizes; returns the bytes queued. */
static size_t queue_frames(rb_sendq *q, const size_t *sizes, size_t count)
{
    size_t total = 0;
    uint8_t *buf = malloc(3 * RB_CHUNK_BYTES);
    ck_assert_ptr_nonnull(buf);
    for (size_t i = 0; i < count; i++) {
        ck_assert_uint_le(sizes[i], 3 * RB_CHUNK_BYTES);
        frame_of(buf, sizes[i], (uint8_t)i);
        ck_assert_int_eq(rb_sendq_append(q, buf, sizes[i], 0), 0);
        total += sizes[i];
    }
    free(buf);
    return total;
}

/* Writes and releases n bytes. */
static void write_n(rb_sendq *q, size_t n)
{
    while (n > 0) {
        size_t len;
        ck_assert_ptr_nonnull(rb_sendq_peek_one(q, &len));
        len = len < n ? len : n;
        rb_sendq_written(q, len);
        rb_sendq_release(q, len);
        n -= len;
    }
}

START_TEST(test_sendq_drop_unstarted_keeps_the_frame_being_written)
{
    fixture f;
    fx_init(&f, 16, 1 << 20, 1 << 20);
    rb_sendq_track_frames(&f.q);
    static const size_t sizes[] = {20, RB_CHUNK_BYTES + 100, 30, 40};
    queue_frames(&f.q, sizes, 4);
    /* The first frame and 2 bytes of the second (inside its size field). */
    write_n(&f.q, 22);
    uint64_t dropped = rb_sendq_drop_unstarted(&f.q, 0);
    ck_assert_uint_eq(dropped, 30 + 40);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), sizes[1] - 2);
    /* A closing frame follows the second frame directly. */
    uint8_t close_frame[24];
    frame_of(close_frame, sizeof close_frame, 9);
    ck_assert_int_eq(rb_sendq_append(&f.q, close_frame, sizeof close_frame, RB_SENDQ_RESERVE), 0);
    write_n(&f.q, sizes[1] - 2);
    size_t n;
    const uint8_t *p = rb_sendq_peek_one(&f.q, &n);
    ck_assert_uint_eq(n, sizeof close_frame);
    ck_assert_mem_eq(p, close_frame, sizeof close_frame);
    write_n(&f.q, n);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), 0);
    fx_deinit(&f);
}
END_TEST

START_TEST(test_sendq_drop_unstarted_keeps_bytes_in_flight_and_their_frame)
{
    fixture f;
    fx_init(&f, 16, 1 << 20, 1 << 20);
    rb_sendq_track_frames(&f.q);
    static const size_t sizes[] = {100, 200, 300, 400};
    queue_frames(&f.q, sizes, 4);
    write_n(&f.q, 50);
    /* A write in flight covers the rest of frame 1 and 10 bytes of frame 2. */
    uint64_t dropped = rb_sendq_drop_unstarted(&f.q, 50 + 10);
    ck_assert_uint_eq(dropped, 300 + 400);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), 50 + 200);
    /* On a boundary, with nothing in flight, everything unsent goes. */
    write_n(&f.q, 250);
    queue_frames(&f.q, sizes, 2);
    ck_assert_uint_eq(rb_sendq_drop_unstarted(&f.q, 0), 300);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), 0);
    ck_assert_uint_eq(f.budget.used_bytes, 0);
    fx_deinit(&f);
}
END_TEST

START_TEST(test_sendq_drop_unstarted_without_frame_tracking_drops_nothing)
{
    fixture f;
    fx_init(&f, 16, 1 << 20, 1 << 20);
    static const size_t sizes[] = {100, 200};
    queue_frames(&f.q, sizes, 2);
    ck_assert_uint_eq(rb_sendq_drop_unstarted(&f.q, 0), 0);
    ck_assert_uint_eq(rb_sendq_bytes(&f.q), 300);
    fx_deinit(&f);
}
END_TEST

Suite *rb_sendq_suite(void);
Suite *rb_sendq_suite(void)
{
    Suite *s = suite_create("sendq");
    TCase *tc = tcase_create("whole frames");
    tcase_add_test(tc, test_sendq_empty_has_nothing_to_send);
    tcase_add_test(tc, test_sendq_frame_over_several_chunks_comes_out_whole);
    tcase_add_test(tc, test_sendq_pool_dry_queues_nothing_of_the_frame);
    tcase_add_test(tc, test_sendq_two_part_frame_is_whole_or_nothing);
    tcase_add_test(tc, test_sendq_reserve_commit_queues_in_place);
    suite_add_tcase(s, tc);
    tc = tcase_create("quota and budget");
    tcase_add_test(tc, test_sendq_over_quota_is_refused_whole);
    tcase_add_test(tc, test_sendq_closing_frame_uses_the_reserve);
    tcase_add_test(tc, test_sendq_shard_budget_refuses_past_its_limit);
    suite_add_tcase(s, tc);
    tc = tcase_create("cursors");
    tcase_add_test(tc, test_sendq_partial_writes_resume_where_they_stopped);
    tcase_add_test(tc, test_sendq_written_bytes_are_kept_until_acknowledged);
    tcase_add_test_raise_signal(tc, test_sendq_release_beyond_written_aborts, SIGABRT);
    suite_add_tcase(s, tc);
    tc = tcase_create("dropping unstarted frames");
    tcase_add_test(tc, test_sendq_drop_unstarted_keeps_the_frame_being_written);
    tcase_add_test(tc, test_sendq_drop_unstarted_keeps_bytes_in_flight_and_their_frame);
    tcase_add_test(tc, test_sendq_drop_unstarted_without_frame_tracking_drops_nothing);
    suite_add_tcase(s, tc);
    tc = tcase_create("block references");
    tcase_add_test(tc, test_sendq_block_reference_is_sent_and_dropped);
    tcase_add_test(tc, test_sendq_block_reference_over_quota_takes_nothing);
    suite_add_tcase(s, tc);
    return s;
}
