/* Tests of the memory storage backend (storage/memory.c) through its ops
 * table, on a real rb_loop: seqs, deferred completions, reads of
 * (after, ceiling], arena and row limits, retention by count and bytes,
 * RB_ERANGE for cursors older than retention, unknown topics, a randomized
 * run against a model, and an appender and a reader on two threads. */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "common/frame.h"
#include "common/loop.h"
#include "storage/storage.h"
#include "tests/unit/death.h"

static const rb_storage_ops *ops = &rb_storage_memory_ops;

static const rb_loop_options loop_opt = {
    .sq_entries = 64, .recv_buf_count = 8, .recv_buf_bytes = 4096};

/* ---- fixtures ---- */

typedef struct fx {
    rb_loop *loop;
    rb_storage *st;
    rb_storage_shard *sh;
    rb_config *cfg;
} fx;

static rb_config *config_new(uint64_t retention_messages, uint64_t retention_bytes)
{
    /* Filled by hand: config/ parsing is another module's concern. */
    rb_config *cfg = calloc(1, sizeof *cfg);
    ck_assert_ptr_nonnull(cfg);
    cfg->storage_backend = RB_STORAGE_MEMORY;
    cfg->memory_retention_messages = retention_messages;
    cfg->memory_retention_bytes = retention_bytes;
    cfg->max_frame_bytes = RB_FRAME_BYTES_DEFAULT;
    return cfg;
}

static rb_bytes str(const char *s)
{
    return (rb_bytes){(const uint8_t *)s, strlen(s)};
}

static void fx_open(fx *f, uint64_t retention_messages, uint64_t retention_bytes)
{
    rb_err err = {0};
    f->cfg = config_new(retention_messages, retention_bytes);
    ck_assert_msg(rb_loop_init(&f->loop, &loop_opt, &err) == 0, "loop: %s", err.msg);
    ck_assert_msg(ops->open(f->cfg, &f->st, &err) == 0, "open: %s", err.msg);
    ck_assert_msg(ops->shard_open(f->st, f->loop, 0, &f->sh, &err) == 0, "shard: %s", err.msg);
}

static void fx_close(fx *f)
{
    ops->shard_close(f->sh);
    ops->close(f->st);
    rb_loop_deinit(f->loop);
    free(f->cfg);
}

/* Turns the loop until *calls reaches want (a bounded number of turns). */
static void run_until(rb_loop *loop, const int *calls, int want)
{
    rb_err err = {0};
    for (int turn = 0; turn < 100 && *calls < want; turn++) {
        ck_assert_msg(rb_loop_run_once(loop, 0, &err) == 0, "run: %s", err.msg);
    }
    ck_assert_int_eq(*calls, want);
}

static void append_counted(rb_append_req *req)
{
    (*(int *)req->ctx)++;
}

static void read_counted(rb_read_req *req)
{
    (*(int *)req->ctx)++;
}

static void heads_counted(rb_heads_req *req)
{
    (*(int *)req->ctx)++;
}

/* Payload of seq in a topic tagged `tag`: a length and bytes that both
 * depend on (tag, seq), so any misplaced row shows. */
#define PAYLOAD_BYTES_MAX 64

static size_t payload_len(uint32_t tag, uint64_t seq)
{
    return (size_t)((seq * 7 + tag * 13) % 61);
}

static size_t payload_fill(uint8_t *buf, uint32_t tag, uint64_t seq)
{
    size_t len = payload_len(tag, seq);
    for (size_t i = 0; i < len; i++) {
        buf[i] = (uint8_t)(seq * 131 + i * 7 + tag);
    }
    return len;
}

static bool payload_matches(rb_bytes p, uint32_t tag, uint64_t seq)
{
    uint8_t want[PAYLOAD_BYTES_MAX];
    size_t len = payload_fill(want, tag, seq);
    return p.len == len && (len == 0 || memcmp(p.ptr, want, len) == 0);
}

/* Appends count generated payloads (seqs expected from first_expected on)
 * and returns the request's status. */
static int append_gen(fx *f, const char *topic, uint32_t tag, uint64_t first_expected,
                      uint32_t count, rb_append_req *req)
{
    static uint8_t bufs[256][PAYLOAD_BYTES_MAX];
    static rb_bytes payloads[256];
    ck_assert_uint_le(count, 256);
    for (uint32_t i = 0; i < count; i++) {
        payloads[i].ptr = bufs[i];
        payloads[i].len = payload_fill(bufs[i], tag, first_expected + i);
    }
    int calls = 0;
    *req = (rb_append_req){.topic = str(topic),
                           .payloads = payloads,
                           .count = count,
                           .done = append_counted,
                           .ctx = &calls};
    ck_assert_int_eq(ops->append(f->sh, req), 0);
    run_until(f->loop, &calls, 1);
    return req->status;
}

/* Appends and checks the returned seq range. */
static void append_ok(fx *f, const char *topic, uint32_t tag, uint64_t first, uint32_t count)
{
    rb_append_req req;
    ck_assert_int_eq(append_gen(f, topic, tag, first, count, &req), 0);
    ck_assert_uint_eq(req.first_seq, first);
    ck_assert_uint_eq(req.last_seq, first + count - 1);
}

static void read_run(fx *f, rb_read_range *ranges, uint32_t range_count, uint8_t *arena,
                     size_t arena_cap, rb_read_req *req)
{
    int calls = 0;
    *req = (rb_read_req){.ranges = ranges,
                         .range_count = range_count,
                         .arena = arena,
                         .arena_cap = arena_cap,
                         .done = read_counted,
                         .ctx = &calls};
    ck_assert_int_eq(ops->read(f->sh, req), 0);
    run_until(f->loop, &calls, 1);
    ck_assert_int_eq(req->status, 0);
}

static rb_read_range range_of(const char *topic, uint64_t after, uint64_t ceiling,
                              uint32_t rows_max)
{
    return (rb_read_range){
        .topic = str(topic), .after = after, .ceiling = ceiling, .rows_max = rows_max};
}

/* Checks that the range's rows are exactly seqs first..first+count-1 of
 * topic (payloads by tag), laid out as MESSAGES items. */
