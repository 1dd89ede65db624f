/* Request/reply between clients (docs/PROTOCOL.md section 12). This module
 * owns three tables per shard and the records that tie them together:
 *
 *   calls      on the caller's shard: one per REQUEST in flight; it holds
 *              the caller's correlation id and the one timer (ack deadline,
 *              then the response deadline), so every call ends exactly once
 *              here, whatever else is lost or late;
 *   serves     on the responder's shard: one per request routed to a
 *              connection; the id the responder sees is the serve's slot and
 *              generation, and only that connection may ack or answer it;
 *   directory  on shard hash(name) % shards: which connections serve which
 *              (name, method), where a name is a client id or a service.
 *
 * A call travels caller shard -> directory shard (ROUTE) -> responder shard
 * (DELIVER) -> REQUEST to the responder; its ack and response come back as
 * OUTCOME records to the call. Records ride the mailbox (RB_XK_RPC), so the
 * shards share nothing. Only a client's frame takes a new envelope (a
 * client whose shard has none is paused, rb_publish_wait_for_envelope);
 * what a record leads to on another shard (the DELIVER, the directory's or
 * the responder shard's outcome, a registration's answer) is written over
 * the record in its own envelope, which travels on. Sessions hand REGISTER,
 * UNREGISTER, REQUEST, REQUEST_ACK and RESPONSE frames here; a close handler
 * registered with the session (rb_session_on_closed) ends what a closing
 * connection had. Across nodes: not yet (the cluster plane). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/hash.h"
#include "common/log.h"
#include "server/publish.h"
#include "server/server.h"

typedef enum rec_type {
    REC_DEAD = 0,     /* finished: its slot is skipped */
    REC_ROUTE = 1,    /* caller shard -> directory: a call to route */
    REC_DELIVER = 2,  /* directory -> responder shard: the call for conn b */
    REC_REG = 3,      /* responder shard -> directory: (un)register */
    REC_REG_DONE = 4, /* directory -> responder shard: the registration's result */
    REC_OUTCOME = 5,  /* -> caller shard: an ack or the response of call a */
    REC_CANCEL = 6,   /* caller shard -> responder shard: drop serve b */
} rec_type;

enum {
    OP_REGISTER = 1,
    OP_UNREGISTER = 2
};
enum {
    WHAT_ACK = 1,
    WHAT_RESPONSE = 2
};

/* The server's own outcome and registration texts, sent as an index (a
 * record's `text`) so that an answer written over the record it answers
 * never outgrows it; 0 means the record's message field. */
enum {
    TEXT_MESSAGE = 0,
    TEXT_NOT_FOUND,
    TEXT_UNKNOWN_METHOD,
    TEXT_RESPONDER_GONE,
    TEXT_RESPONDER_LIMIT,
    TEXT_RESPONDER_QUEUE,
    TEXT_RESPONDER_CLOSED,
    TEXT_REG_NOT_A_SERVICE,
    TEXT_REG_RESPONDERS,
    TEXT_REG_DIRECTORY_FULL,
    TEXT_COUNT
};

static const char *const text_of[TEXT_COUNT] = {
    [TEXT_MESSAGE] = "",
    [TEXT_NOT_FOUND] = "nobody serves that destination",
    [TEXT_UNKNOWN_METHOD] = "the destination does not serve that method",
    [TEXT_RESPONDER_GONE] = "the responder went away",
    [TEXT_RESPONDER_LIMIT] = "the responder has its limit of requests in flight",
    [TEXT_RESPONDER_QUEUE] = "the responder's send queue is full",
    [TEXT_RESPONDER_CLOSED] = "the responder disconnected before answering",
    [TEXT_REG_NOT_A_SERVICE] = "the name is a client id, not a service",
    [TEXT_REG_RESPONDERS] = "the service has its limit of responders",
    [TEXT_REG_DIRECTORY_FULL] = "the directory is full",
};

/* One record in a slot of an envelope, native byte order (records never
 * leave the process):
 *   u32 slot bytes, u8 type, u16 to, u8 op, u8 service, u16 code, u8 text,
 *   u16 a_shard, u32 a_index, u32 a_gen     the call
 *   u16 b_shard, u32 b_index, u32 b_gen     a connection or a serve
 *   u64 corr, u32 timeout_ms,
 *   u8 len + name, u8 len + method, u8 len + caller,
 *   u16 len + message, u32 len + payload
 * `to` is the shard that handles the record next. A record's next step
 * (ROUTE -> DELIVER or OUTCOME, DELIVER -> OUTCOME, REG -> REG_DONE) is
 * written over it in its own slot, never longer, and the envelope travels
 * on to the shard of its first record still to do: answering or
 * forwarding never needs an envelope of its own. The slot keeps its
 * length, so a shorter record leaves padding behind it. */
typedef struct rec {
    uint8_t type;
    uint16_t to;
    uint8_t op; /* REC_REG: OP_...; REC_OUTCOME: WHAT_... */
    uint8_t service;
    uint16_t code;
    uint8_t text; /* TEXT_...: the message, when not TEXT_MESSAGE */
    uint16_t a_shard;
    uint32_t a_index;
    uint32_t a_gen;
    uint16_t b_shard;
    uint32_t b_index;
    uint32_t b_gen;
    uint64_t corr;
    uint32_t timeout_ms;
    rb_bytes name;
    rb_bytes method;
    rb_bytes caller;
    rb_bytes message;
    rb_bytes payload;
} rec;

#define REC_FIXED   (4 + 1 + 2 + 1 + 1 + 2 + 1 + 2 * (2 + 4 + 4) + 8 + 4 + 1 + 1 + 1 + 2 + 4)
#define REC_TYPE_AT 4

/* Steps a record takes on its way (ROUTE, DELIVER, OUTCOME): a bound on
 * the times one shard handles it in one visit of its envelope. */
#define REC_STEPS_MAX 3

_Static_assert(REC_FIXED + 3 * RB_RPC_NAME_BYTES_MAX <= RB_RPC_RECORD_OVERHEAD_BYTES,
               "a record's fields fit in the overhead a payload leaves");

typedef struct rb_rpc_call {
    uint32_t index;
    uint32_t gen;
    bool used;
    bool acked;
    bool serve_known;
    rb_conn *conn; /* the caller; the call ends before its slot is reused */
    uint64_t corr;
    uint64_t ack_deadline_ms;
    uint64_t response_deadline_ms;
    rb_timer timer;
    uint16_t serve_shard;
    uint32_t serve_index;
    uint32_t serve_gen;
    struct rb_rpc_call *prev;
    struct rb_rpc_call *next; /* the conn's calls, or the free list */
} rb_rpc_call;

