/* Client URLs: scheme://host[:port][/path]. This module owns parsing and
 * default ports; which schemes have a transport is left to transport.c. */
#ifndef RB_CLIENT_URL_H
#define RB_CLIENT_URL_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "common/limits.h"

typedef enum rb_url_scheme {
    RB_URL_TCP = 0,
    RB_URL_TLS = 1,
    RB_URL_WS = 2,
    RB_URL_WSS = 3,
    RB_URL_QUIC = 4,
} rb_url_scheme;

/* A URL's longest accepted text, and its longest path (ws, wss). */
#define RB_URL_BYTES_MAX      2048
#define RB_URL_PATH_BYTES_MAX 1024
/* The path of a ws:// or wss:// URL that names none: the server's default. */
#define RB_URL_WS_DEFAULT_PATH "/ringbus"

typedef struct rb_url {
    rb_url_scheme scheme;
    char host[RB_ADDRESS_BYTES_MAX]; /* without the brackets of an IPv6 literal */
    bool host_is_ipv6;
    uint16_t port;
    char path[RB_URL_PATH_BYTES_MAX]; /* ws, wss: as given, else "/ringbus"; others "/" */
} rb_url;

/* Parses text into *url. Returns 0 or RB_EINVAL with a message naming the
 * URL and the problem. */
int rb_url_parse(const char *text, rb_url *url, rb_err *err);

/* "tcp", "tls", ... */
const char *rb_url_scheme_name(rb_url_scheme scheme);

/* The default port of a scheme (DESIGN §4). */
uint16_t rb_url_default_port(rb_url_scheme scheme);

/* True when host is an IPv4 or IPv6 literal, not a name (TLS sends SNI
 * only for names and checks an address against the certificate's IPs). */
bool rb_url_host_is_address(const char *host);

#endif
