/* Unit tests of config/toml.c: every value type, keys and tables, arrays
 * of tables, escapes, positions, each syntax error with its exact
 * line:column, and the size, nesting and key-count limits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "common/limits.h"
#include "config/toml.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Parses text that must be valid; the caller deinits. */
static rb_toml parse_ok_len(const char *text, size_t len)
{
    rb_toml doc;
    rb_err err = {0};
    int rc = rb_toml_parse(&doc, text, len, "t.toml", &err);
    ck_assert_msg(rc == 0, "parse failed: %s", err.msg);
    ck_assert_ptr_nonnull(rb_toml_root(&doc));
    return doc;
}

static rb_toml parse_ok(const char *text)
{
    return parse_ok_len(text, strlen(text));
}

/* Parses text that must fail with exactly msg. */
static void expect_error(const char *text, const char *msg)
{
    rb_toml doc;
    rb_err err = {0};
    int rc = rb_toml_parse(&doc, text, strlen(text), "t.toml", &err);
    ck_assert_msg(rc == RB_ECONFIG, "input %s: want RB_ECONFIG, got %d", text, rc);
    ck_assert_str_eq(err.msg, msg);
    ck_assert_ptr_null(rb_toml_root(&doc));
}

typedef struct error_case {
    const char *text;
    const char *msg;
} error_case;

/* Walks a dotted path of plain keys from the root. */
static const rb_toml_value *at(const rb_toml *doc, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    const rb_toml_value *v = rb_toml_root(doc);
    for (char *save = NULL, *part = strtok_r(buf, ".", &save); part != NULL;
         part = strtok_r(NULL, ".", &save)) {
        ck_assert_int_eq(rb_toml_type_of(v), RB_TOML_TABLE);
        v = rb_toml_get(v, part);
        ck_assert_msg(v != NULL, "no key %s in %s", part, path);
    }
    return v;
}

static int64_t int_at(const rb_toml *doc, const char *path)
{
    const rb_toml_value *v = at(doc, path);
    ck_assert_int_eq(rb_toml_type_of(v), RB_TOML_INTEGER);
    return rb_toml_integer(v);
}

static const char *str_at(const rb_toml *doc, const char *path, size_t *len)
{
    const rb_toml_value *v = at(doc, path);
    ck_assert_int_eq(rb_toml_type_of(v), RB_TOML_STRING);
    return rb_toml_string(v, len);
}

static void expect_pos(const rb_toml_value *v, uint32_t line, uint32_t col)
{
    ck_assert_uint_eq(rb_toml_line(v), line);
    ck_assert_uint_eq(rb_toml_column(v), col);
}

/* ---- documents ---- */

START_TEST(test_toml_empty_document_is_an_empty_table)
{
    const char *texts[] = {"", "\n", "   \t\n# only a comment\n\r\n"};
    for (size_t i = 0; i < COUNT(texts); i++) {
        rb_toml doc = parse_ok(texts[i]);
        ck_assert_int_eq(rb_toml_type_of(rb_toml_root(&doc)), RB_TOML_TABLE);
        ck_assert_uint_eq(rb_toml_count(rb_toml_root(&doc)), 0);
        rb_toml_deinit(&doc);
    }
}
END_TEST

START_TEST(test_toml_byte_order_mark_is_skipped)
{
    rb_toml doc = parse_ok("\xEF\xBB\xBF"
                           "a = 1\n");
    ck_assert_int_eq(int_at(&doc, "a"), 1);
    rb_toml_deinit(&doc);
}
END_TEST

START_TEST(test_toml_deinit_twice_is_harmless)
{
    rb_toml doc = parse_ok("a = [1, {b = 'c'}]\n");
    rb_toml_deinit(&doc);
    rb_toml_deinit(&doc);
    ck_assert_ptr_null(rb_toml_root(&doc));
}
END_TEST

START_TEST(test_toml_failed_parse_leaves_no_document)
{
    rb_toml doc;
    rb_err err = {0};
    ck_assert_int_eq(rb_toml_parse(&doc, "a = [1, 2", 9, "t.toml", &err), RB_ECONFIG);
    ck_assert_ptr_null(rb_toml_root(&doc));
    rb_toml_deinit(&doc);
}
END_TEST

START_TEST(test_toml_text_need_not_be_nul_terminated)
{
    const char text[] = {'a', ' ', '=', ' ', '4', '2'};
    rb_toml doc = parse_ok_len(text, sizeof text);
    ck_assert_int_eq(int_at(&doc, "a"), 42);
    rb_toml_deinit(&doc);
}
END_TEST

