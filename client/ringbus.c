/* libringbus connections: the handshake, the bounded send buffer (one write
 * per flush), the receive buffer decoded with the shared frame codec under
 * the server's max_frame_bytes, automatic PONGs, publish correlation and
 * the event queue. Byte transport is left to the ops tables of transport.c;
 * URL syntax to url.c. */
#include "client/ringbus.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/conn_internal.h"
#include "client/transport.h"
#include "client/url.h"
#include "common/assert.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/limits.h"

#ifndef RB_VERSION
#error "RB_VERSION comes from the Makefile (the VERSION file)"
#endif

static_assert((int)RINGBUS_ESYS == (int)RB_ESYS, "public codes mirror rb_err codes");
static_assert((int)RINGBUS_EINVAL == (int)RB_EINVAL, "public codes mirror rb_err codes");
static_assert((int)RINGBUS_ELIMIT == (int)RB_ELIMIT, "public codes mirror rb_err codes");
static_assert((int)RINGBUS_EPROTO == (int)RB_EPROTO, "public codes mirror rb_err codes");
static_assert((int)RINGBUS_ECLOSED == (int)RB_ECLOSED, "public codes mirror rb_err codes");
static_assert((int)RINGBUS_ENOMEM == (int)RB_ENOMEM, "public codes mirror rb_err codes");
static_assert((int)RINGBUS_EUNSUPPORTED == (int)RB_EUNSUPPORTED,
              "public codes mirror rb_err codes");
static_assert((int)RINGBUS_EAGAIN == (int)RB_EAGAIN, "public codes mirror rb_err codes");
static_assert((int)RINGBUS_ETIMEDOUT == (int)RB_ETIMEDOUT, "public codes mirror rb_err codes");
static_assert((int)RINGBUS_ESERVER == (int)RB_CLIENT_ESERVER, "public codes mirror rb_err codes");
static_assert((int)RINGBUS_WIRE_BAD_FRAME == (int)RB_WIRE_BAD_FRAME, "wire codes mirror frame.h");
static_assert((int)RINGBUS_WIRE_UNAVAILABLE == (int)RB_WIRE_UNAVAILABLE,
              "wire codes mirror frame.h");
static_assert((int)RINGBUS_WIRE_INVALID_TOPIC == (int)RB_WIRE_INVALID_TOPIC,
              "wire codes mirror frame.h");
static_assert((int)RINGBUS_WIRE_OUT_OF_RANGE == (int)RB_WIRE_OUT_OF_RANGE,
              "wire codes mirror frame.h");
static_assert((int)RINGBUS_WIRE_EPOCH_MISMATCH == (int)RB_WIRE_EPOCH_MISMATCH,
              "wire codes mirror frame.h");
static_assert((int)RINGBUS_WIRE_CURSOR_AHEAD == (int)RB_WIRE_CURSOR_AHEAD,
              "wire codes mirror frame.h");
static_assert((int)RINGBUS_WIRE_RECIPIENT_NOT_FOUND == (int)RB_WIRE_RECIPIENT_NOT_FOUND,
              "wire codes mirror frame.h");
static_assert((int)RINGBUS_WIRE_RESPONDER_BUSY == (int)RB_WIRE_RESPONDER_BUSY,
              "wire codes mirror frame.h");
static_assert((int)RINGBUS_WIRE_DEDUP_FULL == (int)RB_WIRE_DEDUP_FULL, "wire codes mirror frame.h");
static_assert((int)RINGBUS_ERROR_MESSAGE_BYTES == (int)RB_ERR_MSG_BYTES_MAX, "messages fit");

/* Defaults and caps of ringbus_options (documented in ringbus.h). */
#define CONNECT_MS_DEFAULT        10000
#define REQUEST_MS_DEFAULT        30000
#define WINDOW_DEFAULT            4096u
#define WINDOW_MAX                (1u << 20)
#define SEND_BYTES_DEFAULT        ((size_t)8 << 20)
#define SEND_BYTES_MIN            ((size_t)64 << 10)
#define EVENT_QUEUE_BYTES_DEFAULT ((size_t)64 << 20)
/* The receive buffer starts here and grows to the largest frame seen. */
#define RECV_BYTES_INITIAL ((size_t)64 << 10)
/* Reads per ringbus_process, so that a firehose cannot keep it from
 * returning to the caller's loop. */
#define READS_PER_PROCESS_MAX 16
/* Before STARTED the server's limit is unknown; its handshake reply is
 * small, so the default limit bounds what a bad server can make us buffer. */
#define HANDSHAKE_FRAME_BYTES_MAX RB_FRAME_BYTES_DEFAULT

typedef struct pending {
    uint64_t corr_id;
    ringbus_publish_cb cb;
    void *ctx;
    bool used;
} pending;

/* A received event frame kept for ringbus_next_event. */
typedef struct evnode {
    struct evnode *next;
    rb_frame frame;     /* views into data */
    rb_frame_iter iter; /* MESSAGES items not yet returned */
    uint32_t events_left;
    size_t len;
    uint8_t data[];
} evnode;

typedef enum conn_state {
    CONN_OPEN = 0,
    CONN_HALF_CLOSED = 1, /* our CLOSE is queued; waiting for the server's */
    CONN_DEAD = 2,        /* closed; the CLOSED event has been produced */
} conn_state;

struct ringbus_conn {
    rb_client_transport tp;
    char *url_text; /* owned */
    conn_state state;
    bool in_callback;
    bool io_failed; /* a write failed outside processing; process closes */
    char io_fail_msg[RB_ERR_MSG_BYTES_MAX];

    uint32_t keepalive_ms;
    uint32_t max_frame_bytes;
    uint64_t capabilities;
    uint64_t epoch; /* from STARTED; 0 when the server announced none */
    char server_id[RB_SERVER_ID_BYTES_MAX + 1];

    int request_timeout_ms;
    uint32_t window;
    size_t tx_max;
    size_t evq_max;
    ringbus_event_cb on_event;
    void *event_ctx;

    uint8_t *tx; /* owned; bytes [tx_off, tx_len) wait to be written */
    size_t tx_off, tx_len, tx_cap;
    uint8_t *rx; /* owned; bytes [rx_off, rx_len) wait to be decoded */
    size_t rx_off, rx_len, rx_cap;
    bool rx_stalled; /* the event queue is full */

    pending *slots; /* owned; indexed by corr_id & slot_mask */
    uint32_t slot_mask;
    uint32_t inflight_count;
    uint64_t next_corr;

    uint64_t ping_nonce;
    bool pong_seen;
    int64_t pong_ns;
    int64_t last_rx_ns; /* when the server last sent bytes (the session's watchdog) */
    bool going_away;    /* GOING_AWAY arrived */
    uint32_t going_away_hint_ms;

    uint64_t auth_corr; /* the AUTH in flight (ringbus_refresh_token), 0 = none */
    bool auth_answered;
    uint16_t auth_code; /* 0 = accepted, else the ERROR's code */
    char auth_msg[RB_ERR_MSG_BYTES_MAX];

    evnode *evq_head, *evq_tail; /* owned */
    size_t evq_bytes;
    char *scratch; /* owned; strings of the current event */
    size_t scratch_cap;
    char *ack_scratch; /* owned; strings of the current publish result */
    size_t ack_scratch_cap;

    /* RPC (docs/PROTOCOL.md section 12) */
    char client_id[RB_RPC_NAME_BYTES_MAX + 1]; /* from STARTED; "" when none */
    uint64_t next_call;
    uint64_t reg_corr; /* the REGISTER/UNREGISTER in flight, 0 = none */
    bool reg_answered;
    uint16_t reg_code;
    char reg_msg[RB_ERR_MSG_BYTES_MAX];
    uint64_t sync_corr; /* the call ringbus_call_sync waits for, 0 = none */
    bool sync_answered;
    uint16_t sync_code;
    char sync_msg[RB_ERR_MSG_BYTES_MAX];
    uint8_t *sync_payload; /* owned */
    size_t sync_payload_len, sync_payload_cap;
};

/* ---- errors and names ---- */

int rb_client_export_err(ringbus_error *out, const rb_err *e)
{
    if (out != NULL) {
        out->code = e->code;
        out->sys_errno = e->code == RB_ESYS ? e->cause : 0;
        out->wire_code = (e->code == RB_EPROTO || e->code == RB_CLIENT_ESERVER) ? e->cause : 0;
        snprintf(out->message, sizeof out->message, "%s", e->msg);
    }
    return e->code;
}

const char *ringbus_error_name(int code)
{
    if (code == RINGBUS_ESERVER) {
        return "ESERVER";
    }
    return rb_err_code_name(code);
}

const char *ringbus_wire_code_name(int wire_code)
{
    if (wire_code < 0 || wire_code > 0xffff) {
        return "unknown";
    }
    return rb_wire_code_name((uint16_t)wire_code);
}

const char *ringbus_version(void)
{
    return RB_VERSION;
}

void ringbus_options_init(ringbus_options *options)
{
    memset(options, 0, sizeof *options);
}

static rb_bytes bytes_of(const void *p, size_t len)
{
    /* Never NULL: the codec copies with memcpy, whose pointers must be valid. */
    return (rb_bytes){.ptr = p != NULL ? p : (const uint8_t *)"", .len = len};
}

static char *scratch_reserve(char **buf, size_t *cap, size_t need)
{
    if (need > *cap) {
        size_t next = *cap == 0 ? 256 : *cap;
        while (next < need) {
            next *= 2;
        }
        char *p = realloc(*buf, next);
        if (p == NULL) {
            return NULL;
        }
        *buf = p;
        *cap = next;
    }
    return *buf;
}

static const char *scratch_str(char **buf, size_t *cap, rb_bytes s)
{
    char *p = scratch_reserve(buf, cap, s.len + 1);
    if (p == NULL) {
        return NULL;
    }
    memcpy(p, s.ptr, s.len);
    p[s.len] = '\0';
    return p;
}

/* ---- the send buffer ---- */

static size_t tx_pending(const ringbus_conn *conn)
{
    return conn->tx_len - conn->tx_off;
}

/* True when output waits in the send buffer or inside the transport (a
 * WebSocket layer's encoded frames). */
static bool out_pending(const ringbus_conn *conn)
{
    const rb_client_transport *tp = &conn->tp;
    if (tx_pending(conn) > 0) {
        return true;
    }
    return tp->fd >= 0 && tp->ops != NULL && tp->ops->write_pending != NULL &&
           tp->ops->write_pending(tp);
}

/* True when a TLS or WebSocket layer holds input that poll cannot see. */
static bool in_pending(const ringbus_conn *conn)
{
    const rb_client_transport *tp = &conn->tp;
    return tp->fd >= 0 && tp->ops != NULL && tp->ops->read_pending != NULL &&
           tp->ops->read_pending(tp);
}

/* Writes once. A failure is remembered and handled by the next process
 * call, so that callbacks never run inside publish or mutate. */
