/* Client transports: each is a small ops table over a byte stream
 * (connect, read, write, close): tcp (transport.c), tls on OpenSSL
 * (transport_tls_ossl.c, the default) or wolfSSL (transport_tls.c) and ws / wss, which run the
 * WebSocket layer over a tcp or tls transport of their own (transport_ws.c). The connection logic
 * in ringbus.c sees only bytes. This header also holds the client's internal error code and clock.
 */
#ifndef RB_CLIENT_TRANSPORT_H
#define RB_CLIENT_TRANSPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "client/url.h"
#include "common/err.h"
#include "common/frame.h"

/* The server refused a request (cause = wire code); equals RINGBUS_ESERVER. */
#define RB_CLIENT_ESERVER (-100)

typedef struct rb_client_transport rb_client_transport;

typedef struct rb_client_transport_ops {
    const char *name;
    /* Connects to url before deadline_ns (CLOCK_MONOTONIC); url_text names
     * the URL in messages. Returns 0 or RB_ESYS, RB_ETIMEDOUT, RB_EINVAL. */
    int (*connect)(rb_client_transport *tp, const rb_url *url, const char *url_text,
                   int64_t deadline_ns, rb_err *err);
    /* Returns bytes read (> 0), 0 at the peer's orderly end, RB_EAGAIN when
     * nothing is available, or RB_ESYS. Never blocks. */
    ssize_t (*read)(rb_client_transport *tp, void *buf, size_t len, rb_err *err);
    /* Returns bytes written (> 0), RB_EAGAIN, or RB_ESYS. Never blocks. */
    ssize_t (*write)(rb_client_transport *tp, const void *buf, size_t len, rb_err *err);
    /* Releases everything; the transport may be connected again. */
    void (*close)(rb_client_transport *tp);
    /* True when read may return bytes without the socket being readable
     * (a layer holds decoded input). NULL means never. */
    bool (*read_pending)(const rb_client_transport *tp);
    /* True when the transport holds output it accepted but has not written
     * yet; write(tp, buf, 0) pushes it. NULL means never. */
    bool (*write_pending)(const rb_client_transport *tp);
} rb_client_transport_ops;

struct rb_client_transport {
    const rb_client_transport_ops *ops;
    int fd; /* the pollable socket, -1 when closed */
    /* TLS settings, borrowed during connect: the CA bundle (NULL: the
     * system store), whether to skip verification, the ALPN protocol
     * (NULL: ringbus/1). */
    const char *ca_file;
    bool insecure;
    const char *alpn;
    /* tls, wss: the client certificate chain and key (PEM files), both or
     * neither, borrowed during connect. */
    const char *cert_file;
    const char *key_file;
    /* ws, wss: the Origin header of the upgrade request (NULL: none),
     * borrowed during connect; options_check in ringbus.c has vetted it. */
    const char *ws_origin;
    /* tls, wss: the TLS library (a RINGBUS_TLS_* value of ringbus.h; 0 is
     * OpenSSL), and the implementation connect picked from it. */
    int tls_library;
    const struct rb_client_transport_ops *tls_impl;
    void *layer; /* the tls or ws transport's state, owned by it */
};

/* The system CA bundle used when no CA file is given. */
#define RB_CLIENT_SYSTEM_CA_FILE "/etc/ssl/certs/ca-certificates.crt"

extern const rb_client_transport_ops rb_client_tcp_ops;
/* tls: picks rb_client_tls_ossl_ops or rb_client_tls_wolf_ops at connect
 * from tp->tls_library. */
extern const rb_client_transport_ops rb_client_tls_ops;
extern const rb_client_transport_ops rb_client_tls_ossl_ops; /* transport_tls_ossl.c */
extern const rb_client_transport_ops rb_client_tls_wolf_ops; /* transport_tls.c */
extern const rb_client_transport_ops rb_client_ws_ops;
extern const rb_client_transport_ops rb_client_wss_ops;
extern const rb_client_transport_ops rb_client_quic_ops;

/* The ops of a scheme, or NULL when it has no transport yet. */
const rb_client_transport_ops *rb_client_transport_for(rb_url_scheme scheme);

/* Waits until tp's socket is ready for events (POLLIN / POLLOUT) or
 * deadline_ns passes; returns 0 or RB_ETIMEDOUT / RB_ESYS naming what. */
int rb_client_wait(const rb_client_transport *tp, short events, int64_t deadline_ns,
                   const char *url_text, const char *what, rb_err *err);

/* Bytes of a server's first answer kept to recognise a foreign protocol. */
#define RB_CLIENT_ANSWER_PEEK_BYTES 16

/* Recognises a server's first bytes that are not what the layer that read
 * them expects, and says which URL was probably meant: an HTTP answer to a
 * tcp:// or tls:// client ("the server answered HTTP: is this a ws://
 * URL?"), a TLS record to a tcp:// or ws:// client, and plain ringbus
 * frames to a ws:// or tls:// client. `layer` is the scheme of the layer
 * that read p (RB_URL_TLS for the raw bytes under wss, RB_URL_WSS for the
 * decrypted ones above it). Returns a static string, or NULL when p is not
 * recognised (or too short to tell). */
const char *rb_client_answer_hint(rb_url_scheme layer, const uint8_t *p, size_t len);

/* The same for the bytes a connection read before its first frame, when
 * the transport is plain tcp (other transports check below the frames). */
const char *rb_client_tcp_answer_hint(const rb_client_transport *tp, const uint8_t *p, size_t len);

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t rb_client_now_ns(void);

/* Milliseconds from now until deadline_ns, rounded up, at least 0. */
int rb_client_ms_until(int64_t deadline_ns);

#endif
