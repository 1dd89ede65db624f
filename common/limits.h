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

/* Credentials (HELLO, AUTH): a JWT above 8 KiB is refused before it is
 * parsed, so a token cannot make the verifier allocate much; user names are
 * short like topics; passwords are bounded so a hash input is bounded. */
#define RB_AUTH_TOKEN_BYTES_MAX    8192
#define RB_AUTH_USER_BYTES_MAX     255
#define RB_AUTH_PASSWORD_BYTES_MAX 1024
/* The largest encoded credentials: kind, u16 length and the token. */
#define RB_AUTH_CREDENTIALS_BYTES_MAX (1 + 2 + RB_AUTH_TOKEN_BYTES_MAX)

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
/* Bytes the kernel may hold unsent for one connection (TCP_NOTSENT_LOWAT):
 * enough to keep a fast link busy; beyond it frames wait in the bounded
 * send queue, where a reap can drop them. When a connection is reaped the
 * limit is lifted, so its closing frames fit behind what the kernel holds
 * even when the client has stopped reading (as long as the kernel's send
 * buffer, 4 MiB at most by default, is larger than what it holds). */
#define RB_KERNEL_UNSENT_BYTES_MAX (1024u * 1024u)

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

/* Postgres storage (storage/postgres.c). Requests per shard queued or in
 * flight (a fixed pool of jobs): above what a shard's callers keep in
 * flight (owners: one append per topic and head loads, bounded by their
 * batch pool; catch-up: RB_CATCHUP_INFLIGHT_MAX reads); beyond it a request
 * gets RB_ELIMIT. */
#define RB_PG_REQUESTS_MAX 8192
/* Requests pipelined on one connection, and the bytes they may have sent
 * (the first is always let through): bounds libpq's buffers and the work
 * one lost connection fails; the rest wait in the shard's queue. */
#define RB_PG_PIPELINE_DEPTH_MAX 32
#define RB_PG_PIPELINE_BYTES_MAX (8u << 20)
/* Messages of one append and topics of one heads request, so that their
 * arrays fit the shard's parameter buffer. */
#define RB_PG_APPEND_MESSAGES_MAX 65536
#define RB_PG_HEADS_TOPICS_MAX    4096
/* Reconnect backoff (doubling), and how long a connect attempt may take. */
#define RB_PG_BACKOFF_MS_MIN 50
#define RB_PG_BACKOFF_MS_MAX 5000
#define RB_PG_CONNECT_MS_MAX 15000
/* A request still unanswered this long after its statements' timeouts
 * means the connection is dead without a reset: it is dropped. */
#define RB_PG_ANSWER_GRACE_MS 2000
/* Topic ids cached per shard (slots, a power of two, kept at most half
 * full) and the bytes of their names: about 1.3 MiB per shard. When
 * either is full the cache starts over. */
#define RB_PG_ID_CACHE_SLOTS      16384
#define RB_PG_ID_CACHE_NAME_BYTES (1u << 20)
/* Retention: topics visited and rows deleted per statement (a short
 * transaction holding only the deleted rows' locks), the pause between
 * statements of a pass, and between passes that found nothing. */
#define RB_PG_RETENTION_TOPICS_MAX 64
#define RB_PG_RETENTION_ROWS_MAX   2000
#define RB_PG_RETENTION_STEP_MS    10
#define RB_PG_RETENTION_IDLE_MS    1000

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
/* The Postgres password file's first line, with its terminator: a password
 * is a secret, not a document. */
#define RB_PG_PASSWORD_BYTES_MAX 1024

/* Server id sent in STARTED. */
#define RB_SERVER_ID_BYTES_MAX 64

/* ---- the daemon's per-shard tables and pools (server/) ---- */
/* Publishes in one append (one storage round trip). */
#define RB_OWNER_BATCH_MESSAGES_MAX 1024
/* Publish batches per shard queued or in flight across the topics it owns
 * (each ~48 KiB). */
#define RB_OWNER_BATCHES_MAX 4096
/* Topics one shard owns (each ~400 bytes of owner state). */
#define RB_OWNER_TOPICS_MAX (1u << 20)
/* Head queries per shard waiting for their topic's head refresh. */
#define RB_OWNER_WAITERS_MAX (1u << 20)
/* Topics per heads request reading the live gate's ceilings. */
#define RB_OWNER_REFRESH_TOPICS_MAX 256
/* Heads requests in flight per shard. */
#define RB_OWNER_REFRESHES_MAX 16
/* Unacknowledged publishes per connection; more get resource_exhausted. */
#define RB_CONN_PUBLISHES_IN_FLIGHT_MAX 65536
/* Ring entries per shard: room for a turn's sends, receives and wakes. */
#define RB_SHARD_SQ_ENTRIES 1024
/* Envelopes per shard in flight between shards. */
#define RB_SHARD_XMSG_MAX 65536
/* Shared fan-out blocks per shard (each max_frame_bytes). */
#define RB_SHARD_BLOCK_MAX 65536
/* Bytes of encoded records one envelope carries. */
#define RB_XMSG_DATA_BYTES (64u * 1024u)
/* Receive buffers for frames larger than a chunk, per shard. */
#define RB_SHARD_RXBIG_MAX 64
/* Chunks per shard: 65536 x 16 KiB bounds send and small receive memory at
 * 1 GiB per shard; each connection is further held to send_queue_bytes. */
#define RB_SHARD_CHUNK_MAX 65536
/* Send-queue and pending-buffer segments per shard. */
#define RB_SHARD_SEG_MAX (1u << 20)
/* Waves (Mutates adding topics) in flight per stream. */
#define RB_STREAM_WAVES_MAX 64
/* Stream topic entries per shard across its streams (each ~330 bytes). */
#define RB_SHARD_ENTRIES_MAX (1u << 22)
/* Distinct subscribed topics per shard. */
#define RB_SHARD_SUBTOPICS_MAX (1u << 22)
/* Catch-up stops feeding a stream whose send queue is over
 * send_queue_bytes / this, so history never overflows it. */
#define RB_CATCHUP_PAUSE_DIVISOR 2

#endif
