"""The CLI as a user runs it: a subprocess per command, real files, real exit codes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Gateway


def privgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def test_policy_validate_ok() -> None:
    result = privgate("policy", "validate", "gateway/demo_policy.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_policy_validate_names_the_bad_field(tmp_path: Path) -> None:
    text = Path("gateway/demo_policy.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        text.replace("cost: {class: measure, bounds: [0, 5000]}", "cost: {class: measure}")
    )
    result = privgate("policy", "validate", str(bad))
    assert result.returncode == 1
    assert "datasets.clinic.tables.visits.columns.cost" in result.stderr
    assert "needs bounds" in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "datasets: {c: {privacy_unit: id, tables: {t: {columns: {x: dimension}}}}}",
            "privacy unit",
        ),
        ("datasets: [1, 2]", "datasets"),
        ("datasets:\n  c: {privacy_unit: id, tables: {}, extra_field: 1}", "extra_field"),
        ("{unclosed", "not valid YAML"),
    ],
)
def test_policy_validate_rejects(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    result = privgate("policy", "validate", str(path))
    assert result.returncode == 1
    assert expected in result.stderr


def _env(gw: Gateway) -> dict[str, str]:
    s = gw.services.settings
    return {
        "PRIVGATE_DATA_DIR": str(s.data_dir),
        "PRIVGATE_POLICY_PATH": str(s.resolved_policy_path),
        "PRIVGATE_WAREHOUSE_PATH": str(s.resolved_warehouse_path),
    }


def test_key_create_prints_the_key_alone(gateway: Gateway) -> None:
    result = privgate("key", "create", "--principal", "analyst", env=_env(gateway))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgk_")
    assert gateway.services.principals.authenticate(lines[0]) is not None
    unknown = privgate("key", "create", "--principal", "nobody", env=_env(gateway))
    assert unknown.returncode == 1 and "nobody" in unknown.stderr


def test_audit_verify_names_the_tampered_row(gateway: Gateway, tmp_path: Path) -> None:
    with gateway.client() as c:
        for _ in range(3):
            c.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM visits"})
    env = _env(gateway)
    ok = privgate("audit", "verify", env=env)
    assert ok.returncode == 0, ok.stderr
    db = Path(env["PRIVGATE_DATA_DIR"]) / "control.db"
    con = sqlite3.connect(db)
    try:
        seq, record = con.execute(
            "SELECT seq, record FROM audit_log ORDER BY seq LIMIT 1 OFFSET 1"
        ).fetchone()
        con.execute(
            "UPDATE audit_log SET record = ? WHERE seq = ?",
            (record.replace('"decision":"', '"decision":"x'), seq),
        )
        con.commit()
        broken = privgate("audit", "verify", env=env)
        assert broken.returncode == 1
        assert f"seq {seq}" in broken.stderr
        con.execute("UPDATE audit_log SET record = ? WHERE seq = ?", (record, seq))
        con.commit()
        assert privgate("audit", "verify", env=env).returncode == 0
        con.execute("DELETE FROM audit_log WHERE seq = ?", (seq,))
        con.commit()
        deleted = privgate("audit", "verify", env=env)
        assert deleted.returncode == 1
        assert f"seq {seq}" in deleted.stderr
    finally:
        con.close()
