/* libringbus: the C client of the ringbus message bus.
 *
 * A client opens a connection to a ringbusd server, publishes messages to
 * named topics (each acknowledged with its per-topic sequence number once it
 * is committed) and reads one long-lived, mutable subscription stream: it
 * adds topics, each with a cursor, and removes them; for each added topic the
 * server sends the history after the cursor, marks the topic live, then
 * streams new messages, with no gap and no duplicate.
 *
 * Threading: a ringbus_conn is not thread-safe. Use each connection from one
 * thread at a time (callbacks run on the thread that called into the
 * connection). Distinct connections are independent and may be used from
 * different threads at the same time. The library keeps no global mutable
 * state.
 *
 * I/O model: the connection is a nonblocking socket. Either poll
 * ringbus_fd() yourself (POLLIN, plus POLLOUT when ringbus_want_write() is
 * true) and call ringbus_process(conn, 0, err) when it is ready, or use the
 * blocking conveniences (ringbus_next_event, ringbus_publish_sync,
 * ringbus_ping), which always take a timeout.
 *
 * Errors: fallible functions return 0 (or a documented count) on success and
 * a negative RINGBUS_E... code on failure, and fill *err when err is not
 * NULL. Every pointer argument is borrowed for the duration of the call only,
 * unless stated otherwise. */
#ifndef RINGBUS_H
#define RINGBUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks what the shared library exports: libringbus is built with hidden
 * visibility and a version script, so ringbus_* functions are its only
 * dynamic symbols. */
#if defined(__GNUC__)
#define RINGBUS_API __attribute__((visibility("default")))
#else
#define RINGBUS_API
#endif

/* ---- errors ---- */

/* Library error codes (negative; 0 is success). */
enum {
    RINGBUS_OK = 0,
    RINGBUS_ESYS = -1,         /* a system call failed; sys_errno says why */
    RINGBUS_EINVAL = -2,       /* an argument is malformed, or the call is not allowed now */
    RINGBUS_ELIMIT = -3,       /* the request exceeds a fixed limit (e.g. max_frame_bytes) */
    RINGBUS_EPROTO = -4,       /* the server broke the protocol; wire_code says how */
    RINGBUS_ECLOSED = -5,      /* the connection is closed or half-closed */
    RINGBUS_ENOMEM = -6,       /* memory allocation failed */
    RINGBUS_EUNSUPPORTED = -8, /* the URL scheme or feature is not supported yet */
    RINGBUS_EAGAIN = -9,       /* the publish window or send buffer is full: process, retry */
    RINGBUS_ETIMEDOUT = -10,   /* a timeout expired */
    RINGBUS_ESERVER = -100,    /* the server refused the request; wire_code says why */
};

/* Stable wire codes, carried by ERROR frames and CLOSE statuses. */
enum {
    RINGBUS_WIRE_OK = 0,
    RINGBUS_WIRE_BAD_FRAME = 1,
    RINGBUS_WIRE_UNSUPPORTED_VERSION = 2,
    RINGBUS_WIRE_UNAUTHORIZED = 3,
    RINGBUS_WIRE_FORBIDDEN = 4,
    RINGBUS_WIRE_TOO_LARGE = 5,
    RINGBUS_WIRE_RESOURCE_EXHAUSTED = 6,
    RINGBUS_WIRE_DEADLINE_EXCEEDED = 7,
    RINGBUS_WIRE_UNAVAILABLE = 8,
    RINGBUS_WIRE_INVALID_TOPIC = 9,
    RINGBUS_WIRE_INTERNAL = 10,
    RINGBUS_WIRE_INVALID_ARGUMENT = 11,
    RINGBUS_WIRE_GOING_AWAY = 12,
    RINGBUS_WIRE_OUT_OF_RANGE = 13,   /* TOPIC_ERROR: cursor older than retained */
    RINGBUS_WIRE_EPOCH_MISMATCH = 14, /* TOPIC_ERROR: cursor from another store epoch */
    RINGBUS_WIRE_CURSOR_AHEAD = 15,   /* TOPIC_ERROR: cursor beyond the topic's head */
    RINGBUS_WIRE_DEDUP_FULL = 18,     /* publish: the idempotency-key table is full */
    /* RPC outcomes (ringbus_call_result.code). */
    RINGBUS_WIRE_RECIPIENT_NOT_FOUND = 20,    /* nobody serves the destination */
    RINGBUS_WIRE_UNKNOWN_METHOD = 21,         /* the destination does not serve the method */
    RINGBUS_WIRE_CONNECTION_TIMEOUT = 22,     /* no ack from the responder within 7 s */
    RINGBUS_WIRE_RESPONSE_TIMEOUT = 23,       /* no response within the call's timeout */
    RINGBUS_WIRE_RECIPIENT_DISCONNECTED = 24, /* the responder went away mid-call */
    RINGBUS_WIRE_PAYLOAD_TOO_LARGE = 25,      /* request or response above the limit */
    RINGBUS_WIRE_APPLICATION_ERROR = 26,      /* the responder answered with an error */
    RINGBUS_WIRE_CANCELLED = 27,              /* ringbus_call_cancel */
    RINGBUS_WIRE_ALREADY_REGISTERED = 28,     /* the connection already serves the method */
    RINGBUS_WIRE_RESPONDER_BUSY = 29,         /* the responder has its limit in flight */
};

#define RINGBUS_ERROR_MESSAGE_BYTES 256

