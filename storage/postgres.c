/* The postgres storage backend (DESIGN §2 "Storage interface", "Sequencing
 * across nodes"; §6 libpq). It owns, per process, the connection parameters
 * and a bootstrap thread that reaches Postgres and applies the schema
 * migrations (pg_schema.c), retrying with backoff until it can; and per
 * shard, pool_size libpq connections in nonblocking pipeline mode whose
 * sockets the shard's io_uring polls, a queue of requests waiting for a
 * connection, a cache of topic ids and (shard 0) the retention timer. No
 * blocking libpq call runs on a shard thread: connections are made with
 * PQconnectStartParams/PQconnectPoll, and everything else is sent with
 * PQsend* and read with PQconsumeInput/PQisBusy/PQgetResult when the socket
 * polls readable. (libpq resolves a host name inside PQconnectPoll; the
 * bootstrap thread resolves it once and pins hostaddr, so shards never
 * wait on DNS.)
 *
 * Jobs. Each request becomes one job: its statements and a Sync, pipelined
 * on one connection behind the jobs already there. Between two Syncs and
 * without BEGIN, the statements form one implicit transaction that the
 * server commits when it processes the Sync; PGRES_PIPELINE_SYNC arriving
 * with no error before it is the commit succeeding. An error rolls that
 * transaction back and the server skips to the Sync, so it aborts only that
 * job (PIPELINE_ABORTED until the sync), never the ones behind it. (An
 * explicit BEGIN ... COMMIT would leave the connection in an aborted
 * transaction block after an error, failing every job pipelined behind.)
 *
 * Appends: [INSERT topic ON CONFLICT DO NOTHING when its id is not cached],
 * UPDATE topics SET head = head + n ... RETURNING head (the row lock orders
 * appenders of a topic across shards and daemons), INSERT of the rows from
 * a bytea array with unnest (in statements of at most batch_messages rows),
 * Sync. The seq range is (head - n, head]. Reads: one statement for all
 * ranges (arrays of ids, cursors, ceilings and limits, unnest, a LATERAL
 * index seek per topic), in binary format; a range whose topic id is not
 * cached first looks its id up (one statement for all of them). Heads: one
 * statement for all topics.
 *
 * Failures. A connection that fails (reset, Postgres restarted, no answer
 * in time) fails every job it has in flight with RB_ESTORAGE: for an append
 * whose Sync did not come back the commit is unknown, and it is reported as
 * not committed (never a false ack; the message may still be stored: a
 * retry without an idempotency key may store it twice, one with a key is
 * answered as a duplicate by ringbus_append_keyed). The
 * connection reconnects with backoff; while no connection of the shard is
 * up or connecting, requests fail at once with RB_ESTORAGE.
 *
 * Completions are never called from inside a request call or a poll
 * completion: they are queued and told from a deferred task on the shard's
 * loop, in order. */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <libpq-fe.h>

#include "common/assert.h"
#include "common/hash.h"
#include "common/limits.h"
#include "common/log.h"
#include "storage/pg_schema.h"
#include "storage/pgwire.h"
#include "storage/storage.h"

/* Array type oids. */
#define OID_INT8_ARRAY  1016u
#define OID_TEXT_ARRAY  1009u
#define OID_BYTEA_ARRAY 1001u

/* Watchdog period while anything is in flight or connecting. */
#define PG_WATCHDOG_MS 250u

/* ---- statements ---- */

enum {
    ST_HEADS,
    ST_TOPIC,
    ST_BUMP_ID,
    ST_BUMP_NAME,
    ST_ROWS_ID,
    ST_ROWS_NAME,
    ST_READ,
    ST_RETAIN,
    ST_KEYED,
    ST_PRUNE,
    ST_COUNT
};

typedef struct stmt {
    const char *name;
    const char *sql;
    int param_count;
    Oid types[5];
} stmt;

static const stmt stmts[ST_COUNT] = {
    [ST_HEADS] = {"rb_heads",
                  "SELECT u.ord, t.id, t.head FROM unnest($1::text[]) WITH ORDINALITY AS u(name, "
                  "ord) JOIN topics t ON t.name = u.name",
                  1,
                  {OID_TEXT_ARRAY}},
    [ST_TOPIC] = {"rb_topic",
                  "INSERT INTO topics (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                  1,
                  {RB_PG_OID_TEXT}},
    [ST_BUMP_ID] = {"rb_bump_id",
                    "UPDATE topics SET head = head + $2 WHERE id = $1 RETURNING id, head",
                    2,
                    {RB_PG_OID_INT8, RB_PG_OID_INT8}},
    [ST_BUMP_NAME] = {"rb_bump_name",
                      "UPDATE topics SET head = head + $2 WHERE name = $1 RETURNING id, head",
                      2,
                      {RB_PG_OID_TEXT, RB_PG_OID_INT8}},
    /* The head read here is the one this transaction just set. */
    [ST_ROWS_ID] = {"rb_rows_id",
                    "INSERT INTO messages (topic_id, seq, payload, published_at) SELECT t.id, "
                    "t.head - $2 + u.ord, u.payload, now() FROM topics t, unnest($3::bytea[]) "
                    "WITH ORDINALITY AS u(payload, ord) WHERE t.id = $1",
                    3,
                    {RB_PG_OID_INT8, RB_PG_OID_INT8, OID_BYTEA_ARRAY}},
    [ST_ROWS_NAME] = {"rb_rows_name",
                      "INSERT INTO messages (topic_id, seq, payload, published_at) SELECT t.id, "
                      "t.head - $2 + u.ord, u.payload, now() FROM topics t, unnest($3::bytea[]) "
                      "WITH ORDINALITY AS u(payload, ord) WHERE t.name = $1",
                      3,
                      {RB_PG_OID_TEXT, RB_PG_OID_INT8, OID_BYTEA_ARRAY}},
    /* One row per range at least (LEFT JOIN), in range order: the nested
     * loop over the unnest keeps it, and the reader checks it. oldest is
     * the topic's oldest retained seq (one index descent). */
    [ST_READ] = {"rb_read",
                 "SELECT x.ord, o.oldest, m.seq, m.payload FROM unnest($1::int8[], $2::int8[], "
                 "$3::int8[], $4::int8[]) WITH ORDINALITY AS x(id, after, ceiling, lim, ord) "
                 "CROSS JOIN LATERAL (SELECT min(seq) AS oldest FROM messages WHERE topic_id = "
                 "x.id) o LEFT JOIN LATERAL (SELECT seq, payload FROM messages WHERE topic_id = "
                 "x.id AND seq > x.after AND seq <= x.ceiling ORDER BY seq LIMIT x.lim) m ON true",
                 4,
                 {OID_INT8_ARRAY, OID_INT8_ARRAY, OID_INT8_ARRAY, OID_INT8_ARRAY}},
    /* Retention over topics id > $1 (at most $2 of them): of each topic's
     * $3 oldest rows, those beyond the newest $4 (when $4 > 0) or older
     * than $5 seconds (when $5 > 0), never the topic's newest row, at most
     * $3 rows in all. Each topic's scan is bounded by the LIMIT, however
     * large the topic. */
    [ST_RETAIN] = {"rb_retain",
                   "WITH t AS (SELECT id, head FROM topics WHERE id > $1 ORDER BY id LIMIT $2), "
                   "d AS (SELECT m.topic_id, m.seq FROM t CROSS JOIN LATERAL (SELECT topic_id, "
                   "seq, published_at FROM messages WHERE topic_id = t.id ORDER BY seq LIMIT $3) "
                   "m WHERE m.seq < t.head AND (($4 > 0 AND m.seq <= t.head - $4) OR ($5 > 0 AND "
                   "m.published_at < now() - make_interval(secs => $5))) LIMIT $3), "
                   "del AS (DELETE FROM messages x USING d WHERE x.topic_id = d.topic_id AND "
                   "x.seq = d.seq RETURNING x.topic_id) "
                   "SELECT (SELECT count(*) FROM t), (SELECT coalesce(max(id), 0) FROM t), "
                   "(SELECT count(*) FROM del), (SELECT coalesce(max(topic_id), 0) FROM del)",
                   5,
                   {RB_PG_OID_INT8, RB_PG_OID_INT8, RB_PG_OID_INT8, RB_PG_OID_INT8,
                    RB_PG_OID_INT8}},
    /* An append with idempotency keys (pg_schema.c, migration 3): one row
     * per payload, in order: its seq (the original's when duplicate). $1 is
     * the cached id or 0 (then $2, the name, finds the row). */
    [ST_KEYED] = {"rb_keyed",
                  "SELECT ord, seq, duplicate, topic_id FROM ringbus_append_keyed($1, $2, $3, $4, "
                  "$5)",
                  5,
                  {RB_PG_OID_INT8, RB_PG_OID_TEXT, OID_BYTEA_ARRAY, OID_BYTEA_ARRAY,
                   RB_PG_OID_INT8}},
    /* Expired idempotency keys, oldest first, at most $1 of them; a key
     * renewed meanwhile (a new commit after its window) is kept by the
     * recheck of expires_at. */
    [ST_PRUNE] = {"rb_prune",
                  "DELETE FROM idempotency_keys i USING (SELECT topic_id, key FROM "
                  "idempotency_keys WHERE expires_at <= now() ORDER BY expires_at LIMIT $1) d "
                  "WHERE i.topic_id = d.topic_id AND i.key = d.key AND i.expires_at <= now()",
                  1,
                  {RB_PG_OID_INT8}},
};

/* ---- types ---- */

typedef enum job_kind {
    JOB_SETUP = 1,
    JOB_APPEND,
    JOB_LOOKUP, /* a read's first step: ids of topics not cached */
    JOB_READ,
    JOB_HEADS,
    JOB_RETAIN,
    JOB_PRUNE,
} job_kind;

