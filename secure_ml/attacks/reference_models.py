"""Reference ("shadow") models for RMIA: the target's recipe replayed on population data. Lightning-free.

A reference model should look like the target except for the records under test, so it is trained
with the target's architecture (a fresh instance), optimizer factory, adversarial-training settings
and, when the target is DP, DP-SGD with the target's noise multiplier and clipping norm (the step
mode ``--model.dp.backend auto`` resolves to, taken through :func:`secure_ml.privacy.steps.dp_step`
like every private step; Poisson batches of the target's expected size). ``steps`` defaults to the target's
step count: the population set is smaller than the target's training set, so matching epochs would
leave the references under-trained and their probabilities unlike the target's.
"""

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import nn
from torch.utils.data import TensorDataset

from secure_ml.adversarial import AdversarialConfig, adversarial_examples, mixed_loss
from secure_ml.data.sampling import MaskSeeds, train_loader
from secure_ml.models.layout import channels_last
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.engine import make_private
from secure_ml.privacy.modes import resolve_mode
from secure_ml.privacy.steps import dp_step


@dataclass
class ReferenceRecipe:
    """How the target was trained: net factory, optimizer factory, steps, batch size, adversarial settings, DP (σ, C) or None."""

    make_net: Callable[[], nn.Module]
    make_optimizer: Callable[[object], torch.optim.Optimizer]
    steps: int
    batch_size: int
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    noise_multiplier: Optional[float] = None  # None: no DP
    max_grad_norm: float = 1.0


def _train_one(recipe: ReferenceRecipe, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the caller forks the global generator: init and adversarial starts are reproducible
    net = recipe.make_net()
    opt = recipe.make_optimizer(net.parameters())
    dataset = TensorDataset(x, y)
    dp = recipe.noise_multiplier is not None
    loader = train_loader(dataset, recipe.batch_size, seed, dp, masks=MaskSeeds(seed + 1))
    private = None
    if dp:
        cfg = DPConfig(
            enabled=True, noise_multiplier=recipe.noise_multiplier, max_grad_norm=recipe.max_grad_norm, delta=0.1 / len(y), noise_seed=seed
        )
        mixed = recipe.adversarial.active and 0 < recipe.adversarial.ratio < 1
        private = make_private(
            net, opt, loader, cfg, total_steps=recipe.steps, mode=resolve_mode(cfg, mixed=mixed, distributed=False, net=net)
        )
        opt = private.optimizer
    net.train()
    # Channels-last weights: faster steps on the CPU (secure_ml.models.layout), in a DP mode that trains them correctly. Not
    # without DP: the recipe's optimizer would see channels-last gradients (LBFGS's flat view of them fails).
    with channels_last(net, enabled=private is not None and private.spec.channels_last):
        _run_steps(recipe, net, opt, loader, private)
    if private is not None:
        private.close()
    opt.zero_grad(set_to_none=True)
    return net.eval()


def _run_steps(recipe: ReferenceRecipe, net: nn.Module, opt, loader, private) -> None:
    """``recipe.steps`` steps over ``loader``, epoch after epoch: DP steps through ``dp_step``, else the optimizer's own."""
    step, steps_per_epoch = 0, len(loader)
    for _ in range(math.ceil(recipe.steps / steps_per_epoch)):
        for xb, yb in loader:
            if step == recipe.steps:
                return
            step += 1
            if private is not None:  # empty Poisson batches included: a noise-only step, as in the target's run
                dp_step(private, net, opt, xb, yb, recipe.adversarial)
            elif len(yb):
                opt.step(functools.partial(_closure, net, opt, xb, yb, recipe.adversarial))


def _closure(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, adv: AdversarialConfig) -> torch.Tensor:
    """One evaluation of the loss and its gradient, as Lightning's automatic optimisation runs the training step: SGD and
    Adam call it once, LBFGS (``step(closure)``) as often as its line search needs (its attack examples each time)."""
    opt.zero_grad()
    x_adv = adversarial_examples(net, x, y, adv) if adv.active else None  # input gradients only: no .grad written
    loss = mixed_loss(net, x, y, x_adv, adv.ratio)[0].mean()
    loss.backward()
    return loss


def train_reference_models(recipe: ReferenceRecipe, x: torch.Tensor, y: torch.Tensor, n_models: int, seed: int = 0) -> List[nn.Module]:
    """``n_models`` reference models on ``(x, y)`` (population records only), each with its own seed; global RNG untouched."""
    if n_models < 1:
        raise ValueError(f"n_models must be >= 1; got {n_models}")
    if recipe.steps < 1 or recipe.batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1; got {recipe.steps} and {recipe.batch_size}")
    with torch.random.fork_rng(devices=[]), torch.enable_grad(), torch.inference_mode(False):
        return [_train_one(recipe, x, y, seed + 1000 * i) for i in range(n_models)]
