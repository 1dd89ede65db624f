"""An independent Python implementation of the ringbus wire format
(docs/PROTOCOL.md) and a small blocking client for the integration tests.

Written from the protocol document, not from the C codec, so that the two
check each other. Pure standard library (Python 3.11). Every encode_*
function takes the correlation id first; decode() returns Frame objects
whose fields are decoded per kind (see _decode_body).

    from rbproto import Conn, PUBLISH_ACK
    with Conn(port=7400) as c:
        assert c.hello().kind_name == "STARTED"
        ack = c.publish("orders", b"hi", corr=1)
        assert ack.kind == PUBLISH_ACK and ack["seq"] == 1
"""

from __future__ import annotations

import collections
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

# ---- constants ------------------------------------------------------------

PROTOCOL_VERSION = 1
HEADER_BYTES = 16
MAX_FRAME_BYTES_DEFAULT = 1 << 20
TOPIC_BYTES_MAX = 255

# Frame kinds (header byte 5).
HELLO = 1
STARTED = 2
ERROR = 3
PING = 4
PONG = 5
CLOSE = 6
PUBLISH = 7
PUBLISH_ACK = 8
MUTATE = 9
MESSAGES = 10
TOPICS_LIVE = 11
CATCHUP_COMPLETE = 12
AUTH = 13
GOING_AWAY_FRAME = 14  # the frame; GOING_AWAY is the wire code 12
TOPIC_ERROR = 15
REGISTER = 16
UNREGISTER = 17
REQUEST = 18
REQUEST_ACK = 19
RESPONSE = 20
LAGGED = 21

KIND_NAMES = {
    HELLO: "HELLO",
    STARTED: "STARTED",
    ERROR: "ERROR",
    PING: "PING",
    PONG: "PONG",
    CLOSE: "CLOSE",
    PUBLISH: "PUBLISH",
    PUBLISH_ACK: "PUBLISH_ACK",
    MUTATE: "MUTATE",
    MESSAGES: "MESSAGES",
    TOPICS_LIVE: "TOPICS_LIVE",
    CATCHUP_COMPLETE: "CATCHUP_COMPLETE",
    AUTH: "AUTH",
    GOING_AWAY_FRAME: "GOING_AWAY",
    TOPIC_ERROR: "TOPIC_ERROR",
    REGISTER: "REGISTER",
    UNREGISTER: "UNREGISTER",
    REQUEST: "REQUEST",
    REQUEST_ACK: "REQUEST_ACK",
    RESPONSE: "RESPONSE",
    LAGGED: "LAGGED",
}
KINDS = {name: kind for kind, name in KIND_NAMES.items()}

# Wire codes of ERROR frames and CLOSE statuses.
OK = 0
BAD_FRAME = 1
UNSUPPORTED_VERSION = 2
UNAUTHORIZED = 3
FORBIDDEN = 4
TOO_LARGE = 5
RESOURCE_EXHAUSTED = 6
DEADLINE_EXCEEDED = 7
UNAVAILABLE = 8
INVALID_TOPIC = 9
INTERNAL = 10
INVALID_ARGUMENT = 11
GOING_AWAY = 12
OUT_OF_RANGE = 13
EPOCH_MISMATCH = 14
CURSOR_AHEAD = 15
DEDUP_FULL = 18
# 16, 17, 19 reserved; RPC outcomes:
RECIPIENT_NOT_FOUND = 20
UNKNOWN_METHOD = 21
CONNECTION_TIMEOUT = 22
RESPONSE_TIMEOUT = 23
RECIPIENT_DISCONNECTED = 24
PAYLOAD_TOO_LARGE = 25
APPLICATION_ERROR = 26
CANCELLED = 27
ALREADY_REGISTERED = 28
RESPONDER_BUSY = 29

# PUBLISH_ACK flags
ACK_DUPLICATE = 0x01

