"""One-line refusals about the weights themselves: a step that made them NaN or infinite, a checkpoint whose weights are
not finite or belong to another net. Lightning-free; :class:`secure_ml.module.SecureClassifier` calls them."""

from torch import nn

from secure_ml.errors import ConfigError, TrainingDiverged
from secure_ml.models.probe import describe_nonfinite, nonfinite_parameters


def check_step_finite(net: nn.Module, trainer, epoch: int) -> None:
    """TrainingDiverged naming the step, the layers and the lr flag when a training step left a weight NaN or infinite."""
    bad = nonfinite_parameters(net)
    if bad:
        lr = trainer.optimizers[0].param_groups[0].get("lr") if trainer.optimizers else None
        raise TrainingDiverged(
            f"training diverged: after step {trainer.global_step} (epoch {epoch}) NaN or infinity appeared in "
            f"{describe_nonfinite(bad)}; nothing from this step on was validated or saved. Lower the learning rate "
            f"(--model.optimizer.init_args.lr{f', now {lr:g}' if isinstance(lr, (int, float)) else ''})"
        )


def check_weights_finite(net: nn.Module, from_checkpoint: bool) -> None:
    """ConfigError before evaluating weights that are not finite (a diverged run's checkpoint, a net built so)."""
    bad = nonfinite_parameters(net)
    if bad:
        source = "--ckpt_path: the checkpoint's" if from_checkpoint else f"--model.net: {type(net).__name__}'s"
        raise ConfigError(f"{source} weights are not finite (NaN or infinity in {describe_nonfinite(bad)})")


def raise_if_other_net(exc: RuntimeError, net: nn.Module) -> None:
    """ConfigError for torch's ``load_state_dict`` key/shape listing (weights of another net); other errors pass through."""
    if "Error(s) in loading state_dict" not in str(exc):
        return
    detail = " ".join(str(exc).split())
    raise ConfigError(
        f"--ckpt_path: its weights do not fit --model.net {type(net).__name__} "
        f"({detail[:240]}{'...' if len(detail) > 240 else ''}); pass the net it was trained with (the run's config.yaml)"
    ) from None
