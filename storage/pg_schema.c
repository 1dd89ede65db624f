/* Schema migrations of the postgres backend (see pg_schema.h). Each
 * migration is applied once, in order, and recorded in ringbus_schema.
 * Migrations are append-only: a released one is never edited; a change is a
 * new migration.
 *
 * Schema notes.
 * - topics.head is the committed head: an append locks the topic's row with
 *   UPDATE ... SET head = head + n and inserts its rows in the same
 *   transaction, so per topic commit order is seq order (DESIGN §2).
 * - messages has no foreign key to topics: the appender already holds the
 *   topic's row, and a per-row RI trigger would cost more than the insert.
 * - messages is not partitioned. Retention is per topic (count) and by age,
 *   keeping each topic's newest message, so it cannot be done by dropping
 *   time partitions; it deletes in bounded batches instead (postgres.c).
 *   For more write capacity, Citus can distribute messages by topic_id (the
 *   primary key starts with it); hash partitioning by topic_id would be a
 *   later migration if vacuum of one large table becomes the bottleneck.
 * - Autovacuum runs more often on messages than the default 20%, since
 *   retention deletes continuously.
 * - ringbus_epoch holds the database's epoch (DESIGN §5a): one random
 *   nonzero bigint created by migration 2 and never changed, so every node
 *   and every restart on this database announce the same epoch, and a new
 *   database (a new seq space) gets a new one. Read as a u64.
 * - idempotency_keys (migration 3) holds the idempotency keys of the dedup
 *   window (docs/PROTOCOL.md §7.1): its primary key (topic_id, key) is the
 *   unique key, written by ringbus_append_keyed in the transaction of the
 *   append, under the topic's row lock; a row past expires_at is vacant
 *   and is deleted by the pruner (shard 0, postgres.c) in bounded batches
 *   through the expires_at index. */
#include "storage/pg_schema.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "common/log.h"

/* pg_advisory_xact_lock key of migrations: "ringbus" in ASCII. */
#define PG_SCHEMA_LOCK_KEY "32204070246839667"

typedef struct migration {
    uint32_t version;
    const char *what;
    const char *sql;
} migration;