static void tx_flush(ringbus_conn *conn)
{
    if (!out_pending(conn) || conn->io_failed || conn->tp.fd < 0) {
        return;
    }
    rb_err e = {0};
    /* With nothing buffered here, the write pushes the transport's own. */
    ssize_t n = conn->tp.ops->write(&conn->tp, conn->tx + conn->tx_off, tx_pending(conn), &e);
    if (n > 0) {
        conn->tx_off += (size_t)n;
        if (conn->tx_off == conn->tx_len) {
            conn->tx_off = 0;
            conn->tx_len = 0;
        }
    } else if (n != RB_EAGAIN && n != 0) {
        conn->io_failed = true;
        snprintf(conn->io_fail_msg, sizeof conn->io_fail_msg, "%s", e.msg);
    }
}

/* Makes room for need bytes at tx + tx_len. force (control frames) may grow
 * past tx_max, so that a PONG or CLOSE is never dropped. */
static int tx_reserve(ringbus_conn *conn, size_t need, bool force, rb_err *err)
{
    if (conn->tx_cap - conn->tx_len >= need) {
        return 0;
    }
    tx_flush(conn);
    if (conn->tx_off > 0) {
        memmove(conn->tx, conn->tx + conn->tx_off, tx_pending(conn));
        conn->tx_len -= conn->tx_off;
        conn->tx_off = 0;
    }
    if (conn->tx_cap - conn->tx_len >= need) {
        return 0;
    }
    size_t want = conn->tx_len + need;
    if (want > conn->tx_max && !force) {
        return rb_err_set(err, RB_EAGAIN, 0, "send buffer of %zu bytes is full", conn->tx_max);
    }
    size_t next = conn->tx_cap * 2;
    if (next < want) {
        next = want;
    }
    if (next > conn->tx_max && !force) {
        next = conn->tx_max;
    }
    uint8_t *p = realloc(conn->tx, next);
    if (p == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "send buffer: out of memory");
    }
    conn->tx = p;
    conn->tx_cap = next;
    return 0;
}

static void tx_control_close(ringbus_conn *conn, uint16_t status, const char *message)
{
    size_t msg_len = strnlen(message, 1024);
    size_t need = RB_FRAME_HEADER_BYTES + 2 + 2 + msg_len;
    if (tx_reserve(conn, need, true, NULL) != 0) {
        return;
    }
    size_t n = rb_frame_encode_close(conn->tx + conn->tx_len, conn->tx_cap - conn->tx_len, 0,
                                     status, bytes_of(message, msg_len));
    RB_ASSERT(n == need);
    conn->tx_len += n;
}

/* ---- publish slots ---- */

static pending *slot_find(ringbus_conn *conn, uint64_t corr_id)
{
    pending *p = &conn->slots[corr_id & conn->slot_mask];
    return (p->used && p->corr_id == corr_id) ? p : NULL;
}

/* Picks the next free correlation id; the window keeps a slot free. */
static pending *slot_alloc(ringbus_conn *conn)
{
    RB_ASSERT(conn->inflight_count < conn->window);
    uint64_t corr = conn->next_corr;
    for (uint32_t i = 0; i <= conn->slot_mask; i++, corr++) {
        if (corr == 0 || (corr & (RINGBUS_CORR_MUTATE | RINGBUS_CORR_AUTH)) != 0) {
            corr = 1;
        }
        pending *p = &conn->slots[corr & conn->slot_mask];
        if (!p->used) {
            conn->next_corr = corr + 1;
            p->used = true;
            p->corr_id = corr;
            conn->inflight_count++;
            return p;
        }
    }
    RB_ASSERT(!"a free publish slot exists below the window");
    return NULL;
}

static void slot_complete(ringbus_conn *conn, pending *p, ringbus_publish_result *res)
{
    ringbus_publish_cb cb = p->cb;
    void *ctx = p->ctx;
    res->corr_id = p->corr_id;
    p->used = false;
    conn->inflight_count--;
    if (cb != NULL) {
        bool was = conn->in_callback;
        conn->in_callback = true;
        cb(res, ctx);
        conn->in_callback = was;
    }
}

static void slots_fail_all(ringbus_conn *conn, const char *why)
{
    for (uint32_t i = 0; i <= conn->slot_mask && conn->inflight_count > 0; i++) {
        pending *p = &conn->slots[i];
        if (p->used) {
            ringbus_publish_result res = {.status = RINGBUS_ECLOSED, .message = why, .topic = ""};
            slot_complete(conn, p, &res);
        }
    }
}

/* ---- events ---- */

static uint32_t frame_event_count(const rb_frame *f)
{
    return f->hdr.kind == RB_FRAME_MESSAGES ? f->u.messages.count : 1;
}

static int fill_topics_live(ringbus_conn *conn, const rb_frame *f, ringbus_event *ev)
{
    uint32_t count = f->u.topics_live.count;
    size_t ptrs = (size_t)count * sizeof(char *);
    char *p = scratch_reserve(&conn->scratch, &conn->scratch_cap,
                              ptrs + f->u.topics_live.topics.len + count + 1);
    if (p == NULL) {
        return RB_ENOMEM;
    }
    const char **names = (const char **)(void *)p;
    char *s = p + ptrs;
    rb_frame_iter it;
    rb_frame_iter_init(&it, f->u.topics_live.topics, count);
    rb_bytes t;
    for (uint32_t i = 0; i < count; i++) {
        bool ok = rb_frame_next_topic(&it, &t);
        RB_ASSERT(ok);
        memcpy(s, t.ptr, t.len);
        s[t.len] = '\0';
        names[i] = s;
        s += t.len + 1;
    }
    ev->topics = names;
    ev->topic_count = count;
    return 0;
}

static int fill_message(ringbus_conn *conn, const rb_frame *f, rb_frame_iter *it, ringbus_event *ev)
{
    rb_message_item item;
    bool ok = rb_frame_next_item(it, &item);
    RB_ASSERT(ok);
    ev->topic = scratch_str(&conn->scratch, &conn->scratch_cap, item.topic);
    if (ev->topic == NULL) {
        return RB_ENOMEM;
    }
    ev->topic_len = item.topic.len;
    ev->seq = item.seq;
    ev->payload = item.payload.ptr;
    ev->payload_len = item.payload.len;
    ev->mutate_id = f->u.messages.mutate_id;
    return 0;
}

/* The topic and the message share the scratch buffer, one after the other. */
static int fill_topic_error(ringbus_conn *conn, const rb_frame *f, ringbus_event *ev)
{
    rb_bytes t = f->u.topic_error.topic;
    rb_bytes m = f->u.topic_error.message;
    char *p = scratch_reserve(&conn->scratch, &conn->scratch_cap, t.len + 1 + m.len + 1);
    if (p == NULL) {
        return RB_ENOMEM;
    }
    memcpy(p, t.ptr, t.len);
    p[t.len] = '\0';
    if (m.len > 0) {
        memcpy(p + t.len + 1, m.ptr, m.len);
    }
    p[t.len + 1 + m.len] = '\0';
    ev->topic = p;
    ev->topic_len = t.len;
    ev->message = p + t.len + 1;
    ev->code = f->u.topic_error.code;
    ev->mutate_id = f->u.topic_error.mutate_id;
    return 0;
}

static int fill_lagged(ringbus_conn *conn, const rb_frame *f, ringbus_event *ev)
{
    rb_bytes t = f->u.lagged.topic;
    char *p = scratch_reserve(&conn->scratch, &conn->scratch_cap, t.len + 1);
    if (p == NULL) {
        return RB_ENOMEM;
    }
    memcpy(p, t.ptr, t.len);
    p[t.len] = '\0';
    ev->topic = p;
    ev->topic_len = t.len;
    ev->skipped = f->u.lagged.skipped;
    ev->message = "";
    return 0;
}

/* A REQUEST: method and caller share the scratch buffer. */
static int fill_request(ringbus_conn *conn, const rb_frame *f, ringbus_event *ev)
{
    rb_bytes m = f->u.request.method;
    rb_bytes c = f->u.request.peer;
    char *p = scratch_reserve(&conn->scratch, &conn->scratch_cap, m.len + 1 + c.len + 1);
    if (p == NULL) {
        return RB_ENOMEM;
    }
    memcpy(p, m.ptr, m.len);
    p[m.len] = '\0';
    memcpy(p + m.len + 1, c.ptr, c.len);
    p[m.len + 1 + c.len] = '\0';
    ev->method = p;
    ev->caller = p + m.len + 1;
    ev->corr_id = f->hdr.corr_id;
    ev->timeout_ms = f->u.request.timeout_ms;
    ev->payload = f->u.request.payload.ptr;
    ev->payload_len = f->u.request.payload.len;
    ev->message = "";
    return 0;
}

/* Fills *ev with the next event of frame f (it walks MESSAGES items). The
 * strings live in conn->scratch until the next event. */
static int fill_event(ringbus_conn *conn, const rb_frame *f, rb_frame_iter *it, ringbus_event *ev)
{
    memset(ev, 0, sizeof *ev);
    rb_bytes msg = {0};
    switch (f->hdr.kind) {
    case RB_FRAME_MESSAGES:
        ev->kind = RINGBUS_EVENT_MESSAGE;
        return fill_message(conn, f, it, ev);
    case RB_FRAME_TOPICS_LIVE:
        ev->kind = RINGBUS_EVENT_TOPICS_LIVE;
        return fill_topics_live(conn, f, ev);
    case RB_FRAME_CATCHUP_COMPLETE:
        ev->kind = RINGBUS_EVENT_CATCHUP_COMPLETE;
        ev->mutate_id = f->u.catchup_complete.mutate_id;
        return 0;
    case RB_FRAME_TOPIC_ERROR:
        ev->kind = RINGBUS_EVENT_TOPIC_ERROR;
        return fill_topic_error(conn, f, ev);
    case RB_FRAME_LAGGED:
        ev->kind = RINGBUS_EVENT_LAGGED;
        return fill_lagged(conn, f, ev);
    case RB_FRAME_ERROR:
        ev->kind = RINGBUS_EVENT_ERROR;
        ev->code = f->u.error.code;
        ev->corr_id = f->hdr.corr_id;
        msg = f->u.error.message;
        break;
    case RB_FRAME_CLOSE:
        ev->kind = RINGBUS_EVENT_CLOSED;
        ev->code = f->u.close.status;
        msg = f->u.close.message;
        break;
    case RB_FRAME_REQUEST:
        ev->kind = RINGBUS_EVENT_REQUEST;
        return fill_request(conn, f, ev);
    case RB_FRAME_RESPONSE:
        ev->kind = RINGBUS_EVENT_RESPONSE;
        ev->code = f->u.response.code;
        ev->corr_id = f->hdr.corr_id;
        ev->payload = f->u.response.payload.ptr;
        ev->payload_len = f->u.response.payload.len;
        msg = f->u.response.message;
        break;
    default:
        RB_ASSERT(!"only event frames are filled");
    }
    ev->message = scratch_str(&conn->scratch, &conn->scratch_cap, msg);
    return ev->message != NULL ? 0 : RB_ENOMEM;
}

