/* URL parsing for the client: scheme, host (name, IPv4 or bracketed IPv6),
 * optional port, and a path for the WebSocket schemes. Name resolution and
 * connecting are left to the transports. */
#include "client/url.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

typedef struct scheme_info {
    const char *prefix;
    rb_url_scheme scheme;
    uint16_t port;
    bool has_path;
} scheme_info;

/* Default ports come from DESIGN §4. */
static const scheme_info schemes[] = {
    {"tcp://", RB_URL_TCP, 7400, false},   {"tls://", RB_URL_TLS, 7401, false},
    {"ws://", RB_URL_WS, 7402, true},      {"wss://", RB_URL_WSS, 7403, true},
    {"quic://", RB_URL_QUIC, 7404, false},
};

#define SCHEME_COUNT (sizeof schemes / sizeof schemes[0])

const char *rb_url_scheme_name(rb_url_scheme scheme)
{
    static const char *const names[] = {"tcp", "tls", "ws", "wss", "quic"};
    if ((unsigned)scheme >= SCHEME_COUNT) {
        return "unknown";
    }
    return names[scheme];
}

uint16_t rb_url_default_port(rb_url_scheme scheme)
{
    for (size_t i = 0; i < SCHEME_COUNT; i++) {
        if (schemes[i].scheme == scheme) {
            return schemes[i].port;
        }
    }
    return 0;
}

static const scheme_info *find_scheme(const char *text)
{
    for (size_t i = 0; i < SCHEME_COUNT; i++) {
        if (strncmp(text, schemes[i].prefix, strlen(schemes[i].prefix)) == 0) {
            return &schemes[i];
        }
    }
    return NULL;
}

static bool host_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

static bool ipv6_char_ok(char c)
{
    return (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || (c >= '0' && c <= '9') || c == ':' ||
           c == '.' || c == '%';
}

/* Parses "[v6]" or "name" at s up to end; stores it in url->host. */
static int parse_host(const char *text, const char *s, const char *end, rb_url *url, rb_err *err)
{
    if (s == end) {
        return rb_err_set(err, RB_EINVAL, 0, "url \"%s\": missing host", text);
    }
    url->host_is_ipv6 = s[0] == '[';
    if (url->host_is_ipv6) {
        if (end - s < 3 || end[-1] != ']') {
            return rb_err_set(err, RB_EINVAL, 0, "url \"%s\": bad IPv6 address", text);
        }
        s++;
        end--;
    }
    size_t len = (size_t)(end - s);
    if (len >= sizeof url->host) {
        return rb_err_set(err, RB_EINVAL, 0, "url \"%s\": host longer than %zu bytes", text,
                          sizeof url->host - 1);
    }
    for (const char *c = s; c < end; c++) {
        bool ok = url->host_is_ipv6 ? ipv6_char_ok(*c) : host_char_ok(*c);
        if (!ok) {
            return rb_err_set(err, RB_EINVAL, 0, "url \"%s\": bad character '%c' in host", text,
                              *c);
        }
    }
    memcpy(url->host, s, len);
    url->host[len] = '\0';
    return 0;
}

static int parse_port(const char *text, const char *s, const char *end, rb_url *url, rb_err *err)
{
    if (s == end || end - s > 5) {
        return rb_err_set(err, RB_EINVAL, 0, "url \"%s\": bad port", text);
    }
    unsigned long port = 0;
    for (const char *c = s; c < end; c++) {
        if (*c < '0' || *c > '9') {
            return rb_err_set(err, RB_EINVAL, 0, "url \"%s\": bad port", text);
        }
        port = port * 10 + (unsigned long)(*c - '0');
    }
    if (port == 0 || port > 65535) {
        return rb_err_set(err, RB_EINVAL, 0, "url \"%s\": port %lu outside 1..65535", text, port);
    }
    url->port = (uint16_t)port;
    return 0;
}

/* Splits the authority [s, end) into host and port: the port follows the
 * last ':' after any IPv6 brackets. */
static int parse_authority(const char *text, const char *s, const char *end, rb_url *url,
                           rb_err *err)
{
    if (memchr(s, '@', (size_t)(end - s)) != NULL) {
        return rb_err_set(err, RB_EINVAL, 0, "url \"%s\": user info is not supported", text);
    }
    const char *host_end = end;
    if (s < end && s[0] == '[') {
        const char *close = memchr(s, ']', (size_t)(end - s));
        if (close == NULL) {
            return rb_err_set(err, RB_EINVAL, 0, "url \"%s\": missing ']'", text);
        }
        host_end = close + 1;
        if (host_end < end && *host_end != ':') {
            return rb_err_set(err, RB_EINVAL, 0, "url \"%s\": junk after ']'", text);
        }
    } else {
        const char *colon = memchr(s, ':', (size_t)(end - s));
        if (colon != NULL && memchr(colon + 1, ':', (size_t)(end - colon - 1)) != NULL) {
            return rb_err_set(err, RB_EINVAL, 0,
                              "url \"%s\": IPv6 addresses need brackets, e.g. tcp://[::1]:7400",
                              text);
        }
        host_end = colon != NULL ? colon : end;
    }
    int rc = parse_host(text, s, host_end, url, err);
    if (rc != 0) {
        return rc;
    }
    if (host_end < end) {
        return parse_port(text, host_end + 1, end, url, err);
    }
    return 0;
}

int rb_url_parse(const char *text, rb_url *url, rb_err *err)
{
    memset(url, 0, sizeof *url);
    size_t text_len = strnlen(text, RB_URL_BYTES_MAX + 1);
    if (text_len > RB_URL_BYTES_MAX) {
        return rb_err_set(err, RB_EINVAL, 0, "url: longer than %d bytes", RB_URL_BYTES_MAX);
    }
    const scheme_info *si = find_scheme(text);
    if (si == NULL) {
        return rb_err_set(err, RB_EINVAL, 0,
                          "url \"%s\": unknown scheme (expected tcp://, tls://, ws://, wss:// "
                          "or quic://)",
                          text);
    }
    url->scheme = si->scheme;
    url->port = si->port;
    const char *s = text + strlen(si->prefix);
    const char *end = text + text_len;
    const char *slash = strchr(s, '/');
    int rc = parse_authority(text, s, slash != NULL ? slash : end, url, err);
    if (rc != 0) {
        return rc;
    }
    /* A WebSocket URL without a path means the server's default path. */
    const char *path = slash != NULL ? slash : si->has_path ? RB_URL_WS_DEFAULT_PATH : "/";
    if (!si->has_path && strcmp(path, "/") != 0) {
        return rb_err_set(err, RB_EINVAL, 0, "url \"%s\": %s URLs take no path", text,
                          rb_url_scheme_name(si->scheme));
    }
    if (strlen(path) >= sizeof url->path) {
        return rb_err_set(err, RB_EINVAL, 0, "url \"%s\": path too long", text);
    }
    strcpy(url->path, path);
    return 0;
}

bool rb_url_host_is_address(const char *host)
{
    unsigned char bytes[16];
    return inet_pton(AF_INET, host, bytes) == 1 || inet_pton(AF_INET6, host, bytes) == 1;
}
