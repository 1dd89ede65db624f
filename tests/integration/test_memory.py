"""The daemon's memory stays under the bound it derives from its config
(docs/OPERATIONS.md "Memory", issue 10): with small limits, many
connections are driven to them at once (subscribers that never read until
their send queues overflow, catch-ups whose pending buffers fill while a
publisher writes large messages, publishes to thousands of topics), and
the peak RSS must stay below the logged bound while the daemon keeps
serving."""

import re
import socket
import time

import rbproto as rp
from conftest import RSS_BOUNDS_APPLY

LIMITS = """[limits]
max_connections = 64
max_frame_bytes = 65536
send_queue_bytes = 131072
pending_buffer_bytes = 131072
topics_per_stream = 64
shard_envelopes = 64
shard_block_bytes = 4194304
"""


def conn(d, rcvbuf=None):
    c = rp.Conn("127.0.0.1", d.port, timeout=20)
    if rcvbuf:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    assert c.hello().kind == rp.STARTED
    return c


def hwm_kib(d):
    with open(f"/proc/{d.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def test_peak_rss_stays_under_the_configured_memory_bound(make_daemon):
    d = make_daemon(shards=2, extra=LIMITS)
    m = re.search(r"memory bound: (\d+) MiB per shard, (\d+) MiB for 2 shards", d.log())
    assert m, d.log()
    bound_kib = int(m.group(2)) * 1024
    assert bound_kib < 4 * 1024 * 1024, "small limits give a small bound"
    stuck = [conn(d, rcvbuf=4096) for _ in range(40)]
    for i, c in enumerate(stuck):
        c.mutate(i + 1, i + 1, adds=[("mem.hot", "now")])
    pub = conn(d)
    payload = b"x" * 8000
    corr = 0
    readers = []
    for burst in range(10):
        out = bytearray()
        for _ in range(200):
            corr += 1
            out += rp.encode_publish(corr, "mem.hot", payload)
        pub.send(bytes(out))
        # Catch-ups from the start while the topic grows: pending buffers.
        if burst < 6:
            r = conn(d, rcvbuf=4096)
            r.mutate(1, 1, adds=[("mem.hot", 0)])
            readers.append(r)
        acked = 0
        while acked < 200:
            f = pub.recv(20)
            if f.kind in (rp.PUBLISH_ACK, rp.ERROR):
                acked += 1
    # 5000 topics, in bursts of 1000: the acks of one burst fit the
    # publisher's 128 KiB send queue even when this test reads them late on
    # a loaded machine (a publisher that leaves more unread is closed).
    for burst in range(5):
        out = bytearray()
        for i in range(burst * 1000, (burst + 1) * 1000):
            corr += 1
            out += rp.encode_publish(corr, f"mem.t{i}", b"small")
        pub.send(bytes(out))
        answered = 0
        while answered < 1000:
            f = pub.recv(20)
            if f.kind in (rp.PUBLISH_ACK, rp.ERROR):
                answered += 1
    time.sleep(0.5)
    peak = hwm_kib(d)
    # The daemon still serves a new client.
    fresh = conn(d)
    assert fresh.publish("mem.check", "ok", corr=1).kind == rp.PUBLISH_ACK
    for c in stuck + readers + [pub, fresh]:
        c.close()
    if RSS_BOUNDS_APPLY:
        assert peak < bound_kib, f"peak RSS {peak} KiB over the bound {bound_kib} KiB"
    assert peak > 0
    # The limits were reached, not just approached.
    assert d.log().count("subscriber too slow") >= 20, d.log()[-3000:]
