"""A sweep file's ``grid``: its axes (plain values or labelled bundles) and their product, as :class:`Point` s."""

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from secure_ml.errors import ConfigError

BUNDLE_KEYS = {"set", "test", "assume"}


@dataclass(frozen=True)
class Point:
    """One grid point: its label, the overrides of fit and test, test-only overrides, assumed metrics, and its axis values."""

    label: str
    overrides: Dict[str, Any]
    test_overrides: Dict[str, Any] = field(default_factory=dict)
    assume: Dict[str, float] = field(default_factory=dict)
    axes: Dict[str, Any] = field(default_factory=dict)


def fail(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def mapping(value: Any, path: Path, key: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(path, f"'{key}' must be a mapping of dotted option names to values; got {type(value).__name__}")
    return dict(value)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _axis(path: Path, where: str, name: str, values: Any) -> List[Tuple[Any, str, Dict, Dict, Dict]]:
    """``[(column value, label part, overrides, test overrides, assume)]`` of one axis."""
    if isinstance(values, list):
        if not values:
            raise fail(path, f"{where} '{name}' is an empty list: nothing to sweep")
        return [(v, f"{_short(name)}={_fmt(v)}", {name: v}, {}, {}) for v in values]
    if isinstance(values, dict):
        if not values:
            raise fail(path, f"{where} '{name}' has no entries: nothing to sweep")
        out = []
        for label, bundle in values.items():
            bundle = mapping(bundle, path, f"{where} '{name}.{label}'")
            if bundle and set(bundle) <= BUNDLE_KEYS:
                assume = mapping(bundle.get("assume"), path, f"{name}.{label}.assume")
                for metric, value in assume.items():
                    if not isinstance(value, (int, float)) or isinstance(value, bool):
                        raise fail(path, f"'{name}.{label}.assume.{metric}' must be a number; got {value!r}")
                test = mapping(bundle.get("test"), path, f"{name}.{label}.test")
                out.append((str(label), str(label), mapping(bundle.get("set"), path, f"{name}.{label}.set"), test, assume))
            else:
                out.append((str(label), str(label), bundle, {}, {}))
        return out
    raise fail(path, f"{where} '{name}' must be a list of values or a mapping of labelled overrides; got {type(values).__name__}")


def expand_grid(grid: Any, path: Path, where: str = "grid") -> List[Point]:
    """The points of a grid (the product of its axes) or of a list of grids (their union), in file order."""
    grids = grid if isinstance(grid, list) else [grid]
    if not grids:
        raise fail(path, f"'{where}' is an empty list: nothing to sweep")
    points: List[Point] = []
    for i, g in enumerate(grids):
        here = where if len(grids) == 1 else f"{where}[{i}]"
        if not isinstance(g, dict) or not g:
            raise fail(path, f"'{here}' must be a non-empty mapping of axes")
        axes = {name: _axis(path, here, str(name), values) for name, values in g.items()}
        for combo in itertools.product(*axes.values()):
            overrides, test, assume, columns, combo_overrides = {}, {}, {}, {}, {}
            for name, (column, _, ov, tov, asm) in zip(axes, combo):
                owner = next((prev for prev in columns if set(ov) & set(combo_overrides[prev])), None)
                if owner is not None:  # the later axis would silently win: points labelled apart, trained alike
                    twice = sorted(set(ov) & set(combo_overrides[owner]))[0]
                    raise fail(path, f"'{here}': axes '{owner}' and '{name}' both set '{twice}'; give each option one axis")
                combo_overrides[name] = ov
                overrides.update(ov)
                test.update(tov)
                assume.update(asm)
                columns[name] = column
            label = ", ".join(part for _, part, *_ in combo)
            points.append(Point(label, overrides, test, {k: float(v) for k, v in assume.items()}, columns))
    labels = [p.label for p in points]
    dup = next((lab for lab in labels if labels.count(lab) > 1), None)
    if dup is not None:
        raise fail(path, f"point '{dup}' appears twice in '{where}'; give named-axis entries distinct labels")
    return points
