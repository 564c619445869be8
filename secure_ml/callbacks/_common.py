"""Shared plumbing for the evaluation callbacks: which data, which grad context, when to run."""

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator, Optional, Tuple

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from secure_ml.callbacks.eval_record import EvalRecord
from secure_ml.errors import ConfigError
from secure_ml.models.layout import channels_last
from secure_ml.report.gates import SAME_ON_EVERY_RANK, as_metric
from secure_ml.report.metric_names import METRICS


def stage_of(trainer: Trainer) -> str:
    """``test`` while testing, else ``val`` (validation during fit, or ``validate``)."""
    return "test" if trainer.testing else "val"


def run_folder(trainer: Trainer) -> Path:
    """The run's log folder (the Trainer's root without a logger). A broadcast under DDP: call it on every rank, then
    let rank 0 write (asked on rank 0 alone, rank 1 went on and exited, and rank 0 died in the broadcast)."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def held_out(trainer: Trainer, stage: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """The non-member tensors for ``stage``: the datamodule's validation split, or its test split when testing."""
    dm = trainer.datamodule
    ds = getattr(dm, "test_dataset" if stage == "test" else "val_dataset", None) if dm is not None else None
    if ds is None or not hasattr(ds, "tensors"):
        raise RuntimeError("secure-ml callbacks need a datamodule with tensor val_dataset/test_dataset (MNISTDataModule)")
    return ds.tensors[0], ds.tensors[1]


def members(trainer: Trainer) -> Tuple[torch.Tensor, torch.Tensor]:
    """The training members (after sanitization)."""
    ds = getattr(trainer.datamodule, "train_dataset", None) if trainer.datamodule is not None else None
    if ds is None:
        raise RuntimeError("membership inference needs the datamodule's train_dataset")
    return ds.tensors[0], ds.tensors[1]


def subsample(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` of a seeded permutation (all of them when ``n`` ≥ len)."""
    if n >= len(y):
        return x, y
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def should_run(trainer: Trainer, every_n_epochs: int) -> bool:
    if trainer.sanity_checking:
        return False
    return trainer.testing or trainer.current_epoch % every_n_epochs == 0 or trainer.current_epoch == (trainer.max_epochs or 0) - 1


@contextmanager
def attack_context(pl_module: LightningModule) -> Iterator[None]:
    """Gradients on, even under ``validate``/``test``'s inference mode, in the DP mode's attack context (its per-sample hooks off)."""
    private = getattr(pl_module, "private", None)
    with torch.inference_mode(False), torch.enable_grad(), private.attack_context() if private is not None else nullcontext():
        yield


def fast_layout_allowed(pl_module: LightningModule) -> bool:
    """The attacks may run in channels-last memory (:mod:`secure_ml.models.layout`) without DP or under a step mode whose
    ``StepMode.channels_last`` says so (not Opacus's: its guard refuses channels-last activations)."""
    private = getattr(pl_module, "private", None)
    return private is None or private.spec.channels_last


def log_all(pl_module: LightningModule, metrics: dict) -> None:
    """Log scalars once per epoch in float64. Under DDP most are identical on every rank (same data, same seed) and are
    synced with ``max``, not Lightning's mean: a float64 mean of 3, 6 or 7 equal values is not always the value (0.1
    came back 0.10000000000000002, and a gate "<= 0.1" then failed). A timing each rank measures apart (``per_rank`` in
    the metric registry) is averaged. ``batch_size=1``: the epoch mean multiplies and divides by it, exact only for 1."""
    sync = pl_module.trainer.world_size > 1
    for key, value in metrics.items():
        metric = as_metric(value, pl_module.device)
        reduce_fx = "mean" if key in METRICS and METRICS[key].per_rank else SAME_ON_EVERY_RANK
        pl_module.log(key, metric, on_step=False, on_epoch=True, sync_dist=sync, reduce_fx=reduce_fx, batch_size=1)


def on_device(pl_module: LightningModule, *tensors: torch.Tensor):
    return tuple(t.to(pl_module.device) for t in tensors)


def check_min(value: Optional[int], name: str, low: int = 1) -> None:
    """ConfigError naming ``name`` when ``value`` (if set) is below ``low``."""
    if value is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}; got {value}")


class EpochMetricCallback(Callback):
    """Base: computes ``_evaluate(pl_module, stage)`` at the end of every validation/test epoch and logs it.

    A subclass that lists stages in ``record_stages`` gets the loop's own forward over that stage's
    split as ``self.recorded`` (an :class:`~secure_ml.callbacks.eval_record.EvalRecord`, or None when
    the record is incomplete or misaligned) while ``_evaluate`` runs.
    """

    every_n_epochs: int = 1
    enabled: bool = True
    record_stages: Tuple[str, ...] = ()
    record_activations: bool = False
    _record: Optional[EvalRecord] = None
    recorded: Optional[EvalRecord] = None

    def _evaluate(self, pl_module: LightningModule, stage: str) -> dict:
        raise NotImplementedError

    def evaluate(self, pl_module: LightningModule, stage: str) -> dict:
        """The metrics on ``stage``'s held-out data, with gradients available (also under inference mode) and Opacus hooks off."""
        with attack_context(pl_module), channels_last(pl_module.net, enabled=fast_layout_allowed(pl_module)):
            return self._evaluate(pl_module, stage)

    def _start_record(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._drop_record()
        stage, dm = stage_of(trainer), trainer.datamodule
        ds = getattr(dm, "test_dataset" if stage == "test" else "val_dataset", None) if dm is not None else None
        if stage in self.record_stages and self.enabled and should_run(trainer, self.every_n_epochs) and hasattr(ds, "tensors"):
            self._record = EvalRecord(pl_module.net, ds.tensors[0], self.record_activations)

    def _drop_record(self) -> None:
        if self._record is not None:
            self._record.close()
        self._record = self.recorded = None

    def _run(self, trainer: Trainer, pl_module: LightningModule) -> None:
        record, self._record = self._record, None
        self.recorded = record if record is not None and record.finish() else None
        try:
            if self.enabled and should_run(trainer, self.every_n_epochs):
                log_all(pl_module, self.evaluate(pl_module, stage_of(trainer)))
        finally:
            self.recorded = None

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_record(trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._record is not None:
            self._record.batch(batch)

    on_test_epoch_start, on_test_batch_end = on_validation_epoch_start, on_validation_batch_end  # the same record, test split

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._run(trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._run(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._drop_record()  # no hooks left on the net
