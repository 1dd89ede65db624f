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
#include "storage/storage.h"
#include "transports/layer.h"
#include "transports/tls.h"

typedef struct rb_server rb_server;
typedef struct rb_shard rb_shard;
typedef struct rb_conn rb_conn;
typedef struct rb_stream rb_stream;
typedef struct rb_owner rb_owner;
typedef struct rb_subs rb_subs;
typedef struct rb_link rb_link;
typedef struct rb_link_tcp rb_link_tcp;

/* Segments of a connection's send queue and of a stream's pending buffer:
 * either an owned chunk (data is the chunk) or a reference to a shared
 * block (fan-out without copying). */
typedef struct rb_block rb_block;
typedef struct rb_seg rb_seg;

/* A position in a byte stream of frames: bytes left of the current frame
 * (0 at a boundary), and the part of its u32 size field seen so far. */
typedef struct rb_frame_cursor {
    uint32_t left;
    uint8_t size_have;
    uint8_t size[4];
} rb_frame_cursor;
struct rb_seg {
    rb_seg *next;
    uint8_t *data;
    uint32_t len; /* bytes filled */
    uint32_t off; /* bytes already sent */
    uint32_t cap;
    rb_block *ref;  /* shared block this segment points into, or NULL */
    uint8_t *chunk; /* owned chunk from the shard's chunk pool, or NULL */
};

/* An immutable, reference-counted block of encoded MESSAGES items of one
 * topic's committed batch, shared by every shard and stream it fans out to.
 * It goes back to its home pool when the last reference drops. */
struct rb_block {
    atomic_uint refs;
    rb_pool *home;
    uint64_t first_seq;
    uint64_t last_seq;
    uint32_t count;
    uint32_t bytes; /* item bytes used in data */
    uint32_t cap;
    uint8_t topic_len;
    char topic[RB_TOPIC_BYTES_MAX + 1];
    uint8_t *data; /* points at the bytes after this header */
};

void rb_block_ref(rb_block *b);
void rb_block_unref(rb_block *b);

/* Kinds of messages sent to a shard through MSG_RING data. */
enum {
    RB_REMOTE_NEW_CONN = 1, /* payload: listener index << 32 | fd */
    RB_REMOTE_QUEUE = 2,    /* payload: producing shard id */
};
#define RB_REMOTE_KIND_SHIFT     56
#define RB_REMOTE(kind, payload) (((uint64_t)(kind) << RB_REMOTE_KIND_SHIFT) | (uint64_t)(payload))

/* A message between shards: a pooled envelope with a kind and a body the
 * receiver interprets. Kinds below 100 go to server/owner.c, the rest to
 * server/stream.c. Records are encoded back to back in data. */
enum {
    RB_XK_PUBLISH = 1,  /* records: publishes for topics the receiver owns */
    RB_XK_ACK = 2,      /* records: publish acks and errors for the receiver's conns */
    RB_XK_INTEREST = 3, /* records: subscribe, unsubscribe, head queries */
    RB_XK_HEAD = 101,   /* records: head replies to interest records */
    RB_XK_BLOCK = 102,  /* ptr: a committed block to fan out locally */
};

typedef struct rb_xmsg rb_xmsg;
struct rb_xmsg {
    uint16_t kind;
    uint16_t from_shard;
    uint32_t count;   /* records in data */
    uint32_t pending; /* records not yet finished by the receiver */
    rb_pool *home;
    rb_block *ptr;  /* RB_XK_BLOCK's block, or the large buffer behind data */
    uint32_t bytes; /* used bytes of data */
    uint32_t cap;
    uint8_t *data; /* encoded records, cap bytes */
};

