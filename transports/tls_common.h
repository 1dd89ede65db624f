/* What the two server TLS layers share (tls.c on wolfSSL, tls_ossl.c on
 * OpenSSL), in a file that includes neither library: the check that a
 * listener's files are readable, the answer to a client that does not
 * speak TLS, and the staging of frame bytes into full records. */
#ifndef RB_TRANSPORTS_TLS_COMMON_H
#define RB_TRANSPORTS_TLS_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "config/config.h"
#include "transports/layer.h"

/* Plaintext bytes per record (the TLS maximum). */
#define RB_TLS_RECORD_BYTES 16384

/* RB_ECONFIG naming the listener when path cannot be read. */
int rb_tls_file_check(const rb_listener_config *cfg, const char *what, const char *path,
                      rb_err *err);

/* The first bytes of a connection are not a TLS handshake record: writes
 * a plaintext fatal alert (unexpected_message) below l, which lets a
 * ringbus client say "the server answered TLS", and returns RB_EPROTO
 * saying what the client sent (plain HTTP, a plain ringbus HELLO). */
int rb_tls_refuse_not_tls(rb_layer *l, const uint8_t *p, size_t len, rb_err *err);

/* Encrypts and passes down len plaintext bytes as one record. */
typedef int rb_tls_write_fn(rb_layer *l, const uint8_t *p, size_t len, rb_err *err);

/* Frame bytes gathered into full records so small frames do not each cost
 * one; the buffer (RB_TLS_RECORD_BYTES) is taken at the first byte staged. */
typedef struct rb_tls_stage {
    uint8_t *buf;
    size_t len;
} rb_tls_stage;

/* Stages p (whole records go straight from p), writing every full record
 * with write. Returns 0 or write's error, or RB_ENOMEM. */
int rb_tls_stage_send(rb_tls_stage *st, rb_layer *l, rb_tls_write_fn *write, const uint8_t *p,
                      size_t len, rb_err *err);

/* Writes what is staged as one record. */
int rb_tls_stage_flush(rb_tls_stage *st, rb_layer *l, rb_tls_write_fn *write, rb_err *err);

void rb_tls_stage_free(rb_tls_stage *st);

#endif
