/* The daemon's internal types shared by server/ files: the server (all
 * shards), a shard (one thread, one loop), connections and their send
 * queues, and the messages shards exchange. Nothing here is public API. */
#ifndef RB_SERVER_SERVER_H
#define RB_SERVER_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#include "common/err.h"
#include "common/frame.h"
#include "common/loop.h"
#include "common/pool.h"
#include "common/queue.h"
#include "config/config.h"
#include "server/admin.h"
#include "server/auth.h"
#include "server/auth_pool.h"
#include "server/connz.h"
#include "server/holdq.h"
#include "server/limiter.h"
#include "server/mailbox.h"
#include "server/sendq.h"
#include "storage/storage.h"
#include "transports/layer.h"
#include "transports/tls.h"

typedef struct rb_server rb_server;
typedef struct rb_shard rb_shard;
typedef struct rb_conn rb_conn;
typedef struct rb_stream rb_stream;
typedef struct rb_owner rb_owner;
typedef struct rb_subs rb_subs;
typedef void rb_remote_fn(rb_shard *sh, uint64_t payload);
/* A client frame that a subsystem other than the session takes (publish
 * intake today): subsystems register theirs at init, so the session calls
 * none of them by name. */
typedef void rb_client_frame_fn(rb_conn *c, const rb_frame *f);
/* Called when a session closes, before its link does (rb_session_on_closed). */
typedef void rb_conn_closed_fn(rb_conn *c);
/* Subsystems that may register a close handler on a shard. */
#define RB_SESSION_CLOSED_FNS_MAX 4
typedef struct rb_subsystem rb_subsystem;
typedef struct rb_link rb_link;
typedef struct rb_link_tcp rb_link_tcp;
typedef struct rb_link_quic rb_link_quic;
typedef struct rb_quic_ep rb_quic_ep;

/* Kinds of messages sent to a shard through MSG_RING data; each has one
 * handler per shard (rb_shard_on_remote). */
enum {
    RB_REMOTE_NEW_CONN = 1, /* payload: listener index << 32 | fd */
    RB_REMOTE_QUEUE = 2,    /* payload: producing shard id */
    RB_REMOTE_AUTH = 3,     /* an auth worker finished password checks (shard.auth_done) */
    RB_REMOTE_RELOAD = 4,   /* payload: the rb_reload_gen to switch to (server/reload.c) */
    RB_REMOTE_KINDS_MAX = 5
};
#define RB_REMOTE_KIND_SHIFT     56
#define RB_REMOTE(kind, payload) (((uint64_t)(kind) << RB_REMOTE_KIND_SHIFT) | (uint64_t)(payload))

typedef enum rb_conn_state {
    RB_CONN_FREE = 0,
    RB_CONN_HANDSHAKE, /* accepted, waiting for HELLO */
    RB_CONN_OPEN,
    RB_CONN_DRAINING, /* client half-closed: finishing waves, then CLOSE ok */
    RB_CONN_CLOSING,  /* flushing the last frames within the close grace */
    RB_CONN_CLOSED,   /* fd closed; waiting for the last completions */
} rb_conn_state;
#define RB_CONN_STATE_COUNT (RB_CONN_CLOSED + 1)

/* A client session: the protocol state of one connection, over a link
 * (server/link.h) that carries its bytes. */
