"""Ephemeral topics ([[topic_class]] storage = "none", docs/PROTOCOL.md
"Ephemeral topics"): fan-out without storage, live at once with no
history, content dedup, echo off, and explicit lag (LAGGED with the exact
count of what was dropped) instead of a close, next to a stored topic that
keeps its own rules on the same stream."""

import random
import time

import pytest

import rbproto as rp
from conftest import RSS_BOUNDS_APPLY
from streamcheck import Driver, Publisher, Subscriber

SEED = 18
CLASSES = (
    '[[topic_class]]\npattern = "cur.>"\nstorage = "none"\n'
    '[[topic_class]]\npattern = "dd.>"\nstorage = "none"\ndedup_window_ms = 60000\n'
    '[[topic_class]]\npattern = "quiet.>"\nstorage = "none"\necho = false\n'
    '[[topic_class]]\npattern = "small.>"\nstorage = "none"\nmax_message_bytes = 16\n'
)
# A small send queue, so that a reader that stops falls behind quickly.
SMALL_QUEUE = "[limits]\nmax_frame_bytes = 16384\nsend_queue_bytes = 65536\n"


def conn(d, **kw):
    c = rp.Conn(port=d.port, **kw)
    assert c.hello().kind == rp.STARTED
    return c


def first_seq(ack):
    """The seq before an ephemeral topic's first one (its base) from the ack
    of its first publish, checking that it is the documented base: the
    wall-clock millisecond of first use << 10."""
    assert ack.kind == rp.PUBLISH_ACK, ack.fields
    base = ack["seq"] - 1
    assert base % 1024 == 0 and abs((base >> 10) / 1000 - time.time()) < 60, ack["seq"]
    return base


def publish_many(p, topic, payload, n, corr):
    """n pipelined publishes, in chunks whose acks are read before the next
    (the small send queues of these tests also hold the publisher's acks).
    Returns the acked seqs."""
    seqs = []
    while len(seqs) < n:
        chunk = min(200, n - len(seqs))
        for i in range(chunk):
            p.publish(topic, payload, corr + len(seqs) + i, wait=False)
        got = 0
        while got < chunk:
            f = p.recv(timeout=20)
            assert f.kind == rp.PUBLISH_ACK, f.fields
            seqs.append(f["seq"])
            got += 1
    return seqs


def wave(c, mid, adds, history_only=False):
    """Sends a Mutate and returns its frames up to CATCHUP_COMPLETE."""
    c.mutate(mid, mid, adds=adds, history_only=history_only)
    return c.recv_all_until(lambda f: f.kind == rp.CATCHUP_COMPLETE and f["mutate_id"] == mid)


def test_add_with_any_cursor_gets_no_history_and_goes_live_at_once(make_daemon):
    d = make_daemon(extra=CLASSES)
    with conn(d) as p, conn(d) as s:
        base = first_seq(p.publish("cur.a", "old0", 10))
        for i in range(1, 5):
            assert p.publish("cur.a", f"old{i}", 10 + i)["seq"] == base + i + 1
        frames = wave(s, 1, [("cur.a", 0), ("cur.b", 3), ("cur.c", "now")])
        assert [f.kind for f in frames] == [rp.TOPICS_LIVE] * 3 + [rp.CATCHUP_COMPLETE]
        assert sorted(t for f in frames[:3] for t in f["topics"]) == ["cur.a", "cur.b", "cur.c"]
        # A history_only add reads nothing; a re-add with an old cursor
        # changes nothing (no replay).
        assert [f.kind for f in wave(s, 2, [("cur.a", 0)], history_only=False)] == [
            rp.CATCHUP_COMPLETE]
        assert [f.kind for f in wave(s, 3, [("cur.z", 0)], history_only=True)] == [
            rp.CATCHUP_COMPLETE]
        assert p.publish("cur.a", "new", 20)["seq"] == base + 6
        f = s.recv()
        assert f.kind == rp.MESSAGES and f["items"] == [("cur.a", base + 6, b"new")], f.fields


