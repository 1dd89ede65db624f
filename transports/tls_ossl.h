/* The server's TLS layer on OpenSSL 3 (tls_library = "openssl" on a tls or
 * wss listener): the same layer behaviour as tls.h's wolfSSL one. tls.c
 * picks it per listener; nothing else calls these. OpenSSL types stay in
 * tls_ossl.c. */
#ifndef RB_TRANSPORTS_TLS_OSSL_H
#define RB_TRANSPORTS_TLS_OSSL_H

#include "common/err.h"
#include "config/config.h"
#include "transports/layer.h"

typedef struct rb_tls_ossl_server rb_tls_ossl_server;

int rb_tls_ossl_global_init(rb_err *err);
void rb_tls_ossl_global_deinit(void);
void rb_tls_ossl_thread_exit(void);

int rb_tls_ossl_server_new(rb_tls_ossl_server **out, const rb_listener_config *cfg, rb_err *err);
int rb_tls_ossl_server_reload(rb_tls_ossl_server *s, rb_err *err);
void rb_tls_ossl_server_free(rb_tls_ossl_server *s);
int rb_tls_ossl_layer_new(rb_layer **out, rb_tls_ossl_server *s, rb_err *err);

#endif
