/* Tests of rb_spsc: the empty, one and full ring, wrap-around, batch pops,
 * bad sizes, and a two-thread stress run checking order, loss and
 * duplicates. */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>

#include <check.h>

#include "common/queue.h"
#include "tests/unit/death.h"

/* Items are small integers disguised as pointers (never NULL). */
static void *item(uintptr_t n)
{
    return (void *)(n + 1);
}

static uintptr_t item_value(void *p)
{
    return (uintptr_t)p - 1;
}

static void init_or_fail(rb_spsc *q, uint32_t slots)
{
    rb_err err = {0};
    ck_assert_int_eq(rb_spsc_init(q, slots, &err), 0);
    ck_assert_uint_eq(rb_spsc_capacity(q), slots);
    ck_assert_uint_eq(rb_spsc_count(q), 0);
}

START_TEST(test_queue_pop_empty_returns_null)
{
    rb_spsc q;
    init_or_fail(&q, 8);
    ck_assert_ptr_null(rb_spsc_pop(&q));
    void *out[4];
    ck_assert_uint_eq(rb_spsc_pop_many(&q, out, 4), 0);
    rb_spsc_deinit(&q);
}
END_TEST

START_TEST(test_queue_push_one_pops_it)
{
    rb_spsc q;
    init_or_fail(&q, 2);
    ck_assert(rb_spsc_push(&q, item(7)));
    ck_assert_uint_eq(rb_spsc_count(&q), 1);
    ck_assert_ptr_eq(rb_spsc_pop(&q), item(7));
    ck_assert_uint_eq(rb_spsc_count(&q), 0);
    ck_assert_ptr_null(rb_spsc_pop(&q));
    rb_spsc_deinit(&q);
}
END_TEST

START_TEST(test_queue_push_past_capacity_fails)
{
    rb_spsc q;
    init_or_fail(&q, 16);
    for (uintptr_t i = 0; i < 16; i++) {
        ck_assert(rb_spsc_push(&q, item(i)));
    }
    ck_assert_uint_eq(rb_spsc_count(&q), 16);
    ck_assert(!rb_spsc_push(&q, item(99)));
    ck_assert_uint_eq(rb_spsc_count(&q), 16);
    /* One pop makes room for exactly one more. */
    ck_assert_ptr_eq(rb_spsc_pop(&q), item(0));
    ck_assert(rb_spsc_push(&q, item(16)));
    ck_assert(!rb_spsc_push(&q, item(99)));
    for (uintptr_t i = 1; i <= 16; i++) {
        ck_assert_ptr_eq(rb_spsc_pop(&q), item(i));
    }
    ck_assert_ptr_null(rb_spsc_pop(&q));
    rb_spsc_deinit(&q);
}
END_TEST

START_TEST(test_queue_wraps_around_many_times_in_order)
{
    rb_spsc q;
    init_or_fail(&q, 4);
    uintptr_t next_push = 0;
    uintptr_t next_pop = 0;
    /* Varying fill levels so that every slot is used at every offset. */
    for (int round = 0; round < 10000; round++) {
        int burst = 1 + round % 4;
        for (int i = 0; i < burst; i++) {
            ck_assert(rb_spsc_push(&q, item(next_push++)));
        }
        for (int i = 0; i < burst; i++) {
            ck_assert_ptr_eq(rb_spsc_pop(&q), item(next_pop++));
        }
        ck_assert_uint_eq(rb_spsc_count(&q), 0);
    }
    ck_assert_uint_eq(next_pop, next_push);
    rb_spsc_deinit(&q);
}
END_TEST

START_TEST(test_queue_counters_wrap_past_32_bits)
{
    rb_spsc q;
    init_or_fail(&q, 8);
    /* Start just below the 32-bit wrap of the free-running counters. */
    atomic_store(&q.head, UINT32_MAX - 3);
    atomic_store(&q.tail, UINT32_MAX - 3);
    q.head_cache = UINT32_MAX - 3;
    q.tail_cache = UINT32_MAX - 3;
    for (uintptr_t i = 0; i < 8; i++) {
        ck_assert(rb_spsc_push(&q, item(i)));
    }
    ck_assert(!rb_spsc_push(&q, item(99)));
    ck_assert_uint_eq(rb_spsc_count(&q), 8);
    for (uintptr_t i = 0; i < 8; i++) {
        ck_assert_ptr_eq(rb_spsc_pop(&q), item(i));
    }
    ck_assert_ptr_null(rb_spsc_pop(&q));
    rb_spsc_deinit(&q);
}
END_TEST

START_TEST(test_queue_pop_many_partial_then_rest)
{
    rb_spsc q;
    init_or_fail(&q, 8);
    for (uintptr_t i = 0; i < 5; i++) {
        ck_assert(rb_spsc_push(&q, item(i)));
    }
    void *out[8] = {0};
    ck_assert_uint_eq(rb_spsc_pop_many(&q, out, 3), 3);
    for (uintptr_t i = 0; i < 3; i++) {
        ck_assert_ptr_eq(out[i], item(i));
    }
    ck_assert_uint_eq(rb_spsc_count(&q), 2);
    /* Asking for more than there is returns what there is. */
    ck_assert_uint_eq(rb_spsc_pop_many(&q, out, 8), 2);
    ck_assert_ptr_eq(out[0], item(3));
    ck_assert_ptr_eq(out[1], item(4));
    ck_assert_uint_eq(rb_spsc_pop_many(&q, out, 8), 0);
    ck_assert_uint_eq(rb_spsc_pop_many(&q, out, 0), 0);
    rb_spsc_deinit(&q);
}
END_TEST

