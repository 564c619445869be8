"""What the input policy decides about one image, in words that carry no numbers, and the plain checks of its settings.

A decision's ``detail`` is a fixed sentence per failed check (the accepted shape and pixel range, the public input
contract, are its only figures): a measured statistic or a calibrated limit in an error would be a continuous oracle
on the weights and a guide for sponge crafters. Torch only.
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

REASONS = ("ok", "shape", "dtype", "non_finite", "range", "variance", "energy", "reconstruction")
DETAIL = {
    "dtype": "pixel values must be floating point numbers",
    "non_finite": "the image contains NaN or infinite values",
    "variance": "the image's pixel variance is above the accepted limit",
    "energy": "the image's activation energy is above the accepted limit",
    "density": "the image's share of non-zero activations is above the accepted limit",
    "layer_density": "the share of non-zero activations in one layer of the network is above the accepted limit",
    "layer_energy": "the activation energy of one layer of the network is above the accepted limit",
    "layer_positive": "the share of positive activations in one layer of the network is above the accepted limit",
    "reconstruction": "the image does not resemble the digits the policy was calibrated on",
}


@dataclass(frozen=True)
class PolicyDecision:
    """Whether one image is allowed; ``reason`` is "ok" or the failed check (one of REASONS), ``detail`` one fixed sentence."""

    allowed: bool
    reason: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"reason must be one of {REASONS}; got {self.reason!r}")


def positive_or_none(name: str, value: Optional[float]) -> Optional[float]:
    """``float(value)``, or None; ValueError unless positive and finite."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number or None; got {value!r}")
    return float(value)


def layer_limits(name: str, value) -> Optional[Tuple[float, ...]]:
    """``value`` as a non-empty tuple of positive floats, or None; ValueError naming ``name`` otherwise."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a list of positive numbers or None; got {value!r}")
    limits = tuple(positive_or_none(name, v) for v in value)
    if not limits or None in limits:
        raise ValueError(f"{name} must be a non-empty list of positive numbers or None; got {value!r}")
    return limits


def pixel_stats(x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Per-image non-finite count, min, max and population variance of a floating batch, on CPU."""
    flat = x.detach().reshape(len(x), -1)
    flat = flat if flat.dtype == torch.float64 else flat.float()  # half → float32; float64 kept (MPS has none)
    n_bad = (~torch.isfinite(flat)).sum(1)
    clean = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
    stats = (n_bad, clean.min(1).values, clean.max(1).values, clean.var(1, correction=0))
    return tuple(t.cpu() for t in stats)
