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

from conftest import RINGBUSD


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


def test_required_mode_is_refused_until_sessions_check_credentials(tmp_path):
    secret = tmp_path / "jwt.secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[auth]\nmode = "required"\n[[auth.jwt_key]]\nalgorithm = "HS256"\n'
                   f'secret_file = "{secret}"\n')
    assert ringbusd("--check-config", str(cfg)).returncode == 0
    r = subprocess.run([str(RINGBUSD), "--config", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert "refusing to serve unauthenticated" in r.stderr


def test_mode_none_warns_about_listeners_off_loopback(make_daemon):
    from conftest import free_port
    port = free_port()
    d = make_daemon(listeners=f'[[listener]]\ntransport = "tcp"\naddress = "0.0.0.0"\nport = {port}\n')
    assert (f'auth.mode = "none": anyone who reaches tcp://0.0.0.0:{port} may publish and subscribe'
            in d.log())
    with Conn(port=port) as c:
        assert c.hello().kind_name == "STARTED"
