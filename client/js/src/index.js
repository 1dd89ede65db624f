// @ringbus/client: the ringbus client for browsers and Node.js.
export { Client, Message, Subscription, RpcRequest, RpcResponse, Limits, backoffDelay, connect, tokenExpiry } from './client.js';
export { RingbusError, NON_RETRYABLE } from './errors.js';
export { Code, Kind, ProtocolError, codeName, kindName, toBytes, decodeFrame, PROTOCOL_VERSION } from './codec.js';
