"""WebSocket and WSS against the real daemon, with real third-party peers:
Node's `ws` package (installed from the npm registry by node_setup.sh), a
libwebsockets client (lws_client.c, built here) and headless Chromium; and
a raw RFC 6455 client (rbtransport) for the edges: the upgrade (400, 403,
404, 405, 426, 431), /healthz, fragmentation, Ping, close codes 1002, 1003,
1009 and the echo of a client's Close (DESIGN §2, issue 5)."""

import base64
import functools
import http.server
import os
import re
import socket
import signal
import struct
import subprocess
import threading
import time
import urllib.parse

import pytest

import rbproto as rp
import rbtransport as rt
from conftest import ROOT, free_port

HERE = ROOT / "tests" / "integration"
MAX_FRAME = 65536
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return rt.Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def wsd(tmp_path_factory, certs):
    """One daemon: ws, wss, and ws on /bus with an Origin allow-list."""
    ports = {k: free_port() for k in ("ws", "wss", "origin")}
    listeners = (rt.listener("ws", ports["ws"]) + rt.listener("wss", ports["wss"], certs)
                 + rt.listener("ws", ports["origin"], path="/bus", origins=[ORIGIN]))
    extra = (f"[limits]\nmax_frame_bytes = {MAX_FRAME}\nsend_queue_bytes = {4 * MAX_FRAME}\n"
             f"pending_buffer_bytes = {4 * MAX_FRAME}\n[timeouts]\nhandshake_timeout_ms = 3000\n")
    sd = rt.SharedDaemon(tmp_path_factory, "wsd", listeners, extra=extra)
    sd.ports = ports
    yield sd
    sd.finish()


@pytest.fixture(scope="session")
def node_ws():
    """The Node client, with `ws` installed from the registry if missing."""
    subprocess.run([str(HERE / "node_setup.sh")], check=True, timeout=180)
    return ["node", str(HERE / "ws_node_client.js")]


@pytest.fixture(scope="session")
def lws_client(tmp_path_factory):
    exe = tmp_path_factory.mktemp("lws") / "lws_client"
    subprocess.run(["cc", "-O1", "-o", str(exe), str(HERE / "lws_client.c"), "-lwebsockets"],
                   check=True, timeout=120)
    return str(exe)


HELLO = rp.encode_hello(1, name="peer").hex()


def publish(topic, payload="hi", corr=2):
    return rp.encode_publish(corr, topic, payload).hex()


# STARTED is 44 bytes plus its appended client_id (str16 "anon-N"), whose
# length depends on how many connections the daemon has seen.
STARTED_RECV = "RECV kind=2 len=STARTED"


def _started(line):
    m = re.fullmatch(r"RECV kind=2 len=(\d+)", line)
    return STARTED_RECV if m and 44 + 2 + len("anon-1") <= int(m.group(1)) <= 44 + 2 + 255 else line


def run_peer(cmd, timeout=20):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return [_started(line) for line in out.stdout.splitlines()]


def url(wsd, kind="ws", path="/ringbus"):
    host = "127.0.0.1" if kind == "ws" else "localhost"
    return f"{kind}://{host}:{wsd.ports[kind]}{path}"


# ---- Node's ws ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ws", "wss"])
def test_node_ws_exchanges_fragmented_frames_pings_and_closes_normally(wsd, certs, node_ws,
                                                                       kind):
    ca = certs.ca if kind == "wss" else "-"
    lines = run_peer(node_ws + [url(wsd, kind), ca, "frag:" + HELLO, "ping",
                                publish("node." + kind), "close"])
    assert lines == ["OPEN proto=ringbus.v1", STARTED_RECV, "PONG",
                     f"RECV kind=8 len={16 + 1 + len('node.' + kind) + 8 + 1}", "CLOSE code=1000"]


