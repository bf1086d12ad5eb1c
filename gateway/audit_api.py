"""The audit API (``/v1/admin/audit*``): list, export, verify, checkpoints, purge. Admin role only.

Every route depends on :data:`gateway.auth.Admin`: an analyst's key gets 403 ``auth.forbidden``.
Reads are not audited; a purge is (by :meth:`gateway.audit.AuditLog.purge`, in its transaction).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.admin_ops import AdminInvalid
from gateway.audit import AuditFilter, Checkpoint, VerifyResult
from gateway.audit_query import parse_time
from gateway.audit_seal import canonical_json
from gateway.auth import Admin, services_of
from gateway.composition import Services

router = APIRouter(prefix="/v1/admin/audit", tags=["audit"])
Svc = Annotated[Services, Depends(services_of)]

_Field = Annotated[str | None, Query(min_length=1, max_length=256)]
_Time = Annotated[str | None, Query(description="ISO 8601 with a zone, e.g. 2025-01-31T00:00:00Z")]


def audit_filter(
    principal: _Field = None,
    dataset: _Field = None,
    decision: _Field = None,
    code: _Field = None,
    since: _Time = None,
    until: _Time = None,
) -> AuditFilter:
    """The filter query parameters shared by listing and export."""
    try:
        return AuditFilter(
            principal=principal,
            dataset=dataset,
            decision=decision,
            code=code,
            since=None if since is None else parse_time(since, "since"),
            until=None if until is None else parse_time(until, "until"),
        )
    except ValueError as exc:
        raise AdminInvalid(str(exc)) from None


Filter = Annotated[AuditFilter, Depends(audit_filter)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PurgeBody(_Body):
    before: str = Field(
        max_length=64, description="ISO 8601 with a zone: purge records older than this."
    )


class VerifyBody(_Body):
    checkpoints: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=100_000,
        description="Checkpoints kept outside the database (the checkpoint file's lines).",
    )


def _verdict(result: VerifyResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "checked": result.checked,
        "first_bad_seq": result.first_bad_seq,
        "reason": result.reason,
    }


@router.get("", summary="List audit records, newest first (admin)")
def audit_list(
    _: Admin,
    services: Svc,
    filters: Filter,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_seq: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    page = services.audit.page(filters, limit=limit, before_seq=before_seq)
    return {"records": page.records, "next_before_seq": page.next_before_seq}


@router.get("/export", summary="Export audit records as JSON lines, oldest first (admin)")
def audit_export(_: Admin, services: Svc, filters: Filter) -> StreamingResponse:
    def lines() -> Iterator[str]:
        for entry in services.audit.export(filters):
            yield canonical_json(entry) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/verify", summary="Verify the audit chain (admin)")
def audit_verify(_: Admin, services: Svc) -> dict[str, Any]:
    return _verdict(services.audit.verify())


@router.post("/verify", summary="Verify the audit chain against external checkpoints (admin)")
def audit_verify_checkpoints(body: VerifyBody, _: Admin, services: Svc) -> dict[str, Any]:
    try:
        return _verdict(services.audit.verify_checkpoints(body.checkpoints))
    except ValueError as exc:
        raise AdminInvalid(str(exc)) from None


@router.get("/checkpoints", summary="List the stored checkpoints, newest first (admin)")
def audit_checkpoints(
    _: Admin,
    services: Svc,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_seq: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, Any]:
    found, cursor = services.audit.checkpoints_page(limit=limit, before_seq=before_seq)
    return {"checkpoints": [c.as_json() for c in found], "next_before_seq": cursor}


@router.post("/checkpoints", status_code=201, summary="Seal a checkpoint now (admin)")
def audit_checkpoint(_: Admin, services: Svc) -> dict[str, Any]:
    made: Checkpoint = services.audit.checkpoint()
    return made.as_json()


@router.post("/purge", summary="Purge old audit records, keeping the chain verifiable (admin)")
def audit_purge(body: PurgeBody, admin: Admin, services: Svc) -> dict[str, Any]:
    try:
        before = parse_time(body.before, "before")
        result = services.audit.purge(before, actor=admin.name, door="rest")
    except ValueError as exc:
        raise AdminInvalid(str(exc)) from None
    return {
        "purged": result.purged,
        "up_to_seq": result.up_to_seq,
        "anchor": None if result.anchor is None else result.anchor.as_json(),
        "audit_id": result.audit_id,
    }