struct rb_conn {
    rb_shard *shard;
    rb_link *link; /* NULL once the link released everything */
    uint64_t id;   /* unique per process, for logs */
    uint32_t index;
    uint32_t gen; /* bumped on reuse, so stale replies are dropped */
    rb_conn_state state;
    bool flush_queued;
    bool pong_wait;
    bool peer_logged; /* a connection-level error named the peer's address */
    bool tx_trimmed;  /* the unstarted frames were dropped for the closing frames */
    rb_timer timer;
    uint64_t last_tx_ms;
    uint64_t ping_sent_ms;
    uint64_t ping_nonce;
    uint64_t partial_since_ms; /* 0 when no frame is partly received */
    uint64_t close_deadline_ms;
    uint64_t leave_by_ms; /* after GOING_AWAY: CLOSE going_away then; 0 = none */
    /* receive reassembly */
    uint8_t hdr_bytes[RB_FRAME_HEADER_BYTES];
    uint32_t hdr_len;
    uint8_t *rx_buf; /* a frame straddling receive buffers, or the held frame */
    uint32_t rx_len;
    uint32_t rx_need;
    /* publisher pause (rb_session_hold): the frame that waits is whole in
     * rx_buf, and the bytes behind it wait in a chain of chunks (at most
     * the link's hold_bytes_max) until rb_session_resume */
    bool held;
    bool rx_held;     /* rx_buf is the held frame */
    bool link_held;   /* the link was asked to hold reading */
    bool eof_held;    /* the peer closed its side behind the held bytes */
    uint8_t hold_why; /* the publish intake's reason, for its resume pass */
    uint8_t *hold_head;
    uint8_t *hold_tail;
    uint32_t hold_bytes;
    rb_hold_link hold_link; /* in the shard's publish_held FIFO */
    /* send queue: frames until the link releases them */
    rb_sendq sendq;
    rb_conn *flush_next;
    rb_conn *free_next;
    /* publishing and the stream */
    uint32_t publishes_in_flight;
    uint8_t transport; /* rb_transport_kind of its link, for the counters */
    rb_stream *stream;
    /* who signed in (server/auth.h): NULL until HELLO is accepted; the
     * shared anonymous identity under auth.mode = "none", else owned */
    rb_identity *identity;
    uint64_t expires_mono_ms; /* the token's exp on this loop's clock; 0 = none */
    uint64_t refuse_at_ms;    /* a refused sign-in is answered then; 0 = none */
    uint64_t refuse_corr;
    char *refuse_msg;  /* owned while refuse_at_ms is set */
    bool signing_in;   /* a password check is with the auth workers */
    bool addr_counted; /* counted in server.addrs under addr_key, and in listener */
    uint32_t addr_listener;
    rb_addr_key addr_key;
    /* limits.publish_rate (or the user's) and limits.mutates_per_second,
     * filled at STARTED; a refusal is logged at most once a second */
    rb_bucket publish_bucket;
    rb_bucket mutate_bucket;
    uint64_t rate_logged_ms;
    /* RPC (server/rpc.c): the identity others call it by (STARTED's
     * client_id; server-assigned for anonymous connections), its calls in
     * flight as a caller, requests in flight to it and its methods. */
    uint8_t client_id_len;
    char client_id[RB_RPC_NAME_BYTES_MAX + 1];
    struct rb_rpc_call *rpc_calls;
    struct rb_rpc_serve *rpc_serves;
    struct rb_rpc_method *rpc_methods;
    uint32_t rpc_call_count;
    uint32_t rpc_serve_count;
    uint32_t rpc_method_count;
};

typedef struct rb_listener {
    rb_listener_config cfg;
    int fd;
    uint32_t index; /* in rb_server.listeners */
    rb_op accept_op;
    bool armed;
    rb_shard *shard;
    rb_tls_server *tls; /* tls and wss: certificate context (owned), else NULL */
    bool retired;       /* removed by a reload: accepts no more (the acceptor shard's) */
    atomic_uint conns;  /* connections counted against cfg.max_connections */
} rb_listener;

/* Storage requests by kind, for ringbus_storage_errors_total{op}. */
enum {
    RB_STAT_STORE_APPEND,
    RB_STAT_STORE_READ,
    RB_STAT_STORE_HEADS,
    RB_STAT_STORE_OPS
};
/* Bounds of the histograms' buckets (rb_stat_*_le, server/admin.c). */
#define RB_STAT_LATENCY_BUCKETS 16
#define RB_STAT_BATCH_BUCKETS   11
#define RB_STAT_WAVE_BUCKETS    14

/* A shard's counters for /metrics (server/admin.c). Only the shard's own
 * thread writes them (RB_STAT_ADD: a relaxed store, no lock, no atomic
 * read-modify-write); a scrape on any thread reads them relaxed and sums
 * the shards. Gauges go up and down the same way. */
