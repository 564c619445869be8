"""The run's folder (``lightning_logs/version_N``) in the CLI's process: the same one for every rank under a
multiprocessing launcher, and none left behind by a refused run (CLI layer)."""

import shutil
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

from secure_ml.errors import SecureMLError
from secure_ml.run_checkpoints import checkpointers

START_FILES = {"config.yaml", "hparams.yaml"}  # what a run writes before its first batch, besides event files
HPARAMS_TAG = "_hparams_/"  # TensorBoard's copy of hparams.yaml


def pin_run_folder(trainer) -> None:
    """Under ``ddp_spawn``/``ddp_fork``/``ddp_notebook`` (Lightning's multiprocessing launcher), settle the logger's
    version and the ModelCheckpoints' folders in the main process before the launch.

    The ranks train on a copy of the Trainer and each resolves these on its own: rank 0 wrote ``version_0`` while the main
    process, resolving afterwards, saw that folder taken and put ``--test_after_fit``'s report into ``version_1``, and
    found no checkpoint folder, so it tested the best checkpoint instead of the last. Other launchers run rank 0 in this
    process: nothing to do.
    """
    if not isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        return
    for logger in trainer.loggers:
        logger.version  # noqa: B018 - the property fixes the next free version on first read
    for cb in checkpointers(trainer):
        if cb.dirpath is None:
            cb.dirpath = cb._ModelCheckpoint__resolve_ckpt_dir(trainer)  # Lightning's own rule, as each rank applies it


def _holds_no_metric(events: Path) -> bool:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    try:
        return all(v.tag.startswith(HPARAMS_TAG) for event in EventFileLoader(str(events)).Load() for v in event.summary.value)
    except Exception:  # unreadable: keep it
        return False


def untouched(folder: Path) -> bool:
    """True when ``folder`` holds only what a run writes before its first batch: its config.yaml and hparams.yaml,
    empty folders (``checkpoints/``) and TensorBoard event files without a single metric."""
    for path in folder.rglob("*"):
        if path.is_symlink() or (path.is_file() and path.name not in START_FILES and not path.name.startswith("events.out.tfevents.")):
            return False
        if path.is_file() and path.name.startswith("events.out.tfevents.") and not _holds_no_metric(path):
            return False
    return True


class FolderOnRefusal:
    """A context manager around a subcommand: when the run is refused (a SecureMLError, or Lightning's
    MisconfigurationException) before it wrote anything of its own, the ``version_N`` folder it created is removed, so a
    refused fit or test no longer leaves a folder with a config.yaml and an empty event file, and the next run does not
    skip a version number. A folder that existed before the run, or that holds a checkpoint, a metric or any other file,
    is left as it is; so is every folder off global rank 0."""

    def __init__(self, trainer):
        self.trainer = trainer
        logger = trainer.logger
        folder = getattr(logger, "log_dir", None) if logger is not None else None  # resolves the version; creates nothing
        self.folder = Path(folder) if isinstance(folder, str) and not Path(folder).exists() else None
        self.new_root = self.folder is not None and not self.folder.parent.exists()  # lightning_logs/ itself

    def __enter__(self) -> "FolderOnRefusal":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        refused = exc_type is not None and issubclass(exc_type, (SecureMLError, MisconfigurationException))
        if refused and self.folder is not None and self.trainer.is_global_zero and self.folder.is_dir() and untouched(self.folder):
            shutil.rmtree(self.folder, ignore_errors=True)
            if self.new_root and self.folder.parent.is_dir() and not any(self.folder.parent.iterdir()):
                self.folder.parent.rmdir()
        return False
