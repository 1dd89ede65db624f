/* Topic classes, content dedup and block origins; see ephemeral.h. */
#include "server/ephemeral.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <xxhash.h>

#include "common/assert.h"
#include "common/log.h"
#include "server/policy.h"
#include "server/server.h"

typedef struct dedup_slot {
    uint64_t key; /* 0 = empty */
    uint64_t expires_ms;
    uint64_t seq;
} dedup_slot;

struct rb_eph {
    uint32_t class_count;
    rb_policy *tries[RB_TOPIC_CLASSES_MAX];
    rb_topic_class classes[RB_TOPIC_CLASSES_MAX];
    rb_topic_class stored; /* the default class */
    dedup_slot *slots;     /* [RB_EPH_DEDUP_SLOTS], NULL without any dedup window */
    uint64_t seed;
};

_Static_assert((RB_EPH_DEDUP_SLOTS & (RB_EPH_DEDUP_SLOTS - 1)) == 0, "a power of two");

static bool any_content_dedup(const rb_config *cfg)
{
    for (uint32_t i = 0; i < cfg->topic_class_count; i++) {
        const rb_topic_class_config *c = &cfg->topic_classes[i];
        if (c->storage == RB_TOPIC_EPHEMERAL && c->dedup_window_ms > 0) {
            return true;
        }
    }
    return false;
}

static int eph_init(rb_shard *sh, rb_err *err)
{
    const rb_config *cfg = &sh->server->cfg;
    struct rb_eph *e = calloc(1, sizeof *e);
    if (e == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "shard %u: topic classes", sh->id);
    }
    sh->eph = e;
    e->stored = (rb_topic_class){.echo = true};
    for (uint32_t i = 0; i < cfg->topic_class_count; i++) {
        const rb_topic_class_config *c = &cfg->topic_classes[i];
        e->tries[i] = rb_policy_new();
        if (e->tries[i] == NULL) {
            return rb_err_set(err, RB_ENOMEM, 0, "shard %u: topic class %u", sh->id, i + 1);
        }
        e->class_count = i + 1;
        rb_bytes pattern = {(const uint8_t *)c->pattern, strlen(c->pattern)};
        int rc = rb_policy_add(e->tries[i], RB_POLICY_SUBSCRIBE, false, pattern, err);
        if (rc != 0) {
            return rc; /* validated on load: only memory can refuse */
        }
        e->classes[i] = (rb_topic_class){
            .index = i + 1,
            .ephemeral = c->storage == RB_TOPIC_EPHEMERAL,
            .echo = c->echo,
            .dedup_window_ms = c->dedup_window_ms,
            .max_message_bytes = c->max_message_bytes,
        };
    }
    if (any_content_dedup(cfg)) {
        e->slots = calloc(RB_EPH_DEDUP_SLOTS, sizeof *e->slots);
        if (e->slots == NULL) {
            return rb_err_set(err, RB_ENOMEM, 0, "shard %u: content dedup table", sh->id);
        }
        /* Payloads are chosen by clients: a per-process seed keeps them
         * from aiming at one probe window. */
        if (getrandom(&e->seed, sizeof e->seed, 0) != (ssize_t)sizeof e->seed) {
            e->seed = (uint64_t)(uintptr_t)e ^ rb_loop_now_ms(sh->loop);
        }
    }
    return 0;
}

static void eph_deinit(rb_shard *sh)
{
    struct rb_eph *e = sh->eph;
    if (e == NULL) {
        return;
    }
    for (uint32_t i = 0; i < e->class_count; i++) {
        rb_policy_free(e->tries[i]);
    }
    free(e->slots);
    free(e);
    sh->eph = NULL;
}

/* The class tries (bounded by RB_TOPIC_CLASSES_MAX patterns of at most 128
 * segments) and the dedup table. */
static uint64_t eph_memory_bytes(const rb_config *cfg)
{
    uint64_t tries = (uint64_t)cfg->topic_class_count * (RB_TOPIC_BYTES_MAX + 128 * 64);
    uint64_t table = any_content_dedup(cfg) ? RB_EPH_DEDUP_SLOTS * sizeof(dedup_slot) : 0;
    return sizeof(struct rb_eph) + tries + table;
}

