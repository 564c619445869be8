"""Small datamodules and trainers shared by the training tests (500 digits: 400 members, 100 validation, 100 test)."""

from lightning.pytorch import Trainer

from secure_ml.data import MNISTDataModule


def small_datamodule(root, dp: bool = True, batch_size: int = 32, **kw) -> MNISTDataModule:
    """500/100/100 digits of ``root``, batch ``batch_size`` (32), Poisson sampling with a fixed seed when ``dp`` (13 batches per epoch)."""
    return MNISTDataModule(
        data_dir=str(root),
        download=False,
        train_size=500,
        val_size=100,
        test_size=100,
        batch_size=batch_size,
        poisson_sampling=dp,
        sampling_seed=0,
        **kw,
    )


def quiet_trainer(tmp_path, epochs: int = 1, **kw) -> Trainer:
    """A Trainer without logger, checkpoints, progress bar or summary (unless given), inference mode off unless given (the attacks need gradients)."""
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    kw.setdefault("inference_mode", False)
    return Trainer(max_epochs=epochs, default_root_dir=str(tmp_path), enable_progress_bar=False, enable_model_summary=False, **kw)
