/* RFC 6455 framing and handshake pieces for both roles (wsframe.h). The
 * parser takes any split of the input: a header is gathered in the state,
 * never more bytes than it needs, and payload is unmasked eight bytes at a
 * time into the caller's buffer. SHA-1 comes from wolfCrypt, so this file
 * includes wolfSSL headers and no OpenSSL ones; base64 is common/'s. */
#include "transports/wsframe.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hash.h>

#include "common/assert.h"
#include "common/base64.h"
#include "common/frame.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
/* The longest Sec-WebSocket-Key the accept value is computed for. */
#define WS_KEY_BYTES_MAX 128

/* ---- base64 and the handshake ---- */

/* base64 of len bytes into out (4 * ceil(len / 3) + 1 bytes), NUL-ended. */
static void base64(const uint8_t *in, size_t len, char *out, size_t cap)
{
    size_t n = rb_base64_encoded_len(len, 0);
    RB_ASSERT(cap >= n + 1);
    rb_base64_encode(out, in, len, 0);
    out[n] = '\0';
}

void rb_wsframe_accept_key(const char *key, size_t key_len, char out[RB_WSFRAME_ACCEPT_BYTES])
{
    uint8_t buf[WS_KEY_BYTES_MAX + sizeof WS_GUID];
    uint8_t digest[20];
    RB_ASSERT(key_len <= WS_KEY_BYTES_MAX);
    memcpy(buf, key, key_len);
    memcpy(buf + key_len, WS_GUID, sizeof WS_GUID - 1);
    int rc = wc_ShaHash(buf, (word32)(key_len + sizeof WS_GUID - 1), digest);
    RB_ASSERT(rc == 0);
    base64(digest, sizeof digest, out, RB_WSFRAME_ACCEPT_BYTES);
}

void rb_wsframe_client_key(const uint8_t nonce[16], char out[RB_WSFRAME_KEY_BYTES])
{
    base64(nonce, 16, out, RB_WSFRAME_KEY_BYTES);
}

