"""The per-connection limits of docs/PROTOCOL.md §10 that a client meets,
each driven to its edge and one past it: publishes awaiting their ack (the
publisher is paused, not refused, and the keepalive spares it), waves in
flight per stream, the server_id length, and server-only frame kinds sent
by a client."""

import re
import socket
import subprocess
import threading
import time

import pytest

import rbproto as rp
from conftest import RINGBUSD, free_port, run_cli

PUBLISHES_AWAITING_ACK_MAX = 65536
WAVES_IN_FLIGHT_MAX = 64
SERVER_ID_BYTES_MAX = 64
# Appends wait on a test's table lock for longer than the default 5 s.
LONG_STATEMENTS = "statement_timeout_ms = 120000"


def _paused_publishers(http_port):
    """ringbus_publishers_paused from GET /metrics."""
    s = socket.create_connection(("127.0.0.1", http_port), timeout=20)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    m = re.search(rb"^ringbus_publishers_paused (\d+)$", data, re.M)
    assert m, data[-2000:]
    return int(m.group(1))


def test_publish_past_65536_awaiting_ack_pauses_the_publisher_and_refuses_nothing(
        make_daemon, pg_db):
    tcp, http = free_port(), free_port()
    d = make_daemon(storage="postgres", conninfo=pg_db.conninfo, shards=1,
                    pg_extra=LONG_STATEMENTS,
                    listeners=(f'[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\n'
                               f'port = {tcp}\n[[listener]]\ntransport = "http"\n'
                               f'address = "127.0.0.1"\nport = {http}\n'))
    c = rp.Conn("127.0.0.1", tcp, timeout=60)
    c.hello()
    assert c.publish("held", "first", corr=1).kind == rp.PUBLISH_ACK
    # A lock on the topics table holds every append, so acks cannot come.
    lock = pg_db.cluster.session(pg_db.name)
    n = PUBLISHES_AWAITING_ACK_MAX + 1
    try:
        lock.stdin.write("BEGIN; LOCK TABLE topics IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n")
        lock.stdin.flush()
        assert lock.stdout.readline().strip() == "locked"
        for base in range(0, n, 4096):
            c.send(b"".join(rp.encode_publish(10 + i, "held", "x")
                            for i in range(base, min(base + 4096, n))))
        # A PING behind the publish that has to wait.
        c.send(rp.encode_ping(7, 0xbeef))
        # The last publish finds 65536 awaiting their ack: the server stops
        # reading the connection instead of refusing it.
        deadline = time.monotonic() + 60
        while _paused_publishers(http) != 1:
            assert time.monotonic() < deadline, "the publisher was not paused"
            time.sleep(0.05)
        lock.stdin.write("COMMIT;\n")
        lock.stdin.flush()
    finally:
        lock.stdin.close()
        lock.wait(timeout=30)
    seqs = {}
    pong = False
    while len(seqs) < n or not pong:
        f = c.recv()
        if f.kind == rp.PONG:
            assert f["nonce"] == 0xbeef and f.corr == 7
            pong = True
            continue
        assert f.kind == rp.PUBLISH_ACK, f.fields
        seqs[f.corr] = f["seq"]
    # Every publish acked once, in publish order, none refused.
    assert [seqs[10 + i] for i in range(n)] == list(range(2, 2 + n))
    assert _paused_publishers(http) == 0
    # The connection reads on: the next publish is accepted.
    assert c.publish("held", "after", corr=2)["seq"] == 2 + n


