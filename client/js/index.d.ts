// Types of @ringbus/client (hand-written; the code is src/*.js).

/** Wire codes (docs/PROTOCOL.md §5), name to number. */
export declare const Code: {
  readonly ok: 0;
  readonly bad_frame: 1;
  readonly unsupported_version: 2;
  readonly unauthorized: 3;
  readonly forbidden: 4;
  readonly too_large: 5;
  readonly resource_exhausted: 6;
  readonly deadline_exceeded: 7;
  readonly unavailable: 8;
  readonly invalid_topic: 9;
  readonly internal: 10;
  readonly invalid_argument: 11;
  readonly going_away: 12;
  readonly out_of_range: 13;
  readonly epoch_mismatch: 14;
  readonly cursor_ahead: 15;
  readonly dedup_full: 18;
  readonly recipient_not_found: 20;
  readonly unknown_method: 21;
  readonly connection_timeout: 22;
  readonly response_timeout: 23;
  readonly recipient_disconnected: 24;
  readonly payload_too_large: 25;
  readonly application_error: 26;
  readonly cancelled: 27;
  readonly already_registered: 28;
  readonly responder_busy: 29;
};

/** Frame kinds (docs/PROTOCOL.md §4). */
export declare const Kind: {
  readonly HELLO: 1;
  readonly STARTED: 2;
  readonly ERROR: 3;
  readonly PING: 4;
  readonly PONG: 5;
  readonly CLOSE: 6;
  readonly PUBLISH: 7;
  readonly PUBLISH_ACK: 8;
  readonly MUTATE: 9;
  readonly MESSAGES: 10;
  readonly TOPICS_LIVE: 11;
  readonly CATCHUP_COMPLETE: 12;
  readonly AUTH: 13;
  readonly GOING_AWAY: 14;
  readonly TOPIC_ERROR: 15;
  readonly REGISTER: 16;
  readonly UNREGISTER: 17;
  readonly REQUEST: 18;
  readonly REQUEST_ACK: 19;
  readonly RESPONSE: 20;
};

export declare const PROTOCOL_VERSION: 1;

/** The name of a wire code ("code_N" for one this client does not know). */
export declare function codeName(code: number): string;
export declare function kindName(kind: number): string;
/** UTF-8 bytes of a string; a Uint8Array (or other view) as is. */
export declare function toBytes(value: string | Uint8Array | ArrayBuffer | ArrayBufferView): Uint8Array;
/** Decodes one whole frame (one WebSocket message). Throws ProtocolError. */
export declare function decodeFrame(buf: Uint8Array | ArrayBuffer, maxFrameBytes?: number): { kind: number; kindName: string; corr: number; size: number; [field: string]: unknown };

/** A frame that breaks the protocol. */
export declare class ProtocolError extends Error {
  readonly code: number;
  readonly codeName: string;
}

/** An error from the bus, with its wire code. */
export declare class RingbusError extends Error {
  /** The wire code (see Code). */
  readonly code: number;
  readonly codeName: string;
  /** 'error' (ERROR frame), 'close' (server CLOSE), 'topic' (TOPIC_ERROR), 'client', 'transport', 'rpc' (a call's RESPONSE). */
  readonly source: 'error' | 'close' | 'topic' | 'client' | 'transport' | 'rpc';
  /** The server's (or client's) text, without the code prefix. */
  readonly serverMessage: string;
  /** The topic of a TOPIC_ERROR. */
  readonly topic?: string;
  /** An application_error's data from the responder (source 'rpc'). */
  readonly payload?: Uint8Array;
  /** False for codes after which retrying cannot help. */
  readonly retryable: boolean;
}

/** Codes that stop reconnecting at once. */
export declare const NON_RETRYABLE: ReadonlySet<number>;

/** The client's named bounds (defaults of the matching options). */
export declare const Limits: {
  readonly PUBLISH_IN_FLIGHT_MAX: number;
  readonly PUBLISH_QUEUED_MAX: number;
  readonly PUBLISH_REISSUES_MAX: number;
  readonly ITERATOR_BUFFERED_MAX: number;
  readonly WAVES_IN_FLIGHT_MAX: number;
  readonly TOPIC_RETRIES_MAX: number;
  readonly PINGS_IN_FLIGHT_MAX: number;
  readonly PUBLISH_RETRY_MS: number;
  readonly PUBLISH_BYTES_MAX: number;
  readonly RPC_CALLS_MAX: number;
  readonly RPC_METHODS_MAX: number;
  readonly RPC_ERROR_MESSAGE_BYTES_MAX: number;
  readonly RPC_BACKSTOP_MS: number;
};

