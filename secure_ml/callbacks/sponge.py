"""Sponge defence check every epoch: calibrate the input policy on clean non-member digits, then attack it."""

from typing import Any, Dict, List, Optional

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from secure_ml.attacks.sponge import craft_sponges, gaussian_sponges, sponge_report
from secure_ml.callbacks._common import EpochMetricCallback, check_min, held_out, on_device, subsample
from secure_ml.defenses.calibration import activation_scores, budget_k, default_checks, leave_one_out_rejected, scores_from_energy
from secure_ml.defenses.energy import EnergyUndefined, activation_energy, energy_from_calls
from secure_ml.defenses.input_policy import HEADROOM, InputPolicy
from secure_ml.defenses.reconstruction import SHAPE, ReconstructionConfig, encode, load_or_train, reconstruction_error
from secure_ml.errors import TORCH_SEED_MAX, ConfigError, check_seed

# (optimizer, objective) of the crafted sponges, taken in turn from noise and from digits.
VARIANTS = (("sign", "l2"), ("adam", "l2"), ("sign", "l0"), ("adam", "l0"))


class SpongeCallback(EpochMetricCallback):
    """Logs ``sponge/reject_rate`` (all sponges), ``sponge/reject_rate_gaussian``, ``sponge/reject_rate_crafted``,
    ``sponge/false_positive_rate`` (clean non-member digits rejected), for crafted sponges vs as many
    clean digits ``sponge/energy_ratio``, ``sponge/density_ratio`` and ``sponge/latency_ratio``, and
    ``sponge/energy_bound_ratio`` / ``sponge/density_bound_ratio``: the most L2 energy / activation
    density any input the policy accepts can carry (its limit, or 1 where the density is not bounded,
    as on tanh nets), over the clean 99.5th percentile.

    Calibration uses non-member digits only: the validation split, in fit, validate and test alike.
    The policy calibrated on it is kept in the checkpoint (``policy``) for the inference service, until the
    next training step: a checkpoint saved before the next calibration holds none (never a stale one).
    False positives: in test, the test split; in fit/validate, leave-one-out over the validation
    digits (a digit counts when the policy calibrated on the other ones rejects it), which needs no
    forward pass beyond the calibration's. The bound ratios use the test split's percentile in test
    and the validation split's own in fit/validate. Crafted sponges: ``n_sponges`` from uniform noise
    and as many from clean digits, shared in turn among sign/Adam ascent on the L2/L0 objective.
    With ``reconstruction`` the policy also bounds the reconstruction error of an autoencoder of digit
    shapes (:mod:`secure_ml.defenses.reconstruction`), trained before fitting on procedural digits only
    (no privacy cost) and cached; it is stored in the policy and so reaches the service.

    Args:
        n_sponges: sponges of each kind: crafted from noise, crafted from digits, and Gaussian per scale.
        gaussian_scales: standard deviations of the seed's Gaussian-noise sponges.
        craft_steps: gradient-ascent steps on the activation energy.
        craft_lr: per-pixel step of the ascent (Adam's step size for the Adam variants).
        calibration_samples: validation digits used to calibrate the policy (null: all of them, ``--data.val_size``).
        false_positive_rate: clean-digit rejection budget of the calibration, split over its checks.
        headroom: each limit sits this share of the clean spread above its order statistic.
        max_samples: test digits on which the false-positive rate is measured in test.
        latency_repeats: timed forwards of a clean and a crafted batch (median) for ``sponge/latency_ratio``.
        every_n_epochs: run every n-th epoch (and always on the last one and in test).
        enabled: false switches the callback off (``--sponge.enabled false`` on the CLI).
        seed: seed of the subsamples and of the noise.
        reconstruction: add the autoencoder check to the policy (1x28x28 images only).
        reconstruction_digits: procedural digits the autoencoder is trained on.
        reconstruction_epochs: the autoencoder's training epochs.
        reconstruction_cache_dir: where trained autoencoders are cached (null: train every time).
    """

    record_stages, record_activations = ("val",), True  # calibration statistics from the validation loop's forward

    def __init__(
        self,
        n_sponges: int = 24,
        gaussian_scales: List[float] = [0.5, 1.0, 2.0, 5.0],
        craft_steps: int = 20,
        craft_lr: float = 0.01,
        calibration_samples: Optional[int] = None,
        false_positive_rate: float = 0.005,
        headroom: float = HEADROOM,
        max_samples: int = 400,
        latency_repeats: int = 3,
        every_n_epochs: int = 1,
        seed: int = 0,
        enabled: bool = True,
        reconstruction: bool = False,
        reconstruction_digits: int = 8000,
        reconstruction_epochs: int = 12,
        reconstruction_cache_dir: Optional[str] = "~/.cache/secure-ml/reconstruction",
    ):
        for name, v in (
            ("latency_repeats", latency_repeats),
            ("n_sponges", n_sponges),
            ("craft_steps", craft_steps),
            ("calibration_samples", calibration_samples),
            ("max_samples", max_samples),
            ("every_n_epochs", every_n_epochs),
        ):
            if v is not None:  # calibration_samples: null means every validation digit
                check_min(v, f"--sponge.{name}", 2 if name == "calibration_samples" else 1)  # leave-one-out needs two
        if not 0 < craft_lr < float("inf"):  # checked here, not after an epoch of training in the first validation
            raise ConfigError(f"--sponge.craft_lr must be a finite number > 0; got {craft_lr}")
        if not 0 < false_positive_rate < 1:
            raise ConfigError(f"--sponge.false_positive_rate must be in (0, 1); got {false_positive_rate}")
        if not 0 <= headroom < 10:
            raise ConfigError(f"--sponge.headroom must be in [0, 10); got {headroom}")
        if not gaussian_scales or any(s <= 0 for s in gaussian_scales):
            raise ConfigError(f"--sponge.gaussian_scales must be positive; got {gaussian_scales}")
        self.n_sponges, self.gaussian_scales, self.craft_steps, self.craft_lr = n_sponges, list(gaussian_scales), craft_steps, craft_lr
        self.calibration_samples, self.false_positive_rate, self.max_samples = calibration_samples, false_positive_rate, max_samples
        check_seed(seed, "--sponge.seed", TORCH_SEED_MAX)
        self.headroom, self.every_n_epochs, self.seed, self.latency_repeats = headroom, every_n_epochs, seed, latency_repeats
        self.enabled, self.reconstruction, self.reconstruction_cache_dir = enabled, reconstruction, reconstruction_cache_dir
        self.reconstruction_config = ReconstructionConfig(digits=reconstruction_digits, epochs=reconstruction_epochs)
        self.policy: Optional[InputPolicy] = None
        self._autoencoder: Optional[InputPolicy] = None  # limit-free policy: the autoencoder's text and its per-device copies
        self._reconstruction_scores: Optional[tuple] = None  # (calibration digits, their scores): the same every epoch

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Refuse, in one line, a net whose activation energy is undefined (before any training)."""
        if not self.enabled:
            return
        ds = getattr(trainer.datamodule, "val_dataset", None) if trainer.datamodule is not None else None
        if ds is not None and self.calibration_samples is not None and self.calibration_samples > len(ds):
            raise ConfigError(
                f"--sponge.calibration_samples ({self.calibration_samples}) is larger than the {len(ds)} validation digits "
                "(--data.val_size); lower it, raise --data.val_size, or leave it null to use them all"
            )
        probe = _probe(ds)
        try:
            activation_energy(pl_module.net, probe)
        except EnergyUndefined as exc:
            raise ConfigError(
                f"--sponge: {exc}, so its activation energy is undefined; switch the check off with --sponge.enabled false"
            ) from None
        if self.reconstruction and self._autoencoder is None:
            if tuple(probe.shape[1:]) != SHAPE:
                raise ConfigError(
                    f"--sponge.reconstruction: the autoencoder redraws 1x28x28 digits, the data's images are "
                    f"{'x'.join(map(str, probe.shape[1:]))}; set --sponge.reconstruction false"
                )
            net = load_or_train(self.reconstruction_config, self.reconstruction_cache_dir, rank_zero_info)
            self._autoencoder = InputPolicy(reconstruction_net=encode(net))

    def _craft(self, net, starts: torch.Tensor) -> torch.Tensor:
        """Sponges from ``starts``, the i-th crafted by variant i mod 4, all in one batch (the cost of one variant)."""
        variants = [VARIANTS[i % len(VARIANTS)] for i in range(len(starts))]
        return craft_sponges(
            net, starts, steps=self.craft_steps, lr=self.craft_lr, optimizer=[v[0] for v in variants], objective=[v[1] for v in variants]
        )

    def _evaluate(self, pl_module, stage: str) -> dict:
        net, trainer = pl_module.net, pl_module.trainer
        vx, vy = held_out(trainer, "val")
        n_calib = len(vy) if self.calibration_samples is None else self.calibration_samples
        calib = on_device(pl_module, subsample(vx, vy, n_calib, self.seed)[0])[0]
        if self.recorded is not None and stage == "val":  # the validation loop's forward already recorded every digit
            positions = subsample(torch.arange(len(vy)), vy, n_calib, self.seed)[0]
            scores = {k: v[positions] for k, v in scores_from_energy(energy_from_calls(self.recorded.calls)).items()}
        else:
            scores = activation_scores(net, calib)
        extra = {}
        if self._autoencoder is not None:
            scores = {**scores, "reconstruction": self._reconstruction_of(calib)}
            extra["reconstruction_net"] = self._autoencoder.reconstruction_net
        policy = InputPolicy.from_scores(scores, self.false_positive_rate, self.headroom, **extra)
        if stage == "test":
            measure = on_device(pl_module, subsample(*held_out(trainer, "test"), self.max_samples, self.seed + 1)[0])[0]
            false_pos = sum(not d.allowed for d in policy.check_batch(measure, net)) / len(measure)
            reference = activation_scores(net, measure)
        else:
            measure, reference = calib, scores
            checks = default_checks(scores)  # the checks from_scores calibrated
            k = budget_k(len(calib), self.false_positive_rate, len(checks))
            false_pos = float(leave_one_out_rejected(scores, checks, k, self.headroom).double().mean())
        gen = torch.Generator().manual_seed(self.seed)
        gaussian = gaussian_sponges(self.n_sponges, self.gaussian_scales, gen).to(pl_module.device)
        noise = torch.rand((self.n_sponges, *measure.shape[1:]), generator=gen).to(pl_module.device)
        crafted = self._craft(net, torch.cat([noise, measure[: self.n_sponges]]))
        rejected_g = sum(not d.allowed for d in policy.check_batch(gaussian, net))
        rejected_c = sum(not d.allowed for d in policy.check_batch(crafted, net))
        k = min(len(measure), len(crafted))  # equal batches, so the latencies compare
        report = sponge_report(net, measure[:k], crafted[:k], repeats=self.latency_repeats)
        self.policy = policy
        return {
            "sponge/reject_rate": (rejected_g + rejected_c) / (len(gaussian) + len(crafted)),
            "sponge/reject_rate_gaussian": rejected_g / len(gaussian),
            "sponge/reject_rate_crafted": rejected_c / len(crafted),
            "sponge/false_positive_rate": false_pos,
            "sponge/energy_ratio": report.energy_ratio,
            "sponge/density_ratio": report.density_ratio,
            "sponge/latency_ratio": report.latency_ratio,
            "sponge/energy_bound_ratio": _bound_ratio(policy.max_energy, reference["energy"]),
            "sponge/density_bound_ratio": _bound_ratio(policy.max_density or 1.0, reference["density"]),  # a density cannot exceed 1
        }

    def _reconstruction_of(self, calib: torch.Tensor) -> torch.Tensor:
        """The autoencoder's scores of the calibration digits, computed once: neither the digits nor the autoencoder change."""
        cached = self._reconstruction_scores
        if cached is None or cached[0].shape != calib.shape or not torch.equal(cached[0], calib.detach().cpu()):
            with torch.no_grad():
                ae = self._autoencoder.reconstruction_model(calib.device)
                cached = self._reconstruction_scores = (calib.detach().cpu().clone(), reconstruction_error(ae, calib).cpu())
        return cached[1]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The policy's limits hold for the weights it was calibrated on; a step changes them. Without this, a checkpoint
        # saved before the next calibration (a resumed fit with validation off, an epoch the check skips) carried the
        # old weights' policy, and `secure-ml export` shipped it with the new weights.
        self.policy = None

    def state_dict(self) -> Dict[str, Any]:
        return {"policy": self.policy.to_dict() if self.policy is not None else None}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if state_dict.get("policy") is None:
            return
        try:
            self.policy = InputPolicy.from_dict(state_dict["policy"])
        except ValueError as exc:  # e.g. a version-1 policy: recalibrated at the next validation epoch
            rank_zero_warn(f"SpongeCallback: the checkpoint's input policy is not used ({exc})")


def _probe(ds) -> torch.Tensor:
    """One zero image of the validation data's shape (1x28x28 when there is no data to look at)."""
    if ds is None:
        return torch.zeros(1, 1, 28, 28)
    try:
        first = ds.tensors[0][:1] if hasattr(ds, "tensors") else ds[0][0].unsqueeze(0)
    except (IndexError, TypeError, AttributeError):
        return torch.zeros(1, 1, 28, 28)
    return torch.zeros_like(first, dtype=torch.float32)


def _bound_ratio(limit: Optional[float], clean: torch.Tensor) -> float:
    """``limit`` over the clean 99.5th percentile (inf without a limit: nothing bounds the statistic)."""
    if limit is None:
        return float("inf")
    return limit / float(torch.quantile(clean.double(), 0.995))
