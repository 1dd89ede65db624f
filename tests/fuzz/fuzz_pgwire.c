/* libFuzzer target for the pure Postgres helpers (storage/pgwire.c): the
 * configured conninfo and password as they reach libpq, the password
 * file, and the binary values ringbus sends and reads back.
 *
 * The input is cut at NUL bytes: the first piece is a conninfo string
 * (key=value or postgresql:// URI), the second a password, the rest raw.
 * 1. rb_pgwire_params_init either refuses with RB_ECONFIG / RB_ELIMIT and a
 *    message that never contains a URI's password, or yields NULL-terminated
 *    keyword/value arrays within RB_PGWIRE_PARAMS_MAX that carry the
 *    password (when given), the statement timeout in options, a
 *    connect_timeout and the fallback application name.
 * 2. The whole input as a password file (a memfd): the first line comes
 *    back exactly, without its line end, or the file is refused as too long.
 * 3. The input as int8 values and as byte strings: the binary arrays
 *    encode to exactly their computed size, parse back to the same
 *    elements, and refuse a buffer one byte short.
 * Any other outcome traps.
 *
 * Build and run with `make fuzz T=pgwire` (clang 14 with libFuzzer);
 * `make test` replays tests/fuzz/corpus/pgwire through the same target. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "storage/pgwire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

#define PASSWORD_BYTES 256
#define ELEMS_MAX      64

/* The password of a postgresql:// URI (user:password@host) never appears
 * in a refusal. */
static void check_uri_password_hidden(const char *conninfo, const char *msg)
{
    const char *scheme = strstr(conninfo, "://");
    if (scheme == NULL) {
        return;
    }
    const char *info = scheme + 3;
    size_t len = strcspn(info, "/?#");
    const char *at = memchr(info, '@', len);
    const char *colon = at != NULL ? memchr(info, ':', (size_t)(at - info)) : NULL;
    if (colon == NULL || at - colon - 1 < 6) {
        return;
    }
    char secret[256];
    snprintf(secret, sizeof secret, "%.*s", (int)(at - colon - 1), colon + 1);
    /* libpq's own words hold no digit: a secret with one cannot match them
     * by chance. */
    if (strpbrk(secret, "0123456789") == NULL) {
        return;
    }
    CHECK(strstr(msg, secret) == NULL);
}

static void check_params(const char *conninfo, const char *password)
{
    rb_pgwire_params p;
    rb_err err = {0};
    int rc = rb_pgwire_params_init(&p, conninfo, password, 1500, &err);
    if (rc != 0) {
        CHECK(rc == RB_ECONFIG || rc == RB_ELIMIT || rc == RB_ENOMEM);
        CHECK(err.msg[0] != '\0');
        /* libpq never sees the separate password (it is added after
         * parsing); a URI's password must not come back in the reason. */
        check_uri_password_hidden(conninfo, err.msg);
        CHECK(p.count == 0 && p.owned_count == 0);
        return;
    }
    CHECK(p.count <= RB_PGWIRE_PARAMS_MAX);
    CHECK(p.keywords[p.count] == NULL && p.values[p.count] == NULL);
    for (uint32_t i = 0; i < p.count; i++) {
        CHECK(p.keywords[i] != NULL && p.values[i] != NULL);
        for (uint32_t k = 0; k < i; k++) {
            CHECK(strcmp(p.keywords[i], p.keywords[k]) != 0);
        }
    }
    if (password[0] != '\0') {
        const char *pw = rb_pgwire_params_get(&p, "password");
        CHECK(pw != NULL && strcmp(pw, password) == 0);
    }
    const char *opts = rb_pgwire_params_get(&p, "options");
    CHECK(opts != NULL && strstr(opts, "-c statement_timeout=1500") != NULL);
    CHECK(rb_pgwire_params_get(&p, "connect_timeout") != NULL);
    const char *app = rb_pgwire_params_get(&p, "fallback_application_name");
    CHECK(app != NULL && strcmp(app, "ringbusd") == 0);
    /* A pinned host, as the backend sets it, replaces or adds one entry. */
    uint32_t before = p.count;
    if (rb_pgwire_params_set(&p, "hostaddr", "127.0.0.1", &err) == 0) {
        CHECK(p.count == before || p.count == before + 1);
        CHECK(strcmp(rb_pgwire_params_get(&p, "hostaddr"), "127.0.0.1") == 0);
    }
    rb_pgwire_params_deinit(&p);
    CHECK(p.count == 0);
}

