"""Resuming a fit with another optimizer, or with a hyper-parameter typed anew: Lightning restores the checkpoint's
optimizer state after configure_optimizers, so another class crashed deep in torch and a new lr was silently replaced."""

import pytest
import torch

from secure_ml.cli import main
from secure_ml.optim_resume import check_resumable, check_scheduler_resumable, optimizer_name, scheduler_name
from tests.helpers.data import smoke_args


def _params():
    return [torch.nn.Parameter(torch.ones(3))]


def _trained_state(optimizer):
    optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
    optimizer.step()
    return optimizer.state_dict()


def test_the_weaknesses_the_check_guards_against_are_real():
    """Negative controls: without the check, SGD's state restored into Adam fails deep in torch, and a restored state
    replaces the lr the resumed run was configured with."""
    adam = torch.optim.Adam(_params(), lr=1e-3)
    with pytest.raises(KeyError, match="step"):
        adam.load_state_dict(_trained_state(torch.optim.SGD(_params(), lr=0.01, momentum=0.9)))
    resumed = torch.optim.SGD(_params(), lr=0.5, momentum=0.9)
    resumed.load_state_dict(_trained_state(torch.optim.SGD(_params(), lr=0.01, momentum=0.9)))
    assert resumed.param_groups[0]["lr"] == 0.01  # the typed 0.5 is gone without a word


def test_another_class_or_a_changed_hyper_parameter_is_refused_and_the_same_passes():
    sgd = torch.optim.SGD(_params(), lr=0.01, momentum=0.9)
    saved = [_trained_state(sgd)]
    name = optimizer_name(sgd)
    check_resumable(saved, name, torch.optim.SGD(_params(), lr=0.01, momentum=0.9))  # the same: resumes
    check_resumable(None, None, torch.optim.Adam(_params()))  # a checkpoint without optimizer state: nothing to check
    with pytest.raises(ValueError, match=r"^--model.optimizer: the checkpoint was trained with SGD, this fit configures Adam"):
        check_resumable(saved, name, torch.optim.Adam(_params()))
    with pytest.raises(ValueError, match=r"^--model.optimizer: the checkpoint was trained with an optimizer with"):
        check_resumable(saved, None, torch.optim.Adam(_params()))  # an older file: told apart by its hyper-parameter names
    with pytest.raises(ValueError, match=r"^--model.optimizer.init_args.lr 0.5 would not apply.*lr 0.01"):
        check_resumable(saved, name, torch.optim.SGD(_params(), lr=0.5, momentum=0.9))
    with pytest.raises(ValueError, match=r"^--model.optimizer.init_args.momentum 0.5 would not apply"):
        check_resumable(saved, name, torch.optim.SGD(_params(), lr=0.01, momentum=0.5))
    scheduled = dict(saved[0], param_groups=[dict(saved[0]["param_groups"][0], lr=0.001, initial_lr=0.01)])
    check_resumable([scheduled], name, torch.optim.SGD(_params(), lr=0.01, momentum=0.9))  # a decayed lr is the schedule's


@pytest.mark.slow
def test_resume_end_to_end(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = smoke_args(tiny_mnist, "--data.batch_size", "32", "--robustness.enabled", "false", "--sponge.enabled", "false")
    common += ["--membership.enabled", "false", "--reference_mia.enabled", "false", "--model.dp.enabled", "false"]
    main(["fit", *common, "--trainer.max_epochs", "1"])
    ckpt = str(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    refusals = (
        (
            ["--model.optimizer", "torch.optim.Adam", "--model.optimizer.lr", "0.001"],
            "--model.optimizer: the checkpoint was trained with SGD",
        ),
        (["--model.optimizer.init_args.lr", "0.5"], "--model.optimizer.init_args.lr 0.5 would not apply"),
    )
    for flags, message in refusals:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", ckpt, *flags])
        err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("INFO: ")]
        assert exc.value.code == 2 and len(err) == 1, err
        assert err[0].startswith(f"secure-ml: error: {message}"), err[0]
    main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", ckpt])  # the same optimizer resumes
    resumed = torch.load(sorted(tmp_path.glob("lightning_logs/version_*/checkpoints/last.ckpt"))[-1], weights_only=True)
    assert resumed["epoch"] == 1 and resumed["secure_ml_optimizer"] == "torch.optim.sgd.SGD"


def _scheduled(optimizer_cls, scheduler: str, max_lr: float = 0.1, **kw):
    optimizer = optimizer_cls(_params(), **kw)
    if scheduler == "onecycle":
        return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=100)
    return optimizer, torch.optim.lr_scheduler.CyclicLR(optimizer, 0.001, max_lr, step_size_up=10)


