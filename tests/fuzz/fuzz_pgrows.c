/* libFuzzer target for the Postgres backend's row decoding: the result
 * handlers of storage/postgres.c (read ranges, topic id lookups, heads,
 * retention batches) fed PGresults that libpq itself builds
 * (PQmakeEmptyPGresult, PQsetResultAttrs, PQsetvalue) from the input, so
 * every column may be NULL, short, long or out of order. This file
 * includes storage/postgres.c to reach its static handlers, so the target
 * links every object but storage/postgres.o (see the Makefile).
 *
 * Input: byte 0 picks the handler, byte 1 the range or topic count (1..8);
 * then per range: after, ceiling - after, rows_max (one byte each); then
 * rows of 4 columns, each column a tag byte (0 NULL, 1 an int8 from the
 * next byte, sign-extended, 2 the next 8 bytes as a big-endian int8, 3 a
 * length byte and that many bytes).
 *
 * Checked: a refused result says why (job failed, status and message set);
 * an accepted read leaves every range's rows inside the arena as MESSAGES
 * items of its topic with seqs strictly increasing above its cursor, and
 * last_seq and complete agree with them; accepted heads and ids are the
 * ones the rows gave and land in the id cache. Anything else traps (or
 * trips ASan/UBSan).
 *
 * Build and run with `make fuzz T=pgrows` (clang 14 with libFuzzer);
 * `make test` replays tests/fuzz/corpus/pgrows through the same target. */
#include "storage/postgres.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

#define RANGES_MAX  8
#define ROWS_MAX    64
#define ARENA_BYTES 600

typedef struct input {
    const uint8_t *p;
    size_t left;
} input;

static bool take(input *in, uint8_t *out)
{
    if (in->left == 0) {
        return false;
    }
    *out = *in->p++;
    in->left--;
    return true;
}

static const char *const names[RANGES_MAX] = {"t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"};

/* One column value into buf; returns its length, or -1 for NULL. */
static int take_value(input *in, uint8_t *buf)
{
    uint8_t tag = 0;
    uint8_t b = 0;
    if (!take(in, &tag)) {
        return -1;
    }
    switch (tag % 4) {
    case 1:
        (void)take(in, &b);
        rb_pgwire_put_int8(buf, (int64_t)(int8_t)b);
        return 8;
    case 2:
        for (int i = 0; i < 8; i++) {
            buf[i] = take(in, &b) ? b : 0;
        }
        return 8;
    case 3: {
        uint8_t len = 0;
        (void)take(in, &len);
        int n = 0;
        while (n < len && take(in, &b)) {
            buf[n++] = b;
        }
        return n;
    }
    default:
        return -1;
    }
}

static PGresult *make_result(input *in)
{
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    CHECK(res != NULL);
    PGresAttDesc attrs[4];
    memset(attrs, 0, sizeof attrs);
    static char colnames[4][4] = {"c0", "c1", "c2", "c3"};
    for (int c = 0; c < 4; c++) {
        attrs[c].name = colnames[c];
        attrs[c].format = 1;
        attrs[c].typid = c == 3 ? RB_PG_OID_BYTEA : RB_PG_OID_INT8;
        attrs[c].typlen = -1;
        attrs[c].atttypmod = -1;
    }
    CHECK(PQsetResultAttrs(res, 4, attrs));
    for (int row = 0; row < ROWS_MAX && in->left > 0; row++) {
        for (int c = 0; c < 4; c++) {
            uint8_t buf[256];
            int len = take_value(in, buf);
            CHECK(PQsetvalue(res, row, c, len < 0 ? NULL : (char *)buf, len));
        }
    }
    return res;
}

typedef struct harness {
    rb_storage_shard sh;
    pg_job job;
    int status;
    rb_err err;
} harness;

/* The shard's scratch arrays, allocated once (their sizes are the
 * backend's); the id cache is emptied for every input. */
static id_slot *ids;
static uint8_t *id_names;
static uint32_t *map;
static rb_bytes *range_names;
static int64_t *cols;

static void harness_init(harness *h)
{
    memset(h, 0, sizeof *h);
    if (ids == NULL) {
        ids = calloc(RB_PG_ID_CACHE_SLOTS, sizeof *ids);
        id_names = malloc(RB_PG_ID_CACHE_NAME_BYTES);
        map = calloc(RB_CATCHUP_TOPICS_MAX, sizeof *map);
        range_names = calloc(RB_CATCHUP_TOPICS_MAX, sizeof *range_names);
        cols = calloc(4 * (size_t)RB_CATCHUP_TOPICS_MAX, sizeof *cols);
        CHECK(ids && id_names && map && range_names && cols);
    }
    memset(ids, 0, RB_PG_ID_CACHE_SLOTS * sizeof *ids);
    h->sh.ids = ids;
    h->sh.id_names = id_names;
    h->sh.map = map;
    h->sh.names = range_names;
    h->sh.cols = cols;
    h->job.status = &h->status;
    h->job.err = &h->err;
}

