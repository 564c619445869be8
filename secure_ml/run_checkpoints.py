"""Which checkpoint a fit leaves to test or resume from: ``--test_after_fit`` tests it, a SIGTERM names it (CLI layer)."""

import re
from pathlib import Path
from typing import Optional

from lightning.pytorch.callbacks import ModelCheckpoint


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


def stopped_message(trainer, subcommand: str) -> str:
    """What a SIGTERM left: where the run stopped and, for a fit, the checkpoint to resume from."""
    if subcommand != "fit":
        return f"{subcommand} stopped by SIGTERM before it finished; no report was written"
    done = trainer.fit_loop.epoch_progress.current.completed
    text = f"fit stopped by SIGTERM after {done} complete epoch{'' if done == 1 else 's'} (step {trainer.global_step})"
    last = checkpoint_to_test(trainer)
    return f"{text}; resume with --ckpt_path {last}" if last else f"{text}; it had saved no checkpoint yet"
