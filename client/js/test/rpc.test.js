// RPC through the real daemon (PROTOCOL §12): serve and call over ws and
// wss, payloads both ways (short and 20 KiB+), every outcome a caller can
// get (application error, unknown method, no responder, timeout, cancel,
// responder gone), 50 concurrent calls without cross-talk, a service shared
// by two responders, and registrations that survive a daemon restart.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Daemon, sleep, waitFor } from './harness.js';
import { connect, Code, RingbusError } from '../src/index.js';

const SEED = Number(process.env.RINGBUS_SEED ?? Date.now() % 1e9);
console.log(`# rpc seed ${SEED} (RINGBUS_SEED=${SEED} repeats it)`);
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}
const random = rng(SEED);
const bytes = (n) => Uint8Array.from({ length: n }, () => Math.floor(random() * 256));
const FAST = { backoffBaseMs: 50, backoffCapMs: 300, connectTimeoutMs: 5000 };

let d;
before(async () => {
  d = await new Daemon().start();
});
after(async () => {
  await d?.stop();
});

const outcome = (p) => p.then(
  (r) => ({ ok: r }),
  (e) => {
    assert.ok(e instanceof RingbusError, String(e));
    return { err: e };
  },
);

for (const kind of ['ws', 'wss']) {
  const open = (opts = {}) =>
    connect(kind === 'ws' ? d.wsUrl : d.wssUrl, { ...FAST, ...(kind === 'wss' ? { wsOptions: d.wsOptions } : {}), ...opts });

  describe(`${kind}: RPC`, () => {
    test('echo: short and 20 KiB+ payloads both ways, the caller identified', async () => {
      const [caller, responder] = [await open({ name: 'caller' }), await open({ name: 'responder' })];
      assert.match(responder.clientId, /^anon-\d+$/);
      const seen = [];
      await responder.serve('echo', (req) => {
        seen.push(req.caller);
        return req.payload;
      });
      await responder.serve('grow', (req) => bytes(20 * 1024 + req.payload.length));
      const r = await caller.call(responder.clientId, 'echo', 'hi');
      assert.equal(r.text(), 'hi');
      const big = bytes(20 * 1024 + 17);
      assert.deepEqual(Buffer.from((await caller.call(responder.clientId, 'echo', big)).payload), Buffer.from(big));
      assert.equal((await caller.call(responder.clientId, 'grow', 'abc')).payload.length, 20 * 1024 + 3);
      assert.deepEqual(seen, [caller.clientId, caller.clientId]);
      await caller.close();
      await responder.close();
    });

    test('every failure is one typed outcome with its wire code', async () => {
      const [caller, responder] = [await open(), await open()];
      await responder.serve('fail', () => {
        throw Object.assign(new Error('no such order'), { payload: 'details' });
      });
      let late = 0;
      await responder.serve('slow', async () => {
        await sleep(400);
        late++;
        return 'too late';
      });
      const app = await outcome(caller.call(responder.clientId, 'fail', 'x'));
      assert.equal(app.err.code, Code.application_error);
      assert.equal(app.err.source, 'rpc');
      assert.equal(app.err.serverMessage, 'no such order');
      assert.equal(Buffer.from(app.err.payload).toString(), 'details');
      assert.equal((await outcome(caller.call(responder.clientId, 'nothing', 'x'))).err.codeName, 'unknown_method');
      assert.equal((await outcome(caller.call('anon-999999999', 'echo', 'x'))).err.codeName, 'recipient_not_found');
      const t0 = Date.now();
      const slow = await outcome(caller.call(responder.clientId, 'slow', 'x', { timeoutMs: 50 }));
      assert.equal(slow.err.codeName, 'response_timeout');
      assert.ok(Date.now() - t0 < 350, `the timeout came after ${Date.now() - t0} ms`);
      await waitFor(() => late === 1, 5000, 'the late answer');
      await sleep(50); // the late RESPONSE is dropped: nothing settles twice
      const ac = new AbortController();
      const cancelled = outcome(caller.call(responder.clientId, 'slow', 'x', { signal: ac.signal }));
      await sleep(50);
      ac.abort();
      assert.equal((await cancelled).err.codeName, 'cancelled');
      const dup = await outcome(responder.serve('fail', () => 'other'));
      assert.equal(dup.err.code, Code.invalid_argument);
      assert.equal(caller.state, 'ready');
      assert.equal((await caller.publish(`js.rpc.${process.pid}.${kind}`, 'still open')).seq, 1);
      await caller.close();
      await responder.close();
    });
  });
}

