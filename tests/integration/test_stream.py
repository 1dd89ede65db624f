"""Publishing and the mutable subscription stream against the real daemon
on the memory store and on Postgres: the contract of DESIGN §1 (G1 order,
G3 gapless handover, G4 explicit lag, G6 bad input) and the Mutate
semantics of §3."""

import os
import random
import time

import pytest

import rbproto as rp
from conftest import RSS_BOUNDS_APPLY
from streamcheck import Driver, Publisher, Subscriber, run_random_streams


@pytest.fixture(params=["memory", "postgres"])
def storage(request):
    """Every test of this module runs on the memory store and on Postgres
    (make_daemon and daemon use this backend)."""
    return request.param


def conn(d):
    c = rp.Conn("127.0.0.1", d.port, timeout=10)
    assert c.hello().kind == rp.STARTED
    return c


def publish_n(c, topic, n, start_corr=1000, payload=lambda i: f"m{i}"):
    for i in range(n):
        c.send(rp.encode_publish(start_corr + i, topic, payload(i)))
    seqs = []
    for i in range(n):
        f = c.recv_until(lambda f: f.kind in (rp.PUBLISH_ACK, rp.ERROR))
        assert f.kind == rp.PUBLISH_ACK, f.fields
        assert f.corr == start_corr + i
        seqs.append(f["seq"])
    return seqs


def collect_until_complete(c, mutate_id, timeout=10):
    frames = c.recv_all_until(
        lambda f: f.kind == rp.CATCHUP_COMPLETE and f["mutate_id"] == mutate_id, timeout)
    msgs = [(t, s, p) for f in frames if f.kind == rp.MESSAGES for (t, s, p) in f["items"]]
    return frames, msgs


# ---- publishing ----

def test_pipelined_publishes_get_dense_seqs_in_order(daemon):
    c = conn(daemon)
    assert publish_n(c, "orders", 2000) == list(range(1, 2001))
    assert publish_n(c, "orders", 5, start_corr=9000) == [2001, 2002, 2003, 2004, 2005]
    assert publish_n(c, "other", 3, start_corr=9100) == [1, 2, 3]


def test_publishes_from_many_connections_stay_dense(daemon):
    d = Driver()
    pubs = [Publisher(d, daemon.port, f"p{i}") for i in range(6)]
    d.run_until(lambda: all(p.started for p in pubs), 5, "STARTED")
    for round_ in range(200):
        for i, p in enumerate(pubs):
            p.publish(f"t{(round_ + i) % 3}", f"{i}:{round_}")
    d.run_until(lambda: all(not p.inflight for p in pubs), 20, "acks")
    for topic in ("t0", "t1", "t2"):
        seqs = sorted(s for p in pubs for s in p.acks.get(topic, []))
        assert seqs == list(range(1, len(seqs) + 1)), topic
        for p in pubs:
            got = p.acks.get(topic, [])
            assert got == sorted(got), f"{p.name}: acks of {topic} out of publish order"


@pytest.mark.parametrize("topic,code", [
    ("has space", "invalid_topic"),
    ("", "invalid_topic"),
    ("tab\there", "invalid_topic"),
    ("nbsp\u00a0x", "invalid_topic"),
    ("$sys.stats", "forbidden"),
])
def test_bad_topic_gets_a_correlated_error_and_the_connection_stays(daemon, topic, code):
    c = conn(daemon)
    raw = topic.encode()
    body = bytes([len(raw)]) + raw + b"\x00" + len(b"x").to_bytes(4, "little") + b"x"
    if not raw:
        # An empty topic is caught by the frame decoder: bad_frame and close.
        c.send(rp.encode_frame(rp.PUBLISH, 5, body))
        f = c.recv()
        assert f.kind == rp.ERROR and f["code_name"] == "bad_frame"
        return
    c.send(rp.encode_frame(rp.PUBLISH, 5, body))
    f = c.recv()
    assert f.kind == rp.ERROR and f.corr == 5 and f["code_name"] == code, f.fields
    assert publish_n(c, "fine", 1) == [1]


def test_oversized_payload_is_too_large_and_the_connection_stays(make_daemon):
    d = make_daemon(extra="[limits]\nmax_frame_bytes = 8192\nsend_queue_bytes = 65536\n"
                          "pending_buffer_bytes = 65536\n")
    c = rp.Conn("127.0.0.1", d.port)
    c.hello()
    c.send(rp.encode_publish(3, "big", b"x" * 8160))
    f = c.recv()
    assert f.kind == rp.ERROR and f.corr == 3 and f["code_name"] == "too_large", f.fields
    c.send(rp.encode_publish(4, "big", b"x" * 9000))
    f = c.recv()
    assert f.kind == rp.ERROR and f["code_name"] == "too_large"
    assert c.closed_within(3)


# ---- the stream ----

