"""Whether a checkpoint's optimizer state can carry over to the optimizer a resumed fit configures (torch only).

Lightning restores the optimizer's state, hyper-parameters included, after building the configured optimizer. Two
things then went wrong without a word: another optimizer class crashed deep in torch (``KeyError: 'step'`` when SGD's
state met Adam), and a learning rate typed for the resumed fit (``--model.optimizer.init_args.lr``) was replaced by
the checkpoint's, so the run trained at the old rate while its config.yaml said the new one. Both are now refused
before training, in one line. The class is recorded in the checkpoint (:data:`OPTIMIZER_KEY`); for files written
before it was, the set of hyper-parameter names tells the classes apart. The LR scheduler's state, which Lightning
restores the same way, gets the same two checks (:data:`SCHEDULER_KEY`, :func:`check_scheduler_resumable`).
"""

import inspect
from typing import Any, Dict, List, Optional

import torch

from secure_ml.errors import ConfigError

OPTIMIZER_KEY = "secure_ml_optimizer"
SCHEDULER_KEY = "secure_ml_scheduler"
# Flags that choose a kernel, not the arithmetic, and the scheduler's book-keeping: not hyper-parameters to compare.
_NOT_COMPARED = {"params", "foreach", "differentiable", "fused", "capturable", "initial_lr"}
# A cycling scheduler (OneCycleLR, CyclicLR with cycle_momentum) moves these every step between its base_momentum and
# max_momentum, which are compared instead.
_CYCLED = {"momentum", "betas"}
# Values a scheduler writes into the parameter groups (OneCycleLR, CyclicLR): compared first, and named as its flags.
_SCHEDULER_KEYS = ("max_lr", "min_lr", "base_momentum", "max_momentum")


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """``module.Class`` of the optimizer that does the arithmetic (Opacus's DPOptimizer wraps it)."""
    inner = getattr(optimizer, "original_optimizer", optimizer)
    return f"{type(inner).__module__}.{type(inner).__qualname__}"


def scheduler_name(scheduler) -> str:
    """``module.Class`` of an LR scheduler, as recorded under :data:`SCHEDULER_KEY`."""
    return f"{type(scheduler).__module__}.{type(scheduler).__qualname__}"


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _saved_start(group: Dict[str, Any], saved_schedulers: Optional[List[Dict[str, Any]]]) -> Any:
    """The lr the checkpoint's schedule started from: its ``initial_lr``; else its scheduler's ``base_lrs`` (a fit that
    added a scheduler on resume restored groups saved without ``initial_lr``, and torch's restore drops the key), at the
    top of its state or, for SequentialLR and ChainedScheduler, in the first nested one's; else the lr itself."""
    if "initial_lr" in group:
        return group["initial_lr"]
    for state in saved_schedulers or []:
        for candidate in [state, *(state.get("_schedulers") or [])]:
            if isinstance(candidate, dict) and candidate.get("base_lrs"):
                return candidate["base_lrs"][0]
    return group["lr"]