@pytest.mark.parametrize("step,code", [("text", 1003), (f"big:{MAX_FRAME + 1}", 1009)])
def test_node_ws_gets_1003_for_text_and_1009_for_oversized(wsd, node_ws, step, code):
    lines = run_peer(node_ws + [url(wsd), "-", HELLO, step])
    assert lines[:2] == ["OPEN proto=ringbus.v1", STARTED_RECV]
    assert lines[-1] == f"CLOSE code={code}", lines
    # The ringbus ERROR and CLOSE frames come first, as binary messages.
    assert lines[2].startswith("RECV kind=3") and lines[3].startswith("RECV kind=6"), lines


def test_node_ws_bad_upgrades_get_http_errors(wsd, node_ws):
    assert run_peer(node_ws + [url(wsd), "-", "noproto", HELLO]) == ["HTTP 400"]
    big = "header:X-Big=" + "a" * 9000
    assert run_peer(node_ws + [url(wsd), "-", big, HELLO]) == ["HTTP 431"]
    bus = f"ws://127.0.0.1:{wsd.ports['origin']}/bus"
    assert run_peer(node_ws + [bus, "-", "origin:https://evil.example", HELLO]) == ["HTTP 403"]
    assert run_peer(node_ws + [bus, "-", f"origin:{ORIGIN}", HELLO, "close"])[:2] == [
        "OPEN proto=ringbus.v1", STARTED_RECV]


# ---- libwebsockets ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ws", "wss"])
def test_libwebsockets_exchanges_frames_and_gets_close_codes(wsd, certs, lws_client, kind):
    ca = certs.ca if kind == "wss" else "-"
    base = [lws_client, "localhost", str(wsd.ports[kind]), "/ringbus", ca]
    lines = run_peer(base + [HELLO, publish("lws." + kind), "close"])
    assert lines[:3] == ["OPEN", STARTED_RECV, f"RECV kind=8 len={16 + 1 + len(kind) + 4 + 8 + 1}"]
    lines = run_peer(base + [HELLO, "text"])
    assert "PEERCLOSE code=1003" in lines, lines
    lines = run_peer(base + [HELLO, f"big:{MAX_FRAME + 100}"])
    assert "PEERCLOSE code=1009" in lines, lines
    lines = run_peer(base + ["noproto", HELLO])
    assert len(lines) == 1 and lines[0].startswith("ERROR"), lines


# ---- the upgrade and /healthz -----------------------------------------------------


def raw_upgrade(port, request):
    return rt.http_exchange(port, request)


def request(path="/ringbus", method="GET", version="HTTP/1.1", drop=(), add=(), key=None):
    headers = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
               "Sec-WebSocket-Key": key or base64.b64encode(b"0123456789abcdef").decode(),
               "Sec-WebSocket-Version": "13", "Sec-WebSocket-Protocol": "ringbus.v1"}
    for h in drop:
        headers.pop(h)
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines + list(add)) + "\r\n\r\n").encode()


@pytest.mark.parametrize("req,status,reason", [
    (request(drop=["Sec-WebSocket-Key"]), 400, b"Sec-WebSocket-Key"),
    (request(key="short"), 400, b"Sec-WebSocket-Key"),
    (request(drop=["Upgrade"]), 400, b"Upgrade: websocket"),
    (request(drop=["Connection"]), 400, b"Connection: Upgrade"),
    (request(drop=["Host"]), 400, b"Host"),
    (request(drop=["Sec-WebSocket-Version"]), 400, b"Sec-WebSocket-Version"),
    (request(drop=["Sec-WebSocket-Protocol"]), 400, b"ringbus.v1"),
    (request(version="HTTP/1.0"), 400, b"HTTP/1.1"),
    (request(version="HTTP/2.0"), 400, b"HTTP/1.1"),
    (request(method="POST"), 405, b"GET"),
    (request(path="/elsewhere"), 404, b"path"),
    (b"GET /ringbus HTTP/1.1\nHost: x\n\n", 400, b"bare CR or LF"),
    (request(add=[" folded"]), 400, b"folding"),
    (request(add=["Bad Name: x"]), 400, b"header field"),
    (request(add=[f"X-{i}: y" for i in range(70)]), 431, b"header fields"),
    (request(add=["X-Big: " + "a" * 9000]), 431, b"8192"),
], ids=lambda v: v if isinstance(v, int) else None)
def test_malformed_upgrades_get_http_errors_with_a_reason(wsd, req, status, reason):
    got, headers, body = raw_upgrade(wsd.ports["ws"], req)
    assert got == status, (got, body)
    assert reason in body, body
    assert headers.get("connection") == "close"


