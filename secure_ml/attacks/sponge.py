"""Sponge examples: inputs that maximise a network's activation energy (Shumailov et al., 2021).

"Sponge Examples: Energy-Latency Attacks on Neural Networks" (EuroS&P 2021) crafts inputs that make
as many activations as possible non-zero (L0, defeating zero-skipping accelerators) or as large as
possible (L2, the energy proxy). The energy is defined once, in :mod:`secure_ml.defenses.energy`
(hidden activations = inputs of every weight layer but the first, captured with forward hooks, so
any activation function works). Here: the seed's naive Gaussian "sponges" for comparison, the
gradient-ascent attack (signed gradient or Adam, L2 or L0 objective) and the clean-vs-sponge report.
The attacker who knows the input policy is :mod:`secure_ml.attacks.sponge_adaptive`.
"""

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from secure_ml.defenses.energy import EnergyUndefined, activation_energy, eval_mode, l0_objective, l2_objective, record
from secure_ml.models.registry import device_and_dtype

OBJECTIVES = ("l2", "l0")
OPTIMIZERS = ("sign", "adam")
__all__ = ["EnergyUndefined", "activation_energy", "craft_sponges", "gaussian_sponges", "sponge_objective", "sponge_report"]


def sponge_objective(model: nn.Module, x: torch.Tensor, objective: str, temperature: float = 0.1) -> torch.Tensor:
    """Per-sample differentiable sponge objective of ``model(x)``: L2 energy, or the smooth count of positive pre-activations (l0)."""
    calls = record(model, x)
    return l2_objective(calls) if objective == "l2" else l0_objective(calls, temperature)


