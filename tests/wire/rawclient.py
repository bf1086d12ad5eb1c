"""A minimal PostgreSQL protocol client over raw sockets, for tests that send arbitrary bytes."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import socket
import ssl
import struct
from dataclasses import dataclass

PROTOCOL_V3 = 196608


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def startup(params: dict[str, str]) -> bytes:
    body = (
        struct.pack("!i", PROTOCOL_V3)
        + b"".join(cstr(k) + cstr(v) for k, v in params.items())
        + b"\0"
    )
    return struct.pack("!i", len(body) + 4) + body


def query(sql: str) -> bytes:
    return msg(b"Q", cstr(sql))


def parse(sql: str, name: str = "", oids: tuple[int, ...] = ()) -> bytes:
    return msg(
        b"P",
        cstr(name)
        + cstr(sql)
        + struct.pack("!h", len(oids))
        + b"".join(struct.pack("!I", o) for o in oids),
    )


def bind(params: tuple[bytes | None, ...] = (), portal: str = "", name: str = "") -> bytes:
    body = cstr(portal) + cstr(name) + struct.pack("!h", 0) + struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return msg(b"B", body + struct.pack("!h", 0))


def describe(kind: bytes = b"P", name: str = "") -> bytes:
    return msg(b"D", kind + cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + struct.pack("!i", max_rows))


SYNC = msg(b"S")
TERMINATE = msg(b"X")


@dataclass
class Message:
    kind: str
    body: bytes

    def fields(self) -> dict[str, str]:
        out = {}
        for part in self.body.split(b"\0"):
            if part:
                out[chr(part[0])] = part[1:].decode("utf-8", "replace")
        return out


class RawClient:
    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (host, port), timeout=timeout
        )
        self._buf = b""

    def tls(self) -> None:
        self.sock.sendall(struct.pack("!ii", 8, 80877103))
        answer = self.sock.recv(1)
        assert answer == b"S", answer
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Message:
        while len(self._buf) < 5 or len(self._buf) < 1 + struct.unpack("!i", self._buf[1:5])[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buf += chunk
        length = struct.unpack("!i", self._buf[1:5])[0]
        out = Message(chr(self._buf[0]), self._buf[5 : 1 + length])
        self._buf = self._buf[1 + length :]
        return out

    def until_ready(self) -> list[Message]:
        out = []
        while True:
            m = self.read()
            out.append(m)
            if m.kind == "Z":
                return out
            if m.kind == "E" and m.fields().get("S") == "FATAL":
                return out

    def login(self, user: str, password: str) -> list[Message]:
        """TLS, startup, SCRAM-SHA-256; returns the messages up to ReadyForQuery."""
        self.tls()
        self.send(startup({"user": user, "database": "clinic"}))
        sasl = self.read()
        assert sasl.kind == "R" and struct.unpack("!i", sasl.body[:4])[0] == 10, sasl
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        bare = f"n=,r={nonce}"
        first = f"n,,{bare}".encode()
        self.send(msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
        cont = self.read()
        if cont.kind == "E":
            return [cont]
        server_first = cont.body[4:].decode()
        attrs = dict(p.split("=", 1) for p in server_first.split(","))
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored = hashlib.sha256(client_key).digest()
        without = f"c=biws,r={attrs['r']}"
        auth = f"{bare},{server_first},{without}".encode()
        sig = hmac.new(stored, auth, hashlib.sha256).digest()
        proof = base64.b64encode(
            bytes(a ^ b for a, b in zip(client_key, sig, strict=True))
        ).decode()
        self.send(msg(b"p", f"{without},p={proof}".encode()))
        return self.until_ready()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
