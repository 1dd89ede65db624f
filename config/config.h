/* The daemon's configuration: a TOML file (config/toml.c parses it) turned
 * into an immutable, validated rb_config. Every key has a type, a default
 * and a range (config/ringbusd.example.toml documents them all). Errors name
 * the file, line and column and the key: "ringbusd.toml:7:12: limits.
 * max_frame_bytes: 0 is out of range [4096, 67108864]". This module does no
 * I/O beyond reading the file and allocates nothing that outlives a call:
 * rb_config is a plain value. */
#ifndef RB_CONFIG_CONFIG_H
#define RB_CONFIG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "common/limits.h"

typedef enum rb_transport_kind {
    RB_TRANSPORT_TCP = 0,
    RB_TRANSPORT_TLS = 1,
    RB_TRANSPORT_WS = 2,
    RB_TRANSPORT_WSS = 3,
    RB_TRANSPORT_QUIC = 4,
} rb_transport_kind;

typedef enum rb_storage_backend {
    RB_STORAGE_MEMORY = 0,
    RB_STORAGE_POSTGRES = 1,
} rb_storage_backend;

/* Origins a WS listener accepts; none listed means any. */
#define RB_WS_ORIGINS_MAX 16

typedef struct rb_listener_config {
    rb_transport_kind transport;        /* transport = "tcp" | "tls" | "ws" | "wss" | "quic" */
    char address[RB_ADDRESS_BYTES_MAX]; /* address = "127.0.0.1" (IPv4 or IPv6 literal) */
    uint16_t port;                      /* port; default per transport: 7400..7404 */
    /* tls, wss, quic */
    char cert[RB_PATH_BYTES_MAX];      /* cert = PEM file (chain allowed); required for TLS */
    char key[RB_PATH_BYTES_MAX];       /* key = PEM file; required for TLS */
    char client_ca[RB_PATH_BYTES_MAX]; /* client_ca = PEM file; empty = no client certs */
    /* ws, wss */
    char path[RB_ADDRESS_BYTES_MAX]; /* path = "/ringbus" */
    uint32_t origin_count;
    char origins[RB_WS_ORIGINS_MAX][RB_ADDRESS_BYTES_MAX]; /* origins = ["https://a"] */
} rb_listener_config;

typedef struct rb_config {
    /* top level */
    uint32_t shards;                        /* shards; default = online CPUs (>= 1) */
    bool pin_shards;                        /* pin_shards = false */
    char log_level[16];                     /* log_level = "info" */
    char server_id[RB_SERVER_ID_BYTES_MAX]; /* server_id; default = hostname */

    /* [limits] */
    uint32_t max_connections;      /* per shard, default RB_CONNS_PER_SHARD_DEFAULT */
    uint32_t max_frame_bytes;      /* default 1 MiB, range [4096, 64 MiB] */
    uint64_t send_queue_bytes;     /* default 8 MiB, >= max_frame_bytes */
    uint64_t pending_buffer_bytes; /* default 64 MiB, >= max_frame_bytes */
    uint32_t topics_per_stream;    /* default 100000 */
    uint32_t shard_queue_slots;    /* per shard pair, a power of two, default 4096 */
    uint32_t shard_envelopes;      /* 64 KiB envelopes per shard, default 4096 */

    /* [timeouts], milliseconds, each in [1, RB_DURATION_MS_MAX] */
    uint32_t keepalive_ms;         /* default 30000 */
    uint32_t pong_timeout_ms;      /* default 30000 */
    uint32_t handshake_timeout_ms; /* default 10000 */
    uint32_t close_grace_ms;       /* default 2000 */

    /* [catchup] */
    uint32_t catchup_topics_per_query;  /* topics_per_query = 256 */
    uint32_t catchup_rows_per_topic;    /* rows_per_topic = 64 */
    uint32_t catchup_queries_in_flight; /* queries_in_flight = 4 (per shard) */

    /* [storage] */
    rb_storage_backend storage_backend; /* backend = "memory" | "postgres" */
    /* [storage.memory] */
    uint64_t memory_retention_messages; /* retention_messages = 100000 (per topic) */
    uint64_t memory_retention_bytes;    /* retention_bytes = 64 MiB (per topic) */
    /* [storage.postgres] */
    char pg_conninfo[RB_PATH_BYTES_MAX];      /* conninfo = "" (libpq string; required) */
    char pg_password_file[RB_PATH_BYTES_MAX]; /* password_file = "" */
    uint32_t pg_pool_size;                    /* pool_size = 2 (per shard) */
    uint32_t pg_statement_timeout_ms;         /* statement_timeout_ms = 5000 */
    uint32_t pg_batch_messages;               /* batch_messages = 1024 */
    uint64_t pg_retention_messages;           /* retention_messages = 0 (keep all) */
    uint64_t pg_retention_age_s;              /* retention_age_s = 0 (keep all) */

    /* [[listener]]; when the file declares none, one tcp listener on
     * 127.0.0.1:7400 is used. */
    uint32_t listener_count;
    rb_listener_config listeners[RB_LISTENERS_MAX];
} rb_config;

/* Fills *cfg with the embedded default: memory store, one tcp listener on
 * 127.0.0.1:7400, shards = online CPUs, every limit at its default. */
void rb_config_defaults(rb_config *cfg);

/* Parses and validates TOML text named `name` (used in messages). On error
 * returns RB_ECONFIG with err->msg = "name:line:column: message"; *cfg is
 * then unspecified. */
int rb_config_load_string(const char *text, size_t len, const char *name, rb_config *cfg,
                          rb_err *err);

/* Reads the file at path (at most RB_CONFIG_FILE_BYTES_MAX) and loads it as
 * above; an unreadable file is RB_ESYS naming the path. */
int rb_config_load_file(const char *path, rb_config *cfg, rb_err *err);

/* "tcp", "tls", "ws", "wss", "quic". */
const char *rb_transport_name(rb_transport_kind kind);

#endif
