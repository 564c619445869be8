"""Build the service's ``InputPolicy``: a saved JSON file, a start-up calibration, the checkpoint's, or the fields.

Precedence: ``policy.file`` > ``policy.calibrate`` > the policy the training run calibrated and stored in
the checkpoint (``policy.from_checkpoint``, on by default) > the limits written in serve.yaml.
"""

import json
from pathlib import Path
from typing import Optional, Tuple

from torch import nn

from secure_ml.defenses.input_policy import InputPolicy
from secure_ml.errors import ConfigError
from secure_ml.serving.config import PolicyConfig


def build_policy(cfg: PolicyConfig, model: nn.Module, stored: Optional[dict] = None) -> InputPolicy:
    """The policy alone (see ``build_policy_with_source``)."""
    return build_policy_with_source(cfg, model, stored)[0]


def build_policy_with_source(cfg: PolicyConfig, model: nn.Module, stored: Optional[dict] = None) -> Tuple[InputPolicy, str]:
    """``(policy, where it came from)``; ``stored``: the checkpoint's policy dict (``load_checkpoint``)."""
    if cfg.file is not None:
        path = Path(cfg.file)
        try:
            return InputPolicy.from_dict(json.loads(path.read_text())), f"file {path}"
        except OSError as exc:
            raise ConfigError(f"serve.yaml: policy.file: cannot read '{path}' ({exc.strerror})") from None
        except ValueError as exc:
            raise ConfigError(f"serve.yaml: policy.file: '{path}' is not a valid policy ({exc})") from None
    if cfg.calibrate:
        if cfg.calibration_data_dir is None:
            raise ConfigError("serve.yaml: policy.calibrate is true but policy.calibration_data_dir is not set")
        from secure_ml.data.mnist import load_mnist

        images, _ = load_mnist(cfg.calibration_data_dir, train=True, download=False)
        clean = images[: cfg.calibration_samples]
        try:
            policy = InputPolicy.calibrate(model, clean, cfg.false_positive_rate, min_value=cfg.min_value, max_value=cfg.max_value)
            return policy, f"calibrated at start-up on {len(clean)} training digits"
        except ValueError as exc:
            raise ConfigError(f"serve.yaml: policy.calibrate failed ({exc})") from None
    if cfg.from_checkpoint and stored is not None:
        try:
            return InputPolicy.from_dict(stored), "calibrated during training (from the checkpoint)"
        except ValueError as exc:
            raise ConfigError(
                f"--ckpt_path: the checkpoint's stored input policy is invalid ({exc}); "
                "set policy.from_checkpoint: false to use serve.yaml's limits"
            ) from None
    try:
        return InputPolicy(
            min_value=cfg.min_value,
            max_value=cfg.max_value,
            max_variance=cfg.max_variance,
            max_energy=cfg.max_energy,
            max_density=cfg.max_density,
        ), "serve.yaml limits"
    except ValueError as exc:
        raise ConfigError(f"serve.yaml: policy: {exc}") from None
