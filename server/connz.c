/* Per-connection statistics and GET /v1/connz (server/connz.h). */
#include "server/connz.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/frame.h"
#include "server/link.h"
#include "server/server.h"

/* Offsets of the text fields in rb_connz_slot.text. */
#define OFF_PEER   0
#define OFF_WHO    (OFF_PEER + RB_CONNZ_PEER_BYTES_MAX)
#define OFF_NAME   (OFF_WHO + RB_CONNZ_WHO_BYTES_MAX)
#define OFF_TOPICS (OFF_NAME + RB_CONNZ_NAME_BYTES_MAX)

#define SLOT_WORDS (sizeof(rb_connz_slot) / sizeof(uint64_t))
_Static_assert(sizeof(rb_connz_slot) % sizeof(uint64_t) == 0, "a slot is whole words");

/* Release stores and acquire loads make the seqlock without fences (which
 * ThreadSanitizer does not model): a reader that sees any store of a
 * rewrite also sees its odd seq. On x86 both are plain moves. */
#define STORE(p, v) __atomic_store_n((p), (uint64_t)(v), __ATOMIC_RELEASE)
#define BUMP(p, n)  STORE((p), *(p) + (uint64_t)(n))

/* ---- the shard's side ---- */

static rb_connz_slot *slot_of(const rb_conn *c)
{
    RB_ASSERT(c->index < c->shard->conn_max);
    return &c->shard->connz[c->index];
}

/* The seqlock's write side: only the owning thread writes, so its own
 * plain reads of the slot are not races. */
static void seq_begin_at(uint64_t *seq)
{
    STORE(seq, *seq + 1);
}

static void seq_end_at(uint64_t *seq)
{
    RB_ASSERT(*seq % 2 == 1);
    __atomic_store_n(seq, *seq + 1, __ATOMIC_RELEASE);
}

#define seq_begin(z) seq_begin_at(&(z)->seq)
#define seq_end(z)   seq_end_at(&(z)->seq)

/* Writes len bytes of p (cut to cap - 1 at a UTF-8 character boundary,
 * NUL-padded) at text offset off, a word at a time. Inside
 * seq_begin/seq_end. */
static void text_put(rb_connz_slot *z, size_t off, size_t cap, const void *p, size_t len)
{
    uint64_t words[RB_CONNZ_TOPICS_TEXT_BYTES_MAX / 8];
    RB_ASSERT(cap % 8 == 0 && cap <= sizeof words && off % 8 == 0);
    const uint8_t *b = p;
    size_t n = len;
    if (n > cap - 1) {
        /* Not inside a character: the cut string stays valid UTF-8. */
        n = cap - 1;
        while (n > 0 && (b[n] & 0xc0) == 0x80) {
            n--;
        }
    }
    memset(words, 0, cap);
    memcpy(words, p, n);
    for (size_t i = 0; i < cap / 8; i++) {
        STORE(&z->text[off / 8 + i], words[i]);
    }
}

void rb_connz_open(rb_conn *c)
{
    rb_connz_slot *z = slot_of(c);
    seq_begin(z);
    STORE(&z->id, c->id);
    STORE(&z->opened_ms, rb_clock_ms());
    STORE(&z->transport, c->transport);
    STORE(&z->state, c->state);
    STORE(&z->topics_more, 0);
    uint64_t *counters[] = {&z->bytes_in, &z->bytes_out, &z->frames_in,     &z->frames_out,
                            &z->msgs_in,  &z->msgs_out,  &z->pending_bytes, &z->topics};
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
        STORE(counters[i], 0);
    }
    const char *peer = c->link != NULL ? c->link->peer : "";
    text_put(z, OFF_PEER, RB_CONNZ_PEER_BYTES_MAX, peer, strlen(peer));
    text_put(z, OFF_WHO, RB_CONNZ_WHO_BYTES_MAX, "", 0);
    text_put(z, OFF_NAME, RB_CONNZ_NAME_BYTES_MAX, "", 0);
    text_put(z, OFF_TOPICS, RB_CONNZ_TOPICS_TEXT_BYTES_MAX, "", 0);
    seq_end(z);
}

