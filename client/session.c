/* The resilient session (client/ringbus.h, "the resilient session"): one
 * ringbus_conn at a time, replaced after a loss. The session keeps what a
 * new connection needs to continue where the old one stopped: each topic's
 * last delivered seq (re-added from it, so a reconnect brings no gap and,
 * filtered here, no duplicate), and a copy of each publish until its ack
 * (re-sent with its idempotency key, so the server stores it once). */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "client/backoff.h"
#include "client/conn_internal.h"
#include "client/ringbus.h"
#include "client/transport.h"
#include "common/assert.h"
#include "common/err.h"
#include "common/hash.h"
#include "common/limits.h"

#define BASE_MS_DEFAULT 100
#define CAP_MS_DEFAULT  10000
#define REISSUE_DEFAULT 8
/* Half the server's default dedup window (2 min): a re-send after the
 * window would be a new message. */
#define RETRY_MS_DEFAULT   60000
#define PUB_BYTES_DEFAULT  ((size_t)8 << 20)
#define PUB_WINDOW_DEFAULT 4096
#define TOPICS_DEFAULT     100000
#define SYNTH_MAX          4
#define BUCKETS_INITIAL    64
/* Encoded bytes of one add beyond its name (length, kind, cursor), with
 * room to spare; a re-add Mutate stays below this share of the frame. */
#define ADD_OVERHEAD_BYTES    16
#define MUTATE_HEADROOM_BYTES 256
/* How long re-adding the topics may wait for room in the send buffer. */
#define RESUBSCRIBE_WAIT_STEP_MS 50

typedef enum sstate {
    S_CONNECTED = 0,
    S_CLOSING = 1, /* our CLOSE is sent; the server's CLOSE ends the session */
    S_WAITING = 2, /* between connections: retry_ns is the next attempt */
    S_CLOSED = 3,  /* the session's CLOSED event was produced */
} sstate;

/* A publish the application has not had its answer for. */
typedef struct spub {
    struct spub *prev, *next; /* publish order */
    struct ringbus_session *s;
    uint64_t id;
    int64_t due_ns;        /* not sent before (after an `unavailable` answer) */
    int64_t first_sent_ns; /* 0 = never sent: it cannot have been stored */
    bool sent;             /* the current connection holds its callback */
    uint32_t reissues;
    ringbus_publish_cb cb;
    void *ctx;
    uint16_t topic_len;
    uint16_t key_len;
    uint32_t payload_len;
    uint8_t data[]; /* topic, key, payload */
} spub;

/* A topic the session follows. */
typedef struct ssub {
    struct ssub *next; /* hash chain */
    uint64_t last_seq; /* the last seq delivered, or the add's cursor */
    uint64_t epoch;    /* the epoch of last_seq */
    uint64_t wave;     /* the wave it is catching up in, 0 when live */
    uint32_t gen;      /* re-add pass marker */
    bool has_cursor;   /* false: added at now, nothing delivered yet */
    bool history_only;
    uint8_t topic_len;
    char topic[]; /* NUL-terminated */
} ssub;

typedef struct synth {
    ringbus_event ev;
    char message[RB_ERR_MSG_BYTES_MAX];
} synth;

struct ringbus_session {
    char *urls[RINGBUS_SESSION_URLS_MAX]; /* owned */
    size_t url_count, url_index;
    ringbus_options copt; /* strings owned (below) */
    char *own_name, *own_ca, *own_origin, *own_token, *own_user, *own_cert, *own_key;
    uint8_t *own_credentials, *own_password;

    bool no_reconnect;
    uint32_t base_ms, cap_ms, attempts_max, reissue_max, topics_max, watchdog_ms, retry_ms;
    size_t pub_bytes_max; /* the ring's size */
    uint32_t pub_window;
    ringbus_event_cb on_event;
    void *event_ctx;
    ringbus_cursor_load_cb cursor_load;
    ringbus_cursor_save_cb cursor_save;
    void *cursor_ctx;

    ringbus_conn *conn; /* owned; NULL while waiting */
    sstate state;
    bool in_callback;
    bool final; /* closing for good: ECLOSED answers are not re-sent */
    bool lost;  /* the connection's CLOSED came through the callback */
    uint16_t lost_code;
    char lost_msg[RB_ERR_MSG_BYTES_MAX];
    uint64_t conn_epoch;
    int64_t probe_rx_ns; /* last_rx when the watchdog probed; -1 = none */

    uint32_t attempt; /* attempts since the last connection */
    int64_t retry_ns;
    uint64_t rnd;

    /* Publishes live in one ring of pub_bytes_max bytes, in publish order
     * (the list's), so a publish costs no malloc: the live bytes run from
     * pub_head to ring_tail, through ring_wrap_end and 0 when wrapped. */
    uint8_t *ring;
    size_t ring_tail, ring_wrap_end;
    bool ring_wrapped;
    spub *pub_head, *pub_tail;
    spub *first_queued; /* no unsent publish comes before it */
    uint32_t pub_count, queued_count;
    int64_t pub_due_ns; /* the earliest due of a held publish, 0 = none */
    uint64_t next_pub_id;
    char key_prefix[17];

    ssub **buckets;
    uint32_t bucket_mask, sub_count, gen;
    uint64_t next_wave;

    synth synq[SYNTH_MAX];
    uint32_t syn_head, syn_count;
    synth cur;        /* the synthetic event next_event returned */
    uint64_t emitted; /* synthetic events so far */

    int epfd, tfd, reg_fd;
    uint32_t reg_events;
    int64_t timer_ns;
};

/* ---- synthetic events ---- */

static void emit(ringbus_session *s, ringbus_event_kind kind, int code, const char *message,
                 uint32_t attempt, uint32_t delay_ms, uint64_t mutate_id)
{
    synth one = {0};
    one.ev.kind = kind;
    one.ev.code = code;
    one.ev.attempt = attempt;
    one.ev.delay_ms = delay_ms;
    one.ev.mutate_id = mutate_id;
    snprintf(one.message, sizeof one.message, "%s", message != NULL ? message : "");
    s->emitted++;
    if (s->on_event != NULL) {
        one.ev.message = one.message;
        bool was = s->in_callback;
        s->in_callback = true;
        s->on_event(&one.ev, s->event_ctx);
        s->in_callback = was;
        return;
    }
    if (s->syn_count == SYNTH_MAX) {
        /* Only RECONNECTING events can pile up unread; the oldest goes. */
        s->syn_head = (s->syn_head + 1) % SYNTH_MAX;
        s->syn_count--;
    }
    s->synq[(s->syn_head + s->syn_count) % SYNTH_MAX] = one;
    s->syn_count++;
}

/* ---- publishes ---- */

static void pub_unlink(ringbus_session *s, spub *r)
{
    if (s->first_queued == r) {
        s->first_queued = r->next;
    }
    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else {
        s->pub_head = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    } else {
        s->pub_tail = r->prev;
    }
    if (!r->sent) {
        s->queued_count--;
    }
    s->pub_count--;
    /* The ring's oldest live byte is now pub_head's: once that is below
     * the tail again, the wrapped part at the end is free. */
    if (s->pub_head == NULL) {
        s->ring_tail = 0;
        s->ring_wrapped = false;
    } else if (s->ring_wrapped && (size_t)((uint8_t *)s->pub_head - s->ring) < s->ring_tail) {
        s->ring_wrapped = false;
    }
}

