/* The session's reconnect delay (client/backoff.h) and the session's own
 * decisions that need no server: which errors stop it at once, and the
 * attempts limit. The reconnects themselves run against the real daemon in
 * tests/integration/test_resilient.py. */
#include <stdint.h>
#include <string.h>

#include <check.h>

#include "client/backoff.h"
#include "client/ringbus.h"

Suite *rb_backoff_suite(void);

#define DRAWS 20000

START_TEST(test_backoff_stays_inside_the_doubling_ceiling_and_the_cap)
{
    uint64_t rnd = 42;
    for (uint32_t attempt = 1; attempt <= 40; attempt++) {
        uint64_t ceiling = 100;
        for (uint32_t i = 1; i < attempt && ceiling < 10000; i++) {
            ceiling *= 2;
        }
        ceiling = ceiling > 10000 ? 10000 : ceiling;
        uint32_t lo = UINT32_MAX, hi = 0;
        double sum = 0;
        for (int i = 0; i < DRAWS; i++) {
            uint32_t d = rb_backoff_ms(100, 10000, attempt, rb_backoff_next(&rnd));
            ck_assert_uint_le(d, ceiling);
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
            sum += d;
        }
        /* Full jitter: the whole range [0, ceiling] is used, evenly. */
        ck_assert_uint_le(lo, ceiling / 20);
        ck_assert_uint_ge(hi, ceiling - ceiling / 20);
        double mean = sum / DRAWS;
        ck_assert_msg(mean > ceiling * 0.45 && mean < ceiling * 0.55,
                      "attempt %u: mean %.1f of ceiling %llu", attempt, mean,
                      (unsigned long long)ceiling);
    }
}
END_TEST

START_TEST(test_backoff_of_huge_attempts_and_bounds_does_not_overflow)
{
    ck_assert_uint_le(rb_backoff_ms(UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT64_MAX), UINT32_MAX);
    ck_assert_uint_eq(rb_backoff_ms(0, 0, 7, 12345), 0);
    /* A base above the cap is the cap. */
    for (uint64_t r = 0; r < 1000; r++) {
        ck_assert_uint_le(rb_backoff_ms(5000, 300, 1, r * 7919), 300);
    }
}
END_TEST

static ringbus_session_options options_for(const char *const *urls, size_t n)
{
    ringbus_session_options o;
    ringbus_session_options_init(&o);
    o.urls = urls;
    o.url_count = n;
    return o;
}

START_TEST(test_session_refuses_a_bad_url_or_no_urls_at_once)
{
    ringbus_session *s = NULL;
    ringbus_error err;
    const char *bad[] = {"carrier-pigeon://x"};
    ringbus_session_options o = options_for(bad, 1);
    o.retry_initial_connect = true; /* not retryable: it fails anyway */
    int rc = ringbus_session_open(&o, &s, &err);
    ck_assert_int_lt(rc, 0);
    ck_assert_int_ne(rc, RINGBUS_ESYS);
    ck_assert_ptr_null(s);
    o = options_for(bad, 0);
    ck_assert_int_eq(ringbus_session_open(&o, &s, &err), RINGBUS_EINVAL);
    const char *many[RINGBUS_SESSION_URLS_MAX + 1];
    for (size_t i = 0; i < RINGBUS_SESSION_URLS_MAX + 1; i++) {
        many[i] = "tcp://127.0.0.1:1";
    }
    o = options_for(many, RINGBUS_SESSION_URLS_MAX + 1);
    ck_assert_int_eq(ringbus_session_open(&o, &s, &err), RINGBUS_EINVAL);
}
END_TEST

START_TEST(test_session_without_a_server_fails_open_or_gives_up_after_its_attempts)
{
    /* Port 1 on loopback: nothing listens, the connect is refused. */
    const char *urls[] = {"tcp://127.0.0.1:1", "tcp://[::1]:1"};
    ringbus_session *s = NULL;
    ringbus_error err;
    ringbus_session_options o = options_for(urls, 2);
    ck_assert_int_eq(ringbus_session_open(&o, &s, &err), RINGBUS_ESYS);
    ck_assert_ptr_null(s);

    o.retry_initial_connect = true;
    o.reconnect_base_ms = 1;
    o.reconnect_cap_ms = 4;
    o.reconnect_attempts_max = 3;
    ck_assert_int_eq(ringbus_session_open(&o, &s, &err), 0);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_ge(ringbus_session_fd(s), 0);
    ck_assert_ptr_null(ringbus_session_conn(s));
    uint32_t attempts_seen = 0;
    ringbus_event ev;
    for (;;) {
        int rc = ringbus_session_next_event(s, &ev, 5000, &err);
        ck_assert_int_eq(rc, 1);
        if (ev.kind != RINGBUS_EVENT_RECONNECTING) {
            break;
        }
        attempts_seen++;
        ck_assert_uint_eq(ev.attempt, attempts_seen);
        ck_assert_uint_le(ev.delay_ms, 4);
        ck_assert_int_eq(ev.code, RINGBUS_WIRE_UNAVAILABLE);
    }
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_CLOSED);
    ck_assert_int_eq(ev.code, RINGBUS_WIRE_UNAVAILABLE);
    ck_assert_msg(strstr(ev.message, "gave up after 3 attempts") != NULL, "%s", ev.message);
    ck_assert_uint_eq(attempts_seen, 3);
    ck_assert_int_eq(ringbus_session_next_event(s, &ev, 0, &err), RINGBUS_ECLOSED);
    ringbus_session_close(s);
}
END_TEST

