/* A link carries one client session's bytes: a TCP socket with its tls/ws
 * layers today (server/link_tcp.c), a QUIC stream or a test's fake link
 * tomorrow. The session (server/session.c) speaks the client protocol over
 * it and never knows which kind of link it has: it calls the link through
 * rb_link_ops, and the link calls the session through the rb_session_*
 * functions below. Both run on the shard thread that owns the session.
 *
 * Bytes to send sit in the session's send queue until the link releases
 * them: a TCP link releases what the socket (or its layers) took, a link
 * that must resend until acknowledged releases on the peer's ack. */
#ifndef RB_SERVER_LINK_H
#define RB_SERVER_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server/sendq.h"
#include "server/server.h"
#include "transports/layer.h"

/* "[address]:port" of the peer, for logs. */
#define RB_LINK_PEER_BYTES_MAX 64

typedef struct rb_link_ops {
    /* The session queued bytes (or the link asked for a pass with
     * rb_session_want_send): write what can be written now. Runs at the
     * end of the turn, never from inside another rb_session_* call. */
    void (*start_send)(rb_link *l);
    /* The session reads no more frames. A link may still read to discard
     * (a layered link reads until the peer's FIN, so its last frames are
     * not destroyed by a reset). */
    void (*stop_reading)(rb_link *l);
    /* The session holds a frame (rb_session_hold): hold true asks the link
     * to read nothing more for now, so the peer's flow control backs it
     * off; bytes the link already has it keeps, or gives the session
     * (which keeps up to hold_bytes_max). Hold false: deliver what was
     * kept, in order, then read again. May call the session back. */
    void (*hold_reading)(rb_link *l, bool hold);
    /* Once everything queued is written, the link ends the stream in
     * order: its layers write their closing bytes (with wire_status), then
     * the write side shuts. The link calls rb_session_link_down when done. */
    void (*shutdown)(rb_link *l, uint16_t wire_status);
    /* Closes now and cancels the link's operations; afterwards the link
     * calls rb_session_link_released once it holds nothing (perhaps before
     * close returns). The session calls no op after this one. */
    void (*close)(rb_link *l);
    /* True when frames can pass (the link's handshakes are done). */
    bool (*ready)(const rb_link *l);
    /* Optional: the verified client certificate's subject CN (see
     * rb_layer_ops.peer_cert_name); 0 = none. */
    size_t (*peer_cert_name)(const rb_link *l, char *out, size_t cap);
    /* True while the link only reads to discard, waiting for the peer to
     * close after everything was sent. */
    bool (*lingering)(const rb_link *l);
    /* Bytes the link holds outside the session's send queue (encoded, not
     * yet written), for logs. */
    uint64_t (*unsent_bytes)(const rb_link *l);
    /* Bytes at the head of the session's send queue that the link has
     * handed on (a write in flight) without releasing them yet: the
     * session must not change them. */
    uint64_t (*busy_bytes)(const rb_link *l);
} rb_link_ops;

struct rb_link {
    const rb_link_ops *ops;
    rb_transport_kind kind;
    /* True when the link has a handshake of its own whose peer expects an
     * answer: at shutdown a session still waiting for HELLO closes through
     * the link (an HTTP 503 to a pending upgrade) instead of being cut. */
    bool answers_before_hello;
    /* Input bytes the link may still deliver after hold_reading(true):
     * the session keeps them (more fails the connection). */
    uint32_t hold_bytes_max;
    char peer[RB_LINK_PEER_BYTES_MAX];
};

/* ---- for links: the session side ---- */

/* Takes a free session slot of shard sh for link l, in the HELLO
 * handshake, with its timers armed. NULL when the table is full (the link
 * refuses the peer). The session keeps l until rb_session_link_released. */
rb_conn *rb_session_open(rb_shard *sh, rb_link *l);

/* True while the session takes frame bytes. */
bool rb_session_reading(const rb_conn *c);

/* Frame bytes from the peer (any split); decoded and dispatched. */
void rb_session_recv(rb_conn *c, const uint8_t *p, size_t len);

/* The session's send queue (server/sendq.h). The link writes from its
 * written cursor (rb_sendq_peek, rb_sendq_written) and releases what the
 * peer acknowledged or what it needs no more (rb_sendq_release); the
 * session only appends. */
rb_sendq *rb_session_sendq(rb_conn *c);

/* Everything queued was written and the link holds nothing more. */
void rb_session_send_drained(rb_conn *c);

/* Asks for a start_send at the end of the turn. */
void rb_session_want_send(rb_conn *c);

/* A layer ended the input cleanly: the session flushes and shuts down. */
void rb_session_ended(rb_conn *c, rb_layer_end how, const char *why);

/* For logging a connection-level error: " (peer ADDRESS)" the first time
 * it is asked for on c, "" afterwards, so every connection's address is in
 * the log once, on its first error line. */
const char *rb_session_peer_once(rb_conn *c);

/* The peer sent something the link rejects: ERROR and CLOSE with code. */
void rb_session_fail(rb_conn *c, uint16_t code, const char *msg);

/* The peer closed its side. The session closes unless it is finishing
 * its own close or a half-close drain. */
void rb_session_peer_eof(rb_conn *c);

/* The link is gone (error, reset, or its shutdown is complete): the
 * session closes at once; the link's close op follows. */
void rb_session_link_down(rb_conn *c);

/* After close: the link holds nothing; the session slot may be reused. */
void rb_session_link_released(rb_conn *c);

/* ---- server/link_tcp.c ---- */

/* Bytes of one TCP link slot (for the memory formula). */
size_t rb_link_tcp_bytes(void);

/* The shard's TCP links, one per session slot. */
int rb_link_tcp_table_init(rb_shard *sh, rb_err *err);
void rb_link_tcp_table_deinit(rb_shard *sh);

/* Takes over an fd accepted on listener l: TCP_NODELAY, the tls/ws layers
 * (started on the owning shard, before any byte is read), a session and the
 * multishot receive. counted: the acceptor already added it to the shard's
 * load. A refused fd gets an ERROR (plain tcp) and is closed. */
void rb_link_tcp_adopt(rb_shard *sh, int fd, const rb_listener *l, bool counted);

/* ---- server/quic_ep.c: the shard's UDP endpoints for quic listeners, a
 * subsystem (rb_quic_subsystem in server/server.h) ---- */

/* ---- server/link_quic.c: a session over a QUIC connection's bus stream ---- */

typedef struct rb_quic_conn rb_quic_conn;
typedef struct rb_quic_end rb_quic_end;

int rb_link_quic_table_init(rb_shard *sh, rb_err *err);
void rb_link_quic_table_deinit(rb_shard *sh);
/* A ringbus/1 connection finished its handshake on listener l: a session
 * starts on it. Returns 0, or -1 when the session table is full. */
int rb_link_quic_open(rb_shard *sh, const rb_listener *l, rb_quic_conn *qc);
/* Engine events for the connection's link. */
void rb_link_quic_recv(rb_quic_conn *qc, const uint8_t *p, size_t len, bool fin);
void rb_link_quic_acked(rb_quic_conn *qc, uint64_t len);
void rb_link_quic_gone(rb_quic_conn *qc, const rb_quic_end *end);

#endif