static const migration migrations[] = {
    {1, "topics and messages",
     "CREATE TABLE topics (\n"
     "    id bigserial PRIMARY KEY,\n"
     "    name text NOT NULL UNIQUE,\n"
     "    head bigint NOT NULL DEFAULT 0 CHECK (head >= 0),\n"
     "    created_at timestamptz NOT NULL DEFAULT now()\n"
     ");\n"
     "CREATE TABLE messages (\n"
     "    topic_id bigint NOT NULL,\n"
     "    seq bigint NOT NULL CHECK (seq > 0),\n"
     "    payload bytea NOT NULL,\n"
     "    published_at timestamptz NOT NULL DEFAULT now(),\n"
     "    PRIMARY KEY (topic_id, seq)\n"
     ") WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = "
     "0.05);\n"},
    {2, "the store epoch",
     "CREATE TABLE ringbus_epoch (\n"
     "    single boolean PRIMARY KEY DEFAULT true CHECK (single),\n"
     "    epoch bigint NOT NULL CHECK (epoch <> 0),\n"
     "    created_at timestamptz NOT NULL DEFAULT now()\n"
     ");\n"
     "INSERT INTO ringbus_epoch (epoch)\n"
     "SELECT CASE WHEN e = 0 THEN 1 ELSE e END FROM\n"
     "    (SELECT ('x' || substr(md5(gen_random_uuid()::text), 1, 16))::bit(64)::bigint AS e) "
     "r;\n"},
    {3, "idempotency keys",
     "CREATE TABLE idempotency_keys (\n"
     "    topic_id bigint NOT NULL,\n"
     "    key bytea NOT NULL CHECK (length(key) BETWEEN 1 AND 255),\n"
     "    seq bigint NOT NULL CHECK (seq > 0),\n"
     "    expires_at timestamptz NOT NULL,\n"
     "    PRIMARY KEY (topic_id, key)\n"
     ") WITH (autovacuum_vacuum_scale_factor = 0.02);\n"
     "CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);\n"
     /* One statement per keyed append (postgres.c): the topic's row lock
      * first, so the keys it reads are every key committed before it, on
      * any node; then the new messages get the next seqs in order and
      * their keys, in the same transaction; a key found unexpired is a
      * duplicate: not stored, answered with its original seq. An expired
      * row of a key is vacant: overwritten (pruning may not have run). */
     "CREATE FUNCTION ringbus_append_keyed(p_id bigint, p_name text, p_payloads bytea[],\n"
     "        p_keys bytea[], p_window_ms bigint)\n"
     "    RETURNS TABLE (ord bigint, seq bigint, duplicate boolean, topic_id bigint)\n"
     "    LANGUAGE plpgsql AS $f$\n"
     "#variable_conflict use_column\n"
     "DECLARE\n"
     "    v_id bigint;\n"
     "    v_head bigint;\n"
     "    v_new bigint;\n"
     "BEGIN\n"
     "    IF p_id > 0 THEN\n"
     "        SELECT t.id, t.head INTO v_id, v_head FROM topics t WHERE t.id = p_id FOR UPDATE;\n"
     "    ELSE\n"
     "        SELECT t.id, t.head INTO v_id, v_head FROM topics t WHERE t.name = p_name\n"
     "            FOR UPDATE;\n"
     "    END IF;\n"
     "    IF v_id IS NULL THEN\n"
     "        RAISE EXCEPTION 'ringbus_append_keyed: the topic has no row';\n"
     "    END IF;\n"
     "    SELECT count(*) INTO v_new FROM unnest(p_keys) AS x(key) WHERE NOT EXISTS (\n"
     "        SELECT 1 FROM idempotency_keys k WHERE k.topic_id = v_id AND k.key = x.key\n"
     "            AND length(x.key) > 0 AND k.expires_at > now());\n"
     "    UPDATE topics SET head = v_head + v_new WHERE id = v_id;\n"
     "    RETURN QUERY\n"
     "    WITH u AS (\n"
     "        SELECT x.ord, x.payload, x.key, k.seq AS old_seq\n"
     "        FROM unnest(p_payloads, p_keys) WITH ORDINALITY AS x(payload, key, ord)\n"
     "        LEFT JOIN idempotency_keys k ON k.topic_id = v_id AND k.key = x.key\n"
     "            AND length(x.key) > 0 AND k.expires_at > now()),\n"
     "    n AS (\n"
     "        SELECT u.ord, u.payload, u.key, v_head + row_number() OVER (ORDER BY u.ord) AS nseq\n"
     "        FROM u WHERE u.old_seq IS NULL),\n"
     "    m AS (\n"
     "        INSERT INTO messages (topic_id, seq, payload, published_at)\n"
     "        SELECT v_id, n.nseq, n.payload, now() FROM n),\n"
     "    k AS (\n"
     "        INSERT INTO idempotency_keys AS i (topic_id, key, seq, expires_at)\n"
     "        SELECT v_id, n.key, n.nseq, now() + p_window_ms * interval '1 millisecond'\n"
     "        FROM n WHERE length(n.key) > 0\n"
     "        ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO UPDATE\n"
     "            SET seq = EXCLUDED.seq, expires_at = EXCLUDED.expires_at)\n"
     "    SELECT u.ord, coalesce(u.old_seq, n.nseq), u.old_seq IS NOT NULL, v_id\n"
     "    FROM u LEFT JOIN n ON n.ord = u.ord\n"
     "    ORDER BY u.ord;\n"
     "END\n"
     "$f$;\n"},
};

#define MIGRATION_COUNT (sizeof migrations / sizeof migrations[0])

uint32_t rb_pg_schema_latest(void)
{
    return migrations[MIGRATION_COUNT - 1].version;
}

/* Runs sql; returns 0 or RB_ESTORAGE with Postgres' message. */
static int exec(PGconn *pg, const char *sql, const char *what, PGresult **out, rb_err *err)
{
    PGresult *res = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        const char *msg = res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(pg);
        const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        /* 42501 insufficient_privilege: a role that may not create tables. */
        bool denied = state != NULL && strcmp(state, "42501") == 0;
        int rc = rb_err_set(
            err, RB_ESTORAGE, 0, "postgres migrate: %s: %.*s%s", what, (int)strcspn(msg, "\n"), msg,
            denied ? " (apply the schema as its owner: ringbusd --migrate-only)" : "");
        PQclear(res);
        return rc;
    }
    if (out != NULL) {
        *out = res;
    } else {
        PQclear(res);
    }
    return 0;
}

static int current_version(PGconn *pg, uint32_t *version, rb_err *err)
{
    PGresult *res = NULL;
    int rc =
        exec(pg, "SELECT coalesce(max(version), 0) FROM ringbus_schema", "read version", &res, err);
    if (rc != 0) {
        return rc;
    }
    *version = (uint32_t)strtoul(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return 0;
}

static int read_epoch(PGconn *pg, uint64_t *epoch, rb_err *err)
{
    PGresult *res = NULL;
    int rc = exec(pg, "SELECT epoch FROM ringbus_epoch", "read epoch", &res, err);
    if (rc != 0) {
        return rc;
    }
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        PQclear(res);
        return rb_err_set(err, RB_ESTORAGE, 0,
                          "postgres migrate: ringbus_epoch must hold exactly one epoch");
    }
    /* Stored as a signed bigint; the wire carries the same 64 bits. */
    *epoch = (uint64_t)strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    if (*epoch == 0) {
        return rb_err_set(err, RB_ESTORAGE, 0, "postgres migrate: ringbus_epoch holds epoch 0");
    }
    return 0;
}