/* Room for bytes (a multiple of 8) at the ring's tail, or NULL when the
 * ring is full. */
static spub *ring_take(ringbus_session *s, size_t bytes)
{
    size_t head = s->pub_head != NULL ? (size_t)((uint8_t *)s->pub_head - s->ring) : 0;
    size_t at;
    if (!s->ring_wrapped && s->pub_bytes_max - s->ring_tail >= bytes) {
        at = s->ring_tail;
    } else if (!s->ring_wrapped && head >= bytes) {
        s->ring_wrapped = true;
        s->ring_wrap_end = s->ring_tail;
        at = 0;
    } else if (s->ring_wrapped && head - s->ring_tail >= bytes) {
        at = s->ring_tail;
    } else {
        return NULL;
    }
    s->ring_tail = at + bytes;
    return (spub *)(void *)(s->ring + at);
}

/* Gives the application its one answer and forgets the publish. */
static void pub_answer(ringbus_session *s, spub *r, const ringbus_publish_result *res)
{
    ringbus_publish_result out = *res;
    out.corr_id = r->id;
    ringbus_publish_cb cb = r->cb;
    void *ctx = r->ctx;
    /* Its ring bytes are free from here: a publish from the callback may
     * take them. */
    pub_unlink(s, r);
    if (cb != NULL) {
        bool was = s->in_callback;
        s->in_callback = true;
        cb(&out, ctx);
        s->in_callback = was;
    }
}

static void pub_fail(ringbus_session *s, spub *r, int status, int wire_code, const char *why)
{
    ringbus_publish_result res = {
        .status = status, .wire_code = wire_code, .message = why, .topic = ""};
    pub_answer(s, r, &res);
}

static void pub_requeue(ringbus_session *s, spub *r, int64_t due_ns)
{
    r->sent = false;
    r->due_ns = due_ns;
    s->queued_count++;
    if (s->first_queued == NULL || r->id < s->first_queued->id) {
        s->first_queued = r;
    }
}

/* A publish first sent longer than publish_retry_ms ago is not re-sent: it
 * could land after the server's dedup window and be stored twice. */
#define STALE_WHY "publish: unanswered for more than publish_retry_ms (%u ms), not re-sent"

static bool pub_stale(const ringbus_session *s, const spub *r, int64_t now)
{
    return r->first_sent_ns != 0 && now - r->first_sent_ns >= (int64_t)s->retry_ms * 1000000;
}

static void pub_conn_done(const ringbus_publish_result *res, void *ctx)
{
    spub *r = ctx;
    ringbus_session *s = r->s;
    RB_ASSERT(r->sent);
    bool closed = res->status == RINGBUS_ECLOSED;
    bool unavailable = res->status == RINGBUS_ESERVER && res->wire_code == RINGBUS_WIRE_UNAVAILABLE;
    if (!(closed || unavailable) || s->final || s->no_reconnect) {
        pub_answer(s, r, res);
        return;
    }
    bool fresh = !pub_stale(s, r, rb_client_now_ns());
    if (fresh && r->reissues < s->reissue_max) {
        r->reissues++;
        int64_t due_ns = 0;
        if (unavailable) {
            /* The store is down: wait as a reconnect would before asking it
             * again, longer each time. */
            due_ns = rb_client_now_ns() + (int64_t)rb_backoff_ms(s->base_ms, s->cap_ms, r->reissues,
                                                                 rb_backoff_next(&s->rnd)) *
                                              1000000;
        }
        pub_requeue(s, r, due_ns);
        return;
    }
    char why[RB_ERR_MSG_BYTES_MAX];
    if (fresh) {
        snprintf(why, sizeof why, "publish: re-sent %u times without an answer: %.180s",
                 r->reissues, res->message);
    } else {
        snprintf(why, sizeof why, STALE_WHY ": %.120s", s->retry_ms, res->message);
    }
    ringbus_publish_result copy = *res;
    copy.message = why;
    pub_answer(s, r, &copy);
}

/* Sends the publishes that wait for a connection, in publish order. */
static void pub_pump(ringbus_session *s)
{
    uint32_t hint_ms;
    if (s->state != S_CONNECTED || s->queued_count == 0 || rb_conn_going_away(s->conn, &hint_ms)) {
        return; /* a server going away gets nothing new: the next one will */
    }
    int64_t now = rb_client_now_ns();
    spub *first = NULL;
    s->pub_due_ns = 0;
    for (spub *r = s->first_queued, *next; r != NULL; r = next) {
        next = r->next;
        if (r->sent) {
            continue;
        }
        if (pub_stale(s, r, now)) {
            /* Waited out a long outage. */
            char why[RB_ERR_MSG_BYTES_MAX];
            snprintf(why, sizeof why, STALE_WHY, s->retry_ms);
            pub_fail(s, r, RINGBUS_ECLOSED, 0, why);
            continue;
        }
        if (r->due_ns > now) {
            first = first != NULL ? first : r;
            s->pub_due_ns =
                (s->pub_due_ns == 0 || r->due_ns < s->pub_due_ns) ? r->due_ns : s->pub_due_ns;
            continue;
        }
        ringbus_error e;
        int rc = ringbus_publish_key(
            s->conn, (const char *)r->data, r->topic_len, r->data + r->topic_len, r->key_len,
            r->data + r->topic_len + r->key_len, r->payload_len, NULL, &e, pub_conn_done, r);
        if (rc == RINGBUS_EAGAIN || rc == RINGBUS_ECLOSED) {
            first = first != NULL ? first : r;
            break; /* room comes with acks; a loss is handled by the caller */
        }
        if (rc != 0) {
            /* The new server's max_frame_bytes is smaller than the one that
             * took it: it cannot be sent anywhere. */
            pub_fail(s, r, RINGBUS_ESERVER, RINGBUS_WIRE_TOO_LARGE, e.message);
            continue;
        }
        r->sent = true;
        r->first_sent_ns = r->first_sent_ns != 0 ? r->first_sent_ns : now;
        s->queued_count--;
    }
    s->first_queued = first;
}

/* ---- topics ---- */

static ssub **sub_slot(const ringbus_session *s, const char *topic, size_t len)
{
    uint64_t h = rb_hash_bytes((const uint8_t *)topic, len);
    ssub **p = &s->buckets[h & s->bucket_mask];
    while (*p != NULL && !((*p)->topic_len == len && memcmp((*p)->topic, topic, len) == 0)) {
        p = &(*p)->next;
    }
    return p;
}

static ssub *sub_find(const ringbus_session *s, const char *topic, size_t len)
{
    return len == 0 || len > RB_TOPIC_BYTES_MAX ? NULL : *sub_slot(s, topic, len);
}

