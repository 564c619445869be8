"""Optimizers and schedulers that cannot train are refused in one line before training, naming their flag. Before, each
of these crashed mid-fit with torch's traceback: LBFGS under DP (``step() missing ... 'closure'``), OneCycleLR
without a length (``ValueError`` while Lightning configured the optimizers), StepLR with ``step_size 0``
(``ZeroDivisionError`` at the first epoch's end), SparseAdam (dense gradients) and mixed precision under DP (oneDNN)."""

import pytest
import torch

import secure_ml.train_cli  # noqa: F401 (Lightning binds its log handler at import: now, not to a test's captured stderr)
from secure_ml.cli import main
from secure_ml.errors import ConfigError
from secure_ml.optim_build import build_optimizer, build_scheduler, default_optimizer
from tests.helpers.data import smoke_args


def _params():
    return [torch.nn.Parameter(torch.ones(2))]


def test_the_crashes_the_checks_replace_are_real():
    """Negative controls: torch builds these and fails only when they step."""
    with pytest.raises(TypeError, match="closure"):
        torch.optim.LBFGS(_params()).step()
    with pytest.raises(ZeroDivisionError):
        torch.optim.lr_scheduler.StepLR(default_optimizer(_params()), step_size=0).step()


def test_an_optimizer_needing_a_closure_is_refused_under_dp_only():
    lbfgs = lambda p: torch.optim.LBFGS(p)  # noqa: E731
    with pytest.raises(ConfigError, match=r"^--model.optimizer LBFGS re-evaluates the loss .*\(--model.dp.enabled false\)$"):
        build_optimizer(lbfgs, _params(), dp=True)
    assert isinstance(build_optimizer(lbfgs, _params(), dp=False), torch.optim.LBFGS)  # Lightning passes it a closure
    assert isinstance(build_optimizer(None, _params(), dp=True), torch.optim.SGD)  # the seed's default
    with pytest.raises(ConfigError, match=r"^--model.optimizer: Invalid learning rate"):
        build_optimizer(lambda p: torch.optim.SGD(p, lr=-1), _params(), dp=False)


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=0), r"StepLR cannot schedule this fit: integer modulo by zero"),
        (lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1), r"scheduler cannot schedule this fit: You must define"),
    ],
)
def test_a_scheduler_that_cannot_step_is_refused(factory, match):
    with pytest.raises(ConfigError, match=r"^--model.scheduler " + match + r".*--model.scheduler.init_args"):
        build_scheduler(factory, default_optimizer(_params()), None)


def test_a_scheduler_that_steps_is_built_on_the_real_optimizer_untouched():
    optimizer = default_optimizer(_params())
    for factory in (
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10),
    ):
        sched = factory(optimizer)  # what the fit would build, without the trial
        built = build_scheduler(factory, optimizer, None)
        assert built.optimizer is optimizer and type(built) is type(sched)
        assert built.state_dict().get("last_epoch") == sched.state_dict().get("last_epoch")  # the trial stepped a stand-in
    assert build_scheduler(None, optimizer, None) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, start",
    [
        (["--model.optimizer", "torch.optim.LBFGS"], "--model.optimizer LBFGS re-evaluates the loss"),
        (["--model.scheduler", "torch.optim.lr_scheduler.StepLR", "--model.scheduler.step_size", "0"], "--model.scheduler StepLR"),
        (["--model.scheduler", "torch.optim.lr_scheduler.OneCycleLR", "--model.scheduler.max_lr", "0.1"], "--model.scheduler "),
        (["--model.optimizer", "torch.optim.SparseAdam"], "--model.optimizer SparseAdam cannot train this net"),
        (["--trainer.precision", "bf16-mixed"], "--trainer.precision bf16-mixed runs the forward under autocast"),
    ],
)
def test_the_cli_refuses_them_in_one_line_before_training(tiny_mnist, tmp_path, monkeypatch, capsys, flags, start):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", *smoke_args(tiny_mnist, "--robustness.enabled", "false", "--sponge.enabled", "false", *flags)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("secure-ml: error:")]
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("secure-ml: error: " + start), err
    assert not list(tmp_path.glob("lightning_logs/*/checkpoints/*.ckpt"))  # nothing trained


def test_the_trial_steps_once_per_epoch_of_the_fit():
    """Review finding: OneCycleLR with fewer total_steps than epochs (the project steps schedulers per epoch) failed at
    the second epoch's end. The trial steps as many times as the fit will."""
    one_cycle = lambda total: lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=total)  # noqa: E731
    with pytest.raises(ConfigError, match=r"^--model.scheduler OneCycleLR cannot schedule this fit: Tried to step"):
        build_scheduler(one_cycle(1), default_optimizer(_params()), None, epochs=3)
    build_scheduler(one_cycle(3), default_optimizer(_params()), None, epochs=3)  # exactly long enough
    build_scheduler(one_cycle(1), default_optimizer(_params()), None, epochs=-1)  # unbounded: one step is all it can check


def test_an_lbfgs_reference_model_trains():
    """Review finding: without DP LBFGS trains (Lightning gives it a closure), but RMIA's reference models replay the
    recipe with ``opt.step()`` and crashed in ``secure-ml test``. They now step with a closure, as Lightning does."""
    from secure_ml.attacks.reference_models import ReferenceRecipe, train_reference_models
    from secure_ml.models import SmallCNN

    x, y = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 10
    recipe = ReferenceRecipe(SmallCNN, lambda p: torch.optim.LBFGS(p, lr=0.1, max_iter=2), steps=2, batch_size=16)
    (net,) = train_reference_models(recipe, x, y, 1)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    torch.manual_seed(0)  # the first reference model's seed: its initial weights
    assert not torch.equal(net.fc2.weight, SmallCNN().fc2.weight)  # it trained


def test_an_optimizer_that_cannot_step_dense_gradients_is_refused_and_the_net_is_untouched():
    params = [torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(2))]
    sparse = lambda p: torch.optim.SparseAdam(p)  # noqa: E731
    built = sparse(params)  # negative control: torch builds it and fails at the first step
    for p in params:
        p.grad = torch.zeros_like(p)
    with pytest.raises(RuntimeError, match="dense gradients"):
        built.step()
    with pytest.raises(ConfigError, match=r"^--model.optimizer SparseAdam cannot train this net: SparseAdam does not support dense"):
        build_optimizer(sparse, params, dp=False)
    fresh = [torch.nn.Parameter(torch.ones(3, 2))]
    adam = build_optimizer(lambda p: torch.optim.Adam(p, lr=1.0), fresh, dp=True)  # the trial steps copies
    assert torch.equal(fresh[0], torch.ones(3, 2)) and fresh[0].grad is None and not adam.state


@pytest.mark.parametrize("precision, refused", [("bf16-mixed", True), ("16-mixed", True), ("32-true", False), ("bf16-true", False)])
def test_mixed_precision_is_refused_under_dp(precision, refused):
    """Autocast under DP crashed in the first step inside oneDNN ("could not create a primitive descriptor")."""
    from types import SimpleNamespace

    from secure_ml.fit_checks import check_trainer_for_dp

    trainer = SimpleNamespace(gradient_clip_val=None, accumulate_grad_batches=1, precision=precision, limit_train_batches=1.0)
    if refused:
        with pytest.raises(ConfigError, match=rf"^--trainer.precision {precision} runs the forward under autocast"):
            check_trainer_for_dp(trainer)
    else:
        check_trainer_for_dp(trainer)
