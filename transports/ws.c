/* The WebSocket layer: the upgrade handshake in its HTTP phase (other
 * paths go to the listener's HTTP router, server/admin.c), then RFC 6455
 * framing through the frame parser and writer both roles share
 * (transports/wsframe.c): incoming frames are parsed there, incrementally
 * over any split of the input, and checked (masking, reserved bits,
 * opcodes, fragments, sizes); this file adds the ringbus rule that one
 * binary message carries exactly one ringbus frame, and frames each
 * outgoing ringbus frame as one binary message, found by the size in its
 * header. */
#include "transports/ws.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/frame.h"
#include "transports/http.h"
#include "transports/wsframe.h"

/* Payload bytes unmasked per step, into a per-thread scratch buffer. */
#define WS_UNMASK_BYTES 16384

typedef enum ws_phase {
    WS_HTTP = 0, /* reading the request head */
    WS_OPEN,     /* upgraded */
    WS_DONE,     /* answered over HTTP, or Close sent: nothing more goes out */
} ws_phase;

typedef struct ws_layer {
    rb_layer base;
    rb_ws_options opt;
    ws_phase phase;
    bool peer_closed; /* a Close arrived: ignore the rest */
    /* HTTP phase: the request head so far (RB_HTTP_HEAD_BYTES_MAX, owned) */
    uint8_t *head;
    uint32_t head_len;
    /* receiving */
    rb_wsframe_parser ps;
    uint64_t msg_bytes;  /* bytes of the binary message so far */
    uint8_t msg_size[4]; /* the first bytes of the message: the frame's size */
    /* the Close we send: 0 = map the connection's status */
    uint16_t close_code;
    char close_reason[RB_WSFRAME_REASON_BYTES_MAX + 1];
    /* sending */
    uint64_t out_left; /* payload bytes of the message being framed */
    uint8_t out_size[4];
    uint32_t out_size_len;
    bool pong_due; /* a Pong waits for the current message to end */
    uint8_t pong[RB_WSFRAME_CONTROL_BYTES_MAX];
    uint32_t pong_len;
} ws_layer;

#define WS_FROM(l) ((ws_layer *)(l))

/* ---- helpers ---- */

void rb_ws_accept_key(const char *key, size_t key_len, char out[29])
{
    rb_wsframe_accept_key(key, key_len, out);
}

uint16_t rb_ws_close_code(uint16_t wire_status)
{
    switch (wire_status) {
    case RB_WIRE_OK:
        return 1000;
    case RB_WIRE_GOING_AWAY:
        return 1001;
    case RB_WIRE_BAD_FRAME:
    case RB_WIRE_UNSUPPORTED_VERSION:
        return 1002;
    case RB_WIRE_TOO_LARGE:
        return 1009;
    case RB_WIRE_INTERNAL:
        return 1011;
    default:
        return 1008;
    }
}

/* Records the Close to send and returns the error that ends the input:
 * err->cause is the ringbus status the owner closes with. */
__attribute__((format(printf, 5, 6))) static int ws_fail(ws_layer *w, rb_err *err, uint16_t ws_code,
                                                         uint16_t wire_code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->close_reason, sizeof w->close_reason, fmt, ap);
    va_end(ap);
    w->close_code = ws_code;
    return rb_err_set(err, RB_EPROTO, wire_code, "WebSocket %u: %s", ws_code, w->close_reason);
}

static int send_control(ws_layer *w, uint8_t opcode, const uint8_t *p, size_t len, rb_err *err)
{
    uint8_t buf[RB_WSFRAME_HEADER_BYTES_MAX + RB_WSFRAME_CONTROL_BYTES_MAX];
    RB_ASSERT(len <= RB_WSFRAME_CONTROL_BYTES_MAX);
    size_t h = rb_wsframe_header(buf, opcode, true, len, NULL);
    memcpy(buf + h, p, len);
    return rb_layer_down(&w->base, buf, h + len, err);
}

/* ---- the HTTP phase ---- */

static const char *status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 426:
        return "Upgrade Required";
    case 431:
        return "Request Header Fields Too Large";
    default:
        return "Service Unavailable";
    }
}

/* Answers over plain HTTP; nothing else goes out afterwards. */
static void http_reply_typed(ws_layer *w, int status, const char *extra, const char *type,
                             const char *body, size_t body_len)
{
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\nCache-Control: no-store\r\n"
                     "%s\r\n",
                     status, status_text(status), type != NULL ? type : "text/plain; charset=utf-8",
                     body_len + 1, extra);
    RB_ASSERT(n > 0 && (size_t)n < sizeof buf);
    rb_err err;
    if (rb_layer_down(&w->base, (const uint8_t *)buf, (size_t)n, &err) == 0 &&
        rb_layer_down(&w->base, (const uint8_t *)body, body_len, &err) == 0) {
        (void)rb_layer_down(&w->base, (const uint8_t *)"\n", 1, &err);
    }
    w->phase = WS_DONE;
}

