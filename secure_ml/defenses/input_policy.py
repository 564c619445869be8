"""Input validation policy for pixel-space images, shared by the scorecard and the inference service.

Checks run in a fixed order and the first failure is reported: ``shape`` → ``dtype`` →
``non_finite`` → ``range`` → ``variance`` → ``energy``. Every check is a fixed number of
tensor reductions over the image (plus, for ``energy``, one batched forward pass), so the
cost is bounded by the accepted shape; an oversized input fails ``shape`` before any work.

The seed notebook checked ``|x| ≤ 3`` and ``var(x) ≤ 2`` on *normalised* inputs; we work in
pixel space ``[0, 1]``, where a variance can never exceed 0.25 (half 0s, half 1s).
``max_variance = 0.22`` by default: on the 10,000 real MNIST digits in ``shared/data``
the per-image (population) pixel variance ranges 0.018–0.208 (99.9% quantile 0.185), while
the seed's N(0, 5²) noise clipped to [0, 1] has variance ≥ 0.226; unclipped it fails ``range``.

``energy`` uses the activation statistics of :func:`secure_ml.attacks.sponge.activation_energy`:
``max_energy`` bounds the L2 energy (Σ post-ReLU²) and ``max_density`` — an addition to the
shared interface, default off — bounds the share of non-zero activations (the L0 energy of
Shumailov et al.), which separates noise from digits far better than L2 on a trained SmallCNN.
Both are set by :meth:`InputPolicy.calibrate` from clean held-out digits.
"""

import math
from dataclasses import asdict, dataclass, fields
from typing import List, Optional, Tuple

import torch
from torch import nn

from secure_ml.attacks.sponge import activation_energy

REASONS = ("ok", "shape", "dtype", "non_finite", "range", "variance", "energy")
_CALIBRATED = ("max_variance", "max_energy", "max_density")


@dataclass
class PolicyDecision:
    """Whether one image is allowed; ``reason`` is "ok" or the first failed check, ``detail`` one sentence."""

    allowed: bool
    reason: str
    detail: str = ""


def _positive_or_none(name: str, value: Optional[float]) -> Optional[float]:
    """``float(value)``, or None; ValueError unless positive and finite."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number or None; got {value!r}")
    return float(value)


def _pixel_stats(x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Per-image non-finite count, min, max and population variance of a floating batch, on CPU."""
    flat = x.detach().reshape(len(x), -1)
    flat = flat if flat.dtype == torch.float64 else flat.float()  # half → float32; float64 kept (MPS has none)
    n_bad = (~torch.isfinite(flat)).sum(1)
    clean = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
    stats = (n_bad, clean.min(1).values, clean.max(1).values, clean.var(1, correction=0))
    return tuple(t.cpu() for t in stats)


