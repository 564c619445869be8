"""A sweep file, read and checked for shape (no Lightning here; option names are checked by :mod:`.validate`).

A sweep file is YAML in the CLI's own dotted option names::

    description: Exercise 3: privacy budget
    base: [../capstone.yaml]          # configs stacked like --config; paths relative to this file
    set: {trainer.max_epochs: 3}      # every point (fit and test)
    grid:                             # a mapping, or a list of mappings whose points are joined
      model.dp.noise_multiplier: [0.5, 1, 2]        # a plain axis: option -> values
      defence:                                      # a named axis: label -> overrides
        all-on: {}
        no-dp: {model.dp.enabled: false}
        no-input-validation: {test: {sponge.enabled: false}, assume: {sponge/reject_rate: 0.0}}
    test: {set: {...}, grid: {robustness.pgd_epsilon: [0.1, 0.3]}}   # the test runs after each fit
    repeats: 2
    report: [{kind: metrics, title: ..., metrics: [...]}]

or, instead of ``grid``, a multi-objective ``search`` (``trials``, ``sampler``, ``objectives``,
``space``). ``extends: other.yaml`` starts from another sweep file: ``set`` and ``test.set`` are
merged, every other key given replaces the parent's. A named-axis entry is either plain overrides
or ``{set, test, assume}``: ``test`` overrides only the test run, ``assume`` states metrics that
hold by construction (e.g. nothing is rejected when input validation is off); the results mark them.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from secure_ml.errors import ConfigError
from secure_ml.sweep.grid import Point, expand_grid
from secure_ml.sweep.grid import fail as _fail
from secure_ml.sweep.grid import mapping as _mapping
from secure_ml.sweep.search import Search, parse_search

KINDS = ("train", "policy")
TOP_KEYS = {"description", "kind", "extends", "base", "set", "grid", "search", "test", "policy", "repeats", "report"}


@dataclass
class Sweep:
    """A parsed sweep file."""

    name: str
    path: Path
    kind: str
    bases: List[Path]
    set: Dict[str, Any]
    points: List[Point]
    search: Optional[Search]
    test_set: Dict[str, Any]
    test_grid: List[Dict[str, Any]]
    repeats: int
    report: List[Dict[str, Any]]
    policy: Dict[str, Any]
    description: str = ""

    @property
    def is_search(self) -> bool:
        return self.search is not None


def _read(path: Path, seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """The file's mapping with ``extends`` resolved (``set`` and ``test.set`` merged, other keys replaced)."""
    if not path.is_file():
        raise ConfigError(f"sweep file '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise _fail(path, f"is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise _fail(path, "must be a mapping of sweep keys (base, set, grid or search, ...)")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise _fail(path, f"unknown key '{unknown[0]}' (known: {', '.join(sorted(TOP_KEYS))})")
    for key in ("base",):
        if key in raw:
            bases = _as_list(raw[key], path, key)
            if not all(isinstance(b, str) for b in bases):
                raise _fail(path, f"'{key}' must list config file paths; got {bases!r}")
            raw[key] = [str((path.parent / b).resolve()) for b in bases]
    if "extends" not in raw:
        return raw
    parent_path = (path.parent / str(raw.pop("extends"))).resolve()
    if parent_path in seen:
        raise _fail(path, f"'extends' loops back to {parent_path}")
    parent = _read(parent_path, seen + (path.resolve(),))
    merged = {**parent, **raw}
    merged["set"] = {**_mapping(parent.get("set"), parent_path, "set"), **_mapping(raw.get("set"), path, "set")}
    if "test" in raw and "test" in parent:
        p_test, r_test = _mapping(parent["test"], parent_path, "test"), _mapping(raw["test"], path, "test")
        merged["test"] = {
            **p_test,
            **r_test,
            "set": {**_mapping(p_test.get("set"), parent_path, "test.set"), **_mapping(r_test.get("set"), path, "test.set")},
        }
    return merged


def _as_list(value: Any, path: Path, key: str) -> List[Any]:
    if isinstance(value, (str, Path)):
        return [value]
    if not isinstance(value, list) or not value:
        raise _fail(path, f"'{key}' must be a non-empty list")
    return value


def load_sweep(path: str, repeats: Optional[int] = None) -> Sweep:
    """Read and shape-check a sweep file; ConfigError naming the file and the key on any problem."""
    p = Path(path)
    raw = _read(p)
    kind = raw.get("kind", "train")
    if kind not in KINDS:
        raise _fail(p, f"'kind' must be one of {', '.join(KINDS)}; got {kind!r}")
    bases = [Path(b) for b in raw.get("base") or []]
    if not bases:
        raise _fail(p, "'base' must list at least one config (e.g. [../capstone.yaml])")
    for b in bases:
        if not b.is_file():
            raise _fail(p, f"base config '{b}' does not exist")
    if ("grid" in raw) == ("search" in raw):
        raise _fail(p, "give exactly one of 'grid' (the exercises) or 'search' (a multi-objective search)")
    test = _mapping(raw.get("test"), p, "test")
    if set(test) - {"set", "grid"}:
        raise _fail(p, f"test has unknown key '{sorted(set(test) - {'set', 'grid'})[0]}' (known: set, grid)")
    test_grid = [pt.overrides for pt in expand_grid(test["grid"], p, "test.grid")] if test.get("grid") is not None else [{}]
    n = raw.get("repeats", 1) if repeats is None else repeats
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise _fail(p, f"'repeats' must be an integer >= 1; got {n!r}")
    search = parse_search(raw["search"], p) if "search" in raw else None
    if search is not None and n != 1:
        raise ConfigError(f"{p}: --repeats applies to grid sweeps; a search runs each trial once (raise search.trials instead)")
    report = raw.get("report") or []
    if not isinstance(report, list) or any(not isinstance(r, dict) or "kind" not in r for r in report):
        raise _fail(p, "'report' must be a list of mappings, each with a 'kind'")
    return Sweep(
        name=p.stem,
        path=p.resolve(),
        kind=kind,
        bases=bases,
        set=_mapping(raw.get("set"), p, "set"),
        points=expand_grid(raw["grid"], p) if "grid" in raw else [],
        search=search,
        test_set=_mapping(test.get("set"), p, "test.set"),
        test_grid=test_grid,
        repeats=n,
        report=report,
        policy=_mapping(raw.get("policy"), p, "policy"),
        description=str(raw.get("description", "")),
    )


def nest(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"model.dp.enabled": False}`` → ``{"model": {"dp": {"enabled": False}}}`` (a config delta)."""
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"option '{key}' conflicts with a value set for one of its parents")
        node[leaf] = value
    return out
