/* The acceptor (DESIGN §2 "Accept and hand over"): the shard that holds the
 * listeners (shard 0) accepts on each with multishot accept and hands every
 * fd to the least-loaded shard before any byte is read, as MSG_RING data;
 * the receiving shard adopts it as a connection. TLS and WS start there. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/assert.h"
#include "common/log.h"
#include "server/link.h"
#include "server/server.h"

/* A new connection's payload is the listener index above the fd. */
_Static_assert(RB_LISTENERS_MAX <= (1u << (RB_REMOTE_KIND_SHIFT - 32)), "index fits the payload");

static void on_new_conn(rb_shard *sh, uint64_t payload)
{
    uint32_t listener_index = (uint32_t)(payload >> 32);
    /* A reload adds listeners in slots no other shard reads before their
     * first hand-over; slots are never reused. */
    RB_ASSERT(listener_index < RB_LISTENERS_MAX);
    RB_ASSERT(listener_index <
              atomic_load_explicit(&sh->server->listeners_published, memory_order_acquire));
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
        if (l->retired) {
            /* Removed by a reload: the accept is over, the socket goes. */
            close(l->fd);
            l->fd = -1;
            return;
        }
        if (!sh->stopping && res != -ECANCELED) {
            if (rb_loop_accept_multishot(sh->loop, l->fd, &l->accept_op) == 0) {
                l->armed = true;
            }
        }
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

static void listener_arm(rb_shard *sh, rb_listener *l)
{
    l->shard = sh;
    l->accept_op.done = accept_done;
    if (rb_loop_accept_multishot(sh->loop, l->fd, &l->accept_op) == 0) {
        l->armed = true;
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
        listener_arm(sh, l);
    }
}

void rb_acceptor_reload(rb_shard *sh, uint32_t listener_count, const uint32_t *retired,
                        uint32_t retired_count)
{
    RB_ASSERT(listener_count >= sh->listener_count && listener_count <= RB_LISTENERS_MAX);
    for (uint32_t i = 0; i < retired_count; i++) {
        RB_ASSERT(retired[i] < sh->listener_count);
        rb_listener *l = &sh->listeners[retired[i]];
        RB_ASSERT(!l->retired && l->cfg.transport != RB_TRANSPORT_QUIC);
        l->retired = true;
        RB_LOG_INFO(0, "reload: %s://%s:%u accepts no more; its connections go on",
                    rb_transport_name(l->cfg.transport), l->cfg.address, l->cfg.port);
        if (l->armed) {
            rb_loop_cancel_fd(sh->loop, l->fd, NULL);
        } else {
            close(l->fd);
            l->fd = -1;
        }
    }
    for (uint32_t i = sh->listener_count; i < listener_count; i++) {
        rb_listener *l = &sh->listeners[i];
        RB_ASSERT(l->cfg.transport != RB_TRANSPORT_QUIC);
        if (!sh->stopping) {
            listener_arm(sh, l);
        }
    }
    sh->listener_count = listener_count;
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
