"""Transport helpers for the integration tests: throwaway certificates made
with `openssl req -x509`, listener TOML for every transport, and a minimal
RFC 6455 client written here (masking, fragmentation, control frames) that
carries ringbus frames over ws:// and wss:// — blocking (for rbproto.Conn)
and non-blocking (for the streamcheck Driver)."""

import base64
import hashlib
import os
import socket
import ssl
import struct
import subprocess
import time

import rbproto as rp

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUBPROTOCOL = "ringbus.v1"
ALPN = "ringbus/1"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


# ---- certificates ------------------------------------------------------------


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(d, name="ca"):
    """A self-signed EC CA: returns (cert path, key path)."""
    d = str(d)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN=ringbus test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}.key")


def make_leaf(d, ca, name, cn="localhost", san="DNS:localhost,IP:127.0.0.1", usage="serverAuth"):
    """A leaf certificate signed by ca = (cert, key): returns (cert, key)."""
    d = str(d)
    ext = os.path.join(d, f"{name}.ext")
    with open(ext, "w") as f:
        f.write(f"basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n")
        if san:
            f.write(f"subjectAltName={san}\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", ca[0], "-CAkey", ca[1],
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext, cwd=d)
    return os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}.key")


class Certs:
    """A CA and a server certificate for localhost and 127.0.0.1."""

    def __init__(self, d):
        self.dir = d
        self.ca, self.ca_key = make_ca(d)
        self.cert, self.key = make_leaf(d, (self.ca, self.ca_key), "server")


# ---- daemon config --------------------------------------------------------------


# The TLS library of the tls and wss listeners that listener() writes when
# the caller names none (None: the daemon's default). test_tls.py runs its
# tests once per library by setting it.
TLS_LIBRARY = None
TLS_LIBRARIES = ("openssl", "wolfssl")


def listener(kind, port, certs=None, **extra):
    """One [[listener]] table; tls, wss and quic get certs' cert and key."""
    lines = ["[[listener]]", f'transport = "{kind}"', 'address = "127.0.0.1"', f"port = {port}"]
    if kind in ("tls", "wss", "quic"):
        lines += [f'cert = "{certs.cert}"', f'key = "{certs.key}"']
    if kind in ("tls", "wss") and TLS_LIBRARY is not None and "tls_library" not in extra:
        lines.append(f'tls_library = "{TLS_LIBRARY}"')
    for k, v in extra.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (list, tuple)):
            v = "[" + ", ".join(f'"{x}"' for x in v) + "]"
        elif isinstance(v, str):
            v = f'"{v}"'
        lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


def client_context(ca=None, alpn=(ALPN,), cert=None, key=None):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


# ---- WebSocket framing ----------------------------------------------------------


def ws_frame(opcode, payload=b"", fin=True, mask=True, rsv=0):
    """One client frame (masked unless mask=False)."""
    payload = bytes(payload)
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask(payload, key)
    return head + key + body


def _mask(payload, key):
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def close_payload(code, reason=b""):
    return struct.pack(">H", code) + reason


class FrameParser:
    """Parses server frames (unmasked) from a byte stream."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        while True:
            if len(self.buf) < 2:
                return out
            b0, b1 = self.buf[0], self.buf[1]
            assert b1 & 0x80 == 0, "server frames must not be masked"
            n, off = b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return out
                n, off = struct.unpack_from(">H", self.buf, 2)[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    return out
                n, off = struct.unpack_from(">Q", self.buf, 2)[0], 10
            if len(self.buf) < off + n:
                return out
            out.append((bool(b0 & 0x80), b0 & 0x0F, bytes(self.buf[off:off + n])))
            del self.buf[:off + n]


def upgrade_request(host, path="/ringbus", protocols=(SUBPROTOCOL,), origin=None, key=None,
                    extra=()):
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if protocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
    if origin:
        lines.append(f"Origin: {origin}")
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


def accept_of(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def read_http_head(sock, timeout=5):
    """Reads an HTTP response head; returns (status, headers, body bytes
    read so far after the head)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(4096)
        if not d:
            break
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/1.1 ") else 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, rest


