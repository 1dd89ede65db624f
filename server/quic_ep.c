/* The shard's QUIC endpoint: for every quic listener, one UDP socket per
 * shard bound with SO_REUSEPORT to the listener's address, and one QUIC
 * engine (transports/quic.c) whose connection IDs carry the shard id.
 * Datagrams are read in batches (recvmmsg after a poll completion) and
 * written in batches (sendmmsg at the end of the turn); a datagram whose
 * connection ID names another shard is forwarded to it through the
 * mailbox and answered from there. A timerfd armed at the engines' next
 * expiry (nanoseconds, absolute) gives loss recovery and pacing the fine
 * timers the loop's 10 ms wheel cannot. What a connection carries is
 * link_quic.c's (sessions) or h3's (HTTP/3). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "common/assert.h"
#include "common/log.h"
#include "server/admin.h"
#include "server/link.h"
#include "server/server.h"
#include "transports/h3.h"
#include "transports/quic.h"

/* Datagrams per recvmmsg and per sendmmsg; batches per poll completion. */
#define EP_BATCH           32
#define EP_RECV_BATCHES    8
#define EP_DGRAM_BYTES_MAX 2048

_Static_assert(sizeof(((rb_server *)0)->quic_secret) == RB_QUIC_SECRET_BYTES, "secret size");
_Static_assert(RB_SHARDS_MAX - 1 <= RB_QUIC_OWNER_MAX, "a shard id fits a connection ID");

/* A forwarded datagram: listener index, address, bytes. */
typedef struct fwd_head {
    uint16_t listener;
    uint16_t len;
    socklen_t addr_len;
    struct sockaddr_storage addr;
} fwd_head;

typedef struct ep_sock {
    rb_quic_ep *ep;
    const rb_listener *l;
    int fd;
    rb_quic_path local; /* local address; remote filled per datagram */
    rb_quic_engine *e;
    rb_op poll_op;
    bool armed;
} ep_sock;

struct rb_quic_ep {
    rb_shard *sh;
    ep_sock socks[RB_LISTENERS_MAX];
    uint32_t count;
    int timer_fd;
    rb_op timer_op;
    uint64_t timer_value;
    bool timer_armed;
    uint64_t timer_at;
    /* the send batch */
    int out_fd;
    uint32_t out_count;
    struct mmsghdr out_msgs[EP_BATCH];
    struct iovec out_iov[EP_BATCH];
    struct sockaddr_storage out_addr[EP_BATCH];
    uint8_t out_buf[EP_BATCH][RB_QUIC_DATAGRAM_BYTES_MAX];
    /* the receive batch */
    struct mmsghdr in_msgs[EP_BATCH];
    struct iovec in_iov[EP_BATCH];
    struct sockaddr_storage in_addr[EP_BATCH];
    uint8_t in_buf[EP_BATCH][EP_DGRAM_BYTES_MAX];
    uint64_t send_dropped;
};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- sending ---- */

static void out_flush(rb_quic_ep *ep)
{
    uint32_t done = 0;
    while (done < ep->out_count) {
        int n = sendmmsg(ep->out_fd, ep->out_msgs + done, ep->out_count - done, MSG_DONTWAIT);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            /* A full socket buffer: the rest counts as lost (QUIC resends). */
            ep->send_dropped += ep->out_count - done;
            break;
        }
        done += (uint32_t)n;
    }
    ep->out_count = 0;
}

