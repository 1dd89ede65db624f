"""The lame-duck drain (issue 14; docs/PROTOCOL.md §6.4 "Server shutdown"):
on SIGTERM every client gets GOING_AWAY with a jittered reconnect hint; an
idle one is closed at once, a busy one keeps being answered until it has
nothing in flight or shutdown_grace_ms is over, then gets CLOSE going_away.
Nothing acknowledged is lost, and the daemon exits 0 in time. Raw protocol
clients (one that never leaves) and the CLI's resilient sessions (which
leave by themselves) on a real Postgres."""

import signal
import time

import rbproto as rp
from conftest import run_cli
from test_resilient import WAIT_S, Cli, Feeder, check_exactly_once, history, wait_caught_up

GRACE_MS = 3000
HINT_MS = 400


def busy_pair(d):
    """Two connections, each waiting on a call to the other that is acked
    but never answered: neither has nothing in flight, so the drain must
    wait for its grace. Returns them with their client ids."""
    conns = []
    for _ in range(2):
        c = rp.Conn("127.0.0.1", d.port, timeout=10)
        started = c.hello()
        assert started.kind == rp.STARTED
        c.send(rp.encode_register(2, "hang"))
        assert c.recv_until(lambda f: f.kind == rp.REGISTER).corr == 2
        conns.append((c, started["client_id"]))
    for (c, _), (_, peer) in zip(conns, reversed(conns)):
        c.send(rp.encode_request(3, peer, "hang", b"", timeout_ms=60000))
    for c, _ in conns:
        req = c.recv_until(lambda f: f.kind == rp.REQUEST)
        c.send(rp.encode_request_ack(req.corr))
    return [c for c, _ in conns]


def test_a_busy_client_is_answered_until_the_grace_ends_and_nothing_acked_is_lost(make_daemon):
    d = make_daemon(storage="postgres", extra=f"[timeouts]\nshutdown_grace_ms = {GRACE_MS}\n"
                                              f"reconnect_hint_ms = {HINT_MS}\n")
    idle = rp.Conn("127.0.0.1", d.port, timeout=10)
    assert idle.hello().kind == rp.STARTED
    idle.mutate(2, 1, adds=[("dr.idle", 0)])
    idle.recv_until(lambda f: f.kind == rp.CATCHUP_COMPLETE)
    busy, other = busy_pair(d)
    sent, acked = {}, {}
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)

    # The idle client: GOING_AWAY with a hint in [0, HINT_MS], then closed.
    f = idle.recv(timeout=5)
    assert f.kind == rp.GOING_AWAY_FRAME, f
    assert 0 <= f["reconnect_delay_ms"] <= HINT_MS
    assert idle.recv(timeout=5)["status_name"] == "going_away"
    assert time.monotonic() - t0 < 2, "an idle client waited for the grace"

    # The busy client does not leave: it keeps publishing, and is answered
    # until the grace is over.
    busy.recv_until(lambda f: f.kind == rp.GOING_AWAY_FRAME, timeout=5)
    corr = 100
    while time.monotonic() - t0 < GRACE_MS / 1000 - 1:
        corr += 1
        sent[corr] = f"during-{corr}"
        f = busy.publish("dr.busy", sent[corr], corr, timeout=5)
        assert f.kind == rp.PUBLISH_ACK, f
        acked[corr] = f["seq"]
        time.sleep(0.05)
    close = busy.recv_until(lambda f: f.kind == rp.CLOSE, timeout=GRACE_MS / 1000 + 3)
    assert close["status_name"] == "going_away"
    assert "grace" in close["message"], close
    closed_after = time.monotonic() - t0
    assert GRACE_MS / 1000 - 0.5 <= closed_after <= GRACE_MS / 1000 + 2, closed_after
    f = other.recv_until(lambda f: f.kind == rp.CLOSE, timeout=5)
    assert any(x.kind == rp.GOING_AWAY_FRAME for x in other.skipped)
    assert d.stop() == 0
    assert time.monotonic() - t0 < GRACE_MS / 1000 + 4
    assert "still busy after shutdown_grace_ms" in d.log()
    assert len(acked) >= 10

    d.start()
    stored = dict(history(d.url, "dr.busy"))
    for c, seq in acked.items():
        assert stored.get(seq) == sent[c], f"acknowledged publish {c} (seq {seq}) is not stored"


def test_sessions_leave_a_draining_node_by_themselves_and_lose_nothing(make_daemon):
    # Every publish of a session carries a key: the unpaced publisher needs
    # more keys than the default 65 536 per topic in the 2 min window.
    d = make_daemon(storage="postgres", extra=f"[timeouts]\nreconnect_hint_ms = {HINT_MS}\n"
                                              "[dedup]\nkeys_per_topic = 262144\n")
    sub = Cli("--url", d.url, "--timeout", str(WAIT_S), "sub", "dr.s@0")
    sub.wait_for("the wave", lambda c: c.events("catchup_complete"))
    # s0 always has publishes in flight: only its session stopping sending
    # lets the drain close it before the 10 s grace.
    feeders = [Feeder([d.url], "dr.s", "s0", rate=None), Feeder([d.url], "dr.s", "s1")]
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        # The default shutdown_grace_ms is 10 s: the clients leave long before.
        assert d.stop(signal.SIGTERM) == 0
        assert time.monotonic() - t0 < 5, "the sessions did not leave the draining node"
        for c in [sub] + [f.cli for f in feeders]:
            c.wait_for("going_away", lambda c: c.events("reconnecting"))
            first = c.events("reconnecting")[0]
            assert first["code"] == "going_away", first
            assert first["delay_ms"] <= 2 * HINT_MS
        d.start()
        for c in [sub] + [f.cli for f in feeders]:
            c.wait_for("the reconnect", lambda c: c.events("reconnected"))
        time.sleep(0.5)
    finally:
        rcs = [f.stop() for f in feeders]
    assert rcs == [0, 0], [(f.cli.err, [e for e in f.cli.lines if "event" in e][:5]) for f in feeders]
    wait_caught_up([sub], d.url, ["dr.s"])
    sub.stop()
    check_exactly_once(feeders, [sub], d.url)
