/* The frame codec: decodes and encodes every frame kind of the wire format
 * (docs/PROTOCOL.md). It owns byte order, bounds and structural validation,
 * UTF-8 and topic-name checks. It leaves everything semantic (does a cursor
 * exist, is a mutate_id in flight, may this client publish) to the stream
 * handler, and it never allocates, does I/O or keeps state. */
#include "common/frame.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/assert.h"

/* The smallest encoding of each list element. A count is checked against
 * count * minimum <= bytes left before any loop runs, so a frame that
 * claims four billion elements in a few bytes is refused without looping. */
#define TOPIC_BYTES_MIN (1 + 1)
#define ADD_BYTES_MIN   (TOPIC_BYTES_MIN + 1 + 8)
#define ITEM_BYTES_MIN  (TOPIC_BYTES_MIN + 8 + 4)

/* Room for the "why" part of a decode error; the kind and list position are
 * prepended when the message is built. */
#define WHY_BYTES_MAX 160

/* ---- little-endian helpers: explicit shifts, no unaligned loads ---- */

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

static uint8_t *put_u8(uint8_t *p, uint8_t v)
{
    p[0] = v;
    return p + 1;
}

static uint8_t *put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    return p + 2;
}

static uint8_t *put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
    return p + 4;
}

static uint8_t *put_u64(uint8_t *p, uint64_t v)
{
    p = put_u32(p, (uint32_t)v);
    return put_u32(p, (uint32_t)(v >> 32));
}

static uint8_t *put_bytes(uint8_t *p, rb_bytes b)
{
    /* memcpy with a NULL source is undefined even for zero bytes. */
    if (b.len > 0) {
        memcpy(p, b.ptr, b.len);
    }
    return p + b.len;
}

/* ---- UTF-8 ---- */

/* Decodes one code point at p (len > 0). Returns its length in bytes, or 0
 * when the sequence is malformed, overlong, a surrogate, above U+10FFFF or
 * truncated. The ranges are those of RFC 3629 section 4. */
static size_t utf8_next(const uint8_t *p, size_t len, uint32_t *cp)
{
    uint8_t b0 = p[0];
    size_t n;
    uint8_t lo = 0x80;
    uint8_t hi = 0xBF;
    if (b0 < 0x80) {
        *cp = b0;
        return 1;
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
        n = 2;
        *cp = b0 & 0x1Fu;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        n = 3;
        *cp = b0 & 0x0Fu;
        lo = b0 == 0xE0 ? 0xA0 : 0x80; /* no overlongs */
        hi = b0 == 0xED ? 0x9F : 0xBF; /* no surrogates */
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        n = 4;
        *cp = b0 & 0x07u;
        lo = b0 == 0xF0 ? 0x90 : 0x80; /* no overlongs */
        hi = b0 == 0xF4 ? 0x8F : 0xBF; /* nothing above U+10FFFF */
    } else {
        return 0;
    }
    if (len < n || p[1] < lo || p[1] > hi) {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0u) != 0x80u) {
            return 0;
        }
        *cp = (*cp << 6) | (p[i] & 0x3Fu);
    }
    return n;
}

/* Returns the length of the longest well-formed prefix of p[0..len). */
static size_t utf8_valid_prefix(const uint8_t *p, size_t len)
{
    size_t off = 0;
    while (off < len) {
        /* ASCII runs are the common case in topics and names. */
        if (p[off] < 0x80) {
            off++;
            continue;
        }
        uint32_t cp;
        size_t n = utf8_next(p + off, len - off, &cp);
        if (n == 0) {
            return off;
        }
        off += n;
    }
    return off;
}

bool rb_utf8_valid(const uint8_t *p, size_t len)
{
    RB_ASSERT(p != NULL || len == 0);
    return utf8_valid_prefix(p, len) == len;
}

/* Unicode White_Space (PropList.txt), which topics may not contain. */
static bool is_white_space(uint32_t cp)
{
    return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* C0, DEL and C1 (general category Cc). */
static bool is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
}

static int topic_check_chars(rb_bytes topic, rb_err *err)
{
    size_t off = 0;
    while (off < topic.len) {
        uint32_t cp;
        size_t n = utf8_next(topic.ptr + off, topic.len - off, &cp);
        if (n == 0) {
            return rb_err_set(err, RB_EINVAL, RB_WIRE_INVALID_TOPIC,
                              "topic: invalid UTF-8 at byte %zu", off);
        }
        /* White space first: TAB..CR and U+0085 are also controls, but
         * "contains a space" is the more useful message for them. */
        if (is_white_space(cp)) {
            return rb_err_set(err, RB_EINVAL, RB_WIRE_INVALID_TOPIC,
                              "topic: contains a space (U+%04X) at byte %zu", (unsigned)cp, off);
        }
        if (is_control(cp)) {
            return rb_err_set(err, RB_EINVAL, RB_WIRE_INVALID_TOPIC,
                              "topic: contains a control character (U+%04X) at byte %zu",
                              (unsigned)cp, off);
        }
        off += n;
    }
    return 0;
}

int rb_topic_validate(rb_bytes topic, bool allow_reserved, rb_err *err)
{
    RB_ASSERT(topic.ptr != NULL || topic.len == 0);
    if (topic.len == 0) {
        return rb_err_set(err, RB_EINVAL, RB_WIRE_INVALID_TOPIC, "topic: empty");
    }
    if (topic.len > RB_TOPIC_BYTES_MAX) {
        return rb_err_set(err, RB_EINVAL, RB_WIRE_INVALID_TOPIC, "topic: %zu bytes, above %d",
                          topic.len, RB_TOPIC_BYTES_MAX);
    }
    if (!allow_reserved && topic.ptr[0] == '$') {
        return rb_err_set(err, RB_EINVAL, RB_WIRE_INVALID_TOPIC,
                          "topic: names starting with '$' are reserved for the server");
    }
    return topic_check_chars(topic, err);
}

/* ---- names ---- */

static const char *const kind_names[] = {
    [RB_FRAME_HELLO] = "HELLO",
    [RB_FRAME_STARTED] = "STARTED",
    [RB_FRAME_ERROR] = "ERROR",
    [RB_FRAME_PING] = "PING",
    [RB_FRAME_PONG] = "PONG",
    [RB_FRAME_CLOSE] = "CLOSE",
    [RB_FRAME_PUBLISH] = "PUBLISH",
    [RB_FRAME_PUBLISH_ACK] = "PUBLISH_ACK",
    [RB_FRAME_MUTATE] = "MUTATE",
    [RB_FRAME_MESSAGES] = "MESSAGES",
    [RB_FRAME_TOPICS_LIVE] = "TOPICS_LIVE",
    [RB_FRAME_CATCHUP_COMPLETE] = "CATCHUP_COMPLETE",
    [RB_FRAME_GOING_AWAY] = "GOING_AWAY",
    [RB_FRAME_TOPIC_ERROR] = "TOPIC_ERROR",
    [RB_FRAME_AUTH] = "AUTH",
    [RB_FRAME_REGISTER] = "REGISTER",
    [RB_FRAME_UNREGISTER] = "UNREGISTER",
    [RB_FRAME_REQUEST] = "REQUEST",
    [RB_FRAME_REQUEST_ACK] = "REQUEST_ACK",
    [RB_FRAME_RESPONSE] = "RESPONSE",
    [RB_FRAME_LAGGED] = "LAGGED",
};

