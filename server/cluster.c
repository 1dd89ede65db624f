/* The replica plane (DESIGN §2 "Replica plane"): the links between the
 * nodes of a [cluster]. Each peer's link lives on one shard (peer index %
 * shards, so replica traffic is spread across cores); the node with the
 * lower id dials, the other accepts on the replica listener (on shard 0),
 * authenticates the dialer there and hands the socket to the link's shard.
 * This file owns the sockets, the handshake, the send queues and the
 * announcement of this node's interest; the owners (server/owner.c) decide
 * what to forward and feed what arrives to their sequencers.
 *
 * A link that breaks loses nothing: Postgres holds every commit, and each
 * reset makes the owners re-read the heads of their subscribed topics, so
 * the sequencers fetch what the link did not carry. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/assert.h"
#include "common/hash.h"
#include "common/log.h"
#include "server/server.h"
#include "transports/replica.h"

/* Records of RB_XK_CLUSTER: op, peer, on, topic len, fd, topic. */
#define CREC_FIXED 8
enum {
    CREC_LOCAL = 1,
    CREC_ADOPT = 2
};
/* Records of RB_XK_PEER_TOPIC (owner.c decodes them the same way). */
enum {
    PREC_INTEREST = 1,
    PREC_RESET = 2
};

/* Send-queue entries gathered into one sendmsg. */
#define TX_IOV_MAX 64
/* Buckets of the local interest set (chains grow past it, still bounded
 * by RB_CLUSTER_INTEREST_TOPICS_MAX entries). */
#define LOCAL_BUCKETS 65536
/* The largest handshake frame (HELLO with a 255-byte cluster id). */
#define HANDSHAKE_BYTES_MAX 512

typedef enum link_state {
    LINK_IDLE = 0,   /* waiting for the redial (dialer) or an inbound link */
    LINK_CONNECTING, /* connect() in progress */
    LINK_HANDSHAKE,  /* dialer: HELLO sent, waiting for CHALLENGE, then WELCOME */
    LINK_UP,
    LINK_CLOSING, /* waiting for the last completions before the fd closes */
} link_state;

static const char *const state_names[] = {"idle", "connecting", "handshake", "up", "closing"};

typedef struct txe {
    rb_block *blk; /* referenced; NULL when all bytes are in head */
    const uint8_t *data;
    uint32_t len;
    uint16_t head_len;
    uint8_t head[RB_REPLICA_BATCH_HEAD_BYTES + RB_TOPIC_BYTES_MAX];
} txe;

/* Counters of one peer, written by its link's shard, read by the admin
 * route on any thread (relaxed). */
typedef struct peer_stats {
    _Atomic uint32_t state;
    _Atomic uint64_t links_up;
    _Atomic uint64_t link_drops;
    _Atomic uint64_t batches_out;
    _Atomic uint64_t batches_in;
    _Atomic uint64_t bytes_out;
    _Atomic uint64_t bytes_in;
    _Atomic uint64_t interest_in; /* topics the peer declared, now */
    _Atomic uint64_t slow_drops;  /* links dropped for a full send queue */
    _Atomic uint64_t rx_stalls;   /* times receiving paused for lack of a block or envelope */
    _Atomic uint64_t tx_bytes;    /* gauge: bytes queued now */
    _Atomic uint64_t last_rx_ms;
} peer_stats;

/* Counters of the whole node. */
static struct {
    peer_stats peers[RB_CLUSTER_PEERS_MAX];
    _Atomic uint64_t refused;      /* inbound handshakes refused */
    _Atomic uint64_t local_topics; /* topics with local subscribers */
} stats;

#define STAT_ADD(field, n) atomic_fetch_add_explicit(&(field), (n), memory_order_relaxed)
#define STAT_SET(field, n) atomic_store_explicit(&(field), (n), memory_order_relaxed)
#define STAT_GET(field)    atomic_load_explicit(&(field), memory_order_relaxed)

typedef struct rb_cluster rb_cluster;

typedef struct peer {
    rb_cluster *cl;
    uint32_t index;
    const rb_peer_config *cfg;
    bool dialer; /* this node has the lower id */
    int fd;
    link_state state;
    uint32_t ops; /* completions outstanding on fd */
    rb_op recv_op;
    rb_op send_op;
    rb_op poll_op;
    bool recv_busy;
    bool send_busy;
    rb_timer timer;
    uint64_t backoff_ms;
    uint64_t deadline_ms; /* handshake deadline */
    uint64_t last_rx_ms;
    uint64_t last_tx_ms;
    uint8_t *rx;
    uint32_t rx_len;
    uint32_t rx_cap;
    txe *tx; /* ring of RB_CLUSTER_TXQ_ENTRIES_MAX */
    uint32_t tx_head;
    uint32_t tx_count;
    uint32_t tx_off;   /* bytes of the head entry already sent */
    uint32_t tx_sent;  /* bytes of the sendmsg in flight */
    uint64_t tx_bytes; /* bytes queued, not yet sent */
    struct iovec iov[TX_IOV_MAX];
    struct msghdr msg;
    uint8_t nonce_d[RB_REPLICA_NONCE_BYTES];
    uint8_t nonce_a[RB_REPLICA_NONCE_BYTES];
    uint32_t resync_bucket; /* the local interest scan after link up; LOCAL_BUCKETS = done */
    uint32_t interest_count;
    /* Receiving paused: the frame at rx waits for a block or an envelope
     * (backpressure: the peer's bytes wait in the socket), since stall_ms. */
    bool rx_stalled;
    uint64_t stall_ms;
    /* Shards still to be told that the link reset (before any frame of a
     * new link is handed to them, so its interest is not wiped). */
    uint64_t reset_left[RB_SHARDS_MAX / 64];
} peer;

/* An inbound connection on shard 0 before it is authenticated: nothing
 * about it is recorded beyond this slot until its MAC checks out. */
typedef struct pending {
    rb_cluster *cl;
    bool used;
    bool closing;
    int fd;
    uint32_t ops;
    rb_op recv_op;
    rb_op send_op;
    uint64_t deadline_ms;
    int peer_index; /* from HELLO, -1 before */
    uint8_t rx[HANDSHAKE_BYTES_MAX];
    uint32_t rx_len;
    uint8_t tx[HANDSHAKE_BYTES_MAX];
    uint8_t nonce_d[RB_REPLICA_NONCE_BYTES];
    uint8_t nonce_a[RB_REPLICA_NONCE_BYTES];
    bool authed; /* the MAC checked out; handed over once the send is back */
    char addr[64];
} pending;

typedef struct local_topic {
    struct local_topic *next;
    uint8_t len;
    char name[RB_TOPIC_BYTES_MAX + 1];
} local_topic;

struct rb_cluster {
    rb_shard *shard;
    const rb_config *cfg;
    uint32_t frame_max;
    peer peers[RB_CLUSTER_PEERS_MAX]; /* only those homed here are used */
    bool holds_links;
    local_topic **local; /* [LOCAL_BUCKETS], when holds_links */
    uint32_t local_count;
    rb_pool local_pool;
    rb_timer tick;
    /* shard 0: the replica listener and inbound handshakes */
    int listen_fd;
    rb_op accept_op;
    bool accept_armed;
    pending pend[RB_CLUSTER_PENDING_MAX];
    uint64_t refusal_second;
    uint32_t refusals_logged;
    bool stopping;
};

static void link_close(peer *p, const char *why);
static void link_start_send(peer *p);
static void pending_close(pending *q);

static bool enabled(const rb_config *cfg)
{
    return cfg->cluster_node_id != 0;
}

static uint64_t now_ms(const rb_cluster *cl)
{
    return rb_loop_now_ms(cl->shard->loop);
}

