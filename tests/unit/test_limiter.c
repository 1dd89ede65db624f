/* Tests of token buckets and the source-address table (server/limiter.c):
 * rates, bursts, refill over time and backwards clocks; per-address
 * connection caps, connection rates and failed sign-ins; a storm from one
 * address refused while another address is admitted; the table's bound and
 * its sweep of idle entries. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <check.h>

#include "server/limiter.h"
#include "tests/unit/death.h"

Suite *rb_limiter_suite(void);

START_TEST(test_bucket_starts_full_and_refuses_past_the_burst)
{
    rb_bucket b;
    rb_bucket_init(&b, 10, 3, 1000);
    ck_assert(rb_bucket_full(&b, 1000));
    ck_assert(rb_bucket_take(&b, 1, 1000));
    ck_assert(rb_bucket_take(&b, 2, 1000));
    ck_assert(!rb_bucket_take(&b, 1, 1000));
    ck_assert(!rb_bucket_full(&b, 1000));
}
END_TEST

START_TEST(test_bucket_refills_at_its_rate_and_caps_at_the_burst)
{
    rb_bucket b;
    rb_bucket_init(&b, 10, 5, 0); /* one token per 100 ms */
    ck_assert(rb_bucket_take(&b, 5, 0));
    ck_assert_uint_eq(rb_bucket_wait_ms(&b, 1, 0), 100);
    ck_assert(!rb_bucket_take(&b, 1, 99));
    ck_assert(rb_bucket_take(&b, 1, 100));
    ck_assert_uint_eq(rb_bucket_wait_ms(&b, 5, 100), 500);
    /* An hour later it holds the burst, not more. */
    ck_assert(rb_bucket_full(&b, 3600000));
    ck_assert(rb_bucket_take(&b, 5, 3600000));
    ck_assert(!rb_bucket_take(&b, 1, 3600000));
}
END_TEST

START_TEST(test_bucket_give_returns_taken_tokens_up_to_the_burst)
{
    rb_bucket b;
    rb_bucket_init(&b, 10, 2, 0);
    ck_assert(rb_bucket_take(&b, 2, 0));
    ck_assert(!rb_bucket_take(&b, 1, 0));
    rb_bucket_give(&b, 1);
    ck_assert(rb_bucket_take(&b, 1, 0));
    ck_assert(!rb_bucket_take(&b, 1, 0));
    rb_bucket_give(&b, 5); /* more than was taken: capped at the burst */
    ck_assert(rb_bucket_full(&b, 0));
    ck_assert(rb_bucket_take(&b, 2, 0));
    ck_assert(!rb_bucket_take(&b, 1, 0));
}
END_TEST

START_TEST(test_bucket_partial_refill_is_kept_across_takes)
{
    rb_bucket b;
    rb_bucket_init(&b, 3, 1, 0); /* one token per 333.3 ms */
    ck_assert(rb_bucket_take(&b, 1, 0));
    ck_assert(!rb_bucket_take(&b, 1, 200));
    ck_assert(!rb_bucket_take(&b, 1, 333));
    ck_assert(rb_bucket_take(&b, 1, 334));
}
END_TEST

START_TEST(test_bucket_per_minute_rate_is_exact)
{
    rb_bucket b;
    rb_bucket_init_period(&b, 30, 60000, 30, 0); /* one per 2 s */
    ck_assert(rb_bucket_take(&b, 30, 0));
    ck_assert_uint_eq(rb_bucket_wait_ms(&b, 1, 0), 2000);
    ck_assert(!rb_bucket_take(&b, 1, 1999));
    ck_assert(rb_bucket_take(&b, 1, 2000));
}
END_TEST

START_TEST(test_bucket_backwards_clock_adds_nothing)
{
    rb_bucket b;
    rb_bucket_init(&b, 1000, 1, 5000);
    ck_assert(rb_bucket_take(&b, 1, 5000));
    ck_assert(!rb_bucket_take(&b, 1, 1000));
    ck_assert(rb_bucket_take(&b, 1, 5001));
}
END_TEST

