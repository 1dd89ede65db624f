"""Authentication against the real daemon: the credentials format of HELLO
and the AUTH frame (docs/PROTOCOL.md 6.5)."""

import rbproto as rp
from rbproto import Conn


def test_auth_without_a_token_sign_in_is_unauthorized_and_closes(daemon):
    with Conn(port=daemon.port) as c:
        assert c.hello().kind_name == "STARTED"
        c.send(rp.encode_auth(7, rp.creds_token("a.b.c")))
        err = c.recv()
        assert (err.kind_name, err.corr, err["code"]) == ("ERROR", 7, rp.UNAUTHORIZED)
        assert "did not sign in with a token" in err["message"]
        assert c.closed_within(3)
    # Other connections are unaffected.
    with Conn(port=daemon.port) as c:
        assert c.hello().kind_name == "STARTED"
        assert c.publish("t", b"x", corr=2)["seq"] == 1


# ---- ringbusd --hash-password and --check-config ------------------------------

import subprocess

from conftest import RINGBUSD, free_port


def ringbusd(*args, input=None):
    return subprocess.run([str(RINGBUSD), *args], input=input, capture_output=True, text=True,
                          timeout=60)


def ec_public_pem():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def test_hash_password_prints_an_argon2id_hash_that_check_config_accepts(tmp_path):
    r = ringbusd("--hash-password", input="correct horse\n")
    assert r.returncode == 0, r.stderr
    hash_ = r.stdout.strip()
    assert hash_.startswith("$argon2id$v=19$m=65536,t=3,p=1$")
    assert "correct horse" not in r.stdout + r.stderr
    again = ringbusd("--hash-password", input="correct horse\n").stdout.strip()
    assert again != hash_  # a fresh salt each time
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[auth.user]]\nname = "alice"\npassword_hash = "{hash_}"\n'
                   'publish = ["orders.>"]\n')
    r = ringbusd("--check-config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{cfg}: ok"


def test_hash_password_refuses_an_empty_password():
    r = ringbusd("--hash-password", input="\n")
    assert r.returncode == 1
    assert "password: 0 bytes" in r.stderr


def test_check_config_loads_key_files_and_names_the_position(tmp_path):
    pub = tmp_path / "ec.pem"
    pub.write_bytes(ec_public_pem())
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[auth.jwt_key]]\nkid = "k1"\nalgorithm = "RS256"\npublic_key_file = "{pub}"\n')
    r = ringbusd("--check-config", str(cfg))
    assert r.returncode == 1
    assert r.stderr.strip() == (f'{cfg}:4:19: auth.jwt_key[1].public_key_file: "{pub}" is not an '
                                "RSA key (RS256 needs one)")
    cfg.write_text(f'[[auth.jwt_key]]\nkid = "k1"\nalgorithm = "ES256"\npublic_key_file = "{pub}"\n')
    r = ringbusd("--check-config", str(cfg))
    assert r.returncode == 0, r.stderr


def test_mode_none_warns_about_listeners_off_loopback(make_daemon):
    from conftest import free_port
    port = free_port()
    d = make_daemon(listeners=f'[[listener]]\ntransport = "tcp"\naddress = "0.0.0.0"\nport = {port}\n')
    assert (f'auth.mode = "none": anyone who reaches tcp://0.0.0.0:{port} may publish and subscribe'
            in d.log())
    with Conn(port=port) as c:
        assert c.hello().kind_name == "STARTED"


# ---- the CLI's sign-in flags --------------------------------------------------

import socket
import threading

import pytest

import rbtransport as rt
from conftest import run_cli


