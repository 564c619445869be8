"""Calibrating the input policy's activation checks on clean non-member digits.

Checks (each one statistic per image, rejected when strictly above its limit):

* ``energy``: the L2 activation energy (:mod:`secure_ml.defenses.energy`);
* ``density``: the share of non-zero hidden activations (L0);
* ``layer_density``: every hidden layer's own density, bounded at the same relative level:
  the image's score is ``max_l density_l / mean_l`` (``mean_l``: the mean density of layer ``l``
  on the calibration digits), so an attacker cannot move non-zeros into one costly layer while
  the total stays low. The per-layer limits stored in the policy are ``limit · mean_l``;
* ``layer_energy``: every hidden layer's L2 energy; ``layer_positive``: every hidden layer's share
  of activations > 0. Both are held at the same level of each layer's own clean spread: the
  image's score is ``max_l (value_l − median_l) / (q99_l − median_l)`` over the calibration
  digits' median and 99th percentile, and the stored limits are ``median_l + limit · (q99_l − median_l)``;
* ``reconstruction``: the L1 errors of the policy's autoencoder of digit shapes on the faint and on the background
  pixels (:mod:`secure_ml.defenses.reconstruction`), when the policy has one: scores ``(B, 2)`` the caller adds to
  the activation scores under this key, held like ``layer_energy`` (each error at its own clean spread, one limit
  for the pair; the stored limits are one per error).

Which checks apply is resolved once from the clean scores (:func:`default_checks`). Where the
activations have exact zeros (ReLU: the median clean density is below 1) the density checks bound
the L0 cost: ``energy``, ``density``, ``layer_density``, as before. Where they do not (tanh, GELU,
SiLU: density is 1 for every input, so a density limit calibrates to 1 and bounds nothing) the
budget of the vacuous density checks goes to ``layer_energy`` (an L2 sponge on a bounded activation
concentrates its energy in one layer: on the hardened TanhCNN, the first hidden layer) and
``layer_positive`` (the count of positive pre-activations, which the L0 sponge objective raises):
``energy``, ``layer_energy``, ``layer_positive``. With an autoencoder, ``reconstruction`` is calibrated as well (one more share of the budget).

Budget. With J calibrated checks and a false-positive budget α, each check gets α/J (Bonferroni:
the union then rejects at most α of clean digits, whatever the checks' correlation). A check's
limit on N calibration digits is the (k+1)-th largest value with ``k = ⌊(α/J)(N+1)⌋ − 1``: for a
new clean digit exchangeable with the calibration digits, P(value > limit) ≤ (k+1)/(N+1) ≤ α/J
(split conformal). When N is too small for that (``k < 0``, e.g. fewer than 599 digits for
α = 0.5% and J = 3) the limit is the maximum and the bound is J/(N+1) instead; :func:`budget_k`
returns 0 then. Only non-member digits may be used: a limit is an order statistic of one digit.
"""

import math
from typing import Dict, Sequence, Tuple

import torch
from torch import nn

from secure_ml.defenses.energy import activation_energy

ACTIVATION_CHECKS = ("energy", "density", "layer_density", "layer_energy", "layer_positive")
LAYER_CHECKS = ("layer_density", "layer_energy", "layer_positive")  # one limit per hidden layer
COMPONENT_CHECKS = LAYER_CHECKS + ("reconstruction",)  # one limit per column of the scores (hidden layer; reconstruction error)
SHARE_CHECKS = ("density", "layer_density", "layer_positive")  # shares: a limit above 1 is clamped to 1
SPARSE_CHECKS = ("energy", "density", "layer_density")  # activations with exact zeros (ReLU)
DENSE_CHECKS = ("energy", "layer_energy", "layer_positive")  # activations never zero (tanh, GELU, SiLU)
POLICY_CHECKS = ACTIVATION_CHECKS + ("reconstruction",)  # every calibrated check, in the order the policy reports them


def budget_k(n: int, false_positive_rate: float, n_checks: int) -> int:
    """Calibration digits each check may reject: ``max(0, ⌊(α/J)(N+1)⌋ − 1)``."""
    return max(0, math.floor(false_positive_rate / max(n_checks, 1) * (n + 1)) - 1)


