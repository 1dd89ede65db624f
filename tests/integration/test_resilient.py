"""The resilient session of libringbus (issue 15, client/ringbus.h "the
resilient session") through the real CLI, whose pub, sub and stream run on
it, against the real daemon on a real Postgres: daemons killed with -9 and
restarted, drained with SIGTERM, nodes of a cluster killed while clients
fail over; the watchdog against a daemon stopped dead (SIGSTOP); errors that
must stop reconnecting at once. Every check is on what the clients printed
and on what Postgres holds. The randomized schedule prints its seed on
failure (RESILIENT_SEED=N replays it)."""

import collections
import json
import os
import random
import signal
import subprocess
import threading
import time

import jwt
import pytest

from conftest import RINGBUS, run_cli
from test_cluster import Cluster, Relay

SEED = int(os.environ.get("RESILIENT_SEED", random.randrange(1 << 31)))
WAIT_S = 90  # generous: CI runs this on 2 loaded cores, under ASan too
PUB_RATE = 150  # lines per second per publisher


class Cli:
    """A running `ringbus` whose stdout JSON lines are collected."""

    def __init__(self, *args, stdin=False):
        self.proc = subprocess.Popen(
            [str(RINGBUS), *args], stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines = []
        self.err = ""
        self._lock = threading.Lock()
        self._out = threading.Thread(target=self._read, daemon=True)
        self._out.start()
        self._errt = threading.Thread(target=self._read_err, daemon=True)
        self._errt.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(json.loads(line))

    def _read_err(self):
        self.err = self.proc.stderr.read()

    def events(self, kind=None):
        with self._lock:
            return [e for e in self.lines if kind is None or e.get("event") == kind]

    def wait_for(self, what, pred, timeout=WAIT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self):
                return
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the readers finish
                if pred(self):
                    return
                raise AssertionError(f"ringbus exited {self.proc.returncode} before {what}: "
                                     f"{self.err}\n{self.lines[-20:]}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.err}\n{self.lines[-20:]}")

    def finish(self, timeout=WAIT_S):
        rc = self.proc.wait(timeout=timeout)
        self._out.join(10)
        self._errt.join(10)
        return rc

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.finish()


class Feeder:
    """`ringbus pub TOPIC` fed one line per message at a steady rate until
    told to stop; remembers the payloads it wrote, in order."""

    def __init__(self, urls, topic, name, rate=PUB_RATE):
        """rate: lines per second; None writes as fast as the pipe takes
        them (the publisher always has publishes in flight)."""
        self.rate = rate
        self.cli = Cli(*urls_args(urls), "--timeout", str(WAIT_S), "pub", topic, stdin=True)
        self.topic = topic
        self.name = name
        self.sent = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._feed, daemon=True)
        self._t.start()

    def _feed(self):
        n = 0
        start = time.monotonic()
        while not self._stop.is_set():
            due = start + n / self.rate if self.rate else 0
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            payload = f"{self.name}-{n}"
            try:
                self.cli.proc.stdin.write(payload + "\n")
                self.cli.proc.stdin.flush()
            except BrokenPipeError:
                return
            self.sent.append(payload)
            n += 1
        self.cli.proc.stdin.close()

    def stop(self):
        self._stop.set()
        self._t.join(WAIT_S)
        return self.cli.finish()


def urls_args(urls):
    return [a for u in urls for a in ("--url", u)]


def history(url, topic):
    """Every (seq, payload) stored in topic, oldest first."""
    r = run_cli("--url", url, "--no-reconnect", "--timeout", "60", "sub", "--history-only",
                f"{topic}@0", timeout=WAIT_S)
    assert r.returncode == 0, r.stderr
    return [(e["seq"], e["data"]) for e in map(json.loads, r.stdout.splitlines())
            if e.get("event") == "message"]