typedef struct rb_rpc_serve {
    uint32_t index;
    uint32_t gen;
    bool used;
    bool acked;
    rb_conn *conn; /* the responder */
    uint16_t call_shard;
    uint32_t call_index;
    uint32_t call_gen;
    rb_timer timer;
    struct rb_rpc_serve *prev;
    struct rb_rpc_serve *next;
} rb_rpc_serve;

/* A method a connection registered (kept for duplicates and its close). */
typedef struct rb_rpc_method {
    uint8_t method_len;
    uint8_t service_len; /* 0: under the connection's client id */
    char method[RB_RPC_NAME_BYTES_MAX];
    char service[RB_RPC_NAME_BYTES_MAX];
    struct rb_rpc_method *next;
} rb_rpc_method;

/* A directory entry: connection (shard, index, gen) serves method under name. */
typedef struct rb_rpc_reg {
    uint8_t name_len;
    uint8_t method_len;
    bool service;
    uint16_t shard;
    uint32_t conn_index;
    uint32_t conn_gen;
    char name[RB_RPC_NAME_BYTES_MAX];
    char method[RB_RPC_NAME_BYTES_MAX];
    struct rb_rpc_reg *next; /* bucket chain, or the free list */
} rb_rpc_reg;

typedef struct rb_rpc {
    rb_shard *sh;
    rb_rpc_call *calls;
    rb_rpc_call *call_free;
    rb_rpc_serve *serves;
    rb_rpc_serve *serve_free;
    rb_rpc_method *methods;
    rb_rpc_method *method_free;
    rb_rpc_reg *regs;
    rb_rpc_reg *reg_free;
    rb_rpc_reg **buckets; /* [RB_RPC_DIRECTORY_BUCKETS] */
    uint64_t spread;      /* picks one responder of a group per request */
} rb_rpc;

_Static_assert((RB_RPC_DIRECTORY_BUCKETS & (RB_RPC_DIRECTORY_BUCKETS - 1)) == 0,
               "directory buckets are a power of two");

static bool bytes_eq(rb_bytes a, const char *b, size_t b_len)
{
    return a.len == b_len && memcmp(a.ptr, b, b_len) == 0;
}

static uint32_t payload_max(const rb_shard *sh)
{
    return sh->server->cfg.max_frame_bytes - RB_RPC_RECORD_OVERHEAD_BYTES;
}

/* ---- records ---- */

static size_t rec_size(const rec *r)
{
    return REC_FIXED + r->name.len + r->method.len + r->caller.len + r->message.len +
           r->payload.len;
}

/* A string moves only towards the slot's start (a step keeps or drops the
 * strings before it), so a move over its own bytes is safe. */
static uint8_t *put_str(uint8_t *p, rb_bytes b, size_t width)
{
    uint32_t len = (uint32_t)b.len;
    p = rb_rec_put(p, &len, width);
    if (b.len > 0 && p != b.ptr) {
        memmove(p, b.ptr, b.len);
    }
    return p + b.len;
}

/* Writes r into the slot at p of slot_bytes (at least rec_size(r)); r's
 * strings may lie in that slot, at or after where they land. */
static void rec_put(uint8_t *p, uint32_t slot_bytes, const rec *r)
{
    RB_ASSERT(r->name.len <= RB_RPC_NAME_BYTES_MAX && r->method.len <= RB_RPC_NAME_BYTES_MAX);
    RB_ASSERT(r->caller.len <= RB_RPC_NAME_BYTES_MAX && r->message.len <= UINT16_MAX);
    RB_ASSERT(rec_size(r) <= slot_bytes);
    uint8_t *start = p;
    p = rb_rec_put(p, &slot_bytes, 4);
    p = rb_rec_put(p, &r->type, 1);
    p = rb_rec_put(p, &r->to, 2);
    p = rb_rec_put(p, &r->op, 1);
    p = rb_rec_put(p, &r->service, 1);
    p = rb_rec_put(p, &r->code, 2);
    p = rb_rec_put(p, &r->text, 1);
    p = rb_rec_put(p, &r->a_shard, 2);
    p = rb_rec_put(p, &r->a_index, 4);
    p = rb_rec_put(p, &r->a_gen, 4);
    p = rb_rec_put(p, &r->b_shard, 2);
    p = rb_rec_put(p, &r->b_index, 4);
    p = rb_rec_put(p, &r->b_gen, 4);
    p = rb_rec_put(p, &r->corr, 8);
    p = rb_rec_put(p, &r->timeout_ms, 4);
    p = put_str(p, r->name, 1);
    p = put_str(p, r->method, 1);
    p = put_str(p, r->caller, 1);
    p = put_str(p, r->message, 2);
    p = put_str(p, r->payload, 4);
    RB_ASSERT((size_t)(p - start) == rec_size(r));
}

/* Writes r (its `to` set here) in a new slot for shard `to`. Returns 0, or
 * RB_ELIMIT when no envelope could be had: the caller pauses its client
 * or, with nobody to pause, the caller's timer still ends the call. */
static int rec_send(rb_shard *sh, uint32_t to, const rec *r)
{
    size_t len = rec_size(r);
    uint8_t *p = rb_mailbox_reserve(&sh->mail, to, RB_XK_RPC, len);
    if (p == NULL) {
        return RB_ELIMIT;
    }
    rec w = *r;
    w.to = (uint16_t)to;
    rec_put(p, (uint32_t)len, &w);
    rb_mailbox_commit(&sh->mail, to, len);
    return 0;
}

static const uint8_t *get_str(const uint8_t *p, rb_bytes *out, size_t width)
{
    uint32_t len = 0;
    p = rb_rec_get(p, &len, width);
    *out = (rb_bytes){p, len};
    return p + len;
}

/* Reads the record in the slot at p (only its type when REC_DEAD) and
 * returns the slot's bytes, padding included. */
