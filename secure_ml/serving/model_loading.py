"""Load the served SmallCNN from a ``secure-ml fit`` checkpoint without ever unpickling arbitrary objects.

``torch.load(..., weights_only=True)`` runs PyTorch's restricted unpickler: only tensors, primitive
containers and an allow-list of torch types can be rebuilt, and any other ``GLOBAL`` (``os.system``,
``builtins.eval``, a class whose ``__reduce__`` runs code...) aborts the load *before* it is called.
Lightning checkpoints written by ``secure-ml fit`` load this way as they are (the accountant state is
plain tuples). ``.safetensors`` files are read with the safetensors package when it is installed.

The ``state_dict`` gives the model: keys prefixed ``net.`` (SecureClassifier's attribute) are stripped, and
the result must fit SmallCNN exactly (``strict=True``) with finite weights. The input policy calibrated
during training by the SpongeCallback (``callbacks[...]["policy"]``) is returned too, for ``policy.py``.
"""

import pickle
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from secure_ml.errors import ConfigError, SecureMLError
from secure_ml.models import SmallCNN

NET_PREFIX = "net."


class UnsafeCheckpointError(SecureMLError):
    """The checkpoint holds pickled objects the safe loader refuses; nothing in it was executed."""


def resolve_device(name: str) -> torch.device:
    """``auto``: the first available accelerator (CUDA, then MPS), else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"serve.yaml: model.device: {name!r} is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"serve.yaml: model.device: {name!r} but CUDA is not available; use auto or cpu")
    return device


def _refusal_reason(exc: BaseException) -> str:
    """The one line of torch's message that says what was refused, without its 'use weights_only=False' advice."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line.startswith(("Trying to load unsupported", "Unsupported", "Can only build")) or "GLOBAL" in line:
            return line.rstrip(".")
    return "not a PyTorch checkpoint"


def _read_raw(path: Path) -> Mapping:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError("--ckpt_path: reading .safetensors needs the safetensors package") from None
        try:
            return {"state_dict": load_file(str(path), device="cpu")}
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise ConfigError(f"--ckpt_path: '{path}' is not a valid safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refused to load checkpoint '{path}': the safe loader (weights_only) rejected it: {_refusal_reason(exc)}. "
            "Only tensor checkpoints written by `secure-ml fit` are served; nothing in the file was executed"
        ) from None
    except (EOFError, RuntimeError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--ckpt_path: '{path}' is not a readable PyTorch checkpoint ({reason})") from None


def extract_state_dict(ckpt: object, path: Path) -> Dict[str, torch.Tensor]:
    """The net's parameters from a Lightning checkpoint (``state_dict`` with ``net.`` keys)."""
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise ConfigError(f"--ckpt_path: '{path}' has no 'state_dict' mapping: is it a checkpoint written by `secure-ml fit`?")
    raw = ckpt["state_dict"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        raise ConfigError(f"--ckpt_path: '{path}': the state_dict must map parameter names to tensors")
    if any(k.startswith(NET_PREFIX) for k in raw):
        return {k[len(NET_PREFIX) :]: v for k, v in raw.items() if k.startswith(NET_PREFIX)}
    return dict(raw)


def build_model(state: Dict[str, torch.Tensor], path: Path) -> nn.Module:
    fc2 = state.get("fc2.weight")
    if fc2 is None or fc2.ndim != 2:
        raise ConfigError(f"--ckpt_path: '{path}': the state_dict is not a SmallCNN's (no fc2.weight)")
    model = SmallCNN(num_classes=int(fc2.shape[0]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise ConfigError(f"--ckpt_path: '{path}': the state_dict does not fit SmallCNN ({detail})") from None
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise ConfigError(f"--ckpt_path: '{path}': the weights contain NaN or infinity")
    return model


def checkpoint_policy(ckpt: object) -> Optional[dict]:
    """The input policy that ``secure-ml fit``'s SpongeCallback calibrated and stored (callback state ``policy``), if any."""
    callbacks = ckpt.get("callbacks") if isinstance(ckpt, Mapping) else None
    if not isinstance(callbacks, Mapping):
        return None
    states = sorted(callbacks.items(), key=lambda kv: not str(kv[0]).startswith("SpongeCallback"))
    for _, state in states:
        if isinstance(state, Mapping) and isinstance(state.get("policy"), Mapping):
            return dict(state["policy"])
    return None


def load_model(path: str, device: str = "auto") -> nn.Module:
    """A SmallCNN in eval mode, gradients off, on ``device``; every failure is one clear SecureMLError."""
    return load_checkpoint(path, device)[0]


def load_checkpoint(path: str, device: str = "auto") -> Tuple[nn.Module, Optional[dict]]:
    """``(model, policy dict stored by the SpongeCallback or None)``; see ``load_model``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--ckpt_path: '{p}' does not exist or is not a file")
    hparams = None
    ckpt = _read_raw(p)
    if isinstance(ckpt, Mapping):
        hparams = ckpt.get("hyper_parameters")
    net = hparams.get("net", "SmallCNN") if isinstance(hparams, Mapping) else "SmallCNN"
    name = str(net.get("class_path", "")).rpartition(".")[2] if isinstance(net, Mapping) else str(net)
    if name != "SmallCNN":
        raise ConfigError(f"--ckpt_path: '{p}' holds a {name}, but the service serves SmallCNN only")
    model = build_model(extract_state_dict(ckpt, p), p)
    model.eval().requires_grad_(False)
    return model.to(resolve_device(device)), checkpoint_policy(ckpt)
