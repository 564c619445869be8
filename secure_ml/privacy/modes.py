"""The DP step modes: name → (set-up, step, empty-batch feed, capabilities), and the one place a run's mode is chosen.

Lightning-free. ``--model.dp.backend`` and ``--model.dp.grad_sample_mode`` are resolved by
:func:`resolve_mode` once, when DP is set up; from then on the run is in exactly one mode and
nothing infers it again. A new backend is one :func:`register` call.

| mode        | selected by (``--model.dp.*``)                 | per-sample norms / clipped sum             | clean+adv mix | DDP |
|-------------|------------------------------------------------|--------------------------------------------|---------------|-----|
| ``bk``      | backend bk, or auto where the net allows it    | book-keeping: one backward                 | yes           | yes |
| ``ghost``   | backend opacus/auto, grad_sample_mode ghost/auto| Opacus ghost norms, second backward        | no            | no  |
| ``hooks``   | backend opacus/auto, grad_sample_mode hooks/auto| Opacus hooks, materialised                 | yes           | yes |
| ``reference``| backend reference                             | ``torch.func`` vmap(grad), materialised    | yes           | no  |
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from torch import nn
from torch.utils.data import DataLoader

from secure_ml.errors import ConfigError
from secure_ml.privacy import steps
from secure_ml.privacy.bookkeeping import BookKeepingClipper, BookKeepingDPOptimizer
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.layout import refuse_channels_last
from secure_ml.privacy.private import NoiseSource, PrivateTraining
from secure_ml.privacy.reference import ReferenceDPOptimizer


@dataclass
class DPSetup:
    """What a mode's set-up receives from :func:`secure_ml.privacy.engine.make_private` (checked and calibrated there)."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    cfg: DPConfig
    sigma: float
    sample_rate: float
    noise: NoiseSource
    state: Optional[Dict[str, Any]] = None  # a saved PrivateTraining.state_dict(): the accountant continues from it
    module: Optional[nn.Module] = None  # the DDP wrapper around the net's LightningModule, under several processes


@dataclass(frozen=True)
class StepMode:
    """One DP step mode. ``mixes``: handles two forwards per person (adversarial ratio in (0, 1)); ``distributed``: runs under DDP;
    ``refuses(net)``: why this mode cannot train ``net`` (one line), or None; ``channels_last``: trains a net whose
    convolution weights are channels-last (:mod:`secure_ml.models.layout`) correctly, handing the optimizer default-format
    gradients (RMIA's reference models then train in that faster format)."""

    name: str
    backend: str
    build: Callable[[DPSetup], PrivateTraining]
    step: steps.StepFn
    feed_zero: Callable[[PrivateTraining], None]
    mixes: bool
    distributed: bool
    refuses: Callable[[nn.Module], Optional[str]] = lambda net: None
    channels_last: bool = False


MODES: Dict[str, StepMode] = {}
# --model.dp.backend auto: book-keeping first (one backward: the fastest where it applies, see docs/dev/core.md), then Opacus.
AUTO_ORDER = ("bk", "ghost", "hooks")


def register(mode: StepMode) -> StepMode:
    MODES[mode.name] = mode
    return mode


def _opacus(grad_sample_mode: str) -> Callable[[DPSetup], PrivateTraining]:
    def build(s: DPSetup) -> PrivateTraining:
        engine = PrivacyEngine(accountant=s.cfg.accountant)
        if s.state is not None:
            engine.accountant.load_state_dict(s.state["accountant"])
        common = dict(
            module=s.module if s.module is not None else s.net,
            optimizer=s.optimizer,
            data_loader=s.loader,
            noise_multiplier=s.sigma,
            max_grad_norm=s.cfg.max_grad_norm,
            poisson_sampling=False,  # the loader already samples by Poisson (checked by make_private)
            wrap_model=False,
            noise_generator=s.noise.generator,
        )
        criterion = None
        if grad_sample_mode == "ghost":
            hooks, optimizer, criterion, _ = engine.make_private(**common, grad_sample_mode="ghost", criterion=nn.CrossEntropyLoss())
        else:
            hooks, optimizer, _ = engine.make_private(**common)
            hooks.forbid_grad_accumulation()  # an attack's stray backward through the hooks would raise, not leak
        spec = MODES[grad_sample_mode]
        private = PrivateTraining(
            spec, optimizer, engine.accountant, s.sigma, s.sample_rate, optimizer.expected_batch_size, s.noise, hooks, criterion
        )
        private.guards = refuse_channels_last(s.net)  # Opacus's conv per-sample gradients are wrong on channels-last inputs
        return private

    return build


def _reference(s: DPSetup) -> PrivateTraining:
    accountant = create_accountant(s.cfg.accountant)
    if s.state is not None:
        accountant.load_state_dict(s.state["accountant"])
    expected = int(len(s.loader.dataset) * s.sample_rate)  # Opacus's expected_batch_size, so the modes divide alike
    opt = ReferenceDPOptimizer(s.optimizer, s.sigma, s.cfg.max_grad_norm, expected, s.noise.generator)
    opt.step_hooks.append(lambda o: accountant.step(noise_multiplier=o.noise_multiplier, sample_rate=s.sample_rate))
    return PrivateTraining(MODES["reference"], opt, accountant, s.sigma, s.sample_rate, expected, s.noise)


