/* The ringbus wire format (docs/PROTOCOL.md): a 16-byte header and a body.
 * This module owns encoding and decoding of every frame kind and nothing
 * else: it never allocates, never does I/O and never keeps state. Decoded
 * frames are views into the caller's bytes (rb_bytes), valid while those
 * bytes are. Lists inside a frame (Mutate adds and removes, Messages items,
 * TopicsLive topics) are validated whole by rb_frame_decode and then walked
 * with the rb_frame_iter functions, which cannot fail.
 *
 * Header, little-endian:
 *   u32 size      whole frame including the header, in [16, max_frame_bytes]
 *   u8  version   RB_PROTOCOL_VERSION
 *   u8  kind      RB_FRAME_...
 *   u16 flags     0 (reserved; nonzero is bad_frame)
 *   u64 corr_id   correlation id chosen by the requester, echoed in replies
 */
#ifndef RB_COMMON_FRAME_H
#define RB_COMMON_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/limits.h"

typedef enum rb_frame_kind {
    RB_FRAME_HELLO = 1,
    RB_FRAME_STARTED = 2,
    RB_FRAME_ERROR = 3,
    RB_FRAME_PING = 4,
    RB_FRAME_PONG = 5,
    RB_FRAME_CLOSE = 6,
    RB_FRAME_PUBLISH = 7,
    RB_FRAME_PUBLISH_ACK = 8,
    RB_FRAME_MUTATE = 9,
    RB_FRAME_MESSAGES = 10,
    RB_FRAME_TOPICS_LIVE = 11,
    RB_FRAME_CATCHUP_COMPLETE = 12,
    RB_FRAME_AUTH = 13,       /* fresh credentials on an open connection (token refresh) */
    RB_FRAME_GOING_AWAY = 14, /* the server drains: leave, come back after the hint */
    RB_FRAME_TOPIC_ERROR = 15,
    /* RPC between clients (docs/PROTOCOL.md section 12). */
    RB_FRAME_REGISTER = 16,    /* serve a method (client), accepted (server echo) */
    RB_FRAME_UNREGISTER = 17,  /* stop serving it, or accepted (echo) */
    RB_FRAME_REQUEST = 18,     /* a call (caller -> server -> responder) */
    RB_FRAME_REQUEST_ACK = 19, /* the responder has it; or a caller's cancel */
    RB_FRAME_RESPONSE = 20,    /* the one outcome of a call */
    RB_FRAME_LAGGED = 21,      /* an ephemeral topic skipped messages of a slow reader */
    RB_FRAME_KIND_LAST = RB_FRAME_LAGGED,
} rb_frame_kind;

/* Stable wire codes of ERROR frames and CLOSE statuses. */
typedef enum rb_wire_code {
    RB_WIRE_OK = 0,
    RB_WIRE_BAD_FRAME = 1,
    RB_WIRE_UNSUPPORTED_VERSION = 2,
    RB_WIRE_UNAUTHORIZED = 3,
    RB_WIRE_FORBIDDEN = 4,
    RB_WIRE_TOO_LARGE = 5,
    RB_WIRE_RESOURCE_EXHAUSTED = 6,
    RB_WIRE_DEADLINE_EXCEEDED = 7,
    RB_WIRE_UNAVAILABLE = 8,
    RB_WIRE_INVALID_TOPIC = 9,
    RB_WIRE_INTERNAL = 10,
    RB_WIRE_INVALID_ARGUMENT = 11,
    RB_WIRE_GOING_AWAY = 12,
    RB_WIRE_OUT_OF_RANGE = 13,   /* a cursor older than what storage retains */
    RB_WIRE_EPOCH_MISMATCH = 14, /* a cursor from another store epoch */
    RB_WIRE_CURSOR_AHEAD = 15,   /* a cursor beyond the topic's head */
    /* 16, 17: reserved (auth) */
    RB_WIRE_DEDUP_FULL = 18, /* the idempotency-key table of the topic or the node is full */
    /* 19: reserved. RPC outcomes (RESPONSE codes): */
    RB_WIRE_RECIPIENT_NOT_FOUND = 20,    /* nobody serves the destination */
    RB_WIRE_UNKNOWN_METHOD = 21,         /* the destination does not serve the method */
    RB_WIRE_CONNECTION_TIMEOUT = 22,     /* the responder did not ack within 7 s */
    RB_WIRE_RESPONSE_TIMEOUT = 23,       /* no response within the call's timeout */
    RB_WIRE_RECIPIENT_DISCONNECTED = 24, /* the responder went away mid-call */
    RB_WIRE_PAYLOAD_TOO_LARGE = 25,      /* request or response payload above the limit */
    RB_WIRE_APPLICATION_ERROR = 26,      /* the responder answered with an error */
    RB_WIRE_CANCELLED = 27,              /* the caller cancelled the call */
    RB_WIRE_ALREADY_REGISTERED = 28,     /* REGISTER of a method this connection serves */
    RB_WIRE_RESPONDER_BUSY = 29,         /* the responder has its limit of calls in flight */
    RB_WIRE_CODE_LAST = RB_WIRE_RESPONDER_BUSY,
} rb_wire_code;

