/* Topic patterns of the permission lists (NATS syntax): '.'-separated
 * segments, "*" matches exactly one segment, ">" as the last segment
 * matches one or more remaining segments. This module owns only the syntax
 * check, shared by config/ (which reports file:line:column) and
 * server/policy.c (which compiles patterns into a trie and matches). */
#ifndef RB_COMMON_PATTERN_H
#define RB_COMMON_PATTERN_H

#include "common/err.h"
#include "common/frame.h"

/* Patterns a permission list may hold (per list). */
#define RB_PATTERNS_PER_LIST_MAX 1024

/* Checks a pattern: the characters of a topic name (1..255 bytes of UTF-8,
 * no spaces or control characters; '$' allowed), no empty segment, '*'
 * and '>' only as whole segments, '>' only last. Returns 0 or RB_EINVAL
 * with a message naming the byte offset ("pattern: '>' must be the last
 * segment (byte 2)"). */
int rb_pattern_validate(rb_bytes pattern, rb_err *err);

#endif