def gaussian_sponges(
    n: int,
    scales: Sequence[float],
    generator: Optional[torch.Generator] = None,
    shape: Tuple[int, ...] = (1, 28, 28),
    clamp: bool = False,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """The seed's sponges: ``n`` images of N(0, s²) noise per scale ``s``, stacked scale-major, shape ``(n·len(scales), *shape)``.

    ``clamp`` clips them to [0, 1] so they pass a naive range check.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive numbers; got {list(scales)}")
    gen_device = generator.device if generator is not None else (device or torch.device("cpu"))
    noise = [torch.randn((n, *shape), generator=generator, device=gen_device) * float(s) for s in scales]
    x = torch.cat(noise)
    if clamp:
        x = x.clamp_(0.0, 1.0)
    return x.to(device) if device is not None else x


def _per_sample(choice: Union[str, Sequence[str]], allowed: Tuple[str, ...], name: str, n: int) -> List[str]:
    """``choice`` as one entry per sample (a single string is repeated); ValueError on an unknown entry or length."""
    values = [choice] * n if isinstance(choice, str) else list(choice)
    if len(values) != n or any(v not in allowed for v in values):
        raise ValueError(f"{name} must be one of {allowed} or a list of them, one per sample; got {choice!r}")
    return values


def craft_sponges(
    model: nn.Module,
    x_init: torch.Tensor,
    steps: int = 50,
    lr: float = 0.01,
    objective: Union[str, Sequence[str]] = "l2",
    clamp: bool = True,
    epsilon: Optional[float] = None,
    temperature: float = 0.1,
    optimizer: Union[str, Sequence[str]] = "sign",
) -> torch.Tensor:
    """Gradient ascent on the activation energy from ``x_init``; returns detached sponges like ``x_init`` (device, dtype).

    ``objective`` is ``"l2"`` (Σ hidden activation²) or ``"l0"`` (Σ sigmoid(pre-activation / temperature));
    ``optimizer`` is ``"sign"`` (signed gradient, ``lr`` a per-pixel step) or ``"adam"`` (``torch.optim.Adam``
    on the pixels, ``lr`` its step size). Either may be a list with one entry per sample: the variants
    then share one batched forward per step (images do not interact in eval mode, and Adam is
    element-wise), which costs far less on a CPU than one small batch per variant. ``clamp`` keeps
    pixels in [0, 1]; ``epsilon`` optionally bounds ‖x − x_init‖∞ (stealthy sponges). The gradient is
    taken w.r.t. the input only, so no ``.grad`` is left on the parameters, and the attack works
    inside ``torch.no_grad()``.
    """
    objectives = _per_sample(objective, OBJECTIVES, "objective", len(x_init))
    optimizers = _per_sample(optimizer, OPTIMIZERS, "optimizer", len(x_init))
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {steps}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0; got {lr}")
    if epsilon is not None and epsilon < 0:
        raise ValueError(f"epsilon must be >= 0 or None; got {epsilon}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if not x_init.is_floating_point():
        raise ValueError(f"x_init must be a floating-point tensor; got {x_init.dtype}")
    if len(x_init) == 0:
        return x_init.detach().clone()
    device, dtype = device_and_dtype(model, x_init)
    # The L2 rows first, then the L0 rows: each objective is computed on its own contiguous rows (views, no copies),
    # not on every row and then selected (the L0 sigmoids over every pre-activation cost as much as the backward).
    order = sorted(range(len(objectives)), key=lambda i: objectives[i] == "l0")
    n_l2 = sum(o == "l2" for o in objectives)
    x0 = x_init.detach()[order].to(device=device, dtype=dtype)
    if clamp:
        x0 = x0.clamp(0.0, 1.0)
    x = x0.clone().requires_grad_(True)
    sign_rows = torch.tensor([optimizers[i] == "sign" for i in order], device=device).reshape(-1, *[1] * (x.dim() - 1))
    adam = torch.optim.Adam([x], lr=lr, maximize=True) if "adam" in optimizers else None
    with torch.enable_grad(), eval_mode(model):
        for _ in range(steps):
            calls = record(model, x)
            gain = l2_objective(calls, rows=slice(0, n_l2)).sum() if n_l2 else 0
            if n_l2 < len(x):
                gain = gain + l0_objective(calls, temperature, rows=slice(n_l2, None)).sum()
            (grad,) = torch.autograd.grad(gain, x)
            with torch.no_grad():
                signed = x + lr * grad.sign()
                if adam is not None:
                    x.grad = grad
                    adam.step()
                    x.copy_(torch.where(sign_rows, signed, x))
                else:
                    x.copy_(signed)
                if epsilon is not None:
                    x.copy_(torch.min(torch.max(x, x0 - epsilon), x0 + epsilon))
                if clamp:
                    x.clamp_(0.0, 1.0)
    out = torch.empty_like(x)
    out[order] = x.detach()
    return out.to(device=x_init.device, dtype=x_init.dtype)


def _paired_latency(model: nn.Module, a: torch.Tensor, b: torch.Tensor, repeats: int) -> Tuple[float, float]:
    """Median wall time in seconds of ``model(a)`` and ``model(b)``, interleaved over ``repeats`` rounds after a warm-up.

    Interleaving exposes both inputs to the same machine load (other processes, clock changes).
    """
    cuda = a.device.type == "cuda"
    times: Tuple[List[float], List[float]] = ([], [])
    with torch.no_grad():
        for i in range(repeats + 1):
            for x, out in ((a, times[0]), (b, times[1])):
                if cuda:
                    torch.cuda.synchronize(x.device)
                start = time.perf_counter()
                model(x)
                if cuda:
                    torch.cuda.synchronize(x.device)
                if i:  # round 0 is the warm-up
                    out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


@dataclass
class SpongeReport:
    """Mean activation energy/density of clean vs sponge inputs, their ratios, and median batch forward latency."""

    clean_energy: float
    sponge_energy: float
    energy_ratio: float
    clean_density: float
    sponge_density: float
    density_ratio: float
    clean_latency_s: float
    sponge_latency_s: float
    latency_ratio: float

    def to_dict(self) -> Dict[str, float]:
        """Plain dict for loggers."""
        return asdict(self)


def sponge_report(model: nn.Module, clean_x: torch.Tensor, sponge_x: torch.Tensor, repeats: int = 20) -> SpongeReport:
    """Compare sponge and clean batches: energy/density ratios (sponge / clean) and median forward latency.

    Latency: median of ``repeats`` interleaved whole-batch forwards (``time.perf_counter``,
    synchronising only on CUDA). Dense hardware has no zero-skipping, so latency barely
    depends on density there (Shumailov et al. target sparsity-exploiting accelerators).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    if clean_x.shape[1:] != sponge_x.shape[1:]:
        raise ValueError(f"clean_x and sponge_x must hold images of one shape; got {tuple(clean_x.shape)} and {tuple(sponge_x.shape)}")
    clean, sponge = activation_energy(model, clean_x), activation_energy(model, sponge_x)
    ce, se = clean["l2_energy"].mean().item(), sponge["l2_energy"].mean().item()
    cd, sd = clean["density"].mean().item(), sponge["density"].mean().item()
    device, dtype = device_and_dtype(model, clean_x)
    with eval_mode(model):
        cl, sl = _paired_latency(model, clean_x.to(device=device, dtype=dtype), sponge_x.to(device=device, dtype=dtype), repeats)
    ratio = lambda a, b: a / b if b > 0 else float("inf")  # noqa: E731
    return SpongeReport(ce, se, ratio(se, ce), cd, sd, ratio(sd, cd), cl, sl, ratio(sl, cl))
