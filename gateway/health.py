"""Readiness: can this gateway answer queries right now?

``/healthz`` says the process is alive; ``/readyz`` (this module) says it can serve: the warehouse
answers ``SELECT 1``, the control database answers ``SELECT 1``, and a policy is loaded. Reasons are
short codes, never exception text (the endpoint needs no credentials).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine, text

from gateway.errors import GatewayError
from gateway.warehouse import Warehouse

log = logging.getLogger("privgate.health")


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    checks: dict[str, str]  # name -> "ok" or a short reason

    def as_json(self) -> dict[str, object]:
        return {"status": "ready" if self.ready else "unready", "checks": self.checks}


def check_readiness(*, warehouse: Warehouse, control: Engine, policy_datasets: int) -> Readiness:
    """Run the three checks; each failure is logged with its detail and reported as a code."""
    checks: dict[str, str] = {}
    try:
        result = warehouse.execute("SELECT 1", [])
        checks["warehouse"] = "ok" if result.rows == [(1,)] else "unexpected answer"
    except GatewayError as exc:
        log.warning("readiness: warehouse check failed (%s)", exc.code)
        checks["warehouse"] = exc.code
    except Exception:
        log.exception("readiness: warehouse check failed")
        checks["warehouse"] = "error"
    try:
        with control.connect() as conn:
            conn.execute(text("SELECT 1")).scalar_one()
        checks["control_db"] = "ok"
    except Exception:
        log.exception("readiness: control database check failed")
        checks["control_db"] = "unreachable"
    checks["policy"] = "ok" if policy_datasets > 0 else "no datasets loaded"
    return Readiness(all(v == "ok" for v in checks.values()), checks)
