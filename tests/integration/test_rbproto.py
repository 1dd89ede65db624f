"""Self-tests of rbproto (the Python wire codec and client) that need no
ringbusd: every kind round-trips, the documented example bytes match, and
malformed input raises ProtocolError with the right wire code. The Conn
tests talk to a scripted in-process socket, not to the daemon."""

import pathlib
import socket
import struct
import threading

import pytest

import rbproto as rp


def one(buf):
    frame, used = rp.decode(buf)
    assert frame is not None
    assert used == len(buf)
    return frame


# ---- round trips of every kind ------------------------------------------------


def test_hello_round_trips():
    f = one(rp.encode_hello(7, name="cli-é", creds=b"\x00\xff"))
    assert (f.kind, f.kind_name, f.corr) == (rp.HELLO, "HELLO", 7)
    assert f.fields == {"version": 1, "name": "cli-é", "credentials": b"\x00\xff"}


def test_started_round_trips():
    f = one(rp.encode_started(1, keepalive_ms=1500, capabilities=rp.CAP_STREAM,
                              max_frame_bytes=4096, server_id="node-1"))
    assert f.kind == rp.STARTED
    assert f.fields == {"keepalive_ms": 1500, "capabilities": rp.CAP_STREAM,
                        "max_frame_bytes": 4096, "server_id": "node-1", "epoch": 1, "has_epoch": True,
                        "client_id": ""}
    f = one(rp.encode_started(1, client_id="anon-7"))
    assert f["client_id"] == "anon-7" and f["epoch"] == 1
    f = one(rp.encode_started(1, epoch=2**64 - 1))
    assert f["epoch"] == 2**64 - 1 and f["has_epoch"]


def test_started_of_an_older_server_has_no_epoch():
    buf = rp.encode_started(1, server_id="old", epoch=None)
    assert len(buf) == 16 + 4 + 8 + 4 + 2 + 3
    f = one(buf)
    assert f["server_id"] == "old" and f["epoch"] == 0 and f["has_epoch"] is False
    with pytest.raises(rp.ProtocolError, match="epoch"):
        rp.decode(struct.pack("<I", len(buf) + 4) + buf[4:] + b"\x01\x02\x03\x04")


def test_error_round_trips_with_code_name():
    f = one(rp.encode_error(9, rp.INVALID_TOPIC, "topic: empty"))
    assert (f.kind, f.corr) == (rp.ERROR, 9)
    assert f.fields == {"code": rp.INVALID_TOPIC, "code_name": "invalid_topic", "message": "topic: empty"}


def test_ping_and_pong_round_trip():
    for enc, kind in ((rp.encode_ping, rp.PING), (rp.encode_pong, rp.PONG)):
        f = one(enc(0, 2**64 - 1))
        assert (f.kind, f.corr, f["nonce"]) == (kind, 0, 2**64 - 1)


def test_close_round_trips():
    f = one(rp.encode_close(0, rp.GOING_AWAY, "shutting down"))
    assert f.kind == rp.CLOSE
    assert f["status"] == rp.GOING_AWAY and f["status_name"] == "going_away"
    assert f["message"] == "shutting down"


def test_publish_round_trips_with_and_without_key():
    f = one(rp.encode_publish(3, "orders.eu", b"\x00payload", key="k-1"))
    assert f.fields == {"topic": "orders.eu", "key": b"k-1", "payload": b"\x00payload"}
    f = one(rp.encode_publish(4, "t", b""))
    assert f.fields == {"topic": "t", "key": b"", "payload": b""}


def test_publish_ack_round_trips():
    f = one(rp.encode_publish_ack(3, "orders", 2**63))
    assert (f.kind, f.corr, f["topic"], f["seq"]) == (rp.PUBLISH_ACK, 3, "orders", 2**63)
    assert f["flags"] == 0 and f["duplicate"] is False
    f = one(rp.encode_publish_ack(3, "orders", 7, flags=rp.ACK_DUPLICATE))
    assert f["seq"] == 7 and f["duplicate"] is True
    f = one(rp.encode_publish_ack(3, "orders", 7, flags=None))  # an older server
    assert f["seq"] == 7 and f["flags"] == 0 and f["duplicate"] is False


def test_mutate_round_trips_cursors_removes_and_history_only():
    f = one(rp.encode_mutate(5, 77, adds=[("a", 0), ("b", 42), ("c", "now")], removes=["d"],
                             history_only=True))
    assert f.kind == rp.MUTATE
    assert f["mutate_id"] == 77 and f["history_only"] is True and f["flags"] == 1
    assert f["adds"] == [("a", 0), ("b", 42), ("c", "now")]
    assert f["removes"] == ["d"]
    assert f["epoch"] == 0 and f["has_epoch"] is True


