/* The TLS layer on wolfSSL with app-driven I/O: the owner hands received
 * bytes to tls_recv, which lends them to wolfSSL's read callback for the
 * duration of the call; wolfSSL's write callback passes records down to the
 * owner's send queue. No socket call happens inside wolfSSL. Frame bytes
 * are staged into full records before they are encrypted, so small frames
 * do not each cost a record. This file includes wolfSSL headers and no
 * OpenSSL ones. */
#include "transports/tls.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
/* wolfSSL's own EVP layer (its compatibility header, not OpenSSL's). */
#include <wolfssl/openssl/evp.h>
#include <wolfssl/wolfcrypt/ecc.h>

#include "common/assert.h"
#include "transports/tls_common.h"
#include "transports/tls_ossl.h"
#include "transports/tls_pair.h"

/* TLS 1.3 suites, ChaCha20-Poly1305 first: without AES-NI it is the
 * fastest, and the server's order wins. */
#define TLS_CIPHERS "TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384"

struct rb_tls_server {
    const rb_listener_config *cfg;
    rb_tls_ossl_server *ossl; /* tls_library = "openssl": all of it is there */
    pthread_mutex_t lock;     /* guards ctx while a connection takes a reference */
    WOLFSSL_CTX *ctx;
};

typedef struct tls_layer {
    rb_layer base;
    WOLFSSL *ssl;
    const uint8_t *in; /* received bytes lent to wolfSSL during tls_recv */
    size_t in_len;
    rb_tls_stage stage; /* plaintext waiting to fill a record */
    rb_err *io_err;     /* where the write callback reports a refused write */
    bool started;       /* the first bytes arrived */
    bool handshake_done;
    bool failed;
    bool peer_closed;
    bool closed;
} tls_layer;

#define TLS_FROM(l) ((tls_layer *)(l))

/* Decrypted bytes are handed up from here; one per shard thread. */
static _Thread_local uint8_t plain_scratch[RB_TLS_RECORD_BYTES];

int rb_tls_global_init(rb_err *err)
{
    if (wolfSSL_Init() != WOLFSSL_SUCCESS) {
        return rb_err_set(err, RB_EUNSUPPORTED, 0, "wolfSSL_Init failed");
    }
    return rb_tls_ossl_global_init(err);
}

void rb_tls_global_deinit(void)
{
    rb_tls_ossl_global_deinit();
    wolfSSL_Cleanup();
}

void rb_tls_thread_exit(void)
{
#ifdef FP_ECC
    wc_ecc_fp_free();
#endif
    rb_tls_ossl_thread_exit();
}

static const char *wolf_reason(int code, char *buf, size_t len)
{
    wolfSSL_ERR_error_string_n((unsigned long)code, buf, len);
    return buf;
}

/* ---- contexts ---- */

static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx);
static int io_send(WOLFSSL *ssl, char *buf, int sz, void *ctx);

/* The reason wolfSSL recorded for the last failed load: its error queue
 * holds the real cause (a file that is not PEM, a bad base64 body), while
 * the call itself returns only WOLFSSL_FAILURE. */
static const char *load_reason(int rc, char *buf, size_t len)
{
    unsigned long e = wolfSSL_ERR_get_error();
    if (e == 0 && rc != WOLFSSL_FAILURE) {
        e = (unsigned long)rc;
    }
    if (e == 0) {
        snprintf(buf, len, "not a usable PEM file (wolfSSL gave no reason)");
        return buf;
    }
    return wolf_reason((int)e, buf, len);
}

static int load_fail(const rb_listener_config *cfg, const char *what, const char *path, int rc,
                     rb_err *err)
{
    char reason[128];
    return rb_err_set(err, RB_ECONFIG, rc, "%s listener %s:%u: %s %s: %s",
                      rb_transport_name(cfg->transport), cfg->address, cfg->port, what, path,
                      load_reason(rc, reason, sizeof reason));
}

