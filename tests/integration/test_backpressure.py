"""Nothing committed is lost when the daemon's inner queues are full
(DESIGN G4, issue 10): with the queues between shards cut to a few slots
through [limits] shard_queue_slots, many topics are published unpaced from
one shard while another shard's stream subscribes to all of them; every
acknowledged message must reach the stream exactly once, in seq order per
topic, and every publish must be answered, so the publisher's half-close
completes.

No publish is refused for lack of room inside the daemon either: when a
shard's envelopes are all out, or a connection has
RB_CONN_PUBLISHES_IN_FLIGHT_MAX publishes awaiting their ack, the server
stops reading the publisher (TCP flow control pushes back) and reads on
when room comes back, so every publish is acked, in order."""

import subprocess
import threading
import time

import pytest

import rbproto
import rbtransport as rt
from conftest import BUILD, free_port
from rbproto import Conn

# common/limits.h: RB_CONN_PUBLISHES_IN_FLIGHT_MAX
PUBLISHES_IN_FLIGHT_MAX = 65536

TOPICS = 1500
MESSAGES = 15000
WINDOW = 2000


def _subscribe_all(sub, topics):
    sub.hello()
    sub.mutate(1, 1, adds=[(t, "now") for t in topics])
    seen_live = set()
    while True:
        f = sub.recv(10)
        if f.kind == rbproto.TOPICS_LIVE:
            seen_live.update(f["topics"])
        elif f.kind == rbproto.CATCHUP_COMPLETE:
            break
        else:
            raise AssertionError(f"unexpected frame while subscribing: {f}")
    assert seen_live == set(topics)


def _publish_all(pub, topics):
    """Publishes MESSAGES round robin with up to WINDOW unanswered; returns
    {corr: (topic, seq)} of the acks and the count of explicit refusals."""
    acked = {}
    refused = 0
    sent = 0
    answered = 0
    out = bytearray()
    while answered < MESSAGES:
        while sent < MESSAGES and sent - answered < WINDOW:
            corr = sent + 1
            out += rbproto.encode_publish(corr, topics[sent % len(topics)], b"m%07d" % sent)
            sent += 1
        if out:
            pub.send(bytes(out))
            out.clear()
        f = pub.recv(20)
        if f.kind == rbproto.PUBLISH_ACK:
            acked[f.corr] = (f["topic"], f["seq"])
        elif f.kind == rbproto.ERROR and f.corr != 0:
            assert f["code"] == rbproto.RESOURCE_EXHAUSTED, f
            refused += 1
        else:
            raise AssertionError(f"unexpected frame for the publisher: {f}")
        answered += 1
    return acked, refused


def test_full_shard_queues_lose_no_committed_message(make_daemon):
    d = make_daemon(shards=2, extra="[limits]\nshard_queue_slots = 2\n")
    _full_queues_lose_nothing(d)


def test_full_queues_and_four_envelopes_lose_nothing_and_refuse_nothing(make_daemon):
    """The same with four envelopes per shard: the publisher is paused
    whenever they are all out, never refused."""
    d = make_daemon(shards=2, extra="[limits]\nshard_queue_slots = 2\nshard_envelopes = 4\n")
    _full_queues_lose_nothing(d)


