"""Exact privacy costs.

Costs are kept as :class:`fractions.Fraction` so that sums are exact: three charges of 0.1 add up to
exactly 0.3. The ledger stores them as integers of a fixed quantum (see :data:`EPSILON_QUANTUM`), and
every conversion to that quantum rounds *up*, so a stored charge is never smaller than the true one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from budgets.errors import InvalidCost

#: Integer units per 1.0 of epsilon in the ledger (1e-12 resolution).
EPSILON_QUANTUM = 10**12
#: Integer units per 1.0 of delta in the ledger (1e-18 resolution).
DELTA_QUANTUM = 10**18

Number = int | float | str | Decimal | Fraction


def to_fraction(value: Number) -> Fraction:
    """Convert a number to an exact fraction, reading floats by their shortest decimal form.

    >>> to_fraction(0.1) + to_fraction(0.1) + to_fraction(0.1) == to_fraction("0.3")
    True
    """
    if isinstance(value, Fraction):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidCost(f"not a finite number: {value!r}")
        return Fraction(Decimal(repr(value)))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidCost(f"not a finite number: {value!r}")
        return Fraction(value)
    try:
        return Fraction(value)
    except (ValueError, ZeroDivisionError) as exc:
        raise InvalidCost(f"not a number: {value!r}") from exc


def _ceil_units(value: Fraction, quantum: int) -> int:
    return math.ceil(value * quantum)


@dataclass(frozen=True, slots=True)
class PrivacyCost:
    """An (epsilon, delta) charge under basic sequential composition.

    >>> PrivacyCost.of("0.1") + PrivacyCost.of("0.2") == PrivacyCost.of("0.3")
    True
    """

    epsilon: Fraction
    delta: Fraction = Fraction(0)

    def __post_init__(self) -> None:
        if not isinstance(self.epsilon, Fraction) or not isinstance(self.delta, Fraction):
            raise InvalidCost("epsilon and delta must be Fractions; use PrivacyCost.of()")
        if self.epsilon < 0:
            raise InvalidCost(f"epsilon must be >= 0, got {float(self.epsilon)}")
        if not 0 <= self.delta < 1:
            raise InvalidCost(f"delta must be in [0, 1), got {float(self.delta)}")

    @classmethod
    def of(cls, epsilon: Number, delta: Number = 0) -> PrivacyCost:
        """Build a cost from any exact or decimal-readable number."""
        return cls(to_fraction(epsilon), to_fraction(delta))

    @classmethod
    def zero(cls) -> PrivacyCost:
        return cls(Fraction(0), Fraction(0))

    def __add__(self, other: PrivacyCost) -> PrivacyCost:
        return PrivacyCost(self.epsilon + other.epsilon, self.delta + other.delta)

    def __le__(self, other: PrivacyCost) -> bool:
        return self.epsilon <= other.epsilon and self.delta <= other.delta

    @property
    def epsilon_units(self) -> int:
        """Epsilon in ledger units, rounded up."""
        return _ceil_units(self.epsilon, EPSILON_QUANTUM)

    @property
    def delta_units(self) -> int:
        """Delta in ledger units, rounded up."""
        return _ceil_units(self.delta, DELTA_QUANTUM)

    @classmethod
    def from_units(cls, epsilon_units: int, delta_units: int) -> PrivacyCost:
        return cls(Fraction(epsilon_units, EPSILON_QUANTUM), Fraction(delta_units, DELTA_QUANTUM))

    def as_json(self) -> dict[str, str]:
        """Exact decimal strings (never floats) for envelopes and audit records."""
        return {"epsilon": fraction_str(self.epsilon), "delta": fraction_str(self.delta)}


def fraction_str(value: Fraction) -> str:
    """Render a fraction as an exact decimal when it has one, else to 18 significant digits.

    >>> fraction_str(Fraction(3, 10))
    '0.3'
    """
    if value == 0:
        return "0"
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den == 1:
        digits = max(twos, fives)
        text = f"{Decimal(value.numerator) / Decimal(value.denominator):.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return format(Decimal(value.numerator) / Decimal(value.denominator), ".18g")