def test_catchup_then_live_without_duplicates(daemon):
    pub = conn(daemon)
    publish_n(pub, "a", 50)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(7, 7, adds=[("a", 0)]))
    for i in range(50):
        pub.send(rp.encode_publish(100 + i, "a", f"live{i}"))
    frames, msgs = collect_until_complete(sub, 7)
    live_at = [i for i, f in enumerate(frames) if f.kind == rp.TOPICS_LIVE]
    assert len(live_at) == 1 and frames[live_at[0]]["topics"] == ["a"]
    # History frames carry the wave's id; none of them follow TOPICS_LIVE.
    for f in frames[live_at[0]:]:
        if f.kind == rp.MESSAGES:
            assert f["mutate_id"] == 0
    rest = []
    while len(msgs) + len(rest) < 100:
        f = sub.recv_until(lambda f: f.kind == rp.MESSAGES)
        assert f["mutate_id"] == 0
        rest += f["items"]
    seqs = [s for _, s, _ in msgs + rest]
    assert seqs == list(range(1, 101))


def test_cursor_now_sends_no_history(daemon):
    pub = conn(daemon)
    publish_n(pub, "n", 10)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("n", "now")]))
    frames, msgs = collect_until_complete(sub, 1)
    assert msgs == []
    assert [f["topics"] for f in frames if f.kind == rp.TOPICS_LIVE] == [["n"]]
    publish_n(pub, "n", 1, start_corr=50)
    f = sub.recv_until(lambda f: f.kind == rp.MESSAGES)
    assert [s for _, s, _ in f["items"]] == [11]


def test_cursor_in_the_middle_starts_after_it(daemon):
    pub = conn(daemon)
    publish_n(pub, "mid", 20)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("mid", 15)]))
    _, msgs = collect_until_complete(sub, 1)
    assert [s for _, s, _ in msgs] == [16, 17, 18, 19, 20]


def topic_errors(frames):
    return [(f["topic"], f["code_name"], f["mutate_id"]) for f in frames if f.kind == rp.TOPIC_ERROR]


def test_cursor_beyond_the_head_is_a_topic_error_and_the_rest_applies(daemon):
    pub = conn(daemon)
    publish_n(pub, "ahead", 5)
    publish_n(pub, "fine", 2, start_corr=50)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("ahead", 10), ("fine", 0)]))
    frames, msgs = collect_until_complete(sub, 1)
    assert topic_errors(frames) == [("ahead", "cursor_ahead", 1)], frames
    err = next(f for f in frames if f.kind == rp.TOPIC_ERROR)
    assert "cursor 10 is beyond the head 5" in err["message"]
    assert [f for f in frames if f.kind == rp.ERROR] == []
    assert [(t, s) for t, s, _ in msgs] == [("fine", 1), ("fine", 2)]
    assert [f["topics"] for f in frames if f.kind == rp.TOPICS_LIVE] == [["fine"]]
    # The topic is not on the stream: new messages do not arrive, and the
    # client may add it again from a cursor it chooses.
    publish_n(pub, "ahead", 1, start_corr=60)
    sub.send(rp.encode_mutate(2, 2, adds=[("ahead", 5)]))
    frames, msgs = collect_until_complete(sub, 2)
    assert topic_errors(frames) == [] and [(t, s) for t, s, _ in msgs] == [("ahead", 6)]


def test_cursor_equal_to_the_head_is_caught_up(daemon):
    pub = conn(daemon)
    publish_n(pub, "at", 3)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("at", 3)]))
    frames, msgs = collect_until_complete(sub, 1)
    assert msgs == [] and topic_errors(frames) == []
    publish_n(pub, "at", 1, start_corr=70)
    f = sub.recv_until(lambda f: f.kind == rp.MESSAGES)
    assert [s for _, s, _ in f["items"]] == [4]


def test_duplicate_adds_of_now_and_u64_max_keep_the_seq_cursor(daemon):
    pub = conn(daemon)
    publish_n(pub, "mx", 2)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("mx", "now"), ("mx", 2**64 - 1)]))
    frames, msgs = collect_until_complete(sub, 1)
    assert msgs == [] and topic_errors(frames) == [("mx", "cursor_ahead", 1)], frames


