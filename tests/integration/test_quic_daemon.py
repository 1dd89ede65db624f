"""The daemon's quic listener (issue 11): sessions over QUIC links on every
shard, libringbus and the CLI over quic://, HTTP/3 on the same UDP port for
Debian's gtlsclient and headless Chromium, a lossy and reordering UDP path,
a client that rebinds its port mid-connection (the datagram lands on
another shard and is forwarded to the owner), the randomized stream check
on mixed transports, and bad input on the bus stream. Raw-frame test
clients reach the listener through quic_relay (a TCP-to-QUIC relay on
libringbus's quic transport), so the daemon always sees real QUIC."""

import base64
import hashlib
import json
import random
import shutil
import socket
import subprocess
import threading
import time

import pytest

import rbproto as rp
import rbtransport as rt
from conftest import BUILD, free_port, run_cli

GTLSCLIENT = shutil.which("gtlsclient")
RELAY = BUILD / "quic_relay"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return rt.Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def quicd(tmp_path_factory, certs):
    """A daemon with 4 shards (so datagrams meet other shards' sockets), a
    quic listener and a quic listener with Retry."""
    # free_port checks that TCP and UDP can both bind the port.
    port, retry_port, tcp_port = free_port(), free_port(), free_port()
    others = {k: free_port() for k in ("tls", "ws", "wss")}
    listeners = (rt.listener("tcp", tcp_port) + rt.listener("quic", port, certs) +
                 rt.listener("quic", retry_port, certs, quic_retry=True) +
                 "".join(rt.listener(k, p, certs) for k, p in others.items()))
    sd = rt.SharedDaemon(tmp_path_factory, "quicd", listeners, shards=4)
    sd.port, sd.retry_port, sd.tcp_port = port, retry_port, tcp_port
    sd.ports = dict(others, tcp=tcp_port)
    yield sd
    sd.finish()


def qurl(port, host="127.0.0.1"):
    return f"quic://{host}:{port}"


