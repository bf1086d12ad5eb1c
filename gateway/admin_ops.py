"""Admin operations shared by the admin REST API and the CLI: principals, keys, grants, budgets.

Both doors call :class:`AdminOps`, so they validate and audit alike. Every change appends an audit
record ``{"decision": "admin", "action", "actor", "target", "door", "code": "ok", ...}``; no key or
secret ever goes into one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import Annotated, Any

from pydantic import (
    PlainValidator,
    WithJsonSchema,
)

from budgets.cost import DELTA_QUANTUM, EPSILON_QUANTUM, PrivacyCost, fraction_str
from budgets.ledger import SqlLedger
from gateway.audit import AuditLog
from gateway.errors import GatewayError
from gateway.principals import (
    InvalidPrincipalName,
    PrincipalExists,
    PrincipalInfo,
    PrincipalStore,
    UnknownPrincipal,
)
from rewriter.policy import DatasetPolicy, Role


class AdminInvalid(GatewayError):
    code = "admin.invalid"
    default_hint = "Check the names and values in the request against the current policy."


class AdminNotFound(GatewayError):
    code = "admin.not_found"
    default_hint = "GET /v1/admin/principals lists principals; the policy declares the datasets."


class AdminConflict(GatewayError):
    code = "admin.conflict"
    default_hint = "Pick another name, or PATCH the existing principal."


class PolicyInvalid(GatewayError):
    """A policy that does not validate; ``problems`` lists ``field: problem`` lines."""

    code = "policy.invalid_file"
    default_hint = "Fix the listed fields; POST /v1/admin/policy/validate checks a draft."

    def __init__(self, what: str, problems: list[str]) -> None:
        super().__init__(f"{what}: " + "; ".join(problems))
        self.problems = problems


# -- amounts ------------------------------------------------------------------------------------

_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def parse_amount(value: object) -> Fraction:
    """Read a non-negative ε or δ from a JSON number or a decimal string, exactly.

    >>> parse_amount("0.1") + parse_amount(0.2) == Fraction(3, 10)
    True
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a number or a decimal string")
    # A float is read by its shortest decimal form, so 0.1 means exactly 1/10.
    text = repr(value) if isinstance(value, float) else str(value).strip()
    if len(text) > 40 or not _DECIMAL.fullmatch(text):
        raise ValueError("must be a non-negative decimal number such as 0.5 or '1e-5'")
    return Fraction(text)


Amount = Annotated[
    Fraction,
    PlainValidator(parse_amount),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}]}),
]


def _units(units: int, quantum: int) -> str:
    return fraction_str(Fraction(units, quantum))


def cost_json(prefix: str, cost: PrivacyCost) -> dict[str, str]:
    return {
        f"epsilon_{prefix}": fraction_str(cost.epsilon),
        f"delta_{prefix}": fraction_str(cost.delta),
    }


def default_limit(ds: DatasetPolicy) -> PrivacyCost:
    """The per-principal limit an account of ``ds`` starts with (from the policy)."""
    lim = ds.budget.per_principal
    return PrivacyCost.of(lim.epsilon, lim.delta)


# -- the operations, shared by REST and the CLI ---------------------------------------------------


