"""The admin CLI as an operator runs it: a subprocess per command against a live gateway's control
database, real exit codes, and the changes visible to the running gateway at once."""

from __future__ import annotations

from typing import Any

from tests.conftest import Gateway
from tests.test_cli import _env, privgate

COUNT_SQL = "SELECT COUNT(*) AS n FROM visits"


def run(gw: Gateway, *args: str) -> tuple[int, str, str]:
    result = privgate(*args, env=_env(gw))
    return result.returncode, result.stdout, result.stderr


def ok(gw: Gateway, *args: str) -> str:
    code, out, err = run(gw, *args)
    assert code == 0, err
    return out


def fails(gw: Gateway, *args: str) -> str:
    code, out, err = run(gw, *args)
    assert code == 1, (out, err)
    assert err.startswith("error: "), err
    return err


def datasets(gw: Gateway, name: str) -> set[str]:
    info = gw.services.principals.info(name)
    assert info is not None
    return set(info.datasets)


def cli_records(gw: Gateway) -> list[dict[str, Any]]:
    return [
        e["record"]
        for e in gw.services.audit.export()
        if e["record"]["decision"] == "admin" and e["record"]["actor"] == "cli"
    ]


def test_principal_commands(gateway: Gateway) -> None:
    out = ok(gateway, "principal", "create", "carol", "--role", "analyst", "--dataset", "clinic")
    assert "carol" in out
    info = gateway.services.principals.info("carol")
    assert info is not None and info.datasets == frozenset({"clinic"}) and not info.disabled
    listing = ok(gateway, "principal", "list").splitlines()
    assert listing[0].split() == ["NAME", "ROLE", "STATUS", "DATASETS"]
    assert ["carol", "analyst", "enabled", "clinic"] in [line.split() for line in listing]

    assert "already exists" in fails(gateway, "principal", "create", "carol")
    assert "nosuch" in fails(gateway, "principal", "create", "dave", "--dataset", "nosuch")
    assert "root" in fails(gateway, "principal", "create", "dave", "--role", "root")
    assert "invalid principal name" in fails(gateway, "principal", "create", "a b")
    assert gateway.services.principals.info("dave") is None

    ok(gateway, "principal", "create", "erin")
    assert datasets(gateway, "erin") == set()
    assert "clinic" in ok(gateway, "principal", "grant", "erin", "--dataset", "clinic")
    assert datasets(gateway, "erin") == {"clinic"}
    assert "nosuch" in fails(gateway, "principal", "grant", "erin", "--dataset", "nosuch")
    assert "ghost" in fails(gateway, "principal", "grant", "ghost", "--dataset", "clinic")

    _, key = gateway.services.principals.create_key("erin")
    assert gateway.services.principals.authenticate(key) is not None
    ok(gateway, "principal", "disable", "erin")
    assert gateway.services.principals.authenticate(key) is None
    assert ["erin", "analyst", "disabled", "clinic"] in [
        line.split() for line in ok(gateway, "principal", "list").splitlines()
    ]
    ok(gateway, "principal", "enable", "erin")
    assert gateway.services.principals.authenticate(key) is not None
    assert "ghost" in fails(gateway, "principal", "disable", "ghost")

    actions = [(r["action"], r["target"]) for r in cli_records(gateway)]
    assert actions == [
        ("principal.create", "carol"),
        ("principal.create", "erin"),
        ("principal.update", "erin"),
        ("principal.update", "erin"),
        ("principal.update", "erin"),
    ]
    assert all(r["door"] == "cli" and r["code"] == "ok" for r in cli_records(gateway))


def test_grant_reaches_the_running_gateway(gateway: Gateway) -> None:
    ok(gateway, "principal", "create", "frank")
    key = ok(gateway, "key", "create", "--principal", "frank").strip()
    import httpx

    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}) as c:
        r = c.post("/v1/query", json={"sql": COUNT_SQL})
        assert r.json()["error"]["code"] == "catalog.unknown_table"
        ok(gateway, "principal", "grant", "frank", "--dataset", "clinic")
        assert c.post("/v1/query", json={"sql": COUNT_SQL}).status_code == 200