static void check_rows(const rb_read_req *req, const rb_read_range *r, uint32_t tag, uint64_t first,
                       uint32_t count)
{
    ck_assert_int_eq(r->status, 0);
    ck_assert_uint_eq(r->row_count, count);
    ck_assert_uint_le(r->rows_offset + r->rows_bytes, req->arena_used);
    rb_frame_iter it;
    rb_frame_iter_init(&it, (rb_bytes){req->arena + r->rows_offset, r->rows_bytes}, r->row_count);
    rb_message_item item;
    size_t bytes = 0;
    for (uint32_t i = 0; i < count; i++) {
        ck_assert(rb_frame_next_item(&it, &item));
        ck_assert_uint_eq(item.topic.len, r->topic.len);
        ck_assert_mem_eq(item.topic.ptr, r->topic.ptr, r->topic.len);
        ck_assert_uint_eq(item.seq, first + i);
        ck_assert_msg(payload_matches(item.payload, tag, item.seq), "payload of seq %" PRIu64,
                      item.seq);
        bytes += rb_frame_messages_item_size(item.topic.len, item.payload.len);
    }
    ck_assert(!rb_frame_next_item(&it, &item));
    ck_assert_uint_eq(bytes, r->rows_bytes);
    ck_assert_uint_eq(r->last_seq, count > 0 ? first + count - 1 : r->after);
}

static void heads_of(fx *f, const rb_bytes *topics, uint32_t count, uint64_t *heads)
{
    int calls = 0;
    rb_heads_req req = {
        .topics = topics, .count = count, .heads = heads, .done = heads_counted, .ctx = &calls};
    ck_assert_int_eq(ops->heads(f->sh, &req), 0);
    run_until(f->loop, &calls, 1);
    ck_assert_int_eq(req.status, 0);
}

static uint64_t head_of(fx *f, const char *topic)
{
    rb_bytes t = str(topic);
    uint64_t head = UINT64_MAX;
    heads_of(f, &t, 1, &head);
    return head;
}

/* ---- appends and completions ---- */

START_TEST(test_memory_first_append_gets_seq_1_to_n)
{
    fx f;
    fx_open(&f, 1000, 1 << 20);
    append_ok(&f, "a", 1, 1, 5);
    ck_assert_uint_eq(head_of(&f, "a"), 5);
    fx_close(&f);
}
END_TEST

START_TEST(test_memory_appends_get_dense_seqs_per_topic)
{
    fx f;
    fx_open(&f, 1000, 1 << 20);
    append_ok(&f, "a", 1, 1, 3);
    append_ok(&f, "b", 2, 1, 1);
    append_ok(&f, "a", 1, 4, 1);
    append_ok(&f, "a", 1, 5, 100);
    append_ok(&f, "b", 2, 2, 2);
    ck_assert_uint_eq(head_of(&f, "a"), 104);
    ck_assert_uint_eq(head_of(&f, "b"), 3);
    uint8_t arena[16384];
    rb_read_range r = range_of("a", 0, 104, 200);
    rb_read_req req;
    read_run(&f, &r, 1, arena, sizeof arena, &req);
    check_rows(&req, &r, 1, 1, 104);
    ck_assert(r.complete);
    fx_close(&f);
}
END_TEST

typedef struct chain {
    fx *f;
    int calls;
    bool in_call;
    bool ran_in_call;
    rb_append_req second;
    rb_bytes payload;
} chain;

static void chain_second_done(rb_append_req *req)
{
    chain *c = req->ctx;
    c->ran_in_call |= c->in_call;
    c->calls++;
}

static void chain_first_done(rb_append_req *req)
{
    chain *c = req->ctx;
    c->ran_in_call |= c->in_call;
    c->calls++;
    /* A request issued from inside a done also completes later. */
    c->second = (rb_append_req){.topic = str("t"),
                                .payloads = &c->payload,
                                .count = 1,
                                .done = chain_second_done,
                                .ctx = c};
    c->in_call = true;
    ck_assert_int_eq(ops->append(c->f->sh, &c->second), 0);
    c->in_call = false;
}

START_TEST(test_memory_done_never_runs_before_the_call_returns)
{
    fx f;
    fx_open(&f, 1000, 1 << 20);
    chain c = {.f = &f, .payload = str("x")};
    rb_append_req first = {
        .topic = str("t"), .payloads = &c.payload, .count = 1, .done = chain_first_done, .ctx = &c};
    c.in_call = true;
    ck_assert_int_eq(ops->append(f.sh, &first), 0);
    c.in_call = false;
    ck_assert_int_eq(c.calls, 0);
    /* Reads and heads too. */
    int reads = 0;
    int heads = 0;
    uint8_t arena[256];
    rb_read_range r = range_of("t", 0, 10, 10);
    rb_read_req rreq = {.ranges = &r,
                        .range_count = 1,
                        .arena = arena,
                        .arena_cap = sizeof arena,
                        .done = read_counted,
                        .ctx = &reads};
    ck_assert_int_eq(ops->read(f.sh, &rreq), 0);
    rb_bytes topic = str("t");
    uint64_t head = 0;
    rb_heads_req hreq = {
        .topics = &topic, .count = 1, .heads = &head, .done = heads_counted, .ctx = &heads};
    ck_assert_int_eq(ops->heads(f.sh, &hreq), 0);
    ck_assert_int_eq(reads + heads, 0);
    run_until(f.loop, &c.calls, 2);
    ck_assert(!c.ran_in_call);
    ck_assert_int_eq(reads, 1);
    ck_assert_int_eq(heads, 1);
    ck_assert_uint_eq(first.first_seq, 1);
    ck_assert_uint_eq(c.second.first_seq, 2);
    ck_assert_uint_eq(r.row_count, 1);
    ck_assert_uint_eq(head, 1);
    fx_close(&f);
}
END_TEST

/* ---- reads ---- */

