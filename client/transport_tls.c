/* The client's TLS transport on wolfSSL: TLS 1.3 over the tcp transport's
 * nonblocking socket, the server certificate verified against the system
 * store or a given CA file (unless insecure is asked for), the URL's host
 * checked against it and sent as SNI (names only, not address literals),
 * ALPN ringbus/1 (http/1.1 under wss). A read drains every record that is
 * there; when the caller's buffer fills first, read_pending says so. This
 * file includes wolfSSL headers and no OpenSSL ones. */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* wolfssl/options.h configures the other wolfSSL headers: it comes first. */
/* clang-format off */
#include <wolfssl/options.h>
#include <wolfssl/error-ssl.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
/* clang-format on */

#include "client/transport.h"
#include "common/assert.h"
#include "transports/tls_pair.h"

/* ChaCha20-Poly1305 first: Debian's wolfSSL has no AES-NI, so it is the
 * fastest suite here, and a server that prioritises ChaCha for clients
 * that list it first (ringbusd on OpenSSL) picks it. */
#define CLIENT_SUITES                                                                              \
    "TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384"

typedef struct tls_client {
    WOLFSSL_CTX *ctx;
    WOLFSSL *ssl;
    bool more; /* the last read filled the caller's buffer: input may be buffered */
    /* The server's first bytes as wolfSSL read them, to name a server
     * that does not speak TLS. */
    uint8_t first[RB_CLIENT_ANSWER_PEEK_BYTES];
    size_t first_len;
} tls_client;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_rc;

static void init_wolfssl(void)
{
    init_rc = wolfSSL_Init() == WOLFSSL_SUCCESS ? 0 : -1;
}

static const char *reason(int code, char *buf, size_t len)
{
    wolfSSL_ERR_error_string_n((unsigned long)code, buf, len);
    return buf;
}

/* The client certificate for listeners with client_ca (mutual TLS). */
static int setup_client_cert(rb_client_transport *tp, tls_client *t, const char *url_text,
                             rb_err *err)
{
    if (tp->cert_file == NULL) {
        return 0;
    }
    char why[96];
    int rc = wolfSSL_CTX_use_certificate_chain_file(t->ctx, tp->cert_file);
    if (rc != WOLFSSL_SUCCESS) {
        return rb_err_set(
            err, RB_EINVAL, 0, "connect %s: client certificate %s: %s", url_text, tp->cert_file,
            access(tp->cert_file, R_OK) != 0 ? "cannot be read" : reason(rc, why, sizeof why));
    }
    rc = wolfSSL_CTX_use_PrivateKey_file(t->ctx, tp->key_file, WOLFSSL_FILETYPE_PEM);
    if (rc == WOLFSSL_SUCCESS) {
        rc = wolfSSL_CTX_check_private_key(t->ctx);
    }
    if (rc == WOLFSSL_SUCCESS && rb_tls_pair_signs(t->ctx) == 0) {
        rc = WOLFSSL_FAILURE;
    }
    if (rc != WOLFSSL_SUCCESS) {
        return rb_err_set(err, RB_EINVAL, 0, "connect %s: client key %s: %s", url_text,
                          tp->key_file,
                          access(tp->key_file, R_OK) != 0 ? "cannot be read"
                                                          : "not a PEM key of the certificate");
    }
    return 0;
}

/* Trust anchors and the name to check, unless insecure. */
static int setup_verify(rb_client_transport *tp, tls_client *t, const char *url_text, rb_err *err)
{
    if (tp->insecure) {
        wolfSSL_CTX_set_verify(t->ctx, WOLFSSL_VERIFY_NONE, NULL);
        return 0;
    }
    const char *ca = tp->ca_file != NULL ? tp->ca_file : RB_CLIENT_SYSTEM_CA_FILE;
    int rc = wolfSSL_CTX_load_verify_locations(t->ctx, ca, NULL);
    if (rc != WOLFSSL_SUCCESS) {
        char why[96];
        return rb_err_set(err, RB_EINVAL, 0, "connect %s: CA file %s: %s", url_text, ca,
                          access(ca, R_OK) != 0 ? "cannot be read" : reason(rc, why, sizeof why));
    }
    wolfSSL_CTX_set_verify(t->ctx, WOLFSSL_VERIFY_PEER, NULL);
    return 0;
}

/* wolfSSL's own socket read, keeping a copy of the first bytes the server
 * sent (to name a server that does not speak TLS if the handshake fails). */