typedef struct pg_job pg_job;
struct pg_job {
    pg_job *next;
    job_kind kind;
    uint32_t stmt_count; /* statements sent before the Sync */
    uint32_t stmt_done;  /* statements whose results have ended */
    bool got_result;     /* the current statement has a result (NULL ends it) */
    bool failed;
    uint64_t since_ms; /* when it became the oldest job of its connection */
    size_t bytes;      /* parameter bytes sent */
    int *status;       /* where its outcome goes */
    rb_err *err;
    union {
        rb_append_req *append;
        rb_read_req *read;
        rb_heads_req *heads;
    } req;
    /* appends */
    bool by_name;     /* the id was not cached: the topic is named (and created) */
    int64_t topic_id; /* the cached id, then the one the UPDATE returned */
    int64_t head;
    uint64_t rows_inserted;
    bool keyed;         /* sent as ST_KEYED: the rows say which are duplicates */
    uint32_t new_count; /* keyed: payloads stored (not duplicates) */
};

typedef enum conn_state {
    CONN_DOWN = 0, /* waiting for the retry timer */
    CONN_CONNECTING,
    CONN_READY,
    CONN_CLOSING, /* socket shut down, waiting for its polls to complete */
} conn_state;

typedef struct pg_conn {
    rb_storage_shard *sh;
    PGconn *pg;
    int fd;
    conn_state state;
    uint32_t index;
    rb_op rd_op;
    rb_op wr_op;
    bool rd_armed;
    bool wr_armed;
    pg_job *head; /* jobs sent, oldest first */
    pg_job *tail;
    uint32_t depth;
    size_t bytes;
    rb_timer retry;
    uint32_t backoff_ms;
    uint64_t connect_since_ms;
    pg_job setup;
    rb_err setup_err;
    int setup_status;
} pg_conn;

typedef struct id_slot {
    uint64_t hash;
    int64_t id; /* 0: empty */
    uint32_t name_off;
    uint8_t name_len;
} id_slot;

struct rb_storage {
    rb_pgwire_params params;
    uint32_t pool_size;
    uint32_t statement_timeout_ms;
    uint32_t batch_messages;
    uint32_t max_frame_bytes;
    int64_t retention_messages;
    int64_t retention_age_s;
    pthread_t boot_thread;
    bool boot_started;
    pthread_mutex_t boot_lock;
    pthread_cond_t boot_cond;
    bool boot_stop; /* guarded by boot_lock */
    atomic_bool ready;
    atomic_uint_fast64_t epoch; /* stored before ready becomes true */
    atomic_uint shard_count;
    /* conn_fail calls (a lost connection or a failed attempt; cold path,
     * so one atomic add from any shard) */
    atomic_uint_fast64_t reconnects;
    /* Shards open with no connection ready (GET /readyz); each shard moves
     * it when its own ready count leaves or reaches 0. */
    atomic_uint shards_unreachable;
};

struct rb_storage_shard {
    rb_storage *st;
    rb_loop *loop;
    uint32_t ready_conns; /* connections in CONN_READY (this shard only) */
    uint32_t shard_id;
    pg_conn *conns;
    pg_job *jobs;
    pg_job *job_free;
    pg_job *wait_head; /* jobs waiting for a connection */
    pg_job *wait_tail;
    rb_storage_tells tells; /* done requests, told in call order; admitted
                             * counts requests whose done has not run */
    uint8_t *scratch;       /* parameter arrays; libpq copies them when sending */
    size_t scratch_cap;
    /* Per-call scratch of RB_CATCHUP_TOPICS_MAX entries (never kept across
     * calls): a statement's ordinality to a range, names, array columns. */
    uint32_t *map;
    rb_bytes *names;
    int64_t *cols; /* 4 columns */
    id_slot *ids;
    uint8_t *id_names;
    uint32_t id_count;
    uint32_t id_names_used;
    rb_timer watchdog;
    /* retention (shard 0) */
    bool retain_on;
    bool retain_busy;
    rb_timer retain_timer;
    pg_job retain;
    int retain_status;
    rb_err retain_err;
    int64_t retain_cursor; /* topics with a greater id are next */
    bool retain_pass_over;
    uint64_t retain_pass_deleted;
    /* pruning of expired idempotency keys (shard 0) */
    bool prune_busy;
    rb_timer prune_timer;
    pg_job prune;
    int prune_status;
    rb_err prune_err;
    uint64_t prune_deleted;
};

static void pump(rb_storage_shard *sh);
static void conn_fail(pg_conn *c, const char *why);
static void job_synced(rb_storage_shard *sh, pg_conn *c, pg_job *j);

/* ---- topic id cache ---- */

static int64_t id_find(const rb_storage_shard *sh, rb_bytes name)
{
    uint64_t h = rb_hash_bytes(name.ptr, name.len);
    uint32_t mask = RB_PG_ID_CACHE_SLOTS - 1;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
        const id_slot *s = &sh->ids[i];
        if (s->id == 0) {
            return 0;
        }
        if (s->hash == h && s->name_len == name.len &&
            memcmp(sh->id_names + s->name_off, name.ptr, name.len) == 0) {
            return s->id;
        }
    }
}

static void id_put(rb_storage_shard *sh, rb_bytes name, int64_t id)
{
    RB_ASSERT(id > 0);
    if (name.len > RB_TOPIC_BYTES_MAX || id_find(sh, name) == id) {
        return;
    }
    if ((sh->id_count + 1) * 2 > RB_PG_ID_CACHE_SLOTS ||
        sh->id_names_used + name.len > RB_PG_ID_CACHE_NAME_BYTES) {
        /* Full: start over; ids are looked up again as needed. */
        memset(sh->ids, 0, RB_PG_ID_CACHE_SLOTS * sizeof *sh->ids);
        sh->id_count = 0;
        sh->id_names_used = 0;
    }
    uint64_t h = rb_hash_bytes(name.ptr, name.len);
    uint32_t mask = RB_PG_ID_CACHE_SLOTS - 1;
    uint32_t i = (uint32_t)h & mask;
    while (sh->ids[i].id != 0) {
        i = (i + 1) & mask;
    }
    memcpy(sh->id_names + sh->id_names_used, name.ptr, name.len);
    sh->ids[i] = (id_slot){
        .hash = h, .id = id, .name_off = sh->id_names_used, .name_len = (uint8_t)name.len};
    sh->id_names_used += (uint32_t)name.len;
    sh->id_count++;
}

/* ---- completions ---- */

static void job_put(rb_storage_shard *sh, pg_job *j)
{
    j->next = sh->job_free;
    sh->job_free = j;
}

/* Ends a request's job: its done runs from the deferred flush. */
static void job_finish(rb_storage_shard *sh, pg_job *j)
{
    switch (j->kind) {
    case JOB_APPEND:
        rb_storage__tell_later(&sh->tells, &j->req.append->task, rb_storage__append_told);
        break;
    case JOB_LOOKUP:
    case JOB_READ:
        rb_storage__tell_later(&sh->tells, &j->req.read->task, rb_storage__read_told);
        break;
    case JOB_HEADS:
        rb_storage__tell_later(&sh->tells, &j->req.heads->task, rb_storage__heads_told);
        break;
    default:
        RB_ASSERT(!"internal jobs are not finished here");
    }
    job_put(sh, j);
}

static bool is_request(const pg_job *j)
{
    return j->kind != JOB_SETUP && j->kind != JOB_RETAIN && j->kind != JOB_PRUNE;
}

static void retain_synced(rb_storage_shard *sh, pg_job *j);
static void prune_synced(rb_storage_shard *sh, pg_job *j);
static void job_fail(pg_job *j, const char *detail);

/* A job that will get no (more) results: fails it and ends it. */
static void job_abandon(rb_storage_shard *sh, pg_job *j, const char *why)
{
    job_fail(j, why);
    if (is_request(j)) {
        job_finish(sh, j);
    } else if (j->kind == JOB_RETAIN) {
        retain_synced(sh, j);
    } else if (j->kind == JOB_PRUNE) {
        prune_synced(sh, j);
    }
}

/* ---- the wait queue ---- */

static void wait_push(rb_storage_shard *sh, pg_job *j, bool front)
{
    j->next = NULL;
    if (sh->wait_head == NULL) {
        sh->wait_head = j;
        sh->wait_tail = j;
    } else if (front) {
        j->next = sh->wait_head;
        sh->wait_head = j;
    } else {
        sh->wait_tail->next = j;
        sh->wait_tail = j;
    }
}

static bool pool_alive(const rb_storage_shard *sh)
{
    for (uint32_t i = 0; i < sh->st->pool_size; i++) {
        conn_state s = sh->conns[i].state;
        if (s == CONN_CONNECTING || s == CONN_READY) {
            return true;
        }
    }
    return false;
}

/* Nothing can take the waiting jobs until a reconnect: fail them. */
static void wait_fail_all(rb_storage_shard *sh, const char *why)
{
    pg_job *j = sh->wait_head;
    sh->wait_head = NULL;
    sh->wait_tail = NULL;
    while (j != NULL) {
        pg_job *next = j->next;
        job_abandon(sh, j, why);
        j = next;
    }
}

/* ---- sending ---- */

static int send_stmt(pg_conn *c, int id, const char *const *vals, const int *lens)
{
    static const int formats[5] = {1, 1, 1, 1, 1};
    const stmt *s = &stmts[id];
    int ok = PQsendQueryPrepared(c->pg, s->name, s->param_count, vals, lens, formats, 1);
    return ok == 1 ? 0 : -1;
}

static int send_setup(pg_conn *c, pg_job *j)
{
    for (int i = 0; i < ST_COUNT; i++) {
        const stmt *s = &stmts[i];
        if (PQsendPrepare(c->pg, s->name, s->sql, s->param_count, s->types) != 1) {
            return -1;
        }
    }
    j->stmt_count = ST_COUNT;
    return 0;
}

