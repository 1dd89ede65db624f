/* Tests of the client session (server/session.c) over a fake link: HELLO
 * and reassembly, PING/PONG, a wrong first frame, partial writes, bytes
 * kept until acknowledged, the half-close drain, a link whose handshake is
 * not done, and the send quota with its closing reserve. The fake link
 * "writes" into a buffer, at most write_max bytes per pass, and either
 * releases what it wrote at once (like TCP) or only when the test
 * acknowledges it (like QUIC). A real shard loop gives the session its
 * clock and timers; no socket is involved. */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "common/frame.h"
#include "common/limits.h"
#include "server/link.h"
#include "server/sendq.h"
#include "server/server.h"

typedef struct fake_link {
    rb_link base;
    rb_conn *c;
    bool ready;
    bool hold_until_ack; /* keep written bytes until fake_ack */
    size_t write_max;    /* bytes taken per pass; 0 = all */
    bool paused;         /* the peer reads nothing: no byte is taken */
    bool stopped_reading;
    bool held;        /* the session asked the link to pause reading */
    uint32_t resumes; /* hold_reading(false) calls */
    bool shut;
    uint16_t shut_status;
    bool closed;
    bool released;
    uint8_t out[1 << 20];
    size_t out_len;
} fake_link;

#define FAKE_OF(l) RB_CONTAINER_OF(l, fake_link, base)

static rb_server srv;
static rb_shard sh;

/* The store is not used by these tests; STARTED announces its epoch. */
static uint64_t fake_epoch(rb_storage *st)
{
    (void)st;
    return 0x5e55105e55105e55ull;
}

static const rb_storage_ops fake_store = {.name = "fake", .epoch = fake_epoch};

static void fake_finish_shutdown(fake_link *f)
{
    if (f->shut && rb_sendq_bytes(rb_session_sendq(f->c)) == 0 && !f->closed) {
        /* Everything went out: the write side shuts and the link is done. */
        rb_session_link_down(f->c);
    }
}

static void fake_start_send(rb_link *l)
{
    fake_link *f = FAKE_OF(l);
    if (f->closed || f->paused) {
        return;
    }
    rb_sendq *q = rb_session_sendq(f->c);
    size_t budget = f->write_max ? f->write_max : SIZE_MAX;
    while (budget > 0 && rb_sendq_unsent(q) > 0) {
        size_t n;
        const uint8_t *p = rb_sendq_peek_one(q, &n);
        n = n < budget ? n : budget;
        ck_assert_uint_le(f->out_len + n, sizeof f->out);
        memcpy(f->out + f->out_len, p, n);
        f->out_len += n;
        budget -= n;
        rb_sendq_written(q, n);
        if (!f->hold_until_ack) {
            rb_sendq_release(q, n);
        }
    }
    if (rb_sendq_unsent(q) > 0) {
        rb_session_want_send(f->c);
        return;
    }
    if (rb_sendq_bytes(q) == 0) {
        if (f->shut) {
            fake_finish_shutdown(f);
        } else {
            rb_session_send_drained(f->c);
        }
    }
}

static void fake_stop_reading(rb_link *l)
{
    FAKE_OF(l)->stopped_reading = true;
}

static void fake_shutdown(rb_link *l, uint16_t status)
{
    fake_link *f = FAKE_OF(l);
    f->shut = true;
    f->shut_status = status;
    rb_session_want_send(f->c);
}

static void fake_close(rb_link *l)
{
    fake_link *f = FAKE_OF(l);
    ck_assert(!f->closed);
    f->closed = true;
    f->released = true;
    rb_session_link_released(f->c);
}

static void fake_hold_reading(rb_link *l, bool hold)
{
    fake_link *f = FAKE_OF(l);
    ck_assert(f->held != hold);
    f->held = hold;
    f->resumes += hold ? 0 : 1;
}

static bool fake_ready(const rb_link *l)
{
    return FAKE_OF(l)->ready;
}

