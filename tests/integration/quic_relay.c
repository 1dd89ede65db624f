/* A TCP-to-QUIC relay for tests: it listens on 127.0.0.1 (TCP, a free
 * port printed as "port N"), and for each accepted connection opens a QUIC
 * connection with libringbus's quic transport (client/transport_quic.c,
 * the same code quic:// uses) to the URL given, then copies bytes both
 * ways. Test clients that speak raw frames over a socket (streamcheck,
 * rbproto) thereby reach the daemon's quic listener: the daemon sees a
 * real QUIC connection. An end on either side closes the pair.
 *
 * usage: quic_relay URL CA_FILE */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client/transport.h"
#include "client/url.h"

#define PAIRS_MAX 64
#define BUF_BYTES (256u * 1024u)

typedef struct pair {
    bool used;
    int tcp;
    rb_client_transport tp;
    uint8_t up[BUF_BYTES]; /* tcp -> quic */
    size_t up_len;
    uint8_t down[BUF_BYTES]; /* quic -> tcp */
    size_t down_len;
} pair;

static pair pairs[PAIRS_MAX];
static volatile sig_atomic_t stopping;

static void on_term(int sig)
{
    (void)sig;
    stopping = 1;
}

static void pair_close(pair *p)
{
    if (p->tp.ops != NULL) {
        p->tp.ops->close(&p->tp);
    }
    close(p->tcp);
    memset(p, 0, sizeof *p);
}

static void pair_open(int tcp, const rb_url *url, const char *url_text, const char *ca)
{
    pair *p = NULL;
    for (int i = 0; i < PAIRS_MAX && p == NULL; i++) {
        p = pairs[i].used ? NULL : &pairs[i];
    }
    if (p == NULL) {
        close(tcp);
        return;
    }
    memset(p, 0, sizeof *p);
    p->used = true;
    p->tcp = tcp;
    p->tp.fd = -1;
    p->tp.ca_file = ca;
    p->tp.ops = rb_client_transport_for(RB_URL_QUIC);
    rb_err err = {0};
    if (p->tp.ops->connect(&p->tp, url, url_text, rb_client_now_ns() + 10000000000ll, &err) != 0) {
        fprintf(stderr, "quic_relay: %s\n", err.msg);
        p->tp.ops = NULL;
        pair_close(p);
    }
}

/* One pass over a pair; returns false when it ended. */
static bool pair_pump(pair *p)
{
    rb_err err = {0};
    if (p->up_len < BUF_BYTES) {
        ssize_t n = recv(p->tcp, p->up + p->up_len, BUF_BYTES - p->up_len, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            return false;
        }
        p->up_len += n > 0 ? (size_t)n : 0;
    }
    if (p->up_len > 0) {
        ssize_t n = p->tp.ops->write(&p->tp, p->up, p->up_len, &err);
        if (n < 0 && n != RB_EAGAIN) {
            return false;
        }
        if (n > 0) {
            memmove(p->up, p->up + n, p->up_len - (size_t)n);
            p->up_len -= (size_t)n;
        }
    }
    if (p->down_len < BUF_BYTES) {
        ssize_t n = p->tp.ops->read(&p->tp, p->down + p->down_len, BUF_BYTES - p->down_len, &err);
        if (n == 0 || (n < 0 && n != RB_EAGAIN)) {
            /* How the QUIC connection ended (the daemon's status in its
             * CONNECTION_CLOSE), for tests to read. */
            fprintf(stderr, "quic_relay: ended: %s\n", n == 0 ? "end of stream" : err.msg);
            /* Deliver what arrived before the end. */
            (void)send(p->tcp, p->down, p->down_len, MSG_NOSIGNAL);
            return false;
        }
        p->down_len += n > 0 ? (size_t)n : 0;
    }
    if (p->down_len > 0) {
        ssize_t n = send(p->tcp, p->down, p->down_len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            return false;
        }
        if (n > 0) {
            memmove(p->down, p->down + n, p->down_len - (size_t)n);
            p->down_len -= (size_t)n;
        }
    }
    return true;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: quic_relay URL CA_FILE\n");
        return 2;
    }
    rb_url url;
    rb_err err = {0};
    if (rb_url_parse(argv[1], &url, &err) != 0 || url.scheme != RB_URL_QUIC) {
        fprintf(stderr, "quic_relay: %s: not a quic:// URL\n", argv[1]);
        return 2;
    }
    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    if (ls < 0 || bind(ls, (struct sockaddr *)&sin, sizeof sin) != 0 || listen(ls, 64) != 0 ||
        getsockname(ls, (struct sockaddr *)&sin, &len) != 0) {
        perror("quic_relay: listen");
        return 1;
    }
    printf("port %u\n", ntohs(sin.sin_port));
    fflush(stdout);
    while (!stopping) {
        struct pollfd pfd[1 + 2 * PAIRS_MAX];
        int n = 0;
        pfd[n++] = (struct pollfd){.fd = ls, .events = POLLIN};
        for (int i = 0; i < PAIRS_MAX; i++) {
            if (pairs[i].used) {
                pfd[n++] = (struct pollfd){.fd = pairs[i].tcp, .events = POLLIN};
                pfd[n++] = (struct pollfd){.fd = pairs[i].tp.fd, .events = POLLIN};
            }
        }
        (void)poll(pfd, (nfds_t)n, 5);
        if ((pfd[0].revents & POLLIN) != 0) {
            int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0) {
                pair_open(fd, &url, argv[1], argv[2]);
            }
        }
        for (int i = 0; i < PAIRS_MAX; i++) {
            if (pairs[i].used && !pair_pump(&pairs[i])) {
                pair_close(&pairs[i]);
            }
        }
    }
    for (int i = 0; i < PAIRS_MAX; i++) {
        if (pairs[i].used) {
            pair_close(&pairs[i]);
        }
    }
    close(ls);
    return 0;
}
