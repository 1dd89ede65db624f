/* The replica plane's wire (DESIGN §2 "Replica plane"): the frames nodes of
 * a cluster exchange over their plain-TCP links, and the HMAC-SHA256
 * challenge-response that authenticates a link. Sans-I/O: this module
 * encodes and decodes bytes and computes MACs; the sockets, the link state
 * and what the frames mean are server/cluster.c's.
 *
 * A frame: u32 size (the whole frame, header included), u8 version
 * (RB_REPLICA_VERSION), u8 kind, u16 zero; then the body. Integers are
 * little-endian; strings are u8 length + bytes. docs/REPLICA.md lists
 * every byte.
 *
 * Handshake (the lower node id dials):
 *   dialer   -> HELLO{node_id, cluster_id, nonce_d}
 *   acceptor -> CHALLENGE{node_id, nonce_a, mac_a}
 *   dialer   -> AUTH{mac_d}                  (after checking mac_a)
 *   acceptor -> WELCOME{}                    (after checking mac_d)
 * with mac_x = HMAC-SHA256(secret, "ringbus-replica-1" | role x | u8 len |
 * cluster_id | u16 from | u16 to | nonce_d | nonce_a): both nonces are
 * fresh per connection, so a recorded handshake proves nothing later, and
 * the role byte keeps one side's MAC from answering for the other. */
#ifndef RB_TRANSPORTS_REPLICA_H
#define RB_TRANSPORTS_REPLICA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/frame.h"
#include "common/limits.h"

#define RB_REPLICA_VERSION      1
#define RB_REPLICA_HEADER_BYTES 8
#define RB_REPLICA_NONCE_BYTES  32
#define RB_REPLICA_MAC_BYTES    32

typedef enum rb_replica_kind {
    RB_REPLICA_HELLO = 1,
    RB_REPLICA_CHALLENGE = 2,
    RB_REPLICA_AUTH = 3,
    RB_REPLICA_WELCOME = 4,
    RB_REPLICA_INTEREST = 5, /* {u8 on, str topic}: this node's live subscribers */
    RB_REPLICA_BATCH = 6,    /* {str topic, u64 first, u64 last, u32 count, items} */
    RB_REPLICA_PING = 7,     /* {}: keepalive */
    RB_REPLICA_KIND_LAST = 7
} rb_replica_kind;

/* The fixed part of a BATCH frame before its topic and items. */
#define RB_REPLICA_BATCH_HEAD_BYTES (RB_REPLICA_HEADER_BYTES + 1 + 8 + 8 + 4)

typedef struct rb_replica_hello {
    uint16_t node_id;
    rb_bytes cluster_id; /* points into the frame */
    uint8_t nonce[RB_REPLICA_NONCE_BYTES];
} rb_replica_hello;

typedef struct rb_replica_challenge {
    uint16_t node_id;
    uint8_t nonce[RB_REPLICA_NONCE_BYTES];
    uint8_t mac[RB_REPLICA_MAC_BYTES];
} rb_replica_challenge;

typedef struct rb_replica_batch {
    rb_bytes topic; /* points into the frame */
    uint64_t first_seq;
    uint64_t last_seq;
    uint32_t count;
    rb_bytes items; /* encoded MESSAGES items (common/frame.h), checked */
} rb_replica_batch;

/* A decoded frame; its byte fields point into the decoded buffer. */
typedef struct rb_replica_frame {
    rb_replica_kind kind;
    union {
        rb_replica_hello hello;
        rb_replica_challenge challenge;
        uint8_t mac[RB_REPLICA_MAC_BYTES]; /* AUTH */
        struct {
            bool on;
            rb_bytes topic;
        } interest;
        rb_replica_batch batch;
    } u;
} rb_replica_frame;

/* Reads the header at p (len >= RB_REPLICA_HEADER_BYTES): *size is the whole
 * frame's. Returns 0, or RB_EPROTO with err naming what is wrong (a size
 * outside [header, max_bytes], another version, an unknown kind). */
int rb_replica_header(const uint8_t *p, size_t len, uint32_t max_bytes, uint32_t *size,
                      rb_err *err);

/* Decodes the whole frame at p (size bytes, its header's size). Every
 * length is checked against the frame; a BATCH's items must be count
 * well-formed items of its topic with seqs first..last in order. Returns 0
 * or RB_EPROTO with err naming the kind and the fault. */
int rb_replica_decode(const uint8_t *p, size_t size, rb_replica_frame *f, rb_err *err);

/* Encoders: write one whole frame into out (cap bytes); return its size,
 * or 0 when it does not fit (or an argument is out of range). */
size_t rb_replica_encode_hello(uint8_t *out, size_t cap, uint16_t node_id, rb_bytes cluster_id,
                               const uint8_t nonce[RB_REPLICA_NONCE_BYTES]);
size_t rb_replica_encode_challenge(uint8_t *out, size_t cap, uint16_t node_id,
                                   const uint8_t nonce[RB_REPLICA_NONCE_BYTES],
                                   const uint8_t mac[RB_REPLICA_MAC_BYTES]);
size_t rb_replica_encode_auth(uint8_t *out, size_t cap, const uint8_t mac[RB_REPLICA_MAC_BYTES]);
size_t rb_replica_encode_empty(uint8_t *out, size_t cap, rb_replica_kind kind);
size_t rb_replica_encode_interest(uint8_t *out, size_t cap, bool on, rb_bytes topic);
/* A BATCH's head only: the items (items_bytes of them) follow it on the
 * wire from the block they live in, uncopied. */
size_t rb_replica_encode_batch_head(uint8_t *out, size_t cap, rb_bytes topic, uint64_t first_seq,
                                    uint64_t last_seq, uint32_t count, uint32_t items_bytes);

/* The MAC of one side of the handshake (role 'D' dialer, 'A' acceptor). */
void rb_replica_mac(const uint8_t *secret, size_t secret_len, char role, rb_bytes cluster_id,
                    uint16_t from, uint16_t to, const uint8_t nonce_d[RB_REPLICA_NONCE_BYTES],
                    const uint8_t nonce_a[RB_REPLICA_NONCE_BYTES],
                    uint8_t out[RB_REPLICA_MAC_BYTES]);

/* Compares two MACs in time independent of where they differ. */
bool rb_replica_mac_equal(const uint8_t a[RB_REPLICA_MAC_BYTES],
                          const uint8_t b[RB_REPLICA_MAC_BYTES]);

/* Fills a fresh nonce from the kernel's random source. Returns 0 or
 * RB_ESYS. */
int rb_replica_nonce(uint8_t out[RB_REPLICA_NONCE_BYTES], rb_err *err);

/* The kind's name for logs ("hello", ..., "unknown"). */
const char *rb_replica_kind_name(uint32_t kind);

#endif