static bool fake_lingering(const rb_link *l)
{
    (void)l;
    return false;
}

static uint64_t fake_unsent(const rb_link *l)
{
    (void)l;
    return 0;
}

/* The fake link copies what it writes at once: nothing is ever in flight. */
static uint64_t fake_busy(const rb_link *l)
{
    (void)l;
    return 0;
}

static const rb_link_ops fake_ops = {
    .start_send = fake_start_send,
    .stop_reading = fake_stop_reading,
    .hold_reading = fake_hold_reading,
    .shutdown = fake_shutdown,
    .close = fake_close,
    .ready = fake_ready,
    .lingering = fake_lingering,
    .unsent_bytes = fake_unsent,
    .busy_bytes = fake_busy,
};

static void shard_setup(uint64_t send_queue_bytes)
{
    rb_err err = {0};
    memset(&srv, 0, sizeof srv);
    memset(&sh, 0, sizeof sh);
    rb_config_defaults(&srv.cfg);
    srv.cfg.max_connections = 4;
    srv.cfg.max_frame_bytes = RB_FRAME_BYTES_MIN;
    srv.cfg.send_queue_bytes = send_queue_bytes;
    sh.server = &srv;
    sh.cfg = &srv.cfg;
    srv.storage_ops = &fake_store;
    rb_loop_options opt = {.sq_entries = 64, .recv_buf_count = 8, .recv_buf_bytes = 4096};
    ck_assert_int_eq(rb_loop_init(&sh.loop, &opt, &err), 0);
    ck_assert_int_eq(rb_pool_init(&sh.chunk_pool, "chunks", RB_CHUNK_BYTES, 256, &err), 0);
    ck_assert_int_eq(rb_pool_init(&sh.seg_pool, "segs", sizeof(rb_seg), 1024, &err), 0);
    ck_assert_int_eq(rb_pool_init(&sh.rxbig_pool, "big", srv.cfg.max_frame_bytes, 2, &err), 0);
    sh.send_budget.limit_bytes = rb_send_budget_bytes(&srv.cfg);
    ck_assert_int_eq(rb_conn_table_init(&sh, &err), 0);
    ck_assert_int_eq(rb_stream_subsystem.init(&sh, &err), 0);
}

static void shard_teardown(void)
{
    for (uint32_t i = 0; i < sh.conn_max; i++) {
        if (sh.conns[i].state != RB_CONN_FREE && sh.conns[i].state != RB_CONN_CLOSED) {
            rb_conn_abort(&sh.conns[i]);
        }
    }
    rb_conn_flush_all(&sh);
    for (uint32_t i = 0; i < sh.conn_max; i++) {
        ck_assert_int_eq(sh.conns[i].state, RB_CONN_FREE);
    }
    ck_assert_uint_eq(sh.send_budget.used_bytes, 0);
    rb_stream_subsystem.deinit(&sh);
    rb_conn_table_deinit(&sh);
    rb_pool_deinit(&sh.rxbig_pool);
    rb_pool_deinit(&sh.seg_pool);
    rb_pool_deinit(&sh.chunk_pool);
    rb_loop_deinit(sh.loop);
}

static fake_link *fake_open(void)
{
    fake_link *f = calloc(1, sizeof *f);
    ck_assert_ptr_nonnull(f);
    f->base.ops = &fake_ops;
    f->base.kind = RB_TRANSPORT_TCP;
    f->ready = true;
    strcpy(f->base.peer, "fake");
    f->c = rb_session_open(&sh, &f->base);
    ck_assert_ptr_nonnull(f->c);
    return f;
}

static void feed(fake_link *f, const uint8_t *p, size_t len)
{
    rb_session_recv(f->c, p, len);
}

static void hello(fake_link *f)
{
    uint8_t buf[64];
    rb_bytes name = {(const uint8_t *)"t", 1};
    size_t n = rb_frame_encode_hello(buf, sizeof buf, 9, RB_PROTOCOL_VERSION, name, (rb_bytes){0});
    feed(f, buf, n);
}