static void http_reply(ws_layer *w, int status, const char *extra, const char *body)
{
    http_reply_typed(w, status, extra, NULL, body, strlen(body));
}

/* Answers a request and tells the owner the layer is done. The reason
 * for the log names the request (method, target and any Origin, as the
 * peer sent them: the log escapes them). */
static void http_answer(ws_layer *w, const rb_http_request *req, int status, const char *extra,
                        const char *body)
{
    http_reply(w, status, extra, body);
    char why[512];
    int n = snprintf(why, sizeof why, "HTTP %d: %.200s", status, body);
    const rb_http_header *origin = req != NULL ? rb_http_find(req, "Origin") : NULL;
    if (req != NULL && n > 0 && (size_t)n < sizeof why) {
        n += snprintf(why + n, sizeof why - (size_t)n, " (%.*s %.*s", (int)req->method.len,
                      req->method.ptr, (int)(req->target.len < 160 ? req->target.len : 160),
                      req->target.ptr);
    }
    if (origin != NULL && n > 0 && (size_t)n < sizeof why) {
        n += snprintf(why + n, sizeof why - (size_t)n, ", Origin %.*s",
                      (int)(origin->value.len < 100 ? origin->value.len : 100), origin->value.ptr);
    }
    if (req != NULL && n > 0 && (size_t)n < sizeof why) {
        snprintf(why + n, sizeof why - (size_t)n, ")");
    }
    rb_layer_ended(&w->base, RB_LAYER_END_DONE, why);
}

static bool key_ok(const rb_http_header *h)
{
    return h != NULL && rb_wsframe_key_ok(h->value.ptr, h->value.len);
}

static bool origin_ok(const ws_layer *w, const rb_http_request *req)
{
    const rb_listener_config *cfg = w->opt.listener;
    if (cfg->origin_count == 0) {
        return true;
    }
    const rb_http_header *h = rb_http_find(req, "Origin");
    if (h == NULL || rb_http_count(req, "Origin") != 1) {
        return false;
    }
    for (uint32_t i = 0; i < cfg->origin_count; i++) {
        if (rb_http_span_eq(h->value, cfg->origins[i])) {
            return true;
        }
    }
    return false;
}

static bool offers_subprotocol(const rb_http_request *req)
{
    for (uint32_t i = 0; i < req->header_count; i++) {
        const rb_http_header *h = &req->headers[i];
        if (rb_http_span_eq(h->name, "Sec-WebSocket-Protocol") &&
            rb_http_has_token(h->value, RB_WS_SUBPROTOCOL)) {
            return true;
        }
    }
    return false;
}

/* Checks an upgrade request; returns 0 or the HTTP status to refuse it
 * with, *why saying why. */
static int check_upgrade(const ws_layer *w, const rb_http_request *req, const char **why)
{
    const rb_http_header *up = rb_http_find(req, "Upgrade");
    const rb_http_header *conn = rb_http_find(req, "Connection");
    const rb_http_header *ver = rb_http_find(req, "Sec-WebSocket-Version");
    *why = NULL;
    if (req->version_minor != 1) {
        *why = "WebSocket upgrades need HTTP/1.1";
    } else if (rb_http_count(req, "Host") != 1) {
        *why = "exactly one Host header is required";
    } else if (up == NULL || !rb_http_has_token(up->value, "websocket")) {
        *why = "missing \"Upgrade: websocket\"";
    } else if (conn == NULL || !rb_http_has_token(conn->value, "upgrade")) {
        *why = "missing \"Connection: Upgrade\"";
    } else if (ver == NULL) {
        *why = "missing Sec-WebSocket-Version";
    } else if (rb_http_count(req, "Sec-WebSocket-Key") != 1 ||
               !key_ok(rb_http_find(req, "Sec-WebSocket-Key"))) {
        *why = "Sec-WebSocket-Key must be the base64 of 16 bytes";
    }
    if (*why != NULL) {
        return 400;
    }
    if (!rb_http_span_is(ver->value, "13")) {
        *why = "unsupported Sec-WebSocket-Version (this server speaks 13)";
        return 426;
    }
    if (!origin_ok(w, req)) {
        *why = "Origin not allowed";
        return 403;
    }
    if (!offers_subprotocol(req)) {
        *why = "Sec-WebSocket-Protocol must offer " RB_WS_SUBPROTOCOL;
        return 400;
    }
    return 0;
}