static int dispatch_now(ringbus_conn *conn, const rb_frame *f)
{
    rb_frame_iter it;
    if (f->hdr.kind == RB_FRAME_MESSAGES) {
        rb_frame_iter_init(&it, f->u.messages.items, f->u.messages.count);
    }
    uint32_t count = frame_event_count(f);
    for (uint32_t i = 0; i < count; i++) {
        ringbus_event ev;
        if (fill_event(conn, f, &it, &ev) != 0) {
            return RB_ENOMEM;
        }
        conn->in_callback = true;
        conn->on_event(&ev, conn->event_ctx);
        conn->in_callback = false;
    }
    return (int)count;
}

/* Queues a copy of the frame. Returns the events it holds, or RB_EAGAIN
 * when the queue is full (the frame stays in the receive buffer). */
static int enqueue(ringbus_conn *conn, const uint8_t *p, size_t len, bool force)
{
    if (!force && conn->evq_head != NULL && conn->evq_bytes + len > conn->evq_max) {
        return RB_EAGAIN;
    }
    evnode *node = malloc(sizeof *node + len);
    if (node == NULL) {
        return RB_ENOMEM;
    }
    memcpy(node->data, p, len);
    node->len = len;
    node->next = NULL;
    rb_err e = {0};
    int rc = rb_frame_decode(node->data, len, RB_FRAME_BYTES_MAX, &node->frame, &e);
    RB_ASSERT(rc == 0);
    node->events_left = frame_event_count(&node->frame);
    if (node->frame.hdr.kind == RB_FRAME_MESSAGES) {
        rb_frame_iter_init(&node->iter, node->frame.u.messages.items, node->frame.u.messages.count);
    }
    if (conn->evq_tail != NULL) {
        conn->evq_tail->next = node;
    } else {
        conn->evq_head = node;
    }
    conn->evq_tail = node;
    conn->evq_bytes += len;
    return (int)node->events_left;
}

/* Delivers the events of one frame at p (decoded as f). */
static int event_frame(ringbus_conn *conn, const rb_frame *f, const uint8_t *p, bool force)
{
    if (conn->on_event != NULL) {
        return dispatch_now(conn, f);
    }
    if (frame_event_count(f) == 0) {
        return 0;
    }
    return enqueue(conn, p, f->hdr.size, force);
}

/* ---- closing ---- */

/* Copies message into out (cap bytes, NUL-terminated) as valid UTF-8: a
 * byte that does not start a whole, valid sequence becomes '?'. The text
 * may carry what a server sent (a WebSocket Close reason), and the CLOSE
 * frame built from it must decode. */
static void utf8_clean(char *out, size_t cap, const char *message)
{
    const uint8_t *in = (const uint8_t *)message;
    size_t len = strnlen(message, cap - 1);
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = in[i] < 0x80 ? 1 : in[i] < 0xe0 ? 2 : in[i] < 0xf0 ? 3 : 4;
        if (i + n <= len && rb_utf8_valid(in + i, n)) {
            memcpy(out + o, in + i, n);
            o += n;
            i += n;
        } else {
            out[o++] = '?';
            i++;
        }
    }
    out[o] = '\0';
}

/* Closes the transport, fails the publishes in flight and produces the
 * CLOSED event (from a CLOSE frame at p, or one built here). */
static void conn_die(ringbus_conn *conn, uint16_t status, const char *message, const rb_frame *f,
                     const uint8_t *p)
{
    if (conn->state == CONN_DEAD) {
        return;
    }
    conn->state = CONN_DEAD;
    conn->tp.ops->close(&conn->tp);
    conn->tx_off = conn->tx_len = 0;
    slots_fail_all(conn, message);
    uint8_t buf[RB_FRAME_HEADER_BYTES + 4 + RB_ERR_MSG_BYTES_MAX];
    rb_frame built;
    if (f == NULL) {
        char clean[RB_ERR_MSG_BYTES_MAX];
        utf8_clean(clean, sizeof clean, message);
        size_t n =
            rb_frame_encode_close(buf, sizeof buf, 0, status, bytes_of(clean, strlen(clean)));
        rb_err e = {0};
        int rc = rb_frame_decode(buf, n, RB_FRAME_BYTES_MAX, &built, &e);
        RB_ASSERT(rc == 0);
        f = &built;
        p = buf;
    }
    (void)event_frame(conn, f, p, true);
}

static void conn_fail_proto(ringbus_conn *conn, uint16_t wire_code, const char *why)
{
    char msg[RB_ERR_MSG_BYTES_MAX];
    snprintf(msg, sizeof msg, "protocol error: %.200s", why);
    /* Tell the server why before closing; best effort, one write. */
    tx_control_close(conn, wire_code, msg);
    tx_flush(conn);
    conn_die(conn, wire_code, msg, NULL, NULL);
}

/* ---- incoming frames ---- */

static void on_publish_reply(ringbus_conn *conn, pending *slot, const rb_frame *f)
{
    ringbus_publish_result res = {0};
    const char *s;
    if (f->hdr.kind == RB_FRAME_PUBLISH_ACK) {
        s = scratch_str(&conn->ack_scratch, &conn->ack_scratch_cap, f->u.publish_ack.topic);
        res.topic = s != NULL ? s : "";
        res.topic_len = s != NULL ? f->u.publish_ack.topic.len : 0;
        res.seq = f->u.publish_ack.seq;
        res.duplicate = (f->u.publish_ack.flags & RB_ACK_DUPLICATE) != 0;
        res.message = "";
    } else {
        s = scratch_str(&conn->ack_scratch, &conn->ack_scratch_cap, f->u.error.message);
        res.status = RINGBUS_ESERVER;
        res.wire_code = f->u.error.code;
        res.message = s != NULL ? s : "out of memory";
        res.topic = "";
    }
    slot_complete(conn, slot, &res);
}

/* The outcome ringbus_call_sync waits for: kept in the connection. */
static int sync_answer(ringbus_conn *conn, uint16_t code, rb_bytes message, rb_bytes payload)
{
    if (payload.len > conn->sync_payload_cap) {
        uint8_t *p = realloc(conn->sync_payload, payload.len);
        if (p == NULL) {
            code = RB_WIRE_INTERNAL;
            message = bytes_of("out of memory for the response", 30);
            payload.len = 0;
        } else {
            conn->sync_payload = p;
            conn->sync_payload_cap = payload.len;
        }
    }
    if (payload.len > 0) {
        memcpy(conn->sync_payload, payload.ptr, payload.len);
    }
    conn->sync_payload_len = payload.len;
    conn->sync_code = code;
    snprintf(conn->sync_msg, sizeof conn->sync_msg, "%.*s", (int)message.len,
             (const char *)message.ptr);
    conn->sync_answered = true;
    conn->sync_corr = 0;
    return 0;
}

/* An ERROR answering a REGISTER/UNREGISTER or the call being waited for. */
static bool rpc_error(ringbus_conn *conn, const rb_frame *f)
{
    if (conn->reg_corr != 0 && f->hdr.corr_id == conn->reg_corr) {
        conn->reg_answered = true;
        conn->reg_code = f->u.error.code;
        snprintf(conn->reg_msg, sizeof conn->reg_msg, "%.*s", (int)f->u.error.message.len,
                 (const char *)f->u.error.message.ptr);
        return true;
    }
    if (conn->sync_corr != 0 && f->hdr.corr_id == conn->sync_corr) {
        sync_answer(conn, f->u.error.code, f->u.error.message, bytes_of(NULL, 0));
        return true;
    }
    return false;
}

/* Handles one decoded frame at p. Returns the events it produced, or
 * RB_EAGAIN when it must wait for the event queue to drain. */
static int handle_frame(ringbus_conn *conn, const rb_frame *f, const uint8_t *p)
{
    char why[RB_ERR_MSG_BYTES_MAX];
    pending *slot;
    switch (f->hdr.kind) {
    case RB_FRAME_PING:
        if (tx_reserve(conn, RB_FRAME_HEADER_BYTES + 8, true, NULL) == 0) {
            conn->tx_len +=
                rb_frame_encode_pong(conn->tx + conn->tx_len, conn->tx_cap - conn->tx_len,
                                     f->hdr.corr_id, f->u.ping.nonce);
        }
        return 0;
    case RB_FRAME_PONG:
        if (conn->ping_nonce != 0 && f->u.ping.nonce == conn->ping_nonce) {
            conn->pong_seen = true;
            conn->pong_ns = rb_client_now_ns();
        }
        return 0;
    case RB_FRAME_AUTH:
        if (conn->auth_corr == 0 || f->hdr.corr_id != conn->auth_corr) {
            conn_fail_proto(conn, RB_WIRE_BAD_FRAME, "AUTH answer without an AUTH in flight");
            return 0;
        }
        conn->auth_answered = true;
        conn->auth_code = 0;
        return 0;
    case RB_FRAME_REGISTER:
    case RB_FRAME_UNREGISTER:
        if (conn->reg_corr != 0 && f->hdr.corr_id == conn->reg_corr) {
            conn->reg_answered = true;
            conn->reg_code = 0;
        }
        return 0; /* else an answer that came after its wait gave up */
    case RB_FRAME_REQUEST_ACK:
        return 0; /* the responder has the call; its RESPONSE follows */
    case RB_FRAME_REQUEST:
        /* Handed to the application as C strings: a NUL inside would cut
         * them short (the server never sends one: names follow the topic
         * rules). */
        if (memchr(f->u.request.method.ptr, 0, f->u.request.method.len) != NULL ||
            memchr(f->u.request.peer.ptr, 0, f->u.request.peer.len) != NULL) {
            conn_fail_proto(conn, RB_WIRE_BAD_FRAME,
                            "REQUEST with a NUL byte in its method or peer");
            return 0;
        }
        return event_frame(conn, f, p, false);
    case RB_FRAME_RESPONSE:
        if (conn->sync_corr != 0 && f->hdr.corr_id == conn->sync_corr) {
            return sync_answer(conn, f->u.response.code, f->u.response.message,
                               f->u.response.payload);
        }
        return event_frame(conn, f, p, false);
    case RB_FRAME_PUBLISH_ACK:
    case RB_FRAME_ERROR:
        if (f->hdr.kind == RB_FRAME_ERROR && rpc_error(conn, f)) {
            return 0;
        }
        if (f->hdr.kind == RB_FRAME_ERROR && conn->auth_corr != 0 &&
            f->hdr.corr_id == conn->auth_corr) {
            conn->auth_answered = true;
            conn->auth_code = f->u.error.code;
            snprintf(conn->auth_msg, sizeof conn->auth_msg, "%.*s", (int)f->u.error.message.len,
                     (const char *)f->u.error.message.ptr);
            return 0;
        }
        slot = slot_find(conn, f->hdr.corr_id);
        if (slot != NULL) {
            on_publish_reply(conn, slot, f);
            return 0;
        }
        if (f->hdr.kind == RB_FRAME_ERROR) {
            return event_frame(conn, f, p, false);
        }
        snprintf(why, sizeof why, "PUBLISH_ACK for unknown correlation id %llu",
                 (unsigned long long)f->hdr.corr_id);
        conn_fail_proto(conn, RB_WIRE_BAD_FRAME, why);
        return 0;
    case RB_FRAME_CLOSE:
        conn_die(conn, f->u.close.status, "server closed the connection", f, p);
        return 1;
    case RB_FRAME_GOING_AWAY:
        /* The server drains: it closes once what is in flight is done. The
         * session stops sending and comes back after the hint. */
        conn->going_away = true;
        conn->going_away_hint_ms = f->u.going_away.reconnect_delay_ms;
        return 0;
    case RB_FRAME_MESSAGES:
    case RB_FRAME_TOPICS_LIVE:
    case RB_FRAME_CATCHUP_COMPLETE:
    case RB_FRAME_TOPIC_ERROR:
    case RB_FRAME_LAGGED:
        return event_frame(conn, f, p, false);
    default:
        snprintf(why, sizeof why, "unexpected %s frame from the server",
                 rb_frame_kind_name(f->hdr.kind));
        conn_fail_proto(conn, RB_WIRE_BAD_FRAME, why);
        return 0;
    }
}