static int sub_grow(ringbus_session *s)
{
    uint32_t count = (s->bucket_mask + 1) * 2;
    ssub **fresh = calloc(count, sizeof *fresh);
    if (fresh == NULL) {
        return RB_ENOMEM;
    }
    for (uint32_t i = 0; i <= s->bucket_mask; i++) {
        for (ssub *p = s->buckets[i], *next; p != NULL; p = next) {
            next = p->next;
            uint64_t h = rb_hash_bytes((const uint8_t *)p->topic, p->topic_len);
            p->next = fresh[h & (count - 1)];
            fresh[h & (count - 1)] = p;
        }
    }
    free(s->buckets);
    s->buckets = fresh;
    s->bucket_mask = count - 1;
    return 0;
}

static void sub_remove(ringbus_session *s, const char *topic, size_t len)
{
    if (len == 0 || len > RB_TOPIC_BYTES_MAX) {
        return;
    }
    ssub **p = sub_slot(s, topic, len);
    if (*p != NULL) {
        ssub *gone = *p;
        *p = gone->next;
        free(gone);
        s->sub_count--;
    }
}

/* Runs the body (the variadic part) for every topic as var; the body may
 * remove var, no other. */
#define SUB_EACH(s, var, ...)                                                                      \
    for (uint32_t var##_i = 0; var##_i <= (s)->bucket_mask; var##_i++) {                           \
        for (ssub *var = (s)->buckets[var##_i], *var##_next; var != NULL; var = var##_next) {      \
            var##_next = var->next;                                                                \
            __VA_ARGS__                                                                            \
        }                                                                                          \
    }

static void subs_forget_wave(ringbus_session *s, uint64_t wave, bool done)
{
    SUB_EACH(s, p, {
        if (p->wave == wave) {
            if (!done || p->history_only) {
                sub_remove(s, p->topic, p->topic_len);
            } else {
                p->wave = 0;
            }
        }
    })
}

/* Sends one re-add Mutate of the topics in subs[0..n). */
static int readd_send(ringbus_session *s, uint64_t wave, uint64_t epoch, bool history_only,
                      ssub **subs, ringbus_add *adds, size_t n, rb_err *err)
{
    for (size_t i = 0; i < n; i++) {
        adds[i] = (ringbus_add){.topic = subs[i]->topic,
                                .cursor = subs[i]->has_cursor ? subs[i]->last_seq : 0,
                                .is_now = !subs[i]->has_cursor};
        subs[i]->wave = wave;
    }
    int64_t deadline_ns =
        rb_client_now_ns() +
        (int64_t)(s->copt.request_timeout_ms > 0 ? s->copt.request_timeout_ms : 30000) * 1000000;
    for (;;) {
        ringbus_error e;
        int rc = ringbus_mutate_epoch(s->conn, wave, epoch, adds, n, NULL, 0, history_only, &e);
        if (rc != RINGBUS_EAGAIN || rb_client_now_ns() >= deadline_ns) {
            return rc == 0 ? 0 : rb_err_set(err, rc, e.wire_code, "re-add topics: %s", e.message);
        }
        /* The send buffer is full of earlier re-adds: let it drain. Only
         * writes: reading would run events while the topics are walked. */
        if (ringbus_flush(s->conn, &e) != 0) {
            return rb_err_set(err, RB_ECLOSED, 0, "re-add topics: %s", e.message);
        }
        struct pollfd pfd = {.fd = ringbus_fd(s->conn), .events = POLLOUT};
        (void)poll(&pfd, 1, RESUBSCRIBE_WAIT_STEP_MS);
    }
}

/* Re-adds every topic on a new connection, grouped by (the application's
 * wave still in flight, history-only, epoch), each group in Mutates that fit
 * the frame. Returns 0 with the first session wave in *first_wave. */
static int resubscribe(ringbus_session *s, uint64_t *first_wave, rb_err *err)
{
    *first_wave = 0;
    if (s->sub_count == 0) {
        return 0;
    }
    ssub **subs = malloc(s->sub_count * sizeof *subs);
    ringbus_add *adds = malloc(s->sub_count * sizeof *adds);
    if (subs == NULL || adds == NULL) {
        free(subs);
        free(adds);
        return rb_err_set(err, RB_ENOMEM, 0, "re-add topics: out of memory");
    }
    size_t limit = ringbus_max_frame_bytes(s->conn) - MUTATE_HEADROOM_BYTES;
    uint32_t gen = ++s->gen;
    int rc = 0;
    SUB_EACH(s, lead, {
        if (rc != 0 || lead->gen == gen) {
            continue;
        }
        uint64_t app_wave = (lead->wave & RINGBUS_SESSION_WAVE) != 0 ? 0 : lead->wave;
        uint64_t epoch = lead->has_cursor ? lead->epoch : 0;
        bool history_only = lead->history_only;
        size_t n = 0, bytes = 0;
        bool app_wave_used = false;
        SUB_EACH(s, p, {
            uint64_t w = (p->wave & RINGBUS_SESSION_WAVE) != 0 ? 0 : p->wave;
            if (rc != 0 || p->gen == gen || w != app_wave || p->history_only != history_only ||
                (p->has_cursor ? p->epoch : 0) != epoch) {
                continue;
            }
            p->gen = gen;
            subs[n++] = p;
            bytes += p->topic_len + ADD_OVERHEAD_BYTES;
            if (bytes >= limit) {
                uint64_t id = (app_wave != 0 && !app_wave_used)
                                  ? app_wave
                                  : (RINGBUS_SESSION_WAVE | ++s->next_wave);
                app_wave_used = app_wave_used || id == app_wave;
                *first_wave = *first_wave != 0 || id == app_wave ? *first_wave : id;
                rc = readd_send(s, id, epoch, history_only, subs, adds, n, err);
                n = bytes = 0;
            }
        })
        if (rc == 0 && n > 0) {
            uint64_t id = (app_wave != 0 && !app_wave_used)
                              ? app_wave
                              : (RINGBUS_SESSION_WAVE | ++s->next_wave);
            *first_wave = *first_wave != 0 || id == app_wave ? *first_wave : id;
            rc = readd_send(s, id, epoch, history_only, subs, adds, n, err);
        }
    })
    free(subs);
    free(adds);
    return rc;
}

/* Whether an event of the connection goes on to the application, keeping
 * the topics' cursors. */
static bool filter(ringbus_session *s, const ringbus_event *ev)
{
    ssub *p;
    switch (ev->kind) {
    case RINGBUS_EVENT_MESSAGE:
        p = sub_find(s, ev->topic, ev->topic_len);
        if (p == NULL || (p->has_cursor && ev->seq <= p->last_seq)) {
            return false; /* removed here, or delivered before the reconnect */
        }
        p->last_seq = ev->seq;
        p->epoch = s->conn_epoch;
        p->has_cursor = true;
        if (s->cursor_save != NULL) {
            s->cursor_save(p->topic, p->last_seq, p->epoch, s->cursor_ctx);
        }
        return true;
    case RINGBUS_EVENT_CATCHUP_COMPLETE:
        subs_forget_wave(s, ev->mutate_id, true);
        return true;
    case RINGBUS_EVENT_TOPIC_ERROR:
        sub_remove(s, ev->topic, ev->topic_len);
        return true;
    case RINGBUS_EVENT_LAGGED:
        /* Not a gap to repair nor an error: an ephemeral topic says what
         * it dropped, and the topic stays on the stream, live. */
        return sub_find(s, ev->topic, ev->topic_len) != NULL;
    case RINGBUS_EVENT_ERROR:
        if ((ev->corr_id & RINGBUS_CORR_MUTATE) != 0) {
            /* The Mutate applied nothing: its adds are not on the stream. */
            subs_forget_wave(s, ev->corr_id & ~RINGBUS_CORR_MUTATE, false);
        }
        return true;
    default:
        return true;
    }
}

/* ---- polling ---- */

/* How long the connection may be silent: watchdog_ms, else three
 * keepalives of the server; 0 = no watchdog. */
static uint32_t watchdog_ms_of(const ringbus_session *s)
{
    return s->watchdog_ms != 0 ? s->watchdog_ms : 3 * ringbus_keepalive_ms(s->conn);
}

static int64_t next_deadline_ns(const ringbus_session *s)
{
    if (s->syn_count > 0) {
        return 1; /* now: an event waits */
    }
    if (s->state == S_WAITING) {
        return s->retry_ns;
    }
    if (s->state == S_CLOSED || s->conn == NULL) {
        return 0;
    }
    int64_t d = s->pub_due_ns;
    uint32_t dead_ms = watchdog_ms_of(s);
    if (dead_ms != 0) {
        int64_t rx = rb_conn_last_rx_ns(s->conn);
        int64_t w =
            rx + (s->probe_rx_ns == rx ? (int64_t)dead_ms : (int64_t)dead_ms * 2 / 3) * 1000000;
        d = (d == 0 || w < d) ? w : d;
    }
    return d;
}

static void poll_sync(ringbus_session *s)
{
    int fd = s->conn != NULL ? ringbus_fd(s->conn) : -1;
    uint32_t events = EPOLLIN | (s->conn != NULL && ringbus_want_write(s->conn) ? EPOLLOUT : 0);
    if (fd != s->reg_fd) {
        if (s->reg_fd >= 0) {
            (void)epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->reg_fd, NULL);
        }
        if (fd >= 0) {
            struct epoll_event ee = {.events = events, .data.fd = fd};
            (void)epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ee);
        }
        s->reg_fd = fd;
        s->reg_events = events;
    } else if (fd >= 0 && events != s->reg_events) {
        struct epoll_event ee = {.events = events, .data.fd = fd};
        (void)epoll_ctl(s->epfd, EPOLL_CTL_MOD, fd, &ee);
        s->reg_events = events;
    }
    int64_t d = next_deadline_ns(s);
    if (d != s->timer_ns) {
        struct itimerspec its = {0};
        if (d != 0) {
            its.it_value.tv_sec = d / 1000000000;
            its.it_value.tv_nsec = d % 1000000000;
        }
        (void)timerfd_settime(s->tfd, TFD_TIMER_ABSTIME, &its, NULL);
        s->timer_ns = d;
    }
}

