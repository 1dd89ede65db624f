// The codec against the worked examples of docs/PROTOCOL.md §11 and the
// header checks of §3; the backoff curve's bounds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as c from '../src/codec.js';
import { backoffDelay } from '../src/client.js';

const hex = (s) => Uint8Array.from(s.replace(/\s+/g, '').match(/../g).map((b) => parseInt(b, 16)));
const toHex = (u) => Buffer.from(u).toString('hex');

test('HELLO, PUBLISH and MUTATE encode to the bytes of PROTOCOL §11', () => {
  assert.equal(toHex(c.encodeHello(1, 'cli')), toHex(hex('19000000 01 01 0000 0100000000000000 0100 0300636c69 0000')));
  assert.equal(toHex(c.encodePublish(2, 'orders', 'hi')), toHex(hex('1e000000 01 07 0000 0200000000000000 066f7264657273 00 020000006869')));
  const m = c.encodeMutate(3, 5, [{ topic: 'a', cursor: 10 }, { topic: 'b', cursor: 'now' }], ['c'], false, 0x1122334455667788n);
  assert.equal(toHex(m), toHex(hex(`41000000 01 09 0000 0300000000000000 0500000000000000 00 02000000
    0161 00 0a00000000000000 0162 01 0000000000000000 01000000 0163 8877665544332211`)));
  assert.equal(toHex(c.encodeCredentials({ token: 'a.b' })), '0103' + '00612e62');
  assert.equal(toHex(c.encodeCredentials({ user: 'bo', password: 'pw' })), '0202626f02007077');
});

test('STARTED, PUBLISH_ACK, MESSAGES and TOPIC_ERROR decode as PROTOCOL §11 says', () => {
  const s = c.decodeFrame(hex('2c000000 01 02 0000 0100000000000000 30750000 0300000000000000 00001000 02006e31 8877665544332211'));
  assert.equal(s.kind, c.Kind.STARTED);
  assert.equal(s.corr, 1);
  assert.equal(s.keepaliveMs, 30000);
  assert.equal(s.maxFrameBytes, 1 << 20);
  assert.equal(s.serverId, 'n1');
  assert.equal(s.epoch, 0x1122334455667788n);
  // An older server omits the appended epoch: it reads as 0.
  assert.equal(c.decodeFrame(hex('24000000 01 02 0000 0100000000000000 30750000 0300000000000000 00001000 02006e31')).epoch, 0n);
  const ack = c.decodeFrame(hex('1f000000 01 08 0000 0200000000000000 066f7264657273 2a00000000000000'));
  assert.deepEqual([ack.topic, ack.seq, ack.flags], ['orders', 42, 0]);
  // The appended flags byte: bit 0 duplicate.
  assert.equal(c.decodeFrame(hex('20000000 01 08 0000 0200000000000000 066f7264657273 2a00000000000000 01')).flags, 1);
  const msgs = c.decodeFrame(hex(`39000000 01 0a 0000 0000000000000000 0500000000000000 02000000
    0161 0b00000000000000 01000000 78  0161 0c00000000000000 00000000`));
  assert.equal(msgs.mutateId, 5);
  assert.deepEqual(msgs.items.map((i) => [i.topic, i.seq, toHex(i.payload)]), [['a', 11, '78'], ['a', 12, '']]);
  const te = c.decodeFrame(hex(`3c000000 01 0f 0000 0000000000000000 0500000000000000 0161 0f00 1e00
    637572736f722031302069732062 65796f6e64207468652068656164 2035`));
  assert.deepEqual([te.topic, te.code, te.codeName, te.message], ['a', 15, 'cursor_ahead', 'cursor 10 is beyond the head 5']);
  const ga = c.decodeFrame(c.encodeFrame(c.Kind.GOING_AWAY, 0, hex('e8030000 0200 6279')));
  assert.deepEqual([ga.reconnectDelayMs, ga.message], [1000, 'by']);
});

test('payloads decode as views on the received bytes, not copies', () => {
  const frame = c.encodeFrame(c.Kind.MESSAGES, 0, hex('0000000000000000 01000000 0161 0100000000000000 03000000 616263'));
  const f = c.decodeFrame(frame);
  assert.equal(f.items[0].payload.buffer, frame.buffer);
});

