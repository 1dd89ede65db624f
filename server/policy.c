/* Topic permission tries (server/policy.h). Each action has its own root;
 * a node stands for a prefix of segments and carries flag bits: a pattern
 * ends here (allow or deny), or a ">" follows here (allow or deny). Edges to
 * literal segments are kept sorted for binary search; the "*" edge is kept
 * apart. Nodes live in one growable array and refer to each other by index,
 * segment bytes in one growable pool. */
#include "server/policy.h"

#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/pattern.h"

#define END_ALLOW  0x01u /* an allow pattern ends at this node */
#define END_DENY   0x02u
#define REST_ALLOW 0x04u /* an allow pattern has ">" after this node */
#define REST_DENY  0x08u

#define NO_NODE UINT32_MAX

typedef struct edge {
    uint32_t seg_off; /* into p->bytes */
    uint8_t seg_len;
    uint32_t child;
} edge;

typedef struct node {
    edge *edges; /* sorted by (seg_len, bytes) */
    uint32_t edge_count;
    uint32_t edge_cap;
    uint32_t star; /* child for "*", or NO_NODE */
    uint8_t flags;
} node;

struct rb_policy {
    node *nodes;
    uint32_t node_count;
    uint32_t node_cap;
    uint8_t *bytes;
    uint32_t bytes_len;
    uint32_t bytes_cap;
    uint32_t root[2];
    uint32_t patterns[2][2]; /* [action][deny] */
    bool allow_all;
};

static uint32_t node_new(rb_policy *p)
{
    if (p->node_count >= RB_POLICY_NODES_MAX) {
        return NO_NODE;
    }
    if (p->node_count == p->node_cap) {
        uint32_t cap = p->node_cap == 0 ? 16 : p->node_cap * 2;
        node *grown = realloc(p->nodes, (size_t)cap * sizeof *grown);
        if (grown == NULL) {
            return NO_NODE;
        }
        p->nodes = grown;
        p->node_cap = cap;
    }
    uint32_t i = p->node_count++;
    p->nodes[i] = (node){.star = NO_NODE};
    return i;
}

rb_policy *rb_policy_new(void)
{
    rb_policy *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return NULL;
    }
    p->root[0] = node_new(p);
    p->root[1] = node_new(p);
    if (p->root[1] == NO_NODE) {
        rb_policy_free(p);
        return NULL;
    }
    return p;
}

rb_policy *rb_policy_new_allow_all(void)
{
    rb_policy *p = rb_policy_new();
    if (p != NULL) {
        p->allow_all = true;
    }
    return p;
}

void rb_policy_free(rb_policy *p)
{
    if (p == NULL) {
        return;
    }
    for (uint32_t i = 0; i < p->node_count; i++) {
        free(p->nodes[i].edges);
    }
    free(p->nodes);
    free(p->bytes);
    free(p);
}

uint32_t rb_policy_pattern_count(const rb_policy *p, rb_policy_action action)
{
    RB_ASSERT(action == RB_POLICY_PUBLISH || action == RB_POLICY_SUBSCRIBE);
    return p->patterns[action][0] + p->patterns[action][1];
}

/* Orders segments by length, then bytes: cheap to compare, and a total
 * order is all binary search needs. */
static int seg_cmp(const rb_policy *p, const edge *e, const uint8_t *seg, size_t len)
{
    if (e->seg_len != len) {
        return e->seg_len < len ? -1 : 1;
    }
    return memcmp(p->bytes + e->seg_off, seg, len);
}

/* Index of the first edge not below seg; *found when it equals seg. */
static uint32_t edge_search(const rb_policy *p, const node *n, const uint8_t *seg, size_t len,
                            bool *found)
{
    uint32_t lo = 0;
    uint32_t hi = n->edge_count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = seg_cmp(p, &n->edges[mid], seg, len);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    *found = false;
    return lo;
}

static int bytes_append(rb_policy *p, const uint8_t *seg, size_t len, uint32_t *off)
{
    if (p->bytes_len + len > p->bytes_cap) {
        uint32_t cap = p->bytes_cap == 0 ? 256 : p->bytes_cap;
        while (cap < p->bytes_len + len) {
            cap *= 2;
        }
        uint8_t *grown = realloc(p->bytes, cap);
        if (grown == NULL) {
            return RB_ENOMEM;
        }
        p->bytes = grown;
        p->bytes_cap = cap;
    }
    memcpy(p->bytes + p->bytes_len, seg, len);
    *off = p->bytes_len;
    p->bytes_len += (uint32_t)len;
    return 0;
}

/* The child of node at for seg, created when missing; NO_NODE when a
 * limit or memory refused it. */
