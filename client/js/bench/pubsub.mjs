// Pub/sub throughput of the JavaScript client in Node: one publishing and
// one subscribing connection (each its own Client) on one topic; the
// subscriber adds the topic from now, then the publisher publishes COUNT
// messages of SIZE bytes with WINDOW in flight. The rate is COUNT over the
// time from the first publish to the subscriber's COUNT-th message.
// Prints one JSON line: {"client":"node","count":..,"msgs_per_s":..}.
//
//   node client/js/bench/pubsub.mjs URL [COUNT] [SIZE] [WINDOW] [CAFILE]
// (CAFILE: the CA a wss:// server's certificate chains to.)
import fs from 'node:fs';
import { connect } from '../src/index.js';

const [url, countArg = '100000', sizeArg = '256', windowArg = '4096', ca] = process.argv.slice(2);
const tls = ca ? { wsOptions: { ca: fs.readFileSync(ca) } } : {};
const count = Number(countArg);
const size = Number(sizeArg);
const topic = `bench.js.${process.pid}.${Date.now()}`;
const sub = await connect(url, { ...tls, name: 'bench-sub', maxAttempts: 1 });
// Keyless (autoKeys: false), as the C bench: a key per publish would fill
// the topic's dedup table (dedup.keys_per_topic, 65 536 per window).
const pub = await connect(url, { ...tls, name: 'bench-pub', maxAttempts: 1, autoKeys: false, maxInFlight: Number(windowArg), maxQueuedPublishes: count });
let got = 0;
let resolveDone;
const done = new Promise((r) => (resolveDone = r));
sub.on('message', () => {
  if (++got === count) resolveDone(performance.now());
});
await sub.add(topic, { cursor: 'now' });
const payload = new Uint8Array(size).fill(0x61);
const t0 = performance.now();
const acks = [];
for (let i = 0; i < count; i++) acks.push(pub.publish(topic, payload));
await Promise.all(acks);
const t1 = await done;
const rate = Math.round(count / ((t1 - t0) / 1000));
console.log(JSON.stringify({ client: 'node', count, size, msgs_per_s: rate }));
await pub.close();
await sub.close();