/* The keyed append (after the topic's INSERT when by name): payloads and
 * keys as two bytea arrays, one after the other in the scratch. */
static int send_keyed(rb_storage_shard *sh, pg_conn *c, pg_job *j)
{
    rb_append_req *req = j->req.append;
    uint8_t id_buf[8];
    uint8_t window_buf[8];
    rb_pgwire_put_int8(id_buf, j->by_name ? 0 : j->topic_id);
    rb_pgwire_put_int8(window_buf, req->dedup_window_ms);
    size_t np = rb_pgwire_bytes_array(sh->scratch, sh->scratch_cap, RB_PG_OID_BYTEA, req->payloads,
                                      req->count);
    RB_ASSERT(np > 0);
    size_t nk = rb_pgwire_bytes_array(sh->scratch + np, sh->scratch_cap - np, RB_PG_OID_BYTEA,
                                      req->keys, req->count);
    RB_ASSERT(nk > 0);
    const char *vals[5] = {(const char *)id_buf, (const char *)req->topic.ptr,
                           (const char *)sh->scratch, (const char *)sh->scratch + np,
                           (const char *)window_buf};
    const int lens[5] = {8, (int)req->topic.len, (int)np, (int)nk, 8};
    if (send_stmt(c, ST_KEYED, vals, lens) != 0) {
        return -1;
    }
    j->stmt_count++;
    j->bytes += np + nk;
    return 0;
}

static int send_append(rb_storage_shard *sh, pg_conn *c, pg_job *j)
{
    rb_append_req *req = j->req.append;
    bool by_name = j->by_name;
    uint8_t id_buf[8];
    uint8_t n_buf[8];
    rb_pgwire_put_int8(id_buf, j->topic_id);
    rb_pgwire_put_int8(n_buf, req->count);
    const char *key = by_name ? (const char *)req->topic.ptr : (const char *)id_buf;
    int key_len = by_name ? (int)req->topic.len : 8;
    j->stmt_count = 0;
    if (by_name) {
        if (send_stmt(c, ST_TOPIC, &key, &key_len) != 0) {
            return -1;
        }
        j->stmt_count++;
    }
    if (j->keyed) {
        return send_keyed(sh, c, j);
    }
    const char *bump_vals[2] = {key, (const char *)n_buf};
    const int bump_lens[2] = {key_len, 8};
    if (send_stmt(c, by_name ? ST_BUMP_NAME : ST_BUMP_ID, bump_vals, bump_lens) != 0) {
        return -1;
    }
    j->stmt_count++;
    for (uint32_t first = 0; first < req->count; first += sh->st->batch_messages) {
        uint32_t k = req->count - first;
        k = k < sh->st->batch_messages ? k : sh->st->batch_messages;
        size_t n = rb_pgwire_bytes_array(sh->scratch, sh->scratch_cap, RB_PG_OID_BYTEA,
                                         req->payloads + first, k);
        RB_ASSERT(n > 0);
        uint8_t rest[8];
        rb_pgwire_put_int8(rest, req->count - first);
        const char *vals[3] = {key, (const char *)rest, (const char *)sh->scratch};
        const int lens[3] = {key_len, 8, (int)n};
        if (send_stmt(c, by_name ? ST_ROWS_NAME : ST_ROWS_ID, vals, lens) != 0) {
            return -1;
        }
        j->stmt_count++;
        j->bytes += n;
    }
    return 0;
}

/* Sends $1 = a text array of names. */
static int send_names(rb_storage_shard *sh, pg_conn *c, pg_job *j, const rb_bytes *names,
                      uint32_t n)
{
    size_t len = rb_pgwire_bytes_array(sh->scratch, sh->scratch_cap, RB_PG_OID_TEXT, names, n);
    RB_ASSERT(len > 0);
    const char *vals[1] = {(const char *)sh->scratch};
    const int lens[1] = {(int)len};
    j->stmt_count = 1;
    j->bytes = len;
    return send_stmt(c, ST_HEADS, vals, lens);
}

/* The ranges of a read still to look up (no cached id) or to query; the
 * map from a statement's ordinality to the range is sh->map. */
static bool range_needs_id(const rb_read_range *r)
{
    return !r->complete && r->oldest_seq == 0;
}

static uint32_t map_ranges(rb_storage_shard *sh, const rb_read_req *req, bool lookup)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < req->range_count; i++) {
        const rb_read_range *r = &req->ranges[i];
        if (lookup ? range_needs_id(r) : !r->complete) {
            sh->map[n++] = i;
        }
    }
    return n;
}

static int send_lookup(rb_storage_shard *sh, pg_conn *c, pg_job *j)
{
    rb_read_req *req = j->req.read;
    uint32_t n = map_ranges(sh, req, true);
    for (uint32_t k = 0; k < n; k++) {
        sh->names[k] = req->ranges[sh->map[k]].topic;
    }
    return send_names(sh, c, j, sh->names, n);
}

static int send_read(rb_storage_shard *sh, pg_conn *c, pg_job *j)
{
    rb_read_req *req = j->req.read;
    uint32_t n = map_ranges(sh, req, false);
    int64_t *cols[4] = {sh->cols, sh->cols + n, sh->cols + 2 * (size_t)n, sh->cols + 3 * (size_t)n};
    for (uint32_t k = 0; k < n; k++) {
        const rb_read_range *r = &req->ranges[sh->map[k]];
        cols[0][k] = (int64_t)r->oldest_seq; /* the topic's id while the read is ours */
        cols[1][k] = rb_pgwire_clamp_seq(r->after);
        cols[2][k] = rb_pgwire_clamp_seq(r->ceiling);
        cols[3][k] = r->rows_max;
    }
    const char *vals[4];
    int lens[4];
    size_t used = 0;
    for (int a = 0; a < 4; a++) {
        size_t len = rb_pgwire_int8_array(sh->scratch + used, sh->scratch_cap - used, cols[a], n);
        RB_ASSERT(len > 0);
        vals[a] = (const char *)sh->scratch + used;
        lens[a] = (int)len;
        used += len;
    }
    j->stmt_count = 1;
    j->bytes = used;
    return send_stmt(c, ST_READ, vals, lens);
}

static int send_retain(rb_storage_shard *sh, pg_conn *c, pg_job *j)
{
    int64_t v[5] = {sh->retain_cursor, RB_PG_RETENTION_TOPICS_MAX, RB_PG_RETENTION_ROWS_MAX,
                    sh->st->retention_messages, sh->st->retention_age_s};
    uint8_t bufs[5][8];
    const char *vals[5];
    int lens[5];
    for (int i = 0; i < 5; i++) {
        rb_pgwire_put_int8(bufs[i], v[i]);
        vals[i] = (const char *)bufs[i];
        lens[i] = 8;
    }
    j->stmt_count = 1;
    return send_stmt(c, ST_RETAIN, vals, lens);
}

static int job_send(rb_storage_shard *sh, pg_conn *c, pg_job *j)
{
    switch (j->kind) {
    case JOB_SETUP:
        return send_setup(c, j);
    case JOB_APPEND:
        return send_append(sh, c, j);
    case JOB_LOOKUP:
        return send_lookup(sh, c, j);
    case JOB_READ:
        return send_read(sh, c, j);
    case JOB_HEADS:
        return send_names(sh, c, j, j->req.heads->topics, j->req.heads->count);
    case JOB_RETAIN:
        return send_retain(sh, c, j);
    case JOB_PRUNE: {
        uint8_t limit[8];
        rb_pgwire_put_int8(limit, RB_PG_DEDUP_PRUNE_ROWS_MAX);
        const char *vals[1] = {(const char *)limit};
        const int lens[1] = {8};
        j->stmt_count = 1;
        return send_stmt(c, ST_PRUNE, vals, lens);
    }
    }
    return -1;
}

/* ---- connection I/O ---- */

static void watchdog_ensure(rb_storage_shard *sh)
{
    if (!sh->watchdog.armed) {
        rb_timer_arm(sh->loop, &sh->watchdog, PG_WATCHDOG_MS);
    }
}

static int arm_read(pg_conn *c)
{
    if (c->rd_armed) {
        return 0;
    }
    if (rb_loop_poll(c->sh->loop, c->fd, POLLIN, &c->rd_op) != 0) {
        return -1;
    }
    c->rd_armed = true;
    return 0;
}

static void conn_flush(pg_conn *c)
{
    int rc = PQflush(c->pg);
    if (rc < 0) {
        conn_fail(c, PQerrorMessage(c->pg));
    } else if (rc == 1 && !c->wr_armed) {
        if (rb_loop_poll(c->sh->loop, c->fd, POLLOUT, &c->wr_op) != 0) {
            conn_fail(c, "no submission entry to poll its socket");
            return;
        }
        c->wr_armed = true;
    }
}

/* Sends j on c (it joins c's jobs) or fails both. */
static void conn_send(pg_conn *c, pg_job *j)
{
    rb_storage_shard *sh = c->sh;
    j->stmt_done = 0;
    j->got_result = false;
    j->bytes = 0;
    int rc = job_send(sh, c, j);
    if (rc == 0 && PQpipelineSync(c->pg) != 1) {
        rc = -1;
    }
    if (rc != 0) {
        char why[RB_ERR_MSG_BYTES_MAX];
        snprintf(why, sizeof why, "send: %s", PQerrorMessage(c->pg));
        job_abandon(sh, j, why);
        conn_fail(c, why);
        return;
    }
    j->next = NULL;
    if (c->tail == NULL) {
        c->head = j;
        j->since_ms = rb_loop_now_ms(sh->loop);
    } else {
        c->tail->next = j;
    }
    c->tail = j;
    c->depth++;
    c->bytes += j->bytes;
    conn_flush(c);
}