static int ep_send(void *ctx, const rb_quic_path *path, const uint8_t *p, size_t len)
{
    ep_sock *s = ctx;
    rb_quic_ep *ep = s->ep;
    if (ep->out_count > 0 && (ep->out_fd != s->fd || ep->out_count == EP_BATCH)) {
        out_flush(ep);
    }
    RB_ASSERT(len <= RB_QUIC_DATAGRAM_BYTES_MAX);
    uint32_t i = ep->out_count++;
    ep->out_fd = s->fd;
    memcpy(ep->out_buf[i], p, len);
    memcpy(&ep->out_addr[i], &path->remote.ss, path->remote.len);
    ep->out_iov[i].iov_base = ep->out_buf[i];
    ep->out_iov[i].iov_len = len;
    memset(&ep->out_msgs[i], 0, sizeof ep->out_msgs[i]);
    ep->out_msgs[i].msg_hdr.msg_name = &ep->out_addr[i];
    ep->out_msgs[i].msg_hdr.msg_namelen = path->remote.len;
    ep->out_msgs[i].msg_hdr.msg_iov = &ep->out_iov[i];
    ep->out_msgs[i].msg_hdr.msg_iovlen = 1;
    return 0;
}

/* ---- timers ---- */

static void timer_done(rb_op *op, int res, uint32_t flags);

static uint64_t ep_expiry(const rb_quic_ep *ep)
{
    uint64_t at = UINT64_MAX;
    for (uint32_t i = 0; i < ep->count; i++) {
        uint64_t x = rb_quic_engine_expiry(ep->socks[i].e);
        at = x < at ? x : at;
    }
    return at;
}

