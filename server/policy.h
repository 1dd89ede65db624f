/* Per-identity topic permissions: allow and deny lists of patterns
 * (common/pattern.h) for publish and for subscribe, compiled into one trie
 * per action. A topic is allowed when some allow pattern matches it and no
 * deny pattern does (deny wins); with no allow pattern nothing is allowed.
 * Names starting with '$' are reserved for the server: publishing to them
 * is always refused, and wildcards in the first segment never match them,
 * so only a pattern whose first segment is written out (e.g. "$sys.>")
 * lets a client subscribe to one.
 *
 * Cost: a check walks the trie once along the topic's segments, branching
 * only into '*' edges, so it visits at most the nodes on matching paths;
 * literal edges are found by binary search. It does not grow with the
 * number of patterns that do not share the topic's prefix.
 *
 * A policy is built at start or reload (it allocates then) and is
 * immutable afterwards: shards may read one policy concurrently. */
#ifndef RB_SERVER_POLICY_H
#define RB_SERVER_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "common/frame.h"

typedef struct rb_policy rb_policy;

typedef enum rb_policy_action {
    RB_POLICY_PUBLISH = 0,
    RB_POLICY_SUBSCRIBE = 1,
} rb_policy_action;

/* Trie nodes one policy may hold (both actions), so a token's claims or a
 * user's lists cannot make a policy of unbounded size: 1024 patterns per
 * list of up to 128 segments fit. */
#define RB_POLICY_NODES_MAX (4u * 1024u * 128u)

/* A new empty policy (allows nothing), or NULL when out of memory. */
rb_policy *rb_policy_new(void);

/* A policy that allows every topic for both actions except publishing to
 * '$' names (auth.mode = "none" for anonymous connections). */
rb_policy *rb_policy_new_allow_all(void);

/* Adds one pattern to the allow (deny = false) or deny list of action.
 * Returns 0, RB_EINVAL for a malformed pattern (the message of
 * rb_pattern_validate), RB_ELIMIT past RB_POLICY_NODES_MAX or
 * RB_PATTERNS_PER_LIST_MAX, or RB_ENOMEM. On failure the policy is
 * unchanged. */
int rb_policy_add(rb_policy *p, rb_policy_action action, bool deny, rb_bytes pattern, rb_err *err);

/* True when action on topic is allowed. topic must be a valid topic name
 * (rb_topic_validate with reserved names allowed). */
bool rb_policy_allows(const rb_policy *p, rb_policy_action action, rb_bytes topic);

/* Mutate validation: true when every add of the decoded MUTATE f (live or
 * history_only: both read the topic) is allowed to subscribe; otherwise
 * false with *denied set to the first add refused, so that the whole
 * Mutate can be rejected with forbidden before any part applies. Removes
 * need no permission. The adds must be valid topic names. */
bool rb_policy_allows_mutate(const rb_policy *p, const rb_frame *f, rb_bytes *denied);

/* Patterns added to the lists of action (allow + deny), for logs. */
uint32_t rb_policy_pattern_count(const rb_policy *p, rb_policy_action action);

/* Frees p (NULL is a no-op). */
void rb_policy_free(rb_policy *p);

#endif
