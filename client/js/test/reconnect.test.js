// Resilience against the real daemon: kill -9 and restart under load on
// Postgres (every acknowledged message delivered exactly once, in order),
// SIGTERM (CLOSE going_away), failover across URLs to another store (a new
// epoch), a dead-silent server (SIGSTOP) caught by the watchdog, and a
// non-retryable error that stops at once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Daemon, PgCluster, freePort, sleep, waitFor } from './harness.js';
import { connect, Client, Code } from '../src/index.js';

let pg;
before(async () => {
  pg = await new PgCluster().start();
});
after(() => pg?.stop());

const FAST = { backoffBaseMs: 50, backoffCapMs: 500, connectTimeoutMs: 5000 };

/** Checks the subscriber's view: per topic seqs 1..n, each once, in order. */
function checkDense(seen, topic) {
  const seqs = seen.filter((m) => m.topic === topic).map((m) => m.seq);
  seqs.forEach((s, i) => assert.equal(s, i + 1, `${topic}: delivery ${i} is seq ${s} (${seqs.slice(Math.max(0, i - 3), i + 3)})`));
  return seqs.length;
}

for (const kind of ['ws', 'wss']) {
  test(`${kind}: kill -9 and restart on Postgres: acknowledged messages arrive once, in order`, async () => {
    const d = await new Daemon({ storage: 'postgres', conninfo: pg.conninfo() }).start();
    const url = kind === 'ws' ? d.wsUrl : d.wssUrl;
    const tls = kind === 'wss' ? { wsOptions: d.wsOptions } : {};
    const topic = `js.kill.${kind}.${process.pid}`;
    const sub = await connect(url, { ...FAST, ...tls, name: 'sub' });
    const pubc = await connect(url, { ...FAST, ...tls, name: 'pub', maxInFlight: 16 });
    const seen = [];
    sub.on('message', (m) => seen.push({ topic: m.topic, seq: m.seq, text: m.text() }));
    let reconnects = 0;
    sub.on('connected', () => reconnects++);
    await sub.add(topic);
    const N = 400;
    const acks = new Array(N);
    const publishing = (async () => {
      const ps = [];
      for (let i = 0; i < N; i++) {
        ps.push(pubc.publish(topic, `p${i}`).then((a) => (acks[i] = a)));
        if (i % 20 === 19) await sleep(5);
      }
      await Promise.all(ps);
    })();
    await waitFor(() => seen.length >= 50, 30000, '50 messages before the kill');
    await d.kill9();
    await sleep(300);
    await d.start();
    await publishing;
    const head = Math.max(...acks.map((a) => a.seq));
    await waitFor(() => seen.length > 0 && seen.at(-1).seq >= head, 30000, `delivery up to seq ${head}`);
    const n = checkDense(seen, topic);
    assert.equal(n, head);
    const bySeq = new Map(seen.map((m) => [m.seq, m.text]));
    for (let i = 0; i < N; i++) assert.equal(bySeq.get(acks[i].seq), `p${i}`, `publish ${i} acked as seq ${acks[i].seq}`);
    assert.ok(reconnects >= 1, `the subscriber reconnected (${reconnects} reconnections)`);
    // The server deduplicates by idempotency key on Postgres across the
    // restart (PROTOCOL §7.1): a publish re-sent after the kill whose first
    // copy was committed is answered as a duplicate, so each is stored once.
    const stored = new Set(seen.map((m) => m.text)).size;
    const dups = acks.filter((a) => a.duplicate).length;
    console.log(`# ${kind}: ${N} publishes, ${head} stored, ${dups} re-sends answered duplicate`);
    assert.equal(stored, N);
    assert.equal(head, N, 'every publish stored exactly once');
    await sub.close();
    await pubc.close();
    await d.stop();
  });
}

test('SIGTERM: CLOSE going_away, the client reconnects to the restarted daemon and resumes', async () => {
  const d = await new Daemon({ storage: 'postgres', conninfo: pg.conninfo(), wss: false }).start();
  const topic = `js.term.${process.pid}`;
  const c = await connect(d.wsUrl, FAST);
  const errors = [];
  c.on('reconnecting', (e) => errors.push(e.error.codeName));
  const seen = [];
  c.on('message', (m) => seen.push(m.seq));
  await c.add(topic);
  for (let i = 0; i < 5; i++) await c.publish(topic, `t${i}`);
  await waitFor(() => seen.length === 5, 10000, 'five before the stop');
  await d.stop();
  await d.start();
  const ack = await c.publish(topic, 'after');
  assert.equal(ack.seq, 6);
  await waitFor(() => seen.length === 6, 10000, 'the sixth');
  assert.deepEqual(seen, [1, 2, 3, 4, 5, 6]);
  assert.equal(errors[0], 'going_away');
  await c.close();
  await d.stop();
});

