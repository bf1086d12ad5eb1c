"""Run the privacy suite's long tier (or the CI tier) and print the measured figures.

    .venv/bin/python bench/privacy_long.py            # long tier: pytest tests/privacy -m slow
    .venv/bin/python bench/privacy_long.py --ci       # CI tier only (the default pytest run)
    .venv/bin/python bench/privacy_long.py --all      # both tiers
    .venv/bin/python bench/privacy_long.py --report figures.jsonl   # re-print saved figures

The tests append what they measure (ε̂ per aggregate kind, control flag rates, float-attack counts,
attack and fuzz figures) as JSON lines to ``$PRIVGATE_PRIVACY_FIGURES``; this script sets it, runs
pytest, and prints Markdown tables for docs/privacy-verification.md. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_pytest(marker: str | None, figures: Path, extra: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", "tests/privacy", "-q", "-p", "no:cacheprovider"]
    if marker:
        cmd += ["-m", marker]
    cmd += extra
    env = {**os.environ, "PRIVGATE_PRIVACY_FIGURES": str(figures)}
    started = time.monotonic()
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    print(f"\n{' '.join(cmd[2:])}: exit {code} in {time.monotonic() - started:.0f} s\n")
    return code


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def report(figures: Path) -> None:
    rows = [json.loads(line) for line in figures.read_text().splitlines() if line.strip()]

    def table(title: str, kind: str, cols: list[str]) -> None:
        picked = [r for r in rows if r["kind"] == kind]
        if not picked:
            return
        print(f"### {title}\n")
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in picked:
            print("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
        print()

    table(
        "Empirical ε audits",
        "epsilon_audit",
        ["name", "epsilon", "delta", "n_select", "n_final", "eps_hat", "delta_hat", "event",
         "flagged_once", "flagged"],
    )  # fmt: skip
    table("Control flag rates (single-stage)", "control_flag_rate", ["name", "flagged", "runs"])
    table(
        "Threshold δ, exact",
        "threshold_exact",
        ["k", "share", "delta", "tau", "scale", "p_release", "ratio"],
    )
    table(
        "Floating-point attack",
        "float_attack",
        ["mechanism", "samples_per_side", "off_grid", "k0", "k1", "eps_hat", "eps_hat_low_bits"],
    )
    table(
        "Attacks",
        "attack",
        ["name", "pair", "sql", "pairs", "runs", "sd", "expected_sd", "rows_released", "fresh",
         "fresh_and_charged", "variants", "requests"],
    )  # fmt: skip
    table(
        "Timing (ms, medians)",
        "timing",
        ["rejected_rare_ms", "rejected_common_ms", "rejected_mannwhitney_p", "accepted_rare_ms",
         "accepted_all_ms", "accepted_first_rare_ms", "accepted_first_all_ms"],
    )  # fmt: skip
    table("Sandbox", "sandbox", ["door", "payloads", "refused", "canary_leaks", "codes"])
    table(
        "Fuzzing", "fuzz", ["door", "generator", "cases", "statuses", "known_findings", "failures"]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ci", action="store_true", help="run the CI tier only")
    parser.add_argument("--all", action="store_true", help="run the CI tier and the long tier")
    parser.add_argument("--report", type=Path, help="print saved figures and exit")
    parser.add_argument("--figures", type=Path, help="where to keep the figures (JSON lines)")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return 0
    figures = args.figures or Path(tempfile.mkstemp(prefix="privacy-figures-", suffix=".jsonl")[1])
    code = 0
    if args.ci or args.all:
        code |= run_pytest(None, figures, args.pytest_args)
    if not args.ci:
        code |= run_pytest("slow", figures, args.pytest_args)
    report(figures)
    print(f"figures: {figures}")
    return code


if __name__ == "__main__":
    sys.exit(main())