static const char *const wire_code_names[] = {
    [RB_WIRE_OK] = "ok",
    [RB_WIRE_BAD_FRAME] = "bad_frame",
    [RB_WIRE_UNSUPPORTED_VERSION] = "unsupported_version",
    [RB_WIRE_UNAUTHORIZED] = "unauthorized",
    [RB_WIRE_FORBIDDEN] = "forbidden",
    [RB_WIRE_TOO_LARGE] = "too_large",
    [RB_WIRE_RESOURCE_EXHAUSTED] = "resource_exhausted",
    [RB_WIRE_DEADLINE_EXCEEDED] = "deadline_exceeded",
    [RB_WIRE_UNAVAILABLE] = "unavailable",
    [RB_WIRE_INVALID_TOPIC] = "invalid_topic",
    [RB_WIRE_INTERNAL] = "internal",
    [RB_WIRE_INVALID_ARGUMENT] = "invalid_argument",
    [RB_WIRE_GOING_AWAY] = "going_away",
    [RB_WIRE_OUT_OF_RANGE] = "out_of_range",
    [RB_WIRE_EPOCH_MISMATCH] = "epoch_mismatch",
    [RB_WIRE_CURSOR_AHEAD] = "cursor_ahead",
    [RB_WIRE_DEDUP_FULL] = "dedup_full",
    [RB_WIRE_RECIPIENT_NOT_FOUND] = "recipient_not_found",
    [RB_WIRE_UNKNOWN_METHOD] = "unknown_method",
    [RB_WIRE_CONNECTION_TIMEOUT] = "connection_timeout",
    [RB_WIRE_RESPONSE_TIMEOUT] = "response_timeout",
    [RB_WIRE_RECIPIENT_DISCONNECTED] = "recipient_disconnected",
    [RB_WIRE_PAYLOAD_TOO_LARGE] = "payload_too_large",
    [RB_WIRE_APPLICATION_ERROR] = "application_error",
    [RB_WIRE_CANCELLED] = "cancelled",
    [RB_WIRE_ALREADY_REGISTERED] = "already_registered",
    [RB_WIRE_RESPONDER_BUSY] = "responder_busy",
};

_Static_assert(sizeof kind_names / sizeof kind_names[0] == RB_FRAME_KIND_LAST + 1,
               "a name for every frame kind");
_Static_assert(sizeof wire_code_names / sizeof wire_code_names[0] == RB_WIRE_CODE_LAST + 1,
               "a name for every wire code");

/* Kinds inside 1..RB_FRAME_KIND_LAST may be reserved numbers without a
 * frame yet (no name): those are unknown too. */
static bool kind_known(uint8_t kind)
{
    return kind != 0 && kind <= RB_FRAME_KIND_LAST && kind_names[kind] != NULL;
}

const char *rb_frame_kind_name(uint8_t kind)
{
    if (!kind_known(kind)) {
        return "UNKNOWN";
    }
    return kind_names[kind];
}

const char *rb_wire_code_name(uint16_t code)
{
    /* Reserved numbers inside the range have no name yet. */
    if (code > RB_WIRE_CODE_LAST || wire_code_names[code] == NULL) {
        return "unknown";
    }
    return wire_code_names[code];
}

int rb_wire_code_parse(const char *name, uint16_t *code)
{
    RB_ASSERT(name != NULL);
    for (uint16_t i = 0; i <= RB_WIRE_CODE_LAST; i++) {
        if (wire_code_names[i] != NULL && strcmp(name, wire_code_names[i]) == 0) {
            *code = i;
            return 0;
        }
    }
    return -1;
}

/* ---- header ---- */

static int header_check(const rb_frame_header *hdr, uint32_t max_frame_bytes, rb_err *err)
{
    /* Size first: a transport learns to close before buffering a body it
     * would reject. Version next, so that kind and flags are only judged
     * under a version whose meaning of them is known. */
    if (hdr->size < RB_FRAME_HEADER_BYTES) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "frame size %u below header %d",
                          (unsigned)hdr->size, RB_FRAME_HEADER_BYTES);
    }
    if (hdr->size > max_frame_bytes) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_TOO_LARGE,
                          "frame size %u above max_frame_bytes %u", (unsigned)hdr->size,
                          (unsigned)max_frame_bytes);
    }
    if (hdr->version != RB_PROTOCOL_VERSION) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_UNSUPPORTED_VERSION,
                          "protocol version %u unsupported (this server speaks %d)",
                          (unsigned)hdr->version, RB_PROTOCOL_VERSION);
    }
    if (!kind_known(hdr->kind)) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "frame kind %u unknown",
                          (unsigned)hdr->kind);
    }
    if (hdr->flags != 0) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "%s: header flags 0x%04x not zero",
                          rb_frame_kind_name(hdr->kind), (unsigned)hdr->flags);
    }
    return 0;
}

int rb_frame_header_decode(const uint8_t *p, size_t len, uint32_t max_frame_bytes,
                           rb_frame_header *hdr, rb_err *err)
{
    RB_ASSERT(p != NULL || len == 0);
    RB_ASSERT(max_frame_bytes >= RB_FRAME_HEADER_BYTES);
    RB_ASSERT(max_frame_bytes <= RB_FRAME_BYTES_MAX);
    if (len < RB_FRAME_HEADER_BYTES) {
        return rb_err_set(err, RB_EAGAIN, 0, "frame header: %zu of %d bytes", len,
                          RB_FRAME_HEADER_BYTES);
    }
    /* The fields are filled even when the header is refused, so that the
     * caller can echo corr_id in its ERROR frame. */
    hdr->size = get_u32(p);
    hdr->version = p[4];
    hdr->kind = p[5];
    hdr->flags = get_u16(p + 6);
    hdr->corr_id = get_u64(p + 8);
    return header_check(hdr, max_frame_bytes, err);
}

/* ---- body reader ----
 * The reader is sticky: after the first error every read returns zero and
 * nothing is consumed, so a body decoder reads its fields in a straight line
 * and loops stop on r->rc. */