/* ---- scalars ---- */

START_TEST(test_toml_basic_string_escapes_decode)
{
    rb_toml doc = parse_ok("a = \"\\b\\t\\n\\f\\r\\\"\\\\ x\"\n");
    size_t len;
    const char *s = str_at(&doc, "a", &len);
    ck_assert_uint_eq(len, 9);
    ck_assert_mem_eq(s, "\b\t\n\f\r\"\\ x", 9);
    rb_toml_deinit(&doc);
}
END_TEST

START_TEST(test_toml_unicode_escapes_encode_utf8)
{
    rb_toml doc = parse_ok("a = \"\\u00e9\\u20AC\\U0001F600\"\nb = \"x\\u0000y\"\n");
    size_t len;
    const char *s = str_at(&doc, "a", &len);
    ck_assert_uint_eq(len, 9);
    ck_assert_mem_eq(s, "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80", 9);
    s = str_at(&doc, "b", &len);
    ck_assert_uint_eq(len, 3);
    ck_assert_mem_eq(s, "x\0y", 3);
    rb_toml_deinit(&doc);
}
END_TEST

START_TEST(test_toml_literal_string_keeps_backslashes)
{
    rb_toml doc = parse_ok("a = 'C:\\dir\\n \"q\"'\nb = ''\nc = \"\"\n");
    ck_assert_str_eq(str_at(&doc, "a", NULL), "C:\\dir\\n \"q\"");
    ck_assert_str_eq(str_at(&doc, "b", NULL), "");
    ck_assert_str_eq(str_at(&doc, "c", NULL), "");
    rb_toml_deinit(&doc);
}
END_TEST

START_TEST(test_toml_multiline_basic_string_trims_and_joins)
{
    rb_toml doc = parse_ok("a = \"\"\"\none\\\n   \t\n  two\nthree \"\" \\t\"\"\"\"\"\n"
                           "b = \"\"\"x\r\ny\"\"\"\n");
    ck_assert_str_eq(str_at(&doc, "a", NULL), "onetwo\nthree \"\" \t\"\"");
    ck_assert_str_eq(str_at(&doc, "b", NULL), "x\ny");
    rb_toml_deinit(&doc);
}
END_TEST

START_TEST(test_toml_multiline_literal_string_is_raw)
{
    rb_toml doc = parse_ok("a = '''\nraw \\n 'q'\n'''\nb = '''x''''\n");
    ck_assert_str_eq(str_at(&doc, "a", NULL), "raw \\n 'q'\n");
    ck_assert_str_eq(str_at(&doc, "b", NULL), "x'");
    rb_toml_deinit(&doc);
}
END_TEST

START_TEST(test_toml_decimal_integers_parse)
{
    rb_toml doc = parse_ok("a = 0\nb = +17\nc = -42\nd = 1_000_000\ne = -0\n"
                           "f = 9223372036854775807\ng = -9223372036854775808\n");
    ck_assert_int_eq(int_at(&doc, "a"), 0);
    ck_assert_int_eq(int_at(&doc, "b"), 17);
    ck_assert_int_eq(int_at(&doc, "c"), -42);
    ck_assert_int_eq(int_at(&doc, "d"), 1000000);
    ck_assert_int_eq(int_at(&doc, "e"), 0);
    ck_assert_int_eq(int_at(&doc, "f"), INT64_MAX);
    ck_assert_int_eq(int_at(&doc, "g"), INT64_MIN);
    rb_toml_deinit(&doc);
}
END_TEST

START_TEST(test_toml_prefixed_integers_parse)
{
    rb_toml doc = parse_ok("a = 0xDEAD_beef\nb = 0o755\nc = 0b1101_0101\nd = 0x7FFFFFFFFFFFFFFF\n"
                           "e = 0x00\n");
    ck_assert_int_eq(int_at(&doc, "a"), 0xDEADBEEF);
    ck_assert_int_eq(int_at(&doc, "b"), 0755);
    ck_assert_int_eq(int_at(&doc, "c"), 0xD5);
    ck_assert_int_eq(int_at(&doc, "d"), INT64_MAX);
    ck_assert_int_eq(int_at(&doc, "e"), 0);
    rb_toml_deinit(&doc);
}
END_TEST