typedef struct ringbus_error {
    int code;      /* RINGBUS_E..., 0 = no error */
    int sys_errno; /* errno for RINGBUS_ESYS, else 0 */
    int wire_code; /* RINGBUS_WIRE_... for RINGBUS_ESERVER and RINGBUS_EPROTO, else 0 */
    char message[RINGBUS_ERROR_MESSAGE_BYTES]; /* what failed, on what, and why */
} ringbus_error;

/* The name of a RINGBUS_E... code ("ESYS", "ETIMEDOUT", ...; "EUNKNOWN" for
 * anything else). Returns a static string. Thread-safe. */
RINGBUS_API const char *ringbus_error_name(int code);

/* The stable name of a wire code ("ok", "invalid_topic",
 * "resource_exhausted", ...; "unknown" for anything else). Returns a static
 * string. Thread-safe. */
RINGBUS_API const char *ringbus_wire_code_name(int wire_code);

/* The library version: a semantic version, with the commit as build
 * metadata when it was built from a git checkout, e.g. "0.2.0" or
 * "0.2.0+g1a2b3c4" (the same string as `ringbusd --version`, `ringbus
 * --version` and ringbus.pc of the same build). Static string. Thread-safe. */
RINGBUS_API const char *ringbus_version(void);

/* ---- events ---- */

typedef enum ringbus_event_kind {
    RINGBUS_EVENT_MESSAGE = 1,          /* a message of a subscribed topic */
    RINGBUS_EVENT_TOPICS_LIVE = 2,      /* topics that finished catch-up and are now live */
    RINGBUS_EVENT_CATCHUP_COMPLETE = 3, /* every topic of a Mutate's wave is live or done */
    RINGBUS_EVENT_ERROR = 4,            /* an uncorrelated or Mutate error from the server */
    RINGBUS_EVENT_CLOSED = 5,           /* the connection is closed; always the last event */
    RINGBUS_EVENT_TOPIC_ERROR = 6,      /* one topic of a wave (or a live topic) left the stream */
    RINGBUS_EVENT_REQUEST = 7,          /* a call to a method this connection serves */
    RINGBUS_EVENT_RESPONSE = 8,         /* the one outcome of a ringbus_call */
    RINGBUS_EVENT_RECONNECTING = 9,     /* session: the connection is lost; retrying */
    RINGBUS_EVENT_RECONNECTED = 10,     /* session: connected again; topics re-added */
    RINGBUS_EVENT_LAGGED = 11,          /* an ephemeral topic dropped messages for this reader */
} ringbus_event_kind;

/* Correlation ids of Mutates are RINGBUS_CORR_MUTATE | mutate_id, so that an
 * ERROR event's corr_id names the Mutate it answers. */
#define RINGBUS_CORR_MUTATE (UINT64_C(1) << 63)
/* Correlation ids of AUTH frames (ringbus_refresh_token) carry this bit. */
#define RINGBUS_CORR_AUTH (UINT64_C(1) << 62)
/* Calls (ringbus_call) and REGISTER/UNREGISTER carry these. */
#define RINGBUS_CORR_CALL     (UINT64_C(1) << 61)
#define RINGBUS_CORR_REGISTER (UINT64_C(1) << 60)

/* One event. All pointers are owned by the connection. With an event
 * callback they are valid until the callback returns; with
 * ringbus_next_event they are valid until the next call on the connection.
 * Strings are NUL-terminated; payloads are not. */
typedef struct ringbus_event {
    ringbus_event_kind kind;
    /* MESSAGE: the topic, its seq and the payload. mutate_id is the wave of
     * a history message, 0 for a live one. */
    const char *topic;
    size_t topic_len;
    uint64_t seq;
    const void *payload;
    size_t payload_len;
    /* MESSAGE (see above), CATCHUP_COMPLETE and TOPIC_ERROR. */
    uint64_t mutate_id;
    /* TOPICS_LIVE: topic_count NUL-terminated names. */
    const char *const *topics;
    size_t topic_count;
    /* ERROR: code and message; corr_id is the request it answers (0 = none).
     * An ERROR answering a Mutate means the Mutate changed nothing.
     * TOPIC_ERROR: a per-topic outcome of an accepted Mutate: topic (and
     * topic_len) names the topic, which is no longer on the stream; code is
     * RINGBUS_WIRE_OUT_OF_RANGE (cursor older than retained, or retention
     * overtook the catch-up), RINGBUS_WIRE_EPOCH_MISMATCH,
     * RINGBUS_WIRE_CURSOR_AHEAD, RINGBUS_WIRE_UNAVAILABLE (storage) or
     * RINGBUS_WIRE_RESOURCE_EXHAUSTED; mutate_id is the wave (0 for a live
     * topic), which still ends with its CATCHUP_COMPLETE. Resume such a
     * topic from a cursor you choose (0 for all retained history) with a
     * new Mutate.
     * CLOSED: code is the close status (RINGBUS_WIRE_OK after a clean
     * close) and message says why. A connection that fails locally (reset,
     * bad frame) reports RINGBUS_WIRE_UNAVAILABLE or the protocol error. */
    int code;
    const char *message;
    uint64_t corr_id;
    /* REQUEST: corr_id is the request id to pass to ringbus_request_ack
     * and ringbus_respond; method and caller (the calling connection's
     * client id) are NUL-terminated; payload and payload_len the request;
     * timeout_ms how long the caller waits (answer within it).
     * RESPONSE: corr_id is the call id ringbus_call returned; code is 0 or
     * the outcome's wire code (RINGBUS_WIRE_APPLICATION_ERROR for the
     * responder's own error, RINGBUS_WIRE_RESPONSE_TIMEOUT, ...), message
     * says why, payload and payload_len the answer. */
    const char *method;
    const char *caller;
    uint32_t timeout_ms;
    /* RECONNECTING (sessions only): code and message say why the
     * connection was lost or why the last attempt failed; attempt counts
     * the attempts since the last connection (1 = the first) and delay_ms
     * is how long the session waits before it.
     * RECONNECTED: message is the URL connected to; mutate_id is the first
     * wave that re-adds the session's topics (0 when it has none), whose
     * CATCHUP_COMPLETE follows; attempt is the number of attempts it took. */
    uint32_t attempt;
    uint32_t delay_ms;
    /* LAGGED: the server dropped `skipped` (>= 1) messages of the
     * ephemeral topic (topic, topic_len) for this slow reader, the oldest
     * it held; they were the ones just before its next MESSAGE of the
     * topic, whose seq is the last seq seen + skipped + 1. Not an error:
     * the stream stays open and live. */
    uint64_t skipped;
} ringbus_event;

