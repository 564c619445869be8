"""Keeps the ``selection_steps`` of the files a monitored ModelCheckpoint keeps up to date, also when a fit stops early.

A thin shell over :func:`secure_ml.privacy.selection.refresh_selected_checkpoints`; :class:`SecureClassifier` adds it
itself (``configure_callbacks``), so every DP fit has it. The refresh runs at each epoch start (the previous epoch's
checkpoints are saved and compared by then), at the end of fit, and on any exception that ends the fit: Ctrl-C,
SIGTERM (Lightning's ``SIGTERMException``), a diverged step or a crash. Before ``on_exception`` was covered, a fit
stopped at an epoch boundary left ``best-*.ckpt`` claiming only the epochs compared before the last one
(``tests/test_stopped_fit.py``). On an exception mid-epoch the files are raised to every step taken, the
partial epoch included: an upper bound, since the last comparison happened at most that late.
"""

import warnings

from lightning.pytorch import Callback, LightningModule, Trainer

from secure_ml.privacy.selection import refresh_selected_checkpoints


def refresh_selection(trainer: Trainer, pl_module: LightningModule) -> None:
    """Raise ``selection_steps`` of every file a monitored ModelCheckpoint keeps to the accountant's steps (rank 0 only)."""
    private = getattr(pl_module, "private", None)
    if private is not None and trainer.is_global_zero:
        monitored = [cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)]
        refresh_selected_checkpoints([p for cb in monitored for p in cb.best_k_models], private.steps)


class SelectionRefresh(Callback):
    """Refreshes the kept checkpoints' ``selection_steps`` at epoch starts, at the end of fit and when a fit is stopped."""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        refresh_selection(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        refresh_selection(trainer, pl_module)  # ModelCheckpoint saved the last epoch's files before this hook

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        try:
            refresh_selection(trainer, pl_module)
        except Exception as exc:  # the fit's own exception must still be the one reported
            warnings.warn(f"secure-ml: could not update the kept checkpoints' selection_steps after the fit stopped: {exc}", stacklevel=1)
