"""Peer-supplied strings in the daemon's log (issue 9, "Logs and peers"):
a client name, an HTTP request target and headers, and topic names carry
newlines, escape sequences, invalid UTF-8 and bidi overrides; every log
line stays one line of the daemon's own, with those bytes escaped."""

import re
import socket
import time

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
