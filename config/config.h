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
#include "common/frame.h"
#include "common/limits.h"

typedef enum rb_transport_kind {
    RB_TRANSPORT_TCP = 0,
    RB_TRANSPORT_TLS = 1,
    RB_TRANSPORT_WS = 2,
    RB_TRANSPORT_WSS = 3,
    RB_TRANSPORT_QUIC = 4,
    RB_TRANSPORT_HTTP = 5, /* the HTTP/1.1 admin routes only (/healthz, /metrics, ...) */
} rb_transport_kind;

#define RB_TRANSPORT_KINDS 6

/* The library a tls or wss listener terminates TLS with. */
typedef enum rb_tls_library {
    RB_TLS_LIBRARY_OPENSSL = 0, /* OpenSSL 3: assembly AES-GCM and ChaCha20 (the default) */
    RB_TLS_LIBRARY_WOLFSSL = 1,
} rb_tls_library;

typedef enum rb_storage_backend {
    RB_STORAGE_MEMORY = 0,
    RB_STORAGE_POSTGRES = 1,
} rb_storage_backend;

typedef enum rb_auth_mode {
    RB_AUTH_MODE_NONE = 0,     /* no credentials needed (the embedded default) */
    RB_AUTH_MODE_REQUIRED = 1, /* every connection signs in */
} rb_auth_mode;

typedef enum rb_jwt_alg {
    RB_JWT_HS256 = 0,
    RB_JWT_RS256 = 1,
    RB_JWT_ES256 = 2,
} rb_jwt_alg;

/* The four permission lists of a user, in rb_auth_user_config.lists. */
typedef enum rb_perm_list {
    RB_PERM_PUBLISH = 0,
    RB_PERM_SUBSCRIBE = 1,
    RB_PERM_PUBLISH_DENY = 2,
    RB_PERM_SUBSCRIBE_DENY = 3,
    RB_PERM_LISTS = 4,
} rb_perm_list;

/* Users and JWT keys a config may declare; users beyond a few hundred
 * belong in tokens, which need no config entry. */
#define RB_AUTH_USERS_MAX    1024
#define RB_AUTH_JWT_KEYS_MAX 16
/* Permission patterns of all users together, and their bytes. */
#define RB_AUTH_PATTERNS_MAX      16384
#define RB_AUTH_PATTERN_BYTES_MAX (512u * 1024u)
/* An argon2id hash string in PHC form ($argon2id$v=19$m=..,t=..,p=..$salt$hash). */
#define RB_AUTH_HASH_BYTES_MAX 256
/* A JWT header's kid. */
#define RB_AUTH_KID_BYTES_MAX 128
/* "file:line:column: key" of a config entry, kept for errors found after
 * load (a key file that does not parse). */
#define RB_CONFIG_WHERE_BYTES_MAX 320

typedef struct rb_pattern_range {
    uint32_t first; /* index into rb_config.auth_patterns */
    uint32_t count;
} rb_pattern_range;

typedef struct rb_auth_user_config {
    char name[RB_AUTH_USER_BYTES_MAX + 1];      /* name = "alice" */
    char password_hash[RB_AUTH_HASH_BYTES_MAX]; /* password_hash = "$argon2id$..." */
    uint32_t publish_rate;                      /* publish_rate; 0 = limits.publish_rate */
    rb_pattern_range lists[RB_PERM_LISTS];      /* publish, subscribe, publish_deny, ... */
    char where[RB_CONFIG_WHERE_BYTES_MAX];      /* "file:line:col" of the entry */
} rb_auth_user_config;

typedef struct rb_jwt_key_config {
    char kid[RB_AUTH_KID_BYTES_MAX + 1];   /* kid = "k1"; empty = matches tokens without kid */
    rb_jwt_alg algorithm;                  /* algorithm = "HS256" | "RS256" | "ES256" */
    char path[RB_PATH_BYTES_MAX];          /* secret_file (HS256) or public_key_file */
    char where[RB_CONFIG_WHERE_BYTES_MAX]; /* "file:line:col: auth.jwt_key[N].secret_file" */
} rb_jwt_key_config;

