/* The acceptor (DESIGN §2 "Accept and hand over"): the shard that holds the
 * listeners (shard 0) accepts on each with multishot accept and hands every
 * fd to the least-loaded shard before any byte is read, as MSG_RING data;
 * the receiving shard adopts it as a connection. TLS and WS start there. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "common/assert.h"
#include "common/log.h"
#include "server/link.h"
#include "server/server.h"

/* A new connection's payload is the listener index above the fd. */
_Static_assert(RB_LISTENERS_MAX <= (1u << (RB_REMOTE_KIND_SHIFT - 32)), "index fits the payload");

static void on_new_conn(rb_shard *sh, uint64_t payload)
{
    uint32_t listener_index = (uint32_t)(payload >> 32);
    RB_ASSERT(listener_index < sh->server->listener_count);
    rb_link_tcp_adopt(sh, (int)(uint32_t)payload, &sh->server->listeners[listener_index], true);
}

static rb_shard *least_loaded(rb_server *srv)
{
    rb_shard *best = &srv->shards[0];
    unsigned best_count = atomic_load(&best->conn_count);
    for (uint32_t i = 1; i < srv->shard_count; i++) {
        unsigned n = atomic_load(&srv->shards[i].conn_count);
        if (n < best_count) {
            best = &srv->shards[i];
            best_count = n;
        }
    }
    return best;
}

static void accept_done(rb_op *op, int res, uint32_t flags)
{
    rb_listener *l = RB_CONTAINER_OF(op, rb_listener, accept_op);
    rb_shard *sh = l->shard;
    if (res >= 0) {
        rb_shard *target = least_loaded(sh->server);
        if (target == sh) {
            rb_link_tcp_adopt(sh, res, l, false);
        } else {
            /* Pending counts as load at once, so a burst spreads out. The
             * listener travels with the fd: TLS and WS start on the target. */
            atomic_fetch_add(&target->conn_count, 1);
            int tfd = atomic_load(&target->ring_fd);
            uint64_t payload = (uint64_t)l->index << 32 | (uint32_t)res;
            if (rb_loop_wake_remote(sh->loop, tfd, RB_REMOTE(RB_REMOTE_NEW_CONN, payload)) != 0) {
                atomic_fetch_sub(&target->conn_count, 1);
                rb_link_tcp_adopt(sh, res, l, false);
            }
        }
    } else if (res != -ECANCELED) {
        RB_LOG_WARN(0, "accept on %s:%u: %s", l->cfg.address, l->cfg.port, strerror(-res));
    }
    if ((flags & RB_LOOP_F_MORE) == 0) {
        l->armed = false;
        if (!sh->stopping && res != -ECANCELED) {
            if (rb_loop_accept_multishot(sh->loop, l->fd, &l->accept_op) == 0) {
                l->armed = true;
            }
        }
    }
}

/* ---- per-address limits (issue 13) ---- */

static void addr_text(const rb_addr_key *key, char *out, size_t cap)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    bool v4 = memcmp(key->bytes, mapped, sizeof mapped) == 0;
    if (inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? key->bytes + 12 : key->bytes, out,
                  (socklen_t)cap) == NULL) {
        snprintf(out, cap, "?");
    }
}

rb_admit rb_addr_check(rb_shard *sh, int fd, const rb_listener *l, rb_addr_key *key)
{
    rb_server *srv = sh->server;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (srv->addrs == NULL || getpeername(fd, (struct sockaddr *)&ss, &len) != 0 ||
        !rb_addr_key_of((const struct sockaddr *)&ss, len, key)) {
        return RB_ADMIT_OK; /* unix sockets, tests without listeners: nothing to count */
    }
    rb_listener *counted = &srv->listeners[l->index];
    uint64_t now = rb_loop_now_ms(sh->loop);
    rb_admit a = RB_ADMIT_TOTAL;
    pthread_mutex_lock(&srv->addr_lock);
    if (atomic_load(&counted->conns) >= l->cfg.max_connections) {
        a = RB_ADMIT_LISTENER;
    } else if (atomic_load(&srv->conns_counted) < srv->cfg.max_connections_total) {
        a = rb_addr_admit(srv->addrs, key, now);
    }
    if (a == RB_ADMIT_OK) {
        atomic_fetch_add(&srv->conns_counted, 1);
        atomic_fetch_add(&counted->conns, 1);
        pthread_mutex_unlock(&srv->addr_lock);
        return a;
    }
    bool log = srv->addr_logged_ms == 0 || now - srv->addr_logged_ms >= 1000;
    uint64_t before = srv->addr_unlogged;
    if (log) {
        srv->addr_logged_ms = now;
        srv->addr_unlogged = 0;
    } else {
        srv->addr_unlogged++;
    }
    pthread_mutex_unlock(&srv->addr_lock);
    if (log) {
        char who[INET6_ADDRSTRLEN];
        addr_text(key, who, sizeof who);
        RB_LOG_WARN(0,
                    "connection from %s to %s:%u refused: %s (%llu more refused since the last "
                    "line)",
                    who, l->cfg.address, l->cfg.port, rb_admit_name(a), (unsigned long long)before);
    }
    return a;
}