typedef struct reader {
    const uint8_t *pos;
    const uint8_t *end;
    int rc;
    const char *kind_name;
    /* Where in a list the reader is, for messages ("add 3: ..."); the
     * label is NULL outside lists. Formatted only on error. */
    const char *list_label;
    uint32_t list_index;
    rb_err *err;
} reader;

static size_t left(const reader *r)
{
    return (size_t)(r->end - r->pos);
}

__attribute__((format(printf, 2, 3))) static void bad(reader *r, const char *fmt, ...)
{
    if (r->rc != 0) {
        return;
    }
    char why[WHY_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (r->list_label != NULL) {
        r->rc = rb_err_set(r->err, RB_EPROTO, RB_WIRE_BAD_FRAME, "%s: %s %u: %s", r->kind_name,
                           r->list_label, (unsigned)r->list_index, why);
    } else {
        r->rc = rb_err_set(r->err, RB_EPROTO, RB_WIRE_BAD_FRAME, "%s: %s", r->kind_name, why);
    }
}

/* Returns the next n bytes and consumes them, or NULL (and fails). */
static const uint8_t *take(reader *r, size_t n, const char *field)
{
    if (r->rc != 0) {
        return NULL;
    }
    if (left(r) < n) {
        bad(r, "%s: truncated (needs %zu bytes, %zu left)", field, n, left(r));
        return NULL;
    }
    const uint8_t *at = r->pos;
    r->pos += n;
    return at;
}

static uint8_t rd_u8(reader *r, const char *field)
{
    const uint8_t *at = take(r, 1, field);
    return at != NULL ? at[0] : 0;
}

static uint16_t rd_u16(reader *r, const char *field)
{
    const uint8_t *at = take(r, 2, field);
    return at != NULL ? get_u16(at) : 0;
}

static uint32_t rd_u32(reader *r, const char *field)
{
    const uint8_t *at = take(r, 4, field);
    return at != NULL ? get_u32(at) : 0;
}

static uint64_t rd_u64(reader *r, const char *field)
{
    const uint8_t *at = take(r, 8, field);
    return at != NULL ? get_u64(at) : 0;
}

/* A length-prefixed field: width is the prefix size (1, 2 or 4 bytes);
 * text fields must be UTF-8. */
static rb_bytes rd_prefixed(reader *r, size_t width, const char *field, bool text)
{
    rb_bytes out = {r->pos, 0};
    const uint8_t *at = take(r, width, field);
    if (at == NULL) {
        return out;
    }
    size_t len = width == 1 ? at[0] : width == 2 ? get_u16(at) : get_u32(at);
    const uint8_t *bytes = take(r, len, field);
    if (bytes == NULL) {
        return out;
    }
    if (text) {
        size_t valid = utf8_valid_prefix(bytes, len);
        if (valid != len) {
            bad(r, "%s: invalid UTF-8 at byte %zu", field, valid);
            return out;
        }
    }
    out.ptr = bytes;
    out.len = len;
    return out;
}

static rb_bytes rd_topic(reader *r)
{
    if (r->rc == 0 && left(r) >= 1 && r->pos[0] == 0) {
        bad(r, "topic length 0");
        return (rb_bytes){r->pos, 0};
    }
    return rd_prefixed(r, 1, "topic", true);
}

/* Reads a list count and checks that count elements of at least min_bytes
 * each fit in what is left. */
static uint32_t rd_count(reader *r, const char *field, size_t min_bytes)
{
    uint32_t count = rd_u32(r, field);
    if (r->rc == 0 && (uint64_t)count * min_bytes > left(r)) {
        bad(r, "%s %u needs at least %llu bytes, %zu left", field, (unsigned)count,
            (unsigned long long)count * min_bytes, left(r));
        return 0;
    }
    return count;
}

/* Reads count topics, e.g. MUTATE removes and TOPICS_LIVE. */
static rb_bytes rd_topic_list(reader *r, uint32_t count, const char *label)
{
    const uint8_t *start = r->pos;
    r->list_label = label;
    for (uint32_t i = 0; i < count && r->rc == 0; i++) {
        r->list_index = i;
        (void)rd_topic(r);
    }
    r->list_label = NULL;
    return (rb_bytes){start, (size_t)(r->pos - start)};
}

/* ---- body decoders ---- */

static void decode_hello(reader *r, rb_frame *f)
{
    f->u.hello.protocol_version = rd_u16(r, "protocol_version");
    f->u.hello.client_name = rd_prefixed(r, 2, "client_name", true);
    f->u.hello.credentials = rd_prefixed(r, 2, "credentials", false);
}

static void decode_started(reader *r, rb_frame *f)
{
    f->u.started.keepalive_ms = rd_u32(r, "keepalive_ms");
    f->u.started.capabilities = rd_u64(r, "capabilities");
    f->u.started.max_frame_bytes = rd_u32(r, "max_frame_bytes");
    f->u.started.server_id = rd_prefixed(r, 2, "server_id", true);
    /* Appended later: a server that predates epochs ends here. */
    if (r->rc == 0 && left(r) > 0) {
        f->u.started.epoch = rd_u64(r, "epoch");
        f->u.started.has_epoch = r->rc == 0;
    }
    /* Appended after the epoch: the connection's identity. */
    if (r->rc == 0 && left(r) > 0) {
        f->u.started.client_id = rd_prefixed(r, 2, "client_id", true);
        f->u.started.has_client_id = r->rc == 0;
        if (r->rc == 0 && f->u.started.client_id.len > RB_RPC_NAME_BYTES_MAX) {
            bad(r, "client_id of %zu bytes above %d", f->u.started.client_id.len,
                RB_RPC_NAME_BYTES_MAX);
        }
    }
}

/* An RPC name (u8 length): UTF-8, at least min_len bytes. */
static rb_bytes rd_name(reader *r, const char *field, size_t min_len)
{
    if (r->rc == 0 && min_len > 0 && left(r) >= 1 && r->pos[0] == 0) {
        bad(r, "%s length 0", field);
        return (rb_bytes){r->pos, 0};
    }
    return rd_prefixed(r, 1, field, true);
}

static void decode_request(reader *r, rb_frame *f)
{
    f->u.request.timeout_ms = rd_u32(r, "timeout_ms");
    f->u.request.peer = rd_name(r, "peer", 1);
    f->u.request.method = rd_name(r, "method", 1);
    f->u.request.payload = rd_prefixed(r, 4, "payload", false);
}

static void decode_publish(reader *r, rb_frame *f)
{
    f->u.publish.topic = rd_topic(r);
    f->u.publish.idempotency_key = rd_prefixed(r, 1, "idempotency_key", false);
    f->u.publish.payload = rd_prefixed(r, 4, "payload", false);
}

static void decode_add(reader *r)
{
    (void)rd_topic(r);
    uint8_t cursor_kind = rd_u8(r, "cursor_kind");
    uint64_t cursor = rd_u64(r, "cursor");
    if (r->rc != 0) {
        return;
    }
    if (cursor_kind != RB_CURSOR_SEQ && cursor_kind != RB_CURSOR_NOW) {
        bad(r, "cursor_kind %u unknown", (unsigned)cursor_kind);
    } else if (cursor_kind == RB_CURSOR_NOW && cursor != 0) {
        bad(r, "cursor %llu with cursor_kind now (must be 0)", (unsigned long long)cursor);
    }
}

static void decode_mutate(reader *r, rb_frame *f)
{
    f->u.mutate.mutate_id = rd_u64(r, "mutate_id");
    f->u.mutate.flags = rd_u8(r, "flags");
    if (r->rc == 0 && (f->u.mutate.flags & ~RB_MUTATE_HISTORY_ONLY) != 0) {
        bad(r, "flags 0x%02x has unknown bits", (unsigned)f->u.mutate.flags);
    }
    f->u.mutate.add_count = rd_count(r, "add_count", ADD_BYTES_MIN);
    const uint8_t *start = r->pos;
    r->list_label = "add";
    for (uint32_t i = 0; i < f->u.mutate.add_count && r->rc == 0; i++) {
        r->list_index = i;
        decode_add(r);
    }
    r->list_label = NULL;
    f->u.mutate.adds = (rb_bytes){start, (size_t)(r->pos - start)};
    f->u.mutate.remove_count = rd_count(r, "remove_count", TOPIC_BYTES_MIN);
    f->u.mutate.removes = rd_topic_list(r, f->u.mutate.remove_count, "remove");
    /* Appended later: a client that predates epochs ends here. */
    if (r->rc == 0 && left(r) > 0) {
        f->u.mutate.epoch = rd_u64(r, "epoch");
        f->u.mutate.has_epoch = r->rc == 0;
    }
}

static void decode_topic_error(reader *r, rb_frame *f)
{
    f->u.topic_error.mutate_id = rd_u64(r, "mutate_id");
    f->u.topic_error.topic = rd_topic(r);
    f->u.topic_error.code = rd_u16(r, "code");
    f->u.topic_error.message = rd_prefixed(r, 2, "message", true);
}

static void decode_messages(reader *r, rb_frame *f)
{
    f->u.messages.mutate_id = rd_u64(r, "mutate_id");
    f->u.messages.count = rd_count(r, "count", ITEM_BYTES_MIN);
    const uint8_t *start = r->pos;
    r->list_label = "item";
    for (uint32_t i = 0; i < f->u.messages.count && r->rc == 0; i++) {
        r->list_index = i;
        (void)rd_topic(r);
        (void)rd_u64(r, "seq");
        (void)rd_prefixed(r, 4, "payload", false);
    }
    r->list_label = NULL;
    f->u.messages.items = (rb_bytes){start, (size_t)(r->pos - start)};
}

static void decode_body(reader *r, rb_frame *f)
{
    switch ((rb_frame_kind)f->hdr.kind) {
    case RB_FRAME_HELLO:
        decode_hello(r, f);
        break;
    case RB_FRAME_STARTED:
        decode_started(r, f);
        break;
    case RB_FRAME_ERROR:
        f->u.error.code = rd_u16(r, "code");
        f->u.error.message = rd_prefixed(r, 2, "message", true);
        break;
    case RB_FRAME_PING:
    case RB_FRAME_PONG:
        f->u.ping.nonce = rd_u64(r, "nonce");
        break;
    case RB_FRAME_CLOSE:
        f->u.close.status = rd_u16(r, "status");
        f->u.close.message = rd_prefixed(r, 2, "message", true);
        break;
    case RB_FRAME_PUBLISH:
        decode_publish(r, f);
        break;
    case RB_FRAME_PUBLISH_ACK:
        f->u.publish_ack.topic = rd_topic(r);
        f->u.publish_ack.seq = rd_u64(r, "seq");
        /* Appended later: a server that predates dedup ends here. */
        if (r->rc == 0 && left(r) > 0) {
            f->u.publish_ack.flags = rd_u8(r, "flags");
            f->u.publish_ack.has_flags = r->rc == 0;
        }
        break;
    case RB_FRAME_MUTATE:
        decode_mutate(r, f);
        break;
    case RB_FRAME_MESSAGES:
        decode_messages(r, f);
        break;
    case RB_FRAME_TOPICS_LIVE:
        f->u.topics_live.count = rd_count(r, "count", TOPIC_BYTES_MIN);
        f->u.topics_live.topics = rd_topic_list(r, f->u.topics_live.count, "topic");
        break;
    case RB_FRAME_CATCHUP_COMPLETE:
        f->u.catchup_complete.mutate_id = rd_u64(r, "mutate_id");
        break;
    case RB_FRAME_GOING_AWAY:
        f->u.going_away.reconnect_delay_ms = rd_u32(r, "reconnect_delay_ms");
        f->u.going_away.message = rd_prefixed(r, 2, "message", true);
        break;
    case RB_FRAME_TOPIC_ERROR:
        decode_topic_error(r, f);
        break;
    case RB_FRAME_LAGGED:
        f->u.lagged.topic = rd_topic(r);
        f->u.lagged.skipped = rd_u64(r, "skipped");
        if (r->rc == 0 && f->u.lagged.skipped == 0) {
            bad(r, "skipped: 0 (a LAGGED frame skips at least one message)");
        }
        break;
    case RB_FRAME_AUTH:
        f->u.auth.credentials = rd_prefixed(r, 2, "credentials", false);
        break;
    case RB_FRAME_REGISTER:
    case RB_FRAME_UNREGISTER:
        f->u.reg.method = rd_name(r, "method", 1);
        f->u.reg.service = rd_name(r, "service", 0);
        break;
    case RB_FRAME_REQUEST:
        decode_request(r, f);
        break;
    case RB_FRAME_REQUEST_ACK:
        f->u.request_ack.flags = rd_u8(r, "flags");
        if (r->rc == 0 && (f->u.request_ack.flags & ~RB_REQUEST_ACK_CANCEL) != 0) {
            bad(r, "flags 0x%02x: unknown bits", (unsigned)f->u.request_ack.flags);
        }
        break;
    case RB_FRAME_RESPONSE:
        f->u.response.code = rd_u16(r, "code");
        f->u.response.message = rd_prefixed(r, 2, "message", true);
        f->u.response.payload = rd_prefixed(r, 4, "payload", false);
        break;
    }
}

int rb_frame_decode(const uint8_t *p, size_t len, uint32_t max_frame_bytes, rb_frame *f,
                    rb_err *err)
{
    RB_ASSERT(f != NULL);
    memset(f, 0, sizeof *f);
    int rc = rb_frame_header_decode(p, len, max_frame_bytes, &f->hdr, err);
    if (rc != 0) {
        return rc;
    }
    if (len < f->hdr.size) {
        return rb_err_set(err, RB_EAGAIN, 0, "%s: %zu of %u bytes", rb_frame_kind_name(f->hdr.kind),
                          len, (unsigned)f->hdr.size);
    }
    reader r = {
        .pos = p + RB_FRAME_HEADER_BYTES,
        .end = p + f->hdr.size,
        .kind_name = rb_frame_kind_name(f->hdr.kind),
        .err = err,
    };
    decode_body(&r, f);
    if (r.rc == 0 && left(&r) != 0) {
        bad(&r, "%zu trailing bytes", left(&r));
    }
    RB_ASSERT(r.rc == 0 || r.rc == RB_EPROTO);
    return r.rc;
}

/* ---- iterators ----
 * The lists were validated whole by rb_frame_decode, so these only assert
 * the bounds they rely on. */

void rb_frame_iter_init(rb_frame_iter *it, rb_bytes raw, uint32_t count)
{
    RB_ASSERT(raw.ptr != NULL || raw.len == 0);
    it->pos = raw.ptr;
    /* NULL + 0 is undefined in C, so an empty list without bytes keeps NULL. */
    it->end = raw.ptr != NULL ? raw.ptr + raw.len : NULL;
    it->left = count;
}

static rb_bytes iter_topic(rb_frame_iter *it)
{
    RB_ASSERT(it->end - it->pos >= TOPIC_BYTES_MIN);
    size_t len = it->pos[0];
    RB_ASSERT(len >= 1);
    RB_ASSERT((size_t)(it->end - it->pos) >= 1 + len);
    rb_bytes topic = {it->pos + 1, len};
    it->pos += 1 + len;
    return topic;
}

static bool iter_more(const rb_frame_iter *it)
{
    if (it->left == 0) {
        RB_ASSERT(it->pos == it->end);
        return false;
    }
    return true;
}

bool rb_frame_next_topic(rb_frame_iter *it, rb_bytes *out)
{
    if (!iter_more(it)) {
        return false;
    }
    *out = iter_topic(it);
    it->left--;
    return true;
}

bool rb_frame_next_add(rb_frame_iter *it, rb_mutate_add *out)
{
    if (!iter_more(it)) {
        return false;
    }
    out->topic = iter_topic(it);
    RB_ASSERT(it->end - it->pos >= 1 + 8);
    out->cursor_kind = it->pos[0];
    out->cursor = get_u64(it->pos + 1);
    it->pos += 1 + 8;
    it->left--;
    return true;
}

bool rb_frame_next_item(rb_frame_iter *it, rb_message_item *out)
{
    if (!iter_more(it)) {
        return false;
    }
    out->topic = iter_topic(it);
    RB_ASSERT(it->end - it->pos >= 8 + 4);
    out->seq = get_u64(it->pos);
    size_t len = get_u32(it->pos + 8);
    it->pos += 8 + 4;
    RB_ASSERT((size_t)(it->end - it->pos) >= len);
    out->payload = (rb_bytes){it->pos, len};
    it->pos += len;
    it->left--;
    return true;
}

/* ---- encoders ---- */

static void assert_topic(rb_bytes topic)
{
    RB_ASSERT(topic.len >= 1);
    RB_ASSERT(topic.len <= RB_TOPIC_BYTES_MAX);
    RB_ASSERT(topic.ptr != NULL);
}

static void assert_str16(rb_bytes s)
{
    RB_ASSERT(s.len <= RB_SHORT_STRING_BYTES_MAX);
    RB_ASSERT(s.ptr != NULL || s.len == 0);
    RB_ASSERT_SLOW(rb_utf8_valid(s.ptr, s.len));
}

static void assert_blob16(rb_bytes b)
{
    RB_ASSERT(b.len <= RB_SHORT_STRING_BYTES_MAX);
    RB_ASSERT(b.ptr != NULL || b.len == 0);
}

/* Writes the header and returns where the body starts. */
static uint8_t *put_header(uint8_t *out, size_t size, uint8_t kind, uint64_t corr_id)
{
    RB_ASSERT(size >= RB_FRAME_HEADER_BYTES);
    RB_ASSERT(size <= UINT32_MAX);
    uint8_t *p = put_u32(out, (uint32_t)size);
    p = put_u8(p, RB_PROTOCOL_VERSION);
    p = put_u8(p, kind);
    p = put_u16(p, 0);
    return put_u64(p, corr_id);
}

static uint8_t *put_topic(uint8_t *p, rb_bytes topic)
{
    p = put_u8(p, (uint8_t)topic.len);
    return put_bytes(p, topic);
}

static uint8_t *put_blob16(uint8_t *p, rb_bytes b)
{
    p = put_u16(p, (uint16_t)b.len);
    return put_bytes(p, b);
}

/* Finishes an encoder: checks that exactly size bytes were written. */
static size_t done(const uint8_t *out, const uint8_t *p, size_t size)
{
    RB_ASSERT((size_t)(p - out) == size);
    return size;
}

size_t rb_frame_encode_hello(uint8_t *out, size_t cap, uint64_t corr_id, uint16_t protocol_version,
                             rb_bytes client_name, rb_bytes credentials)
{
    assert_str16(client_name);
    assert_blob16(credentials);
    size_t size = RB_FRAME_HEADER_BYTES + 2 + 2 + client_name.len + 2 + credentials.len;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_FRAME_HELLO, corr_id);
    p = put_u16(p, protocol_version);
    p = put_blob16(p, client_name);
    p = put_blob16(p, credentials);
    return done(out, p, size);
}