static void ping(fake_link *f, uint64_t corr, uint64_t nonce)
{
    uint8_t buf[32];
    size_t n = rb_frame_encode_ping(buf, sizeof buf, corr, nonce);
    feed(f, buf, n);
}

/* Runs the end-of-turn send passes until nothing more is asked for. */
static void flush(void)
{
    for (int i = 0; i < 10000 && sh.flush_list != NULL; i++) {
        rb_conn_flush_all(&sh);
    }
    ck_assert_ptr_null(sh.flush_list);
}

/* Decodes the frames in out[*off, out_len), one per call. */
static bool next_frame(const fake_link *f, size_t *off, rb_frame *fr)
{
    if (*off >= f->out_len) {
        return false;
    }
    rb_err err;
    rb_frame_header h;
    ck_assert_int_eq(rb_frame_header_decode(f->out + *off, f->out_len - *off, 1 << 20, &h, &err),
                     0);
    ck_assert_uint_le(*off + h.size, f->out_len);
    ck_assert_int_eq(rb_frame_decode(f->out + *off, h.size, 1 << 20, fr, &err), 0);
    *off += h.size;
    return true;
}

START_TEST(test_session_hello_is_answered_with_started)
{
    shard_setup(1 << 20);
    fake_link *f = fake_open();
    ck_assert_int_eq(f->c->state, RB_CONN_HANDSHAKE);
    hello(f);
    flush();
    ck_assert_int_eq(f->c->state, RB_CONN_OPEN);
    size_t off = 0;
    rb_frame fr;
    ck_assert(next_frame(f, &off, &fr));
    ck_assert_uint_eq(fr.hdr.kind, RB_FRAME_STARTED);
    ck_assert_uint_eq(fr.hdr.corr_id, 9);
    ck_assert_uint_eq(fr.u.started.max_frame_bytes, RB_FRAME_BYTES_MIN);
    ck_assert(!next_frame(f, &off, &fr));
    ck_assert_uint_eq(rb_sendq_bytes(rb_session_sendq(f->c)), 0);
    shard_teardown();
    free(f);
}
END_TEST

START_TEST(test_session_frames_split_anywhere_are_reassembled)
{
    shard_setup(1 << 20);
    fake_link *f = fake_open();
    uint8_t buf[128];
    rb_bytes name = {(const uint8_t *)"split", 5};
    size_t n = rb_frame_encode_hello(buf, sizeof buf, 1, RB_PROTOCOL_VERSION, name, (rb_bytes){0});
    n += rb_frame_encode_ping(buf + n, sizeof buf - n, 2, 77);
    for (size_t i = 0; i < n; i++) {
        feed(f, buf + i, 1);
    }
    flush();
    size_t off = 0;
    rb_frame fr;
    ck_assert(next_frame(f, &off, &fr));
    ck_assert_uint_eq(fr.hdr.kind, RB_FRAME_STARTED);
    ck_assert(next_frame(f, &off, &fr));
    ck_assert_uint_eq(fr.hdr.kind, RB_FRAME_PONG);
    ck_assert_uint_eq(fr.hdr.corr_id, 2);
    ck_assert_uint_eq(fr.u.ping.nonce, 77);
    shard_teardown();
    free(f);
}
END_TEST

START_TEST(test_session_first_frame_not_hello_is_bad_frame_and_closes)
{
    shard_setup(1 << 20);
    fake_link *f = fake_open();
    ping(f, 3, 1);
    ck_assert(f->stopped_reading);
    ck_assert(f->shut);
    ck_assert_uint_eq(f->shut_status, RB_WIRE_BAD_FRAME);
    flush();
    size_t off = 0;
    rb_frame fr;
    ck_assert(next_frame(f, &off, &fr));
    ck_assert_uint_eq(fr.hdr.kind, RB_FRAME_ERROR);
    ck_assert_uint_eq(fr.u.error.code, RB_WIRE_BAD_FRAME);
    ck_assert(next_frame(f, &off, &fr));
    ck_assert_uint_eq(fr.hdr.kind, RB_FRAME_CLOSE);
    ck_assert_uint_eq(fr.u.close.status, RB_WIRE_BAD_FRAME);
    /* Shut after the last byte: the link closed and the slot is free. */
    ck_assert(f->released);
    ck_assert_int_eq(f->c->state, RB_CONN_FREE);
    shard_teardown();
    free(f);
}
END_TEST

