/* The server's TLS layer (wolfSSL): TLS 1.3 only, no 0-RTT, ChaCha20-
 * Poly1305 first in the server's order (Debian's wolfSSL has no AES-NI),
 * ALPN ringbus/1 (and http/1.1 for wss), optional client certificates.
 * wolfSSL never touches the socket: its I/O callbacks read the bytes the
 * owner received into its ring buffers and write into the owner's send
 * queue. A listener's context can be reloaded (SIGHUP) for new connections
 * while existing ones keep theirs. wolfSSL types stay in tls.c. */
#ifndef RB_TRANSPORTS_TLS_H
#define RB_TRANSPORTS_TLS_H

#include "common/err.h"
#include "config/config.h"
#include "transports/layer.h"

typedef struct rb_tls_server rb_tls_server;

/* The ALPN protocol of the tls transport. */
#define RB_TLS_ALPN "ringbus/1"

/* Initialises wolfSSL; call once before any thread uses it. */
int rb_tls_global_init(rb_err *err);
void rb_tls_global_deinit(void);

/* Frees wolfSSL's per-thread caches (ECC fixed-point tables); every thread
 * that ran TLS calls it before it exits. */
void rb_tls_thread_exit(void);

/* Loads the cert (PEM, chain allowed), key and optional client_ca of a tls
 * or wss listener. The config is borrowed for the server's life. Returns 0
 * and *out (owned by the caller, see rb_tls_server_free), or RB_ECONFIG /
 * RB_ENOMEM with a message naming the listener, the file and the reason. */
int rb_tls_server_new(rb_tls_server **out, const rb_listener_config *cfg, rb_err *err);

/* Loads the listener's files again. On success new connections use the
 * new context (existing ones keep theirs until they close); on failure the
 * old context stays and err says why. Safe while shards create layers. */
int rb_tls_server_reload(rb_tls_server *s, rb_err *err);

/* Frees the server; layers made from it may outlive it. */
void rb_tls_server_free(rb_tls_server *s);

/* A TLS layer for one accepted connection, waiting for its ClientHello.
 * Returns 0 and *out (owned by the stack it is pushed on), or RB_ENOMEM. */
int rb_tls_layer_new(rb_layer **out, rb_tls_server *s, rb_err *err);

#endif
