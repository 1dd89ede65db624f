/* The server's WebSocket layer (RFC 6455): the HTTP/1.1 upgrade (path,
 * Origin allow-list, subprotocol ringbus.v1, Sec-WebSocket-Accept), other
 * GET paths answered by the listener's HTTP router (/healthz), then framing with the frame
 * parser and writer the client shares (transports/wsframe.h): one binary message carries exactly
 * one ringbus frame; text messages are closed with 1003,
 * messages over max_frame_bytes with 1009 before they are buffered, Ping is answered, fragments are
 * reassembled as a byte stream, Close is echoed. It runs over tcp (ws) or over the tls layer (wss).
 * Sockets, timers and the frame decoder are the owner's. */
#ifndef RB_TRANSPORTS_WS_H
#define RB_TRANSPORTS_WS_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "config/config.h"
#include "transports/http.h"
#include "transports/layer.h"
#include "transports/wsframe.h"

typedef struct rb_ws_options {
    const rb_listener_config *listener; /* path and origins; borrowed for the layer's life */
    uint32_t max_frame_bytes;
    rb_http_router router; /* routes besides the upgrade path; route NULL: none */
} rb_ws_options;

/* Makes a layer waiting for the upgrade request. Returns 0 and *out (owned
 * by the stack it is pushed on), or RB_ENOMEM. */
int rb_ws_layer_new(rb_layer **out, const rb_ws_options *opt, rb_err *err);

/* Sec-WebSocket-Accept of a key: base64(SHA-1(key GUID)), 28 characters
 * and a NUL in out (rb_wsframe_accept_key under the layer's name). */
void rb_ws_accept_key(const char *key, size_t key_len, char out[29]);

/* The RFC 6455 close status the connection's ringbus status maps to
 * (ok 1000, going_away 1001, bad_frame 1002, too_large 1009, internal
 * 1011, anything else 1008). */
uint16_t rb_ws_close_code(uint16_t wire_status);

#endif
