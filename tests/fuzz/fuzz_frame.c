/* libFuzzer target for the frame codec (common/frame.c): every input goes
 * through the header decoder and the full decoder; a frame that decodes is
 * walked with the iterators, re-encoded with the encoders, and must come
 * back byte for byte and decode to the same values. UTF-8 and topic checks
 * run on the raw input too. Any other outcome traps.
 *
 * Build and run with `make fuzz T=frame` (clang 14 with libFuzzer);
 * `make test` replays tests/fuzz/corpus/frame through the same target. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FRAME RB_FRAME_BYTES_DEFAULT

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

static int bytes_eq(rb_bytes a, rb_bytes b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* ---- walking lists ---- */

static void walk_topics(rb_bytes raw, uint32_t count)
{
    rb_frame_iter it;
    rb_bytes t;
    uint32_t seen = 0;
    rb_frame_iter_init(&it, raw, count);
    while (rb_frame_next_topic(&it, &t)) {
        CHECK(t.len >= 1 && t.len <= RB_TOPIC_BYTES_MAX);
        CHECK(rb_utf8_valid(t.ptr, t.len));
        (void)rb_topic_validate(t, false, NULL);
        seen++;
    }
    CHECK(seen == count);
}

static void walk_lists(const rb_frame *f)
{
    rb_frame_iter it;
    uint32_t seen = 0;
    if (f->hdr.kind == RB_FRAME_MUTATE) {
        rb_mutate_add add;
        rb_frame_iter_init(&it, f->u.mutate.adds, f->u.mutate.add_count);
        while (rb_frame_next_add(&it, &add)) {
            CHECK(add.cursor_kind == RB_CURSOR_SEQ || add.cursor_kind == RB_CURSOR_NOW);
            CHECK(add.cursor_kind == RB_CURSOR_SEQ || add.cursor == 0);
            CHECK(rb_utf8_valid(add.topic.ptr, add.topic.len));
            seen++;
        }
        CHECK(seen == f->u.mutate.add_count);
        walk_topics(f->u.mutate.removes, f->u.mutate.remove_count);
    } else if (f->hdr.kind == RB_FRAME_MESSAGES) {
        rb_message_item item;
        rb_frame_iter_init(&it, f->u.messages.items, f->u.messages.count);
        while (rb_frame_next_item(&it, &item)) {
            CHECK(rb_utf8_valid(item.topic.ptr, item.topic.len));
            seen++;
        }
        CHECK(seen == f->u.messages.count);
    } else if (f->hdr.kind == RB_FRAME_TOPICS_LIVE) {
        walk_topics(f->u.topics_live.topics, f->u.topics_live.count);
    }
}

/* ---- re-encoding ---- */

static rb_bytes *collect_topics(rb_bytes raw, uint32_t count)
{
    rb_bytes *topics = calloc(count + 1u, sizeof *topics);
    CHECK(topics != NULL);
    rb_frame_iter it;
    rb_frame_iter_init(&it, raw, count);
    for (uint32_t i = 0; i < count; i++) {
        CHECK(rb_frame_next_topic(&it, &topics[i]));
    }
    return topics;
}

/* An older peer's frame lacks the appended epoch: it is this codec's
 * encoding (written to a scratch buffer tail bytes larger) minus its last
 * tail bytes, with the size fixed. Returns the size written to out or 0. */
static size_t strip_tail(uint8_t *out, size_t cap, const uint8_t *full, size_t n, size_t tail)
{
    if (n == 0 || n - tail > cap) {
        return 0;
    }
    uint32_t size = (uint32_t)(n - tail);
    memcpy(out, full, size);
    out[0] = (uint8_t)size;
    out[1] = (uint8_t)(size >> 8);
    out[2] = (uint8_t)(size >> 16);
    out[3] = (uint8_t)(size >> 24);
    return size;
}

