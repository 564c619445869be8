"""The optimizer and LR scheduler a fit's flags build, each refused in one line naming its flag when it cannot train.

Torch checks some values when an optimizer or scheduler is built (a negative lr, OneCycleLR without a length) and
others only when it steps (StepLR with ``step_size 0`` divides by zero at its first step, at the first epoch's end;
OneCycleLR with fewer ``total_steps`` than epochs failed at the second). So the scheduler is also built on a stand-in
optimizer (the same class, on copies of the parameters) and stepped once per epoch of the fit, before training. An
optimizer whose step re-evaluates the loss (LBFGS: ``step(closure)``) cannot take DP-SGD's clipped, noised step; one
that cannot step dense gradients (SparseAdam) is found by one step on copies of the parameters.
Torch only; :class:`secure_ml.module.SecureClassifier` calls these.
"""

import inspect
import warnings
from typing import Any, Callable, Iterable, List, Optional

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from secure_ml.errors import ConfigError

MAX_TRIAL_STEPS = 100_000  # epochs the trial steps at most (a step costs microseconds)
OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def default_optimizer(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The seed's optimizer, used when ``--model.optimizer`` is not given: SGD(lr=0.01, momentum=0.9)."""
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


def build_optimizer(factory: Optional[OptimizerFactory], params: List[torch.nn.Parameter], dp: bool) -> torch.optim.Optimizer:
    """``factory(params)`` (None: :func:`default_optimizer`); ConfigError for values torch refuses, for an optimizer that
    cannot step these parameters with dense gradients (SparseAdam; tried on copies, left untouched) and, under DP, for
    one whose step needs a closure."""
    params = list(params)
    try:
        optimizer = (factory or default_optimizer)(params)
    except ValueError as exc:  # torch's own range checks (a negative lr, momentum, ...)
        raise ConfigError(f"--model.optimizer: {exc}") from None
    name = type(optimizer).__name__
    closure = inspect.signature(type(optimizer).step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        if dp:
            raise ConfigError(
                f"--model.optimizer {name} re-evaluates the loss inside its step (a closure), which a DP-SGD "
                "step (clipped per-sample gradients, then noise) cannot give it; choose SGD, Adam or another first-order "
                "optimizer, or train without DP (--model.dp.enabled false)"
            )
        return optimizer  # Lightning's automatic optimisation gives it one
    copies = [torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad) for p in params]
    for copy in copies:
        copy.grad = torch.zeros_like(copy) if copy.requires_grad else None
    try:
        (factory or default_optimizer)(copies).step()
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--model.optimizer {name} cannot train this net: {first}") from None
    return optimizer


def build_scheduler(
    factory: Optional[Callable[[Any], Any]],
    optimizer: torch.optim.Optimizer,
    optimizer_factory: Optional[OptimizerFactory],
    epochs: Optional[int] = None,
):
    """``factory(optimizer)`` (None: no scheduler), after a trial on a stand-in optimizer (the same class, on copies of
    ``optimizer``'s parameters; the real ones and their state are left untouched): built and stepped once per epoch of
    the fit (``epochs``; None or < 1: once), as the fit will step it; what torch raises there is a ConfigError naming
    ``--model.scheduler``. A ReduceLROnPlateau gets the ``initial_lr`` other schedulers write into the parameter groups:
    the lr its cuts started from, which the resume check compares (it records none itself)."""
    if factory is None:
        return None
    copies = [torch.nn.Parameter(p.detach().clone()) for group in optimizer.param_groups for p in group["params"]]
    name = "scheduler"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": nothing trains here
            trial = factory((optimizer_factory or default_optimizer)(copies))  # the same class on copies of the parameters
            name = type(trial).__name__
            for _ in range(min(epochs, MAX_TRIAL_STEPS) if epochs and epochs > 0 else 1):
                trial.step(1.0) if isinstance(trial, ReduceLROnPlateau) else trial.step()
    except (ValueError, TypeError, ZeroDivisionError, KeyError, IndexError) as exc:
        raise ConfigError(
            f"--model.scheduler {name} cannot schedule this fit: {exc} (its settings: --model.scheduler.init_args.*)"
        ) from None
    scheduler = factory(optimizer)
    if isinstance(scheduler, ReduceLROnPlateau):
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
    return scheduler
