/* Shards: one thread per core, each with its own loop, connection table,
 * pools, storage handle, topic owners and subscriptions. This file owns the
 * shard thread and its loop turn, the acceptor (shard 0 accepts on every
 * listener and hands each fd to the least-loaded shard before any byte is
 * read), the bounded queues between shards woken with MSG_RING, and the
 * graceful stop. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/assert.h"
#include "common/hash.h"
#include "common/log.h"
#include "server/link.h"
#include "server/sendq.h"
#include "server/server.h"
#include "transports/tls.h"

uint32_t rb_topic_owner_shard(const rb_server *srv, const uint8_t *topic, size_t len)
{
    return (uint32_t)(rb_hash_bytes(topic, len) % srv->shard_count);
}

void rb_block_ref(rb_block *b)
{
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
}

void rb_block_unref(rb_block *b)
{
    if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) {
        rb_pool_put(b->home, b);
    }
}

rb_block *rb_shard_block_get(rb_shard *sh)
{
    rb_block *b = rb_pool_get(&sh->block_pool);
    if (b == NULL) {
        return NULL;
    }
    atomic_init(&b->refs, 1);
    b->home = &sh->block_pool;
    b->cap = sh->server->cfg.max_frame_bytes;
    b->data = (uint8_t *)(b + 1);
    b->bytes = 0;
    b->count = 0;
    return b;
}

rb_xmsg *rb_shard_xmsg_get(rb_shard *sh)
{
    rb_xmsg *m = rb_pool_get(&sh->xmsg_pool);
    if (m == NULL) {
        return NULL;
    }
    memset(m, 0, sizeof *m);
    m->home = &sh->xmsg_pool;
    m->from_shard = (uint16_t)sh->id;
    m->cap = RB_XMSG_DATA_BYTES;
    m->data = (uint8_t *)(m + 1);
    m->ptr = NULL;
    return m;
}

void rb_xmsg_put(rb_xmsg *m)
{
    if (m->ptr != NULL) {
        rb_block_unref(m->ptr);
    }
    rb_pool_put(m->home, m);
}

static int push_now(rb_shard *sh, uint32_t to, rb_xmsg *m)
{
    rb_shard *dst = &sh->server->shards[to];
    if (!rb_spsc_push(&dst->inbox[sh->id], m)) {
        return RB_ELIMIT;
    }
    sh->wake_pending[to] = 1;
    if (to == sh->id) {
        sh->self_pending = true;
    }
    return 0;
}

static int outbox_flush(rb_shard *sh, uint32_t to)
{
    rb_xmsg *m = sh->outbox[to];
    if (m == NULL) {
        return 0;
    }
    if (push_now(sh, to, m) != 0) {
        return RB_ELIMIT;
    }
    sh->outbox[to] = NULL;
    return 0;
}

int rb_shard_send(rb_shard *sh, uint32_t to, rb_xmsg *m)
{
    /* Records already written for `to` go first, to keep their order. */
    if (outbox_flush(sh, to) != 0) {
        return RB_ELIMIT;
    }
    return push_now(sh, to, m);
}

void rb_outbox_flush_all(rb_shard *sh)
{
    for (uint32_t i = 0; i < sh->server->shard_count; i++) {
        if (outbox_flush(sh, i) != 0) {
            RB_LOG_WARN(0, "queue to shard %u is full; retrying next turn", i);
        }
    }
}

uint8_t *rb_outbox_reserve(rb_shard *sh, uint32_t to, uint16_t kind, size_t len)
{
    rb_xmsg *m = sh->outbox[to];
    if (m != NULL && (m->kind != kind || m->cap - m->bytes < len)) {
        if (outbox_flush(sh, to) != 0) {
            return NULL;
        }
        m = NULL;
    }
    if (m != NULL) {
        return m->data + m->bytes;
    }
    m = rb_shard_xmsg_get(sh);
    if (m == NULL) {
        return NULL;
    }
    m->kind = kind;
    if (len > m->cap) {
        /* A record larger than an envelope travels in a frame-sized block. */
        rb_block *b = rb_shard_block_get(sh);
        if (b == NULL || len > b->cap) {
            if (b != NULL) {
                rb_block_unref(b);
            }
            rb_xmsg_put(m);
            return NULL;
        }
        m->ptr = b;
        m->data = b->data;
        m->cap = b->cap;
    }
    sh->outbox[to] = m;
    return m->data;
}