START_TEST(test_memory_read_returns_exactly_after_to_ceiling)
{
    fx f;
    fx_open(&f, 1000, 1 << 20);
    append_ok(&f, "a", 3, 1, 20);
    uint8_t arena[8192];
    rb_read_req req;
    rb_read_range r = range_of("a", 5, 12, 100);
    read_run(&f, &r, 1, arena, sizeof arena, &req);
    check_rows(&req, &r, 3, 6, 7);
    ck_assert(r.complete);
    ck_assert_uint_eq(r.oldest_seq, 1);
    /* A ceiling past the head stops at the head and is complete. */
    r = range_of("a", 18, 500, 100);
    read_run(&f, &r, 1, arena, sizeof arena, &req);
    check_rows(&req, &r, 3, 19, 2);
    ck_assert(r.complete);
    /* Nothing after the ceiling, or a ceiling below the cursor. */
    r = range_of("a", 12, 12, 100);
    read_run(&f, &r, 1, arena, sizeof arena, &req);
    check_rows(&req, &r, 3, 13, 0);
    ck_assert(r.complete);
    r = range_of("a", 12, 3, 100);
    read_run(&f, &r, 1, arena, sizeof arena, &req);
    check_rows(&req, &r, 3, 13, 0);
    ck_assert(r.complete);
    ck_assert_uint_eq(req.arena_used, 0);
    fx_close(&f);
}
END_TEST

START_TEST(test_memory_read_stops_at_rows_max)
{
    fx f;
    fx_open(&f, 1000, 1 << 20);
    append_ok(&f, "a", 3, 1, 20);
    uint8_t arena[8192];
    rb_read_req req;
    rb_read_range r = range_of("a", 0, 20, 4);
    read_run(&f, &r, 1, arena, sizeof arena, &req);
    check_rows(&req, &r, 3, 1, 4);
    ck_assert(!r.complete);
    r = range_of("a", 16, 20, 4);
    read_run(&f, &r, 1, arena, sizeof arena, &req);
    check_rows(&req, &r, 3, 17, 4);
    ck_assert(r.complete);
    fx_close(&f);
}
END_TEST

START_TEST(test_memory_small_arena_continues_without_gap_or_dup)
{
    fx f;
    fx_open(&f, 1000, 1 << 20);
    append_ok(&f, "a", 4, 1, 50);
    uint8_t arena[200];
    rb_read_req req;
    uint64_t last = 0;
    int reads = 0;
    for (; last < 50 && reads < 100; reads++) {
        rb_read_range r = range_of("a", last, 50, 64);
        read_run(&f, &r, 1, arena, sizeof arena, &req);
        ck_assert_uint_gt(r.row_count, 0);
        check_rows(&req, &r, 4, last + 1, r.row_count);
        ck_assert(r.complete == (r.last_seq == 50));
        last = r.last_seq;
    }
    ck_assert_uint_eq(last, 50);
    ck_assert_int_gt(reads, 5);
    /* An arena too small for the next row returns nothing, incomplete. */
    rb_read_range r = range_of("a", 0, 50, 64);
    read_run(&f, &r, 1, arena, 10, &req);
    ck_assert_uint_eq(r.row_count, 0);
    ck_assert(!r.complete);
    ck_assert_uint_eq(r.last_seq, 0);
    fx_close(&f);
}
END_TEST

START_TEST(test_memory_full_arena_stops_later_ranges)
{
    fx f;
    fx_open(&f, 1000, 1 << 20);
    append_ok(&f, "a", 1, 1, 30);
    append_ok(&f, "b", 2, 1, 30);
    append_ok(&f, "c", 3, 1, 30);
    uint8_t arena[600];
    rb_read_range r[4] = {range_of("a", 0, 30, 100), range_of("b", 30, 30, 100),
                          range_of("c", 0, 30, 100), range_of("zz", 0, 30, 100)};
    rb_read_req req;
    read_run(&f, r, 4, arena, sizeof arena, &req);
    ck_assert_uint_gt(r[0].row_count, 0);
    ck_assert_uint_lt(r[0].row_count, 30);
    check_rows(&req, &r[0], 1, 1, r[0].row_count);
    ck_assert(!r[0].complete);
    /* Already complete (cursor at its ceiling) stays complete. */
    check_rows(&req, &r[1], 2, 31, 0);
    ck_assert(r[1].complete);
    /* Rows remain, but the request stopped: nothing, incomplete. */
    check_rows(&req, &r[2], 3, 1, 0);
    ck_assert(!r[2].complete);
    ck_assert_uint_eq(r[2].oldest_seq, 1);
    /* An unknown topic has nothing to give: complete. */
    check_rows(&req, &r[3], 0, 1, 0);
    ck_assert(r[3].complete);
    ck_assert_uint_le(req.arena_used, sizeof arena);
    fx_close(&f);
}
END_TEST

START_TEST(test_memory_arena_of_max_frame_holds_the_largest_row)
{
    fx f;
    fx_open(&f, 10, 64u << 20);
    size_t topic_len = 3;
    size_t len = RB_FRAME_BYTES_DEFAULT - rb_frame_messages_item_size(topic_len, 0);
    uint8_t *big = calloc(1, len + 1);
    ck_assert_ptr_nonnull(big);
    memset(big, 'z', len + 1);
    rb_bytes payload = {big, len + 1};
    int calls = 0;
    rb_append_req areq = {.topic = str("big"),
                          .payloads = &payload,
                          .count = 1,
                          .done = append_counted,
                          .ctx = &calls};
    /* One byte more than a frame can carry is refused at once. */
    ck_assert_int_eq(ops->append(f.sh, &areq), RB_EINVAL);
    ck_assert_int_eq(areq.err.code, RB_EINVAL);
    payload.len = len;
    ck_assert_int_eq(ops->append(f.sh, &areq), 0);
    run_until(f.loop, &calls, 1);
    ck_assert_int_eq(areq.status, 0);
    uint8_t *arena = malloc(RB_FRAME_BYTES_DEFAULT);
    ck_assert_ptr_nonnull(arena);
    rb_read_range r = range_of("big", 0, 1, 1);
    rb_read_req req;
    read_run(&f, &r, 1, arena, RB_FRAME_BYTES_DEFAULT, &req);
    ck_assert_uint_eq(r.row_count, 1);
    ck_assert_uint_eq(req.arena_used, RB_FRAME_BYTES_DEFAULT);
    free(arena);
    free(big);
    fx_close(&f);
}
END_TEST