def test_repeated_content_within_the_window_is_acked_as_duplicate_and_not_delivered(make_daemon):
    d = make_daemon(extra=CLASSES)
    with conn(d) as p, conn(d) as s:
        wave(s, 1, [("dd.x", 0), ("cur.x", 0)])
        a = p.publish("dd.x", "same", 2)
        x = first_seq(a)
        assert a["duplicate"] is False
        b = p.publish("dd.x", "same", 3)
        assert (b["seq"], b["duplicate"]) == (x + 1, True), b.fields
        assert p.publish("dd.x", "other", 4)["seq"] == x + 2
        # Another topic with the same payload is not a duplicate, and a
        # class without a window keeps every message.
        assert p.publish("dd.y", "same", 5)["duplicate"] is False
        c = first_seq(p.publish("cur.x", "same", 6))
        assert p.publish("cur.x", "same", 7)["seq"] == c + 2
        got = []
        while len(got) < 4:
            got += s.recv()["items"]
        assert got == [("dd.x", x + 1, b"same"), ("dd.x", x + 2, b"other"),
                       ("cur.x", c + 1, b"same"), ("cur.x", c + 2, b"same")], got
        assert not s.closed_within(0.3) and s.skipped == []


def test_echo_off_leaves_out_the_publishers_own_messages_and_on_keeps_them(make_daemon):
    d = make_daemon(extra=CLASSES)
    with conn(d) as a, conn(d) as b:
        wave(a, 1, [("quiet.room", 0), ("cur.room", 0)])
        wave(b, 1, [("quiet.room", 0)])
        q = first_seq(a.publish("quiet.room", "from a", 2))
        assert b.publish("quiet.room", "from b", 3)["seq"] == q + 2
        r = first_seq(a.publish("cur.room", "echoed", 4))
        assert b.recv()["items"] == [("quiet.room", q + 1, b"from a")]
        assert a.recv()["items"] == [("quiet.room", q + 2, b"from b")]
        assert a.recv()["items"] == [("cur.room", r + 1, b"echoed")]
        assert not b.closed_within(0.3) and b.skipped == []


def test_class_max_message_bytes_is_enforced_at_intake(make_daemon):
    d = make_daemon(extra=CLASSES)
    with conn(d) as p:
        assert p.publish("small.a", "x" * 16, 2).kind == rp.PUBLISH_ACK
        e = p.publish("small.a", "x" * 17, 3)
        assert e.kind == rp.ERROR and e["code_name"] == "too_large", e.fields
        assert "limit of 16" in e["message"]
        assert p.publish("cur.a", "x" * 17, 4).kind == rp.PUBLISH_ACK


def read_lagging(c, total, last=0, deadline_s=30):
    """Reads a reader's ephemeral topic from seq last to total: (seqs
    received, LAGGED counts), checking that every gap is announced by a
    LAGGED of exactly its size just before the message after it."""
    seqs, lags, owed = [], [], 0
    deadline = time.monotonic() + deadline_s
    while last + owed < total:
        f = c.recv(max(0.1, deadline - time.monotonic()))
        if f.kind == rp.LAGGED:
            assert f["topic"] == "cur.fan" and owed == 0, f.fields
            owed = f["skipped"]
            lags.append(owed)
            continue
        assert f.kind == rp.MESSAGES, f.fields
        for topic, seq, _ in f["items"]:
            assert topic == "cur.fan"
            assert seq == last + owed + 1, f"seq {seq} after {last} with {owed} announced"
            seqs.append(seq)
            last, owed = seq, 0
    return seqs, lags


