/* The QUIC engine on ngtcp2 0.12 and GnuTLS (see quic.h). This file owns
 * the connection table, the connection-ID index, the timer heap, the
 * stateless answers (version negotiation, Retry, stateless reset, refusal)
 * and the ringbus/1 stream policy; the h3 app and the owners' sockets live
 * elsewhere. Every table is sized at rb_quic_engine_new from the config;
 * ngtcp2 and GnuTLS allocate per connection at accept time only. */
#include "transports/quic.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>

#include "common/assert.h"
#include "common/frame.h"

/* TLS 1.3 only, the AEADs ngtcp2's GnuTLS backend implements; QUIC forbids
 * the middlebox compatibility mode. */
#define QUIC_PRIORITY                                                                              \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+CHACHA20-POLY1305:+AES-256-GCM:"      \
    "%DISABLE_TLS13_COMPAT_MODE"

/* Stream vectors gathered for one packet. */
#define QUIC_VEC_MAX 16
/* Streams a ringbus/1 server lets a peer open at once (one is the bus
 * stream; the rest exist to be refused) and h3 request concurrency. */
#define QUIC_BIDI_STREAMS 16
/* h3 needs three unidirectional streams each way (control, QPACK x2). */
#define QUIC_UNI_STREAMS 3
/* Connection IDs ngtcp2 asks the peer to keep for us. */
#define QUIC_ACTIVE_CID_LIMIT 4
/* The CID index holds this many entries per connection with every
 * connection slot in use, within its 3/4 load: what a connection needs
 * when its peer lets ngtcp2 issue its full pool (8, as gtlsclient does),
 * plus the client's original DCID and one spare. (At 4, a shard full of
 * such clients ran out of index and closed them with INTERNAL_ERROR.) */
#define QUIC_CID_INDEX_PER_CONN 10
/* Writes tried per datagram before a connection's turn ends: stream
 * errors (blocked, shut) retry without data, so the loop is bounded. */
#define QUIC_WRITE_TRIES_PER_DATAGRAM 4
/* Stateless reset packets are at most this long (RFC 9000 10.3). */
#define QUIC_RESET_BYTES_MAX 43

typedef enum conn_state {
    CS_FREE = 0,
    CS_HANDSHAKE,
    CS_OPEN,
    CS_CLOSING,  /* we sent CONNECTION_CLOSE; repeat it to late packets */
    CS_DRAINING, /* the peer closed; stay silent */
} conn_state;

typedef struct send_ref {
    const uint8_t *p;
    size_t len;
} send_ref;

typedef struct cid_key {
    uint8_t len;
    uint8_t data[NGTCP2_MAX_CIDLEN];
} cid_key;

struct rb_quic_conn {
    rb_quic_engine *e;
    uint32_t index;
    conn_state state;
    bool owner_knows; /* established, or the owner set a user: closed will run */
    bool told;        /* closed ran, or the owner closed: the owner is gone */
    bool dirty;
    bool in_lib;   /* inside an ngtcp2 call: closes are deferred */
    bool in_write; /* inside conn_write (an app's pull may close) */
    bool got_reset;
    bool close_pending;
    uint16_t close_status;
    uint32_t heap_pos; /* UINT32_MAX: not in the heap */
    uint64_t expiry_ns;
    uint64_t end_ns; /* end of the closing or draining period */
    ngtcp2_conn *conn;
    gnutls_session_t tls;
    ngtcp2_crypto_conn_ref ref;
    rb_quic_alpn alpn;
    void *user;
    const rb_quic_app_ops *app_ops;
    void *app;
    rb_quic_path path; /* storage for the path ngtcp2 was created on */
    uint32_t cid_count;
    cid_key cids[RB_QUIC_CIDS_PER_CONN_MAX];
    /* the bus stream */
    int64_t bus_sid;
    send_ref *refs; /* ring of send_refs_max */
    uint32_t ref_head;
    uint32_t ref_count;
    uint32_t ref_sent;     /* refs from the head wholly given to ngtcp2 */
    size_t ref_sent_off;   /* bytes of the next ref given to ngtcp2 */
    size_t ref_head_acked; /* bytes of the head ref acknowledged */
    uint64_t unacked;
    bool bus_fin_wanted;
    bool bus_fin_sent;
    bool bus_blocked;
    bool bus_lost;
    uint32_t refused;
    char close_reason[256];
    uint8_t *close_pkt;
    size_t close_len;
};

typedef struct cid_slot {
    uint64_t hash;
    uint32_t conn_plus1; /* 0: empty */
} cid_slot;

struct rb_quic_engine {
    rb_quic_role role;
    uint32_t owner_id;
    uint8_t secret[RB_QUIC_SECRET_BYTES];
    bool retry;
    uint32_t handshakes_max;
    uint32_t send_refs_max;
    uint32_t window;
    uint32_t idle_ms;
    uint32_t handshake_ms;
    uint32_t client_version;
    rb_quic_alpn client_alpn;
    rb_quic_handler h;
    gnutls_certificate_credentials_t cred;
    gnutls_priority_t prio;
    char server_name[256];
    bool name_is_addr;
    uint8_t name_bin[16];
    gnutls_typed_vdata_st vdata;
    bool insecure;
    rb_quic_conn *conns;
    uint32_t conns_max;
    uint32_t *free_list;
    uint32_t free_count;
    uint32_t *dirty;
    uint32_t dirty_count;
    uint32_t *heap;
    uint32_t heap_count;
    cid_slot *cid_slots;
    uint32_t cid_mask;
    uint32_t cid_used;
    uint64_t cid_seed;
    rb_quic_stats st;
};

static const gnutls_datum_t alpn_ringbus = {(unsigned char *)RB_QUIC_ALPN_RINGBUS_TEXT, 9};
static const gnutls_datum_t alpn_h3 = {(unsigned char *)RB_QUIC_ALPN_H3_TEXT, 2};

void rb_quic_config_default(rb_quic_config *cfg, rb_quic_role role)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->role = role;
    cfg->conns_max = role == RB_QUIC_SERVER ? RB_QUIC_CONNS_DEFAULT : 1;
    cfg->handshakes_max = RB_QUIC_HANDSHAKES_DEFAULT;
    cfg->send_refs_max = RB_QUIC_SEND_REFS_DEFAULT;
    cfg->stream_window_bytes = RB_QUIC_STREAM_WINDOW_DEFAULT;
    cfg->idle_ms = RB_QUIC_IDLE_MS_DEFAULT;
    cfg->handshake_ms = RB_QUIC_HANDSHAKE_MS_DEFAULT;
    cfg->alpn = RB_QUIC_ALPN_RINGBUS;
}

int rb_quic_secret_generate(uint8_t secret[RB_QUIC_SECRET_BYTES], rb_err *err)
{
    if (gnutls_rnd(GNUTLS_RND_KEY, secret, RB_QUIC_SECRET_BYTES) != 0) {
        return rb_err_set(err, RB_ESYS, 0, "quic: random secret: GnuTLS generator failed");
    }
    return 0;
}

/* ---- the connection-ID index (linear probing, backward-shift delete) ---- */