void rb_conn_addr_counted(rb_conn *c, const rb_listener *l, const rb_addr_key *key)
{
    if (c->shard->server->addrs != NULL) {
        c->addr_key = *key;
        c->addr_listener = l->index;
        c->addr_counted = true;
    }
}

void rb_conn_addr_release(rb_conn *c)
{
    /* At teardown (one thread, after the shards) the table may be gone. */
    rb_server *srv = c->shard->server;
    if (c->addr_counted && srv->addrs != NULL) {
        c->addr_counted = false;
        pthread_mutex_lock(&srv->addr_lock);
        rb_addr_release(srv->addrs, &c->addr_key);
        atomic_fetch_sub(&srv->conns_counted, 1);
        atomic_fetch_sub(&srv->listeners[c->addr_listener].conns, 1);
        pthread_mutex_unlock(&srv->addr_lock);
    }
}

void rb_conn_addr_failure(rb_conn *c)
{
    rb_server *srv = c->shard->server;
    if (c->addr_counted && srv->addrs != NULL) {
        pthread_mutex_lock(&srv->addr_lock);
        (void)rb_addr_failure(srv->addrs, &c->addr_key, rb_loop_now_ms(c->shard->loop));
        pthread_mutex_unlock(&srv->addr_lock);
    }
}

static int acceptor_init(rb_shard *sh, rb_err *err)
{
    rb_shard_on_remote(sh, RB_REMOTE_NEW_CONN, on_new_conn);
    rb_server *srv = sh->server;
    if (sh->listener_count == 0 || srv->addrs != NULL) {
        return 0;
    }
    const rb_config *cfg = &srv->cfg;
    uint64_t expected = (uint64_t)cfg->max_connections * srv->shard_count;
    if (expected > cfg->max_connections_total) {
        expected = cfg->max_connections_total;
    }
    rb_addr_limits limits = {.conns_per_address = cfg->max_connections_per_address,
                             .conn_rate_per_s = cfg->connection_rate_per_address,
                             .failures_per_minute = cfg->auth_failures_per_minute};
    if (pthread_mutex_init(&srv->addr_lock, NULL) != 0) {
        return rb_err_set(err, RB_ESYS, 0, "the address table's lock");
    }
    int rc = rb_addr_table_new(&srv->addrs, (uint32_t)expected, limits, err);
    if (rc != 0) {
        pthread_mutex_destroy(&srv->addr_lock);
    }
    return rc;
}

static void acceptor_deinit(rb_shard *sh)
{
    rb_server *srv = sh->server;
    if (sh->listener_count > 0 && srv->addrs != NULL) {
        rb_addr_table_free(srv->addrs);
        srv->addrs = NULL;
        pthread_mutex_destroy(&srv->addr_lock);
    }
}

/* Accepting starts once every shard has its ring, so hand-overs have a
 * target. */
static void acceptor_start(rb_shard *sh)
{
    for (uint32_t i = 0; i < sh->listener_count; i++) {
        rb_listener *l = &sh->listeners[i];
        if (l->cfg.transport == RB_TRANSPORT_QUIC) {
            /* Every shard reads its own UDP socket (server/quic_ep.c). */
            continue;
        }
        l->shard = sh;
        l->accept_op.done = accept_done;
        if (rb_loop_accept_multishot(sh->loop, l->fd, &l->accept_op) == 0) {
            l->armed = true;
        }
    }
}

static void acceptor_stop(rb_shard *sh, bool grace_over)
{
    if (grace_over) {
        return;
    }
    for (uint32_t i = 0; i < sh->listener_count; i++) {
        rb_listener *l = &sh->listeners[i];
        if (l->armed) {
            rb_loop_cancel_fd(sh->loop, l->fd, NULL);
        }
    }
}

const rb_subsystem rb_acceptor_subsystem = {
    .name = "acceptor",
    .init = acceptor_init,
    .start = acceptor_start,
    .stop = acceptor_stop,
    .deinit = acceptor_deinit,
};
