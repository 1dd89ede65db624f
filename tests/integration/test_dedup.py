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


# ---- Postgres: the window is in the database (docs/PROTOCOL.md §7.1) ----

def stored_keys(pg_db, topic):
    """(key, seq) of the topic's rows in idempotency_keys, by seq."""
    rows = pg_db.psql("SELECT convert_from(k.key, 'UTF8'), k.seq FROM idempotency_keys k "
                      f"JOIN topics t ON t.id = k.topic_id WHERE t.name = '{topic}' ORDER BY 2")
    return [(k, int(s)) for k, s in rows]


@pytest.mark.parametrize("storage", ["postgres"])
@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_on_postgres_the_window_survives_a_restart(make_daemon, pg_db, how):
    d = make_daemon()
    c = conn(d)
    assert acked(c, "dd.durable", "one", 1, "k-1")["seq"] == 1
    assert acked(c, "dd.durable", "two", 2, "k-2")["seq"] == 2
    assert stored_keys(pg_db, "dd.durable") == [("k-1", 1), ("k-2", 2)]
    c.sock.close()
    if how == "kill9":
        d.kill9()
    else:
        assert d.stop() == 0
    d.start()
    c = conn(d)
    # The restarted daemon knows nothing in memory: the database answers,
    # and again for a second retry (and one from another connection).
    for corr in (3, 4):
        again = acked(c, "dd.durable", f"one (retry {corr})", corr, "k-1")
        assert again["seq"] == 1 and again["duplicate"] is True
    again = acked(conn(d), "dd.durable", "two (retry)", 1, "k-2")
    assert again["seq"] == 2 and again["duplicate"] is True
    # A batch mixing a duplicate with new messages keeps their seqs dense
    # and their acks in publish order.
    for corr, (payload, key) in enumerate([("three", "k-3"), ("two (retry 2)", "k-2"),
                                           ("plain", b""), ("four", "k-4")], start=10):
        c.publish("dd.durable", payload, corr=corr, key=key, wait=False)
    got = [c.recv_until(lambda f: f.kind in (rp.PUBLISH_ACK, rp.ERROR), 60) for _ in range(4)]
    assert [(f.kind, f.corr, f["seq"], f["duplicate"]) for f in got] == [
        (rp.PUBLISH_ACK, 10, 3, False), (rp.PUBLISH_ACK, 11, 2, True),
        (rp.PUBLISH_ACK, 12, 4, False), (rp.PUBLISH_ACK, 13, 5, False)]
    assert history(d, "dd.durable") == [(1, "one"), (2, "two"), (3, "three"), (4, "plain"),
                                        (5, "four")]
    assert stored_keys(pg_db, "dd.durable") == [("k-1", 1), ("k-2", 2), ("k-3", 3), ("k-4", 5)]


@pytest.mark.parametrize("storage", ["postgres"])
def test_on_postgres_two_daemons_on_one_database_commit_a_key_once(make_daemon, pg_db):
    # Neither daemon's memory knows the other's keys: the unique key in the
    # append's transaction decides.
    ds = [make_daemon(shards=2), make_daemon(shards=2)]
    conns = [conn(d) for d in ds for _ in range(2)]
    rounds = 100
    for r in range(rounds):
        for i, c in enumerate(conns):
            c.publish("dd.nodes", f"r{r} via {i}", corr=r + 1, key=f"key-{r}", wait=False)
    answers = {r + 1: [] for r in range(rounds)}
    for c in conns:
        for _ in range(rounds):
            f = c.recv_until(lambda f: f.kind in (rp.PUBLISH_ACK, rp.ERROR), 60)
            assert f.kind == rp.PUBLISH_ACK, f.fields
            answers[f.corr].append((f["seq"], f["duplicate"]))
    for corr, got in answers.items():
        assert len(got) == len(conns), (corr, got)
        assert len({seq for seq, _ in got}) == 1, (corr, got)
        assert sum(1 for _, dup in got if not dup) == 1, (corr, got)
    stored = history(ds[0], "dd.nodes")
    assert [s for s, _ in stored] == list(range(1, rounds + 1))
    assert len(stored_keys(pg_db, "dd.nodes")) == rounds


@pytest.mark.parametrize("storage", ["postgres"])
def test_on_postgres_an_expired_key_is_vacant_and_pruned(make_daemon, pg_db):
    d = make_daemon(extra=f"[dedup]\nwindow_ms = {int(WINDOW_S * 1000)}\n")
    c = conn(d)
    assert acked(c, "dd.prune", "a", 1, "gone")["seq"] == 1
    assert acked(c, "dd.prune", "b", 2, "renewed")["seq"] == 2
    committed = time.monotonic()
    assert stored_keys(pg_db, "dd.prune") == [("gone", 1), ("renewed", 2)]
    wait_past_window(committed)
    # Past the window a retry is a new message, whether or not the pruner
    # has deleted the row yet; the key's window starts again.
    late = acked(c, "dd.prune", "b again", 3, "renewed")
    assert late["seq"] == 3 and late["duplicate"] is False
    assert acked(c, "dd.prune", "b again 2", 4, "renewed")["duplicate"] is True
    deadline = time.monotonic() + 30
    while stored_keys(pg_db, "dd.prune") != [("renewed", 3)]:
        assert time.monotonic() < deadline, stored_keys(pg_db, "dd.prune")
        time.sleep(0.1)
    assert history(d, "dd.prune") == [(1, "a"), (2, "b"), (3, "b again")]
