"""The lock between processes (gateway.file_lock): a real second OS process holds it.

A waiter in this process times out while the other process holds the lock, is woken when it
lets go, and a timed-out wait does not keep the lock once it finally gets it. Then the control
database: two processes writing to one SQLite file take turns through it without errors.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from gateway.control_db import make_control_engine, reader
from gateway.file_lock import FileLock

# Takes the lock, says "held", lets go when told (a line on stdin), says "free".
_HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from gateway.file_lock import FileLock
    lock = FileLock(Path(sys.argv[1]))
    assert lock.acquire(float(sys.argv[2]))
    print("held", flush=True)
    sys.stdin.readline()
    lock.release()
    print("free", flush=True)
    sys.stdin.readline()
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    path = tmp_path / "x.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path), "30"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    yield path, proc
    proc.kill()
    proc.wait()


def _say(proc: subprocess.Popen[str], expect: str) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == expect


def test_a_waiter_times_out_while_another_process_holds_the_lock(
    holder: tuple[Path, subprocess.Popen[str]],
) -> None:
    path, _ = holder
    lock = FileLock(path)
    started = time.monotonic()
    assert lock.acquire(0.3) is False
    assert time.monotonic() - started >= 0.3


def test_a_waiter_is_woken_when_the_other_process_lets_go(
    holder: tuple[Path, subprocess.Popen[str]],
) -> None:
    path, proc = holder
    lock = FileLock(path)
    got: list[float] = []

    t = threading.Thread(target=lambda: got.append(float(lock.acquire(30))))
    t.start()
    time.sleep(0.3)
    assert got == []  # still waiting
    _say(proc, "free")
    t.join(30)
    assert got == [1.0]
    lock.release()


def test_a_timed_out_wait_lets_go_once_it_gets_the_lock(
    holder: tuple[Path, subprocess.Popen[str]], tmp_path: Path
) -> None:
    path, proc = holder
    lock = FileLock(path)
    assert lock.acquire(0.2) is False  # the wait stays queued in the kernel
    _say(proc, "free")
    # This process's next turn queues behind the abandoned wait, which lets go first.
    assert lock.acquire(10) is True
    lock.release()
    # And nobody here keeps it: a third process takes it at once.
    third = subprocess.run(
        [sys.executable, "-c", _HOLDER, str(path), "5"],
        input="\n\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert third.stdout.split() == ["held", "free"], third.stderr


# Writes to one SQLite control database `n` times, one transaction each.
_WRITER = textwrap.dedent(
    """
    import sys
    from sqlalchemy import text
    from gateway.control_db import make_control_engine
    engine = make_control_engine(sys.argv[1], busy_timeout_ms=30000)
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(int(sys.argv[2])):
        with engine.begin() as conn:
            conn.execute(text("UPDATE n SET v = v + 1"))
    print("done", flush=True)
    """
)


def test_processes_sharing_a_control_db_take_turns_through_the_file_lock(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    engine = make_control_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE n (v INTEGER)"))
        conn.execute(text("INSERT INTO n VALUES (0)"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, url, "300"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for _ in range(100):  # this process writes too, meanwhile
        with engine.begin() as conn:
            conn.execute(text("UPDATE n SET v = v + 1"))
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "done", err
    with reader(engine).connect() as conn:
        assert conn.execute(text("SELECT v FROM n")).scalar_one() == 3 * 300 + 100
    assert (tmp_path / "control.db-writer.lock").exists()


def test_an_engine_on_a_missing_directory_fails_where_sqlite_does(tmp_path: Path) -> None:
    """The lock file is made at the first write, not with the engine (readiness checks build
    engines on paths that may not exist)."""
    engine = make_control_engine(f"sqlite:///{tmp_path}/no/such/dir/control.db")
    with (
        pytest.raises(OperationalError, match="unable to open database file"),
        engine.begin() as conn,
    ):
        conn.execute(text("SELECT 1"))
    assert not (tmp_path / "no").exists()
