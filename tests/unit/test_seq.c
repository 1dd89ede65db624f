/* Tests of the per-topic sequencer (server/seq.c): in-order commits pass
 * straight through, out-of-order commits are held until the hole between
 * them is read (once, whatever the number of subscribers), a head read
 * past the released range fetches the difference at once (the quiet
 * topic), skipped and duplicate ranges, retention gaps and failed reads. */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "server/seq.h"
#include "tests/unit/death.h"

static rb_mailbox mb;
static rb_mailbox *all[1];
static uint64_t released[64][2];
static uint32_t released_count;
static uint64_t fetches[16][2];
static uint32_t fetch_count;

static bool no_wake(void *ctx, uint32_t to)
{
    (void)ctx;
    (void)to;
    return true;
}

static void on_release(void *ctx, rb_block *b)
{
    (void)ctx;
    ck_assert_uint_lt(released_count, 64);
    released[released_count][0] = b->first_seq;
    released[released_count][1] = b->last_seq;
    released_count++;
    rb_block_unref(b);
}

static void on_fetch(void *ctx, uint64_t after, uint64_t ceiling)
{
    (void)ctx;
    ck_assert_uint_lt(fetch_count, 16);
    fetches[fetch_count][0] = after;
    fetches[fetch_count][1] = ceiling;
    fetch_count++;
}

static const rb_seq_ops ops = {.release = on_release, .fetch = on_fetch};

static void setup(void)
{
    all[0] = &mb;
    rb_mailbox_options o = {.id = 0,
                            .count = 1,
                            .all = all,
                            .queue_slots = 2,
                            .xmsg_max = 4,
                            .bare_max = 4,
                            .block_budget = 64 * (sizeof(rb_block) + 64),
                            .block_bytes = 64,
                            .wake = no_wake};
    rb_err err;
    ck_assert_int_eq(rb_mailbox_init(&mb, &o, &err), 0);
    released_count = 0;
    fetch_count = 0;
}

static void teardown(void)
{
    rb_mailbox_discard(&mb);
    rb_mailbox_deinit(&mb);
}

static rb_block *blk(uint64_t first, uint64_t last)
{
    rb_block *b = rb_mailbox_block(&mb, 64);
    ck_assert_ptr_nonnull(b);
    b->first_seq = first;
    b->last_seq = last;
    b->count = (uint32_t)(last - first + 1);
    return b;
}

static void assert_released(uint32_t i, uint64_t first, uint64_t last)
{
    ck_assert_uint_gt(released_count, i);
    ck_assert_uint_eq(released[i][0], first);
    ck_assert_uint_eq(released[i][1], last);
}

START_TEST(test_seq_in_order_commits_pass_straight_through)
{
    rb_seq q;
    rb_seq_init(&q);
    rb_seq_commit(&q, blk(1, 3), &ops, NULL);
    rb_seq_commit(&q, blk(4, 4), &ops, NULL);
    rb_seq_commit(&q, blk(5, 9), &ops, NULL);
    ck_assert_uint_eq(released_count, 3);
    assert_released(0, 1, 3);
    assert_released(2, 5, 9);
    ck_assert_uint_eq(fetch_count, 0);
    ck_assert(!rb_seq_holding(&q));
    rb_seq_deinit(&q);
}
END_TEST

START_TEST(test_seq_first_commit_after_a_head_read_starts_there)
{
    rb_seq q;
    rb_seq_init(&q);
    rb_seq_head(&q, 10, &ops, NULL);
    ck_assert_uint_eq(fetch_count, 0);
    rb_seq_commit(&q, blk(11, 12), &ops, NULL);
    assert_released(0, 11, 12);
    rb_seq_deinit(&q);
}
END_TEST

START_TEST(test_seq_out_of_order_commit_is_held_and_the_hole_read_once)
{
    rb_seq q;
    rb_seq_init(&q);
    rb_seq_commit(&q, blk(1, 2), &ops, NULL);
    /* Another node committed 3..5: our next commit is 6..7. */
    rb_seq_commit(&q, blk(6, 7), &ops, NULL);
    rb_seq_commit(&q, blk(8, 8), &ops, NULL);
    ck_assert_uint_eq(released_count, 1);
    ck_assert(rb_seq_holding(&q));
    ck_assert_uint_eq(fetch_count, 1);
    ck_assert_uint_eq(fetches[0][0], 2);
    ck_assert_uint_eq(fetches[0][1], 5);
    rb_seq_fill(&q, blk(3, 5), &ops, NULL);
    rb_seq_fill_done(&q, 5, &ops, NULL);
    ck_assert_uint_eq(released_count, 4);
    assert_released(1, 3, 5);
    assert_released(2, 6, 7);
    assert_released(3, 8, 8);
    ck_assert(!rb_seq_holding(&q));
    ck_assert_uint_eq(fetch_count, 1);
    rb_seq_deinit(&q);
}
END_TEST

START_TEST(test_seq_quiet_topic_head_past_release_fetches_at_once)
{
    rb_seq q;
    rb_seq_init(&q);
    rb_seq_commit(&q, blk(1, 4), &ops, NULL);
    /* Nothing more is published here; a head read sees another node's 5..9. */
    rb_seq_head(&q, 9, &ops, NULL);
    ck_assert_uint_eq(fetch_count, 1);
    ck_assert_uint_eq(fetches[0][0], 4);
    ck_assert_uint_eq(fetches[0][1], 9);
    /* A second head read while the first is out asks for nothing more. */
    rb_seq_head(&q, 9, &ops, NULL);
    ck_assert_uint_eq(fetch_count, 1);
    rb_seq_fill(&q, blk(5, 9), &ops, NULL);
    rb_seq_fill_done(&q, 9, &ops, NULL);
    assert_released(1, 5, 9);
    ck_assert_uint_eq(fetch_count, 1);
    rb_seq_deinit(&q);
}
END_TEST