START_TEST(test_bucket_largest_rate_and_burst_do_not_overflow)
{
    rb_bucket b;
    rb_bucket_init(&b, 1000000000u, 1000000000u, 0);
    ck_assert(rb_bucket_take(&b, 1000000000u, 0));
    ck_assert(!rb_bucket_take(&b, 1, 0));
    ck_assert(rb_bucket_take(&b, 1000000, 1));
    ck_assert(rb_bucket_full(&b, UINT64_MAX / 2));
    ck_assert_uint_eq(rb_bucket_wait_ms(&b, 1000000001u, 0), UINT64_MAX);
}
END_TEST

START_TEST(test_bucket_zero_rate_aborts)
{
    RB_DEATH_TEST();
    rb_bucket b;
    rb_bucket_init(&b, 0, 1, 0);
}
END_TEST

/* ---- addresses ---- */

static rb_addr_key v4(const char *text)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    ck_assert_int_eq(inet_pton(AF_INET, text, &sa.sin_addr), 1);
    rb_addr_key k;
    ck_assert(rb_addr_key_of((struct sockaddr *)&sa, sizeof sa, &k));
    return k;
}

static rb_addr_table *table(uint32_t conns, uint32_t per_addr, uint32_t rate, uint32_t failures)
{
    rb_addr_table *t = NULL;
    rb_err err;
    rb_addr_limits l = {
        .conns_per_address = per_addr, .conn_rate_per_s = rate, .failures_per_minute = failures};
    ck_assert_int_eq(rb_addr_table_new(&t, conns, l, &err), 0);
    return t;
}

START_TEST(test_addr_ipv4_and_its_mapped_ipv6_form_are_one_key)
{
    struct sockaddr_in6 sa6 = {.sin6_family = AF_INET6};
    ck_assert_int_eq(inet_pton(AF_INET6, "::ffff:10.0.0.1", &sa6.sin6_addr), 1);
    rb_addr_key a = v4("10.0.0.1");
    rb_addr_key b;
    ck_assert(rb_addr_key_of((struct sockaddr *)&sa6, sizeof sa6, &b));
    ck_assert_mem_eq(a.bytes, b.bytes, 16);
    struct sockaddr sa = {.sa_family = AF_UNIX};
    ck_assert(!rb_addr_key_of(&sa, sizeof sa, &b));
}
END_TEST

START_TEST(test_addr_per_address_cap_counts_and_releases)
{
    rb_addr_table *t = table(100, 2, 1000, 10);
    rb_addr_key a = v4("10.0.0.1");
    ck_assert_int_eq(rb_addr_admit(t, &a, 0), RB_ADMIT_OK);
    ck_assert_int_eq(rb_addr_admit(t, &a, 0), RB_ADMIT_OK);
    ck_assert_int_eq(rb_addr_admit(t, &a, 0), RB_ADMIT_PER_ADDRESS);
    ck_assert_uint_eq(rb_addr_conns(t, &a), 2);
    rb_addr_release(t, &a);
    ck_assert_int_eq(rb_addr_admit(t, &a, 0), RB_ADMIT_OK);
    ck_assert_str_eq(rb_admit_name(RB_ADMIT_PER_ADDRESS), "max_connections_per_address");
    rb_addr_table_free(t);
}
END_TEST

START_TEST(test_addr_storm_from_one_address_is_refused_while_another_connects)
{
    rb_addr_table *t = table(1000, 1000000, 100, 10);
    rb_addr_key storm = v4("192.0.2.7");
    rb_addr_key other = v4("198.51.100.1");
    int admitted = 0;
    for (int i = 0; i < 10000; i++) {
        rb_admit a = rb_addr_admit(t, &storm, 5000);
        ck_assert(a == RB_ADMIT_OK || a == RB_ADMIT_RATE);
        admitted += a == RB_ADMIT_OK;
    }
    ck_assert_int_eq(admitted, 100); /* the burst: one second's worth */
    ck_assert_int_eq(rb_addr_admit(t, &other, 5000), RB_ADMIT_OK);
    /* Refused attempts use up rate too: the storm stays refused. */
    ck_assert_int_eq(rb_addr_admit(t, &storm, 5005), RB_ADMIT_RATE);
    ck_assert_int_eq(rb_addr_admit(t, &storm, 6100), RB_ADMIT_OK);
    rb_addr_table_free(t);
}
END_TEST

