/* Tests of the shard mailbox (server/mailbox.c) on one thread with several
 * mailboxes standing for shards: records reach the handler registered for
 * their kind in the order written, a full queue keeps envelopes in the
 * backlog in order instead of refusing them, pools bound envelopes and
 * blocks, large records travel in blocks, and unknown kinds assert; and,
 * on two threads, that a backlog handed over while the receiver frees
 * what it got loses and repeats nothing. */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "server/mailbox.h"
#include "tests/unit/death.h"

#define SHARDS 3

typedef struct fixture {
    rb_mailbox mb[SHARDS];
    rb_mailbox *all[SHARDS];
    uint32_t wakes[SHARDS];
    /* what the handlers saw, per receiving shard */
    uint32_t seen_count[SHARDS];
    uint32_t seen[SHARDS][4096];
    uint16_t seen_kind[SHARDS][4096];
    uint32_t envelopes[SHARDS];
} fixture;

static fixture fx;

static bool wake(void *ctx, uint32_t to)
{
    (void)ctx;
    fx.wakes[to]++;
    return true;
}

/* Records are one u32 each; the handler logs them and frees the envelope. */
static void record_handler(void *ctx, rb_xmsg *m)
{
    uint32_t shard = (uint32_t)(uintptr_t)ctx;
    const uint8_t *p = m->data;
    fx.envelopes[shard]++;
    for (uint32_t i = 0; i < m->count; i++) {
        uint32_t v;
        p = rb_rec_get(p, &v, 4);
        uint32_t n = fx.seen_count[shard]++;
        ck_assert_uint_lt(n, 4096);
        fx.seen[shard][n] = v;
        fx.seen_kind[shard][n] = m->kind;
    }
    ck_assert_ptr_eq(p, m->data + m->bytes);
    rb_xmsg_put(m);
}

static void setup_with(uint32_t queue_slots, uint32_t xmsg_max, uint32_t block_max)
{
    memset(&fx, 0, sizeof fx);
    for (uint32_t i = 0; i < SHARDS; i++) {
        fx.all[i] = &fx.mb[i];
    }
    for (uint32_t i = 0; i < SHARDS; i++) {
        rb_mailbox_options o = {.id = i,
                                .count = SHARDS,
                                .all = fx.all,
                                .queue_slots = queue_slots,
                                .xmsg_max = xmsg_max,
                                .bare_max = xmsg_max,
                                .block_budget =
                                    (uint64_t)block_max * (sizeof(rb_block) + 256 * 1024),
                                .block_bytes = 256 * 1024,
                                .wake = wake};
        rb_err err;
        ck_assert_int_eq(rb_mailbox_init(&fx.mb[i], &o, &err), 0);
        rb_mailbox_register(&fx.mb[i], RB_XK_PUBLISH, record_handler, (void *)(uintptr_t)i);
        rb_mailbox_register(&fx.mb[i], RB_XK_ACK, record_handler, (void *)(uintptr_t)i);
    }
}

static void teardown_all(void)
{
    for (uint32_t i = 0; i < SHARDS; i++) {
        rb_mailbox_discard(&fx.mb[i]);
    }
    for (uint32_t i = 0; i < SHARDS; i++) {
        rb_mailbox_deinit(&fx.mb[i]);
    }
}

static void put_record(uint32_t from, uint32_t to, uint16_t kind, uint32_t v)
{
    uint8_t *p = rb_mailbox_reserve(&fx.mb[from], to, kind, 4);
    ck_assert_ptr_nonnull(p);
    rb_rec_put(p, &v, 4);
    rb_mailbox_commit(&fx.mb[from], to, 4);
}

START_TEST(test_mailbox_empty_drain_runs_nothing)
{
    setup_with(8, 16, 4);
    rb_mailbox_flush(&fx.mb[0]);
    rb_mailbox_drain(&fx.mb[1]);
    ck_assert_uint_eq(fx.seen_count[1], 0);
    ck_assert_uint_eq(fx.wakes[1], 0);
    ck_assert_int_eq(rb_mailbox_wait_ms(&fx.mb[0], 1000), 1000);
    teardown_all();
}
END_TEST