START_TEST(test_queue_pop_many_full_ring_across_wrap)
{
    rb_spsc q;
    init_or_fail(&q, 8);
    /* Move the start to the middle so the full batch wraps the array. */
    for (uintptr_t i = 0; i < 5; i++) {
        ck_assert(rb_spsc_push(&q, item(i)));
        ck_assert_ptr_eq(rb_spsc_pop(&q), item(i));
    }
    for (uintptr_t i = 0; i < 8; i++) {
        ck_assert(rb_spsc_push(&q, item(100 + i)));
    }
    void *out[8] = {0};
    ck_assert_uint_eq(rb_spsc_pop_many(&q, out, 8), 8);
    for (uintptr_t i = 0; i < 8; i++) {
        ck_assert_ptr_eq(out[i], item(100 + i));
    }
    ck_assert_uint_eq(rb_spsc_count(&q), 0);
    ck_assert(rb_spsc_push(&q, item(1)));
    rb_spsc_deinit(&q);
}
END_TEST

START_TEST(test_queue_init_rejects_bad_sizes)
{
    static const uint32_t bad[] = {
        0, 1, 3, 6, 12, 1000, RB_SPSC_SLOTS_MAX + 1, RB_SPSC_SLOTS_MAX * 2, UINT32_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rb_spsc q;
        rb_err err = {0};
        ck_assert_int_eq(rb_spsc_init(&q, bad[i], &err), RB_EINVAL);
        ck_assert_int_eq(err.code, RB_EINVAL);
        ck_assert_str_ne(err.msg, "");
    }
    rb_spsc q;
    init_or_fail(&q, RB_SPSC_SLOTS_MAX);
    rb_spsc_deinit(&q);
}
END_TEST

START_TEST(test_queue_push_null_asserts)
{
    RB_DEATH_TEST();
    rb_spsc q;
    init_or_fail(&q, 4);
    rb_spsc_push(&q, NULL);
}
END_TEST

/* Two threads: the producer pushes STRESS_ITEMS consecutive integers; the
 * consumer pops (single and batched) and checks that each is the next one. */
#define STRESS_ITEMS 2000000u

static void *stress_producer(void *arg)
{
    rb_spsc *q = arg;
    for (uintptr_t i = 0; i < STRESS_ITEMS;) {
        if (rb_spsc_push(q, item(i))) {
            i++;
        } else {
            sched_yield();
        }
    }
    return NULL;
}

static void *stress_consumer(void *arg)
{
    rb_spsc *q = arg;
    uintptr_t expected = 0;
    uintptr_t bad = 0;
    void *batch[16];
    while (expected < STRESS_ITEMS) {
        uint32_t n;
        if (expected % 3 == 0) {
            n = rb_spsc_pop_many(q, batch, 16);
        } else {
            batch[0] = rb_spsc_pop(q);
            n = batch[0] != NULL;
        }
        if (n == 0) {
            sched_yield();
        }
        for (uint32_t i = 0; i < n; i++) {
            if (item_value(batch[i]) != expected) {
                bad++;
            }
            expected++;
        }
    }
    return (void *)bad;
}

START_TEST(test_queue_two_threads_keep_order_without_loss_or_dup)
{
    rb_spsc q;
    init_or_fail(&q, 64);
    pthread_t producer;
    pthread_t consumer;
    ck_assert_int_eq(pthread_create(&consumer, NULL, stress_consumer, &q), 0);
    ck_assert_int_eq(pthread_create(&producer, NULL, stress_producer, &q), 0);
    void *bad = NULL;
    ck_assert_int_eq(pthread_join(producer, NULL), 0);
    ck_assert_int_eq(pthread_join(consumer, &bad), 0);
    ck_assert_ptr_null(bad);
    /* The consumer stopped at exactly STRESS_ITEMS: nothing extra arrived. */
    ck_assert_ptr_null(rb_spsc_pop(&q));
    ck_assert_uint_eq(rb_spsc_count(&q), 0);
    rb_spsc_deinit(&q);
}
END_TEST

Suite *rb_queue_suite(void);

Suite *rb_queue_suite(void)
{
    Suite *s = suite_create("queue");
    TCase *tc = tcase_create("spsc");
    tcase_add_test(tc, test_queue_pop_empty_returns_null);
    tcase_add_test(tc, test_queue_push_one_pops_it);
    tcase_add_test(tc, test_queue_push_past_capacity_fails);
    tcase_add_test(tc, test_queue_wraps_around_many_times_in_order);
    tcase_add_test(tc, test_queue_counters_wrap_past_32_bits);
    tcase_add_test(tc, test_queue_pop_many_partial_then_rest);
    tcase_add_test(tc, test_queue_pop_many_full_ring_across_wrap);
    tcase_add_test(tc, test_queue_init_rejects_bad_sizes);
    tcase_add_test_raise_signal(tc, test_queue_push_null_asserts, SIGABRT);
    suite_add_tcase(s, tc);

    TCase *stress = tcase_create("stress");
    tcase_set_timeout(stress, 120);
    tcase_add_test(stress, test_queue_two_threads_keep_order_without_loss_or_dup);
    suite_add_tcase(s, stress);
    return s;
}