static int recv_keep_first(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    int n = EmbedReceive(ssl, buf, sz, ctx);
    tls_client *t = wolfSSL_get_app_data(ssl);
    if (n > 0 && t != NULL && t->first_len < sizeof t->first) {
        size_t take = sizeof t->first - t->first_len;
        take = take < (size_t)n ? take : (size_t)n;
        memcpy(t->first + t->first_len, buf, take);
        t->first_len += take;
    }
    return n;
}

static int setup_ssl(rb_client_transport *tp, tls_client *t, const rb_url *url,
                     const char *url_text, rb_err *err)
{
    t->ssl = wolfSSL_new(t->ctx);
    if (t->ssl == NULL || wolfSSL_set_fd(t->ssl, tp->fd) != WOLFSSL_SUCCESS ||
        wolfSSL_set_app_data(t->ssl, t) != WOLFSSL_SUCCESS) {
        return rb_err_set(err, RB_ENOMEM, 0, "connect %s: TLS: out of memory", url_text);
    }
    wolfSSL_SSLSetIORecv(t->ssl, recv_keep_first);
    size_t host_len = strlen(url->host);
    bool address = rb_url_host_is_address(url->host);
    int ok = WOLFSSL_SUCCESS;
    if (!address) {
        /* SNI names a host, never an address (RFC 6066). */
        ok = wolfSSL_UseSNI(t->ssl, WOLFSSL_SNI_HOST_NAME, url->host, (unsigned short)host_len);
    }
    if (ok == WOLFSSL_SUCCESS && !tp->insecure) {
        ok = address ? wolfSSL_X509_VERIFY_PARAM_set1_ip_asc(wolfSSL_get0_param(t->ssl), url->host)
                     : wolfSSL_check_domain_name(t->ssl, url->host);
    }
    char alpn[32];
    snprintf(alpn, sizeof alpn, "%s", tp->alpn != NULL ? tp->alpn : "ringbus/1");
    if (ok == WOLFSSL_SUCCESS) {
        ok = wolfSSL_UseALPN(t->ssl, alpn, (unsigned)strlen(alpn),
                             WOLFSSL_ALPN_CONTINUE_ON_MISMATCH);
    }
    if (ok != WOLFSSL_SUCCESS) {
        return rb_err_set(err, RB_EINVAL, 0, "connect %s: TLS setup failed", url_text);
    }
    return 0;
}

static int handshake(rb_client_transport *tp, tls_client *t, const char *url_text,
                     int64_t deadline_ns, rb_err *err)
{
    for (;;) {
        int r = wolfSSL_connect(t->ssl);
        if (r == WOLFSSL_SUCCESS) {
            return 0;
        }
        int e = wolfSSL_get_error(t->ssl, r);
        short events = e == WOLFSSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
        if (e != WOLFSSL_ERROR_WANT_READ && e != WOLFSSL_ERROR_WANT_WRITE) {
            char why[96];
            bool verify = e == ASN_NO_SIGNER_E || e == DOMAIN_NAME_MISMATCH ||
                          e == IPADDR_MISMATCH || e == ASN_AFTER_DATE_E || e == ASN_BEFORE_DATE_E ||
                          e == ASN_SELF_SIGNED_E;
            if (t->first_len < sizeof t->first) {
                /* wolfSSL stopped at a bad record header: the bytes after
                 * it are still in the socket. */
                ssize_t more = recv(tp->fd, t->first + t->first_len, sizeof t->first - t->first_len,
                                    MSG_PEEK | MSG_DONTWAIT);
                t->first_len += more > 0 ? (size_t)more : 0;
            }
            const char *hint = rb_client_answer_hint(RB_URL_TLS, t->first, t->first_len);
            if (hint != NULL) {
                return rb_err_set(err, RB_EPROTO, 0, "connect %s: TLS handshake: %s", url_text,
                                  hint);
            }
            return rb_err_set(err, RB_ESYS, 0, "connect %s: TLS handshake: %s%s", url_text,
                              reason(e, why, sizeof why),
                              verify ? " (server certificate not trusted; see --ca)" : "");
        }
        int rc = rb_client_wait(tp, events, deadline_ns, url_text, "TLS handshake", err);
        if (rc != 0) {
            return rc;
        }
    }
}

static void tls_close(rb_client_transport *tp);