/* One permission pattern of rb_config.auth_patterns. */
typedef struct rb_pattern_ref {
    uint32_t off; /* into rb_config.auth_pattern_bytes */
    uint8_t len;
} rb_pattern_ref;

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
    rb_tls_library tls_library;        /* tls_library = "openssl" | "wolfssl" (tls, wss) */
    /* ws, wss */
    char path[RB_ADDRESS_BYTES_MAX]; /* path = "/ringbus" */
    uint32_t origin_count;
    char origins[RB_WS_ORIGINS_MAX][RB_ADDRESS_BYTES_MAX]; /* origins = ["https://a"] */
    uint32_t max_connections; /* max_connections; default limits.max_connections_total */
    /* quic */
    bool quic_retry; /* quic_retry = false: validate addresses with Retry first */
} rb_listener_config;

/* One [[cluster.peer]]: another node of the mesh. */
typedef struct rb_peer_config {
    uint16_t id;                        /* id = 2 (1..RB_CLUSTER_NODE_ID_MAX) */
    char address[RB_ADDRESS_BYTES_MAX]; /* address = "10.0.0.2" (IPv4 or IPv6 literal) */
    uint16_t port;                      /* port = 7410 */
} rb_peer_config;

/* Topic classes ([[topic_class]]): per-pattern storage and delivery rules,
 * matched in file order (the first class whose pattern matches a topic is
 * its class; a topic no class matches is stored with the global rules). */
#define RB_TOPIC_CLASSES_MAX 64

typedef enum rb_topic_storage {
    RB_TOPIC_STORED = 0,    /* storage = "stored": the configured store (the default) */
    RB_TOPIC_EPHEMERAL = 1, /* storage = "none": fan-out only, never stored */
} rb_topic_storage;

typedef struct rb_topic_class_config {
    char pattern[RB_TOPIC_BYTES_MAX + 1]; /* pattern = "cursor.>" (common/pattern.h), required */
    rb_topic_storage storage;             /* storage = "stored" | "none" */
    /* dedup_window_ms: storage "none": repeated payloads within the window
     * are not delivered again (0 = off, the default); "stored": the
     * idempotency-key window of its topics (0 = [dedup] window_ms). */
    uint32_t dedup_window_ms;
    uint32_t max_message_bytes;            /* payload limit; 0 = what max_frame_bytes allows */
    bool echo;                             /* echo = true: publishers receive their own */
    char where[RB_CONFIG_WHERE_BYTES_MAX]; /* "file:line:col: topic_class[N]" */
} rb_topic_class_config;

