"""The adaptive sponge attacker: knows the input policy and maximises energy among the inputs it accepts.

White-box and policy-aware: it reads every limit of an :class:`~secure_ml.defenses.InputPolicy`
(pixel range and variance, L2 energy, density, per layer density, L2 energy and share of
positive activations, and the autoencoder's reconstruction error) and runs a feasibility-keeping ascent, per image:

* while every bounded statistic is below ``(1 − margin)`` of its limit, a signed-gradient step *up*
  the sponge objective (L2 energy, or the smooth count of positive pre-activations for L0);
* otherwise a signed-gradient step *down* the statistics at or over that level (the exact variance
  and L2 energies, for densities the smooth count of positive pre-activations of the layers that
  feed them, and for positive shares the smooth count sigmoid(a / T) of the hidden activations
  themselves, since the true counts have no gradient; the reconstruction error is differentiable
  through the policy's own autoencoder);
* pixels are clipped to the policy's range after every step; the step size decays (cosine) to
  ``lr / 20`` so the walk settles on the boundary.

The exact statistics of every iterate are checked against the limits exactly as the policy checks
them, and the best accepted iterate per image is kept (by L2 energy, or for ``l0`` by density, ties
broken by the share of positive activations, which is what it raises where density is always 1):
the attacker returns the costliest input that the policy let through. A share limit of 1 or more
bounds nothing and is ignored while stepping.
"""

import math
from typing import Optional, Tuple

import torch
from torch import nn

from secure_ml.defenses.calibration import SHARE_CHECKS
from secure_ml.defenses.energy import eval_mode, l0_objective, l2_objective, record
from secure_ml.defenses.input_policy import InputPolicy
from secure_ml.defenses.reconstruction import reconstruction_error
from secure_ml.models.registry import device_and_dtype

OBJECTIVES = ("l2", "l0")


def _statistics(calls, x: torch.Tensor, temperature: float, autoencoder: Optional[nn.Module] = None):
    """Exact per-image energy, density, layer densities (detached) and their differentiable stand-ins."""
    hidden = [c.input.reshape(len(x), -1) for c in calls[1:]]
    sizes = torch.tensor([h.shape[1] for h in hidden], dtype=torch.float64, device=x.device)
    layer_nz = torch.stack([(h != 0).sum(1).double() for h in hidden], 1)
    layer_l2 = torch.stack([h.pow(2).sum(1) for h in hidden], 1)
    layer_pos = torch.stack([(h > 0).sum(1).double() for h in hidden], 1)
    soft = torch.stack([torch.sigmoid(c.output.reshape(len(x), -1) / temperature).mean(1) for c in calls[:-1]], 1)
    exact = {
        "energy": l2_objective(calls).detach().double(),
        "density": layer_nz.sum(1) / sizes.sum(),
        "layer_density": layer_nz / sizes,
        "layer_energy": layer_l2.detach().double(),
        "layer_positive": layer_pos / sizes,
        "positive": layer_pos.sum(1) / sizes.sum(),
        "variance": x.detach().reshape(len(x), -1).double().var(1, correction=0),
    }
    smooth = {
        "energy": l2_objective(calls),
        "density": (soft * sizes.to(soft.dtype)).sum(1) / sizes.sum().to(soft.dtype),
        "layer_density": soft,
        "layer_energy": layer_l2,
        "layer_positive": torch.stack([torch.sigmoid(h / temperature).mean(1) for h in hidden], 1),
        "variance": x.reshape(len(x), -1).var(1, correction=0),
    }
    if autoencoder is not None:
        smooth["reconstruction"] = reconstruction_error(autoencoder, x)
        exact["reconstruction"] = smooth["reconstruction"].detach().double()  # the policy's own float32 score, exactly
    return exact, smooth