/* ---- retention ---- */

START_TEST(test_memory_retention_by_count_evicts_oldest)
{
    fx f;
    fx_open(&f, 10, 1 << 20);
    append_ok(&f, "a", 5, 1, 7);
    append_ok(&f, "a", 5, 8, 7);
    uint8_t arena[8192];
    rb_read_req req;
    rb_read_range r = range_of("a", 0, 100, 100);
    read_run(&f, &r, 1, arena, sizeof arena, &req);
    check_rows(&req, &r, 5, 5, 10);
    ck_assert_uint_eq(r.oldest_seq, 5);
    ck_assert(r.complete);
    /* One batch longer than retention keeps only its newest. */
    append_ok(&f, "a", 5, 15, 25);
    r = range_of("a", 0, 100, 100);
    read_run(&f, &r, 1, arena, sizeof arena, &req);
    check_rows(&req, &r, 5, 30, 10);
    ck_assert_uint_eq(head_of(&f, "a"), 39);
    fx_close(&f);
}
END_TEST

static void append_bytes(fx *f, const char *topic, char fill, size_t len, uint64_t seq)
{
    uint8_t *buf = malloc(len + 1);
    ck_assert_ptr_nonnull(buf);
    memset(buf, fill, len + 1);
    rb_bytes p = {buf, len};
    int calls = 0;
    rb_append_req req = {
        .topic = str(topic), .payloads = &p, .count = 1, .done = append_counted, .ctx = &calls};
    ck_assert_int_eq(ops->append(f->sh, &req), 0);
    run_until(f->loop, &calls, 1);
    ck_assert_int_eq(req.status, 0);
    ck_assert_uint_eq(req.first_seq, seq);
    free(buf);
}

static void expect_retained(fx *f, const char *topic, uint64_t oldest, uint64_t head)
{
    uint8_t arena[4096];
    rb_read_req req;
    rb_read_range r = range_of(topic, 0, UINT64_MAX, 1000);
    read_run(f, &r, 1, arena, sizeof arena, &req);
    ck_assert_int_eq(r.status, 0);
    ck_assert_uint_eq(r.oldest_seq, oldest);
    ck_assert_uint_eq(r.row_count, head - oldest + 1);
    ck_assert_uint_eq(r.last_seq, head);
    rb_frame_iter it;
    rb_frame_iter_init(&it, (rb_bytes){arena + r.rows_offset, r.rows_bytes}, r.row_count);
    rb_message_item item;
    for (uint64_t seq = oldest; seq <= head; seq++) {
        ck_assert(rb_frame_next_item(&it, &item));
        ck_assert_uint_eq(item.seq, seq);
    }
}

START_TEST(test_memory_retention_by_bytes_evicts_oldest)
{
    fx f;
    fx_open(&f, 1000, 1000);
    append_bytes(&f, "a", 'a', 400, 1);
    append_bytes(&f, "a", 'b', 400, 2);
    expect_retained(&f, "a", 1, 2);
    /* 1200 > 1000: seq 1 goes. */
    append_bytes(&f, "a", 'c', 400, 3);
    expect_retained(&f, "a", 2, 3);
    /* Exactly at the bound is kept. */
    append_bytes(&f, "a", 'd', 200, 4);
    expect_retained(&f, "a", 2, 4);
    /* A message larger than retention_bytes is kept alone. */
    append_bytes(&f, "a", 'e', 1500, 5);
    expect_retained(&f, "a", 5, 5);
    append_bytes(&f, "a", 'f', 10, 6);
    expect_retained(&f, "a", 6, 6);
    append_bytes(&f, "a", 'g', 0, 7);
    expect_retained(&f, "a", 6, 7);
    fx_close(&f);
}
END_TEST

START_TEST(test_memory_cursor_older_than_retained_is_erange)
{
    fx f;
    fx_open(&f, 10, 1 << 20);
    append_ok(&f, "a", 6, 1, 25); /* retains 16..25 */
    uint8_t arena[8192];
    rb_read_req req;
    rb_read_range r[4] = {range_of("a", 14, 25, 100), range_of("a", 0, 25, 100),
                          range_of("a", 15, 25, 100), range_of("a", 1, 3, 100)};
    read_run(&f, r, 4, arena, sizeof arena, &req);
    /* Seq 15 is gone: an explicit error, never a silent jump. */
    ck_assert_int_eq(r[0].status, RB_ERANGE);
    ck_assert_uint_eq(r[0].row_count, 0);
    ck_assert(!r[0].complete);
    ck_assert_uint_eq(r[0].oldest_seq, 16);
    /* Cursor 0 means "from the oldest retained". */
    check_rows(&req, &r[1], 6, 16, 10);
    ck_assert(r[1].complete);
    /* The cursor right before the oldest is fine. */
    check_rows(&req, &r[2], 6, 16, 10);
    /* Even when the ceiling is also gone. */
    ck_assert_int_eq(r[3].status, RB_ERANGE);
    fx_close(&f);
}
END_TEST

START_TEST(test_memory_unknown_topic_has_head_0_and_reads_empty)
{
    fx f;
    fx_open(&f, 10, 1 << 20);
    append_ok(&f, "known", 1, 1, 2);
    rb_bytes topics[3] = {str("nope"), str("known"), str("also-nope")};
    uint64_t heads[3] = {99, 99, 99};
    heads_of(&f, topics, 3, heads);
    ck_assert_uint_eq(heads[0], 0);
    ck_assert_uint_eq(heads[1], 2);
    ck_assert_uint_eq(heads[2], 0);
    uint8_t arena[256];
    rb_read_req req;
    rb_read_range r[2] = {range_of("nope", 0, 100, 10), range_of("nope", 7, 100, 10)};
    read_run(&f, r, 2, arena, sizeof arena, &req);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(r[i].status, 0);
        ck_assert_uint_eq(r[i].row_count, 0);
        ck_assert(r[i].complete);
        ck_assert_uint_eq(r[i].oldest_seq, 0);
        ck_assert_uint_eq(r[i].last_seq, r[i].after);
    }
    /* A heads request with no topics is fine. */
    heads_of(&f, NULL, 0, NULL);
    fx_close(&f);
}
END_TEST

