"""The `ringbus` CLI against the real daemon: ping, pub, sub and stream,
their JSON lines, exit statuses and one-line errors."""

import base64
import json
import queue
import re
import socket
import subprocess
import threading
import time

import pytest

import rbtransport as rt
from conftest import RINGBUS, free_port, run_cli

LINE_WAIT_S = 10


class Live:
    """A CLI process whose stdout lines are read as they come."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [str(RINGBUS), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, command):
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def event(self, timeout=LINE_WAIT_S):
        line = self.lines.get(timeout=timeout)
        assert line is not None, f"stdout ended; stderr: {self.proc.stderr.read()}"
        return json.loads(line)

    def until(self, pred, timeout=LINE_WAIT_S):
        """Events up to and including the first that satisfies pred."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            ev = self.event(timeout=max(0.01, deadline - time.monotonic()))
            seen.append(ev)
            if pred(ev):
                return seen

    def finish(self, timeout=LINE_WAIT_S):
        """Closes stdin, waits; returns (exit status, remaining events)."""
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        rc = self.proc.wait(timeout=timeout)
        rest = []
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                return rc, rest
            rest.append(json.loads(line))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def events(stdout):
    return [json.loads(line) for line in stdout.splitlines()]


def publish(d, topic, payloads):
    out = run_cli("--url", d.url, "pub", topic, input="".join(p + "\n" for p in payloads))
    assert out.returncode == 0, out.stderr
    return [ev["seq"] for ev in events(out.stdout)]


