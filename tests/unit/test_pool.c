/* Tests of the bounded pool (common/pool.c): growth up to max, then only
 * recycling; and that a pool is used by the one thread that owns it. */
#include <pthread.h>
#include <signal.h>
#include <stddef.h>

#include <check.h>

#include "common/pool.h"
#include "tests/unit/death.h"

START_TEST(test_pool_grows_to_its_bound_then_recycles)
{
    rb_pool pool;
    rb_err err;
    ck_assert_int_eq(rb_pool_init(&pool, "test", 64, 3, &err), 0);
    void *items[3];
    for (int i = 0; i < 3; i++) {
        items[i] = rb_pool_get(&pool);
        ck_assert_ptr_nonnull(items[i]);
    }
    ck_assert_uint_eq(rb_pool_in_use(&pool), 3);
    ck_assert_ptr_null(rb_pool_get(&pool));
    rb_pool_put(&pool, items[1]);
    ck_assert_uint_eq(rb_pool_in_use(&pool), 2);
    /* The returned item is the one handed out next: nothing new is
     * allocated past the bound. */
    ck_assert_ptr_eq(rb_pool_get(&pool), items[1]);
    ck_assert_ptr_null(rb_pool_get(&pool));
    for (int i = 0; i < 3; i++) {
        rb_pool_put(&pool, items[i]);
    }
    ck_assert_uint_eq(rb_pool_in_use(&pool), 0);
    rb_pool_deinit(&pool);
}
END_TEST

START_TEST(test_pool_refuses_items_too_small_for_its_link)
{
    rb_pool pool;
    rb_err err;
    ck_assert_int_eq(rb_pool_init(&pool, "tiny", 1, 3, &err), RB_EINVAL);
    ck_assert_int_eq(rb_pool_init(&pool, "none", 64, 0, &err), RB_EINVAL);
}
END_TEST

typedef struct put_arg {
    rb_pool *pool;
    void *item;
} put_arg;

static void *put_elsewhere(void *p)
{
    put_arg *a = p;
    rb_pool_put(a->pool, a->item);
    return NULL;
}

START_TEST(test_pool_put_from_another_thread_aborts)
{
    RB_DEATH_TEST();
    rb_pool pool;
    rb_err err;
    ck_assert_int_eq(rb_pool_init(&pool, "owned", 64, 3, &err), 0);
    put_arg a = {.pool = &pool, .item = rb_pool_get(&pool)};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, put_elsewhere, &a), 0);
    pthread_join(t, NULL);
}
END_TEST

Suite *rb_pool_suite(void);

Suite *rb_pool_suite(void)
{
    Suite *s = suite_create("pool");
    TCase *tc = tcase_create("pool");
    tcase_add_test(tc, test_pool_grows_to_its_bound_then_recycles);
    tcase_add_test(tc, test_pool_refuses_items_too_small_for_its_link);
    tcase_add_test_raise_signal(tc, test_pool_put_from_another_thread_aborts, SIGABRT);
    suite_add_tcase(s, tc);
    return s;
}