def test_mutate_carries_an_epoch_and_an_older_client_omits_it():
    f = one(rp.encode_mutate(5, 1, adds=[("a", 3)], epoch=0xDEADBEEF00000001))
    assert f["epoch"] == 0xDEADBEEF00000001 and f["has_epoch"] is True
    old = rp.encode_mutate(5, 1, adds=[("a", 3)], epoch=None)
    f = one(old)
    assert f["epoch"] == 0 and f["has_epoch"] is False and f["adds"] == [("a", 3)]


def test_topic_error_round_trips():
    f = one(rp.encode_topic_error(0, 7, "日本.注文", rp.EPOCH_MISMATCH, "other epoch"))
    assert (f.kind, f.kind_name, f.corr) == (rp.TOPIC_ERROR, "TOPIC_ERROR", 0)
    assert f.fields == {"mutate_id": 7, "topic": "日本.注文", "code": rp.EPOCH_MISMATCH,
                        "code_name": "epoch_mismatch", "message": "other epoch"}
    assert rp.CODE_NAMES[rp.CURSOR_AHEAD] == "cursor_ahead"


def test_mutate_with_empty_lists_round_trips():
    buf = rp.encode_mutate(5, 0)
    assert len(buf) == 16 + 8 + 1 + 4 + 4 + 8
    f = one(buf)
    assert f["adds"] == [] and f["removes"] == [] and f["history_only"] is False


def test_messages_round_trip():
    items = [("a", 1, b"x"), ("日本", 2, b""), ("a", 3, bytes(range(256)))]
    f = one(rp.encode_messages(0, 9, items))
    assert f["mutate_id"] == 9
    assert f["items"] == items
    assert one(rp.encode_messages(0, 0, []))["items"] == []


def test_topics_live_and_catchup_complete_round_trip():
    assert one(rp.encode_topics_live(0, ["a", "b"]))["topics"] == ["a", "b"]
    assert one(rp.encode_topics_live(0, []))["topics"] == []
    f = one(rp.encode_catchup_complete(0, 77))
    assert (f.kind_name, f["mutate_id"]) == ("CATCHUP_COMPLETE", 77)


def test_max_length_topic_round_trips_and_256_does_not_encode():
    t = "x" * 255
    assert one(rp.encode_publish(1, t, b"p"))["topic"] == t
    with pytest.raises(ValueError):
        rp.encode_publish(1, "x" * 256, b"p")


# ---- documented bytes (docs/PROTOCOL.md worked examples) -------------------------


def test_auth_round_trips_credentials():
    f = one(rp.encode_auth(9, rp.creds_token("h.p.s")))
    assert (f.kind, f.kind_name, f.corr) == (rp.AUTH, "AUTH", 9)
    assert rp.decode_creds(f["credentials"]) == {"kind": rp.CRED_TOKEN, "token": "h.p.s"}


def test_auth_accept_matches_documented_bytes():
    assert rp.encode_auth(5) == bytes.fromhex("12000000010d0000" "0500000000000000" "0000")


def test_credentials_match_documented_bytes():
    assert rp.creds_token("a.b") == bytes.fromhex("010300612e62")
    assert rp.creds_password("bo", "pw") == bytes.fromhex("0202626f02007077")
    assert rp.decode_creds(b"") == {"kind": rp.CRED_NONE}
    assert rp.decode_creds(bytes.fromhex("0202626f02007077")) == {
        "kind": rp.CRED_PASSWORD, "user": "bo", "password": b"pw"}


@pytest.mark.parametrize("raw, why", [
    (b"\x07", "kind 7 unknown"),
    (b"\x01\x00\x00", "token: 0 bytes"),
    (b"\x01\x03\x00a%b", "token: byte 1 is not base64url"),
    (b"\x01\x01\x00a\x00", "1 trailing bytes"),
    (b"\x02\x00\x01\x00p", "user: empty"),
    (b"\x02\x03a b\x01\x00p", "user: control character or space"),
    (b"\x02\x01a\x00\x00", "password: 0 bytes"),
    (b"\x02\x05bob", "truncated"),
])
def test_malformed_credentials_are_unauthorized(raw, why):
    with pytest.raises(rp.ProtocolError) as e:
        rp.decode_creds(raw)
    assert e.value.code == rp.UNAUTHORIZED
    assert why in str(e.value)