void rb_connz_hello(rb_conn *c, const char *who, const uint8_t *name, size_t name_len)
{
    rb_connz_slot *z = slot_of(c);
    seq_begin(z);
    text_put(z, OFF_WHO, RB_CONNZ_WHO_BYTES_MAX, who, strlen(who));
    if (name != NULL) {
        text_put(z, OFF_NAME, RB_CONNZ_NAME_BYTES_MAX, name, name_len);
    }
    STORE(&z->state, c->state);
    seq_end(z);
}

void rb_connz_bytes_in(rb_conn *c, size_t len)
{
    rb_connz_slot *z = slot_of(c);
    BUMP(&z->bytes_in, len);
}

void rb_connz_frame_in(rb_conn *c, uint8_t kind, int delta)
{
    rb_connz_slot *z = slot_of(c);
    BUMP(&z->frames_in, delta);
    if (kind == RB_FRAME_PUBLISH) {
        BUMP(&z->msgs_in, delta);
    }
}

void rb_connz_frame_out(rb_conn *c)
{
    rb_connz_slot *z = slot_of(c);
    BUMP(&z->frames_out, 1);
}

void rb_connz_msgs_out(rb_conn *c, uint32_t count)
{
    rb_connz_slot *z = slot_of(c);
    BUMP(&z->msgs_out, count);
}

bool rb_connz_sync(rb_conn *c, uint32_t topic_count, bool topic_names)
{
    rb_connz_slot *z = slot_of(c);
    if (c->state == RB_CONN_FREE) {
        return false;
    }
    STORE(&z->bytes_out, c->sendq.tail_pos);
    STORE(&z->pending_bytes, rb_sendq_bytes(&c->sendq));
    bool recount = z->topics != topic_count;
    if (z->state == (uint64_t)c->state && !topic_names && !recount) {
        return false;
    }
    seq_begin(z);
    STORE(&z->state, c->state);
    STORE(&z->topics, topic_count);
    seq_end(z);
    return topic_names || recount;
}

void rb_connz_topic_names(rb_conn *c, const char *text, size_t len, bool more)
{
    rb_connz_slot *z = slot_of(c);
    seq_begin(z);
    text_put(z, OFF_TOPICS, RB_CONNZ_TOPICS_TEXT_BYTES_MAX, text, len);
    STORE(&z->topics_more, more ? 1 : 0);
    seq_end(z);
}

void rb_connz_free(rb_conn *c)
{
    rb_connz_slot *z = slot_of(c);
    seq_begin(z);
    STORE(&z->id, 0);
    STORE(&z->state, RB_CONN_FREE);
    seq_end(z);
}

/* ---- the reader's side (any thread) ---- */

/* Copies slot z into *out (the text too when text): false when the slot
 * kept changing for RB_CONNZ_READ_TRIES_MAX tries. */
static bool words_read(const uint64_t *src, uint64_t *dst, size_t words)
{
    for (int t = 0; t < RB_CONNZ_READ_TRIES_MAX; t++) {
        uint64_t s1 = __atomic_load_n(&src[0], __ATOMIC_ACQUIRE);
        if (s1 % 2 == 1) {
            continue;
        }
        /* Acquire loads: the seq is read again after them. */
        for (size_t i = 0; i < words; i++) {
            dst[i] = __atomic_load_n(&src[i], __ATOMIC_ACQUIRE);
        }
        if (__atomic_load_n(&src[0], __ATOMIC_RELAXED) == s1) {
            return true;
        }
    }
    return false;
}

static bool slot_read(const rb_connz_slot *z, rb_connz_slot *out, bool text)
{
    return words_read((const uint64_t *)z, (uint64_t *)out,
                      text ? SLOT_WORDS : SLOT_WORDS - RB_CONNZ_TEXT_BYTES / 8);
}

enum {
    SORT_CID,
    SORT_BYTES_TO,
    SORT_BYTES_FROM,
    SORT_MSGS_TO,
    SORT_MSGS_FROM,
    SORT_PENDING,
    SORT_AGE,
    SORT_SUBS,
    SORT_KINDS
};
static const char *const sort_names[SORT_KINDS] = {"cid",       "bytes_to", "bytes_from", "msgs_to",
                                                   "msgs_from", "pending",  "age",        "subs"};

/* "any" matches every connection that is not free. */
#define STATE_ANY (-1)
static const char *const state_names[] = {"free",     "handshake", "open",
                                          "draining", "closing",   "closed"};
#define STATE_KINDS ((int)(sizeof state_names / sizeof state_names[0]))