bool rb_wsframe_key_ok(const char *key, size_t key_len)
{
    /* 16 random bytes in base64: 22 characters and "==". */
    if (key_len != 24 || memcmp(key + 22, "==", 2) != 0) {
        return false;
    }
    for (size_t i = 0; i < 22; i++) {
        char c = key[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '+' || c == '/';
        if (!ok) {
            return false;
        }
    }
    return true;
}

size_t rb_wsframe_client_request(char *out, size_t cap, const char *path, const char *host,
                                 const char *key, const char *origin)
{
    int n = snprintf(out, cap,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Protocol: " RB_WS_SUBPROTOCOL
                     "\r\n%s%s%sUser-Agent: libringbus\r\n\r\n",
                     path, host, key, origin != NULL ? "Origin: " : "",
                     origin != NULL ? origin : "", origin != NULL ? "\r\n" : "");
    RB_ASSERT(n > 0 && (size_t)n < cap);
    return (size_t)n;
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

int rb_wsframe_client_check_answer(const char *head, const char *accept, const char **why)
{
    int status = 0;
    *why = NULL;
    if (sscanf(head, "HTTP/1.1 %d", &status) != 1 || status != 101) {
        return 1;
    }
    char v[128];
    if (!header_value(head, "Upgrade", v, sizeof v) || strcasecmp(v, "websocket") != 0) {
        *why = "no \"Upgrade: websocket\"";
    } else if (!header_value(head, "Sec-WebSocket-Accept", v, sizeof v) || strcmp(v, accept)) {
        *why = "wrong Sec-WebSocket-Accept";
    } else if (!header_value(head, "Sec-WebSocket-Protocol", v, sizeof v) ||
               strcmp(v, RB_WS_SUBPROTOCOL) != 0) {
        *why = "subprotocol " RB_WS_SUBPROTOCOL " not selected";
    }
    return *why != NULL ? -1 : 0;
}

/* ---- writing ---- */

size_t rb_wsframe_header(uint8_t *h, uint8_t opcode, bool fin, uint64_t len, const uint8_t *key)
{
    uint8_t mask_bit = key != NULL ? 0x80u : 0;
    size_t n = 2;
    h[0] = (uint8_t)((fin ? 0x80u : 0) | opcode);
    if (len < 126) {
        h[1] = (uint8_t)(mask_bit | len);
    } else if (len <= 0xffff) {
        h[1] = (uint8_t)(mask_bit | 126);
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        n = 4;
    } else {
        h[1] = (uint8_t)(mask_bit | 127);
        for (int i = 0; i < 8; i++) {
            h[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        }
        n = 10;
    }
    if (key != NULL) {
        memcpy(h + n, key, 4);
        n += 4;
    }
    return n;
}

/* Eight bytes per step through a 64-bit word (memcpy keeps it
 * alignment-free; compilers turn the loop into vector code). */
void rb_wsframe_mask(uint8_t *out, const uint8_t *in, size_t len, const uint8_t key[4],
                     uint64_t pos)
{
    uint8_t k8[8];
    for (int i = 0; i < 8; i++) {
        k8[i] = key[(pos + (uint64_t)i) & 3];
    }
    uint64_t k;
    memcpy(&k, k8, 8);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, in + i, 8);
        v ^= k;
        memcpy(out + i, &v, 8);
    }
    for (; i < len; i++) {
        out[i] = in[i] ^ k8[i & 7];
    }
}

size_t rb_wsframe_close_payload(uint8_t *out, uint16_t code, const char *reason)
{
    size_t n = reason != NULL ? strnlen(reason, RB_WSFRAME_REASON_BYTES_MAX) : 0;
    /* A reason cut inside a UTF-8 sequence would be invalid: drop it. */
    if (!rb_utf8_valid((const uint8_t *)reason, n)) {
        n = 0;
    }
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    if (n > 0) {
        memcpy(out + 2, reason, n);
    }
    return 2 + n;
}

bool rb_wsframe_close_code_ok(uint16_t code)
{
    return (code >= 1000 && code <= 1014 && code != 1004 && code != 1005 && code != 1006) ||
           (code >= 3000 && code <= 4999);
}

/* ---- parsing ---- */

void rb_wsframe_parser_init(rb_wsframe_parser *ps, rb_wsframe_role role, uint64_t message_bytes_max)
{
    memset(ps, 0, sizeof *ps);
    ps->role = role;
    ps->message_bytes_max = message_bytes_max;
}

/* Records the Close to send and returns the error that ends the input:
 * err->cause is the ringbus status the owner closes with. */
__attribute__((format(printf, 5, 6))) static int
fail(rb_wsframe_parser *ps, rb_err *err, uint16_t ws_code, uint16_t wire_code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->fail_reason, sizeof ps->fail_reason, fmt, ap);
    va_end(ap);
    ps->fail_code = ws_code;
    ps->fail_status = wire_code;
    ps->failed = true;
    return rb_err_set(err, RB_EPROTO, wire_code, "WebSocket %u: %s", ws_code, ps->fail_reason);
}

/* Header bytes the gathered ones say the header has. */
static uint32_t head_need(const rb_wsframe_parser *ps)
{
    if (ps->hdr_len < 2) {
        return 2;
    }
    uint8_t b1 = ps->hdr[1];
    uint8_t len7 = b1 & 0x7f;
    return 2u + ((b1 & 0x80) ? 4u : 0u) + (len7 == 126 ? 2u : len7 == 127 ? 8u : 0u);
}