def _bk_refuses(net: nn.Module) -> Optional[str]:
    try:
        BookKeepingClipper(net, 1.0).close()
    except ConfigError as exc:
        return str(exc)
    return None


def _opacus_refuses(net: nn.Module) -> Optional[str]:
    """Opacus's convolution grad sampler unfolds with zero padding whatever the layer's ``padding_mode``, so per-sample
    gradients (and ghost norms) of reflect/replicate/circular convolutions are silently wrong (tests/test_dp_modes.py)."""
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd) and m.padding_mode != "zeros":
            return (
                f"--model.net layer '{name}' ({type(m).__name__}, padding_mode='{m.padding_mode}'): Opacus computes wrong per-sample "
                "gradients for non-zero padding; use --model.dp.backend bk or reference, or padding_mode='zeros'"
            )
    return None


def _all_reduce_sum(tensors) -> None:
    """In-place SUM across ranks, as one flat buffer (one collective per step)."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def _bk(s: DPSetup) -> PrivateTraining:
    accountant = create_accountant(s.cfg.accountant)
    if s.state is not None:
        accountant.load_state_dict(s.state["accountant"])
    expected = int(len(s.loader.dataset) * s.sample_rate)  # global N·q, as Opacus's expected_batch_size (also under DDP)
    clipper = BookKeepingClipper(s.net, s.cfg.max_grad_norm)
    opt = BookKeepingDPOptimizer(s.optimizer, clipper, s.sigma, expected, s.noise.generator)
    opt.step_hooks.append(lambda o: accountant.step(noise_multiplier=o.noise_multiplier, sample_rate=s.sample_rate))
    if s.module is not None:  # several processes: the clipped sums are summed across ranks, the noise added once (rank 0)
        opt.all_reduce = _all_reduce_sum
        opt.noise_on_this_rank = torch.distributed.get_rank() == 0
    return PrivateTraining(MODES["bk"], opt, accountant, s.sigma, s.sample_rate, expected, s.noise, hooks=clipper)


register(StepMode("bk", "bk", _bk, steps.bk_step, steps.zero_bk_sum, mixes=True, distributed=True, refuses=_bk_refuses, channels_last=True))
register(
    StepMode(
        "ghost",
        "opacus",
        _opacus("ghost"),
        steps.ghost_step,
        steps.zero_summed_grad,
        mixes=False,
        distributed=False,
        refuses=_opacus_refuses,
    )
)
register(
    StepMode(
        "hooks",
        "opacus",
        _opacus("hooks"),
        steps.hooks_step,
        steps.zero_grad_samples,
        mixes=True,
        distributed=True,
        refuses=_opacus_refuses,
    )
)
register(StepMode("reference", "reference", _reference, steps.reference_step, steps.zero_reference_samples, mixes=True, distributed=False))


def candidates(cfg: DPConfig) -> Tuple[Tuple[str, ...], str]:
    """The modes ``cfg`` allows, in order of preference, and the flag that chose them (for error messages)."""
    if cfg.backend == "opacus" or (cfg.backend == "auto" and cfg.grad_sample_mode != "auto"):
        order = {"auto": ("ghost", "hooks"), "hooks": ("hooks",), "ghost": ("ghost",)}[cfg.grad_sample_mode]
        return order, f"--model.dp.grad_sample_mode {cfg.grad_sample_mode}"
    if cfg.backend == "auto":
        return AUTO_ORDER, "--model.dp.backend auto"
    return (cfg.backend,), f"--model.dp.backend {cfg.backend}"


def resolve_mode(cfg: DPConfig, mixed: bool, distributed: bool, net: Optional[nn.Module] = None) -> StepMode:
    """The run's mode: the first allowed one that handles a clean/adversarial mix (``mixed``), DDP (``distributed``) and ``net``'s layers."""
    order, flag = candidates(cfg)
    reasons = {}
    for name in order:
        mode = MODES[name]
        reasons[name] = mode.refuses(net) if net is not None else None
        if (mode.mixes or not mixed) and (mode.distributed or not distributed) and reasons[name] is None:
            return mode
    mode = MODES[order[0]]
    if mixed and not mode.mixes:
        others = ", ".join(m.name for m in MODES.values() if m.mixes)
        raise ConfigError(f"{flag} needs one forward per sample: set --model.adversarial.ratio 0 or 1, or use a mode that mixes ({others})")
    if distributed and not mode.distributed:
        others = ", ".join(f"{m.name} (--model.dp.backend {m.backend})" for m in MODES.values() if m.distributed)
        raise ConfigError(f"{flag} runs in one process; with --trainer.devices > 1 use {others}")
    raise ConfigError(reasons[order[0]])