def test_a_paused_publisher_is_not_reaped_by_the_keepalive(make_daemon, pg_db):
    """With four envelopes and every append held by a lock, the publisher
    is paused for envelopes; the server does not read it, so it does not
    ping it either: a connection opened after the pause that never answers
    PINGs is reaped (so the keepalive and PONG deadlines have passed), the
    paused one stays open and gets every ack once the lock goes."""
    tcp, http = free_port(), free_port()
    d = make_daemon(storage="postgres", conninfo=pg_db.conninfo, shards=1,
                    pg_extra=LONG_STATEMENTS,
                    extra="[limits]\nshard_envelopes = 4\n"
                          "[timeouts]\nkeepalive_ms = 300\npong_timeout_ms = 8000\n",
                    listeners=(f'[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\n'
                               f'port = {tcp}\n[[listener]]\ntransport = "http"\n'
                               f'address = "127.0.0.1"\nport = {http}\n'))
    pub = rp.Conn("127.0.0.1", tcp, timeout=60)
    pub.hello(name="paused")
    assert pub.publish("kept", "first", corr=1).kind == rp.PUBLISH_ACK
    n = 2000
    out = b"".join(rp.encode_publish(10 + i, "kept", b"k" * 1000) for i in range(n))
    send_lock = threading.Lock()
    sent = []

    def send_all():
        with send_lock:
            pub.sock.sendall(out)
        sent.append(True)

    lock = pg_db.cluster.session(pg_db.name)
    ctl = None
    try:
        lock.stdin.write("BEGIN; LOCK TABLE topics IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n")
        lock.stdin.flush()
        assert lock.stdout.readline().strip() == "locked"
        writer = threading.Thread(target=send_all, daemon=True)
        writer.start()
        deadline = time.monotonic() + 60
        while _paused_publishers(http) != 1:
            assert time.monotonic() < deadline, "the publisher was not paused"
            time.sleep(0.05)
        # Opened after the pause and never answering: reaped after
        # keepalive_ms + pong_timeout_ms.
        ctl = rp.Conn("127.0.0.1", tcp, timeout=60)
        ctl.hello(name="control")
        ctl_peer = "127.0.0.1:%d" % ctl.sock.getsockname()[1]
        deadline = time.monotonic() + 60
        reaped = f"closing: deadline_exceeded: no PONG within 8000 ms (peer {ctl_peer})"
        while reaped not in d.log():
            assert time.monotonic() < deadline, d.log()[-3000:]
            time.sleep(0.05)
        assert _paused_publishers(http) == 1
        lock.stdin.write("COMMIT;\n")
        lock.stdin.flush()
    finally:
        lock.stdin.close()
        lock.wait(timeout=30)
        if ctl is not None:
            ctl.close()
    acks = {}
    while len(acks) < n:
        f = pub.recv()
        if f.kind == rp.PING:
            # A PING sent before the pause is answered now (the server
            # waits for it from the resume on).
            with send_lock:
                pub.sock.sendall(rp.encode_pong(0, f["nonce"]))
            continue
        assert f.kind == rp.PUBLISH_ACK, f.fields
        acks[f.corr] = f["seq"]
    writer.join(60)
    assert sent
    assert [acks[10 + i] for i in range(n)] == list(range(2, 2 + n))
    pub_peer = "127.0.0.1:%d" % pub.sock.getsockname()[1]
    assert f"(peer {pub_peer})" not in d.log(), "the paused publisher was closed"


def test_mutate_past_64_waves_in_flight_is_resource_exhausted_and_changes_nothing(daemon):
    c = rp.Conn("127.0.0.1", daemon.port, timeout=10)
    c.hello()
    # All 65 arrive in one read, so none of the first 64 waves can finish
    # before the 65th is checked.
    n = WAVES_IN_FLIGHT_MAX + 1
    c.send(b"".join(rp.encode_mutate(i, i, adds=[(f"w{i}", 0)]) for i in range(1, n + 1)))
    done, errors, live = set(), [], set()
    while len(done) + len(errors) < n:
        f = c.recv()
        if f.kind == rp.CATCHUP_COMPLETE:
            done.add(f["mutate_id"])
        elif f.kind == rp.TOPICS_LIVE:
            live.update(f["topics"])
        elif f.kind == rp.ERROR:
            errors.append((f.corr, f.fields["code_name"], f.fields["message"]))
    assert done == set(range(1, n))
    assert errors == [(n, "resource_exhausted", "MUTATE: more than 64 waves in flight")]
    assert f"w{n}" not in live
    # The connection stays open and the 65th wave is accepted once the others are done.
    c.mutate(200, n, adds=[(f"w{n}", 0)])
    f = c.recv_until(lambda f: f.kind in (rp.CATCHUP_COMPLETE, rp.ERROR))
    assert f.kind == rp.CATCHUP_COMPLETE and f["mutate_id"] == n