/* STARTED; client_id NULL leaves the appended field out. */
static size_t encode_started(uint8_t *out, size_t cap, uint64_t corr_id, uint32_t keepalive_ms,
                             uint64_t capabilities, uint32_t max_frame_bytes, rb_bytes server_id,
                             uint64_t epoch, const rb_bytes *client_id)
{
    assert_str16(server_id);
    size_t size = RB_FRAME_HEADER_BYTES + 4 + 8 + 4 + 2 + server_id.len + 8;
    if (client_id != NULL) {
        RB_ASSERT(client_id->len <= RB_RPC_NAME_BYTES_MAX);
        assert_str16(*client_id);
        size += 2 + client_id->len;
    }
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_FRAME_STARTED, corr_id);
    p = put_u32(p, keepalive_ms);
    p = put_u64(p, capabilities);
    p = put_u32(p, max_frame_bytes);
    p = put_blob16(p, server_id);
    p = put_u64(p, epoch);
    if (client_id != NULL) {
        p = put_blob16(p, *client_id);
    }
    return done(out, p, size);
}

size_t rb_frame_encode_started(uint8_t *out, size_t cap, uint64_t corr_id, uint32_t keepalive_ms,
                               uint64_t capabilities, uint32_t max_frame_bytes, rb_bytes server_id,
                               uint64_t epoch)
{
    return encode_started(out, cap, corr_id, keepalive_ms, capabilities, max_frame_bytes, server_id,
                          epoch, NULL);
}

