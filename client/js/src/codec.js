// The ringbus wire format (docs/PROTOCOL.md): every frame a client sends
// or receives, encoded into one Uint8Array and decoded from one. Pure: no
// I/O, no timers. Integers are little-endian; u64 fields that the client
// chooses (corr_id, mutate_id) or counts (seq) are Numbers checked to stay
// below 2^53; the store epoch and PING nonces are BigInts.

export const PROTOCOL_VERSION = 1;
export const HEADER_BYTES = 16;
/** The frame size a client assumes until STARTED names the real one. */
export const MAX_FRAME_BYTES_DEFAULT = 1 << 20;
export const TOPIC_BYTES_MAX = 255;
export const KEY_BYTES_MAX = 255;
export const STR16_BYTES_MAX = 0xffff;

export const Kind = Object.freeze({
  HELLO: 1,
  STARTED: 2,
  ERROR: 3,
  PING: 4,
  PONG: 5,
  CLOSE: 6,
  PUBLISH: 7,
  PUBLISH_ACK: 8,
  MUTATE: 9,
  MESSAGES: 10,
  TOPICS_LIVE: 11,
  CATCHUP_COMPLETE: 12,
  AUTH: 13,
  GOING_AWAY: 14,
  TOPIC_ERROR: 15,
  REGISTER: 16,
  UNREGISTER: 17,
  REQUEST: 18,
  REQUEST_ACK: 19,
  RESPONSE: 20,
  LAGGED: 21,
});

const KIND_NAMES = Object.fromEntries(Object.entries(Kind).map(([k, v]) => [v, k]));

/** Kinds reserved by later protocol work (presence): a client that did
 * not ask for them skips them instead of failing. */
const RESERVED_KIND_MIN = 22;
const RESERVED_KIND_MAX = 27;

export const Code = Object.freeze({
  ok: 0,
  bad_frame: 1,
  unsupported_version: 2,
  unauthorized: 3,
  forbidden: 4,
  too_large: 5,
  resource_exhausted: 6,
  deadline_exceeded: 7,
  unavailable: 8,
  invalid_topic: 9,
  internal: 10,
  invalid_argument: 11,
  going_away: 12,
  out_of_range: 13,
  epoch_mismatch: 14,
  cursor_ahead: 15,
  dedup_full: 18,
  recipient_not_found: 20,
  unknown_method: 21,
  connection_timeout: 22,
  response_timeout: 23,
  recipient_disconnected: 24,
  payload_too_large: 25,
  application_error: 26,
  cancelled: 27,
  already_registered: 28,
  responder_busy: 29,
});

const CODE_NAMES = Object.fromEntries(Object.entries(Code).map(([k, v]) => [v, k]));

/** The name of a wire code; unknown codes are "code_N" (PROTOCOL §5:
 * clients tolerate codes they do not know). */
export function codeName(code) {
  return CODE_NAMES[code] ?? `code_${code}`;
}

export function kindName(kind) {
  return KIND_NAMES[kind] ?? `kind_${kind}`;
}

export const CURSOR_SEQ = 0;
export const CURSOR_NOW = 1;
export const MUTATE_HISTORY_ONLY = 0x01;
export const CAP_STREAM = 1n;
export const CAP_PUBLISH = 2n;
/** PUBLISH_ACK's appended flags byte: bit 0, the server recognised the
 * idempotency key and answered with the original seq. */
export const ACK_DUPLICATE = 0x01;

/** REQUEST_ACK's flags: bit 0, the caller cancels its call. */
export const REQUEST_ACK_CANCEL = 0x01;
/** RPC names (method, service, destination): 1..255 bytes (0 for a service). */
export const RPC_NAME_BYTES_MAX = 255;
/** A REQUEST's timeout_ms: 0 means this, at most RPC_TIMEOUT_MS_MAX. */
export const RPC_TIMEOUT_MS_DEFAULT = 10000;
export const RPC_TIMEOUT_MS_MAX = 600000;

export const CRED_TOKEN = 1;
export const CRED_PASSWORD = 2;

const utf8enc = new TextEncoder();
const utf8dec = new TextDecoder('utf-8', { fatal: true });
const TWO32 = 2 ** 32;

/** A frame that breaks the protocol. `code` is the wire code a peer would
 * answer with (bad_frame, too_large, unsupported_version). */