typedef struct rb_shard_stats {
    uint64_t accepted[RB_TRANSPORT_KINDS]; /* sessions opened, by listener transport */
    uint64_t open[RB_TRANSPORT_KINDS];     /* gauge: sessions open now */
    uint64_t frames_in;                    /* client frames decoded */
    uint64_t bytes_in;                     /* frame bytes received */
    uint64_t publishes_ok;                 /* publishes acknowledged */
    uint64_t publishes_failed;             /* publishes answered with an error */
    uint64_t deliveries;                   /* messages queued to subscribers */
    uint64_t delivery_bytes;               /* their encoded bytes */
    uint64_t slow_consumer_closes;         /* subscribers closed for a full send queue */
    uint64_t ephemeral_duplicates;         /* ephemeral publishes dropped by content dedup */
    uint64_t ephemeral_lagged;             /* ephemeral messages dropped for slow subscribers */
    uint64_t publisher_pauses;             /* times a publisher stopped being read */
    uint64_t publishers_paused;            /* gauge: publishers not read now */
    uint64_t loop_turns;                   /* turns of the shard's loop */
    uint64_t last_turn_ms;                 /* CLOCK_MONOTONIC ms of the last turn's start */
    uint64_t holes_repaired;               /* holes the sequencers filled from storage */
    uint64_t repaired_seqs;                /* seqs those reads delivered */
    uint64_t quic_forwarded;               /* datagrams handed to their connection's shard */
    uint64_t quic_forward_dropped;         /* ... dropped: that shard's mailbox was full */
    uint64_t frames_out;                   /* frames queued to clients */
    uint64_t bytes_out;                    /* their bytes */
    uint64_t publish_duplicates;           /* acked with RB_ACK_DUPLICATE */
    uint64_t catchup_rows;                 /* history rows queued to subscribers */
    uint64_t busy_ns;                      /* loop time outside the io_uring waits */
    uint64_t pending_bytes;                /* gauge: live bytes buffered during catch-up */
    uint64_t sendq_bytes;                  /* gauge: send queue memory, set once a turn */
    /* gauge: sessions now by transport and state (not RB_CONN_FREE) */
    uint64_t conn_states[RB_TRANSPORT_KINDS][RB_CONN_STATE_COUNT];
    /* publishes answered with an error, by wire code */
    uint64_t publish_errors[RB_WIRE_CODE_LAST + 1];
    /* requests the store refused or failed, by RB_STAT_STORE_* */
    uint64_t storage_errors[RB_STAT_STORE_OPS];
    /* Histograms: counts per bucket (not cumulative: admin.c adds them
     * up; the last bucket is +Inf) and the sum of what was observed. */
    uint64_t commit_latency[RB_STAT_LATENCY_BUCKETS + 1];
    uint64_t commit_latency_ns;
    uint64_t commit_batch[RB_STAT_BATCH_BUCKETS + 1];
    uint64_t commit_batch_msgs;
    uint64_t catchup_wave[RB_STAT_WAVE_BUCKETS + 1];
    uint64_t catchup_wave_ms;
} rb_shard_stats;

/* Bucket bounds of the histograms (server/admin.c prints them as le). */
extern const uint64_t rb_stat_latency_le_ns[RB_STAT_LATENCY_BUCKETS];
extern const uint64_t rb_stat_batch_le[RB_STAT_BATCH_BUCKETS];
extern const uint64_t rb_stat_wave_le_ms[RB_STAT_WAVE_BUCKETS];
/* The bucket of v among n ascending bounds (n: above them all). */
static inline uint32_t rb_stat_bucket(const uint64_t *le, uint32_t n, uint64_t v)
{
    uint32_t i = 0;
    while (i < n && v > le[i]) {
        i++;
    }
    return i;
}

#define RB_STAT_ADD(sh, field, n)                                                                  \
    __atomic_store_n(&(sh)->stats.field, (sh)->stats.field + (uint64_t)(n), __ATOMIC_RELAXED)
#define RB_STAT_SUB(sh, field, n)                                                                  \
    __atomic_store_n(&(sh)->stats.field, (sh)->stats.field - (uint64_t)(n), __ATOMIC_RELAXED)
#define RB_STAT_SET(sh, field, v)                                                                  \
    __atomic_store_n(&(sh)->stats.field, (uint64_t)(v), __ATOMIC_RELAXED)
#define RB_STAT_GET(sh, field) __atomic_load_n(&(sh)->stats.field, __ATOMIC_RELAXED)

