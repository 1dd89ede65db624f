/* RFC 6455 framing and the upgrade handshake's pieces for both roles,
 * sans I/O: the server's WebSocket layer (transports/ws.c) and the
 * client's ws/wss transports (client/transport_ws.c) share it, so there is
 * one frame parser, one frame writer, one Sec-WebSocket-Accept and one
 * base64 (wolfCrypt's). The parser reads the other role's frames: a server
 * requires them masked, a client refuses masked ones. It checks reserved
 * bits, opcodes (text is refused with 1003), the fragment sequence,
 * control frames (final, at most 125 bytes, Close payloads), and the
 * message size; it reassembles nothing and allocates nothing. Only
 * common/ is included, so libringbus links it without server code. */
#ifndef RB_TRANSPORTS_WSFRAME_H
#define RB_TRANSPORTS_WSFRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* The subprotocol a client must offer and a server selects. */
#define RB_WS_SUBPROTOCOL "ringbus.v1"
/* A frame header: 2 bytes, 8 of 64-bit length, 4 of mask. */
#define RB_WSFRAME_HEADER_BYTES_MAX 14
/* Control frame payloads are at most 125 bytes (RFC 6455 5.5). */
#define RB_WSFRAME_CONTROL_BYTES_MAX 125
/* Bytes of a Close reason we send: with the status it fits a control frame. */
#define RB_WSFRAME_REASON_BYTES_MAX 120
/* A Sec-WebSocket-Key: base64 of 16 bytes, and a NUL. */
#define RB_WSFRAME_KEY_BYTES 25
/* A Sec-WebSocket-Accept: base64 of a SHA-1, and a NUL. */
#define RB_WSFRAME_ACCEPT_BYTES 29

enum {
    RB_WS_OP_CONT = 0x0,
    RB_WS_OP_TEXT = 0x1,
    RB_WS_OP_BINARY = 0x2,
    RB_WS_OP_CLOSE = 0x8,
    RB_WS_OP_PING = 0x9,
    RB_WS_OP_PONG = 0xA,
};

typedef enum rb_wsframe_role {
    RB_WSFRAME_SERVER = 0, /* reads masked client frames */
    RB_WSFRAME_CLIENT,     /* reads unmasked server frames */
} rb_wsframe_role;

typedef enum rb_wsframe_kind {
    RB_WSFRAME_NONE = 0, /* the input is used up: nothing to report */
    RB_WSFRAME_DATA,     /* payload of a binary message (possibly 0 bytes at its edges) */
    RB_WSFRAME_PING,
    RB_WSFRAME_PONG,
    RB_WSFRAME_CLOSE, /* a valid Close: close_code (1005 if none), reason in data */
} rb_wsframe_kind;

typedef struct rb_wsframe_event {
    rb_wsframe_kind kind;
    const uint8_t *data; /* DATA: in the caller's out; control: in the parser */
    size_t len;
    bool message_begin;   /* DATA: a binary message starts (a 0-byte event) */
    bool message_end;     /* DATA: these bytes end the message */
    bool frame_fin;       /* DATA at message_begin: the first frame is the last */
    uint64_t frame_bytes; /* DATA at message_begin: the first frame's payload length */
    uint16_t close_code;
} rb_wsframe_event;

/* Parser state; zero it, then set role and message_bytes_max. */
typedef struct rb_wsframe_parser {
    rb_wsframe_role role;
    uint64_t message_bytes_max; /* 0: no bound */
    uint8_t hdr[RB_WSFRAME_HEADER_BYTES_MAX];
    uint32_t hdr_len;
    bool frame_open; /* a header was parsed and its payload is due */
    bool frame_fin;
    bool frame_masked;
    uint8_t frame_op;
    uint8_t mask[4];
    uint64_t frame_left;
    uint64_t frame_pos;
    bool in_message;
    uint64_t msg_bytes; /* payload bytes the message's frames declared so far */
    uint8_t ctl[RB_WSFRAME_CONTROL_BYTES_MAX];
    uint32_t ctl_len;
    bool failed;
    /* after an error: the Close to send */
    uint16_t fail_code;
    uint16_t fail_status; /* the ringbus status: err->cause */
    char fail_reason[RB_WSFRAME_REASON_BYTES_MAX + 1];
} rb_wsframe_parser;

void rb_wsframe_parser_init(rb_wsframe_parser *ps, rb_wsframe_role role,
                            uint64_t message_bytes_max);

/* Parses in[0..len) up to the next event: returns 0 with *used bytes taken
 * and *ev (RB_WSFRAME_NONE when all were taken and no event is due), or
 * RB_EPROTO, err->cause the ringbus status (bad_frame, too_large) and
 * fail_code / fail_reason the Close to answer with. Data payload goes
 * unmasked into out (out_cap > 0 bytes; an event carries at most that). */
int rb_wsframe_parse(rb_wsframe_parser *ps, const uint8_t *in, size_t len, size_t *used,
                     uint8_t *out, size_t out_cap, rb_wsframe_event *ev, rb_err *err);

/* Writes a frame header for a payload of len bytes into h
 * (RB_WSFRAME_HEADER_BYTES_MAX); masked with key unless key is NULL.
 * Returns its length. */
size_t rb_wsframe_header(uint8_t *h, uint8_t opcode, bool fin, uint64_t len, const uint8_t *key);

/* out = in XOR the key, starting at key byte pos % 4 (out may be in). */
void rb_wsframe_mask(uint8_t *out, const uint8_t *in, size_t len, const uint8_t key[4],
                     uint64_t pos);

/* A Close payload (status, then reason cut to RB_WSFRAME_REASON_BYTES_MAX
 * and dropped if the cut leaves it invalid UTF-8) into out
 * (2 + RB_WSFRAME_REASON_BYTES_MAX); reason may be NULL. Returns its length. */
size_t rb_wsframe_close_payload(uint8_t *out, uint16_t code, const char *reason);

/* Whether a Close status may be sent by a peer (RFC 6455 7.4). */
bool rb_wsframe_close_code_ok(uint16_t code);

/* ---- the handshake ---- */

/* Sec-WebSocket-Accept of a key: base64(SHA-1(key GUID)). key_len <= 128. */
void rb_wsframe_accept_key(const char *key, size_t key_len, char out[RB_WSFRAME_ACCEPT_BYTES]);

/* A Sec-WebSocket-Key from 16 random bytes. */
void rb_wsframe_client_key(const uint8_t nonce[16], char out[RB_WSFRAME_KEY_BYTES]);

/* Whether a Sec-WebSocket-Key is the base64 of 16 bytes. */
bool rb_wsframe_key_ok(const char *key, size_t key_len);

/* The client's upgrade request into out; returns its length (asserts it fits).
 * host is "host:port"; origin may be NULL. */
size_t rb_wsframe_client_request(char *out, size_t cap, const char *path, const char *host,
                                 const char *key, const char *origin);

/* Checks the server's answer head (a NUL-terminated string through the
 * empty line) against the accept value the key expects. Returns 0, or 1
 * when the status is not 101 (the caller reports the refusal), or -1 with
 * *why set when the 101 is wrong. */
int rb_wsframe_client_check_answer(const char *head, const char *accept, const char **why);

#endif