static pg_conn *pick_conn(rb_storage_shard *sh)
{
    pg_conn *best = NULL;
    for (uint32_t i = 0; i < sh->st->pool_size; i++) {
        pg_conn *c = &sh->conns[i];
        if (c->state != CONN_READY || c->depth >= RB_PG_PIPELINE_DEPTH_MAX ||
            (c->depth > 0 && c->bytes >= RB_PG_PIPELINE_BYTES_MAX)) {
            continue;
        }
        if (best == NULL || c->depth < best->depth) {
            best = c;
        }
    }
    return best;
}

static void pump(rb_storage_shard *sh)
{
    while (sh->wait_head != NULL) {
        pg_conn *c = pick_conn(sh);
        if (c == NULL) {
            break;
        }
        pg_job *j = sh->wait_head;
        sh->wait_head = j->next;
        if (sh->wait_head == NULL) {
            sh->wait_tail = NULL;
        }
        conn_send(c, j);
    }
    if (sh->wait_head != NULL && !pool_alive(sh)) {
        wait_fail_all(sh, "no connection to postgres (reconnecting)");
    }
    for (uint32_t i = 0; i < sh->st->pool_size; i++) {
        if (sh->conns[i].head != NULL) {
            watchdog_ensure(sh);
            break;
        }
    }
}

/* ---- connection life ---- */

static void conn_start(pg_conn *c);

static void retry_fire(rb_timer *t)
{
    pg_conn *c = RB_CONTAINER_OF(t, pg_conn, retry);
    RB_ASSERT(c->state == CONN_DOWN);
    conn_start(c);
}

/* Both polls have completed after the shutdown: the socket is ours. */
static void conn_closed(pg_conn *c)
{
    RB_ASSERT(!c->rd_armed && !c->wr_armed);
    PQfinish(c->pg);
    c->pg = NULL;
    c->fd = -1;
    c->state = CONN_DOWN;
    rb_timer_arm(c->sh->loop, &c->retry, c->backoff_ms);
    c->backoff_ms =
        c->backoff_ms * 2 > RB_PG_BACKOFF_MS_MAX ? RB_PG_BACKOFF_MS_MAX : c->backoff_ms * 2;
}

/* Drops the connection: fails its jobs (an append whose Sync did not come
 * back is reported as not committed: never a false ack), wakes its polls
 * with a shutdown and reconnects after the backoff. */
static void conn_fail(pg_conn *c, const char *why)
{
    rb_storage_shard *sh = c->sh;
    if (c->state == CONN_CLOSING || c->state == CONN_DOWN) {
        return;
    }
    char reason[RB_ERR_MSG_BYTES_MAX];
    snprintf(reason, sizeof reason, "%.*s", (int)strcspn(why, "\n"), why);
    RB_LOG_WARN(0, "postgres conn %u: %s; %u requests failed; reconnecting in %u ms", c->index,
                reason, c->depth, c->backoff_ms);
    atomic_fetch_add_explicit(&sh->st->reconnects, 1, memory_order_relaxed);
    if (c->state == CONN_READY && --sh->ready_conns == 0) {
        atomic_fetch_add(&sh->st->shards_unreachable, 1);
    }
    c->state = CONN_CLOSING;
    pg_job *j = c->head;
    c->head = NULL;
    c->tail = NULL;
    c->depth = 0;
    c->bytes = 0;
    char lost[RB_ERR_MSG_BYTES_MAX + 64];
    snprintf(lost, sizeof lost, "connection lost before the commit was confirmed: %s", reason);
    while (j != NULL) {
        pg_job *next = j->next;
        job_abandon(sh, j, lost);
        j = next;
    }
    if (c->rd_armed || c->wr_armed) {
        shutdown(c->fd, SHUT_RDWR);
    } else {
        conn_closed(c);
    }
    if (!pool_alive(sh)) {
        wait_fail_all(sh, "no connection to postgres (reconnecting)");
    }
}

static void connect_wait(pg_conn *c, PostgresPollingStatusType want)
{
    c->fd = PQsocket(c->pg);
    uint32_t mask = want == PGRES_POLLING_READING ? POLLIN : POLLOUT;
    if (c->fd < 0 || rb_loop_poll(c->sh->loop, c->fd, mask, &c->rd_op) != 0) {
        conn_fail(c, "connect: cannot poll the socket");
        return;
    }
    c->rd_armed = true;
    watchdog_ensure(c->sh);
}

static void conn_start(pg_conn *c)
{
    rb_storage *st = c->sh->st;
    c->state = CONN_CONNECTING;
    c->connect_since_ms = rb_loop_now_ms(c->sh->loop);
    c->pg = PQconnectStartParams(st->params.keywords, st->params.values, 0);
    if (c->pg == NULL) {
        conn_fail(c, "connect: out of memory");
        return;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_fail(c, PQerrorMessage(c->pg));
        return;
    }
    /* As if PQconnectPoll had said PGRES_POLLING_WRITING. */
    connect_wait(c, PGRES_POLLING_WRITING);
}

/* One more connection of sh is ready: true when it is the first. */
static bool sh_ready_conns_up(rb_storage_shard *sh)
{
    return sh->ready_conns++ == 0;
}

/* Connected: nonblocking pipeline mode, then the statements are prepared
 * (a setup job; requests may follow it in the pipeline at once). */
static void conn_ready(pg_conn *c)
{
    c->fd = PQsocket(c->pg);
    if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1) {
        conn_fail(c, PQerrorMessage(c->pg));
        return;
    }
    c->state = CONN_READY;
    if (sh_ready_conns_up(c->sh)) {
        atomic_fetch_sub(&c->sh->st->shards_unreachable, 1);
    }
    if (arm_read(c) != 0) {
        conn_fail(c, "no submission entry to poll its socket");
        return;
    }
    c->setup.kind = JOB_SETUP;
    c->setup.failed = false;
    c->setup_status = 0;
    conn_send(c, &c->setup);
    if (c->state == CONN_READY) {
        pump(c->sh);
    }
}

static void connect_step(pg_conn *c, int res)
{
    if (res < 0) {
        conn_fail(c, strerror(-res));
        return;
    }
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        connect_wait(c, PGRES_POLLING_READING);
        return;
    case PGRES_POLLING_WRITING:
        connect_wait(c, PGRES_POLLING_WRITING);
        return;
    case PGRES_POLLING_OK:
        conn_ready(c);
        return;
    default:
        conn_fail(c, PQerrorMessage(c->pg));
        return;
    }
}

/* ---- results ---- */

static const char *kind_name(job_kind kind)
{
    switch (kind) {
    case JOB_SETUP:
        return "prepare";
    case JOB_APPEND:
        return "append";
    case JOB_LOOKUP:
        return "read (topic ids)";
    case JOB_READ:
        return "read";
    case JOB_HEADS:
        return "heads";
    case JOB_RETAIN:
        return "retention";
    case JOB_PRUNE:
        return "idempotency key pruning";
    }
    return "?";
}

static void job_fail(pg_job *j, const char *detail)
{
    if (!j->failed) {
        j->failed = true;
        *j->status = rb_err_set(j->err, RB_ESTORAGE, 0, "postgres %s: %.*s", kind_name(j->kind),
                                (int)strcspn(detail, "\n"), detail);
    }
}

/* An int8 column of a binary result; false when NULL or malformed. */
static bool col_int8(const PGresult *res, int row, int col, int64_t *out)
{
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8) {
        return false;
    }
    *out = rb_pgwire_get_int8((const uint8_t *)PQgetvalue(res, row, col));
    return true;
}

/* The rows of ST_KEYED: (ord, seq, duplicate, topic id), one per payload
 * in order; the stored ones must have the next seqs, in order. */
static void keyed_result(pg_job *j, const PGresult *res)
{
    rb_append_req *req = j->req.append;
    if (PQntuples(res) != (int)req->count) {
        job_fail(j, "keyed append: one row per payload expected");
        return;
    }
    uint64_t next = 0;
    for (int row = 0; row < PQntuples(res); row++) {
        int64_t ord = 0;
        int64_t seq = 0;
        int64_t id = 0;
        if (!col_int8(res, row, 0, &ord) || ord != row + 1 || !col_int8(res, row, 1, &seq) ||
            seq <= 0 || PQgetisnull(res, row, 2) || PQgetlength(res, row, 2) != 1 ||
            !col_int8(res, row, 3, &id) || id <= 0) {
            job_fail(j, "keyed append: malformed row");
            return;
        }
        bool dup = PQgetvalue(res, row, 2)[0] != 0;
        j->topic_id = id;
        if (dup) {
            if (req->keys[row].len == 0) {
                job_fail(j, "keyed append: a payload without a key is a duplicate");
                return;
            }
            req->dup_seqs[row] = (uint64_t)seq;
            continue;
        }
        if (j->new_count > 0 && (uint64_t)seq != next) {
            job_fail(j, "keyed append: stored payloads without consecutive seqs");
            return;
        }
        next = (uint64_t)seq + 1;
        j->new_count++;
    }
    /* The head after the append; with nothing stored it is not known, nor
     * needed (first_seq - 1 = last_seq, both 0). */
    j->head = j->new_count > 0 ? (int64_t)(next - 1) : 0;
    j->rows_inserted = req->count;
}

static void append_result(pg_job *j, const PGresult *res)
{
    if (j->by_name && j->stmt_done == 0) {
        return; /* the topic row exists now */
    }
    if (j->keyed) {
        keyed_result(j, res);
        return;
    }
    if (j->stmt_done == (j->by_name ? 1u : 0u)) {
        int64_t id = 0;
        if (PQntuples(res) != 1 || !col_int8(res, 0, 0, &id) || !col_int8(res, 0, 1, &j->head)) {
            job_fail(j, "the topic's row is missing");
            return;
        }
        j->topic_id = id;
        return;
    }
    j->rows_inserted += strtoull(PQcmdTuples((PGresult *)res), NULL, 10);
}

