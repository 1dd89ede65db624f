"""Request/reply between clients (docs/PROTOCOL.md section 9) against the
real daemon (two shards, so callers, the directory and responders sit on
different shards): the LiveKit RPC cases in our terms, each outcome seen
exactly once, spoofing, bounds, cancel, and the CLI's serve and call."""

import os
import subprocess
import threading
import time

import pytest

import rbproto as rp
from conftest import RINGBUS


def connect(d, timeout=10.0):
    c = rp.Conn("127.0.0.1", d.port, timeout=timeout)
    started = c.hello()
    assert started.kind == rp.STARTED, started
    assert started["capabilities"] & rp.CAP_RPC
    c.client_id = started["client_id"]
    assert c.client_id.startswith("anon-")
    return c


def register(c, method, service="", corr=100):
    c.send(rp.encode_register(corr, method, service))
    f = c.recv_until(lambda f: f.corr == corr and f.kind in (rp.REGISTER, rp.ERROR))
    return f


def outcome(c, corr, timeout=15.0):
    """Every REQUEST_ACK and RESPONSE of call corr up to its RESPONSE; those
    of other calls read meanwhile are kept for their own turn."""
    stash = c.__dict__.setdefault("calls", {})
    frames = stash.setdefault(corr, [])
    deadline = time.monotonic() + timeout
    while not frames or frames[-1].kind != rp.RESPONSE:
        f = c.recv(max(0.0, deadline - time.monotonic()))
        if f.kind in (rp.REQUEST_ACK, rp.RESPONSE):
            stash.setdefault(f.corr, []).append(f)
    del stash[corr]
    return frames


def assert_no_more(c, corr, wait=0.5):
    """Nothing else arrives for call corr (exactly one outcome)."""
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            f = c.recv(left)
        except TimeoutError:
            return
        assert not (f.corr == corr and f.kind in (rp.REQUEST_ACK, rp.RESPONSE)), f


def serve_one(resp, answer=lambda req: (rp.OK, "", req["payload"]), ack=True):
    """Answers the next REQUEST on resp; returns it."""
    req = resp.recv_until(lambda f: f.kind == rp.REQUEST)
    if ack:
        resp.send(rp.encode_request_ack(req.corr))
    code, message, payload = answer(req)
    resp.send(rp.encode_response(req.corr, code, message, payload))
    return req


@pytest.mark.parametrize("size", [5, 20 * 1024 + 7])
def test_call_round_trip_both_ways(daemon, size):
    with connect(daemon) as caller, connect(daemon) as resp:
        assert register(resp, "echo").kind == rp.REGISTER
        payload = os.urandom(size)
        caller.send(rp.encode_request(1, resp.client_id, "echo", payload, timeout_ms=5000))
        req = serve_one(resp, lambda r: (rp.OK, "", r["payload"][::-1]))
        assert req["peer"] == caller.client_id and req["method"] == "echo"
        assert req["payload"] == payload
        # The responder is told max(timeout, 8 s).
        assert req["timeout_ms"] == 8000
        frames = outcome(caller, 1)
        assert [f.kind for f in frames] == [rp.REQUEST_ACK, rp.RESPONSE]
        assert frames[1]["code"] == rp.OK and frames[1]["payload"] == payload[::-1]
        assert_no_more(caller, 1)


def test_recipient_not_found(daemon):
    with connect(daemon) as caller:
        caller.send(rp.encode_request(2, "nobody-here", "echo", b"x"))
        frames = outcome(caller, 2)
        assert [f["code_name"] for f in frames if f.kind == rp.RESPONSE] == ["recipient_not_found"]
        assert [f.kind for f in frames] == [rp.RESPONSE]
        assert_no_more(caller, 2)


def test_unknown_method_after_the_ack(daemon):
    with connect(daemon) as caller, connect(daemon) as resp:
        assert register(resp, "echo").kind == rp.REGISTER
        caller.send(rp.encode_request(3, resp.client_id, "nope", b"x"))
        frames = outcome(caller, 3)
        assert [f.kind for f in frames] == [rp.REQUEST_ACK, rp.RESPONSE]
        assert frames[1]["code"] == rp.UNKNOWN_METHOD
        assert_no_more(caller, 3)


