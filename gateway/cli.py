"""The ``privgate`` command line: serve, demo, policy, audit, principals, keys, budgets, governance.

The admin commands work on the control database directly (no running gateway needed) through the
same :class:`gateway.admin_api.AdminOps` as the admin API, so they validate and audit alike; their
actor in the audit log is ``cli``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.settings import Settings

if TYPE_CHECKING:
    from budgets.cost import PrivacyCost
    from gateway.admin_ops import AdminOps
    from gateway.audit import AuditFilter, AuditLog

# Tracebacks never show local variables: they may hold secrets and query text.
app = typer.Typer(
    help="privgate: a privacy-enforcing SQL gateway.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
policy_app = typer.Typer(help="Work with policy files.", no_args_is_help=True)
audit_app = typer.Typer(
    help="List, export, verify, checkpoint and purge the audit log.", no_args_is_help=True
)
key_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
principal_app = typer.Typer(help="Manage principals and their grants.", no_args_is_help=True)
budget_app = typer.Typer(help="Inspect and change privacy budgets.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
app.add_typer(key_app, name="key")
app.add_typer(principal_app, name="principal")
app.add_typer(budget_app, name="budget")
snapshot_app = typer.Typer(
    help="Bounded snapshots: contribution bounding done once per data version.",
    no_args_is_help=True,
)
app.add_typer(snapshot_app, name="snapshot")


def _settings() -> Settings:
    """The settings, or exit 2 with one line per problem (never the values: they hold secrets)."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        for e in exc.errors(include_input=False, include_url=False):
            field = ".".join(str(p) for p in e["loc"])
            where = f"PRIVGATE_{field.upper()}: " if field else ""
            _err(f"error: invalid settings: {where}{e['msg']}")
        raise typer.Exit(2) from None


def _err(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def demo(
    patients: Annotated[
        int, typer.Option(help="Number of patients (visits are ~11 per patient).")
    ] = 100_000,
    force: Annotated[bool, typer.Option(help="Rebuild even if the warehouse exists.")] = False,
) -> None:
    """Build the demo clinic warehouse (seeded, with a progress bar)."""
    from gateway.demo import build_demo_warehouse

    settings = _settings()
    path = settings.resolved_warehouse_path
    if path.exists() and not force:
        _err(f"{path} exists; use --force to rebuild")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = build_demo_warehouse(path, patients=patients, progress=True)
    _err(f"built {summary.path}: {summary.patients} patients, {summary.visits} visits")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
    pg_port: Annotated[
        int | None,
        typer.Option(
            "--pg-port", help="PostgreSQL-wire port (default PRIVGATE_PG_PORT, 5433; 0: off)."
        ),
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Build the demo warehouse if missing and print fresh analyst and admin keys.",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="REST worker processes on one port (default PRIVGATE_WORKERS, 1).",
        ),
    ] = None,
) -> None:
    """Start the REST gateway and the PostgreSQL wire endpoint."""
    import uvicorn

    from gateway.composition import build_services
    from gateway.logs import configure_logging
    from gateway.rest import create_app
    from gateway.tls import TlsConfigError, rest_tls

    settings = _settings()
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    bind_host = host or settings.host
    bind_port = port or settings.port
    try:
        https = rest_tls(settings, bind_host)
    except TlsConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    scheme = "https" if https is not None else "http"
    if demo:
        from gateway.demo import ensure_demo_warehouse

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_demo_warehouse(settings.resolved_warehouse_path)
    services = build_services(settings)
    wire_port = settings.pg_port if pg_port is None else pg_port
    wire = None
    if wire_port:
        from gateway.composition import build_wire
        from gateway.wire.shadow import ShadowError

        try:
            wire = build_wire(services, port=wire_port)
        except TlsConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            services.close()
            raise typer.Exit(1) from exc
        except (ShadowError, OSError) as exc:
            typer.echo(f"error: the PostgreSQL wire endpoint cannot start: {exc}", err=True)
            typer.echo(
                "  Set PRIVGATE_WIRE_SHADOW_DSN to a PostgreSQL role that may create databases, "
                "or start with --pg-port 0 for REST only.",
                err=True,
            )
            services.close()
            raise typer.Exit(1) from exc
    if demo:
        lines = ["", "privgate demo is starting. Keys (shown once; stored hashed):"]
        for name in ("analyst", "admin"):
            if services.principals.get(name) is not None:
                _, key = services.principals.create_key(name)
                lines.append(f"  {name:8s} {key}")
        curl = "curl -s"
        if https is not None and https.self_signed:
            curl += f" --cacert {https.cert}"
        # A wildcard bind is reached at 127.0.0.1 here (a name the demo certificate holds).
        wildcard = ("0.0.0.0", "::", "[::]")  # noqa: S104 - compared with, not bound to
        shown_host = "127.0.0.1" if bind_host in wildcard else bind_host
        lines += [
            "",
            "Try:",
            f"  {curl} {scheme}://{shown_host}:{bind_port}/v1/query "
            "-H 'Authorization: Bearer <analyst key>' \\",
            "    -H 'Content-Type: application/json' \\",
            '    -d \'{"sql": "SELECT department, COUNT(*) AS n, AVG(cost) AS avg_cost '
            "FROM visits GROUP BY department\"}'",
            f"  API docs: {scheme}://{shown_host}:{bind_port}/docs",
        ]
        if wire is not None:
            lines += [
                "",
                "PostgreSQL clients (psql, JDBC, BI tools): user = principal name, password = its key",
                f"  psql 'host={settings.pg_host} port={wire.server.port} user=analyst "
                "dbname=clinic sslmode=require' -c '\\dt'",
            ]
        lines.append("")
        typer.echo("\n".join(lines))
        sys.stdout.flush()
    # uvicorn's own logging config and access line stay off: the access line would carry query
    # strings; gateway.logs writes JSON lines with request ids instead.
    options: dict[str, Any] = {
        "host": bind_host,
        "port": bind_port,
        "log_config": None,
        "access_log": False,
        "log_level": settings.log_level.lower(),
        "ssl_certfile": None if https is None else str(https.cert),
        "ssl_keyfile": None if https is None else str(https.key),
    }
    processes = settings.workers if workers is None else workers
    try:
        if processes > 1:
            from gateway.workers import serve_workers

            serve_workers(services, workers=processes, uvicorn_options=options)
        else:
            uvicorn.run(create_app(services), **options)
    finally:
        services.close()


