/* Tests of the layer stack as a wss link builds it (tcp -> tls -> ws,
 * transports/layer.h) against a real wolfSSL client over memory: the TLS
 * handshake and the WebSocket upgrade through it, a ringbus frame up and
 * one down inside both layers, the closing bytes in order (WS Close inside
 * TLS, then close_notify), and frame bytes refused before the handshakes
 * are done. The certificate is made with openssl at test time. */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "common/frame.h"
#include "server/admin.h"
#include "transports/layer.h"
#include "transports/tls.h"
#include "transports/ws.h"

typedef struct pipe_buf {
    uint8_t data[1 << 17];
    size_t len;
} pipe_buf;

typedef struct harness {
    rb_stack st;
    pipe_buf up;        /* frame bytes out of the top layer */
    pipe_buf to_client; /* socket bytes the server side wrote */
    pipe_buf to_server; /* socket bytes the client wrote */
    int ended;
    rb_tls_server *tls;
    WOLFSSL_CTX *cctx;
    WOLFSSL *cssl;
    char dir[256];
    rb_listener_config cfg;
} harness;

static atomic_bool ready = true;
static rb_admin admin = {.ready = &ready};

static void put(pipe_buf *b, const uint8_t *p, size_t len)
{
    ck_assert_uint_le(b->len + len, sizeof b->data);
    memcpy(b->data + b->len, p, len);
    b->len += len;
}

static bool s_deliver(void *owner, const uint8_t *p, size_t len)
{
    put(&((harness *)owner)->up, p, len);
    return true;
}

static int s_wire(void *owner, const uint8_t *p, size_t len)
{
    put(&((harness *)owner)->to_client, p, len);
    return 0;
}

static void s_ended(void *owner, rb_layer_end how, const char *why)
{
    (void)why;
    ((harness *)owner)->ended = (int)how;
}

/* The client's I/O: it reads what the server side wrote and writes into
 * the server's input. */
static int c_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    (void)ssl;
    harness *h = ctx;
    if (h->to_client.len == 0) {
        return WOLFSSL_CBIO_ERR_WANT_READ;
    }
    size_t n = h->to_client.len < (size_t)sz ? h->to_client.len : (size_t)sz;
    memcpy(buf, h->to_client.data, n);
    memmove(h->to_client.data, h->to_client.data + n, h->to_client.len - n);
    h->to_client.len -= n;
    return (int)n;
}

static int c_send(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    (void)ssl;
    put(&((harness *)ctx)->to_server, (const uint8_t *)buf, (size_t)sz);
    return sz;
}

/* Moves the client's bytes into the stack and flushes what it wrote. */
static void pump(harness *h)
{
    rb_err err = {0};
    if (h->to_server.len > 0) {
        size_t n = h->to_server.len;
        h->to_server.len = 0;
        static uint8_t copy[1 << 17];
        memcpy(copy, h->to_server.data, n);
        ck_assert_msg(rb_stack_recv(&h->st, copy, n, &err) == 0, "%s", err.msg);
    }
    ck_assert_int_eq(rb_stack_flush(&h->st, &err), 0);
}

static void make_cert(harness *h)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(h->dir, sizeof h->dir, "%s/rb_stack_XXXXXX", tmp != NULL ? tmp : P_tmpdir);
    ck_assert_ptr_nonnull(mkdtemp(h->dir));
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-keyout key.pem -out cert.pem -days 2 -subj /CN=localhost >/dev/null 2>&1",
             h->dir);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(h->cfg.cert, sizeof h->cfg.cert, "%s/cert.pem", h->dir);
    snprintf(h->cfg.key, sizeof h->cfg.key, "%s/key.pem", h->dir);
}

/* lib: 0 for OpenSSL (the default), 1 for wolfSSL; every test runs with
 * both (a loop test). */
static void setup(harness *h, int lib)
{
    memset(h, 0, sizeof *h);
    h->cfg.tls_library = lib == 0 ? RB_TLS_LIBRARY_OPENSSL : RB_TLS_LIBRARY_WOLFSSL;
    rb_err err = {0};
    ck_assert_int_eq(rb_tls_global_init(&err), 0);
    make_cert(h);
    h->cfg.transport = RB_TRANSPORT_WSS;
    snprintf(h->cfg.path, sizeof h->cfg.path, "/ringbus");
    ck_assert_msg(rb_tls_server_new(&h->tls, &h->cfg, &err) == 0, "%s", err.msg);
    rb_stack_sink sink = {s_deliver, s_wire, s_ended, h};
    rb_stack_init(&h->st, &sink);
    rb_layer *l;
    ck_assert_int_eq(rb_tls_layer_new(&l, h->tls, &err), 0);
    rb_stack_push(&h->st, l);
    rb_ws_options o = {
        .listener = &h->cfg, .max_frame_bytes = 4096, .router = rb_admin_router(&admin)};
    ck_assert_int_eq(rb_ws_layer_new(&l, &o, &err), 0);
    rb_stack_push(&h->st, l);

    h->cctx = wolfSSL_CTX_new(wolfTLSv1_3_client_method());
    ck_assert_ptr_nonnull(h->cctx);
    wolfSSL_CTX_set_verify(h->cctx, WOLFSSL_VERIFY_NONE, NULL);
    wolfSSL_CTX_SetIORecv(h->cctx, c_recv);
    wolfSSL_CTX_SetIOSend(h->cctx, c_send);
    h->cssl = wolfSSL_new(h->cctx);
    ck_assert_ptr_nonnull(h->cssl);
    wolfSSL_SetIOReadCtx(h->cssl, h);
    wolfSSL_SetIOWriteCtx(h->cssl, h);
    char alpn[] = "http/1.1";
    ck_assert_int_eq(
        wolfSSL_UseALPN(h->cssl, alpn, sizeof alpn - 1, WOLFSSL_ALPN_FAILED_ON_MISMATCH),
        WOLFSSL_SUCCESS);
}