/** Full-jitter backoff: uniform in [0, min(capMs, baseMs * 2^attempt)). */
export declare function backoffDelay(attempt: number, baseMs: number, capMs: number, random?: () => number): number;

/** A JWT's exp claim in ms since the epoch, or null (no token, no exp). */
export declare function tokenExpiry(credentials: Credentials): number | null;

export type Credentials = { token: string } | { user: string; password: string | Uint8Array } | Uint8Array | null;

export interface ClientOptions {
  /** Sent in HELLO for the server's logs. Default "ringbus-js". */
  name?: string;
  /** HELLO credentials, or a function called before each connection and, for a token with exp, again before it expires (sent in AUTH). */
  credentials?: Credentials | (() => Credentials | Promise<Credentials>);
  /** With credentials as a function: refresh this long before the token's exp, or at two thirds of its life when that is sooner (default 30000). */
  refreshBeforeMs?: number;
  /** Reconnect after failures (default true). */
  reconnect?: boolean;
  /** Backoff base and cap in ms (defaults 100 and 10000). */
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** false: connect() fails once every URL was tried without a connection (libringbus's default); true (default): it keeps retrying. Later losses are retried either way. */
  retryInitialConnect?: boolean;
  /** Consecutive failed attempts before giving up (default Infinity). */
  maxAttempts?: number;
  /** Upgrade plus HELLO must finish within this (default 10000). */
  connectTimeoutMs?: number;
  /** close(): how long to wait for acks and the server's CLOSE (default 5000). */
  closeTimeoutMs?: number;
  /** A connection silent for this many keepalive periods is dead (default 3; probed with a PING at two thirds of it). */
  watchdogFactor?: number;
  /** Publishes sent and not acknowledged (default 1024). */
  maxInFlight?: number;
  /** Publishes waiting for the window before publish() rejects (default 65536). */
  maxQueuedPublishes?: number;
  /** Bytes of publishes not yet acknowledged (in the window and waiting) before publish() rejects with resource_exhausted (default 64 MiB). */
  maxPublishBytes?: number;
  /** Re-sends of one publish before it fails (default 8). */
  maxReissues?: number;
  /** A publish first sent longer ago than this is not re-sent; it fails with unavailable (default 60000, half the server's dedup window). */
  publishRetryMs?: number;
  /** Give every publish without a key a generated one (default true). false: such publishes are keyless (no dedup table places) and one in flight at a connection loss fails with unavailable instead of being re-sent. */
  autoKeys?: boolean;
  /** RPC calls in flight or waiting for a connection (default 256). */
  maxCalls?: number;
  /** Persists each topic's cursor: load when a topic is added (its cursor replaces the add's), save after each delivered message. */
  cursorStore?: CursorStore;
  /** Messages one async iterator buffers before it fails (default 10000). */
  maxBufferedMessages?: number;
  /** What to do with a saved cursor of another store epoch (default 'fromStart'). */
  onEpochChange?: 'fromStart' | 'fromNow' | 'error';
  /** The WebSocket constructor (default: the global one, else the `ws` package). */
  WebSocket?: unknown;
  /** Third argument of the `ws` package's constructor (e.g. {ca} for wss). Node only. */
  wsOptions?: Record<string, unknown>;
  /** Random source of the jitter (default Math.random). */
  random?: () => number;
}

export interface CursorStore {
  load(topic: string): { seq: number; epoch: bigint | string | number } | null | undefined;
  save(topic: string, seq: number, epoch: bigint): void;
}

export interface PublishOptions {
  /** Idempotency key, 0..255 bytes (generated when absent and autoKeys is on; '' sends none). */
  key?: string | Uint8Array;
}

export interface PublishAck {
  topic: string;
  seq: number;
  /** The server recognised the key: this is the original seq. */
  duplicate: boolean;
}

export interface AddOptions {
  /** 0 (everything stored, the default), a seq (deliver seq > cursor) or 'now'. */
  cursor?: number | 'now';
  /** The store epoch the cursor belongs to. */
  epoch?: bigint;
  /** Deliver the history up to now, then leave the stream. */
  historyOnly?: boolean;
}

export interface AddResult {
  live: string[];
  errors: RingbusError[];
}

export declare class Message {
  readonly topic: string;
  readonly seq: number;
  /** A view on the received frame; copy it to keep it past other frames' lifetime needs. */
  readonly payload: Uint8Array;
  /** Stored history (before the topic went live). */
  readonly historic: boolean;
  /** Messages of this ephemeral topic dropped for this reader just before this one (LAGGED); 0 when none. */
  readonly skipped: number;
  text(): string;
  json(): unknown;
}

export declare class Subscription implements AsyncIterable<Message> {
  readonly topic: string;
  readonly ready: Promise<AddResult>;
  [Symbol.asyncIterator](): AsyncIterator<Message>;
  remove(): Promise<void>;
}

/** The answer of a call. */
export declare class RpcResponse {
  readonly payload: Uint8Array;
  text(): string;
  json(): unknown;
}

/** A call to a served method (the handler's argument). */
export declare class RpcRequest {
  /** The caller's client_id. */
  readonly caller: string;
  readonly method: string;
  readonly payload: Uint8Array;
  readonly timeoutMs: number;
  text(): string;
  json(): unknown;
}

export interface CallOptions {
  /** The server's response timeout (default 10000, at most 600000). */
  timeoutMs?: number;
  /** Aborting it cancels the call (outcome `cancelled`). */
  signal?: AbortSignal;
}

export interface Registration {
  readonly method: string;
  readonly service: string;
  unregister(): Promise<void>;
}

/** A handler's result is the response; what it throws is answered application_error (message, and its `payload` if any). */
export type RpcHandler = (req: RpcRequest) => string | Uint8Array | void | Promise<string | Uint8Array | void>;

export interface ClientEvents {
  message: Message;
  live: string[];
  catchupComplete: { mutateId: number };
  topicError: RingbusError;
  /** An ephemeral topic fell behind on this reader: its next message comes `skipped` seqs later. */
  lagged: { topic: string; skipped: number };
  connected: { url: string; epoch: bigint; serverId: string; previousEpoch: bigint };
  disconnected: { url: string; error: RingbusError };
  reconnecting: { attempt: number; delayMs: number; error: RingbusError };
  epochChange: { topic: string; oldEpoch: bigint; newEpoch: bigint; action: 'fromStart' | 'fromNow' };
  goingAway: { reconnectDelayMs: number; message: string };
  error: RingbusError;
  closed: { error: RingbusError | null };
  /** The server accepted a new token (AUTH); expiresAt is its exp in ms, or null. */
  reauthenticated: { expiresAt: number | null };
  /** A method could not be registered again on a new connection (it is no longer served). */
  serveError: { method: string; service: string; error: RingbusError };
}

export declare class Client {
  constructor(urls: string | string[], options?: ClientOptions);
  readonly urls: string[];
  readonly state: 'idle' | 'connecting' | 'ready' | 'waiting' | 'closing' | 'closed';
  readonly epoch: bigint;
  readonly serverId: string;
  readonly clientId: string;
  readonly url: string | null;
  readonly maxFrameBytes: number;
  connect(): Promise<this>;
  on<E extends keyof ClientEvents>(event: E, fn: (arg: ClientEvents[E]) => void): () => void;
  publish(topic: string, payload: string | Uint8Array, options?: PublishOptions): Promise<PublishAck>;
  /** Resolves once every publish made so far is settled. */
  flush(): Promise<void>;
  add(topics: string | string[], options?: AddOptions): Promise<AddResult>;
  remove(topics: string | string[]): Promise<void>;
  subscribe(topic: string, options?: AddOptions & { onMessage?: (m: Message) => void }): Subscription;
  messages(options?: { topic?: string }): AsyncIterableIterator<Message>;
  cursors(): Record<string, { seq: number | null; epoch: bigint }>;
  ping(): Promise<number>;
  reauth(credentials: Credentials): Promise<void>;
  /** Calls method at destination (a client_id or a service name). */
  call(destination: string, method: string, payload?: string | Uint8Array, options?: CallOptions): Promise<RpcResponse>;
  /** Serves method (under options.service, else this connection's client_id); registered again on every new connection. */
  serve(method: string, handler: RpcHandler, options?: { service?: string }): Promise<Registration>;
  close(): Promise<void>;
}

export declare function connect(urls: string | string[], options?: ClientOptions): Promise<Client>;