static void timer_drain(ringbus_session *s)
{
    uint64_t expirations;
    if (read(s->tfd, &expirations, sizeof expirations) > 0) {
        s->timer_ns = -1; /* re-arm on the next poll_sync */
    }
}

/* ---- connections ---- */

static void drop_conn(ringbus_session *s)
{
    if (s->conn == NULL) {
        return;
    }
    if (s->reg_fd >= 0) {
        (void)epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->reg_fd, NULL);
        s->reg_fd = -1;
    }
    ringbus_conn *c = s->conn;
    s->conn = NULL;
    ringbus_close(c); /* in-flight publishes come back with ECLOSED */
}

static void close_final(ringbus_session *s, int code, const char *message)
{
    char why[RB_ERR_MSG_BYTES_MAX];
    snprintf(why, sizeof why, "%s", message);
    s->final = true;
    drop_conn(s);
    s->state = S_CLOSED;
    while (s->pub_head != NULL) {
        pub_fail(s, s->pub_head, RINGBUS_ECLOSED, 0, why);
    }
    emit(s, RINGBUS_EVENT_CLOSED, code, why, 0, 0, 0);
}

static bool retryable_close(int code)
{
    return code != RINGBUS_WIRE_UNAUTHORIZED && code != RINGBUS_WIRE_FORBIDDEN &&
           code != RINGBUS_WIRE_INVALID_ARGUMENT && code != RINGBUS_WIRE_UNSUPPORTED_VERSION;
}

static bool retryable_connect(int rc, int wire_code)
{
    if (rc == RINGBUS_EINVAL || rc == RINGBUS_EUNSUPPORTED || rc == RINGBUS_ENOMEM) {
        return false;
    }
    return rc != RINGBUS_ESERVER || retryable_close(wire_code);
}

static void schedule(ringbus_session *s, int code, const char *message, int64_t delay_ms)
{
    if (delay_ms < 0) {
        delay_ms = rb_backoff_ms(s->base_ms, s->cap_ms, s->attempt, rb_backoff_next(&s->rnd));
    }
    s->state = S_WAITING;
    s->retry_ns = rb_client_now_ns() + (int64_t)delay_ms * 1000000;
    emit(s, RINGBUS_EVENT_RECONNECTING, code, message, s->attempt, (uint32_t)delay_ms, 0);
}

/* The connection is gone (its CLOSED, or the watchdog). */
static void on_loss(ringbus_session *s, int code, const char *message)
{
    char why[RB_ERR_MSG_BYTES_MAX];
    snprintf(why, sizeof why, "%s", message);
    s->lost = false;
    if (s->no_reconnect || s->state == S_CLOSING || !retryable_close(code)) {
        close_final(s, code, why);
        return;
    }
    uint32_t hint_ms = 0;
    bool drained = s->conn != NULL && rb_conn_going_away(s->conn, &hint_ms);
    drop_conn(s);
    s->attempt = 1;
    if (s->url_count > 1) {
        s->url_index = (s->url_index + 1) % s->url_count; /* another node first */
    }
    int64_t delay_ms = -1; /* the backoff */
    if (drained) {
        /* The server's drain: not before its hint, spread over one more. */
        delay_ms = hint_ms + (int64_t)(rb_backoff_next(&s->rnd) % ((uint64_t)hint_ms + 1));
        code = RINGBUS_WIRE_GOING_AWAY;
    } else if (code == RINGBUS_WIRE_GOING_AWAY) {
        delay_ms = 0; /* a server going away without a hint: come back at once */
    }
    schedule(s, code, why, delay_ms);
}

static void on_conn_event(const ringbus_event *ev, void *ctx)
{
    ringbus_session *s = ctx;
    if (ev->kind == RINGBUS_EVENT_CLOSED) {
        s->lost = true;
        s->lost_code = (uint16_t)ev->code;
        snprintf(s->lost_msg, sizeof s->lost_msg, "%s", ev->message);
        return;
    }
    if (filter(s, ev)) {
        bool was = s->in_callback;
        s->in_callback = true;
        s->on_event(ev, s->event_ctx);
        s->in_callback = was;
    }
}

