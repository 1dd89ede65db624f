/* The QUIC engine (ngtcp2 0.12 + GnuTLS): sans-I/O, one per shard on the
 * server and one per connection in the client. Datagrams go in with
 * rb_quic_engine_recv and come out through the handler's send sink; the
 * owner keeps the sockets, the clock and the timer (rb_quic_engine_expiry
 * in nanoseconds, so loss recovery gets sub-millisecond wake-ups) and calls
 * rb_quic_engine_write after input or expiry; pacing is ngtcp2's
 * (ngtcp2_conn_update_pkt_tx_time after every burst).
 *
 * TLS 1.3 only, no 0-RTT (the server never enables early data), ALPN
 * ringbus/1 or h3. Under ringbus/1 the engine owns the stream policy:
 * exactly one client-initiated bidirectional stream (the "bus stream")
 * carries the bus protocol; any other stream is reset and stopped with
 * RB_QUIC_STREAM_REFUSED, and a peer that keeps opening them is closed.
 * Under h3 the owner attaches an app (transports/h3.c) that sees every
 * stream. The engine does version negotiation, stateless resets, Retry
 * (quic_retry: tokens authenticated with the per-process secret, bound to
 * the client's address, valid RB_QUIC_RETRY_TOKEN_MS) and bounds the
 * handshakes in progress. Server connection IDs carry the owner id (the
 * shard) in their first two bytes so a datagram can be routed to its owner
 * before any decryption (rb_quic_dcid_owner).
 *
 * Stream bytes are never copied: rb_quic_bus_send queues a reference and
 * the caller keeps the bytes until the handler's bus_acked callback
 * releases them. Received bytes are handed to bus_recv; flow control
 * reopens only when the owner reports consumption (rb_quic_bus_consumed),
 * so a slow reader stalls its peer instead of growing a buffer.
 *
 * ngtcp2 and GnuTLS types stay in quic.c. An engine is used by one thread. */
#ifndef RB_TRANSPORTS_QUIC_H
#define RB_TRANSPORTS_QUIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/err.h"
#include "common/limits.h"

typedef struct rb_quic_engine rb_quic_engine;
typedef struct rb_quic_conn rb_quic_conn;

/* The ALPN protocols. */
#define RB_QUIC_ALPN_RINGBUS_TEXT "ringbus/1"
#define RB_QUIC_ALPN_H3_TEXT      "h3"

/* Server connection IDs: 2 bytes of owner id, then random bytes. */
#define RB_QUIC_SCID_BYTES 16
/* Owner ids fit the two bytes. */
#define RB_QUIC_OWNER_MAX 65535u
/* The per-process secret that keys stateless reset tokens and Retry
 * tokens; every engine of a process shares it, so any shard can answer for
 * any other. */
#define RB_QUIC_SECRET_BYTES 32
/* The engine's bounds (RB_QUIC_..._MAX, _DEFAULT) are in common/limits.h. */

/* The application error code a refused stream is reset with. CONNECTION_
 * CLOSE frames carry RB_WIRE_ codes (0..255) as application errors; stream
 * errors use codes above them. */
#define RB_QUIC_STREAM_REFUSED 0x100u

typedef enum rb_quic_role {
    RB_QUIC_SERVER = 0,
    RB_QUIC_CLIENT = 1,
} rb_quic_role;

typedef enum rb_quic_alpn {
    RB_QUIC_ALPN_NONE = 0,
    RB_QUIC_ALPN_RINGBUS = 1,
    RB_QUIC_ALPN_H3 = 2,
} rb_quic_alpn;

/* A socket address as the owner's socket layer sees it. */
typedef struct rb_quic_addr {
    struct sockaddr_storage ss;
    socklen_t len;
} rb_quic_addr;

/* The local and remote address of a datagram. */
typedef struct rb_quic_path {
    rb_quic_addr local;
    rb_quic_addr remote;
} rb_quic_path;

/* How a connection ended, for the owner's log and its close status. */
typedef struct rb_quic_end {
    bool by_peer;          /* CONNECTION_CLOSE or stateless reset from the peer */
    bool app_error;        /* code is the peer's application error (an RB_WIRE_ code) */
    uint64_t code;         /* the QUIC transport or application error code */
    const char *why;       /* a fixed phrase ("idle timeout", "stateless reset", ...) */
    const uint8_t *reason; /* the peer's reason phrase (unescaped!), may be NULL */
    size_t reason_len;
} rb_quic_end;

