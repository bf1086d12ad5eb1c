// privgate admin console: plain JavaScript over the JSON admin API (docs/console.md).
//
// The admin key lives in sessionStorage only and goes out as `Authorization: Bearer`; no cookie is
// ever set, so there is nothing for another site to ride on. Every value from the API reaches the
// page through textContent or an SVG attribute, never as markup: audit records hold SQL that
// analysts wrote.
"use strict";

(() => {
  const STORAGE_KEY = "privgate.adminKey";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const AUDIT_PAGE = 200;
  const CHART_PAGES = 20; // at most 20 × 1000 audit records per plot

  const $ = (id) => document.getElementById(id);
  const state = { section: "budgets", auditCursor: null, auditQuery: "" };

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // -- the API ----------------------------------------------------------------------------------

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Authorization: `Bearer ${sessionStorage.getItem(STORAGE_KEY) || ""}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new ApiError(response.status, error.code || `http.${response.status}`,
        error.message || response.statusText);
    }
    return data;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
    }
    const text = search.toString();
    return text ? `?${text}` : "";
  }

  // -- DOM helpers ------------------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    for (const child of children) node.append(child instanceof Node ? child : text(child));
    return node;
  }

  function svg(tag, attrs = {}, content) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (content !== undefined) node.textContent = content;
    return node;
  }

  function text(value) {
    return document.createTextNode(value === undefined || value === null ? "—" : String(value));
  }

  function button(label, attrs, onClick) {
    const node = el("button", { type: "button", ...attrs }, label);
    node.addEventListener("click", onClick);
    return node;
  }

  function fill(tableId, rows, empty) {
    const body = $(tableId).tBodies[0];
    body.replaceChildren();
    for (const cells of rows) body.append(el("tr", {}, ...cells.map((c) => el("td", {}, c))));
    if (rows.length === 0) {
      const columns = $(tableId).tHead.rows[0].cells.length;
      body.append(el("tr", { class: "empty" }, el("td", { colspan: String(columns) }, empty)));
    }
  }

  function when(iso) {
    return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace(/(\+00:00|Z)$/, "") : "—";
  }

  function say(message, kind = "info") {
    const node = $("message");
    node.textContent = message;
    node.className = kind;
    node.hidden = false;
  }

  function failed(error) {
    if (error instanceof ApiError && error.status === 403) {
      logOut("admins only: this key does not belong to an admin");
    } else if (error instanceof ApiError && error.status === 401) {
      logOut("the key is invalid, expired or revoked: log in again");
    } else {
      say(error instanceof ApiError ? `${error.code}: ${error.message}` : String(error), "error");
    }
  }

  // -- login ------------------------------------------------------------------------------------

  async function logIn(key) {
    sessionStorage.setItem(STORAGE_KEY, key);
    try {
      await api("/v1/admin/principals"); // proves the key is an admin's before showing anything
    } catch (error) {
      failed(error);
      return;
    }
    $("login").hidden = true;
    $("login-error").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = false;
    show(state.section);
  }

  function logOut(reason) {
    sessionStorage.removeItem(STORAGE_KEY);
    $("app").hidden = true;
    $("logout").hidden = true;
    $("message").hidden = true;
    $("login").hidden = false;
    $("key").value = "";
    const problem = $("login-error");
    problem.textContent = reason || "";
    problem.hidden = !reason;
  }

  // -- sections ---------------------------------------------------------------------------------

  const loaders = {
    budgets: loadBudgets,
    audit: () => Promise.all([loadAudit(true), verify()]),
    quarantines: loadQuarantines,
    principals: loadPrincipals,
    policy: loadPolicy,
    governance: loadGovernance,
  };

  function show(section) {
    state.section = section;
    for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== section;
    for (const tab of document.querySelectorAll("nav button")) {
      if (tab.dataset.section === section) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    $("message").hidden = true;
    loaders[section]().catch(failed);
  }

  // budgets

  async function loadBudgets() {
    const { budgets } = await api("/v1/admin/budgets");
    fill("budget-table", budgets.map((b) => [
      b.dataset, b.scope, b.principal || "(all)", b.epsilon_limit, b.epsilon_spent,
      b.epsilon_remaining, b.delta_spent, b.delta_limit,
      button("Plot", { class: "plot" }, () => plot(b).catch(failed)),
    ]), "No budget accounts.");
    const first = budgets.find((b) => Number(b.epsilon_spent) > 0) || budgets[0];
    if (first) await plot(first);
  }

  async function auditRecords(filters) {
    const found = [];
    let cursor = null;
    for (let page = 0; page < CHART_PAGES; page += 1) {
      const answer = await api(`/v1/admin/audit${query({ ...filters, limit: 1000, before_seq: cursor })}`);
      found.push(...answer.records);
      cursor = answer.next_before_seq;
      if (cursor === null) break;
    }
    return found.reverse(); // oldest first
  }

  async function plot(account) {
    const perPrincipal = account.scope === "principal";
    const scope = { dataset: account.dataset, principal: perPrincipal ? account.principal : undefined };
    const [answers, admin] = await Promise.all([
      auditRecords({ ...scope, decision: "accepted" }),
      perPrincipal ? auditRecords({ dataset: account.dataset, decision: "admin" }) : [],
    ]);
    const events = [];
    for (const entry of answers) {
      const r = entry.record;
      if (r.code === "replayed" || r.epsilon === undefined) continue;
      events.push({ ts: Date.parse(entry.ts), seq: entry.seq, epsilon: Number(r.epsilon) });
    }
    for (const entry of admin) {
      const r = entry.record;
      if (r.action === "budget.reset" && r.target === account.principal) {
        events.push({ ts: Date.parse(entry.ts), seq: entry.seq, reset: true });
      }
    }
    events.sort((a, b) => a.seq - b.seq);
    const who = perPrincipal ? account.principal : "all principals";
    $("budget-caption").textContent =
      `ε spent over time: ${who} on ${account.dataset} (limit ${account.epsilon_limit}, spent ${account.epsilon_spent})`;
    drawChart($("budget-chart"), events, Number(account.epsilon_limit));
  }

  function drawChart(container, events, limit) {
    const width = 720;
    const height = 260;
    const pad = { left: 64, right: 16, top: 28, bottom: 40 };
    const chart = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart",
      "aria-label": "Cumulative epsilon spent over time",
    });
    container.replaceChildren(chart);
    const points = [];
    let total = 0;
    for (const e of events) {
      total = e.reset ? 0 : total + e.epsilon;
      points.push({ ...e, total });
    }
    const spends = points.filter((p) => !p.reset);
    if (spends.length === 0) {
      chart.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" },
        "No ε spent yet."));
      return;
    }
    const maxTotal = Math.max(...points.map((p) => p.total));
    // Show the limit when it is on the scale of the spending; a far-off limit would flatten the line.
    const showLimit = Number.isFinite(limit) && limit > 0 && limit <= maxTotal * 4;
    const top = Math.max(showLimit ? limit : 0, maxTotal) * 1.05 || 1;
    let t0 = points[0].ts;
    let t1 = points[points.length - 1].ts;
    if (t1 - t0 < 1000) {
      t0 -= 30000;
      t1 += 30000;
    }
    const x = (t) => pad.left + ((t - t0) / (t1 - t0)) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);

    const axis = svg("g", { class: "axis" });
    axis.append(svg("line", { x1: pad.left, y1: y(0), x2: width - pad.right, y2: y(0) }));
    axis.append(svg("line", { x1: pad.left, y1: pad.top, x2: pad.left, y2: y(0) }));
    for (const v of [0, top / 2, top]) {
      axis.append(svg("line", { x1: pad.left - 4, y1: y(v), x2: pad.left, y2: y(v) }));
      axis.append(svg("text", { x: pad.left - 8, y: y(v) + 4, "text-anchor": "end" }, formatNumber(v)));
    }
    for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
      axis.append(svg("text", { x: x(t), y: height - pad.bottom + 18, "text-anchor": anchor },
        when(new Date(t).toISOString())));
    }
    axis.append(svg("text", { x: pad.left, y: 14, "text-anchor": "middle" }, "ε"));
    chart.append(axis);

    if (showLimit) {
      chart.append(svg("line", { x1: pad.left, y1: y(limit), x2: width - pad.right, y2: y(limit), class: "limit" }));
      chart.append(svg("text", { x: width - pad.right, y: y(limit) - 4, "text-anchor": "end", class: "limit-label" },
        `limit ${formatNumber(limit)}`));
    }
    // A step line: the sum jumps at each charge and holds until the next.
    const path = [];
    let previous = 0;
    path.push(`${x(points[0].ts)},${y(0)}`);
    for (const p of points) {
      path.push(`${x(p.ts)},${y(previous)}`, `${x(p.ts)},${y(p.total)}`);
      previous = p.total;
    }
    path.push(`${width - pad.right},${y(previous)}`);
    chart.append(svg("polyline", { points: path.join(" "), class: "spent" }));
    const marks = svg("g", { class: "points" });
    for (const p of points) {
      if (p.reset) {
        chart.append(svg("line", { x1: x(p.ts), y1: pad.top, x2: x(p.ts), y2: y(0), class: "reset" }));
        continue;
      }
      const dot = svg("circle", {
        cx: x(p.ts), cy: y(p.total), r: 3.5, class: "point",
        "data-seq": p.seq, "data-epsilon": p.epsilon, "data-total": p.total,
      });
      dot.append(svg("title", {}, `${when(new Date(p.ts).toISOString())}: +${formatNumber(p.epsilon)}, total ${formatNumber(p.total)} (seq ${p.seq})`));
      marks.append(dot);
    }
    chart.append(marks);
  }

  function formatNumber(v) {
    return Number(v.toPrecision(4)).toString();
  }

  // audit

  function auditFilters() {
    const form = $("audit-filters");
    const values = {};
    for (const name of ["principal", "dataset", "decision", "code", "since", "until"]) {
      values[name] = form.elements[name].value.trim();
    }
    return values;
  }

  async function loadAudit(fresh) {
    if (fresh) {
      state.auditCursor = null;
      state.auditQuery = query({ ...auditFilters(), limit: AUDIT_PAGE });
      $("audit-table").tBodies[0].replaceChildren();
    }
    const cursor = state.auditCursor === null ? "" : `&before_seq=${state.auditCursor}`;
    const answer = await api(`/v1/admin/audit${state.auditQuery}${cursor}`);
    const body = $("audit-table").tBodies[0];
    for (const entry of answer.records) {
      const r = entry.record || {};
      const seq = button(String(entry.seq), { class: "link" }, () => {
        $("audit-detail").textContent = JSON.stringify(entry, null, 2);
      });
      const what = r.decision === "admin"
        ? `${r.action || ""} ${r.target || ""}`.trim()
        : (r.sql || r.endpoint || r.rule || "");
      const row = el("tr", { "data-seq": String(entry.seq), "data-decision": r.decision || "" },
        ...[seq, when(entry.ts), r.decision, r.code, r.principal || r.actor, r.dataset, r.epsilon, what]
          .map((c) => el("td", {}, c === "" ? "—" : c)));
      body.append(row);
    }
    if (body.rows.length === 0) {
      body.append(el("tr", { class: "empty" }, el("td", { colspan: "8" }, "No matching records.")));
    }
    state.auditCursor = answer.next_before_seq;
    $("audit-more").hidden = state.auditCursor === null;
  }

  async function verify() {
    const node = $("verify-status");
    node.textContent = "Verifying the chain…";
    node.className = "status";
    const verdict = await api("/v1/admin/audit/verify");
    node.textContent = verdict.ok
      ? `Chain verified: ${verdict.checked} records intact.`
      : `Chain BROKEN after ${verdict.checked} records (first bad seq ${verdict.first_bad_seq ?? "—"}): ${verdict.reason}`;
    node.className = verdict.ok ? "status ok" : "status bad";
  }

  // quarantines

  async function loadQuarantines() {
    const { principals } = await api("/v1/admin/principals");
    fill("quarantine-table", principals.filter((p) => p.quarantined).map((p) => [
      p.name, when(p.quarantined_at), p.quarantine_reason,
      button("Release", { class: "release" }, () => release(p.name).catch(failed)),
    ]), "Nobody is quarantined.");
  }

  async function release(name) {
    await api(`/v1/admin/principals/${encodeURIComponent(name)}/release`, { method: "POST" });
    await loadQuarantines();
    say(`${name} released.`);
  }

  // principals and keys

  async function loadPrincipals() {
    const { principals } = await api("/v1/admin/principals");
    fill("principal-table", principals.map((p) => [
      p.name, p.role, p.datasets.join(", ") || "—", p.disabled ? "yes" : "no",
      p.quarantined ? `yes (${p.quarantine_reason || "?"})` : "no", when(p.created_at),
      button("Keys", { class: "keys", "data-principal": p.name }, () => loadKeys(p.name).catch(failed)),
    ]), "No principals.");
  }

  async function loadKeys(name) {
    const { keys } = await api(`/v1/admin/principals/${encodeURIComponent(name)}/keys`);
    $("keys-title").textContent = `Keys of ${name}`;
    $("keys").hidden = false;
    $("keys").dataset.principal = name;
    fill("key-table", keys.map((k) => [
      k.key_id, k.status, when(k.created_at), when(k.expires_at), when(k.last_used_at),
      when(k.revoked_at),
      k.status === "active" ? revokeButton(name, k.key_id) : "",
    ]), "No keys.");
  }

  function revokeButton(name, keyId) {
    // Two clicks: the first arms the button, the second revokes. No dialog to click away.
    const node = button("Revoke", { class: "revoke", "data-key-id": keyId }, async () => {
      if (node.dataset.armed !== "yes") {
        node.dataset.armed = "yes";
        node.textContent = "Confirm revoke";
        node.classList.add("danger");
        return;
      }
      try {
        node.disabled = true;
        await api(`/v1/admin/keys/${encodeURIComponent(keyId)}`, { method: "DELETE" });
        await loadKeys(name);
        say(`Key ${keyId} of ${name} revoked.`);
      } catch (error) {
        failed(error);
      }
    });
    return node;
  }

  // policy and governance

  async function loadPolicy() {
    const report = await api("/v1/admin/governance");
    $("policy-current").textContent = report.policy_version;
    fill("policy-table", report.policy_versions.map((v) => [
      v.version === report.policy_version ? `${v.version} (serving)` : v.version,
      when(v.first_seen), when(v.last_seen), v.records,
    ]), "No audit record names a policy version yet.");
  }

  async function loadGovernance() {
    const report = await api("/v1/admin/governance");
    const r = report.retention;
    const figures = [
      ["Generated", when(report.generated_at)],
      ["Policy version", report.policy_version],
      ["Audit records", r.records],
      ["Oldest record", r.oldest_seq === null ? "—" : `seq ${r.oldest_seq}, ${when(r.oldest_ts)}`],
      ["Newest record", r.newest_seq === null ? "—" : `seq ${r.newest_seq}, ${when(r.newest_ts)}`],
      ["Refusals", report.violations.reduce((n, v) => n + v.count, 0)],
      ["Quarantined", report.quarantined.length],
      ["Budget accounts", report.budgets.length],
    ];
    $("governance-figures").replaceChildren(...figures.flatMap(([name, value]) => [
      el("dt", {}, name), el("dd", {}, value),
    ]));
    fill("access-table", report.access.map((a) => [
      a.principal, a.dataset, a.accepted, a.replayed, a.rejected, a.explained,
      a.epsilon_charged, a.delta_charged, when(a.last_ts),
    ]), "No queries yet.");
    fill("violation-table", report.violations.map((v) => [
      v.code, v.count, Object.entries(v.principals).map(([p, n]) => `${p}: ${n}`).join(", "),
    ]), "No refusals.");
    fill("alert-table", report.alerts.map((a) => [a.rule, a.principal, a.count]), "No alerts.");
    fill("admin-action-table", Object.entries(report.admin_actions), "No admin actions.");
  }

  // -- wiring -----------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key").value.trim();
      if (key) logIn(key);
    });
    $("logout").addEventListener("click", () => logOut(""));
    for (const tab of document.querySelectorAll("nav button")) {
      tab.addEventListener("click", () => show(tab.dataset.section));
    }
    $("audit-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      loadAudit(true).catch(failed);
    });
    $("audit-filters").addEventListener("reset", () => {
      setTimeout(() => loadAudit(true).catch(failed), 0);
    });
    $("audit-more").addEventListener("click", () => loadAudit(false).catch(failed));
    $("verify").addEventListener("click", () => verify().catch(failed));
    const saved = sessionStorage.getItem(STORAGE_KEY);
    if (saved) logIn(saved);
  });
})();