/* Mutate add cursor kinds. */
#define RB_CURSOR_SEQ 0 /* deliver seq > cursor; 0 = from the beginning */
#define RB_CURSOR_NOW 1 /* no history: live from the current head */

/* Mutate flags byte. */
#define RB_MUTATE_HISTORY_ONLY 0x01u
/* PUBLISH_ACK flags: the publish repeated an idempotency key already
 * committed within the topic's dedup window; seq is the original's. */
#define RB_ACK_DUPLICATE 0x01u

/* STARTED capability bits. */
#define RB_CAP_STREAM  (1ull << 0)
#define RB_CAP_PUBLISH (1ull << 1)
#define RB_CAP_RPC     (1ull << 2)

/* REQUEST_ACK flags byte: a caller's cancel of its own call (corr_id is
 * the call's); without it the frame is a responder's ack. */
#define RB_REQUEST_ACK_CANCEL 0x01u

typedef struct rb_bytes {
    const uint8_t *ptr;
    size_t len;
} rb_bytes;

typedef struct rb_frame_header {
    uint32_t size;
    uint8_t version;
    uint8_t kind;
    uint16_t flags;
    uint64_t corr_id;
} rb_frame_header;

typedef struct rb_frame_iter {
    const uint8_t *pos;
    const uint8_t *end;
    uint32_t left;
} rb_frame_iter;

typedef struct rb_mutate_add {
    rb_bytes topic;
    uint8_t cursor_kind; /* RB_CURSOR_SEQ or RB_CURSOR_NOW */
    uint64_t cursor;     /* 0 when cursor_kind is RB_CURSOR_NOW */
} rb_mutate_add;

typedef struct rb_message_item {
    rb_bytes topic;
    uint64_t seq;
    rb_bytes payload;
} rb_message_item;