/* Receives events when set in ringbus_options. It runs inside
 * ringbus_process, ringbus_publish_sync, ringbus_ping and the other waiting
 * calls. From inside it, only ringbus_publish, ringbus_mutate,
 * ringbus_half_close, ringbus_call, ringbus_call_cancel,
 * ringbus_request_ack, ringbus_respond and the accessors may be called on
 * the same connection; other calls return RINGBUS_EINVAL (ringbus_close
 * must not be called). ctx is the options' event_ctx. */
typedef void (*ringbus_event_cb)(const ringbus_event *ev, void *ctx);

/* ---- connecting ---- */

typedef struct ringbus_options {
    /* Sent in HELLO; NULL means "libringbus". Borrowed during connect. */
    const char *client_name;
    /* Credentials sent in HELLO as they are (at most 65535 bytes), in the
     * format of docs/PROTOCOL.md §6.5 (empty, a token, or a user and
     * password); NULL = none. The server checks what is sent and answers a
     * refusal with RINGBUS_WIRE_UNAUTHORIZED; NULL is refused only by a
     * server with auth.mode = "required". Borrowed during connect. */
    const void *credentials;
    size_t credentials_len;
    /* Bounds the name lookup, TCP connect and HELLO -> STARTED. 0 = 10000. */
    int connect_timeout_ms;
    /* Bounds ringbus_publish_sync and ringbus_ping. 0 = 30000. */
    int request_timeout_ms;
    /* Publishes in flight (sent, not yet acknowledged). 0 = 4096; at most
     * 1048576. */
    uint32_t publish_window;
    /* Bytes of encoded frames waiting to be written. 0 = 8 MiB; at least
     * 64 KiB. A single frame larger than this is refused (RINGBUS_ELIMIT). */
    size_t send_buffer_bytes;
    /* Without an event callback, events are queued for ringbus_next_event.
     * Once this many bytes of received frames are queued, the connection
     * stops reading (so the server sees backpressure, never loss) until
     * events are consumed. 0 = 64 MiB. */
    size_t event_queue_bytes;
    /* Optional event callback and its context (see ringbus_event_cb). */
    ringbus_event_cb on_event;
    void *event_ctx;
    /* tls:// and wss://: the PEM bundle of CAs the server certificate must
     * chain to; NULL = the system store (/etc/ssl/certs/ca-certificates.crt).
     * Borrowed during connect. */
    const char *tls_ca_file;
    /* tls:// and wss://: skip verifying the server certificate and name.
     * Only for tests and debugging: anyone on the path can then read and
     * change the traffic. */
    bool tls_insecure;
    /* ws:// and wss://: the Origin header of the WebSocket upgrade request,
     * e.g. "https://app.example.com", for servers whose listener has an
     * `origins` allow-list (a listener with origins refuses an upgrade
     * without a listed Origin). NULL = no Origin header. 1..255 bytes of
     * printable ASCII without spaces, else RINGBUS_EINVAL. Ignored by
     * other schemes. Borrowed during connect. */
    const char *ws_origin;
    /* Sign-in (docs/PROTOCOL.md 6.5), instead of raw credentials: a JWT
     * (1..8192 bytes of base64url and '.'), or a user name (1..255 bytes
     * of UTF-8, no spaces or control characters) with a password
     * (1..1024 bytes). At most one of credentials, token and user; user
     * needs password. Else RINGBUS_EINVAL. Borrowed during connect. */
    const char *token;
    const char *user;
    const void *password;
    size_t password_len;
    /* tls:// and wss://: a client certificate (PEM file, the chain may
     * follow) and its private key (PEM file), for listeners with
     * client_ca. Both or neither. Borrowed during connect. */
    const char *tls_cert_file;
    const char *tls_key_file;
    /* tls:// and wss://: the TLS library, RINGBUS_TLS_OPENSSL (0, the
     * default: OpenSSL 3, AES-NI) or RINGBUS_TLS_WOLFSSL. Anything else is
     * RINGBUS_EINVAL. */
    int tls_library;
} ringbus_options;

#define RINGBUS_TLS_OPENSSL 0
#define RINGBUS_TLS_WOLFSSL 1

/* Fills *options with the defaults (all zero/NULL). */
RINGBUS_API void ringbus_options_init(ringbus_options *options);

