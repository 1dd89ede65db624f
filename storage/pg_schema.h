/* The postgres schema owned by the daemon: versioned migrations and the
 * blocking code that applies them. Blocking libpq calls are fine here: this
 * runs only on the main thread (--migrate-only) or on the backend's
 * bootstrap thread, never on a shard thread. */
#ifndef RB_STORAGE_PG_SCHEMA_H
#define RB_STORAGE_PG_SCHEMA_H

#include <stdint.h>

#include "common/err.h"
#include "storage/pgwire.h"

/* Connects with params and, inside one transaction that holds an advisory
 * lock (so two daemons starting at once apply each migration once), applies
 * every migration newer than the database's version. *version_out is the
 * version afterwards, *applied_out how many were applied now, *epoch_out
 * the database's epoch (nonzero, created once by a migration). A database
 * newer than this binary is an error (RB_EUNSUPPORTED); Postgres unreachable
 * or failing is RB_ESTORAGE. */
int rb_pg_schema_migrate(const rb_pgwire_params *params, uint32_t *version_out,
                         uint32_t *applied_out, uint64_t *epoch_out, rb_err *err);

/* The newest schema version this binary has. */
uint32_t rb_pg_schema_latest(void);

#endif
