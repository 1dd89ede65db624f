"""QUIC and HTTP/3 interop: Debian's gtlsclient (ngtcp2's GnuTLS example
client, a third-party implementation) against the QUIC engine and the
HTTP/3 server over real UDP on 127.0.0.1, through the test peer
tests/integration/quic_peer.c (the engine with h3 routes /healthz and
/echo). The daemon's own quic listener is tested in its own module once the
server serves sessions over QUIC links."""

import os
import pathlib
import shutil
import socket
import subprocess
import time

import pytest

import rbtransport as rt
from conftest import BUILD

PEER = BUILD / "quic_peer"
GTLSCLIENT = shutil.which("gtlsclient")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return rt.Certs(tmp_path_factory.mktemp("certs"))


class Peer:
    def __init__(self, certs, *args):
        self.proc = subprocess.Popen(
            [str(PEER), "--cert", str(certs.cert), "--key", str(certs.key), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline().decode()
        assert line.startswith("port "), line
        self.port = int(line.split()[1])

    def stop(self):
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0, err.decode(errors="replace")
        text = err.decode(errors="replace")
        for marker in ("assertion failed", "AddressSanitizer", "runtime error"):
            assert marker not in text, text


@pytest.fixture
def peer(certs):
    p = Peer(certs)
    yield p
    p.stop()


def gtls(port, uri_path, tmp_path, *args, timeout=30):
    """Runs gtlsclient for https://localhost<uri_path>; returns (status,
    body) of the response (status None when none came)."""
    dl = tmp_path / "dl"
    dl.mkdir(exist_ok=True)
    name = uri_path.rstrip("/").rsplit("/", 1)[-1] or "index.html"
    target = dl / name
    if target.exists():
        target.unlink()
    r = subprocess.run(
        [GTLSCLIENT, "--no-quic-dump", "--no-http-dump", "--exit-on-all-streams-close",
         f"--download={dl}", *args, "127.0.0.1", str(port), f"https://localhost{uri_path}"],
        capture_output=True, timeout=timeout)
    out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    status = None
    for line in out.splitlines():
        if "[:status:" in line:
            status = int(line.split("[:status:")[1].strip(" ]"))
    body = target.read_bytes() if target.exists() else None
    return status, body, out


def test_gtlsclient_fetches_healthz_over_h3(peer, tmp_path):
    status, body, out = gtls(peer.port, "/healthz", tmp_path)
    assert status == 200, out[-2000:]
    assert body == b"ok\n"


def test_gtlsclient_posts_a_body_and_gets_it_back(peer, tmp_path):
    data = os.urandom(300_000)
    (tmp_path / "body").write_bytes(data)
    status, body, out = gtls(peer.port, "/echo", tmp_path, "-m", "POST",
                             f"--data={tmp_path / 'body'}")
    assert status == 200, out[-2000:]
    assert body == data


def test_oversized_body_gets_413_and_the_connection_lives(peer, tmp_path):
    # The peer bounds bodies by its stream window (1 MiB), as the daemon
    # bounds them by max_frame_bytes.
    (tmp_path / "big").write_bytes(os.urandom(2_500_000))
    status, body, out = gtls(peer.port, "/echo", tmp_path, "-m", "POST",
                             f"--data={tmp_path / 'big'}")
    assert status == 413, out[-2000:]
    assert b"too large" in body
    status, _, _ = gtls(peer.port, "/healthz", tmp_path)
    assert status == 200


def test_bad_requests_get_4xx(peer, tmp_path):
    status, _, out = gtls(peer.port, "/" + "a" * 3000 + "/x", tmp_path)
    assert status == 414, out[-2000:]
    status, body, _ = gtls(peer.port, "/nothing-here", tmp_path)
    assert status == 404
    assert body == b"not found\n"


def test_many_requests_on_one_connection_reuse_stream_credit(peer, tmp_path):
    # 40 requests over one connection: more than the 16 concurrent
    # streams the server grants, so finished streams must be replaced.
    status, _, out = gtls(peer.port, "/healthz", tmp_path, "-n", "40")
    assert status == 200, out[-2000:]
    assert out.count("[:status: 200]") == 40, out[-3000:]


def test_lossy_path_still_delivers_every_byte(peer, tmp_path):
    data = os.urandom(400_000)
    (tmp_path / "body").write_bytes(data)
    status, body, out = gtls(peer.port, "/echo", tmp_path, "-m", "POST",
                             f"--data={tmp_path / 'body'}", "--tx-loss=0.05",
                             "--rx-loss=0.05", timeout=60)
    assert status == 200, out[-2000:]
    assert body == data


def test_nat_rebinding_mid_transfer_keeps_the_connection(peer, tmp_path):
    data = os.urandom(600_000)
    (tmp_path / "body").write_bytes(data)
    status, body, out = gtls(peer.port, "/echo", tmp_path, "-m", "POST",
                             f"--data={tmp_path / 'body'}", "--change-local-addr=20ms",
                             "--nat-rebinding", "--delay-stream=50ms")
    assert status == 200, out[-2000:]
    assert body == data


def test_retry_validates_the_address(certs, tmp_path):
    p = Peer(certs, "--retry")
    try:
        status, body, out = gtls(p.port, "/healthz", tmp_path)
        assert status == 200, out[-2000:]
        assert "Retry" in out or "retry" in out
    finally:
        p.stop()


def test_unknown_version_is_negotiated_to_v1(peer, tmp_path):
    status, _, out = gtls(peer.port, "/healthz", tmp_path, "--version=0x1a2a3a4a",
                          "--preferred-versions=v1")
    assert status == 200, out[-2000:]
    assert "Version Negotiation" in out or "VN" in out or "version_negotiation" in out.lower()


def test_garbage_datagrams_do_not_hurt_others(peer, tmp_path):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    try:
        for i in range(500):
            n = (i * 37) % 1400 + 1
            s.sendto(os.urandom(n), ("127.0.0.1", peer.port))
            sent += n
        # A truncated long-header Initial.
        s.sendto(b"\xc0\x00\x00\x00\x01\x08" + os.urandom(30), ("127.0.0.1", peer.port))
        s.settimeout(0.5)
        got = []
        try:
            while True:
                got.append(s.recvfrom(2048)[0])
        except socket.timeout:
            pass
        # Whatever is answered (resets, refusals) never amplifies.
        assert sum(map(len, got)) <= 3 * sent
        # A stranger's short header gets a stateless reset smaller than it.
        s.sendto(b"\x40" + os.urandom(60), ("127.0.0.1", peer.port))
        reset = s.recvfrom(2048)[0]
        assert 21 < len(reset) < 61
    finally:
        s.close()
    status, _, _ = gtls(peer.port, "/healthz", tmp_path)
    assert status == 200