typedef struct rb_quic_vec {
    const uint8_t *base;
    size_t len;
} rb_quic_vec;

/* What the owner hears from the engine. Callbacks run from inside
 * rb_quic_engine_recv, _write, _timeout and rb_quic_client_connect; they
 * must not call rb_quic_engine_recv or _write themselves. */
typedef struct rb_quic_handler {
    /* A datagram to send on path, valid during the call. Returns 0, or
     * RB_ELIMIT when the owner has no room (the datagram counts as lost). */
    int (*send)(void *ctx, const rb_quic_path *path, const uint8_t *p, size_t len);
    /* The handshake completed with alpn. Returning nonzero closes the
     * connection with RB_WIRE_UNAVAILABLE (the owner has no room). */
    int (*established)(void *ctx, rb_quic_conn *qc, rb_quic_alpn alpn);
    /* Bus stream bytes in order (ringbus/1), valid during the call; fin
     * when the peer ended the stream. The owner takes them all and reports
     * with rb_quic_bus_consumed when it has processed them. */
    void (*bus_recv)(void *ctx, rb_quic_conn *qc, const uint8_t *p, size_t len, bool fin);
    /* The peer acknowledged the next len bytes of the bus stream: the
     * oldest bytes given to rb_quic_bus_send are the owner's again. */
    void (*bus_acked)(void *ctx, rb_quic_conn *qc, uint64_t len);
    /* The connection is over for the owner (peer close, reset, idle or
     * handshake timeout, a protocol error). It runs once per connection
     * that was established or had a user set, never after the owner's own
     * rb_quic_conn_close; afterwards qc is the engine's (it drains and is
     * freed) and the engine holds no reference to the owner's bytes. */
    void (*closed)(void *ctx, rb_quic_conn *qc, const rb_quic_end *end);
    void *ctx;
} rb_quic_handler;

/* A per-connection application for ALPN h3 (see transports/h3.h). All
 * return 0 or a negative value that closes the connection with
 * RB_WIRE_INTERNAL (err says why). */
typedef struct rb_quic_app_ops {
    /* Stream bytes from the peer; the app extends flow control itself with
     * rb_quic_stream_consumed. */
    int (*recv)(void *app, int64_t stream_id, const uint8_t *p, size_t len, bool fin);
    /* len more bytes of stream_id were acknowledged, in order. */
    int (*acked)(void *app, int64_t stream_id, uint64_t len);
    /* The peer reset its sending side of the stream (RESET_STREAM). */
    int (*reset)(void *app, int64_t stream_id, uint64_t app_error);
    /* The peer asked us to stop sending on the stream (STOP_SENDING). */
    int (*stop_sending)(void *app, int64_t stream_id, uint64_t app_error);
    /* The stream is closed in both directions. */
    int (*closed)(void *app, int64_t stream_id, uint64_t app_error);
    /* Flow control on stream_id opened again. */
    int (*unblock)(void *app, int64_t stream_id);
    /* The next stream data to send: sets *stream_id (-1: none), *fin and up
     * to vec_max vectors; returns the vector count or a negative value. */
    int (*pull)(void *app, int64_t *stream_id, bool *fin, rb_quic_vec *vec, size_t vec_max);
    /* len bytes (and the fin, when fin) of stream_id went into a packet. */
    int (*pushed)(void *app, int64_t stream_id, size_t len, bool fin);
    /* The stream may not send now (flow control or it was shut). */
    void (*blocked)(void *app, int64_t stream_id);
} rb_quic_app_ops;

