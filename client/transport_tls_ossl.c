/* The client's tls transport on OpenSSL 3 (the default; transport_tls.c
 * has the wolfSSL one): TLS 1.3 on the nonblocking socket, the server
 * certificate verified against the CA file or the system store and its
 * name (or address) checked, SNI for names, ALPN ringbus/1, an optional
 * client certificate. OpenSSL's AES-GCM uses AES-NI, so AES-128-GCM is
 * offered first. This file includes OpenSSL headers and no wolfSSL ones. */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "client/transport.h"

#define OSSL_CLIENT_SUITES                                                                         \
    "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"

typedef struct ossl_client {
    SSL_CTX *ctx;
    SSL *ssl;
    bool more; /* the last read filled the caller's buffer: input may be buffered */
    /* The server's first bytes as OpenSSL read them, to name a server that
     * does not speak TLS. */
    uint8_t first[RB_CLIENT_ANSWER_PEEK_BYTES];
    size_t first_len;
} ossl_client;

static const char *last_reason(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (e == 0) {
        snprintf(buf, len, "no reason given");
        return buf;
    }
    ERR_error_string_n(e, buf, len);
    return buf;
}

static int setup_client_cert(rb_client_transport *tp, ossl_client *t, const char *url_text,
                             rb_err *err)
{
    if (tp->cert_file == NULL) {
        return 0;
    }
    char why[160];
    if (SSL_CTX_use_certificate_chain_file(t->ctx, tp->cert_file) != 1) {
        return rb_err_set(
            err, RB_EINVAL, 0, "connect %s: client certificate %s: %s", url_text, tp->cert_file,
            access(tp->cert_file, R_OK) != 0 ? "cannot be read" : last_reason(why, sizeof why));
    }
    if (SSL_CTX_use_PrivateKey_file(t->ctx, tp->key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(t->ctx) != 1) {
        ERR_clear_error();
        return rb_err_set(err, RB_EINVAL, 0, "connect %s: client key %s: %s", url_text,
                          tp->key_file,
                          access(tp->key_file, R_OK) != 0 ? "cannot be read"
                                                          : "not a PEM key of the certificate");
    }
    return 0;
}

static int setup_verify(rb_client_transport *tp, ossl_client *t, const char *url_text, rb_err *err)
{
    if (tp->insecure) {
        SSL_CTX_set_verify(t->ctx, SSL_VERIFY_NONE, NULL);
        return 0;
    }
    const char *ca = tp->ca_file != NULL ? tp->ca_file : RB_CLIENT_SYSTEM_CA_FILE;
    if (SSL_CTX_load_verify_locations(t->ctx, ca, NULL) != 1) {
        char why[160];
        return rb_err_set(err, RB_EINVAL, 0, "connect %s: CA file %s: %s", url_text, ca,
                          access(ca, R_OK) != 0 ? "cannot be read" : last_reason(why, sizeof why));
    }
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    return 0;
}

/* Keeps a copy of the first bytes the server sent (to name a server that
 * does not speak TLS if the handshake fails). */
static long keep_first(BIO *b, int oper, const char *argp, size_t len, int argi, long argl, int ret,
                       size_t *processed)
{
    (void)len;
    (void)argi;
    (void)argl;
    if (oper != (BIO_CB_READ | BIO_CB_RETURN) || ret <= 0 || processed == NULL) {
        return ret;
    }
    ossl_client *t = (ossl_client *)BIO_get_callback_arg(b);
    if (t != NULL && t->first_len < sizeof t->first) {
        size_t take = sizeof t->first - t->first_len;
        take = take < *processed ? take : *processed;
        memcpy(t->first + t->first_len, argp, take);
        t->first_len += take;
    }
    return ret;
}

static int setup_ssl(rb_client_transport *tp, ossl_client *t, const rb_url *url,
                     const char *url_text, rb_err *err)
{
    t->ssl = SSL_new(t->ctx);
    BIO *b = t->ssl != NULL ? BIO_new_socket(tp->fd, BIO_NOCLOSE) : NULL;
    if (b == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "connect %s: TLS: out of memory", url_text);
    }
    BIO_set_callback_ex(b, keep_first);
    BIO_set_callback_arg(b, (char *)t);
    SSL_set_bio(t->ssl, b, b);
    bool address = rb_url_host_is_address(url->host);
    int ok = 1;
    if (!address) {
        /* SNI names a host, never an address (RFC 6066). */
        ok = SSL_set_tlsext_host_name(t->ssl, url->host);
    }
    if (ok == 1 && !tp->insecure) {
        ok = address ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), url->host)
                     : SSL_set1_host(t->ssl, url->host);
    }
    const char *proto = tp->alpn != NULL ? tp->alpn : "ringbus/1";
    size_t plen = strlen(proto);
    unsigned char alpn[32];
    if (ok == 1 && plen > 0 && plen < sizeof alpn) {
        alpn[0] = (unsigned char)plen;
        memcpy(alpn + 1, proto, plen);
        /* SSL_set_alpn_protos returns 0 on success. */
        ok = SSL_set_alpn_protos(t->ssl, alpn, (unsigned)(plen + 1)) == 0;
    }
    if (ok != 1) {
        ERR_clear_error();
        return rb_err_set(err, RB_EINVAL, 0, "connect %s: TLS setup failed", url_text);
    }
    SSL_set_connect_state(t->ssl);
    return 0;
}

