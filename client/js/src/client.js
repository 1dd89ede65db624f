// The ringbus client session: one WebSocket connection at a time to one of
// several URLs, rebuilt after every failure (reconnect with exponential
// backoff and full jitter), with the subscription stream re-added from the
// last delivered seq and the publishes in flight re-sent with their
// idempotency keys. See README.md for the API and its guarantees.

import {
  Code,
  Kind,
  MAX_FRAME_BYTES_DEFAULT,
  MUTATE_FIXED_BYTES,
  ACK_DUPLICATE,
  ProtocolError,
  codeName,
  decodeFrame,
  encodeClose,
  encodeHello,
  encodeAuth,
  encodeMutate,
  encodePing,
  encodePong,
  encodePublish,
  encodePublishKeyed,
  encodeRegister,
  encodeRequest,
  encodeRequestAck,
  encodeResponse,
  mutateAddBytes,
  toBytes,
  REQUEST_ACK_CANCEL,
  RPC_TIMEOUT_MS_DEFAULT,
} from './codec.js';
import { RingbusError, NON_RETRYABLE } from './errors.js';

/** Named bounds of the client (the defaults of the matching options). */
export const Limits = Object.freeze({
  /** Publishes sent and not yet acknowledged (`maxInFlight`). */
  PUBLISH_IN_FLIGHT_MAX: 1024,
  /** Publishes waiting for a window slot (`maxQueuedPublishes`). */
  PUBLISH_QUEUED_MAX: 65536,
  /** Bytes of the frames of publishes not yet acknowledged, in the window
   * and waiting (`maxPublishBytes`; libringbus's publish_buffer_bytes). */
  PUBLISH_BYTES_MAX: 64 * 1024 * 1024,
  /** Re-sends of one publish before it fails (`maxReissues`; libringbus's 8). */
  PUBLISH_REISSUES_MAX: 8,
  /** A publish first sent longer ago than this is not re-sent (`publishRetryMs`):
   * half the server's default dedup window (PROTOCOL §7.1, §13). */
  PUBLISH_RETRY_MS: 60000,
  /** Messages an async iterator holds for a slow consumer (`maxBufferedMessages`). */
  ITERATOR_BUFFERED_MAX: 10000,
  /** MUTATE waves in flight per stream (the server's limit, PROTOCOL §10). */
  WAVES_IN_FLIGHT_MAX: 64,
  /** Re-adds of a topic after TOPIC_ERROR unavailable / resource_exhausted. */
  TOPIC_RETRIES_MAX: 5,
  /** PINGs awaiting their PONG. */
  PINGS_IN_FLIGHT_MAX: 64,
  /** RPC calls in flight or waiting for a connection (`maxCalls`; the server's
   * limits.rpc_calls_per_connection default). */
  RPC_CALLS_MAX: 256,
  /** Methods one client serves (the server's limits.rpc_methods_per_connection default). */
  RPC_METHODS_MAX: 64,
  /** Bytes of an application error's message a responder sends. */
  RPC_ERROR_MESSAGE_BYTES_MAX: 1024,
  /** How much longer than the call's timeout the client waits for the
   * server's RESPONSE before it fails the call itself. */
  RPC_BACKSTOP_MS: 2000,
});

const DEFAULTS = {
  name: 'ringbus-js',
  credentials: null,
  reconnect: true,
  backoffBaseMs: 100,
  backoffCapMs: 10000,
  maxAttempts: Infinity,
  connectTimeoutMs: 10000,
  closeTimeoutMs: 5000,
  watchdogFactor: 3,
  maxInFlight: Limits.PUBLISH_IN_FLIGHT_MAX,
  maxQueuedPublishes: Limits.PUBLISH_QUEUED_MAX,
  maxPublishBytes: Limits.PUBLISH_BYTES_MAX,
  maxReissues: Limits.PUBLISH_REISSUES_MAX,
  publishRetryMs: Limits.PUBLISH_RETRY_MS,
  maxCalls: Limits.RPC_CALLS_MAX,
  cursorStore: null,
  refreshBeforeMs: 30000,
  autoKeys: true,
  retryInitialConnect: true,
  maxBufferedMessages: Limits.ITERATOR_BUFFERED_MAX,
  onEpochChange: 'fromStart',
  WebSocket: null,
  wsOptions: null,
  random: Math.random,
};

/**
 * The delay before reconnect attempt `attempt` (0 for the first retry):
 * full jitter, uniform in [0, min(capMs, baseMs * 2^attempt)).
 */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 52));
  return Math.floor(random() * ceiling);
}

const textDecoder = new TextDecoder();

/** One delivered message. `payload` is a view on the received frame. */
export class Message {
  constructor(topic, seq, payload, historic, skipped = 0) {
    this.topic = topic;
    this.seq = seq;
    this.payload = payload;
    /** True for stored history (before the topic's TOPICS_LIVE). */
    this.historic = historic;
    /** Messages of this (ephemeral) topic the server dropped for this
     * reader just before this one (its LAGGED frame); 0 when none. */
    this.skipped = skipped;
  }
  /** The payload as UTF-8 text (invalid bytes become U+FFFD). */
  text() {
    return textDecoder.decode(this.payload);
  }
  /** The payload parsed as JSON. */
  json() {
    return JSON.parse(this.text());
  }
}

/** The answer of a call (Client.call). `payload` is a view on the received frame. */
export class RpcResponse {
  constructor(payload) {
    this.payload = payload;
  }
  text() {
    return textDecoder.decode(this.payload);
  }
  json() {
    return JSON.parse(this.text());
  }
}

/** A call to a method this client serves (the handler's argument). */
export class RpcRequest {
  constructor(caller, method, payload, timeoutMs) {
    /** The caller's client_id. */
    this.caller = caller;
    this.method = method;
    this.payload = payload;
    /** How long the server waits for the answer. */
    this.timeoutMs = timeoutMs;
  }
  text() {
    return textDecoder.decode(this.payload);
  }
  json() {
    return JSON.parse(this.text());
  }
}

const textEncoder = new TextEncoder();

/** s cut to at most maxBytes of UTF-8, at a character boundary. */
function cutUtf8(s, maxBytes) {
  const raw = textEncoder.encode(s);
  if (raw.length <= maxBytes) return s;
  let end = maxBytes;
  while (end > 0 && (raw[end] & 0xc0) === 0x80) end--;
  return textDecoder.decode(raw.subarray(0, end));
}

