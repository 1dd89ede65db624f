/* Client transports: each is a small ops table over a byte stream
 * (connect, read, write, close): tcp (transport.c), tls on wolfSSL
 * (transport_tls.c) and ws / wss, which run the WebSocket layer over a tcp
 * or tls transport of their own (transport_ws.c). The connection logic in
 * ringbus.c sees only bytes. This header also holds the client's internal
 * error code and clock. */
#ifndef RB_CLIENT_TRANSPORT_H
#define RB_CLIENT_TRANSPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "client/url.h"
#include "common/err.h"

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
    /* ws, wss: the Origin header of the upgrade request (NULL: none),
     * borrowed during connect; options_check in ringbus.c has vetted it. */
    const char *ws_origin;
    void *layer; /* the tls or ws transport's state, owned by it */
};

/* The system CA bundle used when no CA file is given. */
#define RB_CLIENT_SYSTEM_CA_FILE "/etc/ssl/certs/ca-certificates.crt"

extern const rb_client_transport_ops rb_client_tcp_ops;
extern const rb_client_transport_ops rb_client_tls_ops;
extern const rb_client_transport_ops rb_client_ws_ops;
extern const rb_client_transport_ops rb_client_wss_ops;

/* The ops of a scheme, or NULL when it has no transport yet. */
const rb_client_transport_ops *rb_client_transport_for(rb_url_scheme scheme);

/* Waits until tp's socket is ready for events (POLLIN / POLLOUT) or
 * deadline_ns passes; returns 0 or RB_ETIMEDOUT / RB_ESYS naming what. */
int rb_client_wait(const rb_client_transport *tp, short events, int64_t deadline_ns,
                   const char *url_text, const char *what, rb_err *err);

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t rb_client_now_ns(void);

/* Milliseconds from now until deadline_ns, rounded up, at least 0. */
int rb_client_ms_until(int64_t deadline_ns);

#endif
