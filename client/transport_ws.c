/* The client's WebSocket transports: ws:// over the tcp transport and
 * wss:// over the tls one. Connect sends the HTTP/1.1 upgrade (subprotocol
 * ringbus.v1) and checks the 101 answer and its Sec-WebSocket-Accept; then
 * every ringbus frame written goes out as one masked binary message, and
 * reads return the payload bytes of the binary messages received (parsed
 * with wslay's frame parser), answering Pings on the way. A server Close
 * ends the stream with its status in the error. This file includes wolfSSL
 * headers (SHA-1) and no OpenSSL ones. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wslay/wslay.h>

#include "client/transport.h"
#include "common/assert.h"
#include "common/frame.h"
#include "common/limits.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
/* The server's upgrade answer is a few hundred bytes. */
#define WS_HEAD_BYTES_MAX 8192
/* Frames encoded per write before they are pushed down. */
#define WS_OUT_BATCH_BYTES   (256u * 1024u)
#define WS_CONTROL_BYTES_MAX 125
#define WS_MASK_POOL_BYTES   256

enum {
    OP_CONT = 0,
    OP_TEXT = 1,
    OP_BINARY = 2,
    OP_CLOSE = 8,
    OP_PING = 9,
    OP_PONG = 10
};

typedef struct ws_client {
    rb_client_transport lower; /* tcp or tls */
    wslay_frame_context_ptr fr;
    /* input: bytes read with the upgrade answer, served before the socket */
    uint8_t pre[WS_HEAD_BYTES_MAX];
    size_t pre_off, pre_len;
    bool lower_eof;
    rb_err lower_err;     /* a read error of the lower transport, code 0 if none */
    const uint8_t *chunk; /* payload wslay returned that the caller has not taken */
    size_t chunk_len;
    bool frame_open;
    uint64_t frame_left;
    uint8_t frame_op;
    uint8_t ctl[WS_CONTROL_BYTES_MAX];
    size_t ctl_len;
    bool more;
    bool upgraded;
    bool closed; /* the server's Close arrived */
    char close_msg[RB_ERR_MSG_BYTES_MAX / 2];
    /* output: encoded frames not yet taken by the lower transport */
    uint8_t *out;
    size_t out_off, out_len, out_cap;
    uint8_t masks[WS_MASK_POOL_BYTES];
    size_t mask_off;
} ws_client;

/* ---- helpers ---- */

static void base64(const uint8_t *in, size_t len, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        v |= i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0;
        v |= i + 2 < len ? (uint32_t)in[i + 2] : 0;
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? tab[v & 63] : '=';
    }
    out[o] = '\0';
}

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

/* dst = src XOR the repeated 4-byte key, eight bytes at a time. */
static void mask_copy(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4])
{
    uint8_t k8[8];
    memcpy(k8, key, 4);
    memcpy(k8 + 4, key, 4);
    uint64_t k;
    memcpy(&k, k8, 8);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= k;
        memcpy(dst + i, &v, 8);
    }
    for (; i < len; i++) {
        dst[i] = src[i] ^ key[i & 3];
    }
}