static int on_connected(ringbus_session *s, ringbus_conn *c, bool again)
{
    s->conn = c;
    s->state = S_CONNECTED;
    s->conn_epoch = ringbus_epoch(c);
    s->probe_rx_ns = -1;
    uint32_t attempts = s->attempt;
    s->attempt = 0;
    uint64_t first_wave = 0;
    rb_err e = {0};
    int rc = resubscribe(s, &first_wave, &e);
    if (rc == RB_ENOMEM) {
        close_final(s, RINGBUS_WIRE_INTERNAL, e.msg);
        return rc;
    }
    if (rc != 0 || s->lost) {
        s->attempt = attempts; /* the attempt did not hold */
        on_loss(s, s->lost ? s->lost_code : RINGBUS_WIRE_UNAVAILABLE,
                s->lost ? s->lost_msg : e.msg);
        return 0;
    }
    pub_pump(s);
    if (again) {
        emit(s, RINGBUS_EVENT_RECONNECTED, 0, s->urls[s->url_index], attempts, 0, first_wave);
    }
    return 0;
}

static int connect_one(ringbus_session *s, ringbus_conn **c, rb_err *err)
{
    ringbus_error e;
    int rc = ringbus_connect(s->urls[s->url_index], &s->copt, c, &e);
    if (rc != 0) {
        rb_err_set(err, rc,
                   rc == RINGBUS_ESERVER || rc == RINGBUS_EPROTO ? e.wire_code : e.sys_errno, "%s",
                   e.message);
    }
    return rc;
}

static void attempt_connect(ringbus_session *s)
{
    ringbus_conn *c = NULL;
    rb_err e = {0};
    int rc = connect_one(s, &c, &e);
    if (rc == 0) {
        (void)on_connected(s, c, true);
        return;
    }
    int code = rc == RINGBUS_ESERVER ? e.cause : RINGBUS_WIRE_UNAVAILABLE;
    if (!retryable_connect(rc, e.cause)) {
        close_final(s, rc == RINGBUS_ESERVER ? e.cause : RINGBUS_WIRE_INVALID_ARGUMENT, e.msg);
        return;
    }
    if (s->attempts_max != 0 && s->attempt >= s->attempts_max) {
        char why[RB_ERR_MSG_BYTES_MAX];
        snprintf(why, sizeof why, "gave up after %u attempts: %.200s", s->attempt, e.msg);
        close_final(s, RINGBUS_WIRE_UNAVAILABLE, why);
        return;
    }
    s->attempt++;
    s->url_index = (s->url_index + 1) % s->url_count;
    schedule(s, code, e.msg, -1);
}

/* Runs the watchdog and the re-sends. */
static void due_work(ringbus_session *s)
{
    if (s->state != S_CONNECTED) {
        return;
    }
    uint32_t dead_ms = watchdog_ms_of(s);
    if (dead_ms != 0) {
        int64_t rx = rb_conn_last_rx_ns(s->conn);
        int64_t silent_ms = (rb_client_now_ns() - rx) / 1000000;
        if (silent_ms >= dead_ms) {
            char why[96];
            snprintf(why, sizeof why, "watchdog: nothing from the server in %" PRId64 " ms",
                     silent_ms);
            on_loss(s, RINGBUS_WIRE_UNAVAILABLE, why);
            return;
        }
        if (silent_ms >= (int64_t)dead_ms * 2 / 3 && s->probe_rx_ns != rx) {
            s->probe_rx_ns = rx;
            (void)rb_conn_probe(s->conn);
        }
    }
    pub_pump(s);
}

/* Sleeps until the next attempt (at most timeout_ms), then makes it. */
static void wait_and_attempt(ringbus_session *s, int timeout_ms)
{
    int64_t left_ns = s->retry_ns - rb_client_now_ns();
    if (left_ns > 0) {
        int64_t wait_ms = (left_ns + 999999) / 1000000;
        (void)poll(NULL, 0, wait_ms < timeout_ms ? (int)wait_ms : timeout_ms);
    }
    if (rb_client_now_ns() >= s->retry_ns) {
        attempt_connect(s);
    }
}

static int wait_ms_for(const ringbus_session *s, int timeout_ms)
{
    int64_t d = next_deadline_ns(s);
    if (d == 0) {
        return timeout_ms;
    }
    int64_t left_ms = (d - rb_client_now_ns() + 999999) / 1000000;
    left_ms = left_ms < 0 ? 0 : left_ms;
    return left_ms < timeout_ms ? (int)left_ms : timeout_ms;
}

/* ---- the API ---- */

void ringbus_session_options_init(ringbus_session_options *options)
{
    memset(options, 0, sizeof *options);
}

static char *dup_str(const char *p, bool *oom)
{
    if (p == NULL) {
        return NULL;
    }
    char *q = strdup(p);
    *oom = *oom || q == NULL;
    return q;
}

static uint8_t *dup_bytes(const void *p, size_t len, bool *oom)
{
    if (p == NULL) {
        return NULL;
    }
    uint8_t *q = malloc(len > 0 ? len : 1);
    if (q == NULL) {
        *oom = true;
        return NULL;
    }
    memcpy(q, p, len);
    return q;
}

static void free_secret(void *p, size_t len)
{
    if (p != NULL) {
        explicit_bzero(p, len);
        free(p);
    }
}

static void session_free(ringbus_session *s)
{
    for (size_t i = 0; i < s->url_count; i++) {
        free(s->urls[i]);
    }
    free(s->own_name);
    free(s->own_ca);
    free(s->own_origin);
    free(s->own_cert);
    free(s->own_key);
    free(s->own_user);
    free_secret(s->own_token, s->own_token != NULL ? strlen(s->own_token) : 0);
    free_secret(s->own_credentials, s->copt.credentials_len);
    free_secret(s->own_password, s->copt.password_len);
    if (s->buckets != NULL) {
        SUB_EACH(s, p, { free(p); })
    }
    free(s->buckets);
    free(s->ring);
    if (s->epfd >= 0) {
        close(s->epfd);
    }
    if (s->tfd >= 0) {
        close(s->tfd);
    }
    free(s);
}