def test_epoch_is_announced_and_a_foreign_epoch_is_a_topic_error(daemon):
    pub = rp.Conn("127.0.0.1", daemon.port, timeout=10)
    started = pub.hello()
    epoch = started["epoch"]
    assert started["has_epoch"] and epoch != 0
    publish_n(pub, "ep", 5)
    sub = rp.Conn("127.0.0.1", daemon.port, timeout=10)
    assert sub.hello()["epoch"] == epoch
    wrong = epoch ^ 0x5555
    sub.send(rp.encode_mutate(1, 1, adds=[("ep", 3), ("ep0", 0), ("epn", "now")], epoch=wrong))
    frames, msgs = collect_until_complete(sub, 1)
    assert topic_errors(frames) == [("ep", "epoch_mismatch", 1)], frames
    live = sorted(t for f in frames if f.kind == rp.TOPICS_LIVE for t in f["topics"])
    assert live == ["ep0", "epn"]  # 0 and now mean the same in every epoch
    # The right epoch, and no epoch at all (0, or an older client's MUTATE
    # without the field), resume normally.
    for mid, e in ((2, epoch), (3, 0), (4, None)):
        sub.send(rp.encode_mutate(mid, mid, adds=[("ep", 3)], removes=["ep"], epoch=e))
        frames, msgs = collect_until_complete(sub, mid)
        assert topic_errors(frames) == [] and [s for _, s, _ in msgs] == [4, 5], (mid, frames)


def test_restart_starts_a_new_epoch_on_memory_and_keeps_it_on_postgres(make_daemon, storage):
    d = make_daemon()
    c = rp.Conn("127.0.0.1", d.port, timeout=10)
    before = c.hello()["epoch"]
    publish_n(c, "rs", 5)
    c.close()
    assert d.stop() == 0
    d.start()
    sub = rp.Conn("127.0.0.1", d.port, timeout=10)
    after = sub.hello()["epoch"]
    if storage == "postgres":
        # Same database, same seq space: the old cursors still hold.
        assert after == before
        sub.send(rp.encode_mutate(1, 1, adds=[("rs", 3)], epoch=before))
        frames, msgs = collect_until_complete(sub, 1)
        assert topic_errors(frames) == [] and [s for _, s, _ in msgs] == [4, 5]
        return
    # The memory store lost everything: seqs start again at 1, and a client
    # resuming with the old epoch is told instead of silently missing 1-3.
    assert after not in (0, before)
    publish_n(sub, "rs", 5, start_corr=300)
    sub.send(rp.encode_mutate(1, 1, adds=[("rs", 3)], epoch=before))
    frames, msgs = collect_until_complete(sub, 1)
    assert topic_errors(frames) == [("rs", "epoch_mismatch", 1)] and msgs == [], frames
    sub.send(rp.encode_mutate(2, 2, adds=[("rs", 10)], epoch=after))
    frames, msgs = collect_until_complete(sub, 2)
    assert topic_errors(frames) == [("rs", "cursor_ahead", 2)] and msgs == [], frames
    sub.send(rp.encode_mutate(3, 3, adds=[("rs", 0)], epoch=before))
    frames, msgs = collect_until_complete(sub, 3)
    assert topic_errors(frames) == [] and [s for _, s, _ in msgs] == [1, 2, 3, 4, 5]


def test_mutate_remove_stops_delivery_and_completes(daemon):
    pub = conn(daemon)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("r", "now")]))
    collect_until_complete(sub, 1)
    publish_n(pub, "r", 1)
    assert sub.recv_until(lambda f: f.kind == rp.MESSAGES)["items"][0][1] == 1
    sub.send(rp.encode_mutate(2, 2, removes=["r"]))
    collect_until_complete(sub, 2)
    publish_n(pub, "r", 3, start_corr=40)
    sub.send(rp.encode_ping(9, 9))
    frames = sub.recv_all_until(lambda f: f.kind == rp.PONG)
    assert [f for f in frames if f.kind == rp.MESSAGES] == []


def test_remove_during_catchup_completes_the_wave(daemon):
    pub = conn(daemon)
    publish_n(pub, "big", 3000, payload=lambda i: "x" * 200)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("big", 0)]) +
             rp.encode_mutate(2, 2, removes=["big"]))
    frames = sub.recv_all_until(lambda f: f.kind == rp.CATCHUP_COMPLETE and f["mutate_id"] == 2)
    done = [f["mutate_id"] for f in frames if f.kind == rp.CATCHUP_COMPLETE]
    assert sorted(done) == [1, 2]


def test_history_only_never_goes_live(daemon):
    pub = conn(daemon)
    publish_n(pub, "h", 10)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(3, 3, adds=[("h", 4)], history_only=True))
    frames, msgs = collect_until_complete(sub, 3)
    assert [s for _, s, _ in msgs] == [5, 6, 7, 8, 9, 10]
    assert all(f.kind != rp.TOPICS_LIVE for f in frames)
    publish_n(pub, "h", 2, start_corr=60)
    sub.send(rp.encode_ping(1, 1))
    frames = sub.recv_all_until(lambda f: f.kind == rp.PONG)
    assert all(f.kind != rp.MESSAGES for f in frames)


def test_history_only_add_of_a_live_topic_is_invalid_and_changes_nothing(daemon):
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("x", "now")]))
    collect_until_complete(sub, 1)
    sub.send(rp.encode_mutate(2, 2, adds=[("y", 0), ("x", 0)], history_only=True))
    f = sub.recv()
    assert f.kind == rp.ERROR and f["code_name"] == "invalid_argument" and f.corr == 2
    pub = conn(daemon)
    publish_n(pub, "y", 1)
    publish_n(pub, "x", 1, start_corr=10)
    f = sub.recv_until(lambda f: f.kind == rp.MESSAGES)
    assert [(t, s) for t, s, _ in f["items"]] == [("x", 1)]