/* Checks a complete header in ps->hdr and opens its frame. */
static int head_parse(rb_wsframe_parser *ps, rb_err *err)
{
    uint8_t b0 = ps->hdr[0];
    uint8_t b1 = ps->hdr[1];
    uint8_t len7 = b1 & 0x7f;
    bool fin = (b0 & 0x80) != 0;
    uint8_t rsv = (uint8_t)((b0 >> 4) & 7);
    uint8_t op = b0 & 0x0f;
    bool masked = (b1 & 0x80) != 0;
    const uint8_t *q = ps->hdr + 2;
    uint64_t payload = len7;
    if (len7 == 126) {
        payload = (uint64_t)q[0] << 8 | q[1];
        q += 2;
    } else if (len7 == 127) {
        payload = 0;
        for (int i = 0; i < 8; i++) {
            payload = payload << 8 | q[i];
        }
        q += 8;
        if (payload >> 63) {
            return fail(ps, err, 1002, RB_WIRE_BAD_FRAME,
                        "malformed frame header (64-bit length with its top bit set)");
        }
    }
    if ((op & 0x8) != 0 && (!fin || payload > RB_WSFRAME_CONTROL_BYTES_MAX)) {
        return fail(ps, err, 1002, RB_WIRE_BAD_FRAME,
                    "malformed frame header (a control frame must be final and at most "
                    "%u bytes)",
                    RB_WSFRAME_CONTROL_BYTES_MAX);
    }
    if (rsv != 0) {
        return fail(ps, err, 1002, RB_WIRE_BAD_FRAME, "reserved bits set (no extension)");
    }
    if (ps->role == RB_WSFRAME_SERVER && !masked) {
        return fail(ps, err, 1002, RB_WIRE_BAD_FRAME, "client frames must be masked");
    }
    if (ps->role == RB_WSFRAME_CLIENT && masked) {
        return fail(ps, err, 1002, RB_WIRE_BAD_FRAME, "server frames must not be masked");
    }
    switch (op) {
    case RB_WS_OP_TEXT:
        return ps->role == RB_WSFRAME_SERVER
                   ? fail(ps, err, 1003, RB_WIRE_BAD_FRAME,
                          "text messages are not supported; send each frame as a binary message")
                   : fail(ps, err, 1003, RB_WIRE_BAD_FRAME, "text message from the server");
    case RB_WS_OP_BINARY:
        if (ps->in_message) {
            return fail(ps, err, 1002, RB_WIRE_BAD_FRAME, "new message inside a fragmented one");
        }
        ps->msg_bytes = 0;
        break;
    case RB_WS_OP_CONT:
        if (!ps->in_message) {
            return fail(ps, err, 1002, RB_WIRE_BAD_FRAME, "continuation without a message");
        }
        break;
    case RB_WS_OP_CLOSE:
    case RB_WS_OP_PING:
    case RB_WS_OP_PONG:
        break;
    default:
        return fail(ps, err, 1002, RB_WIRE_BAD_FRAME, "unknown opcode %u", op);
    }
    if ((op & 0x8) == 0) {
        uint64_t max = ps->message_bytes_max;
        if (max != 0 && ps->msg_bytes + payload > max) {
            return fail(ps, err, 1009, RB_WIRE_TOO_LARGE, "message over max_frame_bytes (%llu)",
                        (unsigned long long)max);
        }
        ps->msg_bytes += payload;
        ps->in_message = true;
    }
    if (masked) {
        memcpy(ps->mask, q, 4);
    }
    ps->hdr_len = 0;
    ps->frame_open = true;
    ps->frame_fin = fin;
    ps->frame_masked = masked;
    ps->frame_op = op;
    ps->frame_left = payload;
    ps->frame_pos = 0;
    ps->ctl_len = 0;
    return 0;
}

/* A control frame's payload is complete: its event. */
static int control_done(rb_wsframe_parser *ps, rb_wsframe_event *ev, rb_err *err)
{
    ps->frame_open = false;
    ev->data = ps->ctl;
    ev->len = ps->ctl_len;
    if (ps->frame_op == RB_WS_OP_PING) {
        ev->kind = RB_WSFRAME_PING;
        return 0;
    }
    if (ps->frame_op == RB_WS_OP_PONG) {
        ev->kind = RB_WSFRAME_PONG;
        return 0;
    }
    ev->kind = RB_WSFRAME_CLOSE;
    ev->close_code = 1005;
    if (ps->ctl_len == 1) {
        return fail(ps, err, 1002, RB_WIRE_BAD_FRAME, "Close payload of one byte");
    }
    if (ps->ctl_len >= 2) {
        uint16_t code = (uint16_t)(ps->ctl[0] << 8 | ps->ctl[1]);
        if (!rb_wsframe_close_code_ok(code)) {
            return fail(ps, err, 1002, RB_WIRE_BAD_FRAME, "invalid Close status %u", code);
        }
        if (!rb_utf8_valid(ps->ctl + 2, ps->ctl_len - 2)) {
            return fail(ps, err, 1007, RB_WIRE_BAD_FRAME, "Close reason is not UTF-8");
        }
        ev->close_code = code;
        ev->data = ps->ctl + 2;
        ev->len = ps->ctl_len - 2;
    }
    return 0;
}

