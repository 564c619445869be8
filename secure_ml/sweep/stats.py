"""Mean ± std over repeats, and the one rule for calling a difference measurable.

Rule: two cells differ *measurably* when the difference of their means exceeds the repeat spread of
that difference, ``sqrt(std_a² + std_b²)`` (sample standard deviations over repeats). Otherwise the
summary says "no measurable difference". With a single repeat there is no spread; the summary then
says the spread is unknown instead of calling anything measurable.
"""

import math
from dataclasses import dataclass
from typing import Iterable, List, Optional

from secure_ml.report.metric_names import describe


@dataclass(frozen=True)
class Cell:
    """Mean, sample std (NaN for one value) and count of one metric over the repeats of one row."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> "Cell":
        vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if not vals:
            return cls(math.nan, math.nan, 0)
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan
        return cls(mean, std, len(vals))

    @property
    def empty(self) -> bool:
        return self.n == 0

    def text(self, digits: int = 3) -> str:
        if self.empty:
            return "–"
        if math.isinf(self.mean):
            return "∞"
        if self.n > 1:
            return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"
        return f"{self.mean:.{digits}f}"


@dataclass(frozen=True)
class Diff:
    """``b − a`` with its repeat spread; ``measurable`` is None when a spread cannot be computed (one repeat)."""

    value: float
    spread: float
    measurable: Optional[bool]

    def text(self, digits: int = 3) -> str:
        sign = "+" if self.value >= 0 else "−"
        core = f"{sign}{abs(self.value):.{digits}f}"
        return f"{core} ± {self.spread:.{digits}f}" if not math.isnan(self.spread) else core


def diff(a: Cell, b: Cell, digits: int = 3) -> Diff:
    """``b − a`` of the means *as the tables print them* (rounded to ``digits``), so a sentence's difference
    is the one a reader computes from the table; the spread is not rounded."""
    value = _shown(b.mean, digits) - _shown(a.mean, digits)
    if a.n > 1 and b.n > 1:
        spread = math.sqrt(a.std**2 + b.std**2)
        return Diff(value, spread, abs(value) > spread)
    return Diff(value, math.nan, None)


def _shown(x: float, digits: int) -> float:
    return x if math.isnan(x) or math.isinf(x) else round(x, digits)


def label(metric: str) -> str:
    """The registry's human label of a metric (its key when unknown)."""
    m = describe(metric)
    return m.label if m is not None else metric


def inline(metric: str) -> str:
    """:func:`label` for the middle of a sentence: "Clean accuracy" → "clean accuracy"; acronyms ("PGD accuracy", "MIA AUC") stay."""
    text = label(metric)
    return text[0].lower() + text[1:] if len(text) > 1 and text[0].isupper() and text[1].islower() else text


def better(metric: str) -> Optional[bool]:
    """True when higher is better, False when lower is, None when neither (from the registry)."""
    m = describe(metric)
    return m.higher_is_better if m is not None else None


def verdict(d: Diff, digits: int = 3) -> str:
    """``"+0.012 ± 0.004"``, ``"+0.003 ± 0.010, no measurable difference"`` or ``"+0.012 (one repeat: spread unknown)"``."""
    if d.measurable is None:
        return f"{d.text(digits)} (one repeat: spread unknown)"
    return d.text(digits) if d.measurable else f"{d.text(digits)}, no measurable difference"


def extremes(cells: List[tuple], metric: str) -> Optional[tuple]:
    """``(best_name, best_cell, worst_name, worst_cell)`` among ``[(name, Cell)]`` by the metric's direction (higher first when unknown)."""
    present = [(n, c) for n, c in cells if not c.empty and not math.isnan(c.mean)]
    if len(present) < 2:
        return None
    ordered = sorted(present, key=lambda nc: nc[1].mean, reverse=better(metric) is not False)
    return ordered[0][0], ordered[0][1], ordered[-1][0], ordered[-1][1]
