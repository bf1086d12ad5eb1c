"""PostgreSQL protocol v3 messages, sans-IO: bytes in, dataclasses out, and back.

Nothing here touches a socket. :class:`FrontendParser` is fed whatever bytes arrived and yields
complete client messages; the ``encode_*`` functions build server messages. A malformed message
raises :class:`ProtocolViolation` (SQLSTATE 08P01): the server answers with an error and closes
that connection only. Reference: https://www.postgresql.org/docs/15/protocol-message-formats.html
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PROTOCOL_V3 = 196608  # 3.0
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

#: Largest message we accept. PostgreSQL allows 1 GiB; a SQL gateway needs far less, and a
#: length field is the cheapest way for a client to make a server allocate.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_STARTUP_BYTES = 10_000  # PostgreSQL's own limit for the startup packet


class ProtocolViolation(Exception):
    """The client sent bytes that are not a valid message here (SQLSTATE 08P01)."""


# --- frontend (client → server) messages -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: int


@dataclass(frozen=True, slots=True)
class StartupMessage:
    version: int
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class PasswordData:
    """A 'p' message: a cleartext password, a SASLInitialResponse or a SASLResponse (by state)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Query:
    sql: str


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    sql: str
    param_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Describe:
    kind: str  # "S" statement | "P" portal
    name: str


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int


@dataclass(frozen=True, slots=True)
class Close:
    kind: str  # "S" | "P"
    name: str


@dataclass(frozen=True, slots=True)
class Sync:
    pass


@dataclass(frozen=True, slots=True)
class Flush:
    pass


@dataclass(frozen=True, slots=True)
class Terminate:
    pass


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A well-framed message we do not serve (FunctionCall, CopyData, …)."""

    type: str


Frontend = (
    SSLRequest
    | GSSENCRequest
    | CancelRequest
    | StartupMessage
    | PasswordData
    | Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | Terminate
    | Unsupported
)


class _Reader:
    """Cursor over one message body; every read checks bounds."""

    __slots__ = ("_buf", "_pos")

    def __init__(self, buf: bytes) -> None:
        self._buf = buf
        self._pos = 0

    def int16(self) -> int:
        return int(self._unpack("!h", 2))

    def uint16(self) -> int:
        return int(self._unpack("!H", 2))

    def int32(self) -> int:
        return int(self._unpack("!i", 4))

    def _unpack(self, fmt: str, size: int) -> int:
        if self._pos + size > len(self._buf):
            raise ProtocolViolation("message ended early")
        (value,) = struct.unpack_from(fmt, self._buf, self._pos)
        self._pos += size
        return int(value)

    def byte(self) -> str:
        if self._pos >= len(self._buf):
            raise ProtocolViolation("message ended early")
        value = chr(self._buf[self._pos])
        self._pos += 1
        return value

    def cstring(self) -> str:
        end = self._buf.find(b"\0", self._pos)
        if end < 0:
            raise ProtocolViolation("string is not terminated")
        raw = self._buf[self._pos : end]
        self._pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolViolation("string is not valid UTF-8") from exc

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._buf):
            raise ProtocolViolation("message ended early")
        raw = self._buf[self._pos : self._pos + n]
        self._pos += n
        return raw

    def rest(self) -> bytes:
        raw = self._buf[self._pos :]
        self._pos = len(self._buf)
        return raw

    def done(self) -> None:
        if self._pos != len(self._buf):
            raise ProtocolViolation("message has trailing bytes")


def _count(r: _Reader, what: str, limit: int = 65_535) -> int:
    n = r.int16()
    if n < 0 or n > limit:
        raise ProtocolViolation(f"bad {what} count {n}")
    return n


def _formats(r: _Reader) -> tuple[int, ...]:
    n = _count(r, "format")
    out = tuple(r.int16() for _ in range(n))
    if any(f not in (0, 1) for f in out):
        raise ProtocolViolation("format codes must be 0 (text) or 1 (binary)")
    return out


def _parse_typed(kind: str, body: bytes) -> Frontend:
    r = _Reader(body)
    msg: Frontend
    if kind == "Q":
        msg = Query(r.cstring())
    elif kind == "P":
        name, sql = r.cstring(), r.cstring()
        n = _count(r, "parameter type")
        msg = Parse(name, sql, tuple(r.int32() & 0xFFFFFFFF for _ in range(n)))
    elif kind == "B":
        portal, statement = r.cstring(), r.cstring()
        param_formats = _formats(r)
        n = _count(r, "parameter")
        params: list[bytes | None] = []
        for _ in range(n):
            size = r.int32()
            if size < -1:
                raise ProtocolViolation(f"bad parameter length {size}")
            params.append(None if size == -1 else r.take(size))
        msg = Bind(portal, statement, param_formats, tuple(params), _formats(r))
    elif kind == "D" or kind == "C":
        which = r.byte()
        if which not in ("S", "P"):
            raise ProtocolViolation(f"{'Describe' if kind == 'D' else 'Close'} needs 'S' or 'P'")
        name = r.cstring()
        msg = Describe(which, name) if kind == "D" else Close(which, name)
    elif kind == "E":
        portal = r.cstring()
        msg = Execute(portal, r.int32())
    elif kind == "S":
        msg = Sync()
    elif kind == "H":
        msg = Flush()
    elif kind == "X":
        msg = Terminate()
    elif kind == "p":
        msg = PasswordData(r.rest())
    elif kind in ("F", "d", "c", "f"):
        r.rest()
        msg = Unsupported(kind)
    else:
        raise ProtocolViolation(f"unknown message type {kind!r}")
    r.done()
    return msg


def _parse_startup(body: bytes) -> Frontend:
    r = _Reader(body)
    code = r.int32()
    if code == SSL_REQUEST_CODE:
        r.done()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.done()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        msg = CancelRequest(r.int32(), r.int32())
        r.done()
        return msg
    if code >> 16 != 3:
        raise ProtocolViolation(f"unsupported protocol version {code >> 16}.{code & 0xFFFF}")
    params: dict[str, str] = {}
    while True:
        key = r.cstring()
        if key == "":
            break
        params[key] = r.cstring()
    r.done()
    return StartupMessage(code, params)


class FrontendParser:
    """Split a client byte stream into messages.

    The first message(s) of a connection have no type byte (startup, SSLRequest, CancelRequest);
    call :meth:`startup_done` once the startup packet was read.

    >>> p = FrontendParser()
    >>> p.feed(b"\\x00\\x00\\x00\\x08\\x04\\xd2\\x16\\x2f")
    >>> p.next()
    SSLRequest()
    >>> p.startup_done(); p.feed(b"Q\\x00\\x00\\x00\\x0dSELECT 1\\x00")
    >>> p.next()
    Query(sql='SELECT 1')
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._startup = True

    def feed(self, data: bytes) -> None:
        self._buf += data

    def startup_done(self) -> None:
        self._startup = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next(self) -> Frontend | None:
        """The next complete message, or ``None`` when more bytes are needed."""
        if self._startup:
            if len(self._buf) < 4:
                return None
            (length,) = struct.unpack_from("!i", self._buf, 0)
            if length < 8 or length > MAX_STARTUP_BYTES:
                raise ProtocolViolation(f"bad startup packet length {length}")
            if len(self._buf) < length:
                return None
            body = bytes(self._buf[4:length])
            del self._buf[:length]
            return _parse_startup(body)
        if len(self._buf) < 5:
            return None
        kind = chr(self._buf[0])
        (length,) = struct.unpack_from("!i", self._buf, 1)
        if length < 4 or length > MAX_MESSAGE_BYTES:
            raise ProtocolViolation(f"bad message length {length}")
        if len(self._buf) < 1 + length:
            return None
        body = bytes(self._buf[5 : 1 + length])
        del self._buf[: 1 + length]
        return _parse_typed(kind, body)