static int accept_upgrade(ws_layer *w, const rb_http_request *req, rb_err *err)
{
    const rb_http_header *key = rb_http_find(req, "Sec-WebSocket-Key");
    char accept[29];
    rb_ws_accept_key(key->value.ptr, key->value.len, accept);
    char buf[256];
    int n = snprintf(buf, sizeof buf,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                     "Sec-WebSocket-Protocol: " RB_WS_SUBPROTOCOL "\r\n\r\n",
                     accept);
    RB_ASSERT(n > 0 && (size_t)n < sizeof buf);
    w->phase = WS_OPEN;
    return rb_layer_down(&w->base, (const uint8_t *)buf, (size_t)n, err);
}

/* Answers a complete request head. Returns 0 (upgraded or answered) or an
 * error of the layers below. */
static int handle_request(ws_layer *w, const rb_http_request *req, rb_err *err)
{
    rb_http_span path = rb_http_target_path(req);
    if (!rb_http_span_eq(req->method, "GET")) {
        http_answer(w, req, 405, "Allow: GET\r\n", "only GET is supported");
        return 0;
    }
    rb_http_response resp;
    if (w->opt.router.route != NULL && w->opt.router.route(w->opt.router.ctx, req, &resp)) {
        size_t len = resp.body_len != 0 ? resp.body_len : strlen(resp.body);
        http_reply_typed(w, resp.status, resp.extra_headers, resp.content_type, resp.body, len);
        char why[128];
        snprintf(why, sizeof why, "HTTP %d: %zu bytes of %.*s", resp.status, len,
                 (int)(req->target.len < 64 ? req->target.len : 64), req->target.ptr);
        rb_layer_ended(&w->base, RB_LAYER_END_DONE, why);
        return 0;
    }
    if (w->opt.listener->transport == RB_TRANSPORT_HTTP) {
        http_answer(w, req, 404, "",
                    "no such path (routes: /healthz, /readyz, /metrics, /v1/varz)");
        return 0;
    }
    if (!rb_http_span_is(path, w->opt.listener->path)) {
        http_answer(w, req, 404, "", "no WebSocket endpoint at this path");
        return 0;
    }
    const char *why = NULL;
    int status = check_upgrade(w, req, &why);
    if (status != 0) {
        http_answer(w, req, status, status == 426 ? "Sec-WebSocket-Version: 13\r\n" : "", why);
        return 0;
    }
    return accept_upgrade(w, req, err);
}

static int frames_recv(ws_layer *w, const uint8_t *p, size_t len, rb_err *err);

static int http_recv(ws_layer *w, const uint8_t *p, size_t len, rb_err *err)
{
    size_t room = RB_HTTP_HEAD_BYTES_MAX - w->head_len;
    size_t take = len < room ? len : room;
    memcpy(w->head + w->head_len, p, take);
    w->head_len += (uint32_t)take;
    rb_http_request req;
    rb_err perr;
    int rc = rb_http_parse_request(w->head, w->head_len, &req, &perr);
    if (rc == RB_EAGAIN) {
        return 0;
    }
    if (rc != 0) {
        http_answer(w, NULL, perr.cause, "", perr.msg);
        return 0;
    }
    rc = handle_request(w, &req, err);
    if (rc != 0 || w->phase != WS_OPEN) {
        return rc;
    }
    /* Frames may follow the head at once: they go through the frame
     * parser, the rest of this head buffer first. */
    uint8_t *head = w->head;
    size_t head_len = w->head_len;
    w->head = NULL;
    rc = frames_recv(w, head + req.head_bytes, head_len - req.head_bytes, err);
    free(head);
    if (rc == 0 && take < len) {
        rc = frames_recv(w, p + take, len - take, err);
    }
    return rc;
}

/* ---- receiving frames ---- */

static _Thread_local uint8_t unmask_scratch[WS_UNMASK_BYTES];

static uint32_t declared_size(const ws_layer *w)
{
    return (uint32_t)w->msg_size[0] | (uint32_t)w->msg_size[1] << 8 |
           (uint32_t)w->msg_size[2] << 16 | (uint32_t)w->msg_size[3] << 24;
}

/* Payload of a binary message: checked against the frame size it starts
 * with, then handed up. */
