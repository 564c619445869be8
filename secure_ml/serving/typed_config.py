"""Build nested dataclasses from plain mappings (parsed YAML) with strict type checks.

Unknown keys and wrong types raise ``ConfigError`` naming the dotted option (``serve.yaml: rate_limit.burst:
expected int, got 'ten'``). Supported field types: bool, int, float (ints accepted), str, ``Optional[X]``,
``List[X]``, ``Literal[...]`` and nested dataclasses. Booleans are never accepted as numbers.
"""

import dataclasses
import typing
from typing import Any, List, Literal, Mapping

from secure_ml.errors import ConfigError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), name)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"serve.yaml: {name}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"serve.yaml: {name}: expected a list, got {type(value).__name__}")
        return [_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, name)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if not ok:
        raise ConfigError(f"serve.yaml: {name}: expected {_type_name(tp)}, got {value!r}")
    return float(value) if tp is float else value


def build_dataclass(cls: Any, data: Any, prefix: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"serve.yaml: {prefix or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"serve.yaml: unknown option {where}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)