def check_resumable(
    saved_states: Optional[List[Dict[str, Any]]],
    saved_name: Optional[str],
    optimizer: torch.optim.Optimizer,
    saved_schedulers: Optional[List[Dict[str, Any]]] = None,
) -> None:
    """Raise ValueError (one sentence) when ``saved_states`` (a checkpoint's ``optimizer_states``) cannot be restored into
    ``optimizer`` or would silently replace a hyper-parameter it was configured with.

    Call it once the LR scheduler (if any) is built on ``optimizer``: a scheduler sets values of its own at construction
    (``initial_lr``; OneCycleLR also the lr it starts from, ``max_lr`` and the momentum bounds), and those are what the
    checkpoint's are compared with. The lr is compared as the schedule's start (``initial_lr``) on both sides; a value a
    scheduler cycles (momentum, betas) is left to the scheduler, whose bounds are compared. ``saved_schedulers`` is the
    checkpoint's ``lr_schedulers`` (where the schedule's start is found when the groups lost it).

    The class is compared by name without its module (torch moves optimizers between modules across releases); for a file
    without the name, by its hyper-parameter names, leaving out those a scheduler adds (a OneCycleLR run's ``max_lr``)."""
    if not saved_states:
        return
    name = optimizer_name(optimizer)
    saved_groups = saved_states[0].get("param_groups") or [{}]
    ours = optimizer.param_groups[0]
    keys = {k for k in ours if k not in _NOT_COMPARED}
    theirs = {k for k in saved_groups[0] if k not in _NOT_COMPARED}
    own = set(_SCHEDULER_KEYS)  # a scheduler's, not the optimizer's: another scheduler is check_scheduler_resumable's to name
    if (saved_name is not None and _short(saved_name) != _short(name)) or (saved_name is None and keys - own != theirs - own):
        was = _short(saved_name) if saved_name else f"an optimizer with {', '.join(sorted(theirs))}"
        raise ValueError(
            f"--model.optimizer: the checkpoint was trained with {was}, this fit configures {_short(name)}; its state cannot be "
            "resumed into another optimizer. Resume with the checkpoint's optimizer (its run's config.yaml), or start a new fit"
        )
    # OneCycleLR reads its bounds back from the groups every step: after the restore it failed with KeyError
    # 'initial_lr'. (CyclicLR also writes base_momentum/max_momentum there, but reads its own copies: it resumes.)
    added = [k for k in _SCHEDULER_KEYS if k in ours and k not in saved_groups[0]] if "max_lr" not in saved_groups[0] else []
    if "max_lr" in added:
        raise ValueError(
            f"--model.scheduler: this fit's scheduler keeps {', '.join(added)} in the optimizer's parameter groups, which "
            "resuming replaces with the checkpoint's, saved without them, so it cannot be added on resume. Start a new fit "
            "with it, or resume with the run's scheduler (its config.yaml)"
        )
    cycled = _CYCLED if "max_momentum" in ours or "max_momentum" in saved_groups[0] else set()
    compared = (keys & theirs) - cycled
    for key in [k for k in _SCHEDULER_KEYS if k in compared] + sorted(compared - set(_SCHEDULER_KEYS)):
        saved, configured = saved_groups[0][key], ours[key]
        if key == "lr":
            saved, configured = _saved_start(saved_groups[0], saved_schedulers), ours.get("initial_lr", configured)
        if _differs(saved, configured):
            scheduled = key in _SCHEDULER_KEYS or (key == "lr" and "initial_lr" in ours)
            flag = f"--model.scheduler.init_args.{key}" if key in _SCHEDULER_KEYS else f"--model.optimizer.init_args.{key}"
            what = f"{flag} {configured!r}" if not scheduled or key != "lr" else f"the scheduled lr's start {configured!r}"
            raise ValueError(
                f"{what} would not apply: resuming restores the checkpoint's optimizer state, {key} {saved!r} included. "
                f"Resume with the run's {'optimizer and scheduler' if scheduled else key} (its config.yaml), or start a new fit"
            )


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() != b.keys() or any(_differs(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return not torch.equal(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    return a != b


# OneCycleLR's settings as it stores them: the flags they come from (compared after the public settings they derive from).
_PRIVATE_SETTINGS = {"_schedule_phases": "pct_start or three_phase", "_anneal_func_type": "anneal_strategy", "_milestones": "milestones"}
_DERIVED_SETTINGS = {"total_size", "step_ratio"}  # CyclicLR's step_size_up/down as it stores them


def _settings(state: Dict[str, Any], scheduler) -> set:
    """The keys of ``state`` that are settings of ``scheduler``'s class: its constructor's arguments (``max_lrs`` for
    ``max_lr``, ...) and what they are stored as. An allow-list, not "every public key": a scheduler's position in its
    schedule is public too (CosineAnnealingWarmRestarts' ``T_cur``, ReduceLROnPlateau's ``best``) and must carry over."""
    params = set(inspect.signature(type(scheduler).__init__).parameters) - {"self", "optimizer", "last_epoch", "verbose"}
    return {k for k in state if k in params or (k.endswith("s") and k[:-1] in params) or k in _PRIVATE_SETTINGS or k in _DERIVED_SETTINGS}


def check_scheduler_resumable(saved_states: Optional[List[Dict[str, Any]]], scheduler, saved_name: Optional[str] = None) -> None:
    """Raise ValueError (one sentence) when a checkpoint's ``lr_schedulers`` state, which Lightning restores over the
    scheduler a resumed fit builds, belongs to another scheduler or would silently replace a setting it was configured
    with (a new ``gamma`` or ``step_size`` trained at the old one), or when the fit drops the checkpoint's scheduler.
    Nothing to check when the checkpoint has no scheduler state. ``saved_name`` is the class the checkpoint recorded
    (:data:`SCHEDULER_KEY`): without it, another class is told apart only when it has settings the saved state lacks
    (StepLR's state also holds every setting of ExponentialLR). The nested schedulers of SequentialLR and
    ChainedScheduler are compared one by one, by class and settings."""
    if not saved_states:
        return
    if scheduler is None:  # the restored lr is the schedule's last one, and nothing moves it on
        raise ValueError(
            "--model.scheduler: the checkpoint was trained with an LR scheduler and this fit configures none, so it would train "
            "on at the schedule's last lr. Resume with the run's scheduler (its config.yaml), or start a new fit"
        )
    saved, name = saved_states[0], type(scheduler).__name__
    if saved_name is not None and _short(saved_name) != name:
        raise ValueError(
            f"--model.scheduler: the checkpoint was trained with {_short(saved_name)}, this fit configures {name}; its state "
            "cannot be resumed into another scheduler. Resume with the run's scheduler (its config.yaml), or start a new fit"
        )
    _check_settings(saved, scheduler, "--model.scheduler.init_args.")
    nested = getattr(scheduler, "_schedulers", None)  # SequentialLR, ChainedScheduler: Lightning restores these too
    if nested is None or not isinstance(saved.get("_schedulers"), list):
        return
    if len(saved["_schedulers"]) != len(nested):
        raise ValueError(
            f"--model.scheduler: the checkpoint's {name} chains {len(saved['_schedulers'])} schedulers, this fit's {len(nested)}; "
            "its state cannot be resumed into these. Resume with the run's scheduler (its config.yaml), or start a new fit"
        )
    for i, (state, inner) in enumerate(zip(saved["_schedulers"], nested)):
        _check_settings(state, inner, f"--model.scheduler's scheduler {i + 1} ({type(inner).__name__}) ", nested=True)


def _check_settings(saved: Dict[str, Any], scheduler, flag: str, nested: bool = False) -> None:
    """ValueError when ``saved`` lacks a setting of ``scheduler`` (another class) or holds another value of one; ``flag``
    names the scheduler in the message (its settings' flag prefix, or which nested scheduler it is). A ``nested`` one
    has no recorded class: a public key ``saved`` has and this scheduler lacks (StepLR's step_size) is another class."""
    ours, name = scheduler.state_dict(), type(scheduler).__name__
    missing = _settings(ours, scheduler) - _settings(saved, scheduler)
    extra = sorted(k for k in saved if not k.startswith("_") and k not in ours) if nested else []
    if extra:
        raise ValueError(
            f"{flag.rstrip()}: the checkpoint's nested scheduler has {', '.join(extra)}, which {name} has not: it was another scheduler, "
            "whose state cannot be resumed into this one. Resume with the run's scheduler (its config.yaml), or start a new fit"
        )
    if missing:
        raise ValueError(
            f"--model.scheduler: the checkpoint's scheduler state has no {', '.join(sorted(_PRIVATE_SETTINGS.get(k, k) for k in missing))} "
            f"of this fit's {name}: it was another scheduler, whose state cannot be resumed into this one. "
            "Resume with the run's scheduler (its config.yaml), or start a new fit"
        )
    for key in sorted(_settings(ours, scheduler), key=lambda k: (k in _PRIVATE_SETTINGS, k)):
        if not _differs(saved[key], ours[key]):
            continue
        if key in _PRIVATE_SETTINGS:
            what = f"{flag}{_PRIVATE_SETTINGS[key]} differs from the checkpoint's {name} and would not apply"
        else:
            what = (
                f"{flag}{key} {ours[key]!r} would not apply: resuming restores the checkpoint's "
                f"scheduler state, {key} {saved[key]!r} included"
            )
        raise ValueError(f"{what}. Resume with the run's scheduler (its config.yaml), or start a new fit")


def check_resumed(resumed: Optional[tuple], optimizer: torch.optim.Optimizer, scheduler) -> None:
    """Both checks on a resumed checkpoint's ``(optimizer_states, optimizer class, lr_schedulers, scheduler class)``
    (None: not resuming), once the scheduler is built on ``optimizer`` (it sets ``initial_lr``); ConfigError in one line."""
    if resumed is None:
        return
    states, name, scheduler_states, saved_scheduler = resumed
    try:
        check_resumable(states, name, optimizer, scheduler_states)
        check_scheduler_resumable(scheduler_states, scheduler, saved_scheduler)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
