"""The PostgreSQL wire endpoint's I/O: the only module here that touches sockets.

One asyncio task per connection: SSLRequest/TLS, startup, SCRAM-SHA-256 login against the
principal store, then messages through :class:`~gateway.wire.session.WireSession`. Blocking work
(the privacy pipeline, the shadow, the control database) runs in a thread pool. A connection that
misbehaves is answered with a FATAL error and closed; the others never notice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hmac
import logging
import secrets
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.audit import AuditLog
from gateway.errors import (
    ShadowUnavailable,
    WireAuthFailed,
    WireError,
    WireTlsRequired,
    WireTooManyConnections,
    describe,
)
from gateway.metrics import Metrics
from gateway.principals import Principal, PrincipalStore
from gateway.service import QueryService
from gateway.wire import messages as m
from gateway.wire import scram
from gateway.wire.door import ServiceDoor
from gateway.wire.pgtypes import SHADOW_TYPES
from gateway.wire.session import WireSession
from gateway.wire.shadow import Shadow, ShadowColumn, ShadowError, ShadowTable
from gateway.wire.shadow_link import ShadowLink

log = logging.getLogger("privgate.wire")

_READ_CHUNK = 65_536


@dataclass(frozen=True)
class WireConfig:
    require_tls: bool = True
    allow_cleartext: bool = False
    max_connections: int = 100
    idle_timeout_s: float = 900.0
    #: How long a client may take from connecting to being logged in.
    login_timeout_s: float = 30.0


class _Closed(Exception):
    """The connection is over (client left, or we sent a FATAL error)."""


class _Conn:
    """Buffered reads of frontend messages on one stream, with a deadline per read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = m.FrontendParser()

    async def next(self, timeout: float) -> m.Frontend:
        while True:
            msg = self.parser.next()
            if msg is not None:
                return msg
            try:
                data = await asyncio.wait_for(self.reader.read(_READ_CHUNK), timeout)
            except TimeoutError:
                raise
            if not data:
                raise _Closed()
            self.parser.feed(data)

    def has_buffered(self) -> bool:
        return self.parser.buffered > 0

    async def send(self, *chunks: bytes) -> None:
        self.writer.write(b"".join(chunks))
        await self.writer.drain()

    async def fatal(self, notice: m.Notice) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.send(m.error_response(notice))
        raise _Closed()


def _fatal(exc: BaseException) -> m.Notice:
    public = describe(exc)
    return m.Notice("FATAL", public.sqlstate, public.message, hint=public.hint or None)