test('the decoder applies the header checks in order, and whole-body rules', () => {
  const code = (buf, max) => {
    try {
      c.decodeFrame(buf, max);
    } catch (e) {
      assert.ok(e instanceof c.ProtocolError);
      return e.codeName;
    }
    return 'ok';
  };
  const ping = c.encodePing(0, 7n);
  assert.equal(code(ping), 'ok');
  assert.equal(code(ping.subarray(0, 10)), 'bad_frame'); // shorter than a header
  const small = ping.slice();
  small[0] = 8;
  assert.equal(code(small), 'bad_frame');
  assert.equal(code(ping, 20), 'too_large');
  const v2 = ping.slice();
  v2[4] = 2;
  assert.equal(code(v2), 'unsupported_version');
  const k0 = ping.slice();
  k0[5] = 0;
  assert.equal(code(k0), 'bad_frame');
  const fl = ping.slice();
  fl[6] = 1;
  assert.equal(code(fl), 'bad_frame');
  // One message is one frame: trailing bytes, and a frame longer than the message.
  assert.equal(code(Uint8Array.from([...ping, 0])), 'bad_frame');
  const trailing = c.encodeFrame(c.Kind.PONG, 0, new Uint8Array(9));
  assert.equal(code(trailing), 'bad_frame');
  // Invalid UTF-8 in a topic (an overlong '/').
  assert.equal(code(c.encodeFrame(c.Kind.TOPICS_LIVE, 0, hex('01000000 02c0af'))), 'bad_frame');
  // A count that cannot fit in the bytes left.
  assert.equal(code(c.encodeFrame(c.Kind.TOPICS_LIVE, 0, hex('ffffff00 0161'))), 'bad_frame');
  // A kind reserved for later work (presence) is skipped, not fatal.
  assert.equal(c.decodeFrame(c.encodeFrame(22, 0, hex('00'))).reserved, true);
  // LAGGED (kind 21): topic, u64 skipped; a short one is refused.
  const lag = c.decodeFrame(c.encodeFrame(c.Kind.LAGGED, 0, hex('0163 2a00000000000000')));
  assert.deepEqual([lag.kindName, lag.topic, lag.skipped], ['LAGGED', 'c', 42]);
  assert.equal(code(c.encodeFrame(c.Kind.LAGGED, 0, hex('0163 2a000000'))), 'bad_frame');
});

test('the encoder refuses what cannot be encoded', () => {
  assert.throws(() => c.encodePublish(1, '', 'x'), RangeError);
  assert.throws(() => c.encodePublish(1, 'x'.repeat(256), 'x'), RangeError);
  assert.throws(() => c.encodePublish(1, 't', 'x', new Uint8Array(256)), RangeError);
  assert.throws(() => c.encodeMutate(1, 2 ** 53, []), RangeError);
});

test('backoff is full jitter below min(cap, base * 2^attempt)', () => {
  assert.equal(backoffDelay(0, 100, 10000, () => 0), 0);
  assert.equal(backoffDelay(0, 100, 10000, () => 0.999999), 99);
  assert.equal(backoffDelay(3, 100, 10000, () => 0.5), 400);
  assert.equal(backoffDelay(10, 100, 10000, () => 0.999999), 9999);
  assert.equal(backoffDelay(1000, 100, 10000, () => 0.5), 5000);
  for (let a = 0; a < 20; a++) {
    const d = backoffDelay(a, 100, 10000);
    assert.ok(d >= 0 && d < Math.min(10000, 100 * 2 ** a), `attempt ${a}: ${d}`);
  }
});

test('RPC frames encode and decode as the worked example of PROTOCOL §12', () => {
  const req = c.encodeRequest(7, 5000, 'anon-2', 'echo', 'hi');
  assert.equal(toHex(req), toHex(hex('26000000 01 12 0000 0700000000000000 88130000 06616e6f6e2d32 046563686f 020000006869')));
  const back = c.decodeFrame(req);
  assert.deepEqual([back.timeoutMs, back.peer, back.method, toHex(back.payload)], [5000, 'anon-2', 'echo', '6869']);
  const resp = c.decodeFrame(hex('1a000000 01 14 0000 0700000000000000 0000 0000 020000006869'));
  assert.deepEqual([resp.kind, resp.corr, resp.code, resp.message, toHex(resp.payload)], [c.Kind.RESPONSE, 7, 0, '', '6869']);
  assert.equal(toHex(c.encodeResponse(7, 0, '', 'hi')), toHex(hex('1a000000 01 14 0000 0700000000000000 0000 0000 020000006869')));
  const reg = c.decodeFrame(c.encodeRegister(c.Kind.REGISTER, 1, 'echo', 'svc'));
  assert.deepEqual([reg.kindName, reg.method, reg.service], ['REGISTER', 'echo', 'svc']);
  assert.equal(c.decodeFrame(c.encodeRegister(c.Kind.UNREGISTER, 1, 'echo')).service, '');
  assert.equal(c.decodeFrame(c.encodeRequestAck(3, c.REQUEST_ACK_CANCEL)).cancel, true);
  assert.throws(() => c.decodeFrame(c.encodeFrame(c.Kind.REQUEST_ACK, 3, hex('02'))), c.ProtocolError);
  assert.throws(() => c.decodeFrame(c.encodeFrame(c.Kind.REGISTER, 3, hex('00 00'))), c.ProtocolError);
  assert.throws(() => c.encodeRegister(c.Kind.REGISTER, 1, ''), RangeError);
  assert.throws(() => c.encodeRequest(1, 600001, 'a', 'b', ''), RangeError);
  assert.equal(c.codeName(c.Code.dedup_full), 'dedup_full');
  assert.equal(c.codeName(26), 'application_error');
  assert.equal(c.codeName(30), 'code_30');
});