static uint32_t rec_read(const uint8_t *p, rec *r)
{
    const uint8_t *start = p;
    uint32_t bytes;
    p = rb_rec_get(p, &bytes, 4);
    p = rb_rec_get(p, &r->type, 1);
    if (r->type == REC_DEAD) {
        return bytes;
    }
    p = rb_rec_get(p, &r->to, 2);
    p = rb_rec_get(p, &r->op, 1);
    p = rb_rec_get(p, &r->service, 1);
    p = rb_rec_get(p, &r->code, 2);
    p = rb_rec_get(p, &r->text, 1);
    p = rb_rec_get(p, &r->a_shard, 2);
    p = rb_rec_get(p, &r->a_index, 4);
    p = rb_rec_get(p, &r->a_gen, 4);
    p = rb_rec_get(p, &r->b_shard, 2);
    p = rb_rec_get(p, &r->b_index, 4);
    p = rb_rec_get(p, &r->b_gen, 4);
    p = rb_rec_get(p, &r->corr, 8);
    p = rb_rec_get(p, &r->timeout_ms, 4);
    p = get_str(p, &r->name, 1);
    p = get_str(p, &r->method, 1);
    p = get_str(p, &r->caller, 1);
    p = get_str(p, &r->message, 2);
    p = get_str(p, &r->payload, 4);
    RB_ASSERT(p <= start + bytes);
    RB_ASSERT(r->text < TEXT_COUNT);
    return bytes;
}

/* The message of an outcome or a registration's answer. */
static rb_bytes rec_message(const rec *r)
{
    if (r->text == TEXT_MESSAGE) {
        return r->message;
    }
    return (rb_bytes){(const uint8_t *)text_of[r->text], strlen(text_of[r->text])};
}

/* Turns r (a ROUTE or DELIVER of call a) into the call's outcome, for the
 * caller's shard: never longer than r, so it fits r's slot. */
static void rec_become_outcome(rec *r, uint16_t code, uint8_t text)
{
    RB_ASSERT(r->type == REC_ROUTE || r->type == REC_DELIVER);
    RB_ASSERT(text != TEXT_MESSAGE && text < TEXT_COUNT);
    rec o = {.type = REC_OUTCOME,
             .to = r->a_shard,
             .op = WHAT_RESPONSE,
             .code = code,
             .text = text,
             .a_shard = r->a_shard,
             .a_index = r->a_index,
             .a_gen = r->a_gen};
    *r = o;
}

static uint32_t directory_shard(const rb_shard *sh, rb_bytes name)
{
    return (uint32_t)(rb_hash_bytes(name.ptr, name.len) % sh->server->shard_count);
}

/* ---- frames to clients ---- */

/* RESPONSE{code, message, payload} to c. A full send queue closes c with
 * resource_exhausted (the outcome is never silently lost). */
static void send_response(rb_conn *c, uint64_t corr, uint16_t code, rb_bytes message,
                          rb_bytes payload)
{
    if (c->state != RB_CONN_OPEN && c->state != RB_CONN_DRAINING) {
        return;
    }
    uint8_t head[RB_FRAME_RESPONSE_FIXED_BYTES + UINT16_MAX];
    size_t n = rb_frame_encode_response_head(head, sizeof head, corr, code, message, payload.len);
    RB_ASSERT(n > 0);
    if (rb_conn_append_frame(c, head, n, payload.ptr, payload.len) != 0) {
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED, "send queue full: no room for RESPONSE");
    }
}

