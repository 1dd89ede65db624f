/* Tests of rb_holdq, the FIFO of paused publishers: empty, one, order of
 * many, a link that goes back to the head, removal from the middle and
 * the ends, removing a link that is not queued, and queuing one twice. */
#include <signal.h>
#include <stddef.h>

#include <check.h>

#include "server/holdq.h"
#include "tests/unit/death.h"

#define LINKS 8

/* The queue's links in order, into out; returns their count. */
static uint32_t order(const rb_holdq *q, rb_hold_link *base, int *out)
{
    uint32_t n = 0;
    const rb_hold_link *prev = NULL;
    for (const rb_hold_link *l = q->head; l != NULL; l = l->next) {
        ck_assert_ptr_eq(l->prev, prev);
        ck_assert(l->queued);
        out[n++] = (int)(l - base);
        prev = l;
    }
    ck_assert_ptr_eq(q->tail, prev);
    ck_assert_uint_eq(n, q->count);
    return n;
}

START_TEST(test_holdq_pop_empty_returns_null)
{
    rb_holdq q = {0};
    ck_assert_ptr_null(rb_holdq_pop(&q));
    ck_assert_uint_eq(q.count, 0);
}
END_TEST

START_TEST(test_holdq_push_one_pops_it_unqueued)
{
    rb_holdq q = {0};
    rb_hold_link l = {0};
    rb_holdq_push_tail(&q, &l);
    ck_assert_uint_eq(q.count, 1);
    ck_assert_ptr_eq(rb_holdq_pop(&q), &l);
    ck_assert(!l.queued);
    ck_assert_ptr_null(q.head);
    ck_assert_ptr_null(q.tail);
    ck_assert_ptr_null(rb_holdq_pop(&q));
}
END_TEST

START_TEST(test_holdq_pops_in_the_order_pushed)
{
    rb_holdq q = {0};
    rb_hold_link l[LINKS] = {0};
    for (int i = 0; i < LINKS; i++) {
        rb_holdq_push_tail(&q, &l[i]);
    }
    for (int i = 0; i < LINKS; i++) {
        ck_assert_ptr_eq(rb_holdq_pop(&q), &l[i]);
    }
    ck_assert_uint_eq(q.count, 0);
}
END_TEST

START_TEST(test_holdq_push_head_goes_before_the_rest)
{
    rb_holdq q = {0};
    rb_hold_link l[3] = {0};
    rb_holdq_push_tail(&q, &l[1]);
    rb_holdq_push_tail(&q, &l[2]);
    rb_holdq_push_head(&q, &l[0]);
    int got[3];
    ck_assert_uint_eq(order(&q, l, got), 3);
    ck_assert_int_eq(got[0], 0);
    ck_assert_int_eq(got[1], 1);
    ck_assert_int_eq(got[2], 2);
    /* A popped head that could not go on goes back first. */
    rb_hold_link *h = rb_holdq_pop(&q);
    rb_holdq_push_head(&q, h);
    ck_assert_ptr_eq(q.head, &l[0]);
}
END_TEST

START_TEST(test_holdq_remove_middle_and_ends_keeps_the_rest_in_order)
{
    rb_holdq q = {0};
    rb_hold_link l[5] = {0};
    for (int i = 0; i < 5; i++) {
        rb_holdq_push_tail(&q, &l[i]);
    }
    rb_holdq_remove(&q, &l[2]);
    rb_holdq_remove(&q, &l[0]);
    rb_holdq_remove(&q, &l[4]);
    ck_assert(!l[2].queued && !l[0].queued && !l[4].queued);
    int got[5];
    ck_assert_uint_eq(order(&q, l, got), 2);
    ck_assert_int_eq(got[0], 1);
    ck_assert_int_eq(got[1], 3);
    /* Removed links may be queued again, at the tail. */
    rb_holdq_push_tail(&q, &l[2]);
    ck_assert_uint_eq(order(&q, l, got), 3);
    ck_assert_int_eq(got[2], 2);
}
END_TEST

START_TEST(test_holdq_remove_unqueued_changes_nothing)
{
    rb_holdq q = {0};
    rb_hold_link a = {0};
    rb_hold_link b = {0};
    rb_holdq_push_tail(&q, &a);
    rb_holdq_remove(&q, &b);
    ck_assert_uint_eq(q.count, 1);
    ck_assert_ptr_eq(q.head, &a);
    rb_holdq_remove(&q, &a);
    rb_holdq_remove(&q, &a);
    ck_assert_uint_eq(q.count, 0);
    ck_assert_ptr_null(q.head);
}
END_TEST

START_TEST(test_holdq_push_queued_link_asserts)
{
    RB_DEATH_TEST();
    rb_holdq q = {0};
    rb_hold_link a = {0};
    rb_holdq_push_tail(&q, &a);
    rb_holdq_push_head(&q, &a);
}
END_TEST

Suite *rb_holdq_suite(void);

Suite *rb_holdq_suite(void)
{
    Suite *s = suite_create("holdq");
    TCase *tc = tcase_create("fifo");
    tcase_add_test(tc, test_holdq_pop_empty_returns_null);
    tcase_add_test(tc, test_holdq_push_one_pops_it_unqueued);
    tcase_add_test(tc, test_holdq_pops_in_the_order_pushed);
    tcase_add_test(tc, test_holdq_push_head_goes_before_the_rest);
    tcase_add_test(tc, test_holdq_remove_middle_and_ends_keeps_the_rest_in_order);
    tcase_add_test(tc, test_holdq_remove_unqueued_changes_nothing);
    tcase_add_test_raise_signal(tc, test_holdq_push_queued_link_asserts, SIGABRT);
    suite_add_tcase(s, tc);
    return s;
}
