/* Whether a TLS context's certificate and private key belong together,
 * by signing a probe with the key and verifying it with the certificate's
 * public key. wolfSSL_CTX_check_private_key compares RSA moduli but passes
 * an ECDSA key that belongs to another certificate. */
#ifndef RB_TRANSPORTS_TLS_PAIR_H
#define RB_TRANSPORTS_TLS_PAIR_H

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

/* 1 when the pair verifies, 0 when it does not, -1 when the key type
 * cannot sign through EVP (then only wolfSSL's own check applies). */
int rb_tls_pair_signs(WOLFSSL_CTX *ctx);

#endif
