/* Tests of the postgres backend's pure helpers (storage/pgwire.c): binary
 * int8 values, cursor clamping, binary arrays (empty, one, many, a buffer
 * one byte short), the password file and the connection parameters built
 * from a conninfo. No server is needed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "storage/pgwire.h"

static uint32_t get4(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

START_TEST(test_pgwire_int8_is_big_endian_and_round_trips)
{
    uint8_t b[8];
    rb_pgwire_put_int8(b, 0x0102030405060708ll);
    ck_assert_uint_eq(b[0], 1);
    ck_assert_uint_eq(b[7], 8);
    ck_assert_int_eq(rb_pgwire_get_int8(b), 0x0102030405060708ll);
    rb_pgwire_put_int8(b, -2);
    ck_assert_int_eq(rb_pgwire_get_int8(b), -2);
    rb_pgwire_put_int8(b, INT64_MAX);
    ck_assert_int_eq(rb_pgwire_get_int8(b), INT64_MAX);
}
END_TEST

START_TEST(test_pgwire_clamp_seq_never_wraps)
{
    ck_assert_int_eq(rb_pgwire_clamp_seq(0), 0);
    ck_assert_int_eq(rb_pgwire_clamp_seq(42), 42);
    ck_assert_int_eq(rb_pgwire_clamp_seq((uint64_t)INT64_MAX), INT64_MAX);
    ck_assert_int_eq(rb_pgwire_clamp_seq((uint64_t)INT64_MAX + 1), INT64_MAX);
    ck_assert_int_eq(rb_pgwire_clamp_seq(UINT64_MAX), INT64_MAX);
}
END_TEST

START_TEST(test_pgwire_int8_array_layout)
{
    int64_t v[3] = {1, -1, INT64_MAX};
    uint8_t buf[128];
    size_t n = rb_pgwire_int8_array(buf, sizeof buf, v, 3);
    ck_assert_uint_eq(n, rb_pgwire_int8_array_size(3));
    ck_assert_uint_eq(n, 20 + 3 * 12);
    ck_assert_uint_eq(get4(buf), 1);      /* ndim */
    ck_assert_uint_eq(get4(buf + 4), 0);  /* no nulls */
    ck_assert_uint_eq(get4(buf + 8), 20); /* int8 */
    ck_assert_uint_eq(get4(buf + 12), 3); /* length */
    ck_assert_uint_eq(get4(buf + 16), 1); /* lower bound */
    ck_assert_uint_eq(get4(buf + 20), 8);
    ck_assert_int_eq(rb_pgwire_get_int8(buf + 24), 1);
    ck_assert_int_eq(rb_pgwire_get_int8(buf + 36), -1);
    ck_assert_int_eq(rb_pgwire_get_int8(buf + 48), INT64_MAX);
}
END_TEST

START_TEST(test_pgwire_empty_array_has_no_dimensions)
{
    uint8_t buf[32];
    ck_assert_uint_eq(rb_pgwire_int8_array(buf, sizeof buf, NULL, 0), 12);
    ck_assert_uint_eq(get4(buf), 0);
    ck_assert_uint_eq(get4(buf + 8), 20);
    ck_assert_uint_eq(rb_pgwire_bytes_array(buf, sizeof buf, RB_PG_OID_TEXT, NULL, 0), 12);
    ck_assert_uint_eq(get4(buf + 8), 25);
}
END_TEST

START_TEST(test_pgwire_bytes_array_holds_each_element_and_empty_ones)
{
    rb_bytes v[3] = {{(const uint8_t *)"ab", 2}, {NULL, 0}, {(const uint8_t *)"xyz", 3}};
    uint8_t buf[64];
    size_t n = rb_pgwire_bytes_array(buf, sizeof buf, RB_PG_OID_BYTEA, v, 3);
    ck_assert_uint_eq(n, rb_pgwire_bytes_array_size(3, 5));
    ck_assert_uint_eq(get4(buf + 8), 17);
    ck_assert_uint_eq(get4(buf + 20), 2);
    ck_assert_int_eq(memcmp(buf + 24, "ab", 2), 0);
    ck_assert_uint_eq(get4(buf + 26), 0);
    ck_assert_uint_eq(get4(buf + 30), 3);
    ck_assert_int_eq(memcmp(buf + 34, "xyz", 3), 0);
}
END_TEST

START_TEST(test_pgwire_arrays_one_byte_short_fail)
{
    int64_t v[2] = {1, 2};
    uint8_t buf[64];
    ck_assert_uint_eq(rb_pgwire_int8_array(buf, rb_pgwire_int8_array_size(2) - 1, v, 2), 0);
    rb_bytes b[1] = {{(const uint8_t *)"abc", 3}};
    size_t need = rb_pgwire_bytes_array_size(1, 3);
    ck_assert_uint_eq(rb_pgwire_bytes_array(buf, need - 1, RB_PG_OID_TEXT, b, 1), 0);
    ck_assert_uint_eq(rb_pgwire_bytes_array(buf, need, RB_PG_OID_TEXT, b, 1), need);
}
END_TEST