START_TEST(test_toml_booleans_parse)
{
    rb_toml doc = parse_ok("t = true\nf = false\n");
    ck_assert_int_eq(rb_toml_type_of(at(&doc, "t")), RB_TOML_BOOL);
    ck_assert(rb_toml_bool(at(&doc, "t")));
    ck_assert(!rb_toml_bool(at(&doc, "f")));
    rb_toml_deinit(&doc);
}
END_TEST

START_TEST(test_toml_type_names_are_stable)
{
    ck_assert_str_eq(rb_toml_type_name(RB_TOML_STRING), "string");
    ck_assert_str_eq(rb_toml_type_name(RB_TOML_INTEGER), "integer");
    ck_assert_str_eq(rb_toml_type_name(RB_TOML_BOOL), "boolean");
    ck_assert_str_eq(rb_toml_type_name(RB_TOML_ARRAY), "array");
    ck_assert_str_eq(rb_toml_type_name(RB_TOML_TABLE), "table");
}
END_TEST

/* ---- arrays and inline tables ---- */

START_TEST(test_toml_arrays_nest_span_lines_and_allow_trailing_comma)
{
    rb_toml doc = parse_ok("a = [\n  1, # one\n  [2, 'x'],\n\n  [], true,\n]\nb = []\n");
    const rb_toml_value *a = at(&doc, "a");
    ck_assert_int_eq(rb_toml_type_of(a), RB_TOML_ARRAY);
    ck_assert(!rb_toml_is_table_array(a));
    ck_assert_uint_eq(rb_toml_count(a), 4);
    ck_assert_int_eq(rb_toml_integer(rb_toml_item(a, 0)), 1);
    const rb_toml_value *inner = rb_toml_item(a, 1);
    ck_assert_uint_eq(rb_toml_count(inner), 2);
    ck_assert_str_eq(rb_toml_string(rb_toml_item(inner, 1), NULL), "x");
    ck_assert_uint_eq(rb_toml_count(rb_toml_item(a, 2)), 0);
    ck_assert(rb_toml_bool(rb_toml_item(a, 3)));
    ck_assert_uint_eq(rb_toml_count(at(&doc, "b")), 0);
    rb_toml_deinit(&doc);
}
END_TEST

START_TEST(test_toml_inline_tables_hold_keys_and_dotted_keys)
{
    rb_toml doc = parse_ok("a = { x = 1, y.z = 'w', q = { r = [2] } }\ne = {}\n");
    ck_assert_int_eq(int_at(&doc, "a.x"), 1);
    ck_assert_str_eq(str_at(&doc, "a.y.z", NULL), "w");
    ck_assert_int_eq(rb_toml_integer(rb_toml_item(at(&doc, "a.q.r"), 0)), 2);
    ck_assert_uint_eq(rb_toml_count(at(&doc, "e")), 0);
    rb_toml_deinit(&doc);
}
END_TEST

/* ---- keys and tables ---- */

START_TEST(test_toml_keys_may_be_bare_quoted_or_dotted)
{
    rb_toml doc = parse_ok("bare-key_1 = 1\n\"quoted key\" = 2\n'lit.key' = 3\n"
                           "a . b.\"c\" = 4\n\"\" = 5\n1234 = 6\n");
    ck_assert_int_eq(int_at(&doc, "bare-key_1"), 1);
    ck_assert_int_eq(int_at(&doc, "quoted key"), 2);
    ck_assert_int_eq(rb_toml_integer(rb_toml_get(rb_toml_root(&doc), "lit.key")), 3);
    ck_assert_int_eq(int_at(&doc, "a.b.c"), 4);
    ck_assert_int_eq(rb_toml_integer(rb_toml_get(rb_toml_root(&doc), "")), 5);
    ck_assert_int_eq(int_at(&doc, "1234"), 6);
    rb_toml_deinit(&doc);
}
END_TEST

START_TEST(test_toml_tables_collect_their_keys_in_file_order)
{
    rb_toml doc = parse_ok("top = 0\n[a]\nz = 1\ny = 2\n[a.b]\nx = 3\n[c.d]\nw = 4\n[c]\nv = 5\n"
                           "[a.n]\ns.t = 6\n[a.n.s.u]\nr = 7\n");
    const rb_toml_value *a = at(&doc, "a");
    rb_toml_key k;
    ck_assert_uint_eq(rb_toml_count(a), 4);
    rb_toml_entry(a, 0, &k);
    ck_assert_str_eq(k.text, "z");
    rb_toml_entry(a, 1, &k);
    ck_assert_str_eq(k.text, "y");
    ck_assert_int_eq(int_at(&doc, "a.b.x"), 3);
    ck_assert_int_eq(int_at(&doc, "c.d.w"), 4);
    ck_assert_int_eq(int_at(&doc, "c.v"), 5);
    ck_assert_int_eq(int_at(&doc, "a.n.s.t"), 6);
    ck_assert_int_eq(int_at(&doc, "a.n.s.u.r"), 7);
    ck_assert_ptr_null(rb_toml_get(a, "missing"));
    rb_toml_deinit(&doc);
}
END_TEST