SERVER_FRAMES = [
    ("STARTED", rp.encode_started(5)),
    ("ERROR", rp.encode_error(5, rp.INTERNAL, "x")),
    ("PUBLISH_ACK", rp.encode_publish_ack(5, "t", 1)),
    ("MESSAGES", rp.encode_messages(5, 0, [("t", 1, b"x")])),
    ("TOPICS_LIVE", rp.encode_topics_live(5, ["t"])),
    ("CATCHUP_COMPLETE", rp.encode_catchup_complete(5, 1)),
    ("TOPIC_ERROR", rp.encode_topic_error(5, 1, "t", rp.CURSOR_AHEAD, "x")),
]


@pytest.mark.parametrize("name,frame", SERVER_FRAMES, ids=[n for n, _ in SERVER_FRAMES])
def test_a_server_only_kind_sent_by_a_client_is_bad_frame(daemon, name, frame):
    c = rp.Conn("127.0.0.1", daemon.port, timeout=5)
    c.hello()
    c.send(frame)
    f = c.recv()
    assert f.kind == rp.ERROR
    assert f.fields["code_name"] == "bad_frame"
    assert f.fields["message"] == f"{name} is not a client frame"
    assert c.closed_within(3)


@pytest.mark.parametrize("length", [SERVER_ID_BYTES_MAX, SERVER_ID_BYTES_MAX + 1])
def test_server_id_of_64_bytes_is_served_and_65_is_a_config_error(make_daemon, tmp_path, length):
    server_id = "n" * length
    if length > SERVER_ID_BYTES_MAX:
        path = tmp_path / "long.toml"
        path.write_text(f'server_id = "{server_id}"\n')
        out = subprocess.run([str(RINGBUSD), "--check-config", str(path)], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 1
        assert out.stderr == (f"{path}:1:13: server_id: {length} bytes is longer than the limit "
                              f"of {SERVER_ID_BYTES_MAX}\n")
        return
    d = make_daemon(extra=f'server_id = "{server_id}"\n')
    c = rp.Conn("127.0.0.1", d.port, timeout=5)
    f = c.hello()
    assert f.kind == rp.STARTED and f["server_id"] == server_id
    # libringbus (through the CLI) accepts the longest id too.
    out = run_cli("--url", d.url, "ping")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"pong from {server_id}: rtt ")



# ---- rate limits per connection (issue 13) ---------------------------------------

PUBLISH_RATE, PUBLISH_BURST, USER_RATE, MUTATES_PER_SECOND = 50, 10, 4, 5