static int session_new(const ringbus_session_options *o, ringbus_session **out, rb_err *err)
{
    if (o == NULL || o->urls == NULL || o->url_count == 0 ||
        o->url_count > RINGBUS_SESSION_URLS_MAX) {
        return rb_err_set(err, RB_EINVAL, 0, "session: give 1..%d URLs", RINGBUS_SESSION_URLS_MAX);
    }
    ringbus_session *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "session: out of memory");
    }
    s->epfd = s->tfd = s->reg_fd = -1;
    bool oom = false;
    for (size_t i = 0; i < o->url_count; i++) {
        if (o->urls[i] == NULL) {
            session_free(s);
            return rb_err_set(err, RB_EINVAL, 0, "session: URL %zu is NULL", i + 1);
        }
        s->urls[s->url_count++] = dup_str(o->urls[i], &oom);
    }
    if (o->conn != NULL) {
        s->copt = *o->conn;
    } else {
        ringbus_options_init(&s->copt);
    }
    s->copt.on_event = NULL;
    s->copt.event_ctx = NULL;
    s->copt.client_name = s->own_name = dup_str(s->copt.client_name, &oom);
    s->copt.tls_ca_file = s->own_ca = dup_str(s->copt.tls_ca_file, &oom);
    s->copt.ws_origin = s->own_origin = dup_str(s->copt.ws_origin, &oom);
    s->copt.token = s->own_token = dup_str(s->copt.token, &oom);
    s->copt.user = s->own_user = dup_str(s->copt.user, &oom);
    s->copt.tls_cert_file = s->own_cert = dup_str(s->copt.tls_cert_file, &oom);
    s->copt.tls_key_file = s->own_key = dup_str(s->copt.tls_key_file, &oom);
    s->copt.credentials = s->own_credentials =
        dup_bytes(s->copt.credentials, s->copt.credentials_len, &oom);
    s->copt.password = s->own_password = dup_bytes(s->copt.password, s->copt.password_len, &oom);
    s->no_reconnect = o->no_reconnect;
    s->base_ms = o->reconnect_base_ms != 0 ? o->reconnect_base_ms : BASE_MS_DEFAULT;
    s->cap_ms = o->reconnect_cap_ms != 0 ? o->reconnect_cap_ms : CAP_MS_DEFAULT;
    s->cap_ms = s->cap_ms < s->base_ms ? s->base_ms : s->cap_ms;
    s->attempts_max = o->reconnect_attempts_max;
    s->reissue_max = o->publish_reissue_max != 0 ? o->publish_reissue_max : REISSUE_DEFAULT;
    s->retry_ms = o->publish_retry_ms != 0 ? o->publish_retry_ms : RETRY_MS_DEFAULT;
    s->pub_bytes_max = o->publish_buffer_bytes != 0 ? o->publish_buffer_bytes : PUB_BYTES_DEFAULT;
    s->pub_window = s->copt.publish_window != 0 ? s->copt.publish_window : PUB_WINDOW_DEFAULT;
    s->topics_max = o->topics_max != 0 ? o->topics_max : TOPICS_DEFAULT;
    s->watchdog_ms = o->watchdog_ms;
    s->on_event = o->on_event;
    s->event_ctx = o->event_ctx;
    s->cursor_load = o->cursor_load;
    s->cursor_save = o->cursor_save;
    s->cursor_ctx = o->cursor_ctx;
    if (s->on_event != NULL) {
        s->copt.on_event = on_conn_event;
        s->copt.event_ctx = s;
    }
    s->buckets = calloc(BUCKETS_INITIAL, sizeof *s->buckets);
    s->ring = malloc(s->pub_bytes_max);
    s->bucket_mask = BUCKETS_INITIAL - 1;
    s->timer_ns = -1;
    if (oom || s->buckets == NULL || s->ring == NULL) {
        session_free(s);
        return rb_err_set(err, RB_ENOMEM, 0, "session: out of memory");
    }
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    s->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event ee = {.events = EPOLLIN, .data.fd = s->tfd};
    if (s->epfd < 0 || s->tfd < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->tfd, &ee) != 0) {
        int e = errno;
        session_free(s);
        return rb_err_set(err, RB_ESYS, e, "session: epoll/timerfd: %s", strerror(e));
    }
    uint64_t seed[2] = {0, 0};
    if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
        seed[0] = (uint64_t)rb_client_now_ns() ^ ((uint64_t)getpid() << 32);
        seed[1] = seed[0] * UINT64_C(0x9E3779B97F4A7C15);
    }
    s->rnd = seed[0] != 0 ? seed[0] : 1;
    snprintf(s->key_prefix, sizeof s->key_prefix, "%016" PRIx64, seed[1]);
    *out = s;
    return 0;
}

int ringbus_session_open(const ringbus_session_options *options, ringbus_session **session,
                         ringbus_error *err)
{
    rb_err e = {0};
    ringbus_session *s = NULL;
    if (session == NULL) {
        rb_err_set(&e, RB_EINVAL, 0, "session: NULL result pointer");
        return rb_client_export_err(err, &e);
    }
    *session = NULL;
    int rc = session_new(options, &s, &e);
    if (rc != 0) {
        return rb_client_export_err(err, &e);
    }
    for (size_t i = 0; i < s->url_count; i++) {
        s->url_index = i;
        ringbus_conn *c = NULL;
        e = (rb_err){0};
        rc = connect_one(s, &c, &e);
        if (rc == 0) {
            rc = on_connected(s, c, false);
            if (rc != 0) {
                ringbus_session_close(s);
                rb_err_set(&e, rc, 0, "session: out of memory");
                return rb_client_export_err(err, &e);
            }
            poll_sync(s);
            *session = s;
            return 0;
        }
        if (!retryable_connect(rc, e.cause)) {
            break;
        }
    }
    if (!retryable_connect(rc, e.cause) || !options->retry_initial_connect) {
        session_free(s);
        return rb_client_export_err(err, &e);
    }
    s->url_index = 0;
    s->attempt = 1;
    schedule(s, rc == RINGBUS_ESERVER ? e.cause : RINGBUS_WIRE_UNAVAILABLE, e.msg, -1);
    poll_sync(s);
    *session = s;
    return 0;
}

void ringbus_session_close(ringbus_session *s)
{
    if (s == NULL) {
        return;
    }
    RB_ASSERT(!s->in_callback);
    s->final = true;
    s->on_event = NULL; /* no event callback runs from here */
    drop_conn(s);
    while (s->pub_head != NULL) {
        pub_fail(s, s->pub_head, RINGBUS_ECLOSED, 0, "session closed");
    }
    session_free(s);
}

int ringbus_session_fd(const ringbus_session *s)
{
    return s->epfd;
}

static int guard(const ringbus_session *s, const char *what, rb_err *err)
{
    if (s->in_callback) {
        return rb_err_set(err, RB_EINVAL, 0, "%s: not allowed from a callback", what);
    }
    return 0;
}

int ringbus_session_process(ringbus_session *s, int timeout_ms, ringbus_error *err)
{
    rb_err e = {0};
    int rc = guard(s, "ringbus_session_process", &e);
    if (rc == 0 && timeout_ms < 0) {
        rc = rb_err_set(&e, RB_EINVAL, 0, "ringbus_session_process: negative timeout");
    }
    if (rc != 0) {
        return rb_client_export_err(err, &e);
    }
    timer_drain(s);
    int events = 0;
    if (s->state == S_CLOSED) {
        rb_err_set(&e, RB_ECLOSED, 0, "session closed");
        return rb_client_export_err(err, &e);
    }
    uint64_t emitted = s->emitted;
    if (s->state == S_WAITING) {
        wait_and_attempt(s, timeout_ms);
    } else {
        due_work(s);
        if (s->state == S_CONNECTED || s->state == S_CLOSING) {
            ringbus_error ce;
            rc = ringbus_process(s->conn, wait_ms_for(s, timeout_ms), &ce);
            if (rc >= 0) {
                events += rc;
            }
            if (s->lost) {
                on_loss(s, s->lost_code, s->lost_msg);
            } else if (rc == RINGBUS_ECLOSED && s->on_event != NULL) {
                on_loss(s, RINGBUS_WIRE_UNAVAILABLE, ce.message);
            } else if (rc < 0 && rc != RINGBUS_ECLOSED) {
                poll_sync(s);
                rb_err_set(&e, rc, 0, "%s", ce.message);
                return rb_client_export_err(err, &e);
            }
            pub_pump(s);
        }
    }
    poll_sync(s);
    return events + (int)(s->emitted - emitted);
}

