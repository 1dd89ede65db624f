/* The replica plane's frames and handshake MACs; see replica.h. */
#include "transports/replica.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hmac.h>

#include "common/assert.h"

static const char *const kind_names[] = {
    [RB_REPLICA_HELLO] = "hello",       [RB_REPLICA_CHALLENGE] = "challenge",
    [RB_REPLICA_AUTH] = "auth",         [RB_REPLICA_WELCOME] = "welcome",
    [RB_REPLICA_INTEREST] = "interest", [RB_REPLICA_BATCH] = "batch",
    [RB_REPLICA_PING] = "ping",
};

const char *rb_replica_kind_name(uint32_t kind)
{
    if (kind == 0 || kind > RB_REPLICA_KIND_LAST) {
        return "unknown";
    }
    return kind_names[kind];
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) | ((uint64_t)get_u32(p + 4) << 32);
}

static uint8_t *put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    return p + 2;
}

static uint8_t *put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
    return p + 4;
}

static uint8_t *put_u64(uint8_t *p, uint64_t v)
{
    p = put_u32(p, (uint32_t)v);
    return put_u32(p, (uint32_t)(v >> 32));
}

int rb_replica_header(const uint8_t *p, size_t len, uint32_t max_bytes, uint32_t *size, rb_err *err)
{
    RB_ASSERT(len >= RB_REPLICA_HEADER_BYTES);
    uint32_t n = get_u32(p);
    if (n < RB_REPLICA_HEADER_BYTES || n > max_bytes) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME,
                          "replica frame of %u bytes is outside [%u, %u]", n,
                          RB_REPLICA_HEADER_BYTES, max_bytes);
    }
    if (p[4] != RB_REPLICA_VERSION) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_UNSUPPORTED_VERSION,
                          "replica version %u is not %u", p[4], RB_REPLICA_VERSION);
    }
    if (p[5] == 0 || p[5] > RB_REPLICA_KIND_LAST || get_u16(p + 6) != 0) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME,
                          "replica frame kind %u (flags %u) is unknown", p[5], get_u16(p + 6));
    }
    *size = n;
    return 0;
}

/* A bounded reader over one frame's body. */
typedef struct reader {
    const uint8_t *pos;
    const uint8_t *end;
    bool bad;
} reader;

static const uint8_t *take(reader *r, size_t n)
{
    if (r->bad || (size_t)(r->end - r->pos) < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->pos;
    r->pos += n;
    return p;
}

static rb_bytes take_str(reader *r)
{
    const uint8_t *l = take(r, 1);
    size_t n = l != NULL ? *l : 0;
    const uint8_t *p = take(r, n);
    return (rb_bytes){p, p != NULL ? n : 0};
}

static bool topic_ok(rb_bytes t)
{
    return t.ptr != NULL && t.len >= 1 && rb_utf8_valid(t.ptr, t.len);
}

/* Walks count items of topic with seqs first..last: the check that lets the
 * frame iterators (which assert) walk them later. */
static bool items_ok(const rb_replica_batch *b)
{
    reader r = {b->items.ptr, b->items.ptr + b->items.len, false};
    uint64_t want = b->first_seq;
    for (uint32_t i = 0; i < b->count; i++) {
        rb_bytes t = take_str(&r);
        const uint8_t *h = take(&r, 12);
        if (h == NULL || t.len != b->topic.len || memcmp(t.ptr, b->topic.ptr, t.len) != 0 ||
            get_u64(h) != want) {
            return false;
        }
        if (take(&r, get_u32(h + 8)) == NULL) {
            return false;
        }
        want++;
    }
    return r.pos == r.end && want - 1 == b->last_seq;
}

static int decode_body(reader *r, uint8_t kind, rb_replica_frame *f)
{
    const uint8_t *p = NULL;
    switch (kind) {
    case RB_REPLICA_HELLO:
        p = take(r, 2);
        f->u.hello.node_id = p != NULL ? get_u16(p) : 0;
        f->u.hello.cluster_id = take_str(r);
        p = take(r, RB_REPLICA_NONCE_BYTES);
        if (p != NULL) {
            memcpy(f->u.hello.nonce, p, RB_REPLICA_NONCE_BYTES);
        }
        return f->u.hello.node_id >= 1 && f->u.hello.node_id <= RB_CLUSTER_NODE_ID_MAX ? 0 : -1;
    case RB_REPLICA_CHALLENGE:
        p = take(r, 2 + RB_REPLICA_NONCE_BYTES + RB_REPLICA_MAC_BYTES);
        if (p != NULL) {
            f->u.challenge.node_id = get_u16(p);
            memcpy(f->u.challenge.nonce, p + 2, RB_REPLICA_NONCE_BYTES);
            memcpy(f->u.challenge.mac, p + 2 + RB_REPLICA_NONCE_BYTES, RB_REPLICA_MAC_BYTES);
        }
        return 0;
    case RB_REPLICA_AUTH:
        p = take(r, RB_REPLICA_MAC_BYTES);
        if (p != NULL) {
            memcpy(f->u.mac, p, RB_REPLICA_MAC_BYTES);
        }
        return 0;
    case RB_REPLICA_INTEREST:
        p = take(r, 1);
        f->u.interest.on = p != NULL && *p == 1;
        f->u.interest.topic = take_str(r);
        return p != NULL && *p <= 1 && topic_ok(f->u.interest.topic) ? 0 : -1;
    case RB_REPLICA_BATCH: {
        rb_replica_batch *b = &f->u.batch;
        b->topic = take_str(r);
        p = take(r, 20);
        if (p == NULL || !topic_ok(b->topic)) {
            return -1;
        }
        b->first_seq = get_u64(p);
        b->last_seq = get_u64(p + 8);
        b->count = get_u32(p + 16);
        b->items = (rb_bytes){r->pos, (size_t)(r->end - r->pos)};
        r->pos = r->end;
        bool range = b->first_seq >= 1 && b->count >= 1 && b->last_seq >= b->first_seq &&
                     b->last_seq - b->first_seq == b->count - 1;
        return range && items_ok(b) ? 0 : -1;
    }
    default:
        return 0; /* WELCOME, PING: no body */
    }
}

int rb_replica_decode(const uint8_t *p, size_t size, rb_replica_frame *f, rb_err *err)
{
    uint32_t n = 0;
    if (size < RB_REPLICA_HEADER_BYTES) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "replica frame of %zu bytes", size);
    }
    int rc = rb_replica_header(p, size, (uint32_t)(size > UINT32_MAX ? UINT32_MAX : size), &n, err);
    if (rc < 0) {
        return rc;
    }
    if (n != size) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "replica frame says %u bytes, has %zu",
                          n, size);
    }
    memset(f, 0, sizeof *f);
    f->kind = (rb_replica_kind)p[5];
    reader r = {p + RB_REPLICA_HEADER_BYTES, p + size, false};
    int body = decode_body(&r, p[5], f);
    if (body < 0 || r.bad || r.pos != r.end) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "malformed replica %s frame",
                          rb_replica_kind_name(p[5]));
    }
    return 0;
}