static rb_bytes cluster_id(const rb_cluster *cl)
{
    return (rb_bytes){(const uint8_t *)cl->cfg->cluster_id, strlen(cl->cfg->cluster_id)};
}

/* A refusal is logged at most RB_CLUSTER_REFUSALS_LOGGED_PER_S times a
 * second: a peer with a wrong secret retrying cannot flood the log. */
static bool may_log_refusal(rb_cluster *cl)
{
    STAT_ADD(stats.refused, 1);
    uint64_t sec = now_ms(cl) / 1000;
    if (sec != cl->refusal_second) {
        cl->refusal_second = sec;
        cl->refusals_logged = 0;
    }
    return cl->refusals_logged++ < RB_CLUSTER_REFUSALS_LOGGED_PER_S;
}

/* ---- records between shards ---- */

/* One CREC-layout record of kind to shard `to`. */
static bool send_rec(rb_shard *sh, uint32_t to, uint16_t kind, uint8_t op, uint8_t peer_index,
                     bool on, int fd, const uint8_t *topic, uint8_t topic_len)
{
    uint8_t *p = rb_mailbox_reserve(&sh->mail, to, kind, CREC_FIXED + topic_len);
    if (p == NULL) {
        return false;
    }
    uint8_t onb = on ? 1 : 0;
    int32_t fd32 = fd;
    p = rb_rec_put(p, &op, 1);
    p = rb_rec_put(p, &peer_index, 1);
    p = rb_rec_put(p, &onb, 1);
    p = rb_rec_put(p, &topic_len, 1);
    p = rb_rec_put(p, &fd32, 4);
    rb_rec_put(p, topic, topic_len);
    rb_mailbox_commit(&sh->mail, to, CREC_FIXED + topic_len);
    return true;
}

static bool send_crec(rb_shard *sh, uint32_t to, uint8_t op, uint8_t peer_index, bool on, int fd,
                      const char *topic, uint8_t topic_len)
{
    return send_rec(sh, to, RB_XK_CLUSTER, op, peer_index, on, fd, (const uint8_t *)topic,
                    topic_len);
}

/* Peer records to the owners: same layout as CREC, fd unused. */
static bool send_prec(rb_shard *sh, uint32_t to, uint8_t op, uint8_t peer_index, bool on,
                      const uint8_t *topic, uint8_t topic_len)
{
    return send_rec(sh, to, RB_XK_PEER_TOPIC, op, peer_index, on, -1, topic, topic_len);
}

/* The owners' hook (rb_owner_peers.local_interest). */
static bool local_interest(rb_shard *sh, const char *topic, uint8_t topic_len, bool on)
{
    const rb_server *srv = sh->server;
    /* Every shard that holds a link keeps the whole set (for resyncs). */
    uint32_t holders = srv->cfg.cluster_peer_count < srv->shard_count ? srv->cfg.cluster_peer_count
                                                                      : srv->shard_count;
    for (uint32_t s = 0; s < holders; s++) {
        if (!send_crec(sh, s, CREC_LOCAL, 0, on, -1, topic, topic_len)) {
            return false;
        }
    }
    return true;
}

/* ---- the local interest set ---- */

static local_topic **local_slot(rb_cluster *cl, const char *name, uint8_t len)
{
    uint64_t h = rb_hash_bytes((const uint8_t *)name, len) % LOCAL_BUCKETS;
    local_topic **pp = &cl->local[h];
    while (*pp != NULL && !((*pp)->len == len && memcmp((*pp)->name, name, len) == 0)) {
        pp = &(*pp)->next;
    }
    return pp;
}

static void send_interest(peer *p, bool on, const char *name, uint8_t len);

static void on_local(rb_cluster *cl, bool on, const char *name, uint8_t len)
{
    local_topic **pp = local_slot(cl, name, len);
    if (on && *pp == NULL) {
        local_topic *t =
            cl->local_count < RB_CLUSTER_INTEREST_TOPICS_MAX ? rb_pool_get(&cl->local_pool) : NULL;
        if (t == NULL) {
            RB_LOG_WARN(cl->shard->id,
                        "cluster: local interest table full (%u topics); peers are not told "
                        "of this one and its subscribers see peers' messages by repair only",
                        RB_CLUSTER_INTEREST_TOPICS_MAX);
            return;
        }
        t->len = len;
        memcpy(t->name, name, len);
        t->next = NULL;
        *pp = t;
        cl->local_count++;
    } else if (!on && *pp != NULL) {
        local_topic *t = *pp;
        *pp = t->next;
        rb_pool_put(&cl->local_pool, t);
        cl->local_count--;
    } else {
        return;
    }
    if (cl->shard->id == 0) {
        STAT_SET(stats.local_topics, cl->local_count);
    }
    for (uint32_t i = 0; i < cl->cfg->cluster_peer_count; i++) {
        peer *p = &cl->peers[i];
        if (p->cl != NULL && p->state == LINK_UP) {
            send_interest(p, on, name, len);
        }
    }
}

/* ---- send queue ---- */

static txe *tx_push(peer *p, uint64_t bytes)
{
    if (p->tx_count == RB_CLUSTER_TXQ_ENTRIES_MAX ||
        p->tx_bytes + bytes > RB_CLUSTER_TX_BYTES_MAX) {
        STAT_ADD(stats.peers[p->index].slow_drops, 1);
        link_close(p, "send queue full (a slow peer): dropping the link; it repairs from "
                      "Postgres");
        return NULL;
    }
    txe *e = &p->tx[(p->tx_head + p->tx_count) % RB_CLUSTER_TXQ_ENTRIES_MAX];
    p->tx_count++;
    p->tx_bytes += bytes;
    e->blk = NULL;
    e->data = NULL;
    e->len = 0;
    e->head_len = 0;
    return e;
}

static void tx_pop(peer *p)
{
    txe *e = &p->tx[p->tx_head];
    if (e->blk != NULL) {
        rb_block_unref(e->blk);
        e->blk = NULL;
    }
    p->tx_bytes -= e->head_len + e->len;
    p->tx_head = (p->tx_head + 1) % RB_CLUSTER_TXQ_ENTRIES_MAX;
    p->tx_count--;
}

static void tx_clear(peer *p)
{
    while (p->tx_count > 0) {
        tx_pop(p);
    }
    p->tx_off = 0;
    p->tx_bytes = 0;
    STAT_SET(stats.peers[p->index].tx_bytes, 0);
}

static void send_small(peer *p, const uint8_t *frame, size_t n)
{
    txe *e = tx_push(p, n);
    if (e == NULL) {
        return;
    }
    RB_ASSERT(n <= sizeof e->head);
    memcpy(e->head, frame, n);
    e->head_len = (uint16_t)n;
    link_start_send(p);
}

static void send_interest(peer *p, bool on, const char *name, uint8_t len)
{
    uint8_t f[RB_REPLICA_HEADER_BYTES + 2 + RB_TOPIC_BYTES_MAX];
    size_t n = rb_replica_encode_interest(f, sizeof f, on, (rb_bytes){(const uint8_t *)name, len});
    RB_ASSERT(n > 0);
    send_small(p, f, n);
}

/* A committed block for the peer: its items go on the wire from the block
 * itself (referenced), behind a small head. */
static void send_block(peer *p, rb_block *b)
{
    txe *e = tx_push(p, RB_REPLICA_BATCH_HEAD_BYTES + b->topic_len + b->bytes);
    if (e == NULL) {
        rb_block_unref(b);
        return;
    }
    size_t n = rb_replica_encode_batch_head(e->head, sizeof e->head,
                                            (rb_bytes){(const uint8_t *)b->topic, b->topic_len},
                                            b->first_seq, b->last_seq, b->count, b->bytes);
    RB_ASSERT(n > 0);
    e->head_len = (uint16_t)n;
    e->blk = b;
    e->data = b->data;
    e->len = b->bytes;
    STAT_ADD(stats.peers[p->index].batches_out, 1);
    link_start_send(p);
}