/* Body layouts (after the header), little-endian:
 *   topic   = u8 len (1..255) + bytes
 *   str16   = u16 len + bytes (UTF-8)
 *   blob16  = u16 len + bytes (opaque)
 *   blob32  = u32 len + bytes (opaque)
 * HELLO            u16 protocol_version, str16 client_name, blob16 credentials
 * STARTED          u32 keepalive_ms, u64 capabilities, u32 max_frame_bytes, str16 server_id,
 *                  [u64 epoch], [str16 client_id]
 * ERROR            u16 code, str16 message
 * PING, PONG       u64 nonce
 * CLOSE            u16 status, str16 message
 * PUBLISH          topic, u8 key_len + key (0 = none), blob32 payload
 * PUBLISH_ACK      topic, u64 seq, [u8 flags] (bit 0 RB_ACK_DUPLICATE)
 * MUTATE           u64 mutate_id, u8 flags, u32 add_count,
 *                  add_count x (topic, u8 cursor_kind, u64 cursor),
 *                  u32 remove_count, remove_count x topic, [u64 epoch]
 * MESSAGES         u64 mutate_id, u32 count, count x item
 *                  item = topic, u64 seq, blob32 payload
 * TOPICS_LIVE      u32 count, count x topic
 * CATCHUP_COMPLETE u64 mutate_id
 * TOPIC_ERROR      u64 mutate_id, topic, u16 code, str16 message
 * AUTH             blob16 credentials (client: new credentials; server: empty = accepted)
 *   name8  = u8 len + bytes (UTF-8; method and destination 1..255, service 0..255)
 * REGISTER,        name8 method, name8 service (0 bytes = the connection's own
 * UNREGISTER       client_id); the server echoes the frame when it is done
 * REQUEST          u32 timeout_ms, name8 peer (to the server: the destination;
 *                  to a responder: the caller's client_id), name8 method, blob32 payload
 * REQUEST_ACK      u8 flags (RB_REQUEST_ACK_CANCEL)
 * RESPONSE         u16 code (0 = ok), str16 message, blob32 payload
 * LAGGED           topic, u64 skipped (messages of an ephemeral topic dropped
 *                  for this reader, just before its next message of the topic)
 * [u64 epoch] is a field appended after the first release: a peer that
 * predates it omits it (decoded as 0 with has_epoch false); encoders always
 * write it. A body must be consumed exactly: trailing bytes are bad_frame.
 * Topics are only checked for length 1..255 here; rb_topic_validate checks
 * the rest. */
typedef struct rb_frame {
    rb_frame_header hdr;
    union {
        struct {
            uint16_t protocol_version;
            rb_bytes client_name;
            rb_bytes credentials;
        } hello;
        struct {
            uint32_t keepalive_ms;
            uint64_t capabilities;
            uint32_t max_frame_bytes;
            rb_bytes server_id;
            uint64_t epoch; /* the store's epoch; 0 when has_epoch is false */
            bool has_epoch;
            rb_bytes client_id; /* the connection's identity (<= 255 bytes) */
            bool has_client_id; /* false from a server that predates it */
        } started;
        struct {
            uint16_t code;
            rb_bytes message;
        } error;
        struct {
            uint64_t nonce;
        } ping; /* also PONG */
        struct {
            uint16_t status;
            rb_bytes message;
        } close;
        struct {
            rb_bytes topic;
            rb_bytes idempotency_key; /* len 0 = none */
            rb_bytes payload;
        } publish;
        struct {
            rb_bytes topic;
            uint64_t seq;
            uint8_t flags;  /* RB_ACK_*; 0 when has_flags is false */
            bool has_flags; /* false: a server that predates the flags */
        } publish_ack;
        struct {
            uint64_t mutate_id;
            uint8_t flags;
            uint32_t add_count;
            uint32_t remove_count;
            rb_bytes adds;    /* raw add list, walk with rb_frame_next_add */
            rb_bytes removes; /* raw topic list, walk with rb_frame_next_topic */
            uint64_t epoch;   /* epoch of the cursors; 0 = none known (or omitted) */
            bool has_epoch;
        } mutate;
        struct {
            uint64_t mutate_id;
            uint32_t count;
            rb_bytes items; /* raw item list, walk with rb_frame_next_item */
        } messages;
        struct {
            uint32_t count;
            rb_bytes topics; /* raw topic list, walk with rb_frame_next_topic */
        } topics_live;
        struct {
            uint64_t mutate_id;
        } catchup_complete;
        struct {
            uint32_t reconnect_delay_ms;
            rb_bytes message;
        } going_away;
        struct {
            uint64_t mutate_id;
            rb_bytes topic;
            uint16_t code;
            rb_bytes message;
        } topic_error;
        struct {
            rb_bytes topic;
            uint64_t skipped;
        } lagged;
        struct {
            rb_bytes credentials; /* rb_credentials_decode reads them */
        } auth;
        struct {
            rb_bytes method;
            rb_bytes service; /* len 0 = the connection's own client_id */
        } reg;                /* REGISTER and UNREGISTER */
        struct {
            uint32_t timeout_ms;
            rb_bytes peer; /* destination (to the server) or caller (to a responder) */
            rb_bytes method;
            rb_bytes payload;
        } request;
        struct {
            uint8_t flags;
        } request_ack;
        struct {
            uint16_t code;
            rb_bytes message;
            rb_bytes payload;
        } response;
    } u;
} rb_frame;

