"""TLS for both doors: which pair to serve, a server context, and a self-signed pair for demos.

REST and the wire endpoint read the same ``PRIVGATE_TLS_CERT`` / ``PRIVGATE_TLS_KEY`` (the wire
has its own ``PRIVGATE_WIRE_TLS_*`` overrides). With ``PRIVGATE_REQUIRE_TLS`` (the default) no
door serves plaintext to anything but loopback: :func:`rest_tls` refuses a plaintext REST bind to a
non-loopback address at startup, and :class:`PlaintextGuard` refuses, per request, a plaintext
request whose peer is not loopback (``gateway.rest.PlaintextGuard``, for apps started some other
way). See docs/operations.md#tls.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.settings import Settings


def ensure_self_signed(directory: Path, *, host: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate and key in ``directory`` (made on first call, then reused)."""
    cert, key = directory / "tls-self-signed.crt", directory / "tls-self-signed.key"
    if cert.exists() and key.exists():
        return cert, key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"privgate demo ({host})")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName(host),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_bytes = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_bytes)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


class TlsConfigError(ValueError):
    """The TLS settings cannot be served as asked (shown at startup, with what to change)."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; False for wildcards and everything else."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve anywhere


@dataclass(frozen=True, slots=True)
class TlsPair:
    cert: Path
    key: Path
    #: True when privgate generated the pair itself (fine for a demo, not for production).
    self_signed: bool


def configured_pair(settings: Settings, *, wire: bool = False) -> TlsPair | None:
    """The configured certificate and key (the wire's own override first), or ``None``.

    Raises:
        TlsConfigError: only one of certificate and key is set, or a file is missing.
    """
    pairs = [(settings.tls_cert, settings.tls_key, "PRIVGATE_TLS_CERT", "PRIVGATE_TLS_KEY")]
    if wire:
        pairs.insert(
            0,
            (
                settings.wire_tls_cert,
                settings.wire_tls_key,
                "PRIVGATE_WIRE_TLS_CERT",
                "PRIVGATE_WIRE_TLS_KEY",
            ),
        )
    for cert, key, cert_name, key_name in pairs:
        if cert is None and key is None:
            continue
        if cert is None or key is None:
            raise TlsConfigError(f"set both {cert_name} and {key_name}, or neither")
        for path, name in ((cert, cert_name), (key, key_name)):
            if not path.is_file():
                raise TlsConfigError(f"{name} names {str(path)!r}, which is not a readable file")
        return TlsPair(cert, key, self_signed=False)
    return None


def wire_tls(settings: Settings) -> TlsPair:
    """The wire endpoint always offers TLS: the configured pair, else a self-signed one."""
    found = configured_pair(settings, wire=True)
    if found is not None:
        return found
    cert, key = ensure_self_signed(settings.data_dir)
    return TlsPair(cert, key, self_signed=True)


def rest_tls(settings: Settings, host: str) -> TlsPair | None:
    """The pair REST serves HTTPS with on ``host``, or ``None`` for plaintext.

    ``PRIVGATE_REST_TLS``: ``on`` always HTTPS; ``off`` plaintext; ``auto`` (default) HTTPS when
    a pair is configured or the bind address is not loopback, plaintext on loopback otherwise.
    HTTPS without a configured pair uses the self-signed demo pair.

    Raises:
        TlsConfigError: plaintext on a non-loopback address while ``PRIVGATE_REQUIRE_TLS`` is on,
            or a half-configured pair.
    """
    pair = configured_pair(settings)
    mode = settings.rest_tls
    if mode == "off" or (mode == "auto" and pair is None and is_loopback(host)):
        if settings.require_tls and not is_loopback(host):
            raise TlsConfigError(
                f"plaintext HTTP on {host} is refused: PRIVGATE_REQUIRE_TLS is on and {host} is "
                "not a loopback address. Configure PRIVGATE_TLS_CERT and PRIVGATE_TLS_KEY (or "
                "set PRIVGATE_REST_TLS=auto for a self-signed pair), bind to 127.0.0.1, or - "
                "behind a TLS-terminating proxy only - set PRIVGATE_REQUIRE_TLS=false"
            )
        return None
    if pair is not None:
        return pair
    cert, key = ensure_self_signed(settings.data_dir)
    return TlsPair(cert, key, self_signed=True)