static void send_done(rb_op *op, int res, uint32_t flags)
{
    (void)flags;
    peer *p = RB_CONTAINER_OF(op, peer, send_op);
    p->send_busy = false;
    p->ops--;
    if (p->state == LINK_CLOSING || res <= 0) {
        if (p->state != LINK_CLOSING) {
            link_close(p, res == 0 ? "send: connection closed" : strerror(-res));
        } else {
            link_close(p, NULL);
        }
        return;
    }
    uint32_t done = (uint32_t)res;
    STAT_ADD(stats.peers[p->index].bytes_out, done);
    while (done > 0) {
        txe *e = &p->tx[p->tx_head];
        uint32_t left = e->head_len + e->len - p->tx_off;
        if (done < left) {
            p->tx_off += done;
            break;
        }
        done -= left;
        p->tx_off = 0;
        tx_pop(p);
    }
    p->last_tx_ms = now_ms(p->cl);
    link_start_send(p);
}

static void link_start_send(peer *p)
{
    if (p->send_busy || p->tx_count == 0 || p->fd < 0 || p->state == LINK_CLOSING ||
        p->state == LINK_CONNECTING) {
        return;
    }
    uint32_t n = 0;
    uint32_t off = p->tx_off;
    for (uint32_t i = 0; i < p->tx_count && n + 2 <= TX_IOV_MAX; i++) {
        txe *e = &p->tx[(p->tx_head + i) % RB_CLUSTER_TXQ_ENTRIES_MAX];
        if (off < e->head_len) {
            p->iov[n++] = (struct iovec){e->head + off, e->head_len - off};
            off = 0;
        } else {
            off -= e->head_len;
        }
        if (e->len > off) {
            p->iov[n++] = (struct iovec){(void *)(e->data + off), e->len - off};
        }
        off = 0;
    }
    memset(&p->msg, 0, sizeof p->msg);
    p->msg.msg_iov = p->iov;
    p->msg.msg_iovlen = n;
    if (rb_loop_sendmsg(p->cl->shard->loop, p->fd, &p->msg, &p->send_op) != 0) {
        rb_shard_poll_soon(p->cl->shard);
        return;
    }
    p->send_busy = true;
    p->ops++;
    STAT_SET(stats.peers[p->index].tx_bytes, p->tx_bytes);
}

/* ---- link life ---- */

static void arm_redial(peer *p)
{
    /* Exponential backoff with jitter in [delay/2, delay], so nodes that
     * lost each other at once do not redial in step. */
    uint64_t d = p->backoff_ms;
    uint64_t jitter =
        (rb_hash_bytes((const uint8_t *)&p->last_rx_ms, sizeof p->last_rx_ms) ^ now_ms(p->cl)) %
        (d / 2 + 1);
    rb_timer_arm(p->cl->shard->loop, &p->timer, d / 2 + jitter);
    p->backoff_ms = d * 2 > RB_CLUSTER_BACKOFF_MS_MAX ? RB_CLUSTER_BACKOFF_MS_MAX : d * 2;
}

/* Tells the shards in reset_left that the link reset, as far as envelopes
 * allow (the flush hook retries). Returns true when all were told. */
static bool send_resets(peer *p)
{
    rb_shard *sh = p->cl->shard;
    bool all = true;
    for (uint32_t s = 0; s < sh->server->shard_count; s++) {
        uint64_t bit = 1ull << (s % 64);
        if ((p->reset_left[s / 64] & bit) == 0) {
            continue;
        }
        if (send_prec(sh, s, PREC_RESET, (uint8_t)p->index, false, NULL, 0)) {
            p->reset_left[s / 64] &= ~bit;
        } else {
            all = false;
        }
    }
    if (!all) {
        rb_shard_poll_soon(sh);
    }
    return all;
}

static bool resets_left(const peer *p)
{
    for (size_t i = 0; i < RB_SHARDS_MAX / 64; i++) {
        if (p->reset_left[i] != 0) {
            return true;
        }
    }
    return false;
}

/* Tells every shard's owners the link reset: the peer's interest is gone
 * and whatever it did not deliver is read from Postgres. */
static void announce_reset(peer *p)
{
    if (p->cl->stopping) {
        return; /* the owners stop too */
    }
    uint32_t n = p->cl->shard->server->shard_count;
    for (uint32_t s = 0; s < n; s++) {
        p->reset_left[s / 64] |= 1ull << (s % 64);
    }
    send_resets(p);
}

static void link_finish_close(peer *p)
{
    rb_cluster *cl = p->cl;
    rb_loop_close(cl->shard->loop, p->fd, NULL);
    p->fd = -1;
    tx_clear(p);
    p->rx_len = 0;
    p->rx_stalled = false;
    p->state = LINK_IDLE;
    STAT_SET(stats.peers[p->index].state, LINK_IDLE);
    STAT_SET(stats.peers[p->index].interest_in, 0);
    p->interest_count = 0;
    if (p->dialer && !cl->stopping) {
        arm_redial(p);
    } else {
        rb_timer_disarm(cl->shard->loop, &p->timer);
    }
}

/* Closes the link (why NULL: already said); the fd closes once every
 * completion is back. */
static void link_close(peer *p, const char *why)
{
    if (p->state == LINK_IDLE) {
        return;
    }
    if (p->state != LINK_CLOSING) {
        bool was_up = p->state == LINK_UP;
        if (why != NULL) {
            RB_LOG_WARN(p->cl->shard->id, "cluster: link to node %u (%s:%u) %s: %s", p->cfg->id,
                        p->cfg->address, p->cfg->port, was_up ? "down" : "failed", why);
        }
        p->state = LINK_CLOSING;
        STAT_SET(stats.peers[p->index].state, LINK_CLOSING);
        if (was_up) {
            STAT_ADD(stats.peers[p->index].link_drops, 1);
            announce_reset(p);
        }
        if (p->ops > 0) {
            rb_loop_cancel_fd(p->cl->shard->loop, p->fd, NULL);
            shutdown(p->fd, SHUT_RDWR);
        }
    }
    if (p->ops == 0) {
        link_finish_close(p);
    }
}

static void link_recv(peer *p);

static void link_up(peer *p)
{
    rb_cluster *cl = p->cl;
    p->state = LINK_UP;
    p->backoff_ms = RB_CLUSTER_BACKOFF_MS_MIN;
    p->last_rx_ms = now_ms(cl);
    p->resync_bucket = 0;
    STAT_SET(stats.peers[p->index].state, LINK_UP);
    STAT_ADD(stats.peers[p->index].links_up, 1);
    RB_LOG_INFO(cl->shard->id, "cluster: link to node %u (%s:%u) up", p->cfg->id, p->cfg->address,
                p->cfg->port);
    /* What the link missed while down is read from Postgres. */
    announce_reset(p);
    rb_timer_arm(cl->shard->loop, &p->timer, RB_CLUSTER_PING_MS);
}

/* The full resync of this node's interest after a link came up, a few
 * buckets per turn while the send queue has room. */
static void resync_some(peer *p)
{
    rb_cluster *cl = p->cl;
    while (p->state == LINK_UP && p->resync_bucket < LOCAL_BUCKETS &&
           p->tx_bytes < RB_CLUSTER_TX_BYTES_MAX / 4) {
        for (local_topic *t = cl->local[p->resync_bucket]; t != NULL; t = t->next) {
            send_interest(p, true, t->name, t->len);
        }
        p->resync_bucket++;
    }
    if (p->state == LINK_UP && p->resync_bucket < LOCAL_BUCKETS) {
        rb_shard_poll_soon(cl->shard);
    }
}