def test_mutate_id_zero_with_adds_is_invalid(daemon):
    sub = conn(daemon)
    sub.send(rp.encode_mutate(4, 0, adds=[("z", 0)]))
    f = sub.recv()
    assert f.kind == rp.ERROR and f["code_name"] == "invalid_argument" and f.corr == 4


def test_removes_only_mutate_reusing_an_in_flight_mutate_id_is_invalid_and_changes_nothing(daemon):
    pub = conn(daemon)
    publish_n(pub, "long", 3000, payload=lambda i: "x" * 200)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("keep", "now")]))
    collect_until_complete(sub, 1)
    # Wave 2 is still catching up when the second MUTATE (same id, only
    # removes) arrives in the same write.
    sub.send(rp.encode_mutate(2, 2, adds=[("long", 0)]) +
             rp.encode_mutate(3, 2, removes=["keep"]))
    frames, msgs = collect_until_complete(sub, 2)
    errs = [f for f in frames if f.kind == rp.ERROR]
    assert [(f.corr, f["code_name"]) for f in errs] == [(3, "invalid_argument")], errs
    assert "in flight" in errs[0]["message"]
    assert [s for _, s, _ in msgs] == list(range(1, 3001))
    sub.send(rp.encode_ping(8, 8))
    frames = sub.recv_all_until(lambda f: f.kind == rp.PONG)
    assert [f for f in frames if f.kind == rp.CATCHUP_COMPLETE] == [], "a second completion of 2"
    # Nothing was applied: "keep" is still on the stream.
    publish_n(pub, "keep", 1, start_corr=5000)
    f = sub.recv_until(lambda f: f.kind == rp.MESSAGES)
    assert [(t, s) for t, s, _ in f["items"]] == [("keep", 1)]


def _add_topics(sub, mutate_id, names):
    sub.send(rp.encode_mutate(mutate_id, mutate_id, adds=[(n, "now") for n in names]))
    frames, _ = collect_until_complete(sub, mutate_id)
    return [f for f in frames if f.kind == rp.ERROR]


def test_topics_per_stream_counts_only_effective_removes(make_daemon):
    d = make_daemon(extra="[limits]\ntopics_per_stream = 50\n")
    sub = conn(d)
    assert _add_topics(sub, 1, [f"t{i}" for i in range(50)]) == []
    # Removing topics that are not on the stream makes no room.
    sub.send(rp.encode_mutate(2, 2, adds=[("extra", "now")],
                              removes=[f"absent{i}" for i in range(100)]))
    f = sub.recv()
    assert f.kind == rp.ERROR and f.corr == 2 and f["code_name"] == "resource_exhausted", f.fields
    # Nor does naming one present topic many times, or removing a topic the
    # same MUTATE adds back.
    sub.send(rp.encode_mutate(3, 3, adds=[("t0", 0), ("extra", "now")], removes=["t0"] * 5))
    f = sub.recv()
    assert f.kind == rp.ERROR and f.corr == 3 and f["code_name"] == "resource_exhausted", f.fields
    # Real removes make room one for one.
    sub.send(rp.encode_mutate(4, 4, adds=[("n1", "now"), ("n2", "now")], removes=["t1", "t2"]))
    frames, _ = collect_until_complete(sub, 4)
    assert [f for f in frames if f.kind == rp.ERROR] == []
    sub.send(rp.encode_mutate(5, 5, adds=[("one-too-many", "now")]))
    f = sub.recv()
    assert f.kind == rp.ERROR and f.corr == 5 and f["code_name"] == "resource_exhausted", f.fields


def test_duplicate_adds_collapse_to_the_lowest_cursor(daemon):
    pub = conn(daemon)
    publish_n(pub, "dup", 6)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("dup", 4), ("dup", "now"), ("dup", 2)]))
    frames, msgs = collect_until_complete(sub, 1)
    assert [s for _, s, _ in msgs] == [3, 4, 5, 6]
    assert [f["topics"] for f in frames if f.kind == rp.TOPICS_LIVE] == [["dup"]]


def test_readd_below_what_was_sent_replays_and_above_is_a_noop(daemon):
    pub = conn(daemon)
    publish_n(pub, "re", 5)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("re", 0)]))
    _, msgs = collect_until_complete(sub, 1)
    assert [s for _, s, _ in msgs] == [1, 2, 3, 4, 5]
    sub.send(rp.encode_mutate(2, 2, adds=[("re", 5)]))
    frames, msgs = collect_until_complete(sub, 2)
    assert msgs == [] and all(f.kind != rp.TOPICS_LIVE for f in frames)
    sub.send(rp.encode_mutate(3, 3, adds=[("re", 2)]))
    frames, msgs = collect_until_complete(sub, 3)
    assert [s for _, s, _ in msgs] == [3, 4, 5]
    assert [f["topics"] for f in frames if f.kind == rp.TOPICS_LIVE] == [["re"]]


