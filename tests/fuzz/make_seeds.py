#!/usr/bin/env python3
"""Writes the seed inputs of the client fuzz targets (tests/fuzz/corpus/
client and client_ws) from the protocol encoders of tests/integration/
rbproto.py, so that the seeds follow docs/PROTOCOL.md. Run from the
repository root; it rewrites only the seed_* files (crash reproducers and
other hand-made entries stay)."""

import pathlib
import struct
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import rbproto as p  # noqa: E402


def started(max_frame=p.MAX_FRAME_BYTES_DEFAULT, server_id="fuzz"):
    return p.encode_started(0, max_frame_bytes=max_frame, server_id=server_id)


def session_seeds():
    s = started()
    hist = p.encode_messages(0, 1, [("a", 1, b"x"), ("a", 2, b"yy")])
    live = p.encode_messages(0, 0, [("b", 7, b"live")])
    return {
        "seed_started_only": s,
        "seed_refused": p.encode_error(0, p.UNAUTHORIZED, "no"),
        "seed_close_at_hello": p.encode_close(0, p.GOING_AWAY, "bye"),
        "seed_acks": s + p.encode_publish_ack(1, "a", 1) + p.encode_publish_ack(2, "a", 2)
        + p.encode_error(3, p.UNAVAILABLE, "storage down"),
        "seed_wave": s + hist + p.encode_topics_live(0, ["a", "b"]) + live
        + p.encode_catchup_complete(0, 1),
        "seed_wave_topic_error": s + p.encode_topic_error(0, 1, "a", p.EPOCH_MISMATCH, "epoch")
        + p.encode_topics_live(0, ["b"]) + p.encode_catchup_complete(0, 1),
        "seed_started_without_epoch": p.encode_started(0, server_id="old", epoch=None) + live,
        "seed_ping_close": s + p.encode_ping(0, 42) + p.encode_pong(0, 9)
        + p.encode_close(0, p.OK, "done"),
        "seed_mutate_error": s + p.encode_error(p_corr_mutate(1), p.INVALID_ARGUMENT, "dup"),
        "seed_unknown_ack": s + p.encode_publish_ack(99, "a", 1),
        "seed_lagged": s + p.encode_topics_live(0, ["c"]) + p.encode_messages(0, 0, [("c", 1, b"x")])
        + p.encode_lagged(0, "c", 5) + p.encode_messages(0, 0, [("c", 7, b"y")]),
        "seed_going_away": s + p.encode_publish_ack(1, "a", 1)
        + p.encode_going_away(0, 750, "draining") + p.encode_close(0, p.GOING_AWAY, "bye"),
        "seed_small_max": started(max_frame=64) + p.encode_messages(0, 0, [("a", 1, b"z" * 80)]),
        "seed_split_frame": s + hist[:10],
        "seed_rpc": p.encode_started(0, server_id="fuzz", client_id="anon-1")
        + p.encode_request(5, "anon-2", "echo", b"payload", timeout_ms=8000)
        + p.encode_request_ack(p_corr_call(1)) + p.encode_response(p_corr_call(1), p.OK, "", b"a")
        + p.encode_response(p_corr_call(2), p.APPLICATION_ERROR, "no", b"")
        + p.encode_register(p_corr_register(1), "m") + p.encode_error(p_corr_register(2),
                                                                     p.ALREADY_REGISTERED, "twice"),
    }


def p_corr_mutate(mutate_id):
    return (1 << 63) | mutate_id


def p_corr_call(n):
    return (1 << 61) | n


def p_corr_register(n):
    return (1 << 60) | n


def ws_frame(opcode, payload, fin=True, rsv=0, mask=False):
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, (0x80 if mask else 0) | n])
    elif n <= 0xFFFF:
        head = bytes([b0, (0x80 if mask else 0) | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, (0x80 if mask else 0) | 127]) + struct.pack(">Q", n)
    if mask:
        head += b"\0\0\0\0"
    return head + payload


def ws_seeds():
    sess = session_seeds()
    up = b"\0"  # first byte even: the fake server answers the upgrade
    raw = b"\1"  # odd: the input is the answer
    s = started()
    wave = sess["seed_wave"][len(s):]
    seeds = {f"seed_ws_{k[5:]}": up + ws_frame(2, v) for k, v in sess.items()}
    seeds.update({
        "seed_ws_fragmented": up + ws_frame(2, s[:5], fin=False) + ws_frame(0, s[5:])
        + ws_frame(2, wave),
        "seed_ws_ping": up + ws_frame(2, s) + ws_frame(9, b"hi") + ws_frame(2, wave),
        "seed_ws_close": up + ws_frame(2, s) + ws_frame(8, b"\x03\xe8bye"),
        "seed_ws_text": up + ws_frame(2, s) + ws_frame(1, b"text"),
        "seed_ws_masked": up + ws_frame(2, s, mask=True),
        "seed_ws_rsv": up + ws_frame(2, s, rsv=4),
        "seed_ws_big_ping": up + ws_frame(2, s) + ws_frame(9, b"p" * 130),
        "seed_ws_ctl_fragment": up + ws_frame(2, s) + ws_frame(9, b"p", fin=False),
        "seed_ws_len16": up + ws_frame(2, s + p.encode_messages(0, 0, [("a", 1, b"q" * 300)])),
        "seed_answer_ok_shape": raw + b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n",
        "seed_answer_refused": raw + b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n"
        b"\r\nbusy\n",
        "seed_answer_garbage": raw + b"\x00\x01HTTP/1.0 200\r\n\r\n",
    })
    return seeds


def write(target, seeds):
    d = ROOT / "tests" / "fuzz" / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("seed_*"):
        old.unlink()
    for name, data in sorted(seeds.items()):
        (d / name).write_bytes(data)


if __name__ == "__main__":
    write("client", session_seeds())
    write("client_ws", ws_seeds())
