/* Introspection: GET /v1/connz and GET /v1/topicz (server/admin.h routes
 * them).
 *
 * Each shard keeps one rb_connz_slot per connection slot, allocated with
 * its connection table (server/session.c) and never freed while the daemon
 * runs, so any thread may read any slot. Only the shard's own thread
 * writes a slot, with atomic stores of release order (plain moves on x86,
 * no read-modify-write): the counters alone, the text fields (peer,
 * identity, client name, topic names) and the state inside a seqlock (seq
 * odd while they are rewritten). A reader takes no lock and never waits on
 * a shard: it copies a slot with acquire loads and retries at most
 * RB_CONNZ_READ_TRIES_MAX times when the slot changed under it (a
 * connection that churns that fast is left out and counted in "skipped").
 *
 * What a slot says is as of the connection's last frame or send pass (its
 * state, send-queue bytes and topic count are refreshed there); the list is
 * not one instant across connections. The topic names are the first that
 * fit RB_CONNZ_TOPICS_TEXT_BYTES_MAX, refreshed after every MUTATE. */
#ifndef RB_SERVER_CONNZ_H
#define RB_SERVER_CONNZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "transports/http.h"

/* A page of /v1/connz: `limit` defaults to this, and larger asks are
 * clamped to RB_CONNZ_LIMIT_MAX (the page fits RB_ADMIN_BODY_BYTES_MAX). */
#define RB_CONNZ_LIMIT_DEFAULT 64
#define RB_CONNZ_LIMIT_MAX     128
/* Copies of one slot a reader tries before it leaves the slot out. */
#define RB_CONNZ_READ_TRIES_MAX 8
/* Text kept per connection: the peer address, the identity (token sub or
 * user name, cut to fit), the HELLO's client name, and the topic names
 * (space-separated, topics have no spaces). */
#define RB_CONNZ_PEER_BYTES_MAX        64
#define RB_CONNZ_WHO_BYTES_MAX         64
#define RB_CONNZ_NAME_BYTES_MAX        64
#define RB_CONNZ_TOPICS_TEXT_BYTES_MAX 256
/* A query string longer than this is refused with 400. */
#define RB_CONNZ_QUERY_BYTES_MAX 512

#define RB_CONNZ_TEXT_BYTES                                                                        \
    (RB_CONNZ_PEER_BYTES_MAX + RB_CONNZ_WHO_BYTES_MAX + RB_CONNZ_NAME_BYTES_MAX +                  \
     RB_CONNZ_TOPICS_TEXT_BYTES_MAX)

typedef struct rb_connz_slot {
    uint64_t seq;         /* seqlock of the fields below but the counters */
    uint64_t id;          /* the connection's id; 0 while the slot is free */
    uint64_t opened_ms;   /* rb_clock_ms() when it was accepted */
    uint64_t transport;   /* rb_transport_kind */
    uint64_t state;       /* rb_conn_state as of the last frame or send pass */
    uint64_t topics_more; /* 1 when some topic names did not fit the text */
    /* counters, written alone */
    uint64_t bytes_in;      /* frame bytes received */
    uint64_t bytes_out;     /* frame bytes queued to the client */
    uint64_t frames_in;     /* frames decoded */
    uint64_t frames_out;    /* frames queued */
    uint64_t msgs_in;       /* PUBLISH frames received */
    uint64_t msgs_out;      /* messages queued in MESSAGES frames (history and live) */
    uint64_t pending_bytes; /* send-queue bytes as of the last send pass */
    uint64_t topics;        /* topics on its stream */
    uint64_t text[RB_CONNZ_TEXT_BYTES / 8];
} rb_connz_slot;

_Static_assert(RB_CONNZ_TEXT_BYTES % 8 == 0, "connz text is whole words");

/* GET /v1/topicz: each owner shard keeps the first RB_TOPICZ_SLOTS_MAX
 * topics it owns in slots like the connections' (the rest are counted as
 * untracked); a slot's name never changes once published, its head and
 * publish counters are rewritten inside its seqlock at every commit. */
#define RB_TOPICZ_SLOTS_MAX     4096
#define RB_TOPICZ_LIMIT_DEFAULT 64
#define RB_TOPICZ_LIMIT_MAX     256
/* The publish rate is measured over windows of at least this long. */
#define RB_TOPICZ_RATE_WINDOW_MS 1000

typedef struct rb_topicz_slot {
    uint64_t seq;
    uint64_t head;            /* the topic's head seq as its owner knows it */
    uint64_t publishes;       /* messages this node's owner stored */
    uint64_t window_start_ms; /* the current rate window */
    uint64_t window_count;    /* messages stored in it */
    uint64_t last_rate_milli; /* messages per 1000 s of the last full window */
    uint64_t name_len;        /* set once, before the slot is published */
    char name[256];
} rb_topicz_slot;

typedef struct rb_topicz {
    rb_topicz_slot *slots; /* [RB_TOPICZ_SLOTS_MAX] */
    uint64_t count;        /* slots published (release) */
    uint64_t untracked;    /* owned topics past the table */
} rb_topicz;

struct rb_conn;
struct rb_server;
struct rb_shard;
struct rb_subsystem;

/* The per-shard topic table (server/subsystems.c runs it before the owner). */
extern const struct rb_subsystem rb_topicz_subsystem;

/* The owner (server/owner.c), on its shard: topic name's head is head now
 * and stored messages were just committed. *slot is the owner's handle
 * for the topic: 0 the first time (a slot is taken, or the topic counted
 * as untracked). */
void rb_topicz_head(struct rb_shard *sh, uint32_t *slot, const char *name, size_t name_len,
                    uint64_t head, uint64_t stored);

/* Answers GET /v1/topicz?query like rb_connz_answer. */
int rb_topicz_answer(const struct rb_server *srv, rb_http_span query, char *out, size_t cap,
                     size_t *len);

/* Hooks for the session (server/session.c), all on the connection's own
 * shard thread: a connection was accepted (peer known), its HELLO named a
 * client and signed in, a frame came in (bytes or a decoded frame), a
 * frame was queued, a send pass or MUTATE happened (refresh state, queue
 * bytes and topics), messages went out (server/stream.c), it was freed. */
void rb_connz_open(struct rb_conn *c);
/* who: the identity it signed in as (rb_conn_who). */
void rb_connz_hello(struct rb_conn *c, const char *who, const uint8_t *name, size_t name_len);
void rb_connz_bytes_in(struct rb_conn *c, size_t len);
/* delta -1 takes back a frame that its handler held (decoded again). */
void rb_connz_frame_in(struct rb_conn *c, uint8_t kind, int delta);
void rb_connz_frame_out(struct rb_conn *c);
/* The session passes what its stream holds (connz calls neither, so the
 * session keeps the one two-file cycle, with its stream): returns true when
 * the topic names must be written again (topic_names, or the count moved),
 * which rb_connz_topic_names does. */
bool rb_connz_sync(struct rb_conn *c, uint32_t topic_count, bool topic_names);
void rb_connz_topic_names(struct rb_conn *c, const char *text, size_t len, bool more);
void rb_connz_msgs_out(struct rb_conn *c, uint32_t count);
void rb_connz_free(struct rb_conn *c);

/* Answers GET /v1/connz?query into out (cap bytes): returns the HTTP
 * status (200, or 400 with a one-line reason in out) and sets *len. */
int rb_connz_answer(const struct rb_server *srv, rb_http_span query, char *out, size_t cap,
                    size_t *len);

#endif