@pytest.mark.parametrize(
    "optimizer_cls,kw,scheduler",
    [
        (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}, "onecycle"),
        (torch.optim.Adam, {"lr": 0.01}, "onecycle"),
        (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}, "cyclic"),
    ],
)
def test_a_cycling_schedule_resumes_with_its_own_config(optimizer_cls, kw, scheduler):
    """From a review: OneCycleLR/CyclicLR move lr and momentum/betas every step, so a run resumed with its own config was
    refused ("momentum 0.9 would not apply ... 0.87"). The check now runs after the scheduler is built and compares its
    bounds. Negative control: the same states against a bare optimizer (the check's old place, before the scheduler) are refused."""
    optimizer, sched = _scheduled(optimizer_cls, scheduler, **kw)
    for _ in range(7):
        optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
        optimizer.step()
        sched.step()
    saved, name = [optimizer.state_dict()], optimizer_name(optimizer)
    check_resumable(saved, name, _scheduled(optimizer_cls, scheduler, **kw)[0])
    with pytest.raises(ValueError, match="would not apply"):
        check_resumable(saved, name, optimizer_cls(_params(), **kw))
    if scheduler == "onecycle":  # its max_lr lives in the parameter groups: a changed one is refused, named as its flag
        with pytest.raises(ValueError, match=r"^--model.scheduler.init_args.max_lr 0.2 would not apply"):
            check_resumable(saved, name, _scheduled(optimizer_cls, scheduler, max_lr=0.2, **kw)[0])


@pytest.mark.slow
def test_a_one_cycle_fit_resumes_end_to_end(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = smoke_args(tiny_mnist, "--data.batch_size", "32", "--robustness.enabled", "false", "--sponge.enabled", "false")
    common += ["--membership.enabled", "false", "--reference_mia.enabled", "false", "--model.dp.enabled", "false"]
    common += ["--model.scheduler", "torch.optim.lr_scheduler.OneCycleLR", "--model.scheduler.max_lr", "0.05"]
    common += ["--model.scheduler.total_steps", "1000"]
    main(["fit", *common, "--trainer.max_epochs", "1"])
    ckpt = str(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # a changed schedule length: Lightning would restore the old one over it
        main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", ckpt, "--model.scheduler.total_steps", "2000"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("secure-ml: error:")]
    assert exc.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("secure-ml: error: --model.scheduler.init_args.total_steps 2000 would not apply"), err[0]
    main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", ckpt])
    resumed = torch.load(sorted(tmp_path.glob("lightning_logs/version_*/checkpoints/last.ckpt"))[-1], weights_only=True)
    assert resumed["epoch"] == 1


def _step_lr(gamma=0.5, step_size=2):
    return torch.optim.lr_scheduler.StepLR(torch.optim.SGD(_params(), lr=0.01, momentum=0.9), step_size, gamma)


def test_a_changed_scheduler_setting_or_another_scheduler_is_refused():
    """Lightning restores the checkpoint's scheduler state over the one a resumed fit builds. Negative control: a
    restored StepLR state silently replaces a new gamma. With the check: refused in one line; the same settings pass."""
    old = _step_lr(gamma=0.5)
    old.optimizer.step()
    old.step()
    saved = [old.state_dict()]
    silently = _step_lr(gamma=0.1)
    silently.load_state_dict(saved[0])
    assert silently.gamma == 0.5  # the typed 0.1 is gone without a word
    check_scheduler_resumable(saved, _step_lr(gamma=0.5))
    check_scheduler_resumable(None, _step_lr())  # nothing saved: nothing to check
    with pytest.raises(ValueError, match=r"^--model.scheduler.init_args.gamma 0.1 would not apply.*gamma 0.5"):
        check_scheduler_resumable(saved, _step_lr(gamma=0.1))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD(_params(), lr=0.01), 10)
    with pytest.raises(
        ValueError, match=r"^--model.scheduler: the checkpoint's scheduler state has no T_max, eta_min of this fit's CosineAnnealingLR"
    ):
        check_scheduler_resumable(saved, cosine)
    one_cycle = [torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD(_params(), lr=0.01, momentum=0.9), 0.1, 100).state_dict()]
    with pytest.raises(ValueError, match=r"^--model.scheduler.init_args.pct_start or three_phase differs"):  # a private attribute
        other = torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD(_params(), lr=0.01, momentum=0.9), 0.1, 100, pct_start=0.5)
        check_scheduler_resumable(one_cycle, other)