struct rb_shard {
    rb_server *server;
    /* The configuration this shard runs: &server->cfg until a reload hands
     * it a newer one (RB_REMOTE_RELOAD); settings that need a restart keep
     * their start values in every one (server/reload.c). */
    const rb_config *cfg;
    /* The credential verifier this shard signs in with: server->auth until
     * a reload that changed users or keys hands it a newer one. */
    const rb_auth *auth;
    rb_shard_stats stats;
    uint32_t id;
    pthread_t thread;
    rb_loop *loop;
    atomic_int ring_fd;
    atomic_uint conn_count;
    atomic_bool started;
    atomic_bool finished; /* its turns ended (the drain's STATUS= lines watch it) */
    int start_rc;
    rb_err start_err;
    /* connections */
    rb_conn *conns;
    rb_conn *conn_free;
    rb_connz_slot *connz; /* [conn_max], what /v1/connz reads (server/connz.c) */
    rb_topicz topicz;     /* what /v1/topicz reads (server/connz.c) */
    uint32_t conn_max;
    rb_conn *flush_list;
    rb_holdq publish_held; /* paused publishers, resumed in order (server/publish.c) */
    rb_client_frame_fn *client_frames[RB_FRAME_KIND_LAST + 1]; /* rb_session_take_frames */
    rb_conn_closed_fn *closed_fns[RB_SESSION_CLOSED_FNS_MAX];  /* rb_session_on_closed */
    uint32_t closed_fn_count;
    rb_link_tcp *tcp_links;        /* [conn_max], server/link_tcp.c */
    struct rb_recv_pin *recv_pins; /* [RB_RECV_BUF_COUNT], receive buffers paused links keep */
    rb_send_budget wire_budget;    /* charged by the tcp links' wire queues */
    rb_link_quic *quic_links;      /* [conn_max], server/link_quic.c */
    rb_quic_ep *quic_ep;           /* UDP sockets and QUIC engines, server/quic_ep.c */
    /* memory */
    rb_pool chunk_pool;
    rb_send_budget send_budget; /* charged by the connections' send queues */
    rb_pool seg_pool;
    rb_pool iov_pool;
    rb_pool rxbig_pool;
    /* envelopes and blocks, and the queues from every shard */
    rb_mailbox mail;
    bool mail_ready;
    uint32_t subsystems_inited; /* init hooks that succeeded, undone by deinit */
    bool poll_soon;             /* a subsystem waits for something nobody wakes it for */
    rb_remote_fn *remote[RB_REMOTE_KINDS_MAX];
    _Atomic(rb_auth_job *) auth_done; /* finished password checks, pushed by workers */
    /* storage */
    rb_storage_shard *storage;
    /* topic owners and local subscriptions */
    rb_owner *owner;
    rb_subs *subs;
    struct rb_eph *eph; /* topic classes and content dedup (server/ephemeral.c) */
    /* RPC: calls, serves and this shard's part of the directory */
    struct rb_rpc *rpc;
    /* the replica links this shard holds (server/cluster.c); NULL alone */
    struct rb_cluster *cluster;
    /* shutdown */
    int stop_fd;
    rb_op stop_op;
    bool stopping;
    bool stop_armed;
    uint64_t stop_deadline_ms;
    /* listeners this shard accepts on (shard 0) */
    uint32_t listener_count;
    rb_listener *listeners;
};

struct rb_server {
    rb_config cfg;
    uint32_t shard_count;
    rb_shard *shards;
    rb_mailbox **mailboxes;                       /* [shard_count], &shards[i].mail */
    const struct rb_subsystem *const *subsystems; /* what every shard runs, in order */
    uint32_t subsystem_count;
    const rb_storage_ops *storage_ops;
    rb_storage *storage;
    rb_listener listeners[RB_LISTENERS_MAX];
    uint32_t listener_count;
    /* Slots filled for the shards (release by a reload's hand-over; an
     * adopting shard's acquire sees the slot's contents). */
    atomic_uint listeners_published;
    int stop_fd; /* eventfd: readable when the daemon stops */
    atomic_bool ready;
    rb_admin admin;          /* the HTTP routes, server/admin.c */
    rb_auth *auth;           /* the credential verifier (immutable), server/auth.c */
    rb_auth_pool *auth_pool; /* password checks off the shards, server/auth_pool.c */
    rb_identity anonymous;   /* shared by connections under auth.mode = "none" */
    atomic_uint_fast64_t next_conn_id;
    struct rb_reload_gen *reload_gen; /* the newest reloaded config; NULL = cfg (main thread) */
    /* What /v1/varz shows: the newest reload's config (NULL: cfg). The main
     * thread stores it (release) before handing that config to the shards,
     * so a reader on a shard is done with the previous one before the
     * shard switches and the previous one can be freed. */
    _Atomic(const rb_config *) cfg_shown;
    rb_auth *reload_auth; /* the newest reloaded verifier; NULL = auth (main thread) */
    /* Per-address limits of tcp/tls/ws/wss connections (server/acceptor.c):
     * the table, behind its lock (shards admit and release), and the
     * connections counted against max_connections_total. */
    pthread_mutex_t addr_lock;
    rb_addr_table *addrs; /* NULL until the listener shard's acceptor init */
    uint64_t addr_logged_ms;
    uint64_t addr_unlogged;
    atomic_uint conns_counted;
    /* Keys stateless reset and Retry tokens of every shard's QUIC engines. */
    uint8_t quic_secret[32]; /* RB_QUIC_SECRET_BYTES (transports/quic.h) */
};