START_TEST(test_memory_reads_many_topics_at_once)
{
    enum {
        TOPICS = 200
    };
    fx f;
    fx_open(&f, 1000, 1 << 20);
    static char names[TOPICS][16];
    static rb_read_range r[TOPICS];
    for (uint32_t i = 0; i < TOPICS; i++) {
        snprintf(names[i], sizeof names[i], "t.%u", i);
        append_ok(&f, names[i], i, 1, 1 + i % 5);
    }
    for (uint32_t i = 0; i < TOPICS; i++) {
        r[i] = range_of(names[i], i % 2, 100, 3);
    }
    static uint8_t arena[1 << 16];
    rb_read_req req;
    read_run(&f, r, TOPICS, arena, sizeof arena, &req);
    size_t offset = 0;
    for (uint32_t i = 0; i < TOPICS; i++) {
        uint32_t head = 1 + i % 5;
        uint32_t after = i % 2;
        uint32_t want = head - after < 3 ? head - after : 3;
        check_rows(&req, &r[i], i, after + 1, want);
        ck_assert_uint_eq(r[i].rows_offset, offset);
        ck_assert(r[i].complete == (after + want == head));
        offset += r[i].rows_bytes;
    }
    ck_assert_uint_eq(req.arena_used, offset);
    fx_close(&f);
}
END_TEST

/* ---- bad input and limits ---- */

START_TEST(test_memory_rejects_malformed_requests_without_done)
{
    fx f;
    fx_open(&f, 10, 1 << 20);
    int calls = 0;
    rb_bytes p = str("x");
    char long_topic[RB_TOPIC_BYTES_MAX + 2];
    memset(long_topic, 't', sizeof long_topic - 1);
    long_topic[sizeof long_topic - 1] = '\0';
    rb_append_req a = {
        .topic = str(""), .payloads = &p, .count = 1, .done = append_counted, .ctx = &calls};
    ck_assert_int_eq(ops->append(f.sh, &a), RB_EINVAL);
    a.topic = str(long_topic);
    ck_assert_int_eq(ops->append(f.sh, &a), RB_EINVAL);
    a.topic = str("ok");
    a.count = 0;
    ck_assert_int_eq(ops->append(f.sh, &a), RB_EINVAL);
    ck_assert_str_ne(a.err.msg, "");
    uint8_t arena[64];
    rb_read_range r = range_of("ok", 0, 10, 0);
    rb_read_req rr = {.ranges = &r,
                      .range_count = 1,
                      .arena = arena,
                      .arena_cap = sizeof arena,
                      .done = read_counted,
                      .ctx = &calls};
    ck_assert_int_eq(ops->read(f.sh, &rr), RB_EINVAL);
    r = range_of("", 0, 10, 5);
    ck_assert_int_eq(ops->read(f.sh, &rr), RB_EINVAL);
    rb_bytes bad = str("");
    uint64_t head;
    rb_heads_req h = {
        .topics = &bad, .count = 1, .heads = &head, .done = heads_counted, .ctx = &calls};
    ck_assert_int_eq(ops->heads(f.sh, &h), RB_EINVAL);
    rb_err err = {0};
    ck_assert_int_eq(rb_loop_run_once(f.loop, 0, &err), 0);
    ck_assert_int_eq(calls, 0);
    /* Nothing was created by the refused append. */
    ck_assert_uint_eq(head_of(&f, "ok"), 0);
    fx_close(&f);
}
END_TEST

START_TEST(test_memory_open_rejects_bad_config)
{
    rb_config *cfg = config_new(0, 100);
    rb_storage *st = NULL;
    rb_err err = {0};
    ck_assert_int_eq(ops->open(cfg, &st, &err), RB_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "retention_messages"));
    cfg->memory_retention_messages = RB_MEMORY_RETENTION_MESSAGES_MAX + 1;
    ck_assert_int_eq(ops->open(cfg, &st, &err), RB_ECONFIG);
    cfg->memory_retention_messages = 10;
    cfg->memory_retention_bytes = 0;
    ck_assert_int_eq(ops->open(cfg, &st, &err), RB_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "retention_bytes"));
    cfg->memory_retention_bytes = 100;
    cfg->max_frame_bytes = 0;
    ck_assert_int_eq(ops->open(cfg, &st, &err), RB_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.msg, "max_frame_bytes"));
    cfg->max_frame_bytes = RB_FRAME_BYTES_MIN;
    ck_assert_int_eq(ops->open(cfg, &st, &err), 0);
    ops->close(st);
    free(cfg);
}
END_TEST

START_TEST(test_memory_inflight_bound_returns_elimit)
{
    fx f;
    fx_open(&f, 10, 1 << 20);
    /* The bound is not exported; find it by filling until refused. */
    enum {
        TRY = 70000
    };
    rb_heads_req *reqs = calloc(TRY + 1, sizeof *reqs);
    ck_assert_ptr_nonnull(reqs);
    int calls = 0;
    uint32_t admitted = 0;
    for (; admitted < TRY; admitted++) {
        reqs[admitted] = (rb_heads_req){.done = heads_counted, .ctx = &calls};
        if (ops->heads(f.sh, &reqs[admitted]) != 0) {
            break;
        }
    }
    ck_assert_uint_lt(admitted, TRY);
    ck_assert_uint_ge(admitted, 1024);
    ck_assert_int_eq(reqs[admitted].status, RB_ELIMIT);
    run_until(f.loop, &calls, (int)admitted);
    /* Completed requests free their places. */
    reqs[TRY] = (rb_heads_req){.done = heads_counted, .ctx = &calls};
    ck_assert_int_eq(ops->heads(f.sh, &reqs[TRY]), 0);
    run_until(f.loop, &calls, (int)admitted + 1);
    free(reqs);
    fx_close(&f);
}
END_TEST