static size_t encode_started(const rb_frame *f, uint8_t *out, size_t cap)
{
    if (f->u.started.has_client_id) {
        return rb_frame_encode_started_client(out, cap, f->hdr.corr_id, f->u.started.keepalive_ms,
                                              f->u.started.capabilities,
                                              f->u.started.max_frame_bytes, f->u.started.server_id,
                                              f->u.started.epoch, f->u.started.client_id);
    }
    size_t tail = f->u.started.has_epoch ? 0 : 8;
    uint8_t *full = malloc(cap + tail);
    CHECK(full != NULL);
    size_t n = rb_frame_encode_started(full, cap + tail, f->hdr.corr_id, f->u.started.keepalive_ms,
                                       f->u.started.capabilities, f->u.started.max_frame_bytes,
                                       f->u.started.server_id, f->u.started.epoch);
    n = strip_tail(out, cap, full, n, tail);
    free(full);
    return n;
}

static size_t encode_publish_ack(const rb_frame *f, uint8_t *out, size_t cap)
{
    size_t tail = f->u.publish_ack.has_flags ? 0 : 1;
    uint8_t *full = malloc(cap + tail);
    CHECK(full != NULL);
    size_t n = rb_frame_encode_publish_ack(full, cap + tail, f->hdr.corr_id, f->u.publish_ack.topic,
                                           f->u.publish_ack.seq, f->u.publish_ack.flags);
    n = strip_tail(out, cap, full, n, tail);
    free(full);
    return n;
}

static size_t encode_mutate(const rb_frame *f, uint8_t *out, size_t cap)
{
    uint32_t add_count = f->u.mutate.add_count;
    rb_mutate_add *adds = calloc(add_count + 1u, sizeof *adds);
    CHECK(adds != NULL);
    rb_frame_iter it;
    rb_frame_iter_init(&it, f->u.mutate.adds, add_count);
    for (uint32_t i = 0; i < add_count; i++) {
        CHECK(rb_frame_next_add(&it, &adds[i]));
    }
    rb_bytes *removes = collect_topics(f->u.mutate.removes, f->u.mutate.remove_count);
    size_t tail = f->u.mutate.has_epoch ? 0 : 8;
    uint8_t *full = malloc(cap + tail);
    CHECK(full != NULL);
    size_t n = rb_frame_encode_mutate(full, cap + tail, f->hdr.corr_id, f->u.mutate.mutate_id,
                                      f->u.mutate.flags, adds, add_count, removes,
                                      f->u.mutate.remove_count, f->u.mutate.epoch);
    n = strip_tail(out, cap, full, n, tail);
    free(full);
    free(adds);
    free(removes);
    return n;
}

static size_t encode_messages(const rb_frame *f, uint8_t *out, size_t cap)
{
    rb_frame_iter it;
    rb_message_item item;
    size_t items_bytes = 0;
    rb_frame_iter_init(&it, f->u.messages.items, f->u.messages.count);
    while (rb_frame_next_item(&it, &item)) {
        items_bytes += rb_frame_messages_item_size(item.topic.len, item.payload.len);
    }
    size_t n = rb_frame_encode_messages_head(out, cap, f->hdr.corr_id, f->u.messages.mutate_id,
                                             f->u.messages.count, items_bytes);
    if (n == 0) {
        return 0;
    }
    CHECK(n == RB_FRAME_MESSAGES_HEAD_BYTES);
    rb_frame_iter_init(&it, f->u.messages.items, f->u.messages.count);
    while (rb_frame_next_item(&it, &item)) {
        size_t m =
            rb_frame_encode_messages_item(out + n, cap - n, item.topic, item.seq, item.payload);
        if (m == 0) {
            return 0; /* the frame does not fit in cap */
        }
        n += m;
    }
    return n;
}

static size_t encode_lists(const rb_frame *f, uint8_t *out, size_t cap)
{
    if (f->hdr.kind == RB_FRAME_MUTATE) {
        return encode_mutate(f, out, cap);
    }
    if (f->hdr.kind == RB_FRAME_MESSAGES) {
        return encode_messages(f, out, cap);
    }
    /* A kind this harness does not re-encode traps here. */
    CHECK(f->hdr.kind == RB_FRAME_TOPICS_LIVE);
    rb_bytes *topics = collect_topics(f->u.topics_live.topics, f->u.topics_live.count);
    size_t n =
        rb_frame_encode_topics_live(out, cap, f->hdr.corr_id, topics, f->u.topics_live.count);
    free(topics);
    return n;
}