/* Grows the receive buffer so that a frame of size bytes fits from rx_off. */
static int rx_fit(ringbus_conn *conn, size_t size)
{
    if (conn->rx_off > 0) {
        memmove(conn->rx, conn->rx + conn->rx_off, conn->rx_len - conn->rx_off);
        conn->rx_len -= conn->rx_off;
        conn->rx_off = 0;
    }
    if (size <= conn->rx_cap) {
        return 0;
    }
    uint8_t *p = realloc(conn->rx, size);
    if (p == NULL) {
        return RB_ENOMEM;
    }
    conn->rx = p;
    conn->rx_cap = size;
    return 0;
}

/* Decodes and handles the whole frames in the receive buffer. */
static int rx_consume(ringbus_conn *conn, int *events)
{
    conn->rx_stalled = false;
    while (conn->state != CONN_DEAD && conn->rx_off < conn->rx_len) {
        const uint8_t *p = conn->rx + conn->rx_off;
        size_t len = conn->rx_len - conn->rx_off;
        rb_frame f;
        rb_err e = {0};
        int rc = rb_frame_decode(p, len, conn->max_frame_bytes, &f, &e);
        if (rc == RB_EAGAIN) {
            if (len >= RB_FRAME_HEADER_BYTES) {
                rb_frame_header hdr;
                rc = rb_frame_header_decode(p, len, conn->max_frame_bytes, &hdr, &e);
                RB_ASSERT(rc == 0);
                if (rx_fit(conn, hdr.size) != 0) {
                    return RB_ENOMEM;
                }
            }
            break;
        }
        if (rc != 0) {
            conn_fail_proto(conn, (uint16_t)e.cause, e.msg);
            break;
        }
        rc = handle_frame(conn, &f, p);
        if (rc == RB_EAGAIN) {
            conn->rx_stalled = true;
            break;
        }
        if (rc < 0) {
            return rc;
        }
        *events += rc;
        conn->rx_off += f.hdr.size;
    }
    if (conn->rx_off == conn->rx_len || conn->state == CONN_DEAD) {
        conn->rx_off = conn->rx_len = 0;
    }
    return 0;
}

/* Reads what is available (a bounded number of reads) and handles it. */
static int rx_read(ringbus_conn *conn, int *events)
{
    for (int i = 0; i < READS_PER_PROCESS_MAX; i++) {
        if (conn->state == CONN_DEAD || conn->rx_stalled) {
            return 0;
        }
        if (conn->rx_len == conn->rx_cap && rx_fit(conn, conn->rx_cap) != 0) {
            return RB_ENOMEM;
        }
        if (conn->rx_len == conn->rx_cap) {
            return 0;
        }
        rb_err e = {0};
        ssize_t n =
            conn->tp.ops->read(&conn->tp, conn->rx + conn->rx_len, conn->rx_cap - conn->rx_len, &e);
        if (n == RB_EAGAIN) {
            return 0;
        }
        if (n <= 0) {
            const char *why = n == 0 ? "server closed the connection" : e.msg;
            conn_die(conn, RB_WIRE_UNAVAILABLE, why, NULL, NULL);
            *events += 1;
            return 0;
        }
        conn->rx_len += (size_t)n;
        conn->last_rx_ns = rb_client_now_ns();
        int rc = rx_consume(conn, events);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* Waits for input (unless stalled) or output room, at most timeout_ms. */
static void wait_io(ringbus_conn *conn, int timeout_ms)
{
    struct pollfd pfd = {.fd = conn->tp.fd, .events = 0};
    if (!conn->rx_stalled) {
        if (in_pending(conn)) {
            return;
        }
        pfd.events |= POLLIN;
    }
    if (out_pending(conn)) {
        pfd.events |= POLLOUT;
    }
    if (pfd.events == 0) {
        (void)poll(NULL, 0, timeout_ms);
    } else {
        (void)poll(&pfd, 1, timeout_ms);
    }
}

static void check_io_failed(ringbus_conn *conn, int *events)
{
    if (conn->io_failed && conn->state != CONN_DEAD) {
        conn_die(conn, RB_WIRE_UNAVAILABLE, conn->io_fail_msg, NULL, NULL);
        *events += 1;
    }
}

/* Handles buffered frames, writes, waits (only when nothing happened yet),
 * reads and handles more, and writes the replies. */
static int process(ringbus_conn *conn, int timeout_ms, rb_err *err)
{
    if (conn->state == CONN_DEAD) {
        return rb_err_set(err, RB_ECLOSED, 0, "%s: connection closed", conn->url_text);
    }
    int events = 0;
    int rc = rx_consume(conn, &events);
    if (rc == 0 && conn->state != CONN_DEAD) {
        tx_flush(conn);
        if (events == 0 && timeout_ms > 0 && !conn->io_failed) {
            wait_io(conn, timeout_ms);
            tx_flush(conn);
        }
        rc = rx_read(conn, &events);
        tx_flush(conn);
    }
    if (rc == 0) {
        check_io_failed(conn, &events);
    }
    if (rc != 0) {
        return rb_err_set(err, rc, 0, "%s: receive: out of memory", conn->url_text);
    }
    return events;
}

/* ---- connecting ---- */

/* An Origin goes into the upgrade request as it is: printable ASCII without
 * spaces (so no CR or LF can split the header), and no longer than a
 * listener's origins entry may be. */
static int origin_check(const char *origin, rb_err *err)
{
    if (origin == NULL) {
        return 0;
    }
    size_t len = strnlen(origin, RB_ADDRESS_BYTES_MAX);
    if (len == 0 || len >= RB_ADDRESS_BYTES_MAX) {
        return rb_err_set(err, RB_EINVAL, 0, "options: ws_origin must be 1 to %d bytes",
                          RB_ADDRESS_BYTES_MAX - 1);
    }
    for (size_t i = 0; i < len; i++) {
        if (origin[i] <= 0x20 || origin[i] >= 0x7f) {
            return rb_err_set(err, RB_EINVAL, 0,
                              "options: ws_origin byte %zu is not printable ASCII", i + 1);
        }
    }
    return 0;
}

/* Builds the HELLO credentials of token or user + password into out;
 * *len 0 when the options name neither. */
static int sign_in_credentials(const ringbus_options *o, uint8_t *out, size_t cap, size_t *len,
                               rb_err *err)
{
    *len = 0;
    if (o->token != NULL) {
        size_t n = strnlen(o->token, RB_AUTH_TOKEN_BYTES_MAX + 1);
        if (n == 0 || n > RB_AUTH_TOKEN_BYTES_MAX) {
            return rb_err_set(err, RB_EINVAL, 0, "options: token is empty or above %d bytes",
                              RB_AUTH_TOKEN_BYTES_MAX);
        }
        *len = rb_credentials_encode_token(out, cap, bytes_of(o->token, n));
    } else if (o->user != NULL) {
        size_t n = strnlen(o->user, RB_AUTH_USER_BYTES_MAX + 1);
        if (n == 0 || n > RB_AUTH_USER_BYTES_MAX) {
            return rb_err_set(err, RB_EINVAL, 0, "options: user is empty or above %d bytes",
                              RB_AUTH_USER_BYTES_MAX);
        }
        if (o->password == NULL || o->password_len == 0 ||
            o->password_len > RB_AUTH_PASSWORD_BYTES_MAX) {
            return rb_err_set(err, RB_EINVAL, 0, "options: user needs a password of 1..%d bytes",
                              RB_AUTH_PASSWORD_BYTES_MAX);
        }
        *len = rb_credentials_encode_password(out, cap, bytes_of(o->user, n),
                                              bytes_of(o->password, o->password_len));
    } else {
        return 0;
    }
    rb_credentials c;
    rb_err why;
    if (rb_credentials_decode((rb_bytes){out, *len}, &c, &why) != 0) {
        explicit_bzero(out, *len);
        *len = 0;
        /* "credentials: token: byte 3 is not base64url or '.'" */
        return rb_err_set(err, RB_EINVAL, 0, "options: %s", why.msg + strlen("credentials: "));
    }
    return 0;
}

static int sign_in_check(const ringbus_options *o, rb_err *err)
{
    int given = (o->credentials != NULL) + (o->token != NULL) + (o->user != NULL);
    if (given > 1) {
        return rb_err_set(err, RB_EINVAL, 0,
                          "options: give only one of credentials, token and user");
    }
    if (o->user == NULL && o->password != NULL) {
        return rb_err_set(err, RB_EINVAL, 0, "options: password without user");
    }
    if ((o->tls_cert_file == NULL) != (o->tls_key_file == NULL)) {
        return rb_err_set(err, RB_EINVAL, 0, "options: tls_cert_file and tls_key_file go together");
    }
    uint8_t cred[RB_AUTH_CREDENTIALS_BYTES_MAX];
    size_t len = 0;
    int rc = sign_in_credentials(o, cred, sizeof cred, &len, err);
    explicit_bzero(cred, sizeof cred);
    return rc;
}

static int options_check(const ringbus_options *o, rb_err *err)
{
    if (o->connect_timeout_ms < 0 || o->request_timeout_ms < 0) {
        return rb_err_set(err, RB_EINVAL, 0, "options: negative timeout");
    }
    if (o->tls_library != RINGBUS_TLS_OPENSSL && o->tls_library != RINGBUS_TLS_WOLFSSL) {
        return rb_err_set(err, RB_EINVAL, 0, "options: tls_library %d is not a RINGBUS_TLS_ value",
                          o->tls_library);
    }
    if (o->publish_window > WINDOW_MAX) {
        return rb_err_set(err, RB_EINVAL, 0, "options: publish_window above %u", WINDOW_MAX);
    }
    if (o->send_buffer_bytes != 0 && o->send_buffer_bytes < SEND_BYTES_MIN) {
        return rb_err_set(err, RB_EINVAL, 0, "options: send_buffer_bytes below %zu",
                          SEND_BYTES_MIN);
    }
    if (o->credentials_len > RB_SHORT_STRING_BYTES_MAX ||
        (o->credentials == NULL && o->credentials_len != 0)) {
        return rb_err_set(err, RB_EINVAL, 0, "options: credentials longer than %d bytes",
                          RB_SHORT_STRING_BYTES_MAX);
    }
    int rc = sign_in_check(o, err);
    if (rc != 0) {
        return rc;
    }
    const char *name = o->client_name != NULL ? o->client_name : "libringbus";
    size_t name_len = strnlen(name, RB_SHORT_STRING_BYTES_MAX + 1);
    if (name_len > RB_SHORT_STRING_BYTES_MAX || !rb_utf8_valid((const uint8_t *)name, name_len)) {
        return rb_err_set(err, RB_EINVAL, 0, "options: client_name is not short UTF-8");
    }
    return origin_check(o->ws_origin, err);
}

static uint32_t pow2_at_least(uint32_t n)
{
    uint32_t p = 1;
    while (p < n) {
        p <<= 1;
    }
    return p;
}

static ringbus_conn *conn_new(const char *url, const ringbus_options *o)
{
    ringbus_conn *conn = calloc(1, sizeof *conn);
    if (conn == NULL) {
        return NULL;
    }
    conn->tp.fd = -1;
    conn->request_timeout_ms = o->request_timeout_ms ? o->request_timeout_ms : REQUEST_MS_DEFAULT;
    conn->window = o->publish_window ? o->publish_window : WINDOW_DEFAULT;
    conn->tx_max = o->send_buffer_bytes ? o->send_buffer_bytes : SEND_BYTES_DEFAULT;
    conn->evq_max = o->event_queue_bytes ? o->event_queue_bytes : EVENT_QUEUE_BYTES_DEFAULT;
    conn->on_event = o->on_event;
    conn->event_ctx = o->event_ctx;
    conn->max_frame_bytes = HANDSHAKE_FRAME_BYTES_MAX;
    conn->next_corr = 1;
    uint32_t slot_count = pow2_at_least(conn->window);
    conn->slot_mask = slot_count - 1;
    conn->slots = calloc(slot_count, sizeof *conn->slots);
    conn->url_text = strdup(url);
    conn->tx_cap = SEND_BYTES_MIN;
    conn->tx = malloc(conn->tx_cap);
    conn->rx_cap = RECV_BYTES_INITIAL;
    conn->rx = malloc(conn->rx_cap);
    if (conn->slots == NULL || conn->url_text == NULL || conn->tx == NULL || conn->rx == NULL) {
        ringbus_close(conn);
        return NULL;
    }
    return conn;
}

/* Waits until fd is ready for events or deadline_ns passes. */
static int wait_fd(ringbus_conn *conn, short events, int64_t deadline_ns, const char *what,
                   rb_err *err)
{
    if ((events & POLLIN) != 0 && in_pending(conn)) {
        return 0;
    }
    struct pollfd pfd = {.fd = conn->tp.fd, .events = events};
    int left_ms = rb_client_ms_until(deadline_ns);
    int n = left_ms > 0 ? poll(&pfd, 1, left_ms) : 0;
    if (n == 0) {
        return rb_err_set(err, RB_ETIMEDOUT, 0, "connect %s: %s: timed out", conn->url_text, what);
    }
    if (n == -1 && errno != EINTR) {
        return rb_err_set(err, RB_ESYS, errno, "connect %s: poll", conn->url_text);
    }
    return 0;
}

static int send_hello(ringbus_conn *conn, const ringbus_options *o, int64_t deadline_ns,
                      rb_err *err)
{
    const char *name = o->client_name != NULL ? o->client_name : "libringbus";
    rb_bytes name_b = bytes_of(name, strlen(name));
    rb_bytes cred_b = bytes_of(o->credentials, o->credentials_len);
    uint8_t cred[RB_AUTH_CREDENTIALS_BYTES_MAX];
    size_t cred_len = 0;
    int rc = sign_in_credentials(o, cred, sizeof cred, &cred_len, err);
    if (rc == 0 && cred_len > 0) {
        cred_b = (rb_bytes){cred, cred_len};
    }
    size_t need = RB_FRAME_HEADER_BYTES + 2 + 2 + name_b.len + 2 + cred_b.len;
    rc = rc ? rc : tx_reserve(conn, need, true, err);
    if (rc != 0) {
        explicit_bzero(cred, sizeof cred);
        return rc;
    }
    conn->tx_len +=
        rb_frame_encode_hello(conn->tx, conn->tx_cap, 0, RB_PROTOCOL_VERSION, name_b, cred_b);
    explicit_bzero(cred, sizeof cred);
    RB_ASSERT(conn->tx_len == need);
    while (out_pending(conn)) {
        tx_flush(conn);
        if (conn->io_failed) {
            return rb_err_set(err, RB_ESYS, 0, "connect %s: send HELLO: %s", conn->url_text,
                              conn->io_fail_msg);
        }
        if (out_pending(conn) && (rc = wait_fd(conn, POLLOUT, deadline_ns, "HELLO", err))) {
            return rc;
        }
    }
    return 0;
}

static int on_started(ringbus_conn *conn, const rb_frame *f, rb_err *err)
{
    uint32_t max = f->u.started.max_frame_bytes;
    if (max < RB_FRAME_BYTES_MIN || max > RB_FRAME_BYTES_MAX) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME,
                          "connect %s: STARTED max_frame_bytes %u outside %u..%u", conn->url_text,
                          max, RB_FRAME_BYTES_MIN, RB_FRAME_BYTES_MAX);
    }
    if (f->u.started.server_id.len > RB_SERVER_ID_BYTES_MAX) {
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME,
                          "connect %s: STARTED server id longer than %d bytes", conn->url_text,
                          RB_SERVER_ID_BYTES_MAX);
    }
    conn->keepalive_ms = f->u.started.keepalive_ms;
    conn->last_rx_ns = rb_client_now_ns();
    conn->capabilities = f->u.started.capabilities;
    conn->epoch = f->u.started.epoch;
    conn->max_frame_bytes = max;
    memcpy(conn->server_id, f->u.started.server_id.ptr, f->u.started.server_id.len);
    conn->server_id[f->u.started.server_id.len] = '\0';
    /* The decoder bounds client_id to RB_RPC_NAME_BYTES_MAX; an older
     * server omits it (NULL, length 0: memcpy must not see NULL). */
    if (f->u.started.client_id.len > 0) {
        memcpy(conn->client_id, f->u.started.client_id.ptr, f->u.started.client_id.len);
    }
    conn->client_id[f->u.started.client_id.len] = '\0';
    return 0;
}

