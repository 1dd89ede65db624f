/* Per-address connection limits (issue 13; docs/OPERATIONS.md, Security):
 * the checks a connection passes before any byte is read, and its release
 * when it is freed, over the address table of server/limiter.c behind the
 * server's addr_lock. The acceptor (which builds the table), the TCP link
 * (which admits) and the session (which releases and counts failed
 * sign-ins) call these; they call none of them back. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "common/log.h"
#include "server/server.h"

static void addr_text(const rb_addr_key *key, char *out, size_t cap)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    bool v4 = memcmp(key->bytes, mapped, sizeof mapped) == 0;
    if (inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? key->bytes + 12 : key->bytes, out,
                  (socklen_t)cap) == NULL) {
        snprintf(out, cap, "?");
    }
}

rb_admit rb_addr_check(rb_shard *sh, int fd, const rb_listener *l, rb_addr_key *key)
{
    rb_server *srv = sh->server;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (srv->addrs == NULL || getpeername(fd, (struct sockaddr *)&ss, &len) != 0 ||
        !rb_addr_key_of((const struct sockaddr *)&ss, len, key)) {
        return RB_ADMIT_OK; /* unix sockets, tests without listeners: nothing to count */
    }
    rb_listener *counted = &srv->listeners[l->index];
    uint64_t now = rb_loop_now_ms(sh->loop);
    rb_admit a = RB_ADMIT_TOTAL;
    pthread_mutex_lock(&srv->addr_lock);
    if (atomic_load(&counted->conns) >= l->cfg.max_connections) {
        a = RB_ADMIT_LISTENER;
    } else if (atomic_load(&srv->conns_counted) < sh->cfg->max_connections_total) {
        a = rb_addr_admit(srv->addrs, key, now);
    }
    if (a == RB_ADMIT_OK) {
        atomic_fetch_add(&srv->conns_counted, 1);
        atomic_fetch_add(&counted->conns, 1);
        pthread_mutex_unlock(&srv->addr_lock);
        return a;
    }
    bool log = srv->addr_logged_ms == 0 || now - srv->addr_logged_ms >= 1000;
    uint64_t before = srv->addr_unlogged;
    if (log) {
        srv->addr_logged_ms = now;
        srv->addr_unlogged = 0;
    } else {
        srv->addr_unlogged++;
    }
    pthread_mutex_unlock(&srv->addr_lock);
    if (log) {
        char who[INET6_ADDRSTRLEN];
        addr_text(key, who, sizeof who);
        RB_LOG_WARN(0,
                    "connection from %s to %s:%u refused: %s (%llu more refused since the last "
                    "line)",
                    who, l->cfg.address, l->cfg.port, rb_admit_name(a), (unsigned long long)before);
    }
    return a;
}

void rb_conn_addr_counted(rb_conn *c, const rb_listener *l, const rb_addr_key *key)
{
    if (c->shard->server->addrs != NULL) {
        c->addr_key = *key;
        c->addr_listener = l->index;
        c->addr_counted = true;
    }
}

void rb_conn_addr_release(rb_conn *c)
{
    /* At teardown (one thread, after the shards) the table may be gone. */
    rb_server *srv = c->shard->server;
    if (c->addr_counted && srv->addrs != NULL) {
        c->addr_counted = false;
        pthread_mutex_lock(&srv->addr_lock);
        rb_addr_release(srv->addrs, &c->addr_key);
        atomic_fetch_sub(&srv->conns_counted, 1);
        atomic_fetch_sub(&srv->listeners[c->addr_listener].conns, 1);
        pthread_mutex_unlock(&srv->addr_lock);
    }
}

void rb_conn_addr_failure(rb_conn *c)
{
    rb_server *srv = c->shard->server;
    if (c->addr_counted && srv->addrs != NULL) {
        pthread_mutex_lock(&srv->addr_lock);
        (void)rb_addr_failure(srv->addrs, &c->addr_key, rb_loop_now_ms(c->shard->loop));
        pthread_mutex_unlock(&srv->addr_lock);
    }
}