CODE_NAMES = {
    OK: "ok",
    BAD_FRAME: "bad_frame",
    UNSUPPORTED_VERSION: "unsupported_version",
    UNAUTHORIZED: "unauthorized",
    FORBIDDEN: "forbidden",
    TOO_LARGE: "too_large",
    RESOURCE_EXHAUSTED: "resource_exhausted",
    DEADLINE_EXCEEDED: "deadline_exceeded",
    UNAVAILABLE: "unavailable",
    INVALID_TOPIC: "invalid_topic",
    INTERNAL: "internal",
    INVALID_ARGUMENT: "invalid_argument",
    GOING_AWAY: "going_away",
    OUT_OF_RANGE: "out_of_range",
    EPOCH_MISMATCH: "epoch_mismatch",
    CURSOR_AHEAD: "cursor_ahead",
    DEDUP_FULL: "dedup_full",
    RECIPIENT_NOT_FOUND: "recipient_not_found",
    UNKNOWN_METHOD: "unknown_method",
    CONNECTION_TIMEOUT: "connection_timeout",
    RESPONSE_TIMEOUT: "response_timeout",
    RECIPIENT_DISCONNECTED: "recipient_disconnected",
    PAYLOAD_TOO_LARGE: "payload_too_large",
    APPLICATION_ERROR: "application_error",
    CANCELLED: "cancelled",
    ALREADY_REGISTERED: "already_registered",
    RESPONDER_BUSY: "responder_busy",
}
CODES = {name: code for code, name in CODE_NAMES.items()}

# MUTATE
CURSOR_SEQ = 0
CURSOR_NOW = 1
MUTATE_HISTORY_ONLY = 0x01

# STARTED capability bits.
CAP_STREAM = 1 << 0
CAP_PUBLISH = 1 << 1
CAP_RPC = 1 << 2

# REQUEST_ACK flags: a caller's cancel of its own call.
REQUEST_ACK_CANCEL = 0x01
RPC_NAME_BYTES_MAX = 255

_HEADER = struct.Struct("<IBBHQ")
assert _HEADER.size == HEADER_BYTES


