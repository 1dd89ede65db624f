/* The client's WebSocket transports: ws:// over the tcp transport and
 * wss:// over the tls one. Connect sends the HTTP/1.1 upgrade (subprotocol
 * ringbus.v1) and checks the 101 answer and its Sec-WebSocket-Accept; then
 * every ringbus frame written goes out as one masked binary message, and
 * reads return the payload bytes of the binary messages received, answering
 * Pings on the way. A server Close ends the stream with its status in the
 * error. The framing and the handshake's pieces are the ones the server
 * uses (transports/wsframe.c), in the client role. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "client/transport.h"
#include "common/assert.h"
#include "common/frame.h"
#include "common/limits.h"
#include "transports/wsframe.h"

/* The server's upgrade answer is a few hundred bytes; after it, the bytes
 * read from the lower transport wait here for the frame parser. */
#define WS_IN_BYTES_MAX   (16u * 1024u)
#define WS_HEAD_BYTES_MAX 8192
/* Frames encoded per write before they are pushed down. */
#define WS_OUT_BATCH_BYTES (256u * 1024u)
#define WS_MASK_POOL_BYTES 256

typedef struct ws_client {
    rb_client_transport lower; /* tcp or tls */
    rb_wsframe_parser ps;
    /* input: the upgrade answer, then bytes read for the parser */
    uint8_t in[WS_IN_BYTES_MAX];
    size_t in_off, in_len;
    bool lower_eof;
    rb_err lower_err; /* a read error of the lower transport, code 0 if none */
    bool more;
    bool upgraded;
    bool closed; /* the server's Close arrived, or a protocol error */
    char close_msg[RB_ERR_MSG_BYTES_MAX / 2];
    /* output: encoded frames not yet taken by the lower transport */
    uint8_t *out;
    size_t out_off, out_len, out_cap;
    uint8_t masks[WS_MASK_POOL_BYTES];
    size_t mask_off;
} ws_client;

/* ---- helpers ---- */

static int random_bytes(uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* A fresh masking key (RFC 6455 5.3: unpredictable), from a pool refilled
 * by getrandom so that small frames do not each cost a system call. */
static int next_mask(ws_client *w, uint8_t key[4])
{
    if (w->mask_off == 0 || w->mask_off + 4 > sizeof w->masks) {
        if (random_bytes(w->masks, sizeof w->masks) != 0) {
            return -1;
        }
        w->mask_off = 0;
    }
    memcpy(key, w->masks + w->mask_off, 4);
    w->mask_off += 4;
    return 0;
}

static int out_reserve(ws_client *w, size_t n)
{
    if (w->out_off > 0 && w->out_off == w->out_len) {
        w->out_off = w->out_len = 0;
    }
    if (w->out_cap - w->out_len >= n) {
        return 0;
    }
    size_t cap = w->out_cap ? w->out_cap : 64 * 1024;
    while (cap - w->out_len < n) {
        cap *= 2;
    }
    uint8_t *p = realloc(w->out, cap);
    if (p == NULL) {
        return RB_ENOMEM;
    }
    w->out = p;
    w->out_cap = cap;
    return 0;
}

/* Appends one masked frame. */
static int frame_put(ws_client *w, uint8_t opcode, const uint8_t *p, size_t len)
{
    int rc = out_reserve(w, len + RB_WSFRAME_HEADER_BYTES_MAX);
    if (rc != 0) {
        return rc;
    }
    uint8_t key[4];
    if (next_mask(w, key) != 0) {
        return RB_ESYS;
    }
    uint8_t *h = w->out + w->out_len;
    size_t n = rb_wsframe_header(h, opcode, true, len, key);
    rb_wsframe_mask(h + n, p, len, key, 0);
    w->out_len += n + len;
    return 0;
}

/* Writes encoded frames down. Returns 0 when all went, RB_EAGAIN when
 * some wait, or an error. */
static int out_push(ws_client *w, rb_err *err)
{
    while (w->out_off < w->out_len) {
        ssize_t n =
            w->lower.ops->write(&w->lower, w->out + w->out_off, w->out_len - w->out_off, err);
        if (n == RB_EAGAIN) {
            return RB_EAGAIN;
        }
        if (n < 0) {
            return (int)n;
        }
        w->out_off += (size_t)n;
    }
    w->out_off = w->out_len = 0;
    return 0;
}

/* ---- the upgrade ---- */

static int write_all(ws_client *w, const char *url_text, int64_t deadline_ns, rb_err *err)
{
    for (;;) {
        int rc = out_push(w, err);
        if (rc != RB_EAGAIN) {
            return rc;
        }
        rc = rb_client_wait(&w->lower, POLLOUT, deadline_ns, url_text, "WebSocket upgrade", err);
        if (rc != 0) {
            return rc;
        }
    }
}

/* Reads the answer head into in; returns its length (through the empty
 * line) or an error. */
static long read_head(ws_client *w, const char *url_text, int64_t deadline_ns, rb_err *err)
{
    for (;;) {
        uint8_t *end = memmem(w->in, w->in_len, "\r\n\r\n", 4);
        if (end != NULL) {
            return (long)(end - w->in) + 4;
        }
        rb_url_scheme layer = w->lower.ops == &rb_client_tcp_ops ? RB_URL_WS : RB_URL_WSS;
        const char *hint = rb_client_answer_hint(layer, w->in, w->in_len);
        if (w->in_len == WS_HEAD_BYTES_MAX ||
            (hint != NULL && w->in_len >= RB_FRAME_HEADER_BYTES)) {
            return hint != NULL ? rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME,
                                             "connect %s: WebSocket upgrade: %s", url_text, hint)
                                : rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME,
                                             "connect %s: WebSocket upgrade answer over %d bytes",
                                             url_text, WS_HEAD_BYTES_MAX);
        }
        ssize_t n =
            w->lower.ops->read(&w->lower, w->in + w->in_len, WS_HEAD_BYTES_MAX - w->in_len, err);
        if (n == 0) {
            return rb_err_set(err, RB_ECLOSED, 0,
                              "connect %s: server closed the connection during the upgrade%s%s",
                              url_text, hint != NULL ? ": " : "", hint != NULL ? hint : "");
        }
        if (n > 0) {
            w->in_len += (size_t)n;
            continue;
        }
        if (n != RB_EAGAIN) {
            return n;
        }
        bool pending = w->lower.ops->read_pending && w->lower.ops->read_pending(&w->lower);
        int rc = pending ? 0
                         : rb_client_wait(&w->lower, POLLIN, deadline_ns, url_text,
                                          "WebSocket upgrade", err);
        if (rc != 0) {
            return rc;
        }
    }
}