def test_fan_out_to_many_while_one_stops_reading_lags_it_exactly(make_daemon):
    """~200 readers see every message in order; one that stops reading is
    not closed: when it resumes it gets its messages in order with LAGGED
    {skipped} before each gap, exactly as large as the gap; the daemon's
    memory stays bounded; a stored topic on the same streams keeps its
    rules (history, dense, live)."""
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    # A 1 MiB send queue: the reader that stops still lags well within each
    # episode (2.7 MB, then 1.8 MB), while the 200 that read (one Python
    # thread) have room to spare when the machine is loaded. With 64 KiB
    # they too were rightly told LAGGED on a busy machine, which this test
    # does not allow them.
    d = make_daemon(extra="[limits]\nmax_frame_bytes = 16384\nsend_queue_bytes = 1048576\n"
                    + CLASSES)
    drv = Driver()
    pub = Publisher(drv, d.port)
    drv.run_until(lambda: pub.started, 10, "publisher started")
    for i in range(20):
        pub.publish("st.fan", f"stored {i}")
    drv.run_until(lambda: len(pub.acks.get("st.fan", [])) == 20, 10, "stored acks")
    slow = conn(d, rcvbuf=4096)
    slow.mutate(1, 1, adds=[("cur.fan", 0)])
    assert [f.kind for f in slow.recv_all_until(lambda f: f.kind == rp.CATCHUP_COMPLETE)] == [
        rp.TOPICS_LIVE, rp.CATCHUP_COMPLETE]
    subs = [Subscriber(drv, d.port, name=f"s{i}") for i in range(200)]
    drv.run_until(lambda: all(s.epoch is not None for s in subs), 20, "subscribers started")
    for s in subs:
        s.mutate(adds=[("cur.fan", "now"), ("st.fan", 0)])
    drv.run_until(lambda: all(s.completed for s in subs), 20, "waves complete")
    rss_before = d.rss_kib()
    total, stored = 0, 20
    payload = bytes(rng.getrandbits(8) for _ in range(900))

    def publish_until(upto):
        nonlocal total, stored
        while total < upto:
            n = rng.randint(5, 20)
            for _ in range(n):
                pub.publish("cur.fan", payload)
                total += 1
                if rng.random() < 0.05:
                    pub.publish("st.fan", f"stored {stored}")
                    stored += 1
            drv.run_until(lambda: all(s.last.get("cur.fan") == base + total for s in subs), 20,
                          f"readers reach {total}")

    pub.publish("cur.fan", payload)
    total = 1
    drv.run_until(lambda: len(pub.acks.get("cur.fan", [])) == 1, 10, "first ack")
    base = pub.acks["cur.fan"][0] - 1
    drv.run_until(lambda: all(s.last.get("cur.fan") == base + 1 for s in subs), 20, "first")
    publish_until(3000)
    drv.run_until(lambda: len(pub.acks.get("st.fan", [])) == stored, 10, "stored acks")
    drv.run_until(lambda: all(s.last.get("st.fan") == stored for s in subs), 20, "stored live")
    assert pub.acks["cur.fan"] == list(range(base + 1, base + total + 1))
    problems = [p for s in subs for p in s.problems]
    assert problems == [], problems[:5]
    for s in subs:
        assert [x for x in s.messages if x[0] == "cur.fan"][0][1] == base + 1
    if RSS_BOUNDS_APPLY:
        # 200 readers of 3000 messages of 900 bytes: a copy per reader would
        # be 540 MB; the slow reader holds at most its queue and lag share.
        assert d.rss_kib() - rss_before < 96 * 1024, (rss_before, d.rss_kib())
    seqs, lags = read_lagging(slow, base + total, last=base)
    assert lags, "the reader that stopped was never told it lagged"
    assert len(seqs) + sum(lags) == total
    assert seqs[-1] == base + total, "the newest messages are kept, the oldest dropped"
    print(f"slow reader: {len(seqs)} received, {len(lags)} LAGGED, {sum(lags)} skipped")
    # It stops again: a second episode is counted from where it resumed.
    first = total
    publish_until(first + 2000)
    seqs, lags = read_lagging(slow, base + total, last=base + first)
    assert lags and len(seqs) + sum(lags) == total - first
    print(f"slow reader again: {len(seqs)} received, {len(lags)} LAGGED, {sum(lags)} skipped")
    assert all(s.last.get("cur.fan") == base + total and not s.problems for s in subs)
    assert not slow.closed_within(0.3)
    slow.close()
    for s in subs:
        s.close()
    pub.close()


def test_nothing_of_an_ephemeral_topic_reaches_postgres(make_daemon, pg_db):
    d = make_daemon(storage="postgres", conninfo=pg_db.conninfo, extra=CLASSES)
    with conn(d) as p, conn(d) as s:
        wave(s, 1, [("cur.pg", 0), ("st.pg", 0)])
        base = None
        for i in range(5):
            ack = p.publish("cur.pg", f"e{i}", 10 + i)
            base = first_seq(ack) if base is None else base
            assert ack["seq"] == base + i + 1
            assert p.publish("st.pg", f"s{i}", 20 + i)["seq"] == i + 1
        got = []
        while len(got) < 10:
            got += s.recv()["items"]
        assert sorted(got) == sorted([("cur.pg", base + i + 1, f"e{i}".encode())
                                      for i in range(5)] +
                                     [("st.pg", i + 1, f"s{i}".encode()) for i in range(5)])
    assert pg_db.psql("SELECT name FROM topics ORDER BY name") == [["st.pg"]]
    assert pg_db.psql("SELECT count(*) FROM messages") == [["5"]]