size_t rb_frame_encode_started_client(uint8_t *out, size_t cap, uint64_t corr_id,
                                      uint32_t keepalive_ms, uint64_t capabilities,
                                      uint32_t max_frame_bytes, rb_bytes server_id, uint64_t epoch,
                                      rb_bytes client_id)
{
    return encode_started(out, cap, corr_id, keepalive_ms, capabilities, max_frame_bytes, server_id,
                          epoch, &client_id);
}

/* ERROR and CLOSE share a layout: u16 code, str16 message. */
static size_t encode_code_message(uint8_t *out, size_t cap, uint8_t kind, uint64_t corr_id,
                                  uint16_t code, rb_bytes message)
{
    assert_str16(message);
    size_t size = RB_FRAME_HEADER_BYTES + 2 + 2 + message.len;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, kind, corr_id);
    p = put_u16(p, code);
    p = put_blob16(p, message);
    return done(out, p, size);
}

size_t rb_frame_encode_error(uint8_t *out, size_t cap, uint64_t corr_id, uint16_t code,
                             rb_bytes message)
{
    return encode_code_message(out, cap, RB_FRAME_ERROR, corr_id, code, message);
}

size_t rb_frame_encode_close(uint8_t *out, size_t cap, uint64_t corr_id, uint16_t status,
                             rb_bytes message)
{
    return encode_code_message(out, cap, RB_FRAME_CLOSE, corr_id, status, message);
}