/* server/session.c: may the connection's identity do action on topic
 * (policy checks at publish intake and Mutate validation), and its name
 * for log lines. */
bool rb_conn_may(const rb_conn *c, rb_policy_action action, rb_bytes topic);
/* A reload changed the verifier (sh->auth): every signed-in user's
 * permissions are looked up again; a user no longer configured is closed
 * with unauthorized, topics it may no longer read leave its stream. */
void rb_session_reauth_all(rb_shard *sh);
/* The RB_REMOTE_AUTH handler: finishes HELLOs whose password was checked. */
void rb_session_auth_done(rb_shard *sh, uint64_t payload);
const char *rb_conn_who(const rb_conn *c);

/* server/admit.c: the listener's, total and per-address connection
 * limits. rb_addr_check checks fd's peer (RB_ADMIT_OK: counted, *key set;
 * the caller then opens the connection and calls rb_conn_addr_counted);
 * a refusal is logged (at most once a second, with how many since). */
rb_admit rb_addr_check(rb_shard *sh, int fd, const rb_listener *l, rb_addr_key *key);
void rb_conn_addr_counted(rb_conn *c, const rb_listener *l, const rb_addr_key *key);
void rb_conn_addr_release(rb_conn *c);
void rb_conn_addr_failure(rb_conn *c);

/* server/shard.c: the thread and its turn */
int rb_server_start(rb_server *srv, rb_err *err);
void rb_server_stop(rb_server *srv);
void rb_server_join(rb_server *srv);
uint32_t rb_topic_owner_shard(const rb_server *srv, const uint8_t *topic, size_t len);
/* The shard holding the replica link to cluster peer index i (the peers
 * are spread over the shards; server/cluster.c). */
uint32_t rb_peer_link_shard(const rb_server *srv, uint32_t peer_index);
/* The next turn waits at most a millisecond: a subsystem retries work that
 * waits for memory or queue slots other shards free without waking it. */
void rb_shard_poll_soon(rb_shard *sh);
/* Registers the handler of MSG_RING data of `kind` on this shard. */
void rb_shard_on_remote(rb_shard *sh, uint32_t kind, rb_remote_fn *fn);

/* A subsystem's per-shard hooks, run by the shard in the order of
 * rb_shard_subsystems (deinit in reverse). Every hook may be NULL.
 *   init:   on the shard thread before its first turn; a failure stops the
 *           daemon's start (the hooks already run are undone by deinit);
 *   start:  once every shard has finished init;
 *   flush:  at the end of every turn, before envelopes are sent;
 *   stop:   when the daemon stops (grace_over false), and again when the
 *           close grace has run out (grace_over true: drop what is left);
 *   idle:   while stopping: true when nothing of it is in flight, so the
 *           thread may end;
 *   thread_exit: the last call on the shard's own thread, after its
 *           turns: per-thread library state is released here;
 *   deinit: after every shard thread has ended (on the joining thread). */
typedef struct rb_subsystem {
    const char *name;
    int (*init)(rb_shard *sh, rb_err *err);
    void (*start)(rb_shard *sh);
    void (*flush)(rb_shard *sh);
    void (*stop)(rb_shard *sh, bool grace_over);
    bool (*idle)(rb_shard *sh);
    void (*thread_exit)(rb_shard *sh);
    void (*deinit)(rb_shard *sh);
    /* The most bytes this subsystem's state of one shard may take under
     * cfg (its pools at their bounds): the terms of docs/OPERATIONS.md's
     * memory formula. */
    uint64_t (*memory_bytes)(const rb_config *cfg);
} rb_subsystem;

