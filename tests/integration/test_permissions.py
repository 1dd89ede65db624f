"""Sign-in and permissions against the real daemon (issue 13): tokens (JWTs
made by PyJWT, a third-party implementation) verified at HELLO, refused
tokens answered unauthorized after the failure delay, the permission matrix
(publish, subscribe, history-only, mid-stream adds; allow and deny) on tcp,
tls, ws and quic (through quic_relay, so the daemon sees real QUIC) with
forbidden operations changing nothing, token refresh over AUTH and expiry
closing the connection; key rotation by kid (HS256 and RS256 side by
side) and HS/RS confusion against the daemon."""

import time

import jwt
import pytest

import rbproto as rp
import rbtransport as rt
from conftest import free_port
from test_quic_daemon import Relay

SECRET = "permission-matrix-secret-0123456789abcdef"
DELAY_MS = 300
KINDS = ["tcp", "tls", "ws", "quic"]


def token(sub="svc", ttl=600, key=SECRET, alg="HS256", **claims):
    now = int(time.time())
    return jwt.encode({"sub": sub, "exp": now + ttl, **claims}, key, algorithm=alg)


@pytest.fixture(scope="module")
def authd(tmp_path_factory):
    certs = rt.Certs(tmp_path_factory.mktemp("certs"))
    d = tmp_path_factory.mktemp("keys")
    secret = d / "jwt.secret"
    secret.write_text(SECRET + "\n")
    ports = {k: free_port() for k in KINDS}
    listeners = "".join(rt.listener(k, p, certs) for k, p in ports.items())
    extra = (f'[auth]\nmode = "required"\nfailure_delay_ms = {DELAY_MS}\nclock_skew_s = 0\n'
             f'[[auth.jwt_key]]\nalgorithm = "HS256"\nsecret_file = "{secret}"\n')
    sd = rt.SharedDaemon(tmp_path_factory, "authd", listeners, extra=extra)
    sd.certs, sd.ports = certs, ports
    relay = Relay(f"quic://127.0.0.1:{ports['quic']}", certs.ca)
    sd.relay_port = relay.port
    yield sd
    relay.stop()
    sd.finish()


def conn(authd, kind="tcp"):
    if kind == "quic":
        return rt.Conn("tcp", authd.relay_port)
    return rt.Conn(kind, authd.ports[kind], authd.certs)


def sign_in(authd, tok, kind="tcp"):
    c = conn(authd, kind)
    started = c.hello(creds=rp.creds_token(tok))
    assert started.kind_name == "STARTED", started
    return c


# ---- sign-in ---------------------------------------------------------------------


@pytest.mark.parametrize("why, make, reason", [
    ("none", lambda: b"", "credentials required"),
    ("expired", lambda: rp.creds_token(token(ttl=-5)), "expired"),
    ("not yet valid", lambda: rp.creds_token(token(nbf=int(time.time()) + 60)), "not valid for"),
    ("wrong signature", lambda: rp.creds_token(token(key="another-secret-of-32-bytes-at-least!!")),
     "signature does not verify"),
    ("alg none", lambda: rp.creds_token(
        jwt.encode({"sub": "s", "exp": int(time.time()) + 60}, None, algorithm="none")),
     "alg \"none\" but the key is HS256"),
    ("malformed", lambda: rp.creds_token("a.b"), "not a signed JWT"),
    ("garbage credentials", lambda: b"\x01\x03\x00a%b", "token: byte 1"),
    ("oversized", lambda: b"\x01" + (8193).to_bytes(2, "little") + b"A" * 8193, "8193 bytes"),
    ("password without users", lambda: rp.creds_password("alice", "pw"),
     "unknown user or wrong password"),
    ("sub of a server-assigned id", lambda: rp.creds_token(token(sub="anon-1")),
     "the prefix of server-assigned ids"),
])
def test_refused_sign_in_is_unauthorized_after_the_delay(authd, why, make, reason):
    with conn(authd) as c:
        t0 = time.monotonic()
        err = c.hello(creds=make(), timeout=10)
        took = time.monotonic() - t0
        assert (err.kind_name, err["code"]) == ("ERROR", rp.UNAUTHORIZED), err
        assert reason in err["message"]
        assert took >= DELAY_MS / 1000 * 0.9, took
        assert c.closed_within(3)
    assert "sign-in refused" in authd.daemon.log()
    assert SECRET not in authd.daemon.log()