def test_readd_of_a_topic_still_catching_up_follows_the_replay_rule(daemon):
    pub = conn(daemon)
    publish_n(pub, "cu", 3000, payload=lambda i: "x" * 200)
    # Not below what was sent: a no-op; the topic stays in wave 1, which
    # reports it, and wave 2 does not wait for it.
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("cu", 0)]) + rp.encode_mutate(2, 2, adds=[("cu", 0)]))
    frames = sub.recv_all_until(lambda f: f.kind == rp.CATCHUP_COMPLETE and f["mutate_id"] == 1, 20)
    done = [f["mutate_id"] for f in frames if f.kind == rp.CATCHUP_COMPLETE]
    assert done == [2, 1], done
    msgs = [(s, f["mutate_id"]) for f in frames if f.kind == rp.MESSAGES for _, s, _ in f["items"]]
    assert msgs == [(s, 1) for s in range(1, 3001)]
    assert [f["topics"] for f in frames if f.kind == rp.TOPICS_LIVE] == [["cu"]]
    # Below what was sent: the topic restarts from the lower cursor in wave
    # 2; wave 1 stops waiting for it and never announces it live.
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("cu", 2000)]) +
             rp.encode_mutate(2, 2, adds=[("cu", 0)]))
    frames = sub.recv_all_until(lambda f: f.kind == rp.CATCHUP_COMPLETE and f["mutate_id"] == 2, 20)
    assert [f["mutate_id"] for f in frames if f.kind == rp.CATCHUP_COMPLETE] == [1, 2]
    first_done = next(i for i, f in enumerate(frames) if f.kind == rp.CATCHUP_COMPLETE)
    assert all(f.kind != rp.TOPICS_LIVE for f in frames[:first_done])
    wave2 = [s for f in frames if f.kind == rp.MESSAGES and f["mutate_id"] == 2
             for _, s, _ in f["items"]]
    assert wave2 == list(range(1, 3001))
    assert [f["topics"] for f in frames if f.kind == rp.TOPICS_LIVE] == [["cu"]]


def test_two_subscribers_see_the_same_sequence(daemon):
    d = Driver()
    p = Publisher(d, daemon.port)
    subs = [Subscriber(d, daemon.port, f"s{i}") for i in range(2)]
    d.run_until(lambda: p.started, 5)
    for s in subs:
        s.mutate(adds=[("same", 0)])
    for i in range(500):
        p.publish("same", f"v{i}")
    d.run_until(lambda: all(s.last.get("same") == 500 for s in subs), 20, "delivery")
    assert subs[0].messages and [m[:3] for m in subs[0].messages] == [m[:3] for m in subs[1].messages]
    for s in subs:
        assert s.problems == []


def test_many_topics_in_one_stream_complete_without_starving_others(daemon):
    pub = conn(daemon)
    for i in range(0, 200):
        pub.send(rp.encode_publish(i + 1, f"many.{i}", "h"))
    for i in range(200):
        pub.recv_until(lambda f: f.kind == rp.PUBLISH_ACK)
    sub = conn(daemon)
    other = conn(daemon)
    adds = [(f"many.{i}", 0) for i in range(10000)]
    sub.send(rp.encode_mutate(1, 1, adds=adds))
    t0 = time.monotonic()
    other.send(rp.encode_ping(1, 42))
    assert other.recv(timeout=5).kind == rp.PONG
    assert time.monotonic() - t0 < 2
    frames, msgs = collect_until_complete(sub, 1, timeout=60)
    live = [t for f in frames if f.kind == rp.TOPICS_LIVE for t in f["topics"]]
    assert len(live) == 10000 and len(set(live)) == 10000
    assert sorted(t for t, _, _ in msgs) == sorted(f"many.{i}" for i in range(200))
    for t, s, _ in msgs:
        assert s == 1


def test_topics_live_follows_each_topics_history(daemon):
    pub = conn(daemon)
    for t in ("o1", "o2", "o3"):
        publish_n(pub, t, 30, start_corr=hash(t) & 0xffff)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("o1", 0), ("o2", 10), ("o3", "now")]))
    frames, _ = collect_until_complete(sub, 1)
    seen = {}
    for f in frames:
        if f.kind == rp.MESSAGES:
            for t, s, _ in f["items"]:
                assert t not in seen.get("live", set()), f"{t}#{s} after its TOPICS_LIVE"
                seen.setdefault(t, []).append(s)
        elif f.kind == rp.TOPICS_LIVE:
            seen.setdefault("live", set()).update(f["topics"])
    assert seen["live"] == {"o1", "o2", "o3"}
    assert seen["o1"] == list(range(1, 31))
    assert seen["o2"] == list(range(11, 31))
    assert "o3" not in seen