/* server/subsystems.c: the subsystems every shard runs, in order; main
 * hands them to the server (rb_server.subsystems) before rb_server_start. */
extern const rb_subsystem *const rb_shard_subsystems[];
extern const uint32_t rb_shard_subsystem_count;

/* The most bytes one shard may take under cfg: its loop, its mailbox and
 * every subsystem's memory_bytes (docs/OPERATIONS.md "Memory"). */
uint64_t rb_shard_memory_bytes(const rb_server *srv);

/* server/session.c: the client protocol of a connection over its link */
rb_conn *rb_conn_lookup(rb_shard *sh, uint32_t index, uint32_t gen);
/* Space for a frame of len <= RB_CHUNK_BYTES bytes at the tail of the send
 * queue, or NULL when refused (the caller closes with resource_exhausted);
 * rb_conn_commit queues the len bytes written there. */
uint8_t *rb_conn_reserve(rb_conn *c, size_t len);
void rb_conn_commit(rb_conn *c, size_t len);
/* Queues one frame (copied) whole. Returns 0, or RB_ELIMIT with nothing
 * queued (over the connection's quota or the shard's budget): every caller
 * closes with resource_exhausted. */
int rb_conn_append(rb_conn *c, const uint8_t *p, size_t len);
/* Queues head_len bytes at head and len bytes at p (both copied) as one
 * frame. Returns 0, or RB_ELIMIT with nothing queued. */
int rb_conn_append_frame(rb_conn *c, const uint8_t *head, size_t head_len, const uint8_t *p,
                         size_t len);
/* Queues a frame whose head (head_len bytes, copied) is followed by len
 * bytes at p inside block b (referenced, not copied). Returns 0, or
 * RB_ELIMIT with nothing queued. */
int rb_conn_append_frame_ref(rb_conn *c, const uint8_t *head, size_t head_len, rb_block *b,
                             const uint8_t *p, size_t len);
/* Queues ERROR{corr_id, code, message}. When the send queue refuses it,
 * the connection is closed with resource_exhausted instead (the error is
 * never silently lost) and RB_ELIMIT is returned. */
