"""Input validation policy for pixel-space images, shared by the scorecard and the inference service.

Checks run in a fixed order and the first failure is reported: ``shape`` → ``dtype`` →
``non_finite`` → ``range`` → ``variance`` → ``energy`` → ``reconstruction``. Every check is a fixed
number of tensor reductions over the image (plus, for ``energy``, one batched forward pass of the
model, and for ``reconstruction`` one of the autoencoder), so the cost is bounded by the accepted
shape; an oversized input fails ``shape`` before any work.

``variance``: pixel space is ``[0, 1]``, where a variance cannot exceed 0.25; ``max_variance`` is a
fixed 0.22 by default (not calibrated), above every MNIST digit and below clipped N(0, 5²) noise.

``energy`` bounds statistics of the hidden activations (:mod:`secure_ml.defenses.energy`): the L2
energy (``max_energy``), the density of non-zero activations (``max_density``, the L0 energy),
every hidden layer's density (``max_layer_density``), L2 energy (``max_layer_energy``) and share of
positive activations (``max_layer_positive``), one limit per layer for the last three. One bound
alone is a line an attacker can sit under while raising another cost. :meth:`InputPolicy.calibrate`
sets them on clean non-member digits, the false-positive budget split across the checks that apply
to the net's activations (:func:`secure_ml.defenses.calibration.default_checks`): with exact zeros
(ReLU) energy, density and layer density; without (tanh, GELU, SiLU: the density is always 1)
energy, layer energy and layer positive share.

``reconstruction`` (optional, policy version 4; version 5: two errors): the L1 errors with which a small autoencoder of
digit shapes, trained on procedural digits only, redraws the image's faint pixels and its background (``max_reconstruction``,
one limit per error, held like the per-layer checks; the autoencoder's
weights travel in ``reconstruction_net``, :mod:`secure_ml.defenses.reconstruction`). Calibrated like the
activation checks, with its own share of the budget; it rejects inputs that no longer look like digits
(sponges crafted from digits among them) whatever their activation statistics.

Decisions carry no numbers: a fixed sentence per failed check (:mod:`secure_ml.defenses.policy_decision`).
Stored policies are read by :mod:`secure_ml.defenses.policy_format` (versions 1 to :data:`VERSION`).
"""

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional, Tuple

import torch
from torch import nn

from secure_ml.defenses import policy_calibration
from secure_ml.defenses.calibration import LAYER_CHECKS, activation_scores, violated
from secure_ml.defenses.policy_calibration import CHECK_FIELD, HEADROOM
from secure_ml.defenses.policy_decision import DETAIL, REASONS, PolicyDecision, layer_limits, pixel_stats, positive_or_none
from secure_ml.defenses.policy_format import VERSION, stored_fields
from secure_ml.defenses.reconstruction import ERRORS as RECONSTRUCTION_ERRORS
from secure_ml.defenses.reconstruction import SHAPE as RECONSTRUCTION_SHAPE
from secure_ml.defenses.reconstruction import ReconstructionNet, decode, reconstruction_error

__all__ = ["HEADROOM", "REASONS", "VERSION", "InputPolicy", "PolicyDecision"]

_TUPLE_FIELDS = tuple(CHECK_FIELD[c] for c in LAYER_CHECKS) + ("max_reconstruction",)  # stored as lists


