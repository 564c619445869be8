"""LR schedules that mean the same with and without DP; ReduceLROnPlateau watches ``val/loss``.

Without DP, Lightning's automatic optimisation steps a scheduler itself; under DP every mode takes its own
optimizer step (:func:`secure_ml.privacy.steps.dp_step`, manual optimisation) and Lightning leaves the
scheduler to the module. Both follow the rules here: a scheduler steps once per training epoch, and a
ReduceLROnPlateau steps on the epoch's ``val/loss`` (lower is better) only in epochs that validated
(``--trainer.check_val_every_n_epoch``), so its patience counts validations, not repeats of an old value.
The module takes the plateau step itself in both modes, in its ``on_train_epoch_end``, which runs before
the epoch's checkpoints are written; Lightning's own plateau step comes after them (so ``last.ckpt`` lagged
one step and a fit resumed from it lost that step), and the module makes it a no-op (:func:`lightning_steps`).
A plateau schedule that could never step (no validation, validation every more epochs than the fit has, or
``mode max`` on a loss) is refused in one line when the optimizer is configured, before any training. Lightning-free: the module passes what it needs.
"""

from typing import Any, Dict, Mapping, Optional

from torch.optim.lr_scheduler import ReduceLROnPlateau

from secure_ml.errors import ConfigError

PLATEAU_MONITOR = "val/loss"


def lightning_config(scheduler: Any, trainer: Optional[Any]) -> Dict[str, Any]:
    """``configure_optimizers``' ``lr_scheduler`` entry for ``scheduler``; ConfigError for a plateau schedule that cannot step.

    ``trainer``: the fit's (None: no trainer attached, nothing to check). Lightning is not told that a plateau schedule is
    one (``reduce_on_plateau: False``): it would look up ``val/loss`` itself at every epoch end and refuse the fit at the
    first epoch that did not validate (validation counted in steps); its call to the module's ``lr_scheduler_step`` is
    then a no-op, and the module steps the schedule (:func:`step_epoch`).
    """
    config = {"scheduler": scheduler, "interval": "epoch"}
    if not isinstance(scheduler, ReduceLROnPlateau):
        return config
    if scheduler.mode != "min":
        raise ConfigError(
            f"--model.scheduler ReduceLROnPlateau watches {PLATEAU_MONITOR}, which falls as the model improves, "
            f"so mode {scheduler.mode!r} would cut the learning rate while it still helps; use mode 'min' (the default)"
        )
    if trainer is not None and not trainer.enable_validation:
        raise ConfigError(
            f"--model.scheduler ReduceLROnPlateau steps on {PLATEAU_MONITOR}, and this fit runs no validation "
            "(--trainer.limit_val_batches 0, or no validation digits); validate, or choose another scheduler"
        )
    every, epochs = (trainer.check_val_every_n_epoch, trainer.max_epochs) if trainer is not None else (None, None)
    if every and epochs and 0 < epochs < every:
        raise ConfigError(
            f"--model.scheduler ReduceLROnPlateau would never step: validation runs every {every} epochs "
            f"(--trainer.check_val_every_n_epoch) and this fit has {epochs} (--trainer.max_epochs)"
        )
    if trainer is None or trainer.lightning_module.automatic_optimization:  # under manual optimisation Lightning warns of the key
        config["reduce_on_plateau"] = False
    return config


def lightning_steps(scheduler: Any) -> bool:
    """Whether Lightning's automatic optimisation should step ``scheduler`` (a plateau schedule is the module's to step)."""
    return not isinstance(scheduler, ReduceLROnPlateau)


def step_epoch(scheduler: Any, metrics: Mapping[str, Any], validated: bool, manual: bool) -> None:
    """The end of a training epoch, before its checkpoints: a plateau step on ``val/loss`` if the epoch validated (with or
    without DP), and any other scheduler's step under ``manual`` optimisation (every DP mode; else Lightning steps it).

    ``metrics``: the trainer's callback metrics; ``validated``: validation ran in this epoch (else a plateau
    schedule waits: the last ``val/loss`` was already counted).
    """
    if lightning_steps(scheduler):
        if manual:
            scheduler.step()
        return
    if not validated:
        return
    value = metrics.get(PLATEAU_MONITOR)
    if value is None:
        raise ConfigError(f"--model.scheduler ReduceLROnPlateau: this epoch's validation logged no {PLATEAU_MONITOR}")
    scheduler.step(float(value))