typedef struct query {
    uint32_t offset;
    uint32_t limit;
    bool limit_clamped;
    int sort;
    int state;
    bool subs;
} query;

/* The writer of an answer: out[cap], len, full once something was cut. */
typedef struct out_buf {
    char *p;
    size_t cap;
    size_t len;
    bool full;
} out_buf;

__attribute__((format(printf, 2, 3))) static void put(out_buf *o, const char *fmt, ...)
{
    if (o->full) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= o->cap - o->len) {
        o->full = true;
        return;
    }
    o->len += (size_t)n;
}

/* A peer's string inside a 400 message: printable ASCII as is, anything
 * else \xHH, at most 32 bytes of it. */
static void put_quoted(out_buf *o, const char *p, size_t len)
{
    put(o, "\"");
    size_t shown = len < 32 ? len : 32;
    for (size_t i = 0; i < shown; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') {
            put(o, "%c", ch);
        } else {
            put(o, "\\x%02x", ch);
        }
    }
    put(o, "\"%s", shown < len ? "..." : "");
}

/* A JSON string of len bytes at p: valid UTF-8 passes, every byte of an
 * invalid string above 0x7e becomes '?'; quotes, backslashes and control
 * characters are escaped. */
static void put_json_str(out_buf *o, const char *p, size_t len)
{
    bool utf8 = rb_utf8_valid((const uint8_t *)p, len);
    put(o, "\"");
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '"' || ch == '\\') {
            put(o, "\\%c", ch);
        } else if (ch < 0x20 || ch == 0x7f) {
            put(o, "\\u%04x", ch);
        } else if (ch > 0x7f && !utf8) {
            put(o, "?");
        } else {
            put(o, "%c", ch);
        }
    }
    put(o, "\"");
}

static bool span_eq(const char *p, size_t len, const char *text)
{
    return strlen(text) == len && memcmp(p, text, len) == 0;
}

static int name_index(const char *p, size_t len, const char *const *names, int count)
{
    for (int i = 0; i < count; i++) {
        if (span_eq(p, len, names[i])) {
            return i;
        }
    }
    return -1;
}

/* A decimal u32 of 1 to 10 digits. */
static bool parse_u32(const char *p, size_t len, uint32_t *v)
{
    if (len == 0 || len > 10) {
        return false;
    }
    uint64_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return false;
        }
        n = n * 10 + (uint64_t)(p[i] - '0');
    }
    if (n > UINT32_MAX) {
        return false;
    }
    *v = (uint32_t)n;
    return true;
}

/* What a route's query takes: the first key_count of offset, limit,
 * sort, state, subs, its sort names and its page bounds. */
typedef struct spec {
    int key_count;
    const char *known; /* the keys, for the message */
    const char *const *sorts;
    int sort_count;
    const char *sort_want;
    uint32_t limit_default;
    uint32_t limit_max;
} spec;

static const spec connz_spec = {
    .key_count = 5,
    .known = "offset, limit, sort, state, subs",
    .sorts = sort_names,
    .sort_count = SORT_KINDS,
    .sort_want = "one of cid, bytes_to, bytes_from, msgs_to, msgs_from, pending, age, subs",
    .limit_default = RB_CONNZ_LIMIT_DEFAULT,
    .limit_max = RB_CONNZ_LIMIT_MAX,
};

/* One parameter k=v into *q; false with the reason in *o. */
static bool parse_param(const spec *sp, query *q, const char *k, size_t klen, const char *v,
                        size_t vlen, unsigned *seen, out_buf *o)
{
    static const char *const keys[] = {"offset", "limit", "sort", "state", "subs"};
    int key = name_index(k, klen, keys, sp->key_count);
    if (key < 0) {
        put(o, "unknown parameter ");
        put_quoted(o, k, klen);
        put(o, " (known: %s)", sp->known);
        return false;
    }
    if (*seen & (1u << key)) {
        put(o, "parameter %s given twice", keys[key]);
        return false;
    }
    *seen |= 1u << key;
    bool ok = true;
    switch (key) {
    case 0:
        ok = parse_u32(v, vlen, &q->offset);
        break;
    case 1:
        ok = parse_u32(v, vlen, &q->limit) && q->limit > 0;
        break;
    case 2:
        q->sort = name_index(v, vlen, sp->sorts, sp->sort_count);
        ok = q->sort >= 0;
        break;
    case 3:
        q->state = name_index(v, vlen, state_names, STATE_KINDS);
        ok = q->state > 0; /* "free" is no connection */
        if (span_eq(v, vlen, "any")) {
            q->state = STATE_ANY;
            ok = true;
        }
        break;
    default:
        ok = span_eq(v, vlen, "0") || span_eq(v, vlen, "1");
        q->subs = ok && v[0] == '1';
        break;
    }
    if (ok) {
        return true;
    }
    static const char *const wants[] = {
        "a non-negative integer",
        "an integer from 1 to 4294967295 (larger asks are clamped to the page maximum)", "",
        "one of any, handshake, open, draining, closing, closed", "0 or 1"};
    put(o, "%s: ", keys[key]);
    put_quoted(o, v, vlen);
    put(o, " is not %s", key == 2 ? sp->sort_want : wants[key]);
    return false;
}

