// The Node.js `ws` client for the WebSocket integration tests: an
// independent peer that connects to ringbusd and runs steps, printing one
// line per event on stdout (see test_ws.py):
//
//   node ws_node_client.js URL CAFILE|- [header:NAME=VALUE|noproto|origin:O]... STEP...
//
// STEP: a ringbus frame in hex (one binary message; the next message is
// printed as "RECV kind=K len=N"), "frag:HEX" (the same frame in two
// fragments), "ping" (a Ping; prints "PONG"), "text", "big:N" or "close".
// Lines: "OPEN proto=P", "RECV ...", "PONG", "HTTP status", "CLOSE code=C",
// "ERROR why".
'use strict';
const fs = require('fs');
const WebSocket = require('ws');

const [url, ca, ...rest] = process.argv.slice(2);
const headers = {};
let protocols = ['ringbus.v1'];
let origin;
const steps = [];
for (const a of rest) {
  if (a.startsWith('header:')) {
    const [k, v] = a.slice(7).split('=');
    headers[k] = v;
  } else if (a === 'noproto') {
    protocols = [];
  } else if (a.startsWith('origin:')) {
    origin = a.slice(7);
  } else {
    steps.push(a);
  }
}
const opts = { headers, origin, handshakeTimeout: 5000 };
if (ca !== '-') opts.ca = fs.readFileSync(ca);
const ws = new WebSocket(url, protocols, opts);
const out = (line) => process.stdout.write(line + '\n');
let waiting = false;

function next() {
  while (!waiting && steps.length > 0) {
    const s = steps.shift();
    if (s === 'close') {
      ws.close(1000, 'bye');
    } else if (s === 'text') {
      ws.send('hello');
    } else if (s === 'ping') {
      waiting = true;
      ws.ping(Buffer.from('abc'));
    } else if (s.startsWith('big:')) {
      ws.send(Buffer.alloc(Number(s.slice(4)), 0x78));
    } else if (s.startsWith('frag:')) {
      const b = Buffer.from(s.slice(5), 'hex');
      waiting = true;
      ws.send(b.subarray(0, 7), { binary: true, fin: false });
      ws.send(b.subarray(7), { binary: true, fin: true });
    } else {
      waiting = true;
      ws.send(Buffer.from(s, 'hex'));
    }
  }
}

ws.on('open', () => { out('OPEN proto=' + ws.protocol); next(); });
ws.on('message', (data, isBinary) => {
  out('RECV kind=' + (isBinary ? data[5] : 'text') + ' len=' + data.length);
  waiting = false;
  next();
});
ws.on('pong', () => { out('PONG'); waiting = false; next(); });
ws.on('unexpected-response', (req, res) => { out('HTTP ' + res.statusCode); process.exit(0); });
ws.on('close', (code) => { out('CLOSE code=' + code); process.exit(0); });
ws.on('error', (e) => { out('ERROR ' + e.message); });