typedef enum rb_conn_state {
    RB_CONN_FREE = 0,
    RB_CONN_HANDSHAKE, /* accepted, waiting for HELLO */
    RB_CONN_OPEN,
    RB_CONN_DRAINING, /* client half-closed: finishing waves, then CLOSE ok */
    RB_CONN_CLOSING,  /* flushing the last frames within the close grace */
    RB_CONN_CLOSED,   /* fd closed; waiting for the last completions */
} rb_conn_state;

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
    rb_timer timer;
    uint64_t last_tx_ms;
    uint64_t ping_sent_ms;
    uint64_t ping_nonce;
    uint64_t partial_since_ms; /* 0 when no frame is partly received */
    uint64_t close_deadline_ms;
    /* receive reassembly */
    uint8_t hdr_bytes[RB_FRAME_HEADER_BYTES];
    uint32_t hdr_len;
    uint8_t *rx_buf; /* a frame straddling receive buffers */
    uint32_t rx_len;
    uint32_t rx_need;
    /* send queue: frames until the link releases them */
    rb_seg *tx_head;
    rb_seg *tx_tail;
    uint64_t tx_bytes;
    /* Where the frame at the queue head ends, so that a reap can drop the
     * frames not started and put its CLOSE right behind the one the link
     * is writing. */
    rb_frame_cursor tx_frame;
    bool tx_trimmed; /* the unstarted frames were dropped for the closing frames */
    rb_conn *flush_next;
    rb_conn *free_next;
    /* publishing and the stream */
    uint32_t publishes_in_flight;
    rb_stream *stream;
};

typedef struct rb_listener {
    rb_listener_config cfg;
    int fd;
    uint32_t index; /* in rb_server.listeners */
    rb_op accept_op;
    bool armed;
    rb_shard *shard;
    rb_tls_server *tls; /* tls and wss: certificate context (owned), else NULL */
} rb_listener;

struct rb_shard {
    rb_server *server;
    uint32_t id;
    pthread_t thread;
    rb_loop *loop;
    atomic_int ring_fd;
    atomic_uint conn_count;
    atomic_bool started;
    int start_rc;
    rb_err start_err;
    /* connections */
    rb_conn *conns;
    rb_conn *conn_free;
    uint32_t conn_max;
    rb_conn *flush_list;
    rb_link_tcp *tcp_links; /* [conn_max], server/link_tcp.c */
    /* memory */
    rb_pool chunk_pool;
    rb_pool seg_pool;
    rb_pool iov_pool;
    rb_pool rxbig_pool;
    rb_pool xmsg_pool;
    rb_pool block_pool;
    /* queues from every other shard (consumer: this shard) */
    rb_spsc *inbox;        /* [shard_count], inbox[i] is produced by shard i */
    uint8_t *wake_pending; /* [shard_count] shards to wake at the end of the turn */
    rb_xmsg **outbox;      /* [shard_count] records being filled for each shard */
    bool self_pending;     /* this shard queued envelopes to itself this turn */
    /* storage */
    rb_storage_shard *storage;
    /* topic owners and local subscriptions */
    rb_owner *owner;
    rb_subs *subs;
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
    const rb_storage_ops *storage_ops;
    rb_storage *storage;
    rb_listener listeners[RB_LISTENERS_MAX];
    uint32_t listener_count;
    int stop_fd; /* eventfd: readable when the daemon stops */
    atomic_bool ready;
    atomic_uint_fast64_t next_conn_id;
};

/* In-process record fields (native byte order; records never leave the
 * process). */
static inline uint8_t *rb_rec_put(uint8_t *p, const void *v, size_t n)
{
    if (n == 0) {
        return p;
    }
    memcpy(p, v, n);
    return p + n;
}

static inline const uint8_t *rb_rec_get(const uint8_t *p, void *v, size_t n)
{
    memcpy(v, p, n);
    return p + n;
}

/* server/shard.c */
int rb_server_start(rb_server *srv, rb_err *err);
void rb_server_stop(rb_server *srv);
void rb_server_join(rb_server *srv);
uint32_t rb_topic_owner_shard(const rb_server *srv, const uint8_t *topic, size_t len);
/* Queues an envelope for shard `to` (sent at the end of the turn). Returns
 * 0 or RB_ELIMIT when the queue to that shard is full. */