static char *temp_file(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/rb_pw_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

START_TEST(test_pgwire_password_is_the_first_line)
{
    char pw[64];
    rb_err err;
    char *path = temp_file("s3cret pw\r\nsecond line\n");
    ck_assert_int_eq(rb_pgwire_read_password(path, pw, sizeof pw, &err), 0);
    ck_assert_str_eq(pw, "s3cret pw");
    unlink(path);
    path = temp_file("no newline");
    ck_assert_int_eq(rb_pgwire_read_password(path, pw, sizeof pw, &err), 0);
    ck_assert_str_eq(pw, "no newline");
    unlink(path);
    path = temp_file("far too long for the buffer");
    ck_assert_int_eq(rb_pgwire_read_password(path, pw, 8, &err), RB_EINVAL);
    unlink(path);
    ck_assert_int_eq(rb_pgwire_read_password("/nonexistent/pw", pw, sizeof pw, &err), RB_ESYS);
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/pw"));
}
END_TEST

START_TEST(test_pgwire_params_expand_conninfo_and_add_ours)
{
    rb_pgwire_params p;
    rb_err err;
    ck_assert_int_eq(rb_pgwire_params_init(&p, "host=/run/pg dbname=rb options='-c work_mem=1MB'",
                                           "pw", 5000, &err),
                     0);
    ck_assert_str_eq(rb_pgwire_params_get(&p, "host"), "/run/pg");
    ck_assert_str_eq(rb_pgwire_params_get(&p, "dbname"), "rb");
    ck_assert_str_eq(rb_pgwire_params_get(&p, "password"), "pw");
    ck_assert_str_eq(
        rb_pgwire_params_get(&p, "options"),
        "-c work_mem=1MB -c statement_timeout=5000 -c plan_cache_mode=force_generic_plan");
    ck_assert_str_eq(rb_pgwire_params_get(&p, "fallback_application_name"), "ringbusd");
    ck_assert_str_eq(rb_pgwire_params_get(&p, "connect_timeout"), "10");
    ck_assert_ptr_null(p.keywords[p.count]);
    ck_assert_ptr_null(p.values[p.count]);
    rb_pgwire_params_deinit(&p);
}
END_TEST

START_TEST(test_pgwire_params_take_uris_and_keep_their_timeout)
{
    rb_pgwire_params p;
    rb_err err;
    ck_assert_int_eq(rb_pgwire_params_init(
                         &p, "postgresql://u@db.example:6000/rb?connect_timeout=3", "", 10, &err),
                     0);
    ck_assert_str_eq(rb_pgwire_params_get(&p, "host"), "db.example");
    ck_assert_str_eq(rb_pgwire_params_get(&p, "port"), "6000");
    ck_assert_str_eq(rb_pgwire_params_get(&p, "user"), "u");
    ck_assert_str_eq(rb_pgwire_params_get(&p, "connect_timeout"), "3");
    ck_assert_ptr_null(rb_pgwire_params_get(&p, "password"));
    ck_assert_str_eq(rb_pgwire_params_get(&p, "options"),
                     "-c statement_timeout=10 -c plan_cache_mode=force_generic_plan");
    ck_assert_int_eq(rb_pgwire_params_set(&p, "hostaddr", "10.0.0.1", &err), 0);
    ck_assert_str_eq(rb_pgwire_params_get(&p, "hostaddr"), "10.0.0.1");
    rb_pgwire_params_deinit(&p);
}
END_TEST

START_TEST(test_pgwire_params_reject_a_malformed_conninfo)
{
    rb_pgwire_params p;
    rb_err err;
    ck_assert_int_eq(rb_pgwire_params_init(&p, "host=x bogus_key=1", NULL, 10, &err), RB_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "postgres conninfo:"));
    ck_assert_int_eq(rb_pgwire_params_init(&p, "host='unterminated", NULL, 10, &err), RB_ECONFIG);
    ck_assert_uint_eq(p.count, 0);
}
END_TEST

Suite *rb_postgres_wire_suite(void);

Suite *rb_postgres_wire_suite(void)
{
    Suite *s = suite_create("postgres_wire");
    TCase *tc = tcase_create("values");
    tcase_add_test(tc, test_pgwire_int8_is_big_endian_and_round_trips);
    tcase_add_test(tc, test_pgwire_clamp_seq_never_wraps);
    tcase_add_test(tc, test_pgwire_int8_array_layout);
    tcase_add_test(tc, test_pgwire_empty_array_has_no_dimensions);
    tcase_add_test(tc, test_pgwire_bytes_array_holds_each_element_and_empty_ones);
    tcase_add_test(tc, test_pgwire_arrays_one_byte_short_fail);
    suite_add_tcase(s, tc);
    tc = tcase_create("params");
    tcase_add_test(tc, test_pgwire_password_is_the_first_line);
    tcase_add_test(tc, test_pgwire_params_expand_conninfo_and_add_ours);
    tcase_add_test(tc, test_pgwire_params_take_uris_and_keep_their_timeout);
    tcase_add_test(tc, test_pgwire_params_reject_a_malformed_conninfo);
    suite_add_tcase(s, tc);
    return s;
}
