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