START_TEST(test_memory_shard_close_with_pending_done_asserts)
{
    RB_DEATH_TEST();
    fx f;
    fx_open(&f, 10, 1 << 20);
    int calls = 0;
    rb_heads_req req = {.done = heads_counted, .ctx = &calls};
    ck_assert_int_eq(ops->heads(f.sh, &req), 0);
    ops->shard_close(f.sh);
}
END_TEST

START_TEST(test_storage_ops_for_picks_the_configured_backend)
{
    rb_config *cfg = config_new(10, 100);
    ck_assert_ptr_eq(rb_storage_ops_for(cfg), &rb_storage_memory_ops);
    ck_assert_str_eq(rb_storage_ops_for(cfg)->name, "memory");
    cfg->storage_backend = RB_STORAGE_POSTGRES;
    ck_assert_ptr_eq(rb_storage_ops_for(cfg), &rb_storage_postgres_ops);
    free(cfg);
}
END_TEST

/* ---- randomized model ---- */

/* Small deterministic PRNG (xorshift64*), so a failing seed replays. */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

static uint64_t rng_below(uint64_t *s, uint64_t n)
{
    return rng_next(s) % n;
}

static uint64_t test_seed(void)
{
    const char *env = getenv("RB_TEST_SEED");
    return env != NULL ? strtoull(env, NULL, 0) : 0x5eed2024ull;
}

#define MODEL_TOPICS       6 /* the last one is never appended to */
#define MODEL_SEQS_MAX     4096
#define MODEL_RET_MESSAGES 40
#define MODEL_RET_BYTES    900
#define MODEL_ARENA_BYTES  600

typedef struct model_topic {
    char name[8];
    uint64_t head;
    uint64_t count; /* retained: head - count + 1 .. head */
    uint64_t bytes;
    uint16_t lens[MODEL_SEQS_MAX + 1];
} model_topic;

static uint64_t model_oldest(const model_topic *m)
{
    return m->count > 0 ? m->head - m->count + 1 : 0;
}

/* The retention rule as the contract states it, written independently. */
static void model_append(model_topic *m, uint32_t tag, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++) {
        uint64_t seq = m->head + 1;
        ck_assert_uint_le(seq, MODEL_SEQS_MAX);
        size_t len = payload_len(tag, seq);
        while (m->count > 0 &&
               (m->count + 1 > MODEL_RET_MESSAGES || m->bytes + len > MODEL_RET_BYTES)) {
            m->bytes -= m->lens[model_oldest(m)];
            m->count--;
        }
        m->lens[seq] = (uint16_t)len;
        m->head = seq;
        m->count++;
        m->bytes += len;
    }
}

/* True when the range's arena rows are exactly seqs first.. of the topic. */
static bool rows_match(const rb_read_req *req, const rb_read_range *r, uint32_t tag, uint64_t first)
{
    rb_frame_iter it;
    rb_frame_iter_init(&it, (rb_bytes){req->arena + r->rows_offset, r->rows_bytes}, r->row_count);
    rb_message_item item;
    for (uint32_t i = 0; i < r->row_count; i++) {
        if (!rb_frame_next_item(&it, &item) || item.seq != first + i ||
            item.topic.len != r->topic.len ||
            memcmp(item.topic.ptr, r->topic.ptr, r->topic.len) != 0 ||
            !payload_matches(item.payload, tag, item.seq)) {
            return false;
        }
    }
    return it.pos == it.end;
}

typedef struct model_run {
    uint64_t seed;
    int step;
    size_t used; /* arena bytes the model expects so far */
    bool stopped;
} model_run;

static void model_check_range(model_run *run, const model_topic *m, uint32_t tag,
                              const rb_read_req *req, const rb_read_range *r)
{
    uint64_t oldest = model_oldest(m);
    bool gone = r->after > 0 && oldest > 0 && r->after < oldest - 1;
    uint64_t end = r->ceiling < m->head ? r->ceiling : m->head;
    uint64_t first = r->after + 1 > oldest ? r->after + 1 : oldest;
    uint32_t rows = 0;
    bool copy = !gone && r->after < end && !run->stopped;
    for (uint64_t seq = first; copy && seq <= end && rows < r->rows_max; seq++) {
        size_t size = rb_frame_messages_item_size(r->topic.len, m->lens[seq]);
        if (size > req->arena_cap - run->used) {
            run->stopped = true;
            break;
        }
        run->used += size;
        rows++;
    }
    uint64_t last = rows > 0 ? first + rows - 1 : r->after;
    bool complete = !gone && (r->after >= end || (copy && last >= end));
    ck_assert_msg(r->status == (gone ? RB_ERANGE : 0) && r->oldest_seq == oldest &&
                      r->row_count == rows && r->last_seq == last && r->complete == complete &&
                      rows_match(req, r, tag, first),
                  "seed 0x%" PRIx64 " step %d: %s after %" PRIu64 " ceiling %" PRIu64
                  ": status %d rows %u last %" PRIu64 " complete %d; want %u rows to %" PRIu64,
                  run->seed, run->step, m->name, r->after, r->ceiling, r->status, r->row_count,
                  r->last_seq, r->complete, rows, last);
}

static void model_read(fx *f, model_topic *model, uint64_t *rng, model_run *run)
{
    rb_read_range r[4];
    uint32_t idx[4];
    uint32_t n = 1 + (uint32_t)rng_below(rng, 4);
    for (uint32_t i = 0; i < n; i++) {
        idx[i] = (uint32_t)rng_below(rng, MODEL_TOPICS);
        const model_topic *m = &model[idx[i]];
        uint64_t after = rng_below(rng, m->head + 3);
        uint64_t ceiling = rng_below(rng, 4) == 0 ? UINT64_MAX : rng_below(rng, m->head + 4);
        r[i] = range_of(m->name, after, ceiling, 1 + (uint32_t)rng_below(rng, 10));
    }
    static uint8_t arena[MODEL_ARENA_BYTES];
    rb_read_req req;
    read_run(f, r, n, arena, rng_below(rng, MODEL_ARENA_BYTES + 1), &req);
    run->used = 0;
    run->stopped = false;
    for (uint32_t i = 0; i < n; i++) {
        model_check_range(run, &model[idx[i]], idx[i] + 1, &req, &r[i]);
    }
    ck_assert_msg(req.arena_used == run->used,
                  "seed 0x%" PRIx64 " step %d: arena used %zu, want %zu", run->seed, run->step,
                  req.arena_used, run->used);
}