typedef struct ringbus_conn ringbus_conn;

/* Connects to url and completes the handshake (TLS, the WebSocket upgrade,
 * then HELLO -> STARTED), blocking for at most options->connect_timeout_ms.
 * URLs: tcp://host[:port] (default port 7400), IPv6 as tcp://[::1]:7400;
 * tls://host[:port] (7401); ws://host[:port][/path] (7402; without a path
 * the path is /ringbus, the server's default; "ws://host/" asks for "/");
 * wss://host[:port][/path] (7403, the same paths).
 * tls:// and wss:// verify the server certificate against the system store
 * or options->tls_ca_file and check that it names host; host is sent as
 * SNI. quic://host[:port] (7404/udp) runs the same protocol on one QUIC
 * stream (TLS 1.3 with ALPN ringbus/1, verified the same way); the fd of
 * ringbus_fd is then an epoll fd that also wakes for QUIC's timers.
 * options may be NULL (defaults); url and options are borrowed. On success
 * returns 0 and stores a new connection in *conn, owned by the caller until
 * ringbus_close. On failure returns RINGBUS_EINVAL (bad URL or options),
 * RINGBUS_EUNSUPPORTED, RINGBUS_ESYS (e.g. connection refused),
 * RINGBUS_ETIMEDOUT, RINGBUS_ESERVER (the server answered ERROR, e.g.
 * resource_exhausted at its connection limit; err->wire_code says which) or
 * RINGBUS_EPROTO, and leaves *conn NULL. */
RINGBUS_API int ringbus_connect(const char *url, const ringbus_options *options,
                                ringbus_conn **conn, ringbus_error *err);

/* Closes the connection at once (without the CLOSE handshake; see
 * ringbus_half_close for a clean close) and frees it. Publish callbacks still
 * pending run with RINGBUS_ECLOSED before it returns; no event callback runs.
 * conn may be NULL. Must not be called from a callback. */
RINGBUS_API void ringbus_close(ringbus_conn *conn);

/* Handshake results, valid for the connection's life. server_id is owned by
 * the connection (NUL-terminated). */
RINGBUS_API uint32_t ringbus_keepalive_ms(const ringbus_conn *conn);
RINGBUS_API uint32_t ringbus_max_frame_bytes(const ringbus_conn *conn);
RINGBUS_API uint64_t ringbus_capabilities(const ringbus_conn *conn);
RINGBUS_API const char *ringbus_server_id(const ringbus_conn *conn);
/* The store epoch from STARTED (nonzero; 0 from a server that predates
 * epochs). Cursors count seqs of one epoch: keep the epoch with the cursors
 * you save and pass it to ringbus_mutate_epoch when you resume. The memory
 * store gets a new epoch each time ringbusd starts; a Postgres database
 * keeps its epoch. */
RINGBUS_API uint64_t ringbus_epoch(const ringbus_conn *conn);

/* ---- polling ---- */

/* The socket to poll for readability, or -1 once the connection is closed.
 * Owned by the connection: do not read, write or close it. */
RINGBUS_API int ringbus_fd(const ringbus_conn *conn);

/* True when buffered output is waiting: poll for POLLOUT too. Also true
 * when a TLS or WebSocket layer already holds input that poll cannot see
 * (the socket is then writable, so the poll returns at once and the next
 * ringbus_process reads it): always ask for POLLOUT when this is true. */
RINGBUS_API bool ringbus_want_write(const ringbus_conn *conn);

/* Writes buffered output (one write), reads what is available, answers
 * server PINGs, runs publish callbacks and dispatches events to the event
 * callback or queues them. Waits at most timeout_ms (>= 0; 0 = do not wait)
 * for input when none is buffered. Returns the number of events dispatched
 * or queued (0 is normal), or RINGBUS_ECLOSED once the connection is closed
 * and its CLOSED event has been produced, RINGBUS_EINVAL from a callback,
 * RINGBUS_ENOMEM. Transport and protocol failures are not returned: they
 * close the connection and produce a CLOSED event. */
RINGBUS_API int ringbus_process(ringbus_conn *conn, int timeout_ms, ringbus_error *err);

/* Writes buffered output once without blocking. Returns 0 (output may
 * remain; see ringbus_want_write) or RINGBUS_ECLOSED. */
RINGBUS_API int ringbus_flush(ringbus_conn *conn, ringbus_error *err);

/* Returns the next event, waiting at most timeout_ms (>= 0) for it. Only
 * without an event callback (else RINGBUS_EINVAL). Returns 1 with *ev filled
 * (its pointers valid until the next call on the connection), 0 when the
 * timeout expired, RINGBUS_ECLOSED after the CLOSED event was returned, or
 * another negative code. */
RINGBUS_API int ringbus_next_event(ringbus_conn *conn, ringbus_event *ev, int timeout_ms,
                                   ringbus_error *err);

/* ---- publishing ---- */

typedef struct ringbus_publish_result {
    int status;          /* 0, RINGBUS_ESERVER (see wire_code) or RINGBUS_ECLOSED */
    int wire_code;       /* RINGBUS_WIRE_... when status is RINGBUS_ESERVER */
    const char *message; /* why, when status != 0; "" otherwise */
    const char *topic;   /* acknowledged topic; "" when status != 0 */
    size_t topic_len;
    uint64_t seq;     /* the message's seq when status is 0 */
    uint64_t corr_id; /* the publish's correlation id */
    /* status 0: the publish repeated an idempotency key the server had
     * already committed within its dedup window, and seq is the original's
     * (docs/PROTOCOL.md 7.1); false from servers that predate the flag. */
    bool duplicate;
} ringbus_publish_result;