# --- backend (server → client) messages --------------------------------------------------------


def _msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _cstr(text: str) -> bytes:
    return text.replace("\0", "").encode("utf-8") + b"\0"


def auth_ok() -> bytes:
    return _msg(b"R", struct.pack("!i", 0))


def auth_cleartext() -> bytes:
    return _msg(b"R", struct.pack("!i", 3))


def auth_sasl(mechanisms: Sequence[str]) -> bytes:
    return _msg(b"R", struct.pack("!i", 10) + b"".join(_cstr(m) for m in mechanisms) + b"\0")


def auth_sasl_continue(data: bytes) -> bytes:
    return _msg(b"R", struct.pack("!i", 11) + data)


def auth_sasl_final(data: bytes) -> bytes:
    return _msg(b"R", struct.pack("!i", 12) + data)


def parameter_status(name: str, value: str) -> bytes:
    return _msg(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return _msg(b"K", struct.pack("!ii", pid, secret))


def ready_for_query(status: str) -> bytes:
    return _msg(b"Z", status.encode("ascii"))


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type_oid: int
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0
    table_oid: int = 0
    column: int = 0


def row_description(fields: Sequence[Field]) -> bytes:
    body = struct.pack("!h", len(fields))
    for f in fields:
        body += _cstr(f.name) + struct.pack(
            "!ihihih", f.table_oid, f.column, f.type_oid, f.type_size, f.type_modifier, f.format
        )
    return _msg(b"T", body)


def data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [struct.pack("!h", len(values))]
    for v in values:
        parts.append(struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v)
    return _msg(b"D", b"".join(parts))


def command_complete(tag: str) -> bytes:
    return _msg(b"C", _cstr(tag))


def empty_query_response() -> bytes:
    return _msg(b"I")


def parse_complete() -> bytes:
    return _msg(b"1")


def bind_complete() -> bytes:
    return _msg(b"2")


def close_complete() -> bytes:
    return _msg(b"3")


def no_data() -> bytes:
    return _msg(b"n")


def portal_suspended() -> bytes:
    return _msg(b"s")


def parameter_description(oids: Iterable[int]) -> bytes:
    oids = list(oids)
    return _msg(b"t", struct.pack("!h", len(oids)) + b"".join(struct.pack("!I", o) for o in oids))


@dataclass(frozen=True, slots=True)
class Notice:
    """Fields of an ErrorResponse / NoticeResponse (one-letter codes, see the protocol docs)."""

    severity: str
    code: str
    message: str
    detail: str | None = None
    hint: str | None = None
    extra: tuple[tuple[str, str], ...] = ()

    def encode(self, kind: bytes) -> bytes:
        fields = [("S", self.severity), ("V", self.severity), ("C", self.code), ("M", self.message)]
        if self.detail:
            fields.append(("D", self.detail))
        if self.hint:
            fields.append(("H", self.hint))
        fields.extend(self.extra)
        body = b"".join(k.encode("ascii") + _cstr(v) for k, v in fields) + b"\0"
        return _msg(kind, body)


def error_response(notice: Notice) -> bytes:
    return notice.encode(b"E")


def notice_response(notice: Notice) -> bytes:
    return notice.encode(b"N")