def test_key_commands(gateway: Gateway) -> None:
    ok(gateway, "principal", "create", "gina", "--dataset", "clinic")
    key = ok(gateway, "key", "create", "--principal", "gina").strip()
    _, key_id, secret = key.split("_", 2)  # the secret is base64url and may itself hold "_"
    listing = ok(gateway, "key", "list", "--principal", "gina")
    assert key_id in listing and "active" in listing
    assert key not in listing and secret not in listing
    assert "ghost" in fails(gateway, "key", "list", "--principal", "ghost")

    assert "gina" in ok(gateway, "key", "revoke", key_id)
    assert gateway.services.principals.authenticate(key) is None
    assert "revoked" in ok(gateway, "key", "list", "--principal", "gina")
    assert key_id in fails(gateway, "key", "revoke", key_id)
    fails(gateway, "key", "revoke", "00000000")
    (revoke,) = [r for r in cli_records(gateway) if r["action"] == "key.revoke"]
    assert (revoke["target"], revoke["key_id"]) == ("gina", key_id)
    assert key not in str(list(gateway.services.audit.export()))


def test_bad_amounts_are_refused_before_any_change(gateway: Gateway) -> None:
    for bad in ("-1", "abc", "1/3", "nan"):
        err = fails(gateway, "budget", "set", "analyst", "clinic", "--epsilon", bad, "--delta", "0")
        assert "--epsilon" in err
    assert "--delta" in fails(
        gateway, "budget", "top-up", "analyst", "clinic", "--epsilon", "1", "--delta", "x"
    )


def test_budget_commands(gateway: Gateway) -> None:
    ok(gateway, "principal", "create", "hank", "--dataset", "clinic")
    shown = ok(gateway, "budget", "show", "--principal", "hank").splitlines()
    assert shown[0].split()[:3] == ["PRINCIPAL", "DATASET", "EPS_LIMIT"]
    assert shown[1].split()[:4] == ["hank", "clinic", "100000", "0"]

    out = ok(gateway, "budget", "set", "hank", "clinic", "--epsilon", "2", "--delta", "1e-5")
    assert "epsilon limit 2," in out and "delta limit 0.00001," in out
    for _ in range(3):
        out = ok(gateway, "budget", "top-up", "hank", "clinic", "--epsilon", "0.1")
    assert "epsilon limit 2.3," in out
    out = ok(gateway, "budget", "reset", "hank", "clinic")
    assert "spent 0," in out and "epsilon limit 2.3," in out
    history = ok(gateway, "budget", "history", "hank", "clinic").splitlines()
    assert history[0].split()[:3] == ["ID", "TS", "KIND"] and len(history) >= 6
    assert all("cli" in line.split() for line in history[1:])
    assert len(ok(gateway, "budget", "history", "hank", "clinic", "--limit", "2").splitlines()) == 3

    assert "nosuch" in fails(gateway, "budget", "reset", "hank", "nosuch")
    assert "ghost" in fails(gateway, "budget", "history", "ghost", "clinic")
    fails(gateway, "budget", "set", "hank", "clinic", "--epsilon", "1", "--delta", "1")
    fails(gateway, "budget", "top-up", "hank", "clinic")

    actions = [r["action"] for r in cli_records(gateway) if r["target"] == "hank"]
    assert actions == [
        "principal.create",
        "budget.set_limit",
        "budget.top_up",
        "budget.top_up",
        "budget.top_up",
        "budget.reset",
    ]
    with gateway.client("admin") as c:
        row = c.get("/v1/admin/budgets", params={"principal": "hank"}).json()["budgets"][0]
    assert (row["epsilon_limit"], row["delta_limit"]) == ("2.3", "0.00001")