typedef struct rb_quic_config {
    rb_quic_role role;
    uint32_t owner_id; /* server: encoded in its connection IDs (<= RB_QUIC_OWNER_MAX) */
    uint8_t secret[RB_QUIC_SECRET_BYTES]; /* server: shared by the process's engines */
    /* server: PEM certificate (chain allowed) and key */
    const char *cert_file;
    const char *key_file;
    bool retry;                   /* server: answer Initials without a token with Retry */
    uint32_t conns_max;           /* connections (server; the client has one) */
    uint32_t handshakes_max;      /* server: handshakes in progress; more are refused */
    uint32_t send_refs_max;       /* bus stream: rb_quic_bus_send calls not yet acknowledged */
    uint32_t stream_window_bytes; /* receive window per stream, and 4x per connection */
    uint32_t idle_ms;             /* QUIC idle timeout */
    uint32_t handshake_ms;        /* handshake deadline */
    /* client: the CA file (NULL: the system store), skip verification,
     * the server's name (checked against its certificate; sent as SNI
     * unless it is an address literal), the ALPN to offer */
    const char *ca_file;
    bool insecure;
    const char *server_name;
    rb_quic_alpn alpn;
    /* client, tests: the QUIC version offered (0: version 1) */
    uint32_t client_version;
} rb_quic_config;

/* Fills cfg with the defaults of role. */
void rb_quic_config_default(rb_quic_config *cfg, rb_quic_role role);

/* Fills secret with random bytes (GnuTLS's generator). Returns 0 or
 * RB_ESYS. */
int rb_quic_secret_generate(uint8_t secret[RB_QUIC_SECRET_BYTES], rb_err *err);

/* Makes an engine. cfg's strings are borrowed for the call only; handler
 * is copied. Allocates the connection table, the CID index and the timer
 * heap for cfg->conns_max. Returns 0 and *out (owned by the caller, see
 * rb_quic_engine_free), RB_ECONFIG naming the file and the reason when the
 * certificate or key cannot be used, or RB_ENOMEM. */
int rb_quic_engine_new(rb_quic_engine **out, const rb_quic_config *cfg,
                       const rb_quic_handler *handler, rb_err *err);

/* Frees every connection (no callbacks run) and the engine. */
void rb_quic_engine_free(rb_quic_engine *e);

/* One datagram in, at now_ns (CLOCK_MONOTONIC). It is decoded, routed to
 * its connection by destination CID, or answered statelessly (version
 * negotiation, Retry, stateless reset, a refusal) or dropped. Callbacks
 * may run. Returns 0; bad datagrams are counted, never errors. */
int rb_quic_engine_recv(rb_quic_engine *e, const rb_quic_path *path, const uint8_t *p, size_t len,
                        uint64_t now_ns);

/* Writes what every connection touched since the last call has to send
 * (handshake, acks, stream data, closes), within pacing. */
void rb_quic_engine_write(rb_quic_engine *e, uint64_t now_ns);

/* The earliest instant a connection needs rb_quic_engine_timeout, in
 * CLOCK_MONOTONIC nanoseconds; UINT64_MAX when none. */
uint64_t rb_quic_engine_expiry(const rb_quic_engine *e);

/* Runs every expired timer (loss recovery, pacing, idle and handshake
 * timeouts, the end of closing and draining periods) and writes. */
void rb_quic_engine_timeout(rb_quic_engine *e, uint64_t now_ns);

/* Counters for tests, logs and metrics. */
typedef struct rb_quic_stats {
    uint64_t datagrams_in;
    uint64_t datagrams_out;
    uint64_t dropped; /* undecodable, unknown, or refused datagrams */
    uint64_t version_negotiations;
    uint64_t retries;
    uint64_t retry_token_bad;
    uint64_t stateless_resets;
    uint64_t handshakes_refused; /* the handshake limit or the table was full */
    uint64_t streams_refused;
    uint32_t conns;      /* live connections (not draining) */
    uint32_t handshakes; /* handshakes in progress */
} rb_quic_stats;

void rb_quic_engine_stats(const rb_quic_engine *e, rb_quic_stats *out);

/* Reads the owner id from a datagram's destination CID when it may be one
 * the server issued (short header, or a version 1 Initial or Handshake
 * packet, with a CID of RB_QUIC_SCID_BYTES): a client that moves during the
 * handshake still reaches the engine that holds its connection. Returns 0
 * and *owner, or RB_EINVAL when the datagram names no owner (another CID
 * length, 0-RTT, Retry, another version: any engine may take it). */
