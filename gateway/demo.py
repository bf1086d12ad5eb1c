"""The demo "clinic" warehouse: a realistic, deterministic DuckDB database to try privgate on.

``build_demo_warehouse`` generates everything inside DuckDB SQL (about 1.1 M visits for the default
100 000 patients in a few seconds) and ``ensure_demo_warehouse`` builds it only when the file is
missing. The matching policy is ``demo_policy.yaml`` next to this module (``DEMO_POLICY_PATH``).

Tables
    ``departments``
        Public reference table: department (primary key), building, floor; 8 rows.
    ``patients``
        One row per patient: patient_id (primary key), ssn (fake, area 900-999 so never a valid
        SSN), name, email (``@example.*`` reserved domains), sex ('F'/'M'), birth_year
        (1930-2020), zip3 (up to 300 distinct prefixes, skewed), insurance ('public', 'private',
        'none'; patients born before 1960 are mostly 'public').
    ``visits``
        One row per visit: visit_id (primary key, in day order), patient_id, department,
        visit_day, cost (whole cents; lognormal per department plus a charge per inpatient day, so
        a heavy tail above 5000), los_days (length of stay 0-30, mostly 0), diagnosis
        (ICD-10-like code and text).

Shape, chosen to exercise the privacy machinery
    * Visits per patient are skewed: a lognormal (median 7, capped at 150) gives most patients
      1-10 visits and a few percent dozens; on top of that ``max(3, patients // 4000)`` *heavy*
      patients (25 at the default size) have 200-800 visits each, mostly in oncology, radiology
      or cardiology. Contribution bounding (``max_rows_per_unit``) keeps them from dominating.
    * Departments, days and costs are non-uniform: the ER is the busiest department, pediatrics
      only sees patients born 2007 or later, winter (December-February) is busier, and non-ER
      visits mostly avoid weekends (moved to the Friday before or the Monday after).
    * Rare days: 2025-01-01 .. 2025-01-05 each have visits (2-4 rows) of exactly one patient
      (five different patients); all other visits fall in 2024-01-01 .. 2024-12-31. A
      ``GROUP BY visit_day`` must suppress these five days: showing them is what leaks.

Determinism
    No ``random()`` is used: every random choice is a function of
    ``hash(hash(tag, seed, patient, visit))`` and every table is written in an explicit total
    order. The same seed therefore gives identical tables (``table_checksums``) across runs and
    thread counts, for a given DuckDB version.

Crash safety
    The database is written to a hidden temporary file in the target directory and moved into
    place with ``os.replace`` only when complete, so a crash never leaves a half-built warehouse
    at ``path``; a failed build removes its temporary file and leaves an existing one untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from tqdm import tqdm

DEMO_POLICY_PATH = Path(__file__).with_name("demo_policy.yaml")
"""The policy that goes with the demo warehouse."""

DEFAULT_PATIENTS = 100_000
DEFAULT_SEED = 20261123

RARE_DAYS = ("2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04", "2025-01-05")
"""Days visited by exactly one patient each (outside the regular 2024 range)."""

MIN_PATIENTS = 20
_MEDIAN_VISITS = 7.0  # of the lognormal number of visits of a regular patient

# department, building, floor, share of visits, median cost, probability of an inpatient stay
_DEPARTMENTS: tuple[tuple[str, str, int, float, float, float], ...] = (
    ("er", "Main", 0, 0.22, 450.0, 0.10),
    ("cardiology", "North", 3, 0.16, 700.0, 0.12),
    ("orthopedics", "East", 2, 0.14, 520.0, 0.14),
    ("pediatrics", "West", 1, 0.12, 160.0, 0.04),
    ("radiology", "Main", -1, 0.12, 380.0, 0.00),
    ("oncology", "North", 5, 0.09, 1300.0, 0.15),
    ("neurology", "North", 4, 0.08, 620.0, 0.10),
    ("dermatology", "West", 2, 0.07, 140.0, 0.00),
)
DEPARTMENTS: tuple[str, ...] = tuple(sorted(d[0] for d in _DEPARTMENTS))

_DIAGNOSES: dict[str, tuple[str, ...]] = {
    "cardiology": (
        "I10 Essential (primary) hypertension",
        "I25.10 Atherosclerotic heart disease of native coronary artery",
        "I48.91 Atrial fibrillation, unspecified",
        "I50.9 Heart failure, unspecified",
        "R07.9 Chest pain, unspecified",
    ),
    "oncology": (
        "C50.911 Malignant neoplasm of right female breast",
        "C34.90 Malignant neoplasm of bronchus or lung",
        "C18.9 Malignant neoplasm of colon",
        "Z51.11 Encounter for antineoplastic chemotherapy",
        "C61 Malignant neoplasm of prostate",
    ),
    "er": (
        "S06.0X0A Concussion without loss of consciousness",
        "R10.9 Unspecified abdominal pain",
        "S52.501A Fracture of lower end of right radius",
        "T78.40XA Allergy, unspecified",
        "J06.9 Acute upper respiratory infection",
    ),
    "pediatrics": (
        "J02.9 Acute pharyngitis, unspecified",
        "H66.90 Otitis media, unspecified",
        "Z00.129 Routine child health examination",
        "J45.909 Unspecified asthma, uncomplicated",
        "A09 Infectious gastroenteritis and colitis",
    ),
    "neurology": (
        "G43.909 Migraine, unspecified",
        "G40.909 Epilepsy, unspecified",
        "G20 Parkinson's disease",
        "G35 Multiple sclerosis",
        "R51.9 Headache, unspecified",
    ),
    "orthopedics": (
        "M17.11 Primary osteoarthritis, right knee",
        "M54.50 Low back pain, unspecified",
        "S83.511A Sprain of anterior cruciate ligament of right knee",
        "M75.101 Rotator cuff tear, right shoulder",
        "M16.12 Primary osteoarthritis, left hip",
    ),
    "radiology": (
        "Z12.31 Screening mammogram for malignant neoplasm of breast",
        "R91.8 Other nonspecific abnormal finding of lung field",
        "Z01.89 Encounter for other specified special examinations",
        "R93.1 Abnormal findings on diagnostic imaging of heart",
        "M54.2 Cervicalgia",
    ),
    "dermatology": (
        "L20.9 Atopic dermatitis, unspecified",
        "L40.0 Psoriasis vulgaris",
        "L70.0 Acne vulgaris",
        "C44.91 Basal cell carcinoma of skin, unspecified",
        "L82.1 Other seborrheic keratosis",
    ),
}

_FIRST_F = (
    "Amelia", "Ana", "Chloe", "Emma", "Fatima", "Grace", "Hannah", "Isabel", "Julia", "Keiko",
    "Laura", "Maria", "Mei", "Nadia", "Olivia", "Priya", "Rosa", "Sara", "Sofia", "Zoe",
)  # fmt: skip
_FIRST_M = (
    "Adam", "Ahmed", "Ben", "Carlos", "David", "Elias", "Felix", "Hiro", "Ivan", "James",
    "Kofi", "Liam", "Lucas", "Marco", "Noah", "Omar", "Paul", "Ravi", "Samuel", "Tom",
)  # fmt: skip
_LAST = (
    "Adams", "Baker", "Chen", "Cohen", "Diaz", "Evans", "Fischer", "Garcia", "Gupta", "Hansen",
    "Ito", "Jensen", "Kim", "Kowalski", "Lopez", "Martin", "Meyer", "Mueller", "Nguyen", "Novak",
    "Okafor", "Patel", "Rossi", "Santos", "Schmidt", "Silva", "Smith", "Tanaka", "Walker", "Wang",
)  # fmt: skip
_EMAIL_DOMAINS = ("example.com", "example.net", "example.org")


@dataclass(frozen=True)
class DemoSummary:
    """What ``build_demo_warehouse`` built."""

    path: Path
    patients: int
    visits: int
    departments: int
    max_visits_per_patient: int


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(_sql_str(v) for v in values) + "]"


def _pick(values: tuple[str, ...], hash_expr: str) -> str:
    """SQL choosing one of ``values`` uniformly by a UBIGINT hash expression."""
    return f"{_sql_list(values)}[(1 + ({hash_expr}) % {len(values)})::BIGINT]"


def _department_draw(u_expr: str) -> str:
    """SQL mapping a uniform draw in (0, 1) to a department with the configured shares."""
    parts, acc = [], 0.0
    for name, _b, _f, share, _c, _p in _DEPARTMENTS[:-1]:
        acc += share
        parts.append(f"WHEN {u_expr} < {acc:.6f} THEN {_sql_str(name)}")
    return f"CASE {' '.join(parts)} ELSE {_sql_str(_DEPARTMENTS[-1][0])} END"


_SCHEMA = """
CREATE TABLE departments (
    department TEXT PRIMARY KEY,
    building   TEXT NOT NULL,
    floor      INTEGER NOT NULL
);
CREATE TABLE patients (
    patient_id BIGINT PRIMARY KEY,
    ssn        TEXT NOT NULL,
    name       TEXT NOT NULL,
    email      TEXT NOT NULL,
    sex        TEXT NOT NULL,
    birth_year INTEGER NOT NULL,
    zip3       TEXT NOT NULL,
    insurance  TEXT NOT NULL
);
CREATE TABLE visits (
    visit_id   BIGINT PRIMARY KEY,
    patient_id BIGINT NOT NULL,
    department TEXT NOT NULL,
    visit_day  DATE NOT NULL,
    cost       DOUBLE NOT NULL,
    los_days   INTEGER NOT NULL,
    diagnosis  TEXT NOT NULL
);
"""

# A 64-bit pseudo-random value per (seed, patient, [visit,] tag); from it a uniform draw in
# (0, 1) (top 53 bits) and a standard normal (Box-Muller). DuckDB's multi-argument hash only XORs
# the last argument's hash in, so draws differing only in the tag would be correlated: the tag
# goes first and a second hash mixes the result. Temporary macros are not stored in the file.
_MACROS = """
CREATE TEMP MACRO h3(s, i, tag) AS hash(hash(tag, s, i));
CREATE TEMP MACRO h4(s, i, k, tag) AS hash(hash(tag, s, i, k));
CREATE TEMP MACRO u01(s, i, tag) AS ((h3(s, i, tag) >> 11)::DOUBLE + 0.5) / 9007199254740992.0;
CREATE TEMP MACRO u01v(s, i, k, tag) AS
    ((h4(s, i, k, tag) >> 11)::DOUBLE + 0.5) / 9007199254740992.0;