/* ---- decoding ---- */

/* Decodes the header at p. Returns 0; RB_EAGAIN when len < 16; or
 * RB_EPROTO with err->cause set to the wire code to send before closing:
 * RB_WIRE_BAD_FRAME (size below the header, nonzero flags),
 * RB_WIRE_TOO_LARGE (size above max_frame_bytes),
 * RB_WIRE_UNSUPPORTED_VERSION (version != RB_PROTOCOL_VERSION; checked after
 * size, so that the size is known to be sane), RB_WIRE_BAD_FRAME for a kind
 * this codec does not know (0, above RB_FRAME_KIND_LAST). */
int rb_frame_header_decode(const uint8_t *p, size_t len, uint32_t max_frame_bytes,
                           rb_frame_header *hdr, rb_err *err);

/* Decodes a whole frame at p (len >= the header's size; bytes past it are
 * ignored). Returns 0 with *f filled (views into p), RB_EAGAIN when len is
 * shorter than the header or the header's size, or RB_EPROTO with
 * err->cause = RB_WIRE_BAD_FRAME (structure, lengths, counts, trailing
 * bytes, invalid UTF-8 in a str16 or topic) or as rb_frame_header_decode. */
int rb_frame_decode(const uint8_t *p, size_t len, uint32_t max_frame_bytes, rb_frame *f,
                    rb_err *err);

/* Iterators over lists of a decoded frame. Each returns false at the end. */
void rb_frame_iter_init(rb_frame_iter *it, rb_bytes raw, uint32_t count);
bool rb_frame_next_add(rb_frame_iter *it, rb_mutate_add *out);
bool rb_frame_next_topic(rb_frame_iter *it, rb_bytes *out);
bool rb_frame_next_item(rb_frame_iter *it, rb_message_item *out);

/* ---- encoding ----
 * Every encoder writes one whole frame at out and returns its size, or 0
 * when it does not fit in cap (nothing useful is written then). Inputs must
 * be valid (lengths within their fields); encoders assert that. */
size_t rb_frame_encode_hello(uint8_t *out, size_t cap, uint64_t corr_id, uint16_t protocol_version,
                             rb_bytes client_name, rb_bytes credentials);
size_t rb_frame_encode_started(uint8_t *out, size_t cap, uint64_t corr_id, uint32_t keepalive_ms,
                               uint64_t capabilities, uint32_t max_frame_bytes, rb_bytes server_id,
                               uint64_t epoch);
/* STARTED with the appended client_id (the connection's identity, at most
 * RB_RPC_NAME_BYTES_MAX bytes), as the server sends it. */
size_t rb_frame_encode_started_client(uint8_t *out, size_t cap, uint64_t corr_id,
                                      uint32_t keepalive_ms, uint64_t capabilities,
                                      uint32_t max_frame_bytes, rb_bytes server_id, uint64_t epoch,
                                      rb_bytes client_id);
size_t rb_frame_encode_error(uint8_t *out, size_t cap, uint64_t corr_id, uint16_t code,
                             rb_bytes message);
size_t rb_frame_encode_ping(uint8_t *out, size_t cap, uint64_t corr_id, uint64_t nonce);
size_t rb_frame_encode_pong(uint8_t *out, size_t cap, uint64_t corr_id, uint64_t nonce);
size_t rb_frame_encode_close(uint8_t *out, size_t cap, uint64_t corr_id, uint16_t status,
                             rb_bytes message);
size_t rb_frame_encode_publish(uint8_t *out, size_t cap, uint64_t corr_id, rb_bytes topic,
                               rb_bytes idempotency_key, rb_bytes payload);
size_t rb_frame_encode_publish_ack(uint8_t *out, size_t cap, uint64_t corr_id, rb_bytes topic,
                                   uint64_t seq, uint8_t flags);
size_t rb_frame_encode_catchup_complete(uint8_t *out, size_t cap, uint64_t corr_id,
                                        uint64_t mutate_id);
