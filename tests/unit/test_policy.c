/* Tests of topic patterns (common/pattern.c) and the permission trie
 * (server/policy.c): NATS wildcard semantics, deny wins, reserved '$'
 * names, limits, and that a check's cost does not grow with unrelated
 * patterns. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <check.h>

#include "common/pattern.h"
#include "server/policy.h"
#include "tests/unit/death.h"

Suite *rb_policy_suite(void);

static rb_bytes str(const char *s)
{
    return (rb_bytes){(const uint8_t *)s, strlen(s)};
}

static rb_policy *with(const char *const *allow, const char *const *deny)
{
    rb_policy *p = rb_policy_new();
    ck_assert_ptr_nonnull(p);
    rb_err err;
    for (; allow != NULL && *allow != NULL; allow++) {
        ck_assert_msg(rb_policy_add(p, RB_POLICY_SUBSCRIBE, false, str(*allow), &err) == 0, "%s",
                      err.msg);
        ck_assert_int_eq(rb_policy_add(p, RB_POLICY_PUBLISH, false, str(*allow), &err), 0);
    }
    for (; deny != NULL && *deny != NULL; deny++) {
        ck_assert_int_eq(rb_policy_add(p, RB_POLICY_SUBSCRIBE, true, str(*deny), &err), 0);
        ck_assert_int_eq(rb_policy_add(p, RB_POLICY_PUBLISH, true, str(*deny), &err), 0);
    }
    return p;
}

static bool sub_ok(const rb_policy *p, const char *topic)
{
    return rb_policy_allows(p, RB_POLICY_SUBSCRIBE, str(topic));
}

static bool pub_ok(const rb_policy *p, const char *topic)
{
    return rb_policy_allows(p, RB_POLICY_PUBLISH, str(topic));
}

/* ---- pattern syntax ---- */

START_TEST(test_pattern_accepts_literals_and_whole_segment_wildcards)
{
    static const char *const good[] = {"orders",   "orders.eu", "*",      ">",       "orders.*",
                                       "orders.>", "*.eu.>",    "$sys.>", "a.*.*.b", "日本.*"};
    rb_err err;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        ck_assert_msg(rb_pattern_validate(str(good[i]), &err) == 0, "%s: %s", good[i], err.msg);
    }
}
END_TEST

