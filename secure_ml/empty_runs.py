"""Runs that would do nothing and exit 0, refused in one line naming the flag.

Before, ``secure-ml fit --trainer.max_time 00:00:00:00`` (or ``max_epochs 0``, ``max_steps 0``, ``limit_train_batches 0``
without DP) wrote a run folder without a checkpoint; ``secure-ml test --trainer.limit_test_batches 0`` wrote no report,
and ``predict --trainer.limit_predict_batches 0`` no ``predictions.csv``: each exited 0 as if it had run. A resumed fit
whose own budget is already spent is a different case (``secure_ml.run_checkpoints`` words it).
"""

from lightning.pytorch.callbacks import Timer

from secure_ml.errors import ConfigError

# subcommand → the trainer's limit of the loop it runs (and the flag that sets it)
EVAL_LIMITS = {"validate": "limit_val_batches", "test": "limit_test_batches", "predict": "limit_predict_batches"}


def _is_zero(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def check_runs_something(trainer, subcommand: str, test_after_fit: bool = False) -> None:
    """ConfigError when ``subcommand`` (with ``--test_after_fit``, its test too) would run no batch at all."""
    if subcommand == "fit":
        for flag in ("max_epochs", "max_steps", "limit_train_batches"):
            if _is_zero(getattr(trainer, flag, None)):
                raise ConfigError(
                    f"--trainer.{flag} 0 trains nothing (the fit would write no checkpoint); set it to 1 or more"
                    + (" (-1: no limit)" if flag != "limit_train_batches" else "")
                )
        for callback in getattr(trainer, "callbacks", []):
            remaining = callback.time_remaining() if isinstance(callback, Timer) else None  # --trainer.max_time's (not yet restored)
            if remaining is not None and remaining <= 0:
                raise ConfigError("--trainer.max_time is zero: the fit would stop before its first step; give it a positive duration")
    stages = [subcommand] + (["test"] if subcommand == "fit" and test_after_fit else [])
    for stage in stages:
        flag = EVAL_LIMITS.get(stage)
        if flag is not None and _is_zero(getattr(trainer, flag, None)):
            what = "--test_after_fit" if stage != subcommand else f"secure-ml {stage}"
            raise ConfigError(f"--trainer.{flag} 0: {what} would evaluate no digit and report nothing; set it to 1 or more (or 1.0: all)")