static void model_heads(fx *f, const model_topic *model, const model_run *run)
{
    rb_bytes topics[MODEL_TOPICS];
    uint64_t heads[MODEL_TOPICS];
    for (uint32_t i = 0; i < MODEL_TOPICS; i++) {
        topics[i] = str(model[i].name);
    }
    heads_of(f, topics, MODEL_TOPICS, heads);
    for (uint32_t i = 0; i < MODEL_TOPICS; i++) {
        ck_assert_msg(heads[i] == model[i].head,
                      "seed 0x%" PRIx64 " step %d: head of %s is %" PRIu64 ", want %" PRIu64,
                      run->seed, run->step, model[i].name, heads[i], model[i].head);
    }
}

START_TEST(test_memory_randomized_matches_model)
{
    fx f;
    fx_open(&f, MODEL_RET_MESSAGES, MODEL_RET_BYTES);
    model_topic *model = calloc(MODEL_TOPICS, sizeof *model);
    ck_assert_ptr_nonnull(model);
    for (uint32_t i = 0; i < MODEL_TOPICS; i++) {
        snprintf(model[i].name, sizeof model[i].name, "m.%u", i);
    }
    model_run run = {.seed = test_seed()};
    uint64_t rng = run.seed;
    for (run.step = 0; run.step < 3000; run.step++) {
        uint64_t op = rng_below(&rng, 10);
        if (op < 6) {
            uint32_t i = (uint32_t)rng_below(&rng, MODEL_TOPICS - 1);
            uint32_t count = 1 + (uint32_t)rng_below(&rng, 8);
            rb_append_req req;
            ck_assert_int_eq(append_gen(&f, model[i].name, i + 1, model[i].head + 1, count, &req),
                             0);
            ck_assert_msg(req.first_seq == model[i].head + 1,
                          "seed 0x%" PRIx64 " step %d: first seq %" PRIu64, run.seed, run.step,
                          req.first_seq);
            model_append(&model[i], i + 1, count);
            ck_assert_uint_eq(req.last_seq, model[i].head);
        } else if (op < 9) {
            model_read(&f, model, &rng, &run);
        } else {
            model_heads(&f, model, &run);
        }
    }
    free(model);
    fx_close(&f);
}
END_TEST

/* ---- two threads ---- */

#define TT_MESSAGES 20000u
#define TT_TAG      9u

typedef struct tt_side {
    rb_storage *st;
    uint32_t shard_id;
    char why[512]; /* empty when the side succeeded */
} tt_side;

/* Threads record failures instead of asserting, and stop. */
static void tt_note(tt_side *side, const char *what)
{
    size_t used = strlen(side->why);
    snprintf(side->why + used, sizeof side->why - used, "%s", what);
}

static bool tt_wait(rb_loop *loop, const int *calls, tt_side *side)
{
    rb_err err = {0};
    for (int turn = 0; turn < 100 && *calls == 0; turn++) {
        if (rb_loop_run_once(loop, 0, &err) != 0) {
            snprintf(side->why, sizeof side->why, "loop: %s", err.msg);
            return false;
        }
    }
    if (*calls == 0) {
        snprintf(side->why, sizeof side->why, "done never ran");
        return false;
    }
    return true;
}

static bool tt_append_batch(rb_storage_shard *sh, rb_loop *loop, uint64_t next, uint32_t count,
                            tt_side *side)
{
    uint8_t bufs[16][PAYLOAD_BYTES_MAX];
    rb_bytes payloads[16];
    for (uint32_t i = 0; i < count; i++) {
        payloads[i] = (rb_bytes){bufs[i], payload_fill(bufs[i], TT_TAG, next + i)};
    }
    int calls = 0;
    rb_append_req req = {.topic = str("tt"),
                         .payloads = payloads,
                         .count = count,
                         .done = append_counted,
                         .ctx = &calls};
    if (ops->append(sh, &req) != 0 || !tt_wait(loop, &calls, side)) {
        tt_note(side, " (append)");
        return false;
    }
    if (req.status != 0 || req.first_seq != next || req.last_seq != next + count - 1) {
        snprintf(side->why, sizeof side->why,
                 "append at %" PRIu64 ": status %d seqs %" PRIu64 "..%" PRIu64, next, req.status,
                 req.first_seq, req.last_seq);
        return false;
    }
    return true;
}

static void *tt_appender(void *arg)
{
    tt_side *side = arg;
    rb_loop *loop = NULL;
    rb_storage_shard *sh = NULL;
    rb_err err = {0};
    if (rb_loop_init(&loop, &loop_opt, &err) != 0 ||
        ops->shard_open(side->st, loop, side->shard_id, &sh, &err) != 0) {
        snprintf(side->why, sizeof side->why, "setup: %s", err.msg);
        return NULL;
    }
    uint64_t rng = 77;
    for (uint64_t next = 1; next <= TT_MESSAGES;) {
        uint32_t count = 1 + (uint32_t)rng_below(&rng, 16);
        if (next + count - 1 > TT_MESSAGES) {
            count = (uint32_t)(TT_MESSAGES - next + 1);
        }
        if (!tt_append_batch(sh, loop, next, count, side)) {
            break;
        }
        next += count;
    }
    ops->shard_close(sh);
    rb_loop_deinit(loop);
    return NULL;
}

/* Reads (last, ceiling] once and checks that rows continue from last. */
static bool tt_read_once(rb_storage_shard *sh, rb_loop *loop, uint64_t *last, uint64_t ceiling,
                         tt_side *side)
{
    static _Thread_local uint8_t arena[1024];
    rb_read_range r = range_of("tt", *last, ceiling, 32);
    int calls = 0;
    rb_read_req req = {.ranges = &r,
                       .range_count = 1,
                       .arena = arena,
                       .arena_cap = sizeof arena,
                       .done = read_counted,
                       .ctx = &calls};
    if (ops->read(sh, &req) != 0 || !tt_wait(loop, &calls, side)) {
        tt_note(side, " (read)");
        return false;
    }
    if (r.status != 0 || r.row_count == 0 || !rows_match(&req, &r, TT_TAG, *last + 1)) {
        snprintf(side->why, sizeof side->why,
                 "read after %" PRIu64 " to %" PRIu64 ": status %d, %u rows, rows %s", *last,
                 ceiling, r.status, r.row_count,
                 rows_match(&req, &r, TT_TAG, *last + 1) ? "ok" : "wrong");
        return false;
    }
    *last = r.last_seq;
    return true;
}

