"""Every feature over every transport: the randomized stream check of the
streams issue with publishers and subscribers spread over tcp, tls, ws and
wss at once (tls and wss on both TLS libraries); libringbus and the CLI over tls://, ws:// and wss:// (with
--ca, refused without it, --insecure only when asked, the host checked
against the certificate and sent as SNI) (DESIGN §1 G1/G3, §2, issue 5)."""

import json
import os
import random
import socket
import ssl
import threading
import types

import pytest

import rbproto as rp
import rbtransport as rt
from conftest import free_port, run_cli
from streamcheck import Driver, Publisher, Subscriber, run_random_streams

KINDS = ("tcp", "tls", "ws", "wss")
# tls and wss listeners on the other TLS library (KINDS' use the default).
WOLF_KINDS = ("tls-wolfssl", "wss-wolfssl")
MIX = KINDS + WOLF_KINDS


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return rt.Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def alld(tmp_path_factory, certs):
    """One daemon with a listener per transport, and a tls listener whose
    certificate names another host."""
    ports = {k: free_port() for k in KINDS + WOLF_KINDS + ("wrongname",)}
    d = tmp_path_factory.mktemp("wrongname")
    wrong = rt.make_leaf(d, (certs.ca, certs.ca_key), "other", cn="other.example",
                         san="DNS:other.example")
    listeners = "".join(rt.listener(k, ports[k], certs) for k in KINDS)
    listeners += "".join(rt.listener(k.split("-")[0], ports[k], certs, tls_library="wolfssl")
                         for k in WOLF_KINDS)
    listeners += rt.listener("tls", ports["wrongname"],
                             types.SimpleNamespace(cert=wrong[0], key=wrong[1]))
    sd = rt.SharedDaemon(tmp_path_factory, "alld", listeners)
    sd.ports = ports
    yield sd
    sd.finish()


def url(alld, kind, host="localhost"):
    return f"{kind}://{host}:{alld.ports[kind]}"


# ---- the randomized stream check on mixed transports ----------------------------------


@pytest.mark.parametrize("seed", [11, 12])
def test_randomized_streams_on_mixed_transports(alld, certs, seed):
    """Publishers and subscribers on all four transports at once; every
    subscriber's view is checked for order, no gap, no duplicate, and
    markers in place, as in test_stream.py."""
    seed = int(os.environ.get("RINGBUS_TEST_SEED", seed))
    rng = random.Random(seed)
    topics = [f"mix{seed}.{i}" for i in range(5)]
    drv = Driver()

    def client(cls, i, name):
        kind = MIX[i % len(MIX)]
        return cls(drv, alld.ports[kind], f"{name}-{kind}",
                   transport=rt.nb_factory(kind.split("-")[0], certs))

    pubs = [client(Publisher, i, f"p{i}") for i in range(len(MIX))]
    subs = [client(Subscriber, i + 1, f"s{i}") for i in range(len(MIX))]
    drv.run_until(lambda: all(p.started for p in pubs), 10, "publishers")
    try:
        run_random_streams(
            drv, pubs, subs, topics, rng, steps=50, publishes_max=20,
            payload=lambda r, p, step: f"{p.name}:{step}:{r.random()}" * r.randint(1, 40))
    except AssertionError as e:
        raise AssertionError(f"seed {seed}: {e}") from e
    finally:
        for c in pubs + subs:
            c.close()


# ---- libringbus and the CLI ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["tls", "ws", "wss"])
def test_cli_pub_then_sub_round_trip(alld, certs, kind):
    u = url(alld, kind)
    topic = f"cli.{kind}"
    out = run_cli("--url", u, "--ca", certs.ca, "pub", topic, input="one\ntwo\nthree\n")
    assert out.returncode == 0, out.stderr
    assert [json.loads(l)["seq"] for l in out.stdout.splitlines()] == [1, 2, 3]
    out = run_cli("--url", u, "--ca", certs.ca, "sub", "--history-only", "--timeout", "10",
                  f"{topic}@1")
    assert out.returncode == 0, out.stderr
    msgs = [json.loads(l) for l in out.stdout.splitlines()]
    assert [(m["seq"], m["data"]) for m in msgs if m["event"] == "message"] == [
        (2, "two"), (3, "three")]
    out = run_cli("--url", u, "--ca", certs.ca, "ping", "--count", "2")
    assert out.returncode == 0 and out.stdout.count("pong from") == 2, out.stderr


def test_cli_streams_a_large_history_over_wss(alld, certs):
    u = url(alld, "wss")
    payloads = [f"{i}:" + "x" * 3000 for i in range(300)]
    out = run_cli("--url", u, "--ca", certs.ca, "pub", "cli.big", input="\n".join(payloads) + "\n")
    assert out.returncode == 0, out.stderr
    out = run_cli("--url", u, "--ca", certs.ca, "sub", "--history-only", "--timeout", "20",
                  "cli.big@0")
    assert out.returncode == 0, out.stderr
    msgs = [json.loads(l) for l in out.stdout.splitlines()]
    assert [m["data"] for m in msgs if m["event"] == "message"] == payloads