static int message_data(ws_layer *w, const rb_wsframe_event *ev, rb_err *err)
{
    if (ev->message_begin) {
        if (ev->frame_fin && ev->frame_bytes < RB_FRAME_HEADER_BYTES) {
            return ws_fail(w, err, 1002, RB_WIRE_BAD_FRAME,
                           "a binary message must carry exactly one frame (%llu bytes are "
                           "fewer than the %u-byte frame header)",
                           (unsigned long long)ev->frame_bytes, RB_FRAME_HEADER_BYTES);
        }
        w->msg_bytes = 0;
    }
    const uint8_t *p = ev->data;
    size_t len = ev->len;
    for (size_t i = 0; i < len && w->msg_bytes + i < 4; i++) {
        w->msg_size[w->msg_bytes + i] = p[i];
    }
    w->msg_bytes += len;
    if (w->msg_bytes >= 4 && declared_size(w) < RB_FRAME_HEADER_BYTES) {
        /* One message is exactly one frame: a size below the header can
         * never be completed by the next message. */
        return ws_fail(w, err, 1002, RB_WIRE_BAD_FRAME,
                       "a binary message must carry exactly one frame (its size %u is below "
                       "the %u-byte frame header)",
                       declared_size(w), RB_FRAME_HEADER_BYTES);
    }
    if (w->msg_bytes >= 4 && w->msg_bytes > declared_size(w)) {
        return ws_fail(w, err, 1002, RB_WIRE_BAD_FRAME,
                       "a binary message must carry exactly one frame");
    }
    int rc = len > 0 ? rb_layer_up(&w->base, p, len, err) : 0;
    if (rc == 0 && ev->message_end &&
        (w->msg_bytes < RB_FRAME_HEADER_BYTES || w->msg_bytes != declared_size(w))) {
        return ws_fail(w, err, 1002, RB_WIRE_BAD_FRAME,
                       "a binary message must carry exactly one frame");
    }
    return rc;
}

static int on_ping(ws_layer *w, const rb_wsframe_event *ev, rb_err *err)
{
    if (w->out_left > 0 || w->out_size_len > 0) {
        /* A message is half framed: the Pong follows it. */
        memcpy(w->pong, ev->data, ev->len);
        w->pong_len = (uint32_t)ev->len;
        w->pong_due = true;
        return 0;
    }
    return send_control(w, RB_WS_OP_PONG, ev->data, ev->len, err);
}

static int on_close(ws_layer *w, const rb_wsframe_event *ev)
{
    /* The reply echoes the peer's status (RFC 6455 5.5.1). */
    uint16_t code = ev->close_code != 1005 ? ev->close_code : 1000;
    w->close_code = code;
    snprintf(w->close_reason, sizeof w->close_reason, "closing");
    w->peer_closed = true;
    char why[64];
    snprintf(why, sizeof why, "peer sent WebSocket Close %u", code);
    rb_layer_ended(&w->base, RB_LAYER_END_PEER, why);
    return RB_ECLOSED;
}

static int frames_recv(ws_layer *w, const uint8_t *p, size_t len, rb_err *err)
{
    int rc = 0;
    while (rc == 0 && !w->peer_closed) {
        rb_wsframe_event ev;
        size_t used;
        rc = rb_wsframe_parse(&w->ps, p, len, &used, unmask_scratch, sizeof unmask_scratch, &ev,
                              err);
        p += used;
        len -= used;
        if (rc != 0) {
            w->close_code = w->ps.fail_code;
            memcpy(w->close_reason, w->ps.fail_reason, sizeof w->close_reason);
            break;
        }
        switch (ev.kind) {
        case RB_WSFRAME_NONE:
            return 0;
        case RB_WSFRAME_DATA:
            rc = message_data(w, &ev, err);
            break;
        case RB_WSFRAME_PING:
            rc = on_ping(w, &ev, err);
            break;
        case RB_WSFRAME_CLOSE:
            rc = on_close(w, &ev);
            break;
        case RB_WSFRAME_PONG:
            break;
        }
    }
    return rc;
}

/* ---- sending ---- */

static int send_pong_due(ws_layer *w, rb_err *err)
{
    if (!w->pong_due || w->out_left > 0 || w->out_size_len > 0) {
        return 0;
    }
    w->pong_due = false;
    return send_control(w, RB_WS_OP_PONG, w->pong, w->pong_len, err);
}

/* Starts a binary message for the ringbus frame whose size bytes are in
 * out_size. */