@dataclass
class InputPolicy:
    """Accept-list for one pixel-space image: shape, floating dtype, finite values in range, bounded variance and activation energy."""

    shape: Tuple[int, ...] = (1, 28, 28)
    min_value: float = 0.0
    max_value: float = 1.0
    max_variance: Optional[float] = 0.22
    max_energy: Optional[float] = None
    max_density: Optional[float] = None
    max_layer_density: Optional[Tuple[float, ...]] = None
    max_layer_energy: Optional[Tuple[float, ...]] = None
    max_layer_positive: Optional[Tuple[float, ...]] = None
    max_reconstruction: Optional[Tuple[float, ...]] = None  # one limit per reconstruction error (ERRORS: faint, background)
    reconstruction_net: Optional[str] = field(default=None, repr=False)  # base64 safetensors of the autoencoder

    def __post_init__(self) -> None:
        """Validate and normalise the fields (ValueError naming the bad one)."""
        try:
            self.shape = tuple(int(d) for d in self.shape)
        except (TypeError, ValueError):
            raise ValueError(f"shape must be a sequence of positive integers; got {self.shape!r}") from None
        if not self.shape or any(d < 1 for d in self.shape):
            raise ValueError(f"shape must be a non-empty sequence of positive integers; got {self.shape!r}")
        for name in ("min_value", "max_value"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number; got {v!r}")
            setattr(self, name, float(v))
        if self.min_value >= self.max_value:
            raise ValueError(f"min_value must be below max_value; got {self.min_value} and {self.max_value}")
        for name in ("max_variance", "max_energy", "max_density"):
            setattr(self, name, positive_or_none(name, getattr(self, name)))
        for name in _TUPLE_FIELDS:
            setattr(self, name, layer_limits(name, getattr(self, name)))
        if self.max_reconstruction is not None and len(self.max_reconstruction) != len(RECONSTRUCTION_ERRORS):
            raise ValueError(
                f"max_reconstruction must hold one limit per error {RECONSTRUCTION_ERRORS}; got {len(self.max_reconstruction)}"
            )
        self._reconstruction: Optional[ReconstructionNet] = None
        self._copies: dict = {}  # device -> the autoencoder there (float32; made once per device, never cast)
        if self.reconstruction_net is not None:
            if self.shape != RECONSTRUCTION_SHAPE:
                raise ValueError(f"reconstruction_net redraws images of shape {RECONSTRUCTION_SHAPE}; this policy's shape is {self.shape}")
            self._reconstruction = decode(self.reconstruction_net)
        elif self.max_reconstruction is not None:
            raise ValueError("max_reconstruction needs the autoencoder it was calibrated with (reconstruction_net)")

    def reconstruction_model(self, device: Optional[torch.device] = None) -> Optional[ReconstructionNet]:
        """The decoded autoencoder of ``reconstruction_net`` on ``device`` (CPU by default), float32; None without one.

        Callers must not cast or move it: other threads use the same module (it runs on float32 inputs:
        :func:`~secure_ml.defenses.reconstruction.reconstruction_error` casts them).
        """
        if self._reconstruction is None:
            return None
        device = torch.device(device if device is not None else "cpu")
        if device.type == "cpu":
            return self._reconstruction
        net = self._copies.get(device)
        return net if net is not None else self._copies.setdefault(device, copy.deepcopy(self._reconstruction).to(device))

    def _accepted_shapes(self) -> Tuple[Tuple[int, ...], ...]:
        """The configured shape, plus the shape without its leading 1 (e.g. (28, 28) for (1, 28, 28))."""
        return (self.shape, self.shape[1:]) if len(self.shape) > 1 and self.shape[0] == 1 else (self.shape,)

    def _activation_limits(self) -> dict:
        return {check: getattr(self, name) for check, name in CHECK_FIELD.items() if getattr(self, name) is not None}

    def _needs_model(self) -> bool:
        return bool(self._activation_limits())

    def _shape_detail(self) -> str:
        return "expected one image of shape " + " or ".join(str(s) for s in self._accepted_shapes())

    def check(self, x: torch.Tensor, model: Optional[nn.Module] = None) -> PolicyDecision:
        """Decide on ONE image of shape ``shape`` (or ``shape`` without its leading 1)."""
        if not isinstance(x, torch.Tensor):
            return PolicyDecision(False, "dtype", DETAIL["dtype"])
        if tuple(x.shape) not in self._accepted_shapes():
            return PolicyDecision(False, "shape", self._shape_detail())
        return self.check_batch(x.unsqueeze(0), model)[0]

    def check_batch(self, x: torch.Tensor, model: Optional[nn.Module] = None) -> List[PolicyDecision]:
        """Decide on each image of a batch ``(B, *shape)``; the energy check is one forward over the images still allowed."""
        if self._needs_model() and model is None:
            raise ValueError(
                "this policy bounds activation energy (max_energy, max_density or a per-layer limit), so check needs the model"
            )
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"check_batch expects a torch.Tensor batch; got {type(x).__name__}")
        if x.dim() == 0:
            return [PolicyDecision(False, "shape", self._shape_detail())]
        b = x.shape[0]
        if tuple(x.shape[1:]) not in self._accepted_shapes():
            return [PolicyDecision(False, "shape", self._shape_detail()) for _ in range(b)]
        if not x.is_floating_point():
            return [PolicyDecision(False, "dtype", DETAIL["dtype"]) for _ in range(b)]
        if b == 0:
            return []
        n_bad, lo, hi, var = pixel_stats(x)
        decisions: List[Optional[PolicyDecision]] = [
            self._static_decision(int(n_bad[i]), float(lo[i]), float(hi[i]), float(var[i])) for i in range(b)
        ]
        survivors = [i for i in range(b) if decisions[i] is None]
        if survivors and self._needs_model():
            failed = self.activation_failures(model, x.detach()[survivors].reshape(len(survivors), *self.shape))
            for j, i in enumerate(survivors):
                if failed[j] is not None:
                    decisions[i] = PolicyDecision(False, "reconstruction" if failed[j] == "reconstruction" else "energy", DETAIL[failed[j]])
        return [d if d is not None else PolicyDecision(True, "ok") for d in decisions]

    def activation_failures(self, model: nn.Module, x: torch.Tensor) -> List[Optional[str]]:
        """Per image, the first activation check it fails (one of ``CHECK_FIELD``, in its order) or None; one forward."""
        scores = self.scores(model, x, reconstruction=self.max_reconstruction is not None)
        for check in LAYER_CHECKS:
            limits = getattr(self, CHECK_FIELD[check])
            if limits is not None and scores[check].shape[1] != len(limits):
                raise ValueError(
                    f"this policy bounds {len(limits)} hidden layers but the model has {scores[check].shape[1]}; "
                    "recalibrate the policy for this model"
                )
        flags = violated(scores, self._activation_limits())
        return [next((check for check in CHECK_FIELD if check in flags and bool(flags[check][i])), None) for i in range(len(x))]

    def scores(self, model: nn.Module, x: torch.Tensor, reconstruction: bool = True) -> dict:
        """The checks' per-image statistics: :func:`activation_scores`, plus ``reconstruction`` when the policy has an autoencoder (and ``reconstruction``)."""
        scores = activation_scores(model, x)
        if self._reconstruction is not None and reconstruction:
            with torch.no_grad():
                scores["reconstruction"] = reconstruction_error(self.reconstruction_model(x.device), x).cpu()
        return scores

    def _static_decision(self, n_bad: int, lo: float, hi: float, var: float) -> Optional[PolicyDecision]:
        """First failure among non_finite / range / variance, or None."""
        if n_bad:
            return PolicyDecision(False, "non_finite", DETAIL["non_finite"])
        if lo < self.min_value or hi > self.max_value:
            return PolicyDecision(False, "range", f"pixel values must lie in [{self.min_value:g}, {self.max_value:g}]")
        if self.max_variance is not None and var > self.max_variance:
            return PolicyDecision(False, "variance", DETAIL["variance"])
        return None

    # Policies calibrated on clean non-member digits (:mod:`~secure_ml.defenses.policy_calibration`):
    # ``InputPolicy.calibrate(model, clean_x, false_positive_rate, headroom, checks, **fields)`` and ``from_scores`` (precomputed scores).
    calibrate = classmethod(policy_calibration.calibrate)
    from_scores = classmethod(policy_calibration.from_scores)

    def to_dict(self) -> dict:
        """JSON-friendly dict (lists for tuples) with ``version``."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        for name in _TUPLE_FIELDS:
            d[name] = list(getattr(self, name)) if getattr(self, name) is not None else None
        return {"version": VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "InputPolicy":
        """Inverse of :meth:`to_dict`; reads versions 1–5 (v3 has no reconstruction check, v2 no per-layer energy/positive limits: they stay None).

        ValueError on unknown keys, on a version's keys it did not have, on a v1 policy with activation
        limits and on a v4 policy with a reconstruction limit (both measured differently: recalibrate).
        """
        return cls(**stored_fields(d, {f.name for f in fields(cls)}))