def _full_queues_lose_nothing(d):
    topics = [f"bp.{i}" for i in range(TOPICS)]
    # The acceptor spreads connections over the least-loaded shards: the
    # subscriber and the publisher land on different shards.
    with Conn(port=d.port, timeout=20) as sub, Conn(port=d.port, timeout=20) as pub:
        _subscribe_all(sub, topics)
        assert pub.hello().kind == rbproto.STARTED
        acked, refused = _publish_all(pub, topics)
        # A full shard pauses the publisher instead of refusing it.
        assert refused == 0, f"{refused} publishes refused"
        assert len(acked) == MESSAGES
        want = {}
        for topic, seq in acked.values():
            want.setdefault(topic, set()).add(seq)
        got = {}
        deadline = time.monotonic() + 60
        total = sum(len(s) for s in want.values())
        count = 0
        while count < total and time.monotonic() < deadline:
            try:
                f = sub.recv(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            if f.kind == rbproto.PING:
                sub.pong(f["nonce"])
                continue
            assert f.kind == rbproto.MESSAGES, f
            for topic, seq, _ in f["items"]:
                seqs = got.setdefault(topic, [])
                assert not seqs or seq == seqs[-1] + 1, f"{topic}: {seq} after {seqs[-1:]}"
                seqs.append(seq)
                count += 1
        missing = {t: sorted(s - set(got.get(t, []))) for t, s in want.items()
                   if s - set(got.get(t, []))}
        assert not missing, f"{sum(len(v) for v in missing.values())} acked messages " \
                            f"never arrived, e.g. {list(missing.items())[:3]}"
        for t, seqs in got.items():
            assert len(seqs) == len(set(seqs)), f"{t}: duplicates"
            assert set(seqs) == want.get(t, set()), f"{t}: delivered an unacked seq"
        # Every publish was answered: the half-close completes with CLOSE ok.
        pub.send_close()
        f = pub.recv_until(lambda f: f.kind == rbproto.CLOSE, 30)
        assert f["status"] == rbproto.OK


def test_acks_without_envelopes_still_reach_every_publisher(make_daemon):
    """With four envelopes per shard the owners mostly have none left for
    acks: each ack then rides home in its publish's own envelope. Every
    publish is answered (none silently dropped, no leak of in-flight
    publishes: the half-close completes), and each acked seq is unique."""
    d = make_daemon(shards=2, extra="[limits]\nshard_envelopes = 4\n")
    topics = [f"env.{i}" for i in range(50)]
    conns = [Conn(port=d.port, timeout=20) for _ in range(2)]
    try:
        for c in conns:
            assert c.hello().kind == rbproto.STARTED
        results = [_publish_all(c, topics) for c in conns]
        seqs = {}
        for acked, refused in results:
            assert refused == 0, f"{refused} publishes refused"
            assert len(acked) == MESSAGES
            for topic, seq in acked.values():
                assert seq not in seqs.setdefault(topic, set()), f"{topic}: seq {seq} twice"
                seqs[topic].add(seq)
        # Every seq of every topic was handed out once: 1..n, no hole.
        for topic, got in seqs.items():
            assert got == set(range(1, len(got) + 1)), f"{topic}: seqs not dense"
        for c in conns:
            c.send_close()
            f = c.recv_until(lambda f: f.kind == rbproto.CLOSE, 10)
            assert f["status"] == rbproto.OK
    finally:
        for c in conns:
            c.close()


def _pipeline_without_reading(conn, count, topics):
    """Sends count publishes (round robin over topics) from another thread
    without reading anything, then a PING and a half-close; meanwhile reads
    every answer. Returns the frames read up to the server's CLOSE."""
    out = bytearray()
    for i in range(count):
        out += rbproto.encode_publish(i + 1, topics[i % len(topics)], b"p%07d" % i)
    out += rbproto.encode_ping(0, 0xfeed)
    out += rbproto.encode_close(0, rbproto.OK)
    sent = []

    def send():
        # The server stops reading while it is paused: sendall blocks then,
        # so it runs beside the reader (which drains the acks meanwhile).
        conn.sock.sendall(bytes(out))
        sent.append(True)

    writer = threading.Thread(target=send, daemon=True)
    # The reader starts only once everything is sent: acks pile up in the
    # server's send queue, as for a client that writes before it reads.
    writer.start()
    writer.join(120)
    assert sent, "the server did not take all publishes within 120 s"
    frames = []
    deadline = time.monotonic() + 120
    while True:
        f = conn.recv(max(1.0, deadline - time.monotonic()))
        frames.append(f)
        if f.kind == rbproto.CLOSE:
            return frames


def _check_pipelined(frames, count, topics):
    acks = {}
    pong = None
    for i, f in enumerate(frames[:-1]):
        if f.kind == rbproto.PONG:
            assert f["nonce"] == 0xfeed
            pong = i
            continue
        assert f.kind == rbproto.PUBLISH_ACK, f"not an ack: {f}"
        assert f.corr not in acks, f"corr {f.corr} acked twice"
        acks[f.corr] = (f["topic"], f["seq"])
    assert frames[-1]["status"] == rbproto.OK, frames[-1]
    assert pong is not None, "the PING behind the publishes was not answered"
    assert sorted(acks) == list(range(1, count + 1))
    # One publisher: each topic's seqs follow its publish order, densely.
    last = {}
    for corr in range(1, count + 1):
        topic, seq = acks[corr]
        assert topic == topics[(corr - 1) % len(topics)]
        assert seq == last.get(topic, 0) + 1, f"{topic}: seq {seq} after {last.get(topic)}"
        last[topic] = seq


def test_pipelined_publisher_past_in_flight_limit_is_paused_not_refused(make_daemon):
    """Twice RB_CONN_PUBLISHES_IN_FLIGHT_MAX publishes pipelined without
    reading, on a shard with four envelopes: the intake pauses the
    publisher (for envelopes, and for acks once the limit is reached)
    instead of refusing; every publish is acked once, in order, then the
    PING and the half-close behind them are answered."""
    d = make_daemon(shards=2, extra="[limits]\nshard_envelopes = 4\n")
    topics = [f"pl.{i}" for i in range(8)]
    count = 2 * PUBLISHES_IN_FLIGHT_MAX
    with Conn(port=d.port, timeout=120) as pub:
        assert pub.hello().kind == rbproto.STARTED
        frames = _pipeline_without_reading(pub, count, topics)
    _check_pipelined(frames, count, topics)


@pytest.mark.parametrize("kind", ["ws", "tls", "wss"])
def test_pipelined_publisher_on_layered_links_is_paused_not_refused(make_daemon, tmp_path, kind):
    """The same pause under the tls and ws layers: what the layers decoded
    behind the held publish waits in the session, later socket bytes wait
    unread, and all of it is answered in order."""
    certs = rt.Certs(tmp_path) if kind in ("tls", "wss") else None
    port = free_port()
    d = make_daemon(shards=2, extra="[limits]\nshard_envelopes = 4\n",
                    listeners=rt.listener(kind, port, certs))
    topics = [f"ly.{i}" for i in range(8)]
    count = 20000
    with rt.Conn(kind, port, certs, timeout=120) as pub:
        assert pub.hello().kind == rbproto.STARTED
        frames = _pipeline_without_reading(pub, count, topics)
    _check_pipelined(frames, count, topics)


def test_pipelined_publisher_on_quic_is_paused_not_refused(make_daemon, tmp_path):
    """The same over QUIC (through quic_relay, a TCP-to-QUIC relay on
    libringbus's quic transport): while the session holds a publish, the
    link keeps what the engine delivers and does not extend the stream's
    credit, so the relay's writes stall; every publish is acked in order."""
    certs = rt.Certs(tmp_path)
    port = free_port()
    d = make_daemon(shards=2, extra="[limits]\nshard_envelopes = 4\n",
                    listeners=rt.listener("quic", port, certs))
    relay = subprocess.Popen([str(BUILD / "quic_relay"), f"quic://127.0.0.1:{port}",
                              str(certs.ca)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = relay.stdout.readline().decode()
        assert line.startswith("port "), line
        topics = [f"qp.{i}" for i in range(8)]
        count = 20000
        with Conn(port=int(line.split()[1]), timeout=120) as pub:
            assert pub.hello().kind == rbproto.STARTED
            frames = _pipeline_without_reading(pub, count, topics)
        _check_pipelined(frames, count, topics)
    finally:
        relay.terminate()
        relay.communicate(timeout=20)