int rb_shard_send(rb_shard *sh, uint32_t to, rb_xmsg *m);
rb_xmsg *rb_shard_xmsg_get(rb_shard *sh);
/* Returns an envelope (and the block it holds) to its home pool. */
void rb_xmsg_put(rb_xmsg *m);
rb_block *rb_shard_block_get(rb_shard *sh);
/* Space for a record of len bytes in the envelope of `kind` being filled
 * for shard `to`; an envelope of another kind or without room is sent
 * first, so records reach `to` in the order they were written. NULL when
 * no envelope can be had (the caller refuses the work). */
uint8_t *rb_outbox_reserve(rb_shard *sh, uint32_t to, uint16_t kind, size_t len);
void rb_outbox_commit(rb_shard *sh, uint32_t to, size_t len);
/* Sends every envelope being filled (end of turn). */
void rb_outbox_flush_all(rb_shard *sh);

/* server/session.c: the client protocol of a connection over its link */
rb_conn *rb_conn_lookup(rb_shard *sh, uint32_t index, uint32_t gen);
/* Appends a frame encoded by `enc` into the send queue. Returns 0 or
 * RB_ELIMIT when the queue is over its bound (the caller closes). */
uint8_t *rb_conn_reserve(rb_conn *c, size_t len);
void rb_conn_commit(rb_conn *c, size_t len);
int rb_conn_append(rb_conn *c, const uint8_t *p, size_t len);
/* Queues a frame whose head (head_len bytes, copied) is followed by len
 * bytes at p inside block b (referenced, not copied). Returns 0, or
 * RB_ELIMIT with nothing queued. */
int rb_conn_append_frame_ref(rb_conn *c, const uint8_t *head, size_t head_len, rb_block *b,
                             const uint8_t *p, size_t len);
int rb_conn_send_error(rb_conn *c, uint64_t corr_id, uint16_t code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Sends CLOSE{status, message} (or ERROR first when error_code != 0),
 * stops reading and closes after the flush or the close grace. */
void rb_conn_close(rb_conn *c, uint16_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void rb_conn_abort(rb_conn *c);
bool rb_conn_send_full(const rb_conn *c, uint64_t extra);
void rb_conn_flush_all(rb_shard *sh);
void rb_conn_shutdown_all(rb_shard *sh);
int rb_conn_table_init(rb_shard *sh, rb_err *err);
void rb_conn_table_deinit(rb_shard *sh);
/* Drops the send queue and closes now (without flushing). */
void rb_conn_maybe_finish_drain(rb_conn *c);

/* server/owner.c: topic owners (publishing, group commit, fan-out) */
int rb_owner_init(rb_shard *sh, rb_err *err);
void rb_owner_deinit(rb_shard *sh);
void rb_owner_on_publish(rb_conn *c, const rb_frame *f);
void rb_owner_on_xmsg(rb_shard *sh, rb_xmsg *m);
void rb_owner_flush(rb_shard *sh);
bool rb_owner_idle(rb_shard *sh);
/* Interest ops a stream's shard sends to a topic's owner: SUB when the
 * shard's first local subscriber of the topic appears (the owner starts
 * fanning out to it and replies with its head), UNSUB when the last one
 * goes, QUERY for a head reply alone. Replies come back as RB_XK_HEAD
 * records naming the connection and token. */
enum {
    RB_INTEREST_SUB = 1,
    RB_INTEREST_UNSUB = 2,
    RB_INTEREST_QUERY = 3
};
int rb_owner_interest(rb_shard *sh, uint8_t op, const rb_conn *c, uint64_t token,
                      const uint8_t *topic, uint8_t topic_len);

/* server/stream.c: subscription streams */
int rb_stream_shard_init(rb_shard *sh, rb_err *err);
void rb_stream_shard_deinit(rb_shard *sh);
void rb_stream_on_mutate(rb_conn *c, const rb_frame *f);
void rb_stream_on_xmsg(rb_shard *sh, rb_xmsg *m);
void rb_stream_conn_closed(rb_conn *c);
bool rb_stream_waves_done(rb_conn *c);
/* True when no catch-up read is in flight on the shard. */
bool rb_stream_idle(rb_shard *sh);
void rb_stream_on_send_drained(rb_conn *c);

#endif