typedef struct answers {
    int count;
    int status;
} answers;

static void count_answer(const ringbus_publish_result *res, void *ctx)
{
    answers *a = ctx;
    a->count++;
    a->status = res->status;
}

START_TEST(test_publishes_waiting_for_a_connection_are_bounded_and_answered_once_at_close)
{
    const char *urls[] = {"tcp://127.0.0.1:1"};
    ringbus_session_options o = options_for(urls, 1);
    ringbus_options co;
    ringbus_options_init(&co);
    co.publish_window = 3;
    o.conn = &co;
    o.retry_initial_connect = true;
    o.reconnect_base_ms = 60000; /* no attempt during the test */
    ringbus_session *s = NULL;
    ringbus_error err;
    ck_assert_int_eq(ringbus_session_open(&o, &s, &err), 0);
    answers a = {0};
    uint64_t ids[3];
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(
            ringbus_session_publish(s, "t", 1, NULL, 0, "x", 1, &ids[i], &err, count_answer, &a),
            0);
    }
    ck_assert_uint_lt(ids[0], ids[1]);
    ck_assert_int_eq(
        ringbus_session_publish(s, "t", 1, NULL, 0, "x", 1, NULL, &err, count_answer, &a),
        RINGBUS_EAGAIN);
    ck_assert_int_eq(
        ringbus_session_publish(s, "", 0, NULL, 0, "x", 1, NULL, &err, count_answer, &a),
        RINGBUS_EINVAL);
    ck_assert_int_eq(a.count, 0);
    ringbus_session_close(s);
    ck_assert_int_eq(a.count, 3);
    ck_assert_int_eq(a.status, RINGBUS_ECLOSED);
}
END_TEST

START_TEST(test_session_mutate_keeps_the_topics_and_refuses_the_session_wave_bit)
{
    const char *urls[] = {"tcp://127.0.0.1:1"};
    ringbus_session_options o = options_for(urls, 1);
    o.retry_initial_connect = true;
    o.reconnect_base_ms = 60000;
    o.topics_max = 2;
    ringbus_session *s = NULL;
    ringbus_error err;
    ck_assert_int_eq(ringbus_session_open(&o, &s, &err), 0);
    ringbus_add adds[] = {{.topic = "a", .cursor = 7}, {.topic = "b", .is_now = true}};
    ck_assert_int_eq(
        ringbus_session_mutate(s, RINGBUS_SESSION_WAVE | 1, 0, adds, 2, NULL, 0, false, &err),
        RINGBUS_EINVAL);
    ck_assert_int_eq(ringbus_session_mutate(s, 1, 0, adds, 2, NULL, 0, false, &err), 0);
    uint64_t seq = 99;
    ck_assert_int_eq(ringbus_session_cursor(s, "a", &seq, NULL), 1);
    ck_assert_uint_eq(seq, 7);
    ck_assert_int_eq(ringbus_session_cursor(s, "b", &seq, NULL), 1);
    ck_assert_uint_eq(seq, 0);
    ringbus_add more[] = {{.topic = "c", .cursor = 0}};
    ck_assert_int_eq(ringbus_session_mutate(s, 2, 0, more, 1, NULL, 0, false, &err),
                     RINGBUS_ELIMIT);
    const char *gone[] = {"a"};
    ck_assert_int_eq(ringbus_session_mutate(s, 2, 0, more, 1, gone, 1, false, &err), 0);
    ck_assert_int_eq(ringbus_session_cursor(s, "a", &seq, NULL), 0);
    ck_assert_int_eq(ringbus_session_cursor(s, "c", &seq, NULL), 1);
    ringbus_session_close(s);
}
END_TEST

Suite *rb_backoff_suite(void)
{
    Suite *s = suite_create("backoff");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_backoff_stays_inside_the_doubling_ceiling_and_the_cap);
    tcase_add_test(tc, test_backoff_of_huge_attempts_and_bounds_does_not_overflow);
    tcase_add_test(tc, test_session_refuses_a_bad_url_or_no_urls_at_once);
    tcase_add_test(tc, test_session_without_a_server_fails_open_or_gives_up_after_its_attempts);
    tcase_add_test(tc,
                   test_publishes_waiting_for_a_connection_are_bounded_and_answered_once_at_close);
    tcase_add_test(tc, test_session_mutate_keeps_the_topics_and_refuses_the_session_wave_bit);
    suite_add_tcase(s, tc);
    return s;
}