/* ---- frames from an up link ---- */

/* A batch goes to its topic's owner in a block of this shard. Returns
 * false when no block or envelope could be had: the frame waits. */
static bool on_batch(peer *p, const rb_replica_batch *b)
{
    rb_shard *sh = p->cl->shard;
    rb_block *blk = rb_mailbox_block(&sh->mail, b->items.len);
    rb_xmsg *m = blk != NULL ? rb_mailbox_xmsg_bare(&sh->mail) : NULL;
    if (m == NULL) {
        if (blk != NULL) {
            rb_block_unref(blk);
        }
        return false;
    }
    STAT_ADD(stats.peers[p->index].batches_in, 1);
    blk->first_seq = b->first_seq;
    blk->last_seq = b->last_seq;
    blk->count = b->count;
    blk->topic_len = (uint8_t)b->topic.len;
    memcpy(blk->topic, b->topic.ptr, b->topic.len);
    blk->topic[b->topic.len] = '\0';
    memcpy(blk->data, b->items.ptr, b->items.len);
    blk->bytes = (uint32_t)b->items.len;
    m->kind = RB_XK_REPLICA_IN;
    m->ptr = blk;
    rb_mailbox_send(&sh->mail, rb_topic_owner_shard(sh->server, b->topic.ptr, b->topic.len), m);
    return true;
}

/* What a frame handler returns: go on, stop (the link closed), wait. */
enum {
    FRAME_OK = 0,
    FRAME_CLOSED = 1,
    FRAME_STALL = 2
};

/* A frame of an up link; -1: a protocol error. */
static int on_up_frame(peer *p, const rb_replica_frame *f)
{
    rb_shard *sh = p->cl->shard;
    switch (f->kind) {
    case RB_REPLICA_PING:
        return 0;
    case RB_REPLICA_INTEREST: {
        rb_bytes t = f->u.interest.topic;
        if (f->u.interest.on && p->interest_count >= RB_CLUSTER_INTEREST_TOPICS_MAX) {
            return -1;
        }
        uint32_t to = rb_topic_owner_shard(sh->server, t.ptr, t.len);
        if (!send_prec(sh, to, PREC_INTEREST, (uint8_t)p->index, f->u.interest.on, t.ptr,
                       (uint8_t)t.len)) {
            return FRAME_STALL; /* without the record the owner would not forward */
        }
        p->interest_count += f->u.interest.on ? 1 : (p->interest_count > 0 ? -1u : 0);
        STAT_SET(stats.peers[p->index].interest_in, p->interest_count);
        return FRAME_OK;
    }
    case RB_REPLICA_BATCH:
        return on_batch(p, &f->u.batch) ? FRAME_OK : FRAME_STALL;
    default:
        return -1;
    }
}

static int dialer_frame(peer *p, const rb_replica_frame *f)
{
    rb_cluster *cl = p->cl;
    if (f->kind == RB_REPLICA_WELCOME && p->deadline_ms == 0) {
        link_up(p);
        return 0;
    }
    if (f->kind != RB_REPLICA_CHALLENGE || p->deadline_ms == 0) {
        return -1;
    }
    uint8_t want[RB_REPLICA_MAC_BYTES];
    rb_replica_mac(cl->cfg->cluster_secret, cl->cfg->cluster_secret_len, 'A', cluster_id(cl),
                   p->cfg->id, cl->cfg->cluster_node_id, p->nonce_d, f->u.challenge.nonce, want);
    if (f->u.challenge.node_id != p->cfg->id || !rb_replica_mac_equal(want, f->u.challenge.mac)) {
        link_close(p, f->u.challenge.node_id != p->cfg->id
                          ? "the peer answered with another node id"
                          : "the peer's MAC does not match (another secret or cluster_id)");
        return 1;
    }
    memcpy(p->nonce_a, f->u.challenge.nonce, sizeof p->nonce_a);
    uint8_t mac[RB_REPLICA_MAC_BYTES];
    rb_replica_mac(cl->cfg->cluster_secret, cl->cfg->cluster_secret_len, 'D', cluster_id(cl),
                   cl->cfg->cluster_node_id, p->cfg->id, p->nonce_d, p->nonce_a, mac);
    uint8_t out[RB_REPLICA_HEADER_BYTES + RB_REPLICA_MAC_BYTES];
    send_small(p, out, rb_replica_encode_auth(out, sizeof out, mac));
    p->deadline_ms = 0; /* now waiting for WELCOME, under the same timer */
    return 0;
}

/* Decodes every whole frame in rx. A frame that has to wait for a block or
 * an envelope (or for the reset of the link before it to reach every
 * shard) stays at the start of rx, and receiving pauses until the flush
 * hook finds room: the peer is backpressured through TCP, and nothing it
 * sent is dropped. */
static void stall(peer *p)
{
    if (!p->rx_stalled) {
        p->rx_stalled = true;
        p->stall_ms = now_ms(p->cl);
        STAT_ADD(stats.peers[p->index].rx_stalls, 1);
    }
    rb_shard_poll_soon(p->cl->shard);
}

static void link_parse(peer *p)
{
    uint32_t at = 0;
    bool was_stalled = p->rx_stalled;
    p->rx_stalled = false;
    while (p->state == LINK_UP || p->state == LINK_HANDSHAKE) {
        if (p->rx_len - at < RB_REPLICA_HEADER_BYTES) {
            break;
        }
        if (p->state == LINK_UP && resets_left(p) && !send_resets(p)) {
            p->rx_stalled = was_stalled && at == 0;
            stall(p);
            break;
        }
        rb_err err = {0};
        uint32_t size = 0;
        rb_replica_frame f;
        int rc = rb_replica_header(p->rx + at, p->rx_len - at, p->cl->frame_max, &size, &err);
        if (rc == 0 && p->rx_len - at < size) {
            break;
        }
        rc = rc ? rc : rb_replica_decode(p->rx + at, size, &f, &err);
        int r = rc != 0 ? -1 : p->state == LINK_UP ? on_up_frame(p, &f) : dialer_frame(p, &f);
        if (r < 0) {
            link_close(p, rc != 0 ? err.msg : "unexpected frame");
        }
        if (r == FRAME_STALL) {
            p->rx_stalled = was_stalled && at == 0; /* the wait starts over after progress */
            stall(p);
            break;
        }
        if (r != FRAME_OK) {
            return;
        }
        at += size;
    }
    memmove(p->rx, p->rx + at, p->rx_len - at);
    p->rx_len -= at;
}

static void recv_done(rb_op *op, int res, uint32_t flags)
{
    (void)flags;
    peer *p = RB_CONTAINER_OF(op, peer, recv_op);
    p->recv_busy = false;
    p->ops--;
    if (p->state == LINK_CLOSING) {
        link_close(p, NULL);
        return;
    }
    if (res <= 0) {
        link_close(p, res == 0 ? "the peer closed the connection" : strerror(-res));
        return;
    }
    p->rx_len += (uint32_t)res;
    p->last_rx_ms = now_ms(p->cl);
    STAT_SET(stats.peers[p->index].last_rx_ms, p->last_rx_ms);
    STAT_ADD(stats.peers[p->index].bytes_in, (uint64_t)res);
    link_parse(p);
    link_recv(p);
}