int rb_quic_dcid_owner(const uint8_t *p, size_t len, uint32_t *owner);

/* Client: starts the handshake on path (local may be unspecified: its
 * family must match remote). Returns 0 and *out (the engine's; the handler
 * hears about it), or RB_ENOMEM / RB_EINVAL / RB_ELIMIT. */
int rb_quic_client_connect(rb_quic_engine *e, const rb_quic_path *path, uint64_t now_ns,
                           rb_quic_conn **out, rb_err *err);

/* Client: the local address changed (a rebinding, a new socket); the next
 * packets leave from it and the server validates the new path. */
int rb_quic_conn_migrate(rb_quic_conn *qc, const rb_quic_addr *local, uint64_t now_ns, rb_err *err);

/* The owner's pointer on a connection (NULL until set). */
void rb_quic_conn_set_user(rb_quic_conn *qc, void *user);
void *rb_quic_conn_user(const rb_quic_conn *qc);
rb_quic_alpn rb_quic_conn_alpn(const rb_quic_conn *qc);
/* The remote address of the connection's current path. */
const rb_quic_addr *rb_quic_conn_remote(const rb_quic_conn *qc);

/* Queues len bytes on the bus stream. The bytes are borrowed until
 * bus_acked covers them. Returns 0, RB_ELIMIT when send_refs_max
 * references are outstanding (the caller waits for acks), or RB_ECLOSED
 * when the stream or connection is gone. Sent at the next write. */
int rb_quic_bus_send(rb_quic_conn *qc, const uint8_t *p, size_t len, rb_err *err);

/* Bus stream bytes given to rb_quic_bus_send and not yet acknowledged. */
uint64_t rb_quic_bus_unacked(const rb_quic_conn *qc);

/* The owner processed len more bytes from bus_recv: the peer may send as
 * many more (stream and connection flow control). */
void rb_quic_bus_consumed(rb_quic_conn *qc, size_t len);

/* Ends the bus stream for sending (FIN after the queued bytes). */
void rb_quic_bus_finish(rb_quic_conn *qc);

/* Closes the connection now with a CONNECTION_CLOSE carrying wire_status
 * as its application error code and reason (at most 255 bytes are sent).
 * The owner's bytes are released at once (no bus_acked follows) and no
 * callback runs for qc again; the engine keeps the connection through its
 * closing period and frees it. now_ns 0 reads CLOCK_MONOTONIC. */
void rb_quic_conn_close(rb_quic_conn *qc, uint16_t wire_status, const char *reason,
                        uint64_t now_ns);

/* ---- for the h3 app ---- */

/* Attaches app to an h3 connection (from the established callback). */
void rb_quic_conn_set_app(rb_quic_conn *qc, const rb_quic_app_ops *ops, void *app);

/* Opens a unidirectional stream from this endpoint. Returns 0 and
 * *stream_id, or RB_ELIMIT when the peer allows no more. */
int rb_quic_stream_open_uni(rb_quic_conn *qc, int64_t *stream_id, rb_err *err);

/* Opens a bidirectional stream from this endpoint (an h3 client, tests).
 * Returns 0 and *stream_id, or RB_ELIMIT when the peer allows no more. */
int rb_quic_stream_open_bidi(rb_quic_conn *qc, int64_t *stream_id, rb_err *err);

/* The app processed len more bytes of stream_id. */
void rb_quic_stream_consumed(rb_quic_conn *qc, int64_t stream_id, size_t len);

/* Resets stream_id and asks the peer to stop sending, with app_error. */
void rb_quic_stream_shutdown(rb_quic_conn *qc, int64_t stream_id, uint64_t app_error);

/* Stops reading stream_id (STOP_SENDING with app_error). */
void rb_quic_stream_shutdown_read(rb_quic_conn *qc, int64_t stream_id, uint64_t app_error);

/* Marks the connection as having something to send (the app queued
 * data outside a callback). */
void rb_quic_conn_want_write(rb_quic_conn *qc);

/* Closes the connection with a transport-independent application error
 * (an h3 error code), like rb_quic_conn_close. */
void rb_quic_conn_close_app(rb_quic_conn *qc, uint64_t app_error, const char *reason,
                            uint64_t now_ns);

#endif