/* Parses the query string; false with a one-line reason in *o. */
static bool parse_query(const spec *sp, rb_http_span qs, query *q, out_buf *o)
{
    *q = (query){.limit = sp->limit_default, .sort = 0, .state = STATE_ANY};
    if (qs.len > RB_CONNZ_QUERY_BYTES_MAX) {
        put(o, "query string longer than %u bytes", RB_CONNZ_QUERY_BYTES_MAX);
        return false;
    }
    unsigned seen = 0;
    size_t i = 0;
    while (i < qs.len) {
        const char *p = qs.ptr + i;
        const char *amp = memchr(p, '&', qs.len - i);
        size_t plen = amp != NULL ? (size_t)(amp - p) : qs.len - i;
        i += plen + 1;
        if (plen == 0) {
            continue;
        }
        const char *eq = memchr(p, '=', plen);
        if (eq == NULL) {
            put(o, "parameter ");
            put_quoted(o, p, plen);
            put(o, " has no '=value'");
            return false;
        }
        size_t klen = (size_t)(eq - p);
        if (!parse_param(sp, q, p, klen, eq + 1, plen - klen - 1, &seen, o)) {
            return false;
        }
    }
    if (q->limit > sp->limit_max) {
        q->limit = sp->limit_max;
        q->limit_clamped = true;
    }
    return true;
}

/* One connection in the sort: where its slot is and its key. */
typedef struct pick {
    uint64_t key;
    uint64_t id;
    uint32_t shard;
    uint32_t index;
} pick;

static uint64_t sort_key(const rb_connz_slot *z, int sort)
{
    switch (sort) {
    case SORT_BYTES_TO:
        return z->bytes_out;
    case SORT_BYTES_FROM:
        return z->bytes_in;
    case SORT_MSGS_TO:
        return z->msgs_out;
    case SORT_MSGS_FROM:
        return z->msgs_in;
    case SORT_PENDING:
        return z->pending_bytes;
    case SORT_AGE:
        return UINT64_MAX - z->opened_ms; /* the oldest first */
    case SORT_SUBS:
        return z->topics;
    default:
        return 0;
    }
}

/* Larger keys first, then ascending connection ids. */
static int pick_cmp(const void *a, const void *b)
{
    const pick *x = a;
    const pick *y = b;
    if (x->key != y->key) {
        return x->key > y->key ? -1 : 1;
    }
    return x->id < y->id ? -1 : x->id > y->id;
}

static size_t text_len(const char *p, size_t cap)
{
    const char *nul = memchr(p, '\0', cap);
    return nul != NULL ? (size_t)(nul - p) : cap;
}

static void put_topic_names(out_buf *o, const char *t, size_t len)
{
    put(o, ",\"topic_names\":[");
    size_t i = 0;
    bool first = true;
    while (i < len) {
        const char *sp = memchr(t + i, ' ', len - i);
        size_t n = sp != NULL ? (size_t)(sp - (t + i)) : len - i;
        if (n > 0) {
            put(o, "%s", first ? "" : ",");
            put_json_str(o, t + i, n);
            first = false;
        }
        i += n + 1;
    }
    put(o, "]");
}

