"""TLS on the REST door: HTTPS with the configured pair, and no plaintext except to loopback.

``privgate serve`` runs as a user runs it (a subprocess, real sockets); the per-request guard is
tested on a uvicorn server bound to every address, reached over loopback and over the machine's
own non-loopback address.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.composition import build_services
from gateway.settings import Settings
from gateway.tls import TlsConfigError, ensure_self_signed, is_loopback, rest_tls
from tests.conftest import serve_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _own_address() -> str | None:
    """This machine's non-loopback IPv4 address (the route to the outside), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if is_loopback(address) or address == "0.0.0.0" else address


def _need_address() -> str:
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to test plaintext refusal on")
    return address


def _env(tmp: Path, warehouse: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVGATE_")}
    env.update(
        PRIVGATE_DATA_DIR=str(tmp / "data"),
        PRIVGATE_WAREHOUSE_PATH=str(warehouse),
        PRIVGATE_WAREHOUSE_THREADS="1",
        **extra,
    )
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


class _Served:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc, self.port = proc, port


def _serve(env: dict[str, str], host: str, port: int) -> Iterator[_Served]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--host",
            host,
            "--port",
            str(port),
            "--pg-port",
            "0",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                raise AssertionError(f"privgate serve exited with {proc.returncode}:\n{out}")
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("privgate serve did not start within 60 s") from None
                time.sleep(0.1)
        yield _Served(proc, port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_https_with_the_configured_certificate(tmp_path: Path, demo_warehouse: Path) -> None:
    cert, key = ensure_self_signed(tmp_path / "pki")  # stands in for the operator's own pair
    env = _env(tmp_path, demo_warehouse, PRIVGATE_TLS_CERT=str(cert), PRIVGATE_TLS_KEY=str(key))
    made = _cli("key", "create", "--principal", "analyst", env=env)
    assert made.returncode == 0, made.stderr
    analyst_key = made.stdout.strip()
    port = _free_port()
    for served in _serve(env, "127.0.0.1", port):
        # A configured pair turns HTTPS on even on loopback; the client verifies it.
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as client:
            health = client.get(f"https://127.0.0.1:{served.port}/healthz")
            assert health.status_code == 200
            budget = client.get(
                f"https://127.0.0.1:{served.port}/v1/budget",
                headers={"Authorization": f"Bearer {analyst_key}"},
            )
            assert budget.status_code == 200, budget.text
            assert budget.json()["principal"] == "analyst"
        # Plaintext to the HTTPS port gets no answer.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{served.port}/healthz", timeout=5)


def test_plaintext_on_a_non_loopback_bind_is_refused_at_startup(
    tmp_path: Path, demo_warehouse: Path
) -> None:
    env = _env(tmp_path, demo_warehouse, PRIVGATE_REST_TLS="off")
    for host in ("0.0.0.0", _own_address() or "192.0.2.1"):
        result = _cli(
            "serve", "--host", host, "--port", str(_free_port()), "--pg-port", "0", env=env
        )
        assert result.returncode == 1
        assert f"plaintext HTTP on {host} is refused" in result.stderr
        assert "PRIVGATE_TLS_CERT" in result.stderr  # says what to change


def test_auto_serves_https_on_a_non_loopback_address(tmp_path: Path, demo_warehouse: Path) -> None:
    address = _need_address()
    env = _env(tmp_path, demo_warehouse)
    port = _free_port()
    for served in _serve(env, address, port):
        # No pair configured: the self-signed demo pair, over HTTPS.
        ctx = ssl.create_default_context(cafile=str(tmp_path / "data" / "tls-self-signed.crt"))
        ctx.check_hostname = False  # the demo certificate names localhost, not this address
        assert httpx.get(f"https://{address}:{served.port}/healthz", verify=ctx).status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://{address}:{served.port}/healthz", timeout=5)


def test_rest_tls_modes(tmp_path: Path) -> None:
    base = {"data_dir": tmp_path / "data"}
    assert rest_tls(Settings(**base), "127.0.0.1") is None  # loopback, nothing configured
    pair = rest_tls(Settings(**base), "0.0.0.0")
    assert pair is not None and pair.self_signed
    on = rest_tls(Settings(**base, rest_tls="on"), "127.0.0.1")
    assert on is not None and on.self_signed
    assert rest_tls(Settings(**base, rest_tls="off", require_tls=False), "0.0.0.0") is None
    with pytest.raises(TlsConfigError, match="refused"):
        rest_tls(Settings(**base, rest_tls="off"), "10.1.2.3")
    with pytest.raises(TlsConfigError, match="set both"):
        rest_tls(Settings(**base, tls_cert=pair.cert), "127.0.0.1")
    with pytest.raises(TlsConfigError, match="not a readable file"):
        rest_tls(Settings(**base, tls_cert=tmp_path / "no.crt", tls_key=pair.key), "127.0.0.1")
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


@pytest.fixture
def plaintext_everywhere(tmp_path: Path, demo_warehouse: Path) -> Iterator[int]:
    """The app served in plaintext on 0.0.0.0 (as uvicorn by hand would), TLS required."""
    settings = Settings(
        data_dir=tmp_path / "data", warehouse_path=demo_warehouse, warehouse_threads=1
    )
    services = build_services(settings)
    try:
        with serve_app(services, "0.0.0.0") as port:
            yield port
    finally:
        services.close()


def test_plaintext_request_from_a_non_loopback_peer_is_refused(plaintext_everywhere: int) -> None:
    address = _need_address()
    port = plaintext_everywhere
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    refused = httpx.get(f"http://{address}:{port}/healthz")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "tls.required"
    assert "https" in error["hint"]