static size_t encode(const rb_frame *f, uint8_t *out, size_t cap)
{
    uint64_t corr = f->hdr.corr_id;
    switch (f->hdr.kind) {
    case RB_FRAME_HELLO:
        return rb_frame_encode_hello(out, cap, corr, f->u.hello.protocol_version,
                                     f->u.hello.client_name, f->u.hello.credentials);
    case RB_FRAME_STARTED:
        return encode_started(f, out, cap);
    case RB_FRAME_ERROR:
        return rb_frame_encode_error(out, cap, corr, f->u.error.code, f->u.error.message);
    case RB_FRAME_PING:
        return rb_frame_encode_ping(out, cap, corr, f->u.ping.nonce);
    case RB_FRAME_PONG:
        return rb_frame_encode_pong(out, cap, corr, f->u.ping.nonce);
    case RB_FRAME_CLOSE:
        return rb_frame_encode_close(out, cap, corr, f->u.close.status, f->u.close.message);
    case RB_FRAME_PUBLISH:
        return rb_frame_encode_publish(out, cap, corr, f->u.publish.topic,
                                       f->u.publish.idempotency_key, f->u.publish.payload);
    case RB_FRAME_PUBLISH_ACK:
        return encode_publish_ack(f, out, cap);
    case RB_FRAME_CATCHUP_COMPLETE:
        return rb_frame_encode_catchup_complete(out, cap, corr, f->u.catchup_complete.mutate_id);
    case RB_FRAME_TOPIC_ERROR:
        return rb_frame_encode_topic_error(out, cap, corr, f->u.topic_error.mutate_id,
                                           f->u.topic_error.topic, f->u.topic_error.code,
                                           f->u.topic_error.message);
    case RB_FRAME_AUTH:
        return rb_frame_encode_auth(out, cap, corr, f->u.auth.credentials);
    case RB_FRAME_REGISTER:
    case RB_FRAME_UNREGISTER:
        return rb_frame_encode_register(out, cap, f->hdr.kind, corr, f->u.reg.method,
                                        f->u.reg.service);
    case RB_FRAME_REQUEST:
        return rb_frame_encode_request(out, cap, corr, f->u.request.timeout_ms, f->u.request.peer,
                                       f->u.request.method, f->u.request.payload);
    case RB_FRAME_REQUEST_ACK:
        return rb_frame_encode_request_ack(out, cap, corr, f->u.request_ack.flags);
    case RB_FRAME_RESPONSE:
        return rb_frame_encode_response(out, cap, corr, f->u.response.code, f->u.response.message,
                                        f->u.response.payload);
    case RB_FRAME_GOING_AWAY:
        return rb_frame_encode_going_away(out, cap, corr, f->u.going_away.reconnect_delay_ms,
                                          f->u.going_away.message);
    case RB_FRAME_LAGGED:
        return rb_frame_encode_lagged(out, cap, corr, f->u.lagged.topic, f->u.lagged.skipped);
    default:
        return encode_lists(f, out, cap);
    }
}

/* ---- comparing two decoded frames ---- */

static int lists_equal(const rb_frame *a, const rb_frame *b)
{
    switch (a->hdr.kind) {
    case RB_FRAME_MUTATE:
        return a->u.mutate.mutate_id == b->u.mutate.mutate_id &&
               a->u.mutate.flags == b->u.mutate.flags &&
               a->u.mutate.add_count == b->u.mutate.add_count &&
               a->u.mutate.remove_count == b->u.mutate.remove_count &&
               a->u.mutate.epoch == b->u.mutate.epoch &&
               a->u.mutate.has_epoch == b->u.mutate.has_epoch &&
               bytes_eq(a->u.mutate.adds, b->u.mutate.adds) &&
               bytes_eq(a->u.mutate.removes, b->u.mutate.removes);
    case RB_FRAME_MESSAGES:
        return a->u.messages.mutate_id == b->u.messages.mutate_id &&
               a->u.messages.count == b->u.messages.count &&
               bytes_eq(a->u.messages.items, b->u.messages.items);
    case RB_FRAME_TOPICS_LIVE:
        return a->u.topics_live.count == b->u.topics_live.count &&
               bytes_eq(a->u.topics_live.topics, b->u.topics_live.topics);
    default:
        return 0;
    }
}