def test_application_error_is_not_a_builtin_error(daemon):
    with connect(daemon) as caller, connect(daemon) as resp:
        assert register(resp, "fail").kind == rp.REGISTER
        caller.send(rp.encode_request(4, resp.client_id, "fail", b"x"))
        serve_one(resp, lambda r: (rp.APPLICATION_ERROR, "it broke", b"detail"))
        frames = outcome(caller, 4)
        assert frames[-1]["code"] == rp.APPLICATION_ERROR
        assert frames[-1]["message"] == "it broke" and frames[-1]["payload"] == b"detail"
        # A responder cannot pose as the server: built-in codes are refused.
        caller.send(rp.encode_request(5, resp.client_id, "fail", b"x"))
        req = resp.recv_until(lambda f: f.kind == rp.REQUEST)
        resp.send(rp.encode_response(req.corr, rp.RECIPIENT_NOT_FOUND, "lie"))
        err = resp.recv_until(lambda f: f.kind == rp.ERROR)
        assert err["code"] == rp.INVALID_ARGUMENT and err.corr == req.corr
        resp.send(rp.encode_response(req.corr, rp.OK, "", b"fine"))
        frames = outcome(caller, 5)
        assert [f["code"] for f in frames if f.kind == rp.RESPONSE] == [rp.OK]


def test_short_timeout_and_late_response_is_ignored(daemon):
    with connect(daemon) as caller, connect(daemon) as resp:
        assert register(resp, "slow").kind == rp.REGISTER
        t0 = time.monotonic()
        caller.send(rp.encode_request(6, resp.client_id, "slow", b"x", timeout_ms=50))
        req = resp.recv_until(lambda f: f.kind == rp.REQUEST)
        resp.send(rp.encode_request_ack(req.corr))
        frames = outcome(caller, 6)
        assert frames[-1]["code"] == rp.RESPONSE_TIMEOUT
        assert time.monotonic() - t0 < 5
        # The late response finds nothing: no second outcome.
        resp.send(rp.encode_response(req.corr, rp.OK, "", b"late"))
        assert_no_more(caller, 6, wait=1.0)


def test_no_ack_is_a_connection_timeout(daemon):
    with connect(daemon) as caller, connect(daemon) as resp:
        assert register(resp, "mute").kind == rp.REGISTER
        t0 = time.monotonic()
        caller.send(rp.encode_request(7, resp.client_id, "mute", b"x", timeout_ms=20000))
        resp.recv_until(lambda f: f.kind == rp.REQUEST)
        frames = outcome(caller, 7, timeout=30)
        assert [f.kind for f in frames] == [rp.RESPONSE]
        assert frames[0]["code"] == rp.CONNECTION_TIMEOUT
        assert time.monotonic() - t0 >= 6.9


def test_responder_disconnect_mid_call(daemon):
    with connect(daemon) as caller:
        resp = connect(daemon)
        assert register(resp, "die").kind == rp.REGISTER
        caller.send(rp.encode_request(8, resp.client_id, "die", b"x", timeout_ms=20000))
        req = resp.recv_until(lambda f: f.kind == rp.REQUEST)
        resp.send(rp.encode_request_ack(req.corr))
        caller.recv_until(lambda f: f.kind == rp.REQUEST_ACK and f.corr == 8)
        resp.close()
        frames = outcome(caller, 8)
        assert [f["code"] for f in frames] == [rp.RECIPIENT_DISCONNECTED]
        assert_no_more(caller, 8)
        # Its registration went with it.
        caller.send(rp.encode_request(9, resp.client_id, "die", b"x"))
        assert outcome(caller, 9)[-1]["code"] == rp.RECIPIENT_NOT_FOUND


def test_response_before_ack_is_accepted(daemon):
    with connect(daemon) as caller, connect(daemon) as resp:
        assert register(resp, "quick").kind == rp.REGISTER
        caller.send(rp.encode_request(10, resp.client_id, "quick", b"q"))
        req = resp.recv_until(lambda f: f.kind == rp.REQUEST)
        resp.send(rp.encode_response(req.corr, rp.OK, "", b"a"))
        resp.send(rp.encode_request_ack(req.corr))  # late ack: dropped
        frames = outcome(caller, 10)
        assert [f.kind for f in frames] == [rp.RESPONSE]
        assert frames[0]["code"] == rp.OK and frames[0]["payload"] == b"a"
        assert_no_more(caller, 10)