@pytest.mark.parametrize("kind", KINDS)
def test_valid_token_signs_in_on_every_transport(authd, kind):
    c = conn(authd, kind)
    started = c.hello(creds=rp.creds_token(token(sub=f"svc-{kind}", publish=["p.>"])))
    assert (started.kind_name, started["client_id"]) == ("STARTED", f"svc-{kind}"), started
    with c:
        assert c.publish(f"p.{kind}", b"x", corr=2)["seq"] >= 1


# ---- the permission matrix -----------------------------------------------------

MATRIX = dict(publish=["orders.>", "shared.*"], publish_deny=["orders.secret"],
              subscribe=["orders.*", "news.>"], subscribe_deny=["news.internal"])


def expect_forbidden(frame, corr):
    assert (frame.kind_name, frame.corr, frame["code"]) == ("ERROR", corr, rp.FORBIDDEN), frame


@pytest.mark.parametrize("kind", KINDS)
def test_permission_matrix_refuses_exactly_what_is_not_allowed(authd, kind):
    run = f"{kind}{time.monotonic_ns()}"
    t_ok, t_secret, t_news = f"orders.{run}", "orders.secret", f"news.{run}.x"
    with sign_in(authd, token(sub=f"matrix-{kind}", **MATRIX), kind) as c:
        # Publish: allowed, denied by deny, not allowed at all.
        assert c.publish(t_ok, b"1", corr=10)["seq"] == 1
        expect_forbidden(c.publish(t_secret, b"no", corr=11), 11)
        expect_forbidden(c.publish(t_news, b"no", corr=12), 12)
        expect_forbidden(c.publish("$sys.x", b"no", corr=13), 13)
        # The connection stays usable after each refusal.
        assert c.publish(t_ok, b"2", corr=14)["seq"] == 2
        # Subscribe: one forbidden add rejects the whole Mutate.
        c.mutate(20, 1, adds=[(t_ok, 0), ("news.internal", 0)])
        expect_forbidden(c.recv_until(lambda f: f.corr == 20), 20)
        # History-only needs subscribe permission too.
        c.mutate(21, 2, adds=[("shared.x", 0)], history_only=True)
        expect_forbidden(c.recv_until(lambda f: f.corr == 21), 21)
        # Nothing of the refused Mutates applied: this wave replays from 0.
        c.mutate(22, 3, adds=[(t_ok, 0)])
        frames = c.recv_all_until(lambda f: f.kind == rp.CATCHUP_COMPLETE and f["mutate_id"] == 3)
        seqs = [seq for f in frames if f.kind == rp.MESSAGES for _, seq, _ in f["items"]]
        assert seqs == [1, 2]
        # A mid-stream add of a forbidden topic is refused; the stream keeps going.
        c.mutate(23, 4, adds=[("orders.secret.deeper", 0)])
        expect_forbidden(c.recv_until(lambda f: f.corr == 23), 23)
        c.mutate(24, 5, adds=[(t_news, "now")])
        c.recv_until(lambda f: f.kind == rp.CATCHUP_COMPLETE and f["mutate_id"] == 5)
        assert c.publish(t_ok, b"3", corr=25)["seq"] == 3
        live = c.recv_until(lambda f: f.kind == rp.MESSAGES and f["mutate_id"] == 0)
        assert [(t, seq) for t, seq, _ in live["items"]] == [(t_ok, 3)]


def test_token_without_permission_claims_may_do_nothing(authd):
    with sign_in(authd, token(sub="nobody")) as c:
        expect_forbidden(c.publish("any", b"x", corr=2), 2)
        c.mutate(3, 1, adds=[("any", 0)])
        expect_forbidden(c.recv_until(lambda f: f.corr == 3), 3)


# ---- refresh and expiry ------------------------------------------------------------