typedef struct read_walk {
    rb_read_range *r; /* the range rows are going to */
    int64_t ord;
    uint32_t got; /* rows Postgres returned for it */
    bool dropped; /* one of them did not fit the arena */
    bool stopped; /* the arena is full: no more rows for any range */
    int64_t prev_seq;
} read_walk;

static void range_open(rb_read_req *req, rb_read_range *r, const PGresult *res, int row,
                       read_walk *w)
{
    int64_t oldest = 0;
    if (!col_int8(res, row, 1, &oldest)) {
        oldest = 0; /* the topic has no rows */
    }
    r->rows_offset = req->arena_used;
    r->oldest_seq = (uint64_t)oldest;
    if (r->after > 0 && oldest > 0 && r->after < (uint64_t)oldest - 1) {
        /* The next seq the caller needs was removed by retention. */
        r->status = RB_ERANGE;
    }
    w->r = r;
    w->got = 0;
    w->dropped = false;
    w->prev_seq = rb_pgwire_clamp_seq(r->after);
}

static void range_close(rb_read_req *req, rb_read_range *r, const read_walk *w)
{
    r->rows_bytes = req->arena_used - r->rows_offset;
    if (r->status != 0) {
        r->complete = false;
        return;
    }
    r->complete = !w->dropped && (w->got < r->rows_max ||
                                  r->last_seq >= (uint64_t)rb_pgwire_clamp_seq(r->ceiling));
}

/* One row of a range into the arena as a MESSAGES item; false when the row
 * is malformed or out of order. */
static bool row_put(rb_read_req *req, const PGresult *res, int row, read_walk *w)
{
    rb_read_range *r = w->r;
    if (PQgetisnull(res, row, 2)) {
        return true; /* the LEFT JOIN's row of a range without rows */
    }
    int64_t seq = 0;
    if (!col_int8(res, row, 2, &seq) || seq <= w->prev_seq || PQgetisnull(res, row, 3)) {
        return false;
    }
    w->prev_seq = seq;
    w->got++;
    if (r->status != 0) {
        return true;
    }
    rb_bytes payload = {(const uint8_t *)PQgetvalue(res, row, 3), (size_t)PQgetlength(res, row, 3)};
    size_t size = rb_frame_messages_item_size(r->topic.len, payload.len);
    if (w->stopped || size > req->arena_cap - req->arena_used) {
        w->stopped = true;
        w->dropped = true;
        return true;
    }
    size_t n = rb_frame_encode_messages_item(
        req->arena + req->arena_used, req->arena_cap - req->arena_used, r->topic, (uint64_t)seq,
        payload.len > 0 ? payload : (rb_bytes){0});
    RB_ASSERT(n == size);
    req->arena_used += n;
    r->row_count++;
    r->last_seq = (uint64_t)seq;
    return true;
}

static void read_result(rb_storage_shard *sh, pg_job *j, const PGresult *res)
{
    rb_read_req *req = j->req.read;
    uint32_t n = map_ranges(sh, req, false);
    read_walk w = {0};
    for (int row = 0; row < PQntuples(res); row++) {
        int64_t ord = 0;
        if (!col_int8(res, row, 0, &ord) || ord < w.ord || ord < 1 || ord > (int64_t)n) {
            job_fail(j, "rows out of range order");
            return;
        }
        if (ord != w.ord) {
            if (w.r != NULL) {
                range_close(req, w.r, &w);
            }
            w.ord = ord;
            range_open(req, &req->ranges[sh->map[ord - 1]], res, row, &w);
        }
        if (!row_put(req, res, row, &w)) {
            job_fail(j, "malformed row");
            return;
        }
    }
    if (w.r != NULL) {
        range_close(req, w.r, &w);
    }
}

/* Rows (ord, id, head) of ST_HEADS for a read's topics without an id (in
 * no particular order: it is a join). */
static void lookup_result(rb_storage_shard *sh, pg_job *j, const PGresult *res)
{
    rb_read_req *req = j->req.read;
    uint32_t n = map_ranges(sh, req, true);
    for (int row = 0; row < PQntuples(res); row++) {
        int64_t ord = 0;
        int64_t id = 0;
        if (!col_int8(res, row, 0, &ord) || !col_int8(res, row, 1, &id) || ord < 1 ||
            ord > (int64_t)n || id <= 0) {
            job_fail(j, "malformed topic id");
            return;
        }
        sh->cols[ord - 1] = id;
    }
    /* Applied after the walk: it changes which ranges need an id. */
    for (int row = 0; row < PQntuples(res); row++) {
        int64_t ord = 0;
        col_int8(res, row, 0, &ord);
        rb_read_range *r = &req->ranges[sh->map[ord - 1]];
        r->oldest_seq = (uint64_t)sh->cols[ord - 1];
        id_put(sh, r->topic, sh->cols[ord - 1]);
    }
}

static void heads_result(rb_storage_shard *sh, pg_job *j, const PGresult *res)
{
    rb_heads_req *req = j->req.heads;
    for (int row = 0; row < PQntuples(res); row++) {
        int64_t ord = 0;
        int64_t id = 0;
        int64_t head = 0;
        if (!col_int8(res, row, 0, &ord) || !col_int8(res, row, 1, &id) ||
            !col_int8(res, row, 2, &head) || ord < 1 || ord > (int64_t)req->count || id <= 0 ||
            head < 0) {
            job_fail(j, "malformed head");
            return;
        }
        req->heads[ord - 1] = (uint64_t)head;
        id_put(sh, req->topics[ord - 1], id);
    }
}

static void retain_result(rb_storage_shard *sh, pg_job *j, const PGresult *res)
{
    int64_t visited = 0;
    int64_t last_id = 0;
    int64_t deleted = 0;
    int64_t last_del = 0;
    if (PQntuples(res) != 1 || !col_int8(res, 0, 0, &visited) || !col_int8(res, 0, 1, &last_id) ||
        !col_int8(res, 0, 2, &deleted) || !col_int8(res, 0, 3, &last_del) || visited < 0 ||
        last_id < 0 || deleted < 0 || last_del < 0 ||
        (deleted >= RB_PG_RETENTION_ROWS_MAX && last_del < 1)) {
        job_fail(j, "malformed result");
        return;
    }
    sh->retain_pass_deleted += (uint64_t)deleted;
    RB_LOG_DEBUG(0, "postgres retention: batch of %lld rows from %lld topics after id %lld",
                 (long long)deleted, (long long)visited, (long long)sh->retain_cursor);
    if (deleted >= RB_PG_RETENTION_ROWS_MAX) {
        /* Stopped inside a topic: go on from it. */
        sh->retain_cursor = last_del - 1;
    } else if (visited >= RB_PG_RETENTION_TOPICS_MAX) {
        sh->retain_cursor = last_id;
    } else {
        sh->retain_cursor = 0;
        sh->retain_pass_over = true;
    }
}

static void job_result(rb_storage_shard *sh, pg_job *j, const PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_FATAL_ERROR) {
        job_fail(j, PQresultErrorMessage(res));
        return;
    }
    if (st == PGRES_PIPELINE_ABORTED) {
        job_fail(j, "aborted by an earlier error in its transaction");
        return;
    }
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        job_fail(j, PQresStatus(st));
        return;
    }
    if (j->failed) {
        return;
    }
    switch (j->kind) {
    case JOB_APPEND:
        append_result(j, res);
        break;
    case JOB_LOOKUP:
        lookup_result(sh, j, res);
        break;
    case JOB_READ:
        read_result(sh, j, res);
        break;
    case JOB_HEADS:
        heads_result(sh, j, res);
        break;
    case JOB_RETAIN:
        retain_result(sh, j, res);
        break;
    case JOB_PRUNE:
        sh->prune_deleted = strtoull(PQcmdTuples((PGresult *)res), NULL, 10);
        break;
    case JOB_SETUP:
        break;
    }
}

/* ---- pruning of expired idempotency keys (shard 0) ---- */

static void prune_fire(rb_timer *t)
{
    rb_storage_shard *sh = RB_CONTAINER_OF(t, rb_storage_shard, prune_timer);
    if (sh->prune_busy) {
        return;
    }
    if (pick_conn(sh) == NULL) {
        rb_timer_arm(sh->loop, &sh->prune_timer, RB_PG_DEDUP_PRUNE_IDLE_MS);
        return;
    }
    pg_job *j = &sh->prune;
    j->kind = JOB_PRUNE;
    j->failed = false;
    sh->prune_status = 0;
    sh->prune_deleted = 0;
    sh->prune_busy = true;
    wait_push(sh, j, false);
    pump(sh);
}

static void prune_synced(rb_storage_shard *sh, pg_job *j)
{
    RB_ASSERT(sh->prune_busy);
    sh->prune_busy = false;
    uint64_t delay_ms = RB_PG_DEDUP_PRUNE_IDLE_MS;
    if (j->failed) {
        RB_LOG_WARN(0, "%s", sh->prune_err.msg);
    } else if (sh->prune_deleted > 0) {
        RB_LOG_DEBUG(0, "postgres: pruned %llu expired idempotency keys",
                     (unsigned long long)sh->prune_deleted);
        if (sh->prune_deleted >= RB_PG_DEDUP_PRUNE_ROWS_MAX) {
            delay_ms = RB_PG_RETENTION_STEP_MS;
        }
    }
    rb_timer_arm(sh->loop, &sh->prune_timer, delay_ms);
}

/* ---- retention (shard 0) ---- */

static void retain_fire(rb_timer *t)
{
    rb_storage_shard *sh = RB_CONTAINER_OF(t, rb_storage_shard, retain_timer);
    if (sh->retain_busy) {
        return;
    }
    if (pick_conn(sh) == NULL) {
        rb_timer_arm(sh->loop, &sh->retain_timer, RB_PG_RETENTION_IDLE_MS);
        return;
    }
    pg_job *j = &sh->retain;
    j->kind = JOB_RETAIN;
    j->failed = false;
    sh->retain_status = 0;
    sh->retain_busy = true;
    wait_push(sh, j, false);
    pump(sh);
}