START_TEST(test_session_partial_writes_deliver_every_byte_in_order)
{
    shard_setup(1 << 20);
    fake_link *f = fake_open();
    f->write_max = 7;
    hello(f);
    for (uint64_t i = 0; i < 50; i++) {
        ping(f, 100 + i, i);
    }
    flush();
    size_t off = 0;
    rb_frame fr;
    ck_assert(next_frame(f, &off, &fr));
    ck_assert_uint_eq(fr.hdr.kind, RB_FRAME_STARTED);
    for (uint64_t i = 0; i < 50; i++) {
        ck_assert(next_frame(f, &off, &fr));
        ck_assert_uint_eq(fr.hdr.kind, RB_FRAME_PONG);
        ck_assert_uint_eq(fr.u.ping.nonce, i);
    }
    ck_assert(!next_frame(f, &off, &fr));
    shard_teardown();
    free(f);
}
END_TEST

/* A QUIC-like link: written bytes stay queued until acknowledged. */
static void fake_ack(fake_link *f, size_t n)
{
    rb_sendq *q = rb_session_sendq(f->c);
    rb_sendq_release(q, n);
    if (rb_sendq_bytes(q) == 0 && f->shut) {
        fake_finish_shutdown(f);
    } else if (rb_sendq_bytes(q) == 0) {
        rb_session_send_drained(f->c);
    }
    flush();
}

START_TEST(test_session_bytes_stay_queued_until_acknowledged)
{
    shard_setup(1 << 20);
    fake_link *f = fake_open();
    f->hold_until_ack = true;
    hello(f);
    flush();
    rb_sendq *q = rb_session_sendq(f->c);
    size_t started = f->out_len;
    ck_assert_uint_gt(started, 0);
    ck_assert_uint_eq(rb_sendq_bytes(q), started);
    ck_assert_uint_eq(rb_sendq_unsent(q), 0);
    /* The client half-closes: CLOSE ok waits until STARTED is acknowledged. */
    uint8_t buf[32];
    size_t n = rb_frame_encode_close(buf, sizeof buf, 0, RB_WIRE_OK, (rb_bytes){0});
    feed(f, buf, n);
    flush();
    ck_assert_int_eq(f->c->state, RB_CONN_DRAINING);
    ck_assert_uint_eq(f->out_len, started);
    fake_ack(f, started - 10);
    ck_assert_int_eq(f->c->state, RB_CONN_DRAINING);
    fake_ack(f, 10);
    ck_assert_int_eq(f->c->state, RB_CONN_CLOSING);
    size_t off = started;
    rb_frame fr;
    ck_assert(next_frame(f, &off, &fr));
    ck_assert_uint_eq(fr.hdr.kind, RB_FRAME_CLOSE);
    ck_assert_uint_eq(fr.u.close.status, RB_WIRE_OK);
    ck_assert(!f->released);
    fake_ack(f, f->out_len - started);
    ck_assert(f->released);
    ck_assert_int_eq(f->c->state, RB_CONN_FREE);
    shard_teardown();
    free(f);
}
END_TEST

START_TEST(test_session_close_before_the_link_is_ready_sends_no_frame)
{
    shard_setup(1 << 20);
    fake_link *f = fake_open();
    f->ready = false;
    rb_conn_close(f->c, RB_WIRE_GOING_AWAY, "server shutting down");
    ck_assert(f->shut);
    ck_assert_uint_eq(f->shut_status, RB_WIRE_GOING_AWAY);
    flush();
    ck_assert_uint_eq(f->out_len, 0);
    ck_assert(f->released);
    shard_teardown();
    free(f);
}
END_TEST