START_TEST(test_toml_arrays_of_tables_append_and_nest)
{
    rb_toml doc = parse_ok("[[l]]\nn = 1\n[[l]]\nn = 2\n[l.sub]\nm = 3\n[[l.items]]\ni = 4\n"
                           "[[l.items]]\ni = 5\n");
    const rb_toml_value *l = at(&doc, "l");
    ck_assert(rb_toml_is_table_array(l));
    ck_assert_uint_eq(rb_toml_count(l), 2);
    ck_assert_int_eq(rb_toml_integer(rb_toml_get(rb_toml_item(l, 0), "n")), 1);
    const rb_toml_value *second = rb_toml_item(l, 1);
    ck_assert_int_eq(rb_toml_integer(rb_toml_get(second, "n")), 2);
    ck_assert_int_eq(rb_toml_integer(rb_toml_get(rb_toml_get(second, "sub"), "m")), 3);
    const rb_toml_value *items = rb_toml_get(second, "items");
    ck_assert_uint_eq(rb_toml_count(items), 2);
    ck_assert_int_eq(rb_toml_integer(rb_toml_get(rb_toml_item(items, 1), "i")), 5);
    rb_toml_deinit(&doc);
}
END_TEST

/* ---- positions ---- */

START_TEST(test_toml_values_and_keys_remember_line_and_column)
{
    rb_toml doc = parse_ok("# c\n  a = 1\n[t]\nb =  'x'\n[[arr]]\n\"é\" = [1]\r\nc.d = {e = 2}\n");
    rb_toml_key k;
    const rb_toml_value *root = rb_toml_root(&doc);
    expect_pos(rb_toml_entry(root, 0, &k), 2, 7);
    ck_assert_uint_eq(k.line, 2);
    ck_assert_uint_eq(k.column, 3);
    expect_pos(at(&doc, "t"), 3, 1);
    rb_toml_entry(root, 1, &k);
    ck_assert_uint_eq(k.column, 2);
    expect_pos(at(&doc, "t.b"), 4, 6);
    const rb_toml_value *arr = at(&doc, "arr");
    expect_pos(arr, 5, 1);
    const rb_toml_value *item = rb_toml_item(arr, 0);
    expect_pos(item, 5, 1);
    /* Columns count characters: "é" is two bytes, one column. */
    expect_pos(rb_toml_get(item, "é"), 6, 7);
    const rb_toml_value *c = rb_toml_get(item, "c");
    expect_pos(c, 7, 1);
    expect_pos(rb_toml_get(c, "d"), 7, 7);
    expect_pos(rb_toml_get(rb_toml_get(c, "d"), "e"), 7, 12);
    rb_toml_deinit(&doc);
}
END_TEST

/* ---- syntax errors, each with its exact position ---- */

static const error_case key_errors[] = {
    {"= 1", "t.toml:1:1: expected a key, found '='"},
    {"a", "t.toml:1:2: expected '=' after key \"a\", found end of file"},
    {"a.b 1", "t.toml:1:5: expected '=' after key \"a.b\", found '1'"},
    {"[s]\nport 7400", "t.toml:2:6: expected '=' after key \"s.port\", found '7'"},
    {"a. = 1", "t.toml:1:4: expected a key, found '='"},
    {"é = 1", "t.toml:1:1: expected a key, found 'é'"},
    {"\"a\nb\" = 1", "t.toml:1:1: unterminated string"},
    {"a = 1\na = 2", "t.toml:2:1: duplicate key \"a\" (first defined at 1:1)"},
    {"[t]\nx = 1\n x = 2", "t.toml:3:2: duplicate key \"t.x\" (first defined at 2:1)"},
    {"a.b = 1\na.b = 2", "t.toml:2:3: duplicate key \"a.b\" (first defined at 1:3)"},
    {"a = 1\na.b = 2", "t.toml:2:1: key \"a\" is an integer (at 1:5), not a table"},
    {"a = { b = 1, b = 2 }", "t.toml:1:14: duplicate key \"b\" (first defined at 1:7)"},
};

