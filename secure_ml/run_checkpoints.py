"""Which checkpoint a fit leaves to test or resume from: ``--test_after_fit`` tests it, a SIGTERM names it (CLI layer)."""

import re
from pathlib import Path
from typing import Optional

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loops.utilities import _is_max_limit_reached
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

from secure_ml.errors import NothingTrained


def checkpointers(trainer) -> list:
    """The fit's ModelCheckpoint callbacks."""
    return [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]


def checkpoint_to_test(trainer) -> Optional[str]:
    """Lightning's "last" checkpoint of this fit: the newest file named ``last[-N].ckpt`` in a ModelCheckpoint's folder
    (``checkpoints/last.ckpt`` in the capstone); without one, the latest save of a ModelCheckpoint that monitors nothing;
    without that, the first one's best. None when the fit wrote none.

    Not simply the newest file: at the end of a DP fit the monitored (best) checkpoints are rewritten with the steps their
    selection saw (``privacy.selection``), so the best epoch's file can be newer than the last epoch's.
    """
    found = checkpointers(trainer)
    lasts = [
        path
        for cb in found
        if cb.dirpath and Path(cb.dirpath).is_dir()
        for path in Path(cb.dirpath).iterdir()
        if path.suffix == cb.FILE_EXTENSION and re.fullmatch(rf"{re.escape(cb.CHECKPOINT_NAME_LAST)}(-\d+)?", path.stem)
    ]
    if lasts:
        return str(max(lasts, key=lambda p: p.stat().st_mtime_ns))
    for candidates in ([cb for cb in found if not cb.monitor], found[:1]):
        paths = [Path(cb.best_model_path) for cb in candidates if cb.best_model_path and Path(cb.best_model_path).is_file()]
        if paths:
            return str(max(paths, key=lambda p: p.stat().st_mtime_ns))
    return None


def _test_command(trainer) -> str:
    """The ``secure-ml test`` that tests this fit's last checkpoint with the fit's own config."""
    ckpt = checkpoint_to_test(trainer)
    config = Path(trainer.log_dir) / "config.yaml" if trainer.log_dir else None
    where = f"--config {config} " if config is not None and config.is_file() else ""
    return f"secure-ml test {where}--ckpt_path {ckpt}" if ckpt else "secure-ml test --ckpt_path <a checkpoint of the fit>"


def _trained_to_the_end(trainer) -> bool:
    """The fit was done: its last epoch (``max_epochs``) or step (``max_steps``) was reached, or something ended it
    (early stopping, ``max_time``, the privacy budget: ``trainer.should_stop``). A resume would train nothing, or
    what the stop had ruled out."""
    loop = trainer.fit_loop
    return (
        trainer.should_stop
        or _is_max_limit_reached(loop.epoch_progress.current.completed, loop.max_epochs)
        or _is_max_limit_reached(trainer.global_step, loop.max_steps)
    )


def stopped_message(trainer, subcommand: str, test_after_fit: bool = False) -> str:
    """What a SIGTERM left: where the run stopped and what to run next (the checkpoint to resume from; for a fit that had
    trained to its end, or whose ``--test_after_fit`` test was stopped, the test to run)."""
    if subcommand == "fit" and trainer.state.fn == "test":
        return (
            "fit finished, but its --test_after_fit test was stopped by SIGTERM before it finished and no report was written; "
            f"test the fit's checkpoint with `{_test_command(trainer)}`"
        )
    if subcommand != "fit":
        return f"{subcommand} stopped by SIGTERM before it finished; no report was written"
    done = trainer.fit_loop.epoch_progress.current.completed
    last = checkpoint_to_test(trainer)
    if _trained_to_the_end(trainer) and last:  # Lightning stops after every epoch, the last one included
        text = f"fit trained to its end (step {trainer.global_step}, {done} complete epoch{'' if done == 1 else 's'}) and was stopped by SIGTERM after it"
        if test_after_fit:
            return f"{text}, so its --test_after_fit test was not started; test the fit's checkpoint with `{_test_command(trainer)}`"
        return f"{text}; its checkpoints were written (the last: {last}), there is nothing to resume"
    text = f"fit stopped by SIGTERM after {done} complete epoch{'' if done == 1 else 's'} (step {trainer.global_step})"
    return f"{text}; resume with --ckpt_path {last}" if last else f"{text}; it had saved no checkpoint yet"


def finished_message(trainer, subcommand: str, test_skipped: bool) -> str:
    """A SIGTERM that came in hooks Lightning does not stop in (the scorecard's attacks at an epoch's end, the report):
    the run finished them first, so what it writes was written; the stop is still reported (exit 143). ``test_skipped``:
    a fit whose ``--test_after_fit`` test was not started because of it."""
    if test_skipped:
        return (
            "fit finished (SIGTERM came during its last hooks), so its --test_after_fit test was not started; "
            f"test the fit's checkpoint with `{_test_command(trainer)}`"
        )
    what = "the fit and its --test_after_fit test" if subcommand == "fit" and trainer.state.fn == "test" else subcommand
    return f"{what} received SIGTERM during its last hooks and finished them first; what it writes (report, checkpoints) was written"


def check_trained_on(trainer, ckpt_path, ckpt_step) -> None:
    """ConfigError when a fit resumed from ``ckpt_path`` (whose ``global_step`` was ``ckpt_step``) took no step: it had
    reached ``max_epochs``/``max_steps`` already, and the fit wrote no checkpoint and exited 0 as if it had resumed."""
    if ckpt_step is None or trainer.global_step > ckpt_step or trainer.received_sigterm:
        return
    if isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher):
        return  # ddp_spawn & co: the ranks trained in other processes; this one's global_step stayed at 0
    done = trainer.fit_loop.epoch_progress.current.completed
    raise NothingTrained(
        f"--ckpt_path {ckpt_path} had trained to its end already ({done} epoch{'' if done == 1 else 's'}, step {ckpt_step}; "
        f"--trainer.max_epochs {trainer.max_epochs}, --trainer.max_steps {trainer.max_steps}): nothing was left to train. "
        "Raise --trainer.max_epochs (or --trainer.max_steps) to train on, or `secure-ml test` the checkpoint"
    )
