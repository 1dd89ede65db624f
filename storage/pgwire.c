/* Pure helpers of the postgres backend: binary values, arrays, the password
 * file and connection parameters (see pgwire.h). */
#include "storage/pgwire.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "common/assert.h"

/* Added by ringbus unless the conninfo says otherwise: a connect attempt
 * that hangs must end so that the pool can retry. */
#define PGWIRE_CONNECT_TIMEOUT_S "10"

void rb_pgwire_put_int8(uint8_t *out, int64_t v)
{
    uint64_t u = (uint64_t)v;
    for (int i = 7; i >= 0; i--) {
        out[i] = (uint8_t)(u & 0xffu);
        u >>= 8;
    }
}

int64_t rb_pgwire_get_int8(const uint8_t *p)
{
    uint64_t u = 0;
    for (int i = 0; i < 8; i++) {
        u = (u << 8) | p[i];
    }
    return (int64_t)u;
}

static void put_int4(uint8_t *out, uint32_t v)
{
    out[0] = (uint8_t)(v >> 24);
    out[1] = (uint8_t)(v >> 16);
    out[2] = (uint8_t)(v >> 8);
    out[3] = (uint8_t)v;
}

int64_t rb_pgwire_clamp_seq(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
}

size_t rb_pgwire_int8_array_size(uint32_t n)
{
    return RB_PGWIRE_ARRAY_HEAD_BYTES + (size_t)n * (RB_PGWIRE_ELEM_HEAD_BYTES + 8);
}

size_t rb_pgwire_bytes_array_size(uint32_t n, size_t data_bytes)
{
    return RB_PGWIRE_ARRAY_HEAD_BYTES + (size_t)n * RB_PGWIRE_ELEM_HEAD_BYTES + data_bytes;
}

static uint8_t *array_head(uint8_t *out, uint32_t elem_oid, uint32_t n)
{
    /* An empty array has no dimensions. */
    put_int4(out, n > 0 ? 1u : 0u);
    put_int4(out + 4, 0); /* no NULL elements */
    put_int4(out + 8, elem_oid);
    if (n == 0) {
        return out + 12;
    }
    put_int4(out + 12, n);
    put_int4(out + 16, 1); /* lower bound */
    return out + RB_PGWIRE_ARRAY_HEAD_BYTES;
}

size_t rb_pgwire_int8_array(uint8_t *out, size_t cap, const int64_t *v, uint32_t n)
{
    size_t need = rb_pgwire_int8_array_size(n);
    if (cap < need) {
        return 0;
    }
    uint8_t *p = array_head(out, RB_PG_OID_INT8, n);
    for (uint32_t i = 0; i < n; i++) {
        put_int4(p, 8);
        rb_pgwire_put_int8(p + 4, v[i]);
        p += 12;
    }
    return (size_t)(p - out);
}

size_t rb_pgwire_bytes_array(uint8_t *out, size_t cap, uint32_t elem_oid, const rb_bytes *v,
                             uint32_t n)
{
    size_t data = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (v[i].len > INT32_MAX) {
            return 0;
        }
        data += v[i].len;
    }
    if (cap < rb_pgwire_bytes_array_size(n, data)) {
        return 0;
    }
    uint8_t *p = array_head(out, elem_oid, n);
    for (uint32_t i = 0; i < n; i++) {
        put_int4(p, (uint32_t)v[i].len);
        if (v[i].len > 0) {
            memcpy(p + 4, v[i].ptr, v[i].len);
        }
        p += 4 + v[i].len;
    }
    return (size_t)(p - out);
}

int rb_pgwire_read_password(const char *path, char *out, size_t cap, rb_err *err)
{
    RB_ASSERT(cap > 1);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        return rb_err_set(err, RB_ESYS, errno, "postgres password_file %s: open", path);
    }
    ssize_t n = read(fd, out, cap - 1);
    int e = errno;
    close(fd);
    if (n < 0) {
        return rb_err_set(err, RB_ESYS, e, "postgres password_file %s: read", path);
    }
    out[n] = '\0';
    size_t len = strcspn(out, "\r\n");
    if (len == (size_t)n && (size_t)n == cap - 1) {
        memset(out, 0, cap);
        return rb_err_set(err, RB_EINVAL, 0, "postgres password_file %s: first line over %zu bytes",
                          path, cap - 2);
    }
    memset(out + len, 0, cap - len);
    return 0;
}

static char *own(rb_pgwire_params *p, const char *s)
{
    if (p->owned_count >= RB_PGWIRE_OWNED_MAX) {
        return NULL;
    }
    char *copy = strdup(s);
    if (copy != NULL) {
        p->owned[p->owned_count++] = copy;
    }
    return copy;
}