def test_hello_matches_documented_bytes():
    want = bytes.fromhex("19000000 0101 0000 0100000000000000 0100 0300 636c69 0000")
    assert rp.encode_hello(1, name="cli") == want


def test_publish_matches_documented_bytes():
    want = bytes.fromhex("1e000000 0107 0000 0200000000000000 06 6f7264657273 00 02000000 6869")
    assert rp.encode_publish(2, "orders", b"hi") == want


def test_started_mutate_messages_and_topic_error_match_documented_bytes():
    epoch = 0x1122334455667788
    assert rp.encode_started(1, capabilities=3, server_id="n1", epoch=epoch) == bytes.fromhex(
        "2c000000 0102 0000 0100000000000000 30750000 0300000000000000 00001000 0200 6e31"
        "8877665544332211")
    mutate = rp.encode_mutate(3, 5, adds=[("a", 10), ("b", "now")], removes=["c"], epoch=epoch)
    assert mutate == bytes.fromhex(
        "41000000 0109 0000 0300000000000000 0500000000000000 00 02000000"
        "0161 00 0a00000000000000 0162 01 0000000000000000 01000000 0163 8877665544332211")
    old = rp.encode_mutate(3, 5, adds=[("a", 10), ("b", "now")], removes=["c"], epoch=None)
    assert len(old) == 57 and old[4:] == mutate[4:57]
    assert rp.encode_messages(0, 5, [("a", 11, b"x"), ("a", 12, b"")]) == bytes.fromhex(
        "39000000 010a 0000 0000000000000000 0500000000000000 02000000"
        "0161 0b00000000000000 01000000 78 0161 0c00000000000000 00000000")
    assert rp.encode_topic_error(0, 5, "a", rp.CURSOR_AHEAD, "cursor 10 is beyond the head 5") \
        == bytes.fromhex("3c000000 010f 0000 0000000000000000 0500000000000000 0161 0f00 1e00") \
        + b"cursor 10 is beyond the head 5"


def documented_example(title, index=0):
    """The bytes of a worked example of docs/PROTOCOL.md §11: the hex before
    the comment on each line of the index-th code block under `### title`."""
    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
    section = text.split("## 11. Worked examples", 1)[1].split(f"### {title}\n", 1)[1]
    section = section.split("\n### ", 1)[0]
    block = section.split("```\n")[1 + 2 * index]
    out = bytearray()
    for line in block.splitlines():
        out += bytes.fromhex(line.split("  ", 1)[0])
    return bytes(out)


def test_mutate_worked_example_matches_the_codec():
    want = rp.encode_mutate(3, 5, adds=[("a", 10), ("b", "now")], removes=["c"],
                            epoch=0x1122334455667788)
    assert documented_example("MUTATE") == want


def test_started_worked_example_matches_the_codec():
    want = rp.encode_started(1, keepalive_ms=30000,
                             capabilities=rp.CAP_STREAM | rp.CAP_PUBLISH | rp.CAP_RPC,
                             max_frame_bytes=1 << 20, server_id="n1",
                             epoch=0x1122334455667788, client_id="anon-1")
    assert documented_example("STARTED") == want


def test_publish_ack_worked_example_matches_the_codec():
    assert documented_example("PUBLISH") == rp.encode_publish(2, "orders", b"hi")
    assert documented_example("PUBLISH", 1) == rp.encode_publish_ack(2, "orders", 42)


def test_messages_worked_example_is_the_history_of_the_mutate_example():
    """The MUTATE example adds a after seq 10 and b with cursor NOW: its
    history can only hold a's messages above 10, never b's."""
    raw = documented_example("MESSAGES")
    assert raw == rp.encode_messages(0, 5, [("a", 11, b"x"), ("a", 12, b"")])
    f = one(raw)
    assert f["mutate_id"] == 5
    assert all(t == "a" and s > 10 for t, s, _ in f["items"])


# ---- partial and malformed input --------------------------------------------------