static uint64_t cid_hash(const rb_quic_engine *e, const uint8_t *p, size_t len)
{
    /* Client-chosen IDs reach the index, so the hash is seeded per engine. */
    uint64_t h = e->cid_seed ^ (0x9e3779b97f4a7c15ull * (len + 1));
    for (size_t i = 0; i < len; i++) {
        h = (h ^ p[i]) * 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h | 1;
}

static bool conn_has_cid(const rb_quic_conn *qc, const uint8_t *p, size_t len)
{
    for (uint32_t i = 0; i < qc->cid_count; i++) {
        if (qc->cids[i].len == len && memcmp(qc->cids[i].data, p, len) == 0) {
            return true;
        }
    }
    return false;
}

static rb_quic_conn *cid_find(rb_quic_engine *e, const uint8_t *p, size_t len)
{
    if (e->cid_slots == NULL || len == 0 || len > NGTCP2_MAX_CIDLEN) {
        return NULL;
    }
    uint64_t h = cid_hash(e, p, len);
    for (uint32_t i = (uint32_t)h & e->cid_mask;; i = (i + 1) & e->cid_mask) {
        cid_slot *s = &e->cid_slots[i];
        if (s->conn_plus1 == 0) {
            return NULL;
        }
        if (s->hash == h && conn_has_cid(&e->conns[s->conn_plus1 - 1], p, len)) {
            return &e->conns[s->conn_plus1 - 1];
        }
    }
}

static int cid_add(rb_quic_conn *qc, const uint8_t *p, size_t len)
{
    rb_quic_engine *e = qc->e;
    RB_ASSERT(len > 0 && len <= NGTCP2_MAX_CIDLEN);
    if (qc->cid_count == RB_QUIC_CIDS_PER_CONN_MAX || e->cid_used >= (e->cid_mask + 1) / 4 * 3) {
        return RB_ELIMIT;
    }
    if (conn_has_cid(qc, p, len)) {
        return 0;
    }
    cid_key *k = &qc->cids[qc->cid_count++];
    k->len = (uint8_t)len;
    memcpy(k->data, p, len);
    uint64_t h = cid_hash(e, p, len);
    uint32_t i = (uint32_t)h & e->cid_mask;
    while (e->cid_slots[i].conn_plus1 != 0) {
        i = (i + 1) & e->cid_mask;
    }
    e->cid_slots[i].hash = h;
    e->cid_slots[i].conn_plus1 = qc->index + 1;
    e->cid_used++;
    return 0;
}

static void cid_slot_delete(rb_quic_engine *e, uint32_t i)
{
    /* Backward shift: entries after the hole that probed past it move up. */
    for (uint32_t j = (i + 1) & e->cid_mask; e->cid_slots[j].conn_plus1 != 0;
         j = (j + 1) & e->cid_mask) {
        uint32_t home = (uint32_t)e->cid_slots[j].hash & e->cid_mask;
        bool movable = i <= j ? (home <= i || home > j) : (home <= i && home > j);
        if (movable) {
            e->cid_slots[i] = e->cid_slots[j];
            i = j;
        }
    }
    e->cid_slots[i].conn_plus1 = 0;
    e->cid_used--;
}

static void cid_remove(rb_quic_conn *qc, const uint8_t *p, size_t len)
{
    rb_quic_engine *e = qc->e;
    uint32_t k = 0;
    while (k < qc->cid_count && !(qc->cids[k].len == len && !memcmp(qc->cids[k].data, p, len))) {
        k++;
    }
    if (k == qc->cid_count) {
        return;
    }
    uint64_t h = cid_hash(e, p, len);
    for (uint32_t i = (uint32_t)h & e->cid_mask; e->cid_slots[i].conn_plus1 != 0;
         i = (i + 1) & e->cid_mask) {
        if (e->cid_slots[i].hash == h && e->cid_slots[i].conn_plus1 == qc->index + 1) {
            cid_slot_delete(e, i);
            break;
        }
    }
    qc->cids[k] = qc->cids[--qc->cid_count];
}

/* ---- the timer heap (min-heap of connection indexes by expiry) ---- */

static void heap_swap(rb_quic_engine *e, uint32_t a, uint32_t b)
{
    uint32_t t = e->heap[a];
    e->heap[a] = e->heap[b];
    e->heap[b] = t;
    e->conns[e->heap[a]].heap_pos = a;
    e->conns[e->heap[b]].heap_pos = b;
}

static uint64_t heap_key(const rb_quic_engine *e, uint32_t pos)
{
    return e->conns[e->heap[pos]].expiry_ns;
}

static void heap_fix(rb_quic_engine *e, uint32_t pos)
{
    while (pos > 0 && heap_key(e, (pos - 1) / 2) > heap_key(e, pos)) {
        heap_swap(e, pos, (pos - 1) / 2);
        pos = (pos - 1) / 2;
    }
    for (;;) {
        uint32_t l = 2 * pos + 1;
        uint32_t m = pos;
        if (l < e->heap_count && heap_key(e, l) < heap_key(e, m)) {
            m = l;
        }
        if (l + 1 < e->heap_count && heap_key(e, l + 1) < heap_key(e, m)) {
            m = l + 1;
        }
        if (m == pos) {
            return;
        }
        heap_swap(e, pos, m);
        pos = m;
    }
}

static void heap_remove(rb_quic_conn *qc)
{
    rb_quic_engine *e = qc->e;
    if (qc->heap_pos == UINT32_MAX) {
        return;
    }
    uint32_t pos = qc->heap_pos;
    e->heap_count--;
    if (pos != e->heap_count) {
        heap_swap(e, pos, e->heap_count);
        qc->heap_pos = UINT32_MAX;
        heap_fix(e, pos);
    }
    qc->heap_pos = UINT32_MAX;
}

static void timer_set(rb_quic_conn *qc, uint64_t at_ns)
{
    rb_quic_engine *e = qc->e;
    qc->expiry_ns = at_ns;
    if (qc->heap_pos == UINT32_MAX) {
        RB_ASSERT(e->heap_count < e->conns_max);
        qc->heap_pos = e->heap_count;
        e->heap[e->heap_count++] = qc->index;
    }
    heap_fix(e, qc->heap_pos);
}

static void timer_update(rb_quic_conn *qc)
{
    if (qc->state == CS_CLOSING || qc->state == CS_DRAINING) {
        timer_set(qc, qc->end_ns);
        return;
    }
    timer_set(qc, ngtcp2_conn_get_expiry(qc->conn));
}

static void mark_dirty(rb_quic_conn *qc)
{
    if (!qc->dirty) {
        qc->dirty = true;
        qc->e->dirty[qc->e->dirty_count++] = qc->index;
    }
}

/* ---- addresses ---- */

static void path_to_ng(const rb_quic_path *p, ngtcp2_path *out)
{
    out->local.addr = (ngtcp2_sockaddr *)&p->local.ss;
    out->local.addrlen = p->local.len;
    out->remote.addr = (ngtcp2_sockaddr *)&p->remote.ss;
    out->remote.addrlen = p->remote.len;
    out->user_data = NULL;
}

static void addr_from_ng(rb_quic_addr *out, const ngtcp2_addr *a)
{
    size_t len = a->addrlen <= sizeof out->ss ? a->addrlen : sizeof out->ss;
    memset(&out->ss, 0, sizeof out->ss);
    memcpy(&out->ss, a->addr, len);
    out->len = (socklen_t)len;
}

static void send_raw(rb_quic_engine *e, const rb_quic_path *path, const uint8_t *p, size_t len)
{
    if (e->h.send(e->h.ctx, path, p, len) == 0) {
        e->st.datagrams_out++;
    }
}

/* ---- the end of a connection ---- */

static void conn_release_refs(rb_quic_conn *qc)
{
    qc->ref_head = 0;
    qc->ref_count = 0;
    qc->ref_sent = 0;
    qc->ref_sent_off = 0;
    qc->ref_head_acked = 0;
    qc->unacked = 0;
}

/* Tells the owner, once, that the connection is over. */
static void conn_tell(rb_quic_conn *qc, const rb_quic_end *end)
{
    rb_quic_engine *e = qc->e;
    if (qc->told) {
        return;
    }
    qc->told = true;
    conn_release_refs(qc);
    if (qc->owner_knows && e->h.closed != NULL) {
        e->h.closed(e->h.ctx, qc, end);
    }
}

static void conn_free(rb_quic_conn *qc)
{
    rb_quic_engine *e = qc->e;
    RB_ASSERT(qc->state != CS_FREE);
    while (qc->cid_count > 0) {
        cid_remove(qc, qc->cids[0].data, qc->cids[0].len);
    }
    heap_remove(qc);
    if (qc->state == CS_HANDSHAKE) {
        e->st.handshakes--;
    }
    if (qc->state == CS_HANDSHAKE || qc->state == CS_OPEN) {
        e->st.conns--;
    }
    if (qc->conn != NULL) {
        ngtcp2_conn_del(qc->conn);
    }
    if (qc->tls != NULL) {
        gnutls_deinit(qc->tls);
    }
    free(qc->refs);
    free(qc->close_pkt);
    uint32_t index = qc->index;
    /* The slot may still be in the dirty list: its flag survives, so a
     * reuse before the next write cannot list it twice (the list holds
     * each slot at most once). */
    bool dirty = qc->dirty;
    memset(qc, 0, sizeof *qc);
    qc->e = e;
    qc->index = index;
    qc->dirty = dirty;
    qc->heap_pos = UINT32_MAX;
    qc->state = CS_FREE;
    qc->bus_sid = -1;
    qc->told = true;
    e->free_list[e->free_count++] = index;
}

static void conn_leave_open(rb_quic_conn *qc, conn_state to, uint64_t now_ns)
{
    rb_quic_engine *e = qc->e;
    if (qc->state == CS_HANDSHAKE) {
        e->st.handshakes--;
    }
    if (qc->state == CS_HANDSHAKE || qc->state == CS_OPEN) {
        e->st.conns--;
    }
    qc->state = to;
    qc->end_ns = now_ns + 3 * ngtcp2_conn_get_pto(qc->conn);
    timer_update(qc);
}

/* Writes a CONNECTION_CLOSE for ccerr, keeps it for late packets, and
 * enters the closing period. */
static void conn_write_close(rb_quic_conn *qc, const ngtcp2_connection_close_error *ccerr,
                             uint64_t now_ns)
{
    uint8_t buf[RB_QUIC_DATAGRAM_BYTES_MAX];
    ngtcp2_path_storage ps;
    ngtcp2_path_storage_zero(&ps);
    ngtcp2_pkt_info pi;
    ngtcp2_ssize n =
        ngtcp2_conn_write_connection_close(qc->conn, &ps.path, &pi, buf, sizeof buf, ccerr, now_ns);
    if (n > 0) {
        rb_quic_path path;
        addr_from_ng(&path.local, &ps.path.local);
        addr_from_ng(&path.remote, &ps.path.remote);
        send_raw(qc->e, &path, buf, (size_t)n);
        qc->close_pkt = malloc((size_t)n);
        if (qc->close_pkt != NULL) {
            memcpy(qc->close_pkt, buf, (size_t)n);
            qc->close_len = (size_t)n;
        }
    }
    conn_leave_open(qc, CS_CLOSING, now_ns);
}

static void conn_close_wire(rb_quic_conn *qc, uint16_t status, const char *reason, uint64_t now_ns)
{
    ngtcp2_connection_close_error ccerr;
    ngtcp2_connection_close_error_default(&ccerr);
    size_t len = reason != NULL ? strnlen(reason, 255) : 0;
    ngtcp2_connection_close_error_set_application_error(&ccerr, status, (const uint8_t *)reason,
                                                        len);
    conn_write_close(qc, &ccerr, now_ns);
}

/* The outcome of a failed ngtcp2_conn_read_pkt or _handle_expiry. */
static void conn_fail(rb_quic_conn *qc, int rv, uint64_t now_ns)
{
    rb_quic_end end = {.code = 0, .why = ngtcp2_strerror(rv)};
    ngtcp2_connection_close_error ccerr;
    ngtcp2_connection_close_error_default(&ccerr);
    switch (rv) {
    case NGTCP2_ERR_DRAINING:
        ngtcp2_conn_get_connection_close_error(qc->conn, &ccerr);
        end.by_peer = true;
        end.app_error = ccerr.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_APPLICATION;
        end.code = ccerr.error_code;
        end.reason = ccerr.reason;
        end.reason_len = ccerr.reasonlen;
        end.why = qc->got_reset ? "stateless reset" : "closed by peer";
        conn_tell(qc, &end);
        conn_leave_open(qc, CS_DRAINING, now_ns);
        return;
    case NGTCP2_ERR_IDLE_CLOSE:
    case NGTCP2_ERR_HANDSHAKE_TIMEOUT:
    case NGTCP2_ERR_DROP_CONN:
    case NGTCP2_ERR_RETRY:
        end.why = rv == NGTCP2_ERR_IDLE_CLOSE          ? "idle timeout"
                  : rv == NGTCP2_ERR_HANDSHAKE_TIMEOUT ? "handshake timeout"
                                                       : "dropped";
        conn_tell(qc, &end);
        conn_free(qc);
        return;
    case NGTCP2_ERR_CRYPTO:
        ngtcp2_connection_close_error_set_transport_error_tls_alert(
            &ccerr, ngtcp2_conn_get_tls_alert(qc->conn), NULL, 0);
        end.why = "TLS handshake failed";
        break;
    default:
        ngtcp2_connection_close_error_set_transport_error_liberr(&ccerr, rv, NULL, 0);
        break;
    }
    end.code = ccerr.error_code;
    conn_tell(qc, &end);
    conn_write_close(qc, &ccerr, now_ns);
}

/* Runs what a callback inside ngtcp2 had to defer. Returns false when the
 * connection is no longer open. */
static bool conn_after_lib(rb_quic_conn *qc, uint64_t now_ns)
{
    if (qc->bus_lost && !qc->close_pending) {
        rb_quic_end end = {.by_peer = true, .why = "bus stream reset by peer"};
        conn_tell(qc, &end);
        conn_close_wire(qc, RB_WIRE_BAD_FRAME, "bus stream reset", now_ns);
        return false;
    }
    if (qc->close_pending) {
        qc->close_pending = false;
        if (!qc->told) {
            rb_quic_end end = {
                .code = qc->close_status, .app_error = true, .why = qc->close_reason};
            conn_tell(qc, &end);
        }
        conn_close_wire(qc, qc->close_status, qc->close_reason, now_ns);
        return false;
    }
    return qc->state == CS_HANDSHAKE || qc->state == CS_OPEN;
}

/* Defers a close decided inside an ngtcp2 callback. */
static void close_later(rb_quic_conn *qc, uint16_t status, const char *reason)
{
    if (!qc->close_pending) {
        qc->close_pending = true;
        qc->close_status = status;
        snprintf(qc->close_reason, sizeof qc->close_reason, "%s", reason);
    }
}

/* ---- the bus stream ---- */

static send_ref *ref_at(rb_quic_conn *qc, uint32_t k)
{
    return &qc->refs[(qc->ref_head + k) % qc->e->send_refs_max];
}

static size_t bus_pull(rb_quic_conn *qc, ngtcp2_vec *vec, size_t vec_max, bool *fin)
{
    size_t n = 0;
    size_t off = qc->ref_sent_off;
    for (uint32_t k = qc->ref_sent; k < qc->ref_count && n < vec_max; k++) {
        send_ref *r = ref_at(qc, k);
        vec[n].base = (uint8_t *)r->p + off;
        vec[n].len = r->len - off;
        n++;
        off = 0;
    }
    *fin = qc->bus_fin_wanted && !qc->bus_fin_sent && qc->ref_sent + (uint32_t)n == qc->ref_count;
    return n;
}

static void bus_pushed(rb_quic_conn *qc, size_t len, bool fin_all)
{
    while (len > 0) {
        RB_ASSERT(qc->ref_sent < qc->ref_count);
        send_ref *r = ref_at(qc, qc->ref_sent);
        size_t left = r->len - qc->ref_sent_off;
        size_t take = len < left ? len : left;
        qc->ref_sent_off += take;
        len -= take;
        if (qc->ref_sent_off == r->len) {
            qc->ref_sent++;
            qc->ref_sent_off = 0;
        }
    }
    if (fin_all && qc->ref_sent == qc->ref_count) {
        qc->bus_fin_sent = true;
    }
}

static void bus_acked(rb_quic_conn *qc, uint64_t len)
{
    uint64_t total = len;
    RB_ASSERT(len <= qc->unacked);
    while (len > 0) {
        RB_ASSERT(qc->ref_count > 0);
        send_ref *r = ref_at(qc, 0);
        size_t left = r->len - qc->ref_head_acked;
        size_t take = len < left ? (size_t)len : left;
        qc->ref_head_acked += take;
        len -= take;
        if (qc->ref_head_acked == r->len) {
            qc->ref_head = (qc->ref_head + 1) % qc->e->send_refs_max;
            qc->ref_count--;
            RB_ASSERT(qc->ref_sent > 0);
            qc->ref_sent--;
            qc->ref_head_acked = 0;
        }
    }
    qc->unacked -= total;
    if (qc->e->h.bus_acked != NULL) {
        qc->e->h.bus_acked(qc->e->h.ctx, qc, total);
    }
}

int rb_quic_bus_send(rb_quic_conn *qc, const uint8_t *p, size_t len, rb_err *err)
{
    if (qc->told || qc->bus_sid < 0 || qc->bus_fin_wanted) {
        return rb_err_set(err, RB_ECLOSED, 0, "quic: bus stream closed");
    }
    if (len == 0) {
        return 0;
    }
    if (qc->ref_count == qc->e->send_refs_max) {
        return rb_err_set(err, RB_ELIMIT, 0, "quic: %u unacknowledged sends", qc->e->send_refs_max);
    }
    send_ref *r = ref_at(qc, qc->ref_count++);
    r->p = p;
    r->len = len;
    qc->unacked += len;
    mark_dirty(qc);
    return 0;
}

uint64_t rb_quic_bus_unacked(const rb_quic_conn *qc)
{
    return qc->unacked;
}

void rb_quic_bus_consumed(rb_quic_conn *qc, size_t len)
{
    if (qc->told || qc->bus_sid < 0 || len == 0) {
        return;
    }
    (void)ngtcp2_conn_extend_max_stream_offset(qc->conn, qc->bus_sid, len);
    ngtcp2_conn_extend_max_offset(qc->conn, len);
    mark_dirty(qc);
}

void rb_quic_bus_finish(rb_quic_conn *qc)
{
    if (!qc->told && qc->bus_sid >= 0) {
        qc->bus_fin_wanted = true;
        mark_dirty(qc);
    }
}

/* ---- ngtcp2 callbacks ---- */

static void rand_cb(uint8_t *dest, size_t len, const ngtcp2_rand_ctx *ctx)
{
    (void)ctx;
    (void)gnutls_rnd(GNUTLS_RND_NONCE, dest, len);
}

/* A server CID: the owner id, then random bytes. */
static void make_scid(const rb_quic_engine *e, uint8_t *p, size_t len)
{
    RB_ASSERT(len >= 2);
    (void)gnutls_rnd(GNUTLS_RND_NONCE, p, len);
    p[0] = (uint8_t)(e->owner_id & 0xff);
    p[1] = (uint8_t)(e->owner_id >> 8);
}

static int get_new_cid_cb(ngtcp2_conn *conn, ngtcp2_cid *cid, uint8_t *token, size_t cidlen,
                          void *user_data)
{
    (void)conn;
    rb_quic_conn *qc = user_data;
    rb_quic_engine *e = qc->e;
    if (e->role == RB_QUIC_SERVER) {
        make_scid(e, cid->data, cidlen);
    } else {
        (void)gnutls_rnd(GNUTLS_RND_NONCE, cid->data, cidlen);
    }
    cid->datalen = cidlen;
    if (ngtcp2_crypto_generate_stateless_reset_token(token, e->secret, sizeof e->secret, cid) !=
        0) {
        return NGTCP2_ERR_CALLBACK_FAILURE;
    }
    if (e->role == RB_QUIC_SERVER && cid_add(qc, cid->data, cid->datalen) != 0) {
        return NGTCP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int remove_cid_cb(ngtcp2_conn *conn, const ngtcp2_cid *cid, void *user_data)
{
    (void)conn;
    rb_quic_conn *qc = user_data;
    if (qc->e->role == RB_QUIC_SERVER) {
        cid_remove(qc, cid->data, cid->datalen);
    }
    return 0;
}

static rb_quic_alpn selected_alpn(gnutls_session_t s)
{
    gnutls_datum_t d;
    if (gnutls_alpn_get_selected_protocol(s, &d) != 0) {
        return RB_QUIC_ALPN_NONE;
    }
    if (d.size == alpn_ringbus.size && memcmp(d.data, alpn_ringbus.data, d.size) == 0) {
        return RB_QUIC_ALPN_RINGBUS;
    }
    if (d.size == alpn_h3.size && memcmp(d.data, alpn_h3.data, d.size) == 0) {
        return RB_QUIC_ALPN_H3;
    }
    return RB_QUIC_ALPN_NONE;
}

/* The handshake completed: the owner hears it here, inside ngtcp2, so it
 * can set up before the stream data of the same datagram arrives. */
static int handshake_completed_cb(ngtcp2_conn *conn, void *user_data)
{
    rb_quic_conn *qc = user_data;
    rb_quic_engine *e = qc->e;
    RB_ASSERT(qc->state == CS_HANDSHAKE);
    qc->state = CS_OPEN;
    e->st.handshakes--;
    qc->alpn = selected_alpn(qc->tls);
    if (qc->alpn == RB_QUIC_ALPN_NONE) {
        close_later(qc, RB_WIRE_UNSUPPORTED_VERSION, "no application protocol");
        return 0;
    }
    if (e->role == RB_QUIC_CLIENT && qc->alpn == RB_QUIC_ALPN_RINGBUS &&
        ngtcp2_conn_open_bidi_stream(conn, &qc->bus_sid, NULL) != 0) {
        close_later(qc, RB_WIRE_INTERNAL, "cannot open the bus stream");
        return 0;
    }
    qc->owner_knows = true;
    if (e->h.established != NULL && e->h.established(e->h.ctx, qc, qc->alpn) != 0) {
        close_later(qc, RB_WIRE_UNAVAILABLE, "server busy");
    }
    return 0;
}

static bool stream_is_local(const rb_quic_conn *qc, int64_t sid)
{
    bool server_initiated = (sid & 1) != 0;
    return server_initiated == (qc->e->role == RB_QUIC_SERVER);
}

static void refuse_stream(rb_quic_conn *qc, int64_t sid)
{
    qc->e->st.streams_refused++;
    (void)ngtcp2_conn_shutdown_stream(qc->conn, sid, RB_QUIC_STREAM_REFUSED);
    if (++qc->refused > RB_QUIC_REFUSED_STREAMS_MAX) {
        close_later(qc, RB_WIRE_BAD_FRAME, "too many streams besides the bus stream");
    }
}

static int stream_open_cb(ngtcp2_conn *conn, int64_t sid, void *user_data)
{
    (void)conn;
    rb_quic_conn *qc = user_data;
    if (qc->alpn != RB_QUIC_ALPN_RINGBUS) {
        return 0;
    }
    bool bidi = (sid & 2) == 0;
    if (qc->e->role == RB_QUIC_SERVER && bidi && !stream_is_local(qc, sid) && qc->bus_sid < 0) {
        qc->bus_sid = sid;
        return 0;
    }
    refuse_stream(qc, sid);
    return 0;
}

static int recv_stream_data_cb(ngtcp2_conn *conn, uint32_t flags, int64_t sid, uint64_t offset,
                               const uint8_t *data, size_t len, void *user_data, void *sud)
{
    (void)offset;
    (void)sud;
    rb_quic_conn *qc = user_data;
    bool fin = (flags & NGTCP2_STREAM_DATA_FLAG_FIN) != 0;
    if (qc->app_ops != NULL) {
        return qc->app_ops->recv(qc->app, sid, data, len, fin) == 0 ? 0
                                                                    : NGTCP2_ERR_CALLBACK_FAILURE;
    }
    if (sid != qc->bus_sid || qc->told) {
        /* Bytes of a refused stream (or after the end) still count against
         * the connection's window: give it back. */
        ngtcp2_conn_extend_max_offset(conn, len);
        return 0;
    }
    if (qc->e->h.bus_recv != NULL) {
        qc->e->h.bus_recv(qc->e->h.ctx, qc, data, len, fin);
    }
    return 0;
}

static int acked_cb(ngtcp2_conn *conn, int64_t sid, uint64_t offset, uint64_t len, void *user_data,
                    void *sud)
{
    (void)conn;
    (void)offset;
    (void)sud;
    rb_quic_conn *qc = user_data;
    if (qc->app_ops != NULL) {
        return qc->app_ops->acked(qc->app, sid, len) == 0 ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
    }
    if (sid == qc->bus_sid && !qc->told && len > 0) {
        bus_acked(qc, len);
    }
    return 0;
}

static int stream_close_cb(ngtcp2_conn *conn, uint32_t flags, int64_t sid, uint64_t app_error,
                           void *user_data, void *sud)
{
    (void)flags;
    (void)sud;
    rb_quic_conn *qc = user_data;
    if (qc->app_ops == NULL) {
        /* ringbus/1: refused streams are never replaced, so a peer can
         * open at most QUIC_BIDI_STREAMS + QUIC_UNI_STREAMS in all. */
        return 0;
    }
    /* h3: a finished request makes room for the next one. */
    if (!stream_is_local(qc, sid)) {
        if ((sid & 2) == 0) {
            ngtcp2_conn_extend_max_streams_bidi(conn, 1);
        } else {
            ngtcp2_conn_extend_max_streams_uni(conn, 1);
        }
    }
    if (qc->app_ops->closed != NULL) {
        return qc->app_ops->closed(qc->app, sid, app_error) == 0 ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int stream_reset_cb(ngtcp2_conn *conn, int64_t sid, uint64_t final_size, uint64_t app_error,
                           void *user_data, void *sud)
{
    (void)conn;
    (void)final_size;
    (void)sud;
    rb_quic_conn *qc = user_data;
    if (qc->app_ops != NULL && qc->app_ops->reset != NULL) {
        return qc->app_ops->reset(qc->app, sid, app_error) == 0 ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
    }
    if (sid == qc->bus_sid && !qc->told) {
        qc->bus_lost = true;
    }
    return 0;
}

static int stop_sending_cb(ngtcp2_conn *conn, int64_t sid, uint64_t app_error, void *user_data,
                           void *sud)
{
    rb_quic_conn *qc = user_data;
    if (qc->app_ops != NULL && qc->app_ops->stop_sending != NULL) {
        return qc->app_ops->stop_sending(qc->app, sid, app_error) == 0
                   ? 0
                   : NGTCP2_ERR_CALLBACK_FAILURE;
    }
    return stream_reset_cb(conn, sid, 0, app_error, user_data, sud);
}

static int extend_stream_cb(ngtcp2_conn *conn, int64_t sid, uint64_t max_data, void *user_data,
                            void *sud)
{
    (void)conn;
    (void)max_data;
    (void)sud;
    rb_quic_conn *qc = user_data;
    if (qc->app_ops != NULL && qc->app_ops->unblock != NULL) {
        return qc->app_ops->unblock(qc->app, sid) == 0 ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
    }
    if (sid == qc->bus_sid) {
        qc->bus_blocked = false;
    }
    return 0;
}

static int recv_reset_cb(ngtcp2_conn *conn, const ngtcp2_pkt_stateless_reset *sr, void *user_data)
{
    (void)conn;
    (void)sr;
    rb_quic_conn *qc = user_data;
    qc->got_reset = true;
    return 0;
}

static void fill_callbacks(ngtcp2_callbacks *cb, rb_quic_role role)
{
    memset(cb, 0, sizeof *cb);
    if (role == RB_QUIC_SERVER) {
        cb->recv_client_initial = ngtcp2_crypto_recv_client_initial_cb;
    } else {
        cb->client_initial = ngtcp2_crypto_client_initial_cb;
        cb->recv_retry = ngtcp2_crypto_recv_retry_cb;
        cb->recv_stateless_reset = recv_reset_cb;
    }
    cb->recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb;
    cb->encrypt = ngtcp2_crypto_encrypt_cb;
    cb->decrypt = ngtcp2_crypto_decrypt_cb;
    cb->hp_mask = ngtcp2_crypto_hp_mask_cb;
    cb->update_key = ngtcp2_crypto_update_key_cb;
    cb->delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb;
    cb->delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb;
    cb->get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb;
    cb->version_negotiation = ngtcp2_crypto_version_negotiation_cb;
    cb->handshake_completed = handshake_completed_cb;
    cb->recv_stream_data = recv_stream_data_cb;
    cb->acked_stream_data_offset = acked_cb;
    cb->stream_open = stream_open_cb;
    cb->stream_close = stream_close_cb;
    cb->stream_reset = stream_reset_cb;
    cb->stream_stop_sending = stop_sending_cb;
    cb->extend_max_stream_data = extend_stream_cb;
    cb->rand = rand_cb;
    cb->get_new_connection_id = get_new_cid_cb;
    cb->remove_connection_id = remove_cid_cb;
}

static ngtcp2_conn *get_conn_cb(ngtcp2_crypto_conn_ref *ref)
{
    rb_quic_conn *qc = ref->user_data;
    return qc->conn;
}

/* ---- TLS ---- */

/* Without an agreed protocol the handshake fails (alert
 * no_application_protocol), as QUIC requires. */
static int client_hello_hook(gnutls_session_t s, unsigned int htype, unsigned when,
                             unsigned int incoming, const gnutls_datum_t *msg)
{
    (void)htype;
    (void)when;
    (void)incoming;
    (void)msg;
    return selected_alpn(s) == RB_QUIC_ALPN_NONE ? GNUTLS_E_NO_APPLICATION_PROTOCOL : 0;
}

static int tls_server_session(rb_quic_conn *qc)
{
    rb_quic_engine *e = qc->e;
    /* No GNUTLS_ENABLE_EARLY_DATA and no session tickets: 0-RTT is refused. */
    if (gnutls_init(&qc->tls, GNUTLS_SERVER | GNUTLS_NO_AUTO_SEND_TICKET) != 0) {
        qc->tls = NULL;
        return -1;
    }
    gnutls_datum_t protos[2] = {alpn_ringbus, alpn_h3};
    if (gnutls_priority_set(qc->tls, e->prio) != 0 ||
        gnutls_credentials_set(qc->tls, GNUTLS_CRD_CERTIFICATE, e->cred) != 0 ||
        ngtcp2_crypto_gnutls_configure_server_session(qc->tls) != 0 ||
        gnutls_alpn_set_protocols(qc->tls, protos, 2, GNUTLS_ALPN_MANDATORY) != 0) {
        return -1;
    }
    gnutls_handshake_set_hook_function(qc->tls, GNUTLS_HANDSHAKE_CLIENT_HELLO, GNUTLS_HOOK_POST,
                                       client_hello_hook);
    qc->ref.get_conn = get_conn_cb;
    qc->ref.user_data = qc;
    gnutls_session_set_ptr(qc->tls, &qc->ref);
    ngtcp2_conn_set_tls_native_handle(qc->conn, qc->tls);
    return 0;
}

static int tls_client_verify(rb_quic_engine *e, gnutls_session_t s)
{
    if (e->insecure) {
        return 0;
    }
    if (!e->name_is_addr) {
        gnutls_session_set_verify_cert(s, e->server_name, 0);
        return 0;
    }
    /* GnuTLS keeps a pointer to the address: it lives in the engine. */
    e->vdata.type = GNUTLS_DT_IP_ADDRESS;
    e->vdata.data = e->name_bin;
    if (inet_pton(AF_INET, e->server_name, e->name_bin) == 1) {
        e->vdata.size = 4;
    } else if (inet_pton(AF_INET6, e->server_name, e->name_bin) == 1) {
        e->vdata.size = 16;
    } else {
        return -1;
    }
    gnutls_session_set_verify_cert2(s, &e->vdata, 1, 0);
    return 0;
}

static int tls_client_session(rb_quic_conn *qc)
{
    rb_quic_engine *e = qc->e;
    if (gnutls_init(&qc->tls, GNUTLS_CLIENT) != 0) {
        qc->tls = NULL;
        return -1;
    }
    const gnutls_datum_t *proto = e->client_alpn == RB_QUIC_ALPN_H3 ? &alpn_h3 : &alpn_ringbus;
    if (gnutls_priority_set(qc->tls, e->prio) != 0 ||
        gnutls_credentials_set(qc->tls, GNUTLS_CRD_CERTIFICATE, e->cred) != 0 ||
        ngtcp2_crypto_gnutls_configure_client_session(qc->tls) != 0 ||
        gnutls_alpn_set_protocols(qc->tls, proto, 1, GNUTLS_ALPN_MANDATORY) != 0 ||
        tls_client_verify(e, qc->tls) != 0) {
        return -1;
    }
    /* SNI names a host, never an address (RFC 6066). */
    if (!e->name_is_addr && e->server_name[0] != '\0' &&
        gnutls_server_name_set(qc->tls, GNUTLS_NAME_DNS, e->server_name, strlen(e->server_name)) !=
            0) {
        return -1;
    }
    qc->ref.get_conn = get_conn_cb;
    qc->ref.user_data = qc;
    gnutls_session_set_ptr(qc->tls, &qc->ref);
    ngtcp2_conn_set_tls_native_handle(qc->conn, qc->tls);
    return 0;
}

static bool readable(const char *path)
{
    return path != NULL && access(path, R_OK) == 0;
}

static int tls_server_creds(rb_quic_engine *e, const rb_quic_config *cfg, rb_err *err)
{
    if (!readable(cfg->cert_file) || !readable(cfg->key_file)) {
        const char *bad = !readable(cfg->cert_file) ? cfg->cert_file : cfg->key_file;
        return rb_err_set(err, RB_ECONFIG, 0, "quic: %s %s cannot be read",
                          bad == cfg->cert_file ? "cert" : "key", bad != NULL ? bad : "(none)");
    }
    int rc = gnutls_certificate_set_x509_key_file(e->cred, cfg->cert_file, cfg->key_file,
                                                  GNUTLS_X509_FMT_PEM);
    if (rc < 0) {
        return rb_err_set(err, RB_ECONFIG, rc, "quic: cert %s, key %s: %s", cfg->cert_file,
                          cfg->key_file, gnutls_strerror(rc));
    }
    return 0;
}

static int tls_client_creds(rb_quic_engine *e, const rb_quic_config *cfg, rb_err *err)
{
    if (cfg->insecure) {
        return 0;
    }
    int rc = cfg->ca_file != NULL ? gnutls_certificate_set_x509_trust_file(e->cred, cfg->ca_file,
                                                                           GNUTLS_X509_FMT_PEM)
                                  : gnutls_certificate_set_x509_system_trust(e->cred);
    if (rc <= 0) {
        return rb_err_set(err, RB_EINVAL, rc, "quic: CA file %s: %s",
                          cfg->ca_file != NULL ? cfg->ca_file : "(system store)",
                          rc == 0 ? "no certificates" : gnutls_strerror(rc));
    }
    return 0;
}

static int tls_setup(rb_quic_engine *e, const rb_quic_config *cfg, rb_err *err)
{
    if (gnutls_certificate_allocate_credentials(&e->cred) != 0) {
        e->cred = NULL;
        return rb_err_set(err, RB_ENOMEM, 0, "quic: TLS credentials: out of memory");
    }
    if (gnutls_priority_init(&e->prio, QUIC_PRIORITY, NULL) != 0) {
        e->prio = NULL;
        return rb_err_set(err, RB_EUNSUPPORTED, 0, "quic: GnuTLS lacks the TLS 1.3 ciphers");
    }
    if (cfg->role == RB_QUIC_SERVER) {
        return tls_server_creds(e, cfg, err);
    }
    if (cfg->server_name != NULL) {
        snprintf(e->server_name, sizeof e->server_name, "%s", cfg->server_name);
        uint8_t bin[16];
        e->name_is_addr = inet_pton(AF_INET, e->server_name, bin) == 1 ||
                          inet_pton(AF_INET6, e->server_name, bin) == 1;
    }
    e->insecure = cfg->insecure;
    return tls_client_creds(e, cfg, err);
}

/* ---- the engine ---- */

static int check_config(const rb_quic_config *cfg, rb_err *err)
{
    if (cfg->conns_max == 0 || cfg->conns_max > RB_QUIC_CONNS_MAX) {
        return rb_err_set(err, RB_ECONFIG, 0, "quic: connections %u outside 1..%u", cfg->conns_max,
                          RB_QUIC_CONNS_MAX);
    }
    if (cfg->send_refs_max == 0 || cfg->send_refs_max > RB_QUIC_SEND_REFS_MAX) {
        return rb_err_set(err, RB_ECONFIG, 0, "quic: send references %u outside 1..%u",
                          cfg->send_refs_max, RB_QUIC_SEND_REFS_MAX);
    }
    if (cfg->stream_window_bytes < 4096 || cfg->stream_window_bytes > RB_QUIC_STREAM_WINDOW_MAX) {
        return rb_err_set(err, RB_ECONFIG, 0, "quic: stream window %u outside 4096..%u",
                          cfg->stream_window_bytes, RB_QUIC_STREAM_WINDOW_MAX);
    }
    if (cfg->owner_id > RB_QUIC_OWNER_MAX || cfg->idle_ms == 0 || cfg->handshake_ms == 0) {
        return rb_err_set(err, RB_ECONFIG, 0, "quic: owner id, idle or handshake time invalid");
    }
    return 0;
}

static int engine_tables(rb_quic_engine *e, rb_err *err)
{
    uint32_t n = e->conns_max;
    uint64_t slots = 16;
    while (slots / 4 * 3 < (uint64_t)n * QUIC_CID_INDEX_PER_CONN) {
        slots <<= 1;
    }
    e->conns = calloc(n, sizeof *e->conns);
    e->free_list = calloc(n, sizeof *e->free_list);
    e->dirty = calloc(n, sizeof *e->dirty);
    e->heap = calloc(n, sizeof *e->heap);
    e->cid_slots = calloc(slots, sizeof *e->cid_slots);
    if (e->conns == NULL || e->free_list == NULL || e->dirty == NULL || e->heap == NULL ||
        e->cid_slots == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "quic: tables for %u connections: out of memory", n);
    }
    e->cid_mask = (uint32_t)(slots - 1);
    for (uint32_t i = 0; i < n; i++) {
        e->conns[i].e = e;
        e->conns[i].index = i;
        e->conns[i].heap_pos = UINT32_MAX;
        e->free_list[i] = n - 1 - i;
    }
    e->free_count = n;
    return 0;
}

int rb_quic_engine_new(rb_quic_engine **out, const rb_quic_config *cfg,
                       const rb_quic_handler *handler, rb_err *err)
{
    RB_ASSERT(handler->send != NULL);
    int rc = check_config(cfg, err);
    if (rc != 0) {
        return rc;
    }
    rb_quic_engine *e = calloc(1, sizeof *e);
    if (e == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "quic: engine: out of memory");
    }
    e->role = cfg->role;
    e->owner_id = cfg->owner_id;
    memcpy(e->secret, cfg->secret, sizeof e->secret);
    e->retry = cfg->retry;
    e->handshakes_max = cfg->handshakes_max;
    e->send_refs_max = cfg->send_refs_max;
    e->window = cfg->stream_window_bytes;
    e->idle_ms = cfg->idle_ms;
    e->handshake_ms = cfg->handshake_ms;
    e->client_version = cfg->client_version != 0 ? cfg->client_version : NGTCP2_PROTO_VER_V1;
    e->client_alpn = cfg->alpn;
    e->h = *handler;
    e->conns_max = cfg->conns_max;
    (void)gnutls_rnd(GNUTLS_RND_NONCE, &e->cid_seed, sizeof e->cid_seed);
    rc = engine_tables(e, err);
    if (rc == 0) {
        rc = tls_setup(e, cfg, err);
    }
    if (rc != 0) {
        rb_quic_engine_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

void rb_quic_engine_free(rb_quic_engine *e)
{
    if (e == NULL) {
        return;
    }
    for (uint32_t i = 0; e->conns != NULL && i < e->conns_max; i++) {
        if (e->conns[i].state != CS_FREE) {
            conn_free(&e->conns[i]);
        }
    }
    if (e->prio != NULL) {
        gnutls_priority_deinit(e->prio);
    }
    if (e->cred != NULL) {
        gnutls_certificate_free_credentials(e->cred);
    }
    free(e->conns);
    free(e->free_list);
    free(e->dirty);
    free(e->heap);
    free(e->cid_slots);
    free(e);
}

void rb_quic_engine_stats(const rb_quic_engine *e, rb_quic_stats *out)
{
    *out = e->st;
}

uint64_t rb_quic_engine_expiry(const rb_quic_engine *e)
{
    return e->heap_count > 0 ? e->conns[e->heap[0]].expiry_ns : UINT64_MAX;
}

/* Takes a free slot. Returns NULL when the table is full. */
static rb_quic_conn *conn_alloc(rb_quic_engine *e, const rb_quic_path *path)
{
    if (e->free_count == 0) {
        return NULL;
    }
    rb_quic_conn *qc = &e->conns[e->free_list[--e->free_count]];
    RB_ASSERT(qc->state == CS_FREE);
    qc->refs = calloc(e->send_refs_max, sizeof *qc->refs);
    if (qc->refs == NULL) {
        e->free_list[e->free_count++] = qc->index;
        return NULL;
    }
    qc->state = CS_HANDSHAKE;
    qc->told = false;
    qc->bus_sid = -1;
    qc->path = *path;
    e->st.conns++;
    e->st.handshakes++;
    return qc;
}

static void fill_settings(const rb_quic_engine *e, ngtcp2_settings *s, uint64_t now_ns)
{
    ngtcp2_settings_default(s);
    s->initial_ts = now_ns;
    s->max_tx_udp_payload_size = RB_QUIC_DATAGRAM_BYTES_MAX;
    s->handshake_timeout = (uint64_t)e->handshake_ms * NGTCP2_MILLISECONDS;
    /* The windows stay what the owner consumes: no auto-tuning beyond it. */
    s->max_window = 0;
    s->max_stream_window = 0;
}

static void fill_params(const rb_quic_engine *e, ngtcp2_transport_params *p)
{
    ngtcp2_transport_params_default(p);
    p->initial_max_stream_data_bidi_local = e->window;
    p->initial_max_stream_data_bidi_remote = e->window;
    p->initial_max_stream_data_uni = e->role == RB_QUIC_SERVER ? e->window : 0;
    p->initial_max_data = (uint64_t)e->window * 2;
    p->initial_max_streams_bidi = e->role == RB_QUIC_SERVER ? QUIC_BIDI_STREAMS : 0;
    p->initial_max_streams_uni = e->role == RB_QUIC_SERVER ? QUIC_UNI_STREAMS : 0;
    p->max_idle_timeout = (uint64_t)e->idle_ms * NGTCP2_MILLISECONDS;
    p->active_connection_id_limit = QUIC_ACTIVE_CID_LIMIT;
}

/* Answers an Initial without keeping state: CONNECTION_CLOSE with code. */
static void refuse_initial(rb_quic_engine *e, const rb_quic_path *path, const ngtcp2_pkt_hd *hd,
                           uint64_t code)
{
    uint8_t buf[RB_QUIC_DATAGRAM_BYTES_MAX];
    ngtcp2_ssize n = ngtcp2_crypto_write_connection_close(buf, sizeof buf, hd->version, &hd->scid,
                                                          &hd->dcid, code, NULL, 0);
    if (n > 0) {
        send_raw(e, path, buf, (size_t)n);
    }
}

static void send_retry(rb_quic_engine *e, const rb_quic_path *path, const ngtcp2_pkt_hd *hd,
                       uint64_t now_ns)
{
    uint8_t token[NGTCP2_CRYPTO_MAX_RETRY_TOKENLEN];
    uint8_t buf[RB_QUIC_DATAGRAM_BYTES_MAX];
    ngtcp2_cid scid = {.datalen = RB_QUIC_SCID_BYTES};
    make_scid(e, scid.data, scid.datalen);
    ngtcp2_ssize tlen = ngtcp2_crypto_generate_retry_token(
        token, e->secret, sizeof e->secret, hd->version, (const ngtcp2_sockaddr *)&path->remote.ss,
        path->remote.len, &scid, &hd->dcid, now_ns);
    if (tlen < 0) {
        return;
    }
    ngtcp2_ssize n = ngtcp2_crypto_write_retry(buf, sizeof buf, hd->version, &hd->scid, &scid,
                                               &hd->dcid, token, (size_t)tlen);
    if (n > 0) {
        e->st.retries++;
        send_raw(e, path, buf, (size_t)n);
    }
}

/* Address validation. Returns 1 to go on (with *odcid set when a Retry
 * token was valid), 0 when the Initial was answered or dropped. */
static int validate_token(rb_quic_engine *e, const rb_quic_path *path, const ngtcp2_pkt_hd *hd,
                          uint64_t now_ns, ngtcp2_cid *odcid)
{
    odcid->datalen = 0;
    bool is_retry = hd->token.len > 0 && hd->token.base[0] == NGTCP2_CRYPTO_TOKEN_MAGIC_RETRY;
    if (!is_retry) {
        if (!e->retry) {
            return 1;
        }
        send_retry(e, path, hd, now_ns);
        return 0;
    }
    int rv = ngtcp2_crypto_verify_retry_token(
        odcid, hd->token.base, hd->token.len, e->secret, sizeof e->secret, hd->version,
        (const ngtcp2_sockaddr *)&path->remote.ss, path->remote.len, &hd->dcid,
        (uint64_t)RB_QUIC_RETRY_TOKEN_MS * NGTCP2_MILLISECONDS, now_ns);
    if (rv != 0) {
        e->st.retry_token_bad++;
        refuse_initial(e, path, hd, NGTCP2_INVALID_TOKEN);
        return 0;
    }
    return 1;
}

static int server_conn_new(rb_quic_conn *qc, const ngtcp2_pkt_hd *hd, const ngtcp2_cid *odcid,
                           uint64_t now_ns)
{
    rb_quic_engine *e = qc->e;
    ngtcp2_callbacks cb;
    fill_callbacks(&cb, RB_QUIC_SERVER);
    ngtcp2_settings settings;
    fill_settings(e, &settings, now_ns);
    ngtcp2_transport_params params;
    fill_params(e, &params);
    ngtcp2_cid scid = {.datalen = RB_QUIC_SCID_BYTES};
    make_scid(e, scid.data, scid.datalen);
    if (odcid->datalen > 0) {
        params.original_dcid = *odcid;
        params.retry_scid = hd->dcid;
        params.retry_scid_present = 1;
    } else {
        params.original_dcid = hd->dcid;
    }
    if (ngtcp2_crypto_generate_stateless_reset_token(params.stateless_reset_token, e->secret,
                                                     sizeof e->secret, &scid) != 0) {
        return -1;
    }
    params.stateless_reset_token_present = 1;
    ngtcp2_path path;
    path_to_ng(&qc->path, &path);
    if (ngtcp2_conn_server_new(&qc->conn, &hd->scid, &scid, &path, hd->version, &cb, &settings,
                               &params, NULL, qc) != 0) {
        qc->conn = NULL;
        return -1;
    }
    if (tls_server_session(qc) != 0 || cid_add(qc, scid.data, scid.datalen) != 0 ||
        cid_add(qc, hd->dcid.data, hd->dcid.datalen) != 0) {
        return -1;
    }
    return 0;
}

static void conn_recv(rb_quic_conn *qc, const rb_quic_path *path, const uint8_t *p, size_t len,
                      uint64_t now_ns);

static void server_accept(rb_quic_engine *e, const rb_quic_path *path, const uint8_t *p, size_t len,
                          uint64_t now_ns)
{
    ngtcp2_pkt_hd hd;
    if (ngtcp2_accept(&hd, p, len) != 0 || hd.type != NGTCP2_PKT_INITIAL) {
        /* 0-RTT and stray long headers for unknown connections. */
        e->st.dropped++;
        return;
    }
    if (e->st.handshakes >= e->handshakes_max || e->free_count == 0) {
        e->st.handshakes_refused++;
        refuse_initial(e, path, &hd, NGTCP2_CONNECTION_REFUSED);
        return;
    }
    ngtcp2_cid odcid;
    if (validate_token(e, path, &hd, now_ns, &odcid) == 0) {
        return;
    }
    rb_quic_conn *qc = conn_alloc(e, path);
    if (qc == NULL) {
        e->st.handshakes_refused++;
        refuse_initial(e, path, &hd, NGTCP2_CONNECTION_REFUSED);
        return;
    }
    if (server_conn_new(qc, &hd, &odcid, now_ns) != 0) {
        e->st.handshakes_refused++;
        conn_free(qc);
        refuse_initial(e, path, &hd, NGTCP2_INTERNAL_ERROR);
        return;
    }
    conn_recv(qc, path, p, len, now_ns);
}

static void send_version_negotiation(rb_quic_engine *e, const rb_quic_path *path,
                                     const ngtcp2_version_cid *vc, size_t len)
{
    /* An Initial is at least 1200 bytes; answering less would amplify. */
    if (len < NGTCP2_MAX_UDP_PAYLOAD_SIZE) {
        e->st.dropped++;
        return;
    }
    uint8_t buf[256];
    uint32_t versions[] = {NGTCP2_PROTO_VER_V1};
    uint8_t unused;
    (void)gnutls_rnd(GNUTLS_RND_NONCE, &unused, 1);
    ngtcp2_ssize n = ngtcp2_pkt_write_version_negotiation(
        buf, sizeof buf, unused, vc->scid, vc->scidlen, vc->dcid, vc->dcidlen, versions, 1);
    if (n > 0) {
        e->st.version_negotiations++;
        send_raw(e, path, buf, (size_t)n);
    }
}

/* A short-header packet for a connection we do not know: a stateless
 * reset, always smaller than what came in so two endpoints cannot loop. */
static void send_stateless_reset(rb_quic_engine *e, const rb_quic_path *path,
                                 const ngtcp2_version_cid *vc, size_t len)
{
    size_t min = 1 + NGTCP2_MIN_STATELESS_RESET_RANDLEN + NGTCP2_STATELESS_RESET_TOKENLEN;
    if (len <= min || vc->dcidlen != RB_QUIC_SCID_BYTES) {
        e->st.dropped++;
        return;
    }
    size_t out_len = len - 1 < QUIC_RESET_BYTES_MAX ? len - 1 : QUIC_RESET_BYTES_MAX;
    uint8_t token[NGTCP2_STATELESS_RESET_TOKENLEN];
    ngtcp2_cid cid = {.datalen = vc->dcidlen};
    memcpy(cid.data, vc->dcid, vc->dcidlen);
    if (ngtcp2_crypto_generate_stateless_reset_token(token, e->secret, sizeof e->secret, &cid)) {
        return;
    }
    uint8_t rnd[QUIC_RESET_BYTES_MAX];
    size_t rnd_len = out_len - 1 - NGTCP2_STATELESS_RESET_TOKENLEN;
    (void)gnutls_rnd(GNUTLS_RND_NONCE, rnd, rnd_len);
    uint8_t buf[QUIC_RESET_BYTES_MAX];
    ngtcp2_ssize n = ngtcp2_pkt_write_stateless_reset(buf, sizeof buf, token, rnd, rnd_len);
    if (n > 0) {
        e->st.stateless_resets++;
        send_raw(e, path, buf, (size_t)n);
    }
}

int rb_quic_engine_recv(rb_quic_engine *e, const rb_quic_path *path, const uint8_t *p, size_t len,
                        uint64_t now_ns)
{
    e->st.datagrams_in++;
    if (len == 0) {
        e->st.dropped++;
        return 0;
    }
    if (e->role == RB_QUIC_CLIENT) {
        rb_quic_conn *qc = &e->conns[0];
        if (qc->state == CS_FREE) {
            e->st.dropped++;
            return 0;
        }
        conn_recv(qc, path, p, len, now_ns);
        return 0;
    }
    ngtcp2_version_cid vc;
    int rv = ngtcp2_pkt_decode_version_cid(&vc, p, len, RB_QUIC_SCID_BYTES);
    if (rv == NGTCP2_ERR_VERSION_NEGOTIATION) {
        send_version_negotiation(e, path, &vc, len);
        return 0;
    }
    if (rv != 0) {
        e->st.dropped++;
        return 0;
    }
    rb_quic_conn *qc = cid_find(e, vc.dcid, vc.dcidlen);
    if (qc != NULL) {
        conn_recv(qc, path, p, len, now_ns);
    } else if ((p[0] & 0x80) == 0) {
        send_stateless_reset(e, path, &vc, len);
    } else {
        server_accept(e, path, p, len, now_ns);
    }
    return 0;
}

static void conn_recv(rb_quic_conn *qc, const rb_quic_path *path, const uint8_t *p, size_t len,
                      uint64_t now_ns)
{
    if (qc->state == CS_CLOSING) {
        if (qc->close_pkt != NULL) {
            send_raw(qc->e, path, qc->close_pkt, qc->close_len);
        }
        return;
    }
    if (qc->state == CS_DRAINING) {
        return;
    }
    ngtcp2_path np;
    path_to_ng(path, &np);
    ngtcp2_pkt_info pi = {0};
    qc->in_lib = true;
    int rv = ngtcp2_conn_read_pkt(qc->conn, &np, &pi, p, len, now_ns);
    qc->in_lib = false;
    if (rv != 0) {
        conn_fail(qc, rv, now_ns);
        return;
    }
    if (conn_after_lib(qc, now_ns)) {
        mark_dirty(qc);
    }
}

/* ---- writing ---- */

typedef struct pull_state {
    int64_t sid;
    bool fin;
    bool app;
    ngtcp2_vec vec[QUIC_VEC_MAX];
    size_t count;
} pull_state;

static int conn_pull(rb_quic_conn *qc, pull_state *ps)
{
    ps->sid = -1;
    ps->fin = false;
    ps->count = 0;
    ps->app = qc->app_ops != NULL;
    if (ps->app) {
        rb_quic_vec v[QUIC_VEC_MAX];
        int n = qc->app_ops->pull(qc->app, &ps->sid, &ps->fin, v, QUIC_VEC_MAX);
        if (n < 0) {
            return -1;
        }
        for (int i = 0; i < n; i++) {
            ps->vec[i].base = (uint8_t *)v[i].base;
            ps->vec[i].len = v[i].len;
        }
        ps->count = (size_t)n;
        return 0;
    }
    if (qc->bus_sid < 0 || qc->bus_blocked || qc->told || qc->bus_fin_sent) {
        return 0;
    }
    ps->count = bus_pull(qc, ps->vec, QUIC_VEC_MAX, &ps->fin);
    if (ps->count > 0 || ps->fin) {
        ps->sid = qc->bus_sid;
    }
    return 0;
}

static int conn_pushed(rb_quic_conn *qc, const pull_state *ps, ngtcp2_ssize ndatalen)
{
    if (ps->sid < 0 || ndatalen < 0) {
        return 0;
    }
    size_t total = 0;
    for (size_t i = 0; i < ps->count; i++) {
        total += ps->vec[i].len;
    }
    bool fin = ps->fin && (size_t)ndatalen == total;
    if (ps->app) {
        return qc->app_ops->pushed(qc->app, ps->sid, (size_t)ndatalen, fin);
    }
    bus_pushed(qc, (size_t)ndatalen, fin);
    return 0;
}

static void conn_blocked(rb_quic_conn *qc, const pull_state *ps)
{
    if (ps->app) {
        if (qc->app_ops->blocked != NULL) {
            qc->app_ops->blocked(qc->app, ps->sid);
        }
    } else {
        qc->bus_blocked = true;
    }
}

static void emit(rb_quic_conn *qc, const ngtcp2_path *np, const uint8_t *p, size_t len)
{
    rb_quic_path path;
    addr_from_ng(&path.local, &np->local);
    addr_from_ng(&path.remote, &np->remote);
    send_raw(qc->e, &path, p, len);
}

/* Writes datagrams until ngtcp2 has nothing more, pacing or congestion
 * stops it, or the per-turn bound is reached. */
static void conn_write(rb_quic_conn *qc, uint64_t now_ns)
{
    if (qc->state != CS_HANDSHAKE && qc->state != CS_OPEN) {
        return;
    }
    uint8_t buf[RB_QUIC_DATAGRAM_BYTES_MAX];
    ngtcp2_path_storage ps;
    ngtcp2_path_storage_zero(&ps);
    uint32_t sent = 0;
    uint32_t tries = 0;
    bool more = false;
    qc->in_write = true;
    while (sent < RB_QUIC_DATAGRAMS_PER_WRITE_MAX &&
           tries++ < RB_QUIC_DATAGRAMS_PER_WRITE_MAX * QUIC_WRITE_TRIES_PER_DATAGRAM) {
        pull_state pull;
        if (conn_pull(qc, &pull) != 0) {
            close_later(qc, RB_WIRE_INTERNAL, "application failed");
            break;
        }
        uint32_t flags = pull.sid >= 0 ? NGTCP2_WRITE_STREAM_FLAG_MORE : 0;
        flags |= pull.fin ? NGTCP2_WRITE_STREAM_FLAG_FIN : 0;
        ngtcp2_ssize ndatalen = -1;
        ngtcp2_pkt_info pi;
        qc->in_lib = true;
        ngtcp2_ssize n =
            ngtcp2_conn_writev_stream(qc->conn, &ps.path, &pi, buf, sizeof buf, &ndatalen, flags,
                                      pull.sid, pull.vec, pull.count, now_ns);
        qc->in_lib = false;
        if (n == NGTCP2_ERR_WRITE_MORE) {
            if (conn_pushed(qc, &pull, ndatalen) != 0) {
                close_later(qc, RB_WIRE_INTERNAL, "application failed");
                break;
            }
            continue;
        }
        if (n == NGTCP2_ERR_STREAM_DATA_BLOCKED || n == NGTCP2_ERR_STREAM_SHUT_WR ||
            n == NGTCP2_ERR_STREAM_NOT_FOUND) {
            conn_blocked(qc, &pull);
            continue;
        }
        if (n < 0) {
            qc->in_write = false;
            conn_fail(qc, (int)n, now_ns);
            return;
        }
        if (conn_pushed(qc, &pull, ndatalen) != 0) {
            close_later(qc, RB_WIRE_INTERNAL, "application failed");
            break;
        }
        if (n == 0) {
            break;
        }
        emit(qc, &ps.path, buf, (size_t)n);
        sent++;
        more = sent == RB_QUIC_DATAGRAMS_PER_WRITE_MAX;
    }
    qc->in_write = false;
    ngtcp2_conn_update_pkt_tx_time(qc->conn, now_ns);
    if (!conn_after_lib(qc, now_ns)) {
        return;
    }
    /* Stopped by the bound, not by ngtcp2: come back at once. */
    timer_set(qc, more ? now_ns : ngtcp2_conn_get_expiry(qc->conn));
}

void rb_quic_engine_write(rb_quic_engine *e, uint64_t now_ns)
{
    /* Writing may mark other connections dirty only through callbacks of
     * the one being written, so the list is drained from the end. */
    while (e->dirty_count > 0) {
        rb_quic_conn *qc = &e->conns[e->dirty[--e->dirty_count]];
        RB_ASSERT(qc->dirty);
        qc->dirty = false;
        if (qc->state == CS_FREE) {
            continue;
        }
        qc->bus_blocked = false;
        conn_write(qc, now_ns);
    }
}

static void conn_expired(rb_quic_conn *qc, uint64_t now_ns)
{
    if (qc->state == CS_CLOSING || qc->state == CS_DRAINING) {
        if (now_ns >= qc->end_ns) {
            conn_free(qc);
        } else {
            timer_set(qc, qc->end_ns);
        }
        return;
    }
    qc->in_lib = true;
    int rv = ngtcp2_conn_handle_expiry(qc->conn, now_ns);
    qc->in_lib = false;
    if (rv != 0) {
        conn_fail(qc, rv, now_ns);
        return;
    }
    if (conn_after_lib(qc, now_ns)) {
        qc->bus_blocked = false;
        conn_write(qc, now_ns);
    }
}

void rb_quic_engine_timeout(rb_quic_engine *e, uint64_t now_ns)
{
    /* Each connection runs at most once per call, so one whose expiry
     * stays in the past cannot spin the loop. */
    uint32_t budget = e->heap_count;
    while (budget-- > 0 && e->heap_count > 0 && e->conns[e->heap[0]].expiry_ns <= now_ns) {
        rb_quic_conn *qc = &e->conns[e->heap[0]];
        /* Parked past any deadline until it is handled, so the next top is
         * a different connection. */
        timer_set(qc, UINT64_MAX);
        conn_expired(qc, now_ns);
    }
    rb_quic_engine_write(e, now_ns);
}

/* ---- the client ---- */

static int client_conn_new(rb_quic_conn *qc, uint64_t now_ns)
{
    rb_quic_engine *e = qc->e;
    ngtcp2_callbacks cb;
    fill_callbacks(&cb, RB_QUIC_CLIENT);
    ngtcp2_settings settings;
    fill_settings(e, &settings, now_ns);
    ngtcp2_transport_params params;
    fill_params(e, &params);
    ngtcp2_cid dcid = {.datalen = 18};
    ngtcp2_cid scid = {.datalen = RB_QUIC_SCID_BYTES};
    (void)gnutls_rnd(GNUTLS_RND_NONCE, dcid.data, dcid.datalen);
    (void)gnutls_rnd(GNUTLS_RND_NONCE, scid.data, scid.datalen);
    ngtcp2_path path;
    path_to_ng(&qc->path, &path);
    if (ngtcp2_conn_client_new(&qc->conn, &dcid, &scid, &path, e->client_version, &cb, &settings,
                               &params, NULL, qc) != 0) {
        qc->conn = NULL;
        return -1;
    }
    return tls_client_session(qc);
}

int rb_quic_client_connect(rb_quic_engine *e, const rb_quic_path *path, uint64_t now_ns,
                           rb_quic_conn **out, rb_err *err)
{
    RB_ASSERT(e->role == RB_QUIC_CLIENT);
    rb_quic_conn *qc = conn_alloc(e, path);
    if (qc == NULL) {
        return rb_err_set(err, RB_ELIMIT, 0, "quic: client already connected");
    }
    if (client_conn_new(qc, now_ns) != 0) {
        conn_free(qc);
        return rb_err_set(err, RB_ENOMEM, 0, "quic: client connection setup failed");
    }
    qc->owner_knows = true;
    *out = qc;
    conn_write(qc, now_ns);
    return 0;
}

int rb_quic_conn_migrate(rb_quic_conn *qc, const rb_quic_addr *local, uint64_t now_ns, rb_err *err)
{
    if (qc->state != CS_OPEN) {
        return rb_err_set(err, RB_ECLOSED, 0, "quic: migrate: connection not open");
    }
    qc->path.local = *local;
    const ngtcp2_path *cur = ngtcp2_conn_get_path(qc->conn);
    rb_quic_path np;
    np.local = *local;
    addr_from_ng(&np.remote, &cur->remote);
    ngtcp2_path path;
    path_to_ng(&np, &path);
    int rv = ngtcp2_conn_initiate_immediate_migration(qc->conn, &path, now_ns);
    if (rv != 0) {
        return rb_err_set(err, RB_EINVAL, rv, "quic: migrate: %s", ngtcp2_strerror(rv));
    }
    mark_dirty(qc);
    return 0;
}

/* ---- small accessors and the h3 hooks ---- */

int rb_quic_dcid_owner(const uint8_t *p, size_t len, uint32_t *owner)
{
    const uint8_t *cid;
    if (len < 1) {
        return RB_EINVAL;
    }
    if ((p[0] & 0x80) != 0) {
        /* Long header of version 1: Handshake packets, and the Initials a
         * client sends once it heard our first one, carry our CID. (A
         * client's first Initial carries its own random CID: when that has
         * our length it names some owner, always the same one, and that
         * engine takes the connection.) 0-RTT and Retry never do. */
        unsigned type = (p[0] >> 4) & 3;
        if (len < 6 + RB_QUIC_SCID_BYTES || p[1] != 0 || p[2] != 0 || p[3] != 0 || p[4] != 1 ||
            (type != 0 && type != 2) || p[5] != RB_QUIC_SCID_BYTES) {
            return RB_EINVAL;
        }
        cid = p + 6;
    } else {
        /* No fixed-bit check: peers may grease it (RFC 9287). */
        if (len < 1 + RB_QUIC_SCID_BYTES) {
            return RB_EINVAL;
        }
        cid = p + 1;
    }
    *owner = (uint32_t)cid[0] | (uint32_t)cid[1] << 8;
    return 0;
}

void rb_quic_conn_set_user(rb_quic_conn *qc, void *user)
{
    qc->user = user;
    qc->owner_knows = true;
}

void *rb_quic_conn_user(const rb_quic_conn *qc)
{
    return qc->user;
}

rb_quic_alpn rb_quic_conn_alpn(const rb_quic_conn *qc)
{
    return qc->alpn;
}

const rb_quic_addr *rb_quic_conn_remote(const rb_quic_conn *qc)
{
    static rb_quic_addr none;
    if (qc->conn == NULL) {
        return &none;
    }
    /* The path ngtcp2 uses now, which changes with migration. */
    rb_quic_conn *m = (rb_quic_conn *)qc;
    addr_from_ng(&m->path.remote, &ngtcp2_conn_get_path(qc->conn)->remote);
    return &m->path.remote;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void close_common(rb_quic_conn *qc, bool app, uint64_t code, const char *reason,
                         uint64_t now_ns)
{
    /* 0: the caller has no clock at hand (a link's close). */
    now_ns = now_ns != 0 ? now_ns : mono_ns();
    if (qc->state != CS_HANDSHAKE && qc->state != CS_OPEN) {
        qc->told = true;
        return;
    }
    qc->told = true;
    conn_release_refs(qc);
    if (qc->in_lib || qc->in_write) {
        close_later(qc, (uint16_t)code, reason != NULL ? reason : "");
        return;
    }
    if (!app) {
        conn_close_wire(qc, (uint16_t)code, reason, now_ns);
        return;
    }
    ngtcp2_connection_close_error ccerr;
    ngtcp2_connection_close_error_default(&ccerr);
    size_t len = reason != NULL ? strnlen(reason, 255) : 0;
    ngtcp2_connection_close_error_set_application_error(&ccerr, code, (const uint8_t *)reason, len);
    conn_write_close(qc, &ccerr, now_ns);
}

void rb_quic_conn_close(rb_quic_conn *qc, uint16_t wire_status, const char *reason, uint64_t now_ns)
{
    close_common(qc, false, wire_status, reason, now_ns);
}

void rb_quic_conn_close_app(rb_quic_conn *qc, uint64_t app_error, const char *reason,
                            uint64_t now_ns)
{
    close_common(qc, true, app_error, reason, now_ns);
}

void rb_quic_conn_set_app(rb_quic_conn *qc, const rb_quic_app_ops *ops, void *app)
{
    qc->app_ops = ops;
    qc->app = app;
}

int rb_quic_stream_open_uni(rb_quic_conn *qc, int64_t *stream_id, rb_err *err)
{
    int rv = ngtcp2_conn_open_uni_stream(qc->conn, stream_id, NULL);
    if (rv != 0) {
        return rb_err_set(err, RB_ELIMIT, rv, "quic: open stream: %s", ngtcp2_strerror(rv));
    }
    return 0;
}

int rb_quic_stream_open_bidi(rb_quic_conn *qc, int64_t *stream_id, rb_err *err)
{
    int rv = ngtcp2_conn_open_bidi_stream(qc->conn, stream_id, NULL);
    if (rv != 0) {
        return rb_err_set(err, RB_ELIMIT, rv, "quic: open stream: %s", ngtcp2_strerror(rv));
    }
    return 0;
}

void rb_quic_stream_consumed(rb_quic_conn *qc, int64_t stream_id, size_t len)
{
    if (qc->state != CS_OPEN || len == 0) {
        return;
    }
    (void)ngtcp2_conn_extend_max_stream_offset(qc->conn, stream_id, len);
    ngtcp2_conn_extend_max_offset(qc->conn, len);
    mark_dirty(qc);
}

void rb_quic_stream_shutdown(rb_quic_conn *qc, int64_t stream_id, uint64_t app_error)
{
    if (qc->state == CS_OPEN) {
        (void)ngtcp2_conn_shutdown_stream(qc->conn, stream_id, app_error);
        mark_dirty(qc);
    }
}

void rb_quic_stream_shutdown_read(rb_quic_conn *qc, int64_t stream_id, uint64_t app_error)
{
    if (qc->state == CS_OPEN) {
        (void)ngtcp2_conn_shutdown_stream_read(qc->conn, stream_id, app_error);
        mark_dirty(qc);
    }
}

void rb_quic_conn_want_write(rb_quic_conn *qc)
{
    if (qc->state == CS_OPEN || qc->state == CS_HANDSHAKE) {
        mark_dirty(qc);
    }
}