START_TEST(test_toml_key_errors_name_line_and_column)
{
    expect_error(key_errors[_i].text, key_errors[_i].msg);
}
END_TEST

static const error_case string_errors[] = {
    {"a = \"abc", "t.toml:1:5: unterminated string"},
    {"a = 'abc\n'", "t.toml:1:5: unterminated string"},
    {"a = \"\"\"abc\n", "t.toml:1:5: unterminated multi-line string"},
    {"\na = '''abc''", "t.toml:2:5: unterminated multi-line string"},
    {"a = \"x\\qy\"", "t.toml:1:7: invalid escape '\\q'"},
    {"a = \"\\ \"", "t.toml:1:6: invalid escape: '\\' must be followed by an escape character"},
    {"a = \"\\u12G4\"", "t.toml:1:6: invalid unicode escape: expected 4 hex digits"},
    {"a = \"\\U0001F60\"", "t.toml:1:6: invalid unicode escape: expected 8 hex digits"},
    {"a = \"\\uD800\"", "t.toml:1:6: invalid unicode escape: U+D800 is not a Unicode scalar value"},
    {"a = \"\\U00110000\"",
     "t.toml:1:6: invalid unicode escape: U+110000 is not a Unicode scalar value"},
    {"a = \"x\x01\"", "t.toml:1:7: control character U+0001 in a string"},
    {"a = 'x\x7f'", "t.toml:1:7: control character U+007F in a string"},
    {"a = \"\"\"\nx\x1b\"\"\"", "t.toml:2:2: control character U+001B in a string"},
    {"a = \"\"\"x\ry\"\"\"", "t.toml:1:9: control character U+000D in a string"},
    {"a = \"\xc3\x28\"", "t.toml:1:6: invalid UTF-8 (byte 0xC3)"},
    {"# \xed\xa0\x80", "t.toml:1:3: invalid UTF-8 (byte 0xED)"},
    {"a = '\xc0\xaf'", "t.toml:1:6: invalid UTF-8 (byte 0xC0)"},
    {"a = \"\"\"x\"\"\"\"\"\"", "t.toml:1:14: expected end of line after a value, found '\"'"},
};

START_TEST(test_toml_string_errors_name_line_and_column)
{
    expect_error(string_errors[_i].text, string_errors[_i].msg);
}
END_TEST

static const error_case number_errors[] = {
    {"a = 1.5", "t.toml:1:5: floats are not supported (\"1.5\")"},
    {"a = 1e6", "t.toml:1:5: floats are not supported (\"1e6\")"},
    {"a = -inf", "t.toml:1:5: floats are not supported (\"-inf\")"},
    {"a = nan", "t.toml:1:5: floats are not supported (\"nan\")"},
    {"a = 1979-05-27", "t.toml:1:5: dates and times are not supported (\"1979-05-27\")"},
    {"a = 07:32:00", "t.toml:1:5: dates and times are not supported (\"07:32:00\")"},
    {"a = 007", "t.toml:1:5: invalid integer \"007\": leading zeros are not allowed"},
    {"a = -01", "t.toml:1:5: invalid integer \"-01\": leading zeros are not allowed"},
    {"a = 1__0", "t.toml:1:5: invalid integer \"1__0\": '_' must sit between digits"},
    {"a = 10_", "t.toml:1:5: invalid integer \"10_\": '_' must sit between digits"},
    {"a = _1", "t.toml:1:5: invalid value \"_1\" (strings need quotes)"},
    {"a = 0x_1", "t.toml:1:5: invalid integer \"0x_1\": '_' must sit between digits"},
    {"a = 12ab", "t.toml:1:5: invalid integer \"12ab\": unexpected 'a'"},
    {"a = 0x", "t.toml:1:5: invalid integer \"0x\": no digits"},
    {"a = 0b102", "t.toml:1:5: invalid integer \"0b102\": unexpected '2'"},
    {"a = 0o8", "t.toml:1:5: invalid integer \"0o8\": unexpected '8'"},
    {"a = -0x1", "t.toml:1:5: invalid integer \"-0x1\": unexpected 'x'"},
    {"a = 0X1", "t.toml:1:5: invalid integer \"0X1\": unexpected 'X'"},
    {"a = 9223372036854775808",
     "t.toml:1:5: integer \"9223372036854775808\" is out of range (64-bit signed)"},
    {"a = -9223372036854775809",
     "t.toml:1:5: integer \"-9223372036854775809\" is out of range (64-bit signed)"},
    {"a = 0x8000000000000000",
     "t.toml:1:5: integer \"0x8000000000000000\" is out of range (64-bit signed)"},
    {"a = True", "t.toml:1:5: invalid value \"True\" (strings need quotes)"},
    {"a = localhost", "t.toml:1:5: invalid value \"localhost\" (strings need quotes)"},
    {"a =", "t.toml:1:4: expected a value, found end of file"},
    {"a = \n", "t.toml:1:5: expected a value, found end of line"},
    {"a = =", "t.toml:1:5: expected a value, found '='"},
};

