/* HTTP/3 server connections on nghttp3 (see h3.h). This file owns the
 * request slots, their bounded bodies and the glue between nghttp3 and the
 * QUIC engine's app interface; what a route answers is the owner's. */
#include "transports/h3.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp3/nghttp3.h>

#include "common/assert.h"

/* nghttp3 vectors gathered per pull. */
#define H3_VEC_MAX 16
/* A method is a short token. */
#define H3_METHOD_BYTES_MAX 16
/* A rejected request's body is discarded up to this many times the body
 * bound; a client that sends more has its stream reset. */
#define H3_DISCARD_FACTOR 4

typedef struct h3_req {
    bool used;
    bool answered;
    bool pending;
    uint16_t reject; /* 400/413/414/503 decided early: the body is discarded and
                      * this status answers the request when it ends */
    const char *reject_text;
    uint64_t discarded;
    int64_t sid;
    char method[H3_METHOD_BYTES_MAX + 1];
    char path[RB_H3_PATH_BYTES_MAX + 1];
    char authority[RB_H3_AUTHORITY_BYTES_MAX + 1];
    bool bad_header;
    bool path_too_long;
    uint8_t *body;
    size_t body_len;
    size_t body_cap;
    /* the response, kept until the stream closes (nghttp3 sends from it) */
    char status[4];
    char content_type[64];
    char content_length[24];
    uint8_t *resp;
    size_t resp_len;
    bool resp_sent;
} h3_req;

struct rb_h3 {
    rb_quic_conn *qc;
    nghttp3_conn *conn;
    rb_h3_config cfg;
    h3_req *reqs;
    uint32_t reqs_max;
    uint64_t served;
};

static h3_req *req_find(rb_h3 *h, int64_t sid)
{
    for (uint32_t i = 0; i < h->reqs_max; i++) {
        if (h->reqs[i].used && h->reqs[i].sid == sid) {
            return &h->reqs[i];
        }
    }
    return NULL;
}

static void req_release(rb_h3 *h, h3_req *r)
{
    (void)h;
    free(r->body);
    free(r->resp);
    memset(r, 0, sizeof *r);
}

static h3_req *req_new(rb_h3 *h, int64_t sid)
{
    for (uint32_t i = 0; i < h->reqs_max; i++) {
        if (!h->reqs[i].used) {
            h3_req *r = &h->reqs[i];
            memset(r, 0, sizeof *r);
            r->used = true;
            r->sid = sid;
            return r;
        }
    }
    return NULL;
}

/* ---- responses ---- */

static nghttp3_ssize read_body(nghttp3_conn *conn, int64_t sid, nghttp3_vec *vec, size_t veccnt,
                               uint32_t *pflags, void *conn_user_data, void *sud)
{
    (void)conn;
    (void)veccnt;
    (void)sud;
    rb_h3 *h = conn_user_data;
    h3_req *r = req_find(h, sid);
    *pflags = NGHTTP3_DATA_FLAG_EOF;
    if (r == NULL || r->resp_sent || r->resp_len == 0) {
        return 0;
    }
    r->resp_sent = true;
    vec[0].base = r->resp;
    vec[0].len = r->resp_len;
    return 1;
}

static nghttp3_nv make_nv(const char *name, const char *value)
{
    nghttp3_nv nv = {
        .name = (uint8_t *)name,
        .value = (uint8_t *)value,
        .namelen = strlen(name),
        .valuelen = strlen(value),
        .flags = NGHTTP3_NV_FLAG_NONE,
    };
    return nv;
}

