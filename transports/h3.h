/* HTTP/3 on the QUIC engine (nghttp3 0.8), server side: one rb_h3 per QUIC
 * connection that agreed on ALPN h3. It opens the control and QPACK
 * streams, decodes requests (headers and a body bounded by max_body_bytes;
 * 413 beyond it, 400 for a request without :method or :path, 414 for a
 * path longer than RB_H3_PATH_BYTES_MAX, 503 when every request slot is
 * busy) and hands each complete request to the route callback, which
 * answers at once or later with rb_h3_respond. The QPACK dynamic table and
 * the header section are bounded. Routing itself is the owner's (the
 * server's admin router plugs in); nghttp3 types stay in h3.c. */
#ifndef RB_TRANSPORTS_H3_H
#define RB_TRANSPORTS_H3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/limits.h"
#include "transports/quic.h"

typedef struct rb_h3 rb_h3;

/* The bounds (RB_H3_..._MAX) are in common/limits.h. */

typedef struct rb_h3_request {
    const char *method;    /* NUL-terminated, valid during the route call */
    const char *path;      /* with the query string */
    const char *authority; /* "" when absent */
    const uint8_t *body;
    size_t body_len;
} rb_h3_request;

typedef struct rb_h3_response {
    uint16_t status;
    const char *content_type; /* NULL: none */
    const uint8_t *body;      /* copied by rb_h3 */
    size_t body_len;
} rb_h3_response;

/* What a route returns. */
#define RB_H3_ANSWERED 0 /* *resp is filled: it is sent now */
#define RB_H3_PENDING  1 /* the owner calls rb_h3_respond(stream_id) later */

/* Answers req on stream_id; runs inside the QUIC engine's callbacks. */
typedef int (*rb_h3_route_fn)(void *ctx, rb_h3 *h3, int64_t stream_id, const rb_h3_request *req,
                              rb_h3_response *resp);

typedef struct rb_h3_config {
    uint32_t max_body_bytes; /* request bodies (the listener's max_frame_bytes) */
    uint32_t requests_max;   /* 0: RB_H3_REQUESTS_DEFAULT */
    rb_h3_route_fn route;
    void *route_ctx;
} rb_h3_config;

/* Attaches HTTP/3 to qc (ALPN h3, just established) and opens its control
 * and QPACK streams. Returns 0 and *out (owned by the caller, freed with
 * rb_h3_free once the connection is closed), RB_ENOMEM, or RB_ELIMIT when
 * the peer allows too few unidirectional streams. */
int rb_h3_new(rb_h3 **out, rb_quic_conn *qc, const rb_h3_config *cfg, rb_err *err);

/* Detaches from the connection (if it is still attached) and frees. */
void rb_h3_free(rb_h3 *h3);

/* Sends the answer to a request the route left pending. Returns 0, or
 * RB_ECLOSED when the request's stream is gone (the peer gave up). */
int rb_h3_respond(rb_h3 *h3, int64_t stream_id, const rb_h3_response *resp, rb_err *err);

/* Requests answered so far (tests, metrics). */
uint64_t rb_h3_requests_served(const rb_h3 *h3);

#endif
