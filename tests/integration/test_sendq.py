"""Send queues: each connection is held to its own quota, so a client that
never reads fills only its own queue and is closed with resource_exhausted
(saying why), while every other connection of the shard keeps sending and
receiving. The shard's send memory is derived from the config so that a
connection within its quota is never refused for another's backlog."""
import socket
import time

import rbproto as rp
from conftest import RSS_BOUNDS_APPLY


def wait_log(d, text, timeout=15):
    deadline = time.monotonic() + timeout
    while text not in d.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    return text in d.log()


def publish_n(c, topic, n, start_corr, payload):
    for i in range(n):
        c.send(rp.encode_publish(start_corr + i, topic, payload))
    seqs = []
    for _ in range(n):
        f = c.recv_until(lambda f: f.kind in (rp.PUBLISH_ACK, rp.ERROR))
        assert f.kind == rp.PUBLISH_ACK, f.fields
        seqs.append(f["seq"])
    return seqs


def send_flood(sock, chunk, rounds, until=None, deadline_s=60):
    """Sends chunk rounds times without reading a byte; stops when the
    server closes (a reset or a broken pipe), when until() holds, or at the
    deadline. A send that finds no room is not an error: a server that has
    already closed and stopped taking bytes for a moment (a slow machine)
    must not fail the test before its log is read. Returns bytes sent."""
    old = sock.gettimeout()
    sock.settimeout(0.5)
    view = memoryview(chunk)
    total = len(view) * rounds
    sent = 0
    end = time.monotonic() + deadline_s
    try:
        while sent < total and time.monotonic() < end:
            off = sent % len(view)
            try:
                sent += sock.send(view[off:])
            except socket.timeout:
                if until is not None and until():
                    break
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.settimeout(old)
    return sent


def flood_pings(sock, count, batch=20000, until=None):
    """Sends count PINGs without reading a byte (see send_flood)."""
    frame = rp.encode_ping(0, 7)
    batch = min(batch, count)
    return send_flood(sock, frame * batch, count // batch, until) // len(frame)


def test_client_that_never_reads_fills_only_its_own_quota(make_daemon):
    # One shard, so the flooder shares its pools and budget with the others.
    d = make_daemon(shards=1, extra="[limits]\nmax_frame_bytes = 65536\n"
                                    "send_queue_bytes = 262144\n")
    sub = rp.Conn("127.0.0.1", d.port, timeout=20)
    sub.hello()
    sub.mutate(1, 1, adds=[("steady", "now")])
    sub.recv_until(lambda f: f.kind == rp.CATCHUP_COMPLETE)
    pub = rp.Conn("127.0.0.1", d.port, timeout=20)
    pub.hello()
    rss0 = d.rss_kib()

    flooder = rp.Conn("127.0.0.1", d.port, timeout=20)
    flooder.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flooder.hello()
    # 48 MiB of PONGs asked for, far past the quota and the kernel's
    # socket buffers: before the quota they piled up in the shard's shared
    # chunk pool without bound.
    flood_pings(flooder.sock, 2_000_000, until=lambda: "send queue full" in d.log())
    assert wait_log(d, "closing: resource_exhausted: send queue full"), d.log()[-3000:]

    # Everyone else carries on: acks for the publisher, messages for the
    # subscriber, a PONG for a new connection.
    seqs = publish_n(pub, "steady", 50, 100, "z" * 1000)
    got = []
    while len(got) < 50:
        f = sub.recv_until(lambda f: f.kind == rp.MESSAGES)
        got += [s for (_, s, _) in f["items"]]
    assert got == seqs
    other = rp.Conn("127.0.0.1", d.port)
    other.hello()
    other.ping(42)
    assert other.recv_until(lambda f: f.kind == rp.PONG)["nonce"] == 42

    rss1 = d.rss_kib()
    print(f"flooder: daemon rss {rss0} KiB -> {rss1} KiB")
    if RSS_BOUNDS_APPLY:
        # The flooder held at most its quota and reserve (256 KiB + a few
        # chunks), not the 48 MiB it asked for.
        assert rss1 - rss0 < 24 * 1024, (rss0, rss1)


def test_catchup_complete_that_does_not_fit_closes_instead_of_vanishing(make_daemon):
    # Every MUTATE here is answered by CATCHUP_COMPLETE alone (it only
    # removes a topic the stream does not have); the client reads none of
    # them. Once its queue is at its quota, the next CATCHUP_COMPLETE cannot
    # be queued: the connection is closed with resource_exhausted saying
    # so, never left waiting for a CATCHUP_COMPLETE that was dropped.
    # (mutates_per_second at its top: the flood must meet the queue's bound,
    # not the rate limit.)
    d = make_daemon(shards=1, extra="[limits]\nmax_frame_bytes = 65536\n"
                                    "send_queue_bytes = 65536\nmutates_per_second = 1_000_000_000\n")
    c = rp.Conn("127.0.0.1", d.port, timeout=20)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.hello()
    batch = b"".join(rp.encode_mutate(i, i, removes=["absent"]) for i in range(1, 20001))
    want = "closing: resource_exhausted: send queue full: no room for CATCHUP_COMPLETE"
    send_flood(c.sock, batch, 20, until=lambda: want in d.log())
    assert wait_log(d, want), d.log()[-3000:]
    other = rp.Conn("127.0.0.1", d.port)
    other.hello()
    other.mutate(1, 1, removes=["absent"])
    assert other.recv_until(lambda f: f.kind == rp.CATCHUP_COMPLETE)["mutate_id"] == 1


def test_closed_flooder_reads_why_in_error_and_close(make_daemon):
    d = make_daemon(shards=1, extra="[limits]\nmax_frame_bytes = 65536\n"
                                    "send_queue_bytes = 65536\n")
    flooder = rp.Conn("127.0.0.1", d.port, timeout=20)
    flooder.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flooder.hello()
    flood_pings(flooder.sock, 1_000_000, until=lambda: "send queue full" in d.log())
    assert wait_log(d, "closing: resource_exhausted: send queue full")
    # Reading now, the client finds the PONGs that had started to go out
    # (the reap drops the queued ones it cannot read: none when the whole
    # flood was answered in one turn), then ERROR and CLOSE with
    # resource_exhausted (queued in the closing reserve), then the end: the
    # server kept reading its unread PINGs, so no reset destroyed them.
    kinds = []
    last = {}
    try:
        while True:
            f = flooder.recv(timeout=10)
            kinds.append(f.kind)
            last[f.kind] = f
    except EOFError:
        pass
    assert set(kinds) <= {rp.PONG, rp.ERROR, rp.CLOSE}, set(kinds)
    assert kinds[-2:] == [rp.ERROR, rp.CLOSE]
    assert last[rp.ERROR]["code"] == rp.RESOURCE_EXHAUSTED
    assert last[rp.CLOSE]["status"] == rp.RESOURCE_EXHAUSTED