def test_refresh_keeps_the_stream_and_expiry_without_refresh_closes_at_exp(authd):
    perms = dict(publish=["r.>"], subscribe=["r.>"])
    topic = f"r.{time.monotonic_ns()}"
    with sign_in(authd, token(sub="refresher", ttl=2, **perms)) as c:
        c.mutate(2, 1, adds=[(topic, "now")])
        c.recv_until(lambda f: f.kind == rp.CATCHUP_COMPLETE)
        c.send(rp.encode_auth(3, rp.creds_token(token(sub="refresher", ttl=600, **perms))))
        ok = c.recv_until(lambda f: f.corr == 3)
        assert (ok.kind_name, ok["credentials"]) == ("AUTH", b"")
        time.sleep(2.5)  # past the first token's exp
        assert c.publish(topic, b"after", corr=4)["seq"] == 1
        live = c.recv_until(lambda f: f.kind == rp.MESSAGES)
        assert live["items"][0][2] == b"after"
    exp = int(time.time()) + 2
    with sign_in(authd, jwt.encode({"sub": "expiring", "exp": exp, **perms}, SECRET,
                                   algorithm="HS256")) as c:
        closed = c.recv_until(lambda f: f.kind == rp.CLOSE, timeout=6)
        # At exp (clock_skew_s = 0), within a second either way.
        assert abs(time.time() - exp) <= 1.0, time.time() - exp
        assert closed["status"] == rp.UNAUTHORIZED


def test_refresh_with_another_sub_or_a_bad_token_is_refused_and_closes(authd):
    with sign_in(authd, token(sub="alice", publish=["a"])) as c:
        c.send(rp.encode_auth(5, rp.creds_token(token(sub="mallory"))))
        err = c.recv_until(lambda f: f.corr == 5)
        assert err["code"] == rp.UNAUTHORIZED and "another sub" in err["message"]
        assert c.closed_within(3)
    with sign_in(authd, token(sub="alice")) as c:
        c.send(rp.encode_auth(6, rp.creds_token(token(sub="alice", ttl=-10))))
        err = c.recv_until(lambda f: f.corr == 6)
        assert err["code"] == rp.UNAUTHORIZED and "expired" in err["message"]
        assert c.closed_within(3)


# ---- users and passwords ------------------------------------------------------------

import subprocess

from conftest import RINGBUSD