/* Turns the server's first frame into the handshake result. */
static int handshake_reply(ringbus_conn *conn, const rb_frame *f, rb_err *err)
{
    const char *url = conn->url_text;
    switch (f->hdr.kind) {
    case RB_FRAME_STARTED:
        return on_started(conn, f, err);
    case RB_FRAME_ERROR:
        return rb_err_set(err, RB_CLIENT_ESERVER, f->u.error.code,
                          "connect %s: server refused: %s: %.*s", url,
                          rb_wire_code_name(f->u.error.code), (int)f->u.error.message.len,
                          (const char *)f->u.error.message.ptr);
    case RB_FRAME_CLOSE:
        return rb_err_set(err, RB_CLIENT_ESERVER, f->u.close.status,
                          "connect %s: server closed: %s: %.*s", url,
                          rb_wire_code_name(f->u.close.status), (int)f->u.close.message.len,
                          (const char *)f->u.close.message.ptr);
    default:
        return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "connect %s: expected STARTED, got %s",
                          url, rb_frame_kind_name(f->hdr.kind));
    }
}

/* Reads until the server's first frame is whole; later bytes stay
 * buffered for ringbus_process. */
static int read_reply(ringbus_conn *conn, int64_t deadline_ns, rb_err *err)
{
    for (;;) {
        rb_frame f;
        rb_err e = {0};
        int rc = rb_frame_decode(conn->rx, conn->rx_len, HANDSHAKE_FRAME_BYTES_MAX, &f, &e);
        if (rc == 0) {
            rc = handshake_reply(conn, &f, err);
            conn->rx_off = f.hdr.size;
            return rc;
        }
        const char *hint = rb_client_tcp_answer_hint(&conn->tp, conn->rx, conn->rx_len);
        if (rc != RB_EAGAIN) {
            return hint != NULL
                       ? rb_err_set(err, RB_EPROTO, e.cause, "connect %s: %s", conn->url_text, hint)
                       : rb_err_set(err, RB_EPROTO, e.cause,
                                    "connect %s: bad frame from server: %s", conn->url_text, e.msg);
        }
        if (conn->rx_len >= RB_FRAME_HEADER_BYTES) {
            rb_frame_header hdr;
            (void)rb_frame_header_decode(conn->rx, conn->rx_len, HANDSHAKE_FRAME_BYTES_MAX, &hdr,
                                         &e);
            if (rx_fit(conn, hdr.size) != 0) {
                return rb_err_set(err, RB_ENOMEM, 0, "connect %s: out of memory", conn->url_text);
            }
        }
        if ((rc = wait_fd(conn, POLLIN, deadline_ns, "waiting for STARTED", err)) != 0) {
            return rc;
        }
        ssize_t n =
            conn->tp.ops->read(&conn->tp, conn->rx + conn->rx_len, conn->rx_cap - conn->rx_len, &e);
        if (n == 0) {
            return rb_err_set(err, RB_ECLOSED, 0,
                              "connect %s: server closed the connection during the handshake%s%s",
                              conn->url_text, hint != NULL ? ": " : "", hint != NULL ? hint : "");
        }
        if (n < 0 && n != RB_EAGAIN) {
            return rb_err_set(err, (int)n, e.cause, "connect %s: %s", conn->url_text, e.msg);
        }
        conn->rx_len += n > 0 ? (size_t)n : 0;
    }
}

static int connect_inner(const char *url, const ringbus_options *o, ringbus_conn **out, rb_err *err)
{
    rb_url u;
    int rc = rb_url_parse(url, &u, err);
    if (rc != 0) {
        return rc;
    }
    const rb_client_transport_ops *ops = rb_client_transport_for(u.scheme);
    if (ops == NULL) {
        return rb_err_set(err, RB_EUNSUPPORTED, 0, "connect %s: %s:// is not supported yet", url,
                          rb_url_scheme_name(u.scheme));
    }
    if ((rc = options_check(o, err)) != 0) {
        return rc;
    }
    ringbus_conn *conn = conn_new(url, o);
    if (conn == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "connect %s: out of memory", url);
    }
    conn->tp.ops = ops;
    conn->tp.ca_file = o->tls_ca_file;
    conn->tp.insecure = o->tls_insecure;
    conn->tp.ws_origin = o->ws_origin;
    conn->tp.cert_file = o->tls_cert_file;
    conn->tp.key_file = o->tls_key_file;
    conn->tp.tls_library = o->tls_library;
    int timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : CONNECT_MS_DEFAULT;
    int64_t deadline_ns = rb_client_now_ns() + (int64_t)timeout_ms * 1000000;
    rc = ops->connect(&conn->tp, &u, url, deadline_ns, err);
    conn->tp.ca_file = NULL; /* borrowed for connect only */
    conn->tp.ws_origin = NULL;
    conn->tp.cert_file = NULL;
    conn->tp.key_file = NULL;
    if (rc == 0) {
        rc = send_hello(conn, o, deadline_ns, err);
    }
    if (rc == 0) {
        rc = read_reply(conn, deadline_ns, err);
    }
    if (rc != 0) {
        ringbus_close(conn);
        return rc;
    }
    *out = conn;
    return 0;
}