ALL_SAMPLES = [
    rp.encode_hello(1),
    rp.encode_started(1, client_id="anon-1"),
    rp.encode_error(1, rp.BAD_FRAME, "x"),
    rp.encode_ping(0, 1),
    rp.encode_pong(0, 1),
    rp.encode_close(0),
    rp.encode_publish(1, "t", b"p", key="k"),
    rp.encode_publish_ack(1, "t", 1),
    rp.encode_mutate(1, 1, adds=[("a", 1), ("b", "now")], removes=["c"]),
    rp.encode_messages(0, 1, [("a", 1, b"x")]),
    rp.encode_topics_live(0, ["a"]),
    rp.encode_catchup_complete(0, 1),
    rp.encode_going_away(0, 1500, "server shutting down"),
    rp.encode_topic_error(0, 1, "t", rp.CURSOR_AHEAD, "cursor 10 is beyond the head 5"),
    rp.encode_auth(1, rp.creds_token("a.b.c")),
    rp.encode_register(1, "m", "svc"),
    rp.encode_unregister(1, "m"),
    rp.encode_request(1, "anon-2", "m", b"p", timeout_ms=50),
    rp.encode_request_ack(1, rp.REQUEST_ACK_CANCEL),
    rp.encode_response(1, rp.APPLICATION_ERROR, "no", b"d"),
    rp.encode_lagged(0, "cur.a", 17),
]

# Where a sample may legally end early: before its appended fields (STARTED:
# before client_id "anon-1", or before the epoch too; MUTATE: before the epoch).
OPTIONAL_TAIL = {rp.STARTED: (8, 16), rp.MUTATE: (8,), rp.PUBLISH_ACK: (1,)}


def test_samples_cover_every_kind():
    assert sorted(one(s).kind for s in ALL_SAMPLES) == sorted(rp.KIND_NAMES)


@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=lambda s: rp.KIND_NAMES[s[5]])
def test_every_short_prefix_is_incomplete(sample):
    for n in range(len(sample)):
        assert rp.decode(sample[:n]) == (None, 0)


@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=lambda s: rp.KIND_NAMES[s[5]])
def test_size_shorter_than_body_is_bad_frame_at_every_offset(sample):
    for cut in range(16, len(sample)):
        lying = struct.pack("<I", cut) + sample[4:cut]
        if len(sample) - cut in OPTIONAL_TAIL.get(sample[5], ()):
            f = one(lying)
            if sample[5] == rp.PUBLISH_ACK:
                assert f["has_flags"] is False
            else:
                assert f["has_epoch"] is (len(sample) - cut == 8 and sample[5] == rp.STARTED)
            continue
        with pytest.raises(rp.ProtocolError) as e:
            rp.decode(lying)
        assert e.value.code == rp.BAD_FRAME


@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=lambda s: rp.KIND_NAMES[s[5]])
def test_trailing_bytes_are_bad_frame(sample):
    padded = struct.pack("<I", len(sample) + 1) + sample[4:] + b"\x00"
    with pytest.raises(rp.ProtocolError, match="1 trailing bytes"):
        rp.decode(padded)


def test_two_frames_in_one_buffer_decode_one_at_a_time():
    buf = rp.encode_ping(0, 1) + rp.encode_pong(0, 2)
    f, used = rp.decode(buf)
    assert (f.kind, used) == (rp.PING, 24)
    assert [g.kind for g in rp.decode_all(buf)] == [rp.PING, rp.PONG]


def test_size_below_header_is_bad_frame():
    with pytest.raises(rp.ProtocolError, match="frame size 3 below header 16") as e:
        rp.decode(rp.encode_frame(rp.PING, 0, b"", size=3))
    assert e.value.code == rp.BAD_FRAME


def test_size_above_max_is_too_large():
    buf = rp.encode_frame(rp.PUBLISH, 0, b"", size=2**32 - 1)
    with pytest.raises(rp.ProtocolError) as e:
        rp.decode(buf, max_frame_bytes=rp.MAX_FRAME_BYTES_DEFAULT)
    assert e.value.code == rp.TOO_LARGE


def test_unknown_version_kind_and_flags_are_refused():
    with pytest.raises(rp.ProtocolError) as e:
        rp.decode(rp.encode_hello(1, version=2))
    assert e.value.code == rp.UNSUPPORTED_VERSION
    for kind in (0, 14, 16, 255):
        with pytest.raises(rp.ProtocolError) as e:
            rp.decode(rp.encode_frame(kind, 0, b""))
        assert e.value.code == rp.BAD_FRAME
    with pytest.raises(rp.ProtocolError, match="flags"):
        rp.decode(rp.encode_frame(rp.PING, 0, bytes(8), flags=1))


def test_huge_count_with_small_body_is_bad_frame():
    body = struct.pack("<QBI", 1, 0, 2**32 - 1) + b"\x01t" + bytes(9) + struct.pack("<I", 0)
    with pytest.raises(rp.ProtocolError, match="add_count 4294967295 needs at least"):
        rp.decode(rp.encode_frame(rp.MUTATE, 0, body))


