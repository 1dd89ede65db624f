"""Peer-supplied strings in the daemon's log (issue 9, "Logs and peers"):
a client name, an HTTP request target and headers, and topic names carry
newlines, escape sequences, invalid UTF-8 and bidi overrides; every log
line stays one line of the daemon's own, with those bytes escaped."""

import re
import socket
import time

import pytest

import rbproto as rp
import rbtransport as rt
from conftest import free_port

FORGED = "ringbusd error: main: forged"
ORIGIN = "https://app.example"


def wait_log(d, text, timeout=5):
    deadline = time.monotonic() + timeout
    while text not in d.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{d.log()[-3000:]}"
        time.sleep(0.02)


def http_get(port, head):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(head)
    out = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        out += d
    s.close()
    return out


def raw_log_lines(d):
    return d.log_path.read_bytes().split(b"\n")[:-1]


def test_peer_strings_reach_the_log_escaped(make_daemon):
    tcp, ws, origin = free_port(), free_port(), free_port()
    listeners = (rt.listener("tcp", tcp) + rt.listener("ws", ws)
                 + rt.listener("ws", origin, origins=[ORIGIN]))
    d = make_daemon(listeners=listeners)

    # A client name with a newline, an ANSI escape and a bidi override.
    c = rp.Conn("127.0.0.1", tcp, timeout=5)
    assert c.hello(name=f"evil\n{FORGED} name\x1b[31m\u202e").kind == rp.STARTED
    # Topic names with control characters: refused, and whatever is logged
    # about them is escaped.
    c.send(rp.encode_publish(2, f"t\n{FORGED} topic", "x"))
    c.mutate(3, 1, adds=[(f"s\r\n{FORGED} mutate", 0)])
    c.send(rp.encode_frame(rp.PUBLISH, 4, b"\x05a\nb\x1b" + b"\x00" * 3))
    c.sock.close()

    # An HTTP target with a backslash (escaped, so no log text can pose
    # as an escape) and a header value with a tab and a C1 control.
    assert http_get(ws, b"GET /no\\pe%0a HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
        b"HTTP/1.1 404")
    head = (b"GET /ringbus HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Protocol: ringbus.v1\r\nOrigin: https://evil\t\xc2\x85" +
            FORGED.encode() + b"\r\n\r\n")
    assert http_get(origin, head).startswith(b"HTTP/1.1 403")
    # A header field with a control character in its value.
    assert http_get(ws, b"GET /ringbus HTTP/1.1\r\nHost: x\r\nX-\xff: a\x01b\r\n\r\n").startswith(
        b"HTTP/1.1 400")

    wait_log(d, "Origin not allowed")
    wait_log(d, "HTTP 404")
    wait_log(d, "HTTP 400")
    lines = raw_log_lines(d)
    # Every line is the daemon's own: its prefix, and no raw control byte.
    for ln in lines:
        assert ln.startswith(b"ringbusd "), ln
        assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", ln), ln
        ln.decode("utf-8")  # valid UTF-8 throughout
        assert "\u202e" not in ln.decode() and "\x85" not in ln.decode()
    text = d.log()
    assert f"{FORGED} name" in text and f"evil\\n{FORGED} name\\x1B[31m\\u{{202E}}" in text
    # The forged text never starts a line of its own.
    assert not any(ln.startswith(FORGED.encode()) for ln in lines)
    assert "GET /no\\\\pe%0a" in text
    assert f"Origin https://evil\\t\\u{{0085}}{FORGED}" in text


# ---- connection-level errors: the offending corr_id and the peer address -----------


FATAL = [
    # (what is sent after HELLO, the ERROR's code, its corr_id)
    (rp.encode_frame(99, 41), "bad_frame", 41),                            # unknown kind
    (rp.encode_frame(rp.PUBLISH, 42, b"\x01"), "bad_frame", 42),           # malformed body
    (rp.encode_frame(rp.PING, 43, b"", size=1 << 30), "too_large", 43),    # size over the max
    (rp.encode_frame(rp.PING, 44, b"\x00" * 8, version=9), "unsupported_version", 44),
    (rp.encode_frame(rp.STARTED, 45), "bad_frame", 45),                    # a server-only kind
    (rp.encode_hello(46), "bad_frame", 46),                                # HELLO twice
]


@pytest.mark.parametrize("frame,code,corr", FATAL, ids=["kind", "body", "size", "version",
                                                        "server_kind", "hello_twice"])
def test_fatal_errors_carry_the_offending_corr_id(daemon, frame, code, corr):
    """PROTOCOL §3: the ERROR carries the corr_id of the offending frame's
    header when the server read one."""
    c = rp.Conn("127.0.0.1", daemon.port, timeout=5)
    assert c.hello(corr=7).kind == rp.STARTED
    c.send(frame)
    f = c.recv_until(lambda f: f.kind == rp.ERROR)
    assert (f["code_name"], f.corr) == (code, corr), f.fields
    assert c.recv().kind == rp.CLOSE
    assert c.closed_within(3)


def test_a_frame_before_hello_is_refused_with_its_corr_id(daemon):
    c = rp.Conn("127.0.0.1", daemon.port, timeout=5)
    c.send(rp.encode_ping(77, 1))
    f = c.recv()
    assert f.kind == rp.ERROR and f.corr == 77 and f["code_name"] == "bad_frame", f.fields


