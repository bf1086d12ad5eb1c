"""The wire door enforces exactly the REST door's policy: the rewriter's must-reject corpus,
sent through both, is refused with the same code and SQLSTATE.

Three intended differences, each argued in docs/wire.md:

* a statement that names no policy table goes to the empty shadow catalog, which answers or
  refuses it as PostgreSQL would (it holds no data, so either is safe);
* an empty query gets PostgreSQL's EmptyQueryResponse;
* a simple query holding several statements runs them one by one, each through its own route,
  and stops at the first refusal: the wire's error is that statement's REST error.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from gateway.wire.router import Route, classify, split_statements
from tests.test_rewriter import MUST_REJECT
from tests.wire.conftest import Wire


def _rest_error(wire: Wire, sql: str) -> dict[str, Any] | None:
    with wire.gateway.client() as http:
        body = http.post("/v1/query", json={"sql": sql}).json()
    return body.get("error")  # type: ignore[no-any-return]


@pytest.mark.parametrize(("sql", "code"), MUST_REJECT, ids=[s[:70] for s, _ in MUST_REJECT])
def test_the_must_reject_corpus_is_refused_alike(wire: Wire, sql: str, code: str) -> None:
    tables = wire.gateway.services.queries.catalog.tables
    pieces = split_statements(sql)
    if not pieces:
        with wire.connect() as conn:  # EmptyQueryResponse, as PostgreSQL
            assert conn.pgconn.exec_(sql.encode()).status == psycopg.pq.ExecStatus.EMPTY_QUERY
        return
    error = _rest_error(wire, sql)
    assert error is not None and error["code"] == code
    if len(pieces) > 1:
        expected = next(
            (
                e
                for p in pieces
                if classify(p, tables).route is not Route.SHADOW
                and (e := _rest_error(wire, p)) is not None
            ),
            None,
        )
    else:
        if classify(sql, tables).route is Route.SHADOW:
            with wire.connect() as conn:
                try:
                    conn.execute(sql).fetchall()  # whatever the empty shadow answers
                except psycopg.Error as exc:
                    assert exc.sqlstate is not None
            return
        expected = error
    with wire.connect() as conn:
        if expected is None:
            conn.execute(sql).fetchall()
            return
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(sql)
    assert refused.value.sqlstate == expected["sqlstate"], str(refused.value)
    assert f"privgate code: {expected['code']}" in (refused.value.diag.message_detail or "")
