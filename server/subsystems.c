/* The wiring of a shard: which subsystems every shard runs, in order
 * (init and the turn's flush in this order, deinit in reverse), and the
 * hooks of the parts that have no subsystem table of their own yet: the
 * storage handle and the connection table with its buffer pools. */
#include "common/assert.h"
#include "common/log.h"
#include "server/ephemeral.h"
#include "server/link.h"
#include "server/publish.h"
#include "server/sendq.h"
#include "server/server.h"
#include "transports/tls.h"

static int storage_init(rb_shard *sh, rb_err *err)
{
    rb_server *srv = sh->server;
    return srv->storage_ops->shard_open(srv->storage, sh->loop, sh->id, &sh->storage, err);
}

static void storage_deinit(rb_shard *sh)
{
    if (sh->storage != NULL) {
        sh->server->storage_ops->shard_close(sh->storage);
        sh->storage = NULL;
    }
}

/* Postgres: each connection's pipeline (statements sent and results not
 * yet read, on both sides of libpq) and the topic id cache. The memory
 * store's retained messages are a term of their own (docs/OPERATIONS.md). */
static uint64_t storage_memory_bytes(const rb_config *cfg)
{
    if (cfg->storage_backend != RB_STORAGE_POSTGRES) {
        return 0;
    }
    return (uint64_t)cfg->pg_pool_size * 2 * RB_PG_PIPELINE_BYTES_MAX +
           (uint64_t)RB_PG_ID_CACHE_SLOTS * 16 + RB_PG_ID_CACHE_NAME_BYTES;
}

static const rb_subsystem storage_subsystem = {
    .name = "storage",
    .init = storage_init,
    .deinit = storage_deinit,
    .memory_bytes = storage_memory_bytes,
};