void rb_outbox_commit(rb_shard *sh, uint32_t to, size_t len)
{
    rb_xmsg *m = sh->outbox[to];
    RB_ASSERT(m != NULL);
    RB_ASSERT(m->bytes + len <= m->cap);
    m->bytes += (uint32_t)len;
    m->count++;
}

static void dispatch_xmsg(rb_shard *sh, rb_xmsg *m)
{
    if (m->kind < 100) {
        rb_owner_on_xmsg(sh, m);
    } else if (m->kind == RB_XK_QUIC_DGRAM) {
        rb_quic_ep_on_xmsg(sh, m);
    } else {
        rb_stream_on_xmsg(sh, m);
    }
}

static void drain_inboxes(rb_shard *sh)
{
    void *items[64];
    for (uint32_t i = 0; i < sh->server->shard_count; i++) {
        uint32_t n;
        /* Bounded per turn so one busy producer cannot starve the rest. */
        uint32_t rounds = 16;
        while (rounds-- > 0 && (n = rb_spsc_pop_many(&sh->inbox[i], items, 64)) > 0) {
            for (uint32_t k = 0; k < n; k++) {
                dispatch_xmsg(sh, items[k]);
            }
        }
    }
}

static void send_wakes(rb_shard *sh)
{
    for (uint32_t i = 0; i < sh->server->shard_count; i++) {
        if (sh->wake_pending[i] == 0) {
            continue;
        }
        sh->wake_pending[i] = 0;
        if (i == sh->id) {
            continue;
        }
        int fd = atomic_load(&sh->server->shards[i].ring_fd);
        if (rb_loop_wake_remote(sh->loop, fd, RB_REMOTE(RB_REMOTE_QUEUE, sh->id)) != 0) {
            sh->wake_pending[i] = 1;
        }
    }
}

/* A new connection's payload is the listener index above the fd. */
_Static_assert(RB_LISTENERS_MAX <= (1u << (RB_REMOTE_KIND_SHIFT - 32)), "index fits the payload");

static void on_remote(void *ctx, uint64_t data)
{
    rb_shard *sh = ctx;
    uint64_t kind = data >> RB_REMOTE_KIND_SHIFT;
    uint64_t payload = data & ((1ull << RB_REMOTE_KIND_SHIFT) - 1);
    if (kind == RB_REMOTE_NEW_CONN) {
        uint32_t listener_index = (uint32_t)(payload >> 32);
        RB_ASSERT(listener_index < sh->server->listener_count);
        rb_link_tcp_adopt(sh, (int)(uint32_t)payload, &sh->server->listeners[listener_index], true);
    }
    /* RB_REMOTE_QUEUE: the inboxes are drained every turn anyway. */
}

/* ---- acceptor ---- */

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

/* ---- shard thread ---- */