@pytest.mark.parametrize("storage", ["memory"])  # [storage.memory] retention
def test_retention_cursor_too_old_is_an_explicit_error(make_daemon):
    d = make_daemon(extra="[storage.memory]\nretention_messages = 10\n")
    pub = rp.Conn("127.0.0.1", d.port)
    pub.hello()
    publish_n(pub, "ret", 30)
    sub = rp.Conn("127.0.0.1", d.port)
    sub.hello()
    sub.send(rp.encode_mutate(1, 1, adds=[("ret", 5), ("other", 0)]))
    frames, msgs = collect_until_complete(sub, 1)
    assert [f for f in frames if f.kind == rp.ERROR] == [], "a per-topic outcome, not ERROR"
    assert topic_errors(frames) == [("ret", "out_of_range", 1)], frames
    err = next(f for f in frames if f.kind == rp.TOPIC_ERROR)
    assert "older than the oldest retained seq 21" in err["message"]
    assert msgs == []
    assert [f["topics"] for f in frames if f.kind == rp.TOPICS_LIVE] == [["other"]]
    # Cursor 0 means everything retained: it starts at the oldest, no error.
    sub.send(rp.encode_mutate(2, 2, adds=[("ret", 0)]))
    frames, msgs = collect_until_complete(sub, 2)
    assert topic_errors(frames) == []
    assert [s for _, s, _ in msgs] == list(range(21, 31))


@pytest.mark.parametrize("storage", ["memory"])  # trimmed at once by [storage.memory] retention
def test_retention_overtaking_a_running_catchup_is_a_topic_error(make_daemon):
    d = make_daemon(extra="[limits]\nmax_frame_bytes = 65536\nsend_queue_bytes = 131072\n"
                          "[storage.memory]\nretention_messages = 20000\n")
    pub = conn(d)
    body = "r" * 1000
    for k in range(40):
        publish_n(pub, "ov", 500, start_corr=k * 500 + 1, payload=lambda i: body)
    # A subscriber with a small receive buffer that does not read: its
    # catch-up stops when the socket and the send queue are full, far
    # below the head.
    sub = rp.Conn("127.0.0.1", d.port, timeout=20, rcvbuf=4096)
    assert sub.hello().kind == rp.STARTED
    sub.send(rp.encode_mutate(1, 1, adds=[("ov", 0)]))
    time.sleep(1.0)
    # Retention now drops every seq the catch-up has not sent yet.
    for k in range(40, 80):
        publish_n(pub, "ov", 500, start_corr=k * 500 + 1, payload=lambda i: body)
    frames, msgs = collect_until_complete(sub, 1, timeout=60)
    seqs = [s for _, s, _ in msgs]
    assert seqs == list(range(1, len(seqs) + 1)) and 0 < len(seqs) < 20000, len(seqs)
    assert topic_errors(frames) == [("ov", "out_of_range", 1)], topic_errors(frames)
    err = next(f for f in frames if f.kind == rp.TOPIC_ERROR)
    assert f"retention overtook the catch-up: seqs {len(seqs) + 1}..20000 were trimmed" \
        in err["message"], err["message"]
    assert [f for f in frames if f.kind in (rp.ERROR, rp.TOPICS_LIVE)] == []


def test_half_close_drains_waves_then_closes_ok(daemon):
    pub = conn(daemon)
    publish_n(pub, "hc", 500, payload=lambda i: "p" * 100)
    sub = conn(daemon)
    sub.send(rp.encode_mutate(1, 1, adds=[("hc", 0)]) + rp.encode_close(0, rp.OK))
    frames = sub.recv_all_until(lambda f: f.kind == rp.CLOSE, timeout=10)
    seqs = [s for f in frames if f.kind == rp.MESSAGES for _, s, _ in f["items"]]
    assert seqs == list(range(1, 501))
    kinds = [f.kind for f in frames]
    assert kinds.index(rp.TOPICS_LIVE) < kinds.index(rp.CATCHUP_COMPLETE) < kinds.index(rp.CLOSE)
    assert frames[-1]["status_name"] == "ok"
    assert sub.closed_within(3)


def test_half_close_that_cannot_drain_in_time_is_deadline_exceeded(make_daemon):
    d = make_daemon(extra="[timeouts]\nclose_grace_ms = 300\n")
    pub = rp.Conn("127.0.0.1", d.port, timeout=20)
    pub.hello()
    # More history than the kernel's socket buffers and half the send queue
    # hold, so the wave cannot finish while the client does not read.
    for k in range(8):
        publish_n(pub, "stuck", 1000, start_corr=k * 1000 + 1, payload=lambda i: "s" * 2000)
    slow = rp.Conn("127.0.0.1", d.port)
    slow.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
    slow.hello()
    slow.send(rp.encode_mutate(1, 1, adds=[("stuck", 0)]) + rp.encode_close(0, rp.OK))
    deadline = time.monotonic() + 10
    want = "closing: deadline_exceeded: half-close drain exceeded the close grace"
    while want not in d.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert want in d.log()
    assert publish_n(pub, "stuck", 1, start_corr=90000)[0] == 8001