class Relay:
    """quic_relay to url: test clients connect to relay.port over TCP."""

    def __init__(self, url, ca):
        self.proc = subprocess.Popen([str(RELAY), url, str(ca)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        line = self.proc.stdout.readline().decode()
        assert line.startswith("port "), line
        self.port = int(line.split()[1])

    def stop(self):
        """Stops the relay; returns what it wrote to stderr (a line for
        each QUIC connection that ended, with the daemon's status)."""
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        return err.decode(errors="replace")


class LossyUdp:
    """A UDP relay between one client and the daemon that drops `loss` of
    the datagrams and delays `reorder` of them behind the next one, both
    ways, with a seeded RNG."""

    def __init__(self, target_port, seed, loss=0.05, reorder=0.10):
        self.rng = random.Random(seed)
        self.loss, self.reorder = loss, reorder
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.target = ("127.0.0.1", target_port)
        self.client = None
        self.held = {}
        self.dropped = 0
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            try:
                data, addr = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            if addr != self.target:
                self.client = addr
                to = self.target
            else:
                to = self.client
            if to is None:
                continue
            if self.rng.random() < self.loss:
                self.dropped += 1
                continue
            if to not in self.held and self.rng.random() < self.reorder:
                self.held[to] = data
                continue
            self.sock.sendto(data, to)
            if to in self.held:
                self.sock.sendto(self.held.pop(to), to)

    def stop(self):
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close()


def gtls(port, path, tmp_path, *args, timeout=30):
    dl = tmp_path / "dl"
    dl.mkdir(exist_ok=True)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    r = subprocess.run(
        [GTLSCLIENT, "--no-quic-dump", "--no-http-dump", "--exit-on-all-streams-close",
         f"--download={dl}", *args, "127.0.0.1", str(port), f"https://localhost{path}"],
        capture_output=True, timeout=timeout)
    out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    status = None
    for line in out.splitlines():
        if "[:status:" in line:
            status = int(line.split("[:status:")[1].strip(" ]"))
    f = dl / name
    return status, (f.read_bytes() if f.exists() else None), out


# ---- libringbus and the CLI over quic:// -------------------------------------------


def test_cli_pub_then_sub_round_trip_over_quic(quicd, certs):
    u = qurl(quicd.port)
    out = run_cli("--url", u, "--ca", certs.ca, "pub", "q.cli", input="one\ntwo\nthree\n")
    assert out.returncode == 0, out.stderr
    assert [json.loads(l)["seq"] for l in out.stdout.splitlines()] == [1, 2, 3]
    out = run_cli("--url", u, "--ca", certs.ca, "sub", "--history-only", "--timeout", "10",
                  "q.cli@1")
    assert out.returncode == 0, out.stderr
    msgs = [json.loads(l) for l in out.stdout.splitlines()]
    assert [(m["seq"], m["data"]) for m in msgs if m["event"] == "message"] == [
        (2, "two"), (3, "three")]
    out = run_cli("--url", u, "--ca", certs.ca, "ping", "--count", "3")
    assert out.returncode == 0 and out.stdout.count("pong from") == 3, out.stderr


def test_live_messages_cross_from_tcp_to_quic(quicd, certs):
    sub = subprocess.Popen([str(BUILD / "ringbus"), "--url", qurl(quicd.port), "--ca",
                            str(certs.ca), "sub", "--count", "50", "--timeout", "20",
                            "q.live@0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    time.sleep(0.5)
    lines = "".join(f"m{i}\n" for i in range(50))
    out = run_cli("--url", f"tcp://127.0.0.1:{quicd.tcp_port}", "pub", "q.live", input=lines)
    assert out.returncode == 0, out.stderr
    so, se = sub.communicate(timeout=30)
    assert sub.returncode == 0, se
    msgs = [json.loads(l) for l in so.splitlines() if '"message"' in l]
    assert [m["seq"] for m in msgs] == list(range(1, 51))
    assert [m["data"] for m in msgs] == [f"m{i}" for i in range(50)]


def test_large_history_streams_over_quic(quicd, certs):
    u = qurl(quicd.port)
    payloads = [f"{i}:" + "y" * 5000 for i in range(400)]
    out = run_cli("--url", u, "--ca", certs.ca, "pub", "q.big",
                  input="\n".join(payloads) + "\n", timeout=60)
    assert out.returncode == 0, out.stderr
    out = run_cli("--url", u, "--ca", certs.ca, "sub", "--history-only", "--timeout", "30",
                  "q.big@0", timeout=60)
    assert out.returncode == 0, out.stderr
    msgs = [json.loads(l) for l in out.stdout.splitlines()]
    assert [m["data"] for m in msgs if m["event"] == "message"] == payloads


def test_cli_stream_and_bench_over_quic(quicd, certs):
    u = qurl(quicd.port)
    out = run_cli("--url", u, "--ca", certs.ca, "pub", "q.stream", input="a\nb\n")
    assert out.returncode == 0, out.stderr
    line = json.dumps({"mutate_id": 1, "add": [{"topic": "q.stream", "cursor": 0}]})
    out = run_cli("--url", u, "--ca", certs.ca, "stream", input=line + "\n")
    assert out.returncode == 0, out.stderr
    evs = [json.loads(l) for l in out.stdout.splitlines()]
    assert [e["data"] for e in evs if e["event"] == "message"] == ["a", "b"], evs
    assert {"event": "catchup_complete", "mutate_id": 1} in evs
    assert evs[-1]["event"] == "closed" and evs[-1]["status"] == "ok", evs
    out = run_cli("--url", u, "--ca", certs.ca, "bench", "pubsub", "--count", "300",
                  "--subscribers", "2", "--duration", "20", "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    fig = json.loads(out.stdout.strip().splitlines()[-1])
    assert fig["acked"] == 300 and fig["delivered"] == 600 and fig["lost"] == 0, fig


def test_untrusted_server_is_refused_unless_insecure(quicd):
    out = run_cli("--url", qurl(quicd.port), "ping")
    assert out.returncode == 1
    assert "QUIC handshake" in out.stderr and "--ca" in out.stderr, out.stderr
    out = run_cli("--url", qurl(quicd.port), "--insecure", "ping")
    assert out.returncode == 0, out.stderr


def test_host_name_is_checked_against_the_certificate(quicd, certs):
    out = run_cli("--url", qurl(quicd.port, "localhost"), "--ca", certs.ca, "ping")
    assert out.returncode == 0, out.stderr


def test_retry_listener_serves_sessions(quicd, certs):
    out = run_cli("--url", qurl(quicd.retry_port), "--ca", certs.ca, "ping", "--count", "2")
    assert out.returncode == 0 and out.stdout.count("pong from") == 2, out.stderr


# ---- HTTP/3 on the same port ----------------------------------------------------------


def test_gtlsclient_fetches_healthz_from_the_daemon(quicd, tmp_path):
    status, body, out = gtls(quicd.port, "/healthz", tmp_path)
    assert status == 200, out[-2000:]
    assert body == b"ok\n"
    status, _, _ = gtls(quicd.port, "/nope", tmp_path)
    assert status == 404
    # A body far beyond one error message (/metrics) arrives whole.
    status, body, out = gtls(quicd.port, "/metrics", tmp_path)
    assert status == 200, out[-2000:]
    text = body.decode()
    assert len(text) > 2000 and text.startswith("# HELP "), text[:200]
    assert "\nringbus_process_open_fds " in text and text.endswith("\n\n"), text[-200:]


def test_zero_rtt_is_never_accepted(quicd, tmp_path):
    # gtlsclient keeps the TLS session and transport parameters of a first
    # connection and sends 0-RTT on the next when it holds a ticket. The
    # server issues no session ticket (GNUTLS_NO_AUTO_SEND_TICKET, no
    # GNUTLS_ENABLE_EARLY_DATA), so there is nothing to resume or send early
    # data with; the second fetch gets its answer over 1-RTT. (With tickets
    # turned on by hand the engine still rejects the early data: gtlsclient
    # says "Early data was rejected by server".)
    sess, tp = tmp_path / "session", tmp_path / "tp"
    args = (f"--session-file={sess}", f"--tp-file={tp}")
    for _ in range(2):
        status, body, out = gtls(quicd.port, "/healthz", tmp_path, *args, timeout=30)
        assert status == 200 and body == b"ok\n", out[-2000:]
        assert not (sess.exists() and sess.stat().st_size > 0), "the server issued a ticket"
        assert "early data accepted" not in out.lower(), out[-2000:]


def metric(port, name, tmp_path):
    """One counter of the daemon's /metrics, fetched over HTTP/3."""
    status, body, out = gtls(port, "/metrics", tmp_path)
    assert status == 200, out[-2000:]
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


FORWARDED = "ringbus_quic_datagrams_forwarded_total"


@pytest.mark.parametrize("how", [("--nat-rebinding",), ()], ids=["nat-rebinding", "migration"])
def test_rebinding_client_survives_on_a_multi_shard_daemon(quicd, tmp_path, how):
    # gtlsclient moves to a new source port mid-connection, either as a NAT
    # rebinding (same connection ID) or as an active migration (path
    # validation, a fresh connection ID we issued): with 4 reuseport
    # sockets the datagrams of a new port land on another shard 3 times in
    # 4, which forwards them to the owner named in the connection ID. Each
    # round moves; until some round was forwarded (1 - (1/4)^rounds), go
    # on, up to 12 rounds (a miss all 12 times: 6e-8).
    before = metric(quicd.port, FORWARDED, tmp_path)
    forwarded = before
    rounds = 0
    while rounds < 4 or (forwarded == before and rounds < 12):
        status, body, out = gtls(quicd.port, "/healthz", tmp_path, "--change-local-addr=10ms",
                                 *how, "--delay-stream=40ms")
        assert status == 200, out[-3000:]
        assert body == b"ok\n"
        rounds += 1
        forwarded = metric(quicd.port, FORWARDED, tmp_path)
    assert forwarded > before, f"no datagram was forwarded in {rounds} rebinding rounds"
    assert metric(quicd.port, "ringbus_quic_datagrams_forward_dropped_total", tmp_path) == 0


def test_a_full_connection_table_of_h3_clients_all_get_answers(make_daemon, certs, tmp_path):
    # gtlsclient lets the server issue 7 connection IDs, 8 with its original
    # one: a shard whose connection table (limits.max_connections) is full
    # of such clients must have room in its CID index for all of them.
    port = free_port()
    make_daemon(shards=1, extra="[limits]\nmax_connections = 4\n",
                listeners=rt.listener("quic", port, certs))
    results = [None] * 4

    def one(i):
        d = tmp_path / f"c{i}"
        d.mkdir()
        results[i] = gtls(port, "/healthz", d, "--delay-stream=300ms")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for status, body, out in results:
        assert status == 200 and body == b"ok\n", out[-3000:]


def spki_pin(cert):
    """base64(sha256(SubjectPublicKeyInfo)) of a PEM certificate."""
    pub = subprocess.run(["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"],
                         capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub,
                         capture_output=True, check=True).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_headless_chromium_fetches_healthz_over_http3(quicd, certs, tmp_path):
    # Only UDP serves this port, so a page that loads came over HTTP/3
    # (QUIC forced for the origin; no TCP fallback exists).
    origin = f"localhost:{quicd.port}"
    r = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-quic",
         f"--origin-to-force-quic-on={origin}", "--host-resolver-rules=MAP localhost 127.0.0.1",
         f"--ignore-certificate-errors-spki-list={spki_pin(certs.cert)}", "--dump-dom",
         f"https://{origin}/healthz"],
        capture_output=True, text=True, timeout=90, start_new_session=True)
    assert ">ok\n<" in r.stdout or ">ok<" in r.stdout, (r.stdout[-2000:], r.stderr[-3000:])


# ---- loss, reordering, bad input ------------------------------------------------------


@pytest.mark.parametrize("seed", [21, 22])
def test_lossy_reordering_path_loses_nothing(quicd, certs, seed):
    # The issue asks for `tc netem loss 5% reorder 10%` in a network
    # namespace pair; this kernel has no sch_netem ("tc qdisc add dev lo
    # root netem" in a fresh netns: "Specified qdisc kind is unknown"), so
    # LossyUdp does the same with a seeded RNG in user space.
    lossy = LossyUdp(quicd.port, seed)
    try:
        u = f"quic://127.0.0.1:{lossy.port}"
        topic = f"q.lossy{seed}"
        lines = "".join(f"{i}:{'z' * (i % 700)}\n" for i in range(300))
        out = run_cli("--url", u, "--ca", certs.ca, "--timeout", "20", "pub", topic, input=lines,
                      timeout=90)
        assert out.returncode == 0, f"seed {seed}: {out.stderr}"
        assert [json.loads(l)["seq"] for l in out.stdout.splitlines()] == list(range(1, 301))
        out = run_cli("--url", u, "--ca", certs.ca, "--timeout", "20", "sub", "--history-only",
                      "--timeout", "60", f"{topic}@0", timeout=90)
        assert out.returncode == 0, f"seed {seed}: {out.stderr}"
        msgs = [json.loads(l) for l in out.stdout.splitlines()]
        got = [(m["seq"], m["data"]) for m in msgs if m["event"] == "message"]
        assert got == [(i + 1, f"{i}:{'z' * (i % 700)}") for i in range(300)], f"seed {seed}"
        assert lossy.dropped > 0, f"seed {seed}: nothing was dropped"
    finally:
        lossy.stop()


def test_oversized_frame_closes_only_that_connection(quicd, certs):
    relay = Relay(qurl(quicd.port), certs.ca)
    try:
        with rp.Conn(port=relay.port, timeout=10) as bad, rp.Conn(port=relay.port,
                                                                  timeout=10) as good:
            assert bad.hello(name="q-bad").kind == rp.STARTED
            assert good.hello(name="q-good").kind == rp.STARTED
            # A header announcing a frame far beyond max_frame_bytes.
            bad.send(rp.encode_frame(rp.PING, 5, size=64 << 20))
            f = bad.recv_until(lambda f: f.kind in (rp.ERROR, rp.CLOSE))
            assert f.kind == rp.ERROR and f["code"] == rp.TOO_LARGE, f
            assert bad.closed_within(10)
            good.ping(7)
            f = good.recv_until(lambda f: f.kind == rp.PONG)
            assert f["nonce"] == 7
    finally:
        relay.stop()


@pytest.mark.parametrize("seed", [41])
def test_garbage_datagrams_leave_sessions_alone(quicd, certs, tmp_path, seed):
    """Random datagrams, truncated Initials, and short-header and Handshake
    packets whose connection IDs name each shard (so they are forwarded
    through the mailbox to engines that do not know them) at the daemon's
    port, while a session over QUIC lives: that session and new ones keep
    working."""
    rng = random.Random(seed)
    relay = Relay(qurl(quicd.port), certs.ca)
    try:
        with rp.Conn(port=relay.port, timeout=10) as c:
            assert c.hello(name="q-garbage").kind == rp.STARTED
            before = metric(quicd.port, FORWARDED, tmp_path)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                for i in range(600):
                    owner = bytes([i % 4, 0])
                    kind = i % 5
                    rnd = rng.randbytes(rng.randint(0, 1400))
                    if kind == 0:
                        d = rnd or b"\x00"
                    elif kind == 1:  # a truncated Initial
                        d = b"\xc0\x00\x00\x00\x01\x08" + rnd[:rng.randint(0, 40)]
                    elif kind == 2:  # a padded Initial that fails to decrypt
                        d = (b"\xc3\x00\x00\x00\x01\x08" + rnd[:8] + b"\x08" + rnd[8:16] +
                             b"\x00\x44\xa0" + rng.randbytes(1200))
                    elif kind == 3:  # a short header naming a shard
                        d = b"\x40" + owner + rnd[:rng.randint(14, 200)].ljust(14, b"\x00")
                    else:  # a Handshake packet naming a shard
                        d = b"\xe0\x00\x00\x00\x01\x10" + owner + rnd[:rng.randint(14, 300)]
                    s.sendto(d, ("127.0.0.1", quicd.port))
            finally:
                s.close()
            c.ping(99)
            f = c.recv_until(lambda f: f.kind == rp.PONG)
            assert f["nonce"] == 99, f"seed {seed}"
            assert metric(quicd.port, FORWARDED, tmp_path) > before, f"seed {seed}"
    finally:
        relay.stop()
    out = run_cli("--url", qurl(quicd.port), "--ca", certs.ca, "ping")
    assert out.returncode == 0, f"seed {seed}: {out.stderr}"
    assert quicd.daemon.proc.poll() is None


@pytest.mark.parametrize("seed", [31, 32])
def test_randomized_streams_on_quic_tcp_tls_ws_wss(quicd, certs, seed):
    """The randomized stream check with publishers and subscribers spread
    over quic (through the relay), tcp, tls, ws and wss at once: order, no
    gap, no duplicate, markers in place."""
    from streamcheck import Driver, Publisher, Subscriber, run_random_streams
    kinds = ("quic", "tcp", "tls", "ws", "wss")
    relay = Relay(qurl(quicd.port), certs.ca)
    try:
        rng = random.Random(seed)
        topics = [f"qmix{seed}.{i}" for i in range(5)]
        drv = Driver()

        def client(cls, i, name):
            kind = kinds[i % len(kinds)]
            if kind == "quic":
                return cls(drv, relay.port, f"{name}-quic")
            return cls(drv, quicd.ports[kind], f"{name}-{kind}",
                       transport=rt.nb_factory(kind, certs))

        pubs = [client(Publisher, i, f"p{i}") for i in range(5)]
        subs = [client(Subscriber, i + 2, f"s{i}") for i in range(5)]
        drv.run_until(lambda: all(p.started for p in pubs), 20, "publishers")
        try:
            run_random_streams(
                drv, pubs, subs, topics, rng, steps=40, publishes_max=20,
                payload=lambda r, p, step: f"{p.name}:{step}:{r.random()}" * r.randint(1, 40))
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: {e}") from e
        finally:
            for c in pubs + subs:
                c.close()
    finally:
        relay.stop()


def test_subscriber_that_does_not_read_is_closed_resource_exhausted(quicd, certs):
    # The QUIC subscriber never reads: the relay's buffer fills, then the
    # QUIC stream's flow control holds the daemon's bytes in the session's
    # send queue, which ends in resource_exhausted as on tcp.
    relay = Relay(qurl(quicd.port), certs.ca)
    try:
        with rp.Conn(port=relay.port, timeout=10) as sub, rp.Conn(port=quicd.tcp_port,
                                                                  timeout=30) as pub:
            assert sub.hello(name="q-slow").kind == rp.STARTED
            sub.mutate(2, 1, adds=[("q.slow", "now")])
            sub.recv_until(lambda f: f.kind == rp.CATCHUP_COMPLETE)
            assert pub.hello(name="q-pub").kind == rp.STARTED
            payload = b"s" * 60_000
            closed = False
            for i in range(600):
                ack = pub.publish("q.slow", payload, corr=10 + i)
                assert ack.kind == rp.PUBLISH_ACK, ack
                if i % 50 == 49 and "subscriber too slow" in quicd.daemon.log():
                    closed = True
                    break
            assert closed or "subscriber too slow" in quicd.daemon.log()
            assert sub.closed_within(15)
    finally:
        relay_err = relay.stop()
    # The subscriber learns why: the CLOSE frame when it got out before the
    # close grace ended, and always the status in QUIC's CONNECTION_CLOSE.
    closes = [f for f in sub.skipped if f.kind == rp.CLOSE]
    if closes:
        assert sub.skipped[-1].kind == rp.CLOSE
        assert closes[-1]["status"] == rp.RESOURCE_EXHAUSTED, closes[-1].fields
    assert "server closed with resource_exhausted" in relay_err, relay_err
    # Everyone else is unaffected.
    out = run_cli("--url", qurl(quicd.port), "--ca", certs.ca, "ping")
    assert out.returncode == 0, out.stderr