export class ProtocolError extends Error {
  constructor(code, message) {
    super(`${codeName(code)}: ${message}`);
    this.name = 'ProtocolError';
    this.code = code;
    this.codeName = codeName(code);
  }
}

/** UTF-8 bytes of a string; a Uint8Array goes through untouched. */
export function toBytes(value) {
  if (value instanceof Uint8Array) return value;
  if (typeof value === 'string') return utf8enc.encode(value);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError('expected a string or a Uint8Array');
}

const topicCache = new Map();
const TOPIC_CACHE_ENTRIES_MAX = 256;

function topicBytes(topic) {
  if (typeof topic === 'string') {
    const hit = topicCache.get(topic);
    if (hit) return hit;
  }
  const raw = toBytes(topic);
  if (raw.length < 1 || raw.length > TOPIC_BYTES_MAX) {
    throw new RangeError(`topic of ${raw.length} bytes: a topic is 1..${TOPIC_BYTES_MAX} bytes`);
  }
  if (typeof topic === 'string') {
    if (topicCache.size >= TOPIC_CACHE_ENTRIES_MAX) topicCache.clear();
    topicCache.set(topic, raw);
  }
  return raw;
}

function str16Bytes(value, what) {
  const raw = toBytes(value);
  if (raw.length > STR16_BYTES_MAX) {
    throw new RangeError(`${what} of ${raw.length} bytes does not fit its u16 length`);
  }
  return raw;
}

/** Writes frames into one exactly sized buffer. */
class Writer {
  constructor(kind, corr, bodyBytes) {
    this.buf = new Uint8Array(HEADER_BYTES + bodyBytes);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
    this.u32(this.buf.length);
    this.u8(PROTOCOL_VERSION);
    this.u8(kind);
    this.u16(0);
    this.u64(corr);
  }
  u8(v) {
    this.view.setUint8(this.pos, v);
    this.pos += 1;
  }
  u16(v) {
    this.view.setUint16(this.pos, v, true);
    this.pos += 2;
  }
  u32(v) {
    this.view.setUint32(this.pos, v, true);
    this.pos += 4;
  }
  u64(v) {
    if (typeof v === 'bigint') {
      this.view.setBigUint64(this.pos, v, true);
    } else {
      if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`u64 ${v} is not a safe integer`);
      this.view.setUint32(this.pos, v % TWO32, true);
      this.view.setUint32(this.pos + 4, Math.floor(v / TWO32), true);
    }
    this.pos += 8;
  }
  bytes(b) {
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  done() {
    if (this.pos !== this.buf.length) throw new Error(`encoder: wrote ${this.pos} of ${this.buf.length}`);
    return this.buf;
  }
}

/** Credentials (PROTOCOL §6.5): none, {token}, {user, password}, or raw bytes. */
export function encodeCredentials(creds) {
  if (creds == null) return new Uint8Array(0);
  if (creds instanceof Uint8Array) return creds;
  if (typeof creds.token === 'string') {
    const t = utf8enc.encode(creds.token);
    if (t.length < 1 || t.length > 8192) throw new RangeError('token: 1..8192 bytes');
    const out = new Uint8Array(3 + t.length);
    out[0] = CRED_TOKEN;
    new DataView(out.buffer).setUint16(1, t.length, true);
    out.set(t, 3);
    return out;
  }
  if (creds.user != null) {
    const u = utf8enc.encode(creds.user);
    const p = toBytes(creds.password ?? '');
    if (u.length < 1 || u.length > 255) throw new RangeError('user: 1..255 bytes');
    if (p.length < 1 || p.length > 1024) throw new RangeError('password: 1..1024 bytes');
    const out = new Uint8Array(2 + u.length + 2 + p.length);
    out[0] = CRED_PASSWORD;
    out[1] = u.length;
    out.set(u, 2);
    new DataView(out.buffer).setUint16(2 + u.length, p.length, true);
    out.set(p, 4 + u.length);
    return out;
  }
  throw new TypeError('credentials: {token} or {user, password}');
}

export function encodeHello(corr, name = '', credentials = null) {
  const n = str16Bytes(name, 'client name');
  const c = str16Bytes(encodeCredentials(credentials), 'credentials');
  const w = new Writer(Kind.HELLO, corr, 2 + 2 + n.length + 2 + c.length);
  w.u16(PROTOCOL_VERSION);
  w.u16(n.length);
  w.bytes(n);
  w.u16(c.length);
  w.bytes(c);
  return w.done();
}