/* Runs exactly once per accepted publish. res and its strings are owned by
 * the library and valid until the callback returns. */
typedef void (*ringbus_publish_cb)(const ringbus_publish_result *res, void *ctx);

/* Queues a PUBLISH of payload to topic (1..255 bytes; the server checks the
 * rest of the name) without waiting. topic and payload are copied before it
 * returns. Publishes pipeline: at most options->publish_window may be in
 * flight. The frame is written by the next ringbus_process or ringbus_flush
 * (or now, when the send buffer is full). cb (may be NULL) runs later,
 * exactly once, never before this returns, from ringbus_process (or another
 * processing call) with the seq or the error, or with RINGBUS_ECLOSED if the
 * connection closes first. Returns 0 and stores the correlation id in
 * *corr_id (may be NULL); RINGBUS_EAGAIN when the window or the send buffer
 * is full (process, then retry); RINGBUS_ELIMIT when the frame exceeds
 * max_frame_bytes; RINGBUS_EINVAL; RINGBUS_ECLOSED. On failure cb never runs. */
RINGBUS_API int ringbus_publish(ringbus_conn *conn, const char *topic, size_t topic_len,
                                const void *payload, size_t payload_len, uint64_t *corr_id,
                                ringbus_error *err, ringbus_publish_cb cb, void *ctx);

/* As ringbus_publish, with an idempotency key (key_len 0..255 bytes; 0 =
 * none, the same as ringbus_publish; key may be NULL then): the server
 * applies a publish at most once per (topic, key) within its dedup window
 * (docs/PROTOCOL.md 7.1), and a retry is acknowledged with the original seq
 * and res->duplicate set. key is copied before it returns. */
RINGBUS_API int ringbus_publish_key(ringbus_conn *conn, const char *topic, size_t topic_len,
                                    const void *key, size_t key_len, const void *payload,
                                    size_t payload_len, uint64_t *corr_id, ringbus_error *err,
                                    ringbus_publish_cb cb, void *ctx);

/* Publishes and waits (at most options->request_timeout_ms) for the ack.
 * Events that arrive meanwhile are dispatched or queued as usual. Returns 0
 * with the seq in *seq (may be NULL), RINGBUS_ESERVER (err->wire_code says
 * why, e.g. RINGBUS_WIRE_INVALID_TOPIC), RINGBUS_ETIMEDOUT, or as
 * ringbus_publish (RINGBUS_EAGAIN is waited out, not returned). */
RINGBUS_API int ringbus_publish_sync(ringbus_conn *conn, const char *topic, size_t topic_len,
                                     const void *payload, size_t payload_len, uint64_t *seq,
                                     ringbus_error *err);

/* ---- the subscription stream ---- */

typedef struct ringbus_add {
    const char *topic; /* NUL-terminated, 1..255 bytes */
    uint64_t cursor;   /* the last seq the client has; 0 = all that is retained */
    bool is_now;       /* true: no history, live from now (cursor ignored) */
} ringbus_add;

/* Queues one MUTATE: removes apply before adds, atomically. mutate_id is
 * 1..2^63-1 when adds is not empty (0..2^63-1 without adds; the top bit is
 * RINGBUS_CORR_MUTATE), else RINGBUS_EINVAL, and must never equal a wave
 * still in flight (with or without adds; the server refuses that); the
 * server answers with MESSAGE events (history carries mutate_id),
 * TOPICS_LIVE, TOPIC_ERROR for a topic whose cursor the store cannot
 * honour, then one CATCHUP_COMPLETE(mutate_id); or an ERROR event whose
 * corr_id is RINGBUS_CORR_MUTATE | mutate_id, and then nothing of the Mutate
 * applied. The cursors carry no epoch (see ringbus_mutate_epoch).
 * history_only adds deliver the
 * history up to the current head and never go live. All arrays and strings
 * are copied before it returns. Returns 0, RINGBUS_EINVAL, RINGBUS_ELIMIT
 * (frame too large), RINGBUS_EAGAIN (send buffer full), RINGBUS_ECLOSED. */
RINGBUS_API int ringbus_mutate(ringbus_conn *conn, uint64_t mutate_id, const ringbus_add *adds,
                               size_t add_count, const char *const *removes, size_t remove_count,
                               bool history_only, ringbus_error *err);

/* As ringbus_mutate, with the epoch the adds' cursors belong to (as
 * ringbus_epoch returned when they were received; 0 = none known, the same
 * as ringbus_mutate). An add whose cursor (other than 0 and now) is from
 * another epoch is refused alone with a TOPIC_ERROR event
 * (RINGBUS_WIRE_EPOCH_MISMATCH); the rest of the Mutate applies. */
RINGBUS_API int ringbus_mutate_epoch(ringbus_conn *conn, uint64_t mutate_id, uint64_t epoch,
                                     const ringbus_add *adds, size_t add_count,
                                     const char *const *removes, size_t remove_count,
                                     bool history_only, ringbus_error *err);

/* ---- request/reply between clients (docs/PROTOCOL.md section 12) ---- */

/* The connection's identity from STARTED, which other clients call it by
 * (a server-assigned "anon-N" for an anonymous connection; "" from a server
 * that predates RPC). Owned by the connection. */
RINGBUS_API const char *ringbus_client_id(const ringbus_conn *conn);