/* Checks the answer head (a string); body is what followed it. */
static int check_answer(const char *head, const uint8_t *body, size_t body_len, const char *accept,
                        const char *url_text, rb_err *err)
{
    const char *why;
    int rc = rb_wsframe_client_check_answer(head, accept, &why);
    if (rc > 0) {
        size_t n = body_len < 120 ? body_len : 120;
        while (n > 0 && (body[n - 1] == '\n' || body[n - 1] == '\r')) {
            n--;
        }
        return rb_err_set(err, RB_CLIENT_ESERVER, RB_WIRE_UNAVAILABLE,
                          "connect %s: WebSocket upgrade refused: %.*s%s%.*s", url_text,
                          (int)strcspn(head, "\r\n"), head, n > 0 ? ": " : "", (int)n,
                          (const char *)body);
    }
    if (rc < 0) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "connect %s: WebSocket upgrade: %s",
                          url_text, why);
    }
    return 0;
}

static int upgrade(ws_client *w, const rb_url *url, const char *origin, const char *url_text,
                   int64_t deadline_ns, rb_err *err)
{
    uint8_t nonce[16];
    char key[RB_WSFRAME_KEY_BYTES], accept[RB_WSFRAME_ACCEPT_BYTES];
    if (random_bytes(nonce, sizeof nonce) != 0) {
        return rb_err_set(err, RB_ESYS, 0, "connect %s: getrandom failed", url_text);
    }
    rb_wsframe_client_key(nonce, key);
    rb_wsframe_accept_key(key, strlen(key), accept);
    char host[RB_ADDRESS_BYTES_MAX + 16];
    snprintf(host, sizeof host, url->host_is_ipv6 ? "[%s]:%u" : "%s:%u", url->host, url->port);
    char req[RB_URL_PATH_BYTES_MAX + sizeof host + RB_ADDRESS_BYTES_MAX + 256];
    size_t n = rb_wsframe_client_request(req, sizeof req, url->path, host, key, origin);
    if (out_reserve(w, n) != 0) {
        return rb_err_set(err, RB_ENOMEM, 0, "connect %s: out of memory", url_text);
    }
    memcpy(w->out + w->out_len, req, n);
    w->out_len += n;
    int rc = write_all(w, url_text, deadline_ns, err);
    long head = rc == 0 ? read_head(w, url_text, deadline_ns, err) : rc;
    if (head < 0) {
        return (int)head;
    }
    w->in[head - 1] = '\0'; /* the final LF: the head becomes a string */
    rc = check_answer((const char *)w->in, w->in + head, w->in_len - (size_t)head, accept, url_text,
                      err);
    w->in_off = (size_t)head;
    w->upgraded = rc == 0;
    return rc;
}

