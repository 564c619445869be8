"""Read a ``secure-ml fit`` checkpoint without ever unpickling code, and take out what a release may keep.

``torch.load(..., weights_only=True)`` runs PyTorch's restricted unpickler: only tensors, primitive
containers and an allow-list of torch types can be rebuilt, and any other ``GLOBAL`` (``os.system``,
``builtins.eval``, a class whose ``__reduce__`` runs code...) aborts the load *before* it is called.
Lightning checkpoints written by ``secure-ml fit`` load this way as they are.

The net is rebuilt from ``hyper_parameters["net"]`` (``{"class_path", "init_args"}``) by
:func:`secure_ml.models.registry.build_net`, so only registered nets of ``secure_ml.models`` can be built,
and its weights must fit exactly (``strict``) and be finite.
"""

import pickle
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from secure_ml.errors import UNREADABLE_CHECKPOINT, ConfigError, SecureMLError, first_line
from secure_ml.models.registry import build_net

NET_PREFIX = "net."
DEFAULT_NET = {"class_path": "secure_ml.models.SmallCNN", "init_args": {}}  # checkpoints written before the net registry
RELEASABLE = ("state_dict", "hyper_parameters")  # what serving needs; anything else in a checkpoint is training state


class UnsafeCheckpointError(SecureMLError):
    """The checkpoint holds pickled objects the safe loader refuses; nothing in it was executed."""


def _refusal_reason(exc: BaseException) -> str:
    """The one line of torch's message that says what was refused, without its 'use weights_only=False' advice."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line.startswith(("Trying to load unsupported", "Unsupported", "Can only build")) or "GLOBAL" in line:
            return line.rstrip(".")
    return "not a PyTorch checkpoint"


def read_checkpoint(path: Path) -> Mapping[str, Any]:
    """The checkpoint as plain containers and tensors; one clear ``SecureMLError`` for anything else."""
    if not path.is_file():
        raise ConfigError(f"--ckpt_path: '{path}' does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refused to load checkpoint '{path}': the safe loader (weights_only) rejected it: {_refusal_reason(exc)}. "
            "Only tensor checkpoints written by `secure-ml fit` are served; nothing in the file was executed"
        ) from None
    except UNREADABLE_CHECKPOINT as exc:
        reason = first_line(exc)
        raise ConfigError(f"--ckpt_path: '{path}' is not a readable PyTorch checkpoint ({reason})") from None
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise ConfigError(f"--ckpt_path: '{path}' has no 'state_dict' mapping: is it a checkpoint written by `secure-ml fit`?")
    return ckpt


def net_state(ckpt: Mapping[str, Any], path: Path) -> Dict[str, torch.Tensor]:
    """The net's parameters (``state_dict`` keys with SecureClassifier's ``net.`` prefix stripped)."""
    raw = ckpt["state_dict"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        raise ConfigError(f"--ckpt_path: '{path}': the state_dict must map parameter names to tensors")
    if any(k.startswith(NET_PREFIX) for k in raw):
        return {k[len(NET_PREFIX) :]: v for k, v in raw.items() if k.startswith(NET_PREFIX)}
    return dict(raw)


def net_description(ckpt: Mapping[str, Any]) -> Mapping[str, Any]:
    """``hyper_parameters["net"]`` (``{"class_path", "init_args"}``); a bare class name or nothing means a default net of that class."""
    hparams = ckpt.get("hyper_parameters")
    net = hparams.get("net") if isinstance(hparams, Mapping) else None
    if net is None:
        return DEFAULT_NET
    if isinstance(net, str):
        return {"class_path": net if "." in net else f"secure_ml.models.{net}", "init_args": {}}
    return net


def build_model(spec: Mapping[str, Any], state: Dict[str, torch.Tensor], where: str) -> nn.Module:
    """A registered net from ``spec`` holding exactly ``state`` (finite), in eval mode with gradients off."""
    try:
        model = build_net(spec)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    name = type(model).__name__
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[1:3]) or lines[0]
        raise ConfigError(f"{where}: the state_dict does not fit {name} ({detail})") from None
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise ConfigError(f"{where}: the weights contain NaN or infinity")
    return model.eval().requires_grad_(False)


def stored_policy(ckpt: Mapping[str, Any]) -> Optional[dict]:
    """The input policy that ``secure-ml fit``'s SpongeCallback calibrated and stored (callback state ``policy``), if any."""
    callbacks = ckpt.get("callbacks")
    if not isinstance(callbacks, Mapping):
        return None
    states = sorted(callbacks.items(), key=lambda kv: not str(kv[0]).startswith("SpongeCallback"))
    for _, state in states:
        if isinstance(state, Mapping) and isinstance(state.get("policy"), Mapping):
            return dict(state["policy"])
    return None


def non_private_keys(ckpt: Mapping[str, Any]) -> List[str]:
    """Top-level entries beyond the weights and hyper-parameters: training state (history, optimizer, loops, data fingerprint)."""
    return sorted(str(k) for k in ckpt if k not in RELEASABLE)