static int message_begin(ws_layer *w, rb_err *err)
{
    uint32_t size = (uint32_t)w->out_size[0] | (uint32_t)w->out_size[1] << 8 |
                    (uint32_t)w->out_size[2] << 16 | (uint32_t)w->out_size[3] << 24;
    /* The server encodes every frame it sends, so a size below the header
     * is a bug, not input. */
    RB_ASSERT(size >= RB_FRAME_HEADER_BYTES);
    uint8_t h[10 + 4];
    size_t n = rb_wsframe_header(h, RB_WS_OP_BINARY, true, size, NULL);
    memcpy(h + n, w->out_size, 4);
    w->out_size_len = 0;
    w->out_left = size - 4;
    return rb_layer_down(&w->base, h, n + 4, err);
}

static int ws_send(rb_layer *l, const uint8_t *p, size_t len, rb_err *err)
{
    ws_layer *w = WS_FROM(l);
    RB_ASSERT(w->phase == WS_OPEN);
    while (len > 0) {
        if (w->out_left == 0) {
            size_t take = 4 - w->out_size_len;
            take = take < len ? take : len;
            memcpy(w->out_size + w->out_size_len, p, take);
            w->out_size_len += (uint32_t)take;
            p += take;
            len -= take;
            int rc = w->out_size_len == 4 ? message_begin(w, err) : 0;
            if (rc != 0) {
                return rc;
            }
            continue;
        }
        size_t n = w->out_left < len ? (size_t)w->out_left : len;
        int rc = rb_layer_down(l, p, n, err);
        if (rc != 0) {
            return rc;
        }
        w->out_left -= n;
        p += n;
        len -= n;
        if ((rc = send_pong_due(w, err)) != 0) {
            return rc;
        }
    }
    return 0;
}

static int ws_flush(rb_layer *l, rb_err *err)
{
    ws_layer *w = WS_FROM(l);
    return w->phase == WS_OPEN ? send_pong_due(w, err) : 0;
}

static void ws_close(rb_layer *l, uint16_t wire_status)
{
    ws_layer *w = WS_FROM(l);
    if (w->phase == WS_HTTP && w->head_len > 0) {
        /* The request never completed: say why over HTTP. */
        if (wire_status == RB_WIRE_GOING_AWAY) {
            http_reply(w, 503, "", "server shutting down");
        } else if (wire_status == RB_WIRE_DEADLINE_EXCEEDED) {
            http_reply(w, 408, "", "request head not completed in time");
        }
        w->phase = WS_DONE;
        return;
    }
    if (w->phase != WS_OPEN || w->out_left > 0 || w->out_size_len > 0) {
        w->phase = WS_DONE;
        return;
    }
    uint8_t payload[2 + RB_WSFRAME_REASON_BYTES_MAX];
    uint16_t code = w->close_code != 0 ? w->close_code : rb_ws_close_code(wire_status);
    const char *reason = w->close_code != 0 ? w->close_reason : rb_wire_code_name(wire_status);
    size_t n = rb_wsframe_close_payload(payload, code, reason);
    rb_err err;
    (void)send_control(w, RB_WS_OP_CLOSE, payload, n, &err);
    w->phase = WS_DONE;
}

static int ws_recv(rb_layer *l, const uint8_t *p, size_t len, rb_err *err)
{
    ws_layer *w = WS_FROM(l);
    if (w->phase == WS_HTTP) {
        return http_recv(w, p, len, err);
    }
    if (w->phase != WS_OPEN) {
        return RB_ECLOSED;
    }
    return frames_recv(w, p, len, err);
}

static bool ws_ready(const rb_layer *l)
{
    return WS_FROM(l)->phase == WS_OPEN;
}

static void ws_destroy(rb_layer *l)
{
    ws_layer *w = WS_FROM(l);
    free(w->head);
    free(w);
}

static const rb_layer_ops ws_ops = {
    .name = "ws",
    .recv = ws_recv,
    .send = ws_send,
    .flush = ws_flush,
    .close = ws_close,
    .ready = ws_ready,
    .destroy = ws_destroy,
};

int rb_ws_layer_new(rb_layer **out, const rb_ws_options *opt, rb_err *err)
{
    ws_layer *w = calloc(1, sizeof *w);
    if (w == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "ws: out of memory");
    }
    w->base.ops = &ws_ops;
    w->opt = *opt;
    rb_wsframe_parser_init(&w->ps, RB_WSFRAME_SERVER, opt->max_frame_bytes);
    w->head = malloc(RB_HTTP_HEAD_BYTES_MAX);
    if (w->head == NULL) {
        ws_destroy(&w->base);
        return rb_err_set(err, RB_ENOMEM, 0, "ws: out of memory");
    }
    *out = &w->base;
    return 0;
}