static int tls_connect(rb_client_transport *tp, const rb_url *url, const char *url_text,
                       int64_t deadline_ns, rb_err *err)
{
    pthread_once(&init_once, init_wolfssl);
    if (init_rc != 0) {
        return rb_err_set(err, RB_EUNSUPPORTED, 0, "connect %s: wolfSSL_Init failed", url_text);
    }
    int rc = rb_client_tcp_ops.connect(tp, url, url_text, deadline_ns, err);
    if (rc != 0) {
        return rc;
    }
    tls_client *t = calloc(1, sizeof *t);
    if (t == NULL) {
        tls_close(tp);
        return rb_err_set(err, RB_ENOMEM, 0, "connect %s: out of memory", url_text);
    }
    tp->layer = t;
    t->ctx = wolfSSL_CTX_new(wolfTLSv1_3_client_method());
    if (t->ctx == NULL) {
        rc = rb_err_set(err, RB_ENOMEM, 0, "connect %s: TLS: out of memory", url_text);
    } else if (wolfSSL_CTX_set_cipher_list(t->ctx, CLIENT_SUITES) != WOLFSSL_SUCCESS) {
        rc = rb_err_set(err, RB_EUNSUPPORTED, 0, "connect %s: TLS: wolfSSL lacks the suites %s",
                        url_text, CLIENT_SUITES);
    }
    rc = rc ? rc : setup_verify(tp, t, url_text, err);
    rc = rc ? rc : setup_client_cert(tp, t, url_text, err);
    rc = rc ? rc : setup_ssl(tp, t, url, url_text, err);
    rc = rc ? rc : handshake(tp, t, url_text, deadline_ns, err);
    if (rc != 0) {
        tls_close(tp);
    }
    return rc;
}

static ssize_t tls_read(rb_client_transport *tp, void *buf, size_t len, rb_err *err)
{
    tls_client *t = tp->layer;
    size_t total = 0;
    t->more = false;
    while (total < len) {
        int n = wolfSSL_read(t->ssl, (uint8_t *)buf + total, (int)(len - total));
        if (n > 0) {
            total += (size_t)n;
            continue;
        }
        int e = wolfSSL_get_error(t->ssl, n);
        if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE || total > 0) {
            /* An end or error after some bytes shows on the next read. */
            break;
        }
        if (e == WOLFSSL_ERROR_ZERO_RETURN || e == SOCKET_PEER_CLOSED_E) {
            return 0;
        }
        char why[96];
        return rb_err_set(err, RB_ESYS, 0, "read: TLS: %s", reason(e, why, sizeof why));
    }
    t->more = total == len;
    return total > 0 ? (ssize_t)total : RB_EAGAIN;
}

static ssize_t tls_write(rb_client_transport *tp, const void *buf, size_t len, rb_err *err)
{
    tls_client *t = tp->layer;
    if (len == 0) {
        return 0;
    }
    /* After WANT_WRITE wolfSSL holds the record and must be called again
     * with the same bytes first: callers keep unwritten bytes in place. */
    int n = wolfSSL_write(t->ssl, buf, (int)(len > 0x40000000 ? 0x40000000 : len));
    if (n > 0) {
        return n;
    }
    int e = wolfSSL_get_error(t->ssl, n);
    if (e == WOLFSSL_ERROR_WANT_WRITE || e == WOLFSSL_ERROR_WANT_READ) {
        return RB_EAGAIN;
    }
    char why[96];
    return rb_err_set(err, RB_ESYS, 0, "write: TLS: %s", reason(e, why, sizeof why));
}

static void tls_close(rb_client_transport *tp)
{
    tls_client *t = tp->layer;
    if (t != NULL) {
        if (t->ssl != NULL) {
            /* close_notify, best effort: the socket is nonblocking. */
            (void)wolfSSL_shutdown(t->ssl);
            wolfSSL_free(t->ssl);
        }
        if (t->ctx != NULL) {
            wolfSSL_CTX_free(t->ctx);
        }
        free(t);
        tp->layer = NULL;
#ifdef FP_ECC
        /* wolfSSL caches ECC tables per thread; an application thread
         * that exits after its last connection must not leak them. */
        wc_ecc_fp_free();
#endif
    }
    rb_client_tcp_ops.close(tp);
}

static bool tls_read_pending(const rb_client_transport *tp)
{
    const tls_client *t = tp->layer;
    return t != NULL && (t->more || wolfSSL_pending(t->ssl) > 0);
}

const rb_client_transport_ops rb_client_tls_wolf_ops = {
    .name = "tls",
    .connect = tls_connect,
    .read = tls_read,
    .write = tls_write,
    .close = tls_close,
    .read_pending = tls_read_pending,
};