class ProtocolError(ValueError):
    """The bytes are not a well-formed ringbus frame. `code` is the wire
    code a server would answer with (BAD_FRAME, TOO_LARGE, ...)."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{CODE_NAMES.get(code, code)}: {message}")
        self.code = code


@dataclass
class Frame:
    kind: int
    kind_name: str
    corr: int
    fields: dict = field(default_factory=dict)
    size: int = 0
    version: int = PROTOCOL_VERSION

    def __getitem__(self, key):
        return self.fields[key]

    def get(self, key, default=None):
        return self.fields.get(key, default)


# ---- encoding ---------------------------------------------------------------


def _b(value: str | bytes | bytearray) -> bytes:
    """Text is UTF-8 encoded; bytes go through untouched (so tests can send
    invalid UTF-8 on purpose)."""
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def _topic(topic: str | bytes) -> bytes:
    raw = _b(topic)
    if len(raw) > TOPIC_BYTES_MAX:
        raise ValueError(f"topic of {len(raw)} bytes does not fit its u8 length")
    return bytes([len(raw)]) + raw


def _str16(value: str | bytes) -> bytes:
    raw = _b(value)
    if len(raw) > 0xFFFF:
        raise ValueError(f"string of {len(raw)} bytes does not fit its u16 length")
    return struct.pack("<H", len(raw)) + raw


def _blob32(value: str | bytes) -> bytes:
    raw = _b(value)
    return struct.pack("<I", len(raw)) + raw


def encode_frame(
    kind: int,
    corr: int,
    body: bytes = b"",
    version: int = PROTOCOL_VERSION,
    flags: int = 0,
    size: int | None = None,
) -> bytes:
    """A frame from a raw body. `size` overrides the header's size field
    (to build frames that lie about their length)."""
    if size is None:
        size = HEADER_BYTES + len(body)
    return _HEADER.pack(size, version, kind, flags, corr) + bytes(body)


def encode_hello(corr: int, version: int = PROTOCOL_VERSION, name: str | bytes = "t",
                 creds: bytes = b"") -> bytes:
    """HELLO; `version` goes both in the header and in the body."""
    body = struct.pack("<H", version) + _str16(name) + _str16(creds)
    return encode_frame(HELLO, corr, body, version=version)


def encode_started(corr: int, keepalive_ms: int = 30000, capabilities: int = CAP_STREAM | CAP_PUBLISH,
                   max_frame_bytes: int = MAX_FRAME_BYTES_DEFAULT, server_id: str | bytes = "",
                   epoch: int | None = 1, client_id: str | bytes | None = None) -> bytes:
    """STARTED; epoch None leaves the appended field out (an older server),
    client_id None leaves the field appended after it out."""
    body = struct.pack("<IQI", keepalive_ms, capabilities, max_frame_bytes) + _str16(server_id)
    if epoch is not None:
        body += struct.pack("<Q", epoch)
        if client_id is not None:
            body += _str16(client_id)
    return encode_frame(STARTED, corr, body)


def encode_error(corr: int, code: int, message: str | bytes = "") -> bytes:
    return encode_frame(ERROR, corr, struct.pack("<H", code) + _str16(message))


def encode_ping(corr: int, nonce: int) -> bytes:
    """PING; the server sends corr 0 and the nonce in the body."""
    return encode_frame(PING, corr, struct.pack("<Q", nonce))


def encode_pong(corr: int, nonce: int) -> bytes:
    return encode_frame(PONG, corr, struct.pack("<Q", nonce))


def encode_close(corr: int = 0, status: int = OK, message: str | bytes = "") -> bytes:
    return encode_frame(CLOSE, corr, struct.pack("<H", status) + _str16(message))


def encode_publish(corr: int, topic: str | bytes, payload: str | bytes, key: str | bytes = b"") -> bytes:
    raw_key = _b(key)
    if len(raw_key) > 255:
        raise ValueError("idempotency key longer than 255 bytes")
    body = _topic(topic) + bytes([len(raw_key)]) + raw_key + _blob32(payload)
    return encode_frame(PUBLISH, corr, body)


def encode_publish_ack(corr: int, topic: str | bytes, seq: int, flags: int | None = 0) -> bytes:
    """flags None: as a server that predates the appended flags byte."""
    tail = b"" if flags is None else struct.pack("<B", flags)
    return encode_frame(PUBLISH_ACK, corr, _topic(topic) + struct.pack("<Q", seq) + tail)


def encode_mutate(
    corr: int,
    mutate_id: int,
    adds: Iterable[tuple[str | bytes, int | str]] = (),
    removes: Iterable[str | bytes] = (),
    history_only: bool = False,
    flags: int | None = None,
    epoch: int | None = 0,
) -> bytes:
    """MUTATE. Each add is (topic, cursor) where cursor is an int (deliver
    seq > cursor; 0 = from the beginning) or "now". `epoch` is the store
    epoch the cursors belong to (0 = none known; None leaves the appended
    field out, as an older client does). `flags` overrides the flags byte
    for malformed-frame tests."""
    adds = list(adds)
    removes = list(removes)
    if flags is None:
        flags = MUTATE_HISTORY_ONLY if history_only else 0
    body = bytearray(struct.pack("<QBI", mutate_id, flags, len(adds)))
    for topic, cursor in adds:
        if cursor == "now":
            body += _topic(topic) + struct.pack("<BQ", CURSOR_NOW, 0)
        else:
            body += _topic(topic) + struct.pack("<BQ", CURSOR_SEQ, int(cursor))
    body += struct.pack("<I", len(removes))
    for topic in removes:
        body += _topic(topic)
    if epoch is not None:
        body += struct.pack("<Q", epoch)
    return encode_frame(MUTATE, corr, bytes(body))


def encode_messages(corr: int, mutate_id: int, items: Iterable[tuple[str | bytes, int, bytes]]) -> bytes:
    items = list(items)
    body = bytearray(struct.pack("<QI", mutate_id, len(items)))
    for topic, seq, payload in items:
        body += _topic(topic) + struct.pack("<Q", seq) + _blob32(payload)
    return encode_frame(MESSAGES, corr, bytes(body))


def encode_topics_live(corr: int, topics: Iterable[str | bytes]) -> bytes:
    topics = list(topics)
    body = struct.pack("<I", len(topics)) + b"".join(_topic(t) for t in topics)
    return encode_frame(TOPICS_LIVE, corr, body)


def encode_catchup_complete(corr: int, mutate_id: int) -> bytes:
    return encode_frame(CATCHUP_COMPLETE, corr, struct.pack("<Q", mutate_id))


def encode_going_away(corr: int, reconnect_delay_ms: int, message: str | bytes) -> bytes:
    return encode_frame(GOING_AWAY_FRAME, corr,
                        struct.pack("<I", reconnect_delay_ms) + _str16(message))


def encode_topic_error(corr: int, mutate_id: int, topic: str | bytes, code: int,
                       message: str | bytes = "") -> bytes:
    body = struct.pack("<Q", mutate_id) + _topic(topic) + struct.pack("<H", code) + _str16(message)
    return encode_frame(TOPIC_ERROR, corr, body)


def encode_lagged(corr: int, topic: str | bytes, skipped: int) -> bytes:
    return encode_frame(LAGGED, corr, _topic(topic) + struct.pack("<Q", skipped))


def _name8(value: str | bytes) -> bytes:
    raw = _b(value)
    assert len(raw) <= RPC_NAME_BYTES_MAX
    return bytes([len(raw)]) + raw


def encode_register(corr: int, method: str | bytes, service: str | bytes = "",
                    kind: int = REGISTER) -> bytes:
    """REGISTER (or UNREGISTER with kind); service "" = the connection's own client_id."""
    return encode_frame(kind, corr, _name8(method) + _name8(service))