static void link_recv(peer *p)
{
    if (p->recv_busy || p->rx_stalled || (p->state != LINK_UP && p->state != LINK_HANDSHAKE)) {
        return;
    }
    RB_ASSERT(p->rx_len < p->rx_cap);
    if (rb_loop_recv(p->cl->shard->loop, p->fd, p->rx + p->rx_len, p->rx_cap - p->rx_len,
                     &p->recv_op) != 0) {
        link_close(p, "no submission entry for a receive");
        return;
    }
    p->recv_busy = true;
    p->ops++;
}

/* ---- dialing ---- */

static void connect_done(rb_op *op, int res, uint32_t flags)
{
    (void)flags;
    peer *p = RB_CONTAINER_OF(op, peer, poll_op);
    rb_cluster *cl = p->cl;
    p->ops--;
    if (p->state == LINK_CLOSING) {
        link_close(p, NULL);
        return;
    }
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (res < 0 || getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0) {
        link_close(p, strerror(res < 0 ? -res : soerr != 0 ? soerr : errno));
        return;
    }
    rb_err err = {0};
    if (rb_replica_nonce(p->nonce_d, &err) != 0) {
        link_close(p, err.msg);
        return;
    }
    p->state = LINK_HANDSHAKE;
    STAT_SET(stats.peers[p->index].state, LINK_HANDSHAKE);
    p->deadline_ms = now_ms(cl) + RB_CLUSTER_HANDSHAKE_MS_MAX;
    uint8_t out[HANDSHAKE_BYTES_MAX];
    send_small(p, out,
               rb_replica_encode_hello(out, sizeof out, cl->cfg->cluster_node_id, cluster_id(cl),
                                       p->nonce_d));
    link_recv(p);
}

static int peer_sockaddr(const rb_peer_config *c, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, c->address, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(c->port);
        *len = sizeof *a4;
        return AF_INET;
    }
    int ok = inet_pton(AF_INET6, c->address, &a6->sin6_addr);
    RB_ASSERT(ok == 1);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(c->port);
    *len = sizeof *a6;
    return AF_INET6;
}

static void set_nodelay(int fd)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void dial(peer *p)
{
    rb_cluster *cl = p->cl;
    struct sockaddr_storage ss;
    socklen_t len = 0;
    int af = peer_sockaddr(p->cfg, &ss, &len);
    int fd = socket(af, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        RB_LOG_WARN(cl->shard->id, "cluster: dial node %u: socket: %s", p->cfg->id,
                    strerror(errno));
        arm_redial(p);
        return;
    }
    set_nodelay(fd);
    p->fd = fd;
    p->state = LINK_CONNECTING;
    STAT_SET(stats.peers[p->index].state, LINK_CONNECTING);
    if (connect(fd, (struct sockaddr *)&ss, len) != 0 && errno != EINPROGRESS) {
        link_close(p, strerror(errno));
        return;
    }
    p->poll_op.done = connect_done;
    if (rb_loop_poll(cl->shard->loop, fd, POLLOUT, &p->poll_op) != 0) {
        link_close(p, "no submission entry for connect");
        return;
    }
    p->ops++;
}

/* The peer's one timer: redial when idle, the handshake deadline, and
 * keepalive and liveness when up. */
static void peer_timer(rb_timer *t)
{
    peer *p = RB_CONTAINER_OF(t, peer, timer);
    rb_cluster *cl = p->cl;
    uint64_t now = now_ms(cl);
    if (cl->stopping) {
        return;
    }
    switch (p->state) {
    case LINK_IDLE:
        if (p->dialer) {
            dial(p);
        }
        if (p->state == LINK_CONNECTING || p->state == LINK_HANDSHAKE) {
            rb_timer_arm(cl->shard->loop, &p->timer, RB_CLUSTER_HANDSHAKE_MS_MAX);
        }
        return;
    case LINK_CONNECTING:
    case LINK_HANDSHAKE:
        link_close(p, "the handshake did not finish in time");
        return;
    case LINK_UP:
        if (p->rx_stalled && now - p->stall_ms >= RB_CLUSTER_RX_STALL_MS_MAX) {
            /* Hopelessly short of memory for what the peer sends: start
             * over; both sides repair from Postgres after the redial. */
            link_close(p, "receiving waited too long for block memory: dropping the link; it "
                          "repairs from Postgres");
            return;
        }
        if (!p->rx_stalled && now - p->last_rx_ms >= RB_CLUSTER_DEAD_MS) {
            link_close(p, "nothing received for too long");
            return;
        }
        if (now - p->last_tx_ms >= RB_CLUSTER_PING_MS / 2 && p->tx_count == 0) {
            uint8_t f[RB_REPLICA_HEADER_BYTES];
            send_small(p, f, rb_replica_encode_empty(f, sizeof f, RB_REPLICA_PING));
        }
        if (p->state == LINK_UP) {
            rb_timer_arm(cl->shard->loop, &p->timer, RB_CLUSTER_PING_MS / 2);
        }
        return;
    case LINK_CLOSING:
        return;
    }
}

/* An authenticated inbound link (from the acceptor on shard 0) for peer p:
 * a link already up for it is the older one (the peer redialed because it
 * lost it) and is closed. */
static void adopt(peer *p, int fd)
{
    rb_cluster *cl = p->cl;
    if (p->state != LINK_IDLE || cl->stopping) {
        RB_LOG_INFO(cl->shard->id, "cluster: node %u dialed again; closing the %s link it replaces",
                    p->cfg->id, state_names[p->state]);
        if (p->state != LINK_CLOSING) {
            link_close(p, NULL);
        }
        if (p->state != LINK_IDLE || cl->stopping) {
            /* Still closing: this one waits for the peer's redial. */
            shutdown(fd, SHUT_RDWR);
            close(fd);
            return;
        }
    }
    p->fd = fd;
    p->rx_len = 0;
    link_up(p);
    uint8_t f[RB_REPLICA_HEADER_BYTES];
    send_small(p, f, rb_replica_encode_empty(f, sizeof f, RB_REPLICA_WELCOME));
    link_recv(p);
}

static void on_cluster_envelope(void *ctx, rb_xmsg *m)
{
    rb_cluster *cl = ctx;
    const uint8_t *p = m->data;
    for (uint32_t i = 0; i < m->count; i++) {
        uint8_t op, peer_index, on, tlen;
        int32_t fd;
        p = rb_rec_get(p, &op, 1);
        p = rb_rec_get(p, &peer_index, 1);
        p = rb_rec_get(p, &on, 1);
        p = rb_rec_get(p, &tlen, 1);
        p = rb_rec_get(p, &fd, 4);
        if (op == CREC_LOCAL) {
            on_local(cl, on != 0, (const char *)p, tlen);
        } else {
            RB_ASSERT(op == CREC_ADOPT && peer_index < cl->cfg->cluster_peer_count);
            adopt(&cl->peers[peer_index], fd);
        }
        p += tlen;
    }
    RB_ASSERT(p == m->data + m->bytes);
    rb_xmsg_put(m);
}

static void on_replica_out(void *ctx, rb_xmsg *m)
{
    rb_cluster *cl = ctx;
    uint32_t i = m->count;
    RB_ASSERT(i < cl->cfg->cluster_peer_count && cl->peers[i].cl != NULL);
    peer *p = &cl->peers[i];
    rb_block *b = m->ptr;
    m->ptr = NULL;
    rb_xmsg_put(m);
    if (p->state != LINK_UP) {
        rb_block_unref(b); /* the peer repairs from Postgres after its reconnect */
        return;
    }
    send_block(p, b);
}

/* ---- inbound handshakes (shard 0) ---- */

