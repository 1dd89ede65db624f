"""TCP-TLS against the real daemon, with real third-party TLS peers
(OpenSSL's s_client, GnuTLS's gnutls-cli, Python's ssl), once per TLS
library (tls_library = "openssl", the default, and "wolfssl"): TLS 1.3
only, the server's cipher order (AES-128-GCM first on OpenSSL, which has
AES-NI; ChaCha20-Poly1305 first on wolfSSL, which has not), ALPN ringbus/1, HELLO and
STARTED carried inside TLS, close_notify both ways, the handshake timeout,
SIGHUP certificate reload and client certificates (DESIGN §2, issue 5)."""

import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import time
import types

import pytest

import rbproto as rp
import rbtransport as rt
from conftest import RINGBUSD, Daemon, free_port

HANDSHAKE_MS = 1000


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return rt.Certs(tmp_path_factory.mktemp("certs"))


# The cipher suite each library's server order picks for a client that
# offers all TLS 1.3 suites: (OpenSSL's name, GnuTLS's name).
FIRST_SUITE = {"openssl": ("TLS_AES_128_GCM_SHA256", "AES-128-GCM"),
               "wolfssl": ("TLS_CHACHA20_POLY1305_SHA256", "CHACHA20-POLY1305")}


@pytest.fixture(scope="module", autouse=True, params=rt.TLS_LIBRARIES)
def tls_library(request):
    """Every test of this module runs once per TLS library."""
    rt.TLS_LIBRARY = request.param
    yield request.param
    rt.TLS_LIBRARY = None


@pytest.fixture(scope="module")
def tlsd(tmp_path_factory, certs, tls_library):
    """One daemon: a tls listener and a tls listener that wants client
    certificates from the test CA."""
    port, mtls_port = free_port(), free_port()
    listeners = rt.listener("tls", port, certs) + rt.listener("tls", mtls_port, certs,
                                                              client_ca=certs.ca)
    sd = rt.SharedDaemon(tmp_path_factory, "tlsd", listeners,
                         extra=f"[timeouts]\nhandshake_timeout_ms = {HANDSHAKE_MS}\n")
    sd.port, sd.mtls_port = port, mtls_port
    yield sd
    sd.finish()


def s_client(port, *args, stdin=subprocess.DEVNULL, timeout=15):
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        stdin=stdin, capture_output=True, timeout=timeout)


