"""Calibration of an :class:`~secure_ml.defenses.input_policy.InputPolicy` on clean non-member digits (its classmethods
``calibrate`` and ``from_scores`` call these): which checks, the false-positive budget split over them, the headroom."""

from typing import Optional, Sequence

import torch
from torch import nn

from secure_ml.defenses.calibration import budget_k, calibrate_activation_limits, default_checks

HEADROOM = 0.1  # limits sit 10% of the clean spread above their order statistic: 800 digits cannot pin a 0.17% tail
CHECK_FIELD = {
    "energy": "max_energy",
    "density": "max_density",
    "layer_density": "max_layer_density",
    "layer_energy": "max_layer_energy",
    "layer_positive": "max_layer_positive",
    "reconstruction": "max_reconstruction",
}


def calibrate(
    cls,
    model: nn.Module,
    clean_x: torch.Tensor,
    false_positive_rate: float = 0.005,
    headroom: float = HEADROOM,
    checks: Optional[Sequence[str]] = None,
    **kwargs,
):
    """A ``cls`` (InputPolicy) whose activation limits are calibrated on ``clean_x`` (clean NON-MEMBER digits), see :mod:`~secure_ml.defenses.calibration`.

    The checks that apply to the net's activations (:func:`~secure_ml.defenses.calibration.default_checks`)
    are calibrated unless given in ``kwargs`` (``None`` disables one; the others stay None); the budget
    ``false_positive_rate`` is split evenly over the calibrated ones, and ``headroom`` lifts each limit
    by that share of its statistic's spread. Other ``kwargs`` go to the constructor (``max_variance``
    keeps its fixed default). ``checks`` (names from ``POLICY_CHECKS``) overrides which checks are
    calibrated, e.g. one check alone in a threshold sweep.
    """
    if not isinstance(clean_x, torch.Tensor) or clean_x.dim() < 1 or len(clean_x) == 0:
        raise ValueError("clean_x must be a non-empty batch of clean images")
    base = cls(**{**kwargs, **{name: None for name in CHECK_FIELD.values() if name not in kwargs}})
    rejected = [d for d in base.check_batch(clean_x, model) if not d.allowed]
    if rejected:
        raise ValueError(f"{len(rejected)} of {len(clean_x)} calibration images fail the policy; first: {rejected[0].detail}")
    if all(name in kwargs for name in CHECK_FIELD.values()):
        return base
    scores = base.scores(model, clean_x.detach().reshape(len(clean_x), *base.shape))
    return from_scores(cls, scores, false_positive_rate, headroom, checks, **kwargs)


def from_scores(
    cls, scores: dict, false_positive_rate: float = 0.005, headroom: float = HEADROOM, checks: Optional[Sequence[str]] = None, **kwargs
):
    """:func:`calibrate` from precomputed clean ``activation_scores`` (the caller vouches the digits pass the other checks)."""
    if not 0.0 < false_positive_rate < 1.0:
        raise ValueError(f"false_positive_rate must lie in (0, 1); got {false_positive_rate}")
    if isinstance(headroom, bool) or not isinstance(headroom, (int, float)) or not 0.0 <= headroom < 10.0:
        raise ValueError(f"headroom must lie in [0, 10); got {headroom!r}")
    if checks is not None and (isinstance(checks, str) or not set(checks) <= set(CHECK_FIELD)):
        raise ValueError(f"checks must be a list of {tuple(CHECK_FIELD)}; got {checks!r}")
    todo = [check for check in (default_checks(scores) if checks is None else checks) if CHECK_FIELD[check] not in kwargs]
    if "reconstruction" in todo and "reconstruction" not in scores:
        raise ValueError("the reconstruction check needs an autoencoder: pass reconstruction_net")
    n = len(scores["energy"])
    limits = calibrate_activation_limits(scores, todo, budget_k(n, false_positive_rate, len(todo)), headroom)
    positive = {c: v for c, v in limits.items() if (min(v) if isinstance(v, tuple) else v) > 0}
    unset = {name: None for name in CHECK_FIELD.values() if name not in kwargs}
    return cls(**{**kwargs, **unset, **{CHECK_FIELD[c]: positive.get(c) for c in todo}})
