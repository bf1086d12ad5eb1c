"""The admin API over real HTTP: authorisation on every route, principals, keys, grants, budgets,
policy validation and reload, and the audit trail of admin actions."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.admin_api import router
from gateway.settings import demo_policy_path
from tests.conftest import Gateway, write_policy

COUNT_SQL = "SELECT COUNT(*) AS n FROM visits"

#: Every admin route, with a body an admin could send. A test checks the list is complete.
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/admin/principals", None),
    ("POST", "/v1/admin/principals", {"name": "someone", "role": "analyst"}),
    ("GET", "/v1/admin/principals/{name}", None),
    ("PATCH", "/v1/admin/principals/{name}", {"disabled": True}),
    ("POST", "/v1/admin/principals/{name}/keys", {}),
    ("GET", "/v1/admin/principals/{name}/keys", None),
    ("PUT", "/v1/admin/principals/{name}/wire-password", {"password": "a long passphrase"}),
    ("DELETE", "/v1/admin/keys/{key_id}", None),
    ("GET", "/v1/admin/budgets", None),
    ("PUT", "/v1/admin/budgets/{principal}/{dataset}", {"epsilon": 1, "delta": 0}),
    ("POST", "/v1/admin/budgets/{principal}/{dataset}/top-up", {"epsilon": 1}),
    ("POST", "/v1/admin/budgets/{principal}/{dataset}/reset", None),
    ("GET", "/v1/admin/budgets/{principal}/{dataset}/history", None),
    ("POST", "/v1/admin/policy/validate", {"yaml": "datasets: {}"}),
    ("POST", "/v1/admin/policy/reload", None),
    ("GET", "/v1/admin/snapshot", None),
    ("POST", "/v1/admin/snapshot/rebuild", None),
    ("GET", "/v1/admin/audit/verify", None),
    ("POST", "/v1/admin/audit/verify", {"checkpoints": []}),
    ("GET", "/v1/admin/audit", None),
    ("GET", "/v1/admin/audit/export", None),
    ("GET", "/v1/admin/audit/checkpoints", None),
    ("POST", "/v1/admin/audit/checkpoints", None),
    ("POST", "/v1/admin/audit/purge", {"before": "2000-01-01T00:00:00+00:00"}),
    ("POST", "/v1/admin/principals/{name}/release", None),
    ("GET", "/v1/admin/governance", None),
]
PARAMS = {"name": "admin", "key_id": "deadbeef", "principal": "admin", "dataset": "clinic"}


def _path(template: str) -> str:
    return template.format(**PARAMS)


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code, err
    assert err["message"] and err["hint"] and err["sqlstate"]
    return err


def _keyed(gw: Gateway, key: str) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _new_analyst(gw: Gateway, name: str, datasets: list[str] | None = None) -> str:
    """Create an analyst through the API and return a fresh key of theirs."""
    with gw.client("admin") as c:
        r = c.post(
            "/v1/admin/principals",
            json={"name": name, "role": "analyst", "datasets": datasets or ["clinic"]},
        )
        assert r.status_code == 201, r.text
        r = c.post(f"/v1/admin/principals/{name}/keys", json={})
        assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


def _admin_records(gw: Gateway) -> list[dict[str, Any]]:
    return [e["record"] for e in gw.services.audit.export() if e["record"]["decision"] == "admin"]


# -- authorisation ------------------------------------------------------------------------------


def test_route_list_covers_every_admin_route(gateway: Gateway) -> None:
    with gateway.client("admin") as c:
        paths = c.get("/openapi.json").json()["paths"]
    served = {
        (method.upper(), path)
        for path, ops in paths.items()
        if path.startswith("/v1/admin")
        for method in ops
    }
    assert served == {(m, p) for m, p, _ in ROUTES}
    assert {(m, r.path) for r in router.routes for m in r.methods} <= served  # type: ignore[attr-defined]


@pytest.mark.parametrize(("method", "template", "body"), ROUTES)
def test_analyst_key_is_forbidden_everywhere(
    gateway: Gateway, method: str, template: str, body: dict[str, Any] | None
) -> None:
    before = gateway.services.principals.info("admin")
    with gateway.client("analyst") as c:
        r = c.request(method, _path(template), json=body)
    _error(r, 403, "auth.forbidden")
    assert gateway.services.principals.info("admin") == before


@pytest.mark.parametrize(("method", "template", "body"), ROUTES)
@pytest.mark.parametrize(
    ("header", "code"),
    [(None, "auth.missing"), ("Bearer pgk_deadbeef_" + "x" * 43, "auth.invalid_key")],
)
def test_no_or_bad_key_is_unauthorised_everywhere(
    gateway: Gateway,
    method: str,
    template: str,
    body: dict[str, Any] | None,
    header: str | None,
    code: str,
) -> None:
    headers = {} if header is None else {"Authorization": header}
    with httpx.Client(base_url=gateway.url, headers=headers) as c:
        r = c.request(method, _path(template), json=body)
    _error(r, 401, code)
    assert r.headers["www-authenticate"] == "Bearer"


# -- principals ---------------------------------------------------------------------------------


def test_create_get_list_principal(gateway: Gateway) -> None:
    with gateway.client("admin") as c:
        r = c.post(
            "/v1/admin/principals",
            json={"name": "pat", "role": "analyst", "datasets": ["clinic", "clinic"]},
        )
        assert r.status_code == 201, r.text
        created = r.json()
        got = c.get("/v1/admin/principals/pat").json()
        listed = c.get("/v1/admin/principals").json()["principals"]
    assert created["name"] == "pat" and created["role"] == "analyst"
    assert created["datasets"] == ["clinic"] and created["disabled"] is False
    assert created["audit_id"]
    assert got == {k: v for k, v in created.items() if k != "audit_id"}
    assert got in listed
    assert {"analyst", "admin", "pat"} <= {p["name"] for p in listed}
    assert [p["name"] for p in listed] == sorted(p["name"] for p in listed)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"name": "admin", "role": "analyst"}, 409, "admin.conflict"),
        ({"name": "nope", "role": "analyst", "datasets": ["warehouse"]}, 400, "admin.invalid"),
        ({"name": "has space", "role": "analyst"}, 400, "admin.invalid"),
        ({"name": "", "role": "analyst"}, 400, "admin.invalid"),
        ({"name": "x", "role": "root"}, 422, "request.invalid"),
        ({"name": "x", "role": "analyst", "password": "p"}, 422, "request.invalid"),
        ({"role": "analyst"}, 422, "request.invalid"),
    ],
)
def test_create_principal_rejections(
    gateway: Gateway, body: dict[str, Any], status: int, code: str
) -> None:
    with gateway.client("admin") as c:
        r = c.post("/v1/admin/principals", json=body)
    err = _error(r, status, code)
    if code == "admin.invalid" and "datasets" in body:
        assert "warehouse" in err["message"] and "clinic" in err["message"]
    assert gateway.services.principals.info("nope") is None


def test_unknown_principal_is_404(gateway: Gateway) -> None:
    with gateway.client("admin") as c:
        for method, path, body in [
            ("GET", "/v1/admin/principals/ghost", None),
            ("PATCH", "/v1/admin/principals/ghost", {"disabled": True}),
            ("POST", "/v1/admin/principals/ghost/keys", {}),
            ("GET", "/v1/admin/principals/ghost/keys", None),
        ]:
            _error(c.request(method, path, json=body), 404, "admin.not_found")


def test_patch_rejections(gateway: Gateway) -> None:
    _new_analyst(gateway, "patchy")
    with gateway.client("admin") as c:
        _error(
            c.patch("/v1/admin/principals/patchy", json={"datasets": ["nosuch"]}),
            400,
            "admin.invalid",
        )
        _error(
            c.patch("/v1/admin/principals/patchy", json={"name": "other"}), 422, "request.invalid"
        )
        # An admin cannot lock themselves out.
        _error(c.patch("/v1/admin/principals/admin", json={"disabled": True}), 400, "admin.invalid")
        _error(
            c.patch("/v1/admin/principals/admin", json={"role": "analyst"}), 400, "admin.invalid"
        )
    patchy = gateway.services.principals.info("patchy")
    assert patchy is not None and patchy.datasets == frozenset({"clinic"})
    assert gateway.services.principals.get("admin") is not None


def test_grants_take_effect_at_once(gateway: Gateway) -> None:
    key = _new_analyst(gateway, "grantee")
    with _keyed(gateway, key) as analyst, gateway.client("admin") as admin:
        assert analyst.post("/v1/query", json={"sql": COUNT_SQL}).status_code == 200
        r = admin.patch("/v1/admin/principals/grantee", json={"datasets": []})
        assert r.status_code == 200 and r.json()["datasets"] == []
        _error(analyst.post("/v1/query", json={"sql": COUNT_SQL}), 400, "catalog.unknown_table")
        assert analyst.get("/v1/budget").json()["budgets"] == []
        r = admin.patch("/v1/admin/principals/grantee", json={"datasets": ["clinic"]})
        assert r.json()["datasets"] == ["clinic"]
        assert analyst.post("/v1/query", json={"sql": COUNT_SQL}).status_code == 200


def test_disable_and_enable(gateway: Gateway) -> None:
    key = _new_analyst(gateway, "sleeper")
    with _keyed(gateway, key) as analyst, gateway.client("admin") as admin:
        r = admin.patch("/v1/admin/principals/sleeper", json={"disabled": True})
        assert r.json()["disabled"] is True
        _error(analyst.get("/v1/budget"), 401, "auth.invalid_key")
        admin.patch("/v1/admin/principals/sleeper", json={"disabled": False})
        assert analyst.get("/v1/budget").status_code == 200


def test_promotion_to_admin(gateway: Gateway) -> None:
    key = _new_analyst(gateway, "rising")
    with _keyed(gateway, key) as c, gateway.client("admin") as admin:
        _error(c.get("/v1/admin/principals"), 403, "auth.forbidden")
        assert admin.patch("/v1/admin/principals/rising", json={"role": "admin"}).status_code == 200
        assert c.get("/v1/admin/principals").status_code == 200


# -- keys ---------------------------------------------------------------------------------------


def test_key_lifecycle(gateway: Gateway) -> None:
    key = _new_analyst(gateway, "keyholder")
    key_id = key.split("_")[1]
    with gateway.client("admin") as admin, _keyed(gateway, key) as analyst:
        listed = admin.get("/v1/admin/principals/keyholder/keys")
        assert listed.status_code == 200
        assert key not in listed.text and key.split("_", 2)[2] not in listed.text
        (info,) = listed.json()["keys"]
        assert info["key_id"] == key_id and info["status"] == "active"
        assert set(info) == {
            "key_id",
            "principal",
            "status",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        }
        assert analyst.post("/v1/query", json={"sql": COUNT_SQL}).status_code == 200
        r = admin.delete(f"/v1/admin/keys/{key_id}")
        assert r.status_code == 200 and r.json()["principal"] == "keyholder"
        _error(analyst.post("/v1/query", json={"sql": COUNT_SQL}), 401, "auth.invalid_key")
        _error(admin.delete(f"/v1/admin/keys/{key_id}"), 404, "admin.not_found")
        (info,) = admin.get("/v1/admin/principals/keyholder/keys").json()["keys"]
        assert info["status"] == "revoked" and info["revoked_at"]
        _error(admin.delete("/v1/admin/keys/00000000"), 404, "admin.not_found")


def test_key_expiry(gateway: Gateway) -> None:
    _new_analyst(gateway, "shortlived")
    with gateway.client("admin") as admin:
        soon = datetime.now(UTC) + timedelta(seconds=1.5)
        r = admin.post(
            "/v1/admin/principals/shortlived/keys", json={"expires_at": soon.isoformat()}
        )
        assert r.status_code == 201, r.text
        created = r.json()
        assert datetime.fromisoformat(created["expires_at"]) == soon
        in_days = admin.post(
            "/v1/admin/principals/shortlived/keys", json={"expires_in_days": 7}
        ).json()
        expires = datetime.fromisoformat(in_days["expires_at"])
        assert timedelta(days=6.99) < expires - datetime.now(UTC) <= timedelta(days=7)
        # Already expired, and stored so directly: refused like any invalid key.
        _, stale = gateway.services.principals.create_key(
            "shortlived", expires_at=datetime.now(UTC) - timedelta(minutes=1)
        )
        with _keyed(gateway, stale) as c:
            _error(c.post("/v1/query", json={"sql": COUNT_SQL}), 401, "auth.invalid_key")
        with _keyed(gateway, created["key"]) as c:
            assert c.get("/v1/budget").status_code == 200
            time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
            _error(c.post("/v1/query", json={"sql": COUNT_SQL}), 401, "auth.invalid_key")
        statuses = [
            k["status"] for k in admin.get("/v1/admin/principals/shortlived/keys").json()["keys"]
        ]
        assert sorted(statuses) == ["active", "active", "expired", "expired"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"expires_at": "2001-01-01T00:00:00+00:00"}, 400, "admin.invalid"),
        ({"expires_at": "2999-01-01T00:00:00"}, 422, "request.invalid"),  # no time zone
        ({"expires_in_days": 0}, 422, "request.invalid"),
        ({"expires_in_days": 1, "expires_at": "2999-01-01T00:00:00Z"}, 422, "request.invalid"),
        ({"key": "pgk_mine"}, 422, "request.invalid"),
    ],
)
def test_key_create_rejections(
    gateway: Gateway, body: dict[str, Any], status: int, code: str
) -> None:
    with gateway.client("admin") as admin:
        before = len(admin.get("/v1/admin/principals/analyst/keys").json()["keys"])
        _error(admin.post("/v1/admin/principals/analyst/keys", json=body), status, code)
        after = len(admin.get("/v1/admin/principals/analyst/keys").json()["keys"])
    assert before == after


# -- budgets ------------------------------------------------------------------------------------


def _budget(gw: Gateway, principal: str) -> dict[str, Any]:
    with gw.client("admin") as c:
        rows = c.get("/v1/admin/budgets", params={"principal": principal}).json()["budgets"]
    (row,) = [r for r in rows if r["dataset"] == "clinic"]
    return row


def test_budget_defaults_come_from_the_policy(gateway: Gateway) -> None:
    _new_analyst(gateway, "fresh")
    row = _budget(gateway, "fresh")
    assert row["scope"] == "principal" and row["stored"] is False
    assert (row["epsilon_limit"], row["epsilon_spent"], row["delta_limit"]) == (
        "100000",
        "0",
        "0.5",
    )
    with gateway.client("admin") as c:
        everyone = c.get("/v1/admin/budgets").json()["budgets"]
        none = c.get("/v1/admin/budgets", params={"dataset": "nosuch"}).json()["budgets"]
    assert {"fresh", "analyst"} <= {r["principal"] for r in everyone}
    assert none == []


def test_set_top_up_reset_history(gateway: Gateway) -> None:
    key = _new_analyst(gateway, "spender")
    base = "/v1/admin/budgets/spender/clinic"
    with gateway.client("admin") as admin, _keyed(gateway, key) as analyst:
        r = admin.put(base, json={"epsilon": "2.5", "delta": 1e-5})
        assert r.status_code == 200, r.text
        assert (r.json()["epsilon_limit"], r.json()["delta_limit"]) == ("2.5", "0.00001")
        assert analyst.get("/v1/budget").json()["budgets"][0]["epsilon_limit"] == "2.5"
        assert analyst.post("/v1/query", json={"sql": COUNT_SQL}).status_code == 200
        row = _budget(gateway, "spender")
        assert (row["stored"], row["epsilon_spent"], row["epsilon_remaining"]) == (True, "0.5", "2")
        for _ in range(3):
            r = admin.post(f"{base}/top-up", json={"epsilon": 0.1})
            assert r.status_code == 200, r.text
        # Exact: three top-ups of 0.1 add exactly 0.3.
        assert r.json()["epsilon_limit"] == "2.8"
        assert Fraction(r.json()["epsilon_remaining"]) == Fraction("2.3")
        r = admin.post(f"{base}/reset")
        assert r.status_code == 200, r.text
        assert (r.json()["epsilon_spent"], r.json()["epsilon_limit"]) == ("0", "2.8")
        history = admin.get(f"{base}/history").json()
        kinds = [e["kind"] for e in history["events"]]
        assert len(kinds) >= 6 and history["next_before_id"] is None
        assert {e["actor"] for e in history["events"]} >= {"admin"}
        page = admin.get(f"{base}/history", params={"limit": 2}).json()
        assert len(page["events"]) == 2 and page["next_before_id"] == page["events"][-1]["id"]
        older = admin.get(
            f"{base}/history", params={"limit": 100, "before_id": page["next_before_id"]}
        ).json()
        assert len(older["events"]) == len(kinds) - 2
        assert {e["id"] for e in older["events"]}.isdisjoint(e["id"] for e in page["events"])


def test_limit_cut_stops_queries(gateway: Gateway) -> None:
    key = _new_analyst(gateway, "cut")
    with gateway.client("admin") as admin, _keyed(gateway, key) as analyst:
        admin.put("/v1/admin/budgets/cut/clinic", json={"epsilon": 0, "delta": 0})
        _error(analyst.post("/v1/query", json={"sql": COUNT_SQL}), 429, "budget.exhausted")
        admin.post("/v1/admin/budgets/cut/clinic/top-up", json={"epsilon": "0.5"})
        assert analyst.post("/v1/query", json={"sql": COUNT_SQL}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("PUT", "ghost/clinic", {"epsilon": 1, "delta": 0}, 404, "admin.not_found"),
        ("PUT", "analyst/nosuch", {"epsilon": 1, "delta": 0}, 404, "admin.not_found"),
        ("POST", "ghost/clinic/top-up", {"epsilon": 1}, 404, "admin.not_found"),
        ("POST", "analyst/nosuch/reset", None, 404, "admin.not_found"),
        ("GET", "ghost/clinic/history", None, 404, "admin.not_found"),
        ("PUT", "analyst/clinic", {"epsilon": -1, "delta": 0}, 422, "request.invalid"),
        ("PUT", "analyst/clinic", {"epsilon": "1/3", "delta": 0}, 422, "request.invalid"),
        ("PUT", "analyst/clinic", {"epsilon": "NaN", "delta": 0}, 422, "request.invalid"),
        ("PUT", "analyst/clinic", {"epsilon": True, "delta": 0}, 422, "request.invalid"),
        ("PUT", "analyst/clinic", {"epsilon": 1}, 422, "request.invalid"),
        ("PUT", "analyst/clinic", {"epsilon": 1, "delta": 1}, 400, "budget.invalid_cost"),
        ("PUT", "analyst/clinic", {"epsilon": 1e300, "delta": 0}, 400, "budget.invalid_cost"),
        ("POST", "analyst/clinic/top-up", {}, 400, "admin.invalid"),
        ("POST", "analyst/clinic/top-up", {"epsilon": 1, "x": 1}, 422, "request.invalid"),
    ],
)
def test_budget_rejections(
    gateway: Gateway,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    code: str,
) -> None:
    before = _budget(gateway, "analyst")
    with gateway.client("admin") as c:
        _error(c.request(method, f"/v1/admin/budgets/{path}", json=body), status, code)
    assert _budget(gateway, "analyst") == before


def test_history_query_bounds(gateway: Gateway) -> None:
    with gateway.client("admin") as c:
        for params in ({"limit": 0}, {"limit": 1001}, {"before_id": "x"}):
            r = c.get("/v1/admin/budgets/analyst/clinic/history", params=params)
            _error(r, 422, "request.invalid")


# -- policy -------------------------------------------------------------------------------------


def _demo_text(_: Gateway) -> str:
    return demo_policy_path().read_text()


def test_validate_accepts_a_good_policy(gateway: Gateway) -> None:
    text = _demo_text(gateway).replace("epsilon: 0.5", "epsilon: 0.25")
    with gateway.client("admin") as c:
        r = c.post("/v1/admin/policy/validate", json={"yaml": text})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True and body["datasets"] == ["clinic"] and body["tables"] >= 3
    assert body["version"] == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert gateway.services.policy.version != body["version"], "validate never swaps"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t + "\n  {unclosed", "not valid YAML"),
        (
            lambda t: t.replace("{class: measure, bounds: [0, 5000]}", "{class: measure}"),
            "datasets.clinic.tables.visits.columns.cost",
        ),
        (lambda t: "datasets: [1, 2]", "datasets"),
        (lambda t: t.replace("visits:", "visits_archive:", 1), "not in the warehouse"),
        (lambda t: t.replace("department:", "departmnt:", 1), "not in the warehouse"),
    ],
)
def test_validate_lists_the_problems(gateway: Gateway, edit: Any, expected: str) -> None:
    text = edit(_demo_text(gateway))
    with gateway.client("admin") as c:
        r = c.post("/v1/admin/policy/validate", json={"yaml": text})
    err = _error(r, 400, "policy.invalid_file")
    assert expected in err["message"]


def test_validate_rejects_a_malformed_body(gateway: Gateway) -> None:
    with gateway.client("admin") as c:
        _error(c.post("/v1/admin/policy/validate", json={"text": "x"}), 422, "request.invalid")


@pytest.fixture
def policy_file(gateway: Gateway) -> Iterator[Path]:
    path = gateway.services.settings.resolved_policy_path
    original = path.read_bytes()
    yield path
    path.write_bytes(original)
    gateway.services.reload_policy()


def _big_budget(*more: Any) -> Any:
    """A policy mutation: the module's big budget (no dataset cap), then ``more``."""

    def mutate(policy: dict[str, Any]) -> None:
        policy["datasets"]["clinic"]["budget"] = {
            "per_principal": {"epsilon": 100000, "delta": 0.5},
            "per_query_max": {"epsilon": 10},
        }
        for m in more:
            m(policy)

    return mutate