START_TEST(test_session_over_quota_closes_with_error_and_close_from_the_reserve)
{
    shard_setup(RB_FRAME_BYTES_MIN);
    fake_link *f = fake_open();
    hello(f);
    flush();
    size_t started = f->out_len;
    /* The link stops writing: PONGs pile up until the quota refuses one. */
    f->paused = true;
    f->out_len = 0;
    uint64_t i = 0;
    while (f->c->state == RB_CONN_OPEN) {
        ck_assert_uint_lt(i, 100000);
        ping(f, 1, i++);
    }
    ck_assert_int_eq(f->c->state, RB_CONN_CLOSING);
    rb_sendq *q = rb_session_sendq(f->c);
    ck_assert_uint_gt(q->charge_bytes, q->quota_bytes - RB_CHUNK_BYTES);
    ck_assert_uint_le(q->charge_bytes, q->quota_bytes + RB_SEND_CLOSE_RESERVE_BYTES);
    f->paused = false;
    rb_session_want_send(f->c);
    flush();
    size_t off = 0;
    rb_frame fr;
    uint64_t pongs = 0;
    while (next_frame(f, &off, &fr) && fr.hdr.kind == RB_FRAME_PONG) {
        ck_assert_uint_eq(fr.u.ping.nonce, pongs);
        pongs++;
    }
    /* None of the queued PONGs had started to go out: the reap dropped
     * them, so the closing frames come first (PROTOCOL 8.3). */
    ck_assert_uint_eq(pongs, 0);
    ck_assert_uint_eq(fr.hdr.kind, RB_FRAME_ERROR);
    ck_assert_uint_eq(fr.u.error.code, RB_WIRE_RESOURCE_EXHAUSTED);
    ck_assert(next_frame(f, &off, &fr));
    ck_assert_uint_eq(fr.hdr.kind, RB_FRAME_CLOSE);
    ck_assert_uint_eq(fr.u.close.status, RB_WIRE_RESOURCE_EXHAUSTED);
    ck_assert(!next_frame(f, &off, &fr));
    ck_assert(started > 0 && f->released);
    shard_teardown();
    free(f);
}
END_TEST

START_TEST(test_session_one_full_queue_does_not_refuse_another)
{
    shard_setup(RB_FRAME_BYTES_MIN);
    fake_link *a = fake_open();
    fake_link *b = fake_open();
    hello(a);
    hello(b);
    flush();
    a->paused = true;
    uint64_t i = 0;
    while (a->c->state == RB_CONN_OPEN) {
        ping(a, 1, i++);
    }
    /* b, within its own quota, is never refused for a's backlog. */
    b->out_len = 0;
    for (uint64_t k = 0; k < 100; k++) {
        ping(b, 2, k);
        flush();
    }
    ck_assert_int_eq(b->c->state, RB_CONN_OPEN);
    ck_assert_uint_eq(b->out_len, 100 * (RB_FRAME_HEADER_BYTES + 8));
    a->paused = false;
    rb_session_want_send(a->c);
    flush();
    ck_assert(a->released);
    shard_teardown();
    free(a);
    free(b);
}
END_TEST

/* ---- publisher pause: rb_session_hold / rb_session_resume ---- */

static uint32_t admit;     /* publishes the test handler takes before holding */
static uint64_t taken[16]; /* their corr ids, in order */
static uint32_t taken_count;

static void hold_or_take(rb_conn *c, const rb_frame *fr)
{
    if (admit == 0) {
        rb_session_hold(c);
        return;
    }
    admit--;
    ck_assert_uint_lt(taken_count, 16);
    taken[taken_count++] = fr->hdr.corr_id;
}