def test_ping_prints_round_trip_time(daemon):
    out = run_cli("--url", daemon.url, "ping", "--count", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert re.fullmatch(r"pong from \S+: rtt \d+\.\d{3} ms", line), line


def test_pub_stdin_acks_every_line_in_order_then_sub_sees_exactly_them(daemon):
    payloads = [f"m{i}" for i in range(1, 201)]
    out = run_cli("--url", daemon.url, "pub", "orders", input="\n".join(payloads) + "\n")
    assert out.returncode == 0, out.stderr
    acks = events(out.stdout)
    assert acks == [{"topic": "orders", "seq": i} for i in range(1, 201)]

    out = run_cli("--url", daemon.url, "sub", "--count", "200", "--timeout", "10", "orders@0")
    assert out.returncode == 0, out.stderr
    msgs = [ev for ev in events(out.stdout) if ev["event"] == "message"]
    assert [m["seq"] for m in msgs] == list(range(1, 201))
    assert [m["data"] for m in msgs] == payloads
    assert all(m["topic"] == "orders" for m in msgs)


def test_pub_pipelines_many_lines_without_a_round_trip_each(daemon):
    count = 20000
    start = time.monotonic()
    out = run_cli("--url", daemon.url, "pub", "bulk",
                  input="".join(f"{i}\n" for i in range(count)), timeout=60)
    elapsed = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == count
    assert json.loads(lines[-1]) == {"topic": "bulk", "seq": count}
    # One round trip per line, or a stall per window, would take far longer.
    assert elapsed < 15, elapsed


def test_pub_payload_argument_publishes_once(daemon):
    out = run_cli("--url", daemon.url, "pub", "one", "hello world")
    assert out.returncode == 0, out.stderr
    assert events(out.stdout) == [{"topic": "one", "seq": 1}]
    out = run_cli("--url", daemon.url, "sub", "--history-only", "--timeout", "10", "one@0")
    msgs = [ev for ev in events(out.stdout) if ev["event"] == "message"]
    assert [m["data"] for m in msgs] == ["hello world"]


def test_pub_error_ack_prints_error_line_and_fails(daemon):
    out = run_cli("--url", daemon.url, "pub", "bad topic", "x")
    assert out.returncode != 0
    (ev,) = events(out.stdout)
    assert ev["event"] == "error"
    assert ev["code"] == "invalid_topic"
    assert ev["message"]


def test_sub_cursor_after_seq_skips_older_messages(daemon):
    publish(daemon, "t", ["a", "b", "c", "d"])
    out = run_cli("--url", daemon.url, "sub", "--count", "2", "--timeout", "10", "t@2")
    assert out.returncode == 0, out.stderr
    msgs = [ev for ev in events(out.stdout) if ev["event"] == "message"]
    assert [(m["seq"], m["data"]) for m in msgs] == [(3, "c"), (4, "d")]


def test_sub_without_cursor_sees_only_new_messages(daemon):
    publish(daemon, "news", ["old1", "old2", "old3"])
    sub = Live("--url", daemon.url, "sub", "--count", "1", "--timeout", "20", "news")
    try:
        first = sub.until(lambda ev: ev["event"] == "catchup_complete")
        assert {"event": "topics_live", "topics": ["news"]} in first
        assert not [ev for ev in first if ev["event"] == "message"]
        assert publish(daemon, "news", ["fresh"]) == [4]
        rc, rest = sub.finish()
        assert rc == 0
        assert [(ev["seq"], ev["data"]) for ev in rest] == [(4, "fresh")]
    finally:
        sub.kill()


def test_sub_history_only_exits_after_the_history(daemon):
    publish(daemon, "h", ["1", "2", "3"])
    out = run_cli("--url", daemon.url, "sub", "--history-only", "--timeout", "20", "h@1")
    assert out.returncode == 0, out.stderr
    evs = events(out.stdout)
    assert [ev["event"] for ev in evs] == ["message", "message", "catchup_complete"]
    assert [ev["seq"] for ev in evs[:2]] == [2, 3]
    assert evs[2] == {"event": "catchup_complete", "mutate_id": 1}


def test_sub_timeout_exits_zero(daemon):
    start = time.monotonic()
    out = run_cli("--url", daemon.url, "sub", "--timeout", "0.5", "quiet")
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - start < 5
    assert events(out.stdout) == [
        {"event": "topics_live", "topics": ["quiet"]},
        {"event": "catchup_complete", "mutate_id": 1},
    ]


def test_sub_invalid_topic_prints_the_error_and_fails(daemon):
    out = run_cli("--url", daemon.url, "sub", "--timeout", "10", "bad topic@0")
    assert out.returncode != 0
    evs = events(out.stdout)
    assert evs and evs[0]["event"] in ("error", "closed"), evs
    assert "invalid_topic" in out.stdout


def test_stream_add_remove_and_close_print_events_in_order(daemon):
    publish(daemon, "a", ["a1", "a2"])
    st = Live("--url", daemon.url, "stream")
    try:
        st.send({"mutate_id": 7, "add": [{"topic": "a", "cursor": 0},
                                         {"topic": "b", "cursor": "now"}]})
        wave = st.until(lambda ev: ev["event"] == "catchup_complete")
        assert wave[-1] == {"event": "catchup_complete", "mutate_id": 7}
        kinds = [ev["event"] for ev in wave]
        msgs = [ev for ev in wave if ev["event"] == "message"]
        assert [(m["topic"], m["seq"], m["data"]) for m in msgs] == [("a", 1, "a1"), ("a", 2, "a2")]
        live = [t for ev in wave if ev["event"] == "topics_live" for t in ev["topics"]]
        assert sorted(live) == ["a", "b"]
        # a's history comes before a goes live.
        a_live = next(i for i, ev in enumerate(wave)
                      if ev["event"] == "topics_live" and "a" in ev["topics"])
        assert kinds.index("message") < a_live

        st.send({"remove": ["a"]})
        st.until(lambda ev: ev["event"] == "catchup_complete")
        st.send({"publish": {"topic": "b", "data": "b1"}})
        got = st.until(lambda ev: ev["event"] == "message")
        assert got[-1]["topic"] == "b" and got[-1]["data"] == "b1"

        st.send({"close": True})
        rc, rest = st.finish()
        assert rc == 0
        assert rest and rest[-1]["event"] == "closed" and rest[-1]["status"] == "ok", rest
        assert not [ev for ev in rest if ev["event"] == "message" and ev["topic"] == "a"]
    finally:
        st.kill()


def test_stream_reports_the_epoch_and_topic_errors(daemon):
    publish(daemon, "te", ["t1", "t2"])
    st = Live("--url", daemon.url, "stream")
    try:
        (started,) = st.until(lambda ev: ev["event"] == "started")
        epoch = started["epoch"]
        assert epoch > 0 and "server_id" in started
        st.send({"mutate_id": 3, "add": [{"topic": "te", "cursor": 10}, {"topic": "ok", "cursor": 0}],
                 "epoch": epoch})
        wave = st.until(lambda ev: ev["event"] == "catchup_complete")
        errs = [ev for ev in wave if ev["event"] == "topic_error"]
        assert [(e["topic"], e["mutate_id"], e["code"]) for e in errs] == [("te", 3, "cursor_ahead")]
        assert "beyond the head 2" in errs[0]["message"]
        assert [t for ev in wave if ev["event"] == "topics_live" for t in ev["topics"]] == ["ok"]
        st.send({"mutate_id": 4, "add": [{"topic": "te", "cursor": 1}], "epoch": epoch ^ 1})
        wave = st.until(lambda ev: ev["event"] == "catchup_complete")
        assert [(ev["topic"], ev["code"]) for ev in wave if ev["event"] == "topic_error"] \
            == [("te", "epoch_mismatch")]
        st.send({"mutate_id": 5, "add": [{"topic": "te", "cursor": 1}], "epoch": epoch})
        wave = st.until(lambda ev: ev["event"] == "catchup_complete")
        assert [(ev["topic"], ev["seq"]) for ev in wave if ev["event"] == "message"] == [("te", 2)]
        st.send({"close": True})
        rc, _ = st.finish()
        assert rc == 0
    finally:
        st.kill()


def test_sub_exits_nonzero_on_a_topic_error(daemon):
    publish(daemon, "sube", ["a"])
    out = run_cli("--url", daemon.url, "sub", "--timeout", "10", "sube@5")
    assert out.returncode == 1
    evs = events(out.stdout)
    assert [(ev["event"], ev.get("code")) for ev in evs] == [("topic_error", "cursor_ahead")], evs
    assert out.stderr.startswith("ringbus: sub: topic sube: "), out.stderr


def test_stream_eof_on_stdin_half_closes(daemon):
    line = json.dumps({"mutate_id": 1, "add": [{"topic": "e", "cursor": 0}]})
    out = run_cli("--url", daemon.url, "stream", input=line + "\n")
    assert out.returncode == 0, out.stderr
    evs = events(out.stdout)
    assert evs[-1]["event"] == "closed" and evs[-1]["status"] == "ok"
    assert {"event": "catchup_complete", "mutate_id": 1} in evs


def test_stream_bad_json_line_fails_with_one_stderr_line(daemon):
    out = run_cli("--url", daemon.url, "stream", input='{"mutate_id":1,"add":[\n')
    assert out.returncode != 0
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("ringbus: stdin line 1: "), out.stderr


def test_stream_unknown_key_fails_with_one_stderr_line(daemon):
    out = run_cli("--url", daemon.url, "stream", input='{"subscribe":["a"]}\n')
    assert out.returncode != 0
    assert out.stderr == 'ringbus: stdin line 1: command: unknown key "subscribe"\n'


def test_stream_json_errors_name_the_stdin_line_and_the_column(daemon):
    for second, why in (
        ('{"close":true} x', "column 16: end of file expected near 'x'"),
        ('{"remove":["a"],"remove":["b"]}', "column 24: duplicate object key near '\"remove\"'"),
        ('{"remove":["\xff"]}', "column 12: unable to decode byte 0xff near '\"'"),
    ):
        out = subprocess.run([str(RINGBUS), "--url", daemon.url, "stream"],
                             input=('{"mutate_id":1,"add":[{"topic":"jl"}]}\n' + second + "\n")
                             .encode("latin-1"), capture_output=True, timeout=30)
        assert out.returncode == 1
        assert out.stderr.decode() == f"ringbus: stdin line 2: bad JSON: {why}\n"


def test_stream_takes_epochs_and_cursors_above_int64_max(daemon):
    publish(daemon, "big", ["b1"])
    st = Live("--url", daemon.url, "stream")
    try:
        (started,) = st.until(lambda ev: ev["event"] == "started")
        # The epoch is random: one of the two is above INT64_MAX.
        epoch, other = started["epoch"], started["epoch"] ^ (1 << 63)
        st.send({"mutate_id": 1, "add": [{"topic": "big", "cursor": 0}], "epoch": epoch})
        wave = st.until(lambda ev: ev["event"] == "catchup_complete")
        assert [(ev["topic"], ev["seq"]) for ev in wave if ev["event"] == "message"] == [("big", 1)]
        st.send({"mutate_id": 2, "add": [{"topic": "big", "cursor": 1}], "epoch": other})
        wave = st.until(lambda ev: ev["event"] == "catchup_complete")
        assert [(ev["topic"], ev["code"]) for ev in wave if ev["event"] == "topic_error"] \
            == [("big", "epoch_mismatch")]
        st.send({"mutate_id": 3, "add": [{"topic": "big2", "cursor": 2**64 - 1}]})
        wave = st.until(lambda ev: ev["event"] == "catchup_complete")
        (err,) = [ev for ev in wave if ev["event"] == "topic_error"]
        assert err["code"] == "cursor_ahead"
        assert "cursor 18446744073709551615 is beyond the head 0" in err["message"]
        st.send({"close": True})
        rc, _ = st.finish()
        assert rc == 0
    finally:
        st.kill()


def test_stream_refuses_an_integer_above_u64_naming_the_field(daemon):
    out = run_cli("--url", daemon.url, "stream",
                  input='{"mutate_id":1,"add":[{"topic":"a"}],"epoch":18446744073709551616}\n')
    assert out.returncode == 1
    assert out.stderr == ("ringbus: stdin line 1: epoch: must be an integer in 0..2^64-1 "
                          "(from the started event)\n")


def test_non_utf8_payload_is_shown_as_data_b64(daemon):
    out = subprocess.run([str(RINGBUS), "--url", daemon.url, "pub", "bin"],
                         input=b"\xff\xfe\x00\n", capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    out = run_cli("--url", daemon.url, "sub", "--history-only", "--timeout", "10", "bin@0")
    assert out.returncode == 0, out.stderr
    (msg,) = [ev for ev in events(out.stdout) if ev["event"] == "message"]
    assert msg["data_b64"] == "//4A"
    assert "data" not in msg


def test_control_characters_are_escaped_in_data(daemon):
    st = Live("--url", daemon.url, "stream")
    try:
        st.send({"publish": {"topic": "ctl", "data": "a\tb\u0001\"\\"}})
        st.until(lambda ev: ev["event"] == "publish_ack")
        rc, _ = st.finish()
        assert rc == 0
    finally:
        st.kill()
    out = run_cli("--url", daemon.url, "sub", "--history-only", "--timeout", "10", "ctl@0")
    line = out.stdout.splitlines()[0]
    assert "\\u0001" in line and "\\t" in line
    assert json.loads(line)["data"] == "a\tb\u0001\"\\"


def test_bad_url_is_a_usage_error_with_one_line(daemon):
    out = run_cli("--url", "foo://127.0.0.1", "ping")
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith('ringbus: url "foo://127.0.0.1": unknown scheme')


def test_unreachable_server_fails_with_one_line():
    url = f"tcp://127.0.0.1:{free_port()}"
    out = run_cli("--url", url, "ping")
    assert out.returncode == 1
    assert out.stderr == f"ringbus: connect {url}: Connection refused\n"


def test_quic_without_a_server_times_out_clearly():
    # quic:// is built: a port nobody answers on ends in a handshake timeout.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        out = run_cli("--url", f"quic://127.0.0.1:{port}", "--timeout", "1", "ping")
    assert out.returncode != 0
    assert "QUIC handshake: timed out" in out.stderr, out.stderr


def test_unknown_command_and_help():
    out = run_cli("frobnicate")
    assert out.returncode == 2
    assert out.stderr == 'ringbus: unknown command "frobnicate" (try --help)\n'
    out = run_cli("--help")
    assert out.returncode == 0
    for word in ("ping", "pub", "sub", "stream", "bench", "--url"):
        assert word in out.stdout
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("ringbus ")


def test_sub_count_not_reached_before_the_timeout_exits_nonzero(daemon):
    publish(daemon, "few", ["only"])
    start = time.monotonic()
    out = run_cli("--url", daemon.url, "sub", "--count", "3", "--timeout", "0.5", "few@0")
    assert out.returncode == 1, out
    assert time.monotonic() - start < 5
    assert out.stderr == "ringbus: sub: timed out after 0.5 s with 1 of 3 messages\n"
    assert [ev["data"] for ev in events(out.stdout) if ev["event"] == "message"] == ["only"]


def test_sub_timeout_counts_wall_clock_while_messages_keep_coming(daemon):
    """A trickle of messages must not stretch --timeout: the deadline is
    measured from the start, not from the last quiet wait."""
    sub = Live("--url", daemon.url, "sub", "--count", "1000", "--timeout", "2", "drip")
    sub.until(lambda ev: ev["event"] == "catchup_complete")
    start = time.monotonic()
    while sub.proc.poll() is None and time.monotonic() - start < 8:
        run_cli("--url", daemon.url, "pub", "drip", "x")
        time.sleep(0.2)
    assert sub.proc.poll() == 1, "sub outlived its --timeout while messages trickled in"
    assert time.monotonic() - start < 6
    assert "timed out after 2 s with" in sub.proc.stderr.read()


def history(d, topic):
    out = run_cli("--url", d.url, "sub", "--history-only", "--timeout", "10", f"{topic}@0")
    assert out.returncode == 0, out.stderr
    return [ev for ev in events(out.stdout) if ev["event"] == "message"]


def test_pub_file_publishes_the_whole_file_as_one_message(daemon, tmp_path):
    body = "first line\r\nsecond line\n\nlast, no newline"
    path = tmp_path / "doc.txt"
    path.write_bytes(body.encode())
    out = run_cli("--url", daemon.url, "pub", "--file", str(path), "doc")
    assert out.returncode == 0, out.stderr
    assert events(out.stdout) == [{"topic": "doc", "seq": 1}]
    msgs = history(daemon, "doc")
    assert [m["data"] for m in msgs] == [body]


def test_pub_file_dash_reads_all_of_stdin_including_binary(daemon):
    body = bytes(range(256)) * 40  # NULs, CRs and newlines: one message all the same
    out = subprocess.run([str(RINGBUS), "--url", daemon.url, "pub", "doc", "--file", "-"],
                         input=body, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert [json.loads(l) for l in out.stdout.decode().splitlines()] == [{"topic": "doc", "seq": 1}]
    msgs = history(daemon, "doc")
    assert len(msgs) == 1
    assert base64.b64decode(msgs[0]["data_b64"]) == body


def test_pub_file_empty_file_is_one_empty_message(daemon, tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    out = run_cli("--url", daemon.url, "pub", "--file", str(path), "void")
    assert out.returncode == 0, out.stderr
    assert [m["data"] for m in history(daemon, "void")] == [""]


def test_pub_file_errors_are_one_clear_line(daemon, tmp_path):
    out = run_cli("--url", daemon.url, "pub", "--file", str(tmp_path / "missing"), "t")
    assert out.returncode == 1
    assert out.stderr == (f"ringbus: pub --file {tmp_path / 'missing'}: open: "
                          "No such file or directory\n")
    out = run_cli("--url", daemon.url, "pub", "--file", str(tmp_path), "t")
    assert out.returncode == 1
    assert out.stderr.endswith(": read: Is a directory\n")
    out = run_cli("--url", daemon.url, "pub", "--file", str(tmp_path / "x"), "t", "payload")
    assert out.returncode == 2
    assert "PAYLOAD or --file, not both" in out.stderr
    out = run_cli("--url", daemon.url, "pub", "--file")
    assert out.returncode == 2
    assert "--file needs a PATH" in out.stderr


def test_pub_file_larger_than_max_frame_bytes_is_refused_before_sending(make_daemon, tmp_path):
    d = make_daemon(extra="[limits]\nmax_frame_bytes = 65536\n")
    path = tmp_path / "big"
    path.write_bytes(b"x" * 70000)
    out = run_cli("--url", d.url, "pub", "--file", str(path), "big")
    assert out.returncode == 1
    assert out.stderr == (f"ringbus: pub --file {path}: larger than the server's "
                          "max_frame_bytes (65536)\n")
    assert history(d, "big") == []


def test_pub_lines_drop_a_trailing_cr(daemon):
    out = run_cli("--url", daemon.url, "pub", "crlf", input="one\r\ntwo\r\nthree\n\r\nfour\r")
    assert out.returncode == 0, out.stderr
    assert [m["data"] for m in history(daemon, "crlf")] == ["one", "two", "three", "", "four"]


@pytest.mark.parametrize("kind", ["ws", "wss"])
def test_origin_option_passes_a_listener_with_origins(make_daemon, tmp_path, kind):
    certs = rt.Certs(tmp_path)
    port = free_port()
    d = make_daemon(listeners=rt.listener(kind, port, certs, origins=["https://app.example"]))
    u = f"{kind}://localhost:{port}/ringbus"
    out = run_cli("--url", u, "--ca", certs.ca, "pub", "o", "refused")
    assert out.returncode == 1
    assert "403" in out.stderr, out.stderr
    out = run_cli("--url", u, "--ca", certs.ca, "--origin", "https://other.example", "pub", "o",
                  "refused")
    assert out.returncode == 1 and "403" in out.stderr, out.stderr
    out = run_cli("--url", u, "--ca", certs.ca, "--origin", "https://app.example", "pub", "o",
                  "passed")
    assert out.returncode == 0, out.stderr
    assert events(out.stdout) == [{"topic": "o", "seq": 1}]


def test_origin_with_control_characters_is_a_usage_error(daemon):
    out = run_cli("--url", daemon.url, "--origin", "https://a\r\nX-Evil: 1", "ping")
    assert out.returncode == 2
    assert out.stderr == "ringbus: options: ws_origin byte 10 is not printable ASCII\n"


# ---- a URL of the wrong scheme ---------------------------------------------------------


@pytest.fixture(scope="module")
def every_transport(tmp_path_factory):
    """One daemon with a listener of each transport."""
    certs = rt.Certs(tmp_path_factory.mktemp("certs"))
    ports = {k: free_port() for k in ("tcp", "tls", "ws", "wss")}
    listeners = "".join(rt.listener(k, p, certs) for k, p in ports.items())
    sd = rt.SharedDaemon(tmp_path_factory, "every", listeners)
    sd.ports, sd.certs = ports, certs
    yield sd
    sd.finish()


@pytest.mark.parametrize("scheme,listener,says", [
    ("tcp", "ws", "the server answered HTTP: is this a ws:// URL?"),
    ("tcp", "wss", "the server answered TLS: is this a tls:// URL?"),
    ("tcp", "tls", "the server answered TLS: is this a tls:// URL?"),
    ("tls", "tcp", "the server answered plain ringbus frames, not TLS: is this a tcp:// URL?"),
    ("tls", "ws", "the server answered plain HTTP, not TLS: is this a ws:// URL?"),
    ("ws", "tcp", "the server answered ringbus frames, not HTTP: is this a tcp:// URL?"),
    ("ws", "tls", "the server answered TLS: is this a wss:// URL?"),
    ("wss", "tcp", "the server answered plain ringbus frames, not TLS: is this a tcp:// URL?"),
])
def test_a_url_of_the_wrong_scheme_names_what_the_server_speaks(every_transport, scheme,
                                                                listener, says):
    """libringbus recognises an HTTP answer, a TLS record or plain ringbus
    frames where it expected something else, and the CLI says so on one
    line (not "frame size 1347703880 above max_frame_bytes")."""
    path = "/ringbus" if scheme in ("ws", "wss") else ""
    url = f"{scheme}://127.0.0.1:{every_transport.ports[listener]}{path}"
    out = run_cli("--url", url, "--ca", every_transport.certs.ca, "--timeout", "5", "ping")
    assert out.returncode != 0
    assert says in out.stderr, out.stderr
    assert "above max_frame_bytes" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
