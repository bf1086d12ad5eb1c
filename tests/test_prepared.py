"""budgets.prepared: a statement run on SQLite's cursor gives the rows, the conversions and the
errors SQLAlchemy's own execution gives, inside the caller's transaction; on PostgreSQL it is
SQLAlchemy's execution."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    MetaData,
    Table,
    Text,
    bindparam,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from budgets.prepared import Prepared
from gateway.control_db import make_control_engine

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Text, primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("flag", Boolean, nullable=False),
    Column("at", DateTime(timezone=True), nullable=True),
)

_INSERT = Prepared(insert(items))
_BY_ID = Prepared(select(items).where(items.c.id == bindparam("i")))
_FLAG = Prepared(select(items.c.flag).where(items.c.id == bindparam("i")))
_BUMP = Prepared(
    update(items)
    .where(items.c.id == bindparam("i"), or_(items.c.flag == True, items.c.n < 0))  # noqa: E712
    .values(n=items.c.n + bindparam("by"))
    .returning(items.c.n, items.c.at)
)
AT = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        made = make_control_engine(f"sqlite:///{tmp_path / 'control.db'}")
    else:
        made = make_control_engine(request.getfixturevalue("pg_database"))
    metadata.create_all(made)
    yield made
    made.dispose()


def _sqlalchemy_row(engine: Engine, item: str) -> dict[str, object] | None:
    with engine.connect() as conn:
        row = conn.execute(select(items).where(items.c.id == item)).mappings().one_or_none()
    return None if row is None else dict(row)


def test_rows_and_conversions_match_sqlalchemys(engine: Engine) -> None:
    with engine.begin() as conn:
        _INSERT.run(conn, {"id": "a", "n": 2**40, "flag": True, "at": AT})
        _INSERT.run(conn, {"id": "b", "n": -1, "flag": False, "at": None})
    with engine.connect() as conn:
        a = _BY_ID.run(conn, {"i": "a"}).one()
        assert _BY_ID.run(conn, {"i": "nobody"}).one_or_none() is None
        assert _FLAG.run(conn, {"i": "b"}).scalar_one_or_none() is False
        assert _FLAG.run(conn, {"i": "nobody"}).scalar_one_or_none() is None
    # The same values, of the same Python types, as SQLAlchemy's own result.
    assert a == _sqlalchemy_row(engine, "a")
    assert a["flag"] is True and a["n"] == 2**40
    assert isinstance(a["at"], datetime)
    assert a["at"].replace(tzinfo=UTC) == AT  # SQLite stores no zone; PostgreSQL gives UTC


def test_update_returning_with_constant_bound_values(engine: Engine) -> None:
    with engine.begin() as conn:
        _INSERT.run(conn, {"id": "a", "n": 1, "flag": True, "at": AT})
        _INSERT.run(conn, {"id": "c", "n": 5, "flag": False, "at": None})
        bumped = _BUMP.run(conn, {"i": "a", "by": 10})
        assert bumped.rowcount == 1
        row = bumped.one()
        assert row["n"] == 11
        # The WHERE's constants (flag = true, n < 0) are bound too: "c" matches neither.
        missed = _BUMP.run(conn, {"i": "c", "by": 10})
        assert missed.one_or_none() is None


def test_statements_run_inside_the_callers_transaction(engine: Engine) -> None:
    with pytest.raises(RuntimeError), engine.begin() as conn:
        _INSERT.run(conn, {"id": "a", "n": 1, "flag": True, "at": None})
        raise RuntimeError("roll back")
    assert _sqlalchemy_row(engine, "a") is None
    with engine.begin() as conn:
        _INSERT.run(conn, {"id": "a", "n": 1, "flag": True, "at": None})
    assert _sqlalchemy_row(engine, "a") is not None


def test_a_constraint_violation_is_sqlalchemys_integrity_error(engine: Engine) -> None:
    with engine.begin() as conn:
        _INSERT.run(conn, {"id": "a", "n": 1, "flag": True, "at": None})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        _INSERT.run(conn, {"id": "a", "n": 2, "flag": False, "at": None})
    row = _sqlalchemy_row(engine, "a")
    assert row is not None and row["n"] == 1


def test_driver_errors_are_wrapped_without_their_values(tmp_path: Path) -> None:
    engine = make_control_engine(f"sqlite:///{tmp_path / 'control.db'}")  # no tables made
    with engine.connect() as conn, pytest.raises(OperationalError, match="no such table") as err:
        _BY_ID.run(conn, {"i": "secret-value"})
    assert "secret-value" not in str(err.value)
    engine.dispose()


def test_unsupported_statements_are_refused_on_sqlite(tmp_path: Path) -> None:
    engine = make_control_engine(f"sqlite:///{tmp_path / 'control.db'}")
    metadata.create_all(engine)
    expanding = Prepared(select(items).where(items.c.id.in_(bindparam("ids", expanding=True))))
    with engine.connect() as conn:
        with pytest.raises(NotImplementedError, match="expanding"):
            expanding.run(conn, {"ids": ["a"]})
        # A value the caller left out would need SQLAlchemy's default handling: refused, not
        # silently sent as NULL.
        missing = Prepared(select(items).where(items.c.id == bindparam("i")))
        with pytest.raises(ValueError, match="no value for 'i'"):
            missing.run(conn, {})
    engine.dispose()
