/* Tests of server/ephemeral.c: topic classes match in file order through
 * the policy trie, the default class, content dedup within its window and
 * its bound, and the origins of echo = false blocks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <check.h>

#include "common/loop.h"
#include "config/config.h"
#include "server/ephemeral.h"
#include "server/mailbox.h"
#include "server/server.h"

Suite *rb_ephemeral_suite(void);

static const rb_loop_options loop_opt = {
    .sq_entries = 64, .recv_buf_count = 8, .recv_buf_bytes = 4096};

typedef struct fx {
    rb_server *srv;
    rb_shard *sh;
} fx;

static rb_bytes str(const char *s)
{
    return (rb_bytes){(const uint8_t *)s, strlen(s)};
}

/* A shard with only the ephemeral subsystem, from a config text. */
static fx fx_open(const char *toml)
{
    fx f;
    f.srv = calloc(1, sizeof *f.srv);
    f.sh = calloc(1, sizeof *f.sh);
    ck_assert(f.srv != NULL && f.sh != NULL);
    rb_err err = {0};
    ck_assert_msg(rb_config_load_string(toml, strlen(toml), "t.toml", &f.srv->cfg, &err) == 0, "%s",
                  err.msg);
    ck_assert_msg(rb_loop_init(&f.sh->loop, &loop_opt, &err) == 0, "loop: %s", err.msg);
    f.sh->server = f.srv;
    ck_assert_msg(rb_ephemeral_subsystem.init(f.sh, &err) == 0, "%s", err.msg);
    return f;
}

static void fx_close(fx *f)
{
    rb_ephemeral_subsystem.deinit(f->sh);
    ck_assert_ptr_null(f->sh->eph);
    rb_loop_deinit(f->sh->loop);
    free(f->sh);
    free(f->srv);
}

static const char CLASSES[] = "[[topic_class]]\npattern = 'cur.*.x'\nstorage = 'none'\n"
                              "dedup_window_ms = 1\n"
                              "[[topic_class]]\npattern = 'cur.>'\nstorage = 'none'\n"
                              "echo = false\nmax_message_bytes = 99\n"
                              "[[topic_class]]\npattern = 'orders.>'\ndedup_window_ms = 5000\n";

START_TEST(test_ephemeral_first_matching_class_in_file_order_wins)
{
    fx f = fx_open(CLASSES);
    const rb_topic_class *a = rb_topic_class_of(f.sh, str("cur.room.x"));
    ck_assert_uint_eq(a->index, 1);
    ck_assert(a->ephemeral && a->echo);
    ck_assert_uint_eq(a->dedup_window_ms, 1);
    const rb_topic_class *b = rb_topic_class_of(f.sh, str("cur.room.y"));
    ck_assert_uint_eq(b->index, 2);
    ck_assert(b->ephemeral && !b->echo);
    ck_assert_uint_eq(b->max_message_bytes, 99);
    const rb_topic_class *c = rb_topic_class_of(f.sh, str("orders.eu"));
    ck_assert_uint_eq(c->index, 3);
    ck_assert(!c->ephemeral);
    ck_assert_uint_eq(c->dedup_window_ms, 5000);
    fx_close(&f);
}
END_TEST

START_TEST(test_ephemeral_unmatched_topic_gets_the_default_stored_class)
{
    fx f = fx_open(CLASSES);
    /* "cur" alone: ">" needs one more segment; '$' names are not matched
     * by wildcards. */
    const char *const names[] = {"cur", "other", "$sys.cur.x", "curx.a"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const rb_topic_class *k = rb_topic_class_of(f.sh, str(names[i]));
        ck_assert_msg(k->index == 0 && !k->ephemeral && k->echo, "%s", names[i]);
        ck_assert_uint_eq(k->dedup_window_ms, 0);
        ck_assert_uint_eq(k->max_message_bytes, 0);
    }
    fx_close(&f);
    fx g = fx_open("");
    ck_assert_uint_eq(rb_topic_class_of(g.sh, str("cur.a.x"))->index, 0);
    fx_close(&g);
}
END_TEST

START_TEST(test_ephemeral_dedup_finds_a_payload_within_its_window_per_topic)
{
    fx f = fx_open(CLASSES);
    ck_assert_uint_eq(rb_eph_dedup_find(f.sh, 7, str("p"), 60000), 0);
    rb_eph_dedup_put(f.sh, 7, str("p"), 42, 60000);
    ck_assert_uint_eq(rb_eph_dedup_find(f.sh, 7, str("p"), 60000), 42);
    ck_assert_uint_eq(rb_eph_dedup_find(f.sh, 8, str("p"), 60000), 0);
    ck_assert_uint_eq(rb_eph_dedup_find(f.sh, 7, str("q"), 60000), 0);
    /* A window of 0 is off. */
    ck_assert_uint_eq(rb_eph_dedup_find(f.sh, 7, str("p"), 0), 0);
    /* Past its window the entry no longer counts. */
    rb_eph_dedup_put(f.sh, 9, str("p"), 5, 1);
    rb_err err;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_ge(rb_loop_run_once(f.sh->loop, 2, &err), 0);
    }
    ck_assert_uint_eq(rb_eph_dedup_find(f.sh, 9, str("p"), 1), 0);
    fx_close(&f);
}
END_TEST