def test_response_from_the_wrong_connection_is_ignored(daemon):
    with connect(daemon) as caller, connect(daemon) as resp:
        assert register(resp, "m").kind == rp.REGISTER
        # Thieves on every shard (connections are spread across them), so
        # one shares the responder's request table.
        thieves = [connect(daemon) for _ in range(4)]
        try:
            caller.send(rp.encode_request(11, resp.client_id, "m", b"x", timeout_ms=1500))
            req = resp.recv_until(lambda f: f.kind == rp.REQUEST)
            # They know the request id and try to ack and answer it.
            for t in thieves:
                t.send(rp.encode_request_ack(req.corr))
                t.send(rp.encode_response(req.corr, rp.OK, "", b"forged"))
            frames = outcome(caller, 11)
            assert [f.kind for f in frames] == [rp.RESPONSE]
            assert frames[0]["code"] in (rp.CONNECTION_TIMEOUT, rp.RESPONSE_TIMEOUT)
            assert frames[0]["payload"] == b""
            # The real responder's answer after the timeout changes nothing.
            resp.send(rp.encode_response(req.corr, rp.OK, "", b"late"))
            assert_no_more(caller, 11)
        finally:
            for t in thieves:
                t.close()


def test_fifty_concurrent_calls_no_cross_talk(daemon):
    with connect(daemon) as resp:
        assert register(resp, "id").kind == rp.REGISTER
        callers = [connect(daemon) for _ in range(5)]
        try:
            for i, c in enumerate(callers):
                for j in range(10):
                    c.send(rp.encode_request(1000 + j, resp.client_id, "id", f"{i}:{j}".encode()))
            for _ in range(50):
                serve_one(resp, lambda r: (rp.OK, "", b"re:" + r["payload"] + b":" +
                                           r["peer"].encode()))
            for i, c in enumerate(callers):
                for j in range(10):
                    frames = outcome(c, 1000 + j)
                    got = [f for f in frames if f.kind == rp.RESPONSE]
                    assert len(got) == 1
                    assert got[0]["payload"] == f"re:{i}:{j}:{c.client_id}".encode()
        finally:
            for c in callers:
                c.close()


def test_cancel_frees_the_call(daemon):
    with connect(daemon) as caller, connect(daemon) as resp:
        assert register(resp, "m").kind == rp.REGISTER
        caller.send(rp.encode_request(12, resp.client_id, "m", b"x", timeout_ms=20000))
        req = resp.recv_until(lambda f: f.kind == rp.REQUEST)
        resp.send(rp.encode_request_ack(req.corr))
        caller.recv_until(lambda f: f.kind == rp.REQUEST_ACK and f.corr == 12)
        caller.send(rp.encode_request_ack(12, rp.REQUEST_ACK_CANCEL))
        frames = outcome(caller, 12)
        assert [f["code"] for f in frames] == [rp.CANCELLED]
        resp.send(rp.encode_response(req.corr, rp.OK, "", b"too late"))
        assert_no_more(caller, 12)
        # The correlation id is free again and the state is gone.
        caller.send(rp.encode_request(12, resp.client_id, "m", b"y"))
        serve_one(resp)
        assert outcome(caller, 12)[-1]["payload"] == b"y"


def test_half_close_waits_for_the_calls_outcome(daemon):
    with connect(daemon) as caller, connect(daemon) as resp:
        assert register(resp, "m").kind == rp.REGISTER
        caller.send(rp.encode_request(15, resp.client_id, "m", b"x", timeout_ms=5000))
        req = resp.recv_until(lambda f: f.kind == rp.REQUEST)
        caller.send_close()
        time.sleep(0.3)
        resp.send(rp.encode_response(req.corr, rp.OK, "", b"before close"))
        frames = caller.recv_all_until(lambda f: f.kind == rp.CLOSE)
        got = [f for f in frames if f.kind == rp.RESPONSE]
        assert len(got) == 1 and got[0]["payload"] == b"before close"
        assert frames[-1]["status"] == rp.OK


def test_register_twice_is_an_error_and_unregister_ends_serving(daemon):
    with connect(daemon) as caller, connect(daemon) as resp:
        assert register(resp, "m", corr=1).kind == rp.REGISTER
        f = register(resp, "m", corr=2)
        assert f.kind == rp.ERROR and f["code"] == rp.ALREADY_REGISTERED
        resp.send(rp.encode_unregister(3, "m"))
        assert resp.recv_until(lambda f: f.corr == 3).kind == rp.UNREGISTER
        caller.send(rp.encode_request(13, resp.client_id, "m", b"x"))
        assert outcome(caller, 13)[-1]["code"] == rp.RECIPIENT_NOT_FOUND
        f = register(resp, "m", service="anon-1", corr=4)
        assert f.kind == rp.ERROR and f["code"] == rp.FORBIDDEN