def test_unsupported_version_gets_426_naming_13(wsd):
    got, headers, body = raw_upgrade(wsd.ports["ws"],
                                     request(drop=["Sec-WebSocket-Version"],
                                             add=["Sec-WebSocket-Version: 8"]))
    assert got == 426 and headers.get("sec-websocket-version") == "13"


def test_accept_key_and_subprotocol_follow_rfc6455(wsd):
    # The RFC 6455 section 1.3 example key and its accept value.
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    s = socket.create_connection(("127.0.0.1", wsd.ports["ws"]), timeout=5)
    s.sendall(request(key=key))
    status, headers, _ = rt.read_http_head(s)
    assert status == 101
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert headers["sec-websocket-protocol"] == "ringbus.v1"
    assert headers["upgrade"].lower() == "websocket"
    s.close()


@pytest.mark.parametrize("kind", ["ws", "wss"])
def test_healthz_is_200_when_ready(wsd, certs, kind):
    ctx = rt.client_context(certs.ca, ("http/1.1",)) if kind == "wss" else None
    status, _, body = rt.http_exchange(wsd.ports[kind],
                                       b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", ctx)
    assert (status, body) == (200, b"ok\n")


def test_shutdown_answers_a_pending_upgrade_503_and_open_websockets_1001(make_daemon, certs):
    port, wss_port = free_port(), free_port()
    d = make_daemon(listeners=rt.listener("ws", port) + rt.listener("wss", wss_port, certs))
    c = rt.Conn("ws", port)
    assert c.hello().kind == rp.STARTED
    pending = socket.create_connection(("127.0.0.1", port), timeout=5)
    pending.sendall(b"GET /healthz HTTP/1.1\r\n")  # not finished yet
    # A wss connection still in its TLS handshake, and one that upgraded.
    silent = socket.create_connection(("127.0.0.1", wss_port), timeout=5)
    s = rt.Conn("wss", wss_port, certs)
    assert s.hello().kind == rp.STARTED
    time.sleep(0.2)
    d.proc.send_signal(signal.SIGTERM)
    status, _, body = rt.read_http_head(pending)
    assert status == 503, body
    for conn in (c, s):
        assert conn.recv().kind_name == "GOING_AWAY"
        f = conn.recv()
        assert f.kind == rp.CLOSE and f["status_name"] == "going_away"
        assert conn.sock.wait_close() == 1001
    assert silent.recv(100) == b""
    assert d.stop() == 0


def test_unfinished_handshakes_time_out_quietly(make_daemon, certs):
    ws_port, wss_port = free_port(), free_port()
    d = make_daemon(listeners=rt.listener("ws", ws_port) + rt.listener("wss", wss_port, certs),
                    extra="[timeouts]\nhandshake_timeout_ms = 300\n")
    silent = socket.create_connection(("127.0.0.1", wss_port), timeout=5)
    half = socket.create_connection(("127.0.0.1", ws_port), timeout=5)
    half.sendall(b"GET /ringbus HTTP/1.1\r\nHost: x\r\n")
    assert silent.recv(100) == b""
    status, _, body = rt.read_http_head(half)
    assert status == 408, body
    assert d.log().count("transport handshake not completed") == 2


# ---- framing edges with the raw client ------------------------------------------------


def ws_conn(wsd):
    s = socket.create_connection(("127.0.0.1", wsd.ports["ws"]), timeout=5)
    return rt.BlockingWS(s, "127.0.0.1")


def test_fragments_with_an_interleaved_ping_make_one_frame(wsd):
    w = ws_conn(wsd)
    hello = rp.encode_hello(1, name="frag")
    w.send_frame(rt.OP_BINARY, hello[:5], fin=False)
    w.send_frame(rt.OP_PING, b"ping!")
    w.send_frame(rt.OP_CONT, hello[5:9], fin=False)
    w.send_frame(rt.OP_CONT, b"", fin=False)
    w.send_frame(rt.OP_CONT, hello[9:])
    assert rp.decode(w.recv(4096))[0].kind == rp.STARTED
    w.send_frame(rt.OP_PONG, b"unsolicited")  # ignored
    w.sendall(rp.encode_ping(3, 42))
    assert rp.decode(w.recv(4096))[0]["nonce"] == 42
    w.close()


def test_ping_is_answered_with_the_same_payload(wsd):
    w = ws_conn(wsd)
    w.sock.sendall(rt.ws_frame(rt.OP_PING, b"are you there"))
    fin, op, payload = w.parser.feed(w.sock.recv(4096))[0]
    assert (fin, op, payload) == (True, rt.OP_PONG, b"are you there")
    w.close()


@pytest.mark.parametrize("frames,code", [
    ([rt.ws_frame(rt.OP_BINARY, rp.encode_hello(1), mask=False)], 1002),
    ([rt.ws_frame(rt.OP_BINARY, rp.encode_hello(1) + rp.encode_ping(2, 1))], 1002),
    ([rt.ws_frame(rt.OP_BINARY, rp.encode_hello(1)[:10])], 1002),
    ([rt.ws_frame(rt.OP_CONT, b"x")], 1002),
    ([rt.ws_frame(rt.OP_BINARY, rp.encode_hello(1), rsv=4)], 1002),
    ([rt.ws_frame(0x3, b"x")], 1002),
    ([rt.ws_frame(rt.OP_BINARY, b"abc", fin=False), rt.ws_frame(rt.OP_BINARY, b"d")], 1002),
    ([rt.ws_frame(rt.OP_CLOSE, rt.close_payload(1005))], 1002),
    ([rt.ws_frame(rt.OP_CLOSE, rt.close_payload(1000, b"\xff"))], 1007),
    ([rt.ws_frame(rt.OP_TEXT, b"{}")], 1003),
])
def test_protocol_errors_get_their_close_codes(wsd, frames, code):
    w = ws_conn(wsd)
    for f in frames:
        w.sock.sendall(f)
    assert w.wait_close() == code
    w.close()


@pytest.mark.parametrize("frames", [
    # A whole message that declares (and is) 8 bytes: shorter than a header.
    [rt.ws_frame(rt.OP_BINARY, struct.pack("<I", 8) + b"\x01\x04\x00\x00")],
    # A 6-byte message: its size field says 20, but the message ends.
    [rt.ws_frame(rt.OP_BINARY, struct.pack("<I", 20) + b"\x01\x04")],
    # A first fragment whose size field is below the header: refused
    # before the rest of the message could come.
    [rt.ws_frame(rt.OP_BINARY, struct.pack("<I", 9), fin=False)],
])
def test_a_message_shorter_than_a_frame_header_is_refused_at_once(wsd, frames):
    """One WS message is exactly one frame: a message that cannot hold a
    frame header gets ERROR bad_frame and Close 1002 at once, not a wait
    for bytes from the next message until the handshake timeout."""
    w = ws_conn(wsd)
    w.sendall(rp.encode_hello(1))
    assert rp.decode(w.recv(4096))[0].kind == rp.STARTED
    t0 = time.monotonic()
    for f in frames:
        w.sock.sendall(f)
    assert w.wait_close() == 1002
    assert time.monotonic() - t0 < 1.0
    got = rp.decode_all(bytes(w.pending))
    assert [f.kind for f in got] == [rp.ERROR, rp.CLOSE], got
    assert got[0]["code_name"] == "bad_frame" and "exactly one frame" in got[0]["message"]
    w.close()


def test_oversized_message_is_closed_1009_before_it_is_buffered(wsd):
    w = ws_conn(wsd)
    w.sendall(rp.encode_hello(1))
    assert rp.decode(w.recv(4096))[0].kind == rp.STARTED
    # A 100 MB binary frame: its header and the first KiB are all that come.
    head = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", 100 << 20) + b"\0\0\0\0"
    w.sock.sendall(head + b"x" * 1024)
    assert w.wait_close() == 1009


def test_client_close_is_echoed(wsd):
    w = ws_conn(wsd)
    w.sendall(rp.encode_hello(1))
    assert rp.decode(w.recv(4096))[0].kind == rp.STARTED
    w.sock.sendall(rt.ws_frame(rt.OP_CLOSE, rt.close_payload(4001, b"done")))
    assert w.wait_close() == 4001
    assert w.sock.recv(100) == b""


# ---- a browser -------------------------------------------------------------------------


PAGE = """<!doctype html><html><head><title>WAIT</title></head><body><pre id="log"></pre>
<script>
const b64 = (s) => Uint8Array.from(atob(s), c => c.charCodeAt(0));
const log = (s) => { document.getElementById('log').textContent += s + '\\n'; };
const done = (r) => {
  if (document.title !== 'WAIT') return;
  document.title = r;
  log(r);
  fetch('/result?' + encodeURIComponent(r + ' | ' + document.getElementById('log').textContent));
};
const ws = new WebSocket('WS_URL', 'ringbus.v1');
ws.binaryType = 'arraybuffer';
ws.onopen = () => { log('open ' + ws.protocol); ws.send(b64('HELLO')); };
ws.onerror = () => done('FAIL error');
ws.onclose = (e) => done('FAIL close ' + e.code);
ws.onmessage = (e) => {
  const b = new Uint8Array(e.data);
  log('kind ' + b[5]);
  if (b[5] === 2) ws.send(b64('MUTATE'));
  else if (b[5] === 12) ws.send(b64('PUBLISH'));
  else if (b[5] === 10 && new TextDecoder().decode(b).includes('hello from chromium')) {
    done('PASS');
    ws.close(1000);
  }
};
</script></body></html>"""


class PageServer(http.server.SimpleHTTPRequestHandler):
    """Serves the page; the page reports its result to /result."""

    results = None

    def do_GET(self):
        if self.path.startswith("/result?"):
            self.results.append(urllib.parse.unquote(self.path[len("/result?"):]))
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args):
        pass


def test_chromium_page_publishes_and_receives_over_websocket(wsd, tmp_path):
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    page = (PAGE.replace("WS_URL", f"ws://127.0.0.1:{wsd.ports['ws']}/ringbus")
            .replace("HELLO", b64(rp.encode_hello(1, name="chromium")))
            .replace("MUTATE", b64(rp.encode_mutate(2, 1, adds=[("browser.t", 0)])))
            .replace("PUBLISH", b64(rp.encode_publish(3, "browser.t", "hello from chromium"))))
    (tmp_path / "index.html").write_text(page)
    results = []
    handler = functools.partial(type("H", (PageServer,), {"results": results}),
                                directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    browser = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         f"http://127.0.0.1:{httpd.server_address[1]}/index.html"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not results and time.monotonic() < deadline and browser.poll() is None:
            time.sleep(0.05)
    finally:
        os.killpg(browser.pid, signal.SIGKILL)  # the browser and its helpers
        browser.wait(timeout=30)
        httpd.shutdown()
    assert results and results[0].startswith("PASS"), (results, browser.stderr.read()[-2000:])
