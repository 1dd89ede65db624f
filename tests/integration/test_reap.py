"""A reaped slow consumer learns why (issue 9): when the server closes a
connection for resource_exhausted — its send queue, its pending buffer
during catch-up, or a publisher that does not read its acks — the CLOSE
resource_exhausted reaches the client, even one that did not read at all
while the server gave up on it. The clients here are real sockets that
stop reading (a 64 KiB receive buffer) and read everything only after the
daemon has freed the connection."""

import re
import socket
import ssl
import threading
import time

import pytest

import rbproto as rp
import rbtransport as rt
from conftest import free_port

# The default send queue (8 MiB): more than the kernel's socket buffers
# hold (tcp_wmem allows 4 MiB), so a CLOSE queued behind it could never
# reach a client that does not read.
LIMITS = "[limits]\nmax_frame_bytes = 65536\n[timeouts]\nclose_grace_ms = 300\n"


def stalled(d):
    """A connection whose client reads nothing until told."""
    c = rp.Conn("127.0.0.1", d.port, timeout=20)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    assert c.hello().kind == rp.STARTED
    return c


def publish_n(c, topic, n, start_corr, payload):
    for i in range(n):
        c.send(rp.encode_publish(start_corr + i, topic, payload))
    for i in range(n):
        f = c.recv_until(lambda f: f.kind in (rp.PUBLISH_ACK, rp.ERROR))
        assert f.kind == rp.PUBLISH_ACK, f.fields


def wait_freed(d, why, timeout=20, pattern=None):
    """Waits until the daemon closed (for why, or the regex pattern) and
    freed a connection; returns its id."""
    deadline = time.monotonic() + timeout
    why_re = pattern if pattern is not None else re.escape(why)
    while time.monotonic() < deadline:
        m = re.search(r"conn (\d+): closing: resource_exhausted: " + why_re, d.log())
        if m and f"conn {m.group(1)}: freed" in d.log():
            return m.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no connection closed for {why!r} and freed:\n{d.log()[-3000:]}")


def read_to_eof(c, timeout=20):
    """Everything the server sent, as frames (the stream must end on a
    frame boundary), read after the server let go of the connection."""
    c.sock.settimeout(timeout)
    # Reading starts now: open the window, or delayed acks pace the rest.
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    data = bytearray(c.buf) if hasattr(c, "buf") else bytearray()
    while True:
        chunk = c.sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return rp.decode_all(bytes(data))


def assert_told_why(frames, why, pattern=None):
    assert frames, "the connection ended without a frame"
    last = frames[-1]
    assert last.kind == rp.CLOSE, f"bare EOF after {[f.kind for f in frames[-3:]]}"
    assert last["status_name"] == "resource_exhausted", last.fields
    if pattern is not None:
        assert re.search(pattern, last["message"]), last.fields
    else:
        assert why in last["message"], last.fields