static void put_conn(out_buf *o, const rb_connz_slot *z, uint32_t shard, uint64_t now, bool subs)
{
    const char *text = (const char *)z->text;
    put(o, "{\"cid\":%llu,\"shard\":%u,\"transport\":\"%s\",\"peer\":", (unsigned long long)z->id,
        shard, rb_transport_name((rb_transport_kind)z->transport));
    put_json_str(o, text + OFF_PEER, text_len(text + OFF_PEER, RB_CONNZ_PEER_BYTES_MAX));
    put(o, ",\"identity\":");
    put_json_str(o, text + OFF_WHO, text_len(text + OFF_WHO, RB_CONNZ_WHO_BYTES_MAX));
    put(o, ",\"name\":");
    put_json_str(o, text + OFF_NAME, text_len(text + OFF_NAME, RB_CONNZ_NAME_BYTES_MAX));
    put(o,
        ",\"state\":\"%s\",\"age_ms\":%llu,\"in_bytes\":%llu,\"out_bytes\":%llu,"
        "\"in_frames\":%llu,\"out_frames\":%llu,\"in_msgs\":%llu,\"out_msgs\":%llu,"
        "\"pending_bytes\":%llu,\"topics\":%llu",
        z->state < (uint64_t)STATE_KINDS ? state_names[z->state] : "?",
        (unsigned long long)(now > z->opened_ms ? now - z->opened_ms : 0),
        (unsigned long long)z->bytes_in, (unsigned long long)z->bytes_out,
        (unsigned long long)z->frames_in, (unsigned long long)z->frames_out,
        (unsigned long long)z->msgs_in, (unsigned long long)z->msgs_out,
        (unsigned long long)z->pending_bytes, (unsigned long long)z->topics);
    if (subs) {
        put_topic_names(o, text + OFF_TOPICS,
                        text_len(text + OFF_TOPICS, RB_CONNZ_TOPICS_TEXT_BYTES_MAX));
        put(o, ",\"topic_names_truncated\":%s", z->topics_more ? "true" : "false");
    }
    put(o, "}");
}

/* Every connection that matches q, keyed; *skipped counts slots that kept
 * changing. The array (malloc'd, the caller frees) holds at most every
 * slot of every shard: the bound of one request's memory. */
static pick *collect(const rb_server *srv, const query *q, uint32_t *count, uint32_t *skipped)
{
    size_t slots = 0;
    for (uint32_t s = 0; s < srv->shard_count; s++) {
        slots += srv->shards[s].conn_max;
    }
    pick *picks = malloc((slots > 0 ? slots : 1) * sizeof *picks);
    if (picks == NULL) {
        return NULL;
    }
    uint32_t n = 0;
    for (uint32_t s = 0; s < srv->shard_count; s++) {
        const rb_shard *sh = &srv->shards[s];
        for (uint32_t i = 0; i < sh->conn_max && sh->connz != NULL; i++) {
            rb_connz_slot z;
            if (__atomic_load_n(&sh->connz[i].id, __ATOMIC_RELAXED) == 0) {
                continue;
            }
            if (!slot_read(&sh->connz[i], &z, false)) {
                (*skipped)++;
                continue;
            }
            if (z.id == 0 || (q->state != STATE_ANY && z.state != (uint64_t)q->state)) {
                continue;
            }
            picks[n++] = (pick){.key = sort_key(&z, q->sort), .id = z.id, .shard = s, .index = i};
        }
    }
    *count = n;
    return picks;
}

int rb_connz_answer(const rb_server *srv, rb_http_span qs, char *out, size_t cap, size_t *len)
{
    out_buf o = {.p = out, .cap = cap};
    query q;
    if (!parse_query(&connz_spec, qs, &q, &o)) {
        *len = o.len;
        return 400;
    }
    uint32_t total = 0;
    uint32_t skipped = 0;
    pick *picks = collect(srv, &q, &total, &skipped);
    if (picks == NULL) {
        put(&o, "no memory for the connection list");
        *len = o.len;
        return 503;
    }
    qsort(picks, total, sizeof *picks, pick_cmp);
    uint32_t first = q.offset < total ? q.offset : total;
    uint32_t last = total - first > q.limit ? first + q.limit : total;
    uint64_t now = rb_clock_ms();
    put(&o,
        "{\"server_id\":\"%s\",\"now_ms\":%llu,\"total\":%u,\"offset\":%u,\"limit\":%u,"
        "\"limit_max\":%u,\"limit_clamped\":%s,\"sort\":\"%s\",\"state\":\"%s\","
        "\"connections\":[",
        srv->cfg.server_id, (unsigned long long)now, total, q.offset, q.limit, RB_CONNZ_LIMIT_MAX,
        q.limit_clamped ? "true" : "false", sort_names[q.sort],
        q.state == STATE_ANY ? "any" : state_names[q.state]);
    uint32_t shown = 0;
    for (uint32_t k = first; k < last; k++) {
        rb_connz_slot z;
        const rb_connz_slot *src = &srv->shards[picks[k].shard].connz[picks[k].index];
        /* Closed or reused since the first pass: left out. */
        if (!slot_read(src, &z, true) || z.id != picks[k].id) {
            skipped++;
            continue;
        }
        put(&o, "%s", shown > 0 ? "," : "");
        put_conn(&o, &z, picks[k].shard, now, q.subs);
        shown++;
    }
    put(&o, "],\"num_connections\":%u,\"skipped\":%u}", shown, skipped);
    free(picks);
    *len = o.full ? cap : o.len;
    return 200;
}

