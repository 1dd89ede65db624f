/* The HTTP/1.1 request-head parser: request line, header fields, limits.
 * Strict where laxness helps request smuggling (bare CR or LF, folding,
 * space before the colon) and bounded by RB_HTTP_HEAD_BYTES_MAX. */
#include "transports/http.h"

#include <stddef.h>
#include <string.h>
#include <strings.h>

static bool is_tchar(uint8_t c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
        return true;
    }
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_vchar_or_obs(uint8_t c)
{
    return (c >= 0x21 && c <= 0x7e) || c >= 0x80;
}

/* The length of the head within p[0, len), or 0: through the first empty
 * line, which is CRLF CRLF in a valid head. A head that ends in bare LFs
 * ends there too, so that it is refused at once rather than waited for. */
static size_t head_end(const uint8_t *p, size_t len)
{
    for (size_t i = 1; i < len; i++) {
        if (p[i] == '\n' &&
            (p[i - 1] == '\n' || (i >= 2 && p[i - 1] == '\r' && p[i - 2] == '\n'))) {
            return i + 1;
        }
    }
    return 0;
}

/* The end of the line starting at p (index of its CR), checking that no
 * bare CR or LF comes before. Returns -1 for a bare one. */
static long line_end(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (p[i] == '\r') {
            return p[i + 1] == '\n' ? (long)i : -1;
        }
        if (p[i] == '\n') {
            return -1;
        }
    }
    return -1;
}

static int parse_request_line(const uint8_t *p, size_t len, rb_http_request *req, rb_err *err)
{
    size_t i = 0;
    while (i < len && is_tchar(p[i])) {
        i++;
    }
    if (i == 0 || i >= len || p[i] != ' ') {
        return rb_err_set(err, RB_EPROTO, 400, "malformed request line: bad method");
    }
    req->method = (rb_http_span){(const char *)p, i};
    size_t t = ++i;
    while (i < len && p[i] >= 0x21 && p[i] <= 0x7e) {
        i++;
    }
    if (i == t || i >= len || p[i] != ' ') {
        return rb_err_set(err, RB_EPROTO, 400, "malformed request line: bad request target");
    }
    req->target = (rb_http_span){(const char *)p + t, i - t};
    i++;
    if (len - i != 8 || memcmp(p + i, "HTTP/1.", 7) != 0 || (p[i + 7] != '0' && p[i + 7] != '1')) {
        return rb_err_set(err, RB_EPROTO, 400, "malformed request line: expected HTTP/1.1");
    }
    req->version_minor = p[i + 7] - '0';
    return 0;
}

static int parse_field(const uint8_t *p, size_t len, rb_http_header *h, rb_err *err)
{
    size_t i = 0;
    while (i < len && is_tchar(p[i])) {
        i++;
    }
    if (i == 0) {
        return rb_err_set(err, RB_EPROTO, 400,
                          p[0] == ' ' || p[0] == '\t' ? "obsolete header line folding"
                                                      : "malformed header field name");
    }
    if (i >= len || p[i] != ':') {
        return rb_err_set(err, RB_EPROTO, 400, "malformed header field: expected ':' after name");
    }
    h->name = (rb_http_span){(const char *)p, i};
    i++;
    while (i < len && (p[i] == ' ' || p[i] == '\t')) {
        i++;
    }
    size_t end = len;
    while (end > i && (p[end - 1] == ' ' || p[end - 1] == '\t')) {
        end--;
    }
    for (size_t k = i; k < end; k++) {
        if (!is_vchar_or_obs(p[k]) && p[k] != ' ' && p[k] != '\t') {
            return rb_err_set(err, RB_EPROTO, 400, "control character in header field \"%.*s\"",
                              (int)(h->name.len < 64 ? h->name.len : 64), h->name.ptr);
        }
    }
    h->value = (rb_http_span){(const char *)p + i, end - i};
    return 0;
}

/* True while p could still begin a request line: a method of token
 * characters, then a space. Bytes that cannot (a ringbus frame, a TLS
 * ClientHello) are refused as soon as they arrive, not when a head that
 * will never end reaches the limit or the handshake timeout. */
