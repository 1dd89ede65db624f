/* What the resilient session (client/session.c) needs of a connection
 * beyond the public API. Not exported from libringbus. */
#ifndef RB_CLIENT_CONN_INTERNAL_H
#define RB_CLIENT_CONN_INTERNAL_H

#include <stdint.h>

#include "client/ringbus.h"

/* When the server last sent bytes (rb_client_now_ns clock); STARTED's
 * arrival before that. */
int64_t rb_conn_last_rx_ns(const ringbus_conn *conn);

/* Queues a PING and writes it without waiting for the PONG (whose bytes
 * move rb_conn_last_rx_ns). Returns 0 or RB_ECLOSED. */
int rb_conn_probe(ringbus_conn *conn);

#endif