def _visits(policy: dict[str, Any]) -> dict[str, Any]:
    tables: dict[str, Any] = policy["datasets"]["clinic"]["tables"]
    return tables


def test_reload_is_atomic(gateway: Gateway, policy_file: Path) -> None:
    key = _new_analyst(gateway, "reloader")
    old_version = gateway.services.policy.version
    with gateway.client("admin") as admin, _keyed(gateway, key) as analyst:
        unchanged = admin.post("/v1/admin/policy/reload")
        assert unchanged.status_code == 200, unchanged.text
        assert unchanged.json()["changed"] is False
        assert unchanged.json()["version"] == old_version

        def unbounded(p: dict[str, Any]) -> None:
            _visits(p)["visits"]["columns"]["cost"] = "measure"

        write_policy(policy_file, _big_budget(unbounded))
        err = _error(admin.post("/v1/admin/policy/reload"), 400, "policy.invalid_file")
        assert "datasets.clinic.tables.visits.columns.cost" in err["message"]
        assert old_version in err["message"]
        assert gateway.services.policy.version == old_version
        r = analyst.post("/v1/query", json={"sql": COUNT_SQL})
        assert r.status_code == 200 and r.json()["epsilon_charged"] == "0.5"

        def renamed(p: dict[str, Any]) -> None:
            _visits(p)["no_such_table"] = _visits(p).pop("visits")

        write_policy(policy_file, _big_budget(renamed))
        err = _error(admin.post("/v1/admin/policy/reload"), 400, "policy.invalid_file")
        assert "no_such_table" in err["message"]
        assert analyst.post("/v1/query", json={"sql": COUNT_SQL}).status_code == 200

        def cheaper(p: dict[str, Any]) -> None:
            p["datasets"]["clinic"]["defaults"]["epsilon"] = 0.25

        write_policy(policy_file, _big_budget(cheaper))
        r = admin.post("/v1/admin/policy/reload")
        assert r.status_code == 200, r.text
        new_version = r.json()["version"]
        assert r.json()["changed"] is True and r.json()["previous_version"] == old_version
        assert new_version == hashlib.sha256(policy_file.read_bytes()).hexdigest()[:16]
        assert gateway.services.policy.version == new_version
        r = analyst.post("/v1/query", json={"sql": COUNT_SQL})
        assert r.status_code == 200 and r.json()["epsilon_charged"] == "0.25"
    last = gateway.services.audit.get(r.json()["audit_id"])
    assert last is not None and last["record"]["policy_version"] == new_version
    reloads = [rec for rec in _admin_records(gateway) if rec["action"] == "policy.reload"]
    assert [rec["code"] for rec in reloads[-4:]] == [
        "ok",
        "policy.invalid_file",
        "policy.invalid_file",
        "ok",
    ]
    assert reloads[-1]["version"] == new_version