static size_t put_publish(uint8_t *out, size_t cap, uint64_t corr)
{
    rb_bytes topic = {(const uint8_t *)"t.1", 3};
    rb_bytes payload = {(const uint8_t *)"payload", 7};
    return rb_frame_encode_publish(out, cap, corr, topic, (rb_bytes){0}, payload);
}

static fake_link *open_for_hold(void)
{
    shard_setup(1 << 20);
    rb_session_take_frames(&sh, RB_FRAME_PUBLISH, hold_or_take);
    admit = 0;
    taken_count = 0;
    fake_link *f = fake_open();
    f->base.hold_bytes_max = 4096;
    hello(f);
    flush();
    f->out_len = 0;
    return f;
}

START_TEST(test_session_held_publish_waits_and_frames_behind_keep_their_order)
{
    fake_link *f = open_for_hold();
    uint8_t buf[512];
    size_t n = put_publish(buf, sizeof buf, 1);
    n += put_publish(buf + n, sizeof buf - n, 2);
    n += rb_frame_encode_ping(buf + n, sizeof buf - n, 3, 33);
    n += put_publish(buf + n, sizeof buf - n, 4);
    admit = 1;
    feed(f, buf, n);
    /* 1 taken, 2 held: the link holds reading, the PING is not answered. */
    ck_assert(f->held);
    ck_assert(f->c->held);
    ck_assert_uint_eq(taken_count, 1);
    ck_assert_uint_eq(taken[0], 1);
    /* Bytes the link still delivers (a PING split in two) wait too. */
    uint8_t more[32];
    size_t m = rb_frame_encode_ping(more, sizeof more, 5, 55);
    feed(f, more, 3);
    feed(f, more + 3, m - 3);
    flush();
    ck_assert_uint_eq(f->out_len, 0);
    /* A resume that finds no room holds the same frame again, and the
     * link is not asked to read. */
    ck_assert(!rb_session_resume(f->c));
    ck_assert(f->held);
    ck_assert_uint_eq(f->resumes, 0);
    ck_assert_uint_eq(taken_count, 1);
    /* Room for one: 2 is taken, 4 is held behind the PING, which is
     * answered; the link still holds. */
    admit = 1;
    ck_assert(rb_session_resume(f->c));
    ck_assert(f->c->held);
    ck_assert(f->held);
    ck_assert_uint_eq(f->resumes, 0);
    ck_assert_uint_eq(taken_count, 2);
    ck_assert_uint_eq(taken[1], 2);
    flush();
    size_t off = 0;
    rb_frame fr;
    ck_assert(next_frame(f, &off, &fr));
    ck_assert_uint_eq(fr.hdr.kind, RB_FRAME_PONG);
    ck_assert_uint_eq(fr.u.ping.nonce, 33);
    ck_assert(!next_frame(f, &off, &fr));
    /* Room for all: 4, then the late PING, then the link reads again. */
    admit = 10;
    ck_assert(rb_session_resume(f->c));
    ck_assert(!f->c->held);
    ck_assert(!f->held);
    ck_assert_uint_eq(f->resumes, 1);
    ck_assert_uint_eq(taken_count, 3);
    ck_assert_uint_eq(taken[2], 4);
    flush();
    ck_assert(next_frame(f, &off, &fr));
    ck_assert_uint_eq(fr.hdr.kind, RB_FRAME_PONG);
    ck_assert_uint_eq(fr.u.ping.nonce, 55);
    ck_assert(!next_frame(f, &off, &fr));
    ck_assert_ptr_null(f->c->hold_head);
    ck_assert_uint_eq(f->c->hold_bytes, 0);
    ck_assert_int_eq(f->c->state, RB_CONN_OPEN);
    /* Reading as before: the next frames are handled at once. */
    n = put_publish(buf, sizeof buf, 6);
    feed(f, buf, n);
    ck_assert_uint_eq(taken_count, 4);
    shard_teardown();
    free(f);
}
END_TEST