@policy_app.command("validate")
def policy_validate(file: Annotated[Path, typer.Argument(help="Policy YAML file.")]) -> None:
    """Validate a policy file; exit 1 naming each bad field."""
    from gateway.policy_loader import PolicyFileError, load_policy

    try:
        loaded = load_policy(file)
    except PolicyFileError as exc:
        _err(f"{file}: invalid policy")
        for problem in exc.problems:
            _err(f"  {problem}")
        raise typer.Exit(1) from None
    n_tables = sum(len(d.tables) for d in loaded.policy.datasets.values())
    typer.echo(
        f"{file}: ok ({len(loaded.policy.datasets)} dataset(s), {n_tables} table(s), version {loaded.version})"
    )


@policy_app.command("suggest")
def policy_suggest(
    warehouse: Annotated[
        str, typer.Option(help="A DuckDB file, duckdb:///PATH or postgresql://USER@HOST/DB.")
    ],
    dataset: Annotated[
        str | None, typer.Option(help="Dataset name (default: file stem or database).")
    ] = None,
    unit: Annotated[
        str | None, typer.Option(help="The privacy unit column (default: guessed).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the draft here (never overwrites).")
    ] = None,
) -> None:
    """Draft a policy from the warehouse schema: conservative, with a TODO on each guess.

    Reads column types and, per table, one aggregate query (row and distinct counts, min/max of
    numeric columns: drafted bounds come from the data and must be confirmed).
    """
    from gateway.policy_suggest import suggest

    if out is not None and out.exists():
        _err(f"error: {out} exists; choose another --out")
        raise typer.Exit(1)
    try:
        draft = suggest(warehouse, dataset=dataset, unit=unit)
    except (ValueError, OSError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    if out is None:
        typer.echo(draft, nl=False)
    else:
        out.write_text(draft)
        _err(f"{out}: draft written; confirm every TODO, then run: privgate policy validate {out}")


# -- audit ---------------------------------------------------------------------------------------

PrincipalFilter = Annotated[str | None, typer.Option(help="Only records of this principal.")]
DatasetFilter = Annotated[str | None, typer.Option(help="Only records on this dataset.")]
DecisionFilter = Annotated[
    str | None, typer.Option(help="Only this decision (accepted, rejected, explained, admin, …).")
]
CodeFilter = Annotated[str | None, typer.Option(help="Only this code (ok, budget.exhausted, …).")]
SinceFilter = Annotated[
    str | None, typer.Option(help="Only records at or after this ISO 8601 time (with a zone).")
]
UntilFilter = Annotated[
    str | None, typer.Option(help="Only records before this ISO 8601 time (with a zone).")
]


def _audit_log() -> AuditLog:
    from gateway.composition import build_control

    return build_control(_settings())[1]


@contextmanager
def _audit_errors() -> Iterator[None]:
    """Expected failures become one line on stderr and exit status 1."""
    from gateway.audit import AuditError

    try:
        yield
    except (AuditError, ValueError, OSError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None


def _audit_filter(
    principal: str | None,
    dataset: str | None,
    decision: str | None,
    code: str | None,
    since: str | None,
    until: str | None,
) -> AuditFilter:
    from gateway.audit import AuditFilter
    from gateway.audit_query import parse_time

    with _audit_errors():
        return AuditFilter(
            principal=principal,
            dataset=dataset,
            decision=decision,
            code=code,
            since=None if since is None else parse_time(since, "--since"),
            until=None if until is None else parse_time(until, "--until"),
        )


@audit_app.command("list")
def audit_list(
    principal: PrincipalFilter = None,
    dataset: DatasetFilter = None,
    decision: DecisionFilter = None,
    code: CodeFilter = None,
    since: SinceFilter = None,
    until: UntilFilter = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most N records.")] = 50,
    before_seq: Annotated[
        int | None, typer.Option(min=1, help="Only records older than this seq (next page).")
    ] = None,
) -> None:
    """List audit records, newest first; the next page's --before-seq goes to stderr."""
    filters = _audit_filter(principal, dataset, decision, code, since, until)
    with _audit_errors():
        page = _audit_log().page(filters, limit=limit, before_seq=before_seq)
    _table(
        ["SEQ", "TS", "PRINCIPAL", "DATASET", "DECISION", "CODE", "ID"],
        [
            (
                e["seq"],
                e["ts"],
                e["record"].get("principal") or e["record"].get("actor"),
                e["record"].get("dataset"),
                e["record"].get("decision"),
                e["record"].get("code"),
                e["id"],
            )
            for e in page.records
        ],
    )
    if page.next_before_seq is not None:
        _err(f"more: --before-seq {page.next_before_seq}")


@audit_app.command("export")
def audit_export(
    principal: PrincipalFilter = None,
    dataset: DatasetFilter = None,
    decision: DecisionFilter = None,
    code: CodeFilter = None,
    since: SinceFilter = None,
    until: UntilFilter = None,
) -> None:
    """Write the matching audit records to stdout as JSON lines, oldest first."""
    from gateway.audit import canonical_json

    filters = _audit_filter(principal, dataset, decision, code, since, until)
    with _audit_errors():
        for entry in _audit_log().export(filters):
            sys.stdout.write(canonical_json(entry) + "\n")
    sys.stdout.flush()


@snapshot_app.command("build")
def snapshot_build() -> None:
    """Build (or find) the bounded snapshot for the warehouse and policy; print it as JSON.

    A running gateway picks it up on its next check (PRIVGATE_SNAPSHOT_CHECK_INTERVAL_S) or
    through POST /v1/admin/snapshot/rebuild, which finds it ready.
    """
    import json as _json

    from gateway.composition import SnapshotsUnsupported, build_services

    settings = _settings().model_copy(update={"bounded_snapshots": False})
    services = build_services(settings)  # no snapshot at start: this command builds it
    try:
        info = services.refresh_snapshot(lambda message: _err(message))
    except SnapshotsUnsupported as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from exc
    finally:
        services.close()
    typer.echo(_json.dumps(info.as_json(), indent=2))


@audit_app.command("reveal")
def audit_reveal(
    audit_id: Annotated[str, typer.Argument(help="The record's audit id (from `audit list`).")],
) -> None:
    """Print the full SQL of one record kept in full-text mode (needs the encryption key).

    The reveal itself is audited (action `audit.reveal`), without the text.
    """
    from gateway.audit_crypt import SealError
    from gateway.composition import build_control

    settings = _settings()
    cipher = settings.sql_cipher()
    if cipher is None:
        _err("error: set PRIVGATE_AUDIT_ENCRYPTION_KEY (the key the record was sealed with)")
        raise typer.Exit(1)
    with _audit_errors():
        _, audit, _ = build_control(settings)
        entry = audit.get(audit_id)
    if entry is None:
        _err(f"error: no audit record {audit_id!r}")
        raise typer.Exit(1)
    record = entry["record"]
    sealed = record.get("sql_sealed")
    if not isinstance(sealed, dict):
        _err(f"error: record {audit_id} keeps redacted SQL only (written in redacted mode)")
        raise typer.Exit(1)
    try:
        text = cipher.open(sealed, query_id=str(record.get("query_id", "")))
    except SealError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    audit.append(
        {
            "decision": "admin",
            "action": "audit.reveal",
            "actor": "cli",
            "target": audit_id,
            "door": "cli",
            "code": "ok",
        }
    )
    typer.echo(text)


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Seal a checkpoint of the log now and print it as one JSON line (keep it elsewhere)."""
    from gateway.audit import canonical_json

    with _audit_errors():
        made = _audit_log().checkpoint()
    typer.echo(canonical_json(made.as_json()))


@audit_app.command("purge")
def audit_purge(
    before: Annotated[
        str | None, typer.Option(help="Purge records older than this ISO 8601 time (with a zone).")
    ] = None,
    apply_retention: Annotated[
        bool,
        typer.Option(
            "--apply-retention", help="Purge records older than PRIVGATE_AUDIT_RETENTION_DAYS."
        ),
    ] = False,
) -> None:
    """Delete old audit records up to the newest checkpoint before the cut; audited."""
    from datetime import UTC, datetime, timedelta

    from gateway.audit_query import parse_time

    settings = _settings()
    if (before is None) == (not apply_retention):
        _err("error: give exactly one of --before and --apply-retention")
        raise typer.Exit(1)
    with _audit_errors():
        if before is not None:
            cut = parse_time(before, "--before")
        elif settings.audit_retention_days is None:
            raise ValueError("PRIVGATE_AUDIT_RETENTION_DAYS is not set")
        else:
            cut = datetime.now(UTC) - timedelta(days=settings.audit_retention_days)
        result = _audit_log().purge(cut, actor="cli", door="cli")
    if result.up_to_seq is None:
        typer.echo(f"nothing to purge: no checkpoint was made at or before {cut.isoformat()}")
    else:
        typer.echo(
            f"purged {result.purged} records up to seq {result.up_to_seq}; the log now verifies "
            f"from that checkpoint (audit id {result.audit_id})"
        )


@audit_app.command("verify")
def audit_verify(
    from_checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--from-checkpoint",
            help="A checkpoint file (JSON lines, as written to PRIVGATE_AUDIT_CHECKPOINT_DIR, or "
            "one JSON object): verify from its oldest checkpoint still in the log, against all.",
        ),
    ] = None,
) -> None:
    """Verify the audit chain; exit 1 naming the first broken record."""
    with _audit_errors():
        audit = _audit_log()
        if from_checkpoint is None:
            result = audit.verify()
        else:
            given = _read_checkpoint_file(from_checkpoint)
            result = audit.verify_checkpoints(given)
    if result.ok:
        against = "" if from_checkpoint is None else f" against {len(given)} checkpoint(s)"
        typer.echo(f"audit log ok: {result.checked} records verified{against}")
        return
    _err(f"audit log BROKEN after {result.checked} good records: {result.reason}")
    raise typer.Exit(1)


def _read_checkpoint_file(path: Path) -> list[dict[str, Any]]:
    import json

    text = path.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        return [whole]
    found: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number} is not a JSON object") from None
        if not isinstance(item, dict):
            raise ValueError(f"{path}:{number} is not a JSON object")
        found.append(item)
    if not found:
        raise ValueError(f"{path} holds no checkpoint")
    return found


@key_app.command("create")
def key_create(
    principal: Annotated[str, typer.Option(help="Principal the key belongs to.")],
) -> None:
    """Create an API key and print it alone on stdout (it is shown once)."""
    from gateway.composition import build_control
    from gateway.policy_loader import load_policy
    from gateway.principals import UnknownPrincipal

    settings = _settings()
    _, _, principals = build_control(settings)
    # Bootstrap principals from the policy so keys can be made before the first `serve`.
    for name, p in load_policy(settings.resolved_policy_path).policy.principals.items():
        principals.upsert_principal(name, role=p.role, datasets=p.datasets)
    try:
        _, key = principals.create_key(principal)
    except UnknownPrincipal:
        _err(f"no principal named {principal!r}")
        raise typer.Exit(1) from None
    typer.echo(key)


# -- admin commands ------------------------------------------------------------------------------

PrincipalArg = Annotated[str, typer.Argument(help="Principal name.")]
DatasetArg = Annotated[str, typer.Argument(help="Dataset name (as in the policy).")]
EpsilonOpt = Annotated[str, typer.Option("--epsilon", help="Epsilon, e.g. 10 or 0.5.")]


def _admin_ops() -> AdminOps:
    from gateway.admin_ops import AdminOps
    from gateway.composition import build_control
    from gateway.policy_loader import load_policy

    settings = _settings()
    ledger, audit, principals = build_control(settings)
    policy = load_policy(settings.resolved_policy_path).policy
    for name, p in policy.principals.items():
        principals.upsert_principal(name, role=p.role, datasets=p.datasets)
    return AdminOps(
        principals=principals,
        ledger=ledger,
        audit=audit,
        datasets=policy.datasets,
        actor="cli",
        door="cli",
    )


@contextmanager
def _admin_errors() -> Iterator[None]:
    """Expected failures become one line on stderr and exit status 1."""
    from budgets.errors import BudgetError
    from gateway.errors import GatewayError
    from gateway.policy_loader import PolicyFileError
    from gateway.principals import PrincipalError

    try:
        yield
    except (GatewayError, BudgetError, PrincipalError, PolicyFileError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None


def _cost(epsilon: str, delta: str) -> PrivacyCost:
    from budgets.cost import PrivacyCost
    from gateway.admin_ops import parse_amount

    parsed = []
    for flag, text in (("--epsilon", epsilon), ("--delta", delta)):
        try:
            parsed.append(parse_amount(text))
        except ValueError as exc:
            _err(f"error: {flag} {text!r} {exc}")
            raise typer.Exit(1) from None
    return PrivacyCost(parsed[0], parsed[1])


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _show_balance(b: dict[str, Any]) -> None:
    typer.echo(
        f"{b['principal']} on {b['dataset']}: "
        f"epsilon limit {b['epsilon_limit']}, spent {b['epsilon_spent']}, "
        f"remaining {b['epsilon_remaining']}; "
        f"delta limit {b['delta_limit']}, spent {b['delta_spent']}, "
        f"remaining {b['delta_remaining']}"
    )


@principal_app.command("list")
def principal_list() -> None:
    """List every principal, disabled ones included."""
    with _admin_errors():
        found = _admin_ops().principals.list_principals()
    _table(
        ["NAME", "ROLE", "STATUS", "DATASETS"],
        [
            (
                p.name,
                p.role.value,
                "disabled" if p.disabled else "enabled",
                ",".join(sorted(p.datasets)),
            )
            for p in found
        ],
    )


@principal_app.command("create")
def principal_create(
    name: PrincipalArg,
    role: Annotated[str, typer.Option(help="analyst or admin.")] = "analyst",
    dataset: Annotated[
        list[str] | None, typer.Option("--dataset", help="Grant a dataset (repeatable).")
    ] = None,
) -> None:
    """Create a principal; then make it a key with `privgate key create`."""
    from rewriter.policy import Role

    if role not in {r.value for r in Role}:
        _err(f"error: --role must be one of {', '.join(r.value for r in Role)}, not {role!r}")
        raise typer.Exit(1)
    with _admin_errors():
        p = _admin_ops().create_principal(name, role=Role(role), datasets=dataset or [])
    typer.echo(f"created {p['role']} {p['name']} with datasets: {', '.join(p['datasets']) or '-'}")


@principal_app.command("grant")
def principal_grant(
    name: PrincipalArg,
    dataset: Annotated[list[str], typer.Option("--dataset", help="Dataset (repeatable).")],
) -> None:
    """Grant datasets to a principal (added to its grants)."""
    with _admin_errors():
        p = _admin_ops().update_principal(name, grant=dataset)
    typer.echo(f"{p['name']} may now query: {', '.join(p['datasets'])}")


@principal_app.command("disable")
def principal_disable(name: PrincipalArg) -> None:
    """Disable a principal: all its keys stop working at once."""
    with _admin_errors():
        _admin_ops().update_principal(name, disabled=True)
    typer.echo(f"disabled {name}")


@principal_app.command("enable")
def principal_enable(name: PrincipalArg) -> None:
    """Re-enable a disabled principal (its unexpired, unrevoked keys work again)."""
    with _admin_errors():
        _admin_ops().update_principal(name, disabled=False)
    typer.echo(f"enabled {name}")


@principal_app.command("release")
def principal_release(name: PrincipalArg) -> None:
    """Lift a principal's quarantine (set by an anomaly rule): its queries run again."""
    with _admin_errors():
        result = _admin_ops().release(name)
    if result["released"]:
        typer.echo(f"released {name} from quarantine")
    else:
        typer.echo(f"{name} was not quarantined")


@app.command()
def governance(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Governance report: access, refusals, alerts, budgets, retention, policy versions."""
    import json

    from gateway.governance import governance_report, retention_settings
    from gateway.policy_loader import load_policy

    settings = _settings()
    with _admin_errors():
        report = governance_report(
            _admin_ops(),
            policy_version=load_policy(settings.resolved_policy_path).version,
            retention=retention_settings(settings, type(settings).model_fields),
        )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _governance_text(report)


def _governance_text(report: dict[str, Any]) -> None:
    typer.echo(f"privgate governance report, {report['generated_at']}")
    typer.echo(f"policy version serving: {report['policy_version']}")
    typer.echo("\nACCESS")
    _table(
        ["PRINCIPAL", "DATASET", "ACCEPTED", "REPLAYED", "REJECTED", "EXPLAINED", "EPS_CHARGED"],
        [
            (
                a["principal"],
                a["dataset"],
                a["accepted"],
                a["replayed"],
                a["rejected"],
                a["explained"],
                a["epsilon_charged"],
            )
            for a in report["access"]
        ],
    )
    typer.echo("\nREFUSALS")
    _table(
        ["CODE", "COUNT", "BY_PRINCIPAL"],
        [
            (
                v["code"],
                v["count"],
                ",".join(f"{p}:{n}" for p, n in v["principals"].items()),
            )
            for v in report["violations"]
        ],
    )
    typer.echo("\nALERTS")
    _table(
        ["RULE", "PRINCIPAL", "COUNT"],
        [(a["rule"], a["principal"], a["count"]) for a in report["alerts"]],
    )
    typer.echo("\nQUARANTINED")
    _table(
        ["PRINCIPAL", "SINCE", "REASON"],
        [(q["principal"], q["since"], q["reason"]) for q in report["quarantined"]],
    )
    typer.echo("\nBUDGETS")
    _table(
        ["PRINCIPAL", "DATASET", "EPS_LIMIT", "EPS_SPENT", "EPS_LEFT", "DELTA_LEFT"],
        [
            (
                b["principal"] if b["scope"] == "principal" else "(dataset total)",
                b["dataset"],
                b["epsilon_limit"],
                b["epsilon_spent"],
                b["epsilon_remaining"],
                b["delta_remaining"],
            )
            for b in report["budgets"]
        ],
    )
    r = report["retention"]
    typer.echo(
        f"\nRETENTION  {r['records']} audit records, oldest {r['oldest_ts'] or '-'}, "
        f"newest {r['newest_ts'] or '-'}"
    )
    for name, value in r["settings"].items():
        typer.echo(f"  {name} = {value}")
    typer.echo("\nPOLICY VERSIONS")
    _table(
        ["VERSION", "FIRST_SEEN", "LAST_SEEN", "RECORDS"],
        [
            (v["version"], v["first_seen"], v["last_seen"], v["records"])
            for v in report["policy_versions"]
        ],
    )


@key_app.command("list")
def key_list(
    principal: Annotated[str, typer.Option(help="Whose keys to list.")],
) -> None:
    """List a principal's keys (ids and dates only; keys are never shown again)."""
    with _admin_errors():
        keys = _admin_ops().list_keys(principal)
    _table(
        ["KEY_ID", "STATUS", "CREATED", "EXPIRES", "LAST_USED"],
        [
            (k["key_id"], k["status"], k["created_at"], k["expires_at"], k["last_used_at"])
            for k in keys
        ],
    )


@key_app.command("revoke")
def key_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (pgk_<id>_...).")]) -> None:
    """Revoke a key at once."""
    with _admin_errors():
        result = _admin_ops().revoke_key(key_id)
    typer.echo(f"revoked key {key_id} of {result['principal']}")


@budget_app.command("show")
def budget_show(
    principal: Annotated[str | None, typer.Option(help="Only this principal.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
) -> None:
    """Show budget accounts (accounts not charged yet show the policy's default limit)."""
    with _admin_errors():
        rows = _admin_ops().budgets(principal=principal, dataset=dataset)
    _table(
        ["PRINCIPAL", "DATASET", "EPS_LIMIT", "EPS_SPENT", "EPS_LEFT", "DELTA_LIMIT", "DELTA_LEFT"],
        [
            (
                r["principal"] if r["scope"] == "principal" else "(dataset total)",
                r["dataset"],
                r["epsilon_limit"],
                r["epsilon_spent"],
                r["epsilon_remaining"],
                r["delta_limit"],
                r["delta_remaining"],
            )
            for r in rows
        ],
    )


@budget_app.command("set")
def budget_set(
    principal: PrincipalArg,
    dataset: DatasetArg,
    epsilon: EpsilonOpt,
    delta: Annotated[str, typer.Option("--delta", help="Delta, e.g. 1e-5.")],
) -> None:
    """Set a principal's limit on a dataset (what was spent stays spent)."""
    with _admin_errors():
        _show_balance(_admin_ops().set_limit(principal, dataset, _cost(epsilon, delta)))


@budget_app.command("top-up")
def budget_top_up(
    principal: PrincipalArg,
    dataset: DatasetArg,
    epsilon: EpsilonOpt = "0",
    delta: Annotated[str, typer.Option("--delta", help="Delta to add.")] = "0",
) -> None:
    """Raise a principal's limit on a dataset by the given amount."""
    with _admin_errors():
        _show_balance(_admin_ops().top_up(principal, dataset, _cost(epsilon, delta)))


@budget_app.command("reset")
def budget_reset(principal: PrincipalArg, dataset: DatasetArg) -> None:
    """Forget what a principal has spent on a dataset (the limit stays)."""
    with _admin_errors():
        _show_balance(_admin_ops().reset(principal, dataset))


@budget_app.command("history")
def budget_history(
    principal: PrincipalArg,
    dataset: DatasetArg,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Most recent N events.")] = 100,
    before_id: Annotated[int | None, typer.Option(help="Only events older than this id.")] = None,
) -> None:
    """Show the ledger events of a principal on a dataset, newest first."""
    with _admin_errors():
        page = _admin_ops().history(principal, dataset, limit=limit, before_id=before_id)
    _table(
        ["ID", "TS", "KIND", "EPSILON", "DELTA", "ACTOR", "QUERY_ID"],
        [
            (e["id"], e["ts"], e["kind"], e["epsilon"], e["delta"], e["actor"], e["query_id"])
            for e in page["events"]
        ],
    )


if __name__ == "__main__":  # pragma: no cover
    app()