static void timer_arm(rb_quic_ep *ep)
{
    uint64_t at = ep_expiry(ep);
    if (at != ep->timer_at) {
        struct itimerspec its = {0};
        if (at != UINT64_MAX) {
            at = at == 0 ? 1 : at;
            its.it_value.tv_sec = (time_t)(at / 1000000000u);
            its.it_value.tv_nsec = (long)(at % 1000000000u);
        }
        (void)timerfd_settime(ep->timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
        ep->timer_at = at;
    }
    if (!ep->timer_armed) {
        if (rb_loop_read(ep->sh->loop, ep->timer_fd, &ep->timer_value, sizeof ep->timer_value,
                         &ep->timer_op) == 0) {
            ep->timer_armed = true;
        }
    }
}

static void timer_done(rb_op *op, int res, uint32_t flags)
{
    (void)res;
    (void)flags;
    rb_quic_ep *ep = RB_CONTAINER_OF(op, rb_quic_ep, timer_op);
    ep->timer_armed = false;
    ep->timer_at = 0; /* fired: set it again at the next flush */
    uint64_t now = mono_ns();
    for (uint32_t i = 0; i < ep->count; i++) {
        rb_quic_engine_timeout(ep->socks[i].e, now);
    }
    out_flush(ep);
    timer_arm(ep);
}

/* ---- receiving ---- */

static void sock_poll_done(rb_op *op, int res, uint32_t flags);

static void sock_arm(ep_sock *s)
{
    if (!s->armed && rb_loop_poll(s->ep->sh->loop, s->fd, POLLIN, &s->poll_op) == 0) {
        s->armed = true;
    }
}

/* Hands a datagram for another shard's connection to that shard. */
static bool forward(ep_sock *s, uint32_t owner, const struct sockaddr_storage *from,
                    socklen_t from_len, const uint8_t *p, size_t len)
{
    rb_shard *sh = s->ep->sh;
    uint8_t *rec = rb_mailbox_reserve(&sh->mail, owner, RB_XK_QUIC_DGRAM, sizeof(fwd_head) + len);
    if (rec == NULL) {
        return false;
    }
    fwd_head h = {.listener = (uint16_t)s->l->index, .len = (uint16_t)len, .addr_len = from_len};
    memcpy(&h.addr, from, from_len);
    memcpy(rec, &h, sizeof h);
    memcpy(rec + sizeof h, p, len);
    rb_mailbox_commit(&sh->mail, owner, sizeof h + len);
    return true;
}

static void dgram_in(ep_sock *s, const struct sockaddr_storage *from, socklen_t from_len,
                     const uint8_t *p, size_t len, uint64_t now)
{
    rb_shard *sh = s->ep->sh;
    uint32_t owner;
    if (rb_quic_dcid_owner(p, len, &owner) == 0 && owner != sh->id &&
        owner < sh->server->shard_count) {
        /* Another shard's connection: never served here (this engine does
         * not know it and would answer with a stateless reset). */
        if (forward(s, owner, from, from_len, p, len)) {
            RB_STAT_ADD(sh, quic_forwarded, 1);
        } else {
            RB_STAT_ADD(sh, quic_forward_dropped, 1);
        }
        return;
    }
    rb_quic_path path = s->local;
    memcpy(&path.remote.ss, from, from_len);
    path.remote.len = from_len;
    rb_quic_engine_recv(s->e, &path, p, len, now);
}

static void sock_poll_done(rb_op *op, int res, uint32_t flags)
{
    (void)flags;
    ep_sock *s = RB_CONTAINER_OF(op, ep_sock, poll_op);
    rb_quic_ep *ep = s->ep;
    s->armed = false;
    if (res < 0) {
        return;
    }
    for (int batch = 0; batch < EP_RECV_BATCHES; batch++) {
        for (int i = 0; i < EP_BATCH; i++) {
            ep->in_iov[i].iov_base = ep->in_buf[i];
            ep->in_iov[i].iov_len = EP_DGRAM_BYTES_MAX;
            memset(&ep->in_msgs[i].msg_hdr, 0, sizeof ep->in_msgs[i].msg_hdr);
            ep->in_msgs[i].msg_hdr.msg_name = &ep->in_addr[i];
            ep->in_msgs[i].msg_hdr.msg_namelen = sizeof ep->in_addr[i];
            ep->in_msgs[i].msg_hdr.msg_iov = &ep->in_iov[i];
            ep->in_msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(s->fd, ep->in_msgs, EP_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            break;
        }
        uint64_t now = mono_ns();
        for (int i = 0; i < n; i++) {
            dgram_in(s, &ep->in_addr[i], ep->in_msgs[i].msg_hdr.msg_namelen, ep->in_buf[i],
                     ep->in_msgs[i].msg_len, now);
        }
        if (n < EP_BATCH) {
            break;
        }
    }
    sock_arm(s);
}

static void on_mail(void *ctx, rb_xmsg *m)
{
    rb_shard *sh = ctx;
    rb_quic_ep *ep = sh->quic_ep;
    const uint8_t *p = m->data;
    uint64_t now = mono_ns();
    for (uint32_t i = 0; i < m->count; i++) {
        fwd_head h;
        memcpy(&h, p, sizeof h);
        p += sizeof h;
        for (uint32_t k = 0; ep != NULL && k < ep->count; k++) {
            ep_sock *s = &ep->socks[k];
            if (s->l->index == h.listener) {
                rb_quic_path path = s->local;
                memcpy(&path.remote.ss, &h.addr, h.addr_len);
                path.remote.len = h.addr_len;
                rb_quic_engine_recv(s->e, &path, p, h.len, now);
            }
        }
        p += h.len;
    }
    RB_ASSERT(p == m->data + m->bytes);
    rb_xmsg_put(m);
}

/* ---- connections: sessions (ringbus/1) and HTTP/3 ---- */

/* HTTP/3 requests go through the daemon's one router (server/admin.c),
 * the same table the ws listeners' HTTP/1.1 phase uses; a newline is
 * added as on HTTP/1.1. The answer holds the router's largest body
 * (/metrics, /v1/connz) and the newline. */
typedef struct h3_answer {
    char body[RB_ADMIN_BODY_BYTES_MAX + 2];
} h3_answer;

static int h3_route(void *ctx, rb_h3 *h3, int64_t sid, const rb_h3_request *req,
                    rb_h3_response *resp)
{
    (void)h3;
    (void)sid;
    rb_shard *sh = ctx;
    rb_http_request hreq;
    memset(&hreq, 0, sizeof hreq);
    hreq.method = (rb_http_span){req->method, strlen(req->method)};
    hreq.target = (rb_http_span){req->path, strlen(req->path)};
    hreq.version_minor = 1;
    rb_http_response hresp = {0};
    static _Thread_local h3_answer answer; /* copied by rb_h3 on return */
    resp->content_type = "text/plain; charset=utf-8";
    if (!rb_admin_route(&sh->server->admin, &hreq, &hresp)) {
        hresp.status = 404;
        hresp.body = "not found";
    }
    resp->status = (uint16_t)hresp.status;
    size_t n = hresp.body == NULL ? 0 : hresp.body_len != 0 ? hresp.body_len : strlen(hresp.body);
    RB_ASSERT(n <= RB_ADMIN_BODY_BYTES_MAX);
    memcpy(answer.body, hresp.body != NULL ? hresp.body : "", n);
    answer.body[n] = '\n';
    if (hresp.content_type != NULL) {
        resp->content_type = hresp.content_type;
    }
    resp->body = (const uint8_t *)answer.body;
    resp->body_len = n + 1;
    return RB_H3_ANSWERED;
}

static int ep_established(void *ctx, rb_quic_conn *qc, rb_quic_alpn alpn)
{
    ep_sock *s = ctx;
    rb_shard *sh = s->ep->sh;
    if (sh->stopping) {
        return -1;
    }
    if (alpn == RB_QUIC_ALPN_RINGBUS) {
        return rb_link_quic_open(sh, s->l, qc);
    }
    rb_h3_config hc = {
        .max_body_bytes = sh->server->cfg.max_frame_bytes, .route = h3_route, .route_ctx = sh};
    rb_h3 *h3 = NULL;
    rb_err err;
    if (rb_h3_new(&h3, qc, &hc, &err) != 0) {
        RB_LOG_WARN(0, "h3: %s", err.msg);
        return -1;
    }
    rb_quic_conn_set_user(qc, h3);
    return 0;
}

static void ep_bus_recv(void *ctx, rb_quic_conn *qc, const uint8_t *p, size_t len, bool fin)
{
    (void)ctx;
    rb_link_quic_recv(qc, p, len, fin);
}

static void ep_bus_acked(void *ctx, rb_quic_conn *qc, uint64_t len)
{
    (void)ctx;
    rb_link_quic_acked(qc, len);
}

static void ep_closed(void *ctx, rb_quic_conn *qc, const rb_quic_end *end)
{
    (void)ctx;
    if (rb_quic_conn_alpn(qc) == RB_QUIC_ALPN_RINGBUS) {
        rb_link_quic_gone(qc, end);
    } else {
        rb_h3_free(rb_quic_conn_user(qc));
        rb_quic_conn_set_user(qc, NULL);
    }
}

static int sock_open(ep_sock *s, rb_shard *sh, const rb_listener *l, rb_err *err)
{
    const rb_listener_config *c = &l->cfg;
    bool v6 = strchr(c->address, ':') != NULL;
    s->fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        return rb_err_set(err, RB_ESYS, errno, "quic listen %s:%u: socket", c->address, c->port);
    }
    int one = 1;
    (void)setsockopt(s->fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    int buf = 4 << 20;
    (void)setsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    (void)setsockopt(s->fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    memset(&s->local, 0, sizeof s->local);
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&s->local.local.ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(c->port);
        inet_pton(AF_INET6, c->address, &a->sin6_addr);
        s->local.local.len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&s->local.local.ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(c->port);
        inet_pton(AF_INET, c->address, &a->sin_addr);
        s->local.local.len = sizeof *a;
    }
    if (bind(s->fd, (struct sockaddr *)&s->local.local.ss, s->local.local.len) != 0) {
        int e = errno;
        return rb_err_set(err, RB_ESYS, e, "quic listen %s:%u: bind (shard %u)", c->address,
                          c->port, sh->id);
    }
    return 0;
}

static int sock_engine(ep_sock *s, rb_shard *sh, const rb_listener *l, rb_err *err)
{
    const rb_server *srv = sh->server;
    rb_quic_config qcfg;
    rb_quic_config_default(&qcfg, RB_QUIC_SERVER);
    qcfg.owner_id = sh->id;
    memcpy(qcfg.secret, srv->quic_secret, sizeof qcfg.secret);
    qcfg.cert_file = l->cfg.cert;
    qcfg.key_file = l->cfg.key;
    qcfg.retry = l->cfg.quic_retry;
    qcfg.conns_max = sh->conn_max;
    qcfg.handshake_ms = srv->cfg.handshake_timeout_ms;
    qcfg.stream_window_bytes = srv->cfg.max_frame_bytes < RB_QUIC_STREAM_WINDOW_DEFAULT
                                   ? RB_QUIC_STREAM_WINDOW_DEFAULT
                                   : srv->cfg.max_frame_bytes;
    /* A send reference per queue chunk or fan-out segment. */
    qcfg.send_refs_max = RB_QUIC_SEND_REFS_MAX;
    rb_quic_handler h = {
        .send = ep_send,
        .established = ep_established,
        .bus_recv = ep_bus_recv,
        .bus_acked = ep_bus_acked,
        .closed = ep_closed,
        .ctx = s,
    };
    return rb_quic_engine_new(&s->e, &qcfg, &h, err);
}

static int quic_init(rb_shard *sh, rb_err *err)
{
    rb_server *srv = sh->server;
    uint32_t n = 0;
    for (uint32_t i = 0; i < srv->listener_count; i++) {
        n += srv->listeners[i].cfg.transport == RB_TRANSPORT_QUIC;
    }
    if (n == 0) {
        return 0;
    }
    rb_quic_ep *ep = calloc(1, sizeof *ep);
    if (ep == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "shard %u: quic endpoint", sh->id);
    }
    sh->quic_ep = ep;
    ep->sh = sh;
    ep->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    ep->timer_op.done = timer_done;
    ep->timer_at = UINT64_MAX;
    if (ep->timer_fd < 0) {
        return rb_err_set(err, RB_ESYS, errno, "shard %u: quic timerfd", sh->id);
    }
    rb_mailbox_register(&sh->mail, RB_XK_QUIC_DGRAM, on_mail, sh);
    int rc = rb_link_quic_table_init(sh, err);
    for (uint32_t i = 0; rc == 0 && i < srv->listener_count; i++) {
        const rb_listener *l = &srv->listeners[i];
        if (l->cfg.transport != RB_TRANSPORT_QUIC) {
            continue;
        }
        ep_sock *s = &ep->socks[ep->count++];
        s->ep = ep;
        s->l = l;
        s->fd = -1;
        s->poll_op.done = sock_poll_done;
        rc = sock_open(s, sh, l, err);
        rc = rc ? rc : sock_engine(s, sh, l, err);
    }
    return rc;
}

static void quic_start(rb_shard *sh)
{
    rb_quic_ep *ep = sh->quic_ep;
    for (uint32_t i = 0; ep != NULL && i < ep->count; i++) {
        sock_arm(&ep->socks[i]);
    }
}

static void quic_flush(rb_shard *sh)
{
    rb_quic_ep *ep = sh->quic_ep;
    if (ep == NULL) {
        return;
    }
    uint64_t now = mono_ns();
    for (uint32_t i = 0; i < ep->count; i++) {
        rb_quic_engine_write(ep->socks[i].e, now);
    }
    out_flush(ep);
    timer_arm(ep);
}

static void quic_deinit(rb_shard *sh)
{
    rb_quic_ep *ep = sh->quic_ep;
    if (ep == NULL) {
        return;
    }
    for (uint32_t i = 0; i < ep->count; i++) {
        rb_quic_engine_free(ep->socks[i].e);
        if (ep->socks[i].fd >= 0) {
            close(ep->socks[i].fd);
        }
    }
    if (ep->timer_fd >= 0) {
        close(ep->timer_fd);
    }
    rb_link_quic_table_deinit(sh);
    free(ep);
    sh->quic_ep = NULL;
}

const rb_subsystem rb_quic_subsystem = {
    .name = "quic",
    .init = quic_init,
    .start = quic_start,
    .flush = quic_flush,
    .deinit = quic_deinit,
};