static void pending_refuse(pending *q, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void pending_refuse(pending *q, const char *fmt, ...)
{
    if (may_log_refusal(q->cl)) {
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        RB_LOG_WARN(q->cl->shard->id, "cluster: refused replica connection from %s: %s", q->addr,
                    msg);
    }
    pending_close(q);
}

static void pending_finish(pending *q)
{
    q->used = false;
    q->closing = false;
}

static void pending_close(pending *q)
{
    if (!q->closing) {
        q->closing = true;
        if (q->ops > 0) {
            rb_loop_cancel_fd(q->cl->shard->loop, q->fd, NULL);
            shutdown(q->fd, SHUT_RDWR);
        }
    }
    if (q->ops == 0) {
        rb_loop_close(q->cl->shard->loop, q->fd, NULL);
        pending_finish(q);
    }
}

static void pending_recv(pending *q);

static void pending_handover(pending *q);

static void pending_send_done(rb_op *op, int res, uint32_t flags)
{
    (void)flags;
    pending *q = RB_CONTAINER_OF(op, pending, send_op);
    q->ops--;
    if (q->closing || res <= 0) {
        pending_close(q);
    } else if (q->authed && q->ops == 0) {
        pending_handover(q);
    }
}

/* HELLO: checks what it claims, answers with a challenge; nothing is kept
 * but this slot. */
static void pending_hello(pending *q, const rb_replica_hello *h)
{
    rb_cluster *cl = q->cl;
    rb_bytes cid = cluster_id(cl);
    if (h->cluster_id.len != cid.len || memcmp(h->cluster_id.ptr, cid.ptr, cid.len) != 0) {
        char shown[64];
        size_t n = h->cluster_id.len < sizeof shown - 1 ? h->cluster_id.len : sizeof shown - 1;
        for (size_t i = 0; i < n; i++) {
            uint8_t c = h->cluster_id.ptr[i];
            shown[i] = c < 0x21 || c >= 0x7F || c == '"' || c == '\\' ? '?' : (char)c;
        }
        shown[n] = '\0';
        pending_refuse(q, "cluster id \"%s\" is not ours", shown);
        return;
    }
    int idx = -1;
    for (uint32_t i = 0; i < cl->cfg->cluster_peer_count; i++) {
        if (cl->cfg->cluster_peers[i].id == h->node_id) {
            idx = (int)i;
        }
    }
    if (idx < 0 || h->node_id >= cl->cfg->cluster_node_id) {
        pending_refuse(q, "node %u %s", h->node_id,
                       idx < 0 ? "is not a [[cluster.peer]] here"
                               : "has the higher id: this node dials it");
        return;
    }
    rb_err err = {0};
    if (rb_replica_nonce(q->nonce_a, &err) != 0) {
        pending_refuse(q, "%s", err.msg);
        return;
    }
    q->peer_index = idx;
    memcpy(q->nonce_d, h->nonce, sizeof q->nonce_d);
    uint8_t mac[RB_REPLICA_MAC_BYTES];
    rb_replica_mac(cl->cfg->cluster_secret, cl->cfg->cluster_secret_len, 'A', cid,
                   cl->cfg->cluster_node_id, h->node_id, q->nonce_d, q->nonce_a, mac);
    size_t n =
        rb_replica_encode_challenge(q->tx, sizeof q->tx, cl->cfg->cluster_node_id, q->nonce_a, mac);
    if (rb_loop_send(cl->shard->loop, q->fd, q->tx, n, &q->send_op) != 0) {
        pending_close(q);
        return;
    }
    q->ops++;
    pending_recv(q);
}

/* AUTH: the MAC is checked before anything is recorded; then the socket
 * goes to the peer's link shard. */
static void pending_auth(pending *q, const uint8_t mac[RB_REPLICA_MAC_BYTES])
{
    rb_cluster *cl = q->cl;
    const rb_peer_config *pc = &cl->cfg->cluster_peers[q->peer_index];
    uint8_t want[RB_REPLICA_MAC_BYTES];
    rb_replica_mac(cl->cfg->cluster_secret, cl->cfg->cluster_secret_len, 'D', cluster_id(cl),
                   pc->id, cl->cfg->cluster_node_id, q->nonce_d, q->nonce_a, want);
    if (!rb_replica_mac_equal(want, mac)) {
        pending_refuse(q, "node %u's MAC does not match (a wrong secret or a forged hello)",
                       pc->id);
        return;
    }
    q->authed = true;
    if (q->ops == 0) {
        pending_handover(q);
    }
}

/* The socket goes to the peer's link shard once no completion of this
 * slot is outstanding. */
static void pending_handover(pending *q)
{
    rb_shard *sh = q->cl->shard;
    RB_ASSERT(q->authed && q->ops == 0);
    uint32_t to = rb_peer_link_shard(sh->server, (uint32_t)q->peer_index);
    if (!send_crec(sh, to, CREC_ADOPT, (uint8_t)q->peer_index, false, q->fd, NULL, 0)) {
        pending_close(q);
        return;
    }
    pending_finish(q); /* the fd is the link shard's now */
}

static void pending_recv_done(rb_op *op, int res, uint32_t flags)
{
    (void)flags;
    pending *q = RB_CONTAINER_OF(op, pending, recv_op);
    q->ops--;
    if (q->closing || res <= 0) {
        pending_close(q);
        return;
    }
    q->rx_len += (uint32_t)res;
    if (q->rx_len < RB_REPLICA_HEADER_BYTES) {
        pending_recv(q);
        return;
    }
    rb_err err = {0};
    uint32_t size = 0;
    rb_replica_frame f;
    int rc = rb_replica_header(q->rx, q->rx_len, sizeof q->rx, &size, &err);
    if (rc == 0 && q->rx_len < size) {
        pending_recv(q);
        return;
    }
    rc = rc ? rc : rb_replica_decode(q->rx, size, &f, &err);
    bool want_hello = q->peer_index < 0;
    if (rc == 0 && q->rx_len != size) {
        rc = rb_err_set(&err, RB_EPROTO, 0, "bytes after the %s frame",
                        rb_replica_kind_name(f.kind));
    }
    if (rc == 0 && f.kind != (want_hello ? RB_REPLICA_HELLO : RB_REPLICA_AUTH)) {
        rc = rb_err_set(&err, RB_EPROTO, 0, "a %s frame where %s was due",
                        rb_replica_kind_name(f.kind), want_hello ? "hello" : "auth");
    }
    if (rc != 0) {
        pending_refuse(q, "%s", err.msg);
        return;
    }
    q->rx_len = 0;
    if (want_hello) {
        pending_hello(q, &f.u.hello);
    } else {
        pending_auth(q, f.u.mac);
    }
}

static void pending_recv(pending *q)
{
    if (rb_loop_recv(q->cl->shard->loop, q->fd, q->rx + q->rx_len, sizeof q->rx - q->rx_len,
                     &q->recv_op) != 0) {
        pending_close(q);
        return;
    }
    q->ops++;
}

static void accept_done(rb_op *op, int res, uint32_t flags)
{
    rb_cluster *cl = RB_CONTAINER_OF(op, rb_cluster, accept_op);
    if (res >= 0) {
        pending *q = NULL;
        for (uint32_t i = 0; i < RB_CLUSTER_PENDING_MAX && q == NULL; i++) {
            q = cl->pend[i].used ? NULL : &cl->pend[i];
        }
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        char addr[64] = "?";
        if (getpeername(res, (struct sockaddr *)&ss, &len) == 0) {
            const void *a = ss.ss_family == AF_INET6
                                ? (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
                                : (const void *)&((struct sockaddr_in *)&ss)->sin_addr;
            inet_ntop(ss.ss_family, a, addr, sizeof addr);
        }
        if (q == NULL || cl->stopping) {
            if (may_log_refusal(cl)) {
                RB_LOG_WARN(cl->shard->id,
                            "cluster: refused replica connection from %s: %u "
                            "handshakes in progress",
                            addr, RB_CLUSTER_PENDING_MAX);
            }
            close(res);
        } else {
            memset(q, 0, sizeof *q);
            q->cl = cl;
            q->used = true;
            q->fd = res;
            q->peer_index = -1;
            q->deadline_ms = now_ms(cl) + RB_CLUSTER_HANDSHAKE_MS_MAX;
            q->recv_op.done = pending_recv_done;
            q->send_op.done = pending_send_done;
            snprintf(q->addr, sizeof q->addr, "%s", addr);
            set_nodelay(res);
            pending_recv(q);
        }
    } else if (res != -ECANCELED) {
        RB_LOG_WARN(cl->shard->id, "cluster: accept: %s", strerror(-res));
    }
    if ((flags & RB_LOOP_F_MORE) == 0) {
        cl->accept_armed = false;
        if (!cl->stopping && res != -ECANCELED &&
            rb_loop_accept_multishot(cl->shard->loop, cl->listen_fd, &cl->accept_op) == 0) {
            cl->accept_armed = true;
        }
    }
}

/* Handshake deadlines of the pending slots, the resyncs and the owners'
 * repair tick. */
static void tick(rb_timer *t)
{
    rb_cluster *cl = RB_CONTAINER_OF(t, rb_cluster, tick);
    if (cl->stopping) {
        return;
    }
    uint64_t now = now_ms(cl);
    for (uint32_t i = 0; i < RB_CLUSTER_PENDING_MAX; i++) {
        pending *q = &cl->pend[i];
        if (q->used && !q->closing && now >= q->deadline_ms) {
            pending_refuse(q, "the handshake did not finish in time");
        }
    }
    rb_owner_repair_all(cl->shard);
    rb_timer_arm(cl->shard->loop, &cl->tick, RB_CLUSTER_REPAIR_MS);
}

/* ---- subsystem hooks ---- */

static int listen_replica(rb_cluster *cl, rb_err *err)
{
    rb_peer_config me = {.port = cl->cfg->cluster_port};
    snprintf(me.address, sizeof me.address, "%s", cl->cfg->cluster_address);
    struct sockaddr_storage ss;
    socklen_t len = 0;
    int af = peer_sockaddr(&me, &ss, &len);
    int fd = socket(af, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return rb_err_set(err, RB_ESYS, errno, "replica listen %s:%u: socket", me.address, me.port);
    }
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 64) != 0) {
        int e = errno;
        close(fd);
        return rb_err_set(err, RB_ESYS, e, "replica listen %s:%u: bind: %s", me.address, me.port,
                          strerror(e));
    }
    cl->listen_fd = fd;
    return 0;
}