typedef struct rb_config {
    /* top level */
    uint32_t shards;                            /* shards; default = online CPUs (>= 1) */
    bool pin_shards;                            /* pin_shards = false */
    char log_level[16];                         /* log_level = "info" */
    char log_format[16];                        /* log_format = "text" (logfmt, json) */
    char server_id[RB_SERVER_ID_BYTES_MAX + 1]; /* server_id; default = hostname */

    /* [limits] */
    uint32_t max_connections;             /* per shard, default RB_CONNS_PER_SHARD_DEFAULT */
    uint32_t max_frame_bytes;             /* default 1 MiB, range [4096, 64 MiB] */
    uint64_t send_queue_bytes;            /* default 8 MiB, >= max_frame_bytes */
    uint64_t pending_buffer_bytes;        /* default 64 MiB, >= max_frame_bytes */
    uint32_t topics_per_stream;           /* default 100000 */
    uint32_t rpc_calls_per_connection;    /* RPC calls in flight as a caller, default 256 */
    uint32_t rpc_serves_per_connection;   /* requests in flight to a responder, default 256 */
    uint32_t rpc_methods_per_connection;  /* methods a connection registers, default 64 */
    uint32_t max_connections_total;       /* all shards and listeners, default 65536 */
    uint32_t max_connections_per_address; /* default 1024 */
    uint32_t connection_rate_per_address; /* new connections per second, default 100 */
    uint32_t publish_rate;                /* publishes per second per connection, default 100000 */
    uint32_t publish_burst;               /* token bucket depth, default = publish_rate */
    uint32_t mutates_per_second;          /* per connection, default 1000 */
    uint32_t shard_queue_slots;           /* per shard pair, a power of two, default 4096 */
    uint32_t shard_envelopes;             /* 64 KiB envelopes per shard, default 4096 */
    uint64_t shard_block_bytes;           /* fan-out blocks per shard, default 512 MiB */
    uint32_t shard_block_envelopes;       /* envelopes of one block each, default 65536 */

    /* [auth] */
    rb_auth_mode auth_mode;            /* mode = "none" | "required" */
    uint32_t auth_failure_delay_ms;    /* failure_delay_ms = 1000 */
    uint32_t auth_failures_per_minute; /* failures_per_minute = 30 (per source address) */
    uint32_t auth_clock_skew_s;        /* clock_skew_s = 30 (exp/nbf leeway), <= 300 */
    uint32_t auth_workers;             /* workers = 2 (password hashing threads) */
    uint32_t auth_user_count;          /* [[auth.user]] */
    rb_auth_user_config auth_users[RB_AUTH_USERS_MAX];
    uint32_t auth_jwt_key_count; /* [[auth.jwt_key]] */
    rb_jwt_key_config auth_jwt_keys[RB_AUTH_JWT_KEYS_MAX];
    uint32_t auth_pattern_count;
    rb_pattern_ref auth_patterns[RB_AUTH_PATTERNS_MAX];
    uint32_t auth_pattern_bytes_len;
    char auth_pattern_bytes[RB_AUTH_PATTERN_BYTES_MAX];

    /* [timeouts], milliseconds, each in [1, RB_DURATION_MS_MAX] */
    uint32_t keepalive_ms;         /* default 30000 */
    uint32_t pong_timeout_ms;      /* default 30000 */
    uint32_t handshake_timeout_ms; /* default 10000 */
    uint32_t close_grace_ms;       /* default 2000 */
    uint32_t shutdown_grace_ms;    /* default 10000, at most RB_SHUTDOWN_MS_MAX */
    uint32_t reconnect_hint_ms;    /* default 1000, 0..RB_SHUTDOWN_MS_MAX */

    /* [catchup] */
    uint32_t catchup_topics_per_query;  /* topics_per_query = 256 */
    uint32_t catchup_rows_per_topic;    /* rows_per_topic = 64 */
    uint32_t catchup_queries_in_flight; /* queries_in_flight = 4 (per shard) */

    /* [dedup]: idempotent publish (PUBLISH with an idempotency key) */
    uint32_t dedup_window_ms;      /* window_ms = 120000 */
    uint32_t dedup_keys_per_topic; /* keys_per_topic = 65536 */
    uint32_t dedup_keys_per_shard; /* keys_per_shard = 262144 (all topics a shard owns) */

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

    /* [cluster]: absent means one node alone (cluster_node_id 0). */
    uint16_t cluster_node_id;                            /* node_id = 1..1023, required */
    char cluster_id[RB_CLUSTER_ID_BYTES_MAX + 1];        /* cluster_id = "prod", required */
    char cluster_secret_file[RB_PATH_BYTES_MAX];         /* secret_file, required, mode 0600 */
    uint8_t cluster_secret[RB_CLUSTER_SECRET_BYTES_MAX]; /* its bytes (one newline cut) */
    uint32_t cluster_secret_len;
    char cluster_address[RB_ADDRESS_BYTES_MAX]; /* address = "127.0.0.1" (replica listener) */
    uint16_t cluster_port;                      /* port = 7410 */
    uint32_t cluster_peer_count;                /* [[cluster.peer]] */
    rb_peer_config cluster_peers[RB_CLUSTER_PEERS_MAX];

    /* [[topic_class]] */
    uint32_t topic_class_count;
    rb_topic_class_config topic_classes[RB_TOPIC_CLASSES_MAX];

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

/* Pattern i of cfg->auth_patterns as bytes (valid while cfg is). */
rb_bytes rb_config_pattern(const rb_config *cfg, uint32_t i);

/* "HS256", "RS256", "ES256". */
const char *rb_jwt_alg_name(rb_jwt_alg alg);

/* "tcp", "tls", "ws", "wss", "quic". */
const char *rb_transport_name(rb_transport_kind kind);

#endif
