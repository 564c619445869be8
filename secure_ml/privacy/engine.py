"""Wire DP-SGD onto a plain ``nn.Module``: Poisson check, noise calibration, Opacus or reference optimizer, accountant.

Lightning-free: ``SecureClassifier`` calls :func:`make_private` from
``configure_optimizers`` and keeps the returned :class:`PrivateTraining`.
"""

import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional

import torch
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler, UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from secure_ml.errors import ConfigError
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.reference import ReferenceDPOptimizer


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
        reasons = "; ".join(sorted({str(e) for e in errors}))
        raise ConfigError(
            f"--model.net {type(net).__name__} cannot be trained with DP-SGD: {reasons} "
            "(replace BatchNorm by GroupNorm, avoid in-place ops, or disable --model.dp.enabled)"
        )


@dataclass
class PrivateTraining:
    """The DP state of one training run."""

    optimizer: torch.optim.Optimizer
    accountant: Any
    noise_multiplier: float
    sample_rate: float
    expected_batch_size: float
    hooks: Optional[Any] = None  # Opacus GradSampleHooks (opacus backend only)
    criterion: Optional[Any] = None  # ghost clipping: Opacus's loss wrapper whose backward() runs both passes

    @property
    def ghost(self) -> bool:
        return self.criterion is not None

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.accountant.history)

    def epsilon(self, delta: float) -> Optional[float]:
        """Accountant's ε at ``delta``; None before the first step (PRV cannot answer then)."""
        if self.steps == 0:
            return None
        if self.noise_multiplier == 0:
            return float("inf")  # no noise, no privacy (and PRV would overflow)
        return float(self.accountant.get_epsilon(delta=delta))

    @contextmanager
    def hooks_disabled(self) -> Iterator[None]:
        """Turn Opacus's per-sample hooks off (for attack gradients), always back on afterwards."""
        if self.hooks is None:
            yield
            return
        self.hooks.disable_hooks()
        try:
            yield
        finally:
            self.hooks.enable_hooks()

    def state_dict(self) -> Dict[str, Any]:
        return {
            "accountant": self.accountant.state_dict(),
            "mechanism": self.accountant.mechanism(),
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
        }

    def close(self) -> None:
        if self.hooks is not None:
            self.hooks.cleanup()
            self.hooks = None


def epsilon_from_state(state: Dict[str, Any], delta: float) -> Optional[float]:
    """ε of a saved :meth:`PrivateTraining.state_dict` (for reports on a checkpoint)."""
    accountant = create_accountant(state["mechanism"])
    accountant.load_state_dict(state["accountant"])
    if not accountant.history:
        return None
    if state["noise_multiplier"] == 0:
        return float("inf")
    return float(accountant.get_epsilon(delta=delta))


def resolve_grad_sample_mode(cfg: DPConfig, single_forward: bool, distributed: bool) -> str:
    """``hooks`` or ``ghost`` for this run; ghost clipping needs one forward per sample and one process."""
    if cfg.backend != "opacus":
        return "hooks"
    if cfg.grad_sample_mode == "ghost":
        if not single_forward:
            raise ConfigError(
                "--model.dp.grad_sample_mode ghost needs one forward per sample: --model.adversarial.ratio 0 or 1 (or use hooks)"
            )
        if distributed:
            raise ConfigError("--model.dp.grad_sample_mode ghost runs in one process; use hooks (or auto) with --trainer.devices > 1")
        return "ghost"
    if cfg.grad_sample_mode == "auto":
        return "ghost" if single_forward and not distributed else "hooks"
    return "hooks"


def make_private(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    cfg: DPConfig,
    total_steps: int,
    state: Optional[Dict[str, Any]] = None,
    module: Optional[nn.Module] = None,
    grad_sample_mode: str = "hooks",
) -> PrivateTraining:
    """Make training of ``net`` private; ``state`` (from :meth:`PrivateTraining.state_dict`) resumes accounting.

    ``module`` is what Opacus hooks: ``net`` itself, or the DDP wrapper around it (Opacus
    then returns its distributed optimizer that all-reduces the noised gradient).
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
        sigma = float(state["noise_multiplier"])
    elif cfg.target_epsilon is not None:
        if total_steps <= 0:
            raise ConfigError("--model.dp.target_epsilon needs a finite training length: set --trainer.max_epochs or --trainer.max_steps")
        try:
            sigma = float(
                get_noise_multiplier(
                    target_epsilon=cfg.target_epsilon,
                    target_delta=cfg.delta,
                    sample_rate=sample_rate,
                    steps=total_steps,
                    accountant=cfg.accountant,
                )
            )
        except ValueError as exc:
            raise ConfigError(
                f"--model.dp.target_epsilon {cfg.target_epsilon} cannot be reached with δ = {cfg.delta:g}, q = {sample_rate:.4g} and {total_steps} steps ({exc})"
            ) from None
    else:
        sigma = cfg.noise_multiplier
    device = next(net.parameters()).device
    # The noise must be unpredictable: a generator seeded from the published seed_everything value could be
    # replayed. (torch's generators are not CSPRNGs; Opacus's secure_mode needs torchcsprng.)
    seed = cfg.noise_seed if cfg.noise_seed is not None else secrets.randbits(62)
    generator = torch.Generator(device=device).manual_seed(seed)

    if cfg.backend == "opacus":
        engine = PrivacyEngine(accountant=cfg.accountant)
        if state is not None:
            engine.accountant.load_state_dict(state["accountant"])
        common = dict(
            module=module if module is not None else net,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=cfg.max_grad_norm,
            poisson_sampling=False,  # the loader already samples by Poisson (checked above)
            wrap_model=False,
            noise_generator=generator,
        )
        if grad_sample_mode == "ghost":
            hooks, dp_optimizer, criterion, _ = engine.make_private(**common, grad_sample_mode="ghost", criterion=nn.CrossEntropyLoss())
            return PrivateTraining(dp_optimizer, engine.accountant, sigma, sample_rate, dp_optimizer.expected_batch_size, hooks, criterion)
        hooks, dp_optimizer, _ = engine.make_private(**common)
        hooks.forbid_grad_accumulation()  # an attack's stray backward through the hooks would raise, not leak
        return PrivateTraining(dp_optimizer, engine.accountant, sigma, sample_rate, dp_optimizer.expected_batch_size, hooks)

    accountant = create_accountant(cfg.accountant)
    if state is not None:
        accountant.load_state_dict(state["accountant"])
    expected = int(n * sample_rate)  # Opacus's expected_batch_size, so both backends divide alike
    ref = ReferenceDPOptimizer(optimizer, sigma, cfg.max_grad_norm, expected, generator)
    ref.step_hooks.append(lambda opt: accountant.step(noise_multiplier=opt.noise_multiplier, sample_rate=sample_rate))
    return PrivateTraining(ref, accountant, sigma, sample_rate, expected)