def _ratios(policy: InputPolicy, stats: dict, vacuous_ok: bool) -> dict:
    """Statistic / limit per bounded check (per layer for the per-layer checks); share limits ≥ 1 dropped when ``vacuous_ok``."""
    out = {}
    for name, limit in (
        ("variance", policy.max_variance),
        ("energy", policy.max_energy),
        ("density", policy.max_density),
    ):
        if limit is not None and not (vacuous_ok and name == "density" and limit >= 1.0):
            out[name] = stats[name] / limit
    for name, field in (
        ("layer_density", "max_layer_density"),
        ("layer_energy", "max_layer_energy"),
        ("layer_positive", "max_layer_positive"),
        ("reconstruction", "max_reconstruction"),  # one limit per error (faint, background)
    ):
        if getattr(policy, field) is None:
            continue
        limits = torch.tensor(getattr(policy, field), dtype=stats[name].dtype, device=stats[name].device)
        keep = limits < 1.0 if vacuous_ok and name in SHARE_CHECKS else torch.ones_like(limits, dtype=torch.bool)
        if keep.any():
            out[name] = stats[name][:, keep] / limits[keep]
    return out


def adaptive_sponges(
    model: nn.Module,
    policy: InputPolicy,
    x_init: torch.Tensor,
    objective: str = "l2",
    steps: int = 200,
    lr: float = 0.01,
    margin: float = 0.01,
    temperature: float = 0.1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(sponges, accepted)``: per image, the costliest iterate that passed every limit of ``policy`` (``x_init`` clipped, if none did).

    ``accepted`` flags the images for which some iterate passed. Works under ``torch.no_grad()``;
    leaves no ``.grad`` on the parameters; returns tensors on ``x_init``'s device and dtype.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}")
    if steps < 1 or lr <= 0 or not 0 <= margin < 1 or temperature <= 0:
        raise ValueError(f"need steps >= 1, lr > 0, 0 <= margin < 1 and temperature > 0; got {steps}, {lr}, {margin}, {temperature}")
    if tuple(x_init.shape[1:]) != policy.shape:
        raise ValueError(f"x_init must be a batch of shape (B, {', '.join(map(str, policy.shape))}); got {tuple(x_init.shape)}")
    device, dtype = device_and_dtype(model, x_init)
    x = x_init.detach().to(device=device, dtype=dtype).clamp(policy.min_value, policy.max_value)
    best, best_score = x.clone(), torch.full((len(x),), -math.inf, dtype=torch.float64, device=device)
    best_tie = torch.full_like(best_score, -math.inf)
    ae = policy.reconstruction_model(device)  # shared and float32: used as is (reconstruction_error casts x)
    with torch.enable_grad(), eval_mode(model):
        for t in range(steps + 1):
            x.requires_grad_(True)
            calls = record(model, x)
            exact, smooth = _statistics(calls, x, temperature, ae)
            accepted = torch.ones(len(x), dtype=torch.bool, device=device)
            for r in _ratios(policy, exact, vacuous_ok=False).values():
                accepted &= (r <= 1).all(1) if r.dim() == 2 else r <= 1
            score = exact["energy"] if objective == "l2" else exact["density"]
            tie = exact["positive"]  # l0 on tanh/GELU/SiLU: the density is always 1, the positive share is what it raised
            better = accepted & ((score > best_score) | ((score == best_score) & (tie > best_tie)))
            best[better], best_score[better], best_tie[better] = x.detach()[better], score[better], tie[better]
            if t == steps:
                break
            over = {k: (r >= 1 - margin) for k, r in _ratios(policy, exact, vacuous_ok=True).items()}
            safe = torch.ones(len(x), dtype=torch.bool, device=device)
            for o in over.values():
                safe &= ~(o.any(1) if o.dim() == 2 else o)
            gain = l2_objective(calls) if objective == "l2" else l0_objective(calls, temperature)
            penalty = torch.zeros(len(x), dtype=gain.dtype, device=device)
            smooth_ratios = _ratios(policy, smooth, vacuous_ok=True)
            for k, o in over.items():
                term = smooth_ratios[k] * o.to(gain.dtype)
                penalty = penalty + (term.sum(1) if term.dim() == 2 else term)
            total = torch.where(safe, gain, -penalty).sum()
            (grad,) = torch.autograd.grad(total, x)
            step = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t / steps)))
            with torch.no_grad():
                x = (x + step * grad.sign()).clamp(policy.min_value, policy.max_value)
    found = best_score > -math.inf
    return best.detach().to(device=x_init.device, dtype=x_init.dtype), found.cpu()


def worst_accepted_ratio(values: torch.Tensor, accepted: torch.Tensor, clean_reference: float) -> Optional[float]:
    """``max(values[accepted]) / clean_reference`` (None when nothing was accepted)."""
    if not bool(accepted.any()):
        return None
    return float(values[accepted].max()) / clean_reference
