/* Tests of what a reload applies (server/reload.c): live settings keep
 * their new value, restart-only ones go back to the running value,
 * topics_per_stream may go down but not above its start value, users and
 * keys change only when the caller applies them, and an entry that only
 * moved in the file is no change. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "server/reload.h"

Suite *rb_reload_suite(void);

/* Three configs (boot, running, fresh) of ~2 MiB each: on the heap. */
static rb_config *boot;
static rb_config *cur;
static rb_config *fresh;

static void setup(void)
{
    boot = calloc(1, sizeof *boot);
    cur = calloc(1, sizeof *cur);
    fresh = calloc(1, sizeof *fresh);
    ck_assert(boot != NULL && cur != NULL && fresh != NULL);
    rb_config_defaults(boot);
    *cur = *boot;
    *fresh = *boot;
}

static void teardown(void)
{
    free(boot);
    free(cur);
    free(fresh);
}

static void load(rb_config *cfg, const char *text)
{
    rb_err err;
    rb_err_clear(&err);
    ck_assert_msg(rb_config_load_string(text, strlen(text), "t.toml", cfg, &err) == 0, "%s",
                  err.msg);
}

START_TEST(test_reload_same_config_changes_nothing)
{
    ck_assert_uint_eq(rb_reload_diff(boot, cur, fresh, false), 0);
    ck_assert(memcmp(cur, fresh, sizeof *cur) == 0);
}
END_TEST

START_TEST(test_reload_live_settings_keep_their_new_value)
{
    fresh->keepalive_ms = cur->keepalive_ms + 1000;
    snprintf(fresh->log_level, sizeof fresh->log_level, "debug");
    fresh->rpc_calls_per_connection = 3;
    ck_assert_uint_eq(rb_reload_diff(boot, cur, fresh, false), 3);
    ck_assert_uint_eq(fresh->keepalive_ms, cur->keepalive_ms + 1000);
    ck_assert_str_eq(fresh->log_level, "debug");
    ck_assert_uint_eq(fresh->rpc_calls_per_connection, 3);
}
END_TEST

START_TEST(test_reload_restart_settings_go_back_to_the_running_value)
{
    fresh->shards = cur->shards + 1;
    fresh->max_frame_bytes = cur->max_frame_bytes * 2;
    fresh->storage_backend = RB_STORAGE_POSTGRES;
    snprintf(fresh->pg_conninfo, sizeof fresh->pg_conninfo, "host=elsewhere");
    fresh->cluster_peer_count = 1;
    ck_assert_uint_eq(rb_reload_diff(boot, cur, fresh, false), 0);
    ck_assert(memcmp(cur, fresh, sizeof *cur) == 0);
}
END_TEST

START_TEST(test_reload_topics_per_stream_goes_down_but_not_above_its_start_value)
{
    fresh->topics_per_stream = boot->topics_per_stream / 2;
    ck_assert_uint_eq(rb_reload_diff(boot, cur, fresh, false), 1);
    ck_assert_uint_eq(fresh->topics_per_stream, boot->topics_per_stream / 2);
    *cur = *fresh;
    /* Back up to the start value: live. */
    fresh->topics_per_stream = boot->topics_per_stream;
    ck_assert_uint_eq(rb_reload_diff(boot, cur, fresh, false), 1);
    ck_assert_uint_eq(fresh->topics_per_stream, boot->topics_per_stream);
    /* One past it: kept at the running value. */
    fresh->topics_per_stream = boot->topics_per_stream + 1;
    ck_assert_uint_eq(rb_reload_diff(boot, cur, fresh, false), 0);
    ck_assert_uint_eq(fresh->topics_per_stream, cur->topics_per_stream);
}
END_TEST

static const char users_a[] = "[[auth.user]]\nname = \"alice\"\nsubscribe = [\"a.>\"]\n";
static const char users_b[] = "[[auth.user]]\nname = \"alice\"\nsubscribe = [\"a.>\", \"b.>\"]\n";
/* The same user two lines further down: its position differs, nothing else. */
static const char users_a_moved[] = "\n\n[[auth.user]]\nname = \"alice\"\nsubscribe = [\"a.>\"]\n";

START_TEST(test_reload_users_changed_are_kept_unless_applied)
{
    load(boot, users_a);
    *cur = *boot;
    load(fresh, users_b);
    ck_assert(rb_reload_auth_changed(cur, fresh));
    rb_reload_diff(boot, cur, fresh, false);
    ck_assert(!rb_reload_auth_changed(cur, fresh));
    ck_assert_uint_eq(fresh->auth_users[0].lists[RB_PERM_SUBSCRIBE].count, 1);
    load(fresh, users_b);
    rb_reload_diff(boot, cur, fresh, true);
    ck_assert_uint_eq(fresh->auth_users[0].lists[RB_PERM_SUBSCRIBE].count, 2);
}
END_TEST

START_TEST(test_reload_a_user_that_only_moved_is_no_change)
{
    load(cur, users_a);
    load(fresh, users_a_moved);
    ck_assert_str_ne(cur->auth_users[0].where, fresh->auth_users[0].where);
    ck_assert(!rb_reload_auth_changed(cur, fresh));
    load(fresh, "");
    ck_assert(rb_reload_auth_changed(cur, fresh));
}
END_TEST

Suite *rb_reload_suite(void)
{
    Suite *s = suite_create("reload");
    TCase *tc = tcase_create("diff");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_reload_same_config_changes_nothing);
    tcase_add_test(tc, test_reload_live_settings_keep_their_new_value);
    tcase_add_test(tc, test_reload_restart_settings_go_back_to_the_running_value);
    tcase_add_test(tc, test_reload_topics_per_stream_goes_down_but_not_above_its_start_value);
    suite_add_tcase(s, tc);
    tc = tcase_create("auth");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_reload_users_changed_are_kept_unless_applied);
    tcase_add_test(tc, test_reload_a_user_that_only_moved_is_no_change);
    suite_add_tcase(s, tc);
    return s;
}