static void send_outcome_text(rb_conn *c, uint64_t corr, uint16_t code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void send_outcome_text(rb_conn *c, uint64_t corr, uint16_t code, const char *fmt, ...)
{
    char msg[RB_ERR_MSG_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    send_response(c, corr, code, (rb_bytes){(const uint8_t *)msg, strlen(msg)}, (rb_bytes){0});
}

static void send_request_ack(rb_conn *c, uint64_t corr)
{
    if (c->state != RB_CONN_OPEN && c->state != RB_CONN_DRAINING) {
        return;
    }
    uint8_t buf[RB_FRAME_HEADER_BYTES + 1];
    size_t n = rb_frame_encode_request_ack(buf, sizeof buf, corr, 0);
    if (rb_conn_append(c, buf, n) != 0) {
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED, "send queue full: no room for REQUEST_ACK");
    }
}

/* ---- calls (the caller's shard) ---- */

static void call_timer_fired(rb_timer *t);

static rb_rpc_call *call_lookup(rb_rpc *rpc, uint32_t index, uint32_t gen)
{
    if (index >= RB_RPC_CALLS_PER_SHARD_MAX) {
        return NULL;
    }
    rb_rpc_call *call = &rpc->calls[index];
    return call->used && call->gen == gen ? call : NULL;
}

static void call_arm(rb_rpc *rpc, rb_rpc_call *call)
{
    uint64_t due = call->response_deadline_ms;
    if (!call->acked && call->ack_deadline_ms < due) {
        due = call->ack_deadline_ms;
    }
    uint64_t now = rb_loop_now_ms(rpc->sh->loop);
    rb_timer_arm(rpc->sh->loop, &call->timer, due > now ? due - now : 0);
}

/* Frees the call; when its serve is known, the responder's shard drops it
 * too, so the responder's in-flight count does not wait for its timer. */
static void call_free(rb_rpc *rpc, rb_rpc_call *call)
{
    RB_ASSERT(call->used);
    rb_conn *c = call->conn;
    RB_ASSERT(c->rpc_call_count > 0);
    rb_timer_disarm(rpc->sh->loop, &call->timer);
    if (call->serve_known) {
        rec r = {.type = REC_CANCEL,
                 .b_shard = call->serve_shard,
                 .b_index = call->serve_index,
                 .b_gen = call->serve_gen};
        (void)rec_send(rpc->sh, call->serve_shard, &r);
    }
    if (call->prev != NULL) {
        call->prev->next = call->next;
    } else {
        c->rpc_calls = call->next;
    }
    if (call->next != NULL) {
        call->next->prev = call->prev;
    }
    c->rpc_call_count--;
    call->used = false;
    call->gen++;
    call->conn = NULL;
    call->prev = NULL;
    call->next = rpc->call_free;
    rpc->call_free = call;
}

static rb_rpc_call *call_alloc(rb_rpc *rpc, rb_conn *c, uint64_t corr, uint32_t timeout_ms)
{
    rb_rpc_call *call = rpc->call_free;
    if (call == NULL) {
        return NULL;
    }
    rpc->call_free = call->next;
    uint64_t now = rb_loop_now_ms(rpc->sh->loop);
    call->used = true;
    call->acked = false;
    call->serve_known = false;
    call->conn = c;
    call->corr = corr;
    call->ack_deadline_ms = now + RB_RPC_ACK_TIMEOUT_MS;
    call->response_deadline_ms = now + timeout_ms;
    call->timer.fn = call_timer_fired;
    call->prev = NULL;
    call->next = c->rpc_calls;
    if (c->rpc_calls != NULL) {
        c->rpc_calls->prev = call;
    }
    c->rpc_calls = call;
    c->rpc_call_count++;
    call_arm(rpc, call);
    return call;
}

static void call_timer_fired(rb_timer *t)
{
    rb_rpc_call *call = RB_CONTAINER_OF(t, rb_rpc_call, timer);
    RB_ASSERT(call->used);
    rb_conn *c = call->conn;
    rb_rpc *rpc = c->shard->rpc;
    uint64_t now = rb_loop_now_ms(c->shard->loop);
    if (now >= call->response_deadline_ms) {
        send_outcome_text(c, call->corr, RB_WIRE_RESPONSE_TIMEOUT,
                          "no response within the call's timeout");
    } else if (!call->acked && now >= call->ack_deadline_ms) {
        send_outcome_text(c, call->corr, RB_WIRE_CONNECTION_TIMEOUT,
                          "the responder did not acknowledge within %u ms", RB_RPC_ACK_TIMEOUT_MS);
    } else {
        call_arm(rpc, call);
        return;
    }
    call_free(rpc, call);
    rb_conn_maybe_finish_drain(c);
}

static bool call_corr_in_use(const rb_conn *c, uint64_t corr)
{
    for (const rb_rpc_call *call = c->rpc_calls; call != NULL; call = call->next) {
        if (call->corr == corr) {
            return true;
        }
    }
    return false;
}

/* A REQUEST from c: validated, given a call, and routed to the directory. */
static void on_request_frame(rb_conn *c, const rb_frame *f)
{
    rb_rpc *rpc = c->shard->rpc;
    uint64_t corr = f->hdr.corr_id;
    uint32_t timeout_ms = f->u.request.timeout_ms;
    if (c->state != RB_CONN_OPEN) {
        return;
    }
    if (call_corr_in_use(c, corr)) {
        rb_conn_send_error(c, corr, RB_WIRE_INVALID_ARGUMENT,
                           "REQUEST: correlation id %llu names a call still in flight",
                           (unsigned long long)corr);
        return;
    }
    if (timeout_ms == 0) {
        timeout_ms = RB_RPC_TIMEOUT_MS_DEFAULT;
    }
    if (timeout_ms > RB_RPC_TIMEOUT_MS_MAX) {
        send_outcome_text(c, corr, RB_WIRE_INVALID_ARGUMENT, "timeout_ms %u above the limit of %u",
                          timeout_ms, RB_RPC_TIMEOUT_MS_MAX);
        return;
    }
    if (f->u.request.payload.len > payload_max(c->shard)) {
        send_outcome_text(c, corr, RB_WIRE_PAYLOAD_TOO_LARGE,
                          "request payload of %zu bytes above the limit of %u",
                          f->u.request.payload.len, payload_max(c->shard));
        return;
    }
    uint32_t calls_max = c->shard->cfg->rpc_calls_per_connection;
    if (c->rpc_call_count >= calls_max) {
        send_outcome_text(c, corr, RB_WIRE_RESOURCE_EXHAUSTED,
                          "more than %u calls in flight on this connection", calls_max);
        return;
    }
    rb_rpc_call *call = call_alloc(rpc, c, corr, timeout_ms);
    if (call == NULL) {
        send_outcome_text(c, corr, RB_WIRE_RESOURCE_EXHAUSTED, "the shard's call table is full");
        return;
    }
    rec r = {.type = REC_ROUTE,
             .a_shard = (uint16_t)c->shard->id,
             .a_index = call->index,
             .a_gen = call->gen,
             .timeout_ms = timeout_ms,
             .name = f->u.request.peer,
             .method = f->u.request.method,
             .caller = {(const uint8_t *)c->client_id, c->client_id_len},
             .payload = f->u.request.payload};
    if (rec_send(c->shard, directory_shard(c->shard, f->u.request.peer), &r) != 0) {
        call_free(rpc, call);
        rb_publish_wait_for_envelope(c);
    }
}

/* A caller's cancel: REQUEST_ACK with RB_REQUEST_ACK_CANCEL naming its call. */
static void cancel_call(rb_conn *c, uint64_t corr)
{
    for (rb_rpc_call *call = c->rpc_calls; call != NULL; call = call->next) {
        if (call->corr == corr) {
            send_outcome_text(c, corr, RB_WIRE_CANCELLED, "cancelled by the caller");
            call_free(c->shard->rpc, call);
            return;
        }
    }
    /* The call already ended: its outcome is on the way or delivered. */
}

/* An OUTCOME record at the caller's shard: an ack, or the one response. */
static void on_outcome(rb_rpc *rpc, rec *r)
{
    r->type = REC_DEAD;
    rb_rpc_call *call = call_lookup(rpc, r->a_index, r->a_gen);
    if (call == NULL) {
        return; /* late: the call already ended */
    }
    rb_conn *c = call->conn;
    if (r->op == WHAT_ACK) {
        if (!call->acked) {
            call->acked = true;
            call->serve_known = true;
            call->serve_shard = r->b_shard;
            call->serve_index = r->b_index;
            call->serve_gen = r->b_gen;
            send_request_ack(c, call->corr);
            call_arm(rpc, call);
        }
        return;
    }
    /* The serve is gone once it answered; a response before its ack is
     * accepted as the outcome. */
    call->serve_known = false;
    if (r->code == RB_WIRE_UNKNOWN_METHOD && !call->acked) {
        send_request_ack(c, call->corr);
    }
    send_response(c, call->corr, r->code, rec_message(r), r->payload);
    call_free(rpc, call);
    rb_conn_maybe_finish_drain(c);
}

/* ---- the directory (shard hash(name) % shards) ---- */

static uint32_t bucket_of(rb_bytes name)
{
    return (uint32_t)(rb_hash_bytes(name.ptr, name.len) >> 7) & (RB_RPC_DIRECTORY_BUCKETS - 1);
}

/* A ROUTE becomes, in its own slot, the DELIVER to the chosen responder or
 * the call's outcome: the directory never needs an envelope to answer, so
 * it never refuses a call for want of one. */
static void on_route(rb_rpc *rpc, rec *r)
{
    uint32_t named = 0;
    uint32_t serving = 0;
    for (rb_rpc_reg *g = rpc->buckets[bucket_of(r->name)]; g != NULL; g = g->next) {
        if (bytes_eq(r->name, g->name, g->name_len)) {
            named++;
            serving += bytes_eq(r->method, g->method, g->method_len);
        }
    }
    if (named == 0) {
        rec_become_outcome(r, RB_WIRE_RECIPIENT_NOT_FOUND, TEXT_NOT_FOUND);
        return;
    }
    if (serving == 0) {
        rec_become_outcome(r, RB_WIRE_UNKNOWN_METHOD, TEXT_UNKNOWN_METHOD);
        return;
    }
    uint32_t pick = (uint32_t)(rpc->spread++ % serving);
    for (rb_rpc_reg *g = rpc->buckets[bucket_of(r->name)]; g != NULL; g = g->next) {
        if (!bytes_eq(r->name, g->name, g->name_len) ||
            !bytes_eq(r->method, g->method, g->method_len)) {
            continue;
        }
        if (pick-- > 0) {
            continue;
        }
        r->type = REC_DELIVER;
        r->to = g->shard;
        r->b_shard = g->shard;
        r->b_index = g->conn_index;
        r->b_gen = g->conn_gen;
        return;
    }
    RB_ASSERT(false);
}

static bool reg_matches(const rb_rpc_reg *g, const rec *r)
{
    return g->shard == r->b_shard && g->conn_index == r->b_index && g->conn_gen == r->b_gen &&
           bytes_eq(r->name, g->name, g->name_len) && bytes_eq(r->method, g->method, g->method_len);
}

/* Registers (or refuses) r's connection; returns the wire code. */
static uint16_t reg_add(rb_rpc *rpc, const rec *r, uint8_t *text)
{
    uint32_t b = bucket_of(r->name);
    uint32_t named = 0;
    for (rb_rpc_reg *g = rpc->buckets[b]; g != NULL; g = g->next) {
        if (!bytes_eq(r->name, g->name, g->name_len)) {
            continue;
        }
        if (g->service != (r->service != 0)) {
            *text = TEXT_REG_NOT_A_SERVICE;
            return RB_WIRE_FORBIDDEN;
        }
        named++;
    }
    if (named >= RB_RPC_RESPONDERS_PER_NAME_MAX) {
        *text = TEXT_REG_RESPONDERS;
        return RB_WIRE_RESOURCE_EXHAUSTED;
    }
    rb_rpc_reg *g = rpc->reg_free;
    if (g == NULL) {
        *text = TEXT_REG_DIRECTORY_FULL;
        return RB_WIRE_RESOURCE_EXHAUSTED;
    }
    rpc->reg_free = g->next;
    g->name_len = (uint8_t)r->name.len;
    memcpy(g->name, r->name.ptr, r->name.len);
    g->method_len = (uint8_t)r->method.len;
    memcpy(g->method, r->method.ptr, r->method.len);
    g->service = r->service != 0;
    g->shard = r->b_shard;
    g->conn_index = r->b_index;
    g->conn_gen = r->b_gen;
    g->next = rpc->buckets[b];
    rpc->buckets[b] = g;
    return RB_WIRE_OK;
}

static void reg_remove(rb_rpc *rpc, const rec *r)
{
    for (rb_rpc_reg **at = &rpc->buckets[bucket_of(r->name)]; *at != NULL; at = &(*at)->next) {
        rb_rpc_reg *g = *at;
        if (reg_matches(g, r)) {
            *at = g->next;
            g->next = rpc->reg_free;
            rpc->reg_free = g;
            return;
        }
    }
}

/* A REG: an UNREGISTER is done; a REGISTER becomes, in its own slot, its
 * answer to the responder's shard. */
static void on_reg(rb_rpc *rpc, rec *r)
{
    if (r->op == OP_UNREGISTER) {
        reg_remove(rpc, r);
        r->type = REC_DEAD;
        return;
    }
    uint8_t text = TEXT_MESSAGE;
    r->code = reg_add(rpc, r, &text);
    r->text = text;
    r->type = REC_REG_DONE;
    r->to = r->b_shard;
}

/* ---- methods and serves (the responder's shard) ---- */

static rb_rpc_method **method_find(rb_conn *c, rb_bytes method, rb_bytes service)
{
    for (rb_rpc_method **at = &c->rpc_methods; *at != NULL; at = &(*at)->next) {
        rb_rpc_method *m = *at;
        if (bytes_eq(method, m->method, m->method_len) &&
            bytes_eq(service, m->service, m->service_len)) {
            return at;
        }
    }
    return NULL;
}

static void method_unlink(rb_rpc *rpc, rb_conn *c, rb_rpc_method **at)
{
    rb_rpc_method *m = *at;
    *at = m->next;
    m->next = rpc->method_free;
    rpc->method_free = m;
    RB_ASSERT(c->rpc_method_count > 0);
    c->rpc_method_count--;
}

/* The directory record of c's method m (name = the service or c's id). */
static rec reg_rec(rb_conn *c, uint8_t op, uint64_t corr, rb_bytes method, rb_bytes service)
{
    bool svc = service.len > 0;
    return (rec){.type = REC_REG,
                 .op = op,
                 .service = svc,
                 .b_shard = (uint16_t)c->shard->id,
                 .b_index = c->index,
                 .b_gen = c->gen,
                 .corr = corr,
                 .name =
                     svc ? service : (rb_bytes){(const uint8_t *)c->client_id, c->client_id_len},
                 .method = method};
}

static int name_check(rb_conn *c, uint64_t corr, const char *what, rb_bytes name)
{
    rb_err err;
    if (rb_topic_validate(name, false, &err) != 0) {
        /* Names follow the topic rules; say so in the name's own terms. */
        const char *why = strncmp(err.msg, "topic: ", 7) == 0 ? err.msg + 7 : err.msg;
        rb_conn_send_error(c, corr, RB_WIRE_INVALID_ARGUMENT, "%s: %s", what, why);
        return -1;
    }
    return 0;
}

static void on_register_frame(rb_conn *c, const rb_frame *f)
{
    rb_rpc *rpc = c->shard->rpc;
    uint64_t corr = f->hdr.corr_id;
    rb_bytes method = f->u.reg.method;
    rb_bytes service = f->u.reg.service;
    if (c->state != RB_CONN_OPEN) {
        return;
    }
    if (name_check(c, corr, "REGISTER method", method) != 0 ||
        (service.len > 0 && name_check(c, corr, "REGISTER service", service) != 0)) {
        return;
    }
    if (service.len >= 5 && memcmp(service.ptr, "anon-", 5) == 0) {
        rb_conn_send_error(c, corr, RB_WIRE_FORBIDDEN,
                           "REGISTER: service names starting with anon- are server-assigned ids");
        return;
    }
    if (method_find(c, method, service) != NULL) {
        rb_conn_send_error(c, corr, RB_WIRE_ALREADY_REGISTERED,
                           "REGISTER: this connection already serves that method");
        return;
    }
    rb_rpc_method *m = rpc->method_free;
    uint32_t methods_max = c->shard->cfg->rpc_methods_per_connection;
    if (c->rpc_method_count >= methods_max || m == NULL) {
        rb_conn_send_error(c, corr, RB_WIRE_RESOURCE_EXHAUSTED,
                           "REGISTER: more than %u methods on this connection, or the shard's "
                           "method table is full",
                           methods_max);
        return;
    }
    rec r = reg_rec(c, OP_REGISTER, corr, method, service);
    if (rec_send(c->shard, directory_shard(c->shard, r.name), &r) != 0) {
        rb_publish_wait_for_envelope(c);
        return;
    }
    rpc->method_free = m->next;
    m->method_len = (uint8_t)method.len;
    memcpy(m->method, method.ptr, method.len);
    m->service_len = (uint8_t)service.len;
    memcpy(m->service, service.ptr, service.len);
    m->next = c->rpc_methods;
    c->rpc_methods = m;
    c->rpc_method_count++;
}

static void on_reg_done(rb_rpc *rpc, rec *r)
{
    r->type = REC_DEAD;
    rb_conn *c = rb_conn_lookup(rpc->sh, r->b_index, r->b_gen);
    if (c == NULL || (c->state != RB_CONN_OPEN && c->state != RB_CONN_DRAINING)) {
        return; /* its close unregisters what it had */
    }
    rb_bytes service = r->service ? r->name : (rb_bytes){0};
    if (r->code != RB_WIRE_OK) {
        rb_rpc_method **at = method_find(c, r->method, service);
        if (at != NULL) {
            method_unlink(rpc, c, at);
        }
        rb_bytes why = rec_message(r);
        rb_conn_send_error(c, r->corr, r->code, "REGISTER: %.*s", (int)why.len,
                           (const char *)why.ptr);
        return;
    }
    uint8_t buf[RB_FRAME_HEADER_BYTES + 2 + 2 * RB_RPC_NAME_BYTES_MAX];
    size_t n =
        rb_frame_encode_register(buf, sizeof buf, RB_FRAME_REGISTER, r->corr, r->method, service);
    if (rb_conn_append(c, buf, n) != 0) {
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED, "send queue full: no room for REGISTER");
    }
}

