/* A hostile server for the libringbus fuzz targets: a listener on an
 * ephemeral 127.0.0.1 port (opened once per process) and a thread that
 * accepts one connection, optionally answers the WebSocket upgrade
 * properly, writes the fuzz input, half-closes and drains until the client
 * hangs up. The client under test therefore runs its real transports
 * (tcp, ws) and its real decode path; nothing in libringbus is stubbed.
 * Header-only (static functions), shared by fuzz_client.c and
 * fuzz_client_ws.c. */
#ifndef RB_FUZZ_FAKE_SERVER_H
#define RB_FUZZ_FAKE_SERVER_H

#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define FAKE_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

/* How long the fake server waits for the client at each step. */
#define FAKE_WAIT_MS 3000
/* The client's upgrade request is a few hundred bytes. */
#define FAKE_REQUEST_BYTES_MAX 4096

typedef enum fake_mode {
    FAKE_RAW = 0,        /* the input is everything the server sends */
    FAKE_WS_UPGRADE = 1, /* a correct 101 answer first, then the input */
} fake_mode;

typedef struct fake_job {
    const uint8_t *data;
    size_t len;
    fake_mode mode;
    int fd; /* the accepted connection */
} fake_job;

static int fake_listen_fd = -1;
static uint16_t fake_port;

static void fake_listen_once(void)
{
    if (fake_listen_fd >= 0) {
        return;
    }
    signal(SIGPIPE, SIG_IGN);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FAKE_CHECK(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    FAKE_CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    FAKE_CHECK(listen(fd, 16) == 0);
    socklen_t alen = sizeof a;
    FAKE_CHECK(getsockname(fd, (struct sockaddr *)&a, &alen) == 0);
    fake_listen_fd = fd;
    fake_port = ntohs(a.sin_port);
}

static bool fake_wait(int fd, short events)
{
    struct pollfd p = {.fd = fd, .events = events};
    return poll(&p, 1, FAKE_WAIT_MS) == 1;
}

static void fake_write_all(int fd, const uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0) {
            return; /* the client hung up: that is one of its rights */
        }
        p += n;
        len -= (size_t)n;
    }
}

#ifdef FAKE_WITH_WS
#include "transports/wsframe.h"

/* Reads the client's upgrade request and answers 101 with the right
 * Sec-WebSocket-Accept. Returns false when the client gave up first. */
static bool fake_ws_upgrade(int fd)
{
    char req[FAKE_REQUEST_BYTES_MAX + 1];
    size_t len = 0;
    while (memmem(req, len, "\r\n\r\n", 4) == NULL) {
        if (len == FAKE_REQUEST_BYTES_MAX || !fake_wait(fd, POLLIN)) {
            return false;
        }
        ssize_t n = recv(fd, req + len, FAKE_REQUEST_BYTES_MAX - len, 0);
        if (n <= 0) {
            return false;
        }
        len += (size_t)n;
    }
    req[len] = '\0';
    const char *k = strcasestr(req, "\r\nSec-WebSocket-Key: ");
    FAKE_CHECK(k != NULL);
    k += strlen("\r\nSec-WebSocket-Key: ");
    size_t key_len = strcspn(k, "\r\n");
    FAKE_CHECK(key_len <= 128);
    char accept[RB_WSFRAME_ACCEPT_BYTES];
    rb_wsframe_accept_key(k, key_len, accept);
    char answer[256];
    int n = snprintf(answer, sizeof answer,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                     "Sec-WebSocket-Protocol: ringbus.v1\r\n\r\n",
                     accept);
    fake_write_all(fd, (const uint8_t *)answer, (size_t)n);
    return true;
}
#endif

static void *fake_serve(void *arg)
{
    fake_job *job = arg;
    if (!fake_wait(fake_listen_fd, POLLIN)) {
        return NULL;
    }
    int fd = accept4(fake_listen_fd, NULL, NULL, SOCK_CLOEXEC);
    FAKE_CHECK(fd >= 0);
    job->fd = fd;
    bool go = true;
#ifdef FAKE_WITH_WS
    if (job->mode == FAKE_WS_UPGRADE) {
        go = fake_ws_upgrade(fd);
    }
#endif
    if (go) {
        fake_write_all(fd, job->data, job->len);
    }
    shutdown(fd, SHUT_WR);
    /* Drain what the client sends until it closes. */
    uint8_t sink[4096];
    while (fake_wait(fd, POLLIN) && recv(fd, sink, sizeof sink, 0) > 0) {
    }
    close(fd);
    return NULL;
}

static void fake_start(pthread_t *th, fake_job *job)
{
    fake_listen_once();
    job->fd = -1;
    FAKE_CHECK(pthread_create(th, NULL, fake_serve, job) == 0);
}

#endif