/* Appends one masked frame. */
static int frame_put(ws_client *w, uint8_t opcode, const uint8_t *p, size_t len)
{
    int rc = out_reserve(w, len + 14);
    if (rc != 0) {
        return rc;
    }
    uint8_t *h = w->out + w->out_len;
    size_t n = 2;
    h[0] = (uint8_t)(0x80u | opcode);
    if (len < 126) {
        h[1] = (uint8_t)(0x80u | len);
    } else if (len <= 0xffff) {
        h[1] = 0x80u | 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        n = 4;
    } else {
        h[1] = 0x80u | 127;
        for (int i = 0; i < 8; i++) {
            h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        }
        n = 10;
    }
    if (next_mask(w, h + n) != 0) {
        return RB_ESYS;
    }
    mask_copy(h + n + 4, p, len, h + n);
    w->out_len += n + 4 + len;
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

/* Reads the answer head into pre; returns its length (through the empty
 * line) or an error. */
static long read_head(ws_client *w, const char *url_text, int64_t deadline_ns, rb_err *err)
{
    for (;;) {
        uint8_t *end = memmem(w->pre, w->pre_len, "\r\n\r\n", 4);
        if (end != NULL) {
            return (long)(end - w->pre) + 4;
        }
        rb_url_scheme layer = w->lower.ops == &rb_client_tcp_ops ? RB_URL_WS : RB_URL_WSS;
        const char *hint = rb_client_answer_hint(layer, w->pre, w->pre_len);
        if (w->pre_len == sizeof w->pre || (hint != NULL && w->pre_len >= RB_FRAME_HEADER_BYTES)) {
            return hint != NULL ? rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME,
                                             "connect %s: WebSocket upgrade: %s", url_text, hint)
                                : rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME,
                                             "connect %s: WebSocket upgrade answer over %d bytes",
                                             url_text, WS_HEAD_BYTES_MAX);
        }
        ssize_t n =
            w->lower.ops->read(&w->lower, w->pre + w->pre_len, sizeof w->pre - w->pre_len, err);
        if (n == 0) {
            return rb_err_set(err, RB_ECLOSED, 0,
                              "connect %s: server closed the connection during the upgrade%s%s",
                              url_text, hint != NULL ? ": " : "", hint != NULL ? hint : "");
        }
        if (n > 0) {
            w->pre_len += (size_t)n;
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

/* The value of header `name` in head (NUL-terminated copy in out). */
static bool header_value(const char *head, const char *name, char *out, size_t cap)
{
    size_t n = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line != NULL; line = strstr(line + 2, "\r\n")) {
        const char *p = line + 2;
        if (strncasecmp(p, name, n) != 0 || p[n] != ':') {
            continue;
        }
        p += n + 1;
        while (*p == ' ' || *p == '\t') {
            p++;
        }
        size_t len = strcspn(p, "\r\n");
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t')) {
            len--;
        }
        snprintf(out, cap, "%.*s", (int)len, p);
        return true;
    }
    return false;
}

/* Checks the answer head (a string); body is what followed it. */
static int check_answer(const char *head, const uint8_t *body, size_t body_len, const char *accept,
                        const char *url_text, rb_err *err)
{
    int status = 0;
    if (sscanf(head, "HTTP/1.1 %d", &status) != 1 || status != 101) {
        size_t n = body_len < 120 ? body_len : 120;
        while (n > 0 && (body[n - 1] == '\n' || body[n - 1] == '\r')) {
            n--;
        }
        return rb_err_set(err, RB_CLIENT_ESERVER, RB_WIRE_UNAVAILABLE,
                          "connect %s: WebSocket upgrade refused: %.*s%s%.*s", url_text,
                          (int)strcspn(head, "\r\n"), head, n > 0 ? ": " : "", (int)n,
                          (const char *)body);
    }
    char v[128];
    const char *why = NULL;
    if (!header_value(head, "Upgrade", v, sizeof v) || strcasecmp(v, "websocket") != 0) {
        why = "no \"Upgrade: websocket\"";
    } else if (!header_value(head, "Sec-WebSocket-Accept", v, sizeof v) || strcmp(v, accept)) {
        why = "wrong Sec-WebSocket-Accept";
    } else if (!header_value(head, "Sec-WebSocket-Protocol", v, sizeof v) ||
               strcmp(v, "ringbus.v1") != 0) {
        why = "subprotocol ringbus.v1 not selected";
    }
    if (why != NULL) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "connect %s: WebSocket upgrade: %s",
                          url_text, why);
    }
    return 0;
}

