// Against the real daemon: the cursor store (a second process resumes
// where the first left off; a stored cursor of another epoch starts over),
// the publish re-send bound (publishRetryMs: a publish first sent too long
// ago is failed, not re-sent outside the dedup window), and the daemon's
// own GOING_AWAY on SIGTERM honoured with its hint.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Daemon, sleep, waitFor } from './harness.js';
import { connect, Code } from '../src/index.js';

const FAST = { backoffBaseMs: 50, backoffCapMs: 300, connectTimeoutMs: 5000 };

let d;
before(async () => {
  d = await new Daemon({ wss: false }).start();
});
after(async () => {
  await d?.stop();
});

/** A cursor store on a Map, as an application would keep one in a file or localStorage. */
function mapStore() {
  const m = new Map();
  return {
    m,
    saves: 0,
    load(topic) {
      return m.get(topic) ?? null;
    },
    save(topic, seq, epoch) {
      this.saves++;
      m.set(topic, { seq, epoch: String(epoch) });
    },
  };
}

test('cursorStore: a later client resumes each topic after the last message the store saw', async () => {
  const store = mapStore();
  const [a, b] = [`js.store.a.${process.pid}`, `js.store.b.${process.pid}`];
  const pub = await connect(d.wsUrl, FAST);
  for (let i = 1; i <= 5; i++) await Promise.all([pub.publish(a, `a${i}`), pub.publish(b, `b${i}`)]);
  const first = await connect(d.wsUrl, { ...FAST, cursorStore: store });
  const seen1 = [];
  first.on('message', (m) => seen1.push(m.text()));
  await first.add([a, b]);
  assert.equal(seen1.length, 10);
  assert.deepEqual(store.m.get(a), { seq: 5, epoch: String(first.epoch) });
  assert.equal(store.saves, 10);
  await first.close();
  for (let i = 6; i <= 7; i++) await Promise.all([pub.publish(a, `a${i}`), pub.publish(b, `b${i}`)]);
  const second = await connect(d.wsUrl, { ...FAST, cursorStore: store });
  const seen2 = [];
  second.on('message', (m) => seen2.push(m.text()));
  // The add says "from 0"; the store's cursor replaces it.
  await second.add([a, b], { cursor: 0 });
  assert.deepEqual(seen2.sort(), ['a6', 'a7', 'b6', 'b7']);
  await second.close();
  // A cursor saved against another store epoch means nothing here: from the start.
  store.m.set(a, { seq: 6, epoch: '12345' });
  const third = await connect(d.wsUrl, { ...FAST, cursorStore: store });
  const changes = [];
  third.on('epochChange', (e) => changes.push(e.action));
  const seen3 = [];
  third.on('message', (m) => seen3.push(m.seq));
  await third.add(a);
  assert.deepEqual(changes, ['fromStart']);
  assert.deepEqual(seen3, [1, 2, 3, 4, 5, 6, 7]);
  await third.close();
  await pub.close();
});