/* A pool's item count: counts past what a pool indexes are capped. */
static uint32_t pool_count(uint64_t n)
{
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

static int shard_pools_init(rb_shard *sh, rb_err *err)
{
    const rb_config *cfg = &sh->server->cfg;
    /* Send memory is sized so every connection can reach its quota at
     * once (the budget), plus each link's wire queue and one receive
     * chunk per connection: a pool never runs dry under a connection that
     * keeps to its quota. Pools allocate on demand, so this bounds memory
     * without reserving it. */
    sh->send_budget.limit_bytes = rb_send_budget_bytes(cfg);
    sh->send_budget.used_bytes = 0;
    uint64_t conns = cfg->max_connections;
    uint64_t chunks = sh->send_budget.limit_bytes / RB_CHUNK_BYTES +
                      conns * (RB_LINK_WIRE_CHUNKS_MAX + 1) + RB_SHARD_CHUNK_MAX;
    uint64_t segs =
        conns * (rb_send_quota_bytes(cfg) / RB_SEND_SEG_CHARGE_BYTES +
                 RB_SEND_CLOSE_RESERVE_BYTES / RB_CHUNK_BYTES + RB_LINK_WIRE_CHUNKS_MAX) +
        RB_SHARD_SEG_MAX;
    int rc = rb_pool_init(&sh->chunk_pool, "chunks", RB_CHUNK_BYTES, pool_count(chunks), err);
    rc = rc ? rc : rb_pool_init(&sh->seg_pool, "segments", sizeof(rb_seg), pool_count(segs), err);
    rc = rc ? rc
            : rb_pool_init(&sh->iov_pool, "iovecs", sizeof(struct iovec) * RB_SEND_IOV_MAX,
                           cfg->max_connections, err);
    rc = rc ? rc
            : rb_pool_init(&sh->rxbig_pool, "large frames", cfg->max_frame_bytes,
                           RB_SHARD_RXBIG_MAX, err);
    rc = rc ? rc
            : rb_pool_init(&sh->xmsg_pool, "envelopes", sizeof(rb_xmsg) + RB_XMSG_DATA_BYTES,
                           RB_SHARD_XMSG_MAX, err);
    rc = rc ? rc
            : rb_pool_init(&sh->block_pool, "blocks", sizeof(rb_block) + cfg->max_frame_bytes,
                           RB_SHARD_BLOCK_MAX, err);
    return rc;
}

static void shard_pools_deinit(rb_shard *sh)
{
    rb_pool_deinit(&sh->block_pool);
    rb_pool_deinit(&sh->xmsg_pool);
    rb_pool_deinit(&sh->rxbig_pool);
    rb_pool_deinit(&sh->iov_pool);
    rb_pool_deinit(&sh->seg_pool);
    rb_pool_deinit(&sh->chunk_pool);
}

static void stop_done(rb_op *op, int res, uint32_t flags)
{
    (void)res;
    (void)flags;
    rb_shard *sh = RB_CONTAINER_OF(op, rb_shard, stop_op);
    sh->stop_armed = false;
    if (sh->stopping) {
        return;
    }
    sh->stopping = true;
    sh->stop_deadline_ms = rb_loop_now_ms(sh->loop) + sh->server->cfg.close_grace_ms + 500;
    RB_LOG_INFO(0, "stopping: %u connections", atomic_load(&sh->conn_count));
    for (uint32_t i = 0; i < sh->listener_count; i++) {
        rb_listener *l = &sh->listeners[i];
        if (l->armed) {
            rb_loop_cancel_fd(sh->loop, l->fd, NULL);
        }
    }
    rb_conn_shutdown_all(sh);
}

static bool shard_done(rb_shard *sh)
{
    if (!sh->stopping) {
        return false;
    }
    bool conns_gone = true;
    for (uint32_t i = 0; i < sh->conn_max; i++) {
        if (sh->conns[i].state != RB_CONN_FREE) {
            conns_gone = false;
            break;
        }
    }
    if (conns_gone && rb_owner_idle(sh) && rb_stream_idle(sh)) {
        return true;
    }
    if (rb_loop_now_ms(sh->loop) >= sh->stop_deadline_ms) {
        /* Past the grace: drop whatever has not flushed. */
        for (uint32_t i = 0; i < sh->conn_max; i++) {
            rb_conn *c = &sh->conns[i];
            if (c->state != RB_CONN_FREE && c->state != RB_CONN_CLOSED) {
                rb_conn_abort(c);
            }
        }
        return conns_gone && rb_owner_idle(sh) && rb_stream_idle(sh);
    }
    return false;
}

static void shard_turns(rb_shard *sh)
{
    /* The shard's one endless loop: it ends only when the daemon stops and
     * every connection of the shard is gone. */
    for (;;) {
        rb_err err;
        rb_owner_flush(sh);
        rb_outbox_flush_all(sh);
        rb_conn_flush_all(sh);
        rb_quic_ep_flush(sh);
        rb_outbox_flush_all(sh);
        send_wakes(sh);
        if (shard_done(sh)) {
            break;
        }
        int wait_ms = sh->stopping ? 50 : 1000;
        if (sh->self_pending) {
            wait_ms = 0;
            sh->self_pending = false;
        }
        if (rb_loop_run_once(sh->loop, wait_ms, &err) != 0) {
            RB_LOG_ERROR(0, "%s", err.msg);
            break;
        }
        drain_inboxes(sh);
    }
}

static int shard_setup(rb_shard *sh, rb_err *err)
{
    rb_server *srv = sh->server;
    rb_loop_options opt = {.sq_entries = RB_SHARD_SQ_ENTRIES,
                           .recv_buf_count = RB_RECV_BUF_COUNT,
                           .recv_buf_bytes = RB_RECV_BUF_BYTES};
    int rc = rb_loop_init(&sh->loop, &opt, err);
    if (rc != 0) {
        return rc;
    }
    rb_loop_set_remote_handler(sh->loop, on_remote, sh);
    rc = shard_pools_init(sh, err);
    rc = rc ? rc : rb_conn_table_init(sh, err);
    rc = rc ? rc : rb_link_tcp_table_init(sh, err);
    rc = rc ? rc : rb_quic_ep_init(sh, err);
    rc = rc ? rc : srv->storage_ops->shard_open(srv->storage, sh->loop, sh->id, &sh->storage, err);
    rc = rc ? rc : rb_owner_init(sh, err);
    rc = rc ? rc : rb_stream_shard_init(sh, err);
    if (rc != 0) {
        return rc;
    }
    sh->stop_op.done = stop_done;
    if (rb_loop_poll(sh->loop, srv->stop_fd, POLLIN, &sh->stop_op) != 0) {
        return rb_err_set(err, RB_ELIMIT, 0, "shard %u: no submission entry", sh->id);
    }
    sh->stop_armed = true;
    atomic_store(&sh->ring_fd, rb_loop_ring_fd(sh->loop));
    return 0;
}

static void pin_thread(rb_shard *sh)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    CPU_SET((int)(sh->id % (uint32_t)(cpus > 0 ? cpus : 1)), &set);
    int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (rc != 0) {
        RB_LOG_WARN(0, "pinning to a CPU failed: %s", strerror(rc));
    }
}

