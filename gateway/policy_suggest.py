"""Draft a policy from a warehouse schema: ``privgate policy suggest``.

An authoring aid for the data owner, not a policy: it reads ``information_schema.columns`` and, per
column, a few aggregates (row count, distinct count, and min/max of numeric columns), classifies
each column by name and type, and writes YAML with a ``# TODO`` on everything to confirm. It fails
closed: a column it cannot place is ``blocked``; a table without the privacy unit that looks
personal is left out (so it stays invisible) rather than drafted as public.

Reading min/max is acceptable here because the tool is run by the data owner, who may see the
data anyway; the drafted bounds are still marked as private, since bounds drawn from the data
disclose it once published (docs/policy.md, "Drafting a policy").

The classification is pure (:func:`classify_column`, :func:`find_unit`, :func:`render_draft`);
:func:`read_schema` is the only function doing I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

from rewriter.catalog import LogicalType, logical_type
from rewriter.policy import ColumnClass, DatasetBudget, Defaults


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


UNIT_NAMES = tuple(
    f"{who}_id"
    for who in _words(
        "patient person user customer member client subject participant individual employee student"
    )
)
"""Column names that usually identify the person protected, in order of preference."""

# Name tokens of direct identifiers (and secrets, and locations): blocked, whatever the type.
_DIRECT = frozenset(
    _words(
        "ssn sin nino passport email mail phone mobile fax telephone name firstname lastname "
        "surname fullname address street ip iban mrn dob birthdate password secret token card "
        "license licence plate vin lat latitude lon lng longitude geo location"
    )
)
# Name tokens of free text, which can hold anything: blocked.
_FREE_TEXT = frozenset(
    _words(
        "note notes comment comments remark remarks text body message description memo narrative "
        "freetext"
    )
)
# Integer columns that are codes or calendar parts rather than quantities: dimensions.
_CODE = frozenset(
    _words(
        "year month day week weekday quarter hour decade zip zip3 zip5 postcode code type kind "
        "category status level floor grade rank flag region class tier"
    )
)

_KEYS = frozenset(_words("id uuid guid key"))

LOW_CARDINALITY = 10
"""An integer column with at most this many distinct values is drafted as a dimension."""

NEARLY_UNIQUE = 0.5
"""A text column whose distinct values exceed this share of its rows looks like an identifier."""

_PG_TYPES = {"double precision": "DOUBLE", "character": "CHAR", "bpchar": "CHAR"}


@dataclass(frozen=True, slots=True)
class ColumnFacts:
    """What the suggester knows about one column: its name, type and a few aggregates."""

    name: str
    data_type: str
    rows: int = 0
    distinct: int | None = None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True, slots=True)
class Suggestion:
    """A drafted column: its class, bounds for a measure, and why (a YAML comment)."""

    cls: ColumnClass
    note: str
    bounds: tuple[float, float] | None = None


_DIMENSION_TODO = "TODO confirm; add values: [...] only from domain knowledge"
BOUNDS_TODO = "TODO confirm bounds: drafted from the data's min/max, which is itself private"


def name_tokens(name: str) -> tuple[str, ...]:
    """Split a column name into lower-case words (snake_case, camelCase, digits kept).

    >>> name_tokens("patientId"), name_tokens("E_Mail"), name_tokens("zip3")
    (('patient', 'id'), ('e', 'mail'), ('zip3',))
    """
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return tuple(t for t in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if t)


def column_kind(data_type: str) -> LogicalType:
    """The rewriter's logical type for a DuckDB or PostgreSQL type name.

    >>> column_kind("double precision"), column_kind("BIGINT"), column_kind("jsonb")
    (<LogicalType.FLOAT: 'float'>, <LogicalType.INTEGER: 'integer'>, <LogicalType.OTHER: 'other'>)
    """
    return logical_type(_PG_TYPES.get(data_type.strip().lower(), data_type))


def round_out(value: float, *, up: bool) -> float:
    """Round away from the data: up to (or down to) one significant digit.

    >>> round_out(4873.2, up=True), round_out(-3.2, up=False), round_out(30, up=True)
    (5000, -4, 30)
    """
    if value == 0 or not math.isfinite(value):
        return value
    d = Decimal(repr(float(value)))
    step = Decimal(1).scaleb(d.adjusted())
    rounded = (d / step).to_integral_value(ROUND_CEILING if up else ROUND_FLOOR) * step
    as_int = int(rounded)
    return as_int if rounded == as_int else float(rounded)


def draft_bounds(low: float, high: float) -> tuple[float, float]:
    """Bounds around the data's range, rounded outward; 0 is the lower bound of non-negative data.

    >>> draft_bounds(1.5, 4873.2), draft_bounds(-12, 30), draft_bounds(0, 0)
    ((0, 5000), (-20, 30), (0, 1))
    """
    lo = 0 if low >= 0 else round_out(low, up=False)
    hi = 0 if high <= 0 else round_out(high, up=True)
    if lo == hi:
        hi = lo + 1
    return (lo, hi)


def classify_column(col: ColumnFacts, *, unit: str) -> Suggestion:
    """Draft one column's class from its name, type and aggregates; when unsure, ``blocked``.

    >>> classify_column(ColumnFacts("ssn", "VARCHAR", 100, 100), unit="patient_id").cls.value
    'blocked'
    >>> classify_column(ColumnFacts("cost", "DOUBLE", 100, 90, 3.0, 812.5), unit="x").bounds
    (0, 900)
    """
    tokens = name_tokens(col.name)
    words = set(tokens)
    kind = column_kind(col.data_type)
    if col.name == unit:
        return Suggestion(ColumnClass.IDENTIFIER, "the privacy unit")
    if words & _DIRECT or "".join(tokens) in _DIRECT or _is_birth_date(tokens):
        return Suggestion(ColumnClass.BLOCKED, "looks like a direct identifier")
    if tokens and tokens[-1] in _KEYS:
        return Suggestion(ColumnClass.IDENTIFIER, "looks like an identifier: never output")
    if words & _FREE_TEXT:
        return Suggestion(ColumnClass.BLOCKED, "looks like free text")
    if kind in (LogicalType.BOOLEAN, LogicalType.DATE, LogicalType.TIMESTAMP):
        return Suggestion(ColumnClass.DIMENSION, _DIMENSION_TODO)
    if kind is LogicalType.STRING:
        if col.distinct is None or col.rows == 0 or col.distinct > NEARLY_UNIQUE * col.rows:
            return Suggestion(ColumnClass.BLOCKED, "nearly unique text: looks like an identifier")
        return Suggestion(ColumnClass.DIMENSION, _DIMENSION_TODO)
    if kind is LogicalType.INTEGER and (
        words & _CODE or (col.distinct is not None and 0 < col.distinct <= LOW_CARDINALITY)
    ):
        return Suggestion(
            ColumnClass.DIMENSION, "TODO confirm: a code or few values, so a dimension"
        )
    if kind in (LogicalType.INTEGER, LogicalType.FLOAT):
        if col.low is None or col.high is None:
            return Suggestion(ColumnClass.BLOCKED, "TODO numeric without values: set bounds")
        return Suggestion(ColumnClass.MEASURE, BOUNDS_TODO, draft_bounds(col.low, col.high))
    return Suggestion(ColumnClass.BLOCKED, f"type {col.data_type} is not understood")


def _is_birth_date(tokens: Sequence[str]) -> bool:
    return "birth" in tokens and any(t in tokens for t in ("date", "day", "dt"))


def find_unit(tables: Mapping[str, Sequence[ColumnFacts]]) -> str | None:
    """The privacy unit: the first of :data:`UNIT_NAMES` found in the most tables, if that is
    more than half of them.

    >>> t = {"a": [ColumnFacts("user_id", "INT")], "b": [ColumnFacts("user_id", "INT")], "c": []}
    >>> find_unit(t)
    'user_id'
    """
    best: tuple[int, str] | None = None
    for name in UNIT_NAMES:
        n = sum(1 for cols in tables.values() if any(c.name == name for c in cols))
        if n and (best is None or n > best[0]):
            best = (n, name)
    if best is None or best[0] * 2 <= len(tables):
        return None
    return best[1]


def _looks_personal(cols: Sequence[ColumnFacts]) -> list[str]:
    """Columns of a unit-less table whose names suggest data about people: direct identifiers
    and keys (``doctor_id`` may well be a person)."""
    out = []
    for c in cols:
        tokens = name_tokens(c.name)
        direct = set(tokens) & _DIRECT or "".join(tokens) in _DIRECT or _is_birth_date(tokens)
        if direct or (tokens and tokens[-1] in _KEYS):
            out.append(c.name)
    return out


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_YAML_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"})


def yaml_key(name: str) -> str:
    """A mapping key as YAML: bare when safe, else double-quoted (JSON is valid YAML).

    >>> yaml_key("cost"), yaml_key("no"), yaml_key("my col")
    ('cost', '"no"', '"my col"')
    """
    import json

    if _PLAIN.fullmatch(name) and name.lower() not in _YAML_WORDS:
        return name
    return json.dumps(name)


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _comment(text: str) -> str:
    # Names come from the warehouse: a control character must not end the comment early.
    return re.sub(r"[\x00-\x1f\x7f\u2028\u2029\x85]", " ", text)


def _line(text: str, note: str) -> str:
    return f"{text:<42}  # {_comment(note)}" if note else text


def render_draft(
    tables: Mapping[str, Sequence[ColumnFacts]],
    *,
    dataset: str,
    unit: str | None,
    source: str,
) -> str:
    """The draft policy YAML for ``tables`` (name → columns in order).

    Raises:
        ValueError: no privacy unit was found (or the one given is in no table).
    """
    if unit is None:
        raise ValueError(
            "no privacy unit found: no column among "
            f"{', '.join(UNIT_NAMES)} is in more than half of the tables; pass --unit COLUMN"
        )
    if not any(any(c.name == unit for c in cols) for cols in tables.values()):
        raise ValueError(f"the privacy unit {unit!r} is in no table; pass another --unit")
    d = Defaults()
    b = DatasetBudget().per_principal
    out = [
        _comment(f"# Drafted by `privgate policy suggest` from {source}."),
        "# A draft, not a policy: confirm every TODO, then run `privgate policy validate FILE`.",
        "# Conservative by design: a column it could not place is blocked; a table without the",
        "# privacy unit that may be about people is left out (invisible). Undeclared columns are",
        "# blocked.",
        "datasets:",
        f"  {yaml_key(dataset)}:",
        _line(f"    privacy_unit: {yaml_key(unit)}", "TODO confirm: the person we protect"),
        _line("    defaults:", "TODO confirm: the model defaults"),
        f"      epsilon: {d.epsilon}",
        f"      delta: {d.delta:.1e}",
        f"      min_group_size: {d.min_group_size}",
        f"      max_rows_per_unit: {d.max_rows_per_unit}",
        _line("    budget:", "TODO confirm: what one analyst may spend in total"),
        f"      per_principal: {{epsilon: {_number(b.epsilon)}, delta: {b.delta:.1e}}}",
        "    tables:",
    ]
    for table, cols in tables.items():
        key = yaml_key(table)
        if not any(c.name == unit for c in cols):
            personal = _looks_personal(cols)
            if personal:
                names = ", ".join(yaml_key(n) for n in personal)
                out.append(
                    f"      # TODO {key}: left out (invisible): no {yaml_key(unit)} column, and "
                    f"{names} may identify people; declare it public: true only if it is "
                    "about no one"
                )
            else:
                note = (
                    f"TODO confirm: no {yaml_key(unit)} column; public means no protection at all"
                )
                out.append(_line(f"      {key}: {{public: true}}", note))
            continue
        out += [f"      {key}:", "        columns:"]
        for col in cols:
            s = classify_column(col, unit=unit)
            name = yaml_key(col.name)
            if s.bounds is not None:
                low, high = s.bounds
                value = f"{{class: measure, bounds: [{_number(low)}, {_number(high)}]}}"
            elif s.cls is ColumnClass.DIMENSION:
                value = "{class: dimension}"
            else:
                value = s.cls.value
            out.append(_line(f"          {name}: {value}", s.note))
    return "\n".join(out) + "\n"


def default_dataset(url: str) -> str:
    """A dataset name from the warehouse URL: the file stem or the database name.

    >>> default_dataset("/data/clinic.duckdb"), default_dataset("postgresql://u@h/sales")
    ('clinic', 'sales')
    """
    path = duckdb_path(url)
    database = url.split("://", 1)[-1].split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    name = database if path is None else path.stem
    name = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")
    return name or "dataset"


def duckdb_path(url: str) -> Path | None:
    """The file of a DuckDB URL (SQLAlchemy style: ``duckdb:///rel``, ``duckdb:////abs``) or
    plain path; ``None`` for a PostgreSQL URL.

    >>> duckdb_path("duckdb:////tmp/w.duckdb"), duckdb_path("w.duckdb"), duckdb_path("postgresql://h/d")
    (PosixPath('/tmp/w.duckdb'), PosixPath('w.duckdb'), None)
    """
    if url.startswith(("postgresql:", "postgresql+", "postgres:")):
        return None
    if url.startswith("duckdb:///"):
        return Path(url.removeprefix("duckdb:///"))
    if "://" in url:
        raise ValueError("the warehouse must be a DuckDB file, duckdb:///PATH or postgresql://…")
    return Path(url)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _stats_sql(table: str, cols: Sequence[tuple[str, str]]) -> str:
    parts = ["count(*)"]
    for name, data_type in cols:
        kind = column_kind(data_type)
        q = _quote(name)
        if kind is LogicalType.OTHER:
            parts += ["NULL", "NULL", "NULL"]
            continue
        parts.append(f"count(DISTINCT {q})")
        if kind in (LogicalType.INTEGER, LogicalType.FLOAT):
            parts += [f"CAST(min({q}) AS DOUBLE PRECISION)", f"CAST(max({q}) AS DOUBLE PRECISION)"]
        else:
            parts += ["NULL", "NULL"]
    return f"SELECT {', '.join(parts)} FROM {_quote(table)}"


def _facts(cols: Sequence[tuple[str, str]], row: Sequence[Any]) -> list[ColumnFacts]:
    rows = int(row[0])
    out = []
    for i, (name, data_type) in enumerate(cols):
        distinct, low, high = row[1 + 3 * i : 4 + 3 * i]
        out.append(
            ColumnFacts(
                name=name,
                data_type=data_type,
                rows=rows,
                distinct=None if distinct is None else int(distinct),
                low=None if low is None else float(low),
                high=None if high is None else float(high),
            )
        )
    return out


def read_schema(url: str) -> dict[str, list[ColumnFacts]]:
    """Read the warehouse's tables and columns, and one aggregate query per table.

    DuckDB is opened read-only and locked down (as the gateway opens it); PostgreSQL runs in a
    read-only transaction, in the connection's current schema.

    Raises:
        ValueError: the URL is neither a DuckDB file nor a PostgreSQL URL.
        FileNotFoundError: the DuckDB file does not exist.
    """
    path = duckdb_path(url)
    schema: dict[str, list[tuple[str, str]]] = {}
    stats: dict[str, list[ColumnFacts]] = {}
    columns_sql = (
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = {schema} ORDER BY table_name, ordinal_position"
    )
    if path is not None:
        import duckdb

        from gateway.warehouse import LOCKDOWN

        if not path.is_file():
            raise FileNotFoundError(f"warehouse file {path} does not exist")
        try:
            with duckdb.connect(str(path), read_only=True, config=dict(LOCKDOWN)) as con:
                for t, c, typ in con.execute(columns_sql.format(schema="'main'")).fetchall():
                    schema.setdefault(str(t), []).append((str(c), str(typ)))
                for table, cols in schema.items():
                    row = con.execute(_stats_sql(table, cols)).fetchone()
                    assert row is not None  # an aggregate without GROUP BY returns one row
                    stats[table] = _facts(cols, row)
        except duckdb.Error as exc:
            raise ValueError(f"cannot read the warehouse {path}: {_first_line(exc)}") from None
        return stats

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    sa_url = make_url(url)
    if sa_url.drivername in ("postgresql", "postgres"):
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    engine = create_engine(sa_url)
    try:
        with engine.connect() as con:
            con.execute(text("SET TRANSACTION READ ONLY"))
            result = con.execute(text(columns_sql.format(schema="current_schema()")))
            for t, c, typ in result:
                schema.setdefault(str(t), []).append((str(c), str(typ)))
            for table, cols in schema.items():
                row = con.execute(text(_stats_sql(table, cols))).one()
                stats[table] = _facts(cols, tuple(row))
            con.rollback()
    except SQLAlchemyError as exc:
        # The driver's message (never the URL, which may hold a password).
        cause = getattr(exc, "orig", None) or exc
        raise ValueError(f"cannot read the warehouse: {_first_line(cause)}") from None
    finally:
        engine.dispose()
    return stats


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def suggest(url: str, *, dataset: str | None = None, unit: str | None = None) -> str:
    """Draft a policy for the warehouse at ``url``: :func:`read_schema` then
    :func:`render_draft`."""
    tables = read_schema(url)
    if not tables:
        raise ValueError("the warehouse has no tables")
    return render_draft(
        tables,
        dataset=dataset or default_dataset(url),
        unit=unit or find_unit(tables),
        source=redact_url(url),
    )


def redact_url(url: str) -> str:
    """The URL without its password: the draft names its source, never a secret.

    >>> redact_url("postgresql://u:pw@h/db")
    'postgresql://u:***@h/db'
    """
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)
