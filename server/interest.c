/* Interest records; see interest.h. */
#include "server/interest.h"

#include "server/server.h"

int rb_interest_send(rb_shard *sh, uint8_t op, const rb_conn *c, uint64_t token,
                     const uint8_t *topic, uint8_t topic_len)
{
    uint32_t to = rb_topic_owner_shard(sh->server, topic, topic_len);
    size_t len = RB_INTEREST_REC_FIXED + topic_len;
    uint8_t *p = rb_mailbox_reserve(&sh->mail, to, RB_XK_INTEREST, len);
    if (p == NULL) {
        return RB_ELIMIT;
    }
    uint32_t idx = c != NULL ? c->index : 0;
    uint32_t gen = c != NULL ? c->gen : 0;
    p = rb_rec_put(p, &op, 1);
    p = rb_rec_put(p, &idx, 4);
    p = rb_rec_put(p, &gen, 4);
    p = rb_rec_put(p, &token, 8);
    p = rb_rec_put(p, &topic_len, 1);
    rb_rec_put(p, topic, topic_len);
    rb_mailbox_commit(&sh->mail, to, len);
    return 0;
}
