"""Adversarial-training settings and the per-sample clean/adversarial loss mix (Lightning-free)."""

from dataclasses import dataclass
from typing import Callable, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from secure_ml.attacks import fgsm, pgd
from secure_ml.errors import ConfigError


@dataclass
class AdversarialConfig:
    """FGSM/PGD adversarial training, in pixel units ([0, 1] images).

    Args:
        epsilon: L∞ radius in pixel units; 0 turns adversarial training off. The seed's 0.1 in normalised units is 0.1 × 0.3081 ≈ 0.0308.
        ratio: weight of the adversarial loss per sample: (1 − ratio)·clean + ratio·adversarial; 1 trains on adversarial examples only (the seed).
        attack: ``fgsm`` or ``pgd``.
        pgd_steps: PGD iterations.
        pgd_step_size: PGD step in pixel units; null means 2.5·epsilon/pgd_steps.
        pgd_random_start: start PGD at a random point of the ε-ball.
    """

    epsilon: float = 0.0
    ratio: float = 1.0
    attack: Literal["fgsm", "pgd"] = "fgsm"
    pgd_steps: int = 10
    pgd_step_size: Optional[float] = None
    pgd_random_start: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ConfigError(f"--model.adversarial.epsilon must be in [0, 1] (pixel units); got {self.epsilon}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ConfigError(f"--model.adversarial.ratio must be in [0, 1]; got {self.ratio}")
        if self.attack not in ("fgsm", "pgd"):
            raise ConfigError(f"--model.adversarial.attack must be 'fgsm' or 'pgd'; got '{self.attack}'")
        if self.pgd_steps < 1:
            raise ConfigError(f"--model.adversarial.pgd_steps must be >= 1; got {self.pgd_steps}")
        if self.pgd_step_size is not None and not 0 < self.pgd_step_size < float("inf"):  # NaN fails too
            raise ConfigError(f"--model.adversarial.pgd_step_size must be a finite number > 0; got {self.pgd_step_size}")

    @property
    def active(self) -> bool:
        return self.epsilon > 0 and self.ratio > 0


def adversarial_examples(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AdversarialConfig, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Detached adversarial examples for ``cfg`` (the caller disables any Opacus hooks)."""
    if cfg.attack == "fgsm":
        return fgsm(net, x, y, cfg.epsilon)
    return pgd(net, x, y, cfg.epsilon, cfg.pgd_steps, cfg.pgd_step_size, cfg.pgd_random_start, generator)


def mixed_loss(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, x_adv: Optional[torch.Tensor], ratio: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(1 − ratio)·CE(f(x)) + ratio·CE(f(x_adv))`` and the logits of the first term computed.

    Clean and adversarial inputs go through *separate* forwards, so under DP each person
    stays one row of the per-sample gradient, clipped once (a ``cat`` would make two rows
    per person and double the sensitivity).
    """
    if x_adv is None or ratio == 0:
        logits = forward(x)
        return F.cross_entropy(logits, y, reduction="none"), logits
    adv_logits = forward(x_adv)
    loss = ratio * F.cross_entropy(adv_logits, y, reduction="none")
    if ratio == 1:
        return loss, adv_logits
    logits = forward(x)
    return loss + (1 - ratio) * F.cross_entropy(logits, y, reduction="none"), logits