const char *rb_pgwire_params_get(const rb_pgwire_params *p, const char *keyword)
{
    for (uint32_t i = 0; i < p->count; i++) {
        if (strcmp(p->keywords[i], keyword) == 0) {
            return p->values[i];
        }
    }
    return NULL;
}

int rb_pgwire_params_set(rb_pgwire_params *p, const char *keyword, const char *value, rb_err *err)
{
    uint32_t i = 0;
    while (i < p->count && strcmp(p->keywords[i], keyword) != 0) {
        i++;
    }
    if (i == RB_PGWIRE_PARAMS_MAX) {
        return rb_err_set(err, RB_ELIMIT, 0, "postgres conninfo: over %u parameters",
                          RB_PGWIRE_PARAMS_MAX);
    }
    char *v = own(p, value);
    char *k = i == p->count ? own(p, keyword) : (char *)p->keywords[i];
    if (v == NULL || k == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "postgres conninfo: out of memory");
    }
    p->keywords[i] = k;
    p->values[i] = v;
    if (i == p->count) {
        p->count++;
        p->keywords[p->count] = NULL;
        p->values[p->count] = NULL;
    }
    return 0;
}

/* True when conninfo carries a password: a URI's user info with a ':' or
 * a password keyword. */
static bool has_password(const char *conninfo)
{
    const char *scheme = strstr(conninfo, "://");
    if (scheme != NULL) {
        const char *info = scheme + 3;
        size_t len = strcspn(info, "/?#");
        const char *at = memchr(info, '@', len);
        if (at != NULL && memchr(info, ':', (size_t)(at - info)) != NULL) {
            return true;
        }
    }
    return strstr(conninfo, "password") != NULL;
}

static int params_parse(rb_pgwire_params *p, const char *conninfo, rb_err *err)
{
    char *why = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &why);
    if (opts == NULL) {
        /* libpq quotes the malformed part, or the whole URI, in its reason:
         * with a password in the string, the quoted text is left out. */
        const char *reason = why != NULL ? why : "out of memory";
        bool withhold = why != NULL && strchr(why, '"') != NULL && has_password(conninfo);
        int rc =
            rb_err_set(err, RB_ECONFIG, 0, "postgres conninfo: %.*s%s",
                       withhold ? (int)strcspn(reason, "\"") : (int)strlen(reason), reason,
                       withhold ? "(the quoted part is not shown: it may hold the password)" : "");
        PQfreemem(why);
        return rc;
    }
    int rc = 0;
    for (PQconninfoOption *o = opts; rc == 0 && o->keyword != NULL; o++) {
        if (o->val != NULL) {
            rc = rb_pgwire_params_set(p, o->keyword, o->val, err);
        }
    }
    PQconninfoFree(opts);
    return rc;
}

int rb_pgwire_params_init(rb_pgwire_params *p, const char *conninfo, const char *password,
                          uint32_t statement_timeout_ms, rb_err *err)
{
    memset(p, 0, sizeof *p);
    int rc = params_parse(p, conninfo, err);
    if (rc == 0 && password != NULL && password[0] != '\0') {
        rc = rb_pgwire_params_set(p, "password", password, err);
    }
    if (rc == 0) {
        /* Settings ride in the startup packet: no SET round trip. Every
         * statement of ringbus is prepared once per connection and has one
         * good plan whatever its parameters, so it is never re-planned. */
        const char *opts = rb_pgwire_params_get(p, "options");
        char buf[1024];
        int n = snprintf(buf, sizeof buf,
                         "%s%s-c statement_timeout=%u -c plan_cache_mode=force_generic_plan",
                         opts ? opts : "", opts && opts[0] ? " " : "", statement_timeout_ms);
        rc = n < 0 || (size_t)n >= sizeof buf
                 ? rb_err_set(err, RB_ECONFIG, 0, "postgres conninfo: options too long")
                 : rb_pgwire_params_set(p, "options", buf, err);
    }
    if (rc == 0) {
        rc = rb_pgwire_params_set(p, "fallback_application_name", "ringbusd", err);
    }
    if (rc == 0 && rb_pgwire_params_get(p, "connect_timeout") == NULL) {
        rc = rb_pgwire_params_set(p, "connect_timeout", PGWIRE_CONNECT_TIMEOUT_S, err);
    }
    if (rc != 0) {
        rb_pgwire_params_deinit(p);
    }
    return rc;
}

void rb_pgwire_params_deinit(rb_pgwire_params *p)
{
    for (uint32_t i = 0; i < p->owned_count; i++) {
        /* A password may be among them. */
        memset(p->owned[i], 0, strlen(p->owned[i]));
        free(p->owned[i]);
    }
    memset(p, 0, sizeof *p);
}