def check_exactly_once(feeders, subs, url):
    """Every line a feeder wrote is stored once, acked with its own seq, and
    seen once, in order, by every subscriber."""
    stored = {}
    for f in feeders:
        if f.topic not in stored:
            stored[f.topic] = history(url, f.topic)
    for topic, rows in stored.items():
        seqs = [s for s, _ in rows]
        assert seqs == list(range(1, len(rows) + 1)), f"{topic}: stored seqs have gaps"
        payloads = [p for _, p in rows]
        dups = {p for p, n in collections.Counter(payloads).items() if n > 1}
        assert not dups, f"{topic}: stored twice (a re-send was not deduplicated): {sorted(dups)[:5]}"
        written = [p for f in feeders if f.topic == topic for p in f.sent]
        assert sorted(payloads) == sorted(written), (
            f"{topic}: stored {len(payloads)} messages for {len(written)} lines written")
    duplicates = 0
    for f in feeders:
        acks = [e for e in f.cli.lines if "event" not in e]
        errors = [e for e in f.cli.lines if e.get("event") == "error"]
        assert not errors, f"{f.name}: publish errors {errors[:3]}"
        assert len(acks) == len(f.sent), f"{f.name}: {len(acks)} acks for {len(f.sent)} lines"
        by_seq = dict(stored[f.topic])
        for payload, ack in zip(f.sent, acks):
            assert ack["topic"] == f.topic
            assert by_seq[ack["seq"]] == payload, f"{f.name}: ack {ack} is not {payload}"
        duplicates += sum(1 for a in acks if a.get("duplicate"))
    for i, s in enumerate(subs):
        for topic, rows in stored.items():
            seen = [(e["seq"], e["data"]) for e in s.events("message") if e["topic"] == topic]
            assert seen == rows, (f"subscriber {i}, {topic}: saw {len(seen)} messages, "
                                  f"{len(rows)} stored; first difference at "
                                  f"{next((k for k, (a, b) in enumerate(zip(seen, rows)) if a != b), min(len(seen), len(rows)))}")
    return duplicates


def wait_caught_up(subs, url, topics):
    heads = {t: len(history(url, t)) for t in topics}
    for s in subs:
        s.wait_for("every stored message", lambda c: all(
            sum(1 for e in c.events("message") if e["topic"] == t) >= n
            for t, n in heads.items()))


def test_sessions_survive_ten_kill9_restarts_and_a_drain_on_postgres(make_daemon):
    rnd = random.Random(SEED)
    print(f"RESILIENT_SEED={SEED}")
    d = make_daemon(storage="postgres")
    url = d.url
    topics = ["rs.a", "rs.b"]
    subs = [Cli("--url", url, "--timeout", str(WAIT_S), "sub", *[f"{t}@0" for t in topics])
            for _ in range(2)]
    for s in subs:
        s.wait_for("the wave", lambda c: c.events("catchup_complete"))
    feeders = [Feeder([url], "rs.a", "a0"), Feeder([url], "rs.a", "a1"),
               Feeder([url], "rs.b", "b0")]
    try:
        for i in range(11):
            time.sleep(rnd.uniform(0.3, 0.9))
            if i == 10:
                assert d.stop(signal.SIGTERM) == 0, d.log()[-3000:]  # the drain
            else:
                d.kill9()
            time.sleep(rnd.uniform(0.05, 0.4))
            d.start()
            # Every client is back before the next fault, so each is a loss
            # for each of them (pub prints its session's events too).
            for c in subs + [f.cli for f in feeders]:
                c.wait_for(f"reconnect {i + 1}", lambda c: len(c.events("reconnected")) > i)
        time.sleep(0.5)
    finally:
        rcs = [f.stop() for f in feeders]
    assert rcs == [0, 0, 0], [f.cli.err for f in feeders]
    wait_caught_up(subs, url, topics)
    for s in subs:
        s.stop()
        assert len(s.events("reconnected")) == 11, s.events("reconnecting")[-3:]
        assert not s.events("topic_error") and not s.events("closed")
    duplicates = check_exactly_once(feeders, subs, url)
    print(f"seed {SEED}: {sum(len(f.sent) for f in feeders)} publishes, "
          f"{duplicates} acknowledged as duplicates of a re-send")


def test_clients_fail_over_between_two_nodes_and_back(make_daemon, pg_conninfo, tmp_path):
    rnd = random.Random(SEED + 1)
    print(f"RESILIENT_SEED={SEED}")
    cl = Cluster(make_daemon, pg_conninfo, tmp_path, n=2)
    cl.wait_mesh()
    urls = [n.url for n in cl.nodes]
    subs = [Cli(*urls_args(order), "--timeout", str(WAIT_S), "sub", "rs.f@0")
            for order in (urls, urls[::-1])]
    for s in subs:
        s.wait_for("the wave", lambda c: c.events("catchup_complete"))
    feeders = [Feeder(urls, "rs.f", "f0"), Feeder(urls[::-1], "rs.f", "f1")]
    # Each client starts on the first URL it was given.
    clients = [(subs[0], urls[0]), (subs[1], urls[1]), (feeders[0].cli, urls[0]),
               (feeders[1].cli, urls[1])]

    def node_of(c, first):
        moved = c.events("reconnected")
        return moved[-1]["url"] if moved else first

    try:
        for victim in (0, 1, 0):
            time.sleep(rnd.uniform(0.5, 1.0))
            on_victim = [(c, len(c.events("reconnected"))) for c, first in clients
                         if node_of(c, first) == urls[victim]]
            assert on_victim, "no client on the node to kill"
            cl.nodes[victim].kill9()
            for c, moves in on_victim:  # they move to the other node while it is down
                c.wait_for("the move", lambda c: len(c.events("reconnected")) > moves)
                assert c.events("reconnected")[-1]["url"] == urls[1 - victim]
            cl.nodes[victim].start()
            cl.wait_mesh()
        time.sleep(0.5)
    finally:
        rcs = [f.stop() for f in feeders]
    assert rcs == [0, 0], [f.cli.err for f in feeders]
    wait_caught_up(subs, urls[0], ["rs.f"])
    for s in subs:
        s.stop()
        moved = [e["url"] for e in s.events("reconnected")]
        assert moved, "a subscriber never lost its node"
        assert not s.events("topic_error") and not s.events("closed")
    check_exactly_once(feeders, subs, urls[0])


