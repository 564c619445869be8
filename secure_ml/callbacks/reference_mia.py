"""RMIA with reference models, in ``secure-ml test`` (training the references is too costly for every epoch)."""

import math
import time
from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_info

from secure_ml.attacks.low_fpr import tpr_at_fpr
from secure_ml.attacks.membership import membership_metrics
from secure_ml.attacks.reference_mia import RMIASettings, rmia
from secure_ml.attacks.reference_models import ReferenceRecipe, train_reference_models
from secure_ml.callbacks._common import EpochMetricCallback, check_min, held_out, members, subsample
from secure_ml.data.canaries import without_canaries
from secure_ml.errors import TORCH_SEED_MAX, ConfigError, check_seed
from secure_ml.models.registry import build_net, device_and_dtype, net_spec
from secure_ml.optim_build import default_optimizer


def target_recipe(pl_module, datamodule, max_epochs: Optional[int], steps: Optional[int], n_members: int) -> ReferenceRecipe:
    """The target's training recipe, read from the module (net, optimizer, adversarial, DP) and the datamodule (batch size)."""
    spec = net_spec(pl_module.net)  # ConfigError for a net that cannot be rebuilt
    dm = datamodule
    if steps is None:
        epochs = max_epochs if max_epochs and max_epochs > 0 else None
        if epochs is None:
            raise ConfigError("--reference_mia.steps must be set when --trainer.max_epochs is unbounded")
        steps = epochs * math.ceil(n_members / dm.batch_size)
    factory = pl_module.optimizer_factory or default_optimizer
    sigma = None
    if pl_module.dp.enabled:
        state = pl_module.dp_state()  # the live run's, or that of the weights loaded from --ckpt_path (σ calibrated for a target ε)
        sigma = float((state or {}).get("noise_multiplier", pl_module.dp.noise_multiplier))
    return ReferenceRecipe(lambda: build_net(spec), factory, steps, dm.batch_size, pl_module.adversarial, sigma, pl_module.dp.max_grad_norm)


class ReferenceMIACallback(EpochMetricCallback):
    """Offline RMIA (:mod:`secure_ml.attacks.reference_mia`) in ``test``: ``mia/rmia_auc``, ``mia/rmia_tpr@1%fpr``, ``mia/rmia_tpr@0.1%fpr`` (+ interval).

    Data (every set disjoint from the others): evaluated members are ``max_samples`` training digits
    (canaries excluded); evaluated non-members are half of the test digits; the reference models
    train on the other half (population data the target never saw, like an attacker's); the
    population records z are the validation digits (seen by no model). With the capstone's 2,000
    test digits that is 1,000 against 1,000, so a TPR at 0.1% FPR rests on one non-member: its
    interval (:mod:`secure_ml.attacks.low_fpr`) says how little that pins down. References replay
    the target's recipe (net, optimizer, adversarial training, DP σ and C) for as many steps as the
    target took; each costs about one target training run on 1,000 digits.

    Args:
        reference_models: number of reference models (1 is cheap and already strong; 0 switches RMIA off).
        max_samples: evaluated members and non-members per side (capped by half the test digits).
        offline_a: RMIA's offline scaling of Pr(x) (0 to 1).
        gamma: RMIA's pairwise likelihood-ratio threshold.
        steps: reference-model training steps; null: the target's (``max_epochs`` × batches per epoch).
        confidence: confidence of the TPR interval.
        seed: seed of the splits and of the reference models.
        enabled: false switches the callback off.
    """

    def __init__(
        self,
        reference_models: int = 1,
        max_samples: int = 1000,
        offline_a: float = 0.3,
        gamma: float = 1.0,
        steps: Optional[int] = None,
        confidence: float = 0.95,
        seed: int = 0,
        enabled: bool = True,
    ):
        check_min(reference_models, "--reference_mia.reference_models", 0)
        check_min(max_samples, "--reference_mia.max_samples")
        check_min(steps, "--reference_mia.steps")
        if not 0 < confidence < 1:
            raise ConfigError(f"--reference_mia.confidence must be in (0, 1); got {confidence}")
        try:
            self.settings = RMIASettings(offline_a, gamma)
        except ValueError as exc:
            raise ConfigError(f"--reference_mia: {exc}") from None
        self.reference_models, self.max_samples, self.steps = reference_models, max_samples, steps
        check_seed(seed, "--reference_mia.seed", TORCH_SEED_MAX)
        self.confidence, self.seed, self.enabled = confidence, seed, enabled and reference_models > 0

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        """Not during fit or validate: the reference models cost training runs."""

    def _evaluate(self, pl_module, stage: str) -> dict:
        trainer = pl_module.trainer
        mx, my = without_canaries(trainer.datamodule, *members(trainer))
        tx, ty = held_out(trainer, "test")
        zx, zy = held_out(trainer, "val")
        perm = torch.randperm(len(ty), generator=torch.Generator().manual_seed(self.seed))
        half = len(ty) // 2
        if half < 1:
            raise ConfigError("ReferenceMIACallback needs at least 2 test digits (half to evaluate, half for the reference models)")
        nx, ny = tx[perm[:half]], ty[perm[:half]]
        rx, ry = tx[perm[half:]], ty[perm[half:]]
        k = min(self.max_samples, len(ny), len(my))
        mx, my = subsample(mx, my, k, self.seed + 1)
        nx, ny = nx[:k], ny[:k]
        n_real = len(without_canaries(trainer.datamodule, *members(trainer))[1])
        recipe = target_recipe(pl_module, trainer.datamodule, trainer.max_epochs, self.steps, n_real)
        start = time.perf_counter()
        refs = train_reference_models(recipe, rx.cpu(), ry.cpu(), self.reference_models, self.seed)
        rank_zero_info(
            f"secure-ml: RMIA trained {self.reference_models} reference model(s) of {recipe.steps} steps in {time.perf_counter() - start:.0f} s"
        )
        net = pl_module.net
        device = device_and_dtype(net)[0]
        refs = [r.to(device) for r in refs]
        scores = rmia(
            net, refs, torch.cat([mx, nx]).to(device), torch.cat([my, ny]).to(device), zx.to(device), zy.to(device), self.settings
        )
        sm, sn = scores[:k], scores[k:]
        out = {"mia/rmia_auc": membership_metrics(sm, sn).auc}
        for fpr, key in ((0.01, "mia/rmia_tpr@1%fpr"), (0.001, "mia/rmia_tpr@0.1%fpr")):
            rep = tpr_at_fpr(sm, sn, fpr, self.confidence)
            if rep is not None:  # refused when the non-members cannot resolve the FPR
                out[key] = rep.tpr
                if fpr == 0.001:
                    out.update({f"{key}_low": rep.tpr_low, f"{key}_high": rep.tpr_high})
        return out