START_TEST(test_toml_value_errors_name_line_and_column)
{
    expect_error(number_errors[_i].text, number_errors[_i].msg);
}
END_TEST

static const error_case array_errors[] = {
    {"a = [1 2]", "t.toml:1:8: expected ',' or ']' in array, found '2'"},
    {"a = [1,\n", "t.toml:2:1: expected a value, found end of file"},
    {"a = [,]", "t.toml:1:6: expected a value, found ','"},
    {"a = [1,,2]", "t.toml:1:8: expected a value, found ','"},
    {"a = { b = 1, }", "t.toml:1:14: expected a key, found '}'"},
    {"a = { b = 1\n}", "t.toml:1:12: expected ',' or '}' in inline table, found end of line"},
    {"a = { b = 1 c = 2 }", "t.toml:1:13: expected ',' or '}' in inline table, found 'c'"},
    {"a = { b.c = 1, b = 2 }", "t.toml:1:16: duplicate key \"b\" (first defined at 1:7)"},
    {"a = { b = {c = 1}, b.d = 2 }",
     "t.toml:1:20: cannot add keys to inline table \"b\" (at 1:11)"},
    {"a = {b = 1}\na.c = 2", "t.toml:2:1: cannot add keys to inline table \"a\" (at 1:5)"},
    {"a = {b = 1}\n[a.c]", "t.toml:2:2: cannot add keys to inline table \"a\" (at 1:5)"},
    {"a = {b = 1}\n[a]", "t.toml:2:1: table [a] is already defined by an inline table (at 1:5)"},
};

START_TEST(test_toml_array_and_inline_table_errors_name_line_and_column)
{
    expect_error(array_errors[_i].text, array_errors[_i].msg);
}
END_TEST

static const error_case table_errors[] = {
    {"[a", "t.toml:1:3: expected ']' to close the header, found end of file"},
    {"[[a]", "t.toml:1:4: expected ']]' to close the header, found ']'"},
    {"[[a] ]", "t.toml:1:4: expected ']]' to close the header, found ']'"},
    {"[]", "t.toml:1:2: expected a key, found ']'"},
    {"[a] b = 1", "t.toml:1:5: expected end of line after a table header, found 'b'"},
    {"[a]\n[a]", "t.toml:2:1: table [a] is defined twice (first at 1:1)"},
    {"[a.b]\n[a]\n[a.b]", "t.toml:3:1: table [a.b] is defined twice (first at 1:1)"},
    {"a.b = 1\n[a]", "t.toml:2:1: table [a] is already defined by dotted keys (at 1:1)"},
    {"[x]\na.b = 1\n[x.a]", "t.toml:3:1: table [x.a] is already defined by dotted keys (at 2:1)"},
    {"[a.b]\n[a]\nb.c = 1",
     "t.toml:3:1: cannot add keys to table \"a.b\" with dotted keys: a [header] made it (at 1:1)"},
    {"a = 1\n[a]", "t.toml:2:1: cannot define table [a]: it is already an integer (at 1:5)"},
    {"a = 1\n[a.b]", "t.toml:2:2: key \"a\" is an integer (at 1:5), not a table"},
    {"a = []\n[[a]]",
     "t.toml:2:1: cannot define array of tables [[a]]: it is already an array (at 1:5)"},
    {"[a]\n[[a]]",
     "t.toml:2:1: cannot define array of tables [[a]]: it is already a table (at 1:1)"},
    {"[[a]]\n[a]", "t.toml:2:1: cannot define table [a]: it is already an array (at 1:1)"},
    {"a = [1]\n[a.b]", "t.toml:2:2: key \"a\" is an array (at 1:5), not a table"},
};