int ringbus_connect(const char *url, const ringbus_options *options, ringbus_conn **conn,
                    ringbus_error *err)
{
    rb_err e = {0};
    ringbus_options defaults;
    if (options == NULL) {
        ringbus_options_init(&defaults);
        options = &defaults;
    }
    if (conn == NULL || url == NULL) {
        rb_err_set(&e, RB_EINVAL, 0, "connect: NULL url or conn");
        return rb_client_export_err(err, &e);
    }
    *conn = NULL;
    int rc = connect_inner(url, options, conn, &e);
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}

void ringbus_close(ringbus_conn *conn)
{
    if (conn == NULL) {
        return;
    }
    RB_ASSERT(!conn->in_callback);
    conn->state = CONN_DEAD;
    if (conn->slots != NULL) {
        slots_fail_all(conn, "connection closed by the client");
    }
    if (conn->tp.ops != NULL) {
        conn->tp.ops->close(&conn->tp);
    }
    while (conn->evq_head != NULL) {
        evnode *next = conn->evq_head->next;
        free(conn->evq_head);
        conn->evq_head = next;
    }
    free(conn->scratch);
    free(conn->ack_scratch);
    free(conn->sync_payload);
    free(conn->rx);
    free(conn->tx);
    free(conn->slots);
    free(conn->url_text);
    free(conn);
}

/* ---- accessors ---- */

uint32_t ringbus_keepalive_ms(const ringbus_conn *conn)
{
    return conn->keepalive_ms;
}

uint32_t ringbus_max_frame_bytes(const ringbus_conn *conn)
{
    return conn->max_frame_bytes;
}

uint64_t ringbus_capabilities(const ringbus_conn *conn)
{
    return conn->capabilities;
}

uint64_t ringbus_epoch(const ringbus_conn *conn)
{
    return conn->epoch;
}

const char *ringbus_server_id(const ringbus_conn *conn)
{
    return conn->server_id;
}

int ringbus_fd(const ringbus_conn *conn)
{
    return conn->tp.fd;
}

bool ringbus_want_write(const ringbus_conn *conn)
{
    /* Input a TLS or WebSocket layer already holds is invisible to poll:
     * asking for POLLOUT makes the caller's poll return and process it. */
    return conn->state != CONN_DEAD &&
           (out_pending(conn) || (in_pending(conn) && !conn->rx_stalled));
}

/* ---- processing ---- */

static int not_in_callback(const ringbus_conn *conn, const char *what, rb_err *err)
{
    if (conn->in_callback) {
        return rb_err_set(err, RB_EINVAL, 0, "%s: not allowed from a callback", what);
    }
    return 0;
}

int ringbus_process(ringbus_conn *conn, int timeout_ms, ringbus_error *err)
{
    rb_err e = {0};
    int rc = not_in_callback(conn, "ringbus_process", &e);
    if (rc == 0 && timeout_ms < 0) {
        rc = rb_err_set(&e, RB_EINVAL, 0, "ringbus_process: negative timeout");
    }
    if (rc == 0) {
        rc = process(conn, timeout_ms, &e);
    }
    return rc >= 0 ? rc : rb_client_export_err(err, &e);
}

int ringbus_flush(ringbus_conn *conn, ringbus_error *err)
{
    rb_err e = {0};
    if (conn->state == CONN_DEAD || conn->io_failed) {
        rb_err_set(&e, RB_ECLOSED, 0, "%s: connection closed", conn->url_text);
        return rb_client_export_err(err, &e);
    }
    tx_flush(conn);
    return 0;
}

/* Frees the head of the event queue once all its events were returned. */
static void evq_drop_consumed(ringbus_conn *conn)
{
    evnode *head = conn->evq_head;
    if (head != NULL && head->events_left == 0) {
        conn->evq_head = head->next;
        if (conn->evq_head == NULL) {
            conn->evq_tail = NULL;
        }
        conn->evq_bytes -= head->len;
        free(head);
    }
}

static int next_event(ringbus_conn *conn, ringbus_event *ev, int timeout_ms, rb_err *err)
{
    evq_drop_consumed(conn);
    int64_t deadline_ns = rb_client_now_ns() + (int64_t)timeout_ms * 1000000;
    for (;;) {
        evnode *head = conn->evq_head;
        if (head != NULL) {
            RB_ASSERT(head->events_left > 0);
            if (fill_event(conn, &head->frame, &head->iter, ev) != 0) {
                return rb_err_set(err, RB_ENOMEM, 0, "%s: event: out of memory", conn->url_text);
            }
            head->events_left--;
            return 1;
        }
        int rc = process(conn, rb_client_ms_until(deadline_ns), err);
        if (rc < 0) {
            return rc;
        }
        if (rc == 0 && rb_client_ms_until(deadline_ns) == 0) {
            return 0;
        }
    }
}

int ringbus_next_event(ringbus_conn *conn, ringbus_event *ev, int timeout_ms, ringbus_error *err)
{
    rb_err e = {0};
    int rc = not_in_callback(conn, "ringbus_next_event", &e);
    if (rc == 0 && conn->on_event != NULL) {
        rc = rb_err_set(&e, RB_EINVAL, 0, "ringbus_next_event: the connection has a callback");
    }
    if (rc == 0 && timeout_ms < 0) {
        rc = rb_err_set(&e, RB_EINVAL, 0, "ringbus_next_event: negative timeout");
    }
    if (rc == 0) {
        rc = next_event(conn, ev, timeout_ms, &e);
    }
    return rc >= 0 ? rc : rb_client_export_err(err, &e);
}

/* ---- requests ---- */

static int check_open(const ringbus_conn *conn, const char *what, rb_err *err)
{
    if (conn->state == CONN_DEAD || conn->io_failed) {
        return rb_err_set(err, RB_ECLOSED, 0, "%s: connection closed", what);
    }
    if (conn->state == CONN_HALF_CLOSED) {
        return rb_err_set(err, RB_ECLOSED, 0, "%s: connection is half-closed", what);
    }
    return 0;
}

static int publish(ringbus_conn *conn, rb_bytes topic, rb_bytes key, rb_bytes payload,
                   uint64_t *corr_id, rb_err *err, ringbus_publish_cb cb, void *ctx)
{
    int rc = check_open(conn, "publish", err);
    if (rc != 0) {
        return rc;
    }
    if (topic.len == 0 || topic.len > RB_TOPIC_BYTES_MAX || payload.len > UINT32_MAX) {
        return rb_err_set(err, RB_EINVAL, 0, "publish: topic must be 1..%d bytes",
                          RB_TOPIC_BYTES_MAX);
    }
    if (key.len > RB_IDEMPOTENCY_KEY_BYTES_MAX) {
        return rb_err_set(err, RB_EINVAL, 0, "publish: idempotency key must be 0..%d bytes",
                          RB_IDEMPOTENCY_KEY_BYTES_MAX);
    }
    size_t need = RB_FRAME_HEADER_BYTES + 1 + topic.len + 1 + key.len + 4 + payload.len;
    if (need > conn->max_frame_bytes || need > conn->tx_max) {
        return rb_err_set(err, RB_ELIMIT, 0,
                          "publish to %.*s: frame of %zu bytes exceeds max_frame_bytes %u",
                          (int)topic.len, (const char *)topic.ptr, need, conn->max_frame_bytes);
    }
    if (conn->inflight_count >= conn->window) {
        return rb_err_set(err, RB_EAGAIN, 0, "publish: window of %u in flight is full",
                          conn->window);
    }
    if ((rc = tx_reserve(conn, need, false, err)) != 0) {
        return rc;
    }
    pending *slot = slot_alloc(conn);
    slot->cb = cb;
    slot->ctx = ctx;
    size_t n = rb_frame_encode_publish(conn->tx + conn->tx_len, conn->tx_cap - conn->tx_len,
                                       slot->corr_id, topic, key, payload);
    RB_ASSERT(n == need);
    conn->tx_len += n;
    if (corr_id != NULL) {
        *corr_id = slot->corr_id;
    }
    return 0;
}

int ringbus_publish(ringbus_conn *conn, const char *topic, size_t topic_len, const void *payload,
                    size_t payload_len, uint64_t *corr_id, ringbus_error *err,
                    ringbus_publish_cb cb, void *ctx)
{
    return ringbus_publish_key(conn, topic, topic_len, NULL, 0, payload, payload_len, corr_id, err,
                               cb, ctx);
}

int ringbus_publish_key(ringbus_conn *conn, const char *topic, size_t topic_len, const void *key,
                        size_t key_len, const void *payload, size_t payload_len, uint64_t *corr_id,
                        ringbus_error *err, ringbus_publish_cb cb, void *ctx)
{
    rb_err e = {0};
    if (topic == NULL || (payload == NULL && payload_len != 0) || (key == NULL && key_len != 0)) {
        rb_err_set(&e, RB_EINVAL, 0, "publish: NULL topic, key or payload");
        return rb_client_export_err(err, &e);
    }
    int rc = publish(conn, bytes_of(topic, topic_len), bytes_of(key, key_len),
                     bytes_of(payload, payload_len), corr_id, &e, cb, ctx);
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}

/* ---- for the session (client/conn_internal.h) ---- */

int64_t rb_conn_last_rx_ns(const ringbus_conn *conn)
{
    return conn->last_rx_ns;
}

bool rb_conn_going_away(const ringbus_conn *conn, uint32_t *hint_ms)
{
    *hint_ms = conn->going_away_hint_ms;
    return conn->going_away;
}

/* Queues a PING with a fresh nonce (its PONG sets pong_seen). */
static int queue_ping(ringbus_conn *conn, rb_err *err)
{
    int rc = tx_reserve(conn, RB_FRAME_HEADER_BYTES + 8, true, err);
    if (rc != 0) {
        return rc;
    }
    conn->ping_nonce = conn->ping_nonce + 1;
    conn->pong_seen = false;
    conn->tx_len += rb_frame_encode_ping(conn->tx + conn->tx_len, conn->tx_cap - conn->tx_len, 0,
                                         conn->ping_nonce);
    return 0;
}

int rb_conn_probe(ringbus_conn *conn)
{
    if (conn->state != CONN_OPEN || conn->io_failed || queue_ping(conn, NULL) != 0) {
        return RB_ECLOSED;
    }
    tx_flush(conn);
    return 0;
}

typedef struct sync_result {
    bool done;
    int status;
    int wire_code;
    uint64_t seq;
    char message[RB_ERR_MSG_BYTES_MAX];
} sync_result;

static void sync_done(const ringbus_publish_result *res, void *ctx)
{
    sync_result *r = ctx;
    r->done = true;
    r->status = res->status;
    r->wire_code = res->wire_code;
    r->seq = res->seq;
    snprintf(r->message, sizeof r->message, "%s", res->message);
}

