// Credentials against the real daemon with auth.mode = "required"
// (PROTOCOL §6.5): a JWT (HS256, minted here with node:crypto) and a user
// with a password; per-topic permissions answered `forbidden` with the
// connection kept; a wrong password stops the client at once; a token
// refreshed with AUTH before its exp keeps the connection and its stream,
// and one that is not refreshed is closed at exp with `unauthorized`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { Daemon, RINGBUSD, sleep, waitFor } from './harness.js';
import { connect, Client, Code, RingbusError, tokenExpiry } from '../src/index.js';

const SECRET = crypto.randomBytes(48);
const b64u = (b) => Buffer.from(b).toString('base64url');
/** An HS256 JWT for sub with the given claims, valid for lifeS seconds. */
function mint(sub, lifeS, claims = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64u(JSON.stringify({ alg: 'HS256', typ: 'JWT', kid: 'k1' }));
  const body = b64u(JSON.stringify({ sub, iat: now, exp: now + lifeS, publish: ['js.>'], subscribe: ['js.>'], ...claims }));
  const sig = b64u(crypto.createHmac('sha256', SECRET).update(`${head}.${body}`).digest());
  return `${head}.${body}.${sig}`;
}

let d;
before(async () => {
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'rbjs-auth-'));
  const secret = path.join(dir, 'jwt.secret');
  fs.writeFileSync(secret, SECRET, { mode: 0o600 });
  const hash = execFileSync(RINGBUSD, ['--hash-password'], { input: 'pw-of-bo' }).toString().trim();
  const extra =
    '[timeouts]\nkeepalive_ms = 30000\n' +
    '[auth]\nmode = "required"\nfailure_delay_ms = 50\nclock_skew_s = 0\n' +
    `[[auth.user]]\nname = "bo"\npassword_hash = "${hash}"\npublish = ["js.bo.>"]\nsubscribe = ["js.>"]\n` +
    `[[auth.jwt_key]]\nkid = "k1"\nalgorithm = "HS256"\nsecret_file = "${secret}"\n`;
  d = await new Daemon({ extra }).start();
});
after(async () => {
  await d?.stop();
});

const FAST = { backoffBaseMs: 50, backoffCapMs: 300, maxAttempts: 3 };

test('a user with a password over wss: allowed topics work, others are forbidden and the connection stays', async () => {
  const c = await connect(d.wssUrl, { ...FAST, wsOptions: d.wsOptions, credentials: { user: 'bo', password: 'pw-of-bo' } });
  assert.equal(c.clientId, 'bo');
  const t = `js.bo.${process.pid}`;
  assert.equal((await c.publish(t, 'mine')).seq, 1);
  const denied = await c.publish(`js.other.${process.pid}`, 'x').catch((e) => e);
  assert.ok(denied instanceof RingbusError);
  assert.equal(denied.code, Code.forbidden);
  const sub = await c.add(`nope.${process.pid}`).catch((e) => e);
  assert.equal(sub.code, Code.forbidden, 'a MUTATE with a forbidden add is refused whole');
  assert.deepEqual(Object.keys(c.cursors()), []);
  const r = await c.add(t);
  assert.deepEqual(r.live, [t]);
  assert.equal(c.state, 'ready');
  await c.close();
});

test('a wrong password or a token of another key stops at once: unauthorized, no reconnect', async () => {
  for (const credentials of [{ user: 'bo', password: 'wrong' }, { token: mint('js', 60).replace(/.$/, (ch) => (ch === 'A' ? 'B' : 'A')) }, null]) {
    const c = new Client(d.wsUrl, { ...FAST, credentials });
    let reconnecting = 0;
    c.on('reconnecting', () => reconnecting++);
    const err = await c.connect().catch((e) => e);
    assert.ok(err instanceof RingbusError, String(err));
    assert.equal(err.code, Code.unauthorized, `${JSON.stringify(credentials)}: ${err.message}`);
    assert.equal(reconnecting, 0);
    assert.equal(c.state, 'closed');
  }
});

test('a token refreshed before exp keeps the connection and its stream; one not refreshed is closed at exp', async () => {
  let minted = 0;
  const refreshing = await connect(d.wsUrl, {
    ...FAST,
    credentials: () => {
      minted++;
      return { token: mint('js-refresh', 3) };
    },
  });
  const fixed = await connect(d.wsUrl, { ...FAST, credentials: { token: mint('js-fixed', 3) } });
  const exp = tokenExpiry(fixed._conn.credentials);
  assert.ok(Math.abs(exp - (Date.now() + 3000)) < 1500, `exp ${exp}`);
  const refreshed = [];
  refreshing.on('reauthenticated', (e) => refreshed.push(e.expiresAt));
  const t = `js.refresh.${process.pid}`;
  const seen = [];
  refreshing.on('message', (m) => seen.push(m.seq));
  await refreshing.add(t);
  const fixedClosed = new Promise((r) => fixed.on('closed', r));
  let connects = 0;
  refreshing.on('connected', () => connects++);
  const ev = await fixedClosed;
  const at = Date.now();
  assert.equal(ev.error.code, Code.unauthorized);
  assert.ok(Math.abs(at - exp) < 1500, `closed ${at - exp} ms from exp`);
  await sleep(Math.max(0, exp + 1200 - Date.now()));
  // Past the first token's exp: still the same connection, still subscribed.
  assert.equal(refreshing.state, 'ready');
  assert.equal(connects, 0, 'no reconnect');
  assert.ok(refreshed.length >= 1 && refreshed[0] > exp, `refreshed ${refreshed}`);
  assert.ok(minted >= 2);
  for (let i = 1; i <= 3; i++) assert.equal((await refreshing.publish(t, `r${i}`)).seq, i);
  await waitFor(() => seen.length === 3, 5000, 'the stream after the refresh');
  assert.deepEqual(seen, [1, 2, 3]);
  await refreshing.close();
});

test('a refused AUTH (another sub) ends the client with unauthorized', async () => {
  const c = await connect(d.wsUrl, { ...FAST, credentials: { token: mint('js-a', 60) } });
  const err = await c.reauth({ token: mint('js-b', 60) }).catch((e) => e);
  assert.equal(err.code, Code.unauthorized);
  await waitFor(() => c.state === 'closed', 5000, 'the close');
});