def test_publishes_committed_but_not_acked_are_re_sent_and_stored_once(make_daemon):
    """The daemon commits every publish but no ack reaches the client; the
    connection is then cut. The session re-sends all of them with their
    keys: each is acknowledged once, as a duplicate of the original, and
    stored once."""
    d = make_daemon(storage="postgres")
    hole = Relay()
    hole.target = d.port
    try:
        pub = Cli("--url", f"tcp://127.0.0.1:{hole.port}", "--timeout", "60", "pub", "rs.u",
                  stdin=True)
        pub.proc.stdin.write("u-0\n")
        pub.proc.stdin.flush()
        pub.wait_for("the first ack", lambda c: c.lines)
        hole.mute_target = True  # the acks of what the daemon commits are lost
        lines = ["u-0"] + [f"u-{i}" for i in range(1, 41)]
        pub.proc.stdin.write("".join(x + "\n" for x in lines[1:]))
        pub.proc.stdin.flush()
        deadline = time.monotonic() + WAIT_S
        while len(history(d.url, "rs.u")) < len(lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(pub.lines) == 1, "an ack got through the hole"
        hole.mute_target = False
        hole.hang_up()
        pub.proc.stdin.close()
        assert pub.finish() == 0, pub.err
    finally:
        hole.close()
    acks = [e for e in pub.lines if "event" not in e]
    assert [a.get("duplicate", False) for a in acks] == [False] + [True] * (len(lines) - 1), acks[:3]
    assert [a["seq"] for a in acks] == list(range(1, len(lines) + 1))
    assert history(d.url, "rs.u") == list(enumerate(lines, 1))
    assert pub.events("reconnected")


def test_pub_key_repeated_prints_the_original_ack_as_a_duplicate(make_daemon):
    d = make_daemon(storage="postgres")
    first = run_cli("--url", d.url, "pub", "--key", "order-17", "rs.k", "one")
    assert first.returncode == 0, first.stderr
    again = run_cli("--url", d.url, "pub", "--key", "order-17", "rs.k", "one, again")
    assert again.returncode == 0, again.stderr
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert a == {"topic": "rs.k", "seq": 1}
    assert b == {"topic": "rs.k", "seq": 1, "duplicate": True}
    other = run_cli("--url", d.url, "pub", "--key", "order-18", "rs.k", "two")
    assert json.loads(other.stdout) == {"topic": "rs.k", "seq": 2}
    assert history(d.url, "rs.k") == [(1, "one"), (2, "two")]
    r = run_cli("--url", d.url, "pub", "--key", "k", "rs.k")
    assert r.returncode == 2 and "one key is one message" in r.stderr


def test_no_reconnect_ends_at_the_first_loss(make_daemon):
    d = make_daemon()
    s = Cli("--url", d.url, "--no-reconnect", "sub", "rs.n@0")
    s.wait_for("the wave", lambda c: c.events("catchup_complete"))
    d.kill9()
    assert s.finish() == 1
    assert not s.events("reconnecting")
    assert s.events("closed")[0]["status"] == "unavailable"
    d.start()


def test_a_session_refused_for_its_token_stops_at_once(make_daemon, tmp_path):
    secret = tmp_path / "jwt.secret"
    secret.write_text("resilient-secret-0123456789abcdef\n")
    d = make_daemon(extra=f'[auth]\nmode = "required"\nfailure_delay_ms = 50\nclock_skew_s = 0\n'
                          f'[[auth.jwt_key]]\nalgorithm = "HS256"\nsecret_file = "{secret}"\n')
    # Refused at sign-in: no attempt is made again.
    bad = jwt.encode({"sub": "x", "exp": int(time.time()) + 600}, "another-secret-of-32-bytes-long!",
                     algorithm="HS256")
    t0 = time.monotonic()
    r = run_cli("--url", d.url, "--token", bad, "sub", "rs.t@0")
    assert r.returncode == 1 and "unauthorized" in r.stderr.lower() + r.stdout, r.stderr
    assert "reconnecting" not in r.stdout
    assert time.monotonic() - t0 < 10
    # Closed for an expired token mid-session: unauthorized is not retried.
    short = jwt.encode({"sub": "x", "exp": int(time.time()) + 2, "subscribe": ["rs.>"]},
                       "resilient-secret-0123456789abcdef", algorithm="HS256")
    s = Cli("--url", d.url, "--token", short, "sub", "rs.t@0")
    s.wait_for("the wave", lambda c: c.events("catchup_complete"))
    assert s.finish(timeout=30) == 1
    assert not s.events("reconnecting"), s.lines
    assert s.events("closed")[0]["status"] == "unauthorized"


def test_the_watchdog_replaces_a_dead_silent_connection(make_daemon):
    d = make_daemon(extra="[timeouts]\nkeepalive_ms = 500\n", storage="postgres")
    s = Cli("--url", d.url, "--timeout", "2", "sub", "rs.w@0")
    s.wait_for("the wave", lambda c: c.events("catchup_complete"))
    assert run_cli("--url", d.url, "pub", "rs.w", "before").returncode == 0
    s.wait_for("the first message", lambda c: c.events("message"))
    d.proc.send_signal(signal.SIGSTOP)  # the socket stays open; nothing comes
    try:
        s.wait_for("the watchdog", lambda c: any("watchdog" in e["message"]
                                                 for e in c.events("reconnecting")), timeout=30)
    finally:
        d.proc.send_signal(signal.SIGCONT)
    s.wait_for("the reconnect", lambda c: c.events("reconnected"))
    assert run_cli("--url", d.url, "pub", "rs.w", "after").returncode == 0
    s.wait_for("the second message", lambda c: len(c.events("message")) >= 2)
    s.stop()
    assert [(e["seq"], e["data"]) for e in s.events("message")] == [(1, "before"), (2, "after")]


def build_session_client(tmp_path):
    """tests/integration/session_client.c against the build's libringbus.a."""
    from conftest import BUILD, ROOT
    libs = subprocess.run(["pkg-config", "--libs", "wolfssl", "libngtcp2", "libngtcp2_crypto_gnutls",
                           "libnghttp3", "gnutls"], capture_output=True, text=True,
                          check=True).stdout.split()
    san = ["-fsanitize=address,undefined"] if "asan" in BUILD.name else []
    exe = tmp_path / "session_client"
    subprocess.run(["cc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Werror", *san,
                    f"-I{ROOT / 'client'}", str(ROOT / "tests/integration/session_client.c"),
                    str(BUILD / "libringbus.a"), "-lssl", "-lcrypto", *libs,
                    "-lpthread", "-o", str(exe)], check=True, timeout=120)
    return exe


def test_a_cursor_store_resumes_a_new_session_where_the_last_one_stopped(make_daemon, tmp_path):
    d = make_daemon(storage="postgres")
    exe = build_session_client(tmp_path)
    for i in range(1, 4):
        assert run_cli("--url", d.url, "pub", "rs.c", f"m{i}").returncode == 0
    store = tmp_path / "cursors"
    first = subprocess.run([str(exe), d.url, str(store), "rs.c", "3"], capture_output=True,
                           text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["1 m1", "2 m2", "3 m3"]
    assert store.read_text().split()[:2] == ["rs.c", "3"]
    assert "loads 1 saves 3 cursor 3" in first.stderr
    # A new process, a restarted daemon: the store's cursor, not 0, is used.
    d.kill9()
    d.start()
    for i in range(4, 6):
        assert run_cli("--url", d.url, "pub", "rs.c", f"m{i}").returncode == 0
    second = subprocess.run([str(exe), d.url, str(store), "rs.c", "2"], capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["4 m4", "5 m5"]
    assert store.read_text().split()[:2] == ["rs.c", "5"]


def test_session_keys_take_dedup_places_and_no_reconnect_sends_none(make_daemon):
    """Every publish of a reconnecting session carries a key, which holds a
    place in the topic's dedup table; --no-reconnect re-sends nothing, so it
    sends no key and is not limited by the table."""
    d = make_daemon(extra="[dedup]\nkeys_per_topic = 100\n")
    lines = "".join(f"k-{i}\n" for i in range(300))
    keyed = run_cli("--url", d.url, "pub", "rs.kk", input=lines, timeout=60)
    out = [json.loads(x) for x in keyed.stdout.splitlines()]
    assert keyed.returncode == 1
    assert sum(1 for e in out if "seq" in e) == 100
    assert {e["code"] for e in out if e.get("event") == "error"} == {"dedup_full"}
    plain = run_cli("--url", d.url, "--no-reconnect", "pub", "rs.kn", input=lines, timeout=60)
    assert plain.returncode == 0, plain.stderr
    assert [json.loads(x)["seq"] for x in plain.stdout.splitlines()] == list(range(1, 301))