static int mismatch(const rb_listener_config *cfg, const char *how, rb_err *err)
{
    return rb_err_set(err, RB_ECONFIG, 0, "%s listener %s:%u: key %s does not match cert %s (%s)",
                      rb_transport_name(cfg->transport), cfg->address, cfg->port, cfg->key,
                      cfg->cert, how);
}

static int ctx_load(WOLFSSL_CTX *ctx, const rb_listener_config *cfg, rb_err *err)
{
    int rc = rb_tls_file_check(cfg, "cert", cfg->cert, err);
    rc = rc ? rc : rb_tls_file_check(cfg, "key", cfg->key, err);
    if (rc == 0 && cfg->client_ca[0] != '\0') {
        rc = rb_tls_file_check(cfg, "client_ca", cfg->client_ca, err);
    }
    if (rc != 0) {
        return rc;
    }
    wolfSSL_ERR_clear_error();
    if ((rc = wolfSSL_CTX_use_certificate_chain_file(ctx, cfg->cert)) != WOLFSSL_SUCCESS) {
        return load_fail(cfg, "cert", cfg->cert, rc, err);
    }
    wolfSSL_ERR_clear_error();
    rc = wolfSSL_CTX_use_PrivateKey_file(ctx, cfg->key, WOLFSSL_FILETYPE_PEM);
    if (rc != WOLFSSL_SUCCESS) {
        return load_fail(cfg, "key", cfg->key, rc, err);
    }
    if (wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS) {
        wolfSSL_ERR_clear_error();
        return mismatch(cfg, "wolfSSL's key check failed", err);
    }
    if (rb_tls_pair_signs(ctx) == 0) {
        return mismatch(cfg, "a signature made with the key does not verify with the cert", err);
    }
    if (cfg->client_ca[0] == '\0') {
        wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
        return 0;
    }
    wolfSSL_ERR_clear_error();
    rc = wolfSSL_CTX_load_verify_locations(ctx, cfg->client_ca, NULL);
    if (rc != WOLFSSL_SUCCESS) {
        return load_fail(cfg, "client_ca", cfg->client_ca, rc, err);
    }
    wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return 0;
}

static int ctx_build(WOLFSSL_CTX **out, const rb_listener_config *cfg, rb_err *err)
{
    WOLFSSL_CTX *ctx = wolfSSL_CTX_new(wolfTLSv1_3_server_method());
    if (ctx == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "tls: no memory for a context");
    }
    int rc = 0;
    if (wolfSSL_CTX_set_cipher_list(ctx, TLS_CIPHERS) != WOLFSSL_SUCCESS) {
        rc = rb_err_set(err, RB_EUNSUPPORTED, 0, "tls: wolfSSL lacks the suites %s", TLS_CIPHERS);
    }
    rc = rc ? rc : ctx_load(ctx, cfg, err);
    if (rc != 0) {
        wolfSSL_CTX_free(ctx);
        return rc;
    }
    wolfSSL_CTX_SetIORecv(ctx, io_recv);
    wolfSSL_CTX_SetIOSend(ctx, io_send);
    *out = ctx;
    return 0;
}

int rb_tls_server_new(rb_tls_server **out, const rb_listener_config *cfg, rb_err *err)
{
    rb_tls_server *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "tls: out of memory");
    }
    s->cfg = cfg;
    int rc = cfg->tls_library == RB_TLS_LIBRARY_OPENSSL ? rb_tls_ossl_server_new(&s->ossl, cfg, err)
                                                        : ctx_build(&s->ctx, cfg, err);
    if (rc != 0) {
        free(s);
        return rc;
    }
    pthread_mutex_init(&s->lock, NULL);
    *out = s;
    return 0;
}