class WireServer:
    def __init__(
        self,
        *,
        service: QueryService,
        principals: PrincipalStore,
        audit: AuditLog,
        shadow: Shadow,
        ssl_context: ssl.SSLContext | None,
        config: WireConfig = WireConfig(),
        metrics: Metrics | None = None,
    ) -> None:
        self._service = service
        self._principals = principals
        self._audit = audit
        self._shadow = shadow
        self._ssl = ssl_context
        self._config = config
        self._metrics = metrics
        self._sessions: dict[int, tuple[int, WireSession]] = {}
        self._open = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.max_connections + 8, thread_name_prefix="privgate-wire"
        )
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    async def start(self, host: str, port: int) -> asyncio.Server:
        self._server = await asyncio.start_server(self._handle, host, port, limit=_READ_CHUNK)
        return self._server

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        """Stop accepting, end every open connection (closing its shadow session), then stop."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- one connection -------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        conn = _Conn(reader, writer)
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else ""
        self._open += 1
        opened: list[ShadowLink] = []  # filled by _login as soon as a shadow session exists
        pid: int | None = None
        try:
            session, pid = await asyncio.wait_for(
                self._login(conn, client, opened), self._config.login_timeout_s
            )
            await self._serve(conn, session)
        except (_Closed, ConnectionError, asyncio.IncompleteReadError):
            pass
        except TimeoutError:
            with contextlib.suppress(ConnectionError, OSError):
                await conn.send(
                    m.error_response(
                        m.Notice("FATAL", "57P05", "terminating connection due to idle timeout")
                    )
                )
        except m.ProtocolViolation as exc:
            with contextlib.suppress(ConnectionError, OSError):
                await conn.send(m.error_response(m.Notice("FATAL", "08P01", str(exc))))
        except ssl.SSLError:
            log.info("TLS handshake with %s failed", client)
        except Exception:
            log.exception("wire connection from %s failed", client)
            with contextlib.suppress(ConnectionError, OSError):
                await conn.send(m.error_response(m.Notice("FATAL", "XX000", "internal error")))
        finally:
            self._open -= 1
            if pid is not None:
                self._sessions.pop(pid, None)
            for link in opened:
                try:
                    link.close()  # a socket close: quick, and must happen even when cancelled
                except Exception:
                    log.exception("could not close a shadow session")
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                writer.close()

    async def _login(
        self, conn: _Conn, client: str, opened: list[ShadowLink]
    ) -> tuple[WireSession, int]:
        tls = False
        while True:
            msg = await conn.next(self._config.login_timeout_s)
            if isinstance(msg, m.SSLRequest):
                if tls:
                    raise m.ProtocolViolation("SSLRequest after TLS was negotiated")
                if self._ssl is None:
                    await conn.send(b"N")
                    continue
                if conn.has_buffered():  # bytes after SSLRequest before the handshake: injection
                    raise m.ProtocolViolation("unencrypted data after SSLRequest")
                await conn.send(b"S")
                await conn.writer.start_tls(self._ssl)
                tls = True
                continue
            if isinstance(msg, m.GSSENCRequest):
                await conn.send(b"N")
                continue
            if isinstance(msg, m.CancelRequest):
                self._cancel(msg)
                raise _Closed()
            assert isinstance(msg, m.StartupMessage)
            break
        conn.parser.startup_done()
        if self._open > self._config.max_connections:
            await conn.fatal(_fatal(WireTooManyConnections("sorry, too many clients already")))
        if msg.version & 0xFFFF != 0 or any(k.startswith("_pq_.") for k in msg.params):
            await conn.send(_negotiate(msg))
        user = msg.params.get("user", "")
        if self._config.require_tls and not tls:
            self._audit_failure(client, WireTlsRequired.code, user)
            await conn.fatal(
                _fatal(WireTlsRequired("no encryption: this privgate accepts TLS connections only"))
            )
        principal, credential = await self._authenticate(conn, user, tls, client)
        tables = _visible_tables(self._service, principal)
        try:
            raw = await self._blocking(
                functools.partial(
                    self._shadow.connect,
                    tables,
                    application_name=msg.params.get("application_name", "privgate-wire")[:60],
                )
            )
        except ShadowError as exc:
            log.error("shadow catalog unavailable: %s", exc)
            await conn.fatal(_fatal(ShadowUnavailable("the catalog server is unavailable")))
        try:
            link = await self._blocking(ShadowLink, raw)
        except BaseException:
            raw.close()
            raise
        opened.append(link)
        door = ServiceDoor(
            service=self._service,
            principals=self._principals,
            name=principal.name,
            credential=credential,
            client=client,
        )
        loop = asyncio.get_running_loop()
        session = WireSession(
            door=door,
            shadow=link,
            run_blocking=lambda fn, *a: loop.run_in_executor(self._pool, functools.partial(fn, *a)),
        )
        pid = self._new_pid()
        secret = secrets.randbits(31)
        self._sessions[pid] = (secret, session)
        params = link.parameters()
        params["application_name"] = msg.params.get("application_name", "")
        params["session_authorization"] = principal.name
        await conn.send(
            m.auth_ok(),
            *(m.parameter_status(k, v) for k, v in params.items()),
            m.backend_key_data(pid, secret),
            session.ready(),
        )
        return session, pid

    async def _authenticate(
        self, conn: _Conn, user: str, tls: bool, client: str
    ) -> tuple[Principal, str]:
        salt = self._principals.wire_salt(user)
        verifiers = await self._blocking(self._principals.wire_verifiers, user)
        if not verifiers:
            # Unknown user: a full exchange all the same, so the reply does not tell.
            salt = secrets.token_bytes(16)
        matched: scram.Verifier | None = None
        if self._config.allow_cleartext and tls:
            await conn.send(m.auth_cleartext())
            reply = await conn.next(self._config.login_timeout_s)
            if not isinstance(reply, m.PasswordData):
                raise m.ProtocolViolation("expected a password message")
            password = reply.data.rstrip(b"\0").decode("utf-8", "replace")
            candidate = await self._blocking(
                functools.partial(scram.make_verifier, password, salt=salt)
            )
            for v in verifiers:
                if hmac.compare_digest(v.stored_key, candidate.stored_key):
                    matched = v
        else:
            await conn.send(m.auth_sasl([scram.MECHANISM]))
            first = await conn.next(self._config.login_timeout_s)
            if not isinstance(first, m.PasswordData):
                raise m.ProtocolViolation("expected a SASLInitialResponse")
            mechanism, data = _sasl_initial(first.data)
            if mechanism != scram.MECHANISM:
                raise m.ProtocolViolation(f"unsupported SASL mechanism {mechanism!r}")
            exchange = scram.ScramExchange(salt=salt, verifiers=verifiers)
            try:
                await conn.send(m.auth_sasl_continue(exchange.client_first(data)))
                final = await conn.next(self._config.login_timeout_s)
                if not isinstance(final, m.PasswordData):
                    raise m.ProtocolViolation("expected a SASLResponse")
                server_final = exchange.client_final(final.data)
            except scram.ScramFailed as exc:
                raise m.ProtocolViolation(str(exc)) from exc
            if server_final is not None:
                matched = exchange.matched
                await conn.send(m.auth_sasl_final(server_final))
        principal = None
        if matched is not None:
            principal = await self._blocking(self._principals.wire_login_valid, user, matched.label)
        if principal is None or matched is None:
            if self._metrics is not None:
                self._metrics.auth_failure(WireAuthFailed.code)
            self._audit_failure(client, WireAuthFailed.code, user)
            await conn.fatal(
                _fatal(WireAuthFailed(f'password authentication failed for user "{user[:64]}"'))
            )
            raise AssertionError("unreachable")
        return principal, matched.label

    def _audit_failure(self, client: str, code: str, user: str) -> None:
        try:
            # Who tried (the name they gave, as REST keeps the endpoint) and from where; never
            # what they sent as a password.
            self._audit.append(
                {
                    "decision": "rejected",
                    "code": code,
                    "door": "wire",
                    "client": client,
                    "wire_user": user[:64],
                }
            )
        except Exception:
            log.exception("could not audit a wire login failure")

    async def _serve(self, conn: _Conn, session: WireSession) -> None:
        while True:
            msg = await conn.next(self._config.idle_timeout_s)
            if isinstance(msg, m.Terminate):
                raise _Closed()
            if isinstance(msg, m.StartupMessage | m.SSLRequest | m.CancelRequest):
                raise m.ProtocolViolation("startup message after login")
            out = await session.handle(msg)
            if out:
                conn.writer.write(b"".join(out))
            if not conn.has_buffered() or isinstance(msg, m.Sync | m.Flush | m.Query):
                await conn.writer.drain()

    def _cancel(self, msg: m.CancelRequest) -> None:
        found = self._sessions.get(msg.pid)
        if found is None or not hmac.compare_digest(
            found[0].to_bytes(4, "big"), (msg.secret & 0xFFFFFFFF).to_bytes(4, "big")
        ):
            return
        # Off the event loop: forwarding a cancel to the shadow is a network round trip.
        self._pool.submit(found[1].cancel)

    def _new_pid(self) -> int:
        while True:
            pid = secrets.randbits(31) or 1
            if pid not in self._sessions:
                return pid


def _visible_tables(service: QueryService, principal: Principal) -> list[ShadowTable]:
    catalog = service.catalog
    return [
        ShadowTable(
            name=t.name,
            columns=tuple(ShadowColumn(c.name, SHADOW_TYPES[c.type]) for c in t.visible_columns()),
        )
        for t in sorted(catalog.tables.values(), key=lambda t: t.name)
        if t.dataset in principal.datasets
    ]


def _sasl_initial(data: bytes) -> tuple[str, bytes]:
    end = data.find(b"\0")
    if end < 0 or len(data) < end + 5:
        raise m.ProtocolViolation("malformed SASLInitialResponse")
    mechanism = data[:end].decode("ascii", "replace")
    (length,) = struct.unpack_from("!i", data, end + 1)
    body = data[end + 5 :]
    if length != len(body):
        raise m.ProtocolViolation("malformed SASLInitialResponse")
    return mechanism, body


def _negotiate(msg: m.StartupMessage) -> bytes:
    unknown = [k for k in msg.params if k.startswith("_pq_.")]
    body = struct.pack("!ii", m.PROTOCOL_V3, len(unknown)) + b"".join(
        k.encode() + b"\0" for k in unknown
    )
    return b"v" + struct.pack("!i", len(body) + 4) + body


class WireThread:
    """Run a :class:`WireServer` on its own event loop in a daemon thread (beside uvicorn)."""

    def __init__(self, server: WireServer, host: str, port: int) -> None:
        self.server = server
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="privgate-wire", daemon=True)

    def start(self) -> int:
        """Start and return the bound port (useful with port 0)."""
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self.server.port

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start(self._host, self._port))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if self._loop.is_running():
            done = asyncio.run_coroutine_threadsafe(self.server.aclose(), self._loop)
            try:
                done.result(10)
            except Exception:
                log.exception("wire shutdown failed")
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


__all__ = ["WireConfig", "WireError", "WireServer", "WireThread"]
