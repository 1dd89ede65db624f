/* The TLS layer on OpenSSL 3, for listeners with tls_library = "openssl".
 * Same behaviour as the wolfSSL layer in tls.c (TLS 1.3 only, no 0-RTT,
 * ALPN ringbus/1 and http/1.1 for wss, optional client certificates,
 * records staged to full size, no socket call inside the library), with
 * OpenSSL's assembly AES-GCM and ChaCha20-Poly1305. A BIO of our own lends
 * the received bytes to OpenSSL and passes its records down to the owner's
 * send queue, so no memory BIO copies them. Read and write buffers are
 * released while a connection is idle (SSL_MODE_RELEASE_BUFFERS). This
 * file includes OpenSSL headers and no wolfSSL ones. */
#include "transports/tls_ossl.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/assert.h"
#include "transports/tls_common.h"

/* AES-GCM first: OpenSSL uses AES-NI where the CPU has it, which beats
 * ChaCha20 there. A client that lists ChaCha20 first (one without fast
 * AES, libringbus on wolfSSL) gets ChaCha20 (SSL_OP_PRIORITIZE_CHACHA). */
#define OSSL_SUITES "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"
/* The ALPN protocol of the tls transport, as in tls.h. */
#define OSSL_ALPN "ringbus/1"

struct rb_tls_ossl_server {
    const rb_listener_config *cfg;
    pthread_mutex_t lock; /* guards ctx while a connection takes a reference */
    SSL_CTX *ctx;
};

typedef struct ossl_layer {
    rb_layer base;
    SSL *ssl;
    const uint8_t *in; /* received bytes lent to OpenSSL during ossl_recv */
    size_t in_len;
    rb_tls_stage stage; /* plaintext waiting to fill a record */
    rb_err *io_err;     /* where the write side reports a refused write */
    bool write_failed;
    bool started;
    bool handshake_done;
    bool failed;
    bool peer_closed;
    bool closed;
} ossl_layer;

#define OSSL_FROM(l) ((ossl_layer *)(l))

/* Decrypted bytes are handed up from here; one per shard thread. */
static _Thread_local uint8_t plain_scratch[RB_TLS_RECORD_BYTES];

static BIO_METHOD *bio_method; /* made once by rb_tls_ossl_global_init */

static const char *ossl_reason(unsigned long e, char *buf, size_t len)
{
    if (e == 0) {
        snprintf(buf, len, "OpenSSL gave no reason");
        return buf;
    }
    ERR_error_string_n(e, buf, len);
    return buf;
}

/* ---- our BIO: reads from the lent input, writes to the layer below ---- */

static int bio_write(BIO *b, const char *p, size_t len, size_t *written)
{
    ossl_layer *t = BIO_get_data(b);
    rb_err scratch;
    rb_err *err = t->io_err != NULL ? t->io_err : &scratch;
    if (rb_layer_down(&t->base, (const uint8_t *)p, len, err) != 0) {
        t->write_failed = true;
        return 0;
    }
    *written = len;
    return 1;
}

static int bio_read(BIO *b, char *p, size_t len, size_t *got)
{
    ossl_layer *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->in_len == 0) {
        BIO_set_retry_read(b);
        return 0;
    }
    size_t n = t->in_len < len ? t->in_len : len;
    memcpy(p, t->in, n);
    t->in += n;
    t->in_len -= n;
    *got = n;
    return 1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static int bio_destroy(BIO *b)
{
    BIO_set_data(b, NULL);
    return 1;
}

int rb_tls_ossl_global_init(rb_err *err)
{
    if (bio_method != NULL) {
        return 0;
    }
    if (OPENSSL_init_ssl(0, NULL) != 1) {
        return rb_err_set(err, RB_EUNSUPPORTED, 0, "OpenSSL: OPENSSL_init_ssl failed");
    }
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ringbus");
    if (m == NULL || BIO_meth_set_write_ex(m, bio_write) != 1 ||
        BIO_meth_set_read_ex(m, bio_read) != 1 || BIO_meth_set_ctrl(m, bio_ctrl) != 1 ||
        BIO_meth_set_create(m, bio_create) != 1 || BIO_meth_set_destroy(m, bio_destroy) != 1) {
        BIO_meth_free(m);
        return rb_err_set(err, RB_ENOMEM, 0, "OpenSSL: no memory for a BIO method");
    }
    bio_method = m;
    return 0;
}

void rb_tls_ossl_global_deinit(void)
{
    BIO_meth_free(bio_method);
    bio_method = NULL;
}

void rb_tls_ossl_thread_exit(void)
{
    OPENSSL_thread_stop();
}

/* ---- contexts ---- */

static int load_fail(const rb_listener_config *cfg, const char *what, const char *path, rb_err *err)
{
    char reason[160];
    return rb_err_set(err, RB_ECONFIG, 0, "%s listener %s:%u: %s %s: %s",
                      rb_transport_name(cfg->transport), cfg->address, cfg->port, what, path,
                      ossl_reason(ERR_get_error(), reason, sizeof reason));
}