static void *shard_main(void *arg)
{
    rb_shard *sh = arg;
    rb_log_set_shard((int)sh->id);
    if (sh->server->cfg.pin_shards) {
        pin_thread(sh);
    }
    sh->start_rc = shard_setup(sh, &sh->start_err);
    atomic_store(&sh->started, true);
    if (sh->start_rc != 0) {
        return NULL;
    }
    /* Wait until every shard has its ring, so hand-overs have a target. */
    for (uint32_t i = 0; i < sh->server->shard_count; i++) {
        while (!atomic_load(&sh->server->shards[i].started)) {
            sched_yield();
        }
    }
    for (uint32_t i = 0; i < sh->listener_count; i++) {
        rb_listener *l = &sh->listeners[i];
        if (l->cfg.transport == RB_TRANSPORT_QUIC) {
            /* Every shard reads its own UDP socket (quic_ep.c). */
            continue;
        }
        l->shard = sh;
        l->accept_op.done = accept_done;
        if (rb_loop_accept_multishot(sh->loop, l->fd, &l->accept_op) == 0) {
            l->armed = true;
        }
    }
    rb_quic_ep_start(sh);
    shard_turns(sh);
    rb_tls_thread_exit();
    RB_LOG_DEBUG(0, "stopped");
    return NULL;
}

