/* libFuzzer target for the QUIC server engine (transports/quic.c): random
 * datagrams into a server engine, alone or after a real client's first
 * Initial (so the fuzzed datagrams meet a connection in its handshake).
 *
 * Input: one flags byte (bit 0: quic_retry on; bit 1: start with a real
 * client Initial; bit 2: route every datagram's DCID through
 * rb_quic_dcid_owner), then records of a little-endian u16 length and that
 * many bytes, each one datagram; the clock advances 1 ms per datagram and
 * timers run. Checks: no datagram out is larger than the engine's maximum;
 * before any handshake completes the server never sends more than three
 * times what it received (anti-amplification); the stats stay consistent.
 * Any other outcome traps (or trips ASan/UBSan).
 *
 * The certificate is made once with openssl in a temp dir. Build and run
 * with `make fuzz T=quic`; `make test` replays tests/fuzz/corpus/quic. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "transports/quic.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

static char cert_file[300];
static char key_file[300];
static uint8_t secret[RB_QUIC_SECRET_BYTES];

typedef struct sink {
    uint64_t bytes_out;
    uint64_t datagrams;
    uint8_t first[RB_QUIC_DATAGRAM_BYTES_MAX];
    size_t first_len;
} sink;

static int on_send(void *ctx, const rb_quic_path *path, const uint8_t *p, size_t len)
{
    (void)path;
    sink *s = ctx;
    CHECK(len > 0 && len <= RB_QUIC_DATAGRAM_BYTES_MAX);
    if (s->datagrams == 0) {
        memcpy(s->first, p, len);
        s->first_len = len;
    }
    s->datagrams++;
    s->bytes_out += len;
    return 0;
}

static bool init_cert(void)
{
    static int done;
    if (done != 0) {
        return done > 0;
    }
    char dir[256];
    snprintf(dir, sizeof dir, "%s/rbfuzzquicXXXXXX",
             getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(dir) == NULL) {
        done = -1;
        return false;
    }
    snprintf(cert_file, sizeof cert_file, "%s/cert.pem", dir);
    snprintf(key_file, sizeof key_file, "%s/key.pem", dir);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout %s -out %s -days 2 -subj /CN=localhost >/dev/null 2>&1",
             key_file, cert_file);
    rb_err err = {0};
    done = system(cmd) == 0 && rb_quic_secret_generate(secret, &err) == 0 ? 1 : -1;
    return done > 0;
}

static void addr_v4(rb_quic_addr *a, uint16_t port)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
    memset(a, 0, sizeof *a);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a->len = sizeof *sin;
}

/* A real client's first datagram (its Initial with the ClientHello). */
static size_t client_initial(uint8_t *out, uint64_t now_ns)
{
    sink cs = {0};
    rb_quic_config cfg;
    rb_quic_config_default(&cfg, RB_QUIC_CLIENT);
    cfg.insecure = true;
    cfg.server_name = "localhost";
    rb_quic_handler h = {.send = on_send, .ctx = &cs};
    rb_quic_engine *e = NULL;
    rb_err err = {0};
    CHECK(rb_quic_engine_new(&e, &cfg, &h, &err) == 0);
    rb_quic_path path;
    addr_v4(&path.local, 40000);
    addr_v4(&path.remote, 7404);
    rb_quic_conn *qc = NULL;
    CHECK(rb_quic_client_connect(e, &path, now_ns, &qc, &err) == 0);
    CHECK(cs.datagrams > 0);
    memcpy(out, cs.first, cs.first_len);
    rb_quic_engine_free(e);
    return cs.first_len;
}

static void feed(rb_quic_engine *e, sink *s, uint64_t *in_bytes, const uint8_t *p, size_t len,
                 uint64_t *now_ns, bool route)
{
    rb_quic_path path;
    addr_v4(&path.local, 7404);
    addr_v4(&path.remote, 40000);
    if (route) {
        uint32_t owner = 0;
        if (rb_quic_dcid_owner(p, len, &owner) == 0) {
            CHECK(owner <= RB_QUIC_OWNER_MAX);
        }
    }
    *in_bytes += len;
    rb_quic_engine_recv(e, &path, p, len, *now_ns);
    rb_quic_engine_write(e, *now_ns);
    *now_ns += 1000000;
    rb_quic_engine_timeout(e, *now_ns);
    rb_quic_stats st;
    rb_quic_engine_stats(e, &st);
    CHECK(st.handshakes <= st.conns);
    if (st.conns == st.handshakes) {
        /* No handshake completed: the peer's address is unvalidated. */
        CHECK(s->bytes_out <= 3 * *in_bytes);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || !init_cert()) {
        return 0;
    }
    uint8_t flags = data[0];
    sink s = {0};
    rb_quic_config cfg;
    rb_quic_config_default(&cfg, RB_QUIC_SERVER);
    cfg.cert_file = cert_file;
    cfg.key_file = key_file;
    cfg.conns_max = 8;
    cfg.handshakes_max = 4;
    cfg.retry = (flags & 1) != 0;
    cfg.owner_id = 3;
    memcpy(cfg.secret, secret, sizeof secret);
    rb_quic_handler h = {.send = on_send, .ctx = &s};
    rb_quic_engine *e = NULL;
    rb_err err = {0};
    CHECK(rb_quic_engine_new(&e, &cfg, &h, &err) == 0);
    uint64_t now_ns = 1000000000ull;
    uint64_t in_bytes = 0;
    bool route = (flags & 4) != 0;
    if ((flags & 2) != 0) {
        uint8_t first[RB_QUIC_DATAGRAM_BYTES_MAX];
        size_t n = client_initial(first, now_ns);
        feed(e, &s, &in_bytes, first, n, &now_ns, route);
    }
    size_t off = 1;
    while (off + 2 <= size) {
        size_t len = (size_t)data[off] | (size_t)data[off + 1] << 8;
        off += 2;
        if (len > size - off) {
            len = size - off;
        }
        feed(e, &s, &in_bytes, data + off, len, &now_ns, route);
        off += len;
    }
    rb_quic_engine_free(e);
    return 0;
}
