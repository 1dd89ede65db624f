/* Tests of libringbus sign-in (client/ringbus.c): the token and user +
 * password options become the HELLO credentials of docs/PROTOCOL.md 6.5,
 * option mistakes are refused before connecting, and
 * ringbus_refresh_token sends AUTH and reports the server's verdict. The
 * server is a forked child on 127.0.0.1 speaking the protocol with the
 * shared rb_frame codec. */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <check.h>

#include "client/ringbus.h"
#include "common/frame.h"

Suite *rb_client_auth_suite(void);

#define PEER_MAX_FRAME 65536u
#define GOOD_TOKEN     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzIn0.c2ln"
#define FRESH_TOKEN    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzIiwiZXhwIjoyfQ.bmV3"

#define PEER_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "peer: %s:%d: %s\n", __FILE__, __LINE__, #cond);                       \
            _exit(1);                                                                              \
        }                                                                                          \
    } while (0)

typedef struct peer {
    pid_t pid;
    char url[64];
} peer;

static bool read_full(int fd, uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r <= 0) {
            return false;
        }
        p += r;
        n -= (size_t)r;
    }
    return true;
}

static void send_all(int fd, const uint8_t *p, size_t n)
{
    PEER_CHECK(n > 0);
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        PEER_CHECK(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

static bool peer_read(int fd, uint8_t *buf, rb_frame *f)
{
    rb_frame_header hdr;
    rb_err e = {0};
    if (!read_full(fd, buf, RB_FRAME_HEADER_BYTES)) {
        return false;
    }
    PEER_CHECK(rb_frame_header_decode(buf, 16, PEER_MAX_FRAME, &hdr, &e) == 0);
    PEER_CHECK(read_full(fd, buf + 16, hdr.size - 16));
    PEER_CHECK(rb_frame_decode(buf, hdr.size, PEER_MAX_FRAME, f, &e) == 0);
    return true;
}

static rb_bytes str_bytes(const char *s)
{
    return (rb_bytes){(const uint8_t *)s, strlen(s)};
}

/* The credentials the peer expects in HELLO (set before forking). */
static uint8_t want_cred[RB_AUTH_CREDENTIALS_BYTES_MAX];
static size_t want_cred_len;

/* Serves one connection: HELLO must carry want_cred; an AUTH with
 * FRESH_TOKEN is accepted, any other is refused with unauthorized and the
 * connection closed, as ringbusd does. */
static _Noreturn void peer_serve(int fd)
{
    static uint8_t in[PEER_MAX_FRAME];
    static uint8_t out[8192];
    rb_frame f;
    PEER_CHECK(peer_read(fd, in, &f) && f.hdr.kind == RB_FRAME_HELLO);
    PEER_CHECK(f.u.hello.credentials.len == want_cred_len);
    PEER_CHECK(memcmp(f.u.hello.credentials.ptr, want_cred, want_cred_len) == 0);
    send_all(fd, out,
             rb_frame_encode_started(out, sizeof out, f.hdr.corr_id, 30000, 3, PEER_MAX_FRAME,
                                     str_bytes("peer"), 0));
    while (peer_read(fd, in, &f)) {
        if (f.hdr.kind == RB_FRAME_AUTH) {
            rb_credentials c;
            rb_err e;
            PEER_CHECK((f.hdr.corr_id & RINGBUS_CORR_AUTH) != 0);
            PEER_CHECK(rb_credentials_decode(f.u.auth.credentials, &c, &e) == 0);
            PEER_CHECK(c.kind == RB_CRED_TOKEN);
            if (c.token.len == strlen(FRESH_TOKEN) &&
                memcmp(c.token.ptr, FRESH_TOKEN, c.token.len) == 0) {
                send_all(fd, out,
                         rb_frame_encode_auth(out, sizeof out, f.hdr.corr_id, (rb_bytes){NULL, 0}));
                continue;
            }
            send_all(fd, out,
                     rb_frame_encode_error(out, sizeof out, f.hdr.corr_id, RB_WIRE_UNAUTHORIZED,
                                           str_bytes("token: signature does not verify")));
            send_all(fd, out,
                     rb_frame_encode_close(out, sizeof out, 0, RB_WIRE_UNAUTHORIZED,
                                           str_bytes("refused")));
            _exit(0);
        }
        if (f.hdr.kind == RB_FRAME_PING) {
            send_all(fd, out, rb_frame_encode_pong(out, sizeof out, f.hdr.corr_id, f.u.ping.nonce));
        }
        if (f.hdr.kind == RB_FRAME_CLOSE) {
            send_all(fd, out, rb_frame_encode_close(out, sizeof out, 0, RB_WIRE_OK, str_bytes("")));
            _exit(0);
        }
    }
    _exit(0);
}

static peer peer_start(void)
{
    peer p = {0};
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(lfd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(lfd, 8), 0);
    socklen_t len = sizeof sa;
    ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    snprintf(p.url, sizeof p.url, "tcp://127.0.0.1:%d", ntohs(sa.sin_port));
    p.pid = fork();
    ck_assert_int_ge(p.pid, 0);
    if (p.pid == 0) {
        alarm(20);
        signal(SIGPIPE, SIG_IGN);
        int fd = accept(lfd, NULL, NULL);
        PEER_CHECK(fd >= 0);
        peer_serve(fd);
    }
    close(lfd);
    return p;
}

static int peer_wait(peer *p)
{
    int status = 0;
    ck_assert_int_eq(waitpid(p->pid, &status, 0), p->pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static ringbus_options opts(void)
{
    ringbus_options o;
    ringbus_options_init(&o);
    o.connect_timeout_ms = 5000;
    o.request_timeout_ms = 5000;
    return o;
}

static void finish(ringbus_conn *conn, peer *p)
{
    ringbus_error err;
    ck_assert_int_eq(ringbus_half_close(conn, &err), 0);
    ringbus_event ev;
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_CLOSED);
    ringbus_close(conn);
    ck_assert_int_eq(peer_wait(p), 0);
}

START_TEST(test_client_token_option_sends_token_credentials)
{
    want_cred_len = rb_credentials_encode_token(want_cred, sizeof want_cred, str_bytes(GOOD_TOKEN));
    peer p = peer_start();
    ringbus_options o = opts();
    o.token = GOOD_TOKEN;
    ringbus_conn *conn = NULL;
    ringbus_error err = {0};
    ck_assert_msg(ringbus_connect(p.url, &o, &conn, &err) == 0, "%s", err.message);
    finish(conn, &p);
}
END_TEST

START_TEST(test_client_user_option_sends_password_credentials)
{
    want_cred_len = rb_credentials_encode_password(want_cred, sizeof want_cred, str_bytes("alice"),
                                                   (rb_bytes){(const uint8_t *)"p\0w", 3});
    peer p = peer_start();
    ringbus_options o = opts();
    o.user = "alice";
    o.password = "p\0w";
    o.password_len = 3;
    ringbus_conn *conn = NULL;
    ringbus_error err = {0};
    ck_assert_msg(ringbus_connect(p.url, &o, &conn, &err) == 0, "%s", err.message);
    finish(conn, &p);
}
END_TEST

static void expect_options_refused(const ringbus_options *o, const char *msg)
{
    ringbus_conn *conn = NULL;
    ringbus_error err = {0};
    /* Nothing listens there: options are refused before any connect. */
    ck_assert_int_eq(ringbus_connect("tcp://127.0.0.1:1", o, &conn, &err), RINGBUS_EINVAL);
    ck_assert_str_eq(err.message, msg);
    ck_assert_ptr_null(conn);
}

START_TEST(test_client_sign_in_option_mistakes_are_refused_before_connecting)
{
    ringbus_options o = opts();
    o.token = "a.b.c";
    o.user = "bob";
    expect_options_refused(&o, "options: give only one of credentials, token and user");
    o = opts();
    o.credentials = "x";
    o.credentials_len = 1;
    o.token = "a.b.c";
    expect_options_refused(&o, "options: give only one of credentials, token and user");
    o = opts();
    o.password = "pw";
    o.password_len = 2;
    expect_options_refused(&o, "options: password without user");
    o = opts();
    o.user = "bob";
    expect_options_refused(&o, "options: user needs a password of 1..1024 bytes");
    o = opts();
    o.user = "b b";
    o.password = "pw";
    o.password_len = 2;
    expect_options_refused(&o, "options: user: control character or space at byte 1");
    o = opts();
    o.token = "a.b c";
    expect_options_refused(&o, "options: token: byte 3 is not base64url or '.'");
    o = opts();
    o.token = "";
    expect_options_refused(&o, "options: token is empty or above 8192 bytes");
    o = opts();
    o.tls_cert_file = "c.pem";
    expect_options_refused(&o, "options: tls_cert_file and tls_key_file go together");
}
END_TEST

START_TEST(test_client_refresh_token_is_accepted_and_the_connection_stays)
{
    want_cred_len = rb_credentials_encode_token(want_cred, sizeof want_cred, str_bytes(GOOD_TOKEN));
    peer p = peer_start();
    ringbus_options o = opts();
    o.token = GOOD_TOKEN;
    ringbus_conn *conn = NULL;
    ringbus_error err = {0};
    ck_assert_int_eq(ringbus_connect(p.url, &o, &conn, &err), 0);
    ck_assert_msg(ringbus_refresh_token(conn, FRESH_TOKEN, &err) == 0, "%s", err.message);
    ck_assert_int_eq(ringbus_refresh_token(conn, FRESH_TOKEN, &err), 0);
    uint64_t rtt = 0;
    ck_assert_int_eq(ringbus_ping(conn, &rtt, &err), 0);
    finish(conn, &p);
}
END_TEST

START_TEST(test_client_refused_refresh_is_eserver_unauthorized_and_closes)
{
    want_cred_len = rb_credentials_encode_token(want_cred, sizeof want_cred, str_bytes(GOOD_TOKEN));
    peer p = peer_start();
    ringbus_options o = opts();
    o.token = GOOD_TOKEN;
    ringbus_conn *conn = NULL;
    ringbus_error err = {0};
    ck_assert_int_eq(ringbus_connect(p.url, &o, &conn, &err), 0);
    ck_assert_int_eq(ringbus_refresh_token(conn, GOOD_TOKEN, &err), RINGBUS_ESERVER);
    ck_assert_int_eq(err.wire_code, RINGBUS_WIRE_UNAUTHORIZED);
    ck_assert_str_eq(err.message, "refresh_token: unauthorized: token: signature does not verify");
    ringbus_event ev;
    ck_assert_int_eq(ringbus_next_event(conn, &ev, 5000, &err), 1);
    ck_assert_int_eq(ev.kind, RINGBUS_EVENT_CLOSED);
    ck_assert_int_eq(ev.code, RINGBUS_WIRE_UNAUTHORIZED);
    ck_assert_int_eq(ringbus_refresh_token(conn, FRESH_TOKEN, &err), RINGBUS_ECLOSED);
    ringbus_close(conn);
    ck_assert_int_eq(peer_wait(&p), 0);
}
END_TEST

START_TEST(test_client_malformed_refresh_token_is_refused_without_sending)
{
    want_cred_len = 0;
    peer p = peer_start();
    ringbus_options o = opts();
    ringbus_conn *conn = NULL;
    ringbus_error err = {0};
    ck_assert_int_eq(ringbus_connect(p.url, &o, &conn, &err), 0);
    ck_assert_int_eq(ringbus_refresh_token(conn, "not a token", &err), RINGBUS_EINVAL);
    ck_assert_int_eq(ringbus_refresh_token(conn, NULL, &err), RINGBUS_EINVAL);
    /* The peer saw no AUTH (it would refuse it and close): the connection works. */
    uint64_t rtt = 0;
    ck_assert_int_eq(ringbus_ping(conn, &rtt, &err), 0);
    finish(conn, &p);
}
END_TEST

Suite *rb_client_auth_suite(void)
{
    Suite *s = suite_create("client_auth");
    TCase *tc = tcase_create("sign_in");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_client_token_option_sends_token_credentials);
    tcase_add_test(tc, test_client_user_option_sends_password_credentials);
    tcase_add_test(tc, test_client_sign_in_option_mistakes_are_refused_before_connecting);
    tcase_add_test(tc, test_client_refresh_token_is_accepted_and_the_connection_stays);
    tcase_add_test(tc, test_client_refused_refresh_is_eserver_unauthorized_and_closes);
    tcase_add_test(tc, test_client_malformed_refresh_token_is_refused_without_sending);
    suite_add_tcase(s, tc);
    return s;
}
