"""Set DP-SGD up on a plain ``nn.Module``: Poisson check, model check, noise calibration, then the mode's own set-up.

Lightning-free: ``SecureClassifier`` calls :func:`make_private` from ``configure_optimizers``
and keeps the returned :class:`PrivateTraining`; steps are taken by
:func:`secure_ml.privacy.steps.dp_step`.
"""

import math
from typing import Any, Dict, Optional, Union

import torch
from opacus.data_loader import DPDataLoader
from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler, UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from secure_ml.errors import ConfigError
from secure_ml.privacy.calibration import noise_for_epsilon
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.modes import MODES, DPSetup, StepMode, resolve_mode
from secure_ml.privacy.private import (
    NoiseSource,
    PrivateTraining,
    epsilon_from_state,
    epsilon_of,
    selection_steps,
    trained_steps,
    with_selection_spent,
)

__all__ = ["PrivateTraining", "check_model", "epsilon_from_state", "make_private", "poisson_sample_rate"]


def poisson_sample_rate(loader: Any) -> float:
    """The loader's Poisson sampling rate q; a clear error when it does not sample by Poisson."""
    sampler = getattr(loader, "batch_sampler", None)
    if not isinstance(loader, DataLoader) or not (
        isinstance(loader, DPDataLoader) or isinstance(sampler, (UniformWithReplacementSampler, DistributedUniformWithReplacementSampler))
    ):
        raise ConfigError(
            "DP-SGD needs a Poisson-sampled training loader (shuffled batches void the accountant's guarantee); "
            "set --data.poisson_sampling true (the secure-ml CLI does this whenever --model.dp.enabled is true)"
        )
    return float(sampler.sample_rate)


def check_model(net: nn.Module) -> None:
    """Raise ``ConfigError`` listing why Opacus cannot compute per-sample gradients for ``net``."""
    errors = ModuleValidator.validate(net, strict=False)
    if errors:
        # Each of Opacus's reasons cut to its first sentence (the rest is a tutorial).
        reasons = "; ".join(sorted({str(e).split(". ")[0].rstrip(".") for e in errors}))
        raise ConfigError(
            f"--model.net {type(net).__name__} cannot be trained with DP-SGD: {reasons} "
            "(replace BatchNorm by GroupNorm, avoid in-place ops, or disable --model.dp.enabled)"
        )


def make_private(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    cfg: DPConfig,
    total_steps: int,
    state: Optional[Dict[str, Any]] = None,
    module: Optional[nn.Module] = None,
    mode: Union[str, StepMode, None] = None,
) -> PrivateTraining:
    """Make training of ``net`` private in ``mode``; ``state`` (from :meth:`PrivateTraining.state_dict`) continues its accounting.

    ``mode`` is a :class:`StepMode` or its name (see :mod:`secure_ml.privacy.modes`); None resolves
    ``cfg`` for one forward per sample. ``module`` is what per-sample hooks attach to: ``net`` itself,
    or the DDP wrapper around it (Opacus then returns its distributed optimizer, which all-reduces
    the clipped sums and adds the noise once).
    """
    check_model(net)
    sample_rate = poisson_sample_rate(loader)
    n = len(loader.dataset)
    if abs(sample_rate - 1.0 / len(loader)) > 1e-12:
        raise ConfigError(
            f"the Poisson sampler's rate {sample_rate:.6g} differs from 1/len(loader) = {1 / len(loader):.6g}, which Opacus accounts with; build the loader with steps = 1/q"
        )
    if cfg.delta >= 1.0 / n:
        raise ConfigError(
            f"--model.dp.delta {cfg.delta:g} must be well below 1/N = {1 / n:.3g} (N = {n} training samples); a larger δ allows leaking a whole record"
        )
    if state is not None:
        if state["mechanism"] != cfg.accountant:
            raise ConfigError(
                f"the checkpoint was accounted with '{state['mechanism']}'; resume with --model.dp.accountant {state['mechanism']}"
            )
        if abs(state["sample_rate"] - sample_rate) > 1e-12:
            raise ConfigError(
                f"the checkpoint trained with sample rate {state['sample_rate']:.6g} but this run has {sample_rate:.6g}; "
                "resume with the same --data.batch_size and training set, or the accountant's ε would be wrong"
            )
        check_target_on_resume(cfg, state, total_steps)
        state = with_selection_spent(state)  # resumed from a best checkpoint: its selection's steps are spent already
        sigma = float(state["noise_multiplier"])
    elif cfg.target_epsilon is not None:
        if total_steps <= 0:
            raise ConfigError("--model.dp.target_epsilon needs a finite training length: set --trainer.max_epochs or --trainer.max_steps")
        try:
            sigma = noise_for_epsilon(cfg.target_epsilon, cfg.delta, sample_rate, total_steps, cfg.accountant)
        except ValueError as exc:
            raise ConfigError(
                f"--model.dp.target_epsilon {cfg.target_epsilon} cannot be reached with δ = {cfg.delta:g}, q = {sample_rate:.4g} and {total_steps} steps ({exc})"
            ) from None
    else:
        sigma = cfg.noise_multiplier
    noise = NoiseSource(next(net.parameters()).device, cfg.noise_seed)  # secret unless a test fixes noise_seed
    spec = mode if isinstance(mode, StepMode) else (MODES[mode] if mode is not None else resolve_mode(cfg, False, module is not None, net))
    if cfg.backend != "auto" and spec.backend != cfg.backend:
        raise ConfigError(
            f"--model.dp.backend {cfg.backend} cannot run the '{spec.name}' mode (it belongs to --model.dp.backend {spec.backend})"
        )
    return spec.build(DPSetup(net, optimizer, loader, cfg, sigma, sample_rate, noise, state, module))


def check_target_on_resume(cfg: DPConfig, state: Dict[str, Any], total_steps: int) -> None:
    """A resumed run keeps its σ, calibrated for ``--model.dp.target_epsilon`` over the first fit's steps: training on to
    more steps spent past the target without a word (ε 2.75 against a target of 1.5). Refused in one line instead."""
    if cfg.target_epsilon is None:
        return
    # the run goes on from the checkpoint's own step to total_steps, on top of what its selection spent (a best checkpoint)
    steps = selection_steps(state) + max(int(total_steps) - trained_steps(state), 0) if total_steps > 0 else 0
    eps = epsilon_of(state, cfg.delta, steps) if steps > 0 else math.inf  # unbounded: no ε can be promised
    if eps is not None and eps > cfg.target_epsilon * (1 + 1e-4):  # the accountant's own numerics, not a budget
        spent = f"would spend ε = {eps:.3g}" if math.isfinite(eps) else "has no end, so no ε"
        raise ConfigError(
            f"--model.dp.target_epsilon {cfg.target_epsilon:g}: the checkpoint's σ = {float(state['noise_multiplier']):.4g} was "
            f"calibrated for it, and training on to {steps} steps {spent}; keep --trainer.max_epochs/--trainer.max_steps at "
            "the calibrated length, or raise --model.dp.target_epsilon to accept the larger ε (a resumed run keeps its σ)"
        )
