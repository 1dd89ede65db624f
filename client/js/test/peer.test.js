// GOING_AWAY and the PUBLISH_ACK duplicate flag against a scripted peer
// (the `ws` package's server speaking the frames of docs/PROTOCOL.md
// through this package's codec), where the timing is exact: the publish is
// left unanswered on the draining connection, nothing new is sent there,
// and its re-send keeps its key. The daemon's own GOING_AWAY and dedup are
// checked in resume.test.js and reconnect.test.js.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocketServer } from 'ws';
import { Kind, Code, decodeFrame } from '../src/codec.js';
import { encodeFrame } from '../src/codec.js';
import { connect } from '../src/index.js';

const le = (n, bytes) => {
  const b = Buffer.alloc(bytes);
  if (bytes === 8) b.writeBigUInt64LE(BigInt(n));
  else if (bytes === 4) b.writeUInt32LE(n);
  else if (bytes === 2) b.writeUInt16LE(n);
  else b.writeUInt8(n);
  return b;
};
const str16 = (s) => Buffer.concat([le(Buffer.byteLength(s), 2), Buffer.from(s)]);
const topic = (s) => Buffer.concat([le(Buffer.byteLength(s), 1), Buffer.from(s)]);
const started = (corr, epoch) =>
  encodeFrame(Kind.STARTED, corr, Buffer.concat([le(30000, 4), le(3, 8), le(1 << 20, 4), str16('peer'), le(epoch, 8)]));

test('GOING_AWAY is honoured: nothing new on that connection, reconnect after the hint, in-flight publish re-sent with its key, duplicate flag read', async () => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (p) => (p.has('ringbus.v1') ? 'ringbus.v1' : false) });
  await new Promise((r) => wss.once('listening', r));
  const url = `ws://127.0.0.1:${wss.address().port}/ringbus`;
  const conns = [];
  const HINT_MS = 400;
  wss.on('connection', (ws) => {
    const me = { at: Date.now(), publishes: [] };
    conns.push(me);
    ws.on('message', (data) => {
      const f = decodeFrame(new Uint8Array(data));
      if (f.kind === Kind.HELLO) ws.send(started(f.corr, 77));
      if (f.kind !== Kind.PUBLISH) return;
      me.publishes.push({ key: Buffer.from(f.key).toString('hex'), corr: f.corr });
      if (conns.length === 1) {
        // First connection: announce the shutdown, leave the publish unanswered.
        ws.send(encodeFrame(Kind.GOING_AWAY, 0, Buffer.concat([le(HINT_MS, 4), str16('deploy')])));
        setTimeout(() => {
          ws.send(encodeFrame(Kind.CLOSE, 0, Buffer.concat([le(Code.going_away, 2), str16('shutting down')])));
          ws.close(1001);
        }, 100);
      } else {
        // Second connection: the retry is recognised (flags bit 0).
        ws.send(encodeFrame(Kind.PUBLISH_ACK, f.corr, Buffer.concat([topic('t'), le(9, 8), le(1, 1)])));
      }
    });
  });
  const c = await connect(url, { backoffBaseMs: 10, backoffCapMs: 20 });
  const hints = [];
  c.on('goingAway', (e) => hints.push(e));
  const delays = [];
  c.on('reconnecting', (e) => delays.push(e.delayMs));
  const first = c.publish('t', 'x');
  await new Promise((r) => setTimeout(r, 30));
  // Sent after GOING_AWAY: held back for the next connection.
  const second = c.publish('t', 'y');
  const ack = await first;
  assert.deepEqual(ack, { topic: 't', seq: 9, duplicate: true });
  assert.equal((await second).duplicate, true);
  assert.deepEqual(hints, [{ reconnectDelayMs: HINT_MS, message: 'deploy' }]);
  assert.equal(conns.length, 2);
  assert.equal(conns[0].publishes.length, 1, 'nothing new on a connection that is going away');
  assert.ok(delays[0] >= HINT_MS && delays[0] < 2 * HINT_MS, `delay ${delays[0]}`);
  assert.ok(conns[1].at - conns[0].at >= HINT_MS);
  assert.equal(conns[1].publishes[0].key, conns[0].publishes[0].key, 'the re-sent publish keeps its key');
  assert.notEqual(conns[1].publishes[1].key, conns[1].publishes[0].key);
  assert.equal(conns[0].publishes[0].key.length, 32);
  await c.close();
  await new Promise((r) => wss.close(r));
});
