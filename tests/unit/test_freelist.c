/* Tests of rb_freelist (server/freelist.c): bounded growth, recycling on
 * the home thread, byte budgets shared by pools, and items freed on other
 * threads coming home in batches with none lost or handed out twice. */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "common/limits.h"
#include "server/freelist.h"
#include "tests/unit/death.h"

START_TEST(test_freelist_grows_to_max_then_refuses)
{
    rb_freelist fl;
    rb_err err;
    ck_assert_int_eq(rb_freelist_init(&fl, "t", 64, 2, 0, NULL, &err), 0);
    void *a = rb_freelist_get(&fl);
    void *b = rb_freelist_get(&fl);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_null(rb_freelist_get(&fl));
    rb_freelist_put(&fl, a);
    ck_assert_ptr_eq(rb_freelist_get(&fl), a);
    rb_freelist_put(&fl, a);
    rb_freelist_put(&fl, b);
    rb_freelist_deinit(&fl);
}
END_TEST

START_TEST(test_freelist_budget_is_shared_by_pools)
{
    rb_freelist small;
    rb_freelist large;
    rb_freelist_budget budget = {.limit_bytes = 300};
    rb_err err;
    ck_assert_int_eq(rb_freelist_init(&small, "s", 100, 10, 0, &budget, &err), 0);
    ck_assert_int_eq(rb_freelist_init(&large, "l", 200, 10, 0, &budget, &err), 0);
    void *l = rb_freelist_get(&large);
    void *s = rb_freelist_get(&small);
    ck_assert_ptr_nonnull(l);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(budget.used_bytes, 300);
    ck_assert_ptr_null(rb_freelist_get(&small));
    rb_freelist_put(&small, s);
    rb_freelist_put(&large, l);
    rb_freelist_deinit(&small);
    rb_freelist_deinit(&large);
    ck_assert_uint_eq(budget.used_bytes, 0);
}
END_TEST

START_TEST(test_freelist_zero_max_is_refused)
{
    rb_freelist fl;
    rb_err err;
    ck_assert_int_eq(rb_freelist_init(&fl, "t", 64, 0, 0, NULL, &err), RB_EINVAL);
}
END_TEST

START_TEST(test_freelist_item_not_back_at_deinit_asserts)
{
    RB_DEATH_TEST();
    rb_freelist fl;
    rb_err err;
    ck_assert_int_eq(rb_freelist_init(&fl, "t", 64, 2, 0, NULL, &err), 0);
    ck_assert_ptr_nonnull(rb_freelist_get(&fl));
    rb_freelist_deinit(&fl);
}
END_TEST

#define ITEMS  512
#define ROUNDS 200

typedef struct xfer {
    rb_freelist *fl;
    void *volatile slots[ITEMS];
    volatile int stage; /* 1: items handed over, 2: returned */
} xfer;

static void *returner(void *arg)
{
    xfer *x = arg;
    rb_freelist_bind_thread(2);
    for (int r = 0; r < ROUNDS; r++) {
        while (__atomic_load_n(&x->stage, __ATOMIC_ACQUIRE) != 1) {
            sched_yield(); /* a loaded machine may have one core for both */
        }
        for (int i = 0; i < ITEMS; i++) {
            rb_freelist_put(x->fl, x->slots[i]);
        }
        rb_freelist_flush_returns();
        __atomic_store_n(&x->stage, 2, __ATOMIC_RELEASE);
    }
    return NULL;
}

START_TEST(test_freelist_items_freed_on_another_thread_come_home_in_batches)
{
    rb_freelist fl;
    rb_err err;
    rb_freelist_bind_thread(1);
    ck_assert_int_eq(rb_freelist_init(&fl, "x", 64, ITEMS, 1, NULL, &err), 0);
    static xfer x;
    memset(&x, 0, sizeof x);
    x.fl = &fl;
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, returner, &x), 0);
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < ITEMS; i++) {
            void *p = rb_freelist_get(&fl);
            /* Every item is back each round: the pool never runs dry. */
            ck_assert_ptr_nonnull(p);
            memset(p, r & 0xff, 64);
            x.slots[i] = p;
        }
        for (int i = 1; i < ITEMS; i++) {
            ck_assert_ptr_ne(x.slots[i], x.slots[i - 1]);
        }
        __atomic_store_n(&x.stage, 1, __ATOMIC_RELEASE);
        while (__atomic_load_n(&x.stage, __ATOMIC_ACQUIRE) != 2) {
            sched_yield();
        }
        x.stage = 0;
    }
    pthread_join(t, NULL);
    ck_assert_uint_eq(fl.allocated, ITEMS);
    rb_freelist_deinit(&fl);
    rb_freelist_bind_thread(0);
}
END_TEST

Suite *rb_freelist_suite(void);

Suite *rb_freelist_suite(void)
{
    Suite *s = suite_create("freelist");
    TCase *tc = tcase_create("freelist");
    tcase_add_test(tc, test_freelist_grows_to_max_then_refuses);
    tcase_add_test(tc, test_freelist_budget_is_shared_by_pools);
    tcase_add_test(tc, test_freelist_zero_max_is_refused);
    tcase_add_test_raise_signal(tc, test_freelist_item_not_back_at_deinit_asserts, SIGABRT);
    tcase_add_test(tc, test_freelist_items_freed_on_another_thread_come_home_in_batches);
    suite_add_tcase(s, tc);
    return s;
}