def test_connection_errors_name_the_peer_once_per_connection(make_daemon, tmp_path):
    certs = rt.Certs(tmp_path)
    tcp, tls = free_port(), free_port()
    d = make_daemon(listeners=rt.listener("tcp", tcp) + rt.listener("tls", tls, certs),
                    extra="[timeouts]\nhandshake_timeout_ms = 500\n")
    peers = {}
    # A bad frame, a frame over max_frame_bytes, a TLS handshake that fails
    # (plain ringbus to the TLS port), and a silent client that times out.
    for name, port, data in [
        ("bad", tcp, rp.encode_hello(1) + rp.encode_frame(99, 2)),
        ("large", tcp, rp.encode_frame(rp.PING, 3, b"", size=1 << 30)),
        ("tls", tls, rp.encode_hello(4)),
        ("silent", tcp, b""),
    ]:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        peers[name] = "127.0.0.1:%d" % s.getsockname()[1]
        s.sendall(data)
        while s.recv(4096):
            pass
        s.close()
    wait_log(d, "no HELLO within")
    lines = d.log().splitlines()
    for name, peer in peers.items():
        tagged = [ln for ln in lines if f"(peer {peer})" in ln]
        assert len(tagged) == 1, (name, tagged)
        conn_id = re.search(r"conn (\d+):", tagged[0]).group(1)
        errors = [ln for ln in lines if f"conn {conn_id}: " in ln and " info: " in ln]
        assert errors and errors[0] == tagged[0], (name, errors)
    assert "TLS handshake: the client sent a plain ringbus HELLO" in d.log()


# ---- log_format: logfmt and json lines that a parser reads back -----------------

import json
import os

from conftest import Daemon

LEVELS = {"error", "warn", "info", "debug"}
LOGFMT_PAIR = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\["\\])*"|[^\s"=]+)(?: |$)')


def parse_logfmt(line):
    """A strict logfmt reader: key=value pairs split by one space, each value
    bare (no space, quote or '=') or quoted with \\" and \\\\ escapes."""
    out, pos = {}, 0
    while pos < len(line):
        m = LOGFMT_PAIR.match(line, pos)
        assert m, f"not logfmt at {pos}: {line!r}"
        key, value = m.group(1), m.group(2)
        assert key not in out, line
        if value.startswith('"'):
            value = re.sub(r'\\(["\\])', r"\1", value[1:-1])
        out[key] = value
        pos = m.end()
    return out


def evil_traffic(d):
    c = rp.Conn("127.0.0.1", d.port, timeout=5)
    assert c.hello(name=f'evil"}} \\\n{FORGED} x="1"\x1b\u202e').kind == rp.STARTED
    c.send(rp.encode_publish(2, f't"\n{FORGED}', "x"))
    assert c.recv_until(lambda f: f.kind == rp.ERROR)["code_name"] == "invalid_topic"
    c.sock.close()
    wait_log(d, "freed")


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_every_line_parses_in_the_configured_format(make_daemon, fmt):
    d = make_daemon(extra=f'log_format = "{fmt}"')
    evil_traffic(d)
    lines = d.log_path.read_text().splitlines()
    assert len(lines) >= 3
    parsed = [parse_logfmt(ln) if fmt == "logfmt" else json.loads(ln) for ln in lines]
    for rec in parsed:
        assert rec["level"] in LEVELS, rec
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["ts"]), rec
        assert set(rec) <= {"ts", "level", "shard", "conn", "msg"}, rec
        assert not re.search(r"[\x00-\x1f\x7f\u2028\u2029\u202a-\u202e]", rec["msg"]), rec
    msgs = [r["msg"] for r in parsed]
    # The decoded message is the text format's escaped message.
    assert any(f'evil"}} \\\\\\n{FORGED} x="1"\\x1B\\u{{202E}}' in m for m in msgs), msgs
    assert any(m.startswith("ready: 2 shards") and "shard" not in r
               for m, r in zip(msgs, parsed)), parsed
    conn_lines = [r for r in parsed if "conn" in r]
    assert conn_lines and all(int(r["conn"]) > 0 and int(r["shard"]) in (0, 1)
                              for r in conn_lines), conn_lines


def test_bad_log_format_is_a_config_error(tmp_path):
    d = Daemon(tmp_path, extra='log_format = "xml"')
    with pytest.raises(AssertionError):
        d.start()
    assert 'log_format: "xml" is not one of text, logfmt, json' in d.log(), d.log()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_journal_stream_adds_priorities_only_when_it_is_stderr(tmp_path, fmt):
    # The daemon's stderr is the log file: a JOURNAL_STREAM naming its device
    # and inode makes it the journal's stream, any other value does not.
    for sub, matches in (("yes", True), ("no", False)):
        (tmp_path / sub).mkdir()
        d = Daemon(tmp_path / sub, extra=f'log_format = "{fmt}"')
        d.log_path.write_bytes(b"")
        st = os.stat(d.log_path)
        d.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + (0 if matches else 1)}"
        d.start()
        try:
            evil_traffic(d)
        finally:
            assert d.stop() == 0
        lines = d.log_path.read_text().splitlines()
        for ln in lines:
            m = re.match(r"<([0-7])>", ln)
            assert bool(m) == matches, ln
            body = ln[m.end():] if m else ln
            if fmt == "json":
                rec = json.loads(body)
                if m:
                    prio = {"error": "3", "warn": "4", "info": "6", "debug": "7"}[rec["level"]]
                    assert m.group(1) == prio, ln
            elif m:
                assert not body.startswith("ringbusd "), ln
