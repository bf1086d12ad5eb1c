"""Drive a PostgreSQL-wire server with the real PostgreSQL JDBC driver (pgjdbc).

The Java side is one small program, ``tests/wire/jdbc/WireCheck.java``, compiled with ``javac``
against the driver jar from Debian's ``libpostgresql-jdbc-java`` (``/usr/share/java/postgresql.jar``,
or ``PRIVGATE_JDBC_JAR``). It connects, lists tables and columns through ``DatabaseMetaData``, runs a
prepared statement with one string parameter six times (past pgjdbc's ``prepareThreshold`` of 5, so
the last runs use a named server-side statement and binary result formats), runs a failing
statement, and prints one JSON object on stdout; see the Java file for its fields.

Not a test module: the tests import it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("jdbc") / "WireCheck.java"
DEFAULT_JAR = Path("/usr/share/java/postgresql.jar")

# java.util.logging configuration that makes pgjdbc log every protocol message (FE=> / <=BE) to
# stderr. pgjdbc 42.5 ignores the old ``loggerLevel`` connection property.
_TRACE_LOGGING = """\
handlers=java.util.logging.ConsoleHandler
java.util.logging.ConsoleHandler.level=ALL
java.util.logging.SimpleFormatter.format=%4$s %5$s%6$s%n
org.postgresql.level=FINEST
"""


class WireCheckError(RuntimeError):
    """WireCheck failed to compile or exited non-zero; the message carries its stderr."""


def jdbc_jar() -> Path | None:
    """The pgjdbc jar (``PRIVGATE_JDBC_JAR`` if set, else Debian's), or None if it is absent."""
    override = os.environ.get("PRIVGATE_JDBC_JAR")
    jar = Path(override) if override else DEFAULT_JAR
    return jar if jar.is_file() else None


def java_tools() -> tuple[str, str] | None:
    """Paths of ``javac`` and ``java`` (from ``JAVA_HOME`` if set, else the PATH), or None."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        javac, java = (Path(java_home) / "bin" / name for name in ("javac", "java"))
        if javac.is_file() and java.is_file():
            return str(javac), str(java)
    javac_path, java_path = shutil.which("javac"), shutil.which("java")
    if javac_path is None or java_path is None:
        return None
    return javac_path, java_path


def _require() -> tuple[Path, str, str]:
    jar, tools = jdbc_jar(), java_tools()
    if jar is None:
        raise WireCheckError(
            f"pgjdbc jar not found (set PRIVGATE_JDBC_JAR or install it at {DEFAULT_JAR})"
        )
    if tools is None:
        raise WireCheckError("javac/java not found (set JAVA_HOME or put a JDK on the PATH)")
    return jar, *tools


def compile_wirecheck(out_dir: Path) -> None:
    """Compile WireCheck.java into ``out_dir``; does nothing if the class there is up to date."""
    jar, javac, _ = _require()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "WireCheck.class"
    if target.is_file() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return
    proc = subprocess.run(
        [javac, "-encoding", "UTF-8", "-cp", str(jar), "-d", str(out_dir), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise WireCheckError(f"javac failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")


def run_wirecheck(
    out_dir: Path,
    *,
    host: str,
    port: int,
    database: str,
    user: str,
    password: str,
    ssl: bool,
    sql_with_param: str,
    param: str,
    bad_sql: str,
    timeout_s: float = 120,
    props: dict[str, str] | None = None,
    trace: bool = False,
) -> dict[str, Any]:
    """Run the compiled WireCheck and return the JSON object it prints.

    ``props`` adds connection properties (e.g. ``{"prepareThreshold": "1"}``). With ``trace``,
    pgjdbc logs every protocol message it sends and receives; that log (stderr) is returned under
    the extra key ``"trace"``. Raises WireCheckError, with stderr, on a non-zero exit or output that
    is not one JSON object; a failure to *connect* is not an error but ``{"connected": false, ...}``.
    """
    jar, _, java = _require()
    args: dict[str, Any] = {
        "host": host,
        "port": port,
        "database": database,
        "user": user,
        "password": password,
        "ssl": ssl,
        "sql_with_param": sql_with_param,
        "param": param,
        "bad_sql": bad_sql,
    }
    if props:
        args["props"] = dict(props)
    cmd = [java]
    if trace:
        logging_conf = out_dir / "wirecheck-trace-logging.properties"
        logging_conf.write_text(_TRACE_LOGGING)
        cmd.append(f"-Djava.util.logging.config.file={logging_conf}")
    cmd += ["-cp", f"{out_dir}{os.pathsep}{jar}", "WireCheck", json.dumps(args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise WireCheckError(
            f"WireCheck timed out after {timeout_s}s; stderr:\n{_text(exc.stderr)}"
        ) from exc
    if proc.returncode != 0:
        raise WireCheckError(f"WireCheck exited {proc.returncode}; stderr:\n{proc.stderr}")
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise WireCheckError(
            f"WireCheck printed no JSON ({exc}); stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        ) from exc
    if not isinstance(result, dict):
        raise WireCheckError(f"WireCheck printed {type(result).__name__}, not an object")
    if trace:
        result["trace"] = proc.stderr
    return result


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