static int mismatch(const rb_listener_config *cfg, rb_err *err)
{
    return rb_err_set(err, RB_ECONFIG, 0,
                      "%s listener %s:%u: key %s does not match cert %s (OpenSSL's key check)",
                      rb_transport_name(cfg->transport), cfg->address, cfg->port, cfg->key,
                      cfg->cert);
}

/* The client's ALPN offer must contain ours (http/1.1 also for wss, which
 * browsers ask for); a client that offers only others is refused, as the
 * wolfSSL layer does. A client that offers none is served. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    const rb_listener_config *cfg = arg;
    static const unsigned char ours[] = "\x09" OSSL_ALPN;
    static const unsigned char wss[] = "\x08http/1.1\x09" OSSL_ALPN;
    const unsigned char *list = cfg->transport == RB_TRANSPORT_WSS ? wss : ours;
    unsigned int list_len =
        cfg->transport == RB_TRANSPORT_WSS ? (unsigned)sizeof wss - 1 : (unsigned)sizeof ours - 1;
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, list, list_len, in, inlen) != OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static int ctx_load(SSL_CTX *ctx, const rb_listener_config *cfg, rb_err *err)
{
    int rc = rb_tls_file_check(cfg, "cert", cfg->cert, err);
    rc = rc ? rc : rb_tls_file_check(cfg, "key", cfg->key, err);
    if (rc == 0 && cfg->client_ca[0] != '\0') {
        rc = rb_tls_file_check(cfg, "client_ca", cfg->client_ca, err);
    }
    if (rc != 0) {
        return rc;
    }
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert) != 1) {
        return load_fail(cfg, "cert", cfg->cert, err);
    }
    /* OpenSSL compares the key with the certificate's public key (ECDSA
     * included) as it loads the key, and again in the check. */
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key, SSL_FILETYPE_PEM) != 1) {
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            return mismatch(cfg, err);
        }
        return load_fail(cfg, "key", cfg->key, err);
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        return mismatch(cfg, err);
    }
    if (cfg->client_ca[0] == '\0') {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return 0;
    }
    if (SSL_CTX_load_verify_locations(ctx, cfg->client_ca, NULL) != 1) {
        return load_fail(cfg, "client_ca", cfg->client_ca, err);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return 0;
}

static int ctx_build(SSL_CTX **out, const rb_listener_config *cfg, rb_err *err)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "tls: no memory for an OpenSSL context");
    }
    int rc = 0;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_ciphersuites(ctx, OSSL_SUITES) != 1) {
        rc = rb_err_set(err, RB_EUNSUPPORTED, 0, "tls: OpenSSL lacks TLS 1.3 or the suites %s",
                        OSSL_SUITES);
    }
    if (rc == 0) {
        SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA |
                                     SSL_OP_NO_RENEGOTIATION);
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
        /* No 0-RTT, no resumption tickets: clients do a full handshake,
         * and the server spends nothing on tickets nobody redeems. */
        SSL_CTX_set_max_early_data(ctx, 0);
        SSL_CTX_set_num_tickets(ctx, 0);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, (void *)cfg);
        rc = ctx_load(ctx, cfg, err);
    }
    if (rc != 0) {
        SSL_CTX_free(ctx);
        return rc;
    }
    *out = ctx;
    return 0;
}

int rb_tls_ossl_server_new(rb_tls_ossl_server **out, const rb_listener_config *cfg, rb_err *err)
{
    rb_tls_ossl_server *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "tls: out of memory");
    }
    s->cfg = cfg;
    int rc = ctx_build(&s->ctx, cfg, err);
    if (rc != 0) {
        free(s);
        return rc;
    }
    pthread_mutex_init(&s->lock, NULL);
    *out = s;
    return 0;
}

int rb_tls_ossl_server_reload(rb_tls_ossl_server *s, rb_err *err)
{
    SSL_CTX *fresh;
    int rc = ctx_build(&fresh, s->cfg, err);
    if (rc != 0) {
        return rc;
    }
    pthread_mutex_lock(&s->lock);
    SSL_CTX *old = s->ctx;
    s->ctx = fresh;
    pthread_mutex_unlock(&s->lock);
    /* Connections made from the old context hold references to it. */
    SSL_CTX_free(old);
    return 0;
}

void rb_tls_ossl_server_free(rb_tls_ossl_server *s)
{
    if (s == NULL) {
        return;
    }
    SSL_CTX_free(s->ctx);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* ---- the layer ---- */

static int ossl_error(ossl_layer *t, const char *what, int ret, rb_err *err)
{
    char reason[160];
    int e = SSL_get_error(t->ssl, ret);
    unsigned long q = ERR_get_error();
    t->failed = true;
    if (q == 0 && e == SSL_ERROR_SYSCALL) {
        ERR_clear_error();
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "TLS %s: %s", what,
                          t->write_failed ? "the send queue refused a record"
                                          : "unexpected end of the TLS stream");
    }
    ossl_reason(q, reason, sizeof reason);
    ERR_clear_error();
    return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "TLS %s: %s", what, reason);
}