static void shard_teardown(rb_shard *sh)
{
    rb_server *srv = sh->server;
    rb_stream_shard_deinit(sh);
    rb_owner_deinit(sh);
    if (sh->storage != NULL) {
        srv->storage_ops->shard_close(sh->storage);
    }
    rb_quic_ep_deinit(sh);
    rb_link_tcp_table_deinit(sh);
    rb_conn_table_deinit(sh);
    for (uint32_t i = 0; i < srv->shard_count; i++) {
        if (sh->outbox[i] != NULL) {
            rb_xmsg_put(sh->outbox[i]);
            sh->outbox[i] = NULL;
        }
    }
    /* Envelopes still queued to this shard go back to their pools. */
    for (uint32_t i = 0; i < srv->shard_count; i++) {
        void *m;
        while ((m = rb_spsc_pop(&sh->inbox[i])) != NULL) {
            rb_xmsg_put(m);
        }
    }
}

int rb_server_start(rb_server *srv, rb_err *err)
{
    uint32_t n = srv->shard_count;
    srv->shards = calloc(n, sizeof *srv->shards);
    if (srv->shards == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "%u shards", n);
    }
    srv->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (srv->stop_fd < 0) {
        return rb_err_set(err, RB_ESYS, errno, "eventfd");
    }
    for (uint32_t i = 0; i < n; i++) {
        rb_shard *sh = &srv->shards[i];
        sh->server = srv;
        sh->id = i;
        atomic_init(&sh->ring_fd, -1);
        sh->inbox = calloc(n, sizeof *sh->inbox);
        sh->wake_pending = calloc(n, 1);
        sh->outbox = calloc(n, sizeof *sh->outbox);
        if (sh->inbox == NULL || sh->wake_pending == NULL || sh->outbox == NULL) {
            return rb_err_set(err, RB_ENOMEM, 0, "shard %u queues", i);
        }
        for (uint32_t k = 0; k < n; k++) {
            int rc = rb_spsc_init(&sh->inbox[k], RB_SHARD_QUEUE_SLOTS, err);
            if (rc != 0) {
                return rc;
            }
        }
    }
    srv->shards[0].listeners = srv->listeners;
    srv->shards[0].listener_count = srv->listener_count;
    for (uint32_t i = 0; i < n; i++) {
        rb_shard *sh = &srv->shards[i];
        int rc = pthread_create(&sh->thread, NULL, shard_main, sh);
        if (rc != 0) {
            return rb_err_set(err, RB_ESYS, rc, "shard %u: thread", i);
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        rb_shard *sh = &srv->shards[i];
        while (!atomic_load(&sh->started)) {
            usleep(1000);
        }
        if (sh->start_rc != 0) {
            *err = sh->start_err;
            return sh->start_rc;
        }
    }
    return 0;
}

void rb_server_stop(rb_server *srv)
{
    uint64_t one = 1;
    ssize_t w = write(srv->stop_fd, &one, sizeof one);
    (void)w;
}

void rb_server_join(rb_server *srv)
{
    for (uint32_t i = 0; i < srv->shard_count; i++) {
        pthread_join(srv->shards[i].thread, NULL);
    }
    for (uint32_t i = 0; i < srv->shard_count; i++) {
        rb_shard *sh = &srv->shards[i];
        shard_teardown(sh);
    }
    for (uint32_t i = 0; i < srv->shard_count; i++) {
        rb_shard *sh = &srv->shards[i];
        if (sh->loop != NULL) {
            rb_loop_deinit(sh->loop);
        }
        shard_pools_deinit(sh);
        for (uint32_t k = 0; k < srv->shard_count; k++) {
            rb_spsc_deinit(&sh->inbox[k]);
        }
        free(sh->inbox);
        free(sh->wake_pending);
        free(sh->outbox);
    }
    free(srv->shards);
    close(srv->stop_fd);
}