/* ---- reading ---- */

/* Ends the stream on a protocol error: Close with its status, best effort. */
static ssize_t ws_fail(ws_client *w, rb_err *err)
{
    uint8_t payload[2];
    (void)rb_wsframe_close_payload(payload, w->ps.fail_code, NULL);
    (void)frame_put(w, RB_WS_OP_CLOSE, payload, 2);
    rb_err scratch;
    (void)out_push(w, &scratch);
    w->closed = true;
    snprintf(w->close_msg, sizeof w->close_msg, "WebSocket protocol error: %.100s",
             w->ps.fail_reason);
    return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "read: %s", w->close_msg);
}

static void on_control(ws_client *w, const rb_wsframe_event *ev)
{
    if (ev->kind == RB_WSFRAME_PING) {
        (void)frame_put(w, RB_WS_OP_PONG, ev->data, ev->len);
    } else if (ev->kind == RB_WSFRAME_CLOSE) {
        snprintf(w->close_msg, sizeof w->close_msg, "server closed the WebSocket: %u %.*s",
                 ev->close_code, (int)ev->len, (const char *)ev->data);
        uint8_t echo[2];
        (void)rb_wsframe_close_payload(echo, ev->close_code != 1005 ? ev->close_code : 1000, NULL);
        (void)frame_put(w, RB_WS_OP_CLOSE, echo, 2);
        w->closed = true;
    } else {
        return; /* Pong */
    }
    rb_err scratch;
    (void)out_push(w, &scratch);
}

/* Reads more bytes from the lower transport into in; returns whether any came. */
static bool fill_in(ws_client *w)
{
    if (w->lower_eof || w->lower_err.code != 0) {
        return false;
    }
    w->in_off = w->in_len = 0;
    ssize_t n = w->lower.ops->read(&w->lower, w->in, sizeof w->in, &w->lower_err);
    if (n == 0) {
        w->lower_eof = true;
    }
    if (n == RB_EAGAIN) {
        w->lower_err.code = 0;
    }
    if (n <= 0) {
        return false;
    }
    w->in_len = (size_t)n;
    return true;
}

static ssize_t ws_read(rb_client_transport *tp, void *buf, size_t len, rb_err *err)
{
    ws_client *w = tp->layer;
    size_t total = 0;
    w->more = false;
    while (total < len && !w->closed) {
        if (w->in_off == w->in_len && !fill_in(w)) {
            break;
        }
        rb_wsframe_event ev;
        size_t used;
        int rc = rb_wsframe_parse(&w->ps, w->in + w->in_off, w->in_len - w->in_off, &used,
                                  (uint8_t *)buf + total, len - total, &ev, err);
        w->in_off += used;
        if (rc != 0) {
            ssize_t r = ws_fail(w, err);
            return total > 0 ? (ssize_t)total : r;
        }
        if (ev.kind == RB_WSFRAME_DATA) {
            total += ev.len;
        } else if (ev.kind != RB_WSFRAME_NONE) {
            on_control(w, &ev);
        }
    }
    w->more = total == len;
    if (total > 0) {
        return (ssize_t)total;
    }
    if (w->closed) {
        return rb_err_set(err, RB_ECLOSED, 0, "%s", w->close_msg);
    }
    if (w->lower_err.code != 0) {
        *err = w->lower_err;
        return w->lower_err.code;
    }
    return w->lower_eof ? 0 : RB_EAGAIN;
}

/* ---- writing ---- */

