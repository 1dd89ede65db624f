#include "common/base64.h"

#include <stdbool.h>

static const char std_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t rb_base64_encoded_len(size_t len, unsigned flags)
{
    if (flags & RB_BASE64_NOPAD) {
        return len / 3 * 4 + (len % 3 == 0 ? 0 : len % 3 + 1);
    }
    return (len + 2) / 3 * 4;
}

void rb_base64_encode(char *out, const void *data, size_t len, unsigned flags)
{
    const char *abc = (flags & RB_BASE64_URL) ? url_alphabet : std_alphabet;
    bool pad = !(flags & RB_BASE64_NOPAD);
    const uint8_t *p = data;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len) {
            v |= (uint32_t)p[i + 1] << 8;
        }
        if (i + 2 < len) {
            v |= p[i + 2];
        }
        out[o++] = abc[(v >> 18) & 63];
        out[o++] = abc[(v >> 12) & 63];
        if (i + 1 < len) {
            out[o++] = abc[(v >> 6) & 63];
        } else if (pad) {
            out[o++] = '=';
        }
        if (i + 2 < len) {
            out[o++] = abc[v & 63];
        } else if (pad) {
            out[o++] = '=';
        }
    }
}

static int value_of(char c, bool url)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == (url ? '-' : '+')) {
        return 62;
    }
    if (c == (url ? '_' : '/')) {
        return 63;
    }
    return -1;
}

int rb_base64_decode(const char *text, size_t len, uint8_t *out, size_t cap, size_t *out_len,
                     unsigned flags, rb_err *err)
{
    bool url = (flags & RB_BASE64_URL) != 0;
    bool padded = !(flags & RB_BASE64_NOPAD);
    size_t data_len = len;
    if (padded) {
        if (len % 4 != 0) {
            return rb_err_set(err, RB_EINVAL, 0, "base64: length %zu is not a multiple of 4", len);
        }
        while (data_len > 0 && len - data_len < 2 && text[data_len - 1] == '=') {
            data_len--;
        }
    } else if (len % 4 == 1) {
        return rb_err_set(err, RB_EINVAL, 0, "base64: length %zu cannot be an encoding", len);
    }
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < data_len; i++) {
        int v = value_of(text[i], url);
        if (v < 0) {
            return rb_err_set(err, RB_EINVAL, 0, "base64: bad character at %zu", i);
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (out != NULL) {
                if (o == cap) {
                    return rb_err_set(err, RB_EINVAL, 0, "base64: more than %zu bytes", cap);
                }
                out[o] = (uint8_t)(acc >> bits);
            }
            o++;
        }
    }
    /* Bits under the padding must be zero (canonical encoding). */
    if (padded && (acc & ((1u << bits) - 1)) != 0) {
        return rb_err_set(err, RB_EINVAL, 0, "base64: nonzero bits before padding");
    }
    *out_len = o;
    return 0;
}
