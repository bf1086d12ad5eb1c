"""The admin console (/console): its headers and refusals over HTTP, then the page end to end in
headless chromium (Debian's /usr/bin/chromium driven by Playwright; no browser is downloaded).

The browser tests skip where chromium or Playwright is missing, except in CI (CI=true), where that
fails them. Screenshots go to $PRIVGATE_ARTIFACTS_DIR/console, by default test-artifacts/console
at the repository root (ignored by git).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, in_ci

CHROMIUM = Path("/usr/bin/chromium")
CONSOLE_FILES = ("/console", "/console/console.js", "/console/console.css")
# Every admin route the console calls, as (method, path).
CONSOLE_API = (
    ("GET", "/v1/admin/principals"),
    ("GET", "/v1/admin/principals/analyst/keys"),
    ("GET", "/v1/admin/budgets"),
    ("GET", "/v1/admin/audit?decision=accepted&limit=10"),
    ("GET", "/v1/admin/audit/verify"),
    ("GET", "/v1/admin/governance"),
    ("POST", "/v1/admin/principals/analyst/release"),
    ("DELETE", "/v1/admin/keys/nosuchkey"),
)
COUNT_SQL = "SELECT department, COUNT(*) AS n FROM visits GROUP BY department"


def _query(gateway: Gateway, sql: str, epsilon: float | None = None) -> httpx.Response:
    body: dict[str, Any] = {"sql": sql}
    if epsilon is not None:
        body["epsilon"] = epsilon
    with gateway.client("analyst") as client:
        return client.post("/v1/query", json=body)


# -- over HTTP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONSOLE_FILES)
def test_console_files_are_public_and_locked_down(gateway: Gateway, path: str) -> None:
    response = httpx.get(gateway.url + path)
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in response.headers
    expected = {"/console": "text/html", "/console/console.js": "text/javascript"}
    assert response.headers["content-type"].startswith(expected.get(path, "text/css"))


def test_console_page_has_no_inline_script_or_style() -> None:
    html = (files("gateway") / "console_static" / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S)
    assert scripts == [""], "every script is an external file"
    assert re.search(r"<script\b(?![^>]*\bsrc=)", html) is None
    assert re.search(r"\son[a-z]+=", html) is None, "no inline event handlers"
    assert re.search(r"\sstyle=", html) is None and "<style" not in html
    assert "http://" not in html and "https://" not in html, "nothing from another origin"


def test_console_script_never_writes_markup() -> None:
    # Audit records hold analysts' SQL: the script must only ever set text.
    js = (files("gateway") / "console_static" / "console.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js
    assert "localStorage" not in js and "document.cookie" not in js


@pytest.mark.parametrize("path", CONSOLE_FILES)
def test_console_files_take_an_admin_key(gateway: Gateway, path: str) -> None:
    response = httpx.get(gateway.url + path, headers=_bearer(gateway.keys["admin"]))
    assert response.status_code == 200


@pytest.mark.parametrize("path", CONSOLE_FILES)
def test_console_files_refuse_an_analyst_key(gateway: Gateway, path: str) -> None:
    response = httpx.get(gateway.url + path, headers=_bearer(gateway.keys["analyst"]))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "auth.forbidden"
    bad = httpx.get(gateway.url + path, headers=_bearer("pg_nosuch_key"))
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "auth.invalid_key"


@pytest.mark.parametrize(("method", "path"), CONSOLE_API)
def test_console_api_calls_refuse_an_analyst_key(gateway: Gateway, method: str, path: str) -> None:
    with gateway.client("analyst") as client:
        response = client.request(method, path)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "auth.forbidden"


def test_console_static_files_are_package_data() -> None:
    import tomllib

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text())
    assert "console_static/*" in data["tool"]["setuptools"]["package-data"]["gateway"]
    static = files("gateway") / "console_static"
    assert {p.name for p in static.iterdir()} >= {"index.html", "console.js", "console.css"}


# -- in the browser -------------------------------------------------------------------------------


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        problem = f"Playwright is not installed (pip install -e '.[dev]'): {exc}"
    if problem is None and not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    if problem is not None:
        if in_ci():
            pytest.fail(f"CI needs the console browser tests: {problem}")
        pytest.skip(f"console browser tests skipped: {problem}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    root = os.environ.get("PRIVGATE_ARTIFACTS_DIR")
    base = Path(root) if root else Path(__file__).resolve().parent.parent / "test-artifacts"
    path = base / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Page:
    """A browser tab on the console that records what the browser complained about."""

    def __init__(self, browser: Any, gateway: Gateway, artifacts: Path, **context: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, **context)
        self.context.set_default_timeout(15_000)
        self.page = self.context.new_page()
        self.gateway, self.artifacts = gateway, artifacts
        self.problems: list[str] = []
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        self.page.on(
            "console",
            lambda msg: (
                self.problems.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error" and "status of 40" not in msg.text
                else None
            ),
        )

    def open(self) -> Any:
        return self.page.goto(self.gateway.url + "/console")

    def log_in(self, key: str) -> None:
        self.page.fill("#key", key)
        self.page.click("#login-form button[type=submit]")

    def section(self, name: str) -> None:
        self.page.click(f"nav button[data-section={name}]")
        self.page.wait_for_selector(f"#{name}:not([hidden])")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.artifacts / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser: Any, gateway: Gateway, artifacts: Path) -> Iterator[Page]:
    opened = Page(browser, gateway, artifacts)
    try:
        yield opened
        # A CSP violation or script error shows up here, and fails the test.
        assert opened.problems == []
    finally:
        opened.close()


def _rows(tab: Page, table: str) -> Any:
    return tab.page.locator(f"#{table} tbody tr:not(.empty)")


def test_admin_sees_budgets_audit_and_governance(tab: Page, gateway: Gateway) -> None:
    for epsilon in (0.5, 1.0, 0.25):
        assert _query(gateway, COUNT_SQL, epsilon).status_code == 200
    assert _query(gateway, "SELECT patient_id FROM visits").status_code == 400  # one refusal
    assert tab.open().status == 200
    tab.log_in(gateway.keys["admin"])
    tab.page.wait_for_selector("#app:not([hidden])")

    # Budgets: plot analyst's account on clinic; one point per fresh answer in the audit log.
    row = _rows(tab, "budget-table").filter(has_text="analyst").filter(has_text="principal")
    row.locator("button.plot").click()
    tab.page.wait_for_function(
        "() => document.querySelector('#budget-caption').textContent.includes('analyst on clinic')"
    )
    with gateway.client("admin") as admin:
        records = admin.get(
            "/v1/admin/audit",
            params={"principal": "analyst", "dataset": "clinic", "decision": "accepted"},
        ).json()["records"]
    charged = [r for r in records if r["record"]["code"] == "ok"]
    assert len(charged) >= 3
    points = tab.page.locator("#budget-chart svg circle.point")
    assert points.count() == len(charged)
    assert tab.page.locator("#budget-chart svg polyline.spent").count() == 1
    # The last point is what the ledger says the account spent (since any reset).
    with gateway.client("admin") as admin:
        (account,) = admin.get(
            "/v1/admin/budgets", params={"principal": "analyst", "dataset": "clinic"}
        ).json()["budgets"]
    last = float(points.last.get_attribute("data-total"))
    assert last == pytest.approx(float(account["epsilon_spent"]))
    tab.shot("budgets")

    # Audit: rows, the chain verdict, then a filter.
    tab.section("audit")
    tab.page.wait_for_selector("#audit-table tbody tr[data-seq]")
    tab.page.wait_for_selector("#verify-status.ok")
    assert "Chain verified" in tab.page.inner_text("#verify-status")
    assert _rows(tab, "audit-table").count() >= 4
    tab.shot("audit")
    tab.page.select_option("#audit-filters select[name=decision]", "rejected")
    tab.page.fill("#audit-filters input[name=principal]", "analyst")
    tab.page.click("#audit-filters button[type=submit]")
    tab.page.wait_for_function(
        "() => { const rows = [...document.querySelectorAll('#audit-table tbody tr[data-seq]')];"
        " return rows.length > 0 && rows.every(r => r.dataset.decision === 'rejected'); }"
    )
    rejected = tab.page.locator("#audit-table tbody tr[data-seq]")
    assert rejected.count() >= 1
    assert "policy." in rejected.first.inner_text()
    rejected.first.locator("button.link").click()
    assert '"decision": "rejected"' in tab.page.inner_text("#audit-detail")
    tab.shot("audit-filtered")

    # Policy versions and governance figures.
    tab.section("policy")
    version = gateway.services.queries.policy_version
    tab.page.wait_for_function(
        f"() => document.querySelector('#policy-current').textContent === {version!r}"
    )
    assert _rows(tab, "policy-table").filter(has_text=version).count() == 1
    tab.section("governance")
    tab.page.wait_for_selector("#access-table tbody tr:not(.empty)")
    assert "Audit records" in tab.page.inner_text("#governance-figures")
    assert _rows(tab, "violation-table").filter(has_text="policy.").count() >= 1
    tab.shot("governance")

    # The key is in this tab's session storage only: no cookie, nothing in local storage.
    assert tab.context.cookies() == []
    stored = tab.page.evaluate("[sessionStorage.length, localStorage.length]")
    assert stored == [1, 0]


def test_admin_revokes_a_key_in_the_console(tab: Page, gateway: Gateway) -> None:
    key_id, key = gateway.services.principals.create_key("analyst")
    assert httpx.get(gateway.url + "/v1/budget", headers=_bearer(key)).status_code == 200
    tab.open()
    tab.log_in(gateway.keys["admin"])
    tab.page.wait_for_selector("#app:not([hidden])")
    tab.section("principals")
    tab.page.click("#principal-table button.keys[data-principal=analyst]")
    revoke = tab.page.locator(f"#key-table button.revoke[data-key-id='{key_id}']")
    revoke.click()
    assert revoke.inner_text() == "Confirm revoke"  # the first click only arms it
    tab.shot("keys-confirm")
    revoke.click()
    tab.page.wait_for_function(
        "() => document.querySelector('#message').textContent.includes('revoked')"
    )
    row = _rows(tab, "key-table").filter(has_text=key_id)
    assert "revoked" in row.inner_text()
    tab.shot("keys-revoked")

    with gateway.client("admin") as admin:
        keys = admin.get("/v1/admin/principals/analyst/keys").json()["keys"]
    assert {k["key_id"]: k["status"] for k in keys}[key_id] == "revoked"
    assert httpx.get(gateway.url + "/v1/budget", headers=_bearer(key)).status_code == 401
    # The fixture's own analyst key still works: only the chosen key went.
    assert httpx.get(
        gateway.url + "/v1/budget", headers=_bearer(gateway.keys["analyst"])
    ).is_success


def test_admin_releases_a_quarantine_in_the_console(tab: Page, gateway: Gateway) -> None:
    with gateway.client("admin") as admin:
        made = admin.post("/v1/admin/principals", json={"name": "mallory", "datasets": ["clinic"]})
        assert made.status_code == 201
    assert gateway.services.principals.quarantine("mallory", reason="anomaly.differencing")
    tab.open()
    tab.log_in(gateway.keys["admin"])
    tab.page.wait_for_selector("#app:not([hidden])")
    tab.section("quarantines")
    row = _rows(tab, "quarantine-table").filter(has_text="mallory")
    assert "anomaly.differencing" in row.inner_text()
    tab.shot("quarantines")
    row.locator("button.release").click()
    tab.page.wait_for_function(
        "() => document.querySelector('#message').textContent.includes('released')"
    )
    assert _rows(tab, "quarantine-table").count() == 0
    with gateway.client("admin") as admin:
        assert admin.get("/v1/admin/principals/mallory").json()["quarantined"] is False


def test_analyst_key_gets_admins_only(tab: Page, gateway: Gateway) -> None:
    tab.open()
    tab.log_in(gateway.keys["analyst"])
    tab.page.wait_for_selector("#login-error:not([hidden])")
    assert "admins only" in tab.page.inner_text("#login-error")
    assert tab.page.is_hidden("#app")
    assert tab.page.evaluate("sessionStorage.length") == 0  # the refused key is not kept
    tab.shot("analyst-refused")


def test_analyst_key_cannot_load_the_console(
    browser: Any, gateway: Gateway, artifacts: Path
) -> None:
    opened = Page(browser, gateway, artifacts, extra_http_headers=_bearer(gateway.keys["analyst"]))
    try:
        response = opened.open()
        assert response.status == 403
        assert "auth.forbidden" in opened.page.content()
        script = opened.page.request.get(gateway.url + "/console/console.js")
        assert script.status == 403
    finally:
        opened.close()


def test_budget_plot_starts_again_after_a_reset(tab: Page, gateway: Gateway) -> None:
    with gateway.client("admin") as admin:
        assert admin.post("/v1/admin/budgets/analyst/clinic/reset").status_code == 200
    assert _query(gateway, COUNT_SQL, 0.125).status_code == 200
    tab.open()
    tab.log_in(gateway.keys["admin"])
    tab.page.wait_for_selector("#app:not([hidden])")
    row = _rows(tab, "budget-table").filter(has_text="analyst").filter(has_text="principal")
    assert "0.125" in row.inner_text()  # spent since the reset
    row.locator("button.plot").click()
    tab.page.wait_for_selector("#budget-chart svg line.reset", state="attached")
    assert tab.page.locator("#budget-chart svg line.reset").count() == 1
    last = tab.page.locator("#budget-chart svg circle.point").last
    assert float(last.get_attribute("data-total")) == pytest.approx(0.125)
    tab.shot("budgets-after-reset")