/* Frames whose body is one u64: PING, PONG, CATCHUP_COMPLETE. */
static size_t encode_u64_body(uint8_t *out, size_t cap, uint8_t kind, uint64_t corr_id,
                              uint64_t value)
{
    size_t size = RB_FRAME_HEADER_BYTES + 8;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, kind, corr_id);
    p = put_u64(p, value);
    return done(out, p, size);
}

size_t rb_frame_encode_ping(uint8_t *out, size_t cap, uint64_t corr_id, uint64_t nonce)
{
    return encode_u64_body(out, cap, RB_FRAME_PING, corr_id, nonce);
}

size_t rb_frame_encode_pong(uint8_t *out, size_t cap, uint64_t corr_id, uint64_t nonce)
{
    return encode_u64_body(out, cap, RB_FRAME_PONG, corr_id, nonce);
}

size_t rb_frame_encode_catchup_complete(uint8_t *out, size_t cap, uint64_t corr_id,
                                        uint64_t mutate_id)
{
    return encode_u64_body(out, cap, RB_FRAME_CATCHUP_COMPLETE, corr_id, mutate_id);
}

size_t rb_frame_encode_going_away(uint8_t *out, size_t cap, uint64_t corr_id,
                                  uint32_t reconnect_delay_ms, rb_bytes message)
{
    assert_str16(message);
    size_t size = RB_FRAME_HEADER_BYTES + 4 + 2 + message.len;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_FRAME_GOING_AWAY, corr_id);
    p = put_u32(p, reconnect_delay_ms);
    p = put_blob16(p, message);
    return done(out, p, size);
}

size_t rb_frame_encode_lagged(uint8_t *out, size_t cap, uint64_t corr_id, rb_bytes topic,
                              uint64_t skipped)
{
    assert_topic(topic);
    RB_ASSERT(skipped > 0);
    size_t size = RB_FRAME_HEADER_BYTES + 1 + topic.len + 8;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_FRAME_LAGGED, corr_id);
    p = put_topic(p, topic);
    p = put_u64(p, skipped);
    return done(out, p, size);
}

size_t rb_frame_encode_topic_error(uint8_t *out, size_t cap, uint64_t corr_id, uint64_t mutate_id,
                                   rb_bytes topic, uint16_t code, rb_bytes message)
{
    assert_topic(topic);
    assert_str16(message);
    size_t size = RB_FRAME_HEADER_BYTES + 8 + 1 + topic.len + 2 + 2 + message.len;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_FRAME_TOPIC_ERROR, corr_id);
    p = put_u64(p, mutate_id);
    p = put_topic(p, topic);
    p = put_u16(p, code);
    p = put_blob16(p, message);
    return done(out, p, size);
}

size_t rb_frame_encode_auth(uint8_t *out, size_t cap, uint64_t corr_id, rb_bytes credentials)
{
    assert_blob16(credentials);
    size_t size = RB_FRAME_HEADER_BYTES + 2 + credentials.len;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_FRAME_AUTH, corr_id);
    p = put_blob16(p, credentials);
    return done(out, p, size);
}

size_t rb_frame_encode_publish(uint8_t *out, size_t cap, uint64_t corr_id, rb_bytes topic,
                               rb_bytes idempotency_key, rb_bytes payload)
{
    assert_topic(topic);
    RB_ASSERT(idempotency_key.len <= RB_IDEMPOTENCY_KEY_BYTES_MAX);
    RB_ASSERT(idempotency_key.ptr != NULL || idempotency_key.len == 0);
    RB_ASSERT(payload.ptr != NULL || payload.len == 0);
    RB_ASSERT(payload.len <= UINT32_MAX - (RB_FRAME_HEADER_BYTES + 1 + 255 + 1 + 255 + 4));
    size_t size = RB_FRAME_HEADER_BYTES + 1 + topic.len + 1 + idempotency_key.len + 4 + payload.len;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_FRAME_PUBLISH, corr_id);
    p = put_topic(p, topic);
    p = put_u8(p, (uint8_t)idempotency_key.len);
    p = put_bytes(p, idempotency_key);
    p = put_u32(p, (uint32_t)payload.len);
    p = put_bytes(p, payload);
    return done(out, p, size);
}

size_t rb_frame_encode_publish_ack(uint8_t *out, size_t cap, uint64_t corr_id, rb_bytes topic,
                                   uint64_t seq, uint8_t flags)
{
    assert_topic(topic);
    size_t size = RB_FRAME_HEADER_BYTES + 1 + topic.len + 8 + 1;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_FRAME_PUBLISH_ACK, corr_id);
    p = put_topic(p, topic);
    p = put_u64(p, seq);
    p = put_u8(p, flags);
    return done(out, p, size);
}

