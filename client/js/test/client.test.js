// The client against the real daemon, over ws and wss: publish and its
// window, the mutable stream (add, remove, history only, cursors, now),
// its events and iterators, typed errors, PING, half-close.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Daemon, sleep, waitFor } from './harness.js';
import { connect, Code, RingbusError, Client } from '../src/index.js';

let d;
before(async () => {
  d = await new Daemon().start();
});
after(async () => {
  await d?.stop();
});

let topicN = 0;
const fresh = (what) => `js.${what}.${process.pid}.${++topicN}`;

for (const kind of ['ws', 'wss']) {
  const open = (opts = {}) =>
    connect(kind === 'ws' ? d.wsUrl : d.wssUrl, { maxAttempts: 3, ...(kind === 'wss' ? { wsOptions: d.wsOptions } : {}), ...opts });

  describe(kind, () => {
    test('pipelined publishes beyond the window get dense seqs in order', async () => {
      const c = await open({ maxInFlight: 8 });
      const t = fresh('pipe');
      const acks = await Promise.all(Array.from({ length: 300 }, (_, i) => c.publish(t, `m${i}`)));
      assert.deepEqual(acks.map((a) => a.seq), Array.from({ length: 300 }, (_, i) => i + 1));
      assert.ok(acks.every((a) => a.topic === t && a.duplicate === false));
      assert.ok(c.epoch > 0n);
      await c.close();
    });

    test('subscribe delivers history then live, exactly once, with events in order', async () => {
      const c = await open();
      const t = fresh('sub');
      for (let i = 1; i <= 5; i++) await c.publish(t, `h${i}`);
      const events = [];
      c.on('live', (ts) => ts.includes(t) && events.push('live'));
      c.on('catchupComplete', () => events.push('complete'));
      c.on('message', (m) => m.topic === t && events.push(m.seq));
      const sub = c.subscribe(t);
      const ready = await sub.ready;
      assert.deepEqual(ready, { live: [t], errors: [] });
      assert.deepEqual(events, [1, 2, 3, 4, 5, 'live', 'complete']);
      const p = c.publish(t, new Uint8Array([0, 255, 7]));
      const got = [];
      for await (const m of sub) {
        got.push(m);
        if (got.length === 6) break;
      }
      assert.deepEqual(got.map((m) => m.seq), [1, 2, 3, 4, 5, 6]);
      assert.deepEqual(got.slice(0, 5).map((m) => m.text()), ['h1', 'h2', 'h3', 'h4', 'h5']);
      assert.ok(got[0].historic && !got[5].historic);
      assert.deepEqual([...got[5].payload], [0, 255, 7]);
      assert.equal((await p).seq, 6);
      assert.deepEqual(c.cursors()[t], { seq: 6, epoch: c.epoch });
      await c.close();
    });

    test('cursors: from a seq, from now, history only, and remove', async () => {
      const c = await open();
      const [a, b, h] = [fresh('a'), fresh('b'), fresh('h')];
      for (let i = 1; i <= 4; i++) await Promise.all([c.publish(a, `a${i}`), c.publish(b, `b${i}`), c.publish(h, `h${i}`)]);
      const seen = [];
      c.on('message', (m) => seen.push(`${m.topic === a ? 'a' : m.topic === b ? 'b' : 'h'}${m.seq}`));
      await c.add(a, { cursor: 2 });
      await c.add(b, { cursor: 'now' });
      const r = await c.add(h, { historyOnly: true });
      assert.deepEqual(r.live, []);
      assert.deepEqual(seen, ['a3', 'a4', 'h1', 'h2', 'h3', 'h4']);
      assert.equal(c.cursors()[h], undefined, 'a history-only add leaves the stream once delivered');
      await c.publish(b, 'b5');
      await c.publish(h, 'h5');
      await waitFor(() => seen.includes('b5'), 10000, 'b5');
      await c.remove(a);
      await c.publish(a, 'a5');
      const probe = await c.publish(b, 'b6');
      await waitFor(() => seen.includes('b6'), 10000, 'b6');
      assert.equal(probe.seq, 6);
      assert.ok(!seen.includes('a5') && !seen.includes('h5'), seen.join(' '));
      await c.close();
    });

    test('errors are typed with wire codes; the connection stays for request errors', async () => {
      const c = await open();
      const bad = await c.publish('has space', 'x').catch((e) => e);
      assert.ok(bad instanceof RingbusError);
      assert.equal(bad.code, Code.invalid_topic);
      assert.equal(bad.source, 'error');
      const sys = await c.publish('$sys.x', 'x').catch((e) => e);
      assert.equal(sys.codeName, 'forbidden');
      const t = fresh('err');
      await c.publish(t, 'x');
      const r = await c.add(t, { cursor: 99 });
      assert.equal(r.errors.length, 1);
      assert.equal(r.errors[0].code, Code.cursor_ahead);
      assert.equal(r.errors[0].topic, t);
      assert.equal(c.cursors()[t], undefined);
      const inv = await c.add('bad topic').catch((e) => e);
      assert.equal(inv.code, Code.invalid_topic);
      const big = await c.publish(t, new Uint8Array(c.maxFrameBytes)).catch((e) => e);
      assert.equal(big.code, Code.too_large);
      assert.equal((await c.publish(t, 'still open')).seq, 2);
      assert.equal(c.state, 'ready');
      assert.ok((await c.ping()) >= 0);
      await c.close();
    });

    test('close() is a half-close: publishes made before it are acknowledged', async () => {
      const c = await open({ maxInFlight: 4 });
      const t = fresh('close');
      const ps = Array.from({ length: 50 }, (_, i) => c.publish(t, `c${i}`));
      const closed = c.close();
      const acks = await Promise.all(ps);
      await closed;
      assert.equal(acks.at(-1).seq, 50);
      assert.equal(c.state, 'closed');
      const after = await c.publish(t, 'late').catch((e) => e);
      assert.equal(after.code, Code.unavailable);
    });
  });
}

