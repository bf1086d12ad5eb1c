"""The REST door's shapes: the query body and the canonical error answer (one per door)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import describe
from gateway.explain import AccuracyTarget
from gateway.logs import bind
from gateway.service import QueryRequest


class AccuracyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: float = Field(gt=0, description="Half-width of the interval, in the column's units.")
    confidence: float = Field(default=0.95, gt=0, lt=1)
    column: str | None = Field(
        default=None, description="The COUNT/SUM output to aim at; default: all of them."
    )


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sql: str = Field(
        min_length=1, max_length=100_000, description="One PostgreSQL-flavoured SELECT."
    )
    epsilon: float | None = Field(
        default=None,
        gt=0,
        description="Privacy cost of this query; default: the dataset's default.",
    )
    accuracy: AccuracyBody | None = Field(
        default=None,
        description="Ask for a precision instead of an epsilon: the smallest epsilon meeting it is used.",
    )
    query_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Idempotency key: a retry with the same id and SQL returns the stored answer.",
    )

    def to_request(self) -> QueryRequest:
        accuracy = (
            None
            if self.accuracy is None
            else AccuracyTarget(self.accuracy.n, self.accuracy.confidence, self.accuracy.column)
        )
        return QueryRequest(
            sql=self.sql, epsilon=self.epsilon, accuracy=accuracy, query_id=self.query_id
        )


def error_response(exc: BaseException, audit_id: str | None = None) -> JSONResponse:
    public = describe(exc)
    bind(code=public.code)
    body: dict[str, Any] = {
        "error": {
            "code": public.code,
            "message": public.message,
            "hint": public.hint,
            "sqlstate": public.sqlstate,
        }
    }
    if audit_id is not None:
        body["error"]["audit_id"] = audit_id
    headers = {"WWW-Authenticate": "Bearer"} if public.http_status == 401 else None
    return JSONResponse(body, status_code=public.http_status, headers=headers)