def encode_unregister(corr: int, method: str | bytes, service: str | bytes = "") -> bytes:
    return encode_register(corr, method, service, kind=UNREGISTER)


def encode_request(corr: int, peer: str | bytes, method: str | bytes, payload: str | bytes = b"",
                   timeout_ms: int = 0) -> bytes:
    """REQUEST: to the server, peer is the destination; to a responder, the caller."""
    body = struct.pack("<I", timeout_ms) + _name8(peer) + _name8(method) + _blob32(payload)
    return encode_frame(REQUEST, corr, body)


def encode_request_ack(corr: int, flags: int = 0) -> bytes:
    return encode_frame(REQUEST_ACK, corr, bytes([flags]))


def encode_response(corr: int, code: int = OK, message: str | bytes = "",
                    payload: str | bytes = b"") -> bytes:
    return encode_frame(RESPONSE, corr, struct.pack("<H", code) + _str16(message) + _blob32(payload))


def encode_auth(corr: int, creds: bytes = b"") -> bytes:
    """AUTH: fresh credentials (client), or empty = accepted (server)."""
    return encode_frame(AUTH, corr, _str16(creds))


# ---- credentials (HELLO and AUTH; PROTOCOL.md section 6.5) ------------------

CRED_NONE = 0
CRED_TOKEN = 1
CRED_PASSWORD = 2
AUTH_TOKEN_BYTES_MAX = 8192
AUTH_PASSWORD_BYTES_MAX = 1024
_TOKEN_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def creds_token(token: str | bytes) -> bytes:
    """Credentials carrying a JWT (compact form)."""
    raw = _b(token)
    return bytes([CRED_TOKEN]) + struct.pack("<H", len(raw)) + raw


def creds_password(user: str | bytes, password: str | bytes) -> bytes:
    """Credentials carrying a user name and a password."""
    u, pw = _b(user), _b(password)
    if not 1 <= len(u) <= 255:
        raise ValueError("user name must be 1..255 bytes")
    return bytes([CRED_PASSWORD, len(u)]) + u + struct.pack("<H", len(pw)) + pw


