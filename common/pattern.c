/* Syntax of topic patterns (common/pattern.h). Matching lives in
 * server/policy.c. */
#include "common/pattern.h"

#include <string.h>

#include "common/assert.h"

int rb_pattern_validate(rb_bytes pattern, rb_err *err)
{
    RB_ASSERT(pattern.ptr != NULL || pattern.len == 0);
    rb_err why;
    if (rb_topic_validate(pattern, true, &why) != 0) {
        /* "topic: contains a space ..." reads "pattern: contains ...". */
        const char *rest = strncmp(why.msg, "topic: ", 7) == 0 ? why.msg + 7 : why.msg;
        return rb_err_set(err, RB_EINVAL, 0, "pattern: %s", rest);
    }
    size_t start = 0;
    for (size_t i = 0; i <= pattern.len; i++) {
        if (i < pattern.len && pattern.ptr[i] != '.') {
            continue;
        }
        size_t seg_len = i - start;
        const uint8_t *seg = pattern.ptr + start;
        if (seg_len == 0) {
            return rb_err_set(err, RB_EINVAL, 0, "pattern: empty segment at byte %zu", start);
        }
        bool wild = memchr(seg, '*', seg_len) != NULL || memchr(seg, '>', seg_len) != NULL;
        if (wild && seg_len != 1) {
            return rb_err_set(err, RB_EINVAL, 0,
                              "pattern: '*' and '>' must be a whole segment (byte %zu)", start);
        }
        if (seg_len == 1 && seg[0] == '>' && i != pattern.len) {
            return rb_err_set(err, RB_EINVAL, 0, "pattern: '>' must be the last segment (byte %zu)",
                              start);
        }
        start = i + 1;
    }
    return 0;
}