def read_until(proc, pred, out=b"", timeout=10):
    """Reads a peer's stdout until pred(out + bytes read) holds; returns
    all of it."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while not pred(out):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; output so far: {out[-2000:]!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"peer exited; output: {out[-2000:]!r}")
            out += chunk
    return out


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


# ---- third-party peers ----------------------------------------------------------


def test_openssl_s_client_gets_tls13_the_servers_suite_alpn_and_a_valid_chain(
        tlsd, certs, tls_library):
    # The client prefers AES-256-GCM; the server's order wins.
    out = s_client(tlsd.port, "-tls1_3", "-ciphersuites",
                   "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256",
                   "-CAfile", certs.ca, "-servername", "localhost", "-verify_hostname",
                   "localhost", "-verify_return_error", "-alpn", "ringbus/1")
    text = out.stdout.decode(errors="replace")
    assert f"New, TLSv1.3, Cipher is {FIRST_SUITE[tls_library][0]}" in text, text
    assert "ALPN protocol: ringbus/1" in text, text
    assert "Verify return code: 0 (ok)" in text, text


def test_openssl_s_client_carries_hello_started_and_a_publish(tlsd, certs):
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{tlsd.port}", "-tls1_3", "-quiet",
         "-CAfile", certs.ca, "-servername", "localhost", "-verify_return_error",
         "-alpn", "ringbus/1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        proc.stdin.write(rp.encode_hello(1, name="s_client"))
        proc.stdin.flush()
        out = read_until(proc, lambda b: rt.find_frame(b, rp.STARTED) is not None)
        assert rt.find_frame(out, rp.STARTED)["max_frame_bytes"] >= 4096
        proc.stdin.write(rp.encode_publish(2, "tls.openssl", "hi"))
        proc.stdin.flush()
        out = read_until(proc, lambda b: rt.find_frame(b, rp.PUBLISH_ACK) is not None)
        assert rt.find_frame(out, rp.PUBLISH_ACK)["topic"] == "tls.openssl"
    finally:
        stop(proc)


def test_gnutls_cli_carries_hello_started_and_a_publish(tlsd, certs, tls_library):
    proc = subprocess.Popen(
        ["gnutls-cli", "--x509cafile", certs.ca, "-p", str(tlsd.port), "localhost",
         "--alpn", "ringbus/1", "--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.3"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        proc.stdin.write(rp.encode_hello(1, name="gnutls"))
        proc.stdin.flush()
        out = read_until(proc, lambda b: rt.find_frame(b, rp.STARTED) is not None)
        proc.stdin.write(rp.encode_publish(2, "tls.gnutls", "hi"))
        proc.stdin.flush()
        out = read_until(proc, lambda b: rt.find_frame(b, rp.PUBLISH_ACK) is not None, out)
        text = out.decode(errors="replace")
        assert "(TLS1.3" in text and FIRST_SUITE[tls_library][1] in text, text
        assert "Application protocol: ringbus/1" in text, text
        assert "The certificate is trusted" in text, text
        # EOF on stdin: gnutls-cli sends close_notify and the server answers.
        proc.stdin.close()
        rest = proc.stdout.read()
        assert proc.wait(timeout=10) == 0, rest
    finally:
        stop(proc)


def test_tls12_and_a_foreign_alpn_are_refused(tlsd, certs):
    out = s_client(tlsd.port, "-tls1_2", "-CAfile", certs.ca)
    assert out.returncode != 0
    assert b"alert protocol version" in out.stderr + out.stdout
    gnutls = subprocess.run(
        ["gnutls-cli", "--x509cafile", certs.ca, "-p", str(tlsd.port), "localhost",
         "--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.2"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=15)
    assert gnutls.returncode != 0
    assert b"Handshake was completed" not in gnutls.stdout
    out = s_client(tlsd.port, "-tls1_3", "-alpn", "h2", "-CAfile", certs.ca)
    assert b"no application protocol" in out.stderr + out.stdout


# ---- close_notify -----------------------------------------------------------------


def tls_socket(port, certs, **kw):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return rt.client_context(certs.ca, **kw).wrap_socket(s, server_hostname="localhost",
                                                         suppress_ragged_eofs=False)


def test_peer_close_notify_is_answered_with_close_notify(tlsd, certs):
    s = tls_socket(tlsd.port, certs)
    s.sendall(rp.encode_hello(1))
    assert rp.decode(s.recv(4096))[0].kind == rp.STARTED
    t0 = time.monotonic()
    raw = s.unwrap()  # sends close_notify and waits for the server's
    assert time.monotonic() - t0 < 1.0
    raw.close()


def test_server_close_ends_with_close_notify_after_the_close_frame(tlsd, certs):
    s = tls_socket(tlsd.port, certs)
    s.sendall(rp.encode_hello(1))
    s.sendall(rp.encode_frame(99, 5))
    data = b""
    while True:
        d = s.recv(4096)  # a missing close_notify would raise SSLEOFError
        if not d:
            break
        data += d
    frames = rp.decode_all(data)
    assert [f.kind for f in frames] == [rp.STARTED, rp.ERROR, rp.CLOSE]
    assert frames[2]["status_name"] == "bad_frame"


# ---- the handshake timeout ------------------------------------------------------------


def test_silent_tcp_connection_is_closed_after_the_handshake_timeout(tlsd):
    s = socket.create_connection(("127.0.0.1", tlsd.port), timeout=10)
    t0 = time.monotonic()
    assert s.recv(100) == b""
    waited = time.monotonic() - t0
    assert HANDSHAKE_MS / 1000 * 0.8 <= waited < HANDSHAKE_MS / 1000 + 3, waited
    assert "transport handshake not completed" in tlsd.daemon.log()


def test_tls_without_hello_gets_deadline_exceeded_inside_tls(tlsd, certs):
    s = tls_socket(tlsd.port, certs)
    s.settimeout(10)
    data = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        data += d
    frames = rp.decode_all(data)
    assert frames[-1].kind == rp.CLOSE and frames[-1]["status_name"] == "deadline_exceeded"


# ---- client certificates ---------------------------------------------------------


def hello_over(port, certs, cert=None, key=None):
    """HELLO over TLS; returns the reply frame, or the exception."""
    try:
        ctx = rt.client_context(certs.ca, cert=cert, key=key)
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                            server_hostname="localhost")
        s.sendall(rp.encode_hello(1))
        data = s.recv(4096)
        return rp.decode(data)[0] if data else EOFError("closed")
    except (ssl.SSLError, OSError) as e:
        return e


def test_client_certificate_is_required_when_client_ca_is_set(tlsd, certs, tmp_path):
    good = rt.make_leaf(tmp_path, (certs.ca, certs.ca_key), "client", cn="client",
                        san=None, usage="clientAuth")
    other_ca = rt.make_ca(tmp_path, "other")
    bad = rt.make_leaf(tmp_path, other_ca, "stranger", cn="stranger", san=None,
                       usage="clientAuth")
    refused = hello_over(tlsd.mtls_port, certs)
    assert not isinstance(refused, rp.Frame), refused
    assert not isinstance(hello_over(tlsd.mtls_port, certs, *bad), rp.Frame)
    f = hello_over(tlsd.mtls_port, certs, *good)
    assert isinstance(f, rp.Frame) and f.kind == rp.STARTED, f
    # The listener without client_ca does not ask for one.
    assert hello_over(tlsd.port, certs).kind == rp.STARTED


# ---- SIGHUP reload ---------------------------------------------------------------


def wait_log(d, text, timeout=5):
    deadline = time.monotonic() + timeout
    while text not in d.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{d.log()[-3000:]}"
        time.sleep(0.02)


def test_sighup_reloads_the_certificate_for_new_connections_only(make_daemon, tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old, new = rt.Certs(tmp_path / "old"), rt.Certs(tmp_path / "new")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "server.pem", live / "server.key"
    shutil.copy(old.cert, cert)
    shutil.copy(old.key, key)
    port = free_port()
    served = types.SimpleNamespace(cert=str(cert), key=str(key))
    d = make_daemon(listeners=rt.listener("tls", port, served))
    before = rt.Conn("tls", port, old)
    assert before.hello().kind == rp.STARTED

    shutil.copy(new.cert, cert)
    shutil.copy(new.key, key)
    d.proc.send_signal(signal.SIGHUP)
    wait_log(d, "now serves")
    assert isinstance(hello_over(port, old), ssl.SSLCertVerificationError)
    assert hello_over(port, new).kind == rp.STARTED
    # The connection made before the reload carries on with its session.
    assert before.publish("reload", "still here", 7)["seq"] == 1

    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_log(d, "keeping the previous certificate")
    assert hello_over(port, new).kind == rp.STARTED
    # The line gives wolfSSL's reason, not the text of its success code.
    line = [ln for ln in d.log().splitlines() if "keeping the previous" in ln][-1]
    assert f"cert {cert}: " in line and f"cert {cert}: ok" not in line, line


def test_sighup_with_a_non_pem_certificate_names_the_librarys_reason(make_daemon, tmp_path):
    certs = rt.Certs(tmp_path)
    live = tmp_path / "live.pem"
    shutil.copy(certs.cert, live)
    port = free_port()
    d = make_daemon(listeners=rt.listener("tls", port, types.SimpleNamespace(cert=str(live),
                                                                             key=certs.key)))
    live.write_text("this file is not PEM at all\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_log(d, "keeping the previous certificate")
    line = [ln for ln in d.log().splitlines() if "keeping the previous" in ln][-1]
    assert "PEM" in line and ": ok;" not in line, line
    assert hello_over(port, certs).kind == rp.STARTED



def test_sighup_while_waiting_for_storage_reloads_too(tmp_path):
    """A certificate replaced while the daemon waits for Postgres is served
    once it is ready, without a second SIGHUP."""
    certs = rt.Certs(tmp_path)
    port = free_port()
    d = Daemon(tmp_path, storage="postgres", listeners=rt.listener("tls", port, certs),
               conninfo=f"host=127.0.0.1 port={free_port()} dbname=none connect_timeout=1")
    d._log = open(d.log_path, "wb")
    d.proc = subprocess.Popen([str(RINGBUSD), "--config", str(d.config_path)], stdout=d._log,
                              stderr=subprocess.STDOUT, env=d.env)
    try:
        wait_log(d, "storage not ready", timeout=15)
        d.proc.send_signal(signal.SIGHUP)
        wait_log(d, f"reload: tls://127.0.0.1:{port} now serves {certs.cert}")
        assert "ready:" not in d.log()
    finally:
        assert d.stop() == 0
    assert "SIGTERM received while waiting for storage: stopping" in d.log()
    assert d.bad_log_lines() == []


# ---- certificate and key pairs, --check-config -----------------------------------------


@pytest.fixture(scope="module")
def ecdsa_mismatch(tmp_path_factory):
    """Two EC P-256 leaves of one CA: cert of the first, key of the second
    (wolfSSL_CTX_check_private_key passes this pair)."""
    d = tmp_path_factory.mktemp("mismatch")
    ca = rt.make_ca(d)
    one = rt.make_leaf(d, ca, "one")
    two = rt.make_leaf(d, ca, "two")
    return types.SimpleNamespace(ca=ca[0], cert=one[0], key=two[1], good_key=one[1])


def tls_config(tmp_path, cert, key, extra=""):
    cfg = tmp_path / "tls.toml"
    cfg.write_text(extra + rt.listener("tls", free_port(), types.SimpleNamespace(cert=cert,
                                                                                 key=key)))
    return cfg


def check_config(cfg):
    return subprocess.run([str(RINGBUSD), "--check-config", str(cfg)], capture_output=True,
                          text=True, timeout=30)


def test_check_config_refuses_an_ecdsa_key_of_another_certificate(ecdsa_mismatch, tmp_path):
    out = check_config(tls_config(tmp_path, ecdsa_mismatch.cert, ecdsa_mismatch.key))
    assert out.returncode == 1, out
    assert f"key {ecdsa_mismatch.key} does not match cert {ecdsa_mismatch.cert}" in out.stderr
    good = check_config(tls_config(tmp_path, ecdsa_mismatch.cert, ecdsa_mismatch.good_key))
    assert good.returncode == 0, good.stderr


def test_start_refuses_an_ecdsa_key_of_another_certificate(ecdsa_mismatch, tmp_path):
    cfg = tls_config(tmp_path, ecdsa_mismatch.cert, ecdsa_mismatch.key)
    out = subprocess.run([str(RINGBUSD), "--config", str(cfg)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1
    assert "does not match cert" in out.stderr, out.stderr


def test_sighup_keeps_the_old_pair_when_the_new_ecdsa_key_does_not_match(
        make_daemon, ecdsa_mismatch, tmp_path):
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(ecdsa_mismatch.cert, cert)
    shutil.copy(ecdsa_mismatch.good_key, key)
    port = free_port()
    d = make_daemon(listeners=rt.listener("tls", port, types.SimpleNamespace(cert=str(cert),
                                                                             key=str(key))))
    shutil.copy(ecdsa_mismatch.key, key)
    d.proc.send_signal(signal.SIGHUP)
    wait_log(d, "keeping the previous certificate")
    assert "now serves" not in d.log()
    assert "does not match cert" in d.log()
    ca = types.SimpleNamespace(ca=ecdsa_mismatch.ca)
    assert hello_over(port, ca).kind == rp.STARTED


def test_check_config_opens_the_certificate_files_like_start_up(tmp_path):
    missing = tmp_path / "missing.pem"
    out = check_config(tls_config(tmp_path, str(missing), str(tmp_path / "missing.key")))
    assert out.returncode == 1
    assert f"cert {missing}" in out.stderr, out.stderr
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    out = check_config(tls_config(tmp_path, str(junk), str(junk)))
    assert out.returncode == 1
    assert f"cert {junk}: " in out.stderr and "PEM" in out.stderr, out.stderr


def test_check_config_reads_the_postgres_password_file_like_start_up(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("x" * 5000 + "\n")
    cfg = tmp_path / "pg.toml"
    cfg.write_text(f'[storage]\nbackend = "postgres"\n[storage.postgres]\n'
                   f'conninfo = "host=/nonexistent dbname=x"\npassword_file = "{pw}"\n')
    out = check_config(cfg)
    assert out.returncode == 1
    assert f"password_file {pw}: first line over" in out.stderr, out.stderr
    pw.write_text("secret\n")
    assert check_config(cfg).returncode == 0