static uint32_t child_for(rb_policy *p, uint32_t at, const uint8_t *seg, size_t len)
{
    if (len == 1 && seg[0] == '*') {
        if (p->nodes[at].star == NO_NODE) {
            uint32_t c = node_new(p);
            if (c == NO_NODE) {
                return NO_NODE;
            }
            p->nodes[at].star = c;
        }
        return p->nodes[at].star;
    }
    bool found;
    uint32_t pos = edge_search(p, &p->nodes[at], seg, len, &found);
    if (found) {
        return p->nodes[at].edges[pos].child;
    }
    uint32_t off;
    uint32_t c = node_new(p);
    if (c == NO_NODE || bytes_append(p, seg, len, &off) != 0) {
        return NO_NODE;
    }
    node *n = &p->nodes[at];
    if (n->edge_count == n->edge_cap) {
        uint32_t cap = n->edge_cap == 0 ? 2 : n->edge_cap * 2;
        edge *grown = realloc(n->edges, (size_t)cap * sizeof *grown);
        if (grown == NULL) {
            return NO_NODE;
        }
        n->edges = grown;
        n->edge_cap = cap;
    }
    memmove(&n->edges[pos + 1], &n->edges[pos], (n->edge_count - pos) * sizeof n->edges[0]);
    n->edges[pos] = (edge){.seg_off = off, .seg_len = (uint8_t)len, .child = c};
    n->edge_count++;
    return c;
}

int rb_policy_add(rb_policy *p, rb_policy_action action, bool deny, rb_bytes pattern, rb_err *err)
{
    RB_ASSERT(p != NULL);
    RB_ASSERT(action == RB_POLICY_PUBLISH || action == RB_POLICY_SUBSCRIBE);
    int rc = rb_pattern_validate(pattern, err);
    if (rc != 0) {
        return rc;
    }
    if (p->patterns[action][deny] >= RB_PATTERNS_PER_LIST_MAX) {
        return rb_err_set(err, RB_ELIMIT, 0, "pattern: more than %d in one list",
                          RB_PATTERNS_PER_LIST_MAX);
    }
    /* Nodes created before a failure stay, unreachable or flagless: they
     * change no answer, so the policy is unchanged in effect. */
    uint32_t at = p->root[action];
    size_t start = 0;
    uint8_t flag = deny ? END_DENY : END_ALLOW;
    for (size_t i = 0; i <= pattern.len; i++) {
        if (i < pattern.len && pattern.ptr[i] != '.') {
            continue;
        }
        const uint8_t *seg = pattern.ptr + start;
        size_t len = i - start;
        start = i + 1;
        if (len == 1 && seg[0] == '>') {
            flag = deny ? REST_DENY : REST_ALLOW;
            break; /* validated: ">" is last */
        }
        at = child_for(p, at, seg, len);
        if (at == NO_NODE) {
            return rb_err_set(err, p->node_count >= RB_POLICY_NODES_MAX ? RB_ELIMIT : RB_ENOMEM, 0,
                              "pattern: policy above %u trie nodes or out of memory",
                              RB_POLICY_NODES_MAX);
        }
    }
    p->nodes[at].flags |= flag;
    p->patterns[action][deny]++;
    return 0;
}

/* Collects the flags of every pattern that matches topic[off..] from node
 * at; stops early once a deny is known. first is true for the topic's
 * first segment, where wildcards do not match reserved '$' names. Depth is
 * bounded by the segments of a topic (at most 128). */
static uint8_t match(const rb_policy *p, uint32_t at, rb_bytes topic, size_t off, bool first)
{
    const node *n = &p->nodes[at];
    if (off > topic.len) {
        return n->flags & (END_ALLOW | END_DENY);
    }
    size_t end = off;
    while (end < topic.len && topic.ptr[end] != '.') {
        end++;
    }
    const uint8_t *seg = topic.ptr + off;
    size_t len = end - off;
    bool wild_ok = !(first && len > 0 && seg[0] == '$');
    uint8_t got = 0;
    if (wild_ok) {
        /* ">" after this node matches the rest: one or more segments. */
        got |= (uint8_t)((n->flags & REST_ALLOW) ? END_ALLOW : 0);
        got |= (uint8_t)((n->flags & REST_DENY) ? END_DENY : 0);
        if ((got & END_DENY) != 0) {
            return got;
        }
    }
    bool found = false;
    uint32_t pos = len <= UINT8_MAX ? edge_search(p, n, seg, len, &found) : 0;
    if (found) {
        got |= match(p, n->edges[pos].child, topic, end + 1, false);
        if ((got & END_DENY) != 0) {
            return got;
        }
    }
    if (wild_ok && n->star != NO_NODE) {
        got |= match(p, n->star, topic, end + 1, false);
    }
    return got;
}

bool rb_policy_allows(const rb_policy *p, rb_policy_action action, rb_bytes topic)
{
    RB_ASSERT(p != NULL);
    RB_ASSERT(topic.len >= 1 && topic.len <= RB_TOPIC_BYTES_MAX);
    bool reserved = topic.ptr[0] == '$';
    if (action == RB_POLICY_PUBLISH && reserved) {
        return false;
    }
    if (p->allow_all) {
        return true;
    }
    uint8_t got = match(p, p->root[action], topic, 0, true);
    return (got & END_DENY) == 0 && (got & END_ALLOW) != 0;
}

bool rb_policy_allows_mutate(const rb_policy *p, const rb_frame *f, rb_bytes *denied)
{
    RB_ASSERT(f->hdr.kind == RB_FRAME_MUTATE);
    rb_frame_iter it;
    rb_mutate_add add;
    rb_frame_iter_init(&it, f->u.mutate.adds, f->u.mutate.add_count);
    while (rb_frame_next_add(&it, &add)) {
        if (!rb_policy_allows(p, RB_POLICY_SUBSCRIBE, add.topic)) {
            *denied = add.topic;
            return false;
        }
    }
    return true;
}