/* ---- encoders ---- */

static uint8_t *put_header(uint8_t *out, size_t size, rb_replica_kind kind)
{
    uint8_t *p = put_u32(out, (uint32_t)size);
    *p++ = RB_REPLICA_VERSION;
    *p++ = (uint8_t)kind;
    return put_u16(p, 0);
}

size_t rb_replica_encode_hello(uint8_t *out, size_t cap, uint16_t node_id, rb_bytes cluster_id,
                               const uint8_t nonce[RB_REPLICA_NONCE_BYTES])
{
    size_t size = RB_REPLICA_HEADER_BYTES + 2 + 1 + cluster_id.len + RB_REPLICA_NONCE_BYTES;
    if (size > cap || cluster_id.len > 255) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_REPLICA_HELLO);
    p = put_u16(p, node_id);
    *p++ = (uint8_t)cluster_id.len;
    if (cluster_id.len > 0) {
        memcpy(p, cluster_id.ptr, cluster_id.len);
    }
    p += cluster_id.len;
    memcpy(p, nonce, RB_REPLICA_NONCE_BYTES);
    return size;
}

size_t rb_replica_encode_challenge(uint8_t *out, size_t cap, uint16_t node_id,
                                   const uint8_t nonce[RB_REPLICA_NONCE_BYTES],
                                   const uint8_t mac[RB_REPLICA_MAC_BYTES])
{
    size_t size = RB_REPLICA_HEADER_BYTES + 2 + RB_REPLICA_NONCE_BYTES + RB_REPLICA_MAC_BYTES;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_REPLICA_CHALLENGE);
    p = put_u16(p, node_id);
    memcpy(p, nonce, RB_REPLICA_NONCE_BYTES);
    memcpy(p + RB_REPLICA_NONCE_BYTES, mac, RB_REPLICA_MAC_BYTES);
    return size;
}

size_t rb_replica_encode_auth(uint8_t *out, size_t cap, const uint8_t mac[RB_REPLICA_MAC_BYTES])
{
    size_t size = RB_REPLICA_HEADER_BYTES + RB_REPLICA_MAC_BYTES;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_REPLICA_AUTH);
    memcpy(p, mac, RB_REPLICA_MAC_BYTES);
    return size;
}