START_TEST(test_addr_failed_sign_ins_refuse_the_address_for_a_while)
{
    rb_addr_table *t = table(100, 100, 1000, 3);
    rb_addr_key a = v4("10.0.0.9");
    ck_assert(!rb_addr_failure(t, &a, 0));
    ck_assert(!rb_addr_failure(t, &a, 0));
    ck_assert(rb_addr_failure(t, &a, 0));
    ck_assert_int_eq(rb_addr_admit(t, &a, 10), RB_ADMIT_FAILURES);
    /* 3 a minute: one more is allowed 20 s later. */
    ck_assert_int_eq(rb_addr_admit(t, &a, 19999), RB_ADMIT_FAILURES);
    ck_assert_int_eq(rb_addr_admit(t, &a, 20000), RB_ADMIT_OK);
    rb_addr_key b = v4("10.0.0.10");
    ck_assert_int_eq(rb_addr_admit(t, &b, 10), RB_ADMIT_OK);
    rb_addr_table_free(t);
}
END_TEST

START_TEST(test_addr_table_is_bounded_and_sweeps_idle_addresses)
{
    rb_addr_table *t = table(16, 10, 1, 10); /* 64 slots, 48 usable */
    char text[32];
    rb_addr_key keys[64];
    int ok = 0;
    for (int i = 0; i < 64; i++) {
        snprintf(text, sizeof text, "10.1.%d.%d", i / 8, i % 8);
        keys[i] = v4(text);
        rb_admit a = rb_addr_admit(t, &keys[i], 0);
        ck_assert(a == RB_ADMIT_OK || a == RB_ADMIT_TABLE_FULL);
        ok += a == RB_ADMIT_OK;
    }
    ck_assert_int_eq(ok, 48);
    ck_assert_uint_eq(rb_addr_tracked(t), 48);
    /* Closed connections with refilled buckets carry nothing: swept. */
    for (int i = 0; i < 40; i++) {
        rb_addr_release(t, &keys[i]);
    }
    ck_assert_int_eq(rb_addr_admit(t, &keys[63], 500), RB_ADMIT_TABLE_FULL); /* not refilled */
    ck_assert_int_eq(rb_addr_admit(t, &keys[63], 2000), RB_ADMIT_OK);
    ck_assert_uint_eq(rb_addr_tracked(t), 9);
    /* The entries that hold connections survived the sweep. */
    for (int i = 40; i < 48; i++) {
        ck_assert_uint_eq(rb_addr_conns(t, &keys[i]), 1);
    }
    rb_addr_table_free(t);
}
END_TEST

START_TEST(test_addr_release_of_an_unknown_address_aborts)
{
    RB_DEATH_TEST();
    rb_addr_table *t = table(16, 10, 1, 10);
    rb_addr_key a = v4("10.0.0.1");
    rb_addr_release(t, &a);
}
END_TEST

Suite *rb_limiter_suite(void)
{
    Suite *s = suite_create("limiter");
    TCase *tc = tcase_create("bucket");
    tcase_add_test(tc, test_bucket_starts_full_and_refuses_past_the_burst);
    tcase_add_test(tc, test_bucket_refills_at_its_rate_and_caps_at_the_burst);
    tcase_add_test(tc, test_bucket_give_returns_taken_tokens_up_to_the_burst);
    tcase_add_test(tc, test_bucket_partial_refill_is_kept_across_takes);
    tcase_add_test(tc, test_bucket_per_minute_rate_is_exact);
    tcase_add_test(tc, test_bucket_backwards_clock_adds_nothing);
    tcase_add_test(tc, test_bucket_largest_rate_and_burst_do_not_overflow);
    tcase_add_test_raise_signal(tc, test_bucket_zero_rate_aborts, SIGABRT);
    suite_add_tcase(s, tc);
    tc = tcase_create("addresses");
    tcase_add_test(tc, test_addr_ipv4_and_its_mapped_ipv6_form_are_one_key);
    tcase_add_test(tc, test_addr_per_address_cap_counts_and_releases);
    tcase_add_test(tc, test_addr_storm_from_one_address_is_refused_while_another_connects);
    tcase_add_test(tc, test_addr_failed_sign_ins_refuse_the_address_for_a_while);
    tcase_add_test(tc, test_addr_table_is_bounded_and_sweeps_idle_addresses);
    tcase_add_test_raise_signal(tc, test_addr_release_of_an_unknown_address_aborts, SIGABRT);
    suite_add_tcase(s, tc);
    return s;
}
