"""The ``search:`` section of a sweep file: a trial budget, an Optuna sampler, objectives and a search space.

A dimension is a list (categorical choices) or ``{low, high[, log, step]}``: integers when low, high
(and step) are integers, floats otherwise; option names are the CLI's dotted names.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from secure_ml.errors import ConfigError

SAMPLERS = ("tpe", "nsga2", "random")


def _fail(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _mapping(value: Any, path: Path, key: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, f"'{key}' must be a mapping; got {type(value).__name__}")
    return dict(value)


@dataclass(frozen=True)
class Param:
    """One dimension of a search space: ``categorical`` (choices) or ``int``/``float`` in [low, high] (log scale, step)."""

    name: str
    kind: str
    choices: Tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: Optional[float] = None


@dataclass
class Search:
    """A multi-objective search: a budget of trials, an Optuna sampler, the objectives and the space."""

    trials: int
    sampler: str
    objectives: Dict[str, str]
    space: Dict[str, Param]
    seed: Optional[int] = None


def _param(path: Path, name: str, spec: Any) -> Param:
    where = f"search.space '{name}'"
    if isinstance(spec, list):
        if not spec:
            raise _fail(path, f"{where} is an empty list of choices")
        return Param(name, "categorical", choices=tuple(spec))
    if not isinstance(spec, dict) or "low" not in spec or "high" not in spec:
        raise _fail(path, f"{where} must be a list of choices or {{low, high[, log, step]}}")
    extra = set(spec) - {"low", "high", "log", "step"}
    if extra:
        raise _fail(path, f"{where} has unknown key '{sorted(extra)[0]}' (known: low, high, log, step)")
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    numbers = [v for v in (low, high, step) if v is not None]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in numbers):
        raise _fail(path, f"{where}: low, high and step must be finite numbers")
    if not low < high:
        raise _fail(path, f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise _fail(path, f"{where}: a log scale needs low > 0; got {low}")
    kind = "int" if all(isinstance(v, int) for v in numbers) else "float"
    if step is not None and step <= 0:
        raise _fail(path, f"{where}: step must be > 0; got {step}")
    if log and step is not None and not (kind == "int" and step == 1):  # Optuna refuses it only when the first trial asks
        raise _fail(path, f"{where}: a log scale takes no step (an integer one may say step: 1); drop 'step' or 'log'")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def parse_search(raw: Dict[str, Any], path: Path) -> Search:
    s = _mapping(raw, path, "search")
    unknown = set(s) - {"trials", "sampler", "objectives", "space", "seed"}
    if unknown:
        raise _fail(path, f"search has unknown key '{sorted(unknown)[0]}' (known: trials, sampler, objectives, space, seed)")
    trials = s.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise _fail(path, f"search.trials must be an integer >= 1; got {trials!r}")
    sampler = s.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise _fail(path, f"search.sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    objectives = _mapping(s.get("objectives"), path, "search.objectives")
    if not objectives:
        raise _fail(path, "search.objectives must name at least one metric: maximize|minimize")
    for metric, direction in objectives.items():
        if direction not in ("maximize", "minimize"):
            raise _fail(path, f"search.objectives '{metric}' must be 'maximize' or 'minimize'; got {direction!r}")
    space = _mapping(s.get("space"), path, "search.space")
    if not space:
        raise _fail(path, "search.space is empty: nothing to search")
    seed = s.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise _fail(path, f"search.seed must be an integer; got {seed!r}")
    return Search(trials, sampler, objectives, {k: _param(path, k, v) for k, v in space.items()}, seed)
