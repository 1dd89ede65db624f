/* Every compile-time bound of ringbus, each with its reason. Configurable
 * values have a default and a hard cap here; config/ checks the file's values
 * against the caps on load. */
#ifndef RB_COMMON_LIMITS_H
#define RB_COMMON_LIMITS_H

/* Frames: the fixed header is 16 bytes; a frame may not exceed the
 * configured max_frame_bytes, itself capped so that a length fits in 32
 * bits with room to spare and one frame cannot eat a shard's memory. */
#define RB_FRAME_HEADER_BYTES  16
#define RB_FRAME_BYTES_DEFAULT (1u << 20)
#define RB_FRAME_BYTES_MAX     (64u << 20)
#define RB_FRAME_BYTES_MIN     4096u
#define RB_PROTOCOL_VERSION    1

/* Topics are 1..255 bytes of UTF-8 so that a length fits in one byte. */
#define RB_TOPIC_BYTES_MAX 255
/* Short strings (client name, credentials, messages) have a u16 length. */
#define RB_SHORT_STRING_BYTES_MAX 65535
/* Idempotency keys are short opaque tokens. */
#define RB_IDEMPOTENCY_KEY_BYTES_MAX 255

/* Shards: one per core; the cap bounds the per-shard tables sized by it. */
#define RB_SHARDS_MAX 256
/* Listeners a config may declare. */
#define RB_LISTENERS_MAX 32

/* Connections per shard: default and cap of [limits] max_connections. */
#define RB_CONNS_PER_SHARD_DEFAULT 16384
#define RB_CONNS_PER_SHARD_MAX     1048576

/* Accepts handled per loop turn, so a connect storm cannot starve reads. */
#define RB_ACCEPT_PER_TURN_MAX 16
/* Completions reaped per loop turn before timers and queues get a turn. */
#define RB_CQE_PER_TURN_MAX 256

/* Receive: provided buffers per shard and their size. 512 x 16 KiB = 8 MiB
 * per shard of receive memory, shared by all connections of the shard. */
#define RB_RECV_BUF_BYTES 16384
#define RB_RECV_BUF_COUNT 512

/* Send: the per-connection send queue (DESIGN §4) and the iovecs one
 * sendmsg may carry, so one write stays one syscall-free ring entry. */
#define RB_SEND_QUEUE_BYTES_DEFAULT (8u << 20)
#define RB_SEND_QUEUE_BYTES_MAX     (1u << 30)
#define RB_SEND_IOV_MAX             64
/* Chunks small frames are encoded into, from a per-shard pool. */
#define RB_CHUNK_BYTES 16384

/* Cross-shard queues: slots per (producer, consumer) pair. */
#define RB_SHARD_QUEUE_SLOTS 4096

/* Streams (DESIGN §4). */
#define RB_PENDING_BYTES_DEFAULT     (64u << 20)
#define RB_PENDING_BYTES_MAX         (1u << 30)
#define RB_TOPICS_PER_STREAM_DEFAULT 100000
#define RB_TOPICS_PER_STREAM_MAX     1000000

/* Catch-up queries (DESIGN §4). */
#define RB_CATCHUP_TOPICS_DEFAULT   256
#define RB_CATCHUP_ROWS_DEFAULT     64
#define RB_CATCHUP_INFLIGHT_DEFAULT 4
#define RB_CATCHUP_TOPICS_MAX       4096
#define RB_CATCHUP_ROWS_MAX         4096
#define RB_CATCHUP_INFLIGHT_MAX     64

/* Memory store retention per topic (DESIGN §4). */
#define RB_MEMORY_RETENTION_MESSAGES_DEFAULT 100000
#define RB_MEMORY_RETENTION_MESSAGES_MAX     100000000
#define RB_MEMORY_RETENTION_BYTES_DEFAULT    (64ull << 20)
#define RB_MEMORY_RETENTION_BYTES_MAX        (1ull << 40)

/* Timeouts (DESIGN §4), in milliseconds, and the cap of any duration. */
#define RB_KEEPALIVE_MS_DEFAULT    30000
#define RB_PONG_TIMEOUT_MS_DEFAULT 30000
#define RB_HANDSHAKE_MS_DEFAULT    10000
#define RB_CLOSE_GRACE_MS_DEFAULT  2000
#define RB_DURATION_MS_MAX         (24u * 3600u * 1000u)

/* Config files: bounded so a parser cannot be fed gigabytes. */
#define RB_CONFIG_FILE_BYTES_MAX (1u << 20)
#define RB_CONFIG_NESTING_MAX    8
#define RB_PATH_BYTES_MAX        4096
#define RB_ADDRESS_BYTES_MAX     256

/* Server id sent in STARTED. */
#define RB_SERVER_ID_BYTES_MAX 64

#endif