static int submit(rb_h3 *h, h3_req *r, const rb_h3_response *resp)
{
    RB_ASSERT(!r->answered);
    if (resp->body_len > RB_H3_RESPONSE_BYTES_MAX) {
        return -1;
    }
    r->answered = true;
    r->pending = false;
    snprintf(r->status, sizeof r->status, "%03u", resp->status % 1000);
    snprintf(r->content_length, sizeof r->content_length, "%zu", resp->body_len);
    if (resp->body_len > 0) {
        r->resp = malloc(resp->body_len);
        if (r->resp == NULL) {
            return -1;
        }
        memcpy(r->resp, resp->body, resp->body_len);
        r->resp_len = resp->body_len;
    }
    nghttp3_nv nva[4];
    size_t n = 0;
    nva[n++] = make_nv(":status", r->status);
    nva[n++] = make_nv("server", "ringbusd");
    nva[n++] = make_nv("content-length", r->content_length);
    if (resp->content_type != NULL) {
        snprintf(r->content_type, sizeof r->content_type, "%s", resp->content_type);
        nva[n++] = make_nv("content-type", r->content_type);
    }
    nghttp3_data_reader dr = {.read_data = read_body};
    if (nghttp3_conn_submit_response(h->conn, r->sid, nva, n, &dr) != 0) {
        return -1;
    }
    h->served++;
    return 0;
}

/* Marks a request for an error answer. nghttp3 0.8 sends no response
 * before the request's end, so the rest of the body is read and discarded
 * (up to H3_DISCARD_FACTOR times the body bound, then the stream is reset)
 * and the status goes out at the end. */
static void reject(h3_req *r, uint16_t status, const char *text)
{
    if (r->reject == 0) {
        r->reject = status;
        r->reject_text = text;
        free(r->body);
        r->body = NULL;
        r->body_len = 0;
        r->body_cap = 0;
    }
}

static void answer_reject(rb_h3 *h, h3_req *r)
{
    rb_h3_response resp = {
        .status = r->reject,
        .content_type = "text/plain; charset=utf-8",
        .body = (const uint8_t *)r->reject_text,
        .body_len = strlen(r->reject_text),
    };
    if (submit(h, r, &resp) != 0) {
        rb_quic_stream_shutdown(h->qc, r->sid, NGHTTP3_H3_INTERNAL_ERROR);
    }
}

int rb_h3_respond(rb_h3 *h, int64_t stream_id, const rb_h3_response *resp, rb_err *err)
{
    h3_req *r = req_find(h, stream_id);
    if (r == NULL || !r->pending) {
        return rb_err_set(err, RB_ECLOSED, 0, "h3: request stream %lld is gone",
                          (long long)stream_id);
    }
    if (submit(h, r, resp) != 0) {
        rb_quic_stream_shutdown(h->qc, r->sid, NGHTTP3_H3_INTERNAL_ERROR);
        return rb_err_set(err, RB_ENOMEM, 0, "h3: response: out of memory");
    }
    rb_quic_conn_want_write(h->qc);
    return 0;
}

uint64_t rb_h3_requests_served(const rb_h3 *h)
{
    return h->served;
}

/* ---- nghttp3 callbacks ---- */

static int begin_headers_cb(nghttp3_conn *conn, int64_t sid, void *ud, void *sud)
{
    (void)conn;
    (void)sud;
    rb_h3 *h = ud;
    if (req_new(h, sid) == NULL) {
        /* Every slot is busy: refuse the request, nothing was processed. */
        rb_quic_stream_shutdown(h->qc, sid, NGHTTP3_H3_REQUEST_REJECTED);
    }
    return 0;
}

static void copy_value(char *dst, size_t cap, const nghttp3_vec *v, bool *too_long)
{
    if (v->len >= cap) {
        *too_long = true;
        dst[0] = '\0';
        return;
    }
    memcpy(dst, v->base, v->len);
    dst[v->len] = '\0';
}

static int recv_header_cb(nghttp3_conn *conn, int64_t sid, int32_t token, nghttp3_rcbuf *name,
                          nghttp3_rcbuf *value, uint8_t flags, void *ud, void *sud)
{
    (void)conn;
    (void)name;
    (void)flags;
    (void)sud;
    h3_req *r = req_find(ud, sid);
    if (r == NULL) {
        return 0;
    }
    nghttp3_vec v = nghttp3_rcbuf_get_buf(value);
    switch (token) {
    case NGHTTP3_QPACK_TOKEN__METHOD:
        copy_value(r->method, sizeof r->method, &v, &r->bad_header);
        break;
    case NGHTTP3_QPACK_TOKEN__PATH:
        copy_value(r->path, sizeof r->path, &v, &r->path_too_long);
        break;
    case NGHTTP3_QPACK_TOKEN__AUTHORITY:
        copy_value(r->authority, sizeof r->authority, &v, &r->bad_header);
        break;
    default:
        break;
    }
    return 0;
}