const rb_subsystem rb_ephemeral_subsystem = {
    .name = "topic classes",
    .init = eph_init,
    .deinit = eph_deinit,
    .memory_bytes = eph_memory_bytes,
};

const rb_topic_class *rb_topic_class_of(const rb_shard *sh, rb_bytes topic)
{
    const struct rb_eph *e = sh->eph;
    RB_ASSERT(e != NULL);
    for (uint32_t i = 0; i < e->class_count; i++) {
        if (rb_policy_allows(e->tries[i], RB_POLICY_SUBSCRIBE, topic)) {
            return &e->classes[i];
        }
    }
    return &e->stored;
}

uint64_t rb_eph_seq_base(void)
{
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    RB_ASSERT(rc == 0);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    return ms << RB_EPH_SEQ_BASE_SHIFT;
}

/* ---- content dedup ---- */

static uint64_t dedup_key(const struct rb_eph *e, uint64_t topic_hash, rb_bytes payload)
{
    uint64_t k = XXH3_64bits_withSeed(payload.ptr, payload.len, e->seed ^ topic_hash);
    return k != 0 ? k : 1;
}

uint64_t rb_eph_dedup_find(rb_shard *sh, uint64_t topic_hash, rb_bytes payload, uint32_t window_ms)
{
    struct rb_eph *e = sh->eph;
    if (e->slots == NULL || window_ms == 0) {
        return 0;
    }
    uint64_t key = dedup_key(e, topic_hash, payload);
    uint64_t now = rb_loop_now_ms(sh->loop);
    for (uint32_t i = 0; i < RB_EPH_DEDUP_PROBES; i++) {
        const dedup_slot *s = &e->slots[(key + i) & (RB_EPH_DEDUP_SLOTS - 1)];
        if (s->key == key && s->expires_ms > now) {
            return s->seq;
        }
    }
    return 0;
}

void rb_eph_dedup_put(rb_shard *sh, uint64_t topic_hash, rb_bytes payload, uint64_t seq,
                      uint32_t window_ms)
{
    struct rb_eph *e = sh->eph;
    RB_ASSERT(seq > 0);
    if (e->slots == NULL || window_ms == 0) {
        return;
    }
    uint64_t key = dedup_key(e, topic_hash, payload);
    uint64_t now = rb_loop_now_ms(sh->loop);
    dedup_slot *victim = NULL;
    for (uint32_t i = 0; i < RB_EPH_DEDUP_PROBES; i++) {
        dedup_slot *s = &e->slots[(key + i) & (RB_EPH_DEDUP_SLOTS - 1)];
        if (s->key == 0 || s->key == key || s->expires_ms <= now) {
            victim = s;
            break;
        }
        if (victim == NULL || s->expires_ms < victim->expires_ms) {
            victim = s;
        }
    }
    *victim = (dedup_slot){.key = key, .expires_ms = now + window_ms, .seq = seq};
}

/* ---- origins of echo = false blocks ---- */

void rb_eph_origin_put(rb_block *b, uint32_t i, uint16_t shard, uint32_t conn_index,
                       uint32_t conn_gen)
{
    RB_ASSERT(i < b->count);
    RB_ASSERT(b->bytes + (size_t)b->count * RB_EPH_ORIGIN_BYTES <= b->cap);
    uint8_t *p = b->data + b->bytes + (size_t)i * RB_EPH_ORIGIN_BYTES;
    memcpy(p, &shard, 2);
    memcpy(p + 2, &conn_index, 4);
    memcpy(p + 6, &conn_gen, 4);
}

bool rb_eph_origin_is(const rb_block *b, uint32_t i, uint16_t shard, uint32_t conn_index,
                      uint32_t conn_gen)
{
    RB_ASSERT(i < b->count);
    const uint8_t *p = b->data + b->bytes + (size_t)i * RB_EPH_ORIGIN_BYTES;
    uint16_t s;
    uint32_t idx;
    uint32_t gen;
    memcpy(&s, p, 2);
    memcpy(&idx, p + 2, 4);
    memcpy(&gen, p + 6, 4);
    return s == shard && idx == conn_index && gen == conn_gen;
}
