/* libFuzzer target for the WebSocket transport's input side: the HTTP/1.1
 * request-head parser (transports/http.c) and the WS layer (transports/
 * ws.c) behind a stack with checking sinks.
 *
 * 1. The input as a request head: a parsed head must lie inside the input
 *    and within RB_HTTP_HEAD_BYTES_MAX, every field name must be a token,
 *    no value may hold CR, LF or NUL, and a refusal must be 400 or 431.
 * 2. The input fed to a fresh WS layer, cut in two at a point taken from
 *    its first byte: whatever the layer answers or refuses, it never
 *    delivers more bytes than it got, and an answer before the upgrade is
 *    an HTTP status line.
 * 3. A valid upgrade, then the input as frames: the bytes delivered up
 *    never exceed max_frame_bytes per message nor the input's size.
 * Any other outcome traps (or trips ASan/UBSan).
 *
 * Build and run with `make fuzz T=http` (clang 14 with libFuzzer);
 * `make test` replays tests/fuzz/corpus/http through the same target. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/frame.h"
#include "server/admin.h"
#include "transports/http.h"
#include "transports/layer.h"
#include "transports/ws.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

#define MAX_FRAME 4096

static int is_token_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static void inside(rb_http_span s, const uint8_t *data, size_t head)
{
    CHECK((const uint8_t *)s.ptr >= data);
    CHECK((const uint8_t *)s.ptr + s.len <= data + head);
}

static void check_head(const uint8_t *data, size_t size)
{
    rb_http_request req;
    rb_err err = {0};
    int rc = rb_http_parse_request(data, size, &req, &err);
    if (rc == RB_EAGAIN) {
        CHECK(size < RB_HTTP_HEAD_BYTES_MAX);
        return;
    }
    if (rc != 0) {
        CHECK((rc == RB_EPROTO && err.cause == 400) || (rc == RB_ELIMIT && err.cause == 431));
        return;
    }
    CHECK(req.head_bytes <= size && req.head_bytes <= RB_HTTP_HEAD_BYTES_MAX);
    CHECK(req.header_count <= RB_HTTP_HEADERS_MAX);
    inside(req.method, data, req.head_bytes);
    inside(req.target, data, req.head_bytes);
    for (uint32_t i = 0; i < req.header_count; i++) {
        const rb_http_header *h = &req.headers[i];
        inside(h->name, data, req.head_bytes);
        inside(h->value, data, req.head_bytes);
        CHECK(h->name.len > 0);
        for (size_t k = 0; k < h->name.len; k++) {
            CHECK(is_token_char((uint8_t)h->name.ptr[k]));
        }
        for (size_t k = 0; k < h->value.len; k++) {
            uint8_t c = (uint8_t)h->value.ptr[k];
            CHECK(c != '\r' && c != '\n' && c != 0);
        }
        (void)rb_http_has_token(h->value, "upgrade");
    }
}

typedef struct sinks {
    size_t in_bytes; /* bytes fed to the stack */
    size_t up_bytes; /* bytes delivered up */
    size_t wire_bytes;
    uint8_t first_wire[16];
    int ended;
} sinks;

static bool s_deliver(void *owner, const uint8_t *p, size_t len)
{
    sinks *s = owner;
    (void)p;
    s->up_bytes += len;
    CHECK(s->up_bytes <= s->in_bytes);
    return true;
}

static int s_wire(void *owner, const uint8_t *p, size_t len)
{
    sinks *s = owner;
    for (size_t i = 0; i < len && s->wire_bytes + i < sizeof s->first_wire; i++) {
        s->first_wire[s->wire_bytes + i] = p[i];
    }
    s->wire_bytes += len;
    return 0;
}

static void s_ended(void *owner, rb_layer_end how, const char *why)
{
    (void)why;
    ((sinks *)owner)->ended = (int)how;
}

static rb_listener_config cfg;
static atomic_bool ready = true;
static rb_admin admin = {.ready = &ready};

static void stack_new(rb_stack *st, sinks *s)
{
    memset(s, 0, sizeof *s);
    strcpy(cfg.path, "/ringbus");
    rb_stack_sink sink = {s_deliver, s_wire, s_ended, s};
    rb_stack_init(st, &sink);
    rb_ws_options o = {
        .listener = &cfg, .max_frame_bytes = MAX_FRAME, .router = rb_admin_router(&admin)};
    rb_layer *l;
    rb_err err;
    CHECK(rb_ws_layer_new(&l, &o, &err) == 0);
    rb_stack_push(st, l);
}

static int feed(rb_stack *st, sinks *s, const uint8_t *p, size_t len)
{
    rb_err err = {0};
    s->in_bytes += len;
    int rc = rb_stack_recv(st, p, len, &err);
    CHECK(rc == 0 || rc == RB_EPROTO || rc == RB_ELIMIT);
    return rc;
}

static void check_ws_raw(const uint8_t *data, size_t size)
{
    rb_stack st;
    sinks s;
    stack_new(&st, &s);
    size_t cut = size > 0 ? data[0] % (size + 1) : 0;
    if (feed(&st, &s, data, cut) == 0) {
        (void)feed(&st, &s, data + cut, size - cut);
    }
    if (s.wire_bytes > 0) {
        CHECK(s.wire_bytes >= 12 && memcmp(s.first_wire, "HTTP/1.1 ", 9) == 0);
    }
    rb_stack_close(&st, RB_WIRE_BAD_FRAME);
    rb_stack_deinit(&st);
}

static void check_ws_frames(const uint8_t *data, size_t size)
{
    static const char up[] =
        "GET /ringbus HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ringbus.v1\r\n\r\n";
    rb_stack st;
    sinks s;
    stack_new(&st, &s);
    CHECK(feed(&st, &s, (const uint8_t *)up, sizeof up - 1) == 0);
    CHECK(rb_stack_ready(&st));
    s.in_bytes = 0;
    (void)feed(&st, &s, data, size);
    rb_stack_close(&st, RB_WIRE_OK);
    rb_stack_deinit(&st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_head(data, size);
    check_ws_raw(data, size);
    check_ws_frames(data, size);
    return 0;
}
