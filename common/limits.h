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
/* RPC names (methods, destinations, services, client ids) are short like
 * topics: one u8 length on the wire. */
#define RB_RPC_NAME_BYTES_MAX 255
/* Idempotency keys are short opaque tokens. */
#define RB_IDEMPOTENCY_KEY_BYTES_MAX 255

/* Credentials (HELLO, AUTH): a JWT above 8 KiB is refused before it is
 * parsed, so a token cannot make the verifier allocate much; user names are
 * short like topics; passwords are bounded so a hash input is bounded. */
#define RB_AUTH_TOKEN_BYTES_MAX 8192
#define RB_AUTH_USER_BYTES_MAX  255
/* The prefix of the identities the server gives anonymous connections
 * ("anon-<connection id>"): no token sub or user name may start with it, so
 * nobody signs in as another connection's identity. */
#define RB_ANON_ID_PREFIX          "anon-"
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

/* Connection limits ([limits]): all shards and listeners together, per
 * source address, and new connections per second per address. */
#define RB_CONNS_TOTAL_DEFAULT           65536
#define RB_CONNS_TOTAL_MAX               (1u << 24)
#define RB_CONNS_PER_ADDRESS_DEFAULT     1024
#define RB_CONN_RATE_PER_ADDRESS_DEFAULT 1000
#define RB_RATE_PER_SECOND_MAX           1000000000u
/* Per connection: publishes per second (a token bucket) and Mutates. */
#define RB_PUBLISH_RATE_DEFAULT       RB_RATE_PER_SECOND_MAX /* no limit unless set */
#define RB_MUTATES_PER_SECOND_DEFAULT 1000

/* Authentication ([auth]): the delay before an unauthorized answer, failed
 * sign-ins per minute per address before refusing outright, JWT clock skew
 * (bounded: a wide skew would let expired tokens live on) and the threads
 * that verify password hashes off the shards. */
#define RB_AUTH_FAILURE_DELAY_MS_DEFAULT    1000
#define RB_AUTH_FAILURE_DELAY_MS_MAX        60000
#define RB_AUTH_FAILURES_PER_MINUTE_DEFAULT 30
#define RB_AUTH_CLOCK_SKEW_S_DEFAULT        30
#define RB_AUTH_CLOCK_SKEW_S_MAX            300
#define RB_AUTH_WORKERS_DEFAULT             2
#define RB_AUTH_WORKERS_MAX                 16
/* Sign-ins waiting for an auth worker (all shards together); beyond it a
 * HELLO is refused with resource_exhausted rather than queued without end. */
#define RB_AUTH_QUEUE_MAX 4096
/* argon2id cost parameters a password_hash may name: memory bounds what
 * one verification allocates (times the workers), time bounds its CPU. */
#define RB_ARGON2_MEMORY_KIB_MIN  8
#define RB_ARGON2_MEMORY_KIB_MAX  (256u * 1024u)
#define RB_ARGON2_TIME_COST_MAX   16
#define RB_ARGON2_PARALLELISM_MAX 16

/* Accepts handled per loop turn, so a connect storm cannot starve reads. */
#define RB_ACCEPT_PER_TURN_MAX 16

/* Start-up binds a listener port that is in use this many times, this far
 * apart, before giving up (a restart racing the previous process's exit). */
#define RB_BIND_ATTEMPTS_MAX 5
#define RB_BIND_RETRY_MS     200u

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
/* Room each send queue keeps beyond its quota for the closing frames
 * (ERROR and CLOSE, each at most 16 + 4 + RB_ERR_MSG_BYTES_MAX bytes), so
 * a connection closed for its backlog still learns why: one chunk. */
#define RB_SEND_CLOSE_RESERVE_BYTES RB_CHUNK_BYTES
/* What a send-queue segment referencing a shared block costs beyond the
 * bytes it references (the segment, and the block it keeps alive), so a
 * queue of tiny fan-out frames cannot hold segments without bound. */