@pytest.mark.parametrize("bad, msg", [
    ('[[topic_class]]\npattern = "a.>.b"\nstorage = "none"\n',
     "topic_class[1].pattern: pattern: '>' must be the last segment"),
    ('[[topic_class]]\npattern = "a"\nstorage = "ram"\n', '"ram" is not one of stored, none'),
])
def test_bad_topic_class_stops_the_daemon_with_file_line_column(tmp_path, bad, msg):
    import subprocess
    from conftest import RINGBUSD
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    r = subprocess.run([str(RINGBUSD), "--config", str(path)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode != 0
    assert f"{path}:" in r.stderr + r.stdout and msg in r.stderr + r.stdout, r.stderr


def test_cli_prints_a_lagged_line_when_it_fell_behind(make_daemon):
    """The CLI's stdout is a pipe nobody reads for a while, so it stops
    reading its socket: the daemon lags it, and the CLI prints
    {"event":"lagged","topic":...,"skipped":N} before the next message.
    /metrics counts the lagged and the duplicate ephemeral messages."""
    import json
    import subprocess
    from conftest import RINGBUS
    from conftest import free_port
    from test_http_admin import http_listener, scrape, tcp_listener, value
    tcp, http = free_port(), free_port()
    d = make_daemon(extra=SMALL_QUEUE + CLASSES, listeners=tcp_listener(tcp) + http_listener(http))
    d.port, d.url = tcp, f"tcp://127.0.0.1:{tcp}"
    cli = subprocess.Popen([str(RINGBUS), "--url", d.url, "sub", "--timeout", "30", "cur.cli"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert json.loads(cli.stdout.readline())["event"] == "topics_live"
        cli.stdout.readline()  # catchup_complete
        total = 3000
        with conn(d) as p:
            base = first_seq(p.publish("cur.cli", "x" * 900, 9))
            publish_many(p, "cur.cli", "x" * 900, total - 1, 10)
        total += base
        last, owed, lags = base, 0, []
        while last + owed < total:
            ev = json.loads(cli.stdout.readline())
            if ev["event"] == "lagged":
                assert ev["topic"] == "cur.cli" and ev["skipped"] >= 1
                owed = ev["skipped"]
                lags.append(owed)
            else:
                assert ev["event"] == "message" and ev["seq"] == last + owed + 1, (ev, last, owed)
                last, owed = ev["seq"], 0
        assert lags, "the CLI was never told it lagged"
        # /metrics counts exactly what the LAGGED events announced.
        assert value(scrape(http), "ringbus_ephemeral_lagged_total") == sum(lags)
        with conn(d) as p:
            for corr in (2, 3, 4):
                p.publish("dd.m", "same", corr)
        assert value(scrape(http), "ringbus_ephemeral_duplicates_total") == 2
    finally:
        cli.kill()
        cli.wait()


def test_protocol_md_lagged_example_matches_the_codec():
    import pathlib
    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
    section = text.split("### LAGGED (21)", 1)[1].split("\n## ", 1)[0]
    hexed = section.split("30 bytes:\n`", 1)[1].split("`", 1)[0]
    assert bytes.fromhex(hexed) == rp.encode_lagged(0, "cur.a", 17)
    frame, used = rp.decode(bytes.fromhex(hexed))
    assert used == 30 and frame.fields == {"topic": "cur.a", "skipped": 17}


def test_a_stored_class_window_replaces_the_dedup_window_for_its_topics(make_daemon):
    """[[topic_class]] dedup_window_ms on a stored class is the
    idempotency-key window of its topics; other topics keep [dedup]."""
    d = make_daemon(extra='[[topic_class]]\npattern = "short.>"\ndedup_window_ms = 100\n')
    with conn(d) as p:
        for topic in ("short.a", "long.a"):
            assert p.publish(topic, "x", 2, key="k1")["seq"] == 1
            dup = p.publish(topic, "x", 3, key="k1")
            assert (dup["seq"], dup["duplicate"]) == (1, True)
        time.sleep(0.4)
        again = p.publish("short.a", "x", 4, key="k1")
        assert (again["seq"], again["duplicate"]) == (2, False), again.fields
        still = p.publish("long.a", "x", 5, key="k1")
        assert (still["seq"], still["duplicate"]) == (1, True), still.fields


def test_seqs_after_a_restart_stay_above_the_last_runs(make_daemon):
    """A client that resumes after the daemon restarted must not take new
    messages for ones it had: an ephemeral topic's seqs start above the
    wall-clock millisecond of its first use << 10, so they grow across
    runs (with the memory store and with Postgres alike)."""
    d = make_daemon(extra=CLASSES)
    with conn(d) as p:
        base = first_seq(p.publish("cur.r", "m0", 2))
        before = [p.publish("cur.r", f"m{i}", 2 + i)["seq"] for i in range(1, 3)]
    assert before == [base + 2, base + 3]
    d.stop()
    d.start()
    with conn(d) as p:
        after = p.publish("cur.r", "again", 2)
        assert after["seq"] > before[-1], (before, after["seq"])
        first_seq(after)


def test_resilient_cli_sub_keeps_receiving_an_ephemeral_topic_across_a_restart(make_daemon):
    """ringbus sub (libringbus's session) re-adds the topic after the
    daemon restarted and prints the new messages: their seqs are above the
    ones it had, so its duplicate filter keeps them."""
    import json
    import subprocess
    from conftest import RINGBUS
    d = make_daemon(extra=CLASSES)
    cli = subprocess.Popen([str(RINGBUS), "--url", d.url, "sub", "--timeout", "30", "cur.rs"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def next_event(kind):
        while True:
            line = cli.stdout.readline()
            assert line, cli.stderr.read()
            ev = json.loads(line)
            if ev["event"] == kind:
                return ev

    try:
        next_event("catchup_complete")
        with conn(d) as p:
            seq1 = p.publish("cur.rs", "before", 2)["seq"]
        assert next_event("message")["seq"] == seq1
        d.stop()
        d.start()
        next_event("catchup_complete")  # the session's re-add on the new daemon
        with conn(d) as p:
            seq2 = p.publish("cur.rs", "after", 2)["seq"]
        ev = next_event("message")
        assert (ev["seq"], ev["seq"] > seq1) == (seq2, True), (seq1, ev)
    finally:
        cli.kill()
        cli.wait()


def test_a_stored_topic_on_the_same_slow_stream_keeps_the_close_rule(make_daemon):
    """A reader that stops is lagged, not closed, for its ephemeral topic;
    once its stored topic's messages overflow its send queue it is closed
    with resource_exhausted, as before (stored messages are never dropped)."""
    d = make_daemon(extra=SMALL_QUEUE + CLASSES)
    slow = conn(d, rcvbuf=4096)
    wave(slow, 1, [("cur.mix", 0), ("st.mix", 0)])
    with conn(d) as p:
        base = first_seq(p.publish("cur.mix", "e" * 900, 2))
        publish_many(p, "cur.mix", "e" * 900, 1999, 10)
        # Lagged, not closed: nothing in the log says it was reaped.
        time.sleep(0.2)
        assert "subscriber too slow" not in d.log()
        assert publish_many(p, "st.mix", "s" * 900, 2000, 5000) == list(range(1, 2001))
    assert slow.closed_within(20)
    close = [f for f in slow.skipped if f.kind == rp.CLOSE]
    assert close and close[-1]["status_name"] == "resource_exhausted", close
    assert "subscriber too slow" in close[-1]["message"] and "st.mix" in close[-1]["message"]
    stored = [seq for f in slow.skipped if f.kind == rp.MESSAGES
              for t, seq, _ in f["items"] if t == "st.mix"]
    assert stored == list(range(1, len(stored) + 1)), "stored messages stay gapless to the close"
    eph = [seq for f in slow.skipped if f.kind == rp.MESSAGES
           for t, seq, _ in f["items"] if t == "cur.mix"]
    assert eph and eph[0] == base + 1 and eph == sorted(eph)
    slow.close()