static void on_unregister_frame(rb_conn *c, const rb_frame *f)
{
    rb_rpc *rpc = c->shard->rpc;
    uint64_t corr = f->hdr.corr_id;
    if (c->state != RB_CONN_OPEN) {
        return;
    }
    rb_rpc_method **at = method_find(c, f->u.reg.method, f->u.reg.service);
    if (at == NULL) {
        rb_conn_send_error(c, corr, RB_WIRE_INVALID_ARGUMENT,
                           "UNREGISTER: this connection does not serve that method");
        return;
    }
    rec r = reg_rec(c, OP_UNREGISTER, corr, f->u.reg.method, f->u.reg.service);
    if (rec_send(c->shard, directory_shard(c->shard, r.name), &r) != 0) {
        rb_publish_wait_for_envelope(c);
        return;
    }
    method_unlink(rpc, c, at);
    uint8_t buf[RB_FRAME_HEADER_BYTES + 2 + 2 * RB_RPC_NAME_BYTES_MAX];
    size_t n = rb_frame_encode_register(buf, sizeof buf, RB_FRAME_UNREGISTER, corr, f->u.reg.method,
                                        f->u.reg.service);
    if (rb_conn_append(c, buf, n) != 0) {
        rb_conn_close(c, RB_WIRE_RESOURCE_EXHAUSTED, "send queue full: no room for UNREGISTER");
    }
}