#define RB_SEND_SEG_CHARGE_BYTES 256
/* Chunks a layered link's wire queue may hold: two encode passes of
 * RB_STACK_WIRE_BYTES_PER_PASS (256 KiB) plus record and closing overhead. */
#define RB_LINK_WIRE_CHUNKS_MAX 36

/* Cross-shard queues: slots per (producer, consumer) pair, [limits]
 * shard_queue_slots (a power of two). A full queue holds the producer's
 * envelopes back in order (it never drops them), so the slots only set how
 * much is in flight between two shards; the cap keeps the slot arrays
 * (shards^2 x slots x 8 bytes) small. */
#define RB_SHARD_QUEUE_SLOTS_DEFAULT 4096
#define RB_SHARD_QUEUE_SLOTS_MIN     2
#define RB_SHARD_QUEUE_SLOTS_MAX     65536

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
/* Idempotency keys on Postgres: an append with keys carries at most
 * RB_PG_APPEND_KEYED_MAX messages (one owner batch); shard 0 prunes expired
 * keys in deletes of at most RB_PG_DEDUP_PRUNE_ROWS_MAX rows, the next one
 * after RB_PG_RETENTION_STEP_MS while a delete is full, else after
 * RB_PG_DEDUP_PRUNE_IDLE_MS. */
#define RB_PG_APPEND_KEYED_MAX     1024
#define RB_PG_DEDUP_PRUNE_ROWS_MAX 2000
#define RB_PG_DEDUP_PRUNE_IDLE_MS  1000

/* Timeouts (DESIGN §4), in milliseconds, and the cap of any duration. */
#define RB_KEEPALIVE_MS_DEFAULT    30000
#define RB_PONG_TIMEOUT_MS_DEFAULT 30000
#define RB_HANDSHAKE_MS_DEFAULT    10000
#define RB_CLOSE_GRACE_MS_DEFAULT  2000
/* The lame-duck drain (SIGTERM): connections with work in flight get this
 * long after GOING_AWAY, and each is told to come back after a delay drawn
 * in [0, the hint]. */
#define RB_SHUTDOWN_GRACE_MS_DEFAULT 10000
#define RB_RECONNECT_HINT_MS_DEFAULT 1000
#define RB_SHUTDOWN_MS_MAX           600000
#define RB_DURATION_MS_MAX           (24u * 3600u * 1000u)

/* Config files: bounded so a parser cannot be fed gigabytes. */
#define RB_CONFIG_FILE_BYTES_MAX (1u << 20)
#define RB_CONFIG_NESTING_MAX    8
#define RB_PATH_BYTES_MAX        4096
#define RB_ADDRESS_BYTES_MAX     256
/* The Postgres password file's first line, with its terminator: a password
 * is a secret, not a document. */
#define RB_PG_PASSWORD_BYTES_MAX 1024

/* Bytes of the server id sent in STARTED: what the config accepts and what
 * libringbus accepts from a server. */
#define RB_SERVER_ID_BYTES_MAX 64

/* ---- the daemon's per-shard tables and pools (server/) ---- */
/* Publishes in one append (one storage round trip). */
#define RB_OWNER_BATCH_MESSAGES_MAX 1024
/* Publish batches per shard queued or in flight across the topics it owns
 * (each ~48 KiB). */
#define RB_OWNER_BATCHES_MAX 4096
/* Topics one shard owns (each ~400 bytes of owner state). */
#define RB_OWNER_TOPICS_MAX (1u << 20)
/* Idempotent publish ([dedup]): an idempotency key is remembered per
 * (topic, key) at the topic's owner shard for window_ms after its commit,
 * each entry about 300 bytes (the key is copied: up to 255 bytes). The
 * window is bounded so that a table sized for it stays sane (1 hour). */