START_TEST(test_toml_table_errors_name_line_and_column)
{
    expect_error(table_errors[_i].text, table_errors[_i].msg);
}
END_TEST

static const error_case line_errors[] = {
    {"a = 1 b = 2", "t.toml:1:7: expected end of line after a value, found 'b'"},
    {"a = 1\rb = 2", "t.toml:1:6: expected end of line after a value, found a carriage return"},
    {"a = 1\n\r", "t.toml:2:1: expected end of line after whitespace, found a carriage return"},
    {"a = 1 # ok\nb = 2 # \x01", "t.toml:2:9: control character U+0001 in a comment"},
    {"\n\n  \t x = \"y\" z", "t.toml:3:13: expected end of line after a value, found 'z'"},
    {"a = 1\r\nb = 2\r\n c", "t.toml:3:3: expected '=' after key \"c\", found end of file"},
};

START_TEST(test_toml_line_errors_name_line_and_column)
{
    expect_error(line_errors[_i].text, line_errors[_i].msg);
}
END_TEST

START_TEST(test_toml_nul_byte_in_text_is_an_error)
{
    rb_toml doc;
    rb_err err = {0};
    ck_assert_int_eq(rb_toml_parse(&doc, "a = 1\0", 6, "t.toml", &err), RB_ECONFIG);
    ck_assert_str_eq(err.msg,
                     "t.toml:1:6: expected end of line after a value, found control character "
                     "U+0000");
}
END_TEST

/* ---- limits ---- */

/* A document of exactly len bytes: "a = 1" then comment lines. */
static char *padded_document(size_t len)
{
    char *text = malloc(len);
    ck_assert_ptr_nonnull(text);
    memset(text, ' ', len);
    memcpy(text, "a = 1\n#", 7);
    for (size_t i = 100; i < len; i += 100) {
        text[i] = '\n';
        if (i + 1 < len) {
            text[i + 1] = '#';
        }
    }
    return text;
}

START_TEST(test_toml_document_at_size_limit_parses)
{
    char *text = padded_document(RB_CONFIG_FILE_BYTES_MAX);
    rb_toml doc = parse_ok_len(text, RB_CONFIG_FILE_BYTES_MAX);
    ck_assert_int_eq(int_at(&doc, "a"), 1);
    rb_toml_deinit(&doc);
    free(text);
}
END_TEST

START_TEST(test_toml_document_one_byte_past_size_limit_fails)
{
    size_t len = (size_t)RB_CONFIG_FILE_BYTES_MAX + 1;
    char *text = padded_document(len);
    rb_toml doc;
    rb_err err = {0};
    ck_assert_int_eq(rb_toml_parse(&doc, text, len, "t.toml", &err), RB_ECONFIG);
    ck_assert_str_eq(err.msg, "t.toml: 1048577 bytes is more than the limit of 1048576 bytes");
    free(text);
}
END_TEST

START_TEST(test_toml_arrays_nest_to_the_limit_and_no_further)
{
    /* The key's array is level 1, so 8 brackets reach the limit. */
    rb_toml doc = parse_ok("x = [[[[[[[[1]]]]]]]]");
    rb_toml_deinit(&doc);
    expect_error("x = [[[[[[[[[1]]]]]]]]]", "t.toml:1:13: nesting deeper than 8 levels");
}
END_TEST

START_TEST(test_toml_tables_nest_to_the_limit_and_no_further)
{
    rb_toml doc = parse_ok("[a.b.c.d.e.f.g.h]\nx = 1\n[a.b.c.d.e.f.g]\ny.z = 2\n");
    ck_assert_int_eq(int_at(&doc, "a.b.c.d.e.f.g.h.x"), 1);
    rb_toml_deinit(&doc);
    expect_error("[a.b.c.d.e.f.g.h.i]", "t.toml:1:18: key has more than 8 parts (nesting limit)");
    expect_error("[a.b.c.d.e.f.g]\nh.i.j = 1", "t.toml:2:3: nesting deeper than 8 levels");
    expect_error("[a.b.c.d.e.f.g.h]\ni = []", "t.toml:2:5: nesting deeper than 8 levels");
    expect_error("[a.b.c.d.e.f.g]\n[[a.b.c.d.e.f.g.h]]",
                 "t.toml:2:1: nesting deeper than 8 levels");
    expect_error("a = {b = {c = {d = {e = {f = {g = {h = {i = {j = 1}}}}}}}}}",
                 "t.toml:1:45: nesting deeper than 8 levels");
}
END_TEST