static void retain_synced(rb_storage_shard *sh, pg_job *j)
{
    RB_ASSERT(sh->retain_busy);
    sh->retain_busy = false;
    uint64_t delay_ms = RB_PG_RETENTION_STEP_MS;
    if (j->failed) {
        RB_LOG_WARN(0, "%s", sh->retain_err.msg);
        sh->retain_pass_over = true;
        sh->retain_cursor = 0;
    }
    if (sh->retain_pass_over) {
        sh->retain_pass_over = false;
        if (sh->retain_pass_deleted > 0) {
            RB_LOG_INFO(0, "postgres retention: deleted %llu messages",
                        (unsigned long long)sh->retain_pass_deleted);
        } else {
            delay_ms = RB_PG_RETENTION_IDLE_MS;
        }
        sh->retain_pass_deleted = 0;
    }
    rb_timer_arm(sh->loop, &sh->retain_timer, delay_ms);
}

/* ---- jobs that completed their Sync ---- */

static void lookup_synced(rb_storage_shard *sh, pg_job *j)
{
    rb_read_req *req = j->req.read;
    bool query = false;
    for (uint32_t i = 0; i < req->range_count; i++) {
        rb_read_range *r = &req->ranges[i];
        if (range_needs_id(r)) {
            r->complete = true; /* no such topic: nothing to read */
        }
        query = query || !r->complete;
    }
    if (!query) {
        job_finish(sh, j);
        return;
    }
    /* Ahead of later requests: it has waited its turn once already. */
    j->kind = JOB_READ;
    wait_push(sh, j, true);
}

static void append_synced(rb_storage_shard *sh, pg_job *j)
{
    rb_append_req *req = j->req.append;
    if (!j->failed && j->rows_inserted != req->count) {
        char why[96];
        snprintf(why, sizeof why, "inserted %llu rows of %u", (unsigned long long)j->rows_inserted,
                 req->count);
        job_fail(j, why);
    }
    if (!j->failed) {
        uint32_t stored = j->keyed ? j->new_count : req->count;
        req->last_seq = (uint64_t)j->head;
        req->first_seq = req->last_seq + 1 - stored;
        id_put(sh, req->topic, j->topic_id);
    }
    job_finish(sh, j);
}

static void job_synced(rb_storage_shard *sh, pg_conn *c, pg_job *j)
{
    switch (j->kind) {
    case JOB_SETUP:
        if (j->failed) {
            conn_fail(c, c->setup_err.msg);
        } else {
            c->backoff_ms = RB_PG_BACKOFF_MS_MIN;
            RB_LOG_DEBUG(0, "postgres conn %u: ready", c->index);
        }
        return;
    case JOB_APPEND:
        append_synced(sh, j);
        return;
    case JOB_LOOKUP:
        if (j->failed) {
            job_finish(sh, j);
        } else {
            lookup_synced(sh, j);
        }
        return;
    case JOB_READ:
    case JOB_HEADS:
        job_finish(sh, j);
        return;
    case JOB_RETAIN:
        retain_synced(sh, j);
        return;
    case JOB_PRUNE:
        prune_synced(sh, j);
        return;
    }
}

/* Takes every result libpq has parsed, job by job, without blocking. */
static void conn_drain(pg_conn *c)
{
    rb_storage_shard *sh = c->sh;
    while (c->head != NULL && c->state == CONN_READY && !PQisBusy(c->pg)) {
        pg_job *j = c->head;
        PGresult *res = PQgetResult(c->pg);
        if (res == NULL) {
            if (!j->got_result) {
                break;
            }
            /* The end of one statement's results. */
            j->got_result = false;
            j->stmt_done++;
            continue;
        }
        if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            c->head = j->next;
            if (c->head == NULL) {
                c->tail = NULL;
            } else {
                c->head->since_ms = rb_loop_now_ms(sh->loop);
            }
            c->depth--;
            c->bytes -= j->bytes;
            job_synced(sh, c, j);
            continue;
        }
        j->got_result = true;
        job_result(sh, j, res);
        PQclear(res);
    }
}

/* The socket polled readable (or hung up). */
static void conn_service(pg_conn *c, int res)
{
    if (res < 0) {
        conn_fail(c, strerror(-res));
        return;
    }
    /* Results parsed before a failure still count: a Sync that came back
     * is a commit that happened. */
    bool consumed = PQconsumeInput(c->pg) == 1;
    conn_drain(c);
    if (c->state != CONN_READY) {
        return;
    }
    if (!consumed || PQstatus(c->pg) == CONNECTION_BAD) {
        conn_fail(c, PQerrorMessage(c->pg));
        return;
    }
    conn_flush(c);
    if (c->state == CONN_READY && arm_read(c) != 0) {
        conn_fail(c, "no submission entry to poll its socket");
    }
    pump(c->sh);
}

static void rd_done(rb_op *op, int res, uint32_t flags)
{
    (void)flags;
    pg_conn *c = RB_CONTAINER_OF(op, pg_conn, rd_op);
    RB_ASSERT(c->rd_armed);
    c->rd_armed = false;
    switch (c->state) {
    case CONN_CLOSING:
        if (!c->wr_armed) {
            conn_closed(c);
        }
        return;
    case CONN_CONNECTING:
        connect_step(c, res);
        return;
    case CONN_READY:
        conn_service(c, res);
        return;
    case CONN_DOWN:
        break;
    }
    RB_ASSERT(!"a poll completed on a connection that is down");
}

static void wr_done(rb_op *op, int res, uint32_t flags)
{
    (void)flags;
    pg_conn *c = RB_CONTAINER_OF(op, pg_conn, wr_op);
    RB_ASSERT(c->wr_armed);
    c->wr_armed = false;
    if (c->state == CONN_CLOSING) {
        if (!c->rd_armed) {
            conn_closed(c);
        }
        return;
    }
    RB_ASSERT(c->state == CONN_READY);
    if (res < 0) {
        conn_fail(c, strerror(-res));
        return;
    }
    conn_flush(c);
}

/* Drops connections that take too long to connect or to answer (a dead
 * peer without a reset); runs while anything is in flight. */
static void watchdog_fire(rb_timer *t)
{
    rb_storage_shard *sh = RB_CONTAINER_OF(t, rb_storage_shard, watchdog);
    uint64_t now = rb_loop_now_ms(sh->loop);
    bool again = false;
    for (uint32_t i = 0; i < sh->st->pool_size; i++) {
        pg_conn *c = &sh->conns[i];
        char why[128];
        if (c->state == CONN_CONNECTING) {
            if (now - c->connect_since_ms > RB_PG_CONNECT_MS_MAX) {
                snprintf(why, sizeof why, "connect: no answer in %u ms", RB_PG_CONNECT_MS_MAX);
                conn_fail(c, why);
            } else {
                again = true;
            }
        } else if (c->state == CONN_READY && c->head != NULL) {
            uint64_t limit = (uint64_t)c->head->stmt_count * sh->st->statement_timeout_ms +
                             RB_PG_ANSWER_GRACE_MS;
            if (now - c->head->since_ms > limit) {
                snprintf(why, sizeof why, "no answer in %llu ms", (unsigned long long)limit);
                conn_fail(c, why);
            } else {
                again = true;
            }
        }
    }
    if (again) {
        rb_timer_arm(sh->loop, &sh->watchdog, PG_WATCHDOG_MS);
    }
}

/* ---- requests ---- */

static bool topic_ok(rb_bytes topic)
{
    return topic.ptr != NULL && topic.len >= 1 && topic.len <= RB_TOPIC_BYTES_MAX;
}

/* A job for a request, or a refusal (the request's done never runs). */
static pg_job *admit(rb_storage_shard *sh, job_kind kind, int *status, rb_err *err)
{
    if (sh->tells.admitted >= RB_PG_REQUESTS_MAX) {
        *status = rb_err_set(err, RB_ELIMIT, 0, "postgres %s on shard %u: %u requests in flight",
                             kind_name(kind), sh->shard_id, RB_PG_REQUESTS_MAX);
        return NULL;
    }
    if (!pool_alive(sh)) {
        *status = rb_err_set(err, RB_ESTORAGE, 0,
                             "postgres %s on shard %u: no connection to postgres (reconnecting)",
                             kind_name(kind), sh->shard_id);
        return NULL;
    }
    pg_job *j = sh->job_free;
    RB_ASSERT(j != NULL);
    sh->job_free = j->next;
    memset(j, 0, sizeof *j);
    j->kind = kind;
    j->status = status;
    j->err = err;
    sh->tells.admitted++;
    return j;
}

static int append_validate(const rb_storage *st, rb_append_req *req)
{
    if (!topic_ok(req->topic)) {
        return rb_err_set(&req->err, RB_EINVAL, 0, "postgres append: topic of %zu bytes",
                          req->topic.len);
    }
    if (req->count == 0 || req->payloads == NULL || req->count > RB_PG_APPEND_MESSAGES_MAX) {
        return rb_err_set(&req->err, RB_EINVAL, 0, "postgres append %.*s: %u payloads",
                          (int)req->topic.len, (const char *)req->topic.ptr, req->count);
    }
    size_t total = 0;
    for (uint32_t i = 0; i < req->count; i++) {
        rb_bytes p = req->payloads[i];
        if (p.ptr == NULL && p.len > 0) {
            return rb_err_set(&req->err, RB_EINVAL, 0, "postgres append: payload %u is NULL", i);
        }
        total += p.len;
    }
    if (req->keys != NULL) {
        if (req->dup_seqs == NULL || req->count > RB_PG_APPEND_KEYED_MAX ||
            req->dedup_window_ms == 0) {
            return rb_err_set(&req->err, RB_EINVAL, 0,
                              "postgres append %.*s: %u payloads with keys (at most %u, with "
                              "dup_seqs and a window)",
                              (int)req->topic.len, (const char *)req->topic.ptr, req->count,
                              RB_PG_APPEND_KEYED_MAX);
        }
        for (uint32_t i = 0; i < req->count; i++) {
            rb_bytes k = req->keys[i];
            if (k.len > RB_IDEMPOTENCY_KEY_BYTES_MAX || (k.ptr == NULL && k.len > 0)) {
                return rb_err_set(&req->err, RB_EINVAL, 0, "postgres append: key %u of %zu bytes",
                                  i, k.len);
            }
        }
    }
    if (total > st->max_frame_bytes) {
        /* One batch fans out as one block of at most a frame. */
        return rb_err_set(&req->err, RB_EINVAL, 0,
                          "postgres append %.*s: %zu payload bytes exceed max_frame_bytes %u",
                          (int)req->topic.len, (const char *)req->topic.ptr, total,
                          st->max_frame_bytes);
    }
    return 0;
}

