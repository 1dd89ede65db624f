/* What the resilient session (client/session.c) needs of a connection
 * beyond the public API. Not exported from libringbus. */
#ifndef RB_CLIENT_CONN_INTERNAL_H
#define RB_CLIENT_CONN_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "client/ringbus.h"
#include "common/err.h"

/* Fills *out (when not NULL) from e and returns e->code: the library's
 * rb_err to the public ringbus_error. */
int rb_client_export_err(ringbus_error *out, const rb_err *e);

/* When the server last sent bytes (rb_client_now_ns clock); STARTED's
 * arrival before that. */
int64_t rb_conn_last_rx_ns(const ringbus_conn *conn);

/* True once the server sent GOING_AWAY (its drain), with its reconnect
 * delay hint in *hint_ms. */
bool rb_conn_going_away(const ringbus_conn *conn, uint32_t *hint_ms);

/* Queues a PING and writes it without waiting for the PONG (whose bytes
 * move rb_conn_last_rx_ns). Returns 0 or RB_ECLOSED. */
int rb_conn_probe(ringbus_conn *conn);

#endif