static int upgrade(ws_client *w, const rb_url *url, const char *origin, const char *url_text,
                   int64_t deadline_ns, rb_err *err)
{
    uint8_t nonce[16];
    char key[32], accept[32];
    uint8_t buf[128], digest[20];
    if (random_bytes(nonce, sizeof nonce) != 0) {
        return rb_err_set(err, RB_ESYS, 0, "connect %s: getrandom failed", url_text);
    }
    base64(nonce, sizeof nonce, key);
    int n = snprintf((char *)buf, sizeof buf, "%s%s", key, WS_GUID);
    wc_ShaHash(buf, (word32)n, digest);
    base64(digest, sizeof digest, accept);
    char host[RB_ADDRESS_BYTES_MAX + 16];
    snprintf(host, sizeof host, url->host_is_ipv6 ? "[%s]:%u" : "%s:%u", url->host, url->port);
    char req[RB_URL_PATH_BYTES_MAX + sizeof host + RB_ADDRESS_BYTES_MAX + 256];
    n = snprintf(req, sizeof req,
                 "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                 "Sec-WebSocket-Protocol: ringbus.v1\r\n%s%s%sUser-Agent: libringbus\r\n\r\n",
                 url->path, host, key, origin != NULL ? "Origin: " : "",
                 origin != NULL ? origin : "", origin != NULL ? "\r\n" : "");
    RB_ASSERT(n > 0 && (size_t)n < sizeof req);
    if (out_reserve(w, (size_t)n) != 0) {
        return rb_err_set(err, RB_ENOMEM, 0, "connect %s: out of memory", url_text);
    }
    memcpy(w->out + w->out_len, req, (size_t)n);
    w->out_len += (size_t)n;
    int rc = write_all(w, url_text, deadline_ns, err);
    long head = rc == 0 ? read_head(w, url_text, deadline_ns, err) : rc;
    if (head < 0) {
        return (int)head;
    }
    w->pre[head - 1] = '\0'; /* the final LF: the head becomes a string */
    rc = check_answer((const char *)w->pre, w->pre + head, w->pre_len - (size_t)head, accept,
                      url_text, err);
    w->pre_off = (size_t)head;
    w->upgraded = rc == 0;
    return rc;
}

/* ---- reading ---- */

static ssize_t wslay_pull(uint8_t *buf, size_t len, int flags, void *user_data)
{
    (void)flags;
    ws_client *w = user_data;
    if (w->pre_off < w->pre_len) {
        size_t n = w->pre_len - w->pre_off < len ? w->pre_len - w->pre_off : len;
        memcpy(buf, w->pre + w->pre_off, n);
        w->pre_off += n;
        return (ssize_t)n;
    }
    if (w->lower_eof || w->lower_err.code != 0) {
        return -1;
    }
    ssize_t n = w->lower.ops->read(&w->lower, buf, len, &w->lower_err);
    if (n == 0) {
        w->lower_eof = true;
    }
    if (n == RB_EAGAIN) {
        w->lower_err.code = 0;
    }
    return n > 0 ? n : -1;
}

static ssize_t ws_fail(ws_client *w, rb_err *err, uint16_t code, const char *why)
{
    uint8_t payload[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    (void)frame_put(w, OP_CLOSE, payload, 2);
    rb_err scratch;
    (void)out_push(w, &scratch);
    w->closed = true;
    snprintf(w->close_msg, sizeof w->close_msg, "WebSocket protocol error: %s", why);
    return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "read: %s", w->close_msg);
}

/* Checks a frame header from the server. */
static ssize_t frame_begin(ws_client *w, const struct wslay_frame_iocb *io, rb_err *err)
{
    w->frame_open = true;
    w->frame_left = io->payload_length;
    w->frame_op = io->opcode;
    w->ctl_len = 0;
    if (io->mask || io->rsv != 0) {
        return ws_fail(w, err, 1002, "masked frame or reserved bits from the server");
    }
    if (io->opcode == OP_TEXT) {
        return ws_fail(w, err, 1003, "text message from the server");
    }
    if (io->opcode > OP_BINARY && io->opcode != OP_CLOSE && io->opcode != OP_PING &&
        io->opcode != OP_PONG) {
        return ws_fail(w, err, 1002, "unknown opcode");
    }
    return 0;
}