static int frames_equal(const rb_frame *a, const rb_frame *b)
{
    if (memcmp(&a->hdr, &b->hdr, sizeof a->hdr) != 0) {
        return 0;
    }
    switch (a->hdr.kind) {
    case RB_FRAME_HELLO:
        return a->u.hello.protocol_version == b->u.hello.protocol_version &&
               bytes_eq(a->u.hello.client_name, b->u.hello.client_name) &&
               bytes_eq(a->u.hello.credentials, b->u.hello.credentials);
    case RB_FRAME_STARTED:
        return a->u.started.keepalive_ms == b->u.started.keepalive_ms &&
               a->u.started.capabilities == b->u.started.capabilities &&
               a->u.started.max_frame_bytes == b->u.started.max_frame_bytes &&
               bytes_eq(a->u.started.server_id, b->u.started.server_id) &&
               a->u.started.epoch == b->u.started.epoch &&
               a->u.started.has_epoch == b->u.started.has_epoch &&
               a->u.started.has_client_id == b->u.started.has_client_id &&
               bytes_eq(a->u.started.client_id, b->u.started.client_id);
    case RB_FRAME_ERROR:
        return a->u.error.code == b->u.error.code &&
               bytes_eq(a->u.error.message, b->u.error.message);
    case RB_FRAME_PING:
    case RB_FRAME_PONG:
        return a->u.ping.nonce == b->u.ping.nonce;
    case RB_FRAME_CLOSE:
        return a->u.close.status == b->u.close.status &&
               bytes_eq(a->u.close.message, b->u.close.message);
    case RB_FRAME_PUBLISH:
        return bytes_eq(a->u.publish.topic, b->u.publish.topic) &&
               bytes_eq(a->u.publish.idempotency_key, b->u.publish.idempotency_key) &&
               bytes_eq(a->u.publish.payload, b->u.publish.payload);
    case RB_FRAME_PUBLISH_ACK:
        return bytes_eq(a->u.publish_ack.topic, b->u.publish_ack.topic) &&
               a->u.publish_ack.seq == b->u.publish_ack.seq &&
               a->u.publish_ack.flags == b->u.publish_ack.flags &&
               a->u.publish_ack.has_flags == b->u.publish_ack.has_flags;
    case RB_FRAME_CATCHUP_COMPLETE:
        return a->u.catchup_complete.mutate_id == b->u.catchup_complete.mutate_id;
    case RB_FRAME_TOPIC_ERROR:
        return a->u.topic_error.mutate_id == b->u.topic_error.mutate_id &&
               bytes_eq(a->u.topic_error.topic, b->u.topic_error.topic) &&
               a->u.topic_error.code == b->u.topic_error.code &&
               bytes_eq(a->u.topic_error.message, b->u.topic_error.message);
    case RB_FRAME_AUTH:
        return bytes_eq(a->u.auth.credentials, b->u.auth.credentials);
    case RB_FRAME_REGISTER:
    case RB_FRAME_UNREGISTER:
        return bytes_eq(a->u.reg.method, b->u.reg.method) &&
               bytes_eq(a->u.reg.service, b->u.reg.service);
    case RB_FRAME_REQUEST:
        return a->u.request.timeout_ms == b->u.request.timeout_ms &&
               bytes_eq(a->u.request.peer, b->u.request.peer) &&
               bytes_eq(a->u.request.method, b->u.request.method) &&
               bytes_eq(a->u.request.payload, b->u.request.payload);
    case RB_FRAME_REQUEST_ACK:
        return a->u.request_ack.flags == b->u.request_ack.flags;
    case RB_FRAME_RESPONSE:
        return a->u.response.code == b->u.response.code &&
               bytes_eq(a->u.response.message, b->u.response.message) &&
               bytes_eq(a->u.response.payload, b->u.response.payload);
    case RB_FRAME_GOING_AWAY:
        return a->u.going_away.reconnect_delay_ms == b->u.going_away.reconnect_delay_ms &&
               bytes_eq(a->u.going_away.message, b->u.going_away.message);
    case RB_FRAME_LAGGED:
        return a->u.lagged.skipped == b->u.lagged.skipped &&
               bytes_eq(a->u.lagged.topic, b->u.lagged.topic);
    default:
        return lists_equal(a, b);
    }
}