def test_service_group_spreads_requests(daemon):
    with connect(daemon) as caller:
        workers = [connect(daemon) for _ in range(3)]
        try:
            for w in workers:
                assert register(w, "work", service="pool").kind == rp.REGISTER
            for j in range(30):
                caller.send(rp.encode_request(2000 + j, "pool", "work", b"x"))
            counts = {}
            for _ in range(30):
                # Whoever got a request answers it with its own id.
                for w in workers:
                    try:
                        req = w.recv(0.05)
                    except TimeoutError:
                        continue
                    assert req.kind == rp.REQUEST
                    w.send(rp.encode_response(req.corr, rp.OK, "", w.client_id))
                    counts[w.client_id] = counts.get(w.client_id, 0) + 1
                if sum(counts.values()) == 30:
                    break
            while sum(counts.values()) < 30:
                for w in workers:
                    try:
                        req = w.recv(0.2)
                    except TimeoutError:
                        continue
                    w.send(rp.encode_response(req.corr, rp.OK, "", w.client_id))
                    counts[w.client_id] = counts.get(w.client_id, 0) + 1
            for j in range(30):
                assert outcome(caller, 2000 + j)[-1]["code"] == rp.OK
            assert len(counts) == 3 and min(counts.values()) >= 5, counts
        finally:
            for w in workers:
                w.close()


def test_payload_too_large_and_in_flight_bound(daemon):
    with connect(daemon) as caller, connect(daemon) as resp:
        assert register(resp, "m").kind == rp.REGISTER
        big = b"x" * (1024 * 1024 - 1024 + 1)
        caller.send(rp.encode_request(14, resp.client_id, "m", big))
        assert [f["code"] for f in outcome(caller, 14)] == [rp.PAYLOAD_TOO_LARGE]
        # 256 calls in flight per caller (the default); the next one is refused at once.
        for j in range(256):
            caller.send(rp.encode_request(3000 + j, resp.client_id, "m", b"", timeout_ms=30000))
        caller.send(rp.encode_request(4000, resp.client_id, "m", b""))
        assert outcome(caller, 4000)[-1]["code"] == rp.RESOURCE_EXHAUSTED


def test_configured_limits_per_connection(make_daemon):
    d = make_daemon(extra="[limits]\nrpc_calls_per_connection = 2\n"
                          "rpc_serves_per_connection = 1\nrpc_methods_per_connection = 1\n")
    with connect(d) as caller, connect(d) as other, connect(d) as resp, connect(d) as resp2:
        assert register(resp, "m", corr=1).kind == rp.REGISTER
        assert register(resp2, "m", corr=1).kind == rp.REGISTER
        f = register(resp, "n", corr=2)
        assert f.kind == rp.ERROR and f["code"] == rp.RESOURCE_EXHAUSTED
        # One request in flight to the responder; the next caller hears busy.
        caller.send(rp.encode_request(1, resp.client_id, "m", b"", timeout_ms=20000))
        resp.recv_until(lambda f: f.kind == rp.REQUEST)
        other.send(rp.encode_request(1, resp.client_id, "m", b""))
        assert outcome(other, 1)[-1]["code"] == rp.RESPONDER_BUSY
        # Two calls in flight per caller; the third is refused.
        caller.send(rp.encode_request(2, "nobody", "m", b""))
        assert outcome(caller, 2)[-1]["code"] == rp.RECIPIENT_NOT_FOUND
        caller.send(rp.encode_request(3, resp2.client_id, "m", b"", timeout_ms=20000))
        resp2.recv_until(lambda f: f.kind == rp.REQUEST)
        caller.send(rp.encode_request(4, resp2.client_id, "m", b""))
        assert outcome(caller, 4)[-1]["code"] == rp.RESOURCE_EXHAUSTED


# ---- the CLI: ringbus serve and ringbus call (over libringbus) ----


