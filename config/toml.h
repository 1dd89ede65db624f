/* A TOML 1.0 subset parser for the daemon's configuration file. It owns the
 * syntax only: text in, a read-only tree of tables, arrays and scalars out,
 * where every value and every key remembers its line and column so that the
 * schema layer (config/config.c) can say "file:line:column: ..." about any of
 * them. The meaning of keys is left to config.c.
 *
 * Supported: comments, bare and quoted keys, dotted keys in key/value lines
 * and table headers, [table], [a.b], [[array.of.tables]], basic strings with
 * escapes (\b \t \n \f \r \" \\ \uXXXX \UXXXXXXXX), literal strings, both
 * multi-line string forms, integers (decimal with '_' and a sign, 0x/0o/0b),
 * booleans, arrays (multi-line, trailing comma, nested, mixed) and inline
 * tables. Floats and dates/times are rejected with a "not supported" error.
 * Dotted keys may only extend tables that dotted keys created (stricter than
 * TOML 1.0 leaves it, never looser).
 *
 * Errors are RB_ECONFIG with err->msg = "name:line:column: message"; columns
 * count characters (UTF-8 code points) from 1. Input is bounded by
 * RB_CONFIG_FILE_BYTES_MAX bytes, RB_CONFIG_NESTING_MAX levels of tables and
 * arrays and RB_TOML_TABLE_KEYS_MAX keys per table. Parsing runs once at
 * start-up and allocates; rb_toml_deinit frees everything. */
#ifndef RB_CONFIG_TOML_H
#define RB_CONFIG_TOML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Keys per table. Key lookup is a linear scan (tables in a config are a
 * dozen keys), so this bounds the quadratic cost of a hostile file. */
#define RB_TOML_TABLE_KEYS_MAX 4096

typedef enum rb_toml_type {
    RB_TOML_STRING = 1,
    RB_TOML_INTEGER = 2,
    RB_TOML_BOOL = 3,
    RB_TOML_ARRAY = 4,
    RB_TOML_TABLE = 5,
} rb_toml_type;

typedef struct rb_toml_value rb_toml_value;

/* A parsed document. The tree belongs to it until rb_toml_deinit. */
typedef struct rb_toml {
    rb_toml_value *root;
} rb_toml;

/* A key of a table entry and where it was written: for a key/value line the
 * key itself; for a table header the key's part inside the brackets. */
typedef struct rb_toml_key {
    const char *text; /* NUL-terminated; may hold an escaped NUL before len */
    size_t len;
    uint32_t line;
    uint32_t column;
} rb_toml_key;

/* Parses text[0..len) (need not be NUL-terminated); `name` prefixes error
 * messages and is not kept. On success doc owns the tree; on error doc is
 * empty and needs no deinit (calling it is harmless). Returns 0, RB_ECONFIG
 * (syntax or a limit) or RB_ENOMEM. */
int rb_toml_parse(rb_toml *doc, const char *text, size_t len, const char *name, rb_err *err);

/* Frees the tree; every pointer obtained from doc becomes invalid. */
void rb_toml_deinit(rb_toml *doc);

/* The root table, or NULL for a document that failed to parse. */
const rb_toml_value *rb_toml_root(const rb_toml *doc);

rb_toml_type rb_toml_type_of(const rb_toml_value *value);

/* "string", "integer", "boolean", "array", "table". */
const char *rb_toml_type_name(rb_toml_type type);
/* The type with its article for messages: "an integer", "a table", ... */
const char *rb_toml_type_article(rb_toml_type type);

/* Where the value starts: its first character, a table header's '[', or for
 * a table created implicitly, the key that created it. */
uint32_t rb_toml_line(const rb_toml_value *value);
uint32_t rb_toml_column(const rb_toml_value *value);

/* The bytes of a string (NUL-terminated, *len excludes the terminator and
 * may be NULL). The value must be a string. */
const char *rb_toml_string(const rb_toml_value *value, size_t *len);
int64_t rb_toml_integer(const rb_toml_value *value);
bool rb_toml_bool(const rb_toml_value *value);

/* Items of an array or keys of a table. */
size_t rb_toml_count(const rb_toml_value *value);

/* The index-th item of an array, index < rb_toml_count. */
const rb_toml_value *rb_toml_item(const rb_toml_value *array, size_t index);

/* True for an array made by [[header]] lines. */
bool rb_toml_is_table_array(const rb_toml_value *array);

/* The index-th entry of a table in file order, index < rb_toml_count; fills
 * *key when key is not NULL. */
const rb_toml_value *rb_toml_entry(const rb_toml_value *table, size_t index, rb_toml_key *key);

/* The value of a table's key (a NUL-terminated name), or NULL. */
const rb_toml_value *rb_toml_get(const rb_toml_value *table, const char *key);

#endif
