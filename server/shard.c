/* Shards: one thread per core, each with its own loop, mailbox and the
 * per-shard state of every subsystem. This file owns the shard thread and
 * its loop turn, the MSG_RING wake-ups between shards and the graceful
 * stop; it runs the hooks of the subsystems it is given (rb_server.
 * subsystems, the list of server/subsystems.c) and calls none of them by
 * name. */
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
#include "common/stall.h"
#include "server/link.h"
#include "server/sendq.h"
#include "server/server.h"

uint32_t rb_topic_owner_shard(const rb_server *srv, const uint8_t *topic, size_t len)
{
    return (uint32_t)(rb_hash_bytes(topic, len) % srv->shard_count);
}

uint32_t rb_peer_link_shard(const rb_server *srv, uint32_t peer_index)
{
    return peer_index % srv->shard_count;
}

static bool wake_shard(void *ctx, uint32_t to)
{
    rb_shard *sh = ctx;
    int fd = atomic_load(&sh->server->shards[to].ring_fd);
    return rb_loop_wake_remote(sh->loop, fd, RB_REMOTE(RB_REMOTE_QUEUE, sh->id)) == 0;
}

void rb_shard_poll_soon(rb_shard *sh)
{
    sh->poll_soon = true;
}

void rb_shard_on_remote(rb_shard *sh, uint32_t kind, rb_remote_fn *fn)
{
    RB_ASSERT(kind > 0 && kind < RB_REMOTE_KINDS_MAX);
    RB_ASSERT(sh->remote[kind] == NULL);
    sh->remote[kind] = fn;
}

static void on_remote(void *ctx, uint64_t data)
{
    rb_shard *sh = ctx;
    uint64_t kind = data >> RB_REMOTE_KIND_SHIFT;
    uint64_t payload = data & ((1ull << RB_REMOTE_KIND_SHIFT) - 1);
    /* RB_REMOTE_QUEUE only wakes the loop: the mailbox is drained every
     * turn anyway. */
    if (kind < RB_REMOTE_KINDS_MAX && sh->remote[kind] != NULL) {
        sh->remote[kind](sh, payload);
    }
}

/* ---- shard thread ---- */

uint64_t rb_shard_memory_bytes(const rb_server *srv)
{
    const rb_config *cfg = &srv->cfg;
    /* The loop's receive buffers and ring, the mailbox's queues (one per
     * producing shard), envelopes and blocks. */
    uint64_t bytes = (uint64_t)RB_RECV_BUF_COUNT * RB_RECV_BUF_BYTES + RB_SHARD_SQ_ENTRIES * 192ull;
    bytes += (uint64_t)cfg->shards * cfg->shard_queue_slots * sizeof(void *);
    bytes += (uint64_t)cfg->shard_envelopes * (sizeof(rb_xmsg) + RB_XMSG_DATA_BYTES);
    bytes += (uint64_t)cfg->shard_block_envelopes * sizeof(rb_xmsg);
    bytes += cfg->shard_block_bytes + cfg->max_frame_bytes;
    for (uint32_t i = 0; i < srv->subsystem_count; i++) {
        if (srv->subsystems[i]->memory_bytes != NULL) {
            uint64_t b = srv->subsystems[i]->memory_bytes(cfg);
            RB_LOG_DEBUG(0, "memory bound of %s: %llu KiB per shard", srv->subsystems[i]->name,
                         (unsigned long long)(b >> 10));
            bytes += b;
        }
    }
    return bytes;
}

/* ---- subsystem hooks ---- */

static void subsystems_flush(rb_shard *sh)
{
    for (uint32_t i = 0; i < sh->server->subsystem_count; i++) {
        if (sh->server->subsystems[i]->flush != NULL) {
            sh->server->subsystems[i]->flush(sh);
        }
    }
}

static void subsystems_stop(rb_shard *sh, bool grace_over)
{
    for (uint32_t i = 0; i < sh->server->subsystem_count; i++) {
        if (sh->server->subsystems[i]->stop != NULL) {
            sh->server->subsystems[i]->stop(sh, grace_over);
        }
    }
}

static bool subsystems_idle(rb_shard *sh)
{
    for (uint32_t i = 0; i < sh->server->subsystem_count; i++) {
        if (sh->server->subsystems[i]->idle != NULL && !sh->server->subsystems[i]->idle(sh)) {
            return false;
        }
    }
    return true;
}

/* ---- shard thread ---- */

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
    sh->stop_deadline_ms =
        rb_loop_now_ms(sh->loop) + sh->cfg->shutdown_grace_ms + sh->cfg->close_grace_ms + 500;
    RB_LOG_INFO(0, "stopping: %u connections", atomic_load(&sh->conn_count));
    subsystems_stop(sh, false);
}

static bool shard_done(rb_shard *sh)
{
    if (!sh->stopping) {
        return false;
    }
    if (subsystems_idle(sh)) {
        return true;
    }
    if (rb_loop_now_ms(sh->loop) >= sh->stop_deadline_ms) {
        /* Past the grace: drop whatever has not flushed. */
        subsystems_stop(sh, true);
        return subsystems_idle(sh);
    }
    return false;
}

