"""Hot reload (issue 14; docs/OPERATIONS.md "Reload"): SIGHUP and
`ringbusd --reload` read the config file again. The log level, the
timeouts, limits that may change live and the listeners apply without a
restart, observed in behaviour (a debug line appears, a Mutate is refused
at the new bound, STARTED carries the new keepalive, a port stops or starts
accepting); settings that need a restart are logged by name and keep their
value; a bad file is logged as file:line:column and the running config
keeps serving. Live tcp connections and subscription streams carry on
through every reload with no gap and no duplicate (streamcheck)."""

import os
import random
import re
import signal
import socket
import subprocess
import time

import rbproto as rp
import streamcheck as sc
from conftest import RINGBUSD
from ports import free_port

SEED = int(os.environ.get("RB_TEST_SEED", "1414"))
TOPICS = [f"rl.{i}" for i in range(4)]


def config(port_lines, log_level="info", topics=8, keepalive=30000, extra=""):
    listeners = "".join(
        f'[[listener]]\ntransport = "{t}"\naddress = "127.0.0.1"\nport = {p}\n'
        for t, p in port_lines)
    return (f'shards = 2\nlog_level = "{log_level}"\n{extra}\n'
            f"[limits]\ntopics_per_stream = {topics}\n"
            f"[timeouts]\nkeepalive_ms = {keepalive}\nshutdown_grace_ms = 1500\n\n{listeners}")


