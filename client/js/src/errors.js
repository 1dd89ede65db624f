import { Code, codeName } from './codec.js';

/**
 * An error from the bus. `code` is the wire code (PROTOCOL §5, a Number;
 * `Code` maps names to numbers) and `codeName` its name. `source` says
 * where it came from: 'error' (an ERROR frame), 'close' (a server CLOSE),
 * 'topic' (a TOPIC_ERROR: one topic left the stream), 'client' (decided
 * here: a limit, a closed client, a broken frame from the server) or
 * 'transport' (the WebSocket failed) or 'rpc' (a RESPONSE: the outcome of
 * a call; an application_error carries the responder's `payload`).
 */
export class RingbusError extends Error {
  constructor(code, message, { source = 'client', topic = undefined, cause = undefined } = {}) {
    super(`${codeName(code)}: ${message}`, cause === undefined ? undefined : { cause });
    this.name = 'RingbusError';
    this.code = code;
    this.codeName = codeName(code);
    this.source = source;
    this.serverMessage = message;
    if (topic !== undefined) this.topic = topic;
  }

  /** True when retrying (reconnecting, publishing again) may succeed. */
  get retryable() {
    return !NON_RETRYABLE.has(this.code);
  }
}

/**
 * Codes after which reconnecting cannot help: the server refused who we
 * are, what we asked, or how we speak (issue 15: stopped at once).
 */
export const NON_RETRYABLE = new Set([
  Code.unauthorized,
  Code.forbidden,
  Code.invalid_argument,
  Code.unsupported_version,
  Code.bad_frame,
]);