def hash_password(pw):
    r = subprocess.run([str(RINGBUSD), "--hash-password"], input=pw + "\n", capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def userd(tmp_path_factory):
    """One shard and one auth worker, so a slow hash would show on the shard."""
    port = free_port()
    users = (f'[[auth.user]]\nname = "alice"\npassword_hash = "{hash_password("wonderland")}"\n'
             'publish = ["a.>"]\nsubscribe = ["a.>"]\npublish_deny = ["a.secret"]\n'
             '[[auth.user]]\nname = "certonly"\n')
    d = tmp_path_factory.mktemp("keys")
    secret = d / "jwt.secret"
    secret.write_text(SECRET + "\n")
    extra = (f'[auth]\nmode = "required"\nfailure_delay_ms = {DELAY_MS}\nworkers = 1\n{users}'
             f'[[auth.jwt_key]]\nalgorithm = "HS256"\nsecret_file = "{secret}"\n')
    sd = rt.SharedDaemon(tmp_path_factory, "userd", rt.listener("tcp", port), extra=extra,
                         shards=1)
    sd.port = port
    yield sd
    sd.finish()


def test_password_signs_in_as_the_user_with_its_permissions(userd):
    with rp.Conn(port=userd.port) as c:
        started = c.hello(creds=rp.creds_password("alice", "wonderland"), timeout=15)
        assert started.kind_name == "STARTED", started
        topic = f"a.{time.monotonic_ns()}"
        assert c.publish(topic, b"x", corr=2)["seq"] == 1
        expect_forbidden(c.publish("a.secret", b"x", corr=3), 3)
        expect_forbidden(c.publish("b", b"x", corr=4), 4)


@pytest.mark.parametrize("user, pw", [("alice", "not-the-password"), ("mallory", "wonderland"),
                                      ("certonly", "anything")])
def test_wrong_password_and_unknown_user_get_the_same_answer(userd, user, pw):
    with rp.Conn(port=userd.port) as c:
        err = c.hello(creds=rp.creds_password(user, pw), timeout=15)
        assert (err.kind_name, err["code"]) == ("ERROR", rp.UNAUTHORIZED), err
        assert err["message"] == "unknown user or wrong password"
        assert c.closed_within(3)
    assert pw not in userd.daemon.log()


def test_a_frame_sent_before_started_while_the_password_is_checked_is_bad_frame(userd):
    with rp.Conn(port=userd.port) as c:
        c.send(rp.encode_hello(1, creds=rp.creds_password("alice", "wonderland")) +
               rp.encode_publish(2, "a.x", b"too early"))
        frames = []
        while not c.eof:
            try:
                frames.append(c.recv(timeout=10))
            except EOFError:
                break
        assert any(f.kind == rp.ERROR and f["code"] == rp.BAD_FRAME for f in frames), frames


def test_password_checks_never_stall_the_shard(userd):
    """Hashes run on the one auth worker; the one shard keeps answering."""
    t0 = time.monotonic()
    with rp.Conn(port=userd.port, timeout=20) as c:
        assert c.hello(creds=rp.creds_password("alice", "wonderland"), timeout=20).kind_name == "STARTED"
    one_hash = time.monotonic() - t0
    waiting = []
    for _ in range(4):
        c = rp.Conn(port=userd.port, timeout=20)
        c.send(rp.encode_hello(1, creds=rp.creds_password("alice", "wonderland")))
        waiting.append(c)
    time.sleep(0.05)  # the HELLOs are in; four hashes queue on the worker
    t0 = time.monotonic()
    with sign_in(types_ns(port=userd.port), token(sub="quick", publish=["q.>"])) as q:
        for i in range(5):
            assert q.publish(f"q.{i}", b"x", corr=10 + i)["seq"] >= 1
    quick = time.monotonic() - t0
    for c in waiting:
        assert c.recv(timeout=20).kind_name == "STARTED"
        c.close()
    # Verified on the shard, the four hashes would come first (4 x one_hash).
    assert quick < max(one_hash * 1.5, 0.05), (quick, one_hash)


def types_ns(port):
    import types
    return types.SimpleNamespace(ports={"tcp": port}, certs=None)


# ---- key rotation with kid, RS256, HS/RS confusion -------------------------------


def _hs256_by_hand(claims, secret: bytes, kid):
    """An HS256 token signed with any bytes (PyJWT refuses a PEM as secret)."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    msg = head + b"." + b64(json.dumps(claims).encode())
    return (msg + b"." + b64(hmac.new(secret, msg, hashlib.sha256).digest())).decode()


@pytest.fixture(scope="module")
def rotd(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    d = tmp_path_factory.mktemp("rot")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    (d / "rs.pub").write_bytes(pub)
    (d / "old.secret").write_text(SECRET + "\n")
    port = free_port()
    extra = (f'[auth]\nmode = "required"\nfailure_delay_ms = 10\n'
             f'[[auth.jwt_key]]\nkid = "old"\nalgorithm = "HS256"\nsecret_file = "{d / "old.secret"}"\n'
             f'[[auth.jwt_key]]\nkid = "new"\nalgorithm = "RS256"\npublic_key_file = "{d / "rs.pub"}"\n')
    sd = rt.SharedDaemon(tmp_path_factory, "rotd", rt.listener("tcp", port), extra=extra)
    sd.ports, sd.certs, sd.key, sd.pub = {"tcp": port}, None, key, pub
    yield sd
    sd.finish()


def test_both_keys_of_a_rotation_sign_in_by_kid_and_confusion_is_refused(rotd):
    from cryptography.hazmat.primitives import serialization
    claims = {"sub": "rot", "exp": int(time.time()) + 60, "publish": ["rot.>"]}
    old = jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "old"})
    pem = rotd.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    new = jwt.encode(claims, pem, algorithm="RS256", headers={"kid": "new"})
    for tok in (old, new):
        with sign_in(rotd, tok) as c:
            assert c.publish("rot.x", b"x", corr=2)["seq"] >= 1
    refused = [
        # HS256 keyed with the RSA public key's PEM, named as the RS256 key.
        (_hs256_by_hand(claims, rotd.pub, "new"), 'alg "HS256" but the key is RS256'),
        # RS256 signed right but naming the HS256 key.
        (jwt.encode(claims, pem, algorithm="RS256", headers={"kid": "old"}),
         'alg "RS256" but the key is HS256'),
        (jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "gone"}),
         'no key with kid "gone"'),
        (jwt.encode(claims, SECRET, algorithm="HS256"), "no kid"),
    ]
    for tok, reason in refused:
        with conn(rotd) as c:
            err = c.hello(creds=rp.creds_token(tok), timeout=10)
            assert (err.kind_name, err["code"]) == ("ERROR", rp.UNAUTHORIZED), err
            assert reason in err["message"], (reason, err["message"])
