"""The admin API (``/v1/admin/*``): principals, keys, grants, budgets, policy. Admin role only.

Every route depends on :data:`gateway.auth.Admin`: an analyst's key gets 403 ``auth.forbidden`` and
a bad, expired or revoked key 401. The operations themselves live in :class:`AdminOps`, which the
CLI shares, so both doors validate and audit alike. Every change appends an audit record
``{"decision": "admin", "action", "actor", "target", "door", "code": "ok", ...}``; no key or secret
ever goes into one. ε and δ come in as JSON numbers or decimal strings and go out as exact decimal
strings.
"""

from __future__ import annotations

import tempfile
import threading
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from budgets.cost import PrivacyCost
from gateway.admin_ops import AdminInvalid, AdminOps, Amount, PolicyInvalid
from gateway.auth import Admin, services_of
from gateway.catalog_load import load_catalog
from gateway.composition import Services
from gateway.governance import governance_report, retention_settings
from gateway.policy_loader import LoadedPolicy, PolicyFileError, load_policy
from gateway.principals import (
    Principal,
)
from gateway.workers import ask_supervisor_to_reload
from rewriter.catalog import CatalogMismatch
from rewriter.policy import Role

router = APIRouter(prefix="/v1/admin", tags=["admin"])
Svc = Annotated[Services, Depends(services_of)]


def _ops(services: Services, admin: Principal) -> AdminOps:
    return AdminOps(
        principals=services.principals,
        ledger=services.ledger,
        audit=services.audit,
        datasets=services.queries.catalog.datasets,
        actor=admin.name,
        door="rest",
    )


# -- request bodies ------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewPrincipal(_Body):
    name: str = Field(max_length=64, description="Letters, digits, '.', '_', '@', '-'.")
    role: Role = Role.ANALYST
    datasets: list[str] = Field(default_factory=list, max_length=1000)


class PrincipalPatch(_Body):
    role: Role | None = None
    datasets: list[str] | None = Field(
        default=None, max_length=1000, description="Replaces the granted datasets."
    )
    disabled: bool | None = None


class NewKey(_Body):
    expires_at: AwareDatetime | None = Field(default=None, description="ISO 8601 with a zone.")
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)

    @model_validator(mode="after")
    def _one_expiry(self) -> NewKey:
        if self.expires_at is not None and self.expires_in_days is not None:
            raise ValueError("give expires_at or expires_in_days, not both")
        return self

    def expiry(self) -> datetime | None:
        if self.expires_in_days is not None:
            return datetime.now(UTC) + timedelta(days=self.expires_in_days)
        return self.expires_at


class WirePassword(_Body):
    password: str | None = Field(
        min_length=12,
        max_length=1024,
        description="The principal's PostgreSQL-wire password; null removes it (keys still work).",
    )


class Limit(_Body):
    epsilon: Amount
    delta: Amount


class TopUp(_Body):
    epsilon: Amount = Fraction(0)
    delta: Amount = Fraction(0)


class PolicyDraft(_Body):
    yaml: str = Field(max_length=1_000_000, description="The policy file's text.")


# -- routes ---------------------------------------------------------------------------------------


@router.get("/principals", summary="List principals (admin)")
def list_principals(admin: Admin, services: Svc) -> dict[str, Any]:
    return {"principals": [p.as_json() for p in services.principals.list_principals()]}


@router.post("/principals", status_code=201, summary="Create a principal (admin)")
def create_principal(body: NewPrincipal, admin: Admin, services: Svc) -> dict[str, Any]:
    return _ops(services, admin).create_principal(body.name, role=body.role, datasets=body.datasets)


@router.get("/principals/{name}", summary="One principal (admin)")
def get_principal(name: str, admin: Admin, services: Svc) -> dict[str, Any]:
    return _ops(services, admin).get_principal(name).as_json()


@router.patch("/principals/{name}", summary="Change role, grants or disabled (admin)")
def patch_principal(name: str, body: PrincipalPatch, admin: Admin, services: Svc) -> dict[str, Any]:
    return _ops(services, admin).update_principal(
        name, role=body.role, datasets=body.datasets, disabled=body.disabled
    )


@router.post("/principals/{name}/release", summary="Lift a principal's quarantine (admin)")
def release_principal(name: str, admin: Admin, services: Svc) -> dict[str, Any]:
    return _ops(services, admin).release(name)


@router.get("/governance", summary="Governance report: access, refusals, budgets, retention")
def governance(admin: Admin, services: Svc) -> dict[str, Any]:
    settings = services.settings
    return governance_report(
        _ops(services, admin),
        policy_version=services.queries.policy_version,
        retention=retention_settings(settings, type(settings).model_fields),
    )


@router.post("/principals/{name}/keys", status_code=201, summary="Create an API key (admin)")
def create_key(name: str, body: NewKey, admin: Admin, services: Svc) -> dict[str, Any]:
    return _ops(services, admin).create_key(name, expires_at=body.expiry())


@router.put("/principals/{name}/wire-password", summary="Set or clear a wire password (admin)")
def set_wire_password(name: str, body: WirePassword, admin: Admin, services: Svc) -> dict[str, Any]:
    return _ops(services, admin).set_wire_password(name, body.password)


@router.get("/principals/{name}/keys", summary="List a principal's keys, no secrets (admin)")
def list_keys(name: str, admin: Admin, services: Svc) -> dict[str, Any]:
    return {"principal": name, "keys": _ops(services, admin).list_keys(name)}


@router.delete("/keys/{key_id}", summary="Revoke an API key (admin)")
def revoke_key(key_id: str, admin: Admin, services: Svc) -> dict[str, Any]:
    return _ops(services, admin).revoke_key(key_id)