START_TEST(test_mailbox_one_record_reaches_its_kind_handler_and_wakes_once)
{
    setup_with(8, 16, 4);
    put_record(0, 2, RB_XK_ACK, 42);
    /* Nothing moves before the flush at the end of the turn. */
    rb_mailbox_drain(&fx.mb[2]);
    ck_assert_uint_eq(fx.seen_count[2], 0);
    rb_mailbox_flush(&fx.mb[0]);
    ck_assert_uint_eq(fx.wakes[2], 1);
    ck_assert_uint_eq(fx.wakes[1], 0);
    rb_mailbox_drain(&fx.mb[2]);
    ck_assert_uint_eq(fx.seen_count[2], 1);
    ck_assert_uint_eq(fx.seen[2][0], 42);
    ck_assert_uint_eq(fx.seen_kind[2][0], RB_XK_ACK);
    teardown_all();
}
END_TEST

START_TEST(test_mailbox_records_of_mixed_kinds_keep_their_order)
{
    setup_with(8, 128, 4);
    for (uint32_t i = 0; i < 100; i++) {
        put_record(1, 0, i % 3 == 0 ? RB_XK_ACK : RB_XK_PUBLISH, i);
    }
    rb_mailbox_flush(&fx.mb[1]);
    /* Each change of kind starts a new envelope: the queue of 8 fills, the
     * rest wait in the backlog and follow as the consumer drains. */
    for (int turn = 0; turn < 100 && fx.seen_count[0] < 100; turn++) {
        rb_mailbox_drain(&fx.mb[0]);
        rb_mailbox_flush(&fx.mb[1]);
    }
    ck_assert_uint_eq(fx.seen_count[0], 100);
    for (uint32_t i = 0; i < 100; i++) {
        ck_assert_uint_eq(fx.seen[0][i], i);
        ck_assert_uint_eq(fx.seen_kind[0][i], i % 3 == 0 ? RB_XK_ACK : RB_XK_PUBLISH);
    }
    ck_assert_uint_eq(rb_mailbox_backlog(&fx.mb[1], 0), 0);
    teardown_all();
}
END_TEST

START_TEST(test_mailbox_full_queue_backlogs_in_order_instead_of_refusing)
{
    setup_with(2, 64, 4);
    for (uint32_t i = 0; i < 10; i++) {
        rb_xmsg *m = rb_mailbox_xmsg(&fx.mb[0]);
        ck_assert_ptr_nonnull(m);
        m->kind = RB_XK_PUBLISH;
        rb_rec_put(m->data, &i, 4);
        m->bytes = 4;
        m->count = 1;
        rb_mailbox_send(&fx.mb[0], 1, m);
    }
    /* Two slots: eight wait, and the producer is told not to sleep long. */
    ck_assert_uint_eq(rb_mailbox_backlog(&fx.mb[0], 1), 8);
    ck_assert_int_eq(rb_mailbox_wait_ms(&fx.mb[0], 1000), 1);
    uint32_t turns = 0;
    while (fx.seen_count[1] < 10) {
        ck_assert_uint_lt(turns++, 20);
        rb_mailbox_flush(&fx.mb[0]);
        rb_mailbox_drain(&fx.mb[1]);
    }
    for (uint32_t i = 0; i < 10; i++) {
        ck_assert_uint_eq(fx.seen[1][i], i);
    }
    ck_assert_uint_eq(fx.envelopes[1], 10);
    ck_assert_uint_eq(rb_mailbox_backlog(&fx.mb[0], 1), 0);
    teardown_all();
}
END_TEST

START_TEST(test_mailbox_send_goes_after_records_already_written)
{
    setup_with(8, 16, 4);
    put_record(0, 1, RB_XK_PUBLISH, 1);
    rb_xmsg *m = rb_mailbox_xmsg(&fx.mb[0]);
    m->kind = RB_XK_ACK;
    uint32_t v = 2;
    rb_rec_put(m->data, &v, 4);
    m->bytes = 4;
    m->count = 1;
    rb_mailbox_send(&fx.mb[0], 1, m);
    put_record(0, 1, RB_XK_PUBLISH, 3);
    rb_mailbox_flush(&fx.mb[0]);
    rb_mailbox_drain(&fx.mb[1]);
    ck_assert_uint_eq(fx.seen_count[1], 3);
    for (uint32_t i = 0; i < 3; i++) {
        ck_assert_uint_eq(fx.seen[1][i], i + 1);
    }
    teardown_all();
}
END_TEST