static void on_control(ws_client *w)
{
    if (w->frame_op == OP_PING) {
        (void)frame_put(w, OP_PONG, w->ctl, w->ctl_len);
    } else if (w->frame_op == OP_CLOSE) {
        unsigned code = w->ctl_len >= 2 ? (unsigned)(w->ctl[0] << 8 | w->ctl[1]) : 1005;
        int rlen = w->ctl_len > 2 ? (int)(w->ctl_len - 2) : 0;
        snprintf(w->close_msg, sizeof w->close_msg, "server closed the WebSocket: %u %.*s", code,
                 rlen, (const char *)w->ctl + 2);
        uint8_t echo[2] = {w->ctl_len >= 2 ? w->ctl[0] : 0x03, w->ctl_len >= 2 ? w->ctl[1] : 0xe8};
        (void)frame_put(w, OP_CLOSE, echo, 2);
        w->closed = true;
    }
    rb_err scratch;
    (void)out_push(w, &scratch);
}

/* Parses frames until a payload chunk is at hand. Returns 1 (chunk set),
 * 0 (nothing more for now) or an error. */
static ssize_t next_chunk(ws_client *w, rb_err *err)
{
    while (!w->closed) {
        struct wslay_frame_iocb io;
        memset(&io, 0, sizeof io);
        ssize_t r = wslay_frame_recv(w->fr, &io);
        if (r == WSLAY_ERR_WANT_READ) {
            return 0;
        }
        if (r < 0) {
            return ws_fail(w, err, 1002, "malformed frame header");
        }
        if (!w->frame_open && (r = frame_begin(w, &io, err)) != 0) {
            return r;
        }
        w->frame_left -= io.data_length;
        if (w->frame_op == OP_BINARY || w->frame_op == OP_CONT) {
            w->frame_open = w->frame_left > 0;
            w->chunk = io.data;
            w->chunk_len = io.data_length;
            if (io.data_length > 0) {
                return 1;
            }
            continue;
        }
        memcpy(w->ctl + w->ctl_len, io.data, io.data_length);
        w->ctl_len += io.data_length;
        if (w->frame_left == 0) {
            w->frame_open = false;
            on_control(w);
        }
    }
    return 0;
}

static ssize_t ws_read(rb_client_transport *tp, void *buf, size_t len, rb_err *err)
{
    ws_client *w = tp->layer;
    size_t total = 0;
    w->more = false;
    while (total < len) {
        if (w->chunk_len == 0) {
            ssize_t r = next_chunk(w, err);
            if (r < 0) {
                return total > 0 ? (ssize_t)total : r;
            }
            if (r == 0) {
                break;
            }
        }
        size_t n = w->chunk_len < len - total ? w->chunk_len : len - total;
        memcpy((uint8_t *)buf + total, w->chunk, n);
        w->chunk += n;
        w->chunk_len -= n;
        total += n;
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
        if ((rc = frame_put(w, OP_BINARY, p + used, size)) != 0) {
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

static ssize_t wslay_push_unused(const uint8_t *data, size_t len, int flags, void *user_data)
{
    (void)data;
    (void)len;
    (void)flags;
    (void)user_data;
    return -1;
}

static int wslay_genmask_unused(uint8_t *buf, size_t len, void *user_data)
{
    (void)buf;
    (void)len;
    (void)user_data;
    return -1;
}

static void ws_close(rb_client_transport *tp)
{
    ws_client *w = tp->layer;
    if (w != NULL) {
        if (w->upgraded && !w->closed) {
            /* Close 1000, best effort: the socket is nonblocking. */
            static const uint8_t normal[2] = {0x03, 0xe8};
            rb_err scratch;
            if (frame_put(w, OP_CLOSE, normal, 2) == 0) {
                (void)out_push(w, &scratch);
            }
        }
        if (w->fr != NULL) {
            wslay_frame_context_free(w->fr);
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
    struct wslay_frame_callbacks cb = {wslay_push_unused, wslay_pull, wslay_genmask_unused};
    int rc = wslay_frame_context_init(&w->fr, &cb, w) == 0
                 ? 0
                 : rb_err_set(err, RB_ENOMEM, 0, "connect %s: out of memory", url_text);
    if (rc == 0) {
        rc = lower->connect(&w->lower, url, url_text, deadline_ns, err);
    }
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
    return w->more || w->chunk_len > 0 || w->pre_off < w->pre_len ||
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