test('a remove and re-add drops live messages sent before the remove (they carry no wave id)', async () => {
  const c = await connect(d.wsUrl, { maxAttempts: 3 });
  const pub = await connect(d.wsUrl, { maxAttempts: 3 });
  const t = fresh('readd');
  await c.add(t);
  const seen = [];
  c.on('message', (m) => seen.push(m.seq));
  const burst = [];
  const publishing = (async () => {
    for (let i = 0; i < 300; i++) {
      burst.push(pub.publish(t, `b${i}`));
      if (i % 25 === 24) await sleep(2);
    }
  })();
  // Remove and re-add from 10 inside a message callback: the frames read
  // with this one (live, sent before the remove) are delivered next.
  let at = 0;
  let readd;
  const off = c.on('message', (m) => {
    if (m.seq !== 30) return;
    off();
    at = seen.length;
    c.remove(t);
    readd = c.add(t, { cursor: 10 });
  });
  await waitFor(() => readd, 10000, 'the burst to flow');
  await publishing;
  await Promise.all(burst);
  await readd;
  await waitFor(() => seen.at(-1) === 300, 20000, 'the re-add to reach the head');
  const after = seen.slice(at);
  assert.deepEqual(after, Array.from({ length: 290 }, (_, i) => i + 11));
  await c.close();
  await pub.close();
});

test('an iterator that is not read fails with resource_exhausted at its bound', async () => {
  const c = await connect(d.wsUrl, { maxAttempts: 3, maxBufferedMessages: 10 });
  const t = fresh('slow');
  for (let i = 0; i < 20; i++) await c.publish(t, `s${i}`);
  const it = c.messages();
  await c.add(t);
  let got = 0;
  const err = await (async () => {
    for await (const _ of it) got++;
  })().catch((e) => e);
  assert.ok(err instanceof RingbusError);
  assert.equal(err.code, Code.resource_exhausted);
  assert.equal(got, 0);
  await c.close();
});

test('the bounded publish queue refuses beyond maxQueuedPublishes', async () => {
  const c = new Client(d.wsUrl, { maxInFlight: 1, maxQueuedPublishes: 2, maxAttempts: 3 });
  // Not connected yet: one goes into the window, two wait, the fourth is refused.
  const t = fresh('queue');
  const ps = [c.publish(t, '1'), c.publish(t, '2'), c.publish(t, '3')];
  const refused = await c.publish(t, '4').catch((e) => e);
  assert.equal(refused.code, Code.resource_exhausted);
  await c.connect();
  assert.deepEqual((await Promise.all(ps)).map((a) => a.seq), [1, 2, 3]);
  await c.close();
});

test('publishes are bounded in bytes too (maxPublishBytes), given back when settled', async () => {
  const c = new Client(d.wsUrl, { maxPublishBytes: 1000, maxAttempts: 3 });
  const t = fresh('bytes');
  const payload = new Uint8Array(400);
  const ps = [c.publish(t, payload), c.publish(t, payload)];
  const refused = await c.publish(t, payload).catch((e) => e);
  assert.equal(refused.code, Code.resource_exhausted);
  assert.match(refused.message, /maxPublishBytes 1000/);
  await c.connect();
  assert.deepEqual((await Promise.all(ps)).map((a) => a.seq), [1, 2]);
  // Acknowledged and failed publishes both give their bytes back.
  const bad = await c.publish('bad topic', payload).catch((e) => e);
  assert.equal(bad.code, Code.invalid_topic);
  const again = await Promise.all([c.publish(t, payload), c.publish(t, payload)]);
  assert.deepEqual(again.map((a) => a.seq), [3, 4]);
  await c.close();
});