def http_exchange(port, request, tls_ctx=None, timeout=5):
    """Sends raw request bytes; returns (status, headers, body) read until
    the server closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls_ctx is not None:
        s = tls_ctx.wrap_socket(s, server_hostname="localhost")
    s.sendall(request)
    status, headers, rest = read_http_head(s, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            d = s.recv(4096)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not d:
            break
        rest += d
    s.close()
    return status, headers, rest


class WSError(Exception):
    pass


class BlockingWS:
    """A blocking ws:// or wss:// connection that looks like a socket to
    rbproto.Conn: sendall sends each ringbus frame as one binary message;
    recv returns message payload bytes; a Close ends the stream."""

    def __init__(self, sock, host="localhost", path="/ringbus", protocols=(SUBPROTOCOL,),
                 origin=None, timeout=5):
        self.sock = sock
        req, key = upgrade_request(host, path, protocols, origin)
        sock.settimeout(timeout)
        sock.sendall(req)
        status, headers, rest = read_http_head(sock, timeout)
        if status != 101:
            raise WSError(f"upgrade refused: HTTP {status}: {rest!r}")
        assert headers.get("sec-websocket-accept") == accept_of(key), headers
        assert headers.get("sec-websocket-protocol") == SUBPROTOCOL, headers
        self.parser = FrameParser()
        self.pending = bytearray()
        self.close_code = None
        self.close_reason = b""
        self.messages = []  # (opcode, payload) of whole messages, for tests
        self._frag = None
        for fin, op, payload in self.parser.feed(rest):
            self._on_frame(fin, op, payload)

    def settimeout(self, t):
        self.sock.settimeout(t)

    def setsockopt(self, *a):
        self.sock.setsockopt(*a)

    def send_frame(self, opcode, payload=b"", fin=True, mask=True, rsv=0):
        self.sock.sendall(ws_frame(opcode, payload, fin, mask, rsv))

    def sendall(self, data):
        data = bytes(data)
        while data:
            size = struct.unpack_from("<I", data, 0)[0] if len(data) >= 4 else len(data)
            self.send_frame(OP_BINARY, data[:size])
            data = data[size:]

    def _on_frame(self, fin, op, payload):
        if op == OP_PING:
            self.send_frame(OP_PONG, payload)
        elif op == OP_CLOSE:
            self.close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
            self.close_reason = payload[2:]
            try:
                self.send_frame(OP_CLOSE, payload[:2])
            except OSError:
                pass
        elif op in (OP_BINARY, OP_TEXT, OP_CONT):
            if op != OP_CONT:
                self._frag = (op, bytearray())
            self._frag[1].extend(payload)
            if fin:
                self.messages.append((self._frag[0], bytes(self._frag[1])))
                if self._frag[0] == OP_BINARY:
                    f, n = rp.decode(self._frag[1])
                    assert f is not None and n == len(self._frag[1]), "one frame per message"
                    self.pending += self._frag[1]
                self._frag = None

    def recv(self, n):
        while not self.pending and self.close_code is None:
            d = self.sock.recv(65536)
            if not d:
                raise ConnectionResetError("TCP closed without a WebSocket Close")
            for fin, op, payload in self.parser.feed(d):
                self._on_frame(fin, op, payload)
        out = bytes(self.pending[:n])
        del self.pending[:n]
        return out

    def wait_close(self, timeout=5):
        """Reads until the server's Close; returns its status code."""
        deadline = time.monotonic() + timeout
        while self.close_code is None:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                d = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not d:
                break
            for fin, op, payload in self.parser.feed(d):
                self._on_frame(fin, op, payload)
        return self.close_code

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def connect(kind, port, certs=None, host="localhost", path="/ringbus", timeout=5, **ws_kw):
    """A socket-like connection over tcp, tls, ws or wss."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if kind in ("tls", "wss"):
        alpn = (ALPN,) if kind == "tls" else ("http/1.1",)
        s = client_context(certs.ca if certs else None, alpn).wrap_socket(s, server_hostname=host)
    if kind in ("ws", "wss"):
        return BlockingWS(s, host, path, timeout=timeout, **ws_kw)
    return s


class Conn(rp.Conn):
    """rbproto.Conn over any transport."""

    def __init__(self, kind, port, certs=None, timeout=5.0, **kw):
        import collections
        self.timeout = timeout
        self.sock = connect(kind, port, certs, timeout=timeout, **kw)
        self.buf = bytearray()
        self.pending = collections.deque()
        self.skipped = []
        self.eof = False


# ---- non-blocking streams for streamcheck.Client ---------------------------------


class NBStream:
    """A non-blocking tls, ws or wss byte stream for streamcheck.Client:
    send(data) takes whole frames, recv drains what is there (raising
    BlockingIOError when nothing is), flush pushes what is buffered."""

    def __init__(self, kind, port, certs):
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ws = None
        self.kind = kind
        sock = raw
        if kind in ("tls", "wss"):
            alpn = (ALPN,) if kind == "tls" else ("http/1.1",)
            sock = client_context(certs.ca, alpn).wrap_socket(raw, server_hostname="localhost")
        if kind in ("ws", "wss"):
            self.ws = BlockingWS(sock)
        sock.setblocking(False)
        self.sock = sock
        self.out = bytearray()
        self.eof = False

    def _raw_send(self, data):
        try:
            return self.sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            raise BlockingIOError from None

    def flush(self):
        while self.out:
            try:
                n = self._raw_send(self.out)
            except BlockingIOError:
                return
            del self.out[:n]

    def send(self, data):
        if self.ws is None:
            self.flush()
            if self.out:
                raise BlockingIOError
            return self._raw_send(data)
        used = 0
        while len(data) - used >= 4:
            size = struct.unpack_from("<I", data, used)[0]
            if len(data) - used < size:
                break
            self.out += ws_frame(OP_BINARY, data[used:used + size])
            used += size
        self.flush()
        return used

    def _raw_recv_all(self):
        chunks = []
        while True:
            try:
                d = self.sock.recv(1 << 20)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            if not d:
                self.eof = True
                break
            chunks.append(d)
        return b"".join(chunks)

    def recv(self, n):
        data = self._raw_recv_all()
        if self.ws is not None:
            for fin, op, payload in self.ws.parser.feed(data):
                if op == OP_PING:
                    self.out += ws_frame(OP_PONG, payload)
                elif op == OP_CLOSE:
                    self.eof = True
                elif op == OP_BINARY and fin:
                    self.ws.pending += payload
            self.flush()
            data, self.ws.pending = bytes(self.ws.pending), bytearray()
        if data:
            return data
        if self.eof:
            return b""
        raise BlockingIOError

    def close(self):
        self.sock.close()


def nb_factory(kind, certs=None):
    """A transport factory for streamcheck.Client(transport=...)."""
    if kind == "tcp":
        return None
    return lambda port: NBStream(kind, port, certs)


# ---- daemons shared by a module ----------------------------------------------------


def find_frame(data, kind):
    """The first frame of `kind` found at any offset of data (third-party
    tools mix their own text with the bytes), or None."""
    for off in range(0, max(0, len(data) - rp.HEADER_BYTES + 1)):
        if data[off + 5] != kind or data[off + 4] != rp.PROTOCOL_VERSION:
            continue
        try:
            f, n = rp.decode(data[off:])
        except rp.ProtocolError:
            continue
        if f is not None and f.kind == kind:
            return f
    return None


class SharedDaemon:
    """A daemon for a whole test module (the conftest Daemon, checked for
    sanitizer and assertion lines when the module ends)."""

    def __init__(self, tmp_path_factory, name, listeners, extra="", shards=2):
        from conftest import Daemon
        d = tmp_path_factory.mktemp(name)
        self.daemon = Daemon(d, shards=shards, extra=extra, listeners=listeners).start()

    def finish(self):
        d = self.daemon
        rc = d.stop()
        bad = d.bad_log_lines()
        assert not bad, f"daemon log has sanitizer/assert lines: {bad}\n{d.log()[-4000:]}"
        assert rc in (None, 0), f"daemon exited {rc}\n{d.log()[-4000:]}"