static void *tt_reader(void *arg)
{
    tt_side *side = arg;
    rb_loop *loop = NULL;
    rb_storage_shard *sh = NULL;
    rb_err err = {0};
    if (rb_loop_init(&loop, &loop_opt, &err) != 0 ||
        ops->shard_open(side->st, loop, side->shard_id, &sh, &err) != 0) {
        snprintf(side->why, sizeof side->why, "setup: %s", err.msg);
        return NULL;
    }
    uint64_t last = 0;
    rb_bytes topic = str("tt");
    /* Bounded: each turn either advances or yields; the appender ends. */
    for (uint64_t turn = 0; last < TT_MESSAGES && turn < 50000000u; turn++) {
        uint64_t head = 0;
        int calls = 0;
        rb_heads_req hreq = {
            .topics = &topic, .count = 1, .heads = &head, .done = heads_counted, .ctx = &calls};
        if (ops->heads(sh, &hreq) != 0 || !tt_wait(loop, &calls, side)) {
            break;
        }
        while (last < head && tt_read_once(sh, loop, &last, head, side)) {
        }
        if (side->why[0] != '\0') {
            break;
        }
        if (last == head) {
            sched_yield();
        }
    }
    if (side->why[0] == '\0' && last != TT_MESSAGES) {
        snprintf(side->why, sizeof side->why, "reader stopped at %" PRIu64, last);
    }
    ops->shard_close(sh);
    rb_loop_deinit(loop);
    return NULL;
}

START_TEST(test_memory_two_threads_append_and_read_without_gap_or_dup)
{
    rb_config *cfg = config_new(1000000, 1u << 30);
    rb_storage *st = NULL;
    rb_err err = {0};
    ck_assert_int_eq(ops->open(cfg, &st, &err), 0);
    tt_side appender = {.st = st, .shard_id = 1};
    tt_side reader = {.st = st, .shard_id = 2};
    pthread_t a;
    pthread_t r;
    ck_assert_int_eq(pthread_create(&r, NULL, tt_reader, &reader), 0);
    ck_assert_int_eq(pthread_create(&a, NULL, tt_appender, &appender), 0);
    ck_assert_int_eq(pthread_join(a, NULL), 0);
    ck_assert_int_eq(pthread_join(r, NULL), 0);
    ck_assert_msg(appender.why[0] == '\0', "appender: %s", appender.why);
    ck_assert_msg(reader.why[0] == '\0', "reader: %s", reader.why);
    ops->close(st);
    free(cfg);
}
END_TEST

/* Every start is a new seq space: a fresh nonzero epoch, fixed while open. */
START_TEST(test_memory_epoch_is_nonzero_fixed_and_new_at_each_open)
{
    fx a;
    fx b;
    fx_open(&a, 100, 1 << 20);
    fx_open(&b, 100, 1 << 20);
    uint64_t ea = ops->epoch(a.st);
    ck_assert_uint_ne(ea, 0);
    ck_assert_uint_eq(ops->epoch(a.st), ea);
    ck_assert_uint_ne(ops->epoch(b.st), 0);
    ck_assert_uint_ne(ops->epoch(b.st), ea);
    fx_close(&b);
    fx_close(&a);
}
END_TEST

Suite *rb_memory_store_suite(void);

Suite *rb_memory_store_suite(void)
{
    Suite *s = suite_create("memory_store");
    TCase *tc = tcase_create("append");
    tcase_add_test(tc, test_memory_first_append_gets_seq_1_to_n);
    tcase_add_test(tc, test_memory_epoch_is_nonzero_fixed_and_new_at_each_open);
    tcase_add_test(tc, test_memory_appends_get_dense_seqs_per_topic);
    tcase_add_test(tc, test_memory_done_never_runs_before_the_call_returns);
    suite_add_tcase(s, tc);
    tc = tcase_create("read");
    tcase_add_test(tc, test_memory_read_returns_exactly_after_to_ceiling);
    tcase_add_test(tc, test_memory_read_stops_at_rows_max);
    tcase_add_test(tc, test_memory_small_arena_continues_without_gap_or_dup);
    tcase_add_test(tc, test_memory_full_arena_stops_later_ranges);
    tcase_add_test(tc, test_memory_arena_of_max_frame_holds_the_largest_row);
    tcase_add_test(tc, test_memory_unknown_topic_has_head_0_and_reads_empty);
    tcase_add_test(tc, test_memory_reads_many_topics_at_once);
    suite_add_tcase(s, tc);
    tc = tcase_create("retention");
    tcase_add_test(tc, test_memory_retention_by_count_evicts_oldest);
    tcase_add_test(tc, test_memory_retention_by_bytes_evicts_oldest);
    tcase_add_test(tc, test_memory_cursor_older_than_retained_is_erange);
    suite_add_tcase(s, tc);
    tc = tcase_create("limits");
    tcase_add_test(tc, test_memory_rejects_malformed_requests_without_done);
    tcase_add_test(tc, test_memory_open_rejects_bad_config);
    tcase_add_test(tc, test_memory_inflight_bound_returns_elimit);
    tcase_add_test_raise_signal(tc, test_memory_shard_close_with_pending_done_asserts, SIGABRT);
    tcase_add_test(tc, test_storage_ops_for_picks_the_configured_backend);
    suite_add_tcase(s, tc);
    tc = tcase_create("model");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_memory_randomized_matches_model);
    tcase_add_test(tc, test_memory_two_threads_append_and_read_without_gap_or_dup);
    suite_add_tcase(s, tc);
    return s;
}
