/* libFuzzer target for the replica plane's codec (transports/replica.c):
 * every input goes through the header check and the full decoder; a frame
 * that decodes is re-encoded and must come back byte for byte, and a
 * batch's items must walk with the frame iterators (which assert). Any
 * other outcome traps.
 *
 * Build and run with `make fuzz T=replica`; `make test` replays
 * tests/fuzz/corpus/replica through the same target. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/frame.h"
#include "transports/replica.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

static uint8_t out[RB_REPLICA_HEADER_BYTES + 2 + 256 + 64 + RB_TOPIC_BYTES_MAX + 64];

static size_t reencode(const rb_replica_frame *f)
{
    switch (f->kind) {
    case RB_REPLICA_HELLO:
        return rb_replica_encode_hello(out, sizeof out, f->u.hello.node_id, f->u.hello.cluster_id,
                                       f->u.hello.nonce);
    case RB_REPLICA_CHALLENGE:
        return rb_replica_encode_challenge(out, sizeof out, f->u.challenge.node_id,
                                           f->u.challenge.nonce, f->u.challenge.mac);
    case RB_REPLICA_AUTH:
        return rb_replica_encode_auth(out, sizeof out, f->u.mac);
    case RB_REPLICA_WELCOME:
    case RB_REPLICA_PING:
        return rb_replica_encode_empty(out, sizeof out, f->kind);
    case RB_REPLICA_INTEREST:
        return rb_replica_encode_interest(out, sizeof out, f->u.interest.on, f->u.interest.topic);
    case RB_REPLICA_BATCH:
        return rb_replica_encode_batch_head(out, sizeof out, f->u.batch.topic, f->u.batch.first_seq,
                                            f->u.batch.last_seq, f->u.batch.count,
                                            (uint32_t)f->u.batch.items.len);
    }
    __builtin_trap();
}

static void walk_batch(const rb_replica_batch *b)
{
    rb_frame_iter it;
    rb_message_item m;
    uint64_t seq = b->first_seq;
    rb_frame_iter_init(&it, b->items, b->count);
    while (rb_frame_next_item(&it, &m)) {
        CHECK(m.seq == seq);
        CHECK(m.topic.len == b->topic.len && memcmp(m.topic.ptr, b->topic.ptr, m.topic.len) == 0);
        seq++;
    }
    CHECK(seq == b->last_seq + 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rb_err err = {0};
    uint32_t n = 0;
    if (size < RB_REPLICA_HEADER_BYTES ||
        rb_replica_header(data, size, RB_REPLICA_FRAME_BYTES_MAX, &n, &err) != 0 || n > size) {
        return 0;
    }
    rb_replica_frame f;
    if (rb_replica_decode(data, n, &f, &err) != 0) {
        CHECK(err.code == RB_EPROTO);
        return 0;
    }
    size_t m = reencode(&f);
    CHECK(m > 0);
    if (f.kind == RB_REPLICA_BATCH) {
        walk_batch(&f.u.batch);
        CHECK(m + f.u.batch.items.len == n);
        CHECK(memcmp(out, data, m) == 0);
        CHECK(memcmp(f.u.batch.items.ptr, data + m, f.u.batch.items.len) == 0);
    } else {
        CHECK(m == n);
        CHECK(memcmp(out, data, n) == 0);
    }
    return 0;
}
