/* Base64 (RFC 4648), the one copy every module uses: the CLI's data_b64,
 * WebSocket keys and accept values, the salt and hash fields of argon2 PHC
 * strings (standard alphabet, unpadded) and JWT segments (url alphabet,
 * unpadded). */
#ifndef RB_COMMON_BASE64_H
#define RB_COMMON_BASE64_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define RB_BASE64_URL   1u /* the url alphabet: '-' and '_' for '+' and '/' */
#define RB_BASE64_NOPAD 2u /* no '=': none is written, and one read is refused */

/* Characters rb_base64_encode writes for len bytes. */
size_t rb_base64_encoded_len(size_t len, unsigned flags);

/* Writes the encoding of data (rb_base64_encoded_len(len, flags)
 * characters, no NUL) to out. */
void rb_base64_encode(char *out, const void *data, size_t len, unsigned flags);

/* Decodes text into out, at most cap bytes (out may be NULL with cap 0 to
 * check and measure only). Padded (no NOPAD): the length is a multiple of
 * 4, '=' only at the end, and the bits under the padding are zero (one
 * encoding per value). Unpadded: any length but 4k+1, no '='. Returns 0
 * with the decoded length in *out_len, or RB_EINVAL with a message naming
 * the offset (err may be NULL). */
int rb_base64_decode(const char *text, size_t len, uint8_t *out, size_t cap, size_t *out_len,
                     unsigned flags, rb_err *err);

#endif
