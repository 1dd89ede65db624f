/* libFuzzer target for the configuration path (config/toml.c, then
 * config/config.c): every input is parsed as TOML and, separately, loaded
 * as a ringbusd config. A parsed tree is walked in full (every key and
 * value must carry a line and a column of at least 1, strings must hold
 * the length they claim); a refused input must say "fuzz:LINE:COLUMN: ..."
 * with both numbers at least 1 (a config rule about the whole file may say
 * "fuzz: ..." instead). An
 * accepted config must keep its invariants (at least one listener, no more
 * than RB_LISTENERS_MAX). Anything else traps.
 *
 * Build and run with `make fuzz T=config` (clang 14 with libFuzzer);
 * `make test` replays tests/fuzz/corpus/config through the same target. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "config/toml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

/* "fuzz:" then two positive decimal numbers separated by ':' and ": ". */
static void check_located(const rb_err *err)
{
    CHECK(err->code == RB_ECONFIG || err->code == RB_ENOMEM);
    if (err->code == RB_ENOMEM) {
        return;
    }
    const char *p = err->msg;
    CHECK(strncmp(p, "fuzz:", 5) == 0);
    p += 5;
    for (int field = 0; field < 2; field++) {
        char *end = NULL;
        unsigned long n = strtoul(p, &end, 10);
        CHECK(end != p && n >= 1);
        CHECK(*end == ':');
        p = end + 1;
    }
    CHECK(*p == ' ');
}

static void walk(const rb_toml_value *value, int depth)
{
    CHECK(depth <= 1000);
    CHECK(rb_toml_line(value) >= 1 && rb_toml_column(value) >= 1);
    switch (rb_toml_type_of(value)) {
    case RB_TOML_STRING: {
        size_t len = 0;
        const char *s = rb_toml_string(value, &len);
        CHECK(s != NULL && s[len] == '\0');
        break;
    }
    case RB_TOML_INTEGER:
        (void)rb_toml_integer(value);
        break;
    case RB_TOML_BOOL:
        (void)rb_toml_bool(value);
        break;
    case RB_TOML_ARRAY:
        for (size_t i = 0; i < rb_toml_count(value); i++) {
            walk(rb_toml_item(value, i), depth + 1);
        }
        break;
    case RB_TOML_TABLE:
        CHECK(rb_toml_count(value) <= RB_TOML_TABLE_KEYS_MAX);
        for (size_t i = 0; i < rb_toml_count(value); i++) {
            rb_toml_key key;
            const rb_toml_value *v = rb_toml_entry(value, i, &key);
            CHECK(v != NULL && key.text != NULL && key.text[key.len] == '\0');
            CHECK(key.line >= 1 && key.column >= 1);
            walk(v, depth + 1);
        }
        break;
    default:
        CHECK(0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rb_toml doc;
    rb_err err = {0};
    if (rb_toml_parse(&doc, (const char *)data, size, "fuzz", &err) == 0) {
        const rb_toml_value *root = rb_toml_root(&doc);
        CHECK(root != NULL && rb_toml_type_of(root) == RB_TOML_TABLE);
        walk(root, 0);
        rb_toml_deinit(&doc);
    } else {
        check_located(&err);
        CHECK(rb_toml_root(&doc) == NULL);
    }

    rb_config *cfg = malloc(sizeof *cfg);
    CHECK(cfg != NULL);
    rb_err cerr = {0};
    if (rb_config_load_string((const char *)data, size, "fuzz", cfg, &cerr) == 0) {
        CHECK(cfg->listener_count >= 1 && cfg->listener_count <= RB_LISTENERS_MAX);
    } else {
        CHECK(cerr.code != 0);
        /* A rule about the whole file has no position ("fuzz: ..."). */
        if (cerr.code == RB_ECONFIG && strncmp(cerr.msg, "fuzz: ", 6) != 0) {
            check_located(&cerr);
        }
    }
    free(cfg);
    return 0;
}