CREATE TEMP MACRO gauss(ua, ub) AS sqrt(-2.0 * ln(ua)) * cos(2.0 * pi() * ub);
"""


def _patient_profiles_sql(seed: int, patients: int, heavy: int) -> str:
    s = seed
    first_hash = f"h3({s}, i, 'first')"
    first = (
        f"CASE WHEN sex = 'F' THEN {_pick(_FIRST_F, first_hash)} "
        f"ELSE {_pick(_FIRST_M, first_hash)} END"
    )
    last = _pick(_LAST, f"h3({s}, i, 'last')")
    domain = _pick(_EMAIL_DOMAINS, f"h3({s}, i, 'domain')")
    heavy_home = _pick(("oncology", "radiology", "cardiology"), f"h3({s}, i, 'hhome')")
    home = _department_draw(f"u01({s}, i, 'home')")
    return f"""
CREATE TEMP TABLE gen_patients AS
WITH base AS (
    SELECT i,
           row_number() OVER (ORDER BY u01({s}, i, 'heavy'), i) AS heavy_rank,
           CASE WHEN u01({s}, i, 'sex') < 0.51 THEN 'F' ELSE 'M' END AS sex,
           1930 + least(90, floor(91 * pow(u01({s}, i, 'birth'), 0.8)))::INTEGER AS birth_year
    FROM range({patients}) r(i)
), named AS (
    SELECT *, {first} AS first_name, {last} AS last_name FROM base
)
SELECT
    i,
    1000001 + i AS patient_id,
    printf('%03d-%02d-%04d',
           900 + h3({s}, i, 'ssn') % 100,
           1 + (h3({s}, i, 'ssn') // 100) % 99,
           1 + (h3({s}, i, 'ssn') // 9900) % 9999) AS ssn,
    first_name || ' ' || last_name AS name,
    lower(first_name) || '.' || lower(last_name) || '.' || (1000001 + i) || '@' || {domain}
        AS email,
    sex,
    birth_year,
    lpad(((least(299, floor(300 * pow(u01({s}, i, 'zip'), 2)))::INTEGER * 337 + 101) % 1000)
         ::VARCHAR, 3, '0') AS zip3,
    CASE WHEN birth_year <= 1959 THEN
             CASE WHEN u01({s}, i, 'ins') < 0.85 THEN 'public'
                  WHEN u01({s}, i, 'ins') < 0.98 THEN 'private' ELSE 'none' END
         ELSE
             CASE WHEN u01({s}, i, 'ins') < 0.30 THEN 'public'
                  WHEN u01({s}, i, 'ins') < 0.90 THEN 'private' ELSE 'none' END
    END AS insurance,
    heavy_rank <= {heavy} AS heavy,
    CASE WHEN heavy_rank > {heavy} AND heavy_rank <= {heavy + len(RARE_DAYS)}
         THEN (heavy_rank - {heavy})::INTEGER END AS rare_day,
    CASE WHEN heavy_rank <= {heavy}
         THEN 200 + least(600, floor(601 * u01({s}, i, 'nheavy')))::INTEGER
         ELSE least(150, greatest(1, ceil(exp(ln({_MEDIAN_VISITS})
              + 0.9 * gauss(u01({s}, i, 'n1'), u01({s}, i, 'n2'))))))::INTEGER
    END AS n_visits,
    2 + (h3({s}, i, 'nrare') % 3)::INTEGER AS n_rare,
    CASE WHEN birth_year >= 2007 THEN 'pediatrics'
         WHEN heavy_rank <= {heavy} THEN {heavy_home}
         ELSE {home} END AS home_department
FROM named
"""


def _visits_sql(seed: int) -> str:
    s = seed
    dept_values = ", ".join(
        f"({_sql_str(n)}, {cost}, {p_in})" for n, _b, _f, _sh, cost, p_in in _DEPARTMENTS
    )
    dx_values = ", ".join(
        f"({_sql_str(dept)}, {k}, {_sql_str(text)})"
        for dept, texts in _DIAGNOSES.items()
        for k, text in enumerate(texts)
    )
    n_dx = len(next(iter(_DIAGNOSES.values())))
    assert all(len(v) == n_dx for v in _DIAGNOSES.values())
    draw = _department_draw(f"u01v({s}, i, k, 'dept')")
    return f"""
CREATE TEMP TABLE gen_visits AS
WITH params(department, median_cost, p_inpatient) AS (VALUES {dept_values}),
dx(department, k, diagnosis) AS (VALUES {dx_values}),
v AS (
    SELECT i, patient_id, birth_year, heavy, home_department, NULL::INTEGER AS rare_day,
           unnest(range(n_visits)) AS k
    FROM gen_patients
    UNION ALL
    SELECT i, patient_id, birth_year, heavy, home_department, rare_day,
           unnest(range(n_visits, n_visits + n_rare)) AS k
    FROM gen_patients WHERE rare_day IS NOT NULL
), d0 AS (
    SELECT *,
           CASE WHEN u01v({s}, i, k, 'home') < CASE WHEN heavy THEN 0.85 ELSE 0.35 END
                THEN home_department ELSE {draw} END AS dept0
    FROM v
), d AS (
    SELECT *,
           CASE WHEN dept0 = 'pediatrics' AND birth_year < 2007 THEN 'er' ELSE dept0 END
               AS department,
           CASE WHEN u01v({s}, i, k, 'season') < 0.2
                THEN (335 + floor(90 * u01v({s}, i, k, 'day')))::INTEGER % 366
                ELSE least(365, floor(366 * u01v({s}, i, k, 'day')))::INTEGER
           END AS doy
    FROM d0
), days AS (
    SELECT *, DATE '2024-01-01' + doy AS day0 FROM d
), shaped AS (
    SELECT days.i, days.patient_id, days.k, days.department,
           CASE WHEN days.rare_day IS NOT NULL THEN DATE '2025-01-01' + (days.rare_day - 1)
                WHEN days.department <> 'er' AND u01v({s}, days.i, days.k, 'wkend') < 0.8
                     AND dayofweek(days.day0) = 6 THEN days.day0 - 1
                WHEN days.department <> 'er' AND u01v({s}, days.i, days.k, 'wkend') < 0.8
                     AND dayofweek(days.day0) = 0 THEN days.day0 + 1
                ELSE days.day0
           END AS visit_day,
           CASE WHEN days.rare_day IS NULL
                     AND u01v({s}, days.i, days.k, 'inpatient') < params.p_inpatient
                THEN least(30, 1 + floor(-ln(u01v({s}, days.i, days.k, 'los')) * 3.5))::INTEGER
                ELSE 0
           END AS los_days,
           params.median_cost
    FROM days JOIN params USING (department)
)
SELECT shaped.patient_id, shaped.k, shaped.department, shaped.visit_day, shaped.los_days,
       round(least(250000.0, greatest(20.0,
           shaped.median_cost * exp(0.85 * gauss(u01v({s}, shaped.i, shaped.k, 'c1'),
                                                u01v({s}, shaped.i, shaped.k, 'c2')))
           + shaped.los_days * 950.0 * (0.8 + 0.4 * u01v({s}, shaped.i, shaped.k, 'c3')))), 2)
           AS cost,
       dx.diagnosis
           || CASE WHEN u01v({s}, shaped.i, shaped.k, 'fu') < 0.1 THEN '; follow-up visit'
                   ELSE '' END AS diagnosis
FROM shaped
JOIN dx ON dx.department = shaped.department
       AND dx.k = (h4({s}, shaped.i, shaped.k, 'dx') % {n_dx})::INTEGER
"""


def _insert_visits_sql(seed: int) -> str:
    return f"""
INSERT INTO visits
SELECT row_number() OVER (ORDER BY visit_day, h4({seed}, patient_id, k, 'order'), patient_id, k)
           AS visit_id,
       patient_id, department, visit_day, cost, los_days, diagnosis
FROM gen_visits
ORDER BY visit_id
"""


def _scalar(con: Any, sql: str) -> int:
    row = con.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def table_checksums(path: Path) -> dict[str, str]:
    """Row count and order-sensitive content hash of each demo table, to check reproducibility."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        out: dict[str, str] = {}
        for table in ("departments", "patients", "visits"):
            row = con.execute(
                # The outer hash keeps the XOR from cancelling the row position out.
                f"SELECT count(*), bit_xor(hash(hash(t, t.rowid))) FROM {table} AS t"
            ).fetchone()
            assert row is not None
            out[table] = f"{int(row[0])}:{int(row[1] or 0):016x}"
        return out
    finally:
        con.close()


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories on platforms that cannot open them
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_database_files(db: Path) -> None:
    for extra in (db, db.with_name(db.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            extra.unlink()
    shutil.rmtree(db.with_name(db.name + ".tmp"), ignore_errors=True)


def build_demo_warehouse(
    path: Path,
    *,
    patients: int = DEFAULT_PATIENTS,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
    threads: int | None = None,
) -> DemoSummary:
    """Build the demo clinic warehouse at ``path`` (replacing any file there) and summarize it.

    Deterministic for a given ``seed`` (and DuckDB version) whatever ``threads`` is. The file is
    written next to ``path`` under a temporary name and moved into place only when complete.
    """
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < MIN_PATIENTS:
        raise ValueError(f"patients must be an integer >= {MIN_PATIENTS}, got {patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63:
        raise ValueError(f"seed must be a 64-bit integer, got {seed!r}")
    if threads is not None and threads < 1:
        raise ValueError("threads must be at least 1")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.building")
    heavy = max(3, patients // 4000)

    steps = tqdm(
        total=7,
        desc="demo warehouse",
        unit="step",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        config: dict[str, Any] = {}
        if threads is not None:
            config["threads"] = threads
        con = duckdb.connect(str(tmp), config=config)
        try:
            # DuckDB's own progress bar would print to stdout; progress is reported with tqdm.
            con.execute("SET enable_progress_bar = false")
            steps.set_description("demo warehouse: schema")
            con.execute(_SCHEMA)
            con.execute(_MACROS)
            dept_rows = ", ".join(
                f"({_sql_str(n)}, {_sql_str(b)}, {f})" for n, b, f, *_ in _DEPARTMENTS
            )
            con.execute(f"INSERT INTO departments SELECT * FROM (VALUES {dept_rows}) ORDER BY 1")
            steps.update()

            steps.set_description("demo warehouse: patient profiles")
            con.execute(_patient_profiles_sql(seed, patients, heavy))
            steps.update()

            steps.set_description("demo warehouse: patients")
            con.execute(
                "INSERT INTO patients SELECT patient_id, ssn, name, email, sex, birth_year, zip3, "
                "insurance FROM gen_patients ORDER BY patient_id"
            )
            steps.set_postfix(patients=f"{patients:,}")
            steps.update()

            steps.set_description("demo warehouse: generating visits")
            con.execute(_visits_sql(seed))
            n_gen = _scalar(con, "SELECT count(*) FROM gen_visits")
            steps.set_postfix(patients=f"{patients:,}", visits=f"{n_gen:,}")
            steps.update()

            steps.set_description("demo warehouse: visits")
            con.execute(_insert_visits_sql(seed))
            steps.update()

            steps.set_description("demo warehouse: summary")
            n_patients = _scalar(con, "SELECT count(*) FROM patients")
            n_visits = _scalar(con, "SELECT count(*) FROM visits")
            n_departments = _scalar(con, "SELECT count(*) FROM departments")
            max_visits = _scalar(
                con, "SELECT max(n) FROM (SELECT count(*) AS n FROM visits GROUP BY patient_id)"
            )
            con.execute("DROP TABLE gen_visits")
            con.execute("DROP TABLE gen_patients")
            con.execute("CHECKPOINT")
            steps.update()
        finally:
            con.close()

        steps.set_description("demo warehouse: install")
        _fsync_path(tmp)
        # A write-ahead log left by an older database at `path` must not be replayed onto this one.
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + ".wal").unlink()
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
        steps.update()
    except BaseException:
        _remove_database_files(tmp)
        raise
    finally:
        steps.close()

    return DemoSummary(
        path=path,
        patients=n_patients,
        visits=n_visits,
        departments=n_departments,
        max_visits_per_patient=max_visits,
    )


def ensure_demo_warehouse(path: Path, **kwargs: Any) -> Path:
    """Return ``path``, building the demo warehouse there first if no file exists yet."""
    path = Path(path)
    if not path.exists():
        build_demo_warehouse(path, **kwargs)
    return path
