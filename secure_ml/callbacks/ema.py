"""Exponential moving average of the weights (De et al. 2022): free post-processing of DP-SGD's iterates.

A thin layer over Lightning's ``WeightAveraging`` (which keeps the average in a ``torch.optim.swa_utils.AveragedModel``,
saves it as the checkpoint's ``state_dict`` and the raw weights beside it, and copies it into the model when training
ends). Two changes:

* a warm-up: the decay at the t-th update is ``min(decay, (1 + t) / (10 + t))``, so with few DP steps the average is
  not dominated by the first iterates (a fixed 0.99 would still weigh the initial weights by 0.27 after 130 steps);
* the average is swapped in for the whole validation (``on_validation_start`` … ``on_validation_end``), so every
  scorecard callback, whatever its place in the callback list, measures the averaged weights like ``val/acc`` does.

The average is a function of the private iterates only, so it costs no privacy budget.
"""

from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from secure_ml.errors import ConfigError


class WarmupEMA:
    """``avg_fn`` for ``AveragedModel``: EMA with decay ``min(decay, (1 + t) / (10 + t))`` at the t-th update (t ≥ 1).

    A class rather than a closure: ``ddp_spawn`` pickles the Trainer's callbacks to start its ranks.
    """

    def __init__(self, decay: float):
        self.decay = decay

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        t = float(num_averaged)
        d = min(self.decay, (1.0 + t) / (10.0 + t))
        return d * averaged + (1.0 - d) * current


class EMACallback(WeightAveraging):
    """EMA of the trained weights, evaluated and checkpointed instead of the last iterate.

    Args:
        decay: the EMA decay per optimizer step, in (0, 1) (after the warm-up).
        enabled: off by default; ``--ema.enabled true`` (or ``ema: {enabled: true}`` in a config) turns it on.
    """

    def __init__(self, decay: float = 0.99, enabled: bool = False):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"--ema.decay must be in (0, 1); got {decay}")
        super().__init__(use_buffers=True, avg_fn=WarmupEMA(decay))
        self.decay = decay
        self.enabled = enabled

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.enabled:
            super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._average_model is not None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pass  # per-step updates only

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._average_model is not None:
            super().on_train_end(trainer, pl_module)

    # Swap for the whole validation run rather than the validation epoch (see the module docstring).
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pass

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pass

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._average_model is not None and not trainer.sanity_checking:
            self._swap_models(pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._average_model is not None and not trainer.sanity_checking:
            self._swap_models(pl_module)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if self._average_model is not None:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        # Only a resumed fit restores the raw iterate: its "state_dict" holds the average, which is what test,
        # validate and predict must evaluate. (Lightning's own hook would also run after a fit in the same process,
        # e.g. ``--test_after_fit``, and put the raw weights back under test.)
        if trainer.state.fn != TrainerFn.FITTING:
            return
        if self._average_model is not None:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        elif "current_model_state" in checkpoint:  # resumed with EMA off: train on from the iterate, not from the average
            pl_module.load_state_dict(checkpoint["current_model_state"])

    @property
    def average(self) -> Optional[torch.nn.Module]:
        """The averaged copy of the LightningModule (None until fit starts, or when disabled)."""
        return self._average_model.module if self._average_model is not None else None