class HelloRecorder:
    """A one-connection server that records the HELLO credentials, answers
    STARTED and PONGs until the client closes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.credentials = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        conn.settimeout(10)
        buf = b""
        with conn:
            while True:
                frame, used = rp.decode(buf)
                if frame is None:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                    continue
                buf = buf[used:]
                if frame.kind == rp.HELLO:
                    self.credentials = frame["credentials"]
                    conn.sendall(rp.encode_started(frame.corr))
                elif frame.kind == rp.PING:
                    conn.sendall(rp.encode_pong(frame.corr, frame["nonce"]))
                elif frame.kind == rp.CLOSE:
                    conn.sendall(rp.encode_close(0))
                    return

    def done(self):
        self.thread.join(10)
        self.sock.close()
        return rp.decode_creds(self.credentials)


def test_cli_token_file_becomes_token_credentials(tmp_path):
    srv = HelloRecorder()
    tok = tmp_path / "token"
    tok.write_text("aGVhZA.Ym9keQ.c2ln\n")
    r = run_cli("--url", f"tcp://127.0.0.1:{srv.port}", "--token-file", str(tok), "ping")
    assert r.returncode == 0, r.stderr
    assert srv.done() == {"kind": rp.CRED_TOKEN, "token": "aGVhZA.Ym9keQ.c2ln"}


def test_cli_user_and_password_file_become_password_credentials(tmp_path):
    srv = HelloRecorder()
    pw = tmp_path / "pw"
    pw.write_text("s3cret pass\r\nsecond line ignored\n")
    r = run_cli("--url", f"tcp://127.0.0.1:{srv.port}", "--user", "alice", "--password-file",
                str(pw), "ping")
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in r.stdout + r.stderr
    assert srv.done() == {"kind": rp.CRED_PASSWORD, "user": "alice", "password": b"s3cret pass"}


def test_cli_token_flag_becomes_token_credentials():
    srv = HelloRecorder()
    r = run_cli("--url", f"tcp://127.0.0.1:{srv.port}", "--token", "a.b.c", "ping")
    assert r.returncode == 0, r.stderr
    assert srv.done() == {"kind": rp.CRED_TOKEN, "token": "a.b.c"}


@pytest.mark.parametrize("args, why", [
    (["--token", "a.b.c", "--token-file", "/x"], "give --token or --token-file, not both"),
    (["--token", "a.b.c", "--user", "u", "--password-file", "/x"], "give a token or --user"),
    (["--user", "u"], "--user and --password-file go together"),
    (["--cert", "c.pem"], "--cert and --key go together"),
    (["--token="], "options: token is empty"),
    (["--token", "a b"], "options: token: byte 1 is not base64url or '.'"),
])
def test_cli_sign_in_flag_mistakes_are_usage_errors(args, why):
    r = run_cli("--url", "tcp://127.0.0.1:1", *args, "ping")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert why in r.stderr


def test_cli_missing_token_file_is_a_runtime_error(tmp_path):
    r = run_cli("--url", "tcp://127.0.0.1:1", "--token-file", str(tmp_path / "nope"), "ping")
    assert r.returncode == 1
    assert f"--token-file {tmp_path / 'nope'}: No such file or directory" in r.stderr


@pytest.fixture(scope="module")
def mtls(tmp_path_factory):
    """A daemon with tls and wss listeners that want client certificates."""
    certs = rt.Certs(tmp_path_factory.mktemp("certs"))
    d = tmp_path_factory.mktemp("client")
    certs.client = rt.make_leaf(d, (certs.ca, certs.ca_key), "client", cn="alice", san=None,
                                usage="clientAuth")
    certs.stranger = rt.make_leaf(d, rt.make_ca(d, "other"), "stranger", cn="alice", san=None,
                                  usage="clientAuth")
    ports = {"tls": free_port(), "wss": free_port()}
    listeners = "".join(rt.listener(k, p, certs, client_ca=certs.ca) for k, p in ports.items())
    sd = rt.SharedDaemon(tmp_path_factory, "mtls", listeners)
    sd.certs, sd.ports = certs, ports
    yield sd
    sd.finish()


@pytest.mark.parametrize("kind", ["tls", "wss"])
def test_cli_client_certificate_signs_in_on_mtls_listeners(mtls, kind):
    url = f"{kind}://localhost:{mtls.ports[kind]}" + ("/ringbus" if kind == "wss" else "")
    ca = ["--ca", str(mtls.certs.ca)]
    cert, key = mtls.certs.client
    r = run_cli("--url", url, *ca, "--cert", str(cert), "--key", str(key), "pub", f"m.{kind}", "x")
    assert r.returncode == 0, r.stderr
    assert '"seq":1' in r.stdout
    # Without a certificate, or with one from another CA, the server's TLS
    # alert ends the connection (TLS 1.3 reports it at the first read).
    for extra in ([], ["--cert", str(mtls.certs.stranger[0]), "--key", str(mtls.certs.stranger[1])]):
        r = run_cli("--url", url, *ca, *extra, "ping")
        assert r.returncode == 1, r.stderr
        assert "TLS" in r.stderr and ("alert" in r.stderr or "handshake" in r.stderr), r.stderr


def test_cli_client_key_of_another_certificate_is_refused_before_connecting(mtls, tmp_path):
    cert, _ = mtls.certs.client
    _, other_key = mtls.certs.stranger
    url = f"tls://localhost:{mtls.ports['tls']}"
    r = run_cli("--url", url, "--ca", str(mtls.certs.ca), "--cert", str(cert), "--key",
                str(other_key), "ping")
    assert r.returncode == 2, r.stderr
    assert "client key" in r.stderr and "not a PEM key of the certificate" in r.stderr


@pytest.fixture(scope="module")
def mtls_users(tmp_path_factory):
    """auth.mode = "required" with certificate users: alice may publish m.>,
    bob's certificate (same CA) names no user."""
    certs = rt.Certs(tmp_path_factory.mktemp("certs"))
    d = tmp_path_factory.mktemp("client")
    certs.client = rt.make_leaf(d, (certs.ca, certs.ca_key), "client", cn="alice", san=None,
                                usage="clientAuth")
    certs.bob = rt.make_leaf(d, (certs.ca, certs.ca_key), "bob", cn="bob", san=None,
                             usage="clientAuth")
    ports = {"tls": free_port(), "wss": free_port()}
    listeners = "".join(rt.listener(k, p, certs, client_ca=certs.ca) for k, p in ports.items())
    extra = ('[auth]\nmode = "required"\nfailure_delay_ms = 10\n'
             '[[auth.user]]\nname = "alice"\npublish = ["m.>"]\n')
    sd = rt.SharedDaemon(tmp_path_factory, "mtlsu", listeners, extra=extra)
    sd.certs, sd.ports = certs, ports
    yield sd
    sd.finish()


