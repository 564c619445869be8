"""ReduceLROnPlateau with and without DP: it steps on val/loss once per validated epoch, resumes, and is refused in
one line where it could never step. Before, a DP fit crashed at its first epoch end with torch's
``TypeError: ReduceLROnPlateau.step() missing 1 required positional argument: 'metrics'``."""

from types import SimpleNamespace

import pytest
import torch

from secure_ml.cli import main
from secure_ml.errors import ConfigError
from secure_ml.optim_resume import check_resumable, optimizer_name
from secure_ml.schedulers import PLATEAU_MONITOR, lightning_config, lightning_steps, step_epoch
from tests.helpers.data import smoke_args


def _plateau(**kw):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1), **kw)


def test_the_crash_it_replaces_is_real():
    """Negative control: stepped like every other scheduler (the DP modes' epoch end did so), a plateau schedule raises."""
    with pytest.raises(TypeError, match="metrics"):
        _plateau().step()


def _trainer(validates=True, every=1):
    return SimpleNamespace(enable_validation=validates, check_val_every_n_epoch=every)


def test_lightning_config_watches_val_loss_at_the_validation_frequency():
    sched = _plateau()
    assert lightning_config(sched, _trainer(every=3)) == {
        "scheduler": sched,
        "interval": "epoch",
        "frequency": 3,
        "monitor": PLATEAU_MONITOR,
        "strict": True,
    }
    assert lightning_config(sched, _trainer(every=None))["frequency"] == 1  # validation counted in steps
    assert lightning_config(sched, None)["frequency"] == 1  # no trainer attached
    step = torch.optim.lr_scheduler.StepLR(sched.optimizer, 2)
    assert lightning_config(step, _trainer(validates=False)) == {"scheduler": step, "interval": "epoch"}  # needs no validation


@pytest.mark.parametrize(
    "kw, validates, match",
    [({"mode": "max"}, True, r"mode 'max' would cut the learning rate"), ({}, False, r"this fit runs no validation")],
)
def test_a_plateau_schedule_that_cannot_step_is_refused_in_one_line(kw, validates, match):
    with pytest.raises(ConfigError, match=r"^--model.scheduler ReduceLROnPlateau .*" + match):
        lightning_config(_plateau(**kw), _trainer(validates))


def test_step_epoch_counts_validations_not_epochs():
    sched = _plateau(patience=0, threshold=0.0)
    for manual in (True, False):  # the module steps a plateau schedule in both modes
        step_epoch(sched, {PLATEAU_MONITOR: torch.tensor(1.0)}, validated=True, manual=manual)
        step_epoch(sched, {PLATEAU_MONITOR: torch.tensor(1.0)}, validated=False, manual=manual)  # the old value: no new bad epoch
    # two validations, the second no better: patience 0 cut the lr once (the unvalidated epochs counted nothing)
    assert (sched.best, sched.last_epoch, sched.optimizer.param_groups[0]["lr"]) == (1.0, 2, pytest.approx(0.01))
    step_epoch(sched, {PLATEAU_MONITOR: torch.tensor(2.0)}, validated=True, manual=True)  # worse: cut again
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(0.001)
    with pytest.raises(ConfigError, match="logged no val/loss"):
        step_epoch(sched, {}, validated=True, manual=False)
    step = torch.optim.lr_scheduler.StepLR(sched.optimizer, 1, gamma=0.5)
    step_epoch(step, {}, validated=False, manual=True)  # other schedulers step every epoch, validated or not...
    step_epoch(step, {}, validated=True, manual=False)  # ...and only under manual optimisation: else Lightning steps them
    assert step.last_epoch == 1 and lightning_steps(step) and not lightning_steps(sched)


def _lr_and_steps(tmp_path):
    ckpt = torch.load(sorted(tmp_path.glob("lightning_logs/version_*/checkpoints/last.ckpt"))[-1], weights_only=True)
    state = ckpt["lr_schedulers"][0]
    return state["_last_lr"][0], state["last_epoch"], ckpt["epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("dp", ["true", "false"])
def test_a_plateau_fit_cuts_the_lr_on_validated_epochs_and_resumes(tiny_mnist, tmp_path, monkeypatch, dp):
    """patience 0 and an absolute threshold of 10 (no loss falls that far): every validation after the first counts as a plateau and divides the lr by 10.
    With validation every second epoch, 4 epochs validate twice; the DP fit (manual optimisation) and the plain one
    (Lightning's automatic optimisation) count alike, each step is in its epoch's checkpoint (Lightning's own plateau step
    came after it), and the checkpoint's schedule resumes."""
    monkeypatch.chdir(tmp_path)
    common = smoke_args(tiny_mnist, "--data.batch_size", "64", "--robustness.enabled", "false", "--sponge.enabled", "false")
    common += ["--membership.enabled", "false", "--reference_mia.enabled", "false", "--model.dp.enabled", dp]
    common += ["--model.scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau", "--model.scheduler.patience", "0"]
    common += ["--model.scheduler.threshold_mode", "abs", "--model.scheduler.threshold", "10", "--trainer.check_val_every_n_epoch", "2"]
    main(["fit", *common, "--trainer.max_epochs", "4"])
    lr, steps, epoch = _lr_and_steps(tmp_path)
    assert (epoch, steps, lr) == (3, 2, pytest.approx(0.001))  # the step of epoch 3 is in epoch 3's checkpoint
    main(
        [
            "fit",
            *common,
            "--trainer.max_epochs",
            "6",
            "--ckpt_path",
            str(sorted(tmp_path.glob("lightning_logs/*/checkpoints/last.ckpt"))[0]),
        ]
    )
    lr, steps, epoch = _lr_and_steps(tmp_path)
    assert (epoch, steps, lr) == (5, 3, pytest.approx(0.0001))


def test_a_plateau_cut_lr_resumes_and_a_new_lr_is_still_refused():
    """ReduceLROnPlateau records no start lr (no ``initial_lr``): the resume check accepts a configured lr from which the
    saved schedule's cuts reach the checkpoint's lr, and still refuses one they cannot (it would be replaced unseen)."""
    sched = _plateau(patience=0, factor=0.1)
    opt = sched.optimizer
    opt.param_groups[0]["params"][0].grad = torch.ones(2)
    opt.step()
    for value in (1.0, 2.0, 3.0):  # two cuts: 0.1 → 0.01 → 0.001
        sched.step(value)
    saved, name, schedulers = [opt.state_dict()], optimizer_name(opt), [sched.state_dict()]
    assert saved[0]["param_groups"][0]["lr"] == pytest.approx(0.001)
    fresh = lambda lr: torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=lr)  # noqa: E731
    for lr in (0.1, 0.001):  # the run's lr, or the one it has reached
        check_resumable(saved, name, fresh(lr), schedulers)
    for lr in (0.5, 0.05):
        with pytest.raises(ValueError, match=rf"^--model.optimizer.init_args.lr {lr} would not apply"):
            check_resumable(saved, name, fresh(lr), schedulers)
    with pytest.raises(ValueError, match="would not apply"):  # negative control: without the schedule, the cut lr is a new one
        check_resumable(saved, name, fresh(0.1), None)