/* GOING_AWAY: u32 reconnect_delay_ms, str16 message. */
size_t rb_frame_encode_going_away(uint8_t *out, size_t cap, uint64_t corr_id,
                                  uint32_t reconnect_delay_ms, rb_bytes message);
/* TOPIC_ERROR: a per-topic outcome of the wave mutate_id (0 outside a
 * wave); message is at most RB_SHORT_STRING_BYTES_MAX bytes. */
size_t rb_frame_encode_topic_error(uint8_t *out, size_t cap, uint64_t corr_id, uint64_t mutate_id,
                                   rb_bytes topic, uint16_t code, rb_bytes message);
size_t rb_frame_encode_auth(uint8_t *out, size_t cap, uint64_t corr_id, rb_bytes credentials);
/* LAGGED: skipped (>= 1) messages of the ephemeral topic were dropped for
 * this reader. */
size_t rb_frame_encode_lagged(uint8_t *out, size_t cap, uint64_t corr_id, rb_bytes topic,
                              uint64_t skipped);

/* RPC. kind is RB_FRAME_REGISTER or RB_FRAME_UNREGISTER; names are at most
 * RB_RPC_NAME_BYTES_MAX bytes (method and peer at least one). */
size_t rb_frame_encode_register(uint8_t *out, size_t cap, uint8_t kind, uint64_t corr_id,
                                rb_bytes method, rb_bytes service);
size_t rb_frame_encode_request(uint8_t *out, size_t cap, uint64_t corr_id, uint32_t timeout_ms,
                               rb_bytes peer, rb_bytes method, rb_bytes payload);
size_t rb_frame_encode_request_ack(uint8_t *out, size_t cap, uint64_t corr_id, uint8_t flags);
size_t rb_frame_encode_response(uint8_t *out, size_t cap, uint64_t corr_id, uint16_t code,
                                rb_bytes message, rb_bytes payload);
/* The heads of REQUEST and RESPONSE: everything up to the payload, for a
 * frame whose payload_len bytes follow on the wire (the payload is queued
 * without a copy into a frame buffer). Return the head's size or 0. */
size_t rb_frame_encode_request_head(uint8_t *out, size_t cap, uint64_t corr_id, uint32_t timeout_ms,
                                    rb_bytes peer, rb_bytes method, size_t payload_len);
size_t rb_frame_encode_response_head(uint8_t *out, size_t cap, uint64_t corr_id, uint16_t code,
                                     rb_bytes message, size_t payload_len);
/* Bytes of a REQUEST (RESPONSE) frame around its payload, at most. */
#define RB_FRAME_REQUEST_OVERHEAD_BYTES                                                            \
    (RB_FRAME_HEADER_BYTES + 4 + 2 * (1 + RB_RPC_NAME_BYTES_MAX) + 4)
#define RB_FRAME_RESPONSE_FIXED_BYTES (RB_FRAME_HEADER_BYTES + 2 + 2 + 4)

/* MUTATE: adds and removes as arrays; epoch is the store epoch the cursors
 * belong to (0 = none known). */
size_t rb_frame_encode_mutate(uint8_t *out, size_t cap, uint64_t corr_id, uint64_t mutate_id,
                              uint8_t flags, const rb_mutate_add *adds, uint32_t add_count,
                              const rb_bytes *removes, uint32_t remove_count, uint64_t epoch);

/* TOPICS_LIVE from an array of topics. */
size_t rb_frame_encode_topics_live(uint8_t *out, size_t cap, uint64_t corr_id,
                                   const rb_bytes *topics, uint32_t count);

/* MESSAGES is built in pieces so that an item block encoded once can be
 * shared by many frames (fan-out without copying payloads):
 *   rb_frame_messages_item_size(topic_len, payload_len) = 1+t+8+4+p
 *   rb_frame_encode_messages_item writes one item, returns its size or 0;
 *   rb_frame_encode_messages_head writes the header plus mutate_id and count
 *   (RB_FRAME_MESSAGES_HEAD_BYTES = 16+8+4 bytes) for a frame whose items
 *   take items_bytes; the items must follow it on the wire. */