@dataclass
class InputPolicy:
    """Accept-list for one pixel-space image: shape, floating dtype, finite values in range, bounded variance and activation energy."""

    shape: Tuple[int, ...] = (1, 28, 28)
    min_value: float = 0.0
    max_value: float = 1.0
    max_variance: Optional[float] = 0.22
    max_energy: Optional[float] = None
    max_density: Optional[float] = None

    def __post_init__(self) -> None:
        """Validate and normalise the fields (ValueError naming the bad one)."""
        try:
            self.shape = tuple(int(d) for d in self.shape)
        except (TypeError, ValueError):
            raise ValueError(f"shape must be a sequence of positive integers; got {self.shape!r}") from None
        if not self.shape or any(d < 1 for d in self.shape):
            raise ValueError(f"shape must be a non-empty sequence of positive integers; got {self.shape!r}")
        for name in ("min_value", "max_value"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number; got {v!r}")
            setattr(self, name, float(v))
        if self.min_value >= self.max_value:
            raise ValueError(f"min_value must be below max_value; got {self.min_value} and {self.max_value}")
        for name in _CALIBRATED:
            setattr(self, name, _positive_or_none(name, getattr(self, name)))

    def _accepted_shapes(self) -> Tuple[Tuple[int, ...], ...]:
        """The configured shape, plus the shape without its leading 1 (e.g. (28, 28) for (1, 28, 28))."""
        return (self.shape, self.shape[1:]) if len(self.shape) > 1 and self.shape[0] == 1 else (self.shape,)

    def _needs_model(self) -> bool:
        return self.max_energy is not None or self.max_density is not None

    def check(self, x: torch.Tensor, model: Optional[nn.Module] = None) -> PolicyDecision:
        """Decide on ONE image of shape ``shape`` (or ``shape`` without its leading 1)."""
        if not isinstance(x, torch.Tensor):
            return PolicyDecision(False, "dtype", f"expected a torch.Tensor; got {type(x).__name__}")
        if tuple(x.shape) not in self._accepted_shapes():
            return PolicyDecision(False, "shape", f"expected one image of shape {self._shape_text()}; got {tuple(x.shape)}")
        return self.check_batch(x.unsqueeze(0), model)[0]

    def _shape_text(self) -> str:
        return " or ".join(str(s) for s in self._accepted_shapes())

    def check_batch(self, x: torch.Tensor, model: Optional[nn.Module] = None) -> List[PolicyDecision]:
        """Decide on each image of a batch ``(B, *shape)``; the energy check is one forward over the images still allowed."""
        if self._needs_model() and model is None:
            raise ValueError("this policy bounds activation energy (max_energy/max_density), so check needs the model")
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"check_batch expects a torch.Tensor batch; got {type(x).__name__}")
        if x.dim() == 0:
            return [PolicyDecision(False, "shape", f"expected a batch of images of shape {self._shape_text()}; got a scalar")]
        b = x.shape[0]
        if tuple(x.shape[1:]) not in self._accepted_shapes():
            detail = f"expected images of shape {self._shape_text()}; got {tuple(x.shape[1:])}"
            return [PolicyDecision(False, "shape", detail) for _ in range(b)]
        if not x.is_floating_point():
            return [PolicyDecision(False, "dtype", f"pixel values must be floating point; got {x.dtype}") for _ in range(b)]
        if b == 0:
            return []
        n_bad, lo, hi, var = _pixel_stats(x)
        decisions: List[Optional[PolicyDecision]] = [None] * b
        for i in range(b):
            decisions[i] = self._static_decision(int(n_bad[i]), float(lo[i]), float(hi[i]), float(var[i]))
        survivors = [i for i in range(b) if decisions[i] is None]
        if survivors and self._needs_model():
            stats = activation_energy(model, x.detach()[survivors].reshape(len(survivors), *self.shape))
            for j, i in enumerate(survivors):
                decisions[i] = self._energy_decision(float(stats["l2_energy"][j]), float(stats["density"][j]))
        return [d if d is not None else PolicyDecision(True, "ok") for d in decisions]

    def _static_decision(self, n_bad: int, lo: float, hi: float, var: float) -> Optional[PolicyDecision]:
        """First failure among non_finite / range / variance, or None."""
        if n_bad:
            return PolicyDecision(False, "non_finite", f"image contains {n_bad} NaN or infinite value(s)")
        if lo < self.min_value or hi > self.max_value:
            return PolicyDecision(
                False, "range", f"pixel values must lie in [{self.min_value:g}, {self.max_value:g}]; got min {lo:.4g} and max {hi:.4g}"
            )
        if self.max_variance is not None and var > self.max_variance:
            return PolicyDecision(False, "variance", f"pixel variance {var:.4g} exceeds the limit {self.max_variance:.4g}")
        return None

    def _energy_decision(self, energy: float, density: float) -> Optional[PolicyDecision]:
        """``energy`` failure when the L2 energy or the activation density is over its limit, or None."""
        if self.max_energy is not None and energy > self.max_energy:
            return PolicyDecision(False, "energy", f"activation energy {energy:.4g} exceeds the limit {self.max_energy:.4g}")
        if self.max_density is not None and density > self.max_density:
            return PolicyDecision(False, "energy", f"activation density {density:.4g} exceeds the limit {self.max_density:.4g}")
        return None

    @classmethod
    def calibrate(cls, model: nn.Module, clean_x: torch.Tensor, false_positive_rate: float = 0.005, **kwargs) -> "InputPolicy":
        """Policy whose variance / energy / density limits each reject ⌊(fpr / k)·N⌋ of the N clean digits (k = limits calibrated).

        A limit passed in ``kwargs`` (including ``None`` to disable it) is kept as given; the other
        fields of ``kwargs`` go to the constructor. Splitting the budget over the k limits keeps
        the share of clean digits rejected by their union at or below ``false_positive_rate``.
        """
        if not 0.0 < false_positive_rate < 1.0:
            raise ValueError(f"false_positive_rate must lie in (0, 1); got {false_positive_rate}")
        todo = [name for name in _CALIBRATED if name not in kwargs]
        base = cls(**{**kwargs, **{name: None for name in todo}})
        if not isinstance(clean_x, torch.Tensor) or clean_x.dim() < 1 or len(clean_x) == 0:
            raise ValueError("clean_x must be a non-empty batch of clean images")
        rejected = [d for d in base.check_batch(clean_x, model) if not d.allowed]
        if rejected:
            raise ValueError(f"{len(rejected)} of {len(clean_x)} calibration images fail the policy; first: {rejected[0].detail}")
        n = len(clean_x)
        k = math.floor(false_positive_rate / max(len(todo), 1) * n)
        values = {}
        if "max_variance" in todo:
            values["max_variance"] = _pixel_stats(clean_x)[3]  # the statistic check_batch compares
        if "max_energy" in todo or "max_density" in todo:
            stats = activation_energy(model, clean_x.detach().reshape(n, *base.shape))
            values["max_energy"], values["max_density"] = stats["l2_energy"], stats["density"]
        limits = {}
        for name in todo:
            # The (k+1)-th largest value: exactly k clean images (barring ties) lie strictly above it.
            limit = float(torch.sort(values[name].double(), descending=True).values[k])
            limits[name] = limit if limit > 0 else None
        return cls(**{**kwargs, **limits})

    def to_dict(self) -> dict:
        """JSON-friendly dict (``shape`` as a list)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InputPolicy":
        """Inverse of :meth:`to_dict`; ValueError on unknown keys."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a dict; got {type(d).__name__}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown InputPolicy field(s): {', '.join(sorted(unknown))}")
        return cls(**d)