size_t rb_replica_encode_empty(uint8_t *out, size_t cap, rb_replica_kind kind)
{
    RB_ASSERT(kind == RB_REPLICA_WELCOME || kind == RB_REPLICA_PING);
    if (cap < RB_REPLICA_HEADER_BYTES) {
        return 0;
    }
    put_header(out, RB_REPLICA_HEADER_BYTES, kind);
    return RB_REPLICA_HEADER_BYTES;
}

size_t rb_replica_encode_interest(uint8_t *out, size_t cap, bool on, rb_bytes topic)
{
    size_t size = RB_REPLICA_HEADER_BYTES + 1 + 1 + topic.len;
    if (size > cap || topic.len < 1 || topic.len > RB_TOPIC_BYTES_MAX) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_REPLICA_INTEREST);
    *p++ = on ? 1 : 0;
    *p++ = (uint8_t)topic.len;
    memcpy(p, topic.ptr, topic.len);
    return size;
}

size_t rb_replica_encode_batch_head(uint8_t *out, size_t cap, rb_bytes topic, uint64_t first_seq,
                                    uint64_t last_seq, uint32_t count, uint32_t items_bytes)
{
    size_t head = RB_REPLICA_BATCH_HEAD_BYTES + topic.len;
    if (head > cap || topic.len < 1 || topic.len > RB_TOPIC_BYTES_MAX ||
        (uint64_t)head + items_bytes > UINT32_MAX) {
        return 0;
    }
    uint8_t *p = put_header(out, head + items_bytes, RB_REPLICA_BATCH);
    *p++ = (uint8_t)topic.len;
    memcpy(p, topic.ptr, topic.len);
    p += topic.len;
    p = put_u64(p, first_seq);
    p = put_u64(p, last_seq);
    put_u32(p, count);
    return head;
}

/* ---- handshake ---- */

#define MAC_LABEL "ringbus-replica-1"

void rb_replica_mac(const uint8_t *secret, size_t secret_len, char role, rb_bytes cluster_id,
                    uint16_t from, uint16_t to, const uint8_t nonce_d[RB_REPLICA_NONCE_BYTES],
                    const uint8_t nonce_a[RB_REPLICA_NONCE_BYTES],
                    uint8_t out[RB_REPLICA_MAC_BYTES])
{
    RB_ASSERT(role == 'D' || role == 'A');
    RB_ASSERT(cluster_id.len <= 255);
    /* The label without its NUL, the role, the cluster id's length. */
    uint8_t head[sizeof MAC_LABEL - 1 + 1 + 1];
    memcpy(head, MAC_LABEL, sizeof MAC_LABEL - 1);
    head[sizeof MAC_LABEL - 1] = (uint8_t)role;
    head[sizeof MAC_LABEL] = (uint8_t)cluster_id.len;
    uint8_t ids[4];
    put_u16(put_u16(ids, from), to);
    Hmac h;
    int rc = wc_HmacInit(&h, NULL, INVALID_DEVID);
    rc = rc ? rc : wc_HmacSetKey(&h, WC_SHA256, secret, (word32)secret_len);
    rc = rc ? rc : wc_HmacUpdate(&h, head, sizeof head);
    rc = rc || cluster_id.len == 0 ? rc : wc_HmacUpdate(&h, cluster_id.ptr, (word32)cluster_id.len);
    rc = rc ? rc : wc_HmacUpdate(&h, ids, sizeof ids);
    rc = rc ? rc : wc_HmacUpdate(&h, nonce_d, RB_REPLICA_NONCE_BYTES);
    rc = rc ? rc : wc_HmacUpdate(&h, nonce_a, RB_REPLICA_NONCE_BYTES);
    rc = rc ? rc : wc_HmacFinal(&h, out);
    wc_HmacFree(&h);
    /* HMAC-SHA256 over memory cannot fail with a valid key length. */
    RB_ASSERT(rc == 0);
}

bool rb_replica_mac_equal(const uint8_t a[RB_REPLICA_MAC_BYTES],
                          const uint8_t b[RB_REPLICA_MAC_BYTES])
{
    volatile uint8_t diff = 0;
    for (size_t i = 0; i < RB_REPLICA_MAC_BYTES; i++) {
        diff |= (uint8_t)(a[i] ^ b[i]);
    }
    return diff == 0;
}

int rb_replica_nonce(uint8_t out[RB_REPLICA_NONCE_BYTES], rb_err *err)
{
    size_t got = 0;
    while (got < RB_REPLICA_NONCE_BYTES) {
        ssize_t n = getrandom(out + got, RB_REPLICA_NONCE_BYTES - got, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return rb_err_set(err, RB_ESYS, errno, "replica nonce: getrandom");
        }
        got += (size_t)n;
    }
    return 0;
}