static void check_password_file(const uint8_t *data, size_t size)
{
    int fd = memfd_create("pw", MFD_CLOEXEC);
    CHECK(fd >= 0);
    CHECK(write(fd, data, size) == (ssize_t)size);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    char out[PASSWORD_BYTES];
    rb_err err = {0};
    int rc = rb_pgwire_read_password(path, out, sizeof out, &err);
    close(fd);
    size_t line = 0;
    while (line < size && data[line] != '\n' && data[line] != '\r' && data[line] != '\0') {
        line++;
    }
    if (rc != 0) {
        CHECK(rc == RB_EINVAL && line >= sizeof out - 1);
        CHECK(out[0] == '\0');
        return;
    }
    CHECK(out[sizeof out - 1] == '\0');
    size_t got = strlen(out);
    /* The file's first line, or its first cap-1 bytes up to a line end. */
    CHECK(got == line || (got < line && got == sizeof out - 1));
    CHECK(memcmp(out, data, got) == 0);
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Parses a one-dimensional binary array back (what Postgres does). */
static uint32_t parse_array(const uint8_t *a, size_t len, uint32_t oid, rb_bytes *elems)
{
    CHECK(len >= 12 && be32(a + 4) == 0 && be32(a + 8) == oid);
    if (be32(a) == 0) {
        CHECK(len == 12);
        return 0;
    }
    CHECK(be32(a) == 1 && len >= RB_PGWIRE_ARRAY_HEAD_BYTES && be32(a + 16) == 1);
    uint32_t n = be32(a + 12);
    size_t off = RB_PGWIRE_ARRAY_HEAD_BYTES;
    for (uint32_t i = 0; i < n; i++) {
        CHECK(i < ELEMS_MAX && off + 4 <= len);
        uint32_t elen = be32(a + off);
        CHECK(elen <= len - off - 4);
        elems[i] = (rb_bytes){a + off + 4, elen};
        off += 4 + elen;
    }
    CHECK(off == len);
    return n;
}

static void check_arrays(const uint8_t *data, size_t size)
{
    int64_t v[ELEMS_MAX];
    uint32_t n = 0;
    for (size_t off = 0; off + 8 <= size && n < ELEMS_MAX; off += 8) {
        v[n] = rb_pgwire_get_int8(data + off);
        uint8_t back[8];
        rb_pgwire_put_int8(back, v[n]);
        CHECK(memcmp(back, data + off, 8) == 0);
        CHECK(rb_pgwire_clamp_seq((uint64_t)v[n]) >= 0);
        n++;
    }
    size_t need = rb_pgwire_int8_array_size(n);
    uint8_t *out = malloc(need);
    CHECK(out != NULL);
    CHECK(rb_pgwire_int8_array(out, need - 1, v, n) == 0);
    size_t got = rb_pgwire_int8_array(out, need, v, n);
    rb_bytes elems[ELEMS_MAX];
    uint32_t m = parse_array(out, got, RB_PG_OID_INT8, elems);
    CHECK(got == need || (n == 0 && got == 12));
    CHECK(m == n);
    for (uint32_t i = 0; i < m; i++) {
        CHECK(elems[i].len == 8 && rb_pgwire_get_int8(elems[i].ptr) == v[i]);
    }
    free(out);

    /* Byte strings: pieces whose lengths come from the input itself. */
    rb_bytes in[ELEMS_MAX];
    size_t data_bytes = 0;
    n = 0;
    for (size_t off = 0; off < size && n < ELEMS_MAX;) {
        size_t len = data[off] % 32u;
        len = len < size - off ? len : size - off;
        in[n++] = (rb_bytes){data + off, len};
        data_bytes += len;
        off += len > 0 ? len : 1;
    }
    need = rb_pgwire_bytes_array_size(n, data_bytes);
    out = malloc(need);
    CHECK(out != NULL);
    CHECK(rb_pgwire_bytes_array(out, need - 1, RB_PG_OID_BYTEA, in, n) == 0);
    got = rb_pgwire_bytes_array(out, need, RB_PG_OID_BYTEA, in, n);
    m = parse_array(out, got, RB_PG_OID_BYTEA, elems);
    CHECK(m == n);
    for (uint32_t i = 0; i < m; i++) {
        CHECK(elems[i].len == in[i].len);
        CHECK(in[i].len == 0 || memcmp(elems[i].ptr, in[i].ptr, in[i].len) == 0);
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536) {
        return 0;
    }
    char *text = malloc(size + 2);
    CHECK(text != NULL);
    memcpy(text, data, size);
    text[size] = '\0';
    text[size + 1] = '\0';
    const char *conninfo = text;
    const char *password = text + strlen(text) + (strlen(text) < size ? 1 : 0);
    if (strlen(password) >= PASSWORD_BYTES) {
        password = "";
    }
    check_params(conninfo, password);
    free(text);
    check_password_file(data, size);
    check_arrays(data, size);
    return 0;
}