static void serve_timer_fired(rb_timer *t);

/* The id a responder sees for serve s (its REQUEST's corr_id). */
static uint64_t serve_id(const rb_rpc_serve *s)
{
    return (uint64_t)s->gen << 32 | s->index;
}

static void serve_free(rb_rpc *rpc, rb_rpc_serve *s)
{
    RB_ASSERT(s->used);
    rb_conn *c = s->conn;
    RB_ASSERT(c->rpc_serve_count > 0);
    rb_timer_disarm(rpc->sh->loop, &s->timer);
    if (s->prev != NULL) {
        s->prev->next = s->next;
    } else {
        c->rpc_serves = s->next;
    }
    if (s->next != NULL) {
        s->next->prev = s->prev;
    }
    c->rpc_serve_count--;
    s->used = false;
    s->gen++;
    s->conn = NULL;
    s->prev = NULL;
    s->next = rpc->serve_free;
    rpc->serve_free = s;
}

static void serve_timer_fired(rb_timer *t)
{
    rb_rpc_serve *s = RB_CONTAINER_OF(t, rb_rpc_serve, timer);
    /* The caller's own deadline, never later than this one, has ended the
     * call there; an answer after this is dropped like any late one. */
    serve_free(s->conn->shard->rpc, s);
}

static rb_rpc_serve *serve_of(rb_conn *c, uint64_t id)
{
    uint32_t index = (uint32_t)id;
    uint32_t gen = (uint32_t)(id >> 32);
    if (index >= RB_RPC_SERVES_PER_SHARD_MAX) {
        return NULL;
    }
    rb_rpc_serve *s = &c->shard->rpc->serves[index];
    /* Only the connection the request was routed to may ack or answer it. */
    return s->used && s->gen == gen && s->conn == c ? s : NULL;
}

/* A DELIVER becomes a REQUEST to the responder (the record is done) or,
 * in its own slot, the call's outcome. */
