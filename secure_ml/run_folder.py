"""The run's folder (``lightning_logs/version_N``) in the CLI's process: the same one for every rank under a
multiprocessing launcher, and none left behind by a refused run (CLI layer)."""

import os
import shutil
from pathlib import Path
from typing import Set

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

from secure_ml.errors import ConfigError, NothingTrained, SecureMLError, Stopped, TrainingDiverged
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


def _this_process_writes() -> bool:
    """Global rank 0 as the launchers tell it before Lightning has set the ranks up (torchrun, SLURM, Lightning's own)."""
    return all(os.environ.get(v, "0") == "0" for v in ("LOCAL_RANK", "RANK", "SLURM_PROCID", "NODE_RANK"))


def _local(path) -> Path:
    text = str(path)
    return Path(text[len("file://") :] if text.startswith("file://") else text).expanduser().resolve()


def check_new_run_folder(trainer, ckpt_path) -> None:
    """ConfigError when a fit would write into a run folder that already holds files of another run: an explicit
    ``--trainer.logger.init_args.version`` of a finished run (or, without a logger, a ``default_root_dir`` whose
    ``checkpoints/`` holds checkpoints) made a fit replace its ``last.ckpt`` and ``config.yaml``, exit 0. A fit resuming
    from a checkpoint inside that folder may go on there. Evaluations write their report into a fit's folder and keep its
    ``config.yaml`` (:class:`KeepRunConfig`). Checked before anything is written, in the process that writes the folder."""
    if not _this_process_writes():
        return
    if trainer.logger is not None:
        folder = getattr(trainer.logger, "log_dir", None)  # resolves the version; creates nothing
        folders = [folder] if isinstance(folder, str) else []
    else:
        folders = [cb.dirpath or os.path.join(trainer.default_root_dir, "checkpoints") for cb in checkpointers(trainer)]
    resumed_from = _local(ckpt_path).parents if ckpt_path else []
    for folder in dict.fromkeys(folders):
        path = _local(folder)
        held = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        if trainer.logger is None:
            held = [name for name in held if name.endswith(".ckpt")]
        if not held or path in resumed_from:
            continue
        raise ConfigError(
            f"the run folder {folder} already holds another run ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}): this "
            "fit would overwrite its files. Choose another --trainer.logger.init_args.version (or leave it unset: the next "
            f"free one), or resume that run with --ckpt_path <its checkpoints/last.ckpt>"
        )


class KeepRunConfig(SaveConfigCallback):
    """Lightning's config saver, except that validate/test/predict never replace a ``config.yaml`` already in their run
    folder: ``secure-ml test --config $RUN/config.yaml`` of a run whose config names its logger version writes its report
    into that run's folder, and used to replace the fit's config (with ``ckpt_path`` and test-only options) there."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        log_dir = trainer.log_dir
        if stage != "fit" and log_dir is not None and os.path.isfile(os.path.join(log_dir, self.config_filename)):
            return
        super().setup(trainer, pl_module, stage)


def _holds_no_metric(events: Path) -> bool:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    try:
        return all(v.tag.startswith(HPARAMS_TAG) for event in EventFileLoader(str(events)).Load() for v in event.summary.value)
    except Exception:  # unreadable: keep it
        return False


def _writer_pid(events: Path) -> int:
    """The pid in TensorBoard's ``events.out.tfevents.<time>.<host>.<pid>.<n>`` (the host may hold dots); -1 if none."""
    pid = events.name.rsplit(".", 2)[-2] if events.name.count(".") >= 4 else ""
    return int(pid) if pid.isdigit() else -1


def untouched(folder: Path, writers: Set[int], metrics_ok: bool = False) -> bool:
    """True when ``folder`` holds only what a run writes before its first batch, and that run is this one: its
    config.yaml and hparams.yaml, empty folders (``checkpoints/``) and TensorBoard event files without a single metric,
    at least one of them and every one written by a process in ``writers`` (a run that raced this one into the same
    ``version_N`` has its own pid in its file's name, and its metrics may still sit in the writer's buffer). With
    ``metrics_ok`` (a resume that trained nothing: its dashboard shows the restored weights) the events may hold metrics."""
    events = []
    for path in folder.rglob("*"):
        if path.is_symlink() or (path.is_file() and path.name not in START_FILES and not path.name.startswith("events.out.tfevents.")):
            return False
        if path.is_file() and path.name.startswith("events.out.tfevents."):
            events.append(path)
    return bool(events) and all(_writer_pid(e) in writers and (metrics_ok or _holds_no_metric(e)) for e in events)


class FolderOnRefusal:
    """A context manager around a subcommand: when the run is refused (a ConfigError and the like, or Lightning's
    MisconfigurationException) before it wrote anything of its own, the ``version_N`` folder it created is removed, with
    the folders above it that it created and left empty, so a refused fit or test no longer leaves a folder with a
    config.yaml and an empty event file, and the next run does not skip a version number. A folder that existed before
    the run, that another process wrote to, or that holds a checkpoint, a metric or any other file, is left as it is; so
    is every folder off global rank 0, and the folder of a run stopped by SIGTERM or whose training diverged (what it
    was run with is part of what happened)."""

    def __init__(self, trainer):
        self.trainer = trainer
        logger = trainer.logger
        folder = getattr(logger, "log_dir", None) if logger is not None else None  # resolves the version; creates nothing
        self.created = []  # the run folder and its missing parents, innermost first
        if isinstance(folder, str):
            for path in (Path(folder).absolute(), *Path(folder).absolute().parents):
                if path.exists():
                    break
                self.created.append(path)

    def __enter__(self) -> "FolderOnRefusal":
        return self

    def _writers(self) -> Set[int]:
        """This process, and the ranks a multiprocessing launcher started for it (rank 0 writes the events)."""
        launcher = getattr(getattr(self.trainer, "strategy", None), "launcher", None)
        return {os.getpid(), *(p.pid for p in getattr(launcher, "procs", None) or [] if p.pid is not None)}

    def __exit__(self, exc_type, exc, tb) -> bool:
        refused = exc_type is not None and issubclass(exc_type, (SecureMLError, MisconfigurationException))
        if not refused or issubclass(exc_type, (Stopped, TrainingDiverged)) or not self.created or not self.trainer.is_global_zero:
            return False
        folder = self.created[0]
        if folder.is_dir() and untouched(folder, self._writers(), metrics_ok=issubclass(exc_type, NothingTrained)):
            shutil.rmtree(folder, ignore_errors=True)
            for parent in self.created[1:]:
                if not parent.is_dir() or any(parent.iterdir()):
                    break
                parent.rmdir()
        return False