test('failover across URLs to another store: a new epoch, re-added from its start', async () => {
  const dead = `ws://127.0.0.1:${await freePort()}/ringbus`;
  const a = await new Daemon({ wss: false }).start();
  const b = await new Daemon({ wss: false }).start();
  const topic = `js.fail.${process.pid}`;
  // The first URL has nobody listening: the client moves on to the next.
  const c = await connect([dead, a.wsUrl, b.wsUrl], FAST);
  assert.equal(c.url, a.wsUrl);
  const changes = [];
  c.on('epochChange', (e) => changes.push(e));
  const seen = [];
  c.on('message', (m) => seen.push(`${m.text()}#${m.seq}`));
  await c.add(topic);
  await c.publish(topic, 'a1');
  await c.publish(topic, 'a2');
  await waitFor(() => seen.length === 2, 10000, 'two on a');
  const epochA = c.epoch;
  await a.kill9();
  const ack = await c.publish(topic, 'b1');
  assert.equal(c.url, b.wsUrl);
  assert.notEqual(c.epoch, epochA);
  assert.equal(ack.seq, 1);
  await waitFor(() => seen.length === 3, 10000, 'b1');
  assert.deepEqual(seen, ['a1#1', 'a2#2', 'b1#1']);
  assert.equal(changes.length, 1);
  assert.deepEqual([changes[0].topic, changes[0].oldEpoch, changes[0].newEpoch, changes[0].action], [topic, epochA, c.epoch, 'fromStart']);
  await c.close();
  await b.stop();
});

test('a dead-silent server (SIGSTOP) is detected by the watchdog and replaced', async () => {
  const d = await new Daemon({ wss: false, extra: '[timeouts]\nkeepalive_ms = 400\npong_timeout_ms = 30000\n' }).start();
  const c = await connect(d.wsUrl, { ...FAST, connectTimeoutMs: 1000 });
  const why = [];
  c.on('reconnecting', (e) => why.push(e.error.codeName));
  await d.pause();
  try {
    await waitFor(() => why.length > 0, 15000, 'the watchdog');
  } finally {
    d.resume();
  }
  assert.equal(why[0], 'deadline_exceeded');
  const ack = await c.publish(`js.stop.${process.pid}`, 'x');
  assert.equal(ack.seq, 1);
  await c.close();
  await d.stop();
});

test('a non-retryable error stops at once: no reconnect, everything pending fails', async () => {
  const d = await new Daemon({ wss: false }).start();
  const c = await connect(d.wsUrl, FAST);
  let reconnecting = 0;
  c.on('reconnecting', () => reconnecting++);
  const closed = new Promise((r) => c.on('closed', r));
  // This server refuses every AUTH with ERROR unauthorized and closes.
  const auth = await c.reauth({ token: 'a.b' }).catch((e) => e);
  assert.equal(auth.code, Code.unauthorized);
  const ev = await closed;
  assert.equal(ev.error.code, Code.unauthorized);
  assert.equal(c.state, 'closed');
  await sleep(300);
  assert.equal(reconnecting, 0);
  const late = await c.publish('js.x', 'x').catch((e) => e);
  assert.equal(late.code, Code.unavailable);
  await d.stop();
});

test('retryInitialConnect: false fails connect() once every URL was tried; reconnects later still work', async () => {
  const dead = [`ws://127.0.0.1:${await freePort()}/ringbus`, `ws://127.0.0.1:${await freePort()}/ringbus`];
  const c = new Client(dead, { ...FAST, maxAttempts: 5, retryInitialConnect: false });
  let attempts = 0;
  c.on('reconnecting', () => attempts++);
  const t0 = Date.now();
  const err = await c.connect().catch((e) => e);
  assert.equal(err.code, Code.unavailable);
  assert.match(err.message, /2 URLs tried/);
  assert.equal(attempts, 1, 'the second URL was tried, then it stopped');
  assert.ok(Date.now() - t0 < 3000);
  assert.equal(c.state, 'closed');
  // Once connected, losses are retried as usual.
  const d = await new Daemon({ wss: false }).start();
  const ok = await connect(d.wsUrl, { ...FAST, retryInitialConnect: false });
  await d.kill9();
  await d.start();
  assert.equal((await ok.publish(`js.initial.${process.pid}`, 'x')).seq, 1);
  await ok.close();
  await d.stop();
});
