"""Runs that would do nothing are refused in one line (:mod:`secure_ml.empty_runs`). Before, each exited 0: a fit with
``--trainer.max_time 00:00:00:00`` wrote a run folder without a checkpoint, ``test --trainer.limit_test_batches 0`` no report."""

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

import secure_ml.train_cli  # noqa: F401 (Lightning binds its log handler at import: now, not to a test's captured stderr)
from secure_ml.cli import main
from secure_ml.empty_runs import check_runs_something
from secure_ml.errors import ConfigError
from tests.helpers.data import smoke_args
from tests.helpers.serving import fit_checkpoint


class _Tiny(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 2)), batch_size=4)


def _trainer(tmp_path, **kwargs) -> Trainer:
    kwargs = {"max_epochs": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False, **kwargs}
    return Trainer(default_root_dir=tmp_path, **kwargs)


@pytest.mark.parametrize("flags", [{"max_time": "00:00:00:00"}, {"max_epochs": 0}, {"max_steps": 0}, {"limit_train_batches": 0}])
def test_the_weakness_is_real(tmp_path, flags):
    """Negative control: Lightning fits nothing and returns as if it had (the CLI then exited 0)."""
    trainer = _trainer(tmp_path, **flags)
    trainer.fit(_Tiny())
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    "flags, subcommand, message",
    [
        ({"max_time": "00:00:00:00"}, "fit", "--trainer.max_time is zero"),
        ({"max_time": {"seconds": 0}}, "fit", "--trainer.max_time is zero"),
        ({"max_epochs": 0}, "fit", "--trainer.max_epochs 0 trains nothing"),
        ({"max_steps": 0}, "fit", "--trainer.max_steps 0 trains nothing"),
        ({"limit_train_batches": 0}, "fit", "--trainer.limit_train_batches 0 trains nothing"),
        ({"limit_train_batches": 0.0}, "fit", "--trainer.limit_train_batches 0 trains nothing"),
        ({"limit_test_batches": 0}, "test", "--trainer.limit_test_batches 0: secure-ml test would evaluate no digit"),
        ({"limit_val_batches": 0}, "validate", "--trainer.limit_val_batches 0: secure-ml validate would evaluate no digit"),
        ({"limit_predict_batches": 0}, "predict", "--trainer.limit_predict_batches 0: secure-ml predict would evaluate no digit"),
    ],
)
def test_runs_that_do_nothing_are_refused(tmp_path, flags, subcommand, message):
    with pytest.raises(ConfigError, match="^" + message):
        check_runs_something(_trainer(tmp_path, **flags), subcommand)


def test_test_after_fit_checks_the_test_limit_too(tmp_path):
    trainer = _trainer(tmp_path, limit_test_batches=0)
    check_runs_something(trainer, "fit")  # a fit alone never tests
    with pytest.raises(ConfigError, match="^--trainer.limit_test_batches 0: --test_after_fit would evaluate no digit"):
        check_runs_something(trainer, "fit", test_after_fit=True)


@pytest.mark.parametrize(
    "flags, subcommand",
    [
        ({"max_time": "00:00:00:01", "limit_val_batches": 0}, "fit"),  # a budget, however short, and no validation: fine
        ({"max_epochs": -1, "max_steps": 5}, "fit"),
        ({"limit_train_batches": 0.5, "limit_test_batches": 0}, "fit"),
        ({"limit_val_batches": 0}, "test"),  # another stage's limit
        ({"limit_test_batches": 1}, "test"),
    ],
)
def test_runs_that_do_something_pass(tmp_path, flags, subcommand):
    check_runs_something(_trainer(tmp_path, **flags), subcommand)


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, start",
    [
        (["fit", "--trainer.max_time", "00:00:00:00"], "--trainer.max_time is zero"),
        (["fit", "--test_after_fit", "true", "--trainer.limit_test_batches", "0"], "--trainer.limit_test_batches 0: --test_after_fit"),
        (["test", "--trainer.limit_test_batches", "0", "CKPT"], "--trainer.limit_test_batches 0: secure-ml test"),
        (["predict", "--trainer.limit_predict_batches", "0", "CKPT"], "--trainer.limit_predict_batches 0: secure-ml predict"),
    ],
)
def test_the_cli_refuses_in_one_line_and_writes_nothing(real_data_dir, tmp_path, monkeypatch, capsys, argv, start):
    flags = [a if a != "CKPT" else f"--ckpt_path={fit_checkpoint()}" for a in argv[1:]]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([argv[0], *smoke_args(real_data_dir, sizes=(300, 100, 100)), *flags])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("secure-ml: error:")]
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("secure-ml: error: " + start), err
    assert not list(tmp_path.rglob("*")), "nothing written"