/* ---- credentials (HELLO, AUTH) ---- */

/* Credentials that decode must re-encode to the same bytes. */
static void check_credentials(rb_bytes raw)
{
    rb_credentials c;
    rb_err err;
    int rc = rb_credentials_decode(raw, &c, &err);
    CHECK(rc == 0 || rc == RB_EINVAL);
    if (rc != 0) {
        CHECK(err.cause == RB_WIRE_UNAUTHORIZED);
        CHECK(c.kind == RB_CRED_NONE);
        return;
    }
    uint8_t out[RB_AUTH_CREDENTIALS_BYTES_MAX];
    size_t n = 0;
    if (c.kind == RB_CRED_NONE) {
        CHECK(raw.len == 0);
        return;
    }
    if (c.kind == RB_CRED_TOKEN) {
        n = rb_credentials_encode_token(out, sizeof out, c.token);
    } else {
        CHECK(c.kind == RB_CRED_PASSWORD);
        n = rb_credentials_encode_password(out, sizeof out, c.user, c.password);
    }
    CHECK(n == raw.len);
    CHECK(memcmp(out, raw.ptr, n) == 0);
}

/* ---- the target ---- */

static void check_header(const uint8_t *data, size_t size)
{
    rb_frame_header h;
    rb_err err;
    int rc = rb_frame_header_decode(data, size, RB_FRAME_HEADER_BYTES, &h, &err);
    CHECK(rc == 0 || rc == RB_EAGAIN || rc == RB_EPROTO);
    CHECK(rc != RB_EAGAIN || size < RB_FRAME_HEADER_BYTES);
    /* With the smallest max, any frame with a body is too large. */
    CHECK(rc != 0 || h.size == RB_FRAME_HEADER_BYTES);
    if (rc == RB_EPROTO) {
        CHECK(err.cause >= RB_WIRE_BAD_FRAME && err.cause <= RB_WIRE_TOO_LARGE);
    }
}

static void check_round_trip(const uint8_t *data, const rb_frame *f)
{
    uint8_t *out = malloc(f->hdr.size);
    CHECK(out != NULL);
    /* One byte short must not fit; exactly the size must. */
    CHECK(encode(f, out, f->hdr.size - 1) == 0);
    size_t n = encode(f, out, f->hdr.size);
    CHECK(n == f->hdr.size);
    CHECK(memcmp(out, data, n) == 0);
    rb_frame again;
    rb_err err;
    CHECK(rb_frame_decode(out, n, MAX_FRAME, &again, &err) == 0);
    CHECK(frames_equal(f, &again));
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_header(data, size);
    (void)rb_utf8_valid(data, size);
    (void)rb_topic_validate((rb_bytes){data, size}, size & 1, NULL);
    rb_frame f;
    rb_err err;
    int rc = rb_frame_decode(data, size, MAX_FRAME, &f, &err);
    CHECK(rc == 0 || rc == RB_EAGAIN || rc == RB_EPROTO);
    if (rc == RB_EAGAIN) {
        CHECK(size < RB_FRAME_HEADER_BYTES || size < f.hdr.size);
        return 0;
    }
    if (rc == RB_EPROTO) {
        CHECK(err.cause >= RB_WIRE_BAD_FRAME && err.cause <= RB_WIRE_TOO_LARGE);
        CHECK(err.msg[0] != '\0');
        return 0;
    }
    CHECK(f.hdr.size <= size);
    if (f.hdr.kind == RB_FRAME_HELLO) {
        check_credentials(f.u.hello.credentials);
    } else if (f.hdr.kind == RB_FRAME_AUTH) {
        check_credentials(f.u.auth.credentials);
    }
    walk_lists(&f);
    check_round_trip(data, &f);
    return 0;
}