/* Serves method (1..255 bytes) under service (NULL or "" = this
 * connection's client id; else a service name whose responders share the
 * calls) and waits (at most options->request_timeout_ms, processing other
 * frames) for the server to accept it. Calls then arrive as REQUEST events.
 * Returns 0; RINGBUS_ESERVER with err->wire_code
 * RINGBUS_WIRE_ALREADY_REGISTERED, RINGBUS_WIRE_FORBIDDEN,
 * RINGBUS_WIRE_INVALID_ARGUMENT or RINGBUS_WIRE_RESOURCE_EXHAUSTED;
 * RINGBUS_EINVAL; RINGBUS_ETIMEDOUT; RINGBUS_ECLOSED. */
RINGBUS_API int ringbus_register(ringbus_conn *conn, const char *method, const char *service,
                                 ringbus_error *err);
/* Stops serving method under service, as ringbus_register. */
RINGBUS_API int ringbus_unregister(ringbus_conn *conn, const char *method, const char *service,
                                   ringbus_error *err);

/* Queues a call of method at destination (a client id or a service name)
 * with payload, waiting at most timeout_ms (0 = 10000; at most 600000) for
 * the response. The outcome arrives exactly once as a RESPONSE event whose
 * corr_id is *call_id (may be NULL). Strings and payload are copied.
 * Returns 0; RINGBUS_EINVAL; RINGBUS_ELIMIT (the frame exceeds
 * max_frame_bytes); RINGBUS_EAGAIN (send buffer full); RINGBUS_ECLOSED. */
RINGBUS_API int ringbus_call(ringbus_conn *conn, const char *destination, const char *method,
                             const void *payload, size_t payload_len, uint32_t timeout_ms,
                             uint64_t *call_id, ringbus_error *err);

typedef struct ringbus_call_result {
    int code;            /* 0, or the outcome's wire code */
    const char *message; /* "" or why; owned by the connection */
    const void *payload; /* the answer; owned by the connection */
    size_t payload_len;
} ringbus_call_result;

/* Calls and waits for the outcome (other events are dispatched or queued
 * meanwhile). The result is valid until the next call on the connection.
 * Returns 0 when the responder answered ok; RINGBUS_ESERVER when the
 * outcome is an error (res->code and err->wire_code say which, e.g.
 * RINGBUS_WIRE_RECIPIENT_NOT_FOUND, RINGBUS_WIRE_APPLICATION_ERROR);
 * RINGBUS_ETIMEDOUT when not even the server's timeout answer came; or as
 * ringbus_call. Not from a callback. */
RINGBUS_API int ringbus_call_sync(ringbus_conn *conn, const char *destination, const char *method,
                                  const void *payload, size_t payload_len, uint32_t timeout_ms,
                                  ringbus_call_result *res, ringbus_error *err);

/* Cancels call call_id: its RESPONSE event then carries
 * RINGBUS_WIRE_CANCELLED (unless the outcome was already on its way).
 * Returns 0, RINGBUS_EAGAIN, RINGBUS_ECLOSED. */
RINGBUS_API int ringbus_call_cancel(ringbus_conn *conn, uint64_t call_id, ringbus_error *err);

/* Tells the server a REQUEST (request_id = the event's corr_id) arrived;
 * without it within 7 s the caller gets RINGBUS_WIRE_CONNECTION_TIMEOUT.
 * Returns 0, RINGBUS_EAGAIN, RINGBUS_ECLOSED. */
RINGBUS_API int ringbus_request_ack(ringbus_conn *conn, uint64_t request_id, ringbus_error *err);

/* Answers request request_id: code 0 with payload, or
 * RINGBUS_WIRE_APPLICATION_ERROR with message (NULL = "") and optional
 * payload. A response before the ack is accepted. Returns 0; RINGBUS_EINVAL
 * (another code); RINGBUS_ELIMIT; RINGBUS_EAGAIN; RINGBUS_ECLOSED. */
RINGBUS_API int ringbus_respond(ringbus_conn *conn, uint64_t request_id, int code,
                                const char *message, const void *payload, size_t payload_len,
                                ringbus_error *err);

/* ---- keepalive and closing ---- */

/* Replaces the connection's token before it expires (docs/PROTOCOL.md
 * 6.5): sends AUTH with token and waits (at most options->request_timeout_ms,
 * processing other frames meanwhile) for the server's answer. The token must
 * name the same sub as the one the connection signed in with. Returns 0
 * once the server accepted it; RINGBUS_ESERVER with err->wire_code
 * RINGBUS_WIRE_UNAUTHORIZED when refused (the server then closes the
 * connection); RINGBUS_EINVAL for a malformed token or from a callback;
 * RINGBUS_ETIMEDOUT; RINGBUS_ECLOSED. token is borrowed. */
RINGBUS_API int ringbus_refresh_token(ringbus_conn *conn, const char *token, ringbus_error *err);

/* Sends a PING and waits (at most options->request_timeout_ms) for its
 * PONG. Returns 0 with the round-trip time in *rtt_ns (may be NULL),
 * RINGBUS_ETIMEDOUT, RINGBUS_ECLOSED. */
RINGBUS_API int ringbus_ping(ringbus_conn *conn, uint64_t *rtt_ns, ringbus_error *err);

/* Queues CLOSE(ok) and flushes: the server finishes in-flight waves, sends
 * what remains, then closes with CLOSE(ok), which arrives as the CLOSED
 * event. Publishing and mutating are refused afterwards (RINGBUS_ECLOSED).
 * Returns 0 or RINGBUS_ECLOSED. */