def test_control_db_wins_over_the_policy_file(gateway: Gateway, policy_file: Path) -> None:
    key = _new_analyst(gateway, "bootstrapped")

    def add_principals(policy: dict[str, Any]) -> None:
        policy["principals"]["bootstrapped"] = {"role": "admin", "datasets": []}
        policy["principals"]["newcomer"] = {"role": "analyst", "datasets": ["clinic"]}

    write_policy(policy_file, _big_budget(add_principals))
    assert yaml.safe_load(policy_file.read_text())["principals"]["bootstrapped"]["role"] == "admin"
    with gateway.client("admin") as admin:
        assert admin.post("/v1/admin/policy/reload").status_code == 200
        stored = admin.get("/v1/admin/principals/bootstrapped").json()
        newcomer = admin.get("/v1/admin/principals/newcomer").json()
    assert (stored["role"], stored["datasets"]) == ("analyst", ["clinic"])
    assert (newcomer["role"], newcomer["datasets"]) == ("analyst", ["clinic"])
    with _keyed(gateway, key) as c:
        _error(c.get("/v1/admin/principals"), 403, "auth.forbidden")


# -- audit --------------------------------------------------------------------------------------


def test_admin_actions_are_audited_without_secrets(gateway: Gateway) -> None:
    key = _new_analyst(gateway, "audited")
    key_id = key.split("_")[1]
    with gateway.client("admin") as admin:
        admin.patch("/v1/admin/principals/audited", json={"datasets": []})
        admin.delete(f"/v1/admin/keys/{key_id}")
    records = [r for r in _admin_records(gateway) if r["target"] == "audited"]
    assert [r["action"] for r in records] == [
        "principal.create",
        "key.create",
        "principal.update",
        "key.revoke",
    ]
    for r in records:
        assert (r["actor"], r["door"], r["code"]) == ("admin", "rest", "ok")
    assert records[1]["key_id"] == key_id and records[2]["datasets"] == []
    everything = str([e["record"] for e in gateway.services.audit.export()])
    assert key not in everything and key.split("_", 2)[2] not in everything
    for k in gateway.keys.values():
        assert k not in everything
    assert gateway.services.audit.verify().ok


def test_reads_are_not_audited(gateway: Gateway) -> None:
    before = len(list(gateway.services.audit.export()))
    with gateway.client("admin") as c:
        c.get("/v1/admin/principals")
        c.get("/v1/admin/principals/analyst/keys")
        c.post("/v1/admin/policy/validate", json={"yaml": _demo_text(gateway)})
    assert len(list(gateway.services.audit.export())) == before