/** A token's exp claim in ms since the epoch, or null (not a JWT, no exp). */
export function tokenExpiry(credentials) {
  const token = credentials?.token;
  if (typeof token !== 'string') return null;
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const claims = JSON.parse(textDecoder.decode(Uint8Array.from(bin, (ch) => ch.charCodeAt(0))));
    return typeof claims?.exp === 'number' && Number.isFinite(claims.exp) ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** A bounded queue behind an async iterator. */
class MessageQueue {
  constructor(max, onEnd) {
    this.max = max;
    this.items = [];
    this.head = 0;
    this.waiter = null;
    this.ended = false;
    this.error = null;
    this.onEnd = onEnd;
  }
  push(msg) {
    if (this.ended) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: msg, done: false });
      return;
    }
    if (this.items.length - this.head >= this.max) {
      this.fail(
        new RingbusError(
          Code.resource_exhausted,
          `the consumer fell behind: ${this.max} messages buffered (maxBufferedMessages)`,
        ),
      );
      return;
    }
    this.items.push(msg);
  }
  end(error = null) {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.onEnd(this);
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      if (error && this.head >= this.items.length) w.reject(error);
      else w.resolve({ value: undefined, done: true });
    }
  }
  fail(error) {
    this.items.length = 0;
    this.head = 0;
    this.end(error);
  }
  next() {
    if (this.head < this.items.length) {
      const value = this.items[this.head];
      this.items[this.head++] = undefined;
      if (this.head > 1024 && this.head * 2 > this.items.length) {
        this.items = this.items.slice(this.head);
        this.head = 0;
      }
      return Promise.resolve({ value, done: false });
    }
    if (this.ended) {
      if (this.error) {
        const e = this.error;
        this.error = null;
        return Promise.reject(e);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }
  return() {
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }
  [Symbol.asyncIterator]() {
    return this;
  }
}

/** A handle on one topic of the stream (Client.subscribe). */
export class Subscription {
  constructor(client, topic, queue, ready) {
    this.client = client;
    this.topic = topic;
    this._queue = queue;
    /** Resolves with the add's outcome ({live, errors}) at its CATCHUP_COMPLETE. */
    this.ready = ready;
  }
  [Symbol.asyncIterator]() {
    return this._queue;
  }
  /** Takes the topic off the stream and ends the iterator. */
  async remove() {
    this._queue.end();
    await this.client.remove(this.topic);
  }
}

let keyPrefixCounter = 0;

function randomBytes(n, random) {
  const out = new Uint8Array(n);
  if (globalThis.crypto?.getRandomValues) {
    globalThis.crypto.getRandomValues(out);
  } else {
    for (let i = 0; i < n; i++) out[i] = Math.floor(random() * 256);
    out[0] ^= keyPrefixCounter++ & 0xff;
  }
  return out;
}

async function defaultWebSocket() {
  if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  try {
    const mod = await import('ws');
    return mod.WebSocket ?? mod.default;
  } catch (e) {
    throw new RingbusError(
      Code.unavailable,
      'no WebSocket: this runtime has no global WebSocket and the optional peer `ws` is not installed',
      { cause: e },
    );
  }
}

/**
 * The client. Create it with `connect(urls, options)` (resolves once the
 * first connection is up) or `new Client(urls, options)` then `connect()`.
 */
export class Client {
  constructor(urls, options = {}) {
    this.urls = (Array.isArray(urls) ? urls : [urls]).map(String);
    if (this.urls.length === 0) throw new TypeError('at least one URL');
    for (const u of this.urls) {
      if (!/^wss?:\/\//.test(u)) throw new TypeError(`${u}: the JavaScript client speaks ws:// and wss://`);
    }
    this.options = { ...DEFAULTS, ...options };
    this._listeners = new Map();
    this._state = 'idle';
    this._conn = null;
    this._connSerial = 0;
    this._urlIndex = 0;
    this._attempt = 0;
    this._corr = 1;
    this._mutateId = 1;
    this._groupId = 1;
    this._timer = null;
    this._goingAwayMs = null;
    this._fatal = null;
    this._everUp = false; // some connection reached STARTED
    this._epoch = 0n;
    this._serverId = '';
    this._clientId = '';
    this._keyPrefix = randomBytes(8, this.options.random);
    this._keyCounter = 0;
    this._inflight = new Map(); // corr -> publish, in send order
    this._queue = [];
    this._queueHead = 0;
    this._publishBytes = 0; // frames of publishes not yet settled
    this._subs = new Map(); // topic -> {cursor, epoch, historyOnly, live, group, retries}
    this._groups = new Map(); // group id -> {mutates:Set, topics:Set, live, errors, resolve, reject, internal}
    this._queues = new Set();
    this._topicQueues = new Map();
    this._pings = new Map(); // nonce (string) -> {resolve, reject, at}
    this._pingNonce = 1n;
    this._calls = new Map(); // corr -> call (sent or waiting for a connection)
    this._serves = new Map(); // method -> {handler, services: Map(service -> registration)}
    this._regCorr = new Map(); // corr of a REGISTER/UNREGISTER -> {conn, resolve, reject, settleOnReconnect}
    this._pendingRegs = []; // REGISTERs waiting for a connection
    this._closeWaiter = null;
    this._readyWaiters = [];
    this._drainWaiters = [];
  }

  // ---- events ---------------------------------------------------------------

  /**
   * Adds a listener; returns a function that removes it. Events: message,
   * live, catchupComplete, topicError, lagged, connected, disconnected,
   * reconnecting, epochChange, goingAway, error, closed.
   */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  _emit(event, arg) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of set) {
      try {
        fn(arg);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  // ---- state ----------------------------------------------------------------

  /** 'idle', 'connecting', 'ready', 'waiting' (backing off), 'closing', 'closed'. */
  get state() {
    return this._state;
  }
  /** The store epoch of the current (or last) connection. */
  get epoch() {
    return this._epoch;
  }
  get serverId() {
    return this._serverId;
  }
  /** The identity the server gave this connection (STARTED's client_id), if any. */
  get clientId() {
    return this._clientId;
  }
  get url() {
    return this._conn?.url ?? null;
  }
  /** The frame bound of the current connection. */
  get maxFrameBytes() {
    return this._conn?.maxFrameBytes ?? MAX_FRAME_BYTES_DEFAULT;
  }

  /**
   * The position of every topic on the stream: {topic: {seq, epoch}}, seq
   * being the last one delivered (null for a `now` add that has delivered
   * nothing yet). Save it to start from it later (add with cursor and epoch).
   */
  cursors() {
    const out = {};
    for (const [topic, s] of this._subs) out[topic] = { seq: s.cursor, epoch: s.epoch };
    return out;
  }

  // ---- connecting -----------------------------------------------------------

  /** Opens the session; resolves once a connection is up (STARTED). */
  connect() {
    if (this._state === 'closed' || this._state === 'closing') {
      return Promise.reject(new RingbusError(Code.unavailable, 'the client is closed'));
    }
    const p = new Promise((resolve, reject) => this._readyWaiters.push({ resolve, reject }));
    if (this._state === 'idle') {
      this._state = 'connecting';
      this._open();
    } else if (this._state === 'ready') {
      this._settleReady(null);
    }
    return p;
  }

  _settleReady(error) {
    const waiters = this._readyWaiters;
    this._readyWaiters = [];
    for (const w of waiters) {
      if (error) w.reject(error);
      else w.resolve(this);
    }
  }

  async _open() {
    const url = this.urls[this._urlIndex % this.urls.length];
    this._urlIndex++;
    const serial = ++this._connSerial;
    const conn = {
      serial,
      url,
      ws: null,
      started: false,
      goingAway: false,
      maxFrameBytes: MAX_FRAME_BYTES_DEFAULT,
      keepaliveMs: 30000,
      epoch: 0n,
      lastRecv: Date.now(),
      pinged: false,
      watchdog: null,
      connectTimer: null,
      mutates: new Map(), // mutate id -> {group, corr}
      mutateByCorr: new Map(),
      error: null,
      helloCorr: 0,
      credentials: null,
      refreshTimer: null,
    };
    this._conn = conn;
    this._state = this._state === 'closing' ? 'closing' : 'connecting';
    let WS;
    let credentials;
    try {
      WS = this.options.WebSocket ?? (await defaultWebSocket());
      const c = this.options.credentials;
      credentials = typeof c === 'function' ? await c() : c;
    } catch (e) {
      if (this._conn !== conn) return;
      const err = e instanceof RingbusError ? e : new RingbusError(Code.unauthorized, String(e?.message ?? e));
      this._fatal = err;
      this._disconnected(conn, err);
      return;
    }
    if (this._conn !== conn) return;
    conn.credentials = credentials;
    let ws;
    try {
      ws = this.options.wsOptions ? new WS(url, ['ringbus.v1'], this.options.wsOptions) : new WS(url, ['ringbus.v1']);
    } catch (e) {
      this._disconnected(conn, new RingbusError(Code.unavailable, `${url}: ${e.message}`, { source: 'transport' }));
      return;
    }
    conn.ws = ws;
    // The `ws` package hands Buffers (views, no copy); browsers hand ArrayBuffers.
    if (!(typeof ws.on === 'function' && ws.binaryType === 'nodebuffer')) ws.binaryType = 'arraybuffer';
    conn.connectTimer = setTimeout(() => {
      this._abort(conn, new RingbusError(Code.deadline_exceeded, `${url}: no STARTED within ${this.options.connectTimeoutMs} ms`, { source: 'transport' }));
    }, this.options.connectTimeoutMs);
    ws.onopen = () => {
      if (this._conn !== conn) return;
      conn.helloCorr = this._corr++;
      try {
        ws.send(encodeHello(conn.helloCorr, this.options.name, credentials));
      } catch (e) {
        this._abort(conn, new RingbusError(Code.invalid_argument, `HELLO: ${e.message}`));
        this._fatal = conn.error;
      }
    };
    ws.onmessage = (ev) => this._onMessage(conn, ev.data);
    ws.onerror = (ev) => {
      if (!conn.error) {
        const why = ev?.message ?? ev?.error?.message ?? 'WebSocket error';
        conn.error = new RingbusError(Code.unavailable, `${url}: ${why}`, { source: 'transport' });
      }
    };
    ws.onclose = (ev) => {
      const err =
        conn.error ??
        new RingbusError(Code.unavailable, `${url}: connection closed (WebSocket ${ev?.code ?? '?'})`, {
          source: 'transport',
        });
      this._disconnected(conn, err);
    };
  }

  /** Ends a connection from this side (watchdog, protocol error, timeout). */
  _abort(conn, error) {
    if (this._conn !== conn) return;
    if (!conn.error) conn.error = error;
    try {
      conn.ws?.close(error.code === Code.bad_frame ? 1002 : 1000);
    } catch {
      // already closing
    }
    // Do not wait for the close handshake of a dead peer.
    this._disconnected(conn, conn.error);
  }

  _disconnected(conn, error) {
    if (this._conn !== conn) return;
    this._conn = null;
    clearTimeout(conn.connectTimer);
    clearTimeout(conn.refreshTimer);
    clearInterval(conn.watchdog);
    if (conn.ws) {
      conn.ws.onmessage = conn.ws.onopen = conn.ws.onerror = conn.ws.onclose = null;
      if (conn.ws.readyState === 0 || conn.ws.readyState === 1) {
        try {
          conn.ws.close();
        } catch {
          // nothing to close
        }
      }
    }
    for (const p of this._pings.values()) p.reject(error);
    this._pings.clear();
    this._connLostRpc(conn, error);
    const wasUp = conn.started;
    if (wasUp) this._emit('disconnected', { url: conn.url, error });
    if (this._state === 'closing') {
      this._finishClose(error);
      return;
    }
    if (this._fatal || !this.options.reconnect || NON_RETRYABLE.has(error.code)) {
      this._fail(this._fatal ?? error);
      return;
    }
    if (wasUp) this._attempt = 0;
    if (wasUp) this._everUp = true;
    if (!this._everUp && !this.options.retryInitialConnect && this._attempt + 1 >= this.urls.length) {
      // Every URL tried once and none answered: connect() fails now.
      this._fail(new RingbusError(error.code, `no server answered (${this.urls.length} URLs tried): ${error.serverMessage}`, { source: error.source, cause: error }));
      return;
    }
    if (this._attempt >= this.options.maxAttempts) {
      this._fail(new RingbusError(error.code, `gave up after ${this._attempt} attempts: ${error.serverMessage}`, { source: error.source, cause: error }));
      return;
    }
    let delayMs = backoffDelay(this._attempt, this.options.backoffBaseMs, this.options.backoffCapMs, this.options.random);
    if (this._goingAwayMs != null) {
      // GOING_AWAY: not before the server's hint, spread over one more hint.
      delayMs = this._goingAwayMs + Math.floor(this.options.random() * this._goingAwayMs);
      this._goingAwayMs = null;
    }
    this._attempt++;
    this._state = 'waiting';
    this._emit('reconnecting', { attempt: this._attempt, delayMs, error });
    this._timer = setTimeout(() => {
      this._timer = null;
      if (this._state === 'waiting') this._open();
    }, delayMs);
  }

  /** Stops for good: every pending operation fails with error. */
  _fail(error) {
    this._state = 'closed';
    clearTimeout(this._timer);
    this._rejectAll(error);
    this._settleReady(error);
    this._emit('error', error);
    this._emit('closed', { error });
  }

  _rejectAll(error, queueError = error) {
    for (const p of this._inflight.values()) p.reject(error);
    this._inflight.clear();
    for (let i = this._queueHead; i < this._queue.length; i++) this._queue[i].reject(error);
    this._queue = [];
    this._queueHead = 0;
    for (const g of this._groups.values()) g.reject(error);
    this._groups.clear();
    for (const q of [...this._queues]) q.end(queueError);
    for (const s of [...this._topicQueues.values()]) for (const q of [...s]) q.end(queueError);
    for (const w of this._drainWaiters) w();
    this._drainWaiters = [];
    for (const call of [...this._calls.values()]) this._settleCall(call, error);
    for (const r of this._regCorr.values()) r.reject(error);
    this._regCorr.clear();
    for (const w of this._pendingRegs) w.reject(error);
    this._pendingRegs = [];
    this._serves.clear();
  }

  // ---- receiving ------------------------------------------------------------

  _onMessage(conn, data) {
    if (this._conn !== conn) return;
    conn.lastRecv = Date.now();
    conn.pinged = false;
    if (typeof data === 'string') {
      this._abort(conn, new RingbusError(Code.bad_frame, 'the server sent a text message'));
      return;
    }
    let f;
    try {
      f = decodeFrame(data instanceof Uint8Array ? data : new Uint8Array(data), conn.started ? conn.maxFrameBytes : 0xffffffff);
    } catch (e) {
      if (e instanceof ProtocolError) {
        this._abort(conn, new RingbusError(e.code, `from the server: ${e.message}`));
        return;
      }
      throw e;
    }
    switch (f.kind) {
      case Kind.STARTED:
        return this._onStarted(conn, f);
      case Kind.MESSAGES:
        return this._onMessages(f);
      case Kind.PUBLISH_ACK:
        return this._onAck(conn, f);
      case Kind.TOPICS_LIVE:
        return this._onLive(f);
      case Kind.LAGGED:
        return this._onLagged(f);
      case Kind.CATCHUP_COMPLETE:
        return this._onComplete(conn, f);
      case Kind.TOPIC_ERROR:
        return this._onTopicError(conn, f);
      case Kind.ERROR:
        return this._onError(conn, f);
      case Kind.PING:
        return this._send(conn, encodePong(f.corr, f.nonce));
      case Kind.PONG: {
        const p = this._pings.get(String(f.nonce));
        if (p) {
          this._pings.delete(String(f.nonce));
          p.resolve(Date.now() - p.at);
        }
        return;
      }
      case Kind.CLOSE:
        conn.closeStatus = f.code;
        if (f.code !== Code.ok) {
          conn.error = new RingbusError(f.code, f.message, { source: 'close' });
          if (f.code === Code.going_away && this._goingAwayMs == null) this._attempt = 0;
        }
        return;
      case Kind.GOING_AWAY:
        conn.goingAway = true;
        this._goingAwayMs = f.reconnectDelayMs;
        this._emit('goingAway', { reconnectDelayMs: f.reconnectDelayMs, message: f.message });
        return;
      case Kind.REGISTER:
      case Kind.UNREGISTER: {
        const r = this._regCorr.get(f.corr);
        if (r) {
          this._regCorr.delete(f.corr);
          r.resolve();
        }
        return;
      }
      case Kind.REQUEST:
        return this._onRequest(conn, f);
      case Kind.REQUEST_ACK: {
        const call = this._calls.get(f.corr);
        if (call && call.conn === conn) call.acked = true;
        return;
      }
      case Kind.RESPONSE: {
        const call = this._calls.get(f.corr);
        if (!call || call.conn !== conn) return;
        if (f.code === Code.ok) {
          this._settleCall(call, null, new RpcResponse(f.payload));
        } else {
          const err = new RingbusError(f.code, f.message, { source: 'rpc' });
          if (f.payload.length > 0) err.payload = f.payload;
          this._settleCall(call, err);
        }
        return;
      }
      case Kind.AUTH: {
        const p = this._authWaiter;
        if (p && p.corr === f.corr) {
          this._authWaiter = null;
          p.resolve();
        }
        return;
      }
      default:
        // A kind reserved for later protocol work this client did not ask for.
        return;
    }
  }

  _onStarted(conn, f) {
    if (conn.started) {
      this._abort(conn, new RingbusError(Code.bad_frame, 'a second STARTED'));
      return;
    }
    clearTimeout(conn.connectTimer);
    conn.started = true;
    conn.maxFrameBytes = f.maxFrameBytes;
    conn.keepaliveMs = f.keepaliveMs || 30000;
    conn.epoch = f.epoch;
    const oldEpoch = this._epoch;
    this._epoch = f.epoch;
    this._serverId = f.serverId;
    this._clientId = f.clientId;
    this._attempt = 0;
    this._state = 'ready';
    const tick = Math.max(50, Math.floor(conn.keepaliveMs / 4));
    conn.watchdog = setInterval(() => this._watchdog(conn), tick);
    this._emit('connected', { url: conn.url, epoch: f.epoch, serverId: f.serverId, previousEpoch: oldEpoch });
    this._resubscribe(conn);
    // Publishes in flight at the disconnect, in their first order, with their keys.
    for (const p of [...this._inflight.values()]) {
      if (p.keyless && p.sends > 0) {
        // Without a key the server cannot tell a re-send from a new message.
        this._inflight.delete(p.corr);
        p.reject(new RingbusError(Code.unavailable, 'the connection was lost before the ack of a publish without an idempotency key: not re-sent (it may or may not be stored)', { source: 'transport' }));
        continue;
      }
      this._sendPublish(conn, p);
    }
    this._pump();
    this._reregister(conn);
    this._pumpCalls();
    this._scheduleRefresh(conn);
    this._settleReady(null);
  }

  _watchdog(conn) {
    if (this._conn !== conn) return;
    const silentMs = Date.now() - conn.lastRecv;
    if (silentMs > conn.keepaliveMs * this.options.watchdogFactor) {
      this._abort(conn, new RingbusError(Code.deadline_exceeded, `${conn.url}: nothing received for ${silentMs} ms`, { source: 'transport' }));
    } else if (silentMs > (conn.keepaliveMs * this.options.watchdogFactor * 2) / 3 && !conn.pinged) {
      conn.pinged = true;
      this._send(conn, encodePing(0, this._pingNonce++));
    }
  }

  _onMessages(f) {
    const historic = f.mutateId !== 0;
    const epoch = this._epoch;
    for (const item of f.items) {
      const sub = this._subs.get(item.topic);
      if (!sub) continue; // removed meanwhile
      // Until a topic goes live its messages carry its wave's id (PROTOCOL
      // §8.4): others were sent before a remove and re-add of the topic.
      if (!sub.live && sub.wave !== undefined && f.mutateId !== sub.wave) continue;
      if (sub.cursor !== null && item.seq <= sub.cursor) continue; // already delivered
      sub.cursor = item.seq;
      sub.now = false;
      sub.epoch = epoch;
      if (this.options.cursorStore) this._saveCursor(item.topic, item.seq, epoch);
      const msg = new Message(item.topic, item.seq, item.payload, historic, sub.skipped || 0);
      sub.skipped = 0;
      this._emit('message', msg);
      for (const q of this._queues) {
        if (q.topic === undefined) q.push(msg);
      }
      const qs = this._topicQueues.get(item.topic);
      if (qs) for (const q of qs) q.push(msg);
    }
  }

  /** An ephemeral topic fell behind on this reader (PROTOCOL: LAGGED): the
   * next message of the topic comes `skipped` seqs later. Told as a
   * `lagged` event and on that next Message. */
  _onLagged(f) {
    const sub = this._subs.get(f.topic);
    if (!sub) return;
    sub.skipped = (sub.skipped || 0) + f.skipped;
    this._emit('lagged', { topic: f.topic, skipped: f.skipped });
  }

  _onLive(f) {
    for (const topic of f.topics) {
      const sub = this._subs.get(topic);
      if (!sub) continue;
      sub.live = true;
      const g = this._groups.get(sub.group);
      if (g && g.topics.has(topic)) g.live.add(topic);
    }
    this._emit('live', f.topics);
  }

  _onComplete(conn, f) {
    const m = conn.mutates.get(f.mutateId);
    if (!m) return;
    conn.mutates.delete(f.mutateId);
    conn.mutateByCorr.delete(m.corr);
    this._emit('catchupComplete', { mutateId: f.mutateId });
    const g = this._groups.get(m.group);
    if (!g) return;
    g.mutates.delete(f.mutateId);
    if (g.mutates.size > 0 || g.retrying > 0) return;
    this._finishGroup(m.group, g);
  }

  _finishGroup(id, g) {
    this._groups.delete(id);
    for (const topic of g.topics) {
      const sub = this._subs.get(topic);
      if (!sub || sub.group !== id) continue;
      sub.group = null;
      // A history-only add has left the stream once delivered.
      if (sub.historyOnly) this._subs.delete(topic);
    }
    g.resolve({ live: [...g.live], errors: g.errors });
    this._pumpGroups();
  }

  _onTopicError(conn, f) {
    const sub = this._subs.get(f.topic);
    const m = conn.mutates.get(f.mutateId);
    const g = m ? this._groups.get(m.group) : sub ? this._groups.get(sub.group) : undefined;
    const gid = m ? m.group : sub?.group;
    const err = new RingbusError(f.code, f.message, { source: 'topic', topic: f.topic });
    if (sub && f.code === Code.epoch_mismatch && this.options.onEpochChange !== 'error') {
      // The cursor belongs to another seq space (a restarted memory store).
      const action = this.options.onEpochChange;
      this._emit('epochChange', { topic: f.topic, oldEpoch: sub.epoch, newEpoch: this._epoch, action });
      sub.cursor = action === 'fromNow' ? null : 0;
      sub.now = action === 'fromNow';
      sub.epoch = this._epoch;
      if (g) g.retrying++;
      queueMicrotask(() => this._retryTopic(f.topic, gid));
      return;
    }
    if (sub && (f.code === Code.unavailable || f.code === Code.resource_exhausted) && sub.retries < Limits.TOPIC_RETRIES_MAX) {
      const delayMs = backoffDelay(sub.retries++, 200, 5000, this.options.random) + 100;
      if (g) g.retrying++;
      setTimeout(() => this._retryTopic(f.topic, gid), delayMs);
      return;
    }
    if (sub) this._dropTopic(f.topic);
    if (g) g.errors.push(err);
    this._emit('topicError', err);
  }

  _retryTopic(topic, gid) {
    const g = this._groups.get(gid);
    if (g) g.retrying--;
    const sub = this._subs.get(topic);
    if (!sub || this._state === 'closed') return;
    let target = g;
    let id = gid;
    if (!target) {
      id = this._newGroup([topic], true);
      target = this._groups.get(id);
    }
    sub.group = id;
    if (this._conn?.started && !this._conn.goingAway) this._sendAdds(this._conn, id, [topic]);
  }

  _dropTopic(topic) {
    this._subs.delete(topic);
    const qs = this._topicQueues.get(topic);
    if (qs) for (const q of [...qs]) q.end();
  }

  _onError(conn, f) {
    const err = new RingbusError(f.code, f.message, { source: 'error' });
    const closes = f.code === Code.bad_frame || f.code === Code.unsupported_version || f.code === Code.unauthorized || f.code === Code.deadline_exceeded;
    const pub = this._inflight.get(f.corr);
    if (pub && !closes) {
      if (f.code === Code.unavailable && pub.sends <= this.options.maxReissues) {
        // Storage was down: the key makes the retry safe.
        setTimeout(() => {
          if (this._inflight.get(pub.corr) === pub && this._conn?.started) this._sendPublish(this._conn, pub);
        }, backoffDelay(pub.sends, 100, 5000, this.options.random) + 50);
        return;
      }
      this._inflight.delete(f.corr);
      pub.reject(err);
      this._pump();
      return;
    }
    const call = this._calls.get(f.corr);
    if (call && !closes) {
      this._settleCall(call, err);
      return;
    }
    const reg = this._regCorr.get(f.corr);
    if (reg && !closes) {
      this._regCorr.delete(f.corr);
      reg.reject(err);
      return;
    }
    const mid = conn.mutateByCorr.get(f.corr);
    if (mid !== undefined && !closes) {
      const m = conn.mutates.get(mid);
      conn.mutates.delete(mid);
      conn.mutateByCorr.delete(f.corr);
      const g = m && this._groups.get(m.group);
      if (g) {
        // The MUTATE changed nothing: its new topics are not on the stream.
        this._groups.delete(m.group);
        for (const topic of g.topics) {
          const sub = this._subs.get(topic);
          if (sub && sub.group === m.group && !sub.live) this._dropTopic(topic);
          else if (sub && sub.group === m.group) sub.group = null;
        }
        g.reject(err);
        this._pumpGroups();
      }
      return;
    }
    if (this._authWaiter && this._authWaiter.corr === f.corr) {
      this._authWaiter.reject(err);
      this._authWaiter = null;
    }
    // Connection-level: the server closes next.
    conn.error = err;
    if (NON_RETRYABLE.has(f.code)) this._fatal = err;
  }

  _onAck(conn, f) {
    const pub = this._inflight.get(f.corr);
    if (!pub) return;
    this._inflight.delete(f.corr);
    pub.resolve({ topic: f.topic, seq: f.seq, duplicate: (f.flags & ACK_DUPLICATE) !== 0 });
    this._pump();
  }

  _send(conn, frame) {
    if (!conn?.ws || conn.ws.readyState !== 1) return false;
    try {
      // Node's `ws`: frames sent in one turn of the event loop leave in one
      // write (the socket is corked until the turn ends), not one each.
      const sock = conn.ws._socket;
      if (sock?.cork && !conn.corked) {
        conn.corked = true;
        sock.cork();
        queueMicrotask(() => {
          conn.corked = false;
          sock.uncork();
        });
      }
      conn.ws.send(frame);
      return true;
    } catch {
      return false;
    }
  }

  // ---- publishing -----------------------------------------------------------

  /**
   * Publishes payload (a string is sent as UTF-8, a Uint8Array as is) to
   * topic. Resolves with {topic, seq, duplicate} once the server committed
   * it. options.key: an idempotency key (0..255 bytes; one is generated
   * when none is given, so a publish re-sent after a reconnect is applied
   * once by a server that deduplicates).
   */
  publish(topic, payload, options = {}) {
    if (this._state === 'closed' || this._state === 'closing') {
      return Promise.reject(new RingbusError(Code.unavailable, 'the client is closed'));
    }
    const corr = this._corr++;
    let frame;
    let keyless;
    try {
      if (options.key == null && this.options.autoKeys) {
        keyless = false;
        frame = encodePublishKeyed(corr, topic, payload, this._keyPrefix, this._keyCounter++);
      } else {
        const key = options.key ?? null;
        keyless = key === null || toBytes(key).length === 0;
        frame = encodePublish(corr, topic, payload, key);
      }
    } catch (e) {
      return Promise.reject(new RingbusError(Code.invalid_argument, e.message));
    }
    if (this._conn?.started && frame.length > this._conn.maxFrameBytes) {
      return Promise.reject(new RingbusError(Code.too_large, `a PUBLISH of ${frame.length} bytes is above max_frame_bytes ${this._conn.maxFrameBytes}`));
    }
    if (this._queue.length - this._queueHead >= this.options.maxQueuedPublishes) {
      return Promise.reject(
        new RingbusError(Code.resource_exhausted, `more than ${this.options.maxQueuedPublishes} publishes waiting (maxQueuedPublishes)`),
      );
    }
    if (this._publishBytes + frame.length > this.options.maxPublishBytes) {
      return Promise.reject(
        new RingbusError(
          Code.resource_exhausted,
          `${this._publishBytes} bytes of publishes not yet acknowledged; ${frame.length} more would pass maxPublishBytes ${this.options.maxPublishBytes}`,
        ),
      );
    }
    const bytes = frame.length;
    this._publishBytes += bytes;
    return new Promise((resolve, reject) => {
      // Settled once, wherever from: the bytes are given back then.
      let settled = false;
      const settle = (fn) => (v) => {
        if (settled) return;
        settled = true;
        this._publishBytes -= bytes;
        fn(v);
      };
      const pub = { corr, topic, frame, keyless, sends: 0, firstSentAt: 0, resolve: settle(resolve), reject: settle(reject) };
      this._queue.push(pub);
      this._pump();
    });
  }

  /** Moves queued publishes into the window and sends them. */
  _pump() {
    const conn = this._conn;
    const canSend = conn?.started && !conn.goingAway;
    while (this._queueHead < this._queue.length && this._inflight.size < this.options.maxInFlight) {
      const pub = this._queue[this._queueHead];
      this._queue[this._queueHead++] = undefined;
      this._inflight.set(pub.corr, pub);
      if (canSend) this._sendPublish(conn, pub);
    }
    if (this._queueHead > 1024 && this._queueHead * 2 > this._queue.length) {
      this._queue = this._queue.slice(this._queueHead);
      this._queueHead = 0;
    }
    if (this._inflight.size === 0 && this._queueHead >= this._queue.length && this._drainWaiters.length) {
      const w = this._drainWaiters;
      this._drainWaiters = [];
      for (const fn of w) fn();
    }
  }

  _sendPublish(conn, pub) {
    if (pub.sends > this.options.maxReissues) {
      this._inflight.delete(pub.corr);
      pub.reject(new RingbusError(Code.unavailable, `not acknowledged after ${pub.sends} sends (maxReissues)`));
      queueMicrotask(() => this._pump());
      return;
    }
    if (pub.sends > 0 && Date.now() - pub.firstSentAt > this.options.publishRetryMs) {
      // The server's dedup window may be over: a re-send could be stored twice.
      this._inflight.delete(pub.corr);
      pub.reject(
        new RingbusError(
          Code.unavailable,
          `not acknowledged, first sent ${Date.now() - pub.firstSentAt} ms ago: not re-sent after publishRetryMs ${this.options.publishRetryMs} (it may or may not be stored)`,
        ),
      );
      queueMicrotask(() => this._pump());
      return;
    }
    if (pub.frame.length > conn.maxFrameBytes) {
      this._inflight.delete(pub.corr);
      pub.reject(new RingbusError(Code.too_large, `a PUBLISH of ${pub.frame.length} bytes is above max_frame_bytes ${conn.maxFrameBytes}`));
      return;
    }
    if (pub.sends++ === 0) pub.firstSentAt = Date.now();
    this._send(conn, pub.frame);
  }

  /** Resolves once every publish made so far is acknowledged (or failed). */
  flush() {
    if (this._inflight.size === 0 && this._queueHead >= this._queue.length) return Promise.resolve();
    return new Promise((resolve) => this._drainWaiters.push(resolve));
  }

  // ---- the stream -----------------------------------------------------------

  /**
   * Adds topics to the stream. topics: a name or an array of names.
   * options.cursor: 0 (default: everything stored), a seq (deliver seq >
   * cursor) or 'now'; options.epoch: the store epoch the cursor belongs to
   * (from cursors() or the epoch getter); options.historyOnly: deliver the
   * stored history up to now and leave the stream. Resolves at the wave's
   * CATCHUP_COMPLETE with {live: [topics gone live], errors: [RingbusError]}.
   * A topic already on the stream keeps its position unless a cursor is given.
   */
  add(topics, options = {}) {
    if (this._state === 'closed' || this._state === 'closing') {
      return Promise.reject(new RingbusError(Code.unavailable, 'the client is closed'));
    }
    const list = [...new Set(Array.isArray(topics) ? topics : [topics])];
    if (list.length === 0) return Promise.resolve({ live: [], errors: [] });
    const cursor = options.cursor ?? 0;
    if (cursor !== 'now' && !(Number.isSafeInteger(cursor) && cursor >= 0)) {
      return Promise.reject(new RingbusError(Code.invalid_argument, `cursor ${cursor}: a seq >= 0 or 'now'`));
    }
    for (const t of list) {
      try {
        mutateAddBytes(t);
      } catch (e) {
        return Promise.reject(new RingbusError(Code.invalid_topic, e.message));
      }
    }
    if (options.historyOnly) {
      const on = list.find((t) => this._subs.has(t));
      if (on !== undefined) {
        return Promise.reject(new RingbusError(Code.invalid_argument, `history-only add of ${JSON.stringify(on)}, which is on the stream`));
      }
    }
    const id = this._newGroup(list, false);
    const g = this._groups.get(id);
    for (const topic of list) {
      const old = this._subs.get(topic);
      const explicit = options.cursor !== undefined || !old;
      const sub = old ?? { cursor: null, now: false, epoch: 0n, historyOnly: false, live: false, group: null, retries: 0 };
      if (explicit) {
        sub.cursor = cursor === 'now' ? null : cursor;
        sub.now = cursor === 'now';
        sub.epoch = options.epoch != null ? BigInt(options.epoch) : this._epoch;
      }
      const stored = old ? null : this._loadCursor(topic);
      if (stored) {
        // The store's cursor replaces the add's (as libringbus's cursor_load).
        sub.cursor = stored.seq;
        sub.now = false;
        sub.epoch = stored.epoch;
      }
      sub.historyOnly = !!options.historyOnly;
      sub.group = id;
      this._subs.set(topic, sub);
    }
    if (this._conn?.started && !this._conn.goingAway) this._sendGroup(this._conn, id);
    return g.promise;
  }

  _newGroup(topics, internal) {
    const id = this._groupId++;
    const g = { mutates: new Set(), topics: new Set(topics), live: new Set(), errors: [], retrying: 0, internal, sent: false };
    g.promise = new Promise((resolve, reject) => {
      g.resolve = resolve;
      g.reject = reject;
    });
    if (internal) g.promise.catch(() => {});
    this._groups.set(id, g);
    return id;
  }

  /** Sends the MUTATEs of a group (groups wait while 64 waves are in flight). */
  _sendGroup(conn, id) {
    const g = this._groups.get(id);
    if (!g) return;
    const topics = [...g.topics].filter((t) => this._subs.get(t)?.group === id);
    if (topics.length === 0) {
      this._finishGroup(id, g);
      return;
    }
    if (conn.mutates.size >= Limits.WAVES_IN_FLIGHT_MAX) {
      g.sent = false; // _pumpGroups sends it when a wave completes
      return;
    }
    g.sent = true;
    this._sendAdds(conn, id, topics);
  }

  _pumpGroups() {
    const conn = this._conn;
    if (!conn?.started || conn.goingAway) return;
    for (const [id, g] of this._groups) {
      if (conn.mutates.size >= Limits.WAVES_IN_FLIGHT_MAX) return;
      if (!g.sent) this._sendGroup(conn, id);
    }
  }

  /** MUTATEs for topics of group id, split by epoch and to fit max_frame_bytes. */
  _sendAdds(conn, id, topics) {
    const g = this._groups.get(id);
    const byKey = new Map();
    for (const topic of topics) {
      const sub = this._subs.get(topic);
      if (!sub) continue;
      let cursor = sub.now ? 'now' : (sub.cursor ?? 0);
      let epoch = 0n;
      if (cursor !== 'now' && cursor > 0) {
        if (sub.epoch !== 0n && conn.epoch !== 0n && sub.epoch !== conn.epoch) {
          // Known to be another seq space before asking.
          const action = this.options.onEpochChange;
          if (action === 'error') {
            epoch = sub.epoch; // the server answers TOPIC_ERROR epoch_mismatch
          } else {
            this._emit('epochChange', { topic, oldEpoch: sub.epoch, newEpoch: conn.epoch, action });
            sub.cursor = action === 'fromNow' ? null : 0;
            sub.now = action === 'fromNow';
            sub.epoch = conn.epoch;
            cursor = sub.now ? 'now' : 0;
          }
        } else {
          epoch = sub.epoch;
        }
      }
      const k = `${sub.historyOnly ? 1 : 0}:${epoch}`;
      let bucket = byKey.get(k);
      if (!bucket) byKey.set(k, (bucket = { historyOnly: sub.historyOnly, epoch, adds: [] }));
      bucket.adds.push({ topic, cursor });
    }
    const budget = conn.maxFrameBytes - MUTATE_FIXED_BYTES;
    for (const b of byKey.values()) {
      let chunk = [];
      let bytes = 0;
      const flush = () => {
        if (chunk.length === 0) return;
        const mid = this._mutateId++;
        const corr = this._corr++;
        conn.mutates.set(mid, { group: id, corr });
        conn.mutateByCorr.set(corr, mid);
        g?.mutates.add(mid);
        for (const a of chunk) this._subs.get(a.topic).wave = mid;
        this._send(conn, encodeMutate(corr, mid, chunk, [], b.historyOnly, b.epoch));
        chunk = [];
        bytes = 0;
      };
      for (const a of b.adds) {
        const n = mutateAddBytes(a.topic);
        if (bytes + n > budget) flush();
        chunk.push(a);
        bytes += n;
      }
      flush();
    }
  }

  /** After (re)connecting: every topic on the stream, from its cursor. */
  _resubscribe(conn) {
    const settled = [];
    for (const [topic, sub] of this._subs) {
      sub.live = false;
      if (sub.group === null || !this._groups.has(sub.group)) settled.push(topic);
    }
    for (const g of this._groups.values()) {
      g.mutates.clear();
      g.sent = false;
    }
    if (settled.length > 0) {
      const id = this._newGroup(settled, true);
      for (const t of settled) this._subs.get(t).group = id;
    }
    this._pumpGroups();
  }

  /** Takes topics off the stream (no more messages for them). */
  async remove(topics) {
    const list = [...new Set(Array.isArray(topics) ? topics : [topics])];
    for (const t of list) this._dropTopic(t);
    const conn = this._conn;
    if (!conn?.started || list.length === 0) return;
    const budget = conn.maxFrameBytes - MUTATE_FIXED_BYTES;
    let chunk = [];
    let bytes = 0;
    for (const t of list) {
      const n = mutateAddBytes(t) - 9;
      if (bytes + n > budget) {
        this._send(conn, encodeMutate(this._corr++, 0, [], chunk));
        chunk = [];
        bytes = 0;
      }
      chunk.push(t);
      bytes += n;
    }
    this._send(conn, encodeMutate(this._corr++, 0, [], chunk));
  }

  /**
   * An async iterator of every message of the stream (options.topic: only
   * that topic's). It holds at most maxBufferedMessages for a slow
   * consumer, then ends with RingbusError resource_exhausted.
   */
  messages(options = {}) {
    const q = new MessageQueue(this.options.maxBufferedMessages, (qq) => this._unregisterQueue(qq));
    q.topic = options.topic;
    this._registerQueue(q);
    if (this._state === 'closed') q.end();
    return q;
  }

  _registerQueue(q) {
    if (q.topic === undefined) {
      this._queues.add(q);
    } else {
      let s = this._topicQueues.get(q.topic);
      if (!s) this._topicQueues.set(q.topic, (s = new Set()));
      s.add(q);
    }
  }

  _unregisterQueue(q) {
    if (q.topic === undefined) {
      this._queues.delete(q);
    } else {
      const s = this._topicQueues.get(q.topic);
      s?.delete(q);
      if (s?.size === 0) this._topicQueues.delete(q.topic);
    }
  }

  /**
   * Adds one topic and returns a Subscription: an async iterator of its
   * messages (from the moment of the call, nothing missed), `ready` (the
   * add's outcome) and `remove()`. options as for add(); options.onMessage
   * is called for each message as well.
   */
  subscribe(topic, options = {}) {
    const q = new MessageQueue(this.options.maxBufferedMessages, (qq) => this._unregisterQueue(qq));
    q.topic = topic;
    this._registerQueue(q);
    if (options.onMessage) {
      const off = this.on('message', (m) => {
        if (m.topic === topic) options.onMessage(m);
      });
      const end = q.onEnd;
      q.onEnd = (qq) => {
        off();
        end(qq);
      };
    }
    const ready = this.add(topic, options).then((r) => {
      if (r.errors.length > 0 && !this._subs.has(topic)) q.end(r.errors[0]);
      return r;
    });
    ready.catch((e) => q.end(e));
    return new Subscription(this, topic, q, ready);
  }

  // ---- the cursor store -----------------------------------------------------

  /** {seq, epoch} from options.cursorStore.load(topic), or null. */
  _loadCursor(topic) {
    const store = this.options.cursorStore;
    if (!store) return null;
    let c;
    try {
      c = store.load(topic);
    } catch (e) {
      this._emit('error', new RingbusError(Code.internal, `cursorStore.load(${JSON.stringify(topic)}): ${e?.message ?? e}`, { cause: e }));
      return null;
    }
    if (c == null) return null;
    const seq = Number(c.seq);
    if (!Number.isSafeInteger(seq) || seq < 0) {
      this._emit('error', new RingbusError(Code.invalid_argument, `cursorStore.load(${JSON.stringify(topic)}): seq ${c.seq} is not a seq >= 0`));
      return null;
    }
    let epoch = 0n;
    try {
      epoch = BigInt(c.epoch ?? 0);
    } catch {
      // an unreadable epoch: the cursor is not checked against the store's
    }
    return { seq, epoch };
  }

  _saveCursor(topic, seq, epoch) {
    try {
      this.options.cursorStore.save(topic, seq, epoch);
    } catch (e) {
      this._emit('error', new RingbusError(Code.internal, `cursorStore.save(${JSON.stringify(topic)}): ${e?.message ?? e}`, { cause: e }));
    }
  }

  // ---- RPC (PROTOCOL §12) ---------------------------------------------------

  /**
   * Calls method at destination (a client_id from STARTED, or a service
   * name). Resolves with an RpcResponse ({payload, text(), json()}), or
   * rejects with a RingbusError whose code is the call's outcome
   * (recipient_not_found, unknown_method, response_timeout,
   * application_error with the responder's message and `payload`, ...).
   * options.timeoutMs: the server's response timeout (default 10000, at
   * most 600000); options.signal: an AbortSignal that cancels the call.
   * A call waits for a connection if there is none; one in flight when the
   * connection is lost fails with `unavailable` (it is not re-sent: it may
   * have run).
   */
  call(destination, method, payload = new Uint8Array(0), options = {}) {
    if (this._state === 'closed' || this._state === 'closing') {
      return Promise.reject(new RingbusError(Code.unavailable, 'the client is closed'));
    }
    if (this._calls.size >= this.options.maxCalls) {
      return Promise.reject(new RingbusError(Code.resource_exhausted, `${this.options.maxCalls} calls in flight (maxCalls)`));
    }
    const timeoutMs = options.timeoutMs ?? RPC_TIMEOUT_MS_DEFAULT;
    const corr = this._corr++;
    let frame;
    try {
      frame = encodeRequest(corr, timeoutMs, destination, method, payload);
    } catch (e) {
      return Promise.reject(new RingbusError(Code.invalid_argument, e.message));
    }
    const signal = options.signal;
    if (signal?.aborted) return Promise.reject(new RingbusError(Code.cancelled, 'the call was aborted before it was sent'));
    return new Promise((resolve, reject) => {
      const call = { corr, frame, conn: null, acked: false, resolve, reject, timer: null, signal, onAbort: null };
      // A backstop for a server that never answers (or a connection that never comes).
      call.timer = setTimeout(
        () => this._settleCall(call, new RingbusError(Code.response_timeout, `no RESPONSE within ${(timeoutMs || RPC_TIMEOUT_MS_DEFAULT) + Limits.RPC_BACKSTOP_MS} ms`)),
        (timeoutMs || RPC_TIMEOUT_MS_DEFAULT) + Limits.RPC_BACKSTOP_MS,
      );
      if (signal) {
        call.onAbort = () => {
          if (call.conn && this._conn === call.conn) {
            // The server answers RESPONSE cancelled: the call's one outcome.
            this._send(call.conn, encodeRequestAck(corr, REQUEST_ACK_CANCEL));
          } else {
            this._settleCall(call, new RingbusError(Code.cancelled, 'the call was aborted before it was sent'));
          }
        };
        signal.addEventListener('abort', call.onAbort, { once: true });
      }
      this._calls.set(corr, call);
      this._pumpCalls();
    });
  }

  _pumpCalls() {
    const conn = this._conn;
    if (!conn?.started || conn.goingAway) return;
    for (const call of this._calls.values()) {
      if (call.conn) continue;
      if (call.frame.length > conn.maxFrameBytes) {
        this._settleCall(call, new RingbusError(Code.payload_too_large, `a REQUEST of ${call.frame.length} bytes is above max_frame_bytes ${conn.maxFrameBytes}`));
        continue;
      }
      call.conn = conn;
      this._send(conn, call.frame);
    }
  }

  _settleCall(call, error, response) {
    if (this._calls.get(call.corr) !== call) return;
    this._calls.delete(call.corr);
    clearTimeout(call.timer);
    call.signal?.removeEventListener('abort', call.onAbort);
    call.frame = null;
    if (error) call.reject(error);
    else call.resolve(response);
  }

  /** The connection is gone: its calls fail, its requests are dropped. */
  _connLostRpc(conn, error) {
    for (const call of [...this._calls.values()]) {
      if (call.conn !== conn) continue;
      this._settleCall(
        call,
        new RingbusError(Code.unavailable, `the connection was lost during the call (not re-sent: it may have run): ${error.message}`, {
          source: 'transport',
          cause: error,
        }),
      );
    }
    for (const [corr, r] of this._regCorr) {
      if (r.conn === conn) {
        this._regCorr.delete(corr);
        r.settleOnReconnect?.();
      }
    }
  }

  /**
   * Serves method: handler(request) is called for every call of it, with
   * {caller, method, payload, timeoutMs, text(), json()}; what it returns
   * (a string, a Uint8Array, or nothing; or a Promise of one) is the
   * response, and what it throws is answered `application_error` with the
   * error's message (and its `payload`, if any). options.service: serve
   * under that service name (shared by its responders) instead of this
   * connection's client_id. Resolves with {method, service, unregister()}
   * once the server has registered it; it is registered again on every
   * new connection.
   */
  serve(method, handler, options = {}) {
    if (this._state === 'closed' || this._state === 'closing') {
      return Promise.reject(new RingbusError(Code.unavailable, 'the client is closed'));
    }
    if (typeof handler !== 'function') return Promise.reject(new TypeError('serve(method, handler): handler is a function'));
    const service = options.service ?? '';
    try {
      encodeRegister(Kind.REGISTER, 0, method, service);
    } catch (e) {
      return Promise.reject(new RingbusError(Code.invalid_argument, e.message));
    }
    let entry = this._serves.get(method);
    if (entry && entry.handler !== handler) {
      return Promise.reject(new RingbusError(Code.invalid_argument, `${JSON.stringify(method)} is served by another handler: one handler per method`));
    }
    if (entry?.services.has(service)) {
      return Promise.reject(new RingbusError(Code.already_registered, `${JSON.stringify(method)} is already served${service ? ` as ${JSON.stringify(service)}` : ''}`));
    }
    let count = 0;
    for (const e of this._serves.values()) count += e.services.size;
    if (count >= Limits.RPC_METHODS_MAX) {
      return Promise.reject(new RingbusError(Code.resource_exhausted, `${Limits.RPC_METHODS_MAX} methods served`));
    }
    if (!entry) this._serves.set(method, (entry = { handler, services: new Map() }));
    const reg = {
      method,
      service,
      unregister: () => this._unserve(method, service, reg),
    };
    entry.services.set(service, reg);
    return this._sendRegister(Kind.REGISTER, method, service).then(
      () => reg,
      (e) => {
        if (entry.services.get(service) === reg) entry.services.delete(service);
        if (entry.services.size === 0 && this._serves.get(method) === entry) this._serves.delete(method);
        throw e;
      },
    );
  }

  async _unserve(method, service, reg) {
    const entry = this._serves.get(method);
    if (!entry || entry.services.get(service) !== reg) return;
    entry.services.delete(service);
    if (entry.services.size === 0) this._serves.delete(method);
    if (this._conn?.started) await this._sendRegister(Kind.UNREGISTER, method, service).catch(() => {});
  }

  /** Sends REGISTER/UNREGISTER now, or on the next connection; resolves at the echo. */
  _sendRegister(kind, method, service) {
    return new Promise((resolve, reject) => {
      const attempt = () => {
        const conn = this._conn;
        if (!conn?.started) {
          // Sent by _reregister on the next connection (REGISTER) or moot (UNREGISTER).
          if (kind === Kind.UNREGISTER) resolve();
          else this._pendingRegs.push({ method, service, resolve, reject });
          return;
        }
        const corr = this._corr++;
        this._regCorr.set(corr, { conn, resolve, reject, settleOnReconnect: kind === Kind.REGISTER ? () => this._pendingRegs.push({ method, service, resolve, reject }) : resolve });
        this._send(conn, encodeRegister(kind, corr, method, service));
      };
      attempt();
    });
  }

  /** After (re)connecting: every method served is registered again. */
  _reregister(conn) {
    const waiting = this._pendingRegs;
    this._pendingRegs = [];
    const waiters = new Map(waiting.map((w) => [`${w.method}\0${w.service}`, w]));
    for (const [method, entry] of this._serves) {
      for (const [service, reg] of entry.services) {
        const w = waiters.get(`${method}\0${service}`);
        const corr = this._corr++;
        this._regCorr.set(corr, {
          conn,
          resolve: () => w?.resolve(),
          reject: (err) => {
            // Refused now (e.g. the service name is taken): it is no longer served.
            if (entry.services.get(service) === reg) entry.services.delete(service);
            if (entry.services.size === 0 && this._serves.get(method) === entry) this._serves.delete(method);
            if (w) w.reject(err);
            else this._emit('serveError', { method, service, error: err });
          },
          settleOnReconnect: () => w && this._pendingRegs.push(w),
        });
        this._send(conn, encodeRegister(Kind.REGISTER, corr, method, service));
        waiters.delete(`${method}\0${service}`);
      }
    }
    // Unregistered while waiting for the connection.
    for (const w of waiters.values()) w.resolve();
  }

  _onRequest(conn, f) {
    // The request id (f.corr) is the server's; REQUEST_ACK and RESPONSE echo it.
    const entry = this._serves.get(f.method);
    this._send(conn, encodeRequestAck(f.corr, 0));
    if (!entry) {
      // Unregistered meanwhile (the server may still route one to us).
      this._send(conn, encodeResponse(f.corr, Code.application_error, `${f.method}: not served here`, new Uint8Array(0)));
      return;
    }
    const req = new RpcRequest(f.peer, f.method, f.payload, f.timeoutMs);
    const answer = (code, message, payload) => {
      if (this._conn !== conn) return; // the call ended with recipient_disconnected
      let frame;
      try {
        frame = encodeResponse(f.corr, code, message, payload);
      } catch (e) {
        frame = encodeResponse(f.corr, Code.application_error, `the response could not be encoded: ${e.message}`, new Uint8Array(0));
      }
      this._send(conn, frame);
    };
    let result;
    try {
      result = entry.handler(req);
    } catch (e) {
      result = Promise.reject(e);
    }
    Promise.resolve(result).then(
      (value) => {
        let payload;
        try {
          payload = value == null ? new Uint8Array(0) : toBytes(value);
        } catch (e) {
          answer(Code.application_error, `the handler returned ${typeof value}: ${e.message}`, new Uint8Array(0));
          return;
        }
        answer(Code.ok, '', payload);
      },
      (e) => {
        let payload = new Uint8Array(0);
        try {
          if (e?.payload != null) payload = toBytes(e.payload);
        } catch {
          // an error payload that is not bytes or text is left out
        }
        answer(Code.application_error, cutUtf8(String(e?.message ?? e), Limits.RPC_ERROR_MESSAGE_BYTES_MAX), payload);
      },
    );
  }

  // ---- keepalive and auth ---------------------------------------------------

  /** Sends PING; resolves with the round trip in ms. */
  ping() {
    const conn = this._conn;
    if (!conn?.started) return Promise.reject(new RingbusError(Code.unavailable, 'not connected'));
    if (this._pings.size >= Limits.PINGS_IN_FLIGHT_MAX) {
      return Promise.reject(new RingbusError(Code.resource_exhausted, `${Limits.PINGS_IN_FLIGHT_MAX} pings in flight`));
    }
    const nonce = this._pingNonce++;
    return new Promise((resolve, reject) => {
      this._pings.set(String(nonce), { resolve, reject, at: Date.now() });
      this._send(conn, encodePing(this._corr++, nonce));
    });
  }

  /**
   * Replaces the connection's token (AUTH, PROTOCOL §6.5): resolves once
   * the server accepted it. A refused token closes the connection with
   * `unauthorized`, which ends the client (not retryable).
   */
  reauth(credentials) {
    const conn = this._conn;
    if (!conn?.started) return Promise.reject(new RingbusError(Code.unavailable, 'not connected'));
    if (this._authWaiter) return Promise.reject(new RingbusError(Code.invalid_argument, 'an AUTH is already in flight'));
    let frame;
    const corr = this._corr++;
    try {
      frame = encodeAuth(corr, credentials);
    } catch (e) {
      return Promise.reject(new RingbusError(Code.invalid_argument, `AUTH: ${e.message}`));
    }
    return new Promise((resolve, reject) => {
      this._authWaiter = { corr, resolve, reject };
      this._send(conn, frame);
    }).then(() => {
      if (this._conn === conn) {
        conn.credentials = credentials;
        this._emit('reauthenticated', { expiresAt: tokenExpiry(credentials) });
        this._scheduleRefresh(conn);
      }
    });
  }

  /**
   * With credentials given as a function returning a token: before the
   * token's exp (refreshBeforeMs, or a third of its lifetime when that is
   * shorter) the function is called again and its token sent in AUTH, so
   * that the connection and its stream outlive the token.
   */
  _scheduleRefresh(conn) {
    clearTimeout(conn.refreshTimer);
    conn.refreshTimer = null;
    if (typeof this.options.credentials !== 'function') return;
    const exp = tokenExpiry(conn.credentials);
    if (exp === null) return;
    const life = exp - Date.now();
    const before = Math.min(this.options.refreshBeforeMs, Math.max(0, life) / 3);
    conn.refreshTimer = setTimeout(async () => {
      conn.refreshTimer = null;
      if (this._conn !== conn) return;
      let creds;
      try {
        creds = await this.options.credentials();
      } catch (e) {
        this._emit('error', new RingbusError(Code.unauthorized, `credentials(): ${e?.message ?? e}`, { cause: e }));
        return;
      }
      if (this._conn !== conn) return;
      // A refused AUTH closes the connection (reported as its error).
      this.reauth(creds).catch(() => {});
    }, Math.max(0, life - before));
  }

  // ---- closing --------------------------------------------------------------

  /**
   * Half-close: waits (up to closeTimeoutMs) for the publishes made so far
   * to be acknowledged, sends CLOSE ok, lets the server finish and close.
   * What is still pending then fails. Iterators end. Resolves when closed.
   */
  async close() {
    if (this._state === 'closed') return;
    if (this._state === 'closing') return this._closePromise;
    this._state = 'closing';
    clearTimeout(this._timer);
    this._closePromise = new Promise((resolve) => {
      this._closeWaiter = resolve;
    });
    const deadline = Date.now() + this.options.closeTimeoutMs;
    const conn = this._conn;
    if (conn?.started) {
      let t;
      await Promise.race([this.flush(), new Promise((r) => (t = setTimeout(r, this.options.closeTimeoutMs)))]);
      clearTimeout(t);
      const c = this._conn;
      if (c?.started) {
        this._send(c, encodeClose(0, Code.ok, ''));
        c.connectTimer = setTimeout(
          () => this._abort(c, new RingbusError(Code.deadline_exceeded, 'the server did not close in time')),
          Math.max(100, deadline - Date.now()),
        );
      } else if (!this._conn) {
        this._finishClose(null);
      }
    } else if (conn) {
      this._abort(conn, new RingbusError(Code.unavailable, 'the client closed'));
    } else {
      this._finishClose(null);
    }
    return this._closePromise;
  }

  _finishClose() {
    if (this._state === 'closed') return;
    this._state = 'closed';
    clearTimeout(this._timer);
    this._rejectAll(new RingbusError(Code.unavailable, 'the client closed before this completed'), null);
    this._settleReady(new RingbusError(Code.unavailable, 'the client closed'));
    this._emit('closed', { error: null });
    this._closeWaiter?.();
  }
}

/** Creates a Client and resolves with it once its first connection is up. */
export async function connect(urls, options = {}) {
  const c = new Client(urls, options);
  await c.connect();
  return c;
}

export { Code, codeName, toBytes };
