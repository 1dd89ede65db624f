/* The certificate/key pair check shared by the server's listeners
 * (transports/tls.c) and libringbus's client certificates
 * (client/transport_tls.c): wolfSSL only, no OpenSSL header here. */
#include "transports/tls_pair.h"

#include <stddef.h>

#include <wolfssl/openssl/evp.h>

int rb_tls_pair_signs(WOLFSSL_CTX *ctx)
{
    static const unsigned char probe[] = "ringbus certificate and key check";
    WOLFSSL_X509 *cert = wolfSSL_CTX_get0_certificate(ctx);                      /* the context's */
    WOLFSSL_EVP_PKEY *priv = wolfSSL_CTX_get0_privatekey(ctx);                   /* the context's */
    WOLFSSL_EVP_PKEY *pub = cert != NULL ? wolfSSL_X509_get_pubkey(cert) : NULL; /* ours */
    WOLFSSL_EVP_MD_CTX *md = wolfSSL_EVP_MD_CTX_new();
    unsigned char sig[1024]; /* an RSA-8192 signature fits */
    size_t sig_len = sizeof sig;
    int verdict = -1;
    if (priv != NULL && pub != NULL && md != NULL &&
        wolfSSL_EVP_DigestSignInit(md, NULL, wolfSSL_EVP_sha256(), NULL, priv) == 1 &&
        wolfSSL_EVP_DigestSignUpdate(md, probe, sizeof probe) == 1 &&
        wolfSSL_EVP_DigestSignFinal(md, sig, &sig_len) == 1) {
        wolfSSL_EVP_MD_CTX_free(md);
        md = wolfSSL_EVP_MD_CTX_new();
        verdict = md != NULL &&
                  wolfSSL_EVP_DigestVerifyInit(md, NULL, wolfSSL_EVP_sha256(), NULL, pub) == 1 &&
                  wolfSSL_EVP_DigestVerifyUpdate(md, probe, sizeof probe) == 1 &&
                  wolfSSL_EVP_DigestVerifyFinal(md, sig, sig_len) == 1;
    }
    wolfSSL_EVP_MD_CTX_free(md);
    wolfSSL_EVP_PKEY_free(pub);
    wolfSSL_ERR_clear_error();
    return verdict;
}