static void teardown(harness *h)
{
    wolfSSL_free(h->cssl);
    wolfSSL_CTX_free(h->cctx);
    rb_stack_deinit(&h->st);
    rb_tls_server_free(h->tls);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", h->dir);
    ck_assert_int_eq(system(cmd), 0);
}

static void handshake(harness *h)
{
    for (int i = 0; i < 20; i++) {
        int rc = wolfSSL_connect(h->cssl);
        pump(h);
        if (rc == WOLFSSL_SUCCESS) {
            return;
        }
        ck_assert_int_eq(wolfSSL_get_error(h->cssl, rc), WOLFSSL_ERROR_WANT_READ);
    }
    ck_abort_msg("TLS handshake did not finish");
}

static void client_write(harness *h, const void *p, size_t len)
{
    ck_assert_int_eq(wolfSSL_write(h->cssl, p, (int)len), (int)len);
    pump(h);
}

/* Everything the client can decrypt now. */
static size_t client_read(harness *h, uint8_t *out, size_t cap)
{
    size_t n = 0;
    for (;;) {
        int rc = wolfSSL_read(h->cssl, out + n, (int)(cap - n));
        if (rc <= 0) {
            break;
        }
        n += (size_t)rc;
    }
    return n;
}

static void upgrade(harness *h)
{
    const char *req = "GET /ringbus HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ringbus.v1\r\n\r\n";
    client_write(h, req, strlen(req));
    char resp[1024];
    size_t n = client_read(h, (uint8_t *)resp, sizeof resp - 1);
    resp[n] = 0;
    ck_assert_ptr_nonnull(strstr(resp, "HTTP/1.1 101 "));
    ck_assert(rb_stack_ready(&h->st));
}

START_TEST(test_stack_frames_pass_through_tls_and_ws_both_ways)
{
    harness *h = calloc(1, sizeof *h);
    setup(h, _i);
    ck_assert(!rb_stack_ready(&h->st));
    handshake(h);
    /* TLS is up, the upgrade is not: frame bytes may not pass yet. */
    ck_assert(!rb_stack_ready(&h->st));
    upgrade(h);
    uint8_t frame[32];
    size_t fn = rb_frame_encode_ping(frame, sizeof frame, 5, 99);
    uint8_t ws[64] = {0x82, (uint8_t)(0x80 | fn), 1, 2, 3, 4};
    for (size_t i = 0; i < fn; i++) {
        ws[6 + i] = frame[i] ^ ws[2 + i % 4];
    }
    client_write(h, ws, 6 + fn);
    ck_assert_uint_eq(h->up.len, fn);
    ck_assert_mem_eq(h->up.data, frame, fn);
    /* A PONG down: one unmasked binary message inside a TLS record. */
    uint8_t pong[32];
    size_t pn = rb_frame_encode_pong(pong, sizeof pong, 5, 99);
    rb_err err;
    ck_assert_int_eq(rb_stack_send(&h->st, pong, pn, &err), 0);
    ck_assert_int_eq(rb_stack_flush(&h->st, &err), 0);
    uint8_t got[128];
    size_t gn = client_read(h, got, sizeof got);
    ck_assert_uint_eq(gn, 2 + pn);
    ck_assert_uint_eq(got[0], 0x82);
    ck_assert_uint_eq(got[1], pn);
    ck_assert_mem_eq(got + 2, pong, pn);
    teardown(h);
    free(h);
}
END_TEST

START_TEST(test_stack_close_sends_ws_close_inside_tls_then_close_notify)
{
    harness *h = calloc(1, sizeof *h);
    setup(h, _i);
    handshake(h);
    upgrade(h);
    rb_stack_close(&h->st, RB_WIRE_GOING_AWAY);
    ck_assert(!rb_stack_ready(&h->st));
    uint8_t got[128];
    size_t gn = client_read(h, got, sizeof got);
    /* WS Close 1001 came first, inside TLS ... */
    ck_assert_uint_ge(gn, 4);
    ck_assert_uint_eq(got[0], 0x88);
    ck_assert_uint_eq((unsigned)(got[2] << 8 | got[3]), 1001);
    /* ... then close_notify ended the TLS stream. */
    int rc = wolfSSL_read(h->cssl, got, sizeof got);
    ck_assert_int_le(rc, 0);
    ck_assert_int_eq(wolfSSL_get_error(h->cssl, rc), WOLFSSL_ERROR_ZERO_RETURN);
    teardown(h);
    free(h);
}
END_TEST

START_TEST(test_stack_healthz_is_answered_inside_tls)
{
    harness *h = calloc(1, sizeof *h);
    setup(h, _i);
    handshake(h);
    const char *req = "GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n";
    client_write(h, req, strlen(req));
    char resp[512];
    size_t n = client_read(h, (uint8_t *)resp, sizeof resp - 1);
    resp[n] = 0;
    ck_assert_ptr_nonnull(strstr(resp, "HTTP/1.1 200 OK\r\n"));
    ck_assert_int_eq(h->ended, RB_LAYER_END_DONE);
    teardown(h);
    free(h);
}
END_TEST

Suite *rb_stack_suite(void);

Suite *rb_stack_suite(void)
{
    Suite *s = suite_create("stack");
    TCase *tc = tcase_create("tls under ws, on OpenSSL and wolfSSL");
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, test_stack_frames_pass_through_tls_and_ws_both_ways, 0, 2);
    tcase_add_loop_test(tc, test_stack_close_sends_ws_close_inside_tls_then_close_notify, 0, 2);
    tcase_add_loop_test(tc, test_stack_healthz_is_answered_inside_tls, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}