def test_a_warm_restart_schedule_resumes_mid_cycle_and_dropping_the_scheduler_is_refused():
    """From a review: CosineAnnealingWarmRestarts keeps its place in the cycle in public keys (T_cur, T_i), which a
    deny-list compared as settings, so a resume mid-cycle was refused; settings are now its constructor's arguments.
    And a fit that drops the checkpoint's scheduler trained on at the schedule's last lr without a word."""

    def warm(t_mult=2):
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(torch.optim.SGD(_params(), lr=0.1), 3, t_mult)

    old = warm()
    for _ in range(5):
        old.optimizer.step()
        old.step()
    saved = [old.state_dict()]
    assert saved[0]["T_cur"] != warm().state_dict()["T_cur"]  # the position differs from a fresh schedule's
    check_scheduler_resumable(saved, warm())
    with pytest.raises(ValueError, match=r"^--model.scheduler.init_args.T_mult 3 would not apply"):
        check_scheduler_resumable(saved, warm(3))
    with pytest.raises(ValueError, match=r"^--model.scheduler: the checkpoint was trained with an LR scheduler and this fit"):
        check_scheduler_resumable(saved, None)


def test_a_scheduler_added_on_resume_resumes_again_and_another_recorded_scheduler_is_refused():
    """From a review. (1) A fit resumed with a scheduler added restores groups saved without ``initial_lr`` (torch's
    restore drops the key), so the next resume with the same flags compared the decayed lr with the schedule's start and
    was refused; the start is now the saved scheduler's ``base_lrs``. (2) StepLR's state holds every setting of
    ExponentialLR, so the swap was accepted; the class is now recorded and compared."""
    added = _step_lr(gamma=0.5, step_size=1)  # the fit that added StepLR to a checkpoint trained without one
    plain = torch.optim.SGD(_params(), lr=0.01, momentum=0.9)
    added.optimizer.load_state_dict(_trained_state(plain))
    assert "initial_lr" not in added.optimizer.param_groups[0]  # what the next checkpoint saves: the weakness is real
    added.optimizer.step()
    added.step()
    saved, schedulers, name = [added.optimizer.state_dict()], [added.state_dict()], scheduler_name(added)
    assert saved[0]["param_groups"][0]["lr"] == 0.005
    again = _step_lr(gamma=0.5, step_size=1)
    check_resumable(saved, optimizer_name(again.optimizer), again.optimizer, schedulers)  # the same flags resume
    check_scheduler_resumable(schedulers, again, name)
    with pytest.raises(ValueError, match=r"^the scheduled lr's start 0.01 would not apply"):  # without the fallback
        check_resumable(saved, optimizer_name(again.optimizer), again.optimizer)
    faster = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(_params(), lr=0.1, momentum=0.9), 1, 0.5)
    with pytest.raises(ValueError, match=r"^the scheduled lr's start 0.1 would not apply.*lr 0.01"):  # a changed lr still is
        check_resumable(saved, optimizer_name(faster.optimizer), faster.optimizer, schedulers)
    exponential = torch.optim.lr_scheduler.ExponentialLR(torch.optim.SGD(_params(), lr=0.01, momentum=0.9), 0.5)
    check_scheduler_resumable(schedulers, exponential)  # a file without the name: the subset of settings passes
    with pytest.raises(ValueError, match=r"^--model.scheduler: the checkpoint was trained with StepLR, this fit configures ExponentialLR"):
        check_scheduler_resumable(schedulers, exponential, name)


def test_an_older_file_with_scheduler_keys_is_not_another_optimizer():
    """From a review: a file without the optimizer's name is told apart by its hyper-parameter names, and a OneCycleLR
    run's groups also hold the scheduler's (max_lr, ...): those no longer make the same optimizer read as another. A
    name whose module moved (torch.optim.sgd.SGD saved as torch.optim.SGD) is the same class."""
    cycled = torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD(_params(), lr=0.01, momentum=0.9), 0.1, 100)
    saved = [_trained_state(cycled.optimizer)]
    assert "max_lr" in saved[0]["param_groups"][0]
    start = saved[0]["param_groups"][0]["initial_lr"]  # the schedule's start, max_lr / div_factor
    check_resumable(saved, None, torch.optim.SGD(_params(), lr=start, momentum=0.9))  # an old file, no scheduler configured
    check_resumable(saved, "torch.optim.SGD", torch.optim.SGD(_params(), lr=start, momentum=0.9))
    with pytest.raises(ValueError, match=r"^--model.optimizer: the checkpoint was trained with an optimizer with"):
        check_resumable(saved, None, torch.optim.Adam(_params()))  # another class is still told apart


