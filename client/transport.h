/* Client transports: each is a small ops table over a byte stream
 * (connect, read, write, close), so that tls, ws and wss can be added as
 * layers later without touching the connection logic in ringbus.c. This
 * header also holds the client's internal error code and clock. */
#ifndef RB_CLIENT_TRANSPORT_H
#define RB_CLIENT_TRANSPORT_H

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
} rb_client_transport_ops;

struct rb_client_transport {
    const rb_client_transport_ops *ops;
    int fd; /* the pollable socket, -1 when closed */
};

/* The ops of a scheme, or NULL when it has no transport yet. */
const rb_client_transport_ops *rb_client_transport_for(rb_url_scheme scheme);

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t rb_client_now_ns(void);

/* Milliseconds from now until deadline_ns, rounded up, at least 0. */
int rb_client_ms_until(int64_t deadline_ns);

#endif