static int end_headers_cb(nghttp3_conn *conn, int64_t sid, int fin, void *ud, void *sud)
{
    (void)conn;
    (void)fin;
    (void)sud;
    rb_h3 *h = ud;
    h3_req *r = req_find(h, sid);
    if (r == NULL) {
        return 0;
    }
    if (r->path_too_long) {
        reject(r, 414, "path too long\n");
    } else if (r->bad_header || r->method[0] == '\0' || r->path[0] == '\0') {
        reject(r, 400, "bad request\n");
    }
    return 0;
}

static int body_grow(h3_req *r, size_t need)
{
    if (need <= r->body_cap) {
        return 0;
    }
    size_t cap = r->body_cap != 0 ? r->body_cap : 4096;
    while (cap < need) {
        cap *= 2;
    }
    uint8_t *p = realloc(r->body, cap);
    if (p == NULL) {
        return -1;
    }
    r->body = p;
    r->body_cap = cap;
    return 0;
}

static int recv_data_cb(nghttp3_conn *conn, int64_t sid, const uint8_t *data, size_t len, void *ud,
                        void *sud)
{
    (void)conn;
    (void)sud;
    rb_h3 *h = ud;
    /* The bytes are processed here (copied or ignored): credit them back. */
    rb_quic_stream_consumed(h->qc, sid, len);
    h3_req *r = req_find(h, sid);
    if (r == NULL) {
        return 0;
    }
    if (r->reject == 0 && r->body_len + len > h->cfg.max_body_bytes) {
        reject(r, 413, "request body too large\n");
    }
    if (r->reject == 0 && body_grow(r, r->body_len + len) != 0) {
        reject(r, 503, "out of memory\n");
    }
    if (r->reject != 0) {
        r->discarded += len;
        if (r->discarded > (uint64_t)h->cfg.max_body_bytes * H3_DISCARD_FACTOR) {
            rb_quic_stream_shutdown(h->qc, sid, NGHTTP3_H3_EXCESSIVE_LOAD);
        }
        return 0;
    }
    memcpy(r->body + r->body_len, data, len);
    r->body_len += len;
    return 0;
}

static int deferred_consume_cb(nghttp3_conn *conn, int64_t sid, size_t consumed, void *ud,
                               void *sud)
{
    (void)conn;
    (void)sud;
    rb_h3 *h = ud;
    rb_quic_stream_consumed(h->qc, sid, consumed);
    return 0;
}

static int end_stream_cb(nghttp3_conn *conn, int64_t sid, void *ud, void *sud)
{
    (void)conn;
    (void)sud;
    rb_h3 *h = ud;
    h3_req *r = req_find(h, sid);
    if (r == NULL || r->answered) {
        return 0;
    }
    if (r->reject != 0) {
        answer_reject(h, r);
        return 0;
    }
    rb_h3_request req = {
        .method = r->method,
        .path = r->path,
        .authority = r->authority,
        .body = r->body,
        .body_len = r->body_len,
    };
    rb_h3_response resp = {.status = 404};
    int rc =
        h->cfg.route != NULL ? h->cfg.route(h->cfg.route_ctx, h, sid, &req, &resp) : RB_H3_ANSWERED;
    if (rc == RB_H3_PENDING) {
        r->pending = true;
        return 0;
    }
    if (rc != RB_H3_ANSWERED) {
        resp = (rb_h3_response){.status = 500};
    }
    if (submit(h, r, &resp) != 0) {
        rb_quic_stream_shutdown(h->qc, sid, NGHTTP3_H3_INTERNAL_ERROR);
    }
    return 0;
}

static int acked_data_cb(nghttp3_conn *conn, int64_t sid, uint64_t len, void *ud, void *sud)
{
    (void)conn;
    (void)sid;
    (void)len;
    (void)ud;
    (void)sud;
    /* The body stays in the slot until the stream closes. */
    return 0;
}

static int stream_close_cb(nghttp3_conn *conn, int64_t sid, uint64_t code, void *ud, void *sud)
{
    (void)conn;
    (void)code;
    (void)sud;
    rb_h3 *h = ud;
    h3_req *r = req_find(h, sid);
    if (r != NULL) {
        req_release(h, r);
    }
    return 0;
}