START_TEST(test_ephemeral_dedup_table_stays_bounded_under_a_flood)
{
    fx f = fx_open(CLASSES);
    char buf[32];
    uint32_t n = RB_EPH_DEDUP_SLOTS * 2;
    for (uint32_t i = 1; i <= n; i++) {
        snprintf(buf, sizeof buf, "payload-%u", i);
        rb_eph_dedup_put(f.sh, 1, str(buf), i, 60000);
    }
    /* The newest are found; at most the table's size of them can be. */
    uint32_t found = 0;
    for (uint32_t i = 1; i <= n; i++) {
        snprintf(buf, sizeof buf, "payload-%u", i);
        uint64_t seq = rb_eph_dedup_find(f.sh, 1, str(buf), 60000);
        ck_assert(seq == 0 || seq == i);
        found += seq != 0;
    }
    ck_assert_uint_le(found, RB_EPH_DEDUP_SLOTS);
    snprintf(buf, sizeof buf, "payload-%u", n);
    ck_assert_uint_eq(rb_eph_dedup_find(f.sh, 1, str(buf), 60000), n);
    fx_close(&f);
}
END_TEST

START_TEST(test_ephemeral_no_dedup_table_without_a_window)
{
    fx f = fx_open("[[topic_class]]\npattern = 'a'\nstorage = 'none'\n");
    rb_eph_dedup_put(f.sh, 1, str("p"), 1, 60000);
    ck_assert_uint_eq(rb_eph_dedup_find(f.sh, 1, str("p"), 60000), 0);
    fx_close(&f);
}
END_TEST

START_TEST(test_ephemeral_seq_base_is_the_millisecond_times_1024)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    uint64_t a = rb_eph_seq_base();
    uint64_t b = rb_eph_seq_base();
    ck_assert_uint_eq(a % 1024, 0);
    ck_assert_uint_ge(a >> RB_EPH_SEQ_BASE_SHIFT, ms);
    ck_assert_uint_le(a >> RB_EPH_SEQ_BASE_SHIFT, ms + 5000);
    ck_assert_uint_ge(b, a);
    ck_assert_uint_lt(a, 1ull << 53);
}
END_TEST

START_TEST(test_ephemeral_origins_round_trip_per_item)
{
    uint8_t mem[sizeof(rb_block) + 64];
    rb_block *b = (rb_block *)(void *)mem;
    memset(mem, 0, sizeof mem);
    b->data = mem + sizeof(rb_block);
    b->cap = 64;
    b->bytes = 20;
    b->count = 4;
    for (uint32_t i = 0; i < 4; i++) {
        rb_eph_origin_put(b, i, (uint16_t)(i % 2), 100 + i, 7);
    }
    for (uint32_t i = 0; i < 4; i++) {
        ck_assert(rb_eph_origin_is(b, i, (uint16_t)(i % 2), 100 + i, 7));
        ck_assert(!rb_eph_origin_is(b, i, (uint16_t)(i % 2), 100 + i, 8));
        ck_assert(!rb_eph_origin_is(b, i, (uint16_t)((i + 1) % 2), 100 + i, 7));
    }
}
END_TEST

Suite *rb_ephemeral_suite(void)
{
    Suite *s = suite_create("ephemeral");
    TCase *tc = tcase_create("classes");
    tcase_add_test(tc, test_ephemeral_first_matching_class_in_file_order_wins);
    tcase_add_test(tc, test_ephemeral_unmatched_topic_gets_the_default_stored_class);
    suite_add_tcase(s, tc);
    tc = tcase_create("dedup");
    tcase_add_test(tc, test_ephemeral_dedup_finds_a_payload_within_its_window_per_topic);
    tcase_add_test(tc, test_ephemeral_dedup_table_stays_bounded_under_a_flood);
    tcase_add_test(tc, test_ephemeral_no_dedup_table_without_a_window);
    suite_add_tcase(s, tc);
    tc = tcase_create("seqs");
    tcase_add_test(tc, test_ephemeral_seq_base_is_the_millisecond_times_1024);
    suite_add_tcase(s, tc);
    tc = tcase_create("origins");
    tcase_add_test(tc, test_ephemeral_origins_round_trip_per_item);
    suite_add_tcase(s, tc);
    return s;
}