START_TEST(test_mailbox_envelope_pool_at_its_limit_refuses_then_recovers)
{
    setup_with(8, 2, 4);
    rb_xmsg *a = rb_mailbox_xmsg(&fx.mb[0]);
    rb_xmsg *b = rb_mailbox_xmsg(&fx.mb[0]);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_null(rb_mailbox_xmsg(&fx.mb[0]));
    ck_assert_ptr_null(rb_mailbox_reserve(&fx.mb[0], 1, RB_XK_PUBLISH, 4));
    /* An envelope freed on another shard goes back to its home pool. */
    rb_xmsg_put(a);
    ck_assert_ptr_nonnull(rb_mailbox_reserve(&fx.mb[0], 1, RB_XK_PUBLISH, 4));
    rb_xmsg_put(b);
    teardown_all();
}
END_TEST

START_TEST(test_mailbox_record_larger_than_an_envelope_travels_in_a_block)
{
    setup_with(8, 16, 1);
    size_t len = RB_XMSG_DATA_BYTES + 100;
    uint8_t *p = rb_mailbox_reserve(&fx.mb[0], 1, RB_XK_PUBLISH, len);
    ck_assert_ptr_nonnull(p);
    memset(p, 0, len);
    /* The block pool (one block) is now empty: a second large record waits. */
    ck_assert_ptr_null(rb_mailbox_block(&fx.mb[0], 256 * 1024));
    rb_mailbox_commit(&fx.mb[0], 1, len);
    /* Larger than a block: refused outright. */
    ck_assert_ptr_null(rb_mailbox_reserve(&fx.mb[0], 2, RB_XK_PUBLISH, 256 * 1024 + 1));
    rb_mailbox_flush(&fx.mb[0]);
    rb_xmsg *m = rb_spsc_pop(&fx.mb[1].inbox[0]);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_nonnull(m->ptr);
    ck_assert_uint_eq(m->bytes, len);
    rb_xmsg_put(m);
    /* The block came home: the same class has one again. */
    rb_block *b = rb_mailbox_block(&fx.mb[0], len);
    ck_assert_ptr_nonnull(b);
    rb_block_unref(b);
    teardown_all();
}
END_TEST

START_TEST(test_mailbox_block_returns_to_its_pool_on_last_unref)
{
    setup_with(8, 16, 1);
    rb_block *b = rb_mailbox_block(&fx.mb[0], 256 * 1024);
    ck_assert_ptr_nonnull(b);
    rb_block_ref(b);
    rb_block_unref(b);
    ck_assert_ptr_null(rb_mailbox_block(&fx.mb[0], 256 * 1024));
    rb_block_unref(b);
    b = rb_mailbox_block(&fx.mb[0], 256 * 1024);
    ck_assert_ptr_nonnull(b);
    rb_block_unref(b);
    teardown_all();
}
END_TEST

START_TEST(test_mailbox_small_block_takes_the_smallest_class)
{
    setup_with(8, 16, 4);
    rb_block *small = rb_mailbox_block(&fx.mb[0], 100);
    ck_assert_ptr_nonnull(small);
    ck_assert_uint_eq(small->cap, RB_BLOCK_CLASS_MIN_BYTES);
    rb_block *mid = rb_mailbox_block(&fx.mb[0], 3000);
    ck_assert_uint_eq(mid->cap, 4 * 4 * RB_BLOCK_CLASS_MIN_BYTES);
    rb_block *big = rb_mailbox_block(&fx.mb[0], 256 * 1024);
    ck_assert_uint_eq(big->cap, 256 * 1024);
    /* More than the largest class: none. */
    ck_assert_ptr_null(rb_mailbox_block(&fx.mb[0], 256 * 1024 + 1));
    rb_block_unref(small);
    rb_block_unref(mid);
    rb_block_unref(big);
    teardown_all();
}
END_TEST

START_TEST(test_mailbox_spent_block_budget_lends_a_larger_free_block)
{
    /* Budget for one largest block and nothing else. */
    setup_with(8, 16, 1);
    rb_block *big = rb_mailbox_block(&fx.mb[0], 256 * 1024);
    ck_assert_ptr_nonnull(big);
    ck_assert_ptr_null(rb_mailbox_block(&fx.mb[0], 10));
    rb_block_unref(big);
    rb_block *small = rb_mailbox_block(&fx.mb[0], 10);
    ck_assert_ptr_nonnull(small);
    ck_assert_uint_eq(small->cap, 256 * 1024);
    rb_block_unref(small);
    teardown_all();
}
END_TEST