/* ---- /v1/topicz ---- */

static int topicz_init(rb_shard *sh, rb_err *err)
{
    sh->topicz.slots = calloc(RB_TOPICZ_SLOTS_MAX, sizeof *sh->topicz.slots);
    if (sh->topicz.slots == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "shard %u: %u topicz slots", sh->id,
                          RB_TOPICZ_SLOTS_MAX);
    }
    return 0;
}

static void topicz_deinit(rb_shard *sh)
{
    free(sh->topicz.slots);
    sh->topicz = (rb_topicz){0};
}

static uint64_t topicz_memory_bytes(const rb_config *cfg)
{
    (void)cfg;
    return (uint64_t)RB_TOPICZ_SLOTS_MAX * sizeof(rb_topicz_slot);
}

const rb_subsystem rb_topicz_subsystem = {
    .name = "topicz",
    .init = topicz_init,
    .deinit = topicz_deinit,
    .memory_bytes = topicz_memory_bytes,
};

/* Past the table: the owner's handle that says so. */
#define TOPICZ_UNTRACKED UINT32_MAX

/* A new slot for name, published to readers (its name never changes), or
 * TOPICZ_UNTRACKED once the table is full. */
static uint32_t topicz_take(rb_topicz *tz, const char *name, size_t len)
{
    if (tz->count == RB_TOPICZ_SLOTS_MAX) {
        STORE(&tz->untracked, tz->untracked + 1);
        return TOPICZ_UNTRACKED;
    }
    /* Nobody reads a slot at or past count: plain writes, then publish. */
    rb_topicz_slot *z = &tz->slots[tz->count];
    RB_ASSERT(len < sizeof z->name);
    memcpy(z->name, name, len);
    z->name_len = len;
    z->window_start_ms = rb_clock_ms();
    __atomic_store_n(&tz->count, tz->count + 1, __ATOMIC_RELEASE);
    return (uint32_t)tz->count;
}

void rb_topicz_head(rb_shard *sh, uint32_t *slot, const char *name, size_t name_len, uint64_t head,
                    uint64_t stored)
{
    rb_topicz *tz = &sh->topicz;
    if (tz->slots == NULL || *slot == TOPICZ_UNTRACKED) {
        return;
    }
    if (*slot == 0) {
        *slot = topicz_take(tz, name, name_len);
        if (*slot == TOPICZ_UNTRACKED) {
            return;
        }
    }
    rb_topicz_slot *z = &tz->slots[*slot - 1];
    uint64_t now = rb_clock_ms();
    seq_begin(z);
    STORE(&z->head, head);
    STORE(&z->publishes, z->publishes + stored);
    uint64_t elapsed = now - z->window_start_ms;
    if (elapsed >= RB_TOPICZ_RATE_WINDOW_MS) {
        STORE(&z->last_rate_milli, z->window_count * 1000u * 1000u / elapsed);
        STORE(&z->window_start_ms, now);
        STORE(&z->window_count, stored);
    } else {
        STORE(&z->window_count, z->window_count + stored);
    }
    seq_end(z);
}

enum {
    TSORT_NAME,
    TSORT_HEAD,
    TSORT_PUBLISHES,
    TSORT_RATE,
    TSORT_KINDS
};
static const char *const tsort_names[TSORT_KINDS] = {"name", "head", "publishes", "rate"};