export function encodePing(corr, nonce) {
  const w = new Writer(Kind.PING, corr, 8);
  w.u64(BigInt(nonce));
  return w.done();
}

export function encodePong(corr, nonce) {
  const w = new Writer(Kind.PONG, corr, 8);
  w.u64(BigInt(nonce));
  return w.done();
}

export function encodeClose(corr = 0, status = Code.ok, message = '') {
  const m = str16Bytes(message, 'close message');
  const w = new Writer(Kind.CLOSE, corr, 2 + 2 + m.length);
  w.u16(status);
  w.u16(m.length);
  w.bytes(m);
  return w.done();
}

export function encodeAuth(corr, credentials) {
  const c = str16Bytes(encodeCredentials(credentials), 'credentials');
  const w = new Writer(Kind.AUTH, corr, 2 + c.length);
  w.u16(c.length);
  w.bytes(c);
  return w.done();
}

/** PUBLISH. The payload is copied once, into the frame (the one copy a
 * WebSocket message needs). */
export function encodePublish(corr, topic, payload, key = null) {
  const t = topicBytes(topic);
  const k = key == null ? new Uint8Array(0) : toBytes(key);
  if (k.length > KEY_BYTES_MAX) throw new RangeError(`idempotency key of ${k.length} bytes: at most 255`);
  const p = toBytes(payload);
  const w = new Writer(Kind.PUBLISH, corr, 1 + t.length + 1 + k.length + 4 + p.length);
  w.u8(t.length);
  w.bytes(t);
  w.u8(k.length);
  w.bytes(k);
  w.u32(p.length);
  w.bytes(p);
  return w.done();
}

/** PUBLISH with a generated 16-byte idempotency key, written in place:
 * the 8 bytes of prefix, then counter as a u64. */
export function encodePublishKeyed(corr, topic, payload, prefix, counter) {
  const t = topicBytes(topic);
  const p = toBytes(payload);
  const w = new Writer(Kind.PUBLISH, corr, 1 + t.length + 1 + 16 + 4 + p.length);
  w.u8(t.length);
  w.bytes(t);
  w.u8(16);
  w.bytes(prefix);
  w.u64(counter);
  w.u32(p.length);
  w.bytes(p);
  return w.done();
}

/** The bytes one MUTATE add takes, and the fixed part of a MUTATE frame
 * (header, mutate_id, flags, both counts, epoch). */
export function mutateAddBytes(topic) {
  return 1 + topicBytes(topic).length + 1 + 8;
}
export const MUTATE_FIXED_BYTES = HEADER_BYTES + 8 + 1 + 4 + 4 + 8;

/**
 * MUTATE. adds: [{topic, cursor}] where cursor is a seq (deliver seq >
 * cursor) or 'now'; removes: [topic]; epoch: the store epoch the cursors
 * belong to (0n = none known).
 */
export function encodeMutate(corr, mutateId, adds = [], removes = [], historyOnly = false, epoch = 0n) {
  const addRaw = adds.map((a) => [topicBytes(a.topic), a.cursor]);
  const remRaw = removes.map((t) => topicBytes(t));
  let body = 8 + 1 + 4 + 4 + 8;
  for (const [t] of addRaw) body += 1 + t.length + 9;
  for (const t of remRaw) body += 1 + t.length;
  const w = new Writer(Kind.MUTATE, corr, body);
  w.u64(mutateId);
  w.u8(historyOnly ? MUTATE_HISTORY_ONLY : 0);
  w.u32(addRaw.length);
  for (const [t, cursor] of addRaw) {
    w.u8(t.length);
    w.bytes(t);
    if (cursor === 'now') {
      w.u8(CURSOR_NOW);
      w.u64(0);
    } else {
      w.u8(CURSOR_SEQ);
      w.u64(cursor);
    }
  }
  w.u32(remRaw.length);
  for (const t of remRaw) {
    w.u8(t.length);
    w.bytes(t);
  }
  w.u64(BigInt(epoch ?? 0n));
  return w.done();
}

function name8Bytes(value, what, minBytes) {
  const raw = toBytes(value ?? '');
  if (raw.length < minBytes || raw.length > RPC_NAME_BYTES_MAX) {
    throw new RangeError(`${what} of ${raw.length} bytes: ${minBytes}..${RPC_NAME_BYTES_MAX} bytes`);
  }
  return raw;
}