/* Publishes, waiting out a full window or send buffer until deadline_ns. */
static int publish_start(ringbus_conn *conn, rb_bytes topic, rb_bytes payload, int64_t deadline_ns,
                         sync_result *r, uint64_t *corr_id, rb_err *err)
{
    for (;;) {
        int rc = publish(conn, topic, bytes_of(NULL, 0), payload, corr_id, err, sync_done, r);
        if (rc != RB_EAGAIN) {
            return rc;
        }
        if (rb_client_ms_until(deadline_ns) == 0) {
            return rb_err_set(err, RB_ETIMEDOUT, 0, "publish: timed out waiting for room");
        }
        rc = process(conn, rb_client_ms_until(deadline_ns), err);
        if (rc < 0) {
            return rc;
        }
    }
}

static int publish_wait(ringbus_conn *conn, uint64_t corr_id, int64_t deadline_ns,
                        const sync_result *r, rb_err *err)
{
    while (!r->done) {
        if (rb_client_ms_until(deadline_ns) == 0) {
            /* The ack may still come: forget the stack result it would fill. */
            pending *slot = slot_find(conn, corr_id);
            RB_ASSERT(slot != NULL);
            slot->cb = NULL;
            return rb_err_set(err, RB_ETIMEDOUT, 0, "publish: timed out waiting for the ack");
        }
        int rc = process(conn, rb_client_ms_until(deadline_ns), err);
        if (rc < 0 && !r->done) {
            return rc;
        }
    }
    if (r->status == RINGBUS_ESERVER) {
        return rb_err_set(err, RB_CLIENT_ESERVER, r->wire_code, "publish: %s: %s",
                          rb_wire_code_name((uint16_t)r->wire_code), r->message);
    }
    if (r->status != 0) {
        return rb_err_set(err, r->status, 0, "publish: %s", r->message);
    }
    return 0;
}

int ringbus_publish_sync(ringbus_conn *conn, const char *topic, size_t topic_len,
                         const void *payload, size_t payload_len, uint64_t *seq, ringbus_error *err)
{
    rb_err e = {0};
    int rc = not_in_callback(conn, "ringbus_publish_sync", &e);
    if (rc == 0 && (topic == NULL || (payload == NULL && payload_len != 0))) {
        rc = rb_err_set(&e, RB_EINVAL, 0, "publish: NULL topic or payload");
    }
    sync_result r = {0};
    uint64_t corr_id = 0;
    int64_t deadline_ns = rb_client_now_ns() + (int64_t)conn->request_timeout_ms * 1000000;
    if (rc == 0) {
        rc = publish_start(conn, bytes_of(topic, topic_len), bytes_of(payload, payload_len),
                           deadline_ns, &r, &corr_id, &e);
    }
    if (rc == 0) {
        rc = publish_wait(conn, corr_id, deadline_ns, &r, &e);
    }
    if (rc != 0) {
        return rb_client_export_err(err, &e);
    }
    if (seq != NULL) {
        *seq = r.seq;
    }
    return 0;
}

static int mutate_check(uint64_t mutate_id, const ringbus_add *adds, size_t add_count,
                        const char *const *removes, size_t remove_count, size_t *need, rb_err *err)
{
    if ((add_count > 0 && adds == NULL) || (remove_count > 0 && removes == NULL)) {
        return rb_err_set(err, RB_EINVAL, 0, "mutate: NULL adds or removes");
    }
    if (add_count > RB_TOPICS_PER_STREAM_MAX || remove_count > RB_TOPICS_PER_STREAM_MAX) {
        return rb_err_set(err, RB_EINVAL, 0, "mutate: more than %d topics",
                          RB_TOPICS_PER_STREAM_MAX);
    }
    if ((mutate_id & RINGBUS_CORR_MUTATE) != 0 || (add_count > 0 && mutate_id == 0)) {
        return rb_err_set(err, RB_EINVAL, 0, "mutate: mutate_id must be in 1..2^63-1");
    }
    *need = RB_FRAME_HEADER_BYTES + 8 + 1 + 4 + 4 + 8;
    for (size_t i = 0; i < add_count + remove_count; i++) {
        const char *t = i < add_count ? adds[i].topic : removes[i - add_count];
        size_t len = t != NULL ? strnlen(t, RB_TOPIC_BYTES_MAX + 1) : 0;
        if (len == 0 || len > RB_TOPIC_BYTES_MAX) {
            return rb_err_set(err, RB_EINVAL, 0, "mutate: topic %zu must be 1..%d bytes", i,
                              RB_TOPIC_BYTES_MAX);
        }
        *need += 1 + len + (i < add_count ? 1 + 8 : 0);
    }
    return 0;
}

static int mutate(ringbus_conn *conn, uint64_t mutate_id, uint64_t epoch, const ringbus_add *adds,
                  size_t add_count, const char *const *removes, size_t remove_count,
                  bool history_only, rb_err *err)
{
    size_t need = 0;
    int rc = check_open(conn, "mutate", err);
    if (rc == 0) {
        rc = mutate_check(mutate_id, adds, add_count, removes, remove_count, &need, err);
    }
    if (rc == 0 && (need > conn->max_frame_bytes || need > conn->tx_max)) {
        rc = rb_err_set(err, RB_ELIMIT, 0, "mutate: frame of %zu bytes exceeds max_frame_bytes %u",
                        need, conn->max_frame_bytes);
    }
    if (rc != 0 || (rc = tx_reserve(conn, need, false, err)) != 0) {
        return rc;
    }
    rb_mutate_add *a = calloc(add_count + 1, sizeof *a);
    rb_bytes *r = calloc(remove_count + 1, sizeof *r);
    if (a == NULL || r == NULL) {
        free(a);
        free(r);
        return rb_err_set(err, RB_ENOMEM, 0, "mutate: out of memory");
    }
    for (size_t i = 0; i < add_count; i++) {
        a[i].topic = bytes_of(adds[i].topic, strlen(adds[i].topic));
        a[i].cursor_kind = adds[i].is_now ? RB_CURSOR_NOW : RB_CURSOR_SEQ;
        a[i].cursor = adds[i].is_now ? 0 : adds[i].cursor;
    }
    for (size_t i = 0; i < remove_count; i++) {
        r[i] = bytes_of(removes[i], strlen(removes[i]));
    }
    size_t n = rb_frame_encode_mutate(conn->tx + conn->tx_len, conn->tx_cap - conn->tx_len,
                                      RINGBUS_CORR_MUTATE | mutate_id, mutate_id,
                                      history_only ? RB_MUTATE_HISTORY_ONLY : 0, a,
                                      (uint32_t)add_count, r, (uint32_t)remove_count, epoch);
    RB_ASSERT(n == need);
    conn->tx_len += n;
    free(a);
    free(r);
    return 0;
}

int ringbus_mutate(ringbus_conn *conn, uint64_t mutate_id, const ringbus_add *adds,
                   size_t add_count, const char *const *removes, size_t remove_count,
                   bool history_only, ringbus_error *err)
{
    rb_err e = {0};
    int rc = mutate(conn, mutate_id, 0, adds, add_count, removes, remove_count, history_only, &e);
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}

int ringbus_mutate_epoch(ringbus_conn *conn, uint64_t mutate_id, uint64_t epoch,
                         const ringbus_add *adds, size_t add_count, const char *const *removes,
                         size_t remove_count, bool history_only, ringbus_error *err)
{
    rb_err e = {0};
    int rc =
        mutate(conn, mutate_id, epoch, adds, add_count, removes, remove_count, history_only, &e);
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}

static int ping(ringbus_conn *conn, uint64_t *rtt_ns, rb_err *err)
{
    int rc = check_open(conn, "ping", err);
    if (rc != 0 || (rc = queue_ping(conn, err)) != 0) {
        return rc;
    }
    int64_t start_ns = rb_client_now_ns();
    int64_t deadline_ns = start_ns + (int64_t)conn->request_timeout_ms * 1000000;
    while (!conn->pong_seen) {
        if (conn->state == CONN_DEAD) {
            return rb_err_set(err, RB_ECLOSED, 0, "ping: connection closed");
        }
        if (rb_client_ms_until(deadline_ns) == 0) {
            return rb_err_set(err, RB_ETIMEDOUT, 0, "ping: timed out waiting for the pong");
        }
        rc = process(conn, rb_client_ms_until(deadline_ns), err);
        if (rc < 0) {
            return rc;
        }
    }
    if (rtt_ns != NULL) {
        *rtt_ns = (uint64_t)(conn->pong_ns - start_ns);
    }
    return 0;
}

static int refresh_token(ringbus_conn *conn, const char *token, rb_err *err)
{
    int rc = check_open(conn, "refresh_token", err);
    if (rc != 0) {
        return rc;
    }
    if (token == NULL) {
        return rb_err_set(err, RB_EINVAL, 0, "refresh_token: token is NULL");
    }
    ringbus_options o;
    ringbus_options_init(&o);
    o.token = token;
    uint8_t cred[RB_AUTH_CREDENTIALS_BYTES_MAX];
    size_t len = 0;
    rc = sign_in_credentials(&o, cred, sizeof cred, &len, err);
    if (rc != 0 || (rc = tx_reserve(conn, RB_FRAME_HEADER_BYTES + 2 + len, true, err)) != 0) {
        return rc;
    }
    conn->auth_corr = RINGBUS_CORR_AUTH | (conn->auth_corr + 1);
    conn->auth_answered = false;
    conn->tx_len += rb_frame_encode_auth(conn->tx + conn->tx_len, conn->tx_cap - conn->tx_len,
                                         conn->auth_corr, (rb_bytes){cred, len});
    int64_t deadline_ns = rb_client_now_ns() + (int64_t)conn->request_timeout_ms * 1000000;
    while (!conn->auth_answered) {
        if (conn->state == CONN_DEAD) {
            return rb_err_set(err, RB_ECLOSED, 0, "refresh_token: connection closed");
        }
        if (rb_client_ms_until(deadline_ns) == 0) {
            return rb_err_set(err, RB_ETIMEDOUT, 0, "refresh_token: no answer to AUTH in time");
        }
        rc = process(conn, rb_client_ms_until(deadline_ns), err);
        if (rc < 0) {
            return rc;
        }
    }
    if (conn->auth_code != 0) {
        return rb_err_set(err, RB_CLIENT_ESERVER, conn->auth_code, "refresh_token: %s: %s",
                          rb_wire_code_name(conn->auth_code), conn->auth_msg);
    }
    return 0;
}

int ringbus_refresh_token(ringbus_conn *conn, const char *token, ringbus_error *err)
{
    rb_err e = {0};
    int rc = not_in_callback(conn, "ringbus_refresh_token", &e);
    if (rc == 0) {
        rc = refresh_token(conn, token, &e);
    }
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}

int ringbus_ping(ringbus_conn *conn, uint64_t *rtt_ns, ringbus_error *err)
{
    rb_err e = {0};
    int rc = not_in_callback(conn, "ringbus_ping", &e);
    if (rc == 0) {
        rc = ping(conn, rtt_ns, &e);
    }
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}

