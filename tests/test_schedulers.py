"""ReduceLROnPlateau with and without DP: it steps on val/loss once per validated epoch, resumes, and is refused in
one line where it could never step. Before, a DP fit crashed at its first epoch end with torch's
``TypeError: ReduceLROnPlateau.step() missing 1 required positional argument: 'metrics'``."""

from types import SimpleNamespace

import pytest
import torch

from secure_ml.cli import main
from secure_ml.errors import ConfigError
from secure_ml.optim_build import build_scheduler
from secure_ml.optim_resume import check_resumable, optimizer_name
from secure_ml.schedulers import PLATEAU_MONITOR, lightning_config, lightning_steps, step_epoch
from tests.helpers.data import smoke_args


def _plateau(**kw):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1), **kw)


def test_the_crash_it_replaces_is_real():
    """Negative control: stepped like every other scheduler (the DP modes' epoch end did so), a plateau schedule raises."""
    with pytest.raises(TypeError, match="metrics"):
        _plateau().step()


def _trainer(validates=True, every=1, epochs=3, automatic=True):
    module = SimpleNamespace(automatic_optimization=automatic)
    return SimpleNamespace(enable_validation=validates, check_val_every_n_epoch=every, max_epochs=epochs, lightning_module=module)


def test_lightning_config_leaves_the_plateau_step_to_the_module():
    """Lightning is not told it is a plateau schedule: it would look up val/loss at every epoch end and refuse the fit at
    the first epoch that did not validate (validation counted in steps). Under manual optimisation it gets no extra keys
    (Lightning warns that it ignores them)."""
    sched = _plateau()
    plain = {"scheduler": sched, "interval": "epoch"}
    assert lightning_config(sched, _trainer()) == {**plain, "reduce_on_plateau": False}
    assert lightning_config(sched, _trainer(every=None)) == {**plain, "reduce_on_plateau": False}
    assert lightning_config(sched, _trainer(automatic=False)) == plain
    assert lightning_config(sched, None) == {**plain, "reduce_on_plateau": False}  # no trainer attached: nothing to check
    step = torch.optim.lr_scheduler.StepLR(sched.optimizer, 2)
    assert lightning_config(step, _trainer(validates=False)) == {"scheduler": step, "interval": "epoch"}  # needs no validation


@pytest.mark.parametrize(
    "kw, trainer, match",
    [
        ({"mode": "max"}, _trainer(), r"mode 'max' would cut the learning rate"),
        ({}, _trainer(validates=False), r"this fit runs no validation"),
        ({}, _trainer(every=5, epochs=2), r"would never step: validation runs every 5 epochs .* this fit has 2"),
    ],
)
def test_a_plateau_schedule_that_cannot_step_is_refused_in_one_line(kw, trainer, match):
    with pytest.raises(ConfigError, match=r"^--model.scheduler ReduceLROnPlateau .*" + match):
        lightning_config(_plateau(**kw), trainer)


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
    """ReduceLROnPlateau records no start lr; build_scheduler writes the ``initial_lr`` other schedulers write, so the
    resume check compares the configured lr with the one the cuts started from, exactly. (Review finding: a bound
    on the number of cuts let lr 1.0 resume a run that started at 0.1 and trained on at the checkpoint's lr.)"""
    fresh = lambda lr: torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=lr)  # noqa: E731
    plateau = lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.1)  # noqa: E731
    opt = fresh(0.1)
    sched = build_scheduler(plateau, opt, None)
    opt.param_groups[0]["params"][0].grad = torch.ones(2)
    opt.step()
    for value in (1.0, 2.0, 3.0):  # two cuts: 0.1 → 0.01 → 0.001
        sched.step(value)
    saved, name, schedulers = [opt.state_dict()], optimizer_name(opt), [sched.state_dict()]
    assert saved[0]["param_groups"][0]["lr"] == pytest.approx(0.001)
    resumed = fresh(0.1)
    build_scheduler(plateau, resumed, None)
    check_resumable(saved, name, resumed, schedulers)  # the run's lr resumes
    for lr in (1.0, 0.5, 0.01, 0.001):  # anything else, a value the cuts passed through included
        other = fresh(lr)
        build_scheduler(plateau, other, None)
        with pytest.raises(ValueError, match=r"would not apply"):
            check_resumable(saved, name, other, schedulers)


@pytest.mark.slow
def test_a_plateau_fit_validating_by_steps_is_not_refused_at_an_epoch_without_validation(tiny_mnist, tmp_path, monkeypatch):
    """Review finding: with validation every 9 steps (7 batches an epoch) the first epoch does not validate, and Lightning,
    told the scheduler was a plateau one, refused the fit there. It now trains on and steps after each validation."""
    monkeypatch.chdir(tmp_path)
    args = smoke_args(tiny_mnist, "--data.batch_size", "64", "--robustness.enabled", "false", "--sponge.enabled", "false")
    args += ["--membership.enabled", "false", "--reference_mia.enabled", "false", "--model.dp.enabled", "false"]
    args += ["--model.scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau", "--trainer.max_epochs", "3"]
    main(["fit", *args, "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", "9"])
    _, steps, epoch = _lr_and_steps(tmp_path)
    assert epoch == 2 and steps >= 1