int rb_tls_server_reload(rb_tls_server *s, rb_err *err)
{
    if (s->ossl != NULL) {
        return rb_tls_ossl_server_reload(s->ossl, err);
    }
    WOLFSSL_CTX *fresh;
    int rc = ctx_build(&fresh, s->cfg, err);
    if (rc != 0) {
        return rc;
    }
    pthread_mutex_lock(&s->lock);
    WOLFSSL_CTX *old = s->ctx;
    s->ctx = fresh;
    pthread_mutex_unlock(&s->lock);
    /* Connections made from the old context hold references to it. */
    wolfSSL_CTX_free(old);
    return 0;
}

void rb_tls_server_free(rb_tls_server *s)
{
    if (s == NULL) {
        return;
    }
    rb_tls_ossl_server_free(s->ossl);
    if (s->ctx != NULL) {
        wolfSSL_CTX_free(s->ctx);
    }
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* ---- wolfSSL's I/O ---- */

static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    (void)ssl;
    tls_layer *t = ctx;
    if (t->in_len == 0) {
        return WOLFSSL_CBIO_ERR_WANT_READ;
    }
    size_t n = t->in_len < (size_t)sz ? t->in_len : (size_t)sz;
    memcpy(buf, t->in, n);
    t->in += n;
    t->in_len -= n;
    return (int)n;
}

static int io_send(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    (void)ssl;
    tls_layer *t = ctx;
    rb_err scratch;
    rb_err *err = t->io_err != NULL ? t->io_err : &scratch;
    if (rb_layer_down(&t->base, (const uint8_t *)buf, (size_t)sz, err) != 0) {
        return WOLFSSL_CBIO_ERR_GENERAL;
    }
    return sz;
}

/* ---- the layer ---- */

static int tls_error(tls_layer *t, const char *what, int ret, rb_err *err)
{
    char reason[128];
    int e = wolfSSL_get_error(t->ssl, ret);
    t->failed = true;
    return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "TLS %s: %s", what,
                      wolf_reason(e, reason, sizeof reason));
}

static int handshake(tls_layer *t, rb_err *err)
{
    int r = wolfSSL_accept(t->ssl);
    if (r == WOLFSSL_SUCCESS) {
        t->handshake_done = true;
        return 0;
    }
    int e = wolfSSL_get_error(t->ssl, r);
    if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE) {
        return 0;
    }
    return tls_error(t, "handshake", r, err);
}

/* Decrypts every whole record received and hands the bytes up. */
static int read_records(tls_layer *t, rb_err *err)
{
    /* Bounded by the input: each pass consumes at least one record. */
    for (;;) {
        int n = wolfSSL_read(t->ssl, plain_scratch, sizeof plain_scratch);
        if (n > 0) {
            int rc = rb_layer_up(&t->base, plain_scratch, (size_t)n, err);
            if (rc != 0) {
                return rc;
            }
            continue;
        }
        int e = wolfSSL_get_error(t->ssl, n);
        if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE) {
            return 0;
        }
        if (e == WOLFSSL_ERROR_ZERO_RETURN) {
            t->peer_closed = true;
            rb_layer_ended(&t->base, RB_LAYER_END_PEER, "peer sent TLS close_notify");
            return RB_ECLOSED;
        }
        return tls_error(t, "read", n, err);
    }
}

static int tls_recv(rb_layer *l, const uint8_t *p, size_t len, rb_err *err)
{
    tls_layer *t = TLS_FROM(l);
    if (t->failed || t->peer_closed) {
        return RB_ECLOSED;
    }
    if (!t->handshake_done && !t->started && len > 0) {
        t->started = true;
        if (p[0] != 22) {
            /* Not a TLS handshake record: the client speaks something
             * else to a TLS port. */
            t->failed = true;
            return rb_tls_refuse_not_tls(&t->base, p, len, err);
        }
    }
    t->in = p;
    t->in_len = len;
    t->io_err = err;
    int rc = t->handshake_done ? 0 : handshake(t, err);
    if (rc == 0 && t->handshake_done) {
        rc = read_records(t, err);
    }
    t->in = NULL;
    t->in_len = 0;
    t->io_err = NULL;
    return rc;
}