/* nghttp3 asks for STOP_SENDING on a stream it stops reading. */
static int stop_sending_cb(nghttp3_conn *conn, int64_t sid, uint64_t code, void *ud, void *sud)
{
    (void)conn;
    (void)sud;
    rb_h3 *h = ud;
    rb_quic_stream_shutdown_read(h->qc, sid, code);
    return 0;
}

/* nghttp3 asks for RESET_STREAM on a stream it stops writing. */
static int reset_stream_cb(nghttp3_conn *conn, int64_t sid, uint64_t code, void *ud, void *sud)
{
    (void)conn;
    (void)sud;
    rb_h3 *h = ud;
    rb_quic_stream_shutdown(h->qc, sid, code);
    return 0;
}

/* ---- the QUIC engine's app interface ---- */

/* A fatal HTTP/3 error closes the connection with its H3 code. */
static int h3_fatal(rb_h3 *h, int rv)
{
    uint64_t code = nghttp3_err_infer_quic_app_error_code(rv);
    rb_quic_conn_close_app(h->qc, code, nghttp3_strerror(rv), 0);
    return 0;
}

static int app_recv(void *app, int64_t sid, const uint8_t *p, size_t len, bool fin)
{
    rb_h3 *h = app;
    nghttp3_ssize n = nghttp3_conn_read_stream(h->conn, sid, p, len, fin ? 1 : 0);
    if (n < 0) {
        if (nghttp3_err_is_fatal((int)n)) {
            return h3_fatal(h, (int)n);
        }
        /* A malformed request: that stream only. */
        rb_quic_stream_shutdown(h->qc, sid, nghttp3_err_infer_quic_app_error_code((int)n));
        return 0;
    }
    rb_quic_stream_consumed(h->qc, sid, (size_t)n);
    return 0;
}

static int app_acked(void *app, int64_t sid, uint64_t len)
{
    rb_h3 *h = app;
    int rv = nghttp3_conn_add_ack_offset(h->conn, sid, len);
    return rv == 0 || !nghttp3_err_is_fatal(rv) ? 0 : h3_fatal(h, rv);
}

static int app_reset(void *app, int64_t sid, uint64_t code)
{
    (void)code;
    rb_h3 *h = app;
    /* The request is cut short; an answer already on its way still goes. */
    (void)nghttp3_conn_shutdown_stream_read(h->conn, sid);
    return 0;
}

static int app_stop_sending(void *app, int64_t sid, uint64_t code)
{
    rb_h3 *h = app;
    nghttp3_conn_shutdown_stream_write(h->conn, sid);
    rb_quic_stream_shutdown(h->qc, sid, code);
    return 0;
}

static int app_closed(void *app, int64_t sid, uint64_t code)
{
    rb_h3 *h = app;
    int rv = nghttp3_conn_close_stream(h->conn, sid, code);
    if (rv != 0 && rv != NGHTTP3_ERR_STREAM_NOT_FOUND && nghttp3_err_is_fatal(rv)) {
        return h3_fatal(h, rv);
    }
    h3_req *r = req_find(h, sid);
    if (r != NULL) {
        req_release(h, r);
    }
    return 0;
}

static int app_unblock(void *app, int64_t sid)
{
    rb_h3 *h = app;
    (void)nghttp3_conn_unblock_stream(h->conn, sid);
    return 0;
}

static int app_pull(void *app, int64_t *sid, bool *fin, rb_quic_vec *vec, size_t vec_max)
{
    rb_h3 *h = app;
    nghttp3_vec v[H3_VEC_MAX];
    int f = 0;
    size_t max = vec_max < H3_VEC_MAX ? vec_max : H3_VEC_MAX;
    nghttp3_ssize n = nghttp3_conn_writev_stream(h->conn, sid, &f, v, max);
    if (n < 0) {
        *sid = -1;
        return nghttp3_err_is_fatal((int)n) ? h3_fatal(h, (int)n) - 1 : 0;
    }
    for (nghttp3_ssize i = 0; i < n; i++) {
        vec[i].base = v[i].base;
        vec[i].len = v[i].len;
    }
    *fin = f != 0;
    return (int)n;
}