def reload(d, text=None, how="signal"):
    """Writes text (if any) and reloads; returns the log added by it (up to
    its last line: applied, or the error that kept the running config)."""
    if text is not None:
        d.config_path.write_text(text)
    before = len(d.log())
    if how == "signal":
        d.proc.send_signal(signal.SIGHUP)
    else:
        out = subprocess.run([str(RINGBUSD), "--reload", "--pid", str(d.proc.pid)],
                             capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        added = d.log()[before:]
        if "applied (" in added or "keeping the running configuration" in added:
            return added
        time.sleep(0.02)
    raise AssertionError(f"no reload outcome in the log:\n{d.log()[before:]}")


class Traffic:
    """Publishers and subscribers (tcp, streamcheck) that run across the
    reloads: every subscriber holds every topic from seq 0."""

    def __init__(self, port, rng):
        self.rng = rng
        self.drv = sc.Driver()
        self.pubs = [sc.Publisher(self.drv, port, f"pub{i}") for i in range(2)]
        self.subs = [sc.Subscriber(self.drv, port, f"sub{i}") for i in range(2)]
        self.drv.run_until(lambda: all(p.started for p in self.pubs) and
                           all(s.epoch is not None for s in self.subs), 10, "STARTED")
        for s in self.subs:
            s.mutate(adds=[(t, 0) for t in TOPICS])
        self.drv.run_until(lambda: all(1 in s.completed for s in self.subs), 10, "catch-up")

    def pump(self, rounds=5):
        for _ in range(rounds):
            for p in self.pubs:
                for _ in range(self.rng.randint(1, 6)):
                    p.publish(self.rng.choice(TOPICS), f"m{self.rng.random()}")
            self.drv.step(0.01)

    def check(self):
        """Every ack dense per topic, every subscriber at every head with no
        gap, duplicate or error, and no connection closed."""
        self.drv.run_until(lambda: all(not p.inflight for p in self.pubs), 20, "acks")
        heads = {t: max((x for p in self.pubs for x in p.acks.get(t, [])), default=0)
                 for t in TOPICS}
        for t in TOPICS:
            acked = sorted(x for p in self.pubs for x in p.acks.get(t, []))
            assert acked == list(range(1, heads[t] + 1)), f"acks of {t} are not dense"
        for s in self.subs:
            self.drv.run_until(lambda: all(s.expect[t] == heads[t] + 1 for t in TOPICS), 20,
                               f"{s.name} at the heads {heads}: {s.expect}")
            assert s.problems == [] and s.errors == [], (s.problems, s.errors)
        for c in self.pubs + self.subs:
            assert not c.closed and c.close_frame is None, c.name
        assert sum(heads.values()) > 0
        # Closed here, so the daemon's stop need not wait out the close grace.
        for c in self.pubs + self.subs:
            c.close()


def hello(port, name):
    c = rp.Conn("127.0.0.1", port, timeout=5)
    f = c.hello(name=name)
    assert f.kind == rp.STARTED, f
    return c, f


def mutate_of(c, n, mid=1):
    """A Mutate adding n fresh topics; returns the first answer that is an
    ERROR or CATCHUP_COMPLETE."""
    c.mutate(mid, mid, adds=[(f"x{mid}.{i}", "now") for i in range(n)])
    return c.recv_until(lambda f: f.kind in (rp.ERROR, rp.CATCHUP_COMPLETE))


def test_log_level_limit_and_keepalive_apply_live_while_streams_flow(make_daemon):
    print(f"seed {SEED}")
    d = make_daemon(extra="[limits]\ntopics_per_stream = 8\n")
    d.config_path.write_text(config([("tcp", d.port)]))
    out = reload(d)
    assert "applied" in out, out
    traffic = Traffic(d.port, random.Random(SEED))
    traffic.pump()

    c, _ = hello(d.port, "before-debug")
    assert mutate_of(c, 6).kind == rp.CATCHUP_COMPLETE  # under topics_per_stream 8
    c.close()
    assert "HELLO from before-debug" not in d.log()

    out = reload(d, config([("tcp", d.port)], log_level="debug", topics=5, keepalive=7000))
    for line in ('log_level changed: "info" -> "debug"', "limits.topics_per_stream changed: 8 -> 5",
                 "timeouts.keepalive_ms changed: 30000 -> 7000"):
        assert f"reload: {line}" in out, out
    traffic.pump()

    c, started = hello(d.port, "after-debug")
    assert started["keepalive_ms"] == 7000
    refused = mutate_of(c, 6)
    assert refused.kind == rp.ERROR and refused["code_name"] == "resource_exhausted", refused
    assert "at most 5 topics" in refused["message"]
    assert mutate_of(c, 5, mid=2).kind == rp.CATCHUP_COMPLETE
    c.close()
    deadline = time.monotonic() + 5
    while "HELLO from after-debug" not in d.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "HELLO from after-debug" in d.log()

    # Above its start value topics_per_stream would outgrow the tables.
    out = reload(d, config([("tcp", d.port)], topics=50, extra="pin_shards = true"))
    assert "limits.topics_per_stream 50 is above its start value 8; restart to apply" in out, out
    assert "reload: pin_shards changed; restart to apply" in out, out
    traffic.pump()
    c, started = hello(d.port, "third")
    assert started["keepalive_ms"] == 30000
    assert "at most 5 topics" in mutate_of(c, 6)["message"]
    c.close()
    traffic.pump()
    traffic.check()


def test_varz_shows_the_reloaded_configuration(make_daemon):
    """GET /v1/varz describes what the daemon runs now: after a reload, the
    new keepalive and the listener it added."""
    import json
    import urllib.request
    http, extra_tcp = free_port(), free_port()
    d = make_daemon()
    d.config_path.write_text(config([("tcp", d.port), ("http", http)]))
    reload(d)

    def varz():
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v1/varz", timeout=5) as r:
            return json.loads(r.read())
    assert varz()["timeouts_ms"]["keepalive"] == 30000
    reload(d, config([("tcp", d.port), ("http", http), ("tcp", extra_tcp)], keepalive=7000))
    v = varz()
    assert v["timeouts_ms"]["keepalive"] == 7000, v
    assert {"transport": "tcp", "address": "127.0.0.1", "port": extra_tcp} in v["listeners"], v


def test_log_format_applies_live(make_daemon):
    """log_format switches at a reload: the lines after it are JSON, the
    ones before stay text, and a switch back gives text again."""
    import json
    d = make_daemon()
    base = config([("tcp", d.port)])
    d.config_path.write_text(base)
    reload(d)
    out = reload(d, base.replace('log_level = "info"', 'log_level = "info"\nlog_format = "json"'))
    assert 'reload: log_format changed: "text" -> "json"' in out, out
    c, _ = hello(d.port, "json-era")
    c.close()
    mark = len(d.log())
    out = reload(d, base)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    objs = [json.loads(ln) for ln in lines if ln.startswith("{")]
    # The reload back to text is announced while json is still on, and
    # is the last JSON line; what follows it is text again.
    assert any('log_format changed: "json" -> "text"' in o["msg"] for o in objs), lines
    assert lines[-1].startswith("ringbusd ") and "applied (" in lines[-1], lines[-1]
    assert mark > 0


def test_topic_classes_need_a_restart_and_keep_their_rules(make_daemon):
    """A changed [[topic_class]] is logged as restart-only and the running
    classes stay: a topic of the ephemeral class is still not stored."""
    eph = '[[topic_class]]\npattern = "eph.>"\nstorage = "none"\n'
    d = make_daemon(extra=eph)
    out = reload(d, config([("tcp", d.port)], extra=eph))
    assert "topic_class changed" not in out, out
    out = reload(d, config([("tcp", d.port)], extra=eph.replace('"eph.>"', '"other.>"')))
    assert "reload: topic_class changed; restart to apply" in out, out
    out = reload(d, config([("tcp", d.port)], extra="\n\n" + eph))
    assert "topic_class changed" not in out, out
    c, _ = hello(d.port, "eph")
    c.mutate(2, 1, adds=[("eph.a", 0)], history_only=True)
    f = c.recv_until(lambda f: f.kind == rp.CATCHUP_COMPLETE)
    assert f.kind == rp.CATCHUP_COMPLETE
    ack = c.publish("eph.a", "x", 3, wait=True)
    assert ack.kind == rp.PUBLISH_ACK, ack
    # Still ephemeral: a history-only read of it from 0 holds nothing.
    c.mutate(4, 2, adds=[("eph.a", 0)], history_only=True)
    frames = c.recv_all_until(lambda f: f.kind == rp.CATCHUP_COMPLETE)
    assert not [f for f in frames if f.kind == rp.MESSAGES], frames
    c.close()


def test_listeners_are_added_and_removed_and_their_connections_go_on(make_daemon):
    print(f"seed {SEED}")
    d = make_daemon()
    p1, p2 = d.port, free_port()
    d.config_path.write_text(config([("tcp", p1)]))
    reload(d)
    traffic = Traffic(p1, random.Random(SEED + 1))
    traffic.pump()

    p3 = free_port()
    out = reload(d, config([("tcp", p1), ("tcp", p2), ("http", p3)]), how="cli")
    assert f"reload: listening on tcp://127.0.0.1:{p2}" in out, out
    assert f"reload: listening on http://127.0.0.1:{p3}" in out, out
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{p3}/healthz", timeout=5) as r:
        assert r.status == 200
    for i in range(8):  # the acceptor hands them to both shards
        c, _ = hello(p2, f"new{i}")
        assert c.publish("side", "via p2", 10 + i).kind == rp.PUBLISH_ACK
        c.close()
    traffic.pump()

    out = reload(d, config([("tcp", p2)]))
    assert "2 removed" in out, out
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", p1), timeout=1).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, f"{p1} still accepts after its removal"
        time.sleep(0.05)
    # The streams accepted on p1 go on.
    traffic.pump(10)

    out = reload(d, config([("tcp", p2), ("tcp", p1)]))
    assert f"reload: listening on tcp://127.0.0.1:{p1}" in out, out
    c, _ = hello(p1, "back")
    c.close()
    traffic.pump()
    # A publisher through p2 takes part in the check.
    extra = sc.Publisher(traffic.drv, p2, "pub-p2")
    traffic.drv.run_until(lambda: extra.started, 5, "STARTED")
    traffic.pubs.append(extra)
    for t in TOPICS:
        extra.publish(t, "tail")
    traffic.check()


def test_a_bad_file_is_logged_with_its_position_and_the_running_config_serves(make_daemon):
    d = make_daemon(extra="[limits]\ntopics_per_stream = 4\n")
    d.config_path.write_text(config([("tcp", d.port)], topics=4))
    reload(d)
    traffic = Traffic(d.port, random.Random(SEED + 2))
    good = config([("tcp", d.port)], topics=4)
    lines = good.splitlines()
    at = next(i for i, l in enumerate(lines) if l.startswith("topics_per_stream"))
    lines[at] = "topics_per_stream = 0"
    out = reload(d, "\n".join(lines) + "\n")
    name = re.escape(str(d.config_path))
    assert re.search(rf"reload: {name}:{at + 1}:\d+: .*topics_per_stream.*"
                     r"keeping the running configuration", out), out
    lines[at] = 'topics_per_stream = "many'
    out = reload(d, "\n".join(lines) + "\n")
    assert re.search(rf"reload: {name}:{at + 1}:\d+: ", out), out
    traffic.pump()
    c, _ = hello(d.port, "still")
    assert "at most 4 topics" in mutate_of(c, 5)["message"]
    assert mutate_of(c, 4, mid=2).kind == rp.CATCHUP_COMPLETE
    c.close()
    # Settings that need a restart are named and keep their value.
    out = reload(d, good.replace("shards = 2", "shards = 3") +
                 '[storage.memory]\nretention_messages = 7\n')
    assert "reload: shards changed; restart to apply" in out, out
    assert "reload: storage.memory.retention_messages changed; restart to apply" in out, out
    traffic.pump()
    traffic.check()


def test_ringbusd_reload_names_the_daemon_by_pid_pid_file_or_mainpid(make_daemon, tmp_path):
    pid_file = tmp_path / "ringbusd.pid"
    # The daemon writes its own pid file (wrap appends the option).
    d = make_daemon(wrap=["sh", "-c", f'exec "$0" "$@" --pid-file {pid_file}'])
    assert pid_file.read_text().strip() == str(d.proc.pid)

    def run(*args, env=None):
        e = {k: v for k, v in os.environ.items() if k != "MAINPID"}
        e.update(env or {})
        return subprocess.run([str(RINGBUSD), "--reload", *args], capture_output=True,
                              text=True, timeout=10, env=e)

    for args, env in (((("--pid-file", str(pid_file))), None),
                      ((), {"MAINPID": str(d.proc.pid)})):
        before = d.log().count("SIGHUP received")
        out = run(*args, env=env)
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 5
        while d.log().count("SIGHUP received") == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert d.log().count("SIGHUP received") == before + 1
    out = run()
    assert out.returncode == 2 and "which daemon?" in out.stderr
    out = run("--pid", str(os.getpid()))
    assert out.returncode == 1 and "is not ringbusd" in out.stderr
    out = run("--pid", "12x")
    assert out.returncode == 1 and "not a process id" in out.stderr
    assert d.stop() == 0
    assert not pid_file.exists()


def test_sd_notify_reloading_ready_and_drain_status(make_daemon, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    d = make_daemon(env={"NOTIFY_SOCKET": path},
                    extra="[timeouts]\nshutdown_grace_ms = 800\nclose_grace_ms = 200\n")

    def until(pred):
        seen = []
        while True:
            msg = sock.recv(4096).decode()
            seen.append(msg)
            if pred(msg):
                return seen

    until(lambda m: "READY=1" in m)
    d.proc.send_signal(signal.SIGHUP)
    seen = until(lambda m: "READY=1" in m)
    assert "RELOADING=1" in seen[0] and "MONOTONIC_USEC=" in seen[0], seen
    # A client with a call in flight keeps the drain waiting its grace.
    from test_drain import busy_pair
    conns = busy_pair(d)
    d.proc.send_signal(signal.SIGTERM)
    seen = until(lambda m: "connections left" in m)
    assert any("STOPPING=1" in m for m in seen), seen
    assert re.search(r"STATUS=draining: [12] connections left", seen[-1]), seen
    assert d.stop() == 0
    for c in conns:
        c.close()
    sock.close()


def auth_section(hash_, users):
    """auth.mode required with [[auth.user]] entries: (name, subscribe)."""
    text = '[auth]\nmode = "required"\nfailure_delay_ms = 50\nworkers = 1\n'
    for name, subscribe in users:
        text += (f'[[auth.user]]\nname = "{name}"\npassword_hash = "{hash_}"\n'
                 f'publish = [">"]\nsubscribe = {subscribe}\n')
    return text


def users_config(port, hash_, users):
    return (f'shards = 2\nlog_level = "debug"\n{auth_section(hash_, users)}'
            f'[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\nport = {port}\n')


def test_users_and_permissions_reload_removed_user_closed_and_topics_revoked(make_daemon):
    from test_permissions import hash_password
    hash_ = hash_password("pw")
    # The start config has password users, so the auth workers run.
    d = make_daemon(extra=auth_section(hash_, [("alice", '["a.>", "b.>"]'), ("bob", '[">"]')]))

    def sign_in(user):
        c = rp.Conn("127.0.0.1", d.port, timeout=15)
        f = c.hello(name=user, creds=rp.creds_password(user, "pw"), timeout=15)
        return c, f

    alice, f = sign_in("alice")
    assert f.kind == rp.STARTED, f
    alice.mutate(1, 1, adds=[("a.1", 0), ("b.1", 0)])
    alice.recv_until(lambda f: f.kind == rp.CATCHUP_COMPLETE)
    bob, f = sign_in("bob")
    assert f.kind == rp.STARTED, f
    assert alice.publish("a.1", "before", 2).kind == rp.PUBLISH_ACK

    out = reload(d, users_config(d.port, hash_, [("alice", '["a.>"]'), ("carol", '[">"]')]))
    assert "reload: auth.user changed" in out, out
    err = alice.recv_until(lambda f: f.kind == rp.TOPIC_ERROR)
    assert (err["topic"], err["code_name"], err["mutate_id"]) == ("b.1", "forbidden", 0), err
    # The stream goes on with a.1, and b.1 is not delivered any more.
    assert alice.publish("b.1", "gone", 3).kind == rp.PUBLISH_ACK
    assert alice.publish("a.1", "after", 4).kind == rp.PUBLISH_ACK
    msgs = alice.recv_until(lambda f: f.kind == rp.MESSAGES and
                            any(p == b"after" for _, _, p in f["items"]))
    seen = [(t, s) for m in alice.skipped + [msgs] if m.kind == rp.MESSAGES
            for t, s, _ in m["items"]]
    assert ("b.1", 1) not in seen and ("a.1", 2) in seen, seen
    close = bob.recv_until(lambda f: f.kind == rp.CLOSE)
    assert close["status_name"] == "unauthorized" and "bob was removed" in close["message"]
    assert bob.closed_within(5)
    refused, f = sign_in("bob")
    assert f.kind == rp.ERROR and f["code_name"] == "unauthorized", f
    refused.close()
    carol, f = sign_in("carol")
    assert f.kind == rp.STARTED, f
    for c in (alice, carol):
        c.close()


def test_a_jwt_secret_replaced_in_place_is_read_again(make_daemon, tmp_path):
    from test_permissions import token
    old, new = "first-secret-of-this-test-0123456789", "second-secret-of-this-test-0123456789"
    secret = tmp_path / "jwt.secret"
    secret.write_text(old + "\n")
    d = make_daemon(extra=f'[auth]\nmode = "required"\nfailure_delay_ms = 50\n'
                          f'[[auth.jwt_key]]\nalgorithm = "HS256"\nsecret_file = "{secret}"\n')

    def sign_in(key):
        c = rp.Conn("127.0.0.1", d.port, timeout=5)
        return c, c.hello(creds=rp.creds_token(token(key=key, subscribe=[">"], publish=[">"])))

    before, f = sign_in(old)
    assert f.kind == rp.STARTED, f
    secret.write_text(new + "\n")
    out = reload(d)
    assert "reading the 1 auth.jwt_key files again" in out, out
    c, f = sign_in(old)
    assert f.kind == rp.ERROR and f["code_name"] == "unauthorized", f
    c.close()
    c, f = sign_in(new)
    assert f.kind == rp.STARTED, f
    c.close()
    # A connection signed in before keeps its token's permissions.
    assert before.publish("t.1", "still", 2).kind == rp.PUBLISH_ACK
    before.close()


def test_a_tls_listener_given_new_certificate_paths_serves_them(make_daemon, tmp_path):
    import ssl
    import rbtransport as rt
    from test_tls import hello_over
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old, new = rt.Certs(tmp_path / "old"), rt.Certs(tmp_path / "new")
    port = free_port()
    d = make_daemon(listeners=rt.listener("tls", port, old))
    before = rt.Conn("tls", port, old)
    assert before.hello().kind == rp.STARTED
    out = reload(d, d.config_text.replace(str(old.cert), str(new.cert))
                 .replace(str(old.key), str(new.key)))
    assert f"now serves {new.cert}" in out and "restart to apply" not in out, out
    assert isinstance(hello_over(port, old), ssl.SSLCertVerificationError)
    assert hello_over(port, new).kind == rp.STARTED
    assert before.publish("tls.1", "still here", 7)["seq"] == 1
    # Paths that do not load keep the running certificate and its paths.
    out = reload(d, d.config_text.replace(str(old.cert), str(tmp_path / "missing.pem"))
                 .replace(str(old.key), str(new.key)))
    assert "keeping the previous certificate" in out, out
    assert hello_over(port, new).kind == rp.STARTED
    out = reload(d, d.config_text.replace(str(old.cert), str(new.cert))
                 .replace(str(old.key), str(new.key)))
    assert f"now serves {new.cert}" in out, out
    before.close()