static int write_plain(rb_layer *l, const uint8_t *p, size_t len, rb_err *err)
{
    tls_layer *t = TLS_FROM(l);
    t->io_err = err;
    int r = wolfSSL_write(t->ssl, p, (int)len);
    t->io_err = NULL;
    if (r != (int)len) {
        return tls_error(t, "write", r, err);
    }
    return 0;
}

static int tls_send(rb_layer *l, const uint8_t *p, size_t len, rb_err *err)
{
    tls_layer *t = TLS_FROM(l);
    if (!t->handshake_done || t->closed || t->failed) {
        /* A layer above may try to answer while TLS is not open. */
        return rb_err_set(err, RB_ECLOSED, RB_WIRE_BAD_FRAME, "TLS: not open for writing");
    }
    return rb_tls_stage_send(&t->stage, l, write_plain, p, len, err);
}

static int tls_flush(rb_layer *l, rb_err *err)
{
    tls_layer *t = TLS_FROM(l);
    return t->failed ? 0 : rb_tls_stage_flush(&t->stage, l, write_plain, err);
}

static void tls_close(rb_layer *l, uint16_t wire_status)
{
    (void)wire_status;
    tls_layer *t = TLS_FROM(l);
    if (!t->handshake_done || t->failed || t->closed) {
        t->closed = true;
        return;
    }
    t->closed = true;
    /* close_notify; the peer's reply is not waited for (the grace timer
     * bounds the rest of the close). */
    rb_err err;
    t->io_err = &err;
    (void)wolfSSL_shutdown(t->ssl);
    t->io_err = NULL;
}

static bool tls_ready(const rb_layer *l)
{
    const tls_layer *t = (const tls_layer *)l;
    return t->handshake_done && !t->failed && !t->closed;
}

static void tls_destroy(rb_layer *l)
{
    tls_layer *t = TLS_FROM(l);
    if (t->ssl != NULL) {
        wolfSSL_free(t->ssl);
    }
    rb_tls_stage_free(&t->stage);
    free(t);
}

static const rb_layer_ops tls_ops = {
    .name = "tls",
    .recv = tls_recv,
    .send = tls_send,
    .flush = tls_flush,
    .close = tls_close,
    .ready = tls_ready,
    .destroy = tls_destroy,
};

static const char *alpn_list(const rb_listener_config *cfg)
{
    /* Browsers ask for http/1.1 on wss. */
    return cfg->transport == RB_TRANSPORT_WSS ? "http/1.1," RB_TLS_ALPN : RB_TLS_ALPN;
}

int rb_tls_layer_new(rb_layer **out, rb_tls_server *s, rb_err *err)
{
    if (s->ossl != NULL) {
        return rb_tls_ossl_layer_new(out, s->ossl, err);
    }
    tls_layer *t = calloc(1, sizeof *t);
    if (t == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "tls: out of memory");
    }
    t->base.ops = &tls_ops;
    pthread_mutex_lock(&s->lock);
    t->ssl = wolfSSL_new(s->ctx);
    pthread_mutex_unlock(&s->lock);
    if (t->ssl == NULL) {
        tls_destroy(&t->base);
        return rb_err_set(err, RB_ENOMEM, 0, "tls: out of memory");
    }
    char alpn[64];
    snprintf(alpn, sizeof alpn, "%s", alpn_list(s->cfg));
    wolfSSL_SetIOReadCtx(t->ssl, t);
    wolfSSL_SetIOWriteCtx(t->ssl, t);
    if (wolfSSL_UseALPN(t->ssl, alpn, (unsigned)strlen(alpn), WOLFSSL_ALPN_FAILED_ON_MISMATCH) !=
        WOLFSSL_SUCCESS) {
        tls_destroy(&t->base);
        return rb_err_set(err, RB_ENOMEM, 0, "tls: ALPN setup failed");
    }
    *out = &t->base;
    return 0;
}
