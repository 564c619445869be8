"""A fit stopped from outside (SIGTERM, Ctrl-C) says so, exits non-zero, and leaves checkpoints whose ε is right."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from secure_ml.cli import main
from secure_ml.privacy.ledger import ledger_from_checkpoint
from tests.helpers.data import smoke_args
from tests.helpers.signals import StopAtEpochStart
from tests.test_dp_lifecycle import K, LogEpochScore, _dm, _eps, _model, _trainer


@pytest.mark.slow
def test_a_fit_stopped_at_an_epoch_boundary_leaves_the_selected_file_paying_for_its_selection(tiny_mnist, tmp_path):
    """The best file (epoch 0) was compared with epoch 1's model before the stop: its ε must cover 2K steps, not K."""
    best_cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="sel/score", mode="max", filename="best", save_on_train_epoch_end=True)
    trainer = _trainer(tmp_path, epochs=3, callbacks=[LogEpochScore(), StopAtEpochStart(2), best_cb], enable_checkpointing=True)
    with pytest.raises(SIGTERMException):
        trainer.fit(_model(), _dm(tiny_mnist))
    ledger = ledger_from_checkpoint(torch.load(best_cb.best_model_path, weights_only=True))
    assert ledger["steps"] == K and ledger["selection_steps"] == 2 * K
    assert ledger["epsilon"] == pytest.approx(_eps(2 * K), rel=1e-6)


@pytest.mark.slow
def test_sigterm_stops_fit_with_one_line_and_exit_143(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = smoke_args(tiny_mnist, "--data.batch_size", "32", "--trainer.max_epochs", "3")
    with pytest.raises(SystemExit) as exc:
        main(["fit", *common, "--trainer.callbacks+=tests.helpers.signals.SigtermAtEpochEnd"])
    assert exc.value.code == 143  # it exited 0, as a finished fit does
    last = "lightning_logs/version_0/checkpoints/last.ckpt"
    err = capsys.readouterr().err
    assert f"secure-ml: error: fit stopped by SIGTERM after 1 complete epoch (step 12); resume with --ckpt_path {last}" in err
    assert torch.load(tmp_path / last, weights_only=True)["epoch"] == 0