START_TEST(test_mailbox_send_to_itself_asks_for_no_sleep)
{
    setup_with(8, 16, 4);
    put_record(1, 1, RB_XK_PUBLISH, 7);
    rb_mailbox_flush(&fx.mb[1]);
    ck_assert_uint_eq(fx.wakes[1], 0);
    ck_assert_int_eq(rb_mailbox_wait_ms(&fx.mb[1], 1000), 0);
    rb_mailbox_drain(&fx.mb[1]);
    ck_assert_uint_eq(fx.seen_count[1], 1);
    ck_assert_int_eq(rb_mailbox_wait_ms(&fx.mb[1], 1000), 1000);
    teardown_all();
}
END_TEST

START_TEST(test_mailbox_discard_returns_queued_envelopes)
{
    setup_with(2, 8, 4);
    for (uint32_t i = 0; i < 5; i++) {
        put_record(0, 1, i % 2 ? RB_XK_PUBLISH : RB_XK_ACK, i);
    }
    rb_mailbox_flush(&fx.mb[0]);
    ck_assert_uint_gt(rb_mailbox_backlog(&fx.mb[0], 1), 0);
    /* Deinit asserts every envelope is back: discard must find them all. */
    teardown_all();
}
END_TEST

START_TEST(test_mailbox_unregistered_kind_asserts)
{
    RB_DEATH_TEST();
    setup_with(8, 16, 4);
    put_record(0, 1, RB_XK_HEAD, 1);
    rb_mailbox_flush(&fx.mb[0]);
    rb_mailbox_drain(&fx.mb[1]);
}
END_TEST

/* An extra unref of a block already back in its pool stops the daemon at
 * once, instead of corrupting the pool's free list. */
START_TEST(test_mailbox_unref_of_a_freed_block_asserts)
{
    RB_DEATH_TEST();
    setup_with(8, 16, 1);
    rb_block *b = rb_mailbox_block(&fx.mb[0], 1024);
    ck_assert_ptr_nonnull(b);
    rb_block_unref(b);
    rb_block_unref(b);
}
END_TEST

START_TEST(test_mailbox_second_handler_for_a_kind_asserts)
{
    RB_DEATH_TEST();
    setup_with(8, 16, 4);
    rb_mailbox_register(&fx.mb[0], RB_XK_ACK, record_handler, NULL);
}
END_TEST

/* ---- two threads ---- */

#define RACE_ENVELOPES 200000u

typedef struct race {
    rb_mailbox mb[2];
    rb_mailbox *all[2];
    _Atomic uint32_t received;
    uint32_t expect; /* the next value the receiver must see */
    uint32_t wrong;  /* values out of order, repeated or skipped */
} race;

static race rc_fx;

static bool race_wake(void *ctx, uint32_t to)
{
    (void)ctx;
    (void)to;
    return true;
}

static void race_handler(void *ctx, rb_xmsg *m)
{
    (void)ctx;
    uint32_t v;
    rb_rec_get(m->data, &v, 4);
    if (v != rc_fx.expect) {
        rc_fx.wrong++;
    }
    rc_fx.expect = v + 1;
    atomic_fetch_add(&rc_fx.received, 1);
    /* Back to the sender's pool at once: the item's link word is the
     * pool's again while the sender may still walk its backlog. */
    rb_xmsg_put(m);
}

static void *race_sender(void *arg)
{
    (void)arg;
    rb_freelist_bind_thread(1);
    rb_mailbox *mb = &rc_fx.mb[0];
    for (uint32_t i = 0; i < RACE_ENVELOPES;) {
        rb_xmsg *m = rb_mailbox_xmsg(mb);
        if (m == NULL) {
            /* Every envelope is out: push the backlog, wait for returns. */
            rb_mailbox_flush(mb);
            sched_yield();
            continue;
        }
        m->kind = RB_XK_PUBLISH;
        rb_rec_put(m->data, &i, 4);
        m->bytes = 4;
        m->count = 1;
        rb_mailbox_send(mb, 1, m);
        if (++i % 8 == 0) {
            rb_mailbox_flush(mb);
        }
    }
    while (rb_mailbox_backlog(mb, 1) > 0) {
        rb_mailbox_flush(mb);
        sched_yield();
    }
    return NULL;
}

