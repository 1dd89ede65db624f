// The randomized stream check (tests/integration/streamcheck.py's
// run_random_streams) ported to this client: publishers over ws and wss
// send to random topics while subscribers add topics with random cursors
// (0, now, or up to head + 3) under the right, no, or a wrong epoch, and
// remove some. Per subscriber and topic, every episode an add opens starts
// at cursor + 1 (above the known head for now) and goes on seq + 1 with no
// gap or duplicate; every topic error is justified; in the end every
// subscriber reaches the head of every topic it holds. The seed is printed
// on failure (RB_SEED=N replays one).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Daemon, sleep, waitFor } from './harness.js';
import { connect } from '../src/index.js';

let d;
before(async () => {
  d = await new Daemon().start();
});
after(async () => {
  await d?.stop();
});

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Checker {
  constructor(name) {
    this.name = name;
    this.expect = new Map(); // topic -> {next} or {above}
    this.last = new Map();
    this.problems = [];
    this.delivered = 0;
    this.errors = {};
  }
  open(topic, cursor, knownHead) {
    this.expect.set(topic, cursor === 'now' ? { above: knownHead } : { next: cursor + 1 });
  }
  close(topic) {
    this.expect.delete(topic);
  }
  message(m) {
    const e = this.expect.get(m.topic);
    if (!e) {
      this.problems.push(`${this.name}: ${m.topic}#${m.seq} for a topic not held`);
      return;
    }
    if (e.above !== undefined) {
      if (m.seq <= e.above) this.problems.push(`${this.name}: ${m.topic}#${m.seq} at or below the head ${e.above} known at a now add`);
    } else if (m.seq !== e.next) {
      this.problems.push(`${this.name}: ${m.topic}#${m.seq}, expected #${e.next}`);
    }
    this.delivered++;
    this.expect.set(m.topic, { next: m.seq + 1 });
    this.last.set(m.topic, m.seq);
  }
}

test('randomized streams over ws and wss keep the stream contract', async () => {
  const seed = Number(process.env.RB_SEED ?? Math.floor(Math.random() * 2 ** 31));
  const rng = mulberry32(seed);
  const pick = (arr) => arr[Math.floor(rng() * arr.length)];
  const sample = (arr, n) => [...arr].sort(() => rng() - 0.5).slice(0, n);
  const int = (lo, hi) => lo + Math.floor(rng() * (hi - lo + 1));
  const opts = (i) => (i % 2 === 0 ? [d.wsUrl, { maxAttempts: 3 }] : [d.wssUrl, { maxAttempts: 3, wsOptions: d.wsOptions }]);
  const topics = Array.from({ length: 6 }, (_, i) => `js.rand.${seed}.${i}`);
  const pubs = await Promise.all([0, 1].map((i) => connect(opts(i)[0], { ...opts(i)[1], name: `pub${i}`, maxInFlight: 32 })));
  const subs = [];
  for (let i = 0; i < 3; i++) {
    const [url, o] = opts(i + 1);
    const policy = i === 2 ? 'fromStart' : 'error';
    const c = await connect(url, { ...o, name: `sub${i}`, onEpochChange: policy });
    const chk = new Checker(`sub${i}`);
    c.on('message', (m) => chk.message(m));
    c.on('epochChange', (e) => chk.open(e.topic, 0, 0));
    subs.push({ c, chk, busy: null, policy });
  }
  const acked = new Map(topics.map((t) => [t, []]));
  const head = (t) => Math.max(0, ...acked.get(t));
  const inflight = [];
  const publish = (p, t, payload) => inflight.push(p.publish(t, payload).then((a) => acked.get(t).push(a.seq)));

  async function mutateOne(s) {
    const on = [...s.chk.expect.keys()];
    if (on.length && rng() < 0.35) {
      const rem = sample(on, int(1, on.length));
      for (const t of rem) s.chk.close(t);
      await s.c.remove(rem);
      return;
    }
    const off = topics.filter((t) => !s.chk.expect.has(t));
    if (!off.length) return;
    const r = rng();
    const epochKind = r < 0.1 ? 'wrong' : r < 0.3 ? 'zero' : 'right';
    const epoch = epochKind === 'wrong' ? s.c.epoch ^ 0xe90cn : epochKind === 'zero' ? 0n : s.c.epoch;
    const waves = [];
    for (const t of sample(off, int(1, off.length))) {
      const rc = rng();
      const cursor = rc < 0.3 ? 0 : rc < 0.55 ? 'now' : int(0, head(t) + 3);
      const known = head(t);
      const refused = epochKind === 'wrong' && cursor !== 'now' && cursor !== 0 && s.policy === 'error';
      s.chk.open(t, cursor, known);
      waves.push(
        s.c.add(t, { cursor, epoch }).then((res) => {
          for (const e of res.errors) {
            s.chk.close(t);
            s.chk.errors[e.codeName] = (s.chk.errors[e.codeName] ?? 0) + 1;
            const ok =
              (e.codeName === 'epoch_mismatch' && refused) ||
              (e.codeName === 'cursor_ahead' && cursor !== 'now' && cursor > known && epochKind !== 'wrong');
            if (!ok) s.chk.problems.push(`${s.chk.name}: unjustified ${e.codeName} for ${t}@${cursor} (head ${known}, epoch ${epochKind})`);
          }
          if (refused && res.errors.length === 0) s.chk.problems.push(`${s.chk.name}: ${t}@${cursor} of a wrong epoch was accepted`);
          if (res.errors.length === 0 && !res.live.includes(t)) s.chk.problems.push(`${s.chk.name}: ${t} never went live`);
        }),
      );
    }
    await Promise.all(waves);
  }

  try {
    for (let step = 0; step < 60; step++) {
      for (const p of pubs) {
        for (let k = int(0, 8); k > 0; k--) publish(p, pick(topics), `${step}:${rng()}`.repeat(int(1, 40)));
      }
      for (const s of subs) {
        if (!s.busy && rng() < 0.5) s.busy = mutateOne(s).finally(() => (s.busy = null));
      }
      await sleep(int(1, 15));
    }
    await Promise.all(inflight);
    await Promise.all(subs.map((s) => s.busy));
    for (const t of topics) for (let i = 0; i < 4; i++) publish(pubs[0], t, 'marker');
    await Promise.all(inflight);
    for (const t of topics) {
      const seqs = [...acked.get(t)].sort((a, b) => a - b);
      assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), `acks of ${t} are not dense`);
    }
    for (const s of subs) {
      await waitFor(() => [...s.chk.expect.keys()].every((t) => s.chk.last.get(t) === head(t)), 30000, `${s.chk.name} to reach the heads`);
      assert.deepEqual(s.chk.problems, []);
      assert.deepEqual(Object.keys(s.c.cursors()).sort(), [...s.chk.expect.keys()].sort());
    }
    const stats = subs.map((s) => `${s.chk.name} ${s.chk.delivered} messages ${JSON.stringify(s.chk.errors)}`);
    console.log(`# seed ${seed}: heads ${topics.map(head).join(',')}; ${stats.join('; ')}`);
  } catch (e) {
    e.message = `seed ${seed}: ${e.message}`;
    throw e;
  } finally {
    await Promise.all([...pubs, ...subs.map((s) => s.c)].map((c) => c.close()));
  }
});