static int handshake(rb_client_transport *tp, ossl_client *t, const char *url_text,
                     int64_t deadline_ns, rb_err *err)
{
    for (;;) {
        int r = SSL_do_handshake(t->ssl);
        if (r == 1) {
            return 0;
        }
        int e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            short events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
            int rc = rb_client_wait(tp, events, deadline_ns, url_text, "TLS handshake", err);
            if (rc != 0) {
                return rc;
            }
            continue;
        }
        if (t->first_len < sizeof t->first) {
            ssize_t more = recv(tp->fd, t->first + t->first_len, sizeof t->first - t->first_len,
                                MSG_PEEK | MSG_DONTWAIT);
            t->first_len += more > 0 ? (size_t)more : 0;
        }
        const char *hint = rb_client_answer_hint(RB_URL_TLS, t->first, t->first_len);
        if (hint != NULL) {
            ERR_clear_error();
            return rb_err_set(err, RB_EPROTO, 0, "connect %s: TLS handshake: %s", url_text, hint);
        }
        long v = SSL_get_verify_result(t->ssl);
        if (v != X509_V_OK) {
            ERR_clear_error();
            return rb_err_set(err, RB_ESYS, 0,
                              "connect %s: TLS handshake: %s (server certificate not trusted; "
                              "see --ca)",
                              url_text, X509_verify_cert_error_string(v));
        }
        char why[160];
        return rb_err_set(err, RB_ESYS, 0, "connect %s: TLS handshake: %s", url_text,
                          e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0
                              ? "the server closed the connection"
                              : last_reason(why, sizeof why));
    }
}

static void ossl_close(rb_client_transport *tp);

static int ossl_connect(rb_client_transport *tp, const rb_url *url, const char *url_text,
                        int64_t deadline_ns, rb_err *err)
{
    int rc = rb_client_tcp_ops.connect(tp, url, url_text, deadline_ns, err);
    if (rc != 0) {
        return rc;
    }
    ossl_client *t = calloc(1, sizeof *t);
    if (t == NULL) {
        ossl_close(tp);
        return rb_err_set(err, RB_ENOMEM, 0, "connect %s: out of memory", url_text);
    }
    tp->layer = t;
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (t->ctx == NULL || SSL_CTX_set_min_proto_version(t->ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_ciphersuites(t->ctx, OSSL_CLIENT_SUITES) != 1) {
        ERR_clear_error();
        rc = rb_err_set(err, RB_ENOMEM, 0, "connect %s: TLS: no OpenSSL context", url_text);
    } else {
        /* Bytes left unwritten stay in the caller's buffer, which may move;
         * a peer that ends without close_notify reads as an orderly end. */
        SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                     SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                     SSL_MODE_RELEASE_BUFFERS);
        SSL_CTX_set_options(t->ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
        SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
    }
    rc = rc ? rc : setup_verify(tp, t, url_text, err);
    rc = rc ? rc : setup_client_cert(tp, t, url_text, err);
    rc = rc ? rc : setup_ssl(tp, t, url, url_text, err);
    rc = rc ? rc : handshake(tp, t, url_text, deadline_ns, err);
    if (rc != 0) {
        ossl_close(tp);
    }
    return rc;
}

static ssize_t ossl_read(rb_client_transport *tp, void *buf, size_t len, rb_err *err)
{
    ossl_client *t = tp->layer;
    size_t total = 0;
    t->more = false;
    while (total < len) {
        size_t n = 0;
        int r = SSL_read_ex(t->ssl, (uint8_t *)buf + total, len - total, &n);
        if (r == 1) {
            total += n;
            continue;
        }
        int e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE || total > 0) {
            /* An end or error after some bytes shows on the next read. */
            ERR_clear_error();
            break;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            return 0;
        }
        char why[160];
        return rb_err_set(err, RB_ESYS, 0, "read: TLS: %s",
                          e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0
                              ? "the connection was reset"
                              : last_reason(why, sizeof why));
    }
    t->more = total == len;
    return total > 0 ? (ssize_t)total : RB_EAGAIN;
}

static ssize_t ossl_write(rb_client_transport *tp, const void *buf, size_t len, rb_err *err)
{
    ossl_client *t = tp->layer;
    if (len == 0) {
        return 0;
    }
    size_t n = 0;
    int r = SSL_write_ex(t->ssl, buf, len, &n);
    if (r == 1) {
        return (ssize_t)n;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
        return RB_EAGAIN;
    }
    char why[160];
    return rb_err_set(err, RB_ESYS, 0, "write: TLS: %s",
                      e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0
                          ? "the connection was reset"
                          : last_reason(why, sizeof why));
}

static void ossl_close(rb_client_transport *tp)
{
    ossl_client *t = tp->layer;
    if (t != NULL) {
        if (t->ssl != NULL) {
            /* close_notify, best effort: the socket is nonblocking. */
            (void)SSL_shutdown(t->ssl);
            SSL_free(t->ssl);
        }
        SSL_CTX_free(t->ctx);
        ERR_clear_error();
        free(t);
        tp->layer = NULL;
    }
    rb_client_tcp_ops.close(tp);
}

static bool ossl_read_pending(const rb_client_transport *tp)
{
    const ossl_client *t = tp->layer;
    return t != NULL && (t->more || SSL_pending(t->ssl) > 0);
}

const rb_client_transport_ops rb_client_tls_ossl_ops = {
    .name = "tls",
    .connect = ossl_connect,
    .read = ossl_read,
    .write = ossl_write,
    .close = ossl_close,
    .read_pending = ossl_read_pending,
};