static void shard_turns(rb_shard *sh)
{
    /* The shard's one endless loop: it ends only when the daemon stops and
     * every subsystem of the shard is idle. */
    for (;;) {
        rb_err err;
        RB_STAT_ADD(sh, loop_turns, 1);
        __atomic_store_n(&sh->stats.last_turn_ms, rb_loop_now_ms(sh->loop), __ATOMIC_RELAXED);
        rb_stall_point(sh->id, rb_loop_now_ms(sh->loop));
        subsystems_flush(sh);
        rb_mailbox_flush(&sh->mail);
        if (shard_done(sh)) {
            break;
        }
        int wait_ms = rb_mailbox_wait_ms(&sh->mail, sh->stopping ? 50 : 1000);
        if (sh->poll_soon && wait_ms > 1) {
            wait_ms = 1;
        }
        sh->poll_soon = false;
        if (rb_loop_run_once(sh->loop, wait_ms, &err) != 0) {
            RB_LOG_ERROR(0, "%s", err.msg);
            break;
        }
        RB_STAT_SET(sh, busy_ns, rb_loop_busy_ns(sh->loop));
        RB_STAT_SET(sh, sendq_bytes, sh->send_budget.used_bytes);
        rb_mailbox_drain(&sh->mail);
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
    rb_mailbox_options mo = {.id = sh->id,
                             .count = srv->shard_count,
                             .all = srv->mailboxes,
                             .queue_slots = srv->cfg.shard_queue_slots,
                             .xmsg_max = srv->cfg.shard_envelopes,
                             .bare_max = srv->cfg.shard_block_envelopes,
                             .home = sh->id + 1,
                             .block_budget = srv->cfg.shard_block_bytes,
                             .block_bytes = srv->cfg.max_frame_bytes,
                             .wake = wake_shard,
                             .wake_ctx = sh};
    rc = rb_mailbox_init(&sh->mail, &mo, err);
    if (rc != 0) {
        return rc;
    }
    sh->mail_ready = true;
    for (uint32_t i = 0; i < sh->server->subsystem_count; i++) {
        const rb_subsystem *ss = sh->server->subsystems[i];
        rc = ss->init != NULL ? ss->init(sh, err) : 0;
        if (rc != 0) {
            return rc;
        }
        sh->subsystems_inited = i + 1;
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
    rb_freelist_bind_thread(sh->id + 1);
    if (sh->server->cfg.pin_shards) {
        pin_thread(sh);
    }
    sh->start_rc = shard_setup(sh, &sh->start_err);
    atomic_store(&sh->started, true);
    if (sh->start_rc != 0) {
        atomic_store(&sh->finished, true);
        return NULL;
    }
    /* Wait until every shard has its ring, so hand-overs have a target. */
    for (uint32_t i = 0; i < sh->server->shard_count; i++) {
        while (!atomic_load(&sh->server->shards[i].started)) {
            sched_yield();
        }
    }
    for (uint32_t i = 0; i < sh->server->subsystem_count; i++) {
        if (sh->server->subsystems[i]->start != NULL) {
            sh->server->subsystems[i]->start(sh);
        }
    }
    shard_turns(sh);
    rb_freelist_flush_returns();
    for (uint32_t i = 0; i < sh->server->subsystem_count; i++) {
        if (sh->server->subsystems[i]->thread_exit != NULL) {
            sh->server->subsystems[i]->thread_exit(sh);
        }
    }
    RB_LOG_DEBUG(0, "stopped");
    atomic_store(&sh->finished, true);
    return NULL;
}

static void shard_teardown(rb_shard *sh)
{
    for (uint32_t i = sh->subsystems_inited; i-- > 0;) {
        if (sh->server->subsystems[i]->deinit != NULL) {
            sh->server->subsystems[i]->deinit(sh);
        }
    }
    sh->subsystems_inited = 0;
    if (sh->mail_ready) {
        /* Envelopes still queued or being filled go back to their pools. */
        rb_mailbox_discard(&sh->mail);
    }
}

int rb_server_start(rb_server *srv, rb_err *err)
{
    RB_ASSERT(srv->subsystems != NULL && srv->subsystem_count > 0);
    srv->admin.ready = &srv->ready;
    srv->admin.server = srv;
    srv->admin.started_ms = rb_clock_ms();
    uint32_t n = srv->shard_count;
    srv->shards = calloc(n, sizeof *srv->shards);
    srv->mailboxes = calloc(n, sizeof *srv->mailboxes);
    if (srv->shards == NULL || srv->mailboxes == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "%u shards", n);
    }
    srv->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (srv->stop_fd < 0) {
        return rb_err_set(err, RB_ESYS, errno, "eventfd");
    }
    for (uint32_t i = 0; i < n; i++) {
        rb_shard *sh = &srv->shards[i];
        sh->server = srv;
        sh->cfg = &srv->cfg;
        sh->auth = srv->auth;
        sh->id = i;
        atomic_init(&sh->ring_fd, -1);
        srv->mailboxes[i] = &sh->mail;
    }
    atomic_store(&srv->listeners_published, srv->listener_count);
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
    uint64_t per_shard = rb_shard_memory_bytes(srv);
    RB_LOG_INFO(0,
                "memory bound: %llu MiB per shard, %llu MiB for %u shards and the process "
                "(docs/OPERATIONS.md)",
                (unsigned long long)(per_shard >> 20),
                (unsigned long long)((per_shard * n + RB_PROCESS_BASE_BYTES) >> 20), n);
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
    /* The shards' threads are gone: this one inherits their pools. */
    rb_pool_inherit(true);
    for (uint32_t i = 0; i < srv->shard_count; i++) {
        shard_teardown(&srv->shards[i]);
    }
    for (uint32_t i = 0; i < srv->shard_count; i++) {
        rb_shard *sh = &srv->shards[i];
        if (sh->mail_ready) {
            rb_mailbox_deinit(&sh->mail);
        }
        if (sh->loop != NULL) {
            rb_loop_deinit(sh->loop);
        }
    }
    rb_pool_inherit(false);
    free(srv->mailboxes);
    free(srv->shards);
    close(srv->stop_fd);
}