def start_serve(daemon, *args):
    """Starts `ringbus serve ARGS` and returns (process, client_id) once it serves."""
    proc = subprocess.Popen([str(RINGBUS), "--url", daemon.url, "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert '"event":"serving"' in line, (line, proc.stderr.read() if proc.poll() else "")
    return proc, line.split('"client_id":"')[1].split('"')[0]


def call(daemon, *args, timeout=60):
    return subprocess.run([str(RINGBUS), "--url", daemon.url, "call", *args],
                          capture_output=True, timeout=timeout)


def stop(proc):
    proc.terminate()
    proc.wait(timeout=10)


def test_cli_serve_and_call_round_trip(daemon):
    proc, client_id = start_serve(daemon, "upper", "--", "tr", "a-z", "A-Z")
    try:
        assert client_id.startswith("anon-")
        out = call(daemon, client_id, "upper", "hello rpc")
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"HELLO RPC"
        # A 20 KiB+ payload both ways.
        big = "x" * (20 * 1024 + 3)
        out = call(daemon, client_id, "upper", big)
        assert out.returncode == 0 and out.stdout == big.upper().encode()
    finally:
        stop(proc)


def test_cli_application_error_and_builtin_errors(daemon):
    proc, client_id = start_serve(daemon, "--as", "failing", "boom", "--", "sh", "-c",
                                  "echo partial; exit 3")
    try:
        out = call(daemon, "failing", "boom", "x")
        assert out.returncode == 1
        assert b"application_error" in out.stderr and b"status 3" in out.stderr
        out = call(daemon, "failing", "nope", "x")
        assert out.returncode == 1 and b"unknown_method" in out.stderr
        out = call(daemon, "nobody", "boom", "x")
        assert out.returncode == 1 and b"recipient_not_found" in out.stderr
    finally:
        stop(proc)


def test_cli_call_timeout(daemon):
    proc, client_id = start_serve(daemon, "slow", "--", "sleep", "5")
    try:
        t0 = time.monotonic()
        out = call(daemon, client_id, "slow", "--timeout-ms", "300")
        assert out.returncode == 1 and b"response_timeout" in out.stderr
        assert time.monotonic() - t0 < 5
    finally:
        stop(proc)


def test_cli_service_group_spreads_calls(daemon):
    procs = [start_serve(daemon, "--as", "who", "id", "--", "sh", "-c", f"printf w{i}")
             for i in range(2)]
    try:
        seen = set()
        for _ in range(8):
            out = call(daemon, "who", "id")
            assert out.returncode == 0, out.stderr
            seen.add(out.stdout)
        assert seen == {b"w0", b"w1"}
    finally:
        for p, _ in procs:
            stop(p)


def test_state_is_freed_on_every_outcome(make_daemon):
    """With one call per caller and one request per responder allowed, each
    outcome in turn must free both, or the next call would be refused."""
    d = make_daemon(extra="[limits]\nrpc_calls_per_connection = 1\n"
                          "rpc_serves_per_connection = 1\n")
    with connect(d) as caller, connect(d) as resp:
        assert register(resp, "m").kind == rp.REGISTER

        def routed(corr, timeout_ms=20000, ack=True):
            caller.send(rp.encode_request(corr, resp.client_id, "m", b"x", timeout_ms=timeout_ms))
            req = resp.recv_until(lambda f: f.kind == rp.REQUEST)
            if ack:
                resp.send(rp.encode_request_ack(req.corr))
                caller.recv_until(lambda f: f.kind == rp.REQUEST_ACK and f.corr == corr)
            return req

        # cancel
        routed(1)
        caller.send(rp.encode_request_ack(1, rp.REQUEST_ACK_CANCEL))
        assert outcome(caller, 1)[-1]["code"] == rp.CANCELLED
        # response timeout (after the ack)
        routed(2, timeout_ms=100)
        assert outcome(caller, 2)[-1]["code"] == rp.RESPONSE_TIMEOUT
        # an answer
        req = routed(3)
        resp.send(rp.encode_response(req.corr, rp.OK, "", b"a"))
        assert outcome(caller, 3)[-1]["code"] == rp.OK
        # an application error
        req = routed(4)
        resp.send(rp.encode_response(req.corr, rp.APPLICATION_ERROR, "no"))
        assert outcome(caller, 4)[-1]["code"] == rp.APPLICATION_ERROR
        # unknown method and recipient not found
        caller.send(rp.encode_request(5, resp.client_id, "other", b""))
        assert outcome(caller, 5)[-1]["code"] == rp.UNKNOWN_METHOD
        caller.send(rp.encode_request(6, "nobody", "m", b""))
        assert outcome(caller, 6)[-1]["code"] == rp.RECIPIENT_NOT_FOUND
        # Both slots are free again: the next call goes through and is answered.
        req = routed(7)
        resp.send(rp.encode_response(req.corr, rp.OK, "", b"last"))
        assert outcome(caller, 7)[-1]["payload"] == b"last"
    # A caller that disconnects mid-call frees the responder's slot too.
    with connect(d) as resp:
        assert register(resp, "m").kind == rp.REGISTER
        gone = connect(d)
        gone.send(rp.encode_request(1, resp.client_id, "m", b"", timeout_ms=20000))
        req = resp.recv_until(lambda f: f.kind == rp.REQUEST)
        resp.send(rp.encode_request_ack(req.corr))
        gone.recv_until(lambda f: f.kind == rp.REQUEST_ACK)
        gone.close()
        with connect(d) as caller:
            deadline = time.monotonic() + 10
            while True:
                caller.send(rp.encode_request(9, resp.client_id, "m", b"", timeout_ms=20000))
                got = None
                try:
                    got = resp.recv_until(lambda f: f.kind == rp.REQUEST, timeout=0.5)
                except TimeoutError:
                    pass
                if got is not None:
                    resp.send(rp.encode_response(got.corr, rp.OK, "", b"ok"))
                    assert outcome(caller, 9)[-1]["code"] == rp.OK
                    break
                assert outcome(caller, 9)[-1]["code"] == rp.RESPONDER_BUSY
                assert time.monotonic() < deadline, "the responder's slot was never freed"


@pytest.mark.parametrize("kind", ["tls", "ws", "wss", "quic"])
def test_cli_calls_across_transports(make_daemon, tmp_path, kind):
    """A responder on plain TCP answers a caller on each other transport:
    RPC lives above the link, so every transport reaches every other."""
    import rbtransport as rt
    from ports import free_port
    (tmp_path / "certs").mkdir()
    certs = rt.Certs(tmp_path / "certs")
    tcp_port, other_port = free_port(), free_port()
    d = make_daemon(listeners=rt.listener("tcp", tcp_port) + rt.listener(kind, other_port, certs))
    d.url = f"tcp://127.0.0.1:{tcp_port}"
    proc, client_id = start_serve(d, "rev", "--", "rev")
    try:
        host = "localhost" if kind in ("tls", "wss", "quic") else "127.0.0.1"
        path = "/ringbus" if kind in ("ws", "wss") else ""
        url = f"{kind}://{host}:{other_port}{path}"
        out = subprocess.run([str(RINGBUS), "--url", url, "--ca", str(certs.ca), "call",
                              client_id, "rev", "abc\n"], capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"cba\n"
    finally:
        stop(proc)


def test_bad_names_are_invalid_argument(daemon):
    with connect(daemon) as c:
        f = register(c, "has space", corr=1)
        assert f.kind == rp.ERROR and f["code"] == rp.INVALID_ARGUMENT
        assert "REGISTER method: contains a space" in f["message"]
        f = register(c, "m", service="$sys", corr=2)
        assert f.kind == rp.ERROR and f["code"] == rp.INVALID_ARGUMENT
        # An empty method is a malformed frame: the connection is closed.
        c.send(rp.encode_frame(rp.REGISTER, 3, b"\x00\x00"))
        assert c.closed_within(5)
        assert any(f.kind == rp.ERROR and f["code"] == rp.BAD_FRAME for f in c.skipped)


def test_cli_serve_survives_a_command_that_ignores_its_stdin(daemon):
    proc, client_id = start_serve(daemon, "quick", "--", "true")
    try:
        big = "y" * 100000  # more than a pipe holds: the write meets a closed pipe
        for _ in range(3):
            out = call(daemon, client_id, "quick", big)
            assert out.returncode == 0, out.stderr
            assert out.stdout == b""
        assert proc.poll() is None
    finally:
        stop(proc)


def test_calls_on_four_envelopes_are_paused_not_refused(make_daemon):
    """With four envelopes per shard, REQUESTs, acks and responses all find
    the envelopes out at times: the caller or the responder is paused (not
    read) until envelopes come back, so every call of many callers gets its
    own response exactly once, and none is refused or timed out. A 20 KiB
    payload fills a third of an envelope."""
    d = make_daemon(shards=2, extra="[limits]\nshard_envelopes = 4\n")
    with connect(d) as resp, connect(d) as resp2:
        assert register(resp, "id", service="svc").kind == rp.REGISTER
        assert register(resp2, "id", service="svc", corr=101).kind == rp.REGISTER
        callers = [connect(d, timeout=60) for _ in range(6)]
        calls = 60
        pad = bytes(20 * 1024)  # three to an envelope
        answered = {"n": 0}
        stop = threading.Event()

        def serve(r):
            while not stop.is_set():
                try:
                    req = r.recv_until(lambda f: f.kind == rp.REQUEST, timeout=0.2)
                except TimeoutError:
                    continue
                except EOFError:
                    return
                r.send(rp.encode_request_ack(req.corr) +
                       rp.encode_response(req.corr, rp.OK, "", b"re:" + req["payload"]))
                answered["n"] += 1

        servers = [threading.Thread(target=serve, args=(r,), daemon=True) for r in (resp, resp2)]
        for t in servers:
            t.start()
        try:
            for i, c in enumerate(callers):
                c.send(b"".join(rp.encode_request(5000 + j, "svc", "id", f"{i}:{j}:".encode() + pad,
                                                  timeout_ms=60000) for j in range(calls)))
            for i, c in enumerate(callers):
                for j in range(calls):
                    frames = outcome(c, 5000 + j, timeout=60)
                    got = [f for f in frames if f.kind == rp.RESPONSE]
                    assert len(got) == 1, frames
                    assert got[0]["code"] == rp.OK, (i, j, got[0])
                    assert got[0]["payload"] == f"re:{i}:{j}:".encode() + pad
            assert answered["n"] == len(callers) * calls
            assert "rpc: no envelope" not in d.log()
        finally:
            stop.set()
            for t in servers:
                t.join(5)
            for c in callers:
                c.close()


def test_refusals_on_four_envelopes_ride_the_request_envelope(make_daemon):
    """With four envelopes per shard, calls to a service, to a method it does
    not serve and to nobody are pipelined in one stream: the directory
    answers the refused ones by writing the outcome over the request in its
    own envelope, and forwards the others in it, so each call still gets
    its one precise outcome, never resource_exhausted or a timeout."""
    d = make_daemon(shards=2, extra="[limits]\nshard_envelopes = 4\n")
    with connect(d) as resp:
        assert register(resp, "id", service="svc").kind == rp.REGISTER
        callers = [connect(d, timeout=60) for _ in range(4)]
        kinds = [("svc", "id", rp.OK), ("svc", "nope", rp.UNKNOWN_METHOD),
                 ("ghost", "id", rp.RECIPIENT_NOT_FOUND)]
        calls = 60
        pad = bytes(20 * 1024)
        stop = threading.Event()

        def serve():
            while not stop.is_set():
                try:
                    req = resp.recv_until(lambda f: f.kind == rp.REQUEST, timeout=0.2)
                except TimeoutError:
                    continue
                except EOFError:
                    return
                resp.send(rp.encode_request_ack(req.corr) +
                          rp.encode_response(req.corr, rp.OK, "", req["payload"][:16]))

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        try:
            for i, c in enumerate(callers):
                c.send(b"".join(rp.encode_request(7000 + j, kinds[j % 3][0], kinds[j % 3][1],
                                                  f"{i}:{j}:".encode().ljust(16, b".") + pad,
                                                  timeout_ms=60000) for j in range(calls)))
            for i, c in enumerate(callers):
                for j in range(calls):
                    frames = outcome(c, 7000 + j, timeout=60)
                    got = [f for f in frames if f.kind == rp.RESPONSE]
                    acks = [f for f in frames if f.kind == rp.REQUEST_ACK]
                    assert len(got) == 1 and len(acks) <= 1, frames
                    code = kinds[j % 3][2]
                    assert got[0]["code"] == code, (i, j, got[0])
                    if code == rp.OK:
                        assert got[0]["payload"] == f"{i}:{j}:".encode().ljust(16, b".")
                    elif code == rp.UNKNOWN_METHOD:
                        assert len(acks) == 1
                        assert got[0]["message"] == "the destination does not serve that method"
                    else:
                        assert not acks
                        assert got[0]["message"] == "nobody serves that destination"
            for c in callers:
                assert not c.__dict__.get("calls"), c.calls  # no frame of any call left over
                try:
                    f = c.recv(0.2)
                except TimeoutError:
                    continue
                assert f.kind not in (rp.REQUEST_ACK, rp.RESPONSE), f  # a second outcome
            assert "rpc: no envelope" not in d.log()
        finally:
            stop.set()
            server.join(5)
            for c in callers:
                c.close()
