"""The daemon core over plain TCP: start-up, handshake, keepalive, bad
input, connection limits, distribution across shards and graceful stop."""

import os
import re
import resource
import signal
import socket
import subprocess
import threading
import time

import pytest

import rbproto as rp
from conftest import RINGBUSD, RSS_BOUNDS_APPLY, Daemon, run_cli
from ports import free_port

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def connect(d):
    return rp.Conn("127.0.0.1", d.port, timeout=5.0)


def test_version_and_help_exit_zero():
    out = subprocess.run([str(RINGBUSD), "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.startswith("ringbusd ")
    out = subprocess.run([str(RINGBUSD), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "--check-config" in out.stdout


def test_check_config_typo_reports_file_line_column(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('shards = 2\n[limits]\nmax_frame_byte = 4096\n')
    out = subprocess.run([str(RINGBUSD), "--check-config", str(cfg)], capture_output=True,
                         text=True)
    assert out.returncode != 0
    assert re.search(r"bad\.toml:3:\d+: .*max_frame_byte", out.stderr), out.stderr


def test_check_config_accepts_the_example():
    example = os.path.join(os.path.dirname(__file__), "..", "..", "config",
                           "ringbusd.example.toml")
    out = subprocess.run([str(RINGBUSD), "--check-config", example], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


def test_bad_config_refuses_to_start(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[timeouts]\nkeepalive_ms = 0\n")
    out = subprocess.run([str(RINGBUSD), "--config", str(cfg)], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode != 0
    assert "keepalive_ms" in out.stderr


def test_port_in_use_is_a_clear_error(daemon, tmp_path):
    cfg = tmp_path / "dup.toml"
    cfg.write_text(f'[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\nport = {daemon.port}\n')
    out = subprocess.run([str(RINGBUSD), "--config", str(cfg)], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode != 0
    assert f"tcp listen 127.0.0.1:{daemon.port}: bind: Address already in use" in out.stderr


def test_port_in_use_at_start_is_retried_until_it_is_released(tmp_path):
    # A restart can race the previous holder's exit: the daemon tries the
    # bind again for about a second before it gives up.
    port = free_port()
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", port))
    holder.listen(1)
    d = Daemon(tmp_path, listeners=f'[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\n'
                                   f"port = {port}\n")
    d.port = port
    releaser = threading.Timer(0.3, holder.close)
    releaser.start()
    try:
        d.start()
        assert f"tcp listen 127.0.0.1:{port}: address in use, trying again" in d.log()
        c = rp.Conn("127.0.0.1", port, timeout=10)
        c.hello()
        c.close()
        assert d.stop() == 0
    finally:
        releaser.cancel()
        holder.close()
        d.stop()


def test_embedded_default_serves_ping_on_7400(tmp_path):
    log = open(tmp_path / "log", "wb")
    p = subprocess.Popen([str(RINGBUSD)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        out = None
        while time.monotonic() < deadline:
            out = run_cli("--url", "tcp://127.0.0.1:7400", "ping")
            if out.returncode == 0:
                break
            time.sleep(0.1)
        assert out.returncode == 0, out.stderr
        assert "rtt" in out.stdout
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) == 0
        log.close()
    text = (tmp_path / "log").read_text()
    assert "storage memory" in text


def test_hello_gets_started(daemon):
    c = connect(daemon)
    f = c.hello("pytest")
    assert f.kind == rp.STARTED
    assert f.fields["max_frame_bytes"] == 1 << 20
    assert f.fields["keepalive_ms"] == 30000
    c.close()


def test_first_frame_must_be_hello(daemon):
    c = connect(daemon)
    c.send(rp.encode_ping(1, 99))
    f = c.recv()
    assert f.kind == rp.ERROR
    assert f.fields["code_name"] == "bad_frame"
    assert c.closed_within(3)


def test_unknown_protocol_version_is_refused(daemon):
    c = connect(daemon)
    c.send(rp.encode_hello(1, version=7, name="x"))
    f = c.recv()
    assert f.kind == rp.ERROR
    assert f.fields["code_name"] == "unsupported_version"
    assert c.closed_within(3)


def test_unknown_header_version_is_refused(daemon):
    c = connect(daemon)
    c.send(rp.encode_frame(rp.HELLO, 1, b"\x01\x00\x00\x00\x00\x00", version=9))
    f = c.recv()
    assert f.kind == rp.ERROR
    assert f.fields["code_name"] == "unsupported_version"
    assert c.closed_within(3)


def test_unknown_kind_is_bad_frame(daemon):
    c = connect(daemon)
    c.hello()
    c.send(rp.encode_frame(77, 1, b""))
    f = c.recv()
    assert f.kind == rp.ERROR
    assert f.fields["code_name"] == "bad_frame"
    assert c.closed_within(3)


def test_four_gib_size_field_is_too_large_and_others_keep_working(daemon):
    good = connect(daemon)
    good.hello()
    c = connect(daemon)
    c.hello()
    c.send(b"\xff\xff\xff\xff" + bytes([1, rp.PUBLISH, 0, 0]) + bytes(8))
    f = c.recv()
    assert f.kind == rp.ERROR
    assert f.fields["code_name"] == "too_large"
    assert c.closed_within(3)
    good.send(rp.encode_ping(5, 1234))
    f = good.recv()
    assert f.kind == rp.PONG and f.fields["nonce"] == 1234


def test_size_below_header_is_bad_frame(daemon):
    c = connect(daemon)
    c.hello()
    c.send(b"\x03\x00\x00\x00" + bytes([1, rp.PING, 0, 0]) + bytes(8))
    f = c.recv()
    assert f.kind == rp.ERROR and f.fields["code_name"] == "bad_frame"
    assert c.closed_within(3)


def test_random_bytes_close_only_that_connection(daemon):
    import random

    seed = 1234
    rng = random.Random(seed)
    good = connect(daemon)
    good.hello()
    for i in range(20):
        c = connect(daemon)
        c.send(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4096))))
        assert c.closed_within(12), f"seed {seed} round {i}: connection left open"
    good.send(rp.encode_ping(5, 77))
    assert good.recv().fields["nonce"] == 77
    assert daemon.proc.poll() is None


def test_slow_loris_is_closed_with_deadline_exceeded(make_daemon):
    d = make_daemon(extra="[timeouts]\nhandshake_timeout_ms = 600\n")
    good = rp.Conn("127.0.0.1", d.port)
    good.hello()
    c = rp.Conn("127.0.0.1", d.port)
    hello = rp.encode_hello(1, name="slow")
    t0 = time.monotonic()
    got_error = None
    for b in hello:
        try:
            c.sock.sendall(bytes([b]))
        except OSError:
            break
        time.sleep(0.2)
        try:
            c.sock.setblocking(False)
            data = c.sock.recv(65536)
            c.sock.setblocking(True)
            if data:
                got_error = data
                break
        except BlockingIOError:
            c.sock.setblocking(True)
    assert time.monotonic() - t0 < 5
    f, _ = rp.decode(got_error)
    assert f.kind == rp.ERROR and f.fields["code_name"] == "deadline_exceeded"
    good.send(rp.encode_ping(1, 5))
    assert good.recv().kind == rp.PONG


def test_slow_frame_after_hello_is_closed(make_daemon):
    d = make_daemon(extra="[timeouts]\nhandshake_timeout_ms = 500\n")
    c = rp.Conn("127.0.0.1", d.port)
    c.hello()
    frame = rp.encode_ping(1, 1)
    c.send(frame[:5])
    f = c.recv(timeout=3)
    assert f.kind == rp.ERROR and f.fields["code_name"] == "deadline_exceeded"


def test_client_ping_is_answered_with_same_nonce(daemon):
    c = connect(daemon)
    c.hello()
    for nonce in (0, 1, 2**64 - 1):
        c.send(rp.encode_ping(9, nonce))
        f = c.recv()
        assert f.kind == rp.PONG and f.fields["nonce"] == nonce and f.corr == 9


def test_server_pings_idle_connection_and_pong_keeps_it(make_daemon):
    d = make_daemon(extra="[timeouts]\nkeepalive_ms = 200\npong_timeout_ms = 400\n")
    c = rp.Conn("127.0.0.1", d.port)
    c.hello()
    for _ in range(4):
        f = c.recv(timeout=2)
        assert f.kind == rp.PING
        c.send(rp.encode_pong(0, f.fields["nonce"]))
    assert not c.closed_within(0.3)


def test_missing_pong_reaps_with_deadline_exceeded(make_daemon):
    d = make_daemon(extra="[timeouts]\nkeepalive_ms = 200\npong_timeout_ms = 300\n")
    c = rp.Conn("127.0.0.1", d.port)
    c.hello()
    f = c.recv(timeout=2)
    assert f.kind == rp.PING
    f = c.recv(timeout=2)
    assert f.kind == rp.CLOSE and f.fields["status_name"] == "deadline_exceeded"
    assert c.closed_within(3)


def test_wrong_pong_nonce_does_not_count(make_daemon):
    d = make_daemon(extra="[timeouts]\nkeepalive_ms = 200\npong_timeout_ms = 300\n")
    c = rp.Conn("127.0.0.1", d.port)
    c.hello()
    f = c.recv(timeout=2)
    assert f.kind == rp.PING
    c.send(rp.encode_pong(0, f.fields["nonce"] ^ 1))
    f = c.recv(timeout=2)
    assert f.kind == rp.CLOSE and f.fields["status_name"] == "deadline_exceeded"


def test_connections_spread_over_both_shards(daemon):
    conns = [connect(daemon) for _ in range(20)]
    for c in conns:
        c.hello()
    log = daemon.log()
    shards = set(re.findall(r"shard (\d+): conn \d+: accepted", log))
    assert shards == {"0", "1"}, log[-2000:]


def test_connection_limit_refuses_cleanly(make_daemon):
    d = make_daemon(shards=1, extra="[limits]\nmax_connections = 4\n")
    conns = [rp.Conn("127.0.0.1", d.port) for _ in range(4)]
    for c in conns:
        assert c.hello().kind == rp.STARTED
    extra = rp.Conn("127.0.0.1", d.port)
    f = extra.recv(timeout=3)
    assert f.kind == rp.ERROR and f.fields["code_name"] == "resource_exhausted"
    assert extra.closed_within(3)
    conns[0].close()
    time.sleep(0.2)
    again = rp.Conn("127.0.0.1", d.port)
    assert again.hello().kind == rp.STARTED


def test_sigterm_sends_going_away_and_exits_zero(daemon):
    """An idle client is told GOING_AWAY (with a hint within the default
    reconnect_hint_ms) and closed at once with CLOSE going_away."""
    c = connect(daemon)
    c.hello()
    daemon.proc.send_signal(signal.SIGTERM)
    f = c.recv(timeout=5)
    assert f.kind == rp.GOING_AWAY_FRAME, f
    assert 0 <= f.fields["reconnect_delay_ms"] <= 1000
    assert f.fields["message"] == "server shutting down"
    f = c.recv(timeout=5)
    assert f.kind == rp.CLOSE and f.fields["status_name"] == "going_away"
    assert c.closed_within(5)
    assert daemon.stop() == 0


def test_sighup_is_logged_and_changes_nothing(daemon):
    c = connect(daemon)
    c.hello()
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "SIGHUP received" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "SIGHUP received" in daemon.log()
    c.send(rp.encode_ping(1, 3))
    assert c.recv().kind == rp.PONG


def test_five_thousand_idle_connections_on_two_shards(make_daemon):
    # All 5000 come from 127.0.0.1: above the default per-address limits.
    d = make_daemon(extra="[timeouts]\nkeepalive_ms = 1500\npong_timeout_ms = 5000\n"
                          "[limits]\nmax_connections_per_address = 16384\n"
                          "connection_rate_per_address = 1_000_000\n")
    base = d.rss_kib()
    socks = []
    for _ in range(5000):
        s = socket.create_connection(("127.0.0.1", d.port))
        s.sendall(rp.encode_hello(1, name="idle"))
        socks.append(s)
    started = 0
    pinged = 0
    buf = {}
    deadline = time.monotonic() + 30
    pending = set(range(len(socks)))
    import selectors

    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            i = key.data
            data = key.fileobj.recv(65536)
            buf[i] = buf.get(i, b"") + data
            while True:
                f, n = rp.decode(buf[i])
                if f is None:
                    break
                buf[i] = buf[i][n:]
                if f.kind == rp.STARTED:
                    started += 1
                elif f.kind == rp.PING:
                    pinged += 1
                    key.fileobj.sendall(rp.encode_pong(0, f.fields["nonce"]))
                    pending.discard(i)
    assert started == 5000
    assert pinged >= 5000
    rss = d.rss_kib()
    per_conn = (rss - base) * 1024 / 5000
    print(f"idle connections: 5000, rss {base} KiB -> {rss} KiB, {per_conn:.0f} bytes/conn")
    if RSS_BOUNDS_APPLY:
        assert per_conn < 16 * 1024
    log = d.log()
    assert {"0", "1"} <= set(re.findall(r"shard (\d+): conn \d+: accepted", log[:2_000_000]))
    for s in socks:
        s.close()