@pytest.mark.parametrize("kind", ["tls", "wss"])
def test_client_certificate_subject_signs_in_as_that_user(mtls_users, kind):
    port = mtls_users.ports[kind]
    url = f"{kind}://localhost:{port}" + ("/ringbus" if kind == "wss" else "")
    ca = ["--ca", str(mtls_users.certs.ca)]
    cert, key = mtls_users.certs.client
    r = run_cli("--url", url, *ca, "--cert", str(cert), "--key", str(key), "pub", f"m.{kind}", "x")
    assert r.returncode == 0, r.stderr
    assert '"seq":1' in r.stdout
    # alice's permissions apply.
    r = run_cli("--url", url, *ca, "--cert", str(cert), "--key", str(key), "pub", "other", "x")
    assert r.returncode == 1, r.stderr
    assert '"code":"forbidden","message":"alice may not publish to other"' in r.stdout, r.stdout
    # A certificate of the right CA whose subject is no user: unauthorized.
    bob_cert, bob_key = mtls_users.certs.bob
    r = run_cli("--url", url, *ca, "--cert", str(bob_cert), "--key", str(bob_key), "pub", "m.x",
                "x")
    assert r.returncode == 1, r.stderr
    assert "unauthorized" in r.stdout + r.stderr, (r.stdout, r.stderr)
    assert '"bob" is no [[auth.user]]' in mtls_users.daemon.log()