def test_mutate_cursor_rules_are_enforced():
    body = struct.pack("<QBI", 1, 0, 1) + b"\x01t" + struct.pack("<BQ", rp.CURSOR_NOW, 5) + bytes(4)
    with pytest.raises(rp.ProtocolError, match="must be 0"):
        rp.decode(rp.encode_frame(rp.MUTATE, 0, body))
    body = struct.pack("<QBI", 1, 0, 1) + b"\x01t" + struct.pack("<BQ", 2, 0) + bytes(4)
    with pytest.raises(rp.ProtocolError, match="cursor_kind 2 unknown"):
        rp.decode(rp.encode_frame(rp.MUTATE, 0, body))
    with pytest.raises(rp.ProtocolError, match="unknown bits"):
        rp.decode(rp.encode_mutate(1, 1, flags=0x80))


def test_empty_topic_and_invalid_utf8_are_bad_frame():
    with pytest.raises(rp.ProtocolError, match="topic length 0"):
        rp.decode(rp.encode_frame(rp.PUBLISH_ACK, 0, b"\x00" + bytes(8)))
    for bad in (b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"):
        with pytest.raises(rp.ProtocolError, match="invalid UTF-8"):
            rp.decode(rp.encode_publish(1, bad, b""))
        with pytest.raises(rp.ProtocolError, match="invalid UTF-8"):
            rp.decode(rp.encode_hello(1, name=bad))


# ---- Conn against a scripted socket ----------------------------------------------


class Script:
    """A one-connection TCP server on 127.0.0.1 that runs fn(sock)."""

    def __init__(self, fn):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn):
        sock, _ = self.listener.accept()
        with sock:
            fn(self, sock)
        self.listener.close()

    def read_frame(self, sock):
        buf = b""
        while True:
            f, used = rp.decode(buf)
            if f is not None:
                self.received += buf[:used]
                return f
            buf += sock.recv(65536)


def test_conn_hello_returns_started_and_closed_within_sees_close():
    def server(s, sock):
        hello = s.read_frame(sock)
        assert hello.kind == rp.HELLO
        sock.sendall(rp.encode_started(hello.corr, server_id="fake"))
        sock.sendall(rp.encode_close(0, rp.GOING_AWAY, "bye"))

    s = Script(server)
    with rp.Conn(port=s.port, timeout=2.0) as c:
        f = c.hello(name="me")
        assert (f.kind_name, f["server_id"]) == ("STARTED", "fake")
        assert c.closed_within(2.0) is True
        assert [g.kind for g in c.skipped] == [rp.CLOSE]
        with pytest.raises(EOFError):
            c.recv(0.5)


def test_conn_recv_times_out_and_closed_within_is_false_while_open():
    done = threading.Event()

    def server(s, sock):
        done.wait(5)

    s = Script(server)
    with rp.Conn(port=s.port, timeout=2.0) as c:
        with pytest.raises(TimeoutError):
            c.recv(0.1)
        assert c.closed_within(0.1) is False
    done.set()


def test_conn_publish_waits_for_its_ack_and_keeps_other_frames():
    def server(s, sock):
        pub = s.read_frame(sock)
        sock.sendall(rp.encode_messages(0, 0, [("t", 1, b"live")]))
        sock.sendall(rp.encode_publish_ack(pub.corr + 100, pub["topic"], 1))
        sock.sendall(rp.encode_publish_ack(pub.corr, pub["topic"], 2))
        sock.sendall(rp.encode_catchup_complete(0, 3))

    s = Script(server)
    with rp.Conn(port=s.port, timeout=2.0) as c:
        ack = c.publish("t", b"x", corr=5)
        assert (ack.kind, ack.corr, ack["seq"]) == (rp.PUBLISH_ACK, 5, 2)
        assert c.recv().kind == rp.MESSAGES
        assert c.recv().corr == 105
        done = c.recv_until(lambda f: f.kind == rp.CATCHUP_COMPLETE)
        assert done["mutate_id"] == 3 and c.skipped == []


def test_rpc_bytes_match_the_protocol_document():
    """docs/PROTOCOL.md section 12's worked example, byte for byte."""
    assert rp.encode_request(7, "anon-2", "echo", b"hi", timeout_ms=5000) == bytes.fromhex(
        "26000000 01 12 0000 0700000000000000 88130000 06616e6f6e2d32 046563686f 020000006869")
    assert rp.encode_response(7, rp.OK, "", b"hi") == bytes.fromhex(
        "1a000000 01 14 0000 0700000000000000 0000 0000 020000006869")