static int peers_init(rb_cluster *cl, rb_err *err)
{
    rb_shard *sh = cl->shard;
    uint32_t rx_cap = cl->frame_max + RB_REPLICA_HEADER_BYTES;
    for (uint32_t i = 0; i < cl->cfg->cluster_peer_count; i++) {
        if (rb_peer_link_shard(sh->server, i) != sh->id) {
            continue;
        }
        peer *p = &cl->peers[i];
        p->cl = cl;
        p->index = i;
        p->cfg = &cl->cfg->cluster_peers[i];
        p->dialer = cl->cfg->cluster_node_id < p->cfg->id;
        p->fd = -1;
        p->backoff_ms = RB_CLUSTER_BACKOFF_MS_MIN;
        p->timer.fn = peer_timer;
        p->recv_op.done = recv_done;
        p->send_op.done = send_done;
        p->rx_cap = rx_cap;
        p->rx = malloc(rx_cap);
        p->tx = calloc(RB_CLUSTER_TXQ_ENTRIES_MAX, sizeof *p->tx);
        if (p->rx == NULL || p->tx == NULL) {
            return rb_err_set(err, RB_ENOMEM, 0, "shard %u: replica link to node %u", sh->id,
                              p->cfg->id);
        }
        cl->holds_links = true;
    }
    return 0;
}

static int cluster_init(rb_shard *sh, rb_err *err)
{
    const rb_config *cfg = &sh->server->cfg;
    if (!enabled(cfg)) {
        return 0;
    }
    rb_cluster *cl = calloc(1, sizeof *cl);
    if (cl == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "shard %u: cluster", sh->id);
    }
    sh->cluster = cl;
    cl->shard = sh;
    cl->cfg = cfg;
    cl->listen_fd = -1;
    cl->frame_max = cfg->max_frame_bytes + RB_REPLICA_BATCH_HEAD_BYTES + RB_TOPIC_BYTES_MAX;
    cl->tick.fn = tick;
    int rc = peers_init(cl, err);
    if (rc == 0 && cl->holds_links) {
        cl->local = calloc(LOCAL_BUCKETS, sizeof *cl->local);
        rc = cl->local == NULL
                 ? rb_err_set(err, RB_ENOMEM, 0, "cluster interest table")
                 : rb_pool_init(&cl->local_pool, "cluster interest", sizeof(local_topic),
                                RB_CLUSTER_INTEREST_TOPICS_MAX, err);
    }
    if (rc == 0 && sh->id == 0) {
        rc = listen_replica(cl, err);
    }
    if (rc == 0) {
        rb_mailbox_register(&sh->mail, RB_XK_CLUSTER, on_cluster_envelope, cl);
        rb_mailbox_register(&sh->mail, RB_XK_REPLICA_OUT, on_replica_out, cl);
        static const rb_owner_peers owner_peers = {.local_interest = local_interest};
        rb_owner_attach_peers(sh, &owner_peers);
    }
    return rc;
}

static void cluster_start(rb_shard *sh)
{
    rb_cluster *cl = sh->cluster;
    if (cl == NULL) {
        return;
    }
    if (cl->listen_fd >= 0) {
        cl->accept_op.done = accept_done;
        if (rb_loop_accept_multishot(sh->loop, cl->listen_fd, &cl->accept_op) == 0) {
            cl->accept_armed = true;
        }
        RB_LOG_INFO(sh->id, "cluster: node %u of \"%s\", replica listener on %s:%u, %u peers",
                    cl->cfg->cluster_node_id, cl->cfg->cluster_id, cl->cfg->cluster_address,
                    cl->cfg->cluster_port, cl->cfg->cluster_peer_count);
    }
    for (uint32_t i = 0; i < cl->cfg->cluster_peer_count; i++) {
        peer *p = &cl->peers[i];
        if (p->cl != NULL && p->dialer) {
            rb_timer_arm(sh->loop, &p->timer, 1);
        }
    }
    rb_timer_arm(sh->loop, &cl->tick, RB_CLUSTER_REPAIR_MS);
}

static void cluster_flush(rb_shard *sh)
{
    rb_cluster *cl = sh->cluster;
    if (cl == NULL) {
        return;
    }
    for (uint32_t i = 0; i < cl->cfg->cluster_peer_count; i++) {
        peer *p = &cl->peers[i];
        if (p->cl == NULL) {
            continue;
        }
        if (p->state != LINK_UP && resets_left(p)) {
            send_resets(p);
        }
        if (p->state == LINK_UP) {
            if (p->rx_stalled) {
                link_parse(p);
                if (p->rx_stalled) {
                    rb_shard_poll_soon(sh);
                } else {
                    link_recv(p);
                }
            }
            resync_some(p);
            link_start_send(p);
        }
    }
}

