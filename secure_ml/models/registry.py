"""Which nets a config or a release artifact may name, and how a net instance is described.

A net is described by ``{"class_path": "secure_ml.models.SmallCNN", "init_args": {...}}`` — the
same shape as ``--model.net`` in a LightningCLI config. Only classes exported by
:mod:`secure_ml.models` can be built from a description (:func:`build_net`): a release artifact
names a class, and letting it name any importable class would let a file choose code to run.

Convention (tested for every registered net): a net stores each constructor argument as an
attribute of the same name, so :func:`net_spec` can read its ``init_args`` back.
"""

import inspect
from typing import Any, Dict, Mapping

from torch import nn

from secure_ml.errors import ConfigError

PACKAGE = "secure_ml.models"


def registered_nets() -> Dict[str, type]:
    """``{class name: class}`` for every ``nn.Module`` exported by ``secure_ml.models``."""
    import secure_ml.models as models

    return {name: obj for name in models.__all__ if isinstance(obj := getattr(models, name), type) and issubclass(obj, nn.Module)}


def net_spec(net: nn.Module) -> Dict[str, Any]:
    """``{"class_path", "init_args"}`` of a registered net; ConfigError for any other class."""
    cls = type(net)
    if registered_nets().get(cls.__name__) is not cls:
        raise ConfigError(
            f"--model.net {cls.__module__}.{cls.__qualname__} is not a net of {PACKAGE}; only those can be exported and served. "
            f"Add it to {PACKAGE} (storing each constructor argument as an attribute of the same name)"
        )
    init_args = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if not hasattr(net, name):
            raise ConfigError(
                f"{cls.__name__} does not store its constructor argument '{name}' as an attribute; net_spec cannot describe it"
            )
        init_args[name] = getattr(net, name)
    return {"class_path": f"{PACKAGE}.{cls.__name__}", "init_args": init_args}


def describe_net(net: nn.Module) -> Dict[str, Any]:
    """:func:`net_spec` for a registered net; ``{"class_path": <its import path>, "init_args": None}`` for a user's own net (not exportable)."""
    try:
        return net_spec(net)
    except ConfigError:
        cls = type(net)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": None}


def build_net(spec: Mapping[str, Any]) -> nn.Module:
    """Instantiate a registered net from ``{"class_path", "init_args"}``; one-line ConfigError for anything else."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("class_path"), str):
        raise ConfigError("a net description needs a 'class_path' string (e.g. 'secure_ml.models.SmallCNN')")
    path = spec["class_path"]
    module, _, name = path.rpartition(".")
    cls = registered_nets().get(name)
    if cls is None or not (module == PACKAGE or module == cls.__module__):
        raise ConfigError(f"net '{path}' is not one of {PACKAGE}: {', '.join(sorted(registered_nets()))}")
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise ConfigError(f"net '{path}': init_args must be a mapping")
    try:
        return cls(**init_args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"net '{path}' cannot be built from init_args {dict(init_args)} ({exc})") from None


def device_and_dtype(module: nn.Module, fallback=None):
    """Device and floating dtype of ``module``'s first parameter (``fallback`` tensor's, else CPU/float32, when it has none)."""
    import torch

    p = next(module.parameters(), None)
    if p is not None:
        return p.device, p.dtype
    if fallback is not None:
        return fallback.device, fallback.dtype if fallback.is_floating_point() else torch.float32
    return torch.device("cpu"), torch.float32