static int pg_append(rb_storage_shard *sh, rb_append_req *req)
{
    RB_ASSERT(req->done != NULL);
    rb_err_clear(&req->err);
    req->status = 0;
    req->first_seq = 0;
    req->last_seq = 0;
    int rc = append_validate(sh->st, req);
    if (rc != 0) {
        req->status = rc;
        return rc;
    }
    pg_job *j = admit(sh, JOB_APPEND, &req->status, &req->err);
    if (j == NULL) {
        return req->status;
    }
    j->req.append = req;
    j->topic_id = id_find(sh, req->topic);
    j->by_name = j->topic_id == 0;
    j->keyed = false;
    for (uint32_t i = 0; req->keys != NULL && i < req->count && !j->keyed; i++) {
        j->keyed = req->keys[i].len > 0;
    }
    wait_push(sh, j, false);
    pump(sh);
    return 0;
}

static int read_validate(rb_read_req *req)
{
    if (req->range_count > RB_CATCHUP_TOPICS_MAX || (req->range_count > 0 && req->ranges == NULL)) {
        return rb_err_set(&req->err, RB_EINVAL, 0, "postgres read: %u ranges", req->range_count);
    }
    if (req->arena == NULL && req->arena_cap > 0) {
        return rb_err_set(&req->err, RB_EINVAL, 0, "postgres read: arena of %zu bytes is NULL",
                          req->arena_cap);
    }
    for (uint32_t i = 0; i < req->range_count; i++) {
        const rb_read_range *r = &req->ranges[i];
        if (!topic_ok(r->topic) || r->rows_max == 0 || r->rows_max > RB_CATCHUP_ROWS_MAX) {
            return rb_err_set(&req->err, RB_EINVAL, 0,
                              "postgres read: range %u: topic of %zu bytes, rows_max %u", i,
                              r->topic.len, r->rows_max);
        }
    }
    return 0;
}

/* Sets a range's outputs to "nothing read"; while the read is ours its
 * oldest_seq holds the topic's id (0: not known yet). Returns whether the
 * range needs Postgres at all. */
static bool range_init(const rb_storage_shard *sh, rb_read_range *r)
{
    r->status = 0;
    r->row_count = 0;
    r->rows_offset = 0;
    r->rows_bytes = 0;
    r->last_seq = r->after;
    r->complete = r->after >= r->ceiling || r->after >= (uint64_t)INT64_MAX;
    r->oldest_seq = r->complete ? 0 : (uint64_t)id_find(sh, r->topic);
    return !r->complete;
}

static int pg_read(rb_storage_shard *sh, rb_read_req *req)
{
    RB_ASSERT(req->done != NULL);
    rb_err_clear(&req->err);
    req->status = 0;
    req->arena_used = 0;
    int rc = read_validate(req);
    if (rc != 0) {
        req->status = rc;
        return rc;
    }
    pg_job *j = admit(sh, JOB_READ, &req->status, &req->err);
    if (j == NULL) {
        return req->status;
    }
    j->req.read = req;
    bool query = false;
    bool lookup = false;
    for (uint32_t i = 0; i < req->range_count; i++) {
        query = range_init(sh, &req->ranges[i]) || query;
        lookup = lookup || range_needs_id(&req->ranges[i]);
    }
    if (!query) {
        job_finish(sh, j);
        return 0;
    }
    j->kind = lookup ? JOB_LOOKUP : JOB_READ;
    wait_push(sh, j, false);
    pump(sh);
    return 0;
}

static int pg_heads(rb_storage_shard *sh, rb_heads_req *req)
{
    RB_ASSERT(req->done != NULL);
    rb_err_clear(&req->err);
    req->status = 0;
    if (req->count > RB_PG_HEADS_TOPICS_MAX ||
        (req->count > 0 && (req->topics == NULL || req->heads == NULL))) {
        req->status = rb_err_set(&req->err, RB_EINVAL, 0, "postgres heads: %u topics", req->count);
        return req->status;
    }
    for (uint32_t i = 0; i < req->count; i++) {
        if (!topic_ok(req->topics[i])) {
            req->status =
                rb_err_set(&req->err, RB_EINVAL, 0, "postgres heads: topic %u of %zu bytes", i,
                           req->topics[i].len);
            return req->status;
        }
    }
    pg_job *j = admit(sh, JOB_HEADS, &req->status, &req->err);
    if (j == NULL) {
        return req->status;
    }
    j->req.heads = req;
    for (uint32_t i = 0; i < req->count; i++) {
        req->heads[i] = 0; /* a topic without a row is empty */
    }
    if (req->count == 0) {
        job_finish(sh, j);
        return 0;
    }
    wait_push(sh, j, false);
    pump(sh);
    return 0;
}

/* ---- the process: parameters, bootstrap, open and close ---- */

static int params_from_config(const rb_config *cfg, rb_pgwire_params *p, rb_err *err)
{
    char password[RB_PG_PASSWORD_BYTES_MAX] = "";
    int rc = 0;
    if (cfg->pg_password_file[0] != '\0') {
        rc = rb_pgwire_read_password(cfg->pg_password_file, password, sizeof password, err);
    }
    if (rc == 0) {
        rc =
            rb_pgwire_params_init(p, cfg->pg_conninfo, password, cfg->pg_statement_timeout_ms, err);
    }
    explicit_bzero(password, sizeof password);
    return rc;
}

/* Resolves a single host name once, here, and pins its address as
 * hostaddr (libpq still uses host for TLS and .pgpass), so that shards
 * never resolve names inside PQconnectPoll. */
static int pin_host(rb_pgwire_params *p, rb_err *err)
{
    const char *host = rb_pgwire_params_get(p, "host");
    if (host == NULL || host[0] == '\0' || host[0] == '/' || host[0] == '@' ||
        strchr(host, ',') != NULL || rb_pgwire_params_get(p, "hostaddr") != NULL) {
        return 0;
    }
    unsigned char addr[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1) {
        return 0;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &ai);
    if (rc != 0 || ai == NULL) {
        return rb_err_set(err, RB_ESTORAGE, 0, "postgres host %s: %s", host, gai_strerror(rc));
    }
    char text[INET6_ADDRSTRLEN] = "";
    const void *src = ai->ai_family == AF_INET6
                          ? (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
                          : (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
    inet_ntop(ai->ai_family, src, text, sizeof text);
    freeaddrinfo(ai);
    return rb_pgwire_params_set(p, "hostaddr", text, err);
}

/* Waits ms or until close; true when closing. */
static bool boot_sleep(rb_storage *st, uint32_t ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&st->boot_lock);
    while (!st->boot_stop &&
           pthread_cond_timedwait(&st->boot_cond, &st->boot_lock, &until) != ETIMEDOUT) {
    }
    bool stop = st->boot_stop;
    pthread_mutex_unlock(&st->boot_lock);
    return stop;
}

/* The bootstrap thread: reach Postgres and migrate, retrying with backoff
 * (saying why each time) until it works or the daemon stops. Blocking
 * libpq is fine here: this is not a shard thread. */
static void *boot_main(void *arg)
{
    rb_storage *st = arg;
    uint32_t backoff_ms = RB_PG_BACKOFF_MS_MIN * 2;
    for (;;) {
        rb_err err;
        rb_err_clear(&err);
        uint32_t version = 0;
        uint32_t applied = 0;
        uint64_t epoch = 0;
        int rc = pin_host(&st->params, &err);
        rc = rc ? rc : rb_pg_schema_migrate(&st->params, &version, &applied, &epoch, &err);
        if (rc == 0) {
            RB_LOG_INFO(0,
                        "postgres: reachable, schema version %u (%u migrations applied now), "
                        "epoch %016llx",
                        version, applied, (unsigned long long)epoch);
            atomic_store(&st->epoch, epoch);
            atomic_store(&st->ready, true);
            return NULL;
        }
        RB_LOG_WARN(0, "%s; storage not ready, retrying in %u ms", err.msg, backoff_ms);
        if (boot_sleep(st, backoff_ms)) {
            return NULL;
        }
        backoff_ms = backoff_ms * 2 > RB_PG_BACKOFF_MS_MAX ? RB_PG_BACKOFF_MS_MAX : backoff_ms * 2;
    }
}

static int boot_start(rb_storage *st, rb_err *err)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&st->boot_cond, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0 || pthread_mutex_init(&st->boot_lock, NULL) != 0) {
        return rb_err_set(err, RB_ENOMEM, 0, "postgres storage: bootstrap lock");
    }
    rc = pthread_create(&st->boot_thread, NULL, boot_main, st);
    if (rc != 0) {
        return rb_err_set(err, RB_ESYS, rc, "postgres storage: bootstrap thread");
    }
    st->boot_started = true;
    return 0;
}