static const spec topicz_spec = {
    .key_count = 3,
    .known = "offset, limit, sort",
    .sorts = tsort_names,
    .sort_count = TSORT_KINDS,
    .sort_want = "one of name, head, publishes, rate",
    .limit_default = RB_TOPICZ_LIMIT_DEFAULT,
    .limit_max = RB_TOPICZ_LIMIT_MAX,
};

/* The words of a topicz slot a reader copies under its seqlock. */
#define TOPICZ_WORDS (offsetof(rb_topicz_slot, name_len) / sizeof(uint64_t))

typedef struct tpick {
    const rb_topicz_slot *slot; /* for its name, which never changes */
    uint64_t head;
    uint64_t publishes;
    uint64_t key;
    uint64_t rate_milli;
    uint32_t shard;
    uint32_t subscribers;
} tpick;

static int tpick_name_cmp(const tpick *x, const tpick *y)
{
    size_t n = x->slot->name_len < y->slot->name_len ? x->slot->name_len : y->slot->name_len;
    int c = memcmp(x->slot->name, y->slot->name, n);
    return c != 0
               ? c
               : (x->slot->name_len > y->slot->name_len) - (x->slot->name_len < y->slot->name_len);
}

/* Larger keys first, then names in byte order. */
static int tpick_cmp(const void *a, const void *b)
{
    const tpick *x = a;
    const tpick *y = b;
    if (x->key != y->key) {
        return x->key > y->key ? -1 : 1;
    }
    return tpick_name_cmp(x, y);
}

static int tpick_ptr_name_cmp(const void *a, const void *b)
{
    return tpick_name_cmp(*(const tpick *const *)a, *(const tpick *const *)b);
}

/* The rate the slot's windows say at now, in messages per 1000 s: over
 * the current window once it is RB_TOPICZ_RATE_WINDOW_MS old, else over
 * the last one, else (a topic younger than a window) its messages per
 * window. */
static uint64_t rate_at(const rb_topicz_slot *z, uint64_t now)
{
    uint64_t elapsed = now > z->window_start_ms ? now - z->window_start_ms : 0;
    if (elapsed >= RB_TOPICZ_RATE_WINDOW_MS) {
        return z->window_count * 1000u * 1000u / elapsed;
    }
    return z->last_rate_milli != 0 ? z->last_rate_milli
                                   : z->window_count * 1000u * 1000u / RB_TOPICZ_RATE_WINDOW_MS;
}

static tpick *topicz_collect(const rb_server *srv, int sort, uint64_t now, uint32_t *count,
                             uint32_t *skipped, uint64_t *untracked)
{
    size_t cap = (size_t)srv->shard_count * RB_TOPICZ_SLOTS_MAX;
    tpick *picks = malloc((cap > 0 ? cap : 1) * sizeof *picks);
    if (picks == NULL) {
        return NULL;
    }
    uint32_t n = 0;
    for (uint32_t s = 0; s < srv->shard_count; s++) {
        const rb_topicz *tz = &srv->shards[s].topicz;
        uint64_t published = __atomic_load_n(&tz->count, __ATOMIC_ACQUIRE);
        *untracked += __atomic_load_n(&tz->untracked, __ATOMIC_RELAXED);
        for (uint64_t i = 0; i < published; i++) {
            tpick *p = &picks[n];
            rb_topicz_slot copy;
            p->slot = &tz->slots[i];
            if (!words_read((const uint64_t *)p->slot, (uint64_t *)&copy, TOPICZ_WORDS)) {
                (*skipped)++;
                continue;
            }
            p->head = copy.head;
            p->publishes = copy.publishes;
            p->shard = s;
            p->subscribers = 0;
            p->rate_milli = rate_at(&copy, now);
            p->key = sort == TSORT_HEAD        ? p->head
                     : sort == TSORT_PUBLISHES ? p->publishes
                     : sort == TSORT_RATE      ? p->rate_milli
                                               : 0;
            n++;
        }
    }
    *count = n;
    return picks;
}

/* Counts, for the page's topics, the open connections whose topic list
 * names them (the lists of /v1/connz); false when some list was cut short,
 * so the counts may be low. */
