"""``serve.yaml`` to a validated :class:`~secure_ml.serving.settings.ServeConfig`: reading, dotted overrides, and the
first validation error as one line naming its option (``serve.yaml: rate_limit.per_second: …``). No Lightning."""

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from pydantic import TypeAdapter, ValidationError

from secure_ml.errors import ConfigError
from secure_ml.serving.settings import ServeConfig


def _known(loc: Sequence[Any]) -> str:
    cls: Any = ServeConfig
    for part in loc[:-1]:
        types = {f.name: f.type for f in fields(cls)}
        cls = types.get(part)
        if not is_dataclass(cls):
            return ""
    return f" (known: {', '.join(f.name for f in fields(cls))})"


def _one_line(exc: ValidationError) -> str:
    """The first error as ``serve.yaml: <dotted option>: <what is wrong>``."""
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):  # raised by a __post_init__: already names its option
        return str(cause)
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "unexpected_keyword_argument":
        return f"serve.yaml: unknown option {where}{_known(err['loc'])}"
    if err["type"] == "dataclass_type":
        return f"serve.yaml: {where or 'top level'}: expected a mapping of options, got {type(err['input']).__name__}"
    msg = err["msg"][:1].lower() + err["msg"][1:]
    return f"serve.yaml: {where}: {msg}, got {err['input']!r}"


def config_from_dict(data: Optional[Mapping[str, Any]], require_keys: bool = True) -> ServeConfig:
    """``ServeConfig`` from parsed YAML (a missing or empty section keeps its defaults); with ``require_keys``, client keys
    required when auth is on (``secure-ml preflight`` reads without it and reports missing keys as an item)."""
    sections = {f.name for f in fields(ServeConfig) if is_dataclass(f.type)}
    data = {k: v for k, v in (data or {}).items() if not (k in sections and v is None)}
    try:
        cfg = TypeAdapter(ServeConfig).validate_python(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    return cfg.require_keys() if require_keys else cfg


def read_yaml_mapping(path, flag: str) -> Dict[str, Any]:
    """The mapping in YAML file ``path`` (``safe_load``: no Python tags); one-line ConfigError naming ``flag`` otherwise."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{flag}: '{p}' does not exist or is not a file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{flag}: '{p}' is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{flag}: '{p}' must hold a mapping of options")
    return data


def load_serve_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> ServeConfig:
    """Read ``path`` (YAML, ``safe_load``: no Python tags) if given, apply dotted ``overrides`` (``{"server.port": 9000}``), validate."""
    data: Dict[str, Any] = read_yaml_mapping(path, "--config") if path is not None else {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if node.get(part) is None:  # absent, or an empty section (`server:`), which keeps its defaults
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                break  # a section that is not a mapping: validation names it
        else:
            node[leaf] = value
    return config_from_dict(data)
