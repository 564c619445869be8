"""Sponge defence check every epoch: calibrate the input policy on clean digits, then attack it."""

from typing import Any, Dict, List, Optional

import torch

from secure_ml.attacks.sponge import craft_sponges, gaussian_sponges, sponge_report
from secure_ml.callbacks._common import EpochMetricCallback, check_min, held_out, on_device, subsample
from secure_ml.defenses.input_policy import InputPolicy
from secure_ml.errors import ConfigError


class SpongeCallback(EpochMetricCallback):
    """Logs ``sponge/reject_rate`` (all sponges), ``sponge/reject_rate_gaussian``, ``sponge/reject_rate_crafted``,
    ``sponge/false_positive_rate`` (clean held-out digits rejected), and for crafted sponges vs as
    many clean digits ``sponge/energy_ratio``, ``sponge/density_ratio`` (activation energy and
    density) and ``sponge/latency_ratio`` (median forward time of the batch).

    The policy's variance and activation-energy limits are calibrated each epoch on clean
    digits the false-positive rate is *not* measured on: during fit/validate the validation
    split is halved (calibrate on one half, measure on the other); in test the policy is
    calibrated on the validation split and measured on the test split. The last calibrated
    policy is kept in the checkpoint (``policy``), for the inference service.

    Args:
        n_sponges: sponges of each kind: crafted from noise, crafted from digits, and Gaussian per scale.
        gaussian_scales: standard deviations of the seed's Gaussian-noise sponges.
        craft_steps: gradient-ascent steps on the activation energy.
        craft_lr: per-pixel step of the ascent.
        calibration_samples: clean digits used to calibrate the policy.
        false_positive_rate: clean-digit rejection rate the calibration aims at.
        max_samples: clean digits on which the false-positive rate is measured.
        latency_repeats: timed forwards of a clean and a crafted batch (median) for ``sponge/latency_ratio``.
        every_n_epochs: run every n-th epoch (and always on the last one and in test).
        enabled: false switches the callback off (``--<key>.enabled false`` on the CLI).
        seed: seed of the subsamples and of the noise.
    """

    def __init__(
        self,
        n_sponges: int = 24,
        gaussian_scales: List[float] = [0.5, 1.0, 2.0, 5.0],
        craft_steps: int = 20,
        craft_lr: float = 0.01,
        calibration_samples: int = 800,
        false_positive_rate: float = 0.005,
        max_samples: int = 400,
        latency_repeats: int = 3,
        every_n_epochs: int = 1,
        seed: int = 0,
        enabled: bool = True,
    ):
        for name, v in (
            ("latency_repeats", latency_repeats),
            ("n_sponges", n_sponges),
            ("craft_steps", craft_steps),
            ("calibration_samples", calibration_samples),
            ("max_samples", max_samples),
            ("every_n_epochs", every_n_epochs),
        ):
            check_min(v, f"SpongeCallback {name}")
        if not 0 < false_positive_rate < 1:
            raise ConfigError(f"SpongeCallback false_positive_rate must be in (0, 1); got {false_positive_rate}")
        if not gaussian_scales or any(s <= 0 for s in gaussian_scales):
            raise ConfigError(f"SpongeCallback gaussian_scales must be positive; got {gaussian_scales}")
        self.n_sponges, self.gaussian_scales, self.craft_steps, self.craft_lr = n_sponges, list(gaussian_scales), craft_steps, craft_lr
        self.calibration_samples, self.false_positive_rate, self.max_samples = calibration_samples, false_positive_rate, max_samples
        self.every_n_epochs, self.seed, self.latency_repeats = every_n_epochs, seed, latency_repeats
        self.enabled = enabled
        self.policy: Optional[InputPolicy] = None

    def _clean_splits(self, trainer, stage: str):
        if stage == "test":
            calib = held_out(trainer, "val")
            measure = held_out(trainer, "test")
        else:
            x, y = held_out(trainer, "val")
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
            half = len(y) // 2
            calib, measure = (x[perm[:half]], y[perm[:half]]), (x[perm[half:]], y[perm[half:]])
        return subsample(*calib, self.calibration_samples, self.seed)[0], subsample(*measure, self.max_samples, self.seed + 1)[0]

    def _evaluate(self, pl_module, stage: str) -> dict:
        net = pl_module.net
        calib, measure = on_device(pl_module, *self._clean_splits(pl_module.trainer, stage))
        policy = InputPolicy.calibrate(net, calib, false_positive_rate=self.false_positive_rate)
        gen = torch.Generator().manual_seed(self.seed)
        gaussian = gaussian_sponges(self.n_sponges, self.gaussian_scales, gen).to(pl_module.device)
        starts = torch.cat(
            [torch.rand((self.n_sponges, *measure.shape[1:]), generator=gen).to(pl_module.device), measure[: self.n_sponges]]
        )
        crafted = craft_sponges(net, starts, steps=self.craft_steps, lr=self.craft_lr, clamp=True)
        rejected_g = sum(not d.allowed for d in policy.check_batch(gaussian, net))
        rejected_c = sum(not d.allowed for d in policy.check_batch(crafted, net))
        false_pos = sum(not d.allowed for d in policy.check_batch(measure, net))
        k = min(len(measure), len(crafted))  # equal batches, so the latencies compare
        report = sponge_report(net, measure[:k], crafted[:k], repeats=self.latency_repeats)
        self.policy = policy
        return {
            "sponge/reject_rate": (rejected_g + rejected_c) / (len(gaussian) + len(crafted)),
            "sponge/reject_rate_gaussian": rejected_g / len(gaussian),
            "sponge/reject_rate_crafted": rejected_c / len(crafted),
            "sponge/false_positive_rate": false_pos / len(measure),
            "sponge/energy_ratio": report.energy_ratio,
            "sponge/density_ratio": report.density_ratio,
            "sponge/latency_ratio": report.latency_ratio,
        }

    def state_dict(self) -> Dict[str, Any]:
        return {"policy": self.policy.to_dict() if self.policy is not None else None}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if state_dict.get("policy") is not None:
            self.policy = InputPolicy.from_dict(state_dict["policy"])