#define RB_DEDUP_WINDOW_MS_DEFAULT      120000u
#define RB_DEDUP_WINDOW_MS_MAX          3600000u
#define RB_DEDUP_KEYS_PER_TOPIC_DEFAULT (1u << 16)
#define RB_DEDUP_KEYS_PER_SHARD_DEFAULT (1u << 18)
#define RB_DEDUP_KEYS_MAX               (1u << 22)
/* Retries that wait for the commit of their key's first publish, per
 * shard (each 24 bytes, holding its publish's envelope). */
#define RB_DEDUP_WAITERS_MAX 65536u
/* Appends with idempotency keys in flight per shard on a durable store
 * (postgres), each holding the batch's keys for the store's check (about
 * 24 KiB); a keyed batch beyond it waits for one to finish. */
#define RB_OWNER_KEYED_APPENDS_MAX 64u
/* Ephemeral batches per shard that hold content duplicates in their place
 * (8 KiB each); past it a duplicate is acked at once, ahead of its batch. */
#define RB_OWNER_EPH_DUP_BATCHES_MAX 256u
/* Ephemeral topics on a slow subscriber: their live messages go straight
 * to the send queue only while it is below 1/RB_EPH_SENDQ_DIVISOR of
 * send_queue_bytes (the rest stays for stored topics, which are closed
 * when it is full); behind that, each connection keeps at most
 * send_queue_bytes / RB_EPH_LAG_DIVISOR of block bytes waiting, and drops
 * the oldest past it (told with LAGGED). */
#define RB_EPH_SENDQ_DIVISOR 2u
/* An ephemeral topic's seqs start above the wall-clock millisecond of its
 * first use on the node times 2^RB_EPH_SEQ_BASE_SHIFT, so that after a
 * restart they stay above those of the run before (unless a topic averaged
 * more than 1024 messages a millisecond) and a resuming client never takes
 * new messages for ones it had; 2^10 x the milliseconds until 2100 stays
 * below 2^53, exact in a JavaScript number. */
#define RB_EPH_SEQ_BASE_SHIFT 10
#define RB_EPH_LAG_DIVISOR    4u
/* Head queries per shard waiting for their topic's head refresh. */
#define RB_OWNER_WAITERS_MAX (1u << 20)
/* Topics per heads request reading the live gate's ceilings. */
#define RB_OWNER_REFRESH_TOPICS_MAX 256
/* Heads requests in flight per shard. */
#define RB_OWNER_REFRESHES_MAX 16
/* Unacknowledged publishes per connection; at the limit the session
 * pauses (stops reading the publisher) until acks arrive. */
#define RB_CONN_PUBLISHES_IN_FLIGHT_MAX 65536
/* Bytes a paused session keeps behind its held frame (server/session.c),
 * from the shard's chunk pool: what a TCP, TLS or WS link can still decode
 * from the receive buffer in hand when the session pauses (one 16 KiB
 * receive buffer, plus a TLS record the layer had buffered), with room to
 * spare; the link keeps later receive buffers unread. A QUIC link keeps
 * up to its stream window instead (the peer cannot send more before the
 * session consumes). */
#define RB_SESSION_HOLD_BYTES_MAX (64u * 1024u)
/* Ring entries per shard: room for a turn's sends, receives and wakes. */
#define RB_SHARD_SQ_ENTRIES 1024
/* Envelopes (RB_XMSG_DATA_BYTES of records each) per shard in flight
 * between shards, [limits] shard_envelopes: 4096 x 64 KiB = 256 MiB at
 * most. A publish holds its envelope until it is acked (the envelope then
 * carries the ack home if the owner has none of its own), so this bounds
 * the publishes in flight from one shard; when they are all out the
 * intake pauses the publishers (stops reading them) until envelopes come
 * back. */
#define RB_SHARD_XMSG_DEFAULT 4096
#define RB_SHARD_XMSG_MIN     4
#define RB_SHARD_XMSG_MAX     65536
/* Envelopes without data per shard: one carries one fan-out block to one
 * shard (each ~64 bytes), [limits] shard_block_envelopes. When they are
 * all out, owners hold released and forwarded blocks back, in order, and a
 * replica link stops reading until some come back. */
