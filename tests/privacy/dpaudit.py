"""Empirical privacy auditing (DP-Sniper / StatDP style): choose an event, then bound its odds.

A mechanism M is (ε, δ)-DP when, for neighbours D, D′ and every output event S,
``P[M(D′) ∈ S] ≤ e^ε · P[M(D) ∈ S] + δ`` (and the same with D, D′ swapped). Statistics cannot prove
that, but they can *refute* it: draw samples of M(D) and M(D′), pick the most distinguishing event on
a first sample, and on a fresh sample compute

* ``p1_low``  — a one-sided 99.5 % Clopper–Pearson lower bound on P[M(D′) ∈ S],
* ``p0_high`` — a one-sided 99.5 % Clopper–Pearson upper bound on P[M(D) ∈ S].

With probability ≥ 99 % (union bound) both hold, so ``ε̂ = ln(p1_low / p0_high)`` is a 99 % lower
bound on the mechanism's true ε for that event, and ``δ̂ = p1_low − e^ε · p0_high`` a 99 % lower
bound on the δ the mechanism needs at the claimed ε. A sound mechanism gives ε̂ ≤ ε (δ̂ ≤ δ) except
with probability ≤ 1 %.

**Confirmation.** Noise comes from OpenDP and cannot be seeded, so a correct mechanism would fail a
single 99 % test about once in a hundred runs. An audit is therefore *flagged* only when the bound
exceeds the claim on the fresh sample **and** on a second, independent fresh sample (drawn only in that
case). A sound mechanism is flagged with probability ≤ 10⁻⁴; a clearly under-noised one is still
flagged almost surely (its per-stage power is ~1). The long tier also measures the single-stage flag
rate of the controls.

Events are threshold sets ``{f ≥ t}`` and ``{f ≤ t}`` on scalar features ``f`` of one output (for
example the released value, or the number of released groups). That family contains the optimal
(likelihood-ratio) events of the Laplace tails, which is why it finds ε̂ close to ε for counts and sums.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from scipy.stats import beta

#: One-sided level of each of the two Clopper–Pearson bounds: together a 99 % statement.
ALPHA = 0.005

Features = tuple[float, ...]
Sampler = Callable[[int, int], list[Features]]  # (side 0 = D / 1 = D′, n) -> n outputs


@lru_cache(maxsize=200_000)
def cp_lower(k: int, n: int, alpha: float = ALPHA) -> float:
    """One-sided Clopper–Pearson lower bound on a binomial proportion.

    >>> cp_lower(0, 100)
    0.0
    >>> round(cp_lower(50, 100), 3)
    0.371
    """
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


@lru_cache(maxsize=200_000)
def cp_upper(k: int, n: int, alpha: float = ALPHA) -> float:
    """One-sided Clopper–Pearson upper bound on a binomial proportion.

    >>> round(cp_upper(0, 50_000), 7)
    0.000106
    """
    return 1.0 if k == n else float(beta.ppf(1 - alpha, k + 1, n - k))


@dataclass(frozen=True)
class Event:
    """``{feature[index] >= t}`` (op "ge"), ``{feature[index] <= t}`` ("le") or ``== t`` ("eq").

    ``high`` is the side (0 = D, 1 = D′) whose probability is bounded from below.
    """

    index: int
    op: str
    t: float
    high: int

    def count(self, column: Sequence[float]) -> int:
        """How many of the *sorted* values fall in the event."""
        if self.op == "ge":
            return len(column) - bisect.bisect_left(column, self.t)
        if self.op == "eq":
            return bisect.bisect_right(column, self.t) - bisect.bisect_left(column, self.t)
        return bisect.bisect_right(column, self.t)

    def describe(self, names: Sequence[str]) -> str:
        side = "D′" if self.high == 1 else "D"
        sym = {"ge": "≥", "le": "≤", "eq": "="}[self.op]
        return f"{names[self.index]} {sym} {self.t:g} (more likely under {side})"


@dataclass(frozen=True)
class Bound:
    """The two bounds for one event on one sample, and what they imply."""

    event: Event
    k_high: int
    n_high: int
    k_low: int
    n_low: int
    p_high_lower: float
    p_low_upper: float
    eps_hat: float
    delta_hat: float  # at the claimed epsilon


def bound(event: Event, high: Sequence[float], low: Sequence[float], epsilon: float) -> Bound:
    """Bounds for ``event`` given sorted feature columns of the high and the low side."""
    k1, k0 = event.count(high), event.count(low)
    n1, n0 = len(high), len(low)
    p1, p0 = cp_lower(k1, n1), cp_upper(k0, n0)
    eps_hat = math.log(p1 / p0) if p1 > 0 else -math.inf
    return Bound(event, k1, n1, k0, n0, p1, p0, eps_hat, p1 - math.exp(epsilon) * p0)


def _columns(samples: Sequence[Features]) -> list[list[float]]:
    width = len(samples[0])
    return [sorted(s[i] for s in samples) for i in range(width)]


def _candidates(a: list[float], b: list[float], limit: int = 300) -> list[float]:
    pooled = sorted(set(a) | set(b))
    if len(pooled) <= limit:
        return pooled
    step = len(pooled) / limit
    return [pooled[int(i * step)] for i in range(limit)]


def select_event(
    s0: Sequence[Features],
    s1: Sequence[Features],
    epsilon: float,
    objective: str,
    min_p: float = 0.0,
    ops: Sequence[str] = ("ge", "le"),
) -> Bound:
    """The event maximising ``objective`` ("epsilon": ε̂, "delta": δ̂) on the *selection* sample.

    ``min_p`` restricts the search to events whose lower probability bound reaches it (used to
    look for the ε part of an (ε, δ) mechanism on frequent events, where δ cannot explain much).
    """
    c0, c1 = _columns(s0), _columns(s1)
    best: Bound | None = None

    def score(b: Bound) -> float:
        if b.p_high_lower < min_p:
            return -math.inf
        return b.eps_hat if objective == "epsilon" else b.delta_hat

    for j in range(len(c0)):
        for t in _candidates(c0[j], c1[j]):
            for op in ops:
                for high in (0, 1):
                    hi, lo = (c1[j], c0[j]) if high == 1 else (c0[j], c1[j])
                    b = bound(Event(j, op, t, high), hi, lo, epsilon)
                    if best is None or score(b) > score(best):
                        best = b
    assert best is not None
    return best


def evaluate(event: Event, s0: Sequence[Features], s1: Sequence[Features], epsilon: float) -> Bound:
    """Bounds for a fixed event on a fresh sample."""
    c0 = sorted(s[event.index] for s in s0)
    c1 = sorted(s[event.index] for s in s1)
    hi, lo = (c1, c0) if event.high == 1 else (c0, c1)
    return bound(event, hi, lo, epsilon)


@dataclass(frozen=True)
class Audit:
    """The outcome of one audit of one mechanism on one pair of neighbours."""

    name: str
    epsilon: float
    delta: float
    n_select: int
    n_final: int
    event: str
    selection: Bound
    final: Bound
    confirmation: Bound | None

    def exceeds(self, b: Bound) -> bool:
        # δ̂ > δ is the (ε, δ) inequality; for δ = 0 it is the same test as ε̂ > ε.
        return b.delta_hat > self.delta

    @property
    def flagged(self) -> bool:
        """Exceeds the claim on the fresh sample and on the confirmation sample."""
        return (
            self.exceeds(self.final)
            and self.confirmation is not None
            and self.exceeds(self.confirmation)
        )

    @property
    def flagged_once(self) -> bool:
        """Exceeds the claim on the first fresh sample (the plain single-stage 99 % test)."""
        return self.exceeds(self.final)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "n_select": self.n_select,
            "n_final": self.n_final,
            "event": self.event,
            "eps_hat": round(self.final.eps_hat, 4),
            "delta_hat": self.final.delta_hat,
            "p_high_lower": self.final.p_high_lower,
            "p_low_upper": self.final.p_low_upper,
            "flagged_once": self.flagged_once,
            "flagged": self.flagged,
        }


def audit(
    name: str,
    sampler: Sampler,
    *,
    epsilon: float,
    delta: float,
    n_select: int,
    n_final: int,
    feature_names: Sequence[str],
    confirm: bool = True,
    objective: str | None = None,
    min_p: float = 0.0,
    ops: Sequence[str] = ("ge", "le"),
) -> Audit:
    """Select an event on ``n_select`` outputs per side, bound it on ``n_final`` fresh outputs per
    side, and confirm on another ``n_final`` when the first bound exceeds the claim.

    The objective defaults to ε̂ for pure DP (δ = 0) and δ̂ for approximate DP. Whatever the
    objective, the verdict is the (ε, δ) inequality: flagged when δ̂ > δ (for δ = 0: ε̂ > ε).
    """
    objective = objective or ("epsilon" if delta == 0 else "delta")
    sel = select_event(sampler(0, n_select), sampler(1, n_select), epsilon, objective, min_p, ops)
    event = sel.event
    final = evaluate(event, sampler(0, n_final), sampler(1, n_final), epsilon)
    result = Audit(
        name, epsilon, delta, n_select, n_final, event.describe(feature_names), sel, final, None
    )
    if confirm and result.exceeds(final):
        again = evaluate(event, sampler(0, n_final), sampler(1, n_final), epsilon)
        result = Audit(name, epsilon, delta, n_select, n_final, result.event, sel, final, again)
    record("epsilon_audit", **result.summary())
    return result


def record(kind: str, **fields: Any) -> None:
    """Append measured figures to ``$PRIVGATE_PRIVACY_FIGURES`` (JSON lines) when it is set.

    ``bench/privacy_long.py`` sets it and prints the table for docs/privacy-verification.md.
    """
    path = os.environ.get("PRIVGATE_PRIVACY_FIGURES")
    if not path:
        return
    row = {"kind": kind, **{k: _plain(v) for k, v in fields.items()}}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, Bound | Event):
        return asdict(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