static void cluster_stop(rb_shard *sh, bool grace_over)
{
    rb_cluster *cl = sh->cluster;
    if (cl == NULL || grace_over) {
        return;
    }
    cl->stopping = true;
    rb_timer_disarm(sh->loop, &cl->tick);
    for (uint32_t i = 0; i < cl->cfg->cluster_peer_count; i++) {
        /* The owners stop too: a link reset no longer needs telling. */
        memset(cl->peers[i].reset_left, 0, sizeof cl->peers[i].reset_left);
    }
    if (cl->accept_armed) {
        rb_loop_cancel_fd(sh->loop, cl->listen_fd, NULL);
    }
    for (uint32_t i = 0; i < RB_CLUSTER_PENDING_MAX; i++) {
        if (cl->pend[i].used) {
            pending_close(&cl->pend[i]);
        }
    }
    for (uint32_t i = 0; i < cl->cfg->cluster_peer_count; i++) {
        peer *p = &cl->peers[i];
        if (p->cl != NULL) {
            rb_timer_disarm(sh->loop, &p->timer);
            link_close(p, NULL);
        }
    }
}

static bool cluster_idle(rb_shard *sh)
{
    rb_cluster *cl = sh->cluster;
    if (cl == NULL) {
        return true;
    }
    if (cl->accept_armed) {
        return false;
    }
    for (uint32_t i = 0; i < RB_CLUSTER_PENDING_MAX; i++) {
        if (cl->pend[i].used) {
            return false;
        }
    }
    for (uint32_t i = 0; i < cl->cfg->cluster_peer_count; i++) {
        if (cl->peers[i].cl != NULL &&
            (cl->peers[i].state != LINK_IDLE || resets_left(&cl->peers[i]))) {
            return false;
        }
    }
    return true;
}

static void cluster_deinit(rb_shard *sh)
{
    rb_cluster *cl = sh->cluster;
    if (cl == NULL) {
        return;
    }
    for (uint32_t i = 0; i < cl->cfg->cluster_peer_count; i++) {
        peer *p = &cl->peers[i];
        if (p->tx != NULL) {
            tx_clear(p);
        }
        if (p->fd >= 0 && p->cl != NULL) {
            close(p->fd);
        }
        free(p->rx);
        free(p->tx);
    }
    if (cl->local != NULL) {
        for (uint32_t b = 0; b < LOCAL_BUCKETS; b++) {
            while (cl->local[b] != NULL) {
                local_topic *t = cl->local[b];
                cl->local[b] = t->next;
                rb_pool_put(&cl->local_pool, t);
            }
        }
        rb_pool_deinit(&cl->local_pool);
        free(cl->local);
    }
    if (cl->listen_fd >= 0) {
        close(cl->listen_fd);
    }
    free(cl);
    sh->cluster = NULL;
}

/* Per shard holding links: each link's receive buffer and send ring, and
 * the local interest set at its bound. */
static uint64_t cluster_memory_bytes(const rb_config *cfg)
{
    if (!enabled(cfg)) {
        return 0;
    }
    uint64_t per_peer = cfg->max_frame_bytes + 1024 +
                        (uint64_t)RB_CLUSTER_TXQ_ENTRIES_MAX * sizeof(txe) +
                        RB_CLUSTER_TX_BYTES_MAX;
    uint32_t peers_per_shard = cfg->cluster_peer_count / (cfg->shards > 0 ? cfg->shards : 1) + 1;
    return sizeof(rb_cluster) + peers_per_shard * per_peer + LOCAL_BUCKETS * sizeof(void *) +
           (uint64_t)RB_CLUSTER_INTEREST_TOPICS_MAX * sizeof(local_topic);
}

const rb_subsystem rb_cluster_subsystem = {
    .name = "cluster",
    .init = cluster_init,
    .start = cluster_start,
    .flush = cluster_flush,
    .stop = cluster_stop,
    .idle = cluster_idle,
    .deinit = cluster_deinit,
    .memory_bytes = cluster_memory_bytes,
};

/* ---- introspection ---- */

bool rb_cluster_ready(const rb_server *srv, char *why, size_t cap)
{
    const rb_config *cfg = &srv->cfg;
    uint32_t peers = enabled(cfg) ? cfg->cluster_peer_count : 0;
    uint32_t up = 0;
    for (uint32_t i = 0; i < peers; i++) {
        up += STAT_GET(stats.peers[i].state) == LINK_UP;
    }
    /* This node and the peers it reaches, against the whole cluster. */
    if (peers > 0 && 2 * (up + 1) < peers + 1) {
        snprintf(why, cap, "the replica links reach %u of %u peers (fewer than half the cluster)",
                 up, peers);
        return false;
    }
    return true;
}

size_t rb_cluster_json(const rb_server *srv, char *out, size_t cap)
{
    const rb_config *cfg = &srv->cfg;
    size_t n = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        if (n < cap) {                                                                             \
            int w = snprintf(out + n, cap - n, __VA_ARGS__);                                       \
            n += w > 0 ? (size_t)w : 0;                                                            \
        }                                                                                          \
    } while (0)
    if (!enabled(cfg)) {
        PUT("{\"enabled\":false}");
        return n < cap ? n : cap;
    }
    /* The sequencers' hole reads, summed over the shards' counters. */
    uint64_t holes = 0;
    uint64_t seqs = 0;
    for (uint32_t i = 0; i < srv->shard_count; i++) {
        holes += RB_STAT_GET(&srv->shards[i], holes_repaired);
        seqs += RB_STAT_GET(&srv->shards[i], repaired_seqs);
    }
    /* Ids, addresses and the cluster id come from the validated config. */
    PUT("{\"enabled\":true,\"node_id\":%u,\"cluster_id\":\"%s\",\"listener\":\"%s:%u\","
        "\"local_topics\":%llu,\"refused_handshakes\":%llu,\"holes_fetched\":%llu,"
        "\"repaired_seqs\":%llu,\"peers\":[",
        cfg->cluster_node_id, cfg->cluster_id, cfg->cluster_address, cfg->cluster_port,
        (unsigned long long)STAT_GET(stats.local_topics),
        (unsigned long long)STAT_GET(stats.refused), (unsigned long long)holes,
        (unsigned long long)seqs);
    uint64_t now = rb_clock_ms();
    for (uint32_t i = 0; i < cfg->cluster_peer_count; i++) {
        const rb_peer_config *pc = &cfg->cluster_peers[i];
        peer_stats *s = &stats.peers[i];
        uint32_t st = STAT_GET(s->state);
        uint64_t rx = STAT_GET(s->last_rx_ms);
        PUT("%s{\"id\":%u,\"address\":\"%s:%u\",\"dialer\":%s,\"shard\":%u,\"link\":\"%s\","
            "\"links_up\":%llu,\"link_drops\":%llu,\"slow_drops\":%llu,\"batches_out\":%llu,"
            "\"batches_in\":%llu,\"bytes_out\":%llu,\"bytes_in\":%llu,\"interest_in\":%llu,"
            "\"rx_stalls\":%llu,\"tx_queued_bytes\":%llu,\"last_rx_age_ms\":%lld}",
            i > 0 ? "," : "", pc->id, pc->address, pc->port,
            cfg->cluster_node_id < pc->id ? "true" : "false", rb_peer_link_shard(srv, i),
            st < 5 ? state_names[st] : "?", (unsigned long long)STAT_GET(s->links_up),
            (unsigned long long)STAT_GET(s->link_drops),
            (unsigned long long)STAT_GET(s->slow_drops),
            (unsigned long long)STAT_GET(s->batches_out),
            (unsigned long long)STAT_GET(s->batches_in), (unsigned long long)STAT_GET(s->bytes_out),
            (unsigned long long)STAT_GET(s->bytes_in), (unsigned long long)STAT_GET(s->interest_in),
            (unsigned long long)STAT_GET(s->rx_stalls), (unsigned long long)STAT_GET(s->tx_bytes),
            rx == 0 || now < rx ? -1LL : (long long)(now - rx));
    }
    PUT("]}");
#undef PUT
    return n < cap ? n : cap;
}