static void on_deliver(rb_rpc *rpc, rec *r)
{
    rb_conn *c = rb_conn_lookup(rpc->sh, r->b_index, r->b_gen);
    if (c == NULL || c->state != RB_CONN_OPEN) {
        if (c == NULL) {
            /* Its close normally unregisters it; should that record have
             * found no envelope, the directory learns it here. */
            rec u = *r;
            u.type = REC_REG;
            u.op = OP_UNREGISTER;
            u.caller = (rb_bytes){0};
            u.payload = (rb_bytes){0};
            (void)rec_send(rpc->sh, directory_shard(rpc->sh, r->name), &u);
        }
        rec_become_outcome(r, RB_WIRE_RECIPIENT_DISCONNECTED, TEXT_RESPONDER_GONE);
        return;
    }
    if (c->rpc_serve_count >= rpc->sh->cfg->rpc_serves_per_connection || rpc->serve_free == NULL) {
        rec_become_outcome(r, RB_WIRE_RESPONDER_BUSY, TEXT_RESPONDER_LIMIT);
        return;
    }
    rb_rpc_serve *s = rpc->serve_free;
    rpc->serve_free = s->next;
    s->used = true;
    s->acked = false;
    s->conn = c;
    s->call_shard = r->a_shard;
    s->call_index = r->a_index;
    s->call_gen = r->a_gen;
    s->timer.fn = serve_timer_fired;
    s->prev = NULL;
    s->next = c->rpc_serves;
    if (c->rpc_serves != NULL) {
        c->rpc_serves->prev = s;
    }
    c->rpc_serves = s;
    c->rpc_serve_count++;
    uint32_t responder_ms = r->timeout_ms > RB_RPC_RESPONDER_TIMEOUT_MS_MIN
                                ? r->timeout_ms
                                : RB_RPC_RESPONDER_TIMEOUT_MS_MIN;
    rb_timer_arm(rpc->sh->loop, &s->timer, responder_ms);
    uint8_t head[RB_FRAME_REQUEST_OVERHEAD_BYTES];
    size_t n = rb_frame_encode_request_head(head, sizeof head, serve_id(s), responder_ms, r->caller,
                                            r->method, r->payload.len);
    RB_ASSERT(n > 0);
    if (rb_conn_append_frame(c, head, n, r->payload.ptr, r->payload.len) != 0 ||
        rb_conn_send_full(c, 0)) {
        serve_free(rpc, s);
        rec_become_outcome(r, RB_WIRE_RESPONDER_BUSY, TEXT_RESPONDER_QUEUE);
        return;
    }
    r->type = REC_DEAD;
}

/* A responder's REQUEST_ACK (flags 0) or a caller's cancel. */
static void on_request_ack_frame(rb_conn *c, const rb_frame *f)
{
    if (c->state != RB_CONN_OPEN && c->state != RB_CONN_DRAINING) {
        return;
    }
    if (f->u.request_ack.flags & RB_REQUEST_ACK_CANCEL) {
        cancel_call(c, f->hdr.corr_id);
        return;
    }
    rb_rpc_serve *s = serve_of(c, f->hdr.corr_id);
    if (s == NULL || s->acked) {
        return; /* late, repeated, or not this connection's: dropped */
    }
    rec r = {.type = REC_OUTCOME,
             .op = WHAT_ACK,
             .a_shard = s->call_shard,
             .a_index = s->call_index,
             .a_gen = s->call_gen,
             .b_shard = (uint16_t)c->shard->id,
             .b_index = s->index,
             .b_gen = s->gen};
    if (rec_send(c->shard, s->call_shard, &r) != 0) {
        rb_publish_wait_for_envelope(c); /* the ack is handled again */
        return;
    }
    s->acked = true;
}

static void on_response_frame(rb_conn *c, const rb_frame *f)
{
    if (c->state != RB_CONN_OPEN && c->state != RB_CONN_DRAINING) {
        return;
    }
    rb_rpc_serve *s = serve_of(c, f->hdr.corr_id);
    if (s == NULL) {
        return; /* late, or not this connection's: dropped */
    }
    uint16_t code = f->u.response.code;
    if (code != RB_WIRE_OK && code != RB_WIRE_APPLICATION_ERROR) {
        rb_conn_send_error(c, f->hdr.corr_id, RB_WIRE_INVALID_ARGUMENT,
                           "RESPONSE: code %u: a responder answers ok or application_error",
                           (unsigned)code);
        return;
    }
    rec r = {.type = REC_OUTCOME,
             .op = WHAT_RESPONSE,
             .code = code,
             .a_shard = s->call_shard,
             .a_index = s->call_index,
             .a_gen = s->call_gen,
             .message = f->u.response.message,
             .payload = f->u.response.payload};
    char why[96];
    if (f->u.response.payload.len + f->u.response.message.len > payload_max(c->shard)) {
        snprintf(why, sizeof why, "response of %zu bytes above the limit of %u",
                 f->u.response.payload.len + f->u.response.message.len, payload_max(c->shard));
        r.code = RB_WIRE_PAYLOAD_TOO_LARGE;
        r.message = (rb_bytes){(const uint8_t *)why, strlen(why)};
        r.payload = (rb_bytes){0};
    }
    if (rec_send(c->shard, s->call_shard, &r) != 0) {
        rb_publish_wait_for_envelope(c); /* the response is handled again */
        return;
    }
    serve_free(c->shard->rpc, s);
}

static void on_cancel(rb_rpc *rpc, rec *r)
{
    r->type = REC_DEAD;
    if (r->b_index >= RB_RPC_SERVES_PER_SHARD_MAX) {
        return;
    }
    rb_rpc_serve *s = &rpc->serves[r->b_index];
    if (s->used && s->gen == r->b_gen) {
        serve_free(rpc, s);
    }
}

/* Ends c's calls, the requests routed to it and its registrations. */
static void rpc_conn_closed(rb_conn *c)
{
    rb_rpc *rpc = c->shard->rpc;
    if (rpc == NULL) {
        return;
    }
    while (c->rpc_calls != NULL) {
        call_free(rpc, c->rpc_calls);
    }
    while (c->rpc_serves != NULL) {
        rb_rpc_serve *s = c->rpc_serves;
        /* No record to answer over here: with every envelope out, the
         * call ends at its own timer instead (logged, as it is rare). */
        rec r = {.type = REC_OUTCOME,
                 .op = WHAT_RESPONSE,
                 .code = RB_WIRE_RECIPIENT_DISCONNECTED,
                 .text = TEXT_RESPONDER_CLOSED,
                 .a_shard = s->call_shard,
                 .a_index = s->call_index,
                 .a_gen = s->call_gen};
        if (rec_send(c->shard, s->call_shard, &r) != 0) {
            RB_LOG_WARN(c->id, "rpc: no envelope to tell a caller its responder closed; the "
                               "call ends at its timeout");
        }
        serve_free(rpc, s);
    }
    while (c->rpc_methods != NULL) {
        rb_rpc_method *m = c->rpc_methods;
        rb_bytes method = {(const uint8_t *)m->method, m->method_len};
        rb_bytes service = {(const uint8_t *)m->service, m->service_len};
        rec r = reg_rec(c, OP_UNREGISTER, 0, method, service);
        if (rec_send(c->shard, directory_shard(c->shard, r.name), &r) != 0) {
            /* The entry stays until a call finds the connection gone
             * (recipient_disconnected); logged, as it should not happen. */
            RB_LOG_WARN(c->id, "rpc: no envelope to unregister a method");
        }
        method_unlink(rpc, c, &c->rpc_methods);
    }
}

