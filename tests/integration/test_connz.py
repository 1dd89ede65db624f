"""GET /v1/connz (issue 14): a randomized run of clients over tcp, tls, ws
and wss that publish and subscribe, then connz must show exactly what the
test did (connections, per-connection messages in and out, topics, names),
its paging and sorting must hold their invariants, bad query parameters get
400 with a precise message, and an oversize limit is clamped. `ringbus top
--once` must count the same connections."""

import json
import os
import random
import time

import pytest

import rbproto as rp
import rbtransport as rt
from conftest import free_port, run_cli
from test_http_admin import get, http_listener, path

KINDS = ("tcp", "tls", "ws", "wss")
SORTS = {
    "bytes_to": "out_bytes",
    "bytes_from": "in_bytes",
    "msgs_to": "out_msgs",
    "msgs_from": "in_msgs",
    "pending": "pending_bytes",
    "subs": "topics",
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return rt.Certs(tmp_path_factory.mktemp("certs"))


def start(make_daemon, certs):
    ports = {k: free_port() for k in KINDS + ("http",)}
    lst = "".join(rt.listener(k, ports[k], certs) for k in KINDS) + http_listener(ports["http"])
    # The churn test opens connections from one address faster than the
    # default connection_rate_per_address allows; limits are not its subject.
    d = make_daemon(listeners=lst, extra="[limits]\nconnection_rate_per_address = 1_000_000\n")
    d.ports = ports
    return d


def connz(d, query=""):
    status, headers, body = path(d.ports["http"], "/v1/connz" + query)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def topicz(d, query=""):
    status, headers, body = path(d.ports["http"], "/v1/topicz" + query)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def wait_for(pred, what, timeout=5.0):
    """connz reflects a connection at its last frame or send pass: poll
    briefly for what the test already saw happen."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_connz_matches_a_randomized_run(make_daemon, certs):
    seed = int(os.environ.get("RINGBUS_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"seed {seed}")
    msg = f"seed {seed}"
    d = start(make_daemon, certs)
    clients = []  # (conn, kind, name, topics, publishes)
    for i in range(rng.randint(4, 8)):
        kind = rng.choice(KINDS)
        c = rt.Conn(kind, d.ports[kind], certs, timeout=10)
        name = f"c{i}-{kind}"
        assert c.hello(name=name).kind == rp.STARTED
        topics = sorted(rng.sample(["t.a", "t.b", "t.c", "t.d"], rng.randint(0, 3)))
        if topics:
            c.mutate(1, 1, adds=[(t, "now") for t in topics])
            c.recv_until(lambda f: f.kind == rp.CATCHUP_COMPLETE, 10)
        clients.append([c, kind, name, topics, 0])
    # Every client publishes a random number of messages to random topics;
    # each subscriber of a topic receives every one of them.
    expect_out = {i: 0 for i in range(len(clients))}
    heads = {}
    corr = 100
    for i, cl in enumerate(clients):
        for _ in range(rng.randint(0, 12)):
            t = rng.choice(["t.a", "t.b", "t.c", "t.d"])
            corr += 1
            ack = cl[0].publish(t, f"m{corr}", corr=corr)
            assert ack.kind == rp.PUBLISH_ACK, msg
            heads[t] = max(heads.get(t, 0), ack["seq"])
            cl[4] += 1
            for j, other in enumerate(clients):
                if t in other[3]:
                    expect_out[j] += 1
    for j, cl in enumerate(clients):
        got = 0
        for f in cl[0].pending:
            if f.kind == rp.MESSAGES:
                got += len(f["items"])
        cl[0].pending.clear()
        while got < expect_out[j]:
            f = cl[0].recv(10)
            if f.kind == rp.MESSAGES:
                got += len(f["items"])
        assert got == expect_out[j], msg

    def settled():
        z = connz(d, "?subs=1&limit=1000&state=open")
        byname = {c["name"]: c for c in z["connections"]}
        ok = all(c[2] in byname and byname[c[2]]["out_msgs"] == expect_out[j]
                 for j, c in enumerate(clients))
        return z if ok and z["total"] == len(clients) else None

    z = wait_for(settled, f"connz never matched the run ({msg})")
    assert z["limit"] == 128 and z["limit_clamped"] is True and z["limit_max"] == 128, z
    assert z["num_connections"] == len(clients) == len(z["connections"]), msg
    byname = {c["name"]: c for c in z["connections"]}
    for j, (c, kind, name, topics, pubs) in enumerate(clients):
        e = byname[name]
        assert e["transport"] == kind, (msg, e)
        assert e["state"] == "open" and e["identity"] == "anonymous", (msg, e)
        assert e["peer"].startswith("127.0.0.1:") or e["peer"].startswith("[127.0.0.1]:"), e
        assert e["in_msgs"] == pubs, (msg, e)
        assert e["out_msgs"] == expect_out[j], (msg, e)
        assert e["topics"] == len(topics), (msg, e)
        assert sorted(e["topic_names"]) == topics and e["topic_names_truncated"] is False, e
        # HELLO, the MUTATE if any, and the publishes.
        assert e["in_frames"] == 1 + (1 if topics else 0) + pubs, (msg, e)
        assert e["out_frames"] >= 1 + pubs and e["in_bytes"] > 0 and e["out_bytes"] > 0, e
        assert e["age_ms"] >= 0 and e["pending_bytes"] >= 0, e
    # topicz: every topic published to, with the head seq of its acks, the
    # count of its publishes and its subscribers among the clients.
    tz = topicz(d, "?limit=1000")
    assert tz["limit"] == 256 and tz["limit_clamped"] is True and tz["sort"] == "name", tz
    assert tz["untracked_topics"] == 0 and tz["subscribers_exact"] is True, tz
    subscribed = {t for c in clients for t in c[3]}
    listed = {t["topic"]: t for t in tz["topics"]}
    assert [t["topic"] for t in tz["topics"]] == sorted(listed), tz
    # The owner learns a subscribed topic's head when it is added.
    assert set(listed) == set(heads) | subscribed, (msg, listed.keys(), heads, subscribed)
    for name, t in listed.items():
        assert t["head"] == heads.get(name, 0), (msg, name, t, heads)
        assert t["publishes"] == heads.get(name, 0), (msg, name, t)
        assert t["subscribers"] == sum(1 for c in clients if name in c[3]), (msg, name, t)
        assert t["publish_rate"] >= 0 and t["owner_shard"] in (0, 1), t
    # Without subs=1 there are no names; state=any adds the http scrape.
    z = connz(d)
    assert "topic_names" not in z["connections"][0]
    assert z["total"] >= len(clients) + 1 and z["state"] == "any" and z["limit"] == 64
    assert any(c["transport"] == "http" for c in z["connections"])
    # A client that leaves is gone from the list.
    gone = clients.pop()
    gone[0].close()
    def sessions():
        return [c for c in connz(d, "?limit=128")["connections"] if c["transport"] != "http"]

    wait_for(lambda: len(sessions()) == len(clients), f"close not seen ({msg})")
    # ringbus top --once counts the same connections (the http ones apart)
    # and lists them as consumers.
    r = run_cli("top", "--once", "--admin", f"http://127.0.0.1:{d.ports['http']}",
                "--interval", "0.2", "--rows", "100")
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    assert f"connections: {len(clients)} (" in r.stdout, r.stdout
    for cl in clients:
        assert cl[2] in r.stdout, (cl[2], r.stdout)
    assert gone[2] not in r.stdout
    for cl in clients:
        cl[0].close()


def test_connz_paging_and_sorting(make_daemon, certs):
    seed = int(os.environ.get("RINGBUS_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"seed {seed}")
    d = start(make_daemon, certs)
    conns = []
    for i in range(rng.randint(5, 9)):
        c = rp.Conn("127.0.0.1", d.ports["tcp"], timeout=10)
        c.hello(name=f"p{i}")
        for k in range(rng.randint(0, 5)):
            assert c.publish("s.t", "x" * rng.randint(1, 300), corr=k + 10).kind == rp.PUBLISH_ACK
        conns.append(c)
    full = connz(d, "?state=open&limit=128")
    ids = [c["cid"] for c in full["connections"]]
    assert ids == sorted(ids) and len(ids) == len(conns) and full["sort"] == "cid"
    # Pages of a random size cover the list once, in order.
    size = rng.randint(1, 3)
    paged = []
    for off in range(0, len(ids) + size, size):
        z = connz(d, f"?state=open&offset={off}&limit={size}")
        assert z["offset"] == off and z["limit"] == size and z["total"] == len(ids)
        assert len(z["connections"]) == max(0, min(size, len(ids) - off))
        paged += [c["cid"] for c in z["connections"]]
    assert paged == ids, f"seed {seed}"
    for sort, field in SORTS.items():
        z = connz(d, f"?state=open&sort={sort}")
        vals = [(c[field], c["cid"]) for c in z["connections"]]
        assert vals == sorted(vals, key=lambda v: (-v[0], v[1])), (sort, vals)
    z = connz(d, "?state=open&sort=age")
    ages = [c["age_ms"] for c in z["connections"]]
    assert ages == sorted(ages, reverse=True), ages
    # A bare connection still waiting for HELLO is in the handshake state
    # (so is the http connection that asks: an http link has no HELLO).
    def waiting():
        return [c for c in connz(d, "?state=handshake")["connections"] if c["transport"] == "tcp"]

    assert waiting() == []
    raw = rp.Conn("127.0.0.1", d.ports["tcp"], timeout=10)
    wait_for(lambda: len(waiting()) == 1, "handshake not listed")
    raw.close()
    for c in conns:
        c.close()


def test_topicz_paging_and_sorting(make_daemon, certs):
    seed = int(os.environ.get("RINGBUS_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"seed {seed}")
    d = start(make_daemon, certs)
    counts = {f"z.{i}": rng.randint(1, 6) for i in range(rng.randint(3, 9))}
    with rp.Conn("127.0.0.1", d.ports["tcp"], timeout=10) as c:
        c.hello()
        corr = 1
        for name, n in counts.items():
            for _ in range(n):
                corr += 1
                assert c.publish(name, "x", corr=corr).kind == rp.PUBLISH_ACK
        full = topicz(d)
        assert {t["topic"]: t["head"] for t in full["topics"]} == counts, f"seed {seed}"
        size = rng.randint(1, 4)
        paged = []
        for off in range(0, len(counts) + size, size):
            z = topicz(d, f"?offset={off}&limit={size}")
            assert z["total"] == len(counts) and len(z["topics"]) == max(0, min(size, len(counts) - off))
            paged += [t["topic"] for t in z["topics"]]
        assert paged == sorted(counts), f"seed {seed}"
        for sort, field in (("head", "head"), ("publishes", "publishes"), ("rate", "publish_rate")):
            z = topicz(d, f"?sort={sort}")
            vals = [(t[field], t["topic"]) for t in z["topics"]]
            assert vals == sorted(vals, key=lambda v: (-v[0], v[1])), (sort, vals)
        # Published within the last second: every topic has a rate.
        assert all(t["publish_rate"] > 0 for t in topicz(d)["topics"]), topicz(d)
    for query, reason in (
            ("?sort=subs", 'sort: "subs" is not one of name, head, publishes, rate'),
            ("?state=open", 'unknown parameter "state" (known: offset, limit, sort)'),
            ("?limit=0", 'limit: "0" is not an integer from 1')):
        status, _, body = path(d.ports["http"], "/v1/topicz" + query)
        assert status == 400 and reason in body, (query, status, body)


BAD_QUERIES = [
    ("?limit=0", 'limit: "0" is not an integer from 1 to 4294967295'),
    ("?limit=-1", 'limit: "-1" is not an integer from 1'),
    ("?offset=1x", 'offset: "1x" is not a non-negative integer'),
    ("?offset=99999999999", 'offset: "99999999999" is not a non-negative integer'),
    ("?sort=name", 'sort: "name" is not one of cid, bytes_to, bytes_from, msgs_to, msgs_from, '
                   'pending, age, subs'),
    ("?state=gone", 'state: "gone" is not one of any, handshake, open, draining, closing, closed'),
    ("?subs=yes", 'subs: "yes" is not 0 or 1'),
    ("?color=red", 'unknown parameter "color" (known: offset, limit, sort, state, subs)'),
    ("?limit=5&limit=6", "parameter limit given twice"),
    ("?limit", "parameter \"limit\" has no '=value'"),
    ("?sort=%22%0a", 'sort: "%22%0a" is not one of'),
    ("?x" + "a" * 600 + "=1", "query string longer than 512 bytes"),
]


def test_connz_bad_query_is_400(make_daemon, certs):
    d = start(make_daemon, certs)
    for query, reason in BAD_QUERIES:
        status, _, body = path(d.ports["http"], "/v1/connz" + query)
        assert status == 400 and reason in body, (query, status, body)
    # The HTTP parser already refuses raw control bytes in the target.
    status, _, body = get(d.ports["http"], b"GET /v1/connz?sort=a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400 and "bad request target" in body, body
    assert path(d.ports["http"], "/v1/connz", method="POST")[0] == 405


def test_top_usage_errors(make_daemon, certs):
    r = run_cli("top", "--interval", "0")
    assert r.returncode == 2 and "--interval needs seconds in [0.1, 3600]" in r.stderr, r.stderr
    r = run_cli("top", "--admin", "tcp://127.0.0.1:1")
    assert r.returncode == 2 and "--admin needs http://host[:port]" in r.stderr, r.stderr
    r = run_cli("top", "--rows", "101")
    assert r.returncode == 2 and "--rows needs an integer in [1, 100]" in r.stderr, r.stderr
    # Nobody listening: a runtime failure that says so.
    r = run_cli("--timeout", "2", "top", "--once", "--admin", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "cannot connect to the admin listener" in r.stderr, r.stderr
    assert "top [--admin URL]" in run_cli("--help").stdout


def test_connz_while_connections_churn(make_daemon, certs):
    """Connections open, publish, subscribe and close on both shards while
    connz and topicz are read in a loop: every answer is whole JSON whose
    counts agree with themselves (slots are copied under their seqlock,
    never torn), and the daemon log stays clean (ASan/TSan builds)."""
    import threading

    seed = int(os.environ.get("RINGBUS_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"seed {seed}")
    d = start(make_daemon, certs)
    stop = threading.Event()
    errors = []

    def churn(r):
        try:
            while not stop.is_set():
                c = rp.Conn("127.0.0.1", d.ports["tcp"], timeout=10)
                c.hello(name=f"churn{r.randrange(1000)}")
                if r.random() < 0.5:
                    c.mutate(1, 1, adds=[(f"ch.{r.randrange(5)}", "now")])
                c.publish(f"ch.{r.randrange(5)}", "x", corr=9, wait=r.random() < 0.5)
                c.close()
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=churn, args=(random.Random(rng.random()),))
               for _ in range(3)]
    for t in threads:
        t.start()
    answers = 0
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            sort = rng.choice(["cid"] + list(SORTS) + ["age"])
            z = connz(d, f"?sort={sort}&subs={rng.randint(0, 1)}&limit={rng.randint(1, 200)}")
            assert z["num_connections"] == len(z["connections"]) <= z["limit"], z
            assert len({c["cid"] for c in z["connections"]}) == len(z["connections"]), z
            for c in z["connections"]:
                assert c["state"] in ("handshake", "open", "draining", "closing", "closed"), c
                if "topic_names" in c and not c["topic_names_truncated"]:
                    assert len(c["topic_names"]) <= max(c["topics"], 1), c
            tz = topicz(d, f"?sort={rng.choice(['name', 'head', 'publishes', 'rate'])}")
            assert tz["num_topics"] == len(tz["topics"]), tz
            answers += 2
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors
    assert answers > 10


def test_connz_names_the_signed_in_identity(make_daemon, tmp_path):
    """Under auth.mode = "required", connz shows each connection's token
    sub (made by PyJWT), cut to 63 bytes at a UTF-8 character boundary."""
    import jwt

    secret = tmp_path / "jwt.secret"
    secret.write_text("connz-identity-secret-0123456789abcdef\n")
    tcp, http = free_port(), free_port()
    extra = (f'[auth]\nmode = "required"\n[[auth.jwt_key]]\nalgorithm = "HS256"\n'
             f'secret_file = "{secret}"\n')
    d = make_daemon(listeners=rt.listener("tcp", tcp) + http_listener(http), extra=extra)
    d.ports = {"http": http}
    subs = ["alice", "svc.billing-01", "ü" * 40]
    conns = []
    for sub in subs:
        tok = jwt.encode({"sub": sub, "exp": int(time.time()) + 600},
                         "connz-identity-secret-0123456789abcdef", algorithm="HS256")
        c = rp.Conn("127.0.0.1", tcp, timeout=10)
        assert c.hello(creds=rp.creds_token(tok)).kind == rp.STARTED
        conns.append(c)
    z = wait_for(lambda: (lambda z: z if z["total"] == len(subs) else None)(
        connz(d, "?state=open")), "sessions not open")
    got = [c["identity"] for c in z["connections"]]
    # 40 two-byte characters are 80 bytes: cut to at most 63 at a character
    # boundary, so 31 of them, still UTF-8.
    assert got == subs[:2] + ["ü" * 31], got
    for c in conns:
        c.close()


def test_top_live_redraws_until_interrupted(make_daemon, certs):
    import signal
    import subprocess

    from conftest import RINGBUS

    d = start(make_daemon, certs)
    c = rp.Conn("127.0.0.1", d.ports["tcp"], timeout=10)
    c.hello(name="live-one")
    p = subprocess.Popen([str(RINGBUS), "top", "--admin", f"http://127.0.0.1:{d.ports['http']}",
                          "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    time.sleep(1.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    frames = out.split("\033[H\033[2J")
    assert len(frames) >= 3, out  # redrawn at least twice
    # From the second frame on, rates over one interval are shown.
    assert "rates over 0." in frames[-1] and "connections: 1 (tcp 1," in frames[-1], frames[-1]
    assert "live-one" in frames[-1]
    c.close()