test('publishRetryMs: a publish first sent longer ago is failed after the reconnect, not re-sent', async () => {
  const dd = await new Daemon({ wss: false, extra: '[timeouts]\nkeepalive_ms = 300\npong_timeout_ms = 30000\n' }).start();
  const t = `js.retry.${process.pid}`;
  const opts = { ...FAST, connectTimeoutMs: 400 };
  const strict = await connect(dd.wsUrl, { ...opts, publishRetryMs: 200 });
  const lax = await connect(dd.wsUrl, opts);
  const keyless = await connect(dd.wsUrl, { ...opts, autoKeys: false });
  let lost = 0;
  strict.on('disconnected', () => lost++);
  const events = [];
  const t0 = Date.now();
  for (const [who, c] of [['strict', strict], ['lax', lax]]) {
    for (const ev of ['disconnected', 'reconnecting', 'connected']) c.on(ev, (e) => events.push(`${Date.now() - t0} ${who} ${ev} ${e.error?.codeName ?? e.delayMs ?? ''}`));
  }
  await dd.pause();
  const p1 = strict.publish(t, 'old').then((a) => a, (e) => e);
  const p2 = lax.publish(t, 'kept').then((a) => a, (e) => e);
  const p3 = keyless.publish(t, 'keyless').then((a) => a, (e) => e);
  try {
    // The watchdog gives the silent connection up after 3 keepalives.
    await waitFor(() => lost > 0, 10000, 'the watchdog');
    await sleep(300);
  } finally {
    dd.resume();
  }
  const [r1, r2, r3] = await Promise.all([p1, p2, p3]);
  assert.equal(r3.code, Code.unavailable, `the keyless publish: ${JSON.stringify(r3)}`);
  assert.match(r3.message, /without an idempotency key: not re-sent/);
  assert.equal((await keyless.publish(t, 'keyless again')).duplicate, false, 'keyless publishes go on');
  assert.equal(r1.code, Code.unavailable, `the strict publish: ${JSON.stringify(r1)}; ${events.join(', ')}`);
  assert.match(r1.message, /publishRetryMs 200/);
  assert.equal(r2.topic, t, `the lax publish is re-sent and acknowledged: ${r2}`);
  // Stored once whatever the old connection delivered before it closed.
  const reader = await connect(dd.wsUrl, opts);
  const texts = [];
  reader.on('message', (m) => texts.push(m.text()));
  await reader.add(t);
  assert.equal(texts.filter((x) => x === 'kept').length, 1, texts.join(' '));
  assert.ok(texts.filter((x) => x === 'old').length <= 1, texts.join(' '));
  assert.ok(texts.filter((x) => x === 'keyless').length <= 1, texts.join(' '));
  await Promise.all([strict.close(), lax.close(), keyless.close(), reader.close()]);
  await dd.stop();
});

test("SIGTERM: the daemon's GOING_AWAY hint delays the reconnect, spread over one more hint", async () => {
  const HINT = 800;
  const dd = await new Daemon({ wss: false, extra: `[timeouts]\nreconnect_hint_ms = ${HINT}\n` }).start();
  const c = await connect(dd.wsUrl, FAST);
  const hints = [];
  c.on('goingAway', (e) => hints.push(e.reconnectDelayMs));
  const delays = [];
  c.on('reconnecting', (e) => delays.push(e.delayMs));
  const t = `js.hint.${process.pid}`;
  await c.publish(t, 'before');
  // Listening before the stop: with a small hint the client is back before start() returns.
  let back = 0;
  c.on('connected', () => (back = Date.now()));
  const stopped = Date.now();
  await dd.stop();
  await dd.start();
  await waitFor(() => back > 0, 10000, 'the reconnect');
  assert.equal(hints.length, 1, 'one GOING_AWAY');
  assert.ok(hints[0] >= 0 && hints[0] <= HINT, `hint ${hints[0]}`);
  assert.ok(delays[0] >= hints[0] && delays[0] <= 2 * hints[0], `delay ${delays[0]} for hint ${hints[0]}`);
  assert.ok(back - stopped >= hints[0], `back after ${back - stopped} ms, hint ${hints[0]}`);
  assert.equal((await c.publish(t, 'after')).seq, 1, 'a new memory store');
  await c.close();
  await dd.stop();
});

test('a topic beyond dedup.keys_per_topic: keyed publishes get dedup_full, keyless ones (autoKeys: false) go on', async () => {
  const dd = await new Daemon({ wss: false, extra: '[dedup]\nkeys_per_topic = 4\n' }).start();
  const t = `js.dedupfull.${process.pid}`;
  const keyed = await connect(dd.wsUrl, FAST);
  const plain = await connect(dd.wsUrl, { ...FAST, autoKeys: false });
  const r = await Promise.all(Array.from({ length: 6 }, (_, i) => keyed.publish(t, `k${i}`).then((a) => a.seq, (e) => e.codeName)));
  assert.deepEqual(r, [1, 2, 3, 4, 'dedup_full', 'dedup_full']);
  // A new key given by the application is refused the same way.
  const first = await plain.publish(t, 'x', { key: 'order-1' }).catch((e) => e.codeName);
  assert.equal(first, 'dedup_full');
  const acks = await Promise.all(Array.from({ length: 20 }, (_, i) => plain.publish(t, `p${i}`)));
  assert.deepEqual(acks.map((a) => a.seq), Array.from({ length: 20 }, (_, i) => i + 5));
  assert.equal(keyed.state, 'ready');
  await Promise.all([keyed.close(), plain.close()]);
  await dd.stop();
});