test('50 concurrent calls get their own answers; a service spreads calls over its responders', async () => {
  const caller = await connect(d.wsUrl, FAST);
  const r1 = await connect(d.wsUrl, FAST);
  const r2 = await connect(d.wsUrl, FAST);
  const served = { r1: 0, r2: 0 };
  const handler = (who) => async (req) => {
    served[who]++;
    await sleep(Math.floor(random() * 20));
    return `${who}:${req.text()}`;
  };
  await r1.serve('work', handler('r1'), { service: `pool${process.pid}` });
  await r2.serve('work', handler('r2'), { service: `pool${process.pid}` });
  const answers = await Promise.all(Array.from({ length: 50 }, (_, i) => caller.call(`pool${process.pid}`, 'work', `job${i}`)));
  answers.forEach((a, i) => assert.match(a.text(), new RegExp(`^r[12]:job${i}$`)));
  assert.equal(served.r1 + served.r2, 50);
  assert.ok(served.r1 > 0 && served.r2 > 0, `both responders served (${served.r1}, ${served.r2})`);
  await Promise.all([caller.close(), r1.close(), r2.close()]);
});

test('a responder that goes away mid-call: the caller gets recipient_disconnected', async () => {
  const caller = await connect(d.wsUrl, FAST);
  const responder = await connect(d.wsUrl, { ...FAST, reconnect: false });
  let got = false;
  await responder.serve('hang', () => {
    got = true;
    return new Promise(() => {});
  });
  const p = outcome(caller.call(responder.clientId, 'hang', 'x', { timeoutMs: 20000 }));
  await waitFor(() => got, 5000, 'the request');
  responder._conn.ws.terminate();
  assert.equal((await p).err.codeName, 'recipient_disconnected');
  await caller.close();
});

test('registrations are made again after the daemon restarts; a call in flight at the loss fails unavailable', async () => {
  const dd = await new Daemon({ wss: false }).start();
  const service = `svc${process.pid}`;
  const caller = await connect(dd.wsUrl, FAST);
  const responder = await connect(dd.wsUrl, FAST);
  let hold = false;
  await responder.serve('who', async () => {
    if (hold) await sleep(5000);
    return responder.clientId;
  }, { service });
  assert.equal((await caller.call(service, 'who')).text(), responder.clientId);
  hold = true;
  const inFlight = outcome(caller.call(service, 'who', '', { timeoutMs: 20000 }));
  await sleep(100);
  await dd.kill9();
  const lost = await inFlight;
  assert.equal(lost.err.code, Code.unavailable);
  assert.equal(lost.err.source, 'transport');
  hold = false;
  await dd.start();
  await waitFor(() => caller.state === 'ready' && responder.state === 'ready', 10000, 'both back');
  // The responder re-registers on its new connection (a new client_id).
  await waitFor(async () => (await outcome(caller.call(service, 'who'))).ok?.text() === responder.clientId, 10000, 'the re-registered service');
  await caller.close();
  await responder.close();
  await dd.stop();
});

// The client sends CLOSE after its publishes; the server answers the calls
// in flight before it closes (the responder's RESPONSE still comes through).
test('close() is a half-close for calls too: a call in flight is answered first', async () => {
  const caller = await connect(d.wsUrl, FAST);
  const responder = await connect(d.wsUrl, FAST);
  await responder.serve('later', async (req) => {
    await sleep(300);
    return `done:${req.text()}`;
  });
  const p = caller.call(responder.clientId, 'later', 'x');
  await sleep(20);
  const t0 = Date.now();
  await caller.close();
  assert.ok(Date.now() - t0 >= 200, `close waited ${Date.now() - t0} ms`);
  assert.equal((await p).text(), 'done:x');
  const refused = await caller.call(responder.clientId, 'later', 'y').catch((e) => e);
  assert.equal(refused.code, Code.unavailable);
  await responder.close();
});
