"""RMIA, offline (Zarifzadeh, Liu, Bichsel & Shokri, "Low-Cost High-Power Membership Inference Attacks", ICML 2024).

Per target record (x, y), with ``Pr(x | θ)`` the softmax probability a model gives the record's label:

    Pr(x) ≈ ½ ((1 + a) · mean over reference models of Pr(x | θ_ref) + (1 − a))        (offline: every reference is OUT for x)
    LR(x) = Pr(x | θ_target) / Pr(x)
    score(x) = fraction of population records z with LR(x) / LR(z) > γ

The reference models are trained on population data that contains neither the evaluated members nor
the evaluated non-members; the z records are population records outside every model's training set.
``a`` scales the OUT-only estimate of ``Pr(x)`` (the paper tunes it per dataset; 0.3 here, see
docs/dev/eval.md). For a fixed population and γ the score is a non-decreasing function of LR(x),
so its ROC is LR(x)'s; ties between scores (a finite population) are broken by LR(x).

Why RMIA rather than offline LiRA: RMIA stays strong with one or two reference models, and every
reference model costs a training run on a 2-core CPU; LiRA needs many to estimate per-record variances.
Written here (about 30 lines of maths) because ML Privacy Meter, its maintained implementation, is a
framework with its own training and data pipeline rather than a function over scores.
"""

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from secure_ml.attacks.scores import score_vector
from secure_ml.models.batching import EVAL_BATCH


@dataclass(frozen=True)
class RMIASettings:
    """Offline RMIA: ``offline_a`` scales Pr(x) from OUT models, ``gamma`` is the pairwise likelihood-ratio threshold."""

    offline_a: float = 0.3
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.offline_a <= 1:
            raise ValueError(f"offline_a must lie in [0, 1]; got {self.offline_a}")
        if not 0 < self.gamma < float("inf"):  # NaN fails too
            raise ValueError(f"gamma must be a finite number > 0; got {self.gamma}")


def label_probability(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """``Pr(x | θ)``: the softmax probability ``model`` gives each record's label, float64 on the CPU (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    p = next(model.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None else (x.device, x.dtype)
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                logits = model(x[i : i + batch_size].to(device=device, dtype=dtype)).double().cpu()
                out.append(F.softmax(logits, 1).gather(1, y[i : i + batch_size].long().cpu()[:, None]).squeeze(1))
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def likelihood_ratio(target_p: torch.Tensor, reference_p: torch.Tensor, offline_a: float) -> torch.Tensor:
    """LR = Pr(x | θ) / Pr(x) from the target's probabilities ``(n,)`` and the OUT references' ``(n, R)``."""
    if reference_p.dim() != 2 or reference_p.shape[0] != len(target_p) or reference_p.shape[1] < 1:
        raise ValueError(f"reference probabilities must be (n, R >= 1) for n = {len(target_p)}; got {tuple(reference_p.shape)}")
    prior = 0.5 * ((1 + offline_a) * reference_p.double().mean(1) + (1 - offline_a))
    return target_p.double() / prior


def rmia_scores(target_p_x, reference_p_x, target_p_z, reference_p_z, settings: RMIASettings = RMIASettings()) -> torch.Tensor:
    """RMIA score of each target record x against the population records z (higher = member); ties broken by LR(x)."""
    lr_x = likelihood_ratio(score_vector(target_p_x, "target probabilities"), torch.as_tensor(reference_p_x), settings.offline_a)
    lr_z = likelihood_ratio(score_vector(target_p_z, "population probabilities"), torch.as_tensor(reference_p_z), settings.offline_a)
    dominated = torch.searchsorted(torch.sort(lr_z).values, lr_x / settings.gamma, side="left")  # #{z : LR(z) < LR(x)/γ}
    rank = torch.argsort(torch.argsort(lr_x)).double() / max(len(lr_x), 1)  # in [0, 1): breaks ties, keeps the order
    return dominated.double() / len(lr_z) + rank / (len(lr_z) + 1)


def reference_probabilities(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(n, R)``: each reference model's Pr(x | θ_ref)."""
    return torch.stack([label_probability(m, x, y) for m in models], dim=1)


def rmia(
    target: nn.Module,
    references: Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    population_x: torch.Tensor,
    population_y: torch.Tensor,
    settings: RMIASettings = RMIASettings(),
) -> torch.Tensor:
    """RMIA scores of the records ``(x, y)`` under ``target``, with OUT ``references`` and population records (never trained on)."""
    if not references:
        raise ValueError("RMIA needs at least one reference model")
    return rmia_scores(
        label_probability(target, x, y),
        reference_probabilities(references, x, y),
        label_probability(target, population_x, population_y),
        reference_probabilities(references, population_x, population_y),
        settings,
    )