#define RB_SHARD_BARE_XMSG_DEFAULT 65536
#define RB_SHARD_BARE_XMSG_MIN     4
#define RB_SHARD_BARE_XMSG_MAX     65536
/* A topic owner holds back new appends while the queue to a shard that
 * subscribes to the topic has this many envelopes waiting (its consumer
 * is behind): publishers wait for acks instead of memory filling. */
#define RB_OWNER_FANOUT_BACKLOG_MAX 256
/* Topics per hole read of a topic owner's sequencer (one read in flight
 * per shard; the rest wait for the next). */
#define RB_OWNER_HOLE_TOPICS_MAX 64
/* Shared fan-out blocks per shard: size classes from 512 bytes growing 4x
 * up to max_frame_bytes, all within [limits] shard_block_bytes (default
 * 512 MiB, at least 2 x max_frame_bytes). When the budget is spent, owners
 * hold committed batches and appends back until blocks come home. */
#define RB_BLOCK_CLASS_MIN_BYTES     512u
#define RB_BLOCK_CLASSES_MAX         12
#define RB_SHARD_BLOCK_BYTES_DEFAULT (512ull << 20)
#define RB_SHARD_BLOCK_BYTES_MAX     (1ull << 40)
/* What one TLS connection may take inside wolfSSL and its layer (session,
 * record buffers, the 16 KiB gather buffer; about 90 KiB was measured), for
 * the memory formula. */
#define RB_TLS_CONN_BYTES_MAX (128u << 10)
/* The process beside its shards, for the memory formula: code, libraries
 * (libpq, OpenSSL, wolfSSL), the main thread and touched thread stacks. */
#define RB_PROCESS_BASE_BYTES (32u << 20)
/* Pools one thread keeps return caches for, and the items a cache holds
 * before they go home in one batch (server/freelist.c). */
#define RB_FREELIST_RETURN_POOLS_MAX 16
#define RB_FREELIST_RETURN_BATCH     64
/* Envelope kinds a shard's mailbox can route (server/mailbox.h). */
#define RB_MAIL_KINDS_MAX 16
/* Bytes of encoded records one envelope carries. */
#define RB_XMSG_DATA_BYTES (64u * 1024u)
/* Receive buffers for frames larger than a chunk, per shard. */
#define RB_SHARD_RXBIG_MAX 64
/* Chunks per shard beyond the send queues' budget (server/sendq.h, which
 * holds every connection to its quota): 65536 x 16 KiB = 1 GiB for small
 * receive frames and streams' copies. */
#define RB_SHARD_CHUNK_MAX 65536
/* Pending-buffer segments per shard, beyond the send queues' own. */
#define RB_SHARD_SEG_MAX (1u << 20)
/* Waves (Mutates adding topics) in flight per stream. */
#define RB_STREAM_WAVES_MAX 64
/* Stream topic entries per shard across its streams (each ~330 bytes). */
#define RB_SHARD_ENTRIES_MAX (1u << 22)
/* Catch-up stops feeding a stream whose send queue is over
 * send_queue_bytes / this, so history never overflows it. */
#define RB_CATCHUP_PAUSE_DIVISOR 2

/* ---- RPC between clients (server/rpc.c, docs/PROTOCOL.md section 12) ---- */
/* A responder must ack a request within this (LiveKit's connection
 * timeout), and is told at least RB_RPC_RESPONDER_TIMEOUT_MS_MIN so a short
 * caller deadline does not make it give up before the caller hears back. */