static int app_pushed(void *app, int64_t sid, size_t len, bool fin)
{
    (void)fin;
    rb_h3 *h = app;
    int rv = nghttp3_conn_add_write_offset(h->conn, sid, len);
    return rv == 0 || !nghttp3_err_is_fatal(rv) ? 0 : h3_fatal(h, rv);
}

static void app_blocked(void *app, int64_t sid)
{
    rb_h3 *h = app;
    nghttp3_conn_block_stream(h->conn, sid);
}

static const rb_quic_app_ops h3_app_ops = {
    .recv = app_recv,
    .acked = app_acked,
    .reset = app_reset,
    .stop_sending = app_stop_sending,
    .closed = app_closed,
    .unblock = app_unblock,
    .pull = app_pull,
    .pushed = app_pushed,
    .blocked = app_blocked,
};

static int open_streams(rb_h3 *h, rb_err *err)
{
    int64_t ctrl, enc, dec;
    int rc = rb_quic_stream_open_uni(h->qc, &ctrl, err);
    rc = rc ? rc : rb_quic_stream_open_uni(h->qc, &enc, err);
    rc = rc ? rc : rb_quic_stream_open_uni(h->qc, &dec, err);
    if (rc != 0) {
        return rc;
    }
    if (nghttp3_conn_bind_control_stream(h->conn, ctrl) != 0 ||
        nghttp3_conn_bind_qpack_streams(h->conn, enc, dec) != 0) {
        return rb_err_set(err, RB_ENOMEM, 0, "h3: binding streams failed");
    }
    return 0;
}

int rb_h3_new(rb_h3 **out, rb_quic_conn *qc, const rb_h3_config *cfg, rb_err *err)
{
    rb_h3 *h = calloc(1, sizeof *h);
    uint32_t n = cfg->requests_max != 0 ? cfg->requests_max : RB_H3_REQUESTS_DEFAULT;
    if (h == NULL || n > RB_H3_REQUESTS_MAX || (h->reqs = calloc(n, sizeof *h->reqs)) == NULL) {
        free(h);
        return rb_err_set(err, RB_ENOMEM, 0, "h3: connection: out of memory");
    }
    h->qc = qc;
    h->cfg = *cfg;
    h->reqs_max = n;
    nghttp3_callbacks cb = {
        .acked_stream_data = acked_data_cb,
        .stream_close = stream_close_cb,
        .recv_data = recv_data_cb,
        .deferred_consume = deferred_consume_cb,
        .begin_headers = begin_headers_cb,
        .recv_header = recv_header_cb,
        .end_headers = end_headers_cb,
        .stop_sending = stop_sending_cb,
        .end_stream = end_stream_cb,
        .reset_stream = reset_stream_cb,
    };
    nghttp3_settings settings;
    nghttp3_settings_default(&settings);
    settings.qpack_max_dtable_capacity = RB_H3_QPACK_TABLE_BYTES;
    settings.qpack_blocked_streams = RB_H3_QPACK_BLOCKED_MAX;
    settings.max_field_section_size = RB_H3_HEADER_BYTES_MAX;
    if (nghttp3_conn_server_new(&h->conn, &cb, &settings, NULL, h) != 0) {
        h->conn = NULL;
        rb_h3_free(h);
        return rb_err_set(err, RB_ENOMEM, 0, "h3: connection: out of memory");
    }
    nghttp3_conn_set_max_client_streams_bidi(h->conn, n);
    int rc = open_streams(h, err);
    if (rc != 0) {
        rb_h3_free(h);
        return rc;
    }
    rb_quic_conn_set_app(qc, &h3_app_ops, h);
    *out = h;
    return 0;
}

void rb_h3_free(rb_h3 *h)
{
    if (h == NULL) {
        return;
    }
    for (uint32_t i = 0; h->reqs != NULL && i < h->reqs_max; i++) {
        if (h->reqs[i].used) {
            req_release(h, &h->reqs[i]);
        }
    }
    if (h->conn != NULL) {
        nghttp3_conn_del(h->conn);
    }
    free(h->reqs);
    free(h);
}