/* Payload bytes: from in into dst, unmasked if the frame is. */
static void take_payload(rb_wsframe_parser *ps, uint8_t *dst, const uint8_t *in, size_t n)
{
    if (ps->frame_masked) {
        rb_wsframe_mask(dst, in, n, ps->mask, ps->frame_pos);
    } else {
        memcpy(dst, in, n);
    }
    ps->frame_pos += n;
    ps->frame_left -= n;
}

/* A data frame's payload is complete. */
static void data_frame_done(rb_wsframe_parser *ps, rb_wsframe_event *ev)
{
    ps->frame_open = false;
    if (ps->frame_fin) {
        ps->in_message = false;
        ev->message_end = true;
    }
}

int rb_wsframe_parse(rb_wsframe_parser *ps, const uint8_t *in, size_t len, size_t *used,
                     uint8_t *out, size_t out_cap, rb_wsframe_event *ev, rb_err *err)
{
    RB_ASSERT(out_cap > 0);
    memset(ev, 0, sizeof *ev);
    *used = 0;
    if (ps->failed) {
        return rb_err_set(err, RB_EPROTO, ps->fail_status, "WebSocket %u: %s", ps->fail_code,
                          ps->fail_reason);
    }
    size_t off = 0;
    int rc = 0;
    /* Each pass takes input or ends: bounded by len plus one frame end. */
    while (rc == 0 && ev->kind == RB_WSFRAME_NONE) {
        if (!ps->frame_open) {
            /* Header bytes, never more than the header needs: the first
             * two say how long it is. */
            while (ps->hdr_len < head_need(ps) && off < len) {
                size_t take = head_need(ps) - ps->hdr_len;
                take = take < len - off ? take : len - off;
                memcpy(ps->hdr + ps->hdr_len, in + off, take);
                ps->hdr_len += (uint32_t)take;
                off += take;
            }
            if (ps->hdr_len < head_need(ps)) {
                break;
            }
            if ((rc = head_parse(ps, err)) != 0) {
                break;
            }
            if ((ps->frame_op & 0x8) != 0) {
                if (ps->frame_left == 0) {
                    rc = control_done(ps, ev, err);
                }
                continue;
            }
            if (ps->frame_op == RB_WS_OP_BINARY) {
                ev->kind = RB_WSFRAME_DATA;
                ev->data = out;
                ev->message_begin = true;
                ev->frame_fin = ps->frame_fin;
                ev->frame_bytes = ps->frame_left;
            }
            if (ps->frame_left == 0) {
                data_frame_done(ps, ev);
                ev->kind = ev->message_begin || ev->message_end ? RB_WSFRAME_DATA : ev->kind;
                ev->data = out;
            }
            continue;
        }
        if (off == len) {
            break;
        }
        size_t n = ps->frame_left < len - off ? (size_t)ps->frame_left : len - off;
        if ((ps->frame_op & 0x8) != 0) {
            RB_ASSERT(ps->ctl_len + n <= RB_WSFRAME_CONTROL_BYTES_MAX);
            take_payload(ps, ps->ctl + ps->ctl_len, in + off, n);
            ps->ctl_len += (uint32_t)n;
            off += n;
            if (ps->frame_left == 0) {
                rc = control_done(ps, ev, err);
            }
            continue;
        }
        n = n < out_cap ? n : out_cap;
        take_payload(ps, out, in + off, n);
        off += n;
        ev->kind = RB_WSFRAME_DATA;
        ev->data = out;
        ev->len = n;
        if (ps->frame_left == 0) {
            data_frame_done(ps, ev);
        }
    }
    *used = off;
    RB_ASSERT(*used <= len);
    return rc;
}
