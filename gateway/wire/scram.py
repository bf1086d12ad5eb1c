"""SCRAM-SHA-256 (RFC 5802 / RFC 7677), server side, sans-IO.

A principal may hold several API keys and one admin-set password, and any of them is a valid
wire password. SCRAM sends the salt before the client proves anything, so all of a principal's
verifiers share one salt, derived from the server's secret pepper and the principal's name
(unpredictable to clients, stable across replicas, never stored). The client's proof is checked
against each verifier in turn; a match says which one was used.

An unknown user gets a full, well-formed exchange with a fake salt, so that the reply does not
reveal whether the name exists (PostgreSQL does the same).

>>> v = make_verifier("secret", salt=b"0123456789abcdef")
>>> c = _client_proof_for_test("secret", b"0123456789abcdef", "x", "rnd")
>>> ex = ScramExchange(salt=b"0123456789abcdef", verifiers=[v], server_nonce="srv")
>>> first = ex.client_first(c.first)
>>> ex.client_final(c.final(first)) is not None
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

ITERATIONS = 4096
MECHANISM = "SCRAM-SHA-256"


class ScramFailed(Exception):
    """The exchange is malformed or the proof is wrong (reported as 28P01)."""


@dataclass(frozen=True, slots=True)
class Verifier:
    stored_key: bytes
    server_key: bytes
    #: What this verifier is: an API key id, or "password".
    label: str = ""


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def make_verifier(
    password: str, *, salt: bytes, iterations: int = ITERATIONS, label: str = ""
) -> Verifier:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return Verifier(hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key"), label)


def principal_salt(pepper: bytes, principal: str) -> bytes:
    """The SCRAM salt of ``principal``'s verifiers."""
    return _hmac(pepper, b"privgate-scram-salt\0" + principal.encode("utf-8"))[:16]


def _attrs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ScramFailed("malformed SCRAM attribute")
        out.setdefault(key, value)
    return out


class ScramExchange:
    """One server-side exchange: ``client_first`` → server-first, ``client_final`` → server-final."""

    def __init__(
        self,
        *,
        salt: bytes,
        verifiers: Sequence[Verifier],
        server_nonce: str | None = None,
        iterations: int = ITERATIONS,
    ) -> None:
        self._salt = salt
        self._verifiers = tuple(verifiers)
        self._snonce = server_nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self._iterations = iterations
        self._client_first_bare = ""
        self._server_first = ""
        self._gs2 = ""
        self._nonce = ""
        self.matched: Verifier | None = None

    def client_first(self, message: bytes) -> bytes:
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScramFailed("SCRAM message is not UTF-8") from exc
        flag, _, rest = text.partition(",")
        if flag not in ("n", "y"):  # "p=…" asks for channel binding, which we do not offer
            raise ScramFailed("channel binding is not supported")
        authzid, sep, bare = rest.partition(",")
        if not sep or authzid:
            raise ScramFailed("malformed SCRAM client-first message")
        attrs = _attrs(bare)
        cnonce = attrs.get("r", "")
        if not cnonce or "n" not in attrs:
            raise ScramFailed("malformed SCRAM client-first message")
        self._gs2 = f"{flag},,"
        self._client_first_bare = bare
        self._nonce = cnonce + self._snonce
        salt = base64.b64encode(self._salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self._iterations}"
        return self._server_first.encode()

    def client_final(self, message: bytes) -> bytes | None:
        """Server-final bytes if the proof matches a verifier, else ``None``."""
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScramFailed("SCRAM message is not UTF-8") from exc
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise ScramFailed("SCRAM client-final message has no proof")
        attrs = _attrs(without_proof)
        if attrs.get("r") != self._nonce:
            raise ScramFailed("SCRAM nonce mismatch")
        try:
            binding = base64.b64decode(attrs.get("c", ""), validate=True).decode()
            proof = base64.b64decode(proof_part, validate=True)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ScramFailed("malformed SCRAM client-final message") from exc
        if binding != self._gs2 or len(proof) != 32:
            raise ScramFailed("malformed SCRAM client-final message")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        found: Verifier | None = None
        for v in self._verifiers:  # check all: the time taken does not say which one matched
            signature = _hmac(v.stored_key, auth_message)
            client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
            if hmac.compare_digest(hashlib.sha256(client_key).digest(), v.stored_key):
                found = v
        if found is None:
            return None
        self.matched = found
        return b"v=" + base64.b64encode(_hmac(found.server_key, auth_message))


@dataclass
class _TestClient:
    password: str
    salt: bytes
    first: bytes
    bare: str

    def final(self, server_first: bytes) -> bytes:
        sf = server_first.decode()
        nonce = _attrs(sf)["r"]
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), self.salt, ITERATIONS)
        client_key = _hmac(salted, b"Client Key")
        without = f"c=biws,r={nonce}"
        auth = f"{self.bare},{sf},{without}".encode()
        sig = _hmac(hashlib.sha256(client_key).digest(), auth)
        proof = bytes(a ^ b for a, b in zip(client_key, sig, strict=True))
        return f"{without},p={base64.b64encode(proof).decode()}".encode()


def _client_proof_for_test(password: str, salt: bytes, user: str, nonce: str) -> _TestClient:
    bare = f"n={user},r={nonce}"
    return _TestClient(password, salt, f"n,,{bare}".encode(), bare)
