"""The topic owner's sequencer with two daemons on one Postgres (issue 10):
each daemon's commits leave holes where the other committed. A live
subscriber on daemon A gets every message in seq order, with no gap and no
duplicate, the holes read once by A's owner; and when only daemon B
publishes (the topic is quiet on A), a head read on A (a second
subscriber's add) repairs the first subscriber at once, without waiting
for a next publish on A."""

import time

import rbproto as rp


def conn(d, timeout=10):
    c = rp.Conn("127.0.0.1", d.port, timeout=timeout)
    assert c.hello().kind == rp.STARTED
    return c


def subscribe(c, topic, mutate_id, cursor="now"):
    c.mutate(mutate_id, mutate_id, adds=[(topic, cursor)])
    c.recv_until(lambda f: f.kind == rp.CATCHUP_COMPLETE, 10)


def collect(c, topic, want_last, timeout):
    """Seqs of topic delivered to c until want_last arrives or timeout."""
    seqs = []
    deadline = time.monotonic() + timeout
    while (not seqs or seqs[-1] < want_last) and time.monotonic() < deadline:
        try:
            f = c.recv(max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        if f.kind == rp.PING:
            c.pong(f["nonce"])
            continue
        if f.kind == rp.MESSAGES:
            seqs += [s for t, s, _ in f["items"] if t == topic]
    return seqs


def publish(c, topic, n, corr0):
    for i in range(n):
        ack = c.publish(topic, f"m{corr0 + i}", corr=corr0 + i)
        assert ack.kind == rp.PUBLISH_ACK, ack
    return ack["seq"]


def test_holes_from_another_daemon_reach_live_subscribers_in_order(make_daemon, pg_db):
    a = make_daemon(shards=2, storage="postgres", conninfo=pg_db.conninfo)
    b = make_daemon(shards=2, storage="postgres", conninfo=pg_db.conninfo)
    sub, pa, pb = conn(a), conn(a), conn(b)
    subscribe(sub, "holes", 1)
    last = 0
    for round_ in range(5):
        publish(pa, "holes", 3, 1000 * round_ + 1)
        # B's commits are invisible to A until A's next commit shows the hole.
        publish(pb, "holes", 4, 1000 * round_ + 500)
        last = publish(pa, "holes", 2, 1000 * round_ + 900)
    seqs = collect(sub, "holes", last, 10)
    assert seqs == list(range(1, last + 1)), seqs


def test_quiet_topic_is_repaired_by_a_head_read_without_a_next_publish(make_daemon, pg_db):
    a = make_daemon(shards=2, storage="postgres", conninfo=pg_db.conninfo)
    b = make_daemon(shards=2, storage="postgres", conninfo=pg_db.conninfo)
    first, pa, pb = conn(a), conn(a), conn(b)
    subscribe(first, "quiet", 1)
    publish(pa, "quiet", 2, 1)
    last = publish(pb, "quiet", 3, 100)
    # Nothing more is published on A. A second subscriber's add reads the
    # head on A's owner, which fetches 3..5 for everyone subscribed.
    second = conn(a)
    subscribe(second, "quiet", 7, cursor=0)
    seqs = collect(first, "quiet", last, 5)
    assert seqs == list(range(1, last + 1)), seqs