@router.get("/budgets", summary="Budget accounts (admin)")
def list_budgets(
    admin: Admin, services: Svc, principal: str | None = None, dataset: str | None = None
) -> dict[str, Any]:
    return {"budgets": _ops(services, admin).budgets(principal=principal, dataset=dataset)}


@router.put("/budgets/{principal}/{dataset}", summary="Set a budget limit (admin)")
def set_limit(
    principal: str, dataset: str, body: Limit, admin: Admin, services: Svc
) -> dict[str, Any]:
    limit = PrivacyCost(body.epsilon, body.delta)
    return _ops(services, admin).set_limit(principal, dataset, limit)


@router.post("/budgets/{principal}/{dataset}/top-up", summary="Raise a budget limit (admin)")
def top_up(
    principal: str, dataset: str, body: TopUp, admin: Admin, services: Svc
) -> dict[str, Any]:
    amount = PrivacyCost(body.epsilon, body.delta)
    return _ops(services, admin).top_up(principal, dataset, amount)


@router.post("/budgets/{principal}/{dataset}/reset", summary="Forget what was spent (admin)")
def reset(principal: str, dataset: str, admin: Admin, services: Svc) -> dict[str, Any]:
    return _ops(services, admin).reset(principal, dataset)


@router.get("/budgets/{principal}/{dataset}/history", summary="Ledger events (admin)")
def history(
    principal: str,
    dataset: str,
    admin: Admin,
    services: Svc,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    return _ops(services, admin).history(principal, dataset, limit=limit, before_id=before_id)


def parse_policy_text(text: str) -> LoadedPolicy:
    """Validate policy text exactly as :func:`load_policy` reads a file (same problems, version).

    Raises:
        PolicyFileError: the text is not a valid policy.
    """
    with tempfile.TemporaryDirectory(prefix="privgate-policy-") as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_bytes(text.encode())
        return load_policy(path)


@router.post("/policy/validate", summary="Validate a draft policy against the warehouse (admin)")
def validate_policy(body: PolicyDraft, admin: Admin, services: Svc) -> dict[str, Any]:
    try:
        loaded = parse_policy_text(body.yaml)
        load_catalog(loaded.policy, services.warehouse)
    except PolicyFileError as exc:
        raise PolicyInvalid("the policy is invalid", exc.problems) from None
    except CatalogMismatch as exc:
        raise PolicyInvalid("the policy does not match the warehouse", [str(exc)]) from None
    datasets = loaded.policy.datasets
    return {
        "ok": True,
        "version": loaded.version,
        "datasets": sorted(datasets),
        "tables": sum(len(d.tables) for d in datasets.values()),
    }


# Two reloads at once would race on which policy ends up serving; one at a time per process.
_reload_lock = threading.Lock()


@router.post("/policy/reload", summary="Re-read the policy file; on error the old one serves")
def reload_policy(admin: Admin, services: Svc) -> dict[str, Any]:
    ops = _ops(services, admin)
    with _reload_lock:
        previous = services.policy.version
        try:
            loaded = services.reload_policy()
        except PolicyFileError as exc:
            problems = exc.problems
        except CatalogMismatch as exc:
            problems = [str(exc)]
        else:
            audit_id = ops.record("policy.reload", str(loaded.path), version=loaded.version)
            # Under `serve --workers N` this reached one worker: the supervisor reloads its own
            # copy and replaces every worker, one at a time (gateway.workers).
            restarting = ask_supervisor_to_reload()
            return {
                "ok": True,
                "version": loaded.version,
                "previous_version": previous,
                "changed": loaded.version != previous,
                "audit_id": audit_id,
                "workers_restarting": restarting,
            }
    ops.record("policy.reload", str(services.settings.resolved_policy_path), "policy.invalid_file")
    raise PolicyInvalid(f"the policy file is invalid; version {previous} keeps serving", problems)


def _snapshot_status(services: Services) -> dict[str, Any]:
    current = services.warehouse.snapshot
    rebuilds = services.rebuilds
    return {
        "enabled": services.snapshots_enabled,
        "serving": None if current is None else current.as_json(),
        "bounding": "snapshot" if current is not None else "per-query",
        "stale": services.snapshots_enabled and services.snapshot_stale(),
        "rebuilding": rebuilds.running,
        "progress": rebuilds.last_progress,
        "last_error": rebuilds.last_error,
    }


@router.get("/snapshot", summary="The bounded snapshot serving now, and any rebuild (admin)")
def snapshot_status(admin: Admin, services: Svc) -> dict[str, Any]:
    return _snapshot_status(services)


@router.post(
    "/snapshot/rebuild",
    status_code=202,
    summary="Rebuild the bounded snapshot in the background; the current one serves meanwhile",
)
def snapshot_rebuild(admin: Admin, services: Svc) -> dict[str, Any]:
    if not services.settings.bounded_snapshots:
        raise AdminInvalid(
            "bounded snapshots are off", hint="Set PRIVGATE_BOUNDED_SNAPSHOTS=true and restart."
        )
    if not services.snapshots_enabled:
        raise AdminInvalid(
            "this warehouse cannot hold bounded snapshots (DuckDB, Spark, and PostgreSQL with "
            "PRIVGATE_WAREHOUSE_SNAPSHOT_URL can); it bounds contributions inside every query"
        )
    started = services.rebuild_snapshot_in_background()
    _ops(services, admin).record("snapshot.rebuild", "warehouse", started=started)
    return {"started": started, **_snapshot_status(services)}