static bool count_subscribers(const rb_server *srv, tpick *page, uint32_t page_count)
{
    tpick **byname = malloc((page_count > 0 ? page_count : 1) * sizeof *byname);
    if (byname == NULL) {
        return false;
    }
    for (uint32_t i = 0; i < page_count; i++) {
        byname[i] = &page[i];
    }
    qsort(byname, page_count, sizeof *byname, tpick_ptr_name_cmp);
    bool exact = true;
    for (uint32_t s = 0; s < srv->shard_count && page_count > 0; s++) {
        const rb_shard *sh = &srv->shards[s];
        for (uint32_t i = 0; i < sh->conn_max && sh->connz != NULL; i++) {
            rb_connz_slot z;
            if (__atomic_load_n(&sh->connz[i].id, __ATOMIC_RELAXED) == 0) {
                continue;
            }
            if (!slot_read(&sh->connz[i], &z, true)) {
                exact = false;
                continue;
            }
            if (z.id == 0 || (z.state != RB_CONN_OPEN && z.state != RB_CONN_DRAINING)) {
                continue;
            }
            exact = exact && z.topics_more == 0;
            const char *t = (const char *)z.text + OFF_TOPICS;
            size_t len = text_len(t, RB_CONNZ_TOPICS_TEXT_BYTES_MAX);
            for (size_t k = 0; k < len;) {
                const char *sp = memchr(t + k, ' ', len - k);
                size_t nlen = sp != NULL ? (size_t)(sp - (t + k)) : len - k;
                rb_topicz_slot key_slot = {.name_len = nlen};
                memcpy(key_slot.name, t + k, nlen < sizeof key_slot.name ? nlen : 0);
                tpick key = {.slot = &key_slot};
                const tpick *kp = &key;
                tpick **hit = bsearch(&kp, byname, page_count, sizeof *byname, tpick_ptr_name_cmp);
                if (hit != NULL) {
                    (*hit)->subscribers++;
                }
                k += nlen + 1;
            }
        }
    }
    free(byname);
    return exact;
}

int rb_topicz_answer(const rb_server *srv, rb_http_span qs, char *out, size_t cap, size_t *len)
{
    out_buf o = {.p = out, .cap = cap};
    query q;
    if (!parse_query(&topicz_spec, qs, &q, &o)) {
        *len = o.len;
        return 400;
    }
    uint64_t now = rb_clock_ms();
    uint32_t total = 0;
    uint32_t skipped = 0;
    uint64_t untracked = 0;
    tpick *picks = topicz_collect(srv, q.sort, now, &total, &skipped, &untracked);
    if (picks == NULL) {
        put(&o, "no memory for the topic list");
        *len = o.len;
        return 503;
    }
    qsort(picks, total, sizeof *picks, tpick_cmp);
    uint32_t first = q.offset < total ? q.offset : total;
    uint32_t last = total - first > q.limit ? first + q.limit : total;
    bool exact = count_subscribers(srv, picks + first, last - first);
    put(&o,
        "{\"server_id\":\"%s\",\"now_ms\":%llu,\"total\":%u,\"offset\":%u,\"limit\":%u,"
        "\"limit_max\":%u,\"limit_clamped\":%s,\"sort\":\"%s\",\"untracked_topics\":%llu,"
        "\"skipped\":%u,\"subscribers_exact\":%s,\"topics\":[",
        srv->cfg.server_id, (unsigned long long)now, total, q.offset, q.limit, RB_TOPICZ_LIMIT_MAX,
        q.limit_clamped ? "true" : "false", tsort_names[q.sort], (unsigned long long)untracked,
        skipped, exact ? "true" : "false");
    for (uint32_t k = first; k < last; k++) {
        const tpick *p = &picks[k];
        put(&o, "%s{\"topic\":", k > first ? "," : "");
        put_json_str(&o, p->slot->name, p->slot->name_len);
        put(&o,
            ",\"owner_shard\":%u,\"head\":%llu,\"publishes\":%llu,\"publish_rate\":%llu.%03llu,"
            "\"subscribers\":%u}",
            p->shard, (unsigned long long)p->head, (unsigned long long)p->publishes,
            (unsigned long long)(p->rate_milli / 1000), (unsigned long long)(p->rate_milli % 1000),
            p->subscribers);
    }
    put(&o, "],\"num_topics\":%u}", last - first);
    free(picks);
    *len = o.full ? cap : o.len;
    return 200;
}
