/* A libwebsockets client for the WebSocket integration tests (built by
 * test_ws.py with `cc lws_client.c -lwebsockets`): an independent peer that
 * connects to ringbusd over ws:// or wss://, offers the subprotocol
 * ringbus.v1 (unless told not to) and runs steps, printing one line per
 * event on stdout:
 *
 *   lws_client HOST PORT PATH CAFILE|- [noproto] STEP...
 *
 * STEP is a ringbus frame in hex (sent as one binary message; the next
 * message received is printed as "RECV kind=K len=N"), "text" (a text
 * message), "big:N" (an N-byte binary message) or "close" (Close 1000).
 * Lines: "OPEN", "RECV ...", "PEERCLOSE code=C", "ERROR why", "CLOSED". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

static char **steps;
static int step_count;
static int step_index;
static int waiting; /* a reply to the last frame is due */
static int done;
static unsigned char rx[1 << 20];
static size_t rx_len;

static size_t unhex(const char *s, unsigned char *out, size_t cap)
{
    size_t n = strlen(s) / 2;
    if (n > cap) {
        n = cap;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(s + 2 * i, "%2x", &v);
        out[i] = (unsigned char)v;
    }
    return n;
}

static int run_step(struct lws *wsi)
{
    static unsigned char buf[LWS_PRE + (1 << 20)];
    if (step_index >= step_count) {
        return 0;
    }
    const char *s = steps[step_index];
    if (strcmp(s, "close") == 0) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, (unsigned char *)"bye", 3);
        return -1;
    }
    if (strcmp(s, "text") == 0) {
        memcpy(buf + LWS_PRE, "hello", 5);
        lws_write(wsi, buf + LWS_PRE, 5, LWS_WRITE_TEXT);
        step_index++;
        return 0;
    }
    if (strncmp(s, "big:", 4) == 0) {
        size_t n = (size_t)atol(s + 4);
        n = n < (1 << 20) ? n : (1 << 20);
        memset(buf + LWS_PRE, 'x', n);
        lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_BINARY);
        step_index++;
        return 0;
    }
    size_t n = unhex(s, buf + LWS_PRE, 1 << 20);
    lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_BINARY);
    waiting = 1;
    step_index++;
    return 0;
}

static int on_event(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    (void)user;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        printf("OPEN\n");
        lws_callback_on_writable(wsi);
        break;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (!waiting) {
            return run_step(wsi);
        }
        break;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        if (rx_len + len <= sizeof rx) {
            memcpy(rx + rx_len, in, len);
            rx_len += len;
        }
        if (lws_is_final_fragment(wsi)) {
            printf("RECV kind=%d len=%zu\n", rx_len > 5 ? rx[5] : -1, rx_len);
            rx_len = 0;
            waiting = 0;
            lws_callback_on_writable(wsi);
        }
        break;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        printf("PEERCLOSE code=%d\n",
               len >= 2 ? (((unsigned char *)in)[0] << 8 | ((unsigned char *)in)[1]) : 1005);
        break;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        printf("ERROR %s\n", in != NULL ? (const char *)in : "(none)");
        done = 1;
        break;
    case LWS_CALLBACK_CLIENT_CLOSED:
        printf("CLOSED\n");
        done = 1;
        break;
    default:
        break;
    }
    fflush(stdout);
    return 0;
}

static const struct lws_protocols protocols[] = {
    {"ringbus.v1", on_event, 0, 1 << 16, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: lws_client HOST PORT PATH CAFILE|- [noproto] STEP...\n");
        return 2;
    }
    int first = 5;
    int offer = 1;
    if (argc > 5 && strcmp(argv[5], "noproto") == 0) {
        offer = 0;
        first = 6;
    }
    steps = argv + first;
    step_count = argc - first;
    int tls = strcmp(argv[4], "-") != 0;
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.options = tls ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT : 0;
    info.client_ssl_ca_filepath = tls ? argv[4] : NULL;
    struct lws_context *ctx = lws_create_context(&info);
    if (ctx == NULL) {
        printf("ERROR context\n");
        return 1;
    }
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = ctx;
    ci.address = "127.0.0.1";
    ci.port = atoi(argv[2]);
    ci.path = argv[3];
    ci.host = argv[1];
    ci.origin = argv[1];
    ci.protocol = offer ? "ringbus.v1" : NULL;
    ci.local_protocol_name = "ringbus.v1";
    ci.ssl_connection = tls ? LCCSCF_USE_SSL : 0;
    if (lws_client_connect_via_info(&ci) == NULL) {
        printf("ERROR connect\n");
        done = 1;
    }
    /* The test's own timeout bounds this loop. */
    while (!done && lws_service(ctx, 0) >= 0) {
    }
    lws_context_destroy(ctx);
    return 0;
}