int ringbus_session_next_event(ringbus_session *s, ringbus_event *ev, int timeout_ms,
                               ringbus_error *err)
{
    rb_err e = {0};
    int rc = guard(s, "ringbus_session_next_event", &e);
    if (rc == 0 && s->on_event != NULL) {
        rc = rb_err_set(&e, RB_EINVAL, 0, "ringbus_session_next_event: the session has a callback");
    }
    if (rc == 0 && timeout_ms < 0) {
        rc = rb_err_set(&e, RB_EINVAL, 0, "ringbus_session_next_event: negative timeout");
    }
    if (rc != 0) {
        return rb_client_export_err(err, &e);
    }
    timer_drain(s);
    int64_t deadline_ns = rb_client_now_ns() + (int64_t)timeout_ms * 1000000;
    for (;;) {
        if (s->syn_count > 0) {
            s->cur = s->synq[s->syn_head];
            s->syn_head = (s->syn_head + 1) % SYNTH_MAX;
            s->syn_count--;
            *ev = s->cur.ev;
            ev->message = s->cur.message;
            poll_sync(s);
            return 1;
        }
        if (s->state == S_CLOSED) {
            poll_sync(s);
            rb_err_set(&e, RB_ECLOSED, 0, "session closed");
            return rb_client_export_err(err, &e);
        }
        int left_ms = rb_client_ms_until(deadline_ns);
        if (s->state == S_WAITING) {
            wait_and_attempt(s, left_ms);
        } else {
            due_work(s);
            if (s->state != S_CONNECTED && s->state != S_CLOSING) {
                continue;
            }
            ringbus_error ce;
            rc = ringbus_next_event(s->conn, ev, wait_ms_for(s, left_ms), &ce);
            if (rc == 1 && ev->kind == RINGBUS_EVENT_CLOSED) {
                on_loss(s, ev->code, ev->message);
                continue;
            }
            if (rc == 1 && filter(s, ev)) {
                pub_pump(s);
                poll_sync(s);
                return 1;
            }
            if (rc == RINGBUS_ECLOSED) {
                on_loss(s, RINGBUS_WIRE_UNAVAILABLE, ce.message);
                continue;
            }
            if (rc < 0) {
                poll_sync(s);
                rb_err_set(&e, rc, 0, "%s", ce.message);
                return rb_client_export_err(err, &e);
            }
            pub_pump(s);
        }
        if (s->syn_count == 0 && rb_client_ms_until(deadline_ns) == 0) {
            poll_sync(s);
            return 0;
        }
    }
}

int ringbus_session_publish(ringbus_session *s, const char *topic, size_t topic_len,
                            const void *key, size_t key_len, const void *payload,
                            size_t payload_len, uint64_t *corr_id, ringbus_error *err,
                            ringbus_publish_cb cb, void *ctx)
{
    rb_err e = {0};
    char auto_key[40];
    if (topic == NULL || (payload == NULL && payload_len != 0) || (key == NULL && key_len != 0)) {
        rb_err_set(&e, RB_EINVAL, 0, "publish: NULL topic, key or payload");
        return rb_client_export_err(err, &e);
    }
    if (topic_len == 0 || topic_len > RB_TOPIC_BYTES_MAX ||
        key_len > RB_IDEMPOTENCY_KEY_BYTES_MAX || payload_len > UINT32_MAX) {
        rb_err_set(&e, RB_EINVAL, 0, "publish: topic must be 1..%d bytes, key 0..%d",
                   RB_TOPIC_BYTES_MAX, RB_IDEMPOTENCY_KEY_BYTES_MAX);
        return rb_client_export_err(err, &e);
    }
    if (s->state == S_CLOSED || s->state == S_CLOSING) {
        rb_err_set(&e, RB_ECLOSED, 0, "publish: session %s",
                   s->state == S_CLOSED ? "closed" : "is closing");
        return rb_client_export_err(err, &e);
    }
    uint64_t id = ++s->next_pub_id;
    if (key_len == 0 && !s->no_reconnect) {
        /* Without reconnects nothing is re-sent: a key would only take a
         * place in the server's dedup table. */
        key_len = (size_t)snprintf(auto_key, sizeof auto_key, "%s-%" PRIx64, s->key_prefix, id);
        key = auto_key;
    }
    size_t frame = RB_FRAME_HEADER_BYTES + 1 + topic_len + 1 + key_len + 4 + payload_len;
    size_t bytes = (sizeof(spub) + topic_len + key_len + payload_len + 7) & ~(size_t)7;
    if ((s->conn != NULL && frame > ringbus_max_frame_bytes(s->conn)) || bytes > s->pub_bytes_max) {
        s->next_pub_id--;
        rb_err_set(&e, RB_ELIMIT, 0,
                   "publish to %.*s: %zu bytes exceed max_frame_bytes or the session's "
                   "publish_buffer_bytes",
                   (int)topic_len, topic, frame);
        return rb_client_export_err(err, &e);
    }
    spub *r = s->pub_count < s->pub_window ? ring_take(s, bytes) : NULL;
    if (r == NULL) {
        s->next_pub_id--;
        rb_err_set(&e, RB_EAGAIN, 0,
                   "publish: %u publishes wait for their ack (of at most %u, in %zu bytes)",
                   s->pub_count, s->pub_window, s->pub_bytes_max);
        return rb_client_export_err(err, &e);
    }
    *r = (spub){.s = s,
                .id = id,
                .cb = cb,
                .ctx = ctx,
                .topic_len = (uint16_t)topic_len,
                .key_len = (uint16_t)key_len,
                .payload_len = (uint32_t)payload_len,
                .prev = s->pub_tail};
    memcpy(r->data, topic, topic_len);
    if (key_len > 0) {
        memcpy(r->data + topic_len, key, key_len);
    }
    if (payload_len > 0) {
        memcpy(r->data + topic_len + key_len, payload, payload_len);
    }
    if (s->pub_tail != NULL) {
        s->pub_tail->next = r;
    } else {
        s->pub_head = r;
    }
    s->pub_tail = r;
    s->pub_count++;
    s->queued_count++;
    if (s->first_queued == NULL) {
        s->first_queued = r;
    }
    if (corr_id != NULL) {
        *corr_id = id;
    }
    pub_pump(s);
    if (!s->in_callback) {
        poll_sync(s);
    }
    return 0;
}