static int pg_open(const rb_config *cfg, rb_storage **out, rb_err *err)
{
    rb_storage *st = calloc(1, sizeof *st);
    if (st == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "postgres storage: allocation");
    }
    st->pool_size = cfg->pg_pool_size;
    st->statement_timeout_ms = cfg->pg_statement_timeout_ms;
    st->batch_messages = cfg->pg_batch_messages;
    st->max_frame_bytes = cfg->max_frame_bytes;
    st->retention_messages = (int64_t)cfg->pg_retention_messages;
    st->retention_age_s = (int64_t)cfg->pg_retention_age_s;
    atomic_init(&st->ready, false);
    atomic_init(&st->epoch, 0);
    atomic_init(&st->shard_count, 0);
    atomic_init(&st->reconnects, 0);
    atomic_init(&st->shards_unreachable, 0);
    RB_ASSERT(st->pool_size >= 1 && st->batch_messages >= 1);
    int rc = params_from_config(cfg, &st->params, err);
    rc = rc ? rc : boot_start(st, err);
    if (rc != 0) {
        rb_pgwire_params_deinit(&st->params);
        free(st);
        return rc;
    }
    *out = st;
    return 0;
}

static void pg_close(rb_storage *st)
{
    if (st == NULL) {
        return;
    }
    RB_ASSERT(atomic_load(&st->shard_count) == 0);
    if (st->boot_started) {
        pthread_mutex_lock(&st->boot_lock);
        st->boot_stop = true;
        pthread_cond_signal(&st->boot_cond);
        pthread_mutex_unlock(&st->boot_lock);
        pthread_join(st->boot_thread, NULL);
        pthread_cond_destroy(&st->boot_cond);
        pthread_mutex_destroy(&st->boot_lock);
    }
    rb_pgwire_params_deinit(&st->params);
    free(st);
}

static bool pg_ready(rb_storage *st)
{
    return atomic_load(&st->ready);
}

static uint64_t pg_epoch(rb_storage *st)
{
    RB_ASSERT(atomic_load(&st->ready));
    uint64_t epoch = atomic_load(&st->epoch);
    RB_ASSERT(epoch != 0);
    return epoch;
}

static int pg_migrate(const rb_config *cfg, rb_err *err)
{
    rb_pgwire_params params;
    int rc = params_from_config(cfg, &params, err);
    if (rc != 0) {
        return rc;
    }
    uint32_t version = 0;
    uint32_t applied = 0;
    uint64_t epoch = 0;
    rc = rb_pg_schema_migrate(&params, &version, &applied, &epoch, err);
    rb_pgwire_params_deinit(&params);
    if (rc == 0) {
        RB_LOG_INFO(0, "postgres: schema version %u (%u migrations applied now), epoch %016llx",
                    version, applied, (unsigned long long)epoch);
    }
    return rc;
}

/* ---- shards ---- */

static size_t scratch_bytes(const rb_storage *st)
{
    size_t append = rb_pgwire_bytes_array_size(RB_PG_APPEND_MESSAGES_MAX, st->max_frame_bytes);
    /* A keyed append: its payloads, then its keys. */
    size_t keyed =
        rb_pgwire_bytes_array_size(RB_PG_APPEND_KEYED_MAX, st->max_frame_bytes) +
        rb_pgwire_bytes_array_size(RB_PG_APPEND_KEYED_MAX,
                                   (size_t)RB_PG_APPEND_KEYED_MAX * RB_IDEMPOTENCY_KEY_BYTES_MAX);
    append = append > keyed ? append : keyed;
    size_t read = 4 * rb_pgwire_int8_array_size(RB_CATCHUP_TOPICS_MAX);
    size_t names = rb_pgwire_bytes_array_size(RB_CATCHUP_TOPICS_MAX,
                                              (size_t)RB_CATCHUP_TOPICS_MAX * RB_TOPIC_BYTES_MAX);
    size_t most = append > read ? append : read;
    return most > names ? most : names;
}

static void shard_free(rb_storage_shard *sh)
{
    free(sh->conns);
    free(sh->jobs);
    free(sh->scratch);
    free(sh->ids);
    free(sh->id_names);
    free(sh->map);
    free(sh->names);
    free(sh->cols);
    free(sh);
}

static int shard_alloc(rb_storage *st, rb_storage_shard *sh)
{
    static_assert(RB_PG_HEADS_TOPICS_MAX <= RB_CATCHUP_TOPICS_MAX, "heads fit the scratch");
    sh->conns = calloc(st->pool_size, sizeof *sh->conns);
    sh->jobs = calloc(RB_PG_REQUESTS_MAX, sizeof *sh->jobs);
    sh->scratch_cap = scratch_bytes(st);
    sh->scratch = malloc(sh->scratch_cap);
    sh->ids = calloc(RB_PG_ID_CACHE_SLOTS, sizeof *sh->ids);
    sh->id_names = malloc(RB_PG_ID_CACHE_NAME_BYTES);
    sh->map = calloc(RB_CATCHUP_TOPICS_MAX, sizeof *sh->map);
    sh->names = calloc(RB_CATCHUP_TOPICS_MAX, sizeof *sh->names);
    sh->cols = calloc(4 * (size_t)RB_CATCHUP_TOPICS_MAX, sizeof *sh->cols);
    if (sh->conns == NULL || sh->jobs == NULL || sh->scratch == NULL || sh->ids == NULL ||
        sh->id_names == NULL || sh->map == NULL || sh->names == NULL || sh->cols == NULL) {
        return RB_ENOMEM;
    }
    for (uint32_t i = RB_PG_REQUESTS_MAX; i > 0; i--) {
        job_put(sh, &sh->jobs[i - 1]);
    }
    return 0;
}

static void conn_init(rb_storage_shard *sh, pg_conn *c, uint32_t index)
{
    c->sh = sh;
    c->index = index;
    c->fd = -1;
    c->state = CONN_DOWN;
    c->rd_op.done = rd_done;
    c->wr_op.done = wr_done;
    c->retry.fn = retry_fire;
    c->backoff_ms = RB_PG_BACKOFF_MS_MIN;
    c->setup.kind = JOB_SETUP;
    c->setup.status = &c->setup_status;
    c->setup.err = &c->setup_err;
}

static int pg_shard_open(rb_storage *st, rb_loop *loop, uint32_t shard_id, rb_storage_shard **out,
                         rb_err *err)
{
    RB_ASSERT(st != NULL && loop != NULL);
    rb_storage_shard *sh = calloc(1, sizeof *sh);
    if (sh == NULL || shard_alloc(st, sh) != 0) {
        if (sh != NULL) {
            shard_free(sh);
        }
        return rb_err_set(err, RB_ENOMEM, 0, "postgres storage: shard %u: allocation", shard_id);
    }
    sh->st = st;
    sh->loop = loop;
    sh->shard_id = shard_id;
    rb_storage__tells_init(&sh->tells, loop);
    sh->watchdog.fn = watchdog_fire;
    /* Retention runs from one shard of the daemon. */
    sh->retain_on = shard_id == 0 && (st->retention_messages > 0 || st->retention_age_s > 0);
    sh->retain_timer.fn = retain_fire;
    sh->retain.status = &sh->retain_status;
    sh->retain.err = &sh->retain_err;
    /* So does the pruning of expired idempotency keys. */
    sh->prune_timer.fn = prune_fire;
    sh->prune.status = &sh->prune_status;
    sh->prune.err = &sh->prune_err;
    for (uint32_t i = 0; i < st->pool_size; i++) {
        conn_init(sh, &sh->conns[i], i);
    }
    atomic_fetch_add(&st->shards_unreachable, 1); /* until a connection is ready */
    for (uint32_t i = 0; i < st->pool_size; i++) {
        conn_start(&sh->conns[i]);
    }
    if (sh->retain_on) {
        rb_timer_arm(loop, &sh->retain_timer, RB_PG_RETENTION_IDLE_MS);
    }
    if (shard_id == 0) {
        rb_timer_arm(loop, &sh->prune_timer, RB_PG_DEDUP_PRUNE_IDLE_MS);
    }
    atomic_fetch_add(&st->shard_count, 1);
    *out = sh;
    return 0;
}

/* After the shard's loop has stopped: nothing of ours runs again, so the
 * polls still armed are left to the ring's teardown. */
static void pg_shard_close(rb_storage_shard *sh)
{
    if (sh == NULL) {
        return;
    }
    /* Every done must have run: a pending one would touch freed memory. */
    rb_storage__tells_deinit(&sh->tells);
    for (uint32_t i = 0; i < sh->st->pool_size; i++) {
        pg_conn *c = &sh->conns[i];
        rb_timer_disarm(sh->loop, &c->retry);
        if (c->pg != NULL) {
            PQfinish(c->pg);
        }
    }
    rb_timer_disarm(sh->loop, &sh->watchdog);
    rb_timer_disarm(sh->loop, &sh->retain_timer);
    rb_timer_disarm(sh->loop, &sh->prune_timer);
    atomic_fetch_sub(&sh->st->shard_count, 1);
    if (sh->ready_conns == 0) {
        atomic_fetch_sub(&sh->st->shards_unreachable, 1);
    }
    shard_free(sh);
}

static uint64_t pg_reconnects(rb_storage *st)
{
    return atomic_load_explicit(&st->reconnects, memory_order_relaxed);
}

static uint32_t pg_unreachable_shards(rb_storage *st)
{
    return atomic_load(&st->shards_unreachable);
}

const rb_storage_ops rb_storage_postgres_ops = {
    .name = "postgres",
    .open = pg_open,
    .close = pg_close,
    .shard_open = pg_shard_open,
    .shard_close = pg_shard_close,
    .append = pg_append,
    .read = pg_read,
    .heads = pg_heads,
    .ready = pg_ready,
    .epoch = pg_epoch,
    .migrate = pg_migrate,
    .reconnects = pg_reconnects,
    .unreachable_shards = pg_unreachable_shards,
};