int ringbus_half_close(ringbus_conn *conn, ringbus_error *err)
{
    rb_err e = {0};
    if (conn->state == CONN_DEAD || conn->io_failed) {
        rb_err_set(&e, RB_ECLOSED, 0, "%s: connection closed", conn->url_text);
        return rb_client_export_err(err, &e);
    }
    if (conn->state == CONN_OPEN) {
        tx_control_close(conn, RB_WIRE_OK, "");
        conn->state = CONN_HALF_CLOSED;
        tx_flush(conn);
    }
    return 0;
}

/* ---- request/reply between clients ---- */

const char *ringbus_client_id(const ringbus_conn *conn)
{
    return conn->client_id;
}

static int name_arg(const char *name, size_t min_len, const char *what, rb_err *err)
{
    size_t len = name == NULL ? 0 : strlen(name);
    if (len < min_len || len > RB_RPC_NAME_BYTES_MAX ||
        !rb_utf8_valid((const uint8_t *)name, len)) {
        return rb_err_set(err, RB_EINVAL, 0, "%s must be %zu..%d bytes of UTF-8", what, min_len,
                          RB_RPC_NAME_BYTES_MAX);
    }
    return 0;
}

/* Waits for *answered, processing frames, until deadline_ns. */
static int wait_answer(ringbus_conn *conn, const bool *answered, int64_t deadline_ns,
                       const char *what, rb_err *err)
{
    while (!*answered) {
        if (conn->state == CONN_DEAD) {
            return rb_err_set(err, RB_ECLOSED, 0, "%s: connection closed", what);
        }
        if (rb_client_ms_until(deadline_ns) == 0) {
            return rb_err_set(err, RB_ETIMEDOUT, 0, "%s: no answer in time", what);
        }
        int rc = process(conn, rb_client_ms_until(deadline_ns), err);
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

static int register_method(ringbus_conn *conn, uint8_t kind, const char *method,
                           const char *service, rb_err *err)
{
    const char *what = kind == RB_FRAME_REGISTER ? "register" : "unregister";
    int rc = check_open(conn, what, err);
    if (rc != 0 || (rc = name_arg(method, 1, "method", err)) != 0 ||
        (rc = name_arg(service == NULL ? "" : service, 0, "service", err)) != 0) {
        return rc;
    }
    rb_bytes m = bytes_of(method, strlen(method));
    rb_bytes svc = bytes_of(service, service == NULL ? 0 : strlen(service));
    if ((rc = tx_reserve(conn, RB_FRAME_HEADER_BYTES + 2 + m.len + svc.len, true, err)) != 0) {
        return rc;
    }
    conn->reg_corr = RINGBUS_CORR_REGISTER | ((conn->reg_corr + 1) & (RINGBUS_CORR_REGISTER - 1));
    conn->reg_answered = false;
    conn->tx_len += rb_frame_encode_register(conn->tx + conn->tx_len, conn->tx_cap - conn->tx_len,
                                             kind, conn->reg_corr, m, svc);
    int64_t deadline_ns = rb_client_now_ns() + (int64_t)conn->request_timeout_ms * 1000000;
    rc = wait_answer(conn, &conn->reg_answered, deadline_ns, what, err);
    if (rc != 0) {
        return rc;
    }
    if (conn->reg_code != 0) {
        return rb_err_set(err, RB_CLIENT_ESERVER, conn->reg_code, "%s %s: %s: %s", what, method,
                          rb_wire_code_name(conn->reg_code), conn->reg_msg);
    }
    return 0;
}

int ringbus_register(ringbus_conn *conn, const char *method, const char *service,
                     ringbus_error *err)
{
    rb_err e = {0};
    int rc = not_in_callback(conn, "ringbus_register", &e);
    if (rc == 0) {
        rc = register_method(conn, RB_FRAME_REGISTER, method, service, &e);
    }
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}

int ringbus_unregister(ringbus_conn *conn, const char *method, const char *service,
                       ringbus_error *err)
{
    rb_err e = {0};
    int rc = not_in_callback(conn, "ringbus_unregister", &e);
    if (rc == 0) {
        rc = register_method(conn, RB_FRAME_UNREGISTER, method, service, &e);
    }
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}

static int call(ringbus_conn *conn, const char *destination, const char *method, rb_bytes payload,
                uint32_t timeout_ms, uint64_t *call_id, rb_err *err)
{
    int rc = check_open(conn, "call", err);
    if (rc != 0 || (rc = name_arg(destination, 1, "destination", err)) != 0 ||
        (rc = name_arg(method, 1, "method", err)) != 0) {
        return rc;
    }
    if (timeout_ms > RB_RPC_TIMEOUT_MS_MAX) {
        return rb_err_set(err, RB_EINVAL, 0, "call: timeout_ms above %u", RB_RPC_TIMEOUT_MS_MAX);
    }
    rb_bytes d = bytes_of(destination, strlen(destination));
    rb_bytes m = bytes_of(method, strlen(method));
    size_t need = RB_FRAME_HEADER_BYTES + 4 + 1 + d.len + 1 + m.len + 4 + payload.len;
    if (need > conn->max_frame_bytes || need > conn->tx_max) {
        return rb_err_set(err, RB_ELIMIT, 0, "call: frame of %zu bytes exceeds max_frame_bytes %u",
                          need, conn->max_frame_bytes);
    }
    if ((rc = tx_reserve(conn, need, false, err)) != 0) {
        return rc;
    }
    conn->next_call = (conn->next_call + 1) & (RINGBUS_CORR_CALL - 1);
    uint64_t id = RINGBUS_CORR_CALL | conn->next_call;
    size_t n = rb_frame_encode_request(conn->tx + conn->tx_len, conn->tx_cap - conn->tx_len, id,
                                       timeout_ms, d, m, payload);
    RB_ASSERT(n == need);
    conn->tx_len += n;
    if (call_id != NULL) {
        *call_id = id;
    }
    return 0;
}

int ringbus_call(ringbus_conn *conn, const char *destination, const char *method,
                 const void *payload, size_t payload_len, uint32_t timeout_ms, uint64_t *call_id,
                 ringbus_error *err)
{
    rb_err e = {0};
    int rc = RB_EINVAL;
    if (payload == NULL && payload_len != 0) {
        rb_err_set(&e, RB_EINVAL, 0, "call: NULL payload");
    } else {
        rc = call(conn, destination, method, bytes_of(payload, payload_len), timeout_ms, call_id,
                  &e);
    }
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}

static int call_sync(ringbus_conn *conn, const char *destination, const char *method,
                     rb_bytes payload, uint32_t timeout_ms, ringbus_call_result *res, rb_err *err)
{
    uint64_t id;
    int rc = call(conn, destination, method, payload, timeout_ms, &id, err);
    if (rc != 0) {
        return rc;
    }
    conn->sync_corr = id;
    conn->sync_answered = false;
    /* The server answers by the call's timeout; the request timeout on top
     * covers the trip. */
    uint32_t wait_ms = timeout_ms == 0 ? RB_RPC_TIMEOUT_MS_DEFAULT : timeout_ms;
    int64_t deadline_ns =
        rb_client_now_ns() + ((int64_t)wait_ms + conn->request_timeout_ms) * 1000000;
    rc = wait_answer(conn, &conn->sync_answered, deadline_ns, "call", err);
    conn->sync_corr = 0;
    if (rc != 0) {
        return rc;
    }
    if (res != NULL) {
        res->code = conn->sync_code;
        res->message = conn->sync_msg;
        res->payload = conn->sync_payload;
        res->payload_len = conn->sync_payload_len;
    }
    if (conn->sync_code != 0) {
        return rb_err_set(err, RB_CLIENT_ESERVER, conn->sync_code, "call %s %s: %s: %s",
                          destination, method, rb_wire_code_name(conn->sync_code), conn->sync_msg);
    }
    return 0;
}

int ringbus_call_sync(ringbus_conn *conn, const char *destination, const char *method,
                      const void *payload, size_t payload_len, uint32_t timeout_ms,
                      ringbus_call_result *res, ringbus_error *err)
{
    rb_err e = {0};
    int rc = not_in_callback(conn, "ringbus_call_sync", &e);
    if (rc == 0 && payload == NULL && payload_len != 0) {
        rc = rb_err_set(&e, RB_EINVAL, 0, "call: NULL payload");
    }
    if (rc == 0) {
        rc = call_sync(conn, destination, method, bytes_of(payload, payload_len), timeout_ms, res,
                       &e);
    }
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}

static int send_ack(ringbus_conn *conn, uint64_t corr, uint8_t flags, rb_err *err)
{
    int rc = check_open(conn, "request ack", err);
    if (rc != 0 || (rc = tx_reserve(conn, RB_FRAME_HEADER_BYTES + 1, false, err)) != 0) {
        return rc;
    }
    conn->tx_len += rb_frame_encode_request_ack(conn->tx + conn->tx_len,
                                                conn->tx_cap - conn->tx_len, corr, flags);
    return 0;
}

int ringbus_call_cancel(ringbus_conn *conn, uint64_t call_id, ringbus_error *err)
{
    rb_err e = {0};
    int rc = send_ack(conn, call_id, RB_REQUEST_ACK_CANCEL, &e);
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}

int ringbus_request_ack(ringbus_conn *conn, uint64_t request_id, ringbus_error *err)
{
    rb_err e = {0};
    int rc = send_ack(conn, request_id, 0, &e);
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}

static int respond(ringbus_conn *conn, uint64_t request_id, int code, const char *message,
                   rb_bytes payload, rb_err *err)
{
    int rc = check_open(conn, "respond", err);
    if (rc != 0) {
        return rc;
    }
    if (code != 0 && code != RB_WIRE_APPLICATION_ERROR) {
        return rb_err_set(err, RB_EINVAL, 0, "respond: code must be 0 or application_error");
    }
    rb_bytes m = bytes_of(message, message == NULL ? 0 : strlen(message));
    if (m.len > RB_SHORT_STRING_BYTES_MAX || !rb_utf8_valid(m.ptr, m.len)) {
        return rb_err_set(err, RB_EINVAL, 0, "respond: message must be UTF-8 of at most %d bytes",
                          RB_SHORT_STRING_BYTES_MAX);
    }
    size_t need = RB_FRAME_RESPONSE_FIXED_BYTES + m.len + payload.len;
    if (need > conn->max_frame_bytes || need > conn->tx_max) {
        return rb_err_set(err, RB_ELIMIT, 0,
                          "respond: frame of %zu bytes exceeds max_frame_bytes %u", need,
                          conn->max_frame_bytes);
    }
    if ((rc = tx_reserve(conn, need, false, err)) != 0) {
        return rc;
    }
    conn->tx_len += rb_frame_encode_response(conn->tx + conn->tx_len, conn->tx_cap - conn->tx_len,
                                             request_id, (uint16_t)code, m, payload);
    return 0;
}

int ringbus_respond(ringbus_conn *conn, uint64_t request_id, int code, const char *message,
                    const void *payload, size_t payload_len, ringbus_error *err)
{
    rb_err e = {0};
    int rc = RB_EINVAL;
    if (payload == NULL && payload_len != 0) {
        rb_err_set(&e, RB_EINVAL, 0, "respond: NULL payload");
    } else {
        rc = respond(conn, request_id, code, message, bytes_of(payload, payload_len), &e);
    }
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}
