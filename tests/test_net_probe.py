"""Nets and checkpoints that do not fit the digits are refused in one line before training (from a review)."""

from pathlib import Path

import pytest
import torch
from torch import nn

from secure_ml.errors import ConfigError
from secure_ml.models import SmallCNN, TanhCNN
from secure_ml.models.probe import NUM_CLASSES, check_net_output
from secure_ml.module import SecureClassifier
from secure_ml.train_cli import cli_main

CAPSTONE = str(Path(__file__).resolve().parents[1] / "configs" / "capstone.yaml")


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)), x


class BatchStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(784)
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(self.bn(x.flatten(1)))


@pytest.mark.parametrize(
    "net, message",
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(784, 5)), r"to shape \(1, 5\); it must give \(1, 10\)"),
        (TupleOut(), "returns a tuple"),
        (nn.Linear(784, 10), "cannot take a batch of 1x28x28 digits"),
    ],
)
def test_a_net_that_does_not_fit_the_digits_is_refused(net, message):
    with pytest.raises(ConfigError, match=rf"^--model.net: .*{message}"):
        check_net_output(net, (1, 28, 28), NUM_CLASSES)


class DividesByZero(nn.Module):
    """A net whose own normalisation divides by a zero std (``SmallCNN(std=0)`` before it refused one)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(((x - 0.1) / 0.0).flatten(1))


def test_a_net_with_non_finite_logits_is_refused():
    """Before, `--model.net.init_args.std 0` passed the probe and trained every weight to NaN, with exit 0."""
    with pytest.raises(ConfigError, match=r"^--model.net: DividesByZero gives non-finite logits"):
        check_net_output(DividesByZero(), (1, 28, 28), NUM_CLASSES)


@pytest.mark.parametrize("cls", [SmallCNN, TanhCNN])
@pytest.mark.parametrize("kwargs, flag", [(dict(std=0.0), "std"), (dict(std=float("nan")), "std"), (dict(mean=float("inf")), "mean")])
def test_shipped_nets_refuse_a_bad_normalisation(cls, kwargs, flag):
    with pytest.raises(ConfigError, match=rf"^--model.net.init_args.{flag} \({cls.__name__}\) must be a finite number"):
        cls(**kwargs)


def test_the_probe_passes_the_shipped_net_and_leaves_modes_and_statistics_alone():
    check_net_output(SmallCNN(), (1, 28, 28), NUM_CLASSES)  # the control
    net = BatchStats().train()
    before = net.bn.running_mean.clone()
    check_net_output(net, (1, 28, 28), NUM_CLASSES)  # a batch of one would fail in train-mode BatchNorm1d
    assert net.training and net.bn.training and torch.equal(net.bn.running_mean, before)


def test_weights_of_another_net_are_one_config_error():
    other = SecureClassifier(net=nn.Sequential(nn.Flatten(), nn.Linear(784, 10))).state_dict()
    with pytest.raises(ConfigError, match=r"^--ckpt_path: its weights do not fit --model.net SmallCNN \(Error\(s\) in loading"):
        SecureClassifier().load_state_dict(other)
    SecureClassifier().load_state_dict(SecureClassifier().state_dict())  # the control: a fitting state loads


def test_default_root_dir_moves_the_default_logger(tmp_path):
    cli = cli_main(["--config", CAPSTONE, "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.trainer.logger.save_dir == str(tmp_path) and cli.trainer.log_dir.startswith(str(tmp_path))
    explicit = tmp_path / "logs"  # an explicit save_dir wins
    cli = cli_main(
        ["--config", CAPSTONE, "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(explicit)], run=False
    )
    assert cli.trainer.logger.save_dir == str(explicit)


def test_default_root_dir_moves_a_rerun_of_a_saved_config(tmp_path):
    """A fit's config.yaml holds the save_dir it resolved; `--config $RUN/config.yaml --trainer.default_root_dir OTHER`
    wrote into the first run's folder anyway (from a docs review)."""
    import yaml

    from secure_ml.train_cli import TRAINER_DEFAULTS

    first = tmp_path / "first"
    fit = cli_main(["--config", CAPSTONE, "--trainer.default_root_dir", str(first)], run=False)
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump({"trainer": {"default_root_dir": str(first), "logger": {
        "class_path": TRAINER_DEFAULTS["logger"]["class_path"], "init_args": {"save_dir": fit.trainer.logger.save_dir}}}}))  # fmt: skip
    rerun = cli_main(["--config", CAPSTONE, "--config", str(saved)], run=False)
    assert rerun.trainer.logger.save_dir == str(first)  # control: the saved folder, as before
    other = tmp_path / "other"
    rerun = cli_main(["--config", CAPSTONE, "--config", str(saved), "--trainer.default_root_dir", str(other)], run=False)
    assert rerun.trainer.logger.save_dir == str(other) and rerun.trainer.log_dir.startswith(str(other))
