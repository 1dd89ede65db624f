"""Idempotent publish (issue 15, docs/PROTOCOL.md "Idempotent publish"): a
PUBLISH with an idempotency key is applied at most once per (topic, key)
within [dedup] window_ms; a retry gets the original seq with the duplicate
flag in PUBLISH_ACK. Every test runs on the memory store and on Postgres;
what is stored is read back with a history-only add."""

import time

import pytest

import rbproto as rp

# Windows long enough that the few round trips a test makes inside one
# cannot outlast it on a loaded machine (under ASan); the tests that need a
# window to pass sleep for it, measured from the last commit they depend on.
WINDOW_S = 3.0


def wait_past_window(committed_at):
    """Sleeps until WINDOW_S (plus a margin) after committed_at: the server
    committed before the client saw the ack, so its window is over too."""
    time.sleep(max(0.0, committed_at + WINDOW_S + 0.5 - time.monotonic()))


@pytest.fixture(params=["memory", "postgres"])
def storage(request):
    return request.param


def conn(d, timeout=60):
    c = rp.Conn("127.0.0.1", d.port, timeout=timeout)
    assert c.hello().kind == rp.STARTED
    return c


def acked(c, topic, payload, corr, key):
    f = c.publish(topic, payload, corr=corr, key=key)
    assert f.kind == rp.PUBLISH_ACK, f.fields
    return f


def history(d, topic):
    """Every (seq, payload) stored in topic, oldest first."""
    c = conn(d)
    c.mutate(1, 1, adds=[(topic, 0)], history_only=True)
    frames = c.recv_all_until(lambda f: f.kind == rp.CATCHUP_COMPLETE, 20)
    c.sock.close()
    assert not [f for f in frames if f.kind in (rp.ERROR, rp.TOPIC_ERROR)]
    return [(s, bytes(p).decode()) for f in frames if f.kind == rp.MESSAGES
            for (_, s, p) in f["items"]]


def test_a_retry_inside_the_window_gets_the_original_seq_as_a_duplicate(make_daemon):
    d = make_daemon()
    c = conn(d)
    first = acked(c, "dd.orders", "one", 1, "k-1")
    assert first["duplicate"] is False and first["flags"] == 0
    other = acked(c, "dd.orders", "two", 2, "k-2")
    assert other["seq"] == first["seq"] + 1
    again = acked(c, "dd.orders", "one (retry)", 3, "k-1")
    assert again["seq"] == first["seq"] and again["duplicate"] is True
    # A retry from another connection is a duplicate too.
    again = acked(conn(d), "dd.orders", "one (retry 2)", 1, "k-1")
    assert again["seq"] == first["seq"] and again["duplicate"] is True
    # Publishes without a key are never deduplicated.
    plain = [acked(c, "dd.orders", "plain", 10 + i, b"")["seq"] for i in range(2)]
    assert plain == [first["seq"] + 2, first["seq"] + 3]
    assert history(d, "dd.orders") == [(1, "one"), (2, "two"), (3, "plain"), (4, "plain")]


def test_a_retry_after_the_window_is_a_new_message(make_daemon):
    d = make_daemon(extra=f"[dedup]\nwindow_ms = {int(WINDOW_S * 1000)}\n")
    c = conn(d)
    first = acked(c, "dd.late", "a", 1, "k")
    committed = time.monotonic()
    assert acked(c, "dd.late", "a", 2, "k")["duplicate"] is True
    wait_past_window(committed)
    late = acked(c, "dd.late", "a again", 3, "k")
    assert late["duplicate"] is False and late["seq"] == first["seq"] + 1
    # The new commit starts a new window for the key.
    assert acked(c, "dd.late", "x", 4, "k")["seq"] == late["seq"]
    assert history(d, "dd.late") == [(1, "a"), (2, "a again")]


def test_a_key_reused_on_another_topic_is_independent(make_daemon):
    d = make_daemon()
    c = conn(d)
    a = acked(c, "dd.a", "a", 1, "same")
    b = acked(c, "dd.b", "b", 2, "same")
    assert a["duplicate"] is False and b["duplicate"] is False
    assert (a["seq"], b["seq"]) == (1, 1)
    assert acked(c, "dd.b", "b", 3, "same")["duplicate"] is True
    assert history(d, "dd.a") == [(1, "a")] and history(d, "dd.b") == [(1, "b")]


def test_a_full_topic_table_refuses_new_keys_with_dedup_full(make_daemon):
    d = make_daemon(extra=f"[dedup]\nwindow_ms = {int(WINDOW_S * 1000)}\nkeys_per_topic = 2\n")
    c = conn(d)
    acked(c, "dd.full", "1", 1, "k1")
    acked(c, "dd.full", "2", 2, "k2")
    committed = time.monotonic()
    f = c.publish("dd.full", "3", corr=3, key="k3")
    assert f.kind == rp.ERROR and f["code"] == rp.DEDUP_FULL, f.fields
    assert "idempotency keys" in f["message"] and "topic" in f["message"]
    # Known keys still answer, other topics and keyless publishes still work,
    # and the connection stays open.
    assert acked(c, "dd.full", "1", 4, "k1")["duplicate"] is True
    assert acked(c, "dd.other", "x", 5, "k3")["duplicate"] is False
    assert acked(c, "dd.full", "plain", 6, b"")["seq"] == 3
    # Once the window passes the old keys are vacant and new keys fit again.
    wait_past_window(committed)
    assert acked(c, "dd.full", "3", 7, "k3")["duplicate"] is False
    assert history(d, "dd.full") == [(1, "1"), (2, "2"), (3, "plain"), (4, "3")]


def test_a_full_shard_table_refuses_new_keys_with_dedup_full(make_daemon):
    d = make_daemon(shards=1, extra="[dedup]\nkeys_per_shard = 3\n")
    c = conn(d)
    for i, t in enumerate(["dd.s1", "dd.s2", "dd.s3"]):
        acked(c, t, "x", i + 1, "k")
    f = c.publish("dd.s4", "x", corr=9, key="k")
    assert f.kind == rp.ERROR and f["code"] == rp.DEDUP_FULL, f.fields
    assert "owner shard" in f["message"]
    assert acked(c, "dd.s2", "x", 10, "k")["duplicate"] is True
    assert history(d, "dd.s4") == []


def test_concurrent_retries_of_one_key_from_two_connections_commit_once(make_daemon):
    d = make_daemon(shards=2)
    conns = [conn(d) for _ in range(4)]
    rounds = 200
    # Round r: every connection sends key-r at once (the frames of a round
    # go out back to back, before any ack is read); exactly one is stored.
    for r in range(rounds):
        for i, c in enumerate(conns):
            c.publish("dd.race", f"r{r} from {i}", corr=r + 1, key=f"key-{r}", wait=False)
    answers = {r + 1: [] for r in range(rounds)}
    for c in conns:
        for _ in range(rounds):
            f = c.recv_until(lambda f: f.kind in (rp.PUBLISH_ACK, rp.ERROR), 30)
            assert f.kind == rp.PUBLISH_ACK, f.fields
            answers[f.corr].append((f["seq"], f["duplicate"]))
    for corr, got in answers.items():
        assert len(got) == len(conns), (corr, got)
        assert len({seq for seq, _ in got}) == 1, (corr, got)
        assert sum(1 for _, dup in got if not dup) == 1, (corr, got)
    stored = history(d, "dd.race")
    assert [s for s, _ in stored] == list(range(1, rounds + 1))
    for r, (_, payload) in enumerate(stored):
        assert payload.startswith(f"r{r} from ")