#define RB_RPC_ACK_TIMEOUT_MS           7000
#define RB_RPC_RESPONDER_TIMEOUT_MS_MIN 8000
/* A REQUEST's timeout_ms: 0 means the default; above the cap is refused. */
#define RB_RPC_TIMEOUT_MS_DEFAULT 10000
#define RB_RPC_TIMEOUT_MS_MAX     (10u * 60u * 1000u)
/* Per connection ([limits] rpc_calls_per_connection,
 * rpc_serves_per_connection, rpc_methods_per_connection): calls it has in
 * flight as a caller, requests in flight to it as a responder, and methods
 * it registers; the cap keeps their list walks short. */
#define RB_RPC_CALLS_PER_CONN_DEFAULT   256
#define RB_RPC_SERVES_PER_CONN_DEFAULT  256
#define RB_RPC_METHODS_PER_CONN_DEFAULT 64
#define RB_RPC_PER_CONN_MAX             65536
/* Per shard: call and serve slots (each ~100 bytes), and the methods its
 * connections register plus the directory part it owns (each ~530 bytes).
 * Beyond them a call or REGISTER is refused with resource_exhausted. */
#define RB_RPC_CALLS_PER_SHARD_MAX         65536
#define RB_RPC_SERVES_PER_SHARD_MAX        65536
#define RB_RPC_REGISTRATIONS_PER_SHARD_MAX 65536
/* Buckets of a shard's directory (a power of two). */
#define RB_RPC_DIRECTORY_BUCKETS 16384
/* Responders one name may have (a service group), so a lookup is bounded. */
#define RB_RPC_RESPONDERS_PER_NAME_MAX 1024
/* What an RPC record costs beyond its payload inside the daemon, so that a
 * request of the largest payload still fits one envelope of max_frame_bytes. */
#define RB_RPC_RECORD_OVERHEAD_BYTES 1024

/* ---- QUIC and HTTP/3 (transports/quic.c, transports/h3.c) ---- */
/* A Retry token is honoured this long after it was issued (long enough
 * for a round trip on any path, short enough that a captured token soon
 * stops working). */
#define RB_QUIC_RETRY_TOKEN_MS 10000
/* Largest datagram the engine writes (ngtcp2's path MTU probing stops
 * there: an Ethernet MTU minus IPv6 and UDP headers). */
#define RB_QUIC_DATAGRAM_BYTES_MAX 1452
/* Datagrams written per connection per write pass, so one busy connection
 * cannot monopolise a turn (pacing and the send quantum may stop it
 * earlier; the rest goes at the next timer). */
#define RB_QUIC_DATAGRAMS_PER_WRITE_MAX 64
/* Streams besides the bus stream a ringbus/1 peer may open before it is
 * closed with bad_frame (its stream credit is never renewed either). */
#define RB_QUIC_REFUSED_STREAMS_MAX 8
/* Connection IDs a connection may be known by at once: ngtcp2 keeps up to
 * 8 issued CIDs in use and, after a migration, issues replacements while
 * the retired ones stay known until their retirement delay ends; plus the
 * client's original DCIDs. At 8 the first active migration failed
 * get_new_connection_id and closed the connection with INTERNAL_ERROR. */
#define RB_QUIC_CIDS_PER_CONN_MAX 20
/* Connections per engine: default and cap (the server sizes it by
 * limits.max_connections). */
#define RB_QUIC_CONNS_DEFAULT 16384
#define RB_QUIC_CONNS_MAX     1048576
/* Handshakes in progress per engine (per shard): an Initial flood is
 * refused with CONNECTION_REFUSED beyond it. */
#define RB_QUIC_HANDSHAKES_DEFAULT 256
/* References to send bytes a connection holds until they are
 * acknowledged: default and cap. */
#define RB_QUIC_SEND_REFS_DEFAULT 512
#define RB_QUIC_SEND_REFS_MAX     65536
/* Receive window per stream (the connection's is twice it): what a peer
 * may send beyond what the reader consumed. */
#define RB_QUIC_STREAM_WINDOW_DEFAULT (1u << 20)
#define RB_QUIC_STREAM_WINDOW_MAX     (64u << 20)
/* QUIC idle timeout, above keepalive plus pong deadline so the bus's own
 * PING decides liveness; and the handshake deadline (DESIGN §4). */
