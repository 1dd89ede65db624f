// Ephemeral topics against the real daemon: a reader whose socket stops
// being read falls behind, the daemon drops its oldest queued messages of
// the ephemeral topic and says so with LAGGED{topic, skipped}; the client
// reports it as a `lagged` event and on the next Message (`skipped`), so
// that every seq is accounted for: next seq = last + 1 + skipped.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocket as WsWebSocket } from 'ws';
import { Daemon, waitFor } from './harness.js';
import { connect } from '../src/index.js';

let d;
before(async () => {
  d = await new Daemon({
    wss: false,
    extra:
      '[limits]\nmax_frame_bytes = 16384\nsend_queue_bytes = 65536\n' +
      '[[topic_class]]\npattern = "eph.>"\nstorage = "none"\n',
  }).start();
});
after(async () => {
  await d?.stop();
});

test('a reader that stops reading an ephemeral topic is told how many it lagged, and every seq is accounted for', async () => {
  // The reader's WebSocket, kept so that the test can stop reading its socket.
  const sockets = [];
  class Recorded extends WsWebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const topic = `eph.lag.${process.pid}`;
  const reader = await connect(d.wsUrl, { WebSocket: Recorded });
  const got = [];
  const lagged = [];
  reader.on('lagged', (e) => lagged.push(e));
  const sub = reader.subscribe(topic, { cursor: 'now', onMessage: (m) => got.push({ seq: m.seq, skipped: m.skipped }) });
  await sub.ready;

  const pub = await connect(d.wsUrl, { autoKeys: false });
  const first = await pub.publish(topic, 'first');
  await waitFor(() => got.length === 1, 10000, 'the first message');
  sockets[0]._socket.pause();
  const payload = 'x'.repeat(900);
  let last = first.seq;
  for (let round = 0; round < 20; round++) {
    const acks = await Promise.all(Array.from({ length: 1000 }, () => pub.publish(topic, payload)));
    last = acks[acks.length - 1].seq;
  }
  sockets[0]._socket.resume();
  await waitFor(() => got.length > 0 && got[got.length - 1].seq === last, 20000, `the reader at seq ${last}`);

  assert.ok(lagged.length > 0, 'the reader was never told it lagged');
  assert.ok(lagged.every((e) => e.topic === topic && e.skipped >= 1), JSON.stringify(lagged));
  for (let i = 1; i < got.length; i++) {
    assert.equal(got[i].seq, got[i - 1].seq + 1 + got[i].skipped, `message ${i}: ${JSON.stringify(got.slice(i - 1, i + 1))}`);
  }
  const skipped = got.reduce((n, m) => n + m.skipped, 0);
  assert.equal(skipped, lagged.reduce((n, e) => n + e.skipped, 0));
  assert.equal(got.length + skipped, last - first.seq + 1);
  await pub.close();
  await reader.close();
});
