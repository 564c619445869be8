"""DP-SGD settings with validation that names the flag."""

import math
from dataclasses import dataclass
from typing import Literal, Optional

from secure_ml.errors import ConfigError


@dataclass
class DPConfig:
    """Differentially private training (DP-SGD).

    Args:
        enabled: train with DP-SGD (Poisson sampling, per-sample clipping, Gaussian noise, privacy accounting).
        backend: ``auto`` (book-keeping ``bk`` where the net's layers allow it, else Opacus), ``bk`` (book-keeping clipping: norms and clipped sum from one backward), ``opacus`` (step modes ``ghost``/``hooks``, see grad_sample_mode) or ``reference`` (the torch.func per-sample clipper, same maths); resolved once per fit into one step mode (secure_ml/privacy/modes.py).
        noise_multiplier: σ: noise std is σ·max_grad_norm on the summed gradient (ignored when target_epsilon is set).
        max_grad_norm: C: each sample's gradient, flattened over all parameters, is clipped to this L2 norm.
        delta: δ of the (ε, δ) guarantee; should be well below 1/N.
        accountant: privacy accountant: ``prv`` (tight numerical) or ``rdp`` (Rényi DP).
        target_epsilon: when set, σ is calibrated so that ε reaches this value at the end of training.
        grad_sample_mode: how Opacus clips: ``hooks`` (materialised per-sample gradients), ``ghost`` (ghost clipping: per-sample norms without the gradients, two backward passes; one forward per sample, one process), or ``auto`` (ghost where it applies, else hooks).
        noise_seed: seed of the noise generator, for reproducible tests only; null (default) seeds it from a fresh secret (``secrets``), never from seed_everything's public seed.
    """

    enabled: bool = False
    backend: Literal["auto", "bk", "opacus", "reference"] = "auto"
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: Literal["prv", "rdp"] = "prv"
    target_epsilon: Optional[float] = None
    grad_sample_mode: Literal["auto", "hooks", "ghost"] = "auto"
    noise_seed: Optional[int] = None

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "bk", "opacus", "reference"):
            raise ConfigError(f"--model.dp.backend must be 'auto', 'bk', 'opacus' or 'reference'; got '{self.backend}'")
        if self.accountant not in ("prv", "rdp"):
            raise ConfigError(f"--model.dp.accountant must be 'prv' or 'rdp'; got '{self.accountant}'")
        if self.grad_sample_mode not in ("auto", "hooks", "ghost"):
            raise ConfigError(f"--model.dp.grad_sample_mode must be 'auto', 'hooks' or 'ghost'; got '{self.grad_sample_mode}'")
        if self.grad_sample_mode != "auto" and self.backend not in ("opacus", "auto"):
            raise ConfigError(
                f"--model.dp.grad_sample_mode {self.grad_sample_mode} is an Opacus mode; use it with --model.dp.backend opacus (or auto)"
            )
        # Written so that NaN fails too (a YAML `.nan` or `.inf` reaches here; the command line refuses them itself).
        if not 0 <= self.noise_multiplier < math.inf:
            raise ConfigError(f"--model.dp.noise_multiplier must be a finite number >= 0; got {self.noise_multiplier}")
        if not 0 < self.max_grad_norm < math.inf:  # C = inf: unbounded sensitivity and noise of std inf (NaN weights)
            raise ConfigError(f"--model.dp.max_grad_norm must be a finite number > 0; got {self.max_grad_norm}")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"--model.dp.delta must be in (0, 1); got {self.delta}")
        if self.target_epsilon is not None and not 0 < self.target_epsilon < math.inf:
            raise ConfigError(f"--model.dp.target_epsilon must be a finite number > 0; got {self.target_epsilon}")
        if self.enabled and self.target_epsilon is None and self.noise_multiplier == 0:
            raise ConfigError("--model.dp.noise_multiplier 0 gives no privacy (ε = ∞); set it > 0 or disable --model.dp.enabled")