def test_non_reading_subscriber_is_closed_and_publishers_carry_on(make_daemon):
    d = make_daemon(extra="[limits]\nmax_frame_bytes = 65536\nsend_queue_bytes = 262144\n"
                          "pending_buffer_bytes = 262144\n")
    slow = rp.Conn("127.0.0.1", d.port)
    slow.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
    slow.hello()
    slow.send(rp.encode_mutate(1, 1, adds=[("flood", "now")]))
    fast = rp.Conn("127.0.0.1", d.port)
    fast.hello()
    fast.send(rp.encode_mutate(1, 1, adds=[("flood", "now")]))
    collect_until_complete(fast, 1)
    time.sleep(0.2)
    pub = rp.Conn("127.0.0.1", d.port, timeout=20)
    pub.hello()
    rss0 = d.rss_kib()
    got = 0
    payload = "y" * 4000
    for batch in range(30):
        seqs = publish_n(pub, "flood", 200, start_corr=batch * 1000 + 1, payload=lambda i: payload)
        assert seqs[-1] == (batch + 1) * 200
        while got < seqs[-1]:
            f = fast.recv_until(lambda f: f.kind == rp.MESSAGES)
            got = f["items"][-1][1]
    log = d.log()
    assert "closing: resource_exhausted: subscriber too slow" in log
    rss1 = d.rss_kib()
    if RSS_BOUNDS_APPLY:
        assert rss1 - rss0 < 64 * 1024, (rss0, rss1)
    # The server let go of the stalled connection; its socket drains in the
    # kernel at the pace the client reads, so the client sees the end later.
    slow_id = log.split("closing: resource_exhausted: subscriber too slow")[0]
    slow_id = slow_id.rsplit("conn ", 1)[1].split(":")[0]
    deadline = time.monotonic() + 10
    while f"conn {slow_id}: freed" not in d.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"conn {slow_id}: freed" in d.log()


def test_pending_buffer_overflow_during_catchup_is_resource_exhausted(make_daemon):
    d = make_daemon(extra="[limits]\nmax_frame_bytes = 16384\nsend_queue_bytes = 32768\n"
                          "pending_buffer_bytes = 32768\n")
    pub = rp.Conn("127.0.0.1", d.port, timeout=20)
    pub.hello()
    # Enough history to fill the kernel's socket buffers, so catch-up
    # pauses while live messages pile up in the pending buffer.
    for k in range(6):
        publish_n(pub, "pend", 500, start_corr=k * 1000 + 1, payload=lambda i: "z" * 2000)
    slow = rp.Conn("127.0.0.1", d.port)
    slow.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
    slow.hello()
    slow.send(rp.encode_mutate(1, 1, adds=[("pend", 0)]))
    time.sleep(0.3)
    publish_n(pub, "pend", 400, start_corr=50000, payload=lambda i: "z" * 500)
    deadline = time.monotonic() + 10
    while "buffered during catch-up" not in d.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = d.log()
    assert "closing: resource_exhausted: topic pend: live messages buffered during catch-up" in log
    # The server let go of the connection (its socket drains in the kernel,
    # at the pace the stalled client reads)...
    slow_id = log.split("closing: resource_exhausted: topic pend")[0].rsplit("conn ", 1)[1]
    slow_id = slow_id.split(":")[0]
    deadline = time.monotonic() + 10
    while f"conn {slow_id}: freed" not in d.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"conn {slow_id}: freed" in d.log()
    # ...and publishing goes on for everyone else.
    assert publish_n(pub, "pend", 1, start_corr=90000)[0] == 3401