static void harness_deinit(harness *h)
{
    if (h->job.failed) {
        CHECK(h->status == RB_ESTORAGE && h->err.msg[0] != '\0');
    }
}

static rb_bytes name_of(uint32_t i)
{
    return (rb_bytes){(const uint8_t *)names[i], strlen(names[i])};
}

static void check_range(const rb_read_req *req, const rb_read_range *r)
{
    CHECK(r->rows_offset + r->rows_bytes <= req->arena_used);
    rb_frame_iter it;
    rb_message_item m;
    rb_frame_iter_init(&it, (rb_bytes){req->arena + r->rows_offset, r->rows_bytes}, r->row_count);
    uint64_t prev = r->after;
    uint32_t seen = 0;
    while (rb_frame_next_item(&it, &m)) {
        CHECK(m.topic.len == r->topic.len && memcmp(m.topic.ptr, r->topic.ptr, m.topic.len) == 0);
        CHECK(m.seq > prev);
        prev = m.seq;
        seen++;
    }
    CHECK(seen == r->row_count);
    if (r->row_count > 0) {
        CHECK(r->last_seq == prev);
    }
    if (r->status != 0) {
        CHECK(r->status == RB_ERANGE && !r->complete);
    }
}

static void run_read(input *in, uint32_t n)
{
    harness h;
    harness_init(&h);
    rb_read_range ranges[RANGES_MAX];
    memset(ranges, 0, sizeof ranges);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t after = 0, span = 0, rows = 0;
        (void)take(in, &after);
        (void)take(in, &span);
        (void)take(in, &rows);
        ranges[i].topic = name_of(i);
        ranges[i].after = after;
        ranges[i].ceiling = (uint64_t)after + span;
        ranges[i].rows_max = 1u + rows % 8u;
        ranges[i].last_seq = after;
    }
    uint8_t arena[ARENA_BYTES];
    rb_read_req req = {
        .ranges = ranges, .range_count = n, .arena = arena, .arena_cap = sizeof arena};
    h.job.kind = JOB_READ;
    h.job.req.read = &req;
    PGresult *res = make_result(in);
    read_result(&h.sh, &h.job, res);
    CHECK(req.arena_used <= req.arena_cap);
    if (!h.job.failed) {
        for (uint32_t i = 0; i < n; i++) {
            check_range(&req, &ranges[i]);
        }
    }
    PQclear(res);
    harness_deinit(&h);
}

static void run_heads(input *in, uint32_t n, bool lookup)
{
    harness h;
    harness_init(&h);
    rb_bytes topics[RANGES_MAX];
    uint64_t heads[RANGES_MAX] = {0};
    rb_read_range ranges[RANGES_MAX];
    memset(ranges, 0, sizeof ranges);
    for (uint32_t i = 0; i < n; i++) {
        topics[i] = name_of(i);
        ranges[i].topic = topics[i];
    }
    rb_heads_req hreq = {.topics = topics, .count = n, .heads = heads};
    rb_read_req rreq = {.ranges = ranges, .range_count = n};
    PGresult *res = make_result(in);
    if (lookup) {
        h.job.kind = JOB_READ;
        h.job.req.read = &rreq;
        lookup_result(&h.sh, &h.job, res);
    } else {
        h.job.kind = JOB_HEADS;
        h.job.req.heads = &hreq;
        heads_result(&h.sh, &h.job, res);
    }
    if (!h.job.failed) {
        for (int row = 0; row < PQntuples(res); row++) {
            int64_t ord = 0, id = 0;
            CHECK(col_int8(res, row, 0, &ord) && col_int8(res, row, 1, &id));
            CHECK(ord >= 1 && ord <= (int64_t)n && id > 0);
            CHECK(id_find(&h.sh, topics[ord - 1]) > 0);
        }
    }
    PQclear(res);
    harness_deinit(&h);
}

static void run_retain(input *in)
{
    harness h;
    harness_init(&h);
    h.job.kind = JOB_RETAIN;
    PGresult *res = make_result(in);
    retain_result(&h.sh, &h.job, res);
    CHECK(h.job.failed || PQntuples(res) == 1);
    PQclear(res);
    harness_deinit(&h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input in = {data, size};
    uint8_t mode = 0, count = 0;
    if (!take(&in, &mode) || !take(&in, &count)) {
        return 0;
    }
    uint32_t n = 1u + count % RANGES_MAX;
    switch (mode % 4) {
    case 0:
        run_read(&in, n);
        break;
    case 1:
        run_heads(&in, n, false);
        break;
    case 2:
        run_heads(&in, n, true);
        break;
    default:
        run_retain(&in);
        break;
    }
    return 0;
}
