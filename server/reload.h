/* Hot reload: which settings of a re-read configuration the running daemon
 * applies, and the hand-over of a new configuration to every shard
 * (server/reload.c). Only the main thread calls these, except
 * rb_reload_on_shard (server.h), which runs on each shard. */
#ifndef RB_SERVER_RELOAD_H
#define RB_SERVER_RELOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "config/config.h"
#include "server/server.h"

/* How long the main thread waits for every shard to switch before it
 * gives up freeing the previous configuration (it is then kept). */
#define RB_RELOAD_SWITCH_MS_MAX 5000

/* Compares fresh (the file just read) with cur (what the daemon runs):
 * each changed setting that needs a restart is logged by name ("reload:
 * storage.backend changed; restart to apply") and put back to its cur
 * value in fresh; boot is the start configuration (the bound of settings
 * that may only go down). Users and keys change live when auth_live (the
 * caller builds their verifier), else they are kept and logged. Listeners
 * are left to the caller. Returns the
 * number of settings that change live (each logged). */
uint32_t rb_reload_diff(const rb_config *boot, const rb_config *cur, rb_config *fresh,
                        bool auth_live);
/* True when [[auth.user]] or [[auth.jwt_key]] differ between cur and fresh
 * (names, hashes, rates, permissions, kids, algorithms, key paths). */
bool rb_reload_auth_changed(const rb_config *cur, const rb_config *fresh);

/* A generation: a configuration every shard switches to. New ones are
 * zeroed; NULL when out of memory. Freed by the caller once rb_reload_wait
 * says every shard runs a newer one. */
rb_reload_gen *rb_reload_gen_new(void);
rb_config *rb_reload_gen_config(rb_reload_gen *g);
/* The listener slots the acceptor shard runs with g: [0, listener_count),
 * of which retired (slot indexes) stop accepting now. */
void rb_reload_gen_listeners(rb_reload_gen *g, uint32_t listener_count, const uint32_t *retired,
                             uint32_t retired_count);
/* The verifier every shard switches to with g (not owned), or none. */
void rb_reload_gen_auth(rb_reload_gen *g, const rb_auth *auth);
void rb_reload_gen_free(rb_reload_gen *g);

/* Sends g to every shard (MSG_RING from a ring of the main thread's own).
 * Returns 0, or an error when a shard could not be reached (those sent
 * still switch). */
int rb_reload_hand_over(rb_server *srv, rb_reload_gen *g, rb_err *err);
/* Frees the main thread's ring (at exit, after the shards are joined). */
void rb_reload_deinit(void);
/* Waits until every shard runs g, at most timeout_ms; false on timeout. */
bool rb_reload_wait(rb_server *srv, rb_reload_gen *g, uint32_t timeout_ms);

#endif