def decode_creds(raw: bytes) -> dict:
    """Decodes credentials; raises ProtocolError(UNAUTHORIZED) when they
    are malformed, as the server refuses them."""
    if not raw:
        return {"kind": CRED_NONE}
    r = _Reader("credentials", bytes(raw))
    r.code = UNAUTHORIZED
    kind = r.u8("kind")
    if kind == CRED_TOKEN:
        token = r.blob16("token")
        if not 1 <= len(token) <= AUTH_TOKEN_BYTES_MAX:
            r.fail(f"token: {len(token)} bytes, not in [1, {AUTH_TOKEN_BYTES_MAX}]")
        bad = next((i for i, b in enumerate(token) if b not in _TOKEN_ALPHABET), None)
        if bad is not None:
            r.fail(f"token: byte {bad} is not base64url or '.'")
        out = {"kind": kind, "token": token.decode("ascii")}
    elif kind == CRED_PASSWORD:
        user = r.text(r.take(r.u8("user"), "user"), "user")
        password = r.blob16("password")
        if not user:
            r.fail("user: empty")
        if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch.isspace() for ch in user):
            r.fail("user: control character or space")
        if not 1 <= len(password) <= AUTH_PASSWORD_BYTES_MAX:
            r.fail(f"password: {len(password)} bytes, not in [1, {AUTH_PASSWORD_BYTES_MAX}]")
        out = {"kind": kind, "user": user, "password": password}
    else:
        r.fail(f"kind {kind} unknown (1 token, 2 user and password)")
    if r.pos != len(r.body):
        r.fail(f"{len(r.body) - r.pos} trailing bytes")
    return out


# ---- decoding ---------------------------------------------------------------