static void *race_receiver(void *arg)
{
    (void)arg;
    rb_freelist_bind_thread(2);
    rb_mailbox *mb = &rc_fx.mb[1];
    while (atomic_load(&rc_fx.received) < RACE_ENVELOPES) {
        rb_mailbox_drain(mb);
        /* Sends what this thread freed home. */
        rb_mailbox_flush(mb);
    }
    return NULL;
}

/* The sender's backlog drains into a two-slot queue while the receiver
 * frees every envelope the moment it has read it: every envelope arrives
 * exactly once, in order. (The sender once read an envelope's link after
 * queueing it, when the receiver could already have given it back: a
 * window of a few instructions, which this run seldom hits; the daemon
 * under ASan on a loaded machine did.) */
START_TEST(test_mailbox_backlog_survives_a_receiver_freeing_at_once)
{
    memset(&rc_fx, 0, sizeof rc_fx);
    for (uint32_t i = 0; i < 2; i++) {
        rc_fx.all[i] = &rc_fx.mb[i];
    }
    for (uint32_t i = 0; i < 2; i++) {
        rb_mailbox_options o = {.id = i,
                                .count = 2,
                                .all = rc_fx.all,
                                .queue_slots = 2,
                                .xmsg_max = 64,
                                .bare_max = 4,
                                .home = i + 1,
                                .block_budget = sizeof(rb_block) + 1024,
                                .block_bytes = 1024,
                                .wake = race_wake};
        rb_err err;
        ck_assert_int_eq(rb_mailbox_init(&rc_fx.mb[i], &o, &err), 0);
        rb_mailbox_register(&rc_fx.mb[i], RB_XK_PUBLISH, race_handler, NULL);
    }
    pthread_t send_t;
    pthread_t recv_t;
    ck_assert_int_eq(pthread_create(&recv_t, NULL, race_receiver, NULL), 0);
    ck_assert_int_eq(pthread_create(&send_t, NULL, race_sender, NULL), 0);
    pthread_join(send_t, NULL);
    pthread_join(recv_t, NULL);
    ck_assert_uint_eq(atomic_load(&rc_fx.received), RACE_ENVELOPES);
    ck_assert_uint_eq(rc_fx.wrong, 0);
    ck_assert_uint_eq(rc_fx.expect, RACE_ENVELOPES);
    for (uint32_t i = 0; i < 2; i++) {
        rb_mailbox_discard(&rc_fx.mb[i]);
    }
    for (uint32_t i = 0; i < 2; i++) {
        rb_mailbox_deinit(&rc_fx.mb[i]);
    }
}
END_TEST

Suite *rb_mailbox_suite(void);

Suite *rb_mailbox_suite(void)
{
    Suite *s = suite_create("mailbox");
    TCase *tc = tcase_create("mailbox");
    tcase_add_test(tc, test_mailbox_empty_drain_runs_nothing);
    tcase_add_test(tc, test_mailbox_one_record_reaches_its_kind_handler_and_wakes_once);
    tcase_add_test(tc, test_mailbox_records_of_mixed_kinds_keep_their_order);
    tcase_add_test(tc, test_mailbox_full_queue_backlogs_in_order_instead_of_refusing);
    tcase_add_test(tc, test_mailbox_send_goes_after_records_already_written);
    tcase_add_test(tc, test_mailbox_envelope_pool_at_its_limit_refuses_then_recovers);
    tcase_add_test(tc, test_mailbox_record_larger_than_an_envelope_travels_in_a_block);
    tcase_add_test(tc, test_mailbox_block_returns_to_its_pool_on_last_unref);
    tcase_add_test(tc, test_mailbox_small_block_takes_the_smallest_class);
    tcase_add_test(tc, test_mailbox_spent_block_budget_lends_a_larger_free_block);
    tcase_add_test(tc, test_mailbox_send_to_itself_asks_for_no_sleep);
    tcase_add_test(tc, test_mailbox_discard_returns_queued_envelopes);
    tcase_add_test_raise_signal(tc, test_mailbox_unregistered_kind_asserts, SIGABRT);
    tcase_add_test_raise_signal(tc, test_mailbox_second_handler_for_a_kind_asserts, SIGABRT);
    tcase_add_test_raise_signal(tc, test_mailbox_unref_of_a_freed_block_asserts, SIGABRT);
    tcase_add_test(tc, test_mailbox_backlog_survives_a_receiver_freeing_at_once);
    suite_add_tcase(s, tc);
    return s;
}
