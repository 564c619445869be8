"""One DP-SGD training step per mode, and :func:`dp_step`, the only way a private step is taken.

Lightning-free. ``SecureClassifier.training_step`` and ``benchmarks/train_step.py`` both call
:func:`dp_step`, so the benchmark times exactly what users run. A mode's step function does the
forward and backward of one non-empty batch and leaves the DP optimizer ready to clip, add noise
and step; :func:`dp_step` does what every mode shares, once: the privacy-budget stop, the
adversarial examples (with the mode's hooks off), empty Poisson batches (a noise-only step),
the per-step reseeding of the secret noise, and the optimizer step. The registry of modes
(name → step, set-up and capabilities) is :mod:`secure_ml.privacy.modes`.
"""

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import torch
from torch import nn

from secure_ml.adversarial import AdversarialConfig, adversarial_examples, mixed_loss
from secure_ml.privacy.private import PrivateTraining
from secure_ml.privacy.reference import per_sample_gradients


@dataclass
class StepResult:
    """What a step trained on: the mean per-sample loss (detached) and the logits, for logging; None for an empty batch."""

    loss: Optional[torch.Tensor]
    logits: Optional[torch.Tensor]


# (private, net, x, y, x_adv or None, adversarial ratio) → StepResult; x is never empty here.
StepFn = Callable[[PrivateTraining, nn.Module, torch.Tensor, torch.Tensor, Optional[torch.Tensor], float], StepResult]


def hooks_step(private, net, x, y, x_adv, ratio) -> StepResult:
    """Opacus hooks: one backward of the batch-mean loss; the hooks record each sample's gradient (clean + adversarial forwards add up)."""
    per_sample, logits = mixed_loss(net, x, y, x_adv, ratio)
    loss = per_sample.mean()
    loss.backward()
    return StepResult(loss.detach(), logits.detach())


def ghost_step(private, net, x, y, x_adv, ratio) -> StepResult:
    """Opacus ghost clipping: one forward (clean, or adversarial when ratio is 1); the criterion's backward runs both passes."""
    logits = net(x_adv if x_adv is not None and ratio == 1 else x)
    loss = private.criterion(logits, y)
    loss.backward()
    return StepResult(loss.detach(), logits.detach())


def reference_step(private, net, x, y, x_adv, ratio) -> StepResult:
    """The torch.func reference: per-sample gradients of the per-sample mixed loss, handed to the reference optimizer."""

    def sample_loss(forward, xi, yi, xai) -> Tuple[torch.Tensor, torch.Tensor]:
        loss, logits = mixed_loss(forward, xi[None], yi[None], xai[None] if x_adv is not None else None, ratio)
        return loss.sum(), logits[0]

    grads, losses, logits = per_sample_gradients(net, sample_loss, x, y, x_adv if x_adv is not None else x)
    private.optimizer.set_grad_samples(list(grads.values()))
    return StepResult(losses.mean().detach(), logits.detach())


def bk_step(private, net, x, y, x_adv, ratio) -> StepResult:
    """Book-keeping: the training forward(s) recorded, one backward to the layer outputs gives norms and clipped sum."""
    with private.optimizer.recording():
        per_sample, logits = mixed_loss(net, x, y, x_adv, ratio)
    private.optimizer.backward(per_sample)
    return StepResult(per_sample.mean().detach(), logits.detach())


def zero_bk_sum(private: PrivateTraining) -> None:
    private.optimizer.summed = [torch.zeros_like(p) for p in private.optimizer.clipper.params]


def zero_grad_samples(private: PrivateTraining) -> None:
    """Opacus hooks: an empty per-sample gradient for every parameter (its clipped sum is zero)."""
    for p in private.optimizer.params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


def zero_summed_grad(private: PrivateTraining) -> None:
    """Ghost clipping: ``p.grad`` already is the clipped sum, so zero it."""
    for p in private.optimizer.params:
        p.grad = torch.zeros_like(p)


def zero_reference_samples(private: PrivateTraining) -> None:
    private.optimizer.set_grad_samples([torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device) for p in private.optimizer.params])


def dp_step(
    private: PrivateTraining,
    net: nn.Module,
    optimizer: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    adversarial: AdversarialConfig,
) -> Optional[StepResult]:
    """One private step on a Poisson batch in ``private.mode``; None (and no step) once the privacy budget is spent.

    ``optimizer`` is ``private.optimizer`` or a wrapper that forwards ``zero_grad``/``step`` to it
    (Lightning's ``LightningOptimizer``, which also counts the step). An empty batch still takes
    a step: zero clipped sum plus noise, as the Poisson mechanism that the accountant assumes.
    """
    if private.exhausted:  # PrivacyBudget: this holds whatever Lightning's min_epochs/min_steps ask for
        return None
    mode = private.spec
    if len(y) == 0:
        optimizer.zero_grad()
        mode.feed_zero(private)
        result = StepResult(None, None)
    else:
        x_adv = None
        if adversarial.active:
            with private.attack_context():  # the attack's backward must not be recorded as a per-sample gradient
                x_adv = adversarial_examples(net, x, y, adversarial)
        optimizer.zero_grad()
        result = mode.step(private, net, x, y, x_adv, adversarial.ratio)
    private.noise.reseed(private.steps)
    optimizer.step()
    return result