/* Adds with the cursor store's cursors; *epoch becomes theirs. */
static int load_cursors(ringbus_session *s, const ringbus_add *adds, size_t n, ringbus_add *out,
                        uint64_t *epoch, rb_err *err)
{
    bool have_epoch = *epoch != 0;
    for (size_t i = 0; i < n; i++) {
        out[i] = adds[i];
        uint64_t cursor = 0, ep = 0;
        if (s->cursor_load != NULL && s->cursor_load(adds[i].topic, &cursor, &ep, s->cursor_ctx)) {
            if (have_epoch && ep != *epoch) {
                return rb_err_set(err, RB_EINVAL, 0,
                                  "mutate: stored cursor of %.200s is from epoch %" PRIu64
                                  ", not %" PRIu64,
                                  adds[i].topic, ep, *epoch);
            }
            *epoch = ep;
            have_epoch = true;
            out[i].cursor = cursor;
            out[i].is_now = false;
        }
    }
    return 0;
}

static int apply_adds(ringbus_session *s, uint64_t mutate_id, uint64_t epoch,
                      const ringbus_add *adds, size_t n, bool history_only, rb_err *err)
{
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(adds[i].topic);
        ssub **slot = sub_slot(s, adds[i].topic, len);
        ssub *p = *slot;
        if (p != NULL && !history_only &&
            (adds[i].is_now || (p->has_cursor && adds[i].cursor >= p->last_seq))) {
            continue; /* a no-op on the stream too (docs/PROTOCOL.md 8.3) */
        }
        if (p == NULL) {
            if (s->sub_count > s->bucket_mask && sub_grow(s) == 0) {
                slot = sub_slot(s, adds[i].topic, len);
            }
            p = calloc(1, sizeof *p + len + 1);
            if (p == NULL) {
                return rb_err_set(err, RB_ENOMEM, 0, "mutate: out of memory");
            }
            memcpy(p->topic, adds[i].topic, len + 1);
            p->topic_len = (uint8_t)len;
            p->next = *slot;
            *slot = p;
            s->sub_count++;
        }
        p->has_cursor = !adds[i].is_now;
        p->last_seq = adds[i].is_now ? 0 : adds[i].cursor;
        p->epoch = epoch;
        p->wave = mutate_id;
        p->history_only = history_only;
    }
    return 0;
}

static int session_mutate(ringbus_session *s, uint64_t mutate_id, uint64_t epoch,
                          const ringbus_add *adds, size_t n, const char *const *removes, size_t rn,
                          bool history_only, rb_err *err)
{
    if (s->state == S_CLOSED || s->state == S_CLOSING) {
        return rb_err_set(err, RB_ECLOSED, 0, "mutate: session %s",
                          s->state == S_CLOSED ? "closed" : "is closing");
    }
    if ((mutate_id & RINGBUS_SESSION_WAVE) != 0) {
        return rb_err_set(err, RB_EINVAL, 0,
                          "mutate: mutate_id %" PRIu64
                          " carries RINGBUS_SESSION_WAVE, kept for the session",
                          mutate_id);
    }
    if ((n > 0 && adds == NULL) || (rn > 0 && removes == NULL)) {
        return rb_err_set(err, RB_EINVAL, 0, "mutate: NULL adds or removes");
    }
    size_t fresh = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = adds[i].topic != NULL ? strlen(adds[i].topic) : 0;
        if (len == 0 || len > RB_TOPIC_BYTES_MAX) {
            return rb_err_set(err, RB_EINVAL, 0, "mutate: add %zu: topic must be 1..%d bytes",
                              i + 1, RB_TOPIC_BYTES_MAX);
        }
        fresh += sub_find(s, adds[i].topic, len) == NULL;
    }
    size_t leaving = 0;
    for (size_t i = 0; i < rn; i++) {
        if (removes[i] == NULL) {
            return rb_err_set(err, RB_EINVAL, 0, "mutate: remove %zu is NULL", i + 1);
        }
        leaving += sub_find(s, removes[i], strlen(removes[i])) != NULL;
    }
    leaving = leaving > s->sub_count ? s->sub_count : leaving;
    if (s->sub_count - leaving + fresh > s->topics_max) {
        return rb_err_set(err, RB_ELIMIT, 0, "mutate: the session would follow more than %u topics",
                          s->topics_max);
    }
    ringbus_add *loaded = malloc((n > 0 ? n : 1) * sizeof *loaded);
    if (loaded == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "mutate: out of memory");
    }
    int rc = load_cursors(s, adds, n, loaded, &epoch, err);
    uint32_t hint_ms;
    if (rc == 0 && s->state == S_CONNECTED && !rb_conn_going_away(s->conn, &hint_ms)) {
        ringbus_error e;
        rc = ringbus_mutate_epoch(s->conn, mutate_id, epoch, loaded, n, removes, rn, history_only,
                                  &e);
        if (rc == RINGBUS_ECLOSED) {
            rc = 0; /* the connection is going: the next one carries it */
        } else if (rc != 0) {
            rb_err_set(err, rc, e.wire_code, "%s", e.message);
        }
    }
    if (rc == 0) {
        for (size_t i = 0; i < rn; i++) {
            sub_remove(s, removes[i], strlen(removes[i]));
        }
        rc = apply_adds(s, mutate_id, epoch, loaded, n, history_only, err);
    }
    free(loaded);
    return rc;
}

int ringbus_session_mutate(ringbus_session *s, uint64_t mutate_id, uint64_t epoch,
                           const ringbus_add *adds, size_t add_count, const char *const *removes,
                           size_t remove_count, bool history_only, ringbus_error *err)
{
    rb_err e = {0};
    int rc = session_mutate(s, mutate_id, epoch, adds, add_count, removes, remove_count,
                            history_only, &e);
    if (!s->in_callback) {
        poll_sync(s);
    }
    return rc == 0 ? 0 : rb_client_export_err(err, &e);
}

int ringbus_session_cursor(const ringbus_session *s, const char *topic, uint64_t *seq,
                           uint64_t *epoch)
{
    const ssub *p = topic != NULL ? sub_find(s, topic, strlen(topic)) : NULL;
    if (seq != NULL) {
        *seq = p != NULL && p->has_cursor ? p->last_seq : 0;
    }
    if (epoch != NULL) {
        *epoch = p != NULL && p->has_cursor ? p->epoch : 0;
    }
    return p != NULL;
}

ringbus_conn *ringbus_session_conn(const ringbus_session *s)
{
    return (s->state == S_CONNECTED || s->state == S_CLOSING) ? s->conn : NULL;
}

int ringbus_session_half_close(ringbus_session *s, ringbus_error *err)
{
    rb_err e = {0};
    if (s->state == S_CLOSED || s->state == S_CLOSING) {
        rb_err_set(&e, RB_ECLOSED, 0, "session %s", s->state == S_CLOSED ? "closed" : "is closing");
        return rb_client_export_err(err, &e);
    }
    if (s->state == S_WAITING) {
        close_final(s, RINGBUS_WIRE_OK, "closed while reconnecting");
    } else {
        /* Refused only by a connection already lost, whose CLOSED then
         * ends the session as the server's would. */
        ringbus_error ce;
        (void)ringbus_half_close(s->conn, &ce);
        s->state = S_CLOSING;
    }
    if (!s->in_callback) {
        poll_sync(s);
    }
    return 0;
}