/* A pool's item count: counts past what a pool indexes are capped. */
static uint32_t pool_count(uint64_t n)
{
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

/* Chunks one paused session may keep behind its held frame: what a
 * TCP-based link can still decode (RB_SESSION_HOLD_BYTES_MAX), or with a
 * quic listener what a QUIC peer may send past its stream window. */
static uint64_t hold_chunks(const rb_config *cfg)
{
    uint64_t bytes = RB_SESSION_HOLD_BYTES_MAX;
    for (uint32_t i = 0; i < cfg->listener_count; i++) {
        if (cfg->listeners[i].transport == RB_TRANSPORT_QUIC) {
            uint64_t window = cfg->max_frame_bytes < RB_QUIC_STREAM_WINDOW_DEFAULT
                                  ? RB_QUIC_STREAM_WINDOW_DEFAULT
                                  : cfg->max_frame_bytes;
            bytes += window;
            break;
        }
    }
    return rb_session_hold_chunks(bytes);
}

static int conns_init(rb_shard *sh, rb_err *err)
{
    const rb_config *cfg = &sh->server->cfg;
    /* Send memory is sized so every connection can reach its quota at
     * once (the budget), plus each link's wire queue and one receive
     * chunk per connection: a pool never runs dry under a connection that
     * keeps to its quota, nor under a paused one (its hold chain). Pools
     * allocate on demand, so this bounds memory without reserving it. */
    sh->send_budget.limit_bytes = rb_send_budget_bytes(cfg);
    sh->send_budget.used_bytes = 0;
    uint64_t conns = cfg->max_connections;
    uint64_t chunks = sh->send_budget.limit_bytes / RB_CHUNK_BYTES +
                      conns * (RB_LINK_WIRE_CHUNKS_MAX + 1 + hold_chunks(cfg)) + RB_SHARD_CHUNK_MAX;
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
    rc = rc ? rc : rb_conn_table_init(sh, err);
    if (rc == 0) {
        rb_shard_on_remote(sh, RB_REMOTE_AUTH, rb_session_auth_done);
        rb_shard_on_remote(sh, RB_REMOTE_RELOAD, rb_reload_on_shard);
    }
    rc = rc ? rc : rb_link_tcp_table_init(sh, err);
    return rc;
}

/* Slots, send memory (the pools sized above), iovecs, large receive
 * frames, and the TLS state of each connection when a listener has TLS. */
static uint64_t conns_memory_bytes(const rb_config *cfg)
{
    uint64_t conns = cfg->max_connections;
    /* The pool's slack beyond the budgets is never reached: send queues
     * are held to the send budget, wire queues to theirs, a connection
     * receives into at most one chunk and a paused one keeps at most its
     * hold chain. */
    uint64_t chunks = rb_send_budget_bytes(cfg) / RB_CHUNK_BYTES +
                      conns * (RB_LINK_WIRE_CHUNKS_MAX + 1 + hold_chunks(cfg));
    uint64_t segs =
        conns * (rb_send_quota_bytes(cfg) / RB_SEND_SEG_CHARGE_BYTES +
                 RB_SEND_CLOSE_RESERVE_BYTES / RB_CHUNK_BYTES + RB_LINK_WIRE_CHUNKS_MAX) +
        RB_SHARD_SEG_MAX;
    bool tls = false;
    for (uint32_t i = 0; i < cfg->listener_count; i++) {
        rb_transport_kind k = cfg->listeners[i].transport;
        tls = tls || k == RB_TRANSPORT_TLS || k == RB_TRANSPORT_WSS;
    }
    return conns * (sizeof(rb_conn) + sizeof(rb_connz_slot) + rb_link_tcp_bytes() +
                    sizeof(struct iovec) * RB_SEND_IOV_MAX + (tls ? RB_TLS_CONN_BYTES_MAX : 0)) +
           chunks * RB_CHUNK_BYTES + segs * sizeof(rb_seg) +
           (uint64_t)RB_SHARD_RXBIG_MAX * cfg->max_frame_bytes;
}

static void conns_stop(rb_shard *sh, bool grace_over)
{
    if (!grace_over) {
        rb_conn_shutdown_all(sh);
        return;
    }
    for (uint32_t i = 0; i < sh->conn_max; i++) {
        rb_conn *c = &sh->conns[i];
        if (c->state != RB_CONN_FREE && c->state != RB_CONN_CLOSED) {
            rb_conn_abort(c);
        }
    }
}

static bool conns_idle(rb_shard *sh)
{
    for (uint32_t i = 0; i < sh->conn_max; i++) {
        if (sh->conns[i].state != RB_CONN_FREE) {
            return false;
        }
    }
    return true;
}

/* The pools are deinit only if they were set up (a pool's name is set by
 * its init). */
static void conns_deinit(rb_shard *sh)
{
    rb_link_tcp_table_deinit(sh);
    rb_conn_table_deinit(sh);
    if (sh->chunk_pool.name != NULL) {
        rb_pool_deinit(&sh->chunk_pool);
    }
    if (sh->seg_pool.name != NULL) {
        rb_pool_deinit(&sh->seg_pool);
    }
    if (sh->iov_pool.name != NULL) {
        rb_pool_deinit(&sh->iov_pool);
    }
    if (sh->rxbig_pool.name != NULL) {
        rb_pool_deinit(&sh->rxbig_pool);
    }
}

/* The TLS libraries' per-thread state (wolfSSL's fixed-point ECC cache,
 * OpenSSL's thread-local error queue) belongs to the shard's thread. */
static void conns_thread_exit(rb_shard *sh)
{
    (void)sh;
    rb_tls_thread_exit();
}

static const rb_subsystem conns_subsystem = {
    .name = "connections",
    .init = conns_init,
    .flush = rb_conn_flush_all,
    .stop = conns_stop,
    .idle = conns_idle,
    .thread_exit = conns_thread_exit,
    .deinit = conns_deinit,
    .memory_bytes = conns_memory_bytes,
};

const rb_subsystem *const rb_shard_subsystems[] = {
    &conns_subsystem,
    &storage_subsystem,
    &rb_ephemeral_subsystem,
    &rb_publish_subsystem,
    &rb_topicz_subsystem,
    &rb_owner_subsystem,
    &rb_stream_subsystem,
    &rb_rpc_subsystem,
    &rb_cluster_subsystem,
    &rb_acceptor_subsystem,
    /* After the connections' flush, so the sessions' bytes go out this turn. */
    &rb_quic_subsystem,
};

const uint32_t rb_shard_subsystem_count =
    (uint32_t)(sizeof rb_shard_subsystems / sizeof rb_shard_subsystems[0]);