RINGBUS_API int ringbus_half_close(ringbus_conn *conn, ringbus_error *err);

/* ---- the resilient session ---- */

/* A session is a connection that survives failures: it keeps a list of
 * server URLs, reconnects after a loss (exponential backoff with full
 * jitter), re-adds every topic after the last seq it delivered, and re-sends
 * the publishes that were in flight with their idempotency keys, so that the
 * application sees every message once, in order, and every publish is
 * acknowledged exactly once and stored once (within the server's dedup
 * window, docs/PROTOCOL.md 7.1).
 *
 * Threading and ownership: as ringbus_conn (one thread at a time, callbacks
 * on the calling thread, borrowed arguments unless stated otherwise).
 * Reconnecting runs inside ringbus_session_process and
 * ringbus_session_next_event and blocks them for at most
 * connect_timeout_ms per attempt.
 *
 * Topics are the session's stable handles: the session remembers each
 * topic's last delivered seq (ringbus_session_cursor) across connections;
 * a topic leaves the session when the application removes it, when a
 * TOPIC_ERROR event reports it, or when a history-only add is complete.
 * A topic added at "now" that has delivered nothing yet is re-added at
 * "now": messages published while the session was away are then not
 * delivered for it. Give a cursor (0 for all retained) where that matters.
 *
 * Every publish takes a place in the server's idempotency-key table for
 * the dedup window: a topic published faster than dedup.keys_per_topic /
 * dedup.window_ms (65 536 per 2 min, about 546 per second, by default)
 * gets `dedup_full` refusals, which reach the publish callback; size the
 * server's [dedup] section for the publish rate (docs/OPERATIONS.md). */

/* The session's wave ids (RECONNECTED's mutate_id, the waves that re-add
 * topics) carry this bit; the application's own mutate_ids must not. */
#define RINGBUS_SESSION_WAVE (UINT64_C(1) << 62)

/* Optional cursor store: load returns true and fills *cursor and *epoch
 * when it holds topic's cursor (it then replaces the add's cursor and
 * is_now); save runs after each message the session delivers. ctx is the
 * options' cursor_ctx. Both run on the session's thread, outside no lock;
 * they must not call the session. */
typedef bool (*ringbus_cursor_load_cb)(const char *topic, uint64_t *cursor, uint64_t *epoch,
                                       void *ctx);
typedef void (*ringbus_cursor_save_cb)(const char *topic, uint64_t seq, uint64_t epoch, void *ctx);

#define RINGBUS_SESSION_URLS_MAX 16

typedef struct ringbus_session_options {
    /* 1..RINGBUS_SESSION_URLS_MAX server URLs (as ringbus_connect), tried
     * in turn: a loss moves to the next one first. Copied at open. */
    const char *const *urls;
    size_t url_count;
    /* Options of every connection (NULL = defaults); their on_event and
     * event_ctx are ignored (the session's own are below). Credentials,
     * token, password and file names are copied at open, and cleared from
     * the session's memory when it is closed. */
    const ringbus_options *conn;
    /* true: a loss ends the session with CLOSED, as a plain connection. */
    bool no_reconnect;
    /* true: open succeeds even when no URL answers (it returns 0 and the
     * session starts reconnecting); false: open fails with the last
     * connect error. Non-retryable errors fail open either way. */
    bool retry_initial_connect;
    /* The delay before reconnect attempt n is uniform in
     * [0, min(cap, base * 2^(n-1))] ms. 0 = 100 and 10000. */
    uint32_t reconnect_base_ms;
    uint32_t reconnect_cap_ms;
    /* Failed attempts in a row before the session gives up with CLOSED
     * (RINGBUS_WIRE_UNAVAILABLE). 0 = never give up. */
    uint32_t reconnect_attempts_max;
    /* How often one publish may be re-sent (after a loss or an
     * `unavailable` answer) before it fails to the application. 0 = 8. */
    uint32_t publish_reissue_max;
    /* A publish first sent longer ago than this is not re-sent (it fails
     * with RINGBUS_ECLOSED): keep it well inside the server's dedup window
     * (`[dedup] window_ms`, 2 min by default), after which a re-send would
     * be stored again. A publish never sent waits any time. 0 = 60000. */
    uint32_t publish_retry_ms;
    /* Bytes of topics, keys and payloads kept for publishes not yet
     * acknowledged, including those waiting for a connection (one buffer
     * allocated at open, about 80 bytes of bookkeeping per publish besides).
     * 0 = 8 MiB. The count is bounded by conn->publish_window (0 = 4096).
     * Beyond either, ringbus_session_publish returns RINGBUS_EAGAIN. */
    size_t publish_buffer_bytes;
    /* Topics the session follows at most. 0 = 100000 (the server's default
     * limits.topics_per_stream). */
    uint32_t topics_max;
    /* A connection that sends nothing for this long is probed with a PING
     * after two thirds of it and replaced after all of it. 0 = three times
     * the server's keepalive_ms from STARTED; the watchdog is off when that
     * is 0. */
    uint32_t watchdog_ms;
    ringbus_event_cb on_event; /* NULL: events queue for ringbus_session_next_event */
    void *event_ctx;
    ringbus_cursor_load_cb cursor_load;
    ringbus_cursor_save_cb cursor_save;
    void *cursor_ctx;
} ringbus_session_options;