/* ---- the subsystem ---- */

/* One step of record r, which is for this shard: r becomes its next step
 * or REC_DEAD. */
static void rec_step(rb_rpc *rpc, rec *r)
{
    switch (r->type) {
    case REC_ROUTE:
        on_route(rpc, r);
        break;
    case REC_DELIVER:
        on_deliver(rpc, r);
        break;
    case REC_REG:
        on_reg(rpc, r);
        break;
    case REC_REG_DONE:
        on_reg_done(rpc, r);
        break;
    case REC_OUTCOME:
        on_outcome(rpc, r);
        break;
    case REC_CANCEL:
        on_cancel(rpc, r);
        break;
    default:
        RB_ASSERT(false);
    }
}

/* Runs the records for this shard, each until it is done or for another
 * shard, and writes their next steps over them. The envelope then goes on
 * to the shard of its first record not done, or back to its pool: it is
 * never held, and no step needs another envelope, so RPC records can
 * neither be lost for want of one nor wait for one in a cycle of shards.
 * An envelope makes at most REC_STEPS_MAX hops per record. */
static void on_rpc_envelope(void *ctx, rb_xmsg *m)
{
    rb_rpc *rpc = ctx;
    uint32_t me = rpc->sh->id;
    uint32_t next = UINT32_MAX;
    uint8_t *p = m->data;
    for (uint32_t i = 0; i < m->count; i++) {
        uint8_t *slot = p;
        rec r;
        uint32_t bytes = rec_read(slot, &r);
        p = slot + bytes;
        RB_ASSERT(p <= m->data + m->bytes);
        for (uint32_t steps = 0; r.type != REC_DEAD && r.to == me; steps++) {
            RB_ASSERT(steps < REC_STEPS_MAX);
            rec_step(rpc, &r);
            if (r.type == REC_DEAD) {
                slot[REC_TYPE_AT] = REC_DEAD;
            } else {
                rec_put(slot, bytes, &r);
                (void)rec_read(slot, &r); /* its strings may have moved */
            }
        }
        if (r.type != REC_DEAD && next == UINT32_MAX) {
            next = r.to;
        }
    }
    RB_ASSERT(p == m->data + m->bytes);
    if (next == UINT32_MAX) {
        rb_xmsg_put(m);
        return;
    }
    RB_ASSERT(next < rpc->sh->server->shard_count);
    RB_ASSERT(next != me);
    rb_mailbox_send(&rpc->sh->mail, next, m);
}

static void rpc_free(rb_rpc *rpc)
{
    free(rpc->calls);
    free(rpc->serves);
    free(rpc->methods);
    free(rpc->regs);
    free(rpc->buckets);
    free(rpc);
}

static int rpc_init(rb_shard *sh, rb_err *err)
{
    rb_rpc *rpc = calloc(1, sizeof *rpc);
    if (rpc == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "shard %u: rpc state", sh->id);
    }
    rpc->sh = sh;
    rpc->calls = calloc(RB_RPC_CALLS_PER_SHARD_MAX, sizeof *rpc->calls);
    rpc->serves = calloc(RB_RPC_SERVES_PER_SHARD_MAX, sizeof *rpc->serves);
    rpc->methods = calloc(RB_RPC_REGISTRATIONS_PER_SHARD_MAX, sizeof *rpc->methods);
    rpc->regs = calloc(RB_RPC_REGISTRATIONS_PER_SHARD_MAX, sizeof *rpc->regs);
    rpc->buckets = calloc(RB_RPC_DIRECTORY_BUCKETS, sizeof *rpc->buckets);
    if (rpc->calls == NULL || rpc->serves == NULL || rpc->methods == NULL || rpc->regs == NULL ||
        rpc->buckets == NULL) {
        rpc_free(rpc);
        return rb_err_set(err, RB_ENOMEM, 0, "shard %u: rpc tables", sh->id);
    }
    for (uint32_t i = RB_RPC_CALLS_PER_SHARD_MAX; i-- > 0;) {
        rpc->calls[i].index = i;
        rpc->calls[i].next = rpc->call_free;
        rpc->call_free = &rpc->calls[i];
    }
    for (uint32_t i = RB_RPC_SERVES_PER_SHARD_MAX; i-- > 0;) {
        rpc->serves[i].index = i;
        rpc->serves[i].next = rpc->serve_free;
        rpc->serve_free = &rpc->serves[i];
    }
    for (uint32_t i = RB_RPC_REGISTRATIONS_PER_SHARD_MAX; i-- > 0;) {
        rpc->methods[i].next = rpc->method_free;
        rpc->method_free = &rpc->methods[i];
        rpc->regs[i].next = rpc->reg_free;
        rpc->reg_free = &rpc->regs[i];
    }
    sh->rpc = rpc;
    rb_mailbox_register(&sh->mail, RB_XK_RPC, on_rpc_envelope, rpc);
    rb_session_take_frames(sh, RB_FRAME_REGISTER, on_register_frame);
    rb_session_take_frames(sh, RB_FRAME_UNREGISTER, on_unregister_frame);
    rb_session_take_frames(sh, RB_FRAME_REQUEST, on_request_frame);
    rb_session_take_frames(sh, RB_FRAME_REQUEST_ACK, on_request_ack_frame);
    rb_session_take_frames(sh, RB_FRAME_RESPONSE, on_response_frame);
    rb_session_on_closed(sh, rpc_conn_closed);
    return 0;
}

static void rpc_deinit(rb_shard *sh)
{
    if (sh->rpc != NULL) {
        rpc_free(sh->rpc);
        sh->rpc = NULL;
    }
}

static uint64_t rpc_memory_bytes(const rb_config *cfg)
{
    (void)cfg;
    return sizeof(rb_rpc) + (uint64_t)RB_RPC_CALLS_PER_SHARD_MAX * sizeof(rb_rpc_call) +
           (uint64_t)RB_RPC_SERVES_PER_SHARD_MAX * sizeof(rb_rpc_serve) +
           (uint64_t)RB_RPC_REGISTRATIONS_PER_SHARD_MAX *
               (sizeof(rb_rpc_method) + sizeof(rb_rpc_reg)) +
           (uint64_t)RB_RPC_DIRECTORY_BUCKETS * sizeof(rb_rpc_reg *);
}

const rb_subsystem rb_rpc_subsystem = {
    .name = "rpc",
    .init = rpc_init,
    .deinit = rpc_deinit,
    .memory_bytes = rpc_memory_bytes,
};