static size_t topic_list_size(const rb_bytes *topics, uint32_t count)
{
    RB_ASSERT(topics != NULL || count == 0);
    size_t size = 0;
    for (uint32_t i = 0; i < count; i++) {
        assert_topic(topics[i]);
        size += 1 + topics[i].len;
    }
    return size;
}

static size_t add_list_size(const rb_mutate_add *adds, uint32_t count)
{
    RB_ASSERT(adds != NULL || count == 0);
    size_t size = 0;
    for (uint32_t i = 0; i < count; i++) {
        assert_topic(adds[i].topic);
        RB_ASSERT(adds[i].cursor_kind == RB_CURSOR_SEQ || adds[i].cursor_kind == RB_CURSOR_NOW);
        RB_ASSERT(adds[i].cursor_kind == RB_CURSOR_SEQ || adds[i].cursor == 0);
        size += 1 + adds[i].topic.len + 1 + 8;
    }
    return size;
}

size_t rb_frame_encode_mutate(uint8_t *out, size_t cap, uint64_t corr_id, uint64_t mutate_id,
                              uint8_t flags, const rb_mutate_add *adds, uint32_t add_count,
                              const rb_bytes *removes, uint32_t remove_count, uint64_t epoch)
{
    RB_ASSERT((flags & ~RB_MUTATE_HISTORY_ONLY) == 0);
    size_t size = RB_FRAME_HEADER_BYTES + 8 + 1 + 4 + add_list_size(adds, add_count) + 4 +
                  topic_list_size(removes, remove_count) + 8;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_FRAME_MUTATE, corr_id);
    p = put_u64(p, mutate_id);
    p = put_u8(p, flags);
    p = put_u32(p, add_count);
    for (uint32_t i = 0; i < add_count; i++) {
        p = put_topic(p, adds[i].topic);
        p = put_u8(p, adds[i].cursor_kind);
        p = put_u64(p, adds[i].cursor);
    }
    p = put_u32(p, remove_count);
    for (uint32_t i = 0; i < remove_count; i++) {
        p = put_topic(p, removes[i]);
    }
    p = put_u64(p, epoch);
    return done(out, p, size);
}

size_t rb_frame_encode_topics_live(uint8_t *out, size_t cap, uint64_t corr_id,
                                   const rb_bytes *topics, uint32_t count)
{
    size_t size = RB_FRAME_HEADER_BYTES + 4 + topic_list_size(topics, count);
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_FRAME_TOPICS_LIVE, corr_id);
    p = put_u32(p, count);
    for (uint32_t i = 0; i < count; i++) {
        p = put_topic(p, topics[i]);
    }
    return done(out, p, size);
}

size_t rb_frame_messages_item_size(size_t topic_len, size_t payload_len)
{
    RB_ASSERT(topic_len >= 1);
    RB_ASSERT(topic_len <= RB_TOPIC_BYTES_MAX);
    RB_ASSERT(payload_len <= UINT32_MAX);
    return 1 + topic_len + 8 + 4 + payload_len;
}

size_t rb_frame_encode_messages_item(uint8_t *out, size_t cap, rb_bytes topic, uint64_t seq,
                                     rb_bytes payload)
{
    assert_topic(topic);
    RB_ASSERT(payload.ptr != NULL || payload.len == 0);
    size_t size = rb_frame_messages_item_size(topic.len, payload.len);
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_topic(out, topic);
    p = put_u64(p, seq);
    p = put_u32(p, (uint32_t)payload.len);
    p = put_bytes(p, payload);
    return done(out, p, size);
}

size_t rb_frame_encode_messages_head(uint8_t *out, size_t cap, uint64_t corr_id, uint64_t mutate_id,
                                     uint32_t count, size_t items_bytes)
{
    /* Every item takes at least ITEM_BYTES_MIN; fewer bytes means the
     * caller's count and items disagree. */
    RB_ASSERT((uint64_t)count * ITEM_BYTES_MIN <= items_bytes);
    RB_ASSERT(items_bytes <= UINT32_MAX - RB_FRAME_MESSAGES_HEAD_BYTES);
    if (cap < RB_FRAME_MESSAGES_HEAD_BYTES) {
        return 0;
    }
    uint8_t *p =
        put_header(out, RB_FRAME_MESSAGES_HEAD_BYTES + items_bytes, RB_FRAME_MESSAGES, corr_id);
    p = put_u64(p, mutate_id);
    p = put_u32(p, count);
    return done(out, p, RB_FRAME_MESSAGES_HEAD_BYTES);
}

size_t rb_frame_message_payload_max(uint32_t max_frame_bytes, size_t topic_len)
{
    size_t overhead = RB_FRAME_MESSAGES_HEAD_BYTES + rb_frame_messages_item_size(topic_len, 0);
    RB_ASSERT(max_frame_bytes >= overhead);
    return max_frame_bytes - overhead;
}

/* ---- credentials ----
 * The reader of frame bodies is reused with kind_name "credentials", so a
 * truncated field reads "credentials: token: truncated (...)". Its errors
 * are bad_frame; they are rewritten to unauthorized on the way out, since
 * credentials the server cannot read are credentials it refuses. */

