"""The `http` listener and the admin routes (issue 14): /healthz, /readyz,
/metrics in the Prometheus text format (parsed with prometheus_client's
own parser) whose counters match what the test did in a randomized run,
/v1/varz as JSON, and bad methods, paths and oversized heads answered with
precise statuses on a connection that is then closed."""

import json
import os
import random
import socket
import time

from prometheus_client.parser import text_string_to_metric_families

import rbproto as rp
from conftest import free_port


def http_listener(port):
    return f'[[listener]]\ntransport = "http"\naddress = "127.0.0.1"\nport = {port}\n'


def tcp_listener(port):
    return f'[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\nport = {port}\n'


def start(make_daemon):
    tcp, http = free_port(), free_port()
    d = make_daemon(listeners=tcp_listener(tcp) + http_listener(http))
    d.port, d.http_port = tcp, http
    return d


def get(port, raw):
    """Sends raw bytes, returns (status, headers, body) of the answer; the
    server closes after it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(raw)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    assert int(headers["content-length"]) == len(body), (headers, len(body))
    return status, headers, body.decode()


def path(port, p, method="GET"):
    return get(port, f"{method} {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def scrape(port):
    status, headers, body = path(port, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test_health_ready_and_varz(make_daemon):
    d = start(make_daemon)
    assert path(d.http_port, "/healthz")[0:3:2] == (200, "ok\n")
    assert path(d.http_port, "/readyz")[0:3:2] == (200, "ready\n")
    status, headers, body = path(d.http_port, "/v1/varz")
    assert status == 200 and headers["content-type"] == "application/json"
    varz = json.loads(body)
    assert varz["version"].startswith("0.") and varz["shards"] == 2 and varz["ready"] is True
    assert {(l["transport"], l["port"]) for l in varz["listeners"]} == {
        ("tcp", d.port), ("http", d.http_port)}
    assert varz["limits"]["max_frame_bytes"] > 0


def test_metrics_count_what_the_test_did(make_daemon):
    seed = int(os.environ.get("RINGBUS_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    d = start(make_daemon)
    before = scrape(d.http_port)
    subs = []
    for i in range(rng.randint(2, 4)):
        c = rp.Conn("127.0.0.1", d.port, timeout=10)
        c.hello()
        c.mutate(1, 1, adds=[("m.topic", "now")])
        c.recv_until(lambda f: f.kind == rp.TOPICS_LIVE, 10)
        subs.append(c)
    pub = rp.Conn("127.0.0.1", d.port, timeout=10)
    pub.hello()
    n = rng.randint(5, 60)
    for i in range(n):
        assert pub.publish("m.topic", f"p{i}", corr=i + 1).kind == rp.PUBLISH_ACK
    for c in subs:
        got = 0
        while got < n:
            f = c.recv(10)
            if f.kind == rp.MESSAGES:
                got += len(f["items"])
        assert got == n
    after = scrape(d.http_port)
    msg = f"seed {seed}"
    accepted = (value(after, "ringbus_connections_accepted_total", transport="tcp")
                - value(before, "ringbus_connections_accepted_total", transport="tcp"))
    assert accepted == len(subs) + 1, msg
    assert value(after, "ringbus_connections", transport="tcp") == len(subs) + 1, msg
    # The scrape itself is an open http connection.
    assert value(after, "ringbus_connections", transport="http") >= 1, msg
    ok = (value(after, "ringbus_publishes_total", outcome="ok")
          - value(before, "ringbus_publishes_total", outcome="ok"))
    assert ok == n, msg
    delivered = (value(after, "ringbus_deliveries_total")
                 - value(before, "ringbus_deliveries_total"))
    assert delivered == n * len(subs), msg
    assert value(after, "ringbus_frames_received_total") >= n + 2 * len(subs), msg
    assert value(after, "ringbus_shards") == 2
    assert value(after, "ringbus_ready") == 1
    assert value(after, "ringbus_process_resident_memory_bytes") > 1 << 20
    assert value(after, "ringbus_process_open_fds") > 4
    for s in ("0", "1"):
        assert value(after, "ringbus_loop_turns_total", shard=s) > 0
    for c in subs + [pub]:
        c.close()


def test_bad_requests_get_precise_statuses(make_daemon):
    d = start(make_daemon)
    assert path(d.http_port, "/metrics", method="POST")[0] == 405
    status, _, body = path(d.http_port, "/nope")
    assert status == 404 and "no such path" in body
    # An http listener has no WebSocket endpoint.
    upgrade = (b"GET /ringbus HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert get(d.http_port, upgrade)[0] == 404
    big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n"
    assert get(d.http_port, big)[0] == 431
    assert get(d.http_port, b"GET\x01/ HTTP/1.1\r\n\r\n")[0] == 400
    # The daemon still serves, and a ringbus HELLO on the http port is
    # not a session.
    assert path(d.http_port, "/healthz")[0] == 200
    assert get(d.http_port, rp.encode_hello(1, name="x"))[0] == 400


def buckets(samples, name):
    """The (le, count) pairs of a histogram, in le order."""
    out = sorted((float(dict(k)["le"]), v) for (n, k), v in samples.items()
                 if n == name + "_bucket")
    assert out and out[-1][0] == float("inf"), name
    return out


def test_metrics_sent_commits_and_catchup(make_daemon):
    """Frames and bytes sent, the commit histograms, catch-up rows and
    waves, connection states and busy time match a randomized run."""
    seed = int(os.environ.get("RINGBUS_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    msg = f"seed {seed}"
    d = start(make_daemon)
    before = scrape(d.http_port)
    pub = rp.Conn("127.0.0.1", d.port, timeout=10)
    pub.hello()
    n = rng.randint(5, 80)
    for i in range(n):
        assert pub.publish("h.topic", f"p{i}" * rng.randint(1, 20), corr=i + 1).kind == \
            rp.PUBLISH_ACK
    # Readers from random cursors: their rows come from storage (catch-up).
    readers, history = [], 0
    for k in range(rng.randint(1, 4)):
        cursor = rng.randint(0, n - 1)
        c = rp.Conn("127.0.0.1", d.port, timeout=10)
        c.hello()
        c.mutate(1, 7, adds=[("h.topic", cursor)])
        got = 0
        while True:
            f = c.recv(10)
            if f.kind == rp.MESSAGES:
                got += len(f["items"])
            elif f.kind == rp.CATCHUP_COMPLETE:
                break
        assert got == n - cursor, msg
        history += got
        readers.append(c)
    after = scrape(d.http_port)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("ringbus_catchup_rows_total") == history, msg
    # Each publish got a PUBLISH_ACK frame; each reader at least one
    # MESSAGES frame and a CATCHUP_COMPLETE (plus HELLO answers).
    assert delta("ringbus_frames_sent_total") >= n + 2 * len(readers) + 1 + len(readers), msg
    assert delta("ringbus_sent_bytes_total") > delta("ringbus_frames_sent_total") * 8, msg
    commits = buckets(after, "ringbus_commit_latency_seconds")
    counts = [v for _, v in commits]
    assert counts == sorted(counts), (msg, commits)
    assert value(after, "ringbus_commit_latency_seconds_count") == counts[-1] > 0, msg
    assert 0 <= value(after, "ringbus_commit_latency_seconds_sum") < 10 * counts[-1], msg
    batch = buckets(after, "ringbus_commit_batch_messages")
    assert [v for _, v in batch] == sorted(v for _, v in batch), msg
    # Same batches, and every publish in one of them.
    assert batch[-1][1] == counts[-1] and value(after, "ringbus_commit_batch_messages_sum") == n, msg
    waves = buckets(after, "ringbus_catchup_duration_seconds")
    assert waves[-1][1] - dict(buckets(before, "ringbus_catchup_duration_seconds"))[
        float("inf")] == len(readers), msg
    assert value(after, "ringbus_connection_states", transport="tcp", state="open") == \
        len(readers) + 1, msg
    assert value(after, "ringbus_connection_states", transport="tcp", state="handshake") == 0
    assert value(after, "ringbus_pending_buffer_bytes") == 0, msg
    assert value(after, "ringbus_send_queue_bytes") >= 0
    assert delta("ringbus_publish_duplicates_total") == 0, msg
    assert delta("ringbus_storage_errors_total", op="append") == 0, msg
    assert value(after, "ringbus_storage_reconnects_total") == 0
    for s in ("0", "1"):
        busy = value(after, "ringbus_loop_busy_seconds_total", shard=s)
        assert 0 < busy <= value(after, "ringbus_uptime_seconds") + 1, msg
    for c in readers + [pub]:
        c.close()


def test_storage_errors_and_reconnects_when_postgres_stops(make_daemon, pg_cluster, pg_db):
    tcp, http = free_port(), free_port()
    d = make_daemon(storage="postgres", conninfo=pg_db.conninfo,
                    listeners=tcp_listener(tcp) + http_listener(http))
    c = rp.Conn("127.0.0.1", tcp, timeout=30)
    c.hello()
    assert c.publish("pg.m", "first", corr=1).kind == rp.PUBLISH_ACK
    assert path(http, "/readyz")[0:3:2] == (200, "ready\n")
    before = scrape(http)
    assert value(before, "ringbus_storage_reconnects_total") == 0
    errors = 0
    pg_cluster.stop()
    try:
        for corr in range(2, 12):
            f = c.publish("pg.m", f"v{corr}", corr=corr)
            if f.kind == rp.ERROR:
                assert f["code_name"] == "unavailable", f
                errors += 1
        after = scrape(http)
        # /readyz says why while Postgres is away (every shard lost its
        # connections: the store is unreachable from them).
        status, _, body = path(http, "/readyz")
        assert status == 503 and "storage unreachable from" in body, (status, body)
    finally:
        pg_cluster.start()
    deadline = time.monotonic() + 30
    while path(http, "/readyz")[0] != 200:
        assert time.monotonic() < deadline, path(http, "/readyz")
        time.sleep(0.1)
    assert errors > 0
    assert value(after, "ringbus_publish_errors_total", code="unavailable") == errors
    appends = (value(after, "ringbus_storage_errors_total", op="append")
               - value(before, "ringbus_storage_errors_total", op="append"))
    assert 1 <= appends <= errors, (appends, errors)
    assert value(after, "ringbus_storage_reconnects_total") >= 1
    c.close()
