/* libFuzzer target for the introspection routes' peer input
 * (server/connz.c): the query strings of GET /v1/connz and /v1/topicz, and
 * the peer-chosen text a connection slot holds (identity, client name,
 * topic names), which the answers escape into JSON.
 *
 * The input up to its first '\n' is the query; the bytes after it become
 * one open connection's client name, identity and topic list (and a
 * topic's name). Both routes answer on a one-shard server whose slots hold
 * that connection and two plain ones. A 200 answer must be JSON that
 * libjansson's strict parser accepts; a 400 answer must be one line of
 * printable ASCII (the peer's bytes quoted as \xHH). Any other outcome
 * traps (or trips ASan/UBSan).
 *
 * Build and run with `make fuzz T=connz` (clang 14 with libFuzzer);
 * `make test` replays tests/fuzz/corpus/connz through the same target. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/connz.h"
#include "server/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

#define CONNS 3

static rb_server srv;
static rb_shard shard;
static rb_connz_slot slots[CONNS];
static rb_topicz_slot topics[2];
static char out[RB_ADMIN_BODY_BYTES_MAX];

/* Text at byte offset off of a slot's text, cut to cap - 1 bytes. */
static void text_at(rb_connz_slot *z, size_t off, size_t cap, const uint8_t *p, size_t len)
{
    char *t = (char *)z->text + off;
    memset(t, 0, cap);
    memcpy(t, p, len < cap ? len : cap - 1);
}

static void setup(const uint8_t *peer, size_t len)
{
    memset(&srv, 0, sizeof srv);
    memset(&shard, 0, sizeof shard);
    memset(slots, 0, sizeof slots);
    memset(topics, 0, sizeof topics);
    strcpy(srv.cfg.server_id, "fuzz");
    srv.shard_count = 1;
    srv.shards = &shard;
    shard.server = &srv;
    shard.conn_max = CONNS;
    shard.connz = slots;
    shard.topicz.slots = topics;
    shard.topicz.count = 2;
    for (uint32_t i = 0; i < CONNS; i++) {
        rb_connz_slot *z = &slots[i];
        z->id = i + 1;
        z->state = RB_CONN_OPEN;
        z->transport = i % RB_TRANSPORT_KINDS;
        z->bytes_in = 100u * i;
        z->msgs_out = 7u * (CONNS - i);
        z->topics = i;
        text_at(z, 0, RB_CONNZ_PEER_BYTES_MAX, (const uint8_t *)"127.0.0.1:1", 11);
    }
    /* The peer's bytes as the last connection's strings. */
    rb_connz_slot *z = &slots[CONNS - 1];
    size_t off = RB_CONNZ_PEER_BYTES_MAX;
    text_at(z, off, RB_CONNZ_WHO_BYTES_MAX, peer, len);
    off += RB_CONNZ_WHO_BYTES_MAX;
    text_at(z, off, RB_CONNZ_NAME_BYTES_MAX, peer, len);
    off += RB_CONNZ_NAME_BYTES_MAX;
    text_at(z, off, RB_CONNZ_TOPICS_TEXT_BYTES_MAX, peer, len);
    z->topics_more = len >= RB_CONNZ_TOPICS_TEXT_BYTES_MAX;
    size_t tlen = len < RB_TOPIC_BYTES_MAX ? len : RB_TOPIC_BYTES_MAX;
    memcpy(topics[0].name, peer, tlen);
    topics[0].name_len = tlen;
    memcpy(topics[1].name, "plain", 5);
    topics[1].name_len = 5;
    topics[1].head = 9;
}

static void check(int status, size_t len)
{
    CHECK(len <= sizeof out);
    if (status == 200) {
        json_error_t jerr;
        json_t *j = json_loadb(out, len, JSON_ALLOW_NUL, &jerr);
        CHECK(j != NULL);
        json_decref(j);
        return;
    }
    CHECK(status == 400);
    CHECK(len > 0);
    for (size_t i = 0; i < len; i++) {
        CHECK(out[i] >= 0x20 && out[i] < 0x7f);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t qlen = nl != NULL ? (size_t)(nl - data) : size;
    const uint8_t *rest = nl != NULL ? nl + 1 : data + size;
    setup(rest, (size_t)(data + size - rest));
    rb_http_span q = {(const char *)data, qlen};
    size_t len = 0;
    int status = rb_connz_answer(&srv, q, out, sizeof out, &len);
    check(status, len);
    status = rb_topicz_answer(&srv, q, out, sizeof out, &len);
    check(status, len);
    return 0;
}
