"""L∞ evasion attacks in pixel space [0, 1]: FGSM and PGD.

Plain functions over any ``nn.Module`` on any device. They take the gradient with
respect to the *input only* (``torch.autograd.grad``), so they never write ``.grad``
on the parameters; callers that train with Opacus disable its per-sample hooks
around the call (see ``SecureClassifier``). The returned tensors are detached.
"""

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _sum_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # A sum keeps each sample's input gradient independent of the batch size (and defined for empty batches).
    return F.cross_entropy(logits, y, reduction="sum")


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn = _sum_ce) -> torch.Tensor:
    """Gradient of ``loss_fn(model(x), y)`` with respect to ``x`` only."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(model(x), y), x)
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, loss_fn: LossFn = _sum_ce) -> torch.Tensor:
    """Fast Gradient Sign Method: ``clamp(x + ε·sign(∇ₓ loss), 0, 1)``, detached."""
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0; got {epsilon}")
    if epsilon == 0:
        return x.detach().clone()
    grad = input_gradient(model, x, y, loss_fn)
    return (x.detach() + epsilon * grad.sign()).clamp_(0.0, 1.0)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    steps: int = 10,
    step_size: Optional[float] = None,
    random_start: bool = True,
    generator: Optional[torch.Generator] = None,
    loss_fn: LossFn = _sum_ce,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al.) in the L∞ ball of radius ``epsilon``, clamped to [0, 1].

    ``step_size`` defaults to ``2.5 · ε / steps``; ``random_start`` begins at a uniform
    point of the ball drawn from ``generator`` (on ``x``'s device).
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0; got {epsilon}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    if step_size is not None and not 0 < step_size < float("inf"):  # a step <= 0 descends the loss: a "robust" model
        raise ValueError(f"step_size must be a finite number > 0; got {step_size}")
    x0 = x.detach()
    if epsilon == 0:
        return x0.clone()
    alpha = step_size if step_size is not None else 2.5 * epsilon / steps
    x_adv = x0.clone()
    if random_start:
        noise = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_adv = (x_adv + (2 * noise - 1) * epsilon).clamp_(0.0, 1.0)
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y, loss_fn)
        x_adv = x_adv + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x0 - epsilon), x0 + epsilon).clamp_(0.0, 1.0)
    return x_adv.detach()