START_TEST(test_pattern_refuses_partial_wildcards_with_offset)
{
    rb_err err;
    ck_assert_int_eq(rb_pattern_validate(str("orders.eu*"), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "pattern: '*' and '>' must be a whole segment (byte 7)");
    ck_assert_int_eq(rb_pattern_validate(str("a>"), &err), RB_EINVAL);
}
END_TEST

START_TEST(test_pattern_refuses_gt_before_the_last_segment)
{
    rb_err err;
    ck_assert_int_eq(rb_pattern_validate(str("a.>.b"), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "pattern: '>' must be the last segment (byte 2)");
}
END_TEST

START_TEST(test_pattern_refuses_empty_segments)
{
    rb_err err;
    ck_assert_int_eq(rb_pattern_validate(str("a..b"), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "pattern: empty segment at byte 2");
    ck_assert_int_eq(rb_pattern_validate(str(".a"), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "pattern: empty segment at byte 0");
    ck_assert_int_eq(rb_pattern_validate(str("a."), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "pattern: empty segment at byte 2");
}
END_TEST

START_TEST(test_pattern_refuses_what_a_topic_may_not_hold)
{
    rb_err err;
    ck_assert_int_eq(rb_pattern_validate(str(""), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "pattern: empty");
    ck_assert_int_eq(rb_pattern_validate(str("a b"), &err), RB_EINVAL);
    ck_assert_str_eq(err.msg, "pattern: contains a space (U+0020) at byte 1");
    char big[RB_TOPIC_BYTES_MAX + 2];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ck_assert_int_eq(rb_pattern_validate(str(big), &err), RB_EINVAL);
    big[RB_TOPIC_BYTES_MAX] = '\0';
    ck_assert_int_eq(rb_pattern_validate(str(big), &err), 0);
}
END_TEST

/* ---- matching ---- */

START_TEST(test_policy_empty_allows_nothing)
{
    rb_policy *p = rb_policy_new();
    ck_assert(!sub_ok(p, "a"));
    ck_assert(!pub_ok(p, "a"));
    ck_assert_uint_eq(rb_policy_pattern_count(p, RB_POLICY_PUBLISH), 0);
    rb_policy_free(p);
}
END_TEST

START_TEST(test_policy_literal_matches_only_itself)
{
    rb_policy *p = with((const char *const[]){"orders.eu", NULL}, NULL);
    ck_assert(sub_ok(p, "orders.eu"));
    ck_assert(!sub_ok(p, "orders"));
    ck_assert(!sub_ok(p, "orders.eu.x"));
    ck_assert(!sub_ok(p, "orders.e"));
    ck_assert(!sub_ok(p, "orders.us"));
    rb_policy_free(p);
}
END_TEST

START_TEST(test_policy_star_matches_exactly_one_segment)
{
    rb_policy *p = with((const char *const[]){"orders.*", NULL}, NULL);
    ck_assert(sub_ok(p, "orders.eu"));
    ck_assert(sub_ok(p, "orders.us"));
    ck_assert(!sub_ok(p, "orders"));
    ck_assert(!sub_ok(p, "orders.eu.x"));
    ck_assert(!sub_ok(p, "news.eu"));
    rb_policy_free(p);
}
END_TEST

START_TEST(test_policy_gt_matches_one_or_more_segments)
{
    rb_policy *p = with((const char *const[]){"orders.>", NULL}, NULL);
    ck_assert(sub_ok(p, "orders.eu"));
    ck_assert(sub_ok(p, "orders.eu.x.y"));
    ck_assert(!sub_ok(p, "orders"));
    ck_assert(!sub_ok(p, "ordersx.eu"));
    rb_policy_free(p);
}
END_TEST

START_TEST(test_policy_wildcards_combine_at_any_depth)
{
    rb_policy *p = with((const char *const[]){"*.eu.>", "a.*.c", NULL}, NULL);
    ck_assert(sub_ok(p, "orders.eu.1"));
    ck_assert(!sub_ok(p, "orders.eu"));
    ck_assert(sub_ok(p, "a.b.c"));
    ck_assert(!sub_ok(p, "a.b.d"));
    ck_assert(!sub_ok(p, "a.b"));
    rb_policy_free(p);
}
END_TEST

START_TEST(test_policy_deny_wins_over_allow)
{
    rb_policy *p = with((const char *const[]){"orders.>", NULL},
                        (const char *const[]){"orders.secret.*", "orders.eu", NULL});
    ck_assert(sub_ok(p, "orders.us"));
    ck_assert(!sub_ok(p, "orders.eu"));
    ck_assert(sub_ok(p, "orders.eu.1"));
    ck_assert(!sub_ok(p, "orders.secret.x"));
    ck_assert(sub_ok(p, "orders.secret.x.y"));
    ck_assert(!pub_ok(p, "orders.secret.x"));
    rb_policy_free(p);
}
END_TEST

START_TEST(test_policy_deny_gt_wins_whichever_was_added_first)
{
    rb_policy *p = rb_policy_new();
    rb_err err;
    ck_assert_int_eq(rb_policy_add(p, RB_POLICY_SUBSCRIBE, true, str(">"), &err), 0);
    ck_assert_int_eq(rb_policy_add(p, RB_POLICY_SUBSCRIBE, false, str("a.b"), &err), 0);
    ck_assert(!sub_ok(p, "a.b"));
    rb_policy_free(p);
}
END_TEST

START_TEST(test_policy_actions_are_separate)
{
    rb_policy *p = rb_policy_new();
    rb_err err;
    ck_assert_int_eq(rb_policy_add(p, RB_POLICY_PUBLISH, false, str("orders.>"), &err), 0);
    ck_assert_int_eq(rb_policy_add(p, RB_POLICY_SUBSCRIBE, false, str("news.*"), &err), 0);
    ck_assert(pub_ok(p, "orders.eu"));
    ck_assert(!sub_ok(p, "orders.eu"));
    ck_assert(sub_ok(p, "news.x"));
    ck_assert(!pub_ok(p, "news.x"));
    ck_assert_uint_eq(rb_policy_pattern_count(p, RB_POLICY_PUBLISH), 1);
    rb_policy_free(p);
}
END_TEST

START_TEST(test_policy_wildcards_never_match_reserved_names)
{
    rb_policy *p = with((const char *const[]){">", "*", "*.>", NULL}, NULL);
    ck_assert(sub_ok(p, "a"));
    ck_assert(!sub_ok(p, "$sys"));
    ck_assert(!sub_ok(p, "$sys.health"));
    rb_policy_free(p);
    p = with((const char *const[]){"$sys.>", NULL}, NULL);
    ck_assert(sub_ok(p, "$sys.health"));
    ck_assert(!pub_ok(p, "$sys.health")); /* publishing to '$' is the server's */
    rb_policy_free(p);
}
END_TEST

START_TEST(test_policy_allow_all_allows_everything_but_reserved_publish)
{
    rb_policy *p = rb_policy_new_allow_all();
    ck_assert(pub_ok(p, "a.b"));
    ck_assert(sub_ok(p, "a.b"));
    ck_assert(sub_ok(p, "$sys.x"));
    ck_assert(!pub_ok(p, "$sys.x"));
    rb_policy_free(p);
}
END_TEST

START_TEST(test_policy_topics_with_empty_segments_match_only_wildcards)
{
    rb_policy *p = with((const char *const[]){"a.*.b", "x.>", NULL}, NULL);
    ck_assert(sub_ok(p, "a..b"));
    ck_assert(sub_ok(p, "x."));
    ck_assert(!sub_ok(p, "a."));
    rb_policy_free(p);
}
END_TEST

START_TEST(test_policy_malformed_pattern_is_refused_and_changes_nothing)
{
    rb_policy *p = rb_policy_new();
    rb_err err;
    ck_assert_int_eq(rb_policy_add(p, RB_POLICY_SUBSCRIBE, false, str("a.>.b"), &err), RB_EINVAL);
    ck_assert_uint_eq(rb_policy_pattern_count(p, RB_POLICY_SUBSCRIBE), 0);
    ck_assert(!sub_ok(p, "a.x.b"));
    rb_policy_free(p);
}
END_TEST

START_TEST(test_policy_list_limit_is_enforced)
{
    rb_policy *p = rb_policy_new();
    rb_err err;
    char pat[32];
    for (int i = 0; i < RB_PATTERNS_PER_LIST_MAX; i++) {
        snprintf(pat, sizeof pat, "t%d", i);
        ck_assert_int_eq(rb_policy_add(p, RB_POLICY_SUBSCRIBE, false, str(pat), &err), 0);
    }
    ck_assert_int_eq(rb_policy_add(p, RB_POLICY_SUBSCRIBE, false, str("one.more"), &err),
                     RB_ELIMIT);
    ck_assert_str_eq(err.msg, "pattern: more than 1024 in one list");
    ck_assert(sub_ok(p, "t1023"));
    ck_assert(!sub_ok(p, "one.more"));
    /* The deny list has its own room. */
    ck_assert_int_eq(rb_policy_add(p, RB_POLICY_SUBSCRIBE, true, str("t7"), &err), 0);
    ck_assert(!sub_ok(p, "t7"));
    rb_policy_free(p);
}
END_TEST

START_TEST(test_policy_invalid_topic_argument_aborts)
{
    RB_DEATH_TEST();
    rb_policy *p = rb_policy_new();
    (void)rb_policy_allows(p, RB_POLICY_PUBLISH, (rb_bytes){(const uint8_t *)"", 0});
}
END_TEST

/* A reference matcher: pattern against topic, segment by segment. */
static bool ref_match(const char *pat, const char *topic)
{
    if (topic[0] == '$' && (pat[0] == '*' || pat[0] == '>')) {
        return false;
    }
    for (;;) {
        const char *pe = strchr(pat, '.');
        const char *te = strchr(topic, '.');
        size_t pl = pe ? (size_t)(pe - pat) : strlen(pat);
        size_t tl = te ? (size_t)(te - topic) : strlen(topic);
        if (pl == 1 && pat[0] == '>') {
            return true;
        }
        if (!(pl == 1 && pat[0] == '*') && (pl != tl || memcmp(pat, topic, pl) != 0)) {
            return false;
        }
        if (pe == NULL || te == NULL) {
            return pe == NULL && te == NULL;
        }
        pat = pe + 1;
        topic = te + 1;
    }
}

START_TEST(test_policy_agrees_with_a_reference_matcher)
{
    static const char *const segs[] = {"a", "b", "*", ">", "$s"};
    static const char *const tsegs[] = {"a", "b", "c", "$s"};
    uint32_t s = 12345;
    for (int round = 0; round < 300; round++) {
        char allow[4][32];
        char deny[2][32];
        rb_policy *p = rb_policy_new();
        rb_err err;
        for (int k = 0; k < 6; k++) {
            char *out = k < 4 ? allow[k] : deny[k - 4];
            int n = 1 + (int)((s = s * 1103515245u + 12345u) >> 16) % 3;
            out[0] = '\0';
            for (int j = 0; j < n; j++) {
                const char *g = segs[((s = s * 1103515245u + 12345u) >> 16) % 5];
                if (strcmp(g, ">") == 0 && j != n - 1) {
                    g = "*";
                }
                strcat(out, j ? "." : "");
                strcat(out, g);
            }
            ck_assert_int_eq(rb_policy_add(p, RB_POLICY_SUBSCRIBE, k >= 4, str(out), &err), 0);
        }
        for (int t = 0; t < 20; t++) {
            char topic[32] = "";
            int n = 1 + (int)((s = s * 1103515245u + 12345u) >> 16) % 4;
            for (int j = 0; j < n; j++) {
                strcat(topic, j ? "." : "");
                strcat(topic, tsegs[((s = s * 1103515245u + 12345u) >> 16) % 4]);
            }
            bool a = false;
            bool d = false;
            for (int k = 0; k < 4; k++) {
                a = a || ref_match(allow[k], topic);
            }
            for (int k = 0; k < 2; k++) {
                d = d || ref_match(deny[k], topic);
            }
            ck_assert_msg(sub_ok(p, topic) == (a && !d), "round %d topic %s", round, topic);
        }
        rb_policy_free(p);
    }
}
END_TEST

/* ---- Mutate validation ---- */

static bool mutate_ok(const rb_policy *p, uint8_t flags, const char *const *adds, size_t n,
                      rb_bytes *denied)
{
    static uint8_t buf[4096];
    rb_mutate_add a[8];
    for (size_t i = 0; i < n; i++) {
        a[i] = (rb_mutate_add){.topic = str(adds[i]), .cursor_kind = RB_CURSOR_SEQ};
    }
    rb_bytes removes[1] = {str("secret.x")};
    size_t len =
        rb_frame_encode_mutate(buf, sizeof buf, 1, 9, flags, a, (uint32_t)n, removes, 1, 0);
    rb_frame f;
    rb_err err;
    ck_assert_int_eq(rb_frame_decode(buf, len, RB_FRAME_BYTES_DEFAULT, &f, &err), 0);
    return rb_policy_allows_mutate(p, &f, denied);
}

START_TEST(test_policy_mutate_is_refused_whole_naming_the_first_forbidden_add)
{
    rb_policy *p =
        with((const char *const[]){"orders.>", NULL}, (const char *const[]){"orders.secret", NULL});
    rb_bytes denied = {0};
    ck_assert(mutate_ok(p, 0, (const char *const[]){"orders.a", "orders.b"}, 2, &denied));
    ck_assert(
        !mutate_ok(p, 0, (const char *const[]){"orders.a", "news.x", "orders.secret"}, 3, &denied));
    ck_assert(denied.len == 6 && memcmp(denied.ptr, "news.x", 6) == 0);
    /* history_only reads too: it needs subscribe permission. */
    ck_assert(
        !mutate_ok(p, RB_MUTATE_HISTORY_ONLY, (const char *const[]){"orders.secret"}, 1, &denied));
    /* Removes need nothing ("secret.x" is removed in every Mutate above). */
    ck_assert(mutate_ok(p, 0, (const char *const[]){NULL}, 0, &denied));
    rb_policy_free(p);
}
END_TEST

/* ---- cost ---- */

static double time_checks(const rb_policy *p, const char *topic, int n)
{
    struct timespec a;
    struct timespec b;
    int ok = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) {
        ok += sub_ok(p, topic);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    ck_assert_int_eq(ok, n);
    return (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
}

START_TEST(test_policy_check_cost_does_not_grow_with_unrelated_patterns)
{
    rb_policy *one = with((const char *const[]){"t9999.eu.*", NULL}, NULL);
    rb_policy *many = rb_policy_new();
    rb_err err;
    char pat[64];
    for (int i = 0; i < 1000; i++) {
        /* Same segment length as the topic's and sorted before it, so a
         * list walk would compare all of them. */
        snprintf(pat, sizeof pat, "t%04d.eu.*", i);
        ck_assert_int_eq(rb_policy_add(many, RB_POLICY_SUBSCRIBE, i % 10 == 0, str(pat), &err), 0);
    }
    ck_assert_int_eq(rb_policy_add(many, RB_POLICY_SUBSCRIBE, false, str("t9999.eu.*"), &err), 0);
    const int n = 200000;
    double t1 = time_checks(one, "t9999.eu.x", n);
    double tn = time_checks(many, "t9999.eu.x", n);
    /* A list walk would cost ~1000x; binary search over 1001 root edges
     * adds ~10 comparisons. Allow generous noise on a shared machine. */
    fprintf(stderr, "policy cost: 1 pattern %.0f ns, 1001 patterns %.0f ns\n", t1, tn);
    ck_assert_msg(tn < t1 * 8 + 2e7, "1 pattern %.0f ns, 1001 patterns %.0f ns", t1, tn);
    rb_policy_free(one);
    rb_policy_free(many);
}
END_TEST

Suite *rb_policy_suite(void)
{
    Suite *s = suite_create("policy");
    TCase *tc = tcase_create("pattern");
    tcase_add_test(tc, test_pattern_accepts_literals_and_whole_segment_wildcards);
    tcase_add_test(tc, test_pattern_refuses_partial_wildcards_with_offset);
    tcase_add_test(tc, test_pattern_refuses_gt_before_the_last_segment);
    tcase_add_test(tc, test_pattern_refuses_empty_segments);
    tcase_add_test(tc, test_pattern_refuses_what_a_topic_may_not_hold);
    suite_add_tcase(s, tc);
    tc = tcase_create("match");
    tcase_add_test(tc, test_policy_empty_allows_nothing);
    tcase_add_test(tc, test_policy_literal_matches_only_itself);
    tcase_add_test(tc, test_policy_star_matches_exactly_one_segment);
    tcase_add_test(tc, test_policy_gt_matches_one_or_more_segments);
    tcase_add_test(tc, test_policy_wildcards_combine_at_any_depth);
    tcase_add_test(tc, test_policy_deny_wins_over_allow);
    tcase_add_test(tc, test_policy_deny_gt_wins_whichever_was_added_first);
    tcase_add_test(tc, test_policy_actions_are_separate);
    tcase_add_test(tc, test_policy_wildcards_never_match_reserved_names);
    tcase_add_test(tc, test_policy_allow_all_allows_everything_but_reserved_publish);
    tcase_add_test(tc, test_policy_topics_with_empty_segments_match_only_wildcards);
    tcase_add_test(tc, test_policy_malformed_pattern_is_refused_and_changes_nothing);
    tcase_add_test(tc, test_policy_list_limit_is_enforced);
    tcase_add_test_raise_signal(tc, test_policy_invalid_topic_argument_aborts, SIGABRT);
    tcase_add_test(tc, test_policy_agrees_with_a_reference_matcher);
    tcase_add_test(tc, test_policy_mutate_is_refused_whole_naming_the_first_forbidden_add);
    suite_add_tcase(s, tc);
    tc = tcase_create("cost");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_policy_check_cost_does_not_grow_with_unrelated_patterns);
    suite_add_tcase(s, tc);
    return s;
}
