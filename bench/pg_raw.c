/* pg_raw: the baseline of the Postgres benchmarks (docs/BENCHMARKS.md,
 * "Postgres"): what a plain libpq program gets from the same Postgres with
 * the same rows and the same table that ringbus uses, without ringbus.
 *
 *   pg_raw CONNINFO insert TOTAL BATCH PAYLOAD_BYTES [DEPTH [TOPIC_ID]]
 *     inserts TOTAL rows of PAYLOAD_BYTES into messages, BATCH rows per
 *     transaction (one INSERT ... SELECT FROM unnest($3::bytea[]), binary
 *     parameters, committed at each Sync), DEPTH transactions pipelined on
 *     one connection; prints rows/s.
 *   pg_raw CONNINFO read TOPIC PAGE
 *     reads every row of topic TOPIC (by name) in seq order, PAGE rows per
 *     query (keyset paging on the primary key, binary results); prints
 *     rows/s.
 *
 * Blocking libpq is fine here: this is a benchmark program, not the
 * daemon. Build: see bench/pg_bench.sh. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "storage/pgwire.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(PGconn *pg, const char *what)
{
    fprintf(stderr, "pg_raw: %s: %s", what, PQerrorMessage(pg));
    exit(1);
}

/* Takes the results of one pipelined transaction, through its Sync. */
static void take_one(PGconn *pg)
{
    for (;;) {
        PGresult *res = PQgetResult(pg);
        if (res == NULL) {
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            return;
        }
        if (st != PGRES_COMMAND_OK) {
            fprintf(stderr, "pg_raw: insert: %s", PQresultErrorMessage(res));
            exit(1);
        }
        PQclear(res);
    }
}

static int do_insert(PGconn *pg, long total, long batch, long bytes, long depth, int64_t topic)
{
    static const char *sql =
        "INSERT INTO messages (topic_id, seq, payload, published_at) SELECT $1, $2 + u.ord, "
        "u.p, now() FROM unnest($3::bytea[]) WITH ORDINALITY AS u(p, ord)";
    uint8_t *payload = malloc((size_t)bytes);
    rb_bytes *rows = calloc((size_t)batch, sizeof *rows);
    size_t cap = rb_pgwire_bytes_array_size((uint32_t)batch, (size_t)(batch * bytes));
    uint8_t *arr = malloc(cap);
    memset(payload, 'r', (size_t)bytes);
    for (long i = 0; i < batch; i++) {
        rows[i] = (rb_bytes){payload, (size_t)bytes};
    }
    size_t arr_len = rb_pgwire_bytes_array(arr, cap, RB_PG_OID_BYTEA, rows, (uint32_t)batch);
    char q[128];
    snprintf(q, sizeof q, "DELETE FROM messages WHERE topic_id = %" PRId64, topic);
    PQclear(PQexec(pg, q));
    if (PQenterPipelineMode(pg) != 1) {
        die(pg, "pipeline mode");
    }
    Oid types[3] = {20, 20, 1001};
    int formats[3] = {1, 1, 1};
    double t0 = now_s();
    long sent = 0;
    long inflight = 0;
    while (sent < total || inflight > 0) {
        if (sent < total && inflight < depth) {
            uint8_t id[8];
            uint8_t base[8];
            rb_pgwire_put_int8(id, topic);
            rb_pgwire_put_int8(base, sent);
            const char *vals[3] = {(char *)id, (char *)base, (char *)arr};
            int lens[3] = {8, 8, (int)arr_len};
            if (PQsendQueryParams(pg, sql, 3, types, vals, lens, formats, 1) != 1 ||
                PQpipelineSync(pg) != 1) {
                die(pg, "send");
            }
            sent += batch;
            inflight++;
            continue;
        }
        take_one(pg);
        inflight--;
    }
    double dt = now_s() - t0;
    printf("insert rows=%ld batch=%ld payload=%ld depth=%ld seconds=%.3f rows_per_s=%.0f\n", total,
           batch, bytes, depth, dt, (double)total / dt);
    free(arr);
    free(rows);
    free(payload);
    return 0;
}

static int do_read(PGconn *pg, const char *topic, long page)
{
    const char *tv[1] = {topic};
    PGresult *res =
        PQexecParams(pg, "SELECT id FROM topics WHERE name = $1", 1, NULL, tv, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        die(pg, "topic id");
    }
    int64_t id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    Oid types[3] = {20, 20, 20};
    int formats[3] = {1, 1, 1};
    int64_t after = 0;
    long rows = 0;
    long long bytes = 0;
    double t0 = now_s();
    for (;;) {
        uint8_t a[8], b[8], c[8];
        rb_pgwire_put_int8(a, id);
        rb_pgwire_put_int8(b, after);
        rb_pgwire_put_int8(c, page);
        const char *vals[3] = {(char *)a, (char *)b, (char *)c};
        int lens[3] = {8, 8, 8};
        res = PQexecParams(pg,
                           "SELECT seq, payload FROM messages WHERE topic_id = $1 AND seq > $2 "
                           "ORDER BY seq LIMIT $3",
                           3, types, vals, lens, formats, 1);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            die(pg, "read");
        }
        int n = PQntuples(res);
        for (int i = 0; i < n; i++) {
            after = rb_pgwire_get_int8((const uint8_t *)PQgetvalue(res, i, 0));
            bytes += PQgetlength(res, i, 1);
        }
        rows += n;
        PQclear(res);
        if (n < page) {
            break;
        }
    }
    double dt = now_s() - t0;
    printf("read rows=%ld bytes=%lld page=%ld seconds=%.3f rows_per_s=%.0f\n", rows, bytes, page,
           dt, (double)rows / dt);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr,
                "usage: pg_raw CONNINFO insert TOTAL BATCH PAYLOAD_BYTES [DEPTH [TOPIC_ID]]\n"
                "       pg_raw CONNINFO read TOPIC PAGE\n");
        return 2;
    }
    PGconn *pg = PQconnectdb(argv[1]);
    if (PQstatus(pg) != CONNECTION_OK) {
        die(pg, "connect");
    }
    int rc = 2;
    if (strcmp(argv[2], "insert") == 0 && argc >= 6) {
        long depth = argc > 6 ? atol(argv[6]) : 1;
        int64_t topic = argc > 7 ? atoll(argv[7]) : -1 - (int64_t)getpid();
        rc = do_insert(pg, atol(argv[3]), atol(argv[4]), atol(argv[5]), depth, topic);
    } else if (strcmp(argv[2], "read") == 0 && argc >= 5) {
        rc = do_read(pg, argv[3], atol(argv[4]));
    } else {
        fprintf(stderr, "pg_raw: unknown mode %s\n", argv[2]);
    }
    PQfinish(pg);
    return rc;
}