int rb_conn_send_error(rb_conn *c, uint64_t corr_id, uint16_t code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Queues CLOSE{status, message} (in the send queue's closing reserve),
 * stops reading and asks the link to shut down once everything queued is
 * written; the close grace bounds it. */
void rb_conn_close(rb_conn *c, uint16_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Drops the send queue and closes now (without flushing); the slot is
 * freed once the link released everything. */
void rb_conn_abort(rb_conn *c);
/* True when a frame of extra bytes would take the send queue over
 * send_queue_bytes or be refused by its quota. */
bool rb_conn_send_full(const rb_conn *c, uint64_t extra);
/* Hands every client frame of `kind` on this shard to fn (once per kind,
 * from a subsystem's init hook). */
void rb_session_take_frames(rb_shard *sh, rb_frame_kind kind, rb_client_frame_fn *fn);
/* For a frame handler: the frame it was given cannot be taken now (no
 * shard envelope, too many publishes awaiting their ack). The session
 * keeps it, stops feeding frames and asks its link to stop reading (TCP
 * flow control then pushes back on the peer); rb_session_resume hands the
 * same frame to the handler again. The handler must have changed nothing
 * for this frame. */
void rb_session_hold(rb_conn *c);
/* Feeds a held session again: the held frame first, then the bytes
 * behind it, then the link reads again. Returns false when the held frame
 * was held again at once (nothing was taken). Only while c->held. */
bool rb_session_resume(rb_conn *c);
/* Chunks of the shard's chunk pool that a hold chain of `bytes` takes. */
uint64_t rb_session_hold_chunks(uint64_t bytes);
/* Registers fn to run for every session of sh that closes (a subsystem's
 * init hook calls it), so the session names no subsystem but the stream. */
void rb_session_on_closed(rb_shard *sh, rb_conn_closed_fn *fn);
/* End of turn: every session that queued bytes gets a start_send. */
void rb_conn_flush_all(rb_shard *sh);
/* Daemon stop (the lame-duck drain): every open session is sent GOING_AWAY
 * with a jittered reconnect hint, and CLOSE going_away as soon as it has no
 * wave, publish or call in flight, at the latest after shutdown_grace_ms; a
 * session still waiting for HELLO is closed (or cut, on a link that has
 * nothing to answer). */
void rb_conn_shutdown_all(rb_shard *sh);
int rb_conn_table_init(rb_shard *sh, rb_err *err);
void rb_conn_table_deinit(rb_shard *sh);
/* A half-closed session sends CLOSE ok once its waves, acks and send
 * queue are done. */
void rb_conn_maybe_finish_drain(rb_conn *c);

/* server/acceptor.c: listeners and fd hand-over */
extern const rb_subsystem rb_acceptor_subsystem;
/* On the acceptor shard, at a reload: listener slots [sh->listener_count,
 * listener_count) start accepting, and each slot of retired[] stops (its
 * socket closes once the accept is cancelled; its connections go on). */
void rb_acceptor_reload(rb_shard *sh, uint32_t listener_count, const uint32_t *retired,
                        uint32_t retired_count);

/* server/reload.c: a reload's configuration, handed to every shard. */
typedef struct rb_reload_gen rb_reload_gen;
/* The RB_REMOTE_RELOAD handler: the shard switches to the payload's config. */
void rb_reload_on_shard(rb_shard *sh, uint64_t payload);
/* server/quic_ep.c: the quic listeners' UDP endpoints */
extern const rb_subsystem rb_quic_subsystem;

/* server/owner.c: topic owners (batches, appends, fan-out, interest) */
extern const rb_subsystem rb_owner_subsystem;

/* server/cluster.c: the replica plane between nodes (DESIGN §2) */
extern const rb_subsystem rb_cluster_subsystem;
/* The cluster's state as JSON, the GET /v1/cluster section (server/admin.h;
 * any thread). Returns the length written (cap when cut short). */
size_t rb_cluster_json(const rb_server *srv, char *out, size_t cap);
/* GET /readyz's check (rb_admin_ready_fn): false, with the reason, while
 * this node and the peers its replica links reach now are fewer than half
 * the cluster (a node cut off from it; the survivors of a dead node stay
 * ready); true without a cluster. Any thread. */
bool rb_cluster_ready(const rb_server *srv, char *why, size_t cap);
/* server/owner.c: the owners' part of the cluster. What an owner tells the
 * replica plane, which attaches it at its init (after the owner's):
 * local_interest: t gained its first (on) or lost its last local
 * subscriber, and every shard holding links must announce it to the peers;
 * false when no envelope could be had (the owner tries again next turn). */
typedef struct rb_owner_peers {
    bool (*local_interest)(rb_shard *sh, const char *topic, uint8_t topic_len, bool on);
} rb_owner_peers;
void rb_owner_attach_peers(rb_shard *sh, const rb_owner_peers *peers);
/* Every topic with local subscribers re-reads its head (the repair tick and
 * link changes). */
void rb_owner_repair_all(rb_shard *sh);

/* server/rpc.c: request/reply between clients (docs/PROTOCOL.md section 12) */
extern const rb_subsystem rb_rpc_subsystem;

/* server/stream.c: subscription streams */
extern const rb_subsystem rb_stream_subsystem;
void rb_stream_on_mutate(rb_conn *c, const rb_frame *f);
/* The store epoch this shard's streams check cursors against (STARTED). */
uint64_t rb_stream_epoch(const rb_shard *sh);
void rb_stream_conn_closed(rb_conn *c);
/* After its permissions changed: every topic of c's stream it may no
 * longer subscribe to ends with TOPIC_ERROR forbidden and leaves it. */
void rb_stream_revoke(rb_conn *c);
bool rb_stream_waves_done(rb_conn *c);
void rb_stream_on_send_drained(rb_conn *c);
/* For /v1/connz (server/connz.c): the topics on c's stream, and their
 * names, space-separated, into out (cap bytes, not NUL-terminated) as far
 * as whole names fit: the length written, *more when some did not. */
uint32_t rb_stream_topic_count(const rb_conn *c);
size_t rb_stream_topic_names(const rb_conn *c, char *out, size_t cap, bool *more);

#endif