static int handshake(ossl_layer *t, rb_err *err)
{
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        t->handshake_done = true;
        return 0;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        return 0;
    }
    return ossl_error(t, "handshake", r, err);
}

/* Decrypts every whole record received and hands the bytes up. */
static int read_records(ossl_layer *t, rb_err *err)
{
    /* Bounded by the input: each pass consumes at least one record. */
    for (;;) {
        size_t n = 0;
        int r = SSL_read_ex(t->ssl, plain_scratch, sizeof plain_scratch, &n);
        if (r == 1) {
            int rc = rb_layer_up(&t->base, plain_scratch, n, err);
            if (rc != 0) {
                return rc;
            }
            continue;
        }
        int e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            return 0;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            t->peer_closed = true;
            rb_layer_ended(&t->base, RB_LAYER_END_PEER, "peer sent TLS close_notify");
            return RB_ECLOSED;
        }
        return ossl_error(t, "read", r, err);
    }
}

static int ossl_recv(rb_layer *l, const uint8_t *p, size_t len, rb_err *err)
{
    ossl_layer *t = OSSL_FROM(l);
    if (t->failed || t->peer_closed) {
        return RB_ECLOSED;
    }
    if (!t->handshake_done && !t->started && len > 0) {
        t->started = true;
        if (p[0] != 22) {
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
    ossl_layer *t = OSSL_FROM(l);
    size_t done = 0;
    t->io_err = err;
    int r = SSL_write_ex(t->ssl, p, len, &done);
    t->io_err = NULL;
    if (r != 1 || done != len) {
        return ossl_error(t, "write", r, err);
    }
    return 0;
}

static int ossl_send(rb_layer *l, const uint8_t *p, size_t len, rb_err *err)
{
    ossl_layer *t = OSSL_FROM(l);
    if (!t->handshake_done || t->closed || t->failed) {
        return rb_err_set(err, RB_ECLOSED, RB_WIRE_BAD_FRAME, "TLS: not open for writing");
    }
    return rb_tls_stage_send(&t->stage, l, write_plain, p, len, err);
}

static int ossl_flush(rb_layer *l, rb_err *err)
{
    ossl_layer *t = OSSL_FROM(l);
    return t->failed ? 0 : rb_tls_stage_flush(&t->stage, l, write_plain, err);
}

static void ossl_close(rb_layer *l, uint16_t wire_status)
{
    (void)wire_status;
    ossl_layer *t = OSSL_FROM(l);
    if (!t->handshake_done || t->failed || t->closed) {
        t->closed = true;
        return;
    }
    t->closed = true;
    rb_err err;
    t->io_err = &err;
    (void)SSL_shutdown(t->ssl);
    t->io_err = NULL;
    ERR_clear_error();
}

static bool ossl_ready(const rb_layer *l)
{
    const ossl_layer *t = (const ossl_layer *)l;
    return t->handshake_done && !t->failed && !t->closed;
}

static void ossl_destroy(rb_layer *l)
{
    ossl_layer *t = OSSL_FROM(l);
    SSL_free(t->ssl); /* frees the BIO too */
    rb_tls_stage_free(&t->stage);
    free(t);
}

static size_t ossl_peer_cert_name(const rb_layer *l, char *out, size_t cap)
{
    const ossl_layer *t = (const ossl_layer *)l;
    if (!t->handshake_done || SSL_get_verify_result(t->ssl) != X509_V_OK) {
        return 0;
    }
    X509 *cert = SSL_get0_peer_certificate(t->ssl);
    if (cert == NULL) {
        return 0;
    }
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, out, (int)cap);
    return n > 0 && (size_t)n < cap && strlen(out) == (size_t)n ? (size_t)n : 0;
}

static const rb_layer_ops ossl_ops = {
    .name = "tls",
    .recv = ossl_recv,
    .send = ossl_send,
    .flush = ossl_flush,
    .close = ossl_close,
    .ready = ossl_ready,
    .destroy = ossl_destroy,
    .peer_cert_name = ossl_peer_cert_name,
};

int rb_tls_ossl_layer_new(rb_layer **out, rb_tls_ossl_server *s, rb_err *err)
{
    RB_ASSERT(bio_method != NULL);
    ossl_layer *t = calloc(1, sizeof *t);
    if (t == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "tls: out of memory");
    }
    t->base.ops = &ossl_ops;
    pthread_mutex_lock(&s->lock);
    t->ssl = SSL_new(s->ctx);
    pthread_mutex_unlock(&s->lock);
    BIO *b = t->ssl != NULL ? BIO_new(bio_method) : NULL;
    if (b == NULL) {
        ossl_destroy(&t->base);
        return rb_err_set(err, RB_ENOMEM, 0, "tls: out of memory");
    }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b);
    SSL_set_accept_state(t->ssl);
    *out = &t->base;
    return 0;
}
