"""Start-up: the served net (release artifact or training checkpoint), its device, and the input policy.

``--ckpt_path`` is a release directory from ``secure-ml export`` (weights checked against the
manifest's SHA-256) or a ``secure-ml fit`` checkpoint (loaded with the safe unpickler; served, with a
one-line warning that it carries non-private training state). Any registered net of
``secure_ml.models`` can be served.

The input policy, in this precedence: ``policy.file`` > ``policy.calibrate`` (the held-out TEST split of
``policy.calibration_data_dir``: digits that were never training members; with ``policy.from_checkpoint``
an autoencoder stored in the artifact is kept and its limit recalibrated too) > the policy stored in the
artifact or checkpoint (``policy.from_checkpoint``) > the limits written in serve.yaml.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import nn

from secure_ml.defenses.input_policy import InputPolicy
from secure_ml.errors import ConfigError
from secure_ml.models.registry import device_and_dtype
from secure_ml.release.artifact import is_release, load_release
from secure_ml.release.checkpoint import build_model, net_description, net_state, non_private_keys, read_checkpoint, stored_policy
from secure_ml.serving.settings import PolicyConfig, ServeConfig

INPUT_SHAPE = (1, 1, 28, 28)


@dataclass
class Served:
    model: nn.Module
    stored_policy: Optional[dict]
    source: str  # one phrase for the start-up line
    warnings: List[str]  # one line each, printed before the service starts
    num_classes: int = 0  # set by load_served_model from one forward pass


def resolve_device(name: str) -> torch.device:
    """``auto``: the first available accelerator (CUDA, then MPS), else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps") if mps is not None and mps.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"serve.yaml: model.device: {name!r} is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"serve.yaml: model.device: {name!r} but CUDA is not available; use auto or cpu")
    return device


def load_served_model(ckpt_path: str, device: str = "auto") -> Served:
    """The net to serve, in eval mode with gradients off, on ``device``; every failure is one ``SecureMLError`` line."""
    path = Path(ckpt_path).expanduser()
    if is_release(path):
        release = load_release(path)
        served = Served(release.model, release.policy, f"release artifact (manifest sha256 {release.manifest_sha256})", [])
    else:
        ckpt = read_checkpoint(path)
        model = build_model(net_description(ckpt), net_state(ckpt, path), f"--ckpt_path: '{path}'")
        extra = non_private_keys(ckpt)
        warnings = (
            [
                f"warning: '{path}' is a training checkpoint: it also carries non-private training state ({', '.join(extra[:6])}"
                f"{', ...' if len(extra) > 6 else ''}); serve the release artifact of `secure-ml export` instead"
            ]
            if extra
            else []
        )
        served = Served(model, stored_policy(ckpt), "training checkpoint", warnings)
    served.model.to(resolve_device(device))
    dev, dtype = device_and_dtype(served.model)
    try:
        with torch.no_grad():
            out = served.model(torch.zeros(INPUT_SHAPE, device=dev, dtype=dtype))
    except RuntimeError as exc:
        raise ConfigError(f"--ckpt_path: the net does not take one 28x28 digit ({str(exc).splitlines()[0]})") from None
    if out.ndim != 2 or out.shape[1] < 2:
        raise ConfigError(f"--ckpt_path: the net's output has shape {tuple(out.shape)}, not (1, classes)")
    served.num_classes = int(out.shape[1])
    return served


def calibration_digits(cfg: PolicyConfig) -> torch.Tensor:
    """At most ``calibration_samples`` digits of the held-out test split: never a training member."""
    from secure_ml.tools.digits import load_test_digits

    images, _ = load_test_digits(cfg.calibration_data_dir, "serve.yaml: policy.calibration_data_dir")
    return images[: cfg.calibration_samples]


def _stored_autoencoder(cfg: PolicyConfig, stored: Optional[dict]) -> dict:
    """``{"reconstruction_net": ...}`` of the artifact's policy when ``policy.from_checkpoint`` (its limits are recalibrated), else ``{}``."""
    ae = stored.get("reconstruction_net") if cfg.from_checkpoint and isinstance(stored, dict) else None
    if ae is None:
        return {}
    try:
        InputPolicy(reconstruction_net=ae)
    except ValueError as exc:
        raise ConfigError(
            f"--ckpt_path: the stored input policy's autoencoder is invalid ({exc}); set policy.from_checkpoint: false"
        ) from None
    return {"reconstruction_net": ae}


def build_policy(cfg: PolicyConfig, model: nn.Module, stored: Optional[dict] = None) -> Tuple[InputPolicy, str]:
    """``(policy, where it came from)``; see the module docstring for the precedence."""
    if cfg.file is not None:
        path = Path(cfg.file)
        try:
            return InputPolicy.from_dict(json.loads(path.read_text())), f"file {path}"
        except OSError as exc:
            raise ConfigError(f"serve.yaml: policy.file: cannot read '{path}' ({exc.strerror})") from None
        except ValueError as exc:
            raise ConfigError(f"serve.yaml: policy.file: '{path}' is not a valid policy ({exc})") from None
    if cfg.calibrate:
        clean = calibration_digits(cfg)
        extra = _stored_autoencoder(cfg, stored)
        try:
            limits = dict(min_value=cfg.min_value, max_value=cfg.max_value, max_variance=cfg.max_variance)  # as written: not calibrated
            policy = InputPolicy.calibrate(model, clean, cfg.false_positive_rate, **limits, **extra)
        except ValueError as exc:
            raise ConfigError(f"serve.yaml: policy.calibrate failed ({exc})") from None
        return policy, f"calibrated at start-up on {len(clean)} held-out test digits" + (
            " (with the artifact's autoencoder)" if extra else ""
        )
    if cfg.from_checkpoint and stored is not None:
        try:
            return InputPolicy.from_dict(stored), "calibrated during training (from the artifact)"
        except ValueError as exc:
            raise ConfigError(
                f"--ckpt_path: the stored input policy is invalid ({exc}); set policy.calibrate: true to recalibrate it at start-up "
                "(a stored autoencoder is kept), or policy.from_checkpoint: false to use serve.yaml's limits"
            ) from None
    try:
        limits = {k: getattr(cfg, k) for k in ("min_value", "max_value", "max_variance", "max_energy", "max_density")}
        return InputPolicy(**limits), "serve.yaml limits"
    except ValueError as exc:
        raise ConfigError(f"serve.yaml: policy: {exc}") from None


def prepare(cfg: ServeConfig, ckpt_path: str) -> Tuple[Served, Optional[InputPolicy], str]:
    """Everything the service needs before it listens: ``(served net, policy or None, policy source)``."""
    if cfg.model.torch_threads:
        torch.set_num_threads(cfg.model.torch_threads)
    served = load_served_model(ckpt_path, cfg.model.device)
    if not cfg.guard_on("policy"):
        return served, None, "off"
    policy, source = build_policy(cfg.policy, served.model, served.stored_policy)
    return served, policy, source
