/* The library-neutral parts of the server's TLS layers; see tls_common.h. */
#include "transports/tls_common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/frame.h"

int rb_tls_file_check(const rb_listener_config *cfg, const char *what, const char *path,
                      rb_err *err)
{
    if (access(path, R_OK) != 0) {
        return rb_err_set(err, RB_ECONFIG, 0, "%s listener %s:%u: %s %s: %s",
                          rb_transport_name(cfg->transport), cfg->address, cfg->port, what, path,
                          strerror(errno));
    }
    return 0;
}

int rb_tls_refuse_not_tls(rb_layer *l, const uint8_t *p, size_t len, rb_err *err)
{
    static const uint8_t alert[] = {21, 3, 3, 0, 2, 2, 10};
    rb_err ignored;
    (void)rb_layer_down(l, alert, sizeof alert, &ignored);
    const char *what = "bytes that are not TLS";
    if (len >= 4 && (memcmp(p, "GET ", 4) == 0 || memcmp(p, "POST", 4) == 0 ||
                     memcmp(p, "HEAD", 4) == 0 || memcmp(p, "PUT ", 4) == 0)) {
        what = "plain HTTP (a ws:// or http:// client?)";
    } else if (len >= RB_FRAME_HEADER_BYTES && p[4] == RB_PROTOCOL_VERSION &&
               p[5] == RB_FRAME_HELLO) {
        what = "a plain ringbus HELLO (a tcp:// client?)";
    }
    return rb_err_set(err, RB_EPROTO, RB_WIRE_BAD_FRAME, "TLS handshake: the client sent %s", what);
}

int rb_tls_stage_send(rb_tls_stage *st, rb_layer *l, rb_tls_write_fn *write, const uint8_t *p,
                      size_t len, rb_err *err)
{
    while (len > 0) {
        if (st->len == 0 && len >= RB_TLS_RECORD_BYTES) {
            int rc = write(l, p, RB_TLS_RECORD_BYTES, err);
            if (rc != 0) {
                return rc;
            }
            p += RB_TLS_RECORD_BYTES;
            len -= RB_TLS_RECORD_BYTES;
            continue;
        }
        if (st->buf == NULL) {
            /* Taken at the first byte staged, so a connection that only
             * handshakes holds no staging buffer. */
            st->buf = malloc(RB_TLS_RECORD_BYTES);
            if (st->buf == NULL) {
                return rb_err_set(err, RB_ENOMEM, RB_WIRE_RESOURCE_EXHAUSTED, "tls: out of memory");
            }
        }
        size_t take = RB_TLS_RECORD_BYTES - st->len;
        take = take < len ? take : len;
        memcpy(st->buf + st->len, p, take);
        st->len += take;
        p += take;
        len -= take;
        if (st->len == RB_TLS_RECORD_BYTES) {
            st->len = 0;
            int rc = write(l, st->buf, RB_TLS_RECORD_BYTES, err);
            if (rc != 0) {
                return rc;
            }
        }
    }
    return 0;
}

int rb_tls_stage_flush(rb_tls_stage *st, rb_layer *l, rb_tls_write_fn *write, rb_err *err)
{
    if (st->len == 0) {
        return 0;
    }
    size_t n = st->len;
    st->len = 0;
    return write(l, st->buf, n, err);
}

void rb_tls_stage_free(rb_tls_stage *st)
{
    free(st->buf);
    st->buf = NULL;
    st->len = 0;
}