def buffered_catchup(make_daemon, live_count, live_payload):
    """A subscriber adds a topic with 16 MB of history and does not read at
    first, so its catch-up pauses on the send queue (64 KiB) while
    live_count messages are committed and buffered; then it reads. Returns
    the frames up to TOPICS_LIVE and every seq it got until the last one."""
    d = make_daemon(extra="[limits]\nmax_frame_bytes = 16384\nsend_queue_bytes = 65536\n"
                          "pending_buffer_bytes = 4194304\n")
    pub = rp.Conn("127.0.0.1", d.port, timeout=20)
    pub.hello()
    # More history than the kernel's socket buffers hold for a client that
    # does not read.
    history = 8000
    for k in range(history // 1000):
        publish_n(pub, "buf", 1000, start_corr=k * 1000 + 1, payload=lambda i: "h" * 2000)
    sub = rp.Conn("127.0.0.1", d.port, timeout=20)
    sub.hello()
    sub.send(rp.encode_mutate(9, 9, adds=[("buf", 0)]))
    time.sleep(0.3)
    publish_n(pub, "buf", live_count, start_corr=50000, payload=live_payload)
    frames = sub.recv_all_until(lambda f: f.kind == rp.TOPICS_LIVE, timeout=30)
    seqs = [s for f in frames if f.kind == rp.MESSAGES for (_, s, _) in f["items"]]
    assert sub.recv_until(lambda f: f.kind == rp.CATCHUP_COMPLETE)["mutate_id"] == 9
    while seqs[-1] < history + live_count:
        f = sub.recv_until(lambda f: f.kind == rp.MESSAGES)
        assert f["mutate_id"] == 0
        seqs += [s for (_, s, _) in f["items"]]
    assert seqs == list(range(1, history + live_count + 1))
    return history, frames


def test_live_messages_buffered_during_catchup_carry_the_waves_id(make_daemon):
    """PROTOCOL §8.4: messages committed while a topic catches up are
    buffered and delivered before its TOPICS_LIVE, in frames that carry the
    wave's mutate_id like the history; only after TOPICS_LIVE do frames
    carry 0."""
    history, frames = buffered_catchup(make_daemon, 100, lambda i: f"live{i}")
    before = [(f["mutate_id"], s) for f in frames if f.kind == rp.MESSAGES
              for (_, s, _) in f["items"]]
    assert {mid for mid, _ in before} == {9}
    assert [s for _, s in before if s > history], "no live message was buffered"


def test_buffered_messages_beyond_the_send_queue_are_delivered_not_reaped(make_daemon):
    """300 KB buffered during catch-up, more than the 64 KiB send queue: the
    merge waits for the reading client like the history does (the pending
    buffer's own bound is 4 MiB), instead of closing it resource_exhausted."""
    history, frames = buffered_catchup(make_daemon, 300, lambda i: "L" * 1000)
    assert all(f.kind != rp.CLOSE for f in frames)
    assert sum(1 for f in frames if f.kind == rp.MESSAGES
               for (_, s, _) in f["items"] if s > history) > 64

# ---- randomized ----

@pytest.mark.parametrize("seed", [1, 2, 3])
def test_randomized_streams_against_the_published_log(make_daemon, seed):
    """Publishers on several topics while subscribers add and remove topics
    with random cursors; every subscriber's view is checked for order, no
    gap, no duplicate, and markers in place."""
    seed = int(os.environ.get("RINGBUS_TEST_SEED", seed))
    rng = random.Random(seed)
    d0 = make_daemon(shards=2)
    topics = [f"rnd.{i}" for i in range(6)]
    drv = Driver()
    pubs = [Publisher(drv, d0.port, f"p{i}") for i in range(3)]
    subs = [Subscriber(drv, d0.port, f"s{i}") for i in range(4)]
    drv.run_until(lambda: all(p.started for p in pubs), 5, "publishers")
    try:
        run_random_streams(drv, pubs, subs, topics, rng, steps=60, publishes_max=25,
                           payload=lambda r, p, step: f"{p.name}:{step}:{r.random()}")
    except AssertionError as e:
        raise AssertionError(f"seed {seed}: {e}") from e


@pytest.mark.parametrize("storage", ["memory"])  # a property of fan-out, not of storage
def test_fan_out_shares_payloads_instead_of_copying_per_subscriber(make_daemon):
    """Live blocks reach subscribers' send queues by reference: 40 stalled
    subscribers queueing the same 6 MB cost the daemon about 6 MB, not
    40 x 6 MB (RSS counts the daemon's own memory, not socket buffers)."""
    import socket

    d = make_daemon(shards=1, extra="[limits]\nsend_queue_bytes = 67108864\n")
    subs = []
    for _ in range(40):
        s = rp.Conn("127.0.0.1", d.port)
        s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.hello()
        s.send(rp.encode_mutate(1, 1, adds=[("fan", "now")]))
        collect_until_complete(s, 1)
        subs.append(s)
    pub = rp.Conn("127.0.0.1", d.port, timeout=30)
    pub.hello()
    publish_n(pub, "warm", 10)
    rss0 = d.rss_kib()
    for k in range(6):
        publish_n(pub, "fan", 128, start_corr=k * 1000 + 1, payload=lambda i: "f" * 8000)
    time.sleep(0.5)
    rss1 = d.rss_kib()
    grown_mib = (rss1 - rss0) / 1024
    # One copy in the store and one in the shared blocks: ~12 MiB. Copies
    # per subscriber would be ~240 MiB.
    if RSS_BOUNDS_APPLY:
        assert grown_mib < 48, f"daemon grew {grown_mib:.0f} MiB for 6 MB fanned out to 40"
    assert "subscriber too slow" not in d.log()
