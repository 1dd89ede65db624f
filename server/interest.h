/* Interest records (DESIGN §2 "Catch-up then live"): what a stream's shard
 * tells a topic's owner. SUB when the shard's first local subscriber of the
 * topic appears (the owner starts fanning out to it and replies with its
 * head), UNSUB when the last one goes, QUERY for a head reply alone.
 * Replies come back as RB_XK_HEAD records naming the connection and token.
 * Streams write these records; the owner reads them; neither calls the
 * other. */
#ifndef RB_SERVER_INTEREST_H
#define RB_SERVER_INTEREST_H

#include <stdint.h>

typedef struct rb_shard rb_shard;
typedef struct rb_conn rb_conn;

enum {
    RB_INTEREST_SUB = 1,
    RB_INTEREST_UNSUB = 2,
    RB_INTEREST_QUERY = 3
};

/* Record: op, conn index, conn gen, token, topic len, topic. */
#define RB_INTEREST_REC_FIXED (1 + 4 + 4 + 8 + 1)

/* Queues an interest record of c (NULL for UNSUB) for the owner of topic.
 * Returns 0 or RB_ELIMIT when no envelope could be had. */
int rb_interest_send(rb_shard *sh, uint8_t op, const rb_conn *c, uint64_t token,
                     const uint8_t *topic, uint8_t topic_len);

#endif
