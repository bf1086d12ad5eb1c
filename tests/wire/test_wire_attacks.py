"""Attacks on the wire door: reach data around the pipeline, or the shadow's neighbours.

Each statement is one a hostile analyst could send over the wire. The pass condition is the
privacy argument of docs/privacy-model.md#the-wire-endpoint: nothing returns a row of protected
data, whatever the route.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pgerrors

from tests.wire.conftest import Wire

# Statements that must be refused outright, with the SQLSTATE class expected.
REFUSED = [
    ("SELECT * FROM pg_stat_activity", "42501"),  # other sessions' statements
    ("SELECT pg_read_file('/etc/passwd')", "42501"),
    ("SELECT pg_ls_dir('.')", "42501"),
    ("SELECT lo_import('/etc/passwd')", "42501"),
    ("SET ROLE postgres", "42501"),
    ("SET statement_timeout = 0", "42501"),  # the shadow's limits are privgate's
    ("SET LOCAL work_mem = '1GB'", "42501"),
    ("SELECT set_config('statement_timeout', '0', false)", "42501"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "42501"),
    ("CREATE TEMP TABLE t AS SELECT 1", "0A000"),  # not a read: to the pipeline, refused
    ("COPY (SELECT 1) TO STDOUT", "0A000"),
    ("COPY visits TO STDOUT", "0A000"),
    ("INSERT INTO visits VALUES (1)", "0A000"),
    ("DO $$ BEGIN PERFORM 1; END $$", "0A000"),
    ("SELECT * FROM visits", "42501"),
    ("SELECT patient_id FROM visits GROUP BY patient_id", "42501"),
    ("SELECT visit_id, (SELECT 1) FROM pg_class, visits", "0A000"),
]


@pytest.mark.parametrize(("sql", "sqlstate"), REFUSED)
def test_refused(wire: Wire, sql: str, sqlstate: str) -> None:
    with wire.connect() as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(sql)
        assert refused.value.sqlstate is not None
        assert refused.value.sqlstate[:2] == sqlstate[:2], (
            sql,
            refused.value.sqlstate,
            str(refused.value),
        )
        assert conn.execute("SELECT 1").fetchone() == (1,)  # and the connection lives on


# Statements that reach the shadow one way or another, and what they see: no data.
AROUND = [
    # query_to_xml runs a SQL string the router never parses: an empty table, no <row>.
    (
        "SELECT query_to_xml('SELECT * FROM visits', true, false, '') AS x",
        lambda v: "<row>" not in v,
    ),
    (
        'SELECT count(*) AS x FROM U&"\\0076isits"',
        lambda v: v == 0,
    ),  # a name spelled with an escape
    ("SELECT reltuples AS x FROM pg_class WHERE relname = 'visits'", lambda v: v <= 0),
    ("SELECT relpages AS x FROM pg_class WHERE relname = 'visits'", lambda v: v == 0),
    ("SELECT coalesce(sum(n_live_tup), 0) AS x FROM pg_stat_user_tables", lambda v: v == 0),
]


@pytest.mark.parametrize(("sql", "check"), AROUND)
def test_the_shadow_has_nothing_to_give(wire: Wire, sql: str, check: object) -> None:
    with wire.connect() as conn:
        try:
            rows = conn.execute(sql).fetchall()
        except psycopg.Error as exc:  # refusing is fine too
            assert exc.sqlstate is not None
            return
    assert rows and all(check(r[0]) for r in rows), (sql, rows)  # type: ignore[operator]


def test_the_shadow_tables_are_empty_and_read_only(wire: Wire) -> None:
    with wire.connect() as conn:
        # A name the router cannot see (built at run time) reaches only the empty shadow table.
        xml = conn.execute(
            "SELECT query_to_xml('SELECT count(*) AS n FROM ' || 'vis' || 'its', false, false, '')"
        ).fetchone()
        assert xml is not None and "<n>0</n>" in xml[0]
        with pytest.raises(psycopg.Error):  # refused, whichever rule catches it first
            conn.execute(
                "SELECT query_to_xml('INSERT INTO ' || 'visits' || ' DEFAULT VALUES', false, false, '')"
            )
        again = conn.execute(
            "SELECT query_to_xml('SELECT count(*) AS n FROM ' || 'visits', false, false, '')"
        ).fetchone()
        assert again is not None and "<n>0</n>" in again[0]


def test_one_principal_cannot_see_another_principals_catalog(wire: Wire) -> None:
    services = wire.gateway.services
    services.principals.create_principal(
        "outsider", role=services.principals.get("analyst").role, datasets=[]
    )  # type: ignore[union-attr]
    _, key = services.principals.create_key("outsider")
    with psycopg.connect(wire.dsn("outsider", password=key), autocommit=True) as conn:
        tables = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        ).fetchall()
        assert tables == []
        with pytest.raises(pgerrors.UndefinedTable):
            conn.execute("SELECT COUNT(*) FROM visits")