static ssize_t ws_write(rb_client_transport *tp, const void *buf, size_t len, rb_err *err)
{
    ws_client *w = tp->layer;
    int rc = out_push(w, err);
    if (rc != 0) {
        return rc;
    }
    const uint8_t *p = buf;
    size_t used = 0;
    /* One binary message per ringbus frame: the buffer holds whole frames. */
    while (len - used >= RB_FRAME_HEADER_BYTES && w->out_len < WS_OUT_BATCH_BYTES) {
        uint32_t size = (uint32_t)p[used] | (uint32_t)p[used + 1] << 8 |
                        (uint32_t)p[used + 2] << 16 | (uint32_t)p[used + 3] << 24;
        RB_ASSERT(size >= RB_FRAME_HEADER_BYTES);
        if (size > len - used) {
            break;
        }
        if ((rc = frame_put(w, RB_WS_OP_BINARY, p + used, size)) != 0) {
            return rb_err_set(err, rc, 0, "write: WebSocket: out of memory");
        }
        used += size;
    }
    rc = out_push(w, err);
    if (rc != 0 && rc != RB_EAGAIN) {
        return rc;
    }
    return used > 0 || len == 0 ? (ssize_t)used : RB_EAGAIN;
}

/* ---- the ops ---- */

static void ws_close(rb_client_transport *tp)
{
    ws_client *w = tp->layer;
    if (w != NULL) {
        if (w->upgraded && !w->closed) {
            /* Close 1000, best effort: the socket is nonblocking. */
            static const uint8_t normal[2] = {0x03, 0xe8};
            rb_err scratch;
            if (frame_put(w, RB_WS_OP_CLOSE, normal, 2) == 0) {
                (void)out_push(w, &scratch);
            }
        }
        if (w->lower.ops != NULL) {
            w->lower.ops->close(&w->lower);
        }
        free(w->out);
        free(w);
        tp->layer = NULL;
    }
    tp->fd = -1;
}

static int ws_connect_over(rb_client_transport *tp, const rb_client_transport_ops *lower,
                           const rb_url *url, const char *url_text, int64_t deadline_ns,
                           rb_err *err)
{
    ws_client *w = calloc(1, sizeof *w);
    if (w == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "connect %s: out of memory", url_text);
    }
    tp->layer = w;
    w->lower.ops = lower;
    w->lower.fd = -1;
    w->lower.ca_file = tp->ca_file;
    w->lower.insecure = tp->insecure;
    w->lower.cert_file = tp->cert_file;
    w->lower.key_file = tp->key_file;
    w->lower.tls_library = tp->tls_library;
    w->lower.alpn = "http/1.1";
    rb_wsframe_parser_init(&w->ps, RB_WSFRAME_CLIENT, 0);
    int rc = lower->connect(&w->lower, url, url_text, deadline_ns, err);
    tp->fd = w->lower.fd;
    rc = rc ? rc : upgrade(w, url, tp->ws_origin, url_text, deadline_ns, err);
    if (rc != 0) {
        ws_close(tp);
    }
    return rc;
}

static int ws_connect(rb_client_transport *tp, const rb_url *url, const char *url_text,
                      int64_t deadline_ns, rb_err *err)
{
    return ws_connect_over(tp, &rb_client_tcp_ops, url, url_text, deadline_ns, err);
}

static int wss_connect(rb_client_transport *tp, const rb_url *url, const char *url_text,
                       int64_t deadline_ns, rb_err *err)
{
    return ws_connect_over(tp, &rb_client_tls_ops, url, url_text, deadline_ns, err);
}

static bool ws_read_pending(const rb_client_transport *tp)
{
    const ws_client *w = tp->layer;
    if (w == NULL) {
        return false;
    }
    const rb_client_transport *low = &w->lower;
    return w->more || w->in_off < w->in_len ||
           (low->ops->read_pending != NULL && low->ops->read_pending(low));
}

static bool ws_write_pending(const rb_client_transport *tp)
{
    const ws_client *w = tp->layer;
    return w != NULL && w->out_off < w->out_len;
}

const rb_client_transport_ops rb_client_ws_ops = {
    .name = "ws",
    .connect = ws_connect,
    .read = ws_read,
    .write = ws_write,
    .close = ws_close,
    .read_pending = ws_read_pending,
    .write_pending = ws_write_pending,
};

const rb_client_transport_ops rb_client_wss_ops = {
    .name = "wss",
    .connect = wss_connect,
    .read = ws_read,
    .write = ws_write,
    .close = ws_close,
    .read_pending = ws_read_pending,
    .write_pending = ws_write_pending,
};