static bool method_prefix_ok(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len && i <= RB_HTTP_METHOD_BYTES_MAX; i++) {
        if (p[i] == ' ') {
            return i > 0;
        }
        if (!is_tchar(p[i])) {
            return false;
        }
    }
    return len <= RB_HTTP_METHOD_BYTES_MAX;
}

int rb_http_parse_request(const uint8_t *p, size_t len, rb_http_request *req, rb_err *err)
{
    size_t scan = len < RB_HTTP_HEAD_BYTES_MAX ? len : RB_HTTP_HEAD_BYTES_MAX;
    if (!method_prefix_ok(p, scan)) {
        return rb_err_set(err, RB_EPROTO, 400, "malformed request line: bad method");
    }
    size_t head = head_end(p, scan);
    if (head == 0) {
        if (len >= RB_HTTP_HEAD_BYTES_MAX) {
            return rb_err_set(err, RB_ELIMIT, 431, "request head over %d bytes",
                              RB_HTTP_HEAD_BYTES_MAX);
        }
        return RB_EAGAIN;
    }
    memset(req, 0, offsetof(rb_http_request, headers));
    req->head_bytes = head;
    long n = line_end(p, head);
    if (n <= 0) {
        return rb_err_set(err, RB_EPROTO, 400,
                          n == 0 ? "empty request line" : "bare CR or LF in request line");
    }
    int rc = parse_request_line(p, (size_t)n, req, err);
    if (rc != 0) {
        return rc;
    }
    size_t off = (size_t)n + 2;
    /* Every line up to the final empty one is a header field. */
    while (off < head - 2) {
        n = line_end(p + off, head - off);
        if (n <= 0) {
            return rb_err_set(err, RB_EPROTO, 400, "bare CR or LF in header fields");
        }
        if (req->header_count == RB_HTTP_HEADERS_MAX) {
            return rb_err_set(err, RB_ELIMIT, 431, "more than %d header fields",
                              RB_HTTP_HEADERS_MAX);
        }
        rc = parse_field(p + off, (size_t)n, &req->headers[req->header_count], err);
        if (rc != 0) {
            return rc;
        }
        req->header_count++;
        off += (size_t)n + 2;
    }
    if (off != head - 2 || p[off] != '\r') {
        return rb_err_set(err, RB_EPROTO, 400, "bare CR or LF ends the request head");
    }
    return 0;
}

bool rb_http_span_eq(rb_http_span span, const char *text)
{
    size_t n = strlen(text);
    return span.len == n && strncasecmp(span.ptr, text, n) == 0;
}

const rb_http_header *rb_http_find(const rb_http_request *req, const char *name)
{
    for (uint32_t i = 0; i < req->header_count; i++) {
        if (rb_http_span_eq(req->headers[i].name, name)) {
            return &req->headers[i];
        }
    }
    return NULL;
}

uint32_t rb_http_count(const rb_http_request *req, const char *name)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < req->header_count; i++) {
        n += rb_http_span_eq(req->headers[i].name, name) ? 1 : 0;
    }
    return n;
}

bool rb_http_has_token(rb_http_span value, const char *token)
{
    size_t i = 0;
    while (i < value.len) {
        while (i < value.len && (value.ptr[i] == ' ' || value.ptr[i] == '\t')) {
            i++;
        }
        size_t start = i;
        while (i < value.len && value.ptr[i] != ',') {
            i++;
        }
        size_t end = i;
        while (end > start && (value.ptr[end - 1] == ' ' || value.ptr[end - 1] == '\t')) {
            end--;
        }
        if (rb_http_span_eq((rb_http_span){value.ptr + start, end - start}, token)) {
            return true;
        }
        i++;
    }
    return false;
}

rb_http_span rb_http_target_path(const rb_http_request *req)
{
    const char *q = memchr(req->target.ptr, '?', req->target.len);
    return (rb_http_span){req->target.ptr, q ? (size_t)(q - req->target.ptr) : req->target.len};
}

bool rb_http_span_is(rb_http_span span, const char *text)
{
    return span.len == strlen(text) && memcmp(span.ptr, text, span.len) == 0;
}
