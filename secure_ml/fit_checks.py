"""What a fit refuses before it trains, as plain functions of the Trainer's state (:class:`~secure_ml.module.SecureClassifier`
calls them; no Lightning import here). Each refusal is one ConfigError naming the flag to change."""

import torch
from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler, UniformWithReplacementSampler

from secure_ml.errors import ConfigError
from secure_ml.privacy.engine import poisson_sample_rate


def check_trainer_for_dp(trainer) -> None:
    """Trainer flags that would quietly break DP-SGD's clipping or its accounting."""
    if trainer.gradient_clip_val:
        raise ConfigError(
            "--trainer.gradient_clip_val clips the raw, non-private gradient; with DP the clipping is --model.dp.max_grad_norm. Remove it"
        )
    if trainer.accumulate_grad_batches != 1:
        raise ConfigError(
            "--trainer.accumulate_grad_batches > 1 breaks Poisson sampling's privacy accounting; use a larger --data.batch_size"
        )
    precision = str(getattr(trainer, "precision", "32-true"))
    if precision.endswith("-mixed"):  # the forward under autocast: the DP modes' per-sample maths met half-precision tensors
        raise ConfigError(
            f"--trainer.precision {precision} runs the forward under autocast, which the DP step's per-sample gradients do "
            "not support (it crashed in the first step); use 32-true (the default), bf16-true or 64-true, or train without DP"
        )
    if trainer.limit_train_batches == 0:  # Lightning then hands over an empty loader, not the Poisson one
        raise ConfigError("--trainer.limit_train_batches 0 trains nothing; with --model.dp.enabled there is nothing to make private")


def check_distributed_dp(trainer, loader) -> None:
    """DP under several processes: each rank's own Poisson sampler, and DDP (whose wrapper all-reduces the clipped sums)."""
    if not isinstance(getattr(loader, "batch_sampler", None), DistributedUniformWithReplacementSampler):
        raise ConfigError(
            "DP under several processes needs each rank's own Poisson sampler; set --trainer.use_distributed_sampler false "
            "(the secure-ml CLI's default) so Lightning does not replace it"
        )
    if not isinstance(trainer.strategy.model, torch.nn.parallel.DistributedDataParallel):
        raise ConfigError("DP with several devices is supported with --trainer.strategy ddp (DistributedDataParallel)")


def check_training_start(trainer, dp_enabled: bool, private) -> None:
    """At the first step: Poisson batches only with DP, and with DP the one optimizer is the DP one (``private.optimizer``)."""
    loader = trainer.train_dataloader
    if not dp_enabled:
        if isinstance(getattr(loader, "batch_sampler", None), (UniformWithReplacementSampler, DistributedUniformWithReplacementSampler)):
            raise ConfigError("--data.poisson_sampling true without --model.dp.enabled draws empty batches for nothing; set it false")
        return
    optimizers = trainer.optimizers
    if private is None or len(optimizers) != 1 or optimizers[0] is not private.optimizer:
        found = ", ".join(type(o).__name__ for o in optimizers) or "none"
        raise ConfigError(
            f"--model.dp.enabled is true but training would use {found}, not the DP optimizer: the run would not be private. "
            "Set the optimizer with --model.optimizer, not a top-level --optimizer"
        )
    poisson_sample_rate(loader)
