/* Pure helpers of the postgres backend, kept apart so that they can be unit
 * tested without a server: libpq binary-format values (big-endian int8,
 * one-dimensional arrays of int8, text and bytea), cursor clamping, the
 * password file and the connection parameters (the configured conninfo
 * expanded into keyword/value arrays, plus the password, the statement
 * timeout and defaults). It links libpq only for PQconninfoParse; it opens
 * no connection. Callers own every buffer they pass. */
#ifndef RB_STORAGE_PGWIRE_H
#define RB_STORAGE_PGWIRE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/frame.h"

/* Type oids of the values ringbus sends in binary format. */
#define RB_PG_OID_INT8  20u
#define RB_PG_OID_TEXT  25u
#define RB_PG_OID_BYTEA 17u

/* Bytes of the header of a one-dimensional binary array (ndim, has-null
 * flag, element oid, length, lower bound) and of each element's length. */
#define RB_PGWIRE_ARRAY_HEAD_BYTES 20u
#define RB_PGWIRE_ELEM_HEAD_BYTES  4u

/* Connection parameters: at most this many keyword/value pairs (libpq has
 * about 40 keywords; ringbus adds 4). */
#define RB_PGWIRE_PARAMS_MAX 64
/* Copies a parameter set may own: a keyword and a value per parameter,
 * plus the values ringbus replaces (password, options). */
#define RB_PGWIRE_OWNED_MAX (2 * RB_PGWIRE_PARAMS_MAX + 8)

void rb_pgwire_put_int8(uint8_t *out, int64_t v);
int64_t rb_pgwire_get_int8(const uint8_t *p);

/* Seqs and cursors are u64 on the wire and bigint in Postgres: a value
 * above INT64_MAX is clamped to it (no stored seq can exceed it), never
 * wrapped into a negative number. */
int64_t rb_pgwire_clamp_seq(uint64_t v);

/* Size of an int8 array of n elements; of a text or bytea array of n
 * elements whose bytes add up to data_bytes. */
size_t rb_pgwire_int8_array_size(uint32_t n);
size_t rb_pgwire_bytes_array_size(uint32_t n, size_t data_bytes);

/* Encode a binary array into out (cap bytes). Each returns the bytes
 * written, or 0 when out is too small (nothing useful is written then). */
size_t rb_pgwire_int8_array(uint8_t *out, size_t cap, const int64_t *v, uint32_t n);
size_t rb_pgwire_bytes_array(uint8_t *out, size_t cap, uint32_t elem_oid, const rb_bytes *v,
                             uint32_t n);

/* Reads the first line of the password file at path into out (without the
 * line end). Returns 0, or RB_ESYS / RB_EINVAL naming the file. */
int rb_pgwire_read_password(const char *path, char *out, size_t cap, rb_err *err);

/* Keyword/value arrays for PQconnectStartParams / PQconnectdbParams
 * (expand_dbname 0), NULL-terminated. They own copies of their strings. */
typedef struct rb_pgwire_params {
    const char *keywords[RB_PGWIRE_PARAMS_MAX + 1];
    const char *values[RB_PGWIRE_PARAMS_MAX + 1];
    char *owned[RB_PGWIRE_OWNED_MAX]; /* copies of keywords and values, freed at deinit */
    uint32_t owned_count;
    uint32_t count;
} rb_pgwire_params;

/* Parses conninfo (a key=value string or a postgresql:// URI) and adds:
 * password (when not NULL or empty; it overrides one in conninfo),
 * "-c statement_timeout=N -c plan_cache_mode=force_generic_plan" appended
 * to options, fallback_application_name
 * "ringbusd" and connect_timeout 10 unless conninfo has one. Returns 0 or
 * RB_ECONFIG with libpq's reason; p is empty afterwards on failure. The
 * password never appears in err. */
int rb_pgwire_params_init(rb_pgwire_params *p, const char *conninfo, const char *password,
                          uint32_t statement_timeout_ms, rb_err *err);
void rb_pgwire_params_deinit(rb_pgwire_params *p);

/* The value of keyword in p, or NULL. */
const char *rb_pgwire_params_get(const rb_pgwire_params *p, const char *keyword);

/* Sets keyword to value (replacing it, or adding it). Returns 0 or
 * RB_ENOMEM / RB_ELIMIT. */
int rb_pgwire_params_set(rb_pgwire_params *p, const char *keyword, const char *value, rb_err *err);

#endif