def _hash_password(pw):
    r = subprocess.run([str(RINGBUSD), "--hash-password"], input=pw + "\n", capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
    import rbtransport as rt
    port = free_port()
    h = _hash_password("pw")
    extra = (f"[limits]\npublish_rate = {PUBLISH_RATE}\npublish_burst = {PUBLISH_BURST}\n"
             f"mutates_per_second = {MUTATES_PER_SECOND}\n"
             f'[auth]\nmode = "required"\n'
             f'[[auth.user]]\nname = "bulk"\npassword_hash = "{h}"\npublish = [">"]\n'
             f'subscribe = [">"]\n'
             f'[[auth.user]]\nname = "slow"\npassword_hash = "{h}"\npublish = [">"]\n'
             f"publish_rate = {USER_RATE}\n")
    sd = rt.SharedDaemon(tmp_path_factory, "rated", rt.listener("tcp", port), extra=extra)
    sd.port = port
    yield sd
    sd.finish()


def _signed_in(rated, user):
    c = rp.Conn("127.0.0.1", rated.port, timeout=15)
    started = c.hello(creds=rp.creds_password(user, "pw"), timeout=15)
    assert started.kind == rp.STARTED, started
    return c


def _burst_of_publishes(c, topic, n, first_corr):
    """Sends n publishes in one write; returns ({corr: seq}, {corr: message})."""
    c.send(b"".join(rp.encode_publish(first_corr + i, topic, b"p%d" % i) for i in range(n)))
    acks, refused = {}, {}
    while len(acks) + len(refused) < n:
        f = c.recv()
        if f.kind == rp.PUBLISH_ACK:
            acks[f.corr] = f["seq"]
        elif f.kind == rp.ERROR:
            assert f.fields["code_name"] == "resource_exhausted", f.fields
            refused[f.corr] = f.fields["message"]
    return acks, refused


@pytest.mark.parametrize("user, rate, burst", [("bulk", PUBLISH_RATE, PUBLISH_BURST),
                                               ("slow", USER_RATE, USER_RATE)])
def test_publishes_past_the_rate_are_resource_exhausted_and_the_connection_stays(
        rated, user, rate, burst):
    topic = f"rate.{user}.{time.monotonic_ns()}"
    n = 3 * burst
    with _signed_in(rated, user) as c:
        acks, refused = _burst_of_publishes(c, topic, n, 100)
        # The bucket starts full: the burst passes, then about nothing (a
        # 50/s bucket refills one token in 20 ms while the burst is read).
        assert burst <= len(acks) <= burst + 2, (len(acks), refused)
        assert sorted(acks.values()) == list(range(1, len(acks) + 1))
        assert set(acks) | set(refused) == set(range(100, 100 + n))
        assert all(f"PUBLISH: publish_rate of {rate} a second used up; retry in " in m
                   for m in refused.values()), refused
        # Refused publishes stored nothing; after a refill the same
        # connection publishes again, right after the accepted ones.
        time.sleep(1.2 * burst / rate)
        assert c.publish(topic, b"later", corr=999)["seq"] == len(acks) + 1
    log = rated.daemon.log()
    assert f"PUBLISH refused: publish_rate of {rate} a second used up ({user}, peer 127.0.0.1:" \
        in log, log[-3000:]
    assert "pw" + "\n" not in log


def test_mutates_past_mutates_per_second_are_resource_exhausted_and_change_nothing(rated):
    run = time.monotonic_ns()
    n = 2 * MUTATES_PER_SECOND
    with _signed_in(rated, "bulk") as c:
        c.send(b"".join(rp.encode_mutate(10 + i, 1 + i, adds=[(f"m.{run}.{i}", 0)])
                        for i in range(n)))
        done, refused = set(), {}
        while len(done) + len(refused) < n:
            f = c.recv()
            if f.kind == rp.CATCHUP_COMPLETE:
                done.add(f["mutate_id"])
            elif f.kind == rp.ERROR:
                assert f.fields["code_name"] == "resource_exhausted", f.fields
                refused[f.corr] = f.fields["message"]
        assert MUTATES_PER_SECOND <= len(done) <= MUTATES_PER_SECOND + 1, (done, refused)
        assert all("MUTATE: mutates_per_second of 5 a second used up" in m
                   for m in refused.values()), refused
        # A refused Mutate applied nothing: its topic is not in the stream,
        # so a publish to it reaches no one; an accepted one's does.
        time.sleep(1.1)
        refused_topic = f"m.{run}.{min(refused) - 10}"
        kept_topic = f"m.{run}.0"
        assert c.publish(refused_topic, b"x", corr=500)["seq"] == 1
        assert c.publish(kept_topic, b"y", corr=501)["seq"] == 1
        live = c.recv_until(lambda f: f.kind == rp.MESSAGES and f["mutate_id"] == 0)
        assert [t for t, _, _ in live["items"]] == [kept_topic]


# ---- per source address (issue 13) ------------------------------------------------

PER_ADDRESS, CONN_RATE, ATTEMPTS = 4, 50, 10_000


def _conn_from(source, port, timeout=10):
    """An rp.Conn whose socket is bound to source (another loopback address
    is another client address to the daemon)."""
    import collections
    c = rp.Conn.__new__(rp.Conn)
    c.timeout = timeout
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                      source_address=(source, 0))
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.buf, c.pending, c.skipped, c.eof = bytearray(), collections.deque(), [], False
    return c