/** REGISTER (kind 16) or UNREGISTER (kind 17) of method under service ('' = the client_id). */
export function encodeRegister(kind, corr, method, service = '') {
  if (kind !== Kind.REGISTER && kind !== Kind.UNREGISTER) throw new RangeError(`kind ${kind} is not REGISTER or UNREGISTER`);
  const m = name8Bytes(method, 'method', 1);
  const s = name8Bytes(service, 'service', 0);
  const w = new Writer(kind, corr, 1 + m.length + 1 + s.length);
  w.u8(m.length);
  w.bytes(m);
  w.u8(s.length);
  w.bytes(s);
  return w.done();
}

/** REQUEST: a call of method at peer (a client_id or a service). */
export function encodeRequest(corr, timeoutMs, peer, method, payload) {
  if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > RPC_TIMEOUT_MS_MAX) {
    throw new RangeError(`timeout_ms ${timeoutMs}: 0..${RPC_TIMEOUT_MS_MAX}`);
  }
  const d = name8Bytes(peer, 'destination', 1);
  const m = name8Bytes(method, 'method', 1);
  const p = toBytes(payload ?? new Uint8Array(0));
  const w = new Writer(Kind.REQUEST, corr, 4 + 1 + d.length + 1 + m.length + 4 + p.length);
  w.u32(timeoutMs);
  w.u8(d.length);
  w.bytes(d);
  w.u8(m.length);
  w.bytes(m);
  w.u32(p.length);
  w.bytes(p);
  return w.done();
}

export function encodeRequestAck(corr, flags = 0) {
  const w = new Writer(Kind.REQUEST_ACK, corr, 1);
  w.u8(flags);
  return w.done();
}

/** RESPONSE: code 0 (ok) with the answer, or application_error with a message. */
export function encodeResponse(corr, code, message, payload) {
  const m = str16Bytes(message ?? '', 'response message');
  const p = toBytes(payload ?? new Uint8Array(0));
  const w = new Writer(Kind.RESPONSE, corr, 2 + 2 + m.length + 4 + p.length);
  w.u16(code);
  w.u16(m.length);
  w.bytes(m);
  w.u32(p.length);
  w.bytes(p);
  return w.done();
}

// ---- decoding ---------------------------------------------------------------

