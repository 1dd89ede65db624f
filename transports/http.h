/* A bounded HTTP/1.1 request-head parser for the WebSocket upgrade and
 * /healthz (RFC 9112 request line and header fields, no bodies, no
 * obsolete line folding). It never allocates and never keeps state: the
 * result is views into the caller's bytes, valid while those are. What the
 * request means is left to its users: the WebSocket upgrade to
 * transports/ws.c, other routes (/healthz) to an rb_http_router
 * (server/admin.c). */
#ifndef RB_TRANSPORTS_HTTP_H
#define RB_TRANSPORTS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* A request head (request line, header fields, the empty line) longer than
 * this is refused with 431: an upgrade needs a few hundred bytes, and a
 * browser's with cookies a few KiB. */
#define RB_HTTP_HEAD_BYTES_MAX 8192
/* Header fields per request; more is 431 too. */
#define RB_HTTP_HEADERS_MAX 64
/* Bytes of a request method: a longer run of token characters is not a
 * request and is refused at once rather than buffered. */
#define RB_HTTP_METHOD_BYTES_MAX 32

typedef struct rb_http_span {
    const char *ptr;
    size_t len;
} rb_http_span;

typedef struct rb_http_header {
    rb_http_span name;
    rb_http_span value; /* without surrounding whitespace */
} rb_http_header;

typedef struct rb_http_request {
    rb_http_span method;
    rb_http_span target;
    int version_minor; /* HTTP/1.<minor>: 0 or 1 */
    uint32_t header_count;
    rb_http_header headers[RB_HTTP_HEADERS_MAX];
    size_t head_bytes; /* bytes of the head, the final empty line included */
} rb_http_request;

/* Parses the request head at the start of p[0, len). Returns 0 with *req
 * filled once the head is complete (bytes after head_bytes are not
 * looked at); RB_EAGAIN when it is not complete yet and may still fit;
 * RB_ELIMIT when it is over RB_HTTP_HEAD_BYTES_MAX or has more than
 * RB_HTTP_HEADERS_MAX fields (answer 431); RB_EPROTO when it is malformed
 * (answer 400), err->msg saying why. */
int rb_http_parse_request(const uint8_t *p, size_t len, rb_http_request *req, rb_err *err);

/* The first header field named `name` (case-insensitive), or NULL. */
const rb_http_header *rb_http_find(const rb_http_request *req, const char *name);

/* The number of fields named `name`. */
uint32_t rb_http_count(const rb_http_request *req, const char *name);

/* True when the comma-separated list `value` has `token`
 * (case-insensitive, surrounding whitespace ignored). */
bool rb_http_has_token(rb_http_span value, const char *token);

/* True when span equals text, case-insensitively. */
bool rb_http_span_eq(rb_http_span span, const char *text);

/* An answer to a plain HTTP request. */
typedef struct rb_http_response {
    int status;                /* 200, 404, 405, 503, ... */
    const char *extra_headers; /* "Name: value\r\n" lines, or "" */
    const char *body;          /* text; a newline is added */
    size_t body_len;           /* bytes of body; 0 = strlen(body) */
    const char *content_type;  /* NULL = "text/plain; charset=utf-8" */
} rb_http_response;

/* The HTTP routes an HTTP/1.1 (or later HTTP/3) front end serves besides
 * its own protocol: route returns true with *resp filled when the request's
 * path is one of its routes, false to let the caller answer 404. It runs on
 * the connection's thread and must not block. The strings in *resp are
 * static, or the router's per-thread buffer, valid until its next call on
 * the same thread: the front end writes them out before that. */
typedef struct rb_http_router {
    bool (*route)(void *ctx, const rb_http_request *req, rb_http_response *resp);
    void *ctx;
} rb_http_router;

/* The request target's path: the part before any '?'. */
rb_http_span rb_http_target_path(const rb_http_request *req);

/* True when span equals text exactly (paths are case-sensitive). */
bool rb_http_span_is(rb_http_span span, const char *text);

#endif