def test_a_subscriber_that_stops_reading_gets_its_close(make_daemon):
    d = make_daemon(extra=LIMITS)
    slow = stalled(d)
    slow.mutate(1, 1, adds=[("flood", "now")])
    pub = rp.Conn("127.0.0.1", d.port, timeout=20)
    pub.hello()
    for batch in range(100):
        publish_n(pub, "flood", 200, batch * 1000 + 1, "y" * 4000)
        if "subscriber too slow" in d.log():
            break
    wait_freed(d, "subscriber too slow")
    frames = read_to_eof(slow)
    assert_told_why(frames, "subscriber too slow")
    seqs = [s for f in frames if f.kind == rp.MESSAGES for (_, s, _) in f["items"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_a_catch_up_whose_pending_buffer_overflows_gets_its_close(make_daemon):
    d = make_daemon(extra=LIMITS.replace("[limits]\n",
                                         "[limits]\npending_buffer_bytes = 65536\n"))
    pub = rp.Conn("127.0.0.1", d.port, timeout=20)
    pub.hello()
    # More history than the send queue and the kernel hold together.
    for k in range(16):
        publish_n(pub, "pend", 500, k * 1000 + 1, "z" * 2000)
    slow = stalled(d)
    slow.mutate(1, 1, adds=[("pend", 0)])
    time.sleep(0.3)
    for k in range(10):
        publish_n(pub, "pend", 200, 50000 + k * 1000, "z" * 1000)
        if "buffered during catch-up" in d.log():
            break
    wait_freed(d, "topic pend: live messages buffered during catch-up")
    assert_told_why(read_to_eof(slow), "live messages buffered during catch-up")


def test_a_publisher_that_does_not_read_its_acks_gets_its_close(make_daemon):
    # The grace also covers the client still sending when it is reaped: the
    # server reads and discards until then, and closing with unread input
    # would make the kernel reset the connection and drop the CLOSE.
    d = make_daemon(extra=LIMITS.replace("close_grace_ms = 300", "close_grace_ms = 1500"))
    slow = stalled(d)
    # Acks for these (29 bytes each) overflow the kernel's buffers and the
    # 8 MiB send queue.
    frames = b"".join(rp.encode_publish(i + 1, "acks", "a") for i in range(340000))

    def send_all():
        try:
            slow.sock.sendall(frames)
        except OSError:
            pass  # the server stopped reading once it closed

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    # On a slow machine the acks lag until the publishes in flight reach
    # their bound first: the refusal's ERROR then finds the queue full.
    # Either way the queue the client does not read is what ends it.
    why = r"send queue over its limit: the client does not read its acks|" \
          r"send queue full: no room for ERROR"
    wait_freed(d, None, timeout=60, pattern=why)
    got = read_to_eof(slow)
    sender.join(10)
    assert_told_why(got, None, pattern=why)
    acks = [f.corr for f in got if f.kind == rp.PUBLISH_ACK]
    assert acks == list(range(1, len(acks) + 1)), "the acks it got are the first ones, in order"


def read_tls_to_eof(sock, timeout=30):
    """Everything a tls client gets until close_notify or EOF."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return rp.decode_all(bytes(data))


@pytest.mark.parametrize("kind", ["tls", "ws", "wss"])
def test_a_layered_subscriber_that_stops_reading_gets_its_close(make_daemon, tmp_path, kind):
    """The same through the tls and ws layers: the CLOSE (then, on ws and
    wss, WebSocket Close 1008) reaches a client that read nothing while it
    was reaped."""
    certs = rt.Certs(tmp_path)
    tcp, port = free_port(), free_port()
    d = make_daemon(listeners=rt.listener("tcp", tcp) + rt.listener(kind, port, certs),
                    extra=LIMITS)
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock = raw
    if kind in ("tls", "wss"):
        alpn = (rt.ALPN,) if kind == "tls" else ("http/1.1",)
        sock = rt.client_context(certs.ca, alpn=alpn).wrap_socket(raw,
                                                                 server_hostname="localhost")
    w = rt.BlockingWS(sock, "localhost", timeout=20) if kind != "tls" else sock
    w.sendall(rp.encode_hello(1))
    first = rp.decode(w.recv(4096))[0]
    assert first is not None and first.kind == rp.STARTED
    w.sendall(rp.encode_mutate(2, 1, adds=[("flood", "now")]))
    pub = rp.Conn("127.0.0.1", tcp, timeout=20)
    pub.hello()
    for batch in range(100):
        publish_n(pub, "flood", 200, batch * 1000 + 1, "y" * 4000)
        if "subscriber too slow" in d.log():
            break
    wait_freed(d, "subscriber too slow")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    if kind == "tls":
        assert_told_why(read_tls_to_eof(sock), "subscriber too slow")
        return
    assert w.wait_close(timeout=30) == 1008
    assert_told_why(rp.decode_all(bytes(w.pending)), "subscriber too slow")