class _Reader:
    def __init__(self, kind_name: str, body: bytes):
        self.kind_name = kind_name
        self.body = body
        self.pos = 0
        self.code = BAD_FRAME

    def fail(self, why: str):
        raise ProtocolError(self.code, f"{self.kind_name}: {why}")

    def take(self, n: int, what: str) -> bytes:
        if len(self.body) - self.pos < n:
            self.fail(f"{what}: truncated (needs {n} bytes, {len(self.body) - self.pos} left)")
        out = self.body[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str):
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size, what))

    def u8(self, what: str) -> int:
        return self.unpack("B", what)[0]

    def u16(self, what: str) -> int:
        return self.unpack("H", what)[0]

    def u32(self, what: str) -> int:
        return self.unpack("I", what)[0]

    def u64(self, what: str) -> int:
        return self.unpack("Q", what)[0]

    def text(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode("utf-8", errors="strict")
        except UnicodeDecodeError as e:
            self.fail(f"{what}: invalid UTF-8 at byte {e.start}")

    def str16(self, what: str) -> str:
        return self.text(self.take(self.u16(what + " length"), what), what)

    def blob16(self, what: str) -> bytes:
        return self.take(self.u16(what + " length"), what)

    def blob32(self, what: str) -> bytes:
        return self.take(self.u32(what + " length"), what)

    def name8(self, what: str, min_len: int) -> str:
        n = self.u8(what + " length")
        if n < min_len:
            self.fail(f"{what} length {n}")
        return self.text(self.take(n, what), what)

    def topic(self, what: str = "topic") -> str:
        n = self.u8(what + " length")
        if n == 0:
            self.fail(f"{what} length 0")
        return self.text(self.take(n, what), what)

    def count(self, what: str, min_bytes: int) -> int:
        n = self.u32(what)
        left = len(self.body) - self.pos
        if n * min_bytes > left:
            self.fail(f"{what} {n} needs at least {n * min_bytes} bytes, {left} left")
        return n


def _decode_mutate(r: _Reader) -> dict:
    mutate_id = r.u64("mutate_id")
    flags = r.u8("flags")
    if flags & ~MUTATE_HISTORY_ONLY:
        r.fail(f"flags 0x{flags:02x} has unknown bits")
    adds = []
    for i in range(r.count("add_count", 2 + 1 + 8)):
        topic = r.topic(f"add {i}: topic")
        cursor_kind, cursor = r.unpack("BQ", f"add {i}: cursor")
        if cursor_kind == CURSOR_NOW:
            if cursor != 0:
                r.fail(f"add {i}: cursor {cursor} with cursor_kind now (must be 0)")
            adds.append((topic, "now"))
        elif cursor_kind == CURSOR_SEQ:
            adds.append((topic, cursor))
        else:
            r.fail(f"add {i}: cursor_kind {cursor_kind} unknown")
    removes = [r.topic(f"remove {i}: topic") for i in range(r.count("remove_count", 2))]
    out = {"mutate_id": mutate_id, "flags": flags, "history_only": bool(flags & MUTATE_HISTORY_ONLY),
           "adds": adds, "removes": removes, "epoch": 0, "has_epoch": False}
    if r.pos < len(r.body):  # appended field: older clients omit it
        out["epoch"] = r.u64("epoch")
        out["has_epoch"] = True
    return out


def _decode_messages(r: _Reader) -> dict:
    mutate_id = r.u64("mutate_id")
    items = []
    for i in range(r.count("count", 2 + 8 + 4)):
        topic = r.topic(f"item {i}: topic")
        seq = r.u64(f"item {i}: seq")
        items.append((topic, seq, r.blob32(f"item {i}: payload")))
    return {"mutate_id": mutate_id, "items": items}


def _decode_body(kind: int, r: _Reader) -> dict:
    if kind == HELLO:
        return {"version": r.u16("protocol_version"), "name": r.str16("client_name"),
                "credentials": r.blob16("credentials")}
    if kind == STARTED:
        keepalive_ms, caps, max_frame = r.unpack("IQI", "started")
        out = {"keepalive_ms": keepalive_ms, "capabilities": caps, "max_frame_bytes": max_frame,
               "server_id": r.str16("server_id"), "epoch": 0, "has_epoch": False}
        if r.pos < len(r.body):  # appended field: older servers omit it
            out["epoch"] = r.u64("epoch")
            out["has_epoch"] = True
        out["client_id"] = r.str16("client_id") if r.pos < len(r.body) else ""
        return out
    if kind in (REGISTER, UNREGISTER):
        return {"method": r.name8("method", 1), "service": r.name8("service", 0)}
    if kind == REQUEST:
        return {"timeout_ms": r.u32("timeout_ms"), "peer": r.name8("peer", 1),
                "method": r.name8("method", 1), "payload": r.blob32("payload")}
    if kind == REQUEST_ACK:
        flags = r.u8("flags")
        if flags & ~REQUEST_ACK_CANCEL:
            r.fail(f"flags 0x{flags:02x}: unknown bits")
        return {"flags": flags}
    if kind == RESPONSE:
        code = r.u16("code")
        return {"code": code, "code_name": CODE_NAMES.get(code, "unknown"),
                "message": r.str16("message"), "payload": r.blob32("payload")}
    if kind in (ERROR, CLOSE):
        code = r.u16("code" if kind == ERROR else "status")
        out = {"code": code, "code_name": CODE_NAMES.get(code, "unknown"), "message": r.str16("message")}
        if kind == CLOSE:
            out["status"] = code
            out["status_name"] = out["code_name"]
        return out
    if kind in (PING, PONG):
        return {"nonce": r.u64("nonce")}
    if kind == PUBLISH:
        topic = r.topic()
        key = r.take(r.u8("key length"), "key")
        return {"topic": topic, "key": key, "payload": r.blob32("payload")}
    if kind == PUBLISH_ACK:
        out = {"topic": r.topic(), "seq": r.u64("seq")}
        # Appended later: older servers end after seq.
        out["has_flags"] = r.pos < len(r.body)
        out["flags"] = r.u8("flags") if out["has_flags"] else 0
        out["duplicate"] = bool(out["flags"] & ACK_DUPLICATE)
        return out
    if kind == MUTATE:
        return _decode_mutate(r)
    if kind == MESSAGES:
        return _decode_messages(r)
    if kind == TOPICS_LIVE:
        return {"topics": [r.topic(f"topic {i}: topic") for i in range(r.count("count", 2))]}
    if kind == CATCHUP_COMPLETE:
        return {"mutate_id": r.u64("mutate_id")}
    if kind == GOING_AWAY_FRAME:
        return {"reconnect_delay_ms": r.u32("reconnect_delay_ms"), "message": r.str16("message")}
    if kind == TOPIC_ERROR:
        mutate_id = r.u64("mutate_id")
        topic = r.topic()
        code = r.u16("code")
        return {"mutate_id": mutate_id, "topic": topic, "code": code,
                "code_name": CODE_NAMES.get(code, "unknown"), "message": r.str16("message")}
    if kind == AUTH:
        return {"credentials": r.blob16("credentials")}
    if kind == LAGGED:
        topic = r.topic()
        skipped = r.u64("skipped")
        if skipped == 0:
            r.fail("skipped: 0 (a LAGGED frame skips at least one message)")
        return {"topic": topic, "skipped": skipped}
    raise AssertionError(kind)


def decode(buf: bytes | bytearray | memoryview,
           max_frame_bytes: int | None = None) -> tuple[Frame | None, int]:
    """Decodes the first frame of buf. Returns (frame, bytes consumed), or
    (None, 0) when buf does not hold a whole frame yet. Raises
    ProtocolError for a malformed frame (its .code is the wire code)."""
    if len(buf) < HEADER_BYTES:
        return None, 0
    size, version, kind, flags, corr = _HEADER.unpack_from(buf, 0)
    if size < HEADER_BYTES:
        raise ProtocolError(BAD_FRAME, f"frame size {size} below header {HEADER_BYTES}")
    if max_frame_bytes is not None and size > max_frame_bytes:
        raise ProtocolError(TOO_LARGE, f"frame size {size} above max_frame_bytes {max_frame_bytes}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(UNSUPPORTED_VERSION, f"protocol version {version} unsupported")
    if kind not in KIND_NAMES:
        raise ProtocolError(BAD_FRAME, f"frame kind {kind} unknown")
    if flags != 0:
        raise ProtocolError(BAD_FRAME, f"{KIND_NAMES[kind]}: header flags 0x{flags:04x} not zero")
    if len(buf) < size:
        return None, 0
    r = _Reader(KIND_NAMES[kind], bytes(buf[HEADER_BYTES:size]))
    fields = _decode_body(kind, r)
    if r.pos != len(r.body):
        r.fail(f"{len(r.body) - r.pos} trailing bytes")
    return Frame(kind, KIND_NAMES[kind], corr, fields, size, version), size


def decode_all(buf: bytes) -> list[Frame]:
    """Every frame of buf, which must end on a frame boundary."""
    frames = []
    view = memoryview(buf)
    while view:
        frame, used = decode(view)
        if frame is None:
            raise ProtocolError(BAD_FRAME, f"{len(view)} bytes left, not a whole frame")
        frames.append(frame)
        view = view[used:]
    return frames


# ---- blocking client --------------------------------------------------------


class Conn:
    """One TCP connection to ringbusd. Every receive honours a deadline;
    frames read while waiting for something else (publish with wait=True)
    are kept and returned by later recv calls, in order."""

    def __init__(self, host: str = "127.0.0.1", port: int = 7400, timeout: float = 5.0,
                 rcvbuf: int | None = None):
        """rcvbuf sets SO_RCVBUF before connecting (a slow reader's window)."""
        self.timeout = timeout
        if rcvbuf is None:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pending: collections.deque[Frame] = collections.deque()
        self.skipped: list[Frame] = []
        self.eof = False

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sending

    def send(self, frame_bytes: bytes) -> None:
        self.sock.sendall(frame_bytes)

    def hello(self, name: str = "test", creds: bytes = b"", corr: int = 1,
              version: int = PROTOCOL_VERSION, timeout: float | None = None) -> Frame:
        """Sends HELLO and returns the answer: STARTED, or ERROR."""
        self.send(encode_hello(corr, version=version, name=name, creds=creds))
        return self.recv(timeout)

    def publish(self, topic: str | bytes, payload: str | bytes, corr: int, key: str | bytes = b"",
                wait: bool = True, timeout: float | None = None) -> Frame | None:
        """Sends PUBLISH. With wait, returns the PUBLISH_ACK or ERROR that
        carries corr; other frames read meanwhile stay queued for recv."""
        self.send(encode_publish(corr, topic, payload, key))
        if not wait:
            return None
        deadline = self._deadline(timeout)
        held = []
        try:
            while True:
                f = self._recv_wire(deadline)
                if f.kind in (PUBLISH_ACK, ERROR) and f.corr == corr:
                    return f
                held.append(f)
        finally:
            self.pending.extend(held)

    def mutate(self, corr: int, mutate_id: int, adds=(), removes=(), history_only: bool = False,
               epoch: int | None = 0) -> None:
        self.send(encode_mutate(corr, mutate_id, adds, removes, history_only, epoch=epoch))

    def ping(self, nonce: int) -> None:
        """Sends PING{nonce}; the server answers PONG with the same nonce."""
        self.send(encode_ping(0, nonce))

    def pong(self, nonce: int) -> None:
        """Answers a server PING: PONG with the PING's nonce."""
        self.send(encode_pong(0, nonce))

    def send_close(self, status: int = OK, message: str = "") -> None:
        """Sends CLOSE; status OK is a half-close (the server finishes
        in-flight waves, flushes, answers CLOSE ok and closes)."""
        self.send(encode_close(0, status, message))

    # -- receiving

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _fill(self, deadline: float) -> None:
        """Reads more bytes; raises TimeoutError or EOFError."""
        if self.eof:
            raise EOFError("server closed the connection")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no frame before the deadline")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no frame before the deadline") from None
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            raise EOFError("server closed the connection")
        self.buf += data

    def _recv_wire(self, deadline: float) -> Frame:
        while True:
            frame, used = decode(self.buf)
            if frame is not None:
                del self.buf[:used]
                return frame
            self._fill(deadline)

    def recv(self, timeout: float | None = None) -> Frame:
        """The next frame. Raises TimeoutError when none arrives in time
        (default: the connection's timeout) and EOFError when the server
        closed the connection."""
        if self.pending:
            return self.pending.popleft()
        return self._recv_wire(self._deadline(timeout))

    def recv_until(self, pred: Callable[[Frame], bool], timeout: float | None = None) -> Frame:
        """Receives until pred(frame) holds and returns that frame; the
        frames passed over are in self.skipped (reset on each call)."""
        deadline = self._deadline(timeout)
        self.skipped = []
        while True:
            f = self.recv(max(0.0, deadline - time.monotonic()))
            if pred(f):
                return f
            self.skipped.append(f)

    def recv_all_until(self, pred: Callable[[Frame], bool], timeout: float | None = None) -> list[Frame]:
        """Every frame up to and including the first one for which pred holds."""
        last = self.recv_until(pred, timeout)
        return self.skipped + [last]

    def closed_within(self, timeout: float) -> bool:
        """True when the server closes the connection within timeout.
        Frames that arrive first are kept in self.skipped."""
        deadline = time.monotonic() + timeout
        self.skipped = list(self.pending)
        self.pending.clear()
        while True:
            try:
                self.skipped.append(self._recv_wire(deadline))
            except EOFError:
                return True
            except TimeoutError:
                return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