#define RB_QUIC_IDLE_MS_DEFAULT      75000
#define RB_QUIC_HANDSHAKE_MS_DEFAULT 10000
/* HTTP/3: a request's path (with its query) and authority. */
#define RB_H3_PATH_BYTES_MAX      2048
#define RB_H3_AUTHORITY_BYTES_MAX 256
/* Requests in progress per HTTP/3 connection (each holds a slot and its
 * body): default and cap. */
#define RB_H3_REQUESTS_DEFAULT 16
#define RB_H3_REQUESTS_MAX     256
/* QPACK: the dynamic table the peer's encoder may use, the streams it may
 * block, and the largest header section accepted. */
#define RB_H3_QPACK_TABLE_BYTES 4096
#define RB_H3_QPACK_BLOCKED_MAX 16
#define RB_H3_HEADER_BYTES_MAX  16384
/* A response body a route may return. */
#define RB_H3_RESPONSE_BYTES_MAX (64u << 20)

/* ---- the cluster's replica plane (server/cluster.c, transports/replica.c) ---- */
/* Node ids a [cluster] accepts (DESIGN §2 "Replica plane"). */
#define RB_CLUSTER_NODE_ID_MAX 1023
/* Peers of one node: a full mesh of this many links per node. */
#define RB_CLUSTER_PEERS_MAX 32
/* The cluster id: a name, not a document. */
#define RB_CLUSTER_ID_BYTES_MAX 64
/* The shared secret: at least the HMAC-SHA256 output, at most a key file. */
#define RB_CLUSTER_SECRET_BYTES_MIN 32
#define RB_CLUSTER_SECRET_BYTES_MAX 1024
/* Default TCP port of the replica listener. */
#define RB_CLUSTER_PORT_DEFAULT 7410
/* The largest replica frame: a committed block (max_frame_bytes at most,
 * RB_FRAME_BYTES_MAX) plus its small head. */
#define RB_REPLICA_FRAME_BYTES_MAX (RB_FRAME_BYTES_MAX + 512u)
/* Inbound replica connections still authenticating (one slot each; more
 * are closed at once), and how long one may take. */
#define RB_CLUSTER_PENDING_MAX      16
#define RB_CLUSTER_HANDSHAKE_MS_MAX 10000
/* A link's send queue: frames waiting for the socket. Past the bytes the
 * peer is too slow; its link is dropped and it repairs from Postgres. */
#define RB_CLUSTER_TXQ_ENTRIES_MAX 8192
#define RB_CLUSTER_TX_BYTES_MAX    (64u << 20)
/* Keepalive: a link pings after this much silence and is dead after the
 * second bound of silence (a cut cable shows no RST). */
#define RB_CLUSTER_PING_MS 1000
#define RB_CLUSTER_DEAD_MS 6000
/* A link whose receiving waits this long for block memory or an envelope
 * (its peer backpressured all the while) is dropped and repaired from
 * Postgres after the redial. */
#define RB_CLUSTER_RX_STALL_MS_MAX 30000
/* Redial backoff: first delay and cap (each doubled, with jitter). */
#define RB_CLUSTER_BACKOFF_MS_MIN 100
#define RB_CLUSTER_BACKOFF_MS_MAX 10000
/* Refused handshakes logged per second (the rest are counted). */
#define RB_CLUSTER_REFUSALS_LOGGED_PER_S 5
/* Topics with live local subscribers that one node announces to its
 * peers, and remote interests one node records per peer. */
#define RB_CLUSTER_INTEREST_TOPICS_MAX (1u << 20)
/* The owners re-read the heads of topics with subscribers this often, so a
 * quiet topic's hole (a commit that reached no link) is repaired. */
#define RB_CLUSTER_REPAIR_MS 1000

#endif