@dataclass(frozen=True)
class AdminOps:
    """Admin operations on the control DB for one actor through one door; changes are audited."""

    principals: PrincipalStore
    ledger: SqlLedger
    audit: AuditLog
    #: The datasets of the policy now serving: grants and budgets may only name these.
    datasets: Mapping[str, DatasetPolicy]
    actor: str
    door: str

    def record(self, action: str, target: str, code: str = "ok", **details: Any) -> str:
        """Append the audit record of one admin action; return its audit id."""
        entry = self.audit.append(
            {
                "decision": "admin",
                "action": action,
                "actor": self.actor,
                "target": target,
                "door": self.door,
                "code": code,
                **details,
            }
        )
        return entry.id

    # principals

    def get_principal(self, name: str) -> PrincipalInfo:
        found = self.principals.info(name)
        if found is None:
            raise AdminNotFound(f"no principal named {name!r}")
        return found

    def create_principal(self, name: str, *, role: Role, datasets: Iterable[str]) -> dict[str, Any]:
        grants = self._known_datasets(datasets)
        try:
            created = self.principals.create_principal(name, role=role, datasets=grants)
        except InvalidPrincipalName as exc:
            raise AdminInvalid(exc.message, hint=exc.hint) from None
        except PrincipalExists as exc:
            raise AdminConflict(exc.message) from None
        audit_id = self.record(
            "principal.create", name, role=created.role.value, datasets=sorted(created.datasets)
        )
        return {**created.as_json(), "audit_id": audit_id}

    def update_principal(
        self,
        name: str,
        *,
        role: Role | None = None,
        datasets: Iterable[str] | None = None,
        grant: Iterable[str] = (),
        disabled: bool | None = None,
    ) -> dict[str, Any]:
        new_datasets = None if datasets is None else self._known_datasets(datasets)
        grants = self._known_datasets(grant)
        if self.door == "rest" and name == self.actor and (disabled or role is Role.ANALYST):
            # A lone admin must not lock everyone out; another admin or the CLI can do it.
            raise AdminInvalid("you cannot disable or demote yourself", hint="Ask another admin.")
        try:
            updated = self.principals.update_principal(
                name, role=role, datasets=new_datasets, grant=grants, disabled=disabled
            )
        except UnknownPrincipal:
            raise AdminNotFound(f"no principal named {name!r}") from None
        audit_id = self.record(
            "principal.update",
            name,
            role=updated.role.value,
            datasets=sorted(updated.datasets),
            disabled=updated.disabled,
        )
        return {**updated.as_json(), "audit_id": audit_id}

    def release(self, name: str) -> dict[str, Any]:
        """Lift ``name``'s quarantine (see :mod:`gateway.anomaly`); a no-op if it has none."""
        if self.door == "rest" and name == self.actor:
            # Containment that its subject can lift is no containment.
            raise AdminInvalid(
                "you cannot release your own quarantine",
                hint="Ask another admin, or run `privgate principal release` on the gateway host.",
            )
        before = self.get_principal(name)
        try:
            changed = self.principals.release(name)
        except UnknownPrincipal:
            raise AdminNotFound(f"no principal named {name!r}") from None
        audit_id = None
        if changed:
            audit_id = self.record(
                "principal.release", name, lifted_reason=before.quarantine_reason
            )
        return {**self.get_principal(name).as_json(), "released": changed, "audit_id": audit_id}

    def _known_datasets(self, names: Iterable[str]) -> list[str]:
        wanted = sorted(set(names))
        unknown = [n for n in wanted if n not in self.datasets]
        if unknown:
            raise AdminInvalid(
                f"unknown dataset(s) {unknown}; the policy declares {sorted(self.datasets)}"
            )
        return wanted

    # keys

    def create_key(self, name: str, *, expires_at: datetime | None) -> dict[str, Any]:
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise AdminInvalid("expires_at is in the past", hint="Give a future time with a zone.")
        try:
            key_id, key = self.principals.create_key(name, expires_at=expires_at)
        except UnknownPrincipal:
            raise AdminNotFound(f"no principal named {name!r}") from None
        expires = None if expires_at is None else expires_at.astimezone(UTC).isoformat()
        audit_id = self.record("key.create", name, key_id=key_id, expires_at=expires)
        # The key itself is in the answer only: it is shown once and never stored or audited.
        return {
            "key_id": key_id,
            "key": key,
            "principal": name,
            "expires_at": expires,
            "audit_id": audit_id,
        }

    def set_wire_password(self, name: str, password: str | None) -> dict[str, Any]:
        """Set or (``None``) clear the principal's PostgreSQL-wire password (kept as a verifier)."""
        try:
            self.principals.set_wire_password(name, password)
        except UnknownPrincipal:
            raise AdminNotFound(f"no principal named {name!r}") from None
        except ValueError as exc:
            raise AdminInvalid(str(exc), hint="Use a passphrase of 12 characters or more.") from None
        # The password is never recorded, only that it changed.
        audit_id = self.record("wire_password." + ("set" if password else "clear"), name)
        return {"principal": name, "wire_password": password is not None, "audit_id": audit_id}

    def list_keys(self, name: str) -> list[dict[str, Any]]:
        try:
            keys = self.principals.list_keys(name)
        except UnknownPrincipal:
            raise AdminNotFound(f"no principal named {name!r}") from None
        now = datetime.now(UTC)
        return [k.as_json(now=now) for k in keys]

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        found = self.principals.get_key(key_id)
        if found is None or not self.principals.revoke_key(key_id):
            raise AdminNotFound(f"no active key {key_id!r}", hint="It may be revoked already.")
        audit_id = self.record("key.revoke", found.principal, key_id=key_id)
        return {
            "key_id": key_id,
            "principal": found.principal,
            "revoked": True,
            "audit_id": audit_id,
        }

    # budgets

    def budgets(self, *, principal: str | None, dataset: str | None) -> list[dict[str, Any]]:
        """Stored accounts, plus the policy default for granted datasets not yet charged."""
        rows = [
            _account(a.scope_kind, a.principal, a.dataset, True, a.limit, a.spent, a.remaining)
            for a in self.ledger.list_accounts(principal=principal, dataset=dataset)
        ]
        stored = {(r["scope"], r["principal"], r["dataset"]) for r in rows}
        for p in self.principals.list_principals():
            for ds_name in sorted(p.datasets & self.datasets.keys()):
                if (
                    principal in (None, p.name)
                    and dataset in (None, ds_name)
                    and ("principal", p.name, ds_name) not in stored
                ):
                    limit = default_limit(self.datasets[ds_name])
                    zero = PrivacyCost.zero()
                    rows.append(_account("principal", p.name, ds_name, False, limit, zero, limit))
        return sorted(rows, key=lambda r: (r["dataset"], r["scope"], r["principal"]))

    def set_limit(self, principal: str, dataset: str, limit: PrivacyCost) -> dict[str, Any]:
        self._budget_scope(principal, dataset)
        self.ledger.set_limit(principal=principal, dataset=dataset, limit=limit, actor=self.actor)
        return self._budget_change("budget.set_limit", principal, dataset, limit)

    def top_up(self, principal: str, dataset: str, amount: PrivacyCost) -> dict[str, Any]:
        default = self._budget_scope(principal, dataset)
        if amount.epsilon == 0 and amount.delta == 0:
            raise AdminInvalid("a top-up needs a positive epsilon or delta")
        self.ledger.top_up(
            principal=principal,
            dataset=dataset,
            amount=amount,
            actor=self.actor,
            default_limit=default,
        )
        return self._budget_change("budget.top_up", principal, dataset, amount)

    def reset(self, principal: str, dataset: str) -> dict[str, Any]:
        default = self._budget_scope(principal, dataset)
        self.ledger.reset(
            principal=principal, dataset=dataset, actor=self.actor, default_limit=default
        )
        return self._budget_change("budget.reset", principal, dataset, None)

    def history(
        self, principal: str, dataset: str, *, limit: int = 100, before_id: int | None = None
    ) -> dict[str, Any]:
        self._budget_scope(principal, dataset)
        events = self.ledger.history(
            principal=principal, dataset=dataset, limit=limit, before_id=before_id
        )
        return {
            "principal": principal,
            "dataset": dataset,
            "events": [
                {
                    "id": e.id,
                    "ts": e.ts.isoformat(),
                    "kind": e.kind,
                    "epsilon": _units(e.eps_units, EPSILON_QUANTUM),
                    "delta": _units(e.delta_units, DELTA_QUANTUM),
                    "query_id": e.query_id,
                    "actor": e.actor,
                }
                for e in events
            ],
            # Pass as before_id to read the next (older) page; null when this was the last one.
            "next_before_id": events[-1].id if len(events) == limit else None,
        }

    def balance(self, principal: str, dataset: str) -> dict[str, Any]:
        default = self._budget_scope(principal, dataset)
        window = self.datasets[dataset].budget.per_principal.window_seconds
        bal = self.ledger.balance(
            principal=principal,
            dataset=dataset,
            principal_limit=default,
            principal_window_s=window,
        )
        return {
            "principal": principal,
            "dataset": dataset,
            **cost_json("limit", bal.limit),
            **cost_json("spent", bal.spent),
            **cost_json("remaining", bal.remaining),
        }

    def _budget_scope(self, principal: str, dataset: str) -> PrivacyCost:
        ds = self.datasets.get(dataset)
        if ds is None:
            raise AdminNotFound(f"no dataset {dataset!r} in the policy")
        self.get_principal(principal)
        return default_limit(ds)

    def _budget_change(
        self, action: str, principal: str, dataset: str, cost: PrivacyCost | None
    ) -> dict[str, Any]:
        details = {} if cost is None else cost.as_json()
        audit_id = self.record(action, principal, dataset=dataset, **details)
        return {**self.balance(principal, dataset), "audit_id": audit_id}


def _account(
    scope: str,
    principal: str,
    dataset: str,
    stored: bool,
    limit: PrivacyCost,
    spent: PrivacyCost,
    remaining: PrivacyCost,
) -> dict[str, Any]:
    return {
        "scope": scope,
        "principal": principal,
        "dataset": dataset,
        "stored": stored,
        **cost_json("limit", limit),
        **cost_json("spent", spent),
        **cost_json("remaining", remaining),
    }