#define RB_FRAME_MESSAGES_HEAD_BYTES (RB_FRAME_HEADER_BYTES + 8 + 4)
size_t rb_frame_messages_item_size(size_t topic_len, size_t payload_len);
size_t rb_frame_encode_messages_item(uint8_t *out, size_t cap, rb_bytes topic, uint64_t seq,
                                     rb_bytes payload);
size_t rb_frame_encode_messages_head(uint8_t *out, size_t cap, uint64_t corr_id, uint64_t mutate_id,
                                     uint32_t count, size_t items_bytes);

/* The largest payload of a message on topic_len bytes of topic that still
 * fits alone in one MESSAGES frame of max_frame_bytes: max_frame_bytes
 * minus RB_FRAME_MESSAGES_HEAD_BYTES minus the item's 13 + topic_len bytes.
 * A PUBLISH with a larger payload could never be delivered, so the server
 * refuses it with too_large (docs/PROTOCOL.md). */
size_t rb_frame_message_payload_max(uint32_t max_frame_bytes, size_t topic_len);

/* ---- credentials (HELLO and AUTH), docs/PROTOCOL.md section 6.5 ----
 * The frame decoder keeps credentials opaque (a blob16); the server reads
 * them with rb_credentials_decode when it authenticates. Layout:
 *   empty                       none (anonymous, or a client certificate)
 *   u8 1, u16 len + token       TOKEN: a JWS compact JWT, 1..RB_AUTH_TOKEN_BYTES_MAX
 *                               bytes of base64url and '.'
 *   u8 2, u8 len + user,        PASSWORD: user 1..255 bytes of UTF-8 without control
 *         u16 len + password    characters or spaces; password 1..RB_AUTH_PASSWORD_BYTES_MAX
 *                               opaque bytes
 * consumed exactly, like a frame body. */
typedef enum rb_cred_kind {
    RB_CRED_NONE = 0,
    RB_CRED_TOKEN = 1,
    RB_CRED_PASSWORD = 2,
} rb_cred_kind;

typedef struct rb_credentials {
    uint8_t kind;      /* rb_cred_kind */
    rb_bytes token;    /* TOKEN */
    rb_bytes user;     /* PASSWORD */
    rb_bytes password; /* PASSWORD */
} rb_credentials;

/* Decodes raw into *out (views into raw). Returns 0, or RB_EINVAL with
 * err->cause = RB_WIRE_UNAUTHORIZED and a message that names the field but
 * never echoes secret bytes (e.g. "credentials: token: byte 7 is not
 * base64url or '.'"). */
int rb_credentials_decode(rb_bytes raw, rb_credentials *out, rb_err *err);

/* Encoders: write the credentials at out and return their size, or 0 when
 * they do not fit in cap. Inputs must satisfy the rules above (asserted). */
size_t rb_credentials_encode_token(uint8_t *out, size_t cap, rb_bytes token);
size_t rb_credentials_encode_password(uint8_t *out, size_t cap, rb_bytes user, rb_bytes password);

/* ---- names and validation ---- */

/* "HELLO", "PUBLISH_ACK", ... or "UNKNOWN". */
const char *rb_frame_kind_name(uint8_t kind);
/* "ok", "bad_frame", "resource_exhausted", ... (DESIGN §3) or "unknown". */
const char *rb_wire_code_name(uint16_t code);
/* Inverse of rb_wire_code_name; returns 0 or -1. */
int rb_wire_code_parse(const char *name, uint16_t *code);

/* True when p[0..len) is well-formed UTF-8 (no overlongs, no surrogates,
 * nothing above U+10FFFF). */
bool rb_utf8_valid(const uint8_t *p, size_t len);

/* Checks a topic name: 1..255 bytes of UTF-8, no control characters
 * (C0, DEL, C1) and no spaces (U+0020 and other Unicode White_Space).
 * allow_reserved permits names starting with '$'. Returns 0 or RB_EINVAL
 * with a message naming the problem (e.g. "topic: contains a space at
 * byte 3"). */
int rb_topic_validate(rb_bytes topic, bool allow_reserved, rb_err *err);

#endif