static bool token_byte_ok(uint8_t b)
{
    return (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') || b == '-' ||
           b == '_' || b == '.';
}

static void decode_token(reader *r, rb_credentials *out)
{
    out->token = rd_prefixed(r, 2, "token", false);
    if (r->rc != 0) {
        return;
    }
    if (out->token.len == 0 || out->token.len > RB_AUTH_TOKEN_BYTES_MAX) {
        bad(r, "token: %zu bytes, not in [1, %d]", out->token.len, RB_AUTH_TOKEN_BYTES_MAX);
        return;
    }
    for (size_t i = 0; i < out->token.len; i++) {
        if (!token_byte_ok(out->token.ptr[i])) {
            /* The byte itself is not echoed: it is part of a secret. */
            bad(r, "token: byte %zu is not base64url or '.'", i);
            return;
        }
    }
}

static void decode_password(reader *r, rb_credentials *out)
{
    out->user = rd_prefixed(r, 1, "user", true);
    out->password = rd_prefixed(r, 2, "password", false);
    if (r->rc != 0) {
        return;
    }
    if (out->user.len == 0) {
        bad(r, "user: empty");
        return;
    }
    size_t off = 0;
    while (off < out->user.len) {
        uint32_t cp;
        size_t n = utf8_next(out->user.ptr + off, out->user.len - off, &cp);
        RB_ASSERT(n > 0); /* rd_prefixed checked the UTF-8 */
        if (is_control(cp) || is_white_space(cp)) {
            bad(r, "user: control character or space at byte %zu", off);
            return;
        }
        off += n;
    }
    if (out->password.len == 0 || out->password.len > RB_AUTH_PASSWORD_BYTES_MAX) {
        bad(r, "password: %zu bytes, not in [1, %d]", out->password.len,
            RB_AUTH_PASSWORD_BYTES_MAX);
    }
}

int rb_credentials_decode(rb_bytes raw, rb_credentials *out, rb_err *err)
{
    RB_ASSERT(out != NULL);
    RB_ASSERT(raw.ptr != NULL || raw.len == 0);
    memset(out, 0, sizeof *out);
    if (raw.len == 0) {
        out->kind = RB_CRED_NONE;
        return 0;
    }
    reader r = {.pos = raw.ptr, .end = raw.ptr + raw.len, .kind_name = "credentials", .err = err};
    out->kind = rd_u8(&r, "kind");
    if (out->kind == RB_CRED_TOKEN) {
        decode_token(&r, out);
    } else if (out->kind == RB_CRED_PASSWORD) {
        decode_password(&r, out);
    } else {
        bad(&r, "kind %u unknown (1 token, 2 user and password)", (unsigned)out->kind);
    }
    if (r.rc == 0 && left(&r) != 0) {
        bad(&r, "%zu trailing bytes", left(&r));
    }
    if (r.rc != 0) {
        if (err != NULL) {
            err->code = RB_EINVAL;
            err->cause = RB_WIRE_UNAUTHORIZED;
        }
        memset(out, 0, sizeof *out);
        return RB_EINVAL;
    }
    return 0;
}

size_t rb_credentials_encode_token(uint8_t *out, size_t cap, rb_bytes token)
{
    RB_ASSERT(token.len >= 1);
    RB_ASSERT(token.len <= RB_AUTH_TOKEN_BYTES_MAX);
    RB_ASSERT(token.ptr != NULL);
    size_t size = 1 + 2 + token.len;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_u8(out, RB_CRED_TOKEN);
    p = put_blob16(p, token);
    return done(out, p, size);
}

size_t rb_credentials_encode_password(uint8_t *out, size_t cap, rb_bytes user, rb_bytes password)
{
    RB_ASSERT(user.len >= 1);
    RB_ASSERT(user.len <= RB_AUTH_USER_BYTES_MAX);
    RB_ASSERT(user.ptr != NULL);
    RB_ASSERT(password.len >= 1);
    RB_ASSERT(password.len <= RB_AUTH_PASSWORD_BYTES_MAX);
    RB_ASSERT(password.ptr != NULL);
    size_t size = 1 + 1 + user.len + 2 + password.len;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_u8(out, RB_CRED_PASSWORD);
    p = put_u8(p, (uint8_t)user.len);
    p = put_bytes(p, user);
    p = put_blob16(p, password);
    return done(out, p, size);
}

/* ---- RPC ---- */

static void assert_name(rb_bytes name, size_t min_len)
{
    RB_ASSERT(name.len >= min_len);
    RB_ASSERT(name.len <= RB_RPC_NAME_BYTES_MAX);
    RB_ASSERT(name.ptr != NULL || name.len == 0);
}

static uint8_t *put_name(uint8_t *p, rb_bytes name)
{
    p = put_u8(p, (uint8_t)name.len);
    return put_bytes(p, name);
}

size_t rb_frame_encode_register(uint8_t *out, size_t cap, uint8_t kind, uint64_t corr_id,
                                rb_bytes method, rb_bytes service)
{
    RB_ASSERT(kind == RB_FRAME_REGISTER || kind == RB_FRAME_UNREGISTER);
    assert_name(method, 1);
    assert_name(service, 0);
    size_t size = RB_FRAME_HEADER_BYTES + 1 + method.len + 1 + service.len;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, kind, corr_id);
    p = put_name(p, method);
    p = put_name(p, service);
    return done(out, p, size);
}

size_t rb_frame_encode_request_head(uint8_t *out, size_t cap, uint64_t corr_id, uint32_t timeout_ms,
                                    rb_bytes peer, rb_bytes method, size_t payload_len)
{
    assert_name(peer, 1);
    assert_name(method, 1);
    RB_ASSERT(payload_len <= UINT32_MAX - RB_FRAME_REQUEST_OVERHEAD_BYTES);
    size_t head = RB_FRAME_HEADER_BYTES + 4 + 1 + peer.len + 1 + method.len + 4;
    if (head > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, head + payload_len, RB_FRAME_REQUEST, corr_id);
    p = put_u32(p, timeout_ms);
    p = put_name(p, peer);
    p = put_name(p, method);
    p = put_u32(p, (uint32_t)payload_len);
    return done(out, p, head);
}

size_t rb_frame_encode_request(uint8_t *out, size_t cap, uint64_t corr_id, uint32_t timeout_ms,
                               rb_bytes peer, rb_bytes method, rb_bytes payload)
{
    RB_ASSERT(payload.ptr != NULL || payload.len == 0);
    size_t head =
        rb_frame_encode_request_head(out, cap, corr_id, timeout_ms, peer, method, payload.len);
    if (head == 0 || head + payload.len > cap) {
        return 0;
    }
    put_bytes(out + head, payload);
    return head + payload.len;
}

size_t rb_frame_encode_request_ack(uint8_t *out, size_t cap, uint64_t corr_id, uint8_t flags)
{
    RB_ASSERT((flags & ~RB_REQUEST_ACK_CANCEL) == 0);
    size_t size = RB_FRAME_HEADER_BYTES + 1;
    if (size > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, size, RB_FRAME_REQUEST_ACK, corr_id);
    p = put_u8(p, flags);
    return done(out, p, size);
}

size_t rb_frame_encode_response_head(uint8_t *out, size_t cap, uint64_t corr_id, uint16_t code,
                                     rb_bytes message, size_t payload_len)
{
    assert_str16(message);
    RB_ASSERT(payload_len <= UINT32_MAX - RB_FRAME_RESPONSE_FIXED_BYTES - message.len);
    size_t head = RB_FRAME_RESPONSE_FIXED_BYTES + message.len;
    if (head > cap) {
        return 0;
    }
    uint8_t *p = put_header(out, head + payload_len, RB_FRAME_RESPONSE, corr_id);
    p = put_u16(p, code);
    p = put_blob16(p, message);
    p = put_u32(p, (uint32_t)payload_len);
    return done(out, p, head);
}

size_t rb_frame_encode_response(uint8_t *out, size_t cap, uint64_t corr_id, uint16_t code,
                                rb_bytes message, rb_bytes payload)
{
    RB_ASSERT(payload.ptr != NULL || payload.len == 0);
    size_t head = rb_frame_encode_response_head(out, cap, corr_id, code, message, payload.len);
    if (head == 0 || head + payload.len > cap) {
        return 0;
    }
    put_bytes(out + head, payload);
    return head + payload.len;
}