def _refusal(port, source="127.0.0.1"):
    """Connects and returns the frame the daemon sends unasked (or None)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    try:
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    finally:
        s.close()
    frames = rp.decode_all(data) if data else []
    return frames[0] if frames else None


def test_attempts_past_the_address_limits_are_refused_while_another_address_connects(
        make_daemon):
    d = make_daemon(extra=f"[limits]\nmax_connections_per_address = {PER_ADDRESS}\n"
                          f"connection_rate_per_address = {CONN_RATE}\n")
    held = [_conn_from("127.0.0.1", d.port) for _ in range(PER_ADDRESS)]
    for c in held:
        assert c.hello().kind == rp.STARTED
    refused, t0 = {}, time.monotonic()
    other = None
    for i in range(ATTEMPTS):
        f = _refusal(d.port)
        assert f is not None and f.kind == rp.ERROR, (i, f)
        refused[f.fields["message"]] = refused.get(f.fields["message"], 0) + 1
        assert f.fields["code_name"] == "resource_exhausted", f.fields
        if i == ATTEMPTS // 2:
            # Halfway through the storm a client from another address
            # signs in and publishes as usual.
            other = _conn_from("127.0.0.2", d.port)
            assert other.hello().kind == rp.STARTED
            assert other.publish("addr.other", b"x", corr=2)["seq"] == 1
    took = time.monotonic() - t0
    assert set(refused) <= {"max_connections_per_address", "connection_rate_per_address"}, refused
    assert sum(refused.values()) == ATTEMPTS
    # The held connections were not disturbed.
    for i, c in enumerate(held):
        assert c.publish("addr.held", b"h", corr=3)["seq"] >= 1
    log = d.log()
    assert (f"connection from 127.0.0.1 to 127.0.0.1:{d.port} refused: "
            "max_connections_per_address") in log, log[-2000:]
    # One line a second at most, not one per attempt.
    assert log.count("connection from 127.0.0.1 to") <= took + 2, log.count("refused")
    assert "connection from 127.0.0.2 to" not in log
    # Closing one frees its count: after the rate refills, 127.0.0.1 is served again.
    held.pop().close()
    other.close()
    time.sleep(1.2)
    deadline = time.monotonic() + 5
    while True:
        c = _conn_from("127.0.0.1", d.port)
        f = c.hello()
        if f.kind == rp.STARTED or time.monotonic() > deadline:
            break
        c.close()
        time.sleep(0.1)  # the close may still be on its way to the daemon
    assert f.kind == rp.STARTED, f
    c.close()
    for h in held:
        h.close()


def test_failed_sign_ins_past_failures_per_minute_refuse_the_address_only(make_daemon, tmp_path):
    import jwt
    secret = tmp_path / "jwt.secret"
    key = "failures-per-minute-secret-0123456789abcdef"
    secret.write_text(key + "\n")
    d = make_daemon(extra='[auth]\nmode = "required"\nfailure_delay_ms = 10\n'
                          "failures_per_minute = 3\n"
                          f'[[auth.jwt_key]]\nalgorithm = "HS256"\nsecret_file = "{secret}"\n')
    good = jwt.encode({"sub": "ok", "exp": int(time.time()) + 60, "publish": [">"]}, key,
                      algorithm="HS256")
    bad = jwt.encode({"sub": "ok", "exp": int(time.time()) + 60}, "x" * 40, algorithm="HS256")
    for _ in range(3):
        with _conn_from("127.0.0.1", d.port) as c:
            err = c.hello(creds=rp.creds_token(bad))
            assert (err.kind, err.fields["code_name"]) == (rp.ERROR, "unauthorized"), err
    # The address has used up its failures: refused at once, even with a good token.
    f = _refusal(d.port)
    assert f is not None and (f.kind, f.fields["code_name"]) == (rp.ERROR, "unauthorized"), f
    assert f.fields["message"] == "too many failed sign-ins from this address"
    # Another address is not affected.
    with _conn_from("127.0.0.2", d.port) as c:
        assert c.hello(creds=rp.creds_token(good)).kind == rp.STARTED
    assert f"connection from 127.0.0.1 to 127.0.0.1:{d.port} refused: failures_per_minute" in d.log()


def test_a_listener_past_its_max_connections_refuses_while_another_listener_serves(make_daemon):
    small, other = free_port(), free_port()
    listeners = (f'[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\nport = {small}\n'
                 "max_connections = 2\n"
                 f'[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\nport = {other}\n')
    d = make_daemon(listeners=listeners)
    held = [_conn_from("127.0.0.1", small) for _ in range(2)]
    for c in held:
        assert c.hello().kind == rp.STARTED
    for _ in range(3):
        f = _refusal(small)
        assert f is not None and (f.kind, f.fields["code_name"], f.fields["message"]) == (
            rp.ERROR, "resource_exhausted", "listener max_connections"), f
    with _conn_from("127.0.0.1", other) as c:
        assert c.hello().kind == rp.STARTED
    assert f"to 127.0.0.1:{small} refused: listener max_connections" in d.log()
    # A closed connection frees its place on the listener.
    held.pop().close()
    deadline = time.monotonic() + 5
    while True:
        c = _conn_from("127.0.0.1", small)
        f = c.hello()
        c.close()
        if f.kind == rp.STARTED or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert f.kind == rp.STARTED, f
    for h in held:
        h.close()