class Reader {
  constructor(kind, buf, start, end) {
    this.kind = kindName(kind);
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.pos = start;
    this.end = end;
    this.lastTopic = null;
  }
  fail(why) {
    throw new ProtocolError(Code.bad_frame, `${this.kind}: ${why}`);
  }
  need(n, what) {
    if (this.end - this.pos < n) this.fail(`${what}: truncated (needs ${n} bytes, ${this.end - this.pos} left)`);
  }
  left() {
    return this.end - this.pos;
  }
  u8(what) {
    this.need(1, what);
    return this.view.getUint8(this.pos++);
  }
  u16(what) {
    this.need(2, what);
    const v = this.view.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }
  u32(what) {
    this.need(4, what);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  /** A u64 as a Number; values at or above 2^53 are refused. */
  u64n(what) {
    this.need(8, what);
    const lo = this.view.getUint32(this.pos, true);
    const hi = this.view.getUint32(this.pos + 4, true);
    this.pos += 8;
    if (hi >= 1 << 21) this.fail(`${what}: ${(BigInt(hi) << 32n) | BigInt(lo)} is beyond 2^53`);
    return hi * TWO32 + lo;
  }
  u64b(what) {
    this.need(8, what);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }
  /** A view on the received bytes (no copy). */
  take(n, what) {
    this.need(n, what);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  text(raw, what) {
    try {
      return utf8dec.decode(raw);
    } catch {
      return this.fail(`${what}: invalid UTF-8`);
    }
  }
  str16(what) {
    return this.text(this.take(this.u16(`${what} length`), what), what);
  }
  topic(what = 'topic') {
    const n = this.u8(`${what} length`);
    if (n === 0) this.fail(`${what} length 0`);
    const raw = this.take(n, what);
    // A batch usually repeats one topic: decode its bytes once.
    const last = this.lastTopic;
    if (last && last.raw.length === n) {
      let same = true;
      for (let i = 0; i < n; i++) {
        if (last.raw[i] !== raw[i]) {
          same = false;
          break;
        }
      }
      if (same) return last.text;
    }
    const text = this.text(raw, what);
    this.lastTopic = { raw, text };
    return text;
  }
  name8(what, minBytes) {
    const n = this.u8(`${what} length`);
    if (n < minBytes) this.fail(`${what} length ${n}`);
    return this.text(this.take(n, what), what);
  }
  count(what, minBytes) {
    const n = this.u32(what);
    if (n * minBytes > this.left()) this.fail(`${what} ${n} needs at least ${n * minBytes} bytes, ${this.left()} left`);
    return n;
  }
}

function decodeBody(kind, r) {
  switch (kind) {
    case Kind.HELLO: {
      const version = r.u16('protocol_version');
      const name = r.str16('client_name');
      const credentials = r.take(r.u16('credentials length'), 'credentials');
      return { version, name, credentials };
    }
    case Kind.STARTED: {
      const out = {
        keepaliveMs: r.u32('keepalive_ms'),
        capabilities: r.u64b('capabilities'),
        maxFrameBytes: r.u32('max_frame_bytes'),
        serverId: r.str16('server_id'),
        epoch: 0n,
        clientId: '',
      };
      if (r.left() > 0) out.epoch = r.u64b('epoch');
      if (r.left() > 0) out.clientId = r.str16('client_id');
      return out;
    }
    case Kind.ERROR:
    case Kind.CLOSE: {
      const code = r.u16('code');
      return { code, codeName: codeName(code), message: r.str16('message') };
    }
    case Kind.PING:
    case Kind.PONG:
      return { nonce: r.u64b('nonce') };
    case Kind.PUBLISH: {
      const topic = r.topic();
      const key = r.take(r.u8('key_len'), 'key');
      const payload = r.take(r.u32('payload length'), 'payload');
      return { topic, key, payload };
    }
    case Kind.PUBLISH_ACK: {
      const out = { topic: r.topic(), seq: r.u64n('seq'), flags: 0 };
      if (r.left() > 0) out.flags = r.u8('flags');
      return out;
    }
    case Kind.MUTATE: {
      const mutateId = r.u64n('mutate_id');
      const flags = r.u8('flags');
      if (flags & ~MUTATE_HISTORY_ONLY) r.fail(`flags 0x${flags.toString(16)} has unknown bits`);
      const adds = [];
      const nAdds = r.count('add_count', 11);
      for (let i = 0; i < nAdds; i++) {
        const topic = r.topic(`add ${i}: topic`);
        const ck = r.u8(`add ${i}: cursor_kind`);
        const cursor = r.u64n(`add ${i}: cursor`);
        if (ck === CURSOR_NOW) {
          if (cursor !== 0) r.fail(`add ${i}: cursor ${cursor} with cursor_kind now (must be 0)`);
          adds.push({ topic, cursor: 'now' });
        } else if (ck === CURSOR_SEQ) {
          adds.push({ topic, cursor });
        } else {
          r.fail(`add ${i}: cursor_kind ${ck} unknown`);
        }
      }
      const removes = [];
      const nRem = r.count('remove_count', 2);
      for (let i = 0; i < nRem; i++) removes.push(r.topic(`remove ${i}: topic`));
      const epoch = r.left() > 0 ? r.u64b('epoch') : 0n;
      return { mutateId, historyOnly: (flags & MUTATE_HISTORY_ONLY) !== 0, adds, removes, epoch };
    }
    case Kind.MESSAGES: {
      const mutateId = r.u64n('mutate_id');
      const n = r.count('count', 14);
      const items = new Array(n);
      for (let i = 0; i < n; i++) {
        const topic = r.topic(`item ${i}: topic`);
        const seq = r.u64n(`item ${i}: seq`);
        const payload = r.take(r.u32(`item ${i}: payload length`), `item ${i}: payload`);
        items[i] = { topic, seq, payload };
      }
      return { mutateId, items };
    }
    case Kind.TOPICS_LIVE: {
      const n = r.count('count', 2);
      const topics = [];
      for (let i = 0; i < n; i++) topics.push(r.topic(`topic ${i}`));
      return { topics };
    }
    case Kind.CATCHUP_COMPLETE:
      return { mutateId: r.u64n('mutate_id') };
    case Kind.AUTH:
      return { credentials: r.take(r.u16('credentials length'), 'credentials') };
    case Kind.GOING_AWAY:
      return { reconnectDelayMs: r.u32('reconnect_delay_ms'), message: r.str16('message') };
    case Kind.TOPIC_ERROR: {
      const mutateId = r.u64n('mutate_id');
      const topic = r.topic();
      const code = r.u16('code');
      return { mutateId, topic, code, codeName: codeName(code), message: r.str16('message') };
    }
    case Kind.REGISTER:
    case Kind.UNREGISTER: {
      const method = r.name8('method', 1);
      return { method, service: r.name8('service', 0) };
    }
    case Kind.REQUEST: {
      const timeoutMs = r.u32('timeout_ms');
      const peer = r.name8('peer', 1);
      const method = r.name8('method', 1);
      return { timeoutMs, peer, method, payload: r.take(r.u32('payload length'), 'payload') };
    }
    case Kind.REQUEST_ACK: {
      const flags = r.u8('flags');
      if (flags & ~REQUEST_ACK_CANCEL) r.fail(`flags 0x${flags.toString(16)} has unknown bits`);
      return { flags, cancel: (flags & REQUEST_ACK_CANCEL) !== 0 };
    }
    case Kind.RESPONSE: {
      const code = r.u16('code');
      const message = r.str16('message');
      return { code, codeName: codeName(code), message, payload: r.take(r.u32('payload length'), 'payload') };
    }
    case Kind.LAGGED:
      return { topic: r.topic(), skipped: r.u64n('skipped') };
    default:
      throw new Error(`no decoder for kind ${kind}`);
  }
}

/**
 * Decodes exactly one frame from buf (a WebSocket message carries exactly
 * one). Returns {kind, kindName, corr, size, ...fields}; a frame of a kind
 * reserved for later protocol work comes back as {kind, reserved: true}.
 * Byte fields (payload, key) are views into buf. Throws ProtocolError.
 */
export function decodeFrame(buf, maxFrameBytes = MAX_FRAME_BYTES_DEFAULT) {
  if (!(buf instanceof Uint8Array)) buf = toBytes(buf);
  if (buf.length < HEADER_BYTES) {
    throw new ProtocolError(Code.bad_frame, `message of ${buf.length} bytes is shorter than the 16-byte header`);
  }
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const size = view.getUint32(0, true);
  const version = view.getUint8(4);
  const kind = view.getUint8(5);
  const flags = view.getUint16(6, true);
  if (size < HEADER_BYTES) throw new ProtocolError(Code.bad_frame, `frame size ${size} below header 16`);
  if (size > maxFrameBytes) {
    throw new ProtocolError(Code.too_large, `frame size ${size} above max_frame_bytes ${maxFrameBytes}`);
  }
  if (version !== PROTOCOL_VERSION) {
    throw new ProtocolError(Code.unsupported_version, `protocol version ${version} unsupported`);
  }
  const reserved = kind >= RESERVED_KIND_MIN && kind <= RESERVED_KIND_MAX;
  if (!(kind in KIND_NAMES) && !reserved) throw new ProtocolError(Code.bad_frame, `frame kind ${kind} unknown`);
  if (flags !== 0) throw new ProtocolError(Code.bad_frame, `${kindName(kind)}: header flags ${flags} not zero`);
  if (size !== buf.length) {
    throw new ProtocolError(
      Code.bad_frame,
      `${kindName(kind)}: message of ${buf.length} bytes holds a frame of ${size} (one message is one frame)`,
    );
  }
  const lo = view.getUint32(8, true);
  const hi = view.getUint32(12, true);
  const corr = hi * TWO32 + lo;
  if (reserved) return { kind, kindName: kindName(kind), corr, size, reserved: true };
  const r = new Reader(kind, buf, HEADER_BYTES, size);
  const fields = decodeBody(kind, r);
  if (r.left() !== 0) r.fail(`${r.left()} trailing bytes`);
  fields.kind = kind;
  fields.kindName = kindName(kind);
  fields.corr = corr;
  fields.size = size;
  return fields;
}

/** Server-side encoders, used by the tests to check the decoder. */
export function encodeFrame(kind, corr, body = new Uint8Array(0)) {
  const w = new Writer(kind, corr, body.length);
  w.bytes(body);
  return w.done();
}