def test_a_chained_scheduler_added_on_resume_resumes_again_and_one_cycle_cannot_be_added():
    """From a second review. (1) SequentialLR and ChainedScheduler keep ``base_lrs`` only in their nested schedulers'
    states, so a chain added on resume was still refused on the next resume; the start is read from the first nested
    one. (2) OneCycleLR reads its bounds back from the parameter groups, which a resume replaces with groups saved
    without them: adding it on resume crashed with KeyError: 'initial_lr' (the negative control); now one line."""
    plain = torch.optim.SGD(_params(), lr=0.01, momentum=0.9)
    saved_plain = [_trained_state(plain)]

    def chain(optimizer):
        steps = [torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5), torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.9)]
        return torch.optim.lr_scheduler.ChainedScheduler(steps, optimizer)

    added = chain(torch.optim.SGD(_params(), lr=0.01, momentum=0.9))
    added.optimizer.load_state_dict(saved_plain[0])  # the resume that added it: initial_lr is gone from the groups
    added.optimizer.step()
    added.step()
    saved, schedulers = [added.optimizer.state_dict()], [added.state_dict()]
    assert "base_lrs" not in schedulers[0] and saved[0]["param_groups"][0]["lr"] < 0.01
    again = chain(torch.optim.SGD(_params(), lr=0.01, momentum=0.9))
    check_resumable(saved, optimizer_name(again.optimizer), again.optimizer, schedulers)

    one_cycle = torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD(_params(), lr=0.01, momentum=0.9), 0.25, 10)
    one_cycle.optimizer.load_state_dict(saved_plain[0])
    with pytest.raises(KeyError, match="initial_lr"):  # what Lightning's restore led to
        one_cycle.optimizer.step()
        one_cycle.step()
    fresh = torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD(_params(), lr=0.01, momentum=0.9), 0.25, 10)
    with pytest.raises(ValueError, match=r"^--model.scheduler: this fit's scheduler keeps max_lr, min_lr.*cannot be added on resume"):
        check_resumable(saved_plain, optimizer_name(fresh.optimizer), fresh.optimizer)


def test_the_nested_schedulers_of_a_chain_are_compared():
    """Noticed in review: SequentialLR and ChainedScheduler restore their nested schedulers' states too, so a changed
    gamma inside one trained at the old one without a word (the negative control); now each nested scheduler is
    compared by its settings (and its class, by the settings the saved state has), and SequentialLR's milestones."""

    def sequential(gamma=0.5, milestone=2, second=torch.optim.lr_scheduler.ExponentialLR):
        opt = torch.optim.SGD(_params(), lr=0.1)
        inner = [torch.optim.lr_scheduler.StepLR(opt, 1, gamma), second(opt, 0.9)]
        return torch.optim.lr_scheduler.SequentialLR(opt, inner, milestones=[milestone])

    old = sequential()
    old.optimizer.step()
    old.step()
    saved = [old.state_dict()]
    silently = sequential(gamma=0.1)
    silently.load_state_dict(saved[0])
    assert silently._schedulers[0].gamma == 0.5  # the typed 0.1 is gone without a word
    check_scheduler_resumable(saved, sequential(), "torch.optim.lr_scheduler.SequentialLR")  # the same: resumes
    with pytest.raises(ValueError, match=r"^--model.scheduler's scheduler 1 \(StepLR\) gamma 0.1 would not apply.*gamma 0.5"):
        check_scheduler_resumable(saved, sequential(gamma=0.1))
    with pytest.raises(ValueError, match=r"^--model.scheduler.init_args.milestones differs"):
        check_scheduler_resumable(saved, sequential(milestone=3))

    def step(opt, gamma):
        return torch.optim.lr_scheduler.StepLR(opt, 2, gamma)

    swapped = [sequential(second=step).state_dict()]  # its second scheduler was a StepLR
    with pytest.raises(
        ValueError, match=r"^--model.scheduler's scheduler 2 \(ExponentialLR\): the checkpoint's nested scheduler has step_size"
    ):
        check_scheduler_resumable(swapped, sequential())


def test_a_cyclic_schedule_added_on_resume_is_not_taken_for_one_cycle():
    """From a review: CyclicLR writes base_momentum/max_momentum into the groups but reads its own copies, so it resumes
    after a restore that drops them; only OneCycleLR (which reads max_lr, min_lr, initial_lr back) is refused."""
    saved = [_trained_state(torch.optim.SGD(_params(), lr=0.01, momentum=0.9))]
    cyclic = torch.optim.lr_scheduler.CyclicLR(torch.optim.SGD(_params(), lr=0.01, momentum=0.9), 0.01, 0.05, step_size_up=3)
    assert "max_momentum" in cyclic.optimizer.param_groups[0] and "max_lr" not in cyclic.optimizer.param_groups[0]
    check_resumable(saved, optimizer_name(cyclic.optimizer), cyclic.optimizer)
    cyclic.optimizer.load_state_dict(saved[0])  # what the restore does: the momentum bounds are gone from the groups
    cyclic.optimizer.step()
    cyclic.step()  # and it still steps