@pytest.mark.parametrize("kind", ["tls", "wss"])
def test_cli_refuses_an_untrusted_server_unless_insecure(alld, kind):
    out = run_cli("--url", url(alld, kind), "ping")
    assert out.returncode == 1
    assert "certificate" in out.stderr and "--ca" in out.stderr, out.stderr
    out = run_cli("--url", url(alld, kind), "--insecure", "ping")
    assert out.returncode == 0, out.stderr


def test_cli_checks_the_host_name_and_the_address(alld, certs):
    out = run_cli("--url", url(alld, "tls", "127.0.0.1"), "--ca", certs.ca, "ping")
    assert out.returncode == 0, out.stderr  # the certificate has IP:127.0.0.1
    out = run_cli("--url", f"tls://localhost:{alld.ports['wrongname']}", "--ca", certs.ca, "ping")
    assert out.returncode == 1
    assert "certificate" in out.stderr, out.stderr


def test_cli_sends_the_host_as_sni_and_no_sni_for_an_address(certs):
    """A bare Python TLS server records the SNI the CLI sends."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.cert, certs.key)
    seen = []
    ctx.sni_callback = lambda sock, name, c: seen.append(name)
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve():
        for _ in range(2):
            conn, _ = srv.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True) as t:
                    t.recv(100)
            except (ssl.SSLError, OSError):
                pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    run_cli("--url", f"tls://localhost:{port}", "--ca", certs.ca, "--timeout", "2", "ping")
    run_cli("--url", f"tls://127.0.0.1:{port}", "--ca", certs.ca, "--timeout", "2", "ping")
    th.join(10)
    srv.close()
    assert seen == ["localhost", None]


def test_cli_names_a_refused_websocket_upgrade(alld):
    out = run_cli("--url", f"ws://127.0.0.1:{alld.ports['ws']}/wrong", "ping")
    assert out.returncode == 1
    assert "WebSocket upgrade refused: HTTP/1.1 404 Not Found" in out.stderr, out.stderr


def test_raw_frames_are_identical_on_every_transport(alld, certs):
    """The same request gets the same frames (but server ids and seqs)."""
    replies = {}
    for kind in KINDS:
        c = rt.Conn(kind, alld.ports[kind], certs)
        assert c.hello().kind == rp.STARTED
        c.mutate(5, 5, adds=[("same.t", "now")])
        got = c.recv_all_until(lambda f: f.kind == rp.CATCHUP_COMPLETE)
        replies[kind] = [(f.kind, f.fields) for f in got]
        c.close()
    assert all(r == replies["tcp"] for r in replies.values()), replies


def test_tls_and_websocket_connections_are_handled_on_every_shard(alld, certs):
    """The acceptor hands each fd over before reading it: handshakes and
    upgrades run on the shard that owns the connection."""
    conns = []
    for kind in ("tls", "wss"):
        for _ in range(6):
            c = rt.Conn(kind, alld.ports[kind], certs)
            assert c.hello().kind == rp.STARTED
            conns.append(c)
    log = alld.daemon.log()
    for kind in ("tls", "wss"):
        shards = {line.split("shard ")[1].split(":")[0] for line in log.splitlines()
                  if f"on {kind}://" in line and "accepted fd" in line}
        assert shards == {"0", "1"}, (kind, shards)
    for c in conns:
        c.close()


# ---- both TLS libraries, on both ends ------------------------------------------------


@pytest.mark.parametrize("client_lib", rt.TLS_LIBRARIES)
@pytest.mark.parametrize("kind", ["tls", "wss", "tls-wolfssl", "wss-wolfssl"])
def test_cli_round_trip_for_every_tls_library_pair(alld, certs, kind, client_lib):
    """libringbus on OpenSSL or wolfSSL (--tls-library) against listeners on
    OpenSSL (the default) or wolfSSL: the certificate is verified and the
    session works either way."""
    u = f"{kind.split('-')[0]}://localhost:{alld.ports[kind]}"
    topic = f"libs.{kind}.{client_lib}"
    base = ["--url", u, "--ca", certs.ca, "--tls-library", client_lib]
    out = run_cli(*base, "pub", topic, input="a\nb\n")
    assert out.returncode == 0, out.stderr
    assert [json.loads(l)["seq"] for l in out.stdout.splitlines()] == [1, 2]
    out = run_cli(*base, "sub", "--history-only", "--timeout", "10", f"{topic}@0")
    assert out.returncode == 0, out.stderr
    assert [json.loads(l)["data"] for l in out.stdout.splitlines()
            if json.loads(l)["event"] == "message"] == ["a", "b"]
    # Without the CA the server is not trusted, whichever library checks.
    out = run_cli("--url", u, "--tls-library", client_lib, "ping")
    assert out.returncode != 0
    assert "not trusted" in out.stderr, out.stderr


def test_cli_refuses_an_unknown_tls_library():
    out = run_cli("--tls-library", "gnutls", "ping")
    assert out.returncode == 2, out
    assert "--tls-library needs openssl or wolfssl" in out.stderr