def activation_scores(model: nn.Module, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-image statistics of the activation checks: ``energy``, ``density`` (B,) and the per-layer ones (B, L)."""
    return scores_from_energy(activation_energy(model, x))


def scores_from_energy(stats: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The activation checks' statistics from :func:`secure_ml.defenses.energy.activation_energy`'s dict."""
    return {
        "energy": stats["l2_energy"],
        "density": stats["density"],
        "layer_density": stats["layer_density"],
        "layer_energy": stats["layer_l2"],
        "layer_positive": stats["layer_positive"],
    }


def default_checks(scores: Dict[str, torch.Tensor]) -> Tuple[str, ...]:
    """:data:`SPARSE_CHECKS` when the clean activations have exact zeros (median density below 1), else :data:`DENSE_CHECKS`;
    plus ``reconstruction`` when ``scores`` has it (the policy has an autoencoder)."""
    base = SPARSE_CHECKS if float(scores["density"].double().median()) < 1.0 else DENSE_CHECKS
    return base + ("reconstruction",) if "reconstruction" in scores else base


def layer_affine(name: str, layer_scores: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(offset_l, scale_l)`` per column of a per-layer check (or of the reconstruction errors): a column's score is ``(value_l − offset_l) / scale_l``.

    ``layer_density``: ``(0, mean_l)`` (:func:`layer_scale`, as in policy version 2). ``layer_energy``,
    ``layer_positive``, ``reconstruction``: ``(median_l, q99_l − median_l)``, the layer's own clean upper spread, so a
    layer whose statistic barely varies on clean digits (the share of positive activations of a
    wide layer) is held as tightly as one that varies a lot (a 0.5× mean would bound nothing there).
    """
    v = layer_scores.double()
    if name == "layer_density":
        return torch.zeros(v.shape[1], dtype=torch.float64), layer_scale(v)
    median = v.median(0).values
    return median, (torch.quantile(v, 0.99, dim=0) - median).clamp(min=1e-12)


def _statistic(scores: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """The one value per image a check compares: the score itself, or ``max_l`` of the layer scores (:func:`layer_affine`)."""
    v = scores[name].double()
    if name not in COMPONENT_CHECKS:
        return v
    offset, scale = layer_affine(name, v)
    return ((v - offset) / scale).max(1).values


def order_limit(values: torch.Tensor, k: int, headroom: float = 0.0) -> float:
    """``q + headroom · (q − median)`` with q the (k+1)-th largest of ``values`` (k values lie strictly above q, barring ties)."""
    ranked = torch.sort(values.double(), descending=True).values
    q = float(ranked[min(k, len(ranked) - 1)])
    return q + headroom * max(q - float(values.double().median()), 0.0)


def layer_scale(layer_scores: torch.Tensor) -> torch.Tensor:
    """``mean_l`` per hidden layer (a layer never active on clean digits gets 1, so any activity there scores high)."""
    mean = layer_scores.double().mean(0)
    return torch.where(mean > 0, mean, torch.ones_like(mean))


def calibrate_activation_limits(scores: Dict[str, torch.Tensor], checks: Sequence[str], k: int, headroom: float = 0.0) -> Dict[str, object]:
    """Limits of ``checks`` from clean scores (:func:`activation_scores`): a float per check, a tuple per per-layer check.

    ``headroom`` moves each limit above its order statistic by that share of the statistic's spread
    (order statistic − median), see :func:`order_limit`.
    """
    limits: Dict[str, object] = {}
    for name in checks:
        if name in COMPONENT_CHECKS:
            offset, scale = layer_affine(name, scores[name])
            per_layer = offset + order_limit(_statistic(scores, name), k, headroom) * scale
            limits[name] = tuple(float(v) for v in (per_layer.clamp(max=1.0) if name in SHARE_CHECKS else per_layer))
        else:
            limits[name] = order_limit(scores[name], k, headroom)
    return limits


def leave_one_out_rejected(scores: Dict[str, torch.Tensor], checks: Sequence[str], k: int, headroom: float = 0.0) -> torch.Tensor:
    """Which calibration digits a policy calibrated on the *other* N−1 digits would reject (bool, shape (N,)).

    Only a digit among the top k+1 of a check's statistic can fail that check in such a policy, and
    its limit is then built on the (k+2)-th largest value, so no refit is needed. The mean is the
    split-conformal estimate of the false-positive rate from the calibration digits alone. The
    median inside the headroom and the per-layer means of the per-layer checks are kept from all N
    digits (a negligible difference).
    """
    n = len(next(iter(scores.values())))
    rejected = torch.zeros(n, dtype=torch.bool)
    if n < 2:
        return rejected
    for name in checks:
        v = _statistic(scores, name)
        ranked = torch.sort(v, descending=True).values
        q = float(ranked[min(k + 1, n - 1)])
        limit = q + headroom * max(q - float(v.median()), 0.0)
        rejected |= (v >= ranked[min(k, n - 1)]) & (v > limit)
    return rejected


def violated(scores: Dict[str, torch.Tensor], limits: Dict[str, object]) -> Dict[str, torch.Tensor]:
    """Per check, which images exceed their limit (bool, shape (B,)); checks whose limit is None are skipped."""
    out = {}
    for name in POLICY_CHECKS:
        limit = limits.get(name)
        if limit is None:
            continue
        if name in COMPONENT_CHECKS:
            out[name] = (scores[name].double() > torch.tensor(limit, dtype=torch.float64)).any(1)
        else:
            out[name] = scores[name].double() > limit
    return out