START_TEST(test_session_held_publish_split_across_deliveries_waits_whole)
{
    fake_link *f = open_for_hold();
    uint8_t buf[512];
    size_t n = put_publish(buf, sizeof buf, 1);
    size_t first = n;
    n += rb_frame_encode_ping(buf + n, sizeof buf - n, 2, 22);
    /* The publish arrives in pieces (reassembled in rx_buf), then held. */
    feed(f, buf, 5);
    feed(f, buf + 5, first - 5 + 4);
    ck_assert(f->held);
    feed(f, buf + first + 4, n - first - 4);
    flush();
    ck_assert_uint_eq(f->out_len, 0);
    admit = 1;
    ck_assert(rb_session_resume(f->c));
    ck_assert(!f->held);
    ck_assert_uint_eq(taken_count, 1);
    ck_assert_uint_eq(taken[0], 1);
    flush();
    size_t off = 0;
    rb_frame fr;
    ck_assert(next_frame(f, &off, &fr));
    ck_assert_uint_eq(fr.hdr.kind, RB_FRAME_PONG);
    ck_assert_uint_eq(fr.u.ping.nonce, 22);
    shard_teardown();
    free(f);
}
END_TEST

START_TEST(test_session_more_input_behind_a_hold_than_the_link_allows_fails_the_connection)
{
    fake_link *f = open_for_hold();
    uint8_t buf[512];
    size_t n = put_publish(buf, sizeof buf, 1);
    feed(f, buf, n);
    ck_assert(f->held);
    uint8_t junk[1024];
    size_t m = 0;
    while (m + 64 <= sizeof junk) {
        m += put_publish(junk + m, sizeof junk - m, 100 + m);
    }
    for (uint32_t sent = 0; sent <= f->base.hold_bytes_max; sent += (uint32_t)m) {
        ck_assert_int_eq(f->c->state, RB_CONN_OPEN);
        feed(f, junk, m);
    }
    ck_assert_int_ne(f->c->state, RB_CONN_OPEN);
    ck_assert(f->stopped_reading);
    ck_assert_ptr_null(f->c->hold_head);
    flush();
    size_t off = 0;
    rb_frame fr;
    bool closed = false;
    while (next_frame(f, &off, &fr)) {
        if (fr.hdr.kind == RB_FRAME_CLOSE) {
            ck_assert_uint_eq(fr.u.close.status, RB_WIRE_RESOURCE_EXHAUSTED);
            closed = true;
        }
    }
    ck_assert(closed);
    ck_assert_uint_eq(taken_count, 0);
    shard_teardown();
    free(f);
}
END_TEST

Suite *rb_session_suite(void);

Suite *rb_session_suite(void)
{
    Suite *s = suite_create("session");
    TCase *tc = tcase_create("protocol");
    tcase_add_test(tc, test_session_hello_is_answered_with_started);
    tcase_add_test(tc, test_session_frames_split_anywhere_are_reassembled);
    tcase_add_test(tc, test_session_first_frame_not_hello_is_bad_frame_and_closes);
    suite_add_tcase(s, tc);
    tc = tcase_create("link");
    tcase_add_test(tc, test_session_partial_writes_deliver_every_byte_in_order);
    tcase_add_test(tc, test_session_bytes_stay_queued_until_acknowledged);
    tcase_add_test(tc, test_session_close_before_the_link_is_ready_sends_no_frame);
    suite_add_tcase(s, tc);
    tc = tcase_create("quota");
    tcase_add_test(tc, test_session_over_quota_closes_with_error_and_close_from_the_reserve);
    tcase_add_test(tc, test_session_one_full_queue_does_not_refuse_another);
    suite_add_tcase(s, tc);
    tc = tcase_create("hold");
    tcase_add_test(tc, test_session_held_publish_waits_and_frames_behind_keep_their_order);
    tcase_add_test(tc, test_session_held_publish_split_across_deliveries_waits_whole);
    tcase_add_test(tc,
                   test_session_more_input_behind_a_hold_than_the_link_allows_fails_the_connection);
    suite_add_tcase(s, tc);
    return s;
}