START_TEST(test_seq_partial_hole_read_asks_for_the_rest)
{
    rb_seq q;
    rb_seq_init(&q);
    rb_seq_commit(&q, blk(1, 1), &ops, NULL);
    rb_seq_commit(&q, blk(100, 100), &ops, NULL);
    ck_assert_uint_eq(fetch_count, 1);
    /* The read stopped at its row limit. */
    rb_seq_fill(&q, blk(2, 50), &ops, NULL);
    rb_seq_fill_done(&q, 50, &ops, NULL);
    ck_assert_uint_eq(fetch_count, 2);
    ck_assert_uint_eq(fetches[1][0], 50);
    ck_assert_uint_eq(fetches[1][1], 99);
    rb_seq_fill(&q, blk(51, 99), &ops, NULL);
    rb_seq_fill_done(&q, 99, &ops, NULL);
    assert_released(3, 100, 100);
    rb_seq_deinit(&q);
}
END_TEST

START_TEST(test_seq_failed_hole_read_is_asked_again)
{
    rb_seq q;
    rb_seq_init(&q);
    rb_seq_commit(&q, blk(1, 1), &ops, NULL);
    rb_seq_commit(&q, blk(5, 5), &ops, NULL);
    rb_seq_fill_done(&q, 0, &ops, NULL);
    ck_assert_uint_eq(fetch_count, 2);
    ck_assert_uint_eq(fetches[1][0], 1);
    ck_assert_uint_eq(fetches[1][1], 4);
    ck_assert_uint_eq(released_count, 1);
    rb_seq_deinit(&q);
}
END_TEST

START_TEST(test_seq_rows_gone_to_retention_are_skipped)
{
    rb_seq q;
    rb_seq_init(&q);
    rb_seq_commit(&q, blk(1, 1), &ops, NULL);
    rb_seq_commit(&q, blk(10, 10), &ops, NULL);
    /* Storage kept only 7..9 of the hole. */
    rb_seq_fill(&q, blk(7, 9), &ops, NULL);
    rb_seq_fill_done(&q, 9, &ops, NULL);
    assert_released(1, 7, 9);
    assert_released(2, 10, 10);
    rb_seq_deinit(&q);
}
END_TEST

START_TEST(test_seq_duplicate_and_skipped_ranges_release_nothing_twice)
{
    rb_seq q;
    rb_seq_init(&q);
    rb_seq_commit(&q, blk(1, 5), &ops, NULL);
    rb_seq_commit(&q, blk(3, 4), &ops, NULL);
    ck_assert_uint_eq(released_count, 1);
    /* Committed while nobody subscribed: no hole afterwards. */
    rb_seq_skip(&q, 20);
    rb_seq_commit(&q, blk(21, 22), &ops, NULL);
    ck_assert_uint_eq(released_count, 2);
    assert_released(1, 21, 22);
    ck_assert_uint_eq(fetch_count, 0);
    rb_seq_deinit(&q);
}
END_TEST

START_TEST(test_seq_deinit_drops_held_blocks)
{
    rb_seq q;
    rb_seq_init(&q);
    rb_seq_commit(&q, blk(1, 1), &ops, NULL);
    rb_seq_commit(&q, blk(9, 9), &ops, NULL);
    rb_seq_commit(&q, blk(5, 5), &ops, NULL);
    ck_assert_uint_eq(q.held_count, 2);
    ck_assert_uint_eq(q.held->first_seq, 5);
    /* teardown's rb_mailbox_deinit asserts every block came back. */
    rb_seq_deinit(&q);
}
END_TEST

START_TEST(test_seq_fill_without_a_read_asserts)
{
    RB_DEATH_TEST();
    rb_seq q;
    rb_seq_init(&q);
    rb_seq_fill_done(&q, 3, &ops, NULL);
}
END_TEST

Suite *rb_seq_suite(void);

Suite *rb_seq_suite(void)
{
    Suite *s = suite_create("seq");
    TCase *tc = tcase_create("seq");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_seq_in_order_commits_pass_straight_through);
    tcase_add_test(tc, test_seq_first_commit_after_a_head_read_starts_there);
    tcase_add_test(tc, test_seq_out_of_order_commit_is_held_and_the_hole_read_once);
    tcase_add_test(tc, test_seq_quiet_topic_head_past_release_fetches_at_once);
    tcase_add_test(tc, test_seq_partial_hole_read_asks_for_the_rest);
    tcase_add_test(tc, test_seq_failed_hole_read_is_asked_again);
    tcase_add_test(tc, test_seq_rows_gone_to_retention_are_skipped);
    tcase_add_test(tc, test_seq_duplicate_and_skipped_ranges_release_nothing_twice);
    tcase_add_test(tc, test_seq_deinit_drops_held_blocks);
    tcase_add_test_raise_signal(tc, test_seq_fill_without_a_read_asserts, SIGABRT);
    suite_add_tcase(s, tc);
    return s;
}