typedef struct ringbus_session ringbus_session;

/* Fills *options with the defaults (all zero/NULL). */
RINGBUS_API void ringbus_session_options_init(ringbus_session_options *options);

/* Connects to the first URL that answers (each tried once, in order) and
 * returns 0 with a new session in *session, owned by the caller until
 * ringbus_session_close. Fails with RINGBUS_EINVAL (no URL, too many,
 * bad options), the first non-retryable connect error (RINGBUS_ESERVER with
 * wire_code unauthorized, forbidden or invalid_argument; RINGBUS_EINVAL
 * and RINGBUS_EUNSUPPORTED for a bad URL), RINGBUS_ENOMEM, or, without
 * retry_initial_connect, the last URL's connect error. */
RINGBUS_API int ringbus_session_open(const ringbus_session_options *options,
                                     ringbus_session **session, ringbus_error *err);

/* Closes the connection at once and frees the session. Publish callbacks
 * still pending run with RINGBUS_ECLOSED before it returns. session may be
 * NULL. Not from a callback. */
RINGBUS_API void ringbus_session_close(ringbus_session *session);

/* A file descriptor that stays the same for the session's life: poll it
 * for POLLIN (only) and call ringbus_session_process (or
 * ringbus_session_next_event with timeout 0) when it is readable. It wakes
 * for the connection's input and output and for the session's timers
 * (reconnect, watchdog, re-sends). Owned by the session. */
RINGBUS_API int ringbus_session_fd(const ringbus_session *session);

/* One turn: processes the connection as ringbus_process (waiting at most
 * timeout_ms), re-sends what is due, runs the watchdog, and reconnects
 * when the wait before the next attempt is over. Returns the events
 * dispatched or queued, RINGBUS_ECLOSED once the session's CLOSED event
 * was produced, RINGBUS_EINVAL from a callback, or RINGBUS_ENOMEM. */
RINGBUS_API int ringbus_session_process(ringbus_session *session, int timeout_ms,
                                        ringbus_error *err);

/* As ringbus_next_event, without an event callback. The events are those
 * of a connection, without the duplicates a reconnect would bring and
 * without the connection's CLOSED (a loss is RECONNECTING, then
 * RECONNECTED); CLOSED ends the session (after ringbus_session_half_close,
 * a non-retryable close or failure, the attempts limit, or a loss with
 * no_reconnect). */
RINGBUS_API int ringbus_session_next_event(ringbus_session *session, ringbus_event *ev,
                                           int timeout_ms, ringbus_error *err);

/* Publishes as ringbus_publish_key. Without a key (key_len 0) the session
 * makes one (unique for the session), so that a re-send is never stored
 * twice; with no_reconnect it makes none (nothing is re-sent). While the session is reconnecting
 * the publish waits in the session's buffer. cb runs exactly once: with the ack (res->duplicate set
 * when the server had already stored a re-send), with the server's
 * refusal, or with RINGBUS_ECLOSED when the session closes, the reissue
 * limit is hit or publish_retry_ms is over. res->corr_id is the session's id, stored in *corr_id
 * (may be NULL). Returns 0, RINGBUS_EAGAIN (the session's buffer is full: process, then retry),
 * RINGBUS_ELIMIT (larger than the server's max_frame_bytes or the buffer), RINGBUS_EINVAL or
 * RINGBUS_ECLOSED. */
RINGBUS_API int ringbus_session_publish(ringbus_session *session, const char *topic,
                                        size_t topic_len, const void *key, size_t key_len,
                                        const void *payload, size_t payload_len, uint64_t *corr_id,
                                        ringbus_error *err, ringbus_publish_cb cb, void *ctx);

/* As ringbus_mutate_epoch, on the session's topics: mutate_id must not
 * carry RINGBUS_SESSION_WAVE. The session applies the change to its
 * topics at once and sends it when connected (else with the next
 * connection). The wave's CATCHUP_COMPLETE arrives once, also across a
 * reconnect. Returns 0, RINGBUS_EINVAL, RINGBUS_ELIMIT (frame too large,
 * or more than topics_max topics), RINGBUS_EAGAIN, RINGBUS_ECLOSED. */
RINGBUS_API int ringbus_session_mutate(ringbus_session *session, uint64_t mutate_id, uint64_t epoch,
                                       const ringbus_add *adds, size_t add_count,
                                       const char *const *removes, size_t remove_count,
                                       bool history_only, ringbus_error *err);

/* The last seq the session delivered for topic and its epoch (or the
 * cursor it was added with). Returns 1 when the session follows topic, 0
 * when it does not, and 0 with *seq 0 for a topic added at "now" that
 * delivered nothing. seq and epoch may be NULL. */
RINGBUS_API int ringbus_session_cursor(const ringbus_session *session, const char *topic,
                                       uint64_t *seq, uint64_t *epoch);

/* The current connection, or NULL while reconnecting; valid until the next
 * call on the session. Use it for what the session does not wrap (calls,
 * ping, the handshake results); do not close it or change its topics. */
RINGBUS_API ringbus_conn *ringbus_session_conn(const ringbus_session *session);

/* Stops reconnecting and closes cleanly (ringbus_half_close) when
 * connected: the session's CLOSED event follows the server's. Returns 0 or
 * RINGBUS_ECLOSED. */
RINGBUS_API int ringbus_session_half_close(ringbus_session *session, ringbus_error *err);

#ifdef __cplusplus
}
#endif

#endif