static int apply(PGconn *pg, const migration *m, rb_err *err)
{
    char what[96];
    snprintf(what, sizeof what, "migration %u (%s)", m->version, m->what);
    int rc = exec(pg, m->sql, what, NULL, err);
    if (rc != 0) {
        return rc;
    }
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO ringbus_schema (version, description) VALUES (%u, '%s')",
             m->version, m->what);
    return exec(pg, sql, what, NULL, err);
}

/* Whether ringbus_schema exists (on the search_path, as the migrations
 * create it). */
static int schema_table_exists(PGconn *pg, bool *exists, rb_err *err)
{
    PGresult *res = NULL;
    int rc = exec(pg, "SELECT to_regclass('ringbus_schema') IS NOT NULL", "look up ringbus_schema",
                  &res, err);
    if (rc != 0) {
        return rc;
    }
    *exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return 0;
}

/* Inside the locked transaction. A database whose schema is current gets no
 * DDL at all, so the daemon may run as a role that can only read and write
 * the tables (docs/OPERATIONS.md, "Postgres set-up"); only pending
 * migrations need the right to create in the schema. */
static int migrate_locked(PGconn *pg, uint32_t *version_out, uint32_t *applied_out,
                          uint64_t *epoch_out, rb_err *err)
{
    bool exists = false;
    int rc = schema_table_exists(pg, &exists, err);
    if (rc == 0 && !exists) {
        rc = exec(pg,
                  "CREATE TABLE IF NOT EXISTS ringbus_schema (\n"
                  "    version integer PRIMARY KEY,\n"
                  "    description text NOT NULL,\n"
                  "    applied_at timestamptz NOT NULL DEFAULT now())",
                  "create ringbus_schema", NULL, err);
    }
    uint32_t version = 0;
    rc = rc ? rc : current_version(pg, &version, err);
    if (rc != 0) {
        return rc;
    }
    if (version > rb_pg_schema_latest()) {
        return rb_err_set(err, RB_EUNSUPPORTED, 0,
                          "postgres migrate: the database has schema version %u, newer than this "
                          "ringbusd knows (%u): upgrade ringbusd",
                          version, rb_pg_schema_latest());
    }
    for (size_t i = 0; i < MIGRATION_COUNT && rc == 0; i++) {
        if (migrations[i].version > version) {
            rc = apply(pg, &migrations[i], err);
            if (rc == 0) {
                RB_LOG_INFO(0, "postgres: applied schema migration %u (%s)", migrations[i].version,
                            migrations[i].what);
                version = migrations[i].version;
                (*applied_out)++;
            }
        }
    }
    *version_out = version;
    return rc ? rc : read_epoch(pg, epoch_out, err);
}

int rb_pg_schema_migrate(const rb_pgwire_params *params, uint32_t *version_out,
                         uint32_t *applied_out, uint64_t *epoch_out, rb_err *err)
{
    *version_out = 0;
    *applied_out = 0;
    *epoch_out = 0;
    PGconn *pg = PQconnectdbParams(params->keywords, params->values, 0);
    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        const char *msg = pg != NULL ? PQerrorMessage(pg) : "out of memory";
        int rc =
            rb_err_set(err, RB_ESTORAGE, 0, "postgres connect: %.*s", (int)strcspn(msg, "\n"), msg);
        PQfinish(pg);
        return rc;
    }
    /* Quiet NOTICEs such as "relation already exists, skipping". */
    int rc = exec(pg, "SET client_min_messages = warning", "set", NULL, err);
    rc = rc ? rc : exec(pg, "BEGIN", "begin", NULL, err);
    /* Held to the end of the transaction: a second daemon waits here, then
     * finds the migrations applied. */
    rc = rc ? rc
            : exec(pg, "SELECT pg_advisory_xact_lock(" PG_SCHEMA_LOCK_KEY ")", "advisory lock",
                   NULL, err);
    rc = rc ? rc : migrate_locked(pg, version_out, applied_out, epoch_out, err);
    rc = rc ? rc : exec(pg, "COMMIT", "commit", NULL, err);
    if (rc != 0) {
        *applied_out = 0;
    }
    PQfinish(pg);
    return rc;
}
