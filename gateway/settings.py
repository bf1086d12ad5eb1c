"""One typed ``Settings`` object, read once from the environment (prefix ``PRIVGATE_``) and injected.

Secrets (the bounding salt, the audit MAC key, the API-key pepper) come from the environment, from
a file named by ``PRIVGATE_<NAME>_FILE`` (mode 0600 or stricter), or from
``<data_dir>/secrets.json``, which is created with mode 0600 on first start when none is set.
Every other secret-bearing setting (:data:`SECRET_FILE_FIELDS`) may come from a file the same way.
They never appear in the policy file, logs or error messages. See docs/operations.md#secrets.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from gateway.audit_crypt import SqlCipher


def demo_policy_path() -> Path:
    return Path(__file__).resolve().parent / "demo_policy.yaml"


#: Settings that may hold a secret: each may also be given as ``PRIVGATE_<NAME>_FILE``, the path
#: of a file only its owner may read (Docker and Kubernetes secrets, systemd credentials).
SECRET_FILE_FIELDS = (
    "bounding_salt",
    "audit_key",
    "key_pepper",
    "audit_old_keys",
    "key_old_peppers",
    "audit_encryption_key",
    "audit_encryption_old_keys",
    "metrics_token",
    "wire_shadow_dsn",
    "control_db_url",
    "warehouse_url",
    "warehouse_snapshot_url",
)


class SecretFileError(ValueError):
    """A ``PRIVGATE_*_FILE`` setting names a file that cannot be used (the message says why)."""


def read_secret_file(path: Path, variable: str) -> str:
    """The secret in ``path`` without its trailing newline.

    Raises:
        SecretFileError: the file is missing, not a regular file, empty, or readable or writable
            by its group or others. The message names the file, never its content.
    """
    try:
        info = path.stat()
    except OSError as exc:
        raise SecretFileError(
            f"{variable} names {str(path)!r}, which cannot be read: {exc.strerror}"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise SecretFileError(f"{variable} names {str(path)!r}, which is not a regular file")
    if info.st_mode & 0o077:
        raise SecretFileError(
            f"{variable} names {str(path)!r}, which its group or others may access "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): run `chmod 600 {path}`"
        )
    value = path.read_text(encoding="utf-8").rstrip("\r\n")
    if not value:
        raise SecretFileError(f"{variable} names {str(path)!r}, which is empty")
    return value


class Settings(BaseSettings):
    """All of privgate's configuration. Every field is documented in docs/operations.md."""

    # hide_input_in_errors: a validation error must not print the input, which holds secrets.
    model_config = SettingsConfigDict(
        env_prefix="PRIVGATE_", extra="forbid", hide_input_in_errors=True
    )

    data_dir: Path = Field(
        default=Path("var"),
        description="Where the demo warehouse, control DB and generated secrets live.",
    )
    warehouse_path: Path | None = Field(
        default=None, description="DuckDB warehouse file; default <data_dir>/demo.duckdb."
    )
    warehouse_url: SecretStr | None = Field(
        default=None,
        description="postgresql:// URL of a PostgreSQL warehouse, read through a read-only role "
        "(docs/operations.md#postgresql-warehouse); unset: the DuckDB file warehouse_path.",
    )
    warehouse_spark_master: str | None = Field(
        default=None,
        description="Spark master of a Spark SQL warehouse (local[N], spark://host:7077, yarn, "
        "or sc://host:15002 for Spark Connect; docs/operations.md#spark-warehouse); needs the "
        "`spark` extra. Unset: PostgreSQL (warehouse_url) or DuckDB.",
    )
    warehouse_spark_database: str = Field(
        default="default",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="The Spark catalog database the policy's tables live in.",
    )
    warehouse_snapshot_url: SecretStr | None = Field(
        default=None,
        description="postgresql:// URL of a role that may create schemas in the PostgreSQL "
        "warehouse's database: bounded snapshots are built there (schemas privgate_b_*) and "
        "the query role is granted SELECT on them. Unset: PostgreSQL bounds per query.",
    )
    warehouse_schema: str = Field(
        default="public",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="Schema of the PostgreSQL warehouse the policy's tables live in.",
    )
    policy_path: Path | None = Field(
        default=None, description="Policy YAML; default the bundled demo policy."
    )
    control_db_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the control DB; default SQLite in data_dir."
    )
    statement_timeout_s: float = Field(
        default=30.0, gt=0, description="Warehouse statement timeout (watchdog)."
    )
    bounded_snapshots: bool = Field(
        default=True,
        description="Bound contributions once per data version into a gateway-owned copy "
        "(<data_dir>/bounded) and query that; off: bound inside every query.",
    )
    snapshot_check_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="How often the gateway checks whether the warehouse file changed, and then "
        "rebuilds the bounded snapshot in the background (the old one serves meanwhile).",
    )
    warehouse_threads: int | None = Field(
        default=None,
        ge=1,
        description="DuckDB threads; default all cores (with serve --workers N: the cores / N).",
    )
    bounding_salt: SecretStr | None = Field(
        default=None, description="Key of the contribution-bounding hash."
    )
    audit_key: SecretStr | None = Field(
        default=None, description="MAC key of the audit chain head."
    )
    key_pepper: SecretStr | None = Field(default=None, description="Pepper of the API-key hashes.")
    key_old_peppers: SecretStr | None = Field(
        default=None,
        description="Previous key peppers, comma-separated, during a pepper rotation: keys hashed "
        "under them still authenticate and are re-hashed under the current pepper on use.",
    )

    # -- audit log (docs/operations.md#audit) ---------------------------------------------------
    audit_old_keys: SecretStr | None = Field(
        default=None,
        description="Previous audit keys, comma-separated: what they sealed still verifies after "
        "a key rotation; nothing new is sealed with them.",
    )
    audit_sql_text: Literal["redacted", "full"] = Field(
        default="redacted",
        description="What audit records keep of the analyst's SQL: the literal-redacted text "
        "only, or also the full text, sealed with AES-256-GCM (needs audit_encryption_key).",
    )
    audit_encryption_key: SecretStr | None = Field(
        default=None, description="Key sealing full SQL text in audit records (>= 16 bytes)."
    )
    audit_encryption_old_keys: SecretStr | None = Field(
        default=None,
        description="Previous audit encryption keys, comma-separated: what they sealed can still "
        "be revealed; nothing new is sealed with them.",
    )
    audit_checkpoint_every: int = Field(
        default=1000, ge=1, description="Seal an audit checkpoint every this many records."
    )
    audit_checkpoint_dir: Path | None = Field(
        default=None,
        description="Also append every new checkpoint as a JSON line to "
        "<dir>/audit-checkpoints.jsonl (keep it away from the control DB); unset: DB only.",
    )
    audit_retention_days: int | None = Field(
        default=None,
        ge=1,
        description="How long audit records are kept: `privgate audit purge --apply-retention` "
        "purges older ones; unset: kept until purged by hand.",
    )
    reconcile_grace_s: float | None = Field(
        default=None,
        gt=0,
        description="Age after which an unfinished budget reservation is settled (unused ones "
        "refunded, executing ones committed); default statement_timeout_s + 60.",
    )
    reconcile_interval_s: float = Field(
        default=60.0, gt=0, description="How often the gateway settles stale reservations."
    )
    host: str = Field(default="127.0.0.1", description="REST bind address.")
    port: int = Field(default=8080, ge=1, le=65535, description="REST port.")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="REST worker processes; several share the port, the control DB (SQLite: "
        "on this host only) and the snapshot, each with its own anomaly counters.",
    )

    # -- TLS (gateway.tls; docs/operations.md#tls) ---------------------------------------------
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate (chain) both doors serve; unset: self-signed."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of that certificate.")
    rest_tls: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="REST over HTTPS: `on`; plaintext: `off`; `auto`: HTTPS when a pair is "
        "configured or the bind address is not loopback (self-signed if no pair).",
    )
    require_tls: bool = Field(
        default=True,
        description="Refuse plaintext REST except to loopback: at startup for a non-loopback "
        "bind, per request (403 tls.required) for a non-loopback peer.",
    )

    # -- monitoring (docs/operations.md#monitoring) -------------------------------------------
    pg_host: str = Field(default="127.0.0.1", description="PostgreSQL-wire bind address.")
    pg_port: int = Field(default=5433, ge=0, le=65535, description="PostgreSQL-wire port; 0: off.")
    wire_tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate of the wire endpoint if it differs from PRIVGATE_TLS_CERT; "
        "with neither set, a self-signed pair is generated in data_dir (fine for a demo only).",
    )
    wire_tls_key: Path | None = Field(
        default=None, description="PEM private key of the wire certificate."
    )
    wire_require_tls: bool = Field(
        default=True, description="Refuse wire logins that did not negotiate TLS (28000)."
    )
    wire_allow_cleartext: bool = Field(
        default=False,
        description="Offer cleartext password login (over TLS only) besides SCRAM-SHA-256.",
    )
    wire_max_connections: int = Field(
        default=100, ge=1, description="Open wire connections, at most."
    )
    wire_idle_timeout_s: float = Field(
        default=900.0, gt=0, description="Close a wire connection idle this long (seconds)."
    )
    wire_shadow_dsn: SecretStr | None = Field(
        default=None,
        description="libpq URL of a PostgreSQL role that may create databases and roles, for the "
        "shadow catalog; unset: privgate starts an embedded PostgreSQL in data_dir.",
    )
    wire_shadow_prefix: str = Field(
        default="privgate_shadow",
        pattern=r"^[a-z][a-z0-9_]{0,29}$",
        description="Name prefix of the shadow databases and roles (one per deployment).",
    )
    wire_shadow_timeout_ms: int = Field(
        default=5000, ge=1, description="Statement timeout of catalog queries on the shadow."
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token a Prometheus scraper may use for /metrics (an admin key also "
        "works); unset: admin keys only.",
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="`privgate serve` log lines: one JSON object, or plain text."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Least severe level `privgate serve` logs."
    )

    # -- anomaly rules (gateway.anomaly; docs/operations.md#anomaly-rules) ----------------------
    anomaly_enabled: bool = Field(default=True, description="Run the anomaly rules at all.")
    anomaly_rate_max_requests: int = Field(
        default=600, ge=1, description="Rule `rate`: this many requests by one principal ..."
    )
    anomaly_rate_window_s: float = Field(default=60.0, gt=0, description="... within this time.")
    anomaly_rate_contain: bool = Field(default=True, description="Rule `rate` quarantines.")
    anomaly_rejections_min: int = Field(
        default=25, ge=1, description="Rule `rejections`: this many rejections ..."
    )
    anomaly_rejections_of_last: int = Field(
        default=50, ge=1, description="... among a principal's last this many requests."
    )
    anomaly_rejections_contain: bool = Field(
        default=False, description="Rule `rejections` quarantines."
    )
    anomaly_differencing_max_repeats: int = Field(
        default=200,
        ge=2,
        description="Rule `differencing`: this many fresh queries of one literal-redacted shape ...",
    )
    anomaly_differencing_window_s: float = Field(
        default=600.0, gt=0, description="... within this time."
    )
    anomaly_differencing_contain: bool = Field(
        default=True, description="Rule `differencing` quarantines."
    )
    anomaly_burn_rate_max_epsilon: float = Field(
        default=10.0, gt=0, description="Rule `burn_rate`: more epsilon than this spent ..."
    )
    anomaly_burn_rate_window_s: float = Field(
        default=3600.0, gt=0, description="... within this time."
    )
    anomaly_burn_rate_contain: bool = Field(
        default=False, description="Rule `burn_rate` quarantines."
    )

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name in SECRET_FILE_FIELDS:
            variable = f"PRIVGATE_{name.upper()}_FILE"
            path = os.environ.get(variable)
            if not path:
                continue
            if data.get(name) is not None:
                raise SecretFileError(f"set {variable} or PRIVGATE_{name.upper()}, not both")
            data = {**data, name: read_secret_file(Path(path), variable)}
        return data

    @model_validator(mode="after")
    def _rejections_fit(self) -> Settings:
        if self.anomaly_rejections_min > self.anomaly_rejections_of_last:
            raise ValueError("anomaly_rejections_min cannot exceed anomaly_rejections_of_last")
        return self

    @model_validator(mode="after")
    def _full_text_is_sealed(self) -> Settings:
        if self.audit_sql_text == "full" and self.audit_encryption_key is None:
            raise ValueError(
                "PRIVGATE_AUDIT_SQL_TEXT=full keeps the analyst's literals and needs "
                "PRIVGATE_AUDIT_ENCRYPTION_KEY (or _FILE) to seal them"
            )
        return self

    @property
    def resolved_audit_encryption_old_keys(self) -> tuple[bytes, ...]:
        return _secret_list(self.audit_encryption_old_keys)

    def sql_cipher(self) -> SqlCipher | None:
        """The cipher for full SQL text; ``None`` when audit records keep redacted text only.

        An encryption key without full-text mode still builds one, so that `privgate audit
        reveal` can open what an earlier full-text period sealed.
        """
        if self.audit_encryption_key is None:
            return None
        from gateway.audit_crypt import SqlCipher

        return SqlCipher(
            self.audit_encryption_key.get_secret_value().encode(),
            self.resolved_audit_encryption_old_keys,
        )

    @property
    def resolved_reconcile_grace_s(self) -> float:
        if self.reconcile_grace_s is not None:
            return self.reconcile_grace_s
        return self.statement_timeout_s + 60.0

    @property
    def resolved_audit_old_keys(self) -> tuple[bytes, ...]:
        """The previous audit keys, in the order given."""
        return _secret_list(self.audit_old_keys)

    @property
    def resolved_key_old_peppers(self) -> tuple[bytes, ...]:
        """The previous key peppers, in the order given."""
        return _secret_list(self.key_old_peppers)

    @property
    def resolved_warehouse_path(self) -> Path:
        return self.warehouse_path or self.data_dir / "demo.duckdb"

    @property
    def resolved_policy_path(self) -> Path:
        return self.policy_path or demo_policy_path()

    @property
    def resolved_control_db_url(self) -> str:
        return self.control_db_url or f"sqlite:///{(self.data_dir / 'control.db').resolve()}"


def _secret_list(value: SecretStr | None) -> tuple[bytes, ...]:
    """A comma-separated secret setting as its items, in the order given (blanks dropped)."""
    if value is None:
        return ()
    return tuple(k.strip().encode() for k in value.get_secret_value().split(",") if k.strip())


_SECRET_NAMES = ("bounding_salt", "audit_key", "key_pepper")


def load_secrets(settings: Settings) -> dict[str, bytes]:
    """Return the three secrets, generating the missing ones into ``<data_dir>/secrets.json`` (0600)."""
    given = {n: getattr(settings, n) for n in _SECRET_NAMES}
    out: dict[str, bytes] = {
        n: v.get_secret_value().encode() for n, v in given.items() if v is not None
    }
    missing = [n for n in _SECRET_NAMES if n not in out]
    if not missing:
        return out
    path = settings.data_dir / "secrets.json"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    changed = False
    for name in missing:
        if name not in stored:
            stored[name] = secrets.token_urlsafe(32)
            changed = True
        out[name] = stored[name].encode()
    if changed:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh)
        os.replace(tmp, path)
    return out