static char *many_keys(size_t count)
{
    char *text = malloc(count * 8 + 1);
    ck_assert_ptr_nonnull(text);
    size_t n = 0;
    for (size_t i = 0; i < count; i++) {
        n += (size_t)sprintf(text + n, "k%zu=1\n", i);
    }
    return text;
}

START_TEST(test_toml_table_holds_key_limit_and_no_more)
{
    char *text = many_keys(RB_TOML_TABLE_KEYS_MAX);
    rb_toml doc = parse_ok(text);
    ck_assert_uint_eq(rb_toml_count(rb_toml_root(&doc)), RB_TOML_TABLE_KEYS_MAX);
    rb_toml_deinit(&doc);
    free(text);
    text = many_keys(RB_TOML_TABLE_KEYS_MAX + 1);
    expect_error(text, "t.toml:4097:1: more than 4096 keys in one table");
    free(text);
}
END_TEST

Suite *rb_toml_suite(void);

Suite *rb_toml_suite(void)
{
    Suite *s = suite_create("toml");
    TCase *tc = tcase_create("documents");
    tcase_add_test(tc, test_toml_empty_document_is_an_empty_table);
    tcase_add_test(tc, test_toml_byte_order_mark_is_skipped);
    tcase_add_test(tc, test_toml_deinit_twice_is_harmless);
    tcase_add_test(tc, test_toml_failed_parse_leaves_no_document);
    tcase_add_test(tc, test_toml_text_need_not_be_nul_terminated);
    suite_add_tcase(s, tc);

    tc = tcase_create("scalars");
    tcase_add_test(tc, test_toml_basic_string_escapes_decode);
    tcase_add_test(tc, test_toml_unicode_escapes_encode_utf8);
    tcase_add_test(tc, test_toml_literal_string_keeps_backslashes);
    tcase_add_test(tc, test_toml_multiline_basic_string_trims_and_joins);
    tcase_add_test(tc, test_toml_multiline_literal_string_is_raw);
    tcase_add_test(tc, test_toml_decimal_integers_parse);
    tcase_add_test(tc, test_toml_prefixed_integers_parse);
    tcase_add_test(tc, test_toml_booleans_parse);
    tcase_add_test(tc, test_toml_type_names_are_stable);
    suite_add_tcase(s, tc);

    tc = tcase_create("containers");
    tcase_add_test(tc, test_toml_arrays_nest_span_lines_and_allow_trailing_comma);
    tcase_add_test(tc, test_toml_inline_tables_hold_keys_and_dotted_keys);
    tcase_add_test(tc, test_toml_keys_may_be_bare_quoted_or_dotted);
    tcase_add_test(tc, test_toml_tables_collect_their_keys_in_file_order);
    tcase_add_test(tc, test_toml_arrays_of_tables_append_and_nest);
    suite_add_tcase(s, tc);

    tc = tcase_create("positions");
    tcase_add_test(tc, test_toml_values_and_keys_remember_line_and_column);
    suite_add_tcase(s, tc);

    tc = tcase_create("syntax_errors");
    tcase_add_loop_test(tc, test_toml_key_errors_name_line_and_column, 0, COUNT(key_errors));
    tcase_add_loop_test(tc, test_toml_string_errors_name_line_and_column, 0, COUNT(string_errors));
    tcase_add_loop_test(tc, test_toml_value_errors_name_line_and_column, 0, COUNT(number_errors));
    tcase_add_loop_test(tc, test_toml_array_and_inline_table_errors_name_line_and_column, 0,
                        COUNT(array_errors));
    tcase_add_loop_test(tc, test_toml_table_errors_name_line_and_column, 0, COUNT(table_errors));
    tcase_add_loop_test(tc, test_toml_line_errors_name_line_and_column, 0, COUNT(line_errors));
    tcase_add_test(tc, test_toml_nul_byte_in_text_is_an_error);
    suite_add_tcase(s, tc);

    tc = tcase_create("limits");
    tcase_add_test(tc, test_toml_document_at_size_limit_parses);
    tcase_add_test(tc, test_toml_document_one_byte_past_size_limit_fails);
    tcase_add_test(tc, test_toml_arrays_nest_to_the_limit_and_no_further);
    tcase_add_test(tc, test_toml_tables_nest_to_the_limit_and_no_further);
    tcase_add_test(tc, test_toml_table_holds_key_limit_and_no_more);
    suite_add_tcase(s, tc);
    return s;
}
