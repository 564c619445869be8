"""Activation energy: the quantity a sponge attacker raises and the input policy bounds.

Definition. The *hidden activations* of one forward pass are the inputs of every weight layer
(``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d``) except the first one called,
whose input is the (normalised) image itself. They are captured with forward hooks on those
modules, so the definition holds for any activation function, whether it is a module
(``nn.Tanh``, ``nn.GELU``...) or a function call (``torch.relu`` in ``SmallCNN.forward``), and for
pooling or normalisation in between: what is measured is exactly what the next layer's
multiply-accumulates consume. For one image with hidden activations ``a_1 … a_L`` (layer calls in
order; a layer called twice counts twice):

* ``l2_energy`` = Σ_l ‖a_l‖² — the L2 energy proxy of Shumailov et al. (EuroS&P 2021);
* ``nonzero`` = Σ_l #{a_l ≠ 0}, ``density`` = nonzero / Σ_l numel(a_l) — the L0 energy: the share
  of multiply-accumulate operands a zero-skipping accelerator cannot skip;
* ``layer_l2``, ``layer_density`` — the same per hidden layer, shape ``(B, L)``;
* ``layer_positive`` — per hidden layer, the share of activations > 0, shape ``(B, L)``. For ReLU it
  equals ``layer_density``; for tanh, GELU or SiLU (whose output is > 0 exactly where the
  pre-activation is) it is the share of positive pre-activations: the count an L0 sponge raises.

Under ReLU many activations are exactly zero, so density matters; tanh, GELU or SiLU outputs are
almost never exactly zero, so their density is ~1 whatever the input, and only the L2 energy can
be raised. A net with no hidden activations (e.g. one Linear layer, or weights used through
``F.linear`` without a module) has no activation energy: :class:`EnergyUndefined`.

Why not a library: ART and torchattacks have no sponge attack; the authors' code
(iliaishacked/sponge_examples) is not packaged. Forward hooks are all it takes.
"""

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from secure_ml.models.batching import EVAL_BATCH
from secure_ml.models.registry import device_and_dtype

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class EnergyUndefined(ValueError):
    """The net has no hidden activations (no weight layer fed by another layer's output)."""


@dataclass
class LayerCall:
    """One call of a weight layer: its name (``conv2``, ``fc1#2`` for a second call), input and output.

    With ``ActivationRecorder(summarise=True)`` the tensors are replaced by per-sample statistics taken
    inside the hook (so a later in-place operation cannot change them): ``input`` holds ``[Σa², #(a≠0), #(a>0)]``
    per sample, shape ``(B, 3)``, and ``output`` is None.
    """

    name: str
    input: torch.Tensor
    output: Optional[torch.Tensor]
    numel: int = 0


@dataclass
class ActivationRecorder:
    """Context manager: forward hooks on every weight layer of ``model`` record a :class:`LayerCall` per call.

    Recorded tensors stay in the autograd graph (attacks differentiate them). Hooks are removed on exit.
    Only calls made by the thread that entered it are recorded: the service's inference threads share one
    model, and another request's forward must not land in this image's statistics.
    """

    model: nn.Module
    summarise: bool = False
    calls: List[LayerCall] = field(default_factory=list)

    def __enter__(self) -> "ActivationRecorder":
        self.calls.clear()
        self._thread = threading.get_ident()
        self._handles = [
            m.register_forward_hook(self._hook(name or type(m).__name__))
            for name, m in self.model.named_modules()
            if isinstance(m, WEIGHT_LAYERS)
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Tuple, output: torch.Tensor) -> None:
            if threading.get_ident() != self._thread:
                return
            seen = sum(c.name.split("#")[0] == name for c in self.calls)
            key, a = f"{name}#{seen + 1}" if seen else name, args[0]
            if self.summarise:
                flat = _flat(a.detach())
                stats = torch.stack([flat.float().pow(2).sum(1), (flat != 0).sum(1).float(), (flat > 0).sum(1).float()], 1)
                self.calls.append(LayerCall(key, stats, None, flat.shape[1]))
            else:
                self.calls.append(LayerCall(key, a, output, a[0].numel()))

        return hook

    def checked(self) -> List[LayerCall]:
        """All calls, in order; EnergyUndefined unless there are at least two (so at least one hidden activation)."""
        if len(self.calls) < 2:
            raise EnergyUndefined(
                f"{type(self.model).__name__} has no hidden activations (it needs a Linear/Conv layer fed by another layer's output)"
            )
        return self.calls


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Temporarily put ``model`` in eval mode (dropout/batch-norm fixed), restoring every submodule's flag after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def record(model: nn.Module, x: torch.Tensor, summarise: bool = False) -> List[LayerCall]:
    """Run ``model(x)`` (as is: caller picks grad and train/eval mode) and return every weight-layer call, in order.

    The hidden activations are the inputs of ``calls[1:]``; the pre-activations behind them are the
    outputs of ``calls[:-1]``. EnergyUndefined for fewer than two calls.
    """
    with ActivationRecorder(model, summarise) as rec:
        model(x)
    return rec.checked()


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1)  # (B, rest), also for B = 0


def l2_objective(calls: List[LayerCall], rows: slice = slice(None)) -> torch.Tensor:
    """Differentiable per-sample L2 energy Σ_l ‖a_l‖² over the hidden activations of :func:`record`'s calls (of the batch's ``rows``)."""
    return sum(_flat(c.input[rows]).pow(2).sum(1) for c in calls[1:])


def l0_objective(calls: List[LayerCall], temperature: float, rows: slice = slice(None)) -> torch.Tensor:
    """Differentiable per-sample count of positive pre-activations: Σ sigmoid(z / T) over every weight layer's output but the last.

    A smooth stand-in for the L0 energy. Unlike a count on post-ReLU values it still has a gradient
    for dead units (ReLU's gradient is zero there), so ascent can switch them on. The last output
    (the logits) feeds no layer and is left out. ``rows``: the batch's rows to compute it for.
    """
    return sum(_flat(torch.sigmoid(c.output[rows] / temperature)).sum(1) for c in calls[:-1])


def activation_energy(model: nn.Module, x: torch.Tensor, chunk: int = EVAL_BATCH) -> Dict[str, torch.Tensor]:
    """Per-sample statistics of the hidden activations (see the module docstring), float64/int64 on CPU.

    Keys: ``l2_energy``, ``nonzero``, ``density`` (shape ``(B,)``), ``layer_l2``, ``layer_density`` and
    ``layer_positive`` (``(B, L)``), plus ``layers``: the names of the L hidden layer calls (a list, not a tensor).
    Forward passes of ``chunk`` images under ``torch.no_grad()`` in eval mode on the model's device
    (per-image statistics, so the chunking changes no number); EnergyUndefined for a net without hidden activations.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a batch tensor (B, ...); got {getattr(x, 'shape', type(x).__name__)}")
    device, dtype = device_and_dtype(model, x)
    parts = []
    with torch.no_grad(), eval_mode(model):
        for i in range(0, max(len(x), 1), chunk):
            parts.append(record(model, x[i : i + chunk].to(device=device, dtype=dtype), summarise=True)[1:])
    return energy_from_calls(parts)


def energy_from_calls(parts: List[List[LayerCall]]) -> Dict[str, torch.Tensor]:
    """:func:`activation_energy`'s dict from the hidden-layer calls (``calls[1:]``) of summarising recordings, one list per batch, in row order."""
    # float32 on the device (MPS has no float64), float64 once on the CPU.
    stats = torch.cat([torch.stack([c.input for c in calls], 1).cpu().double() for calls in parts])  # (B, L, 3)
    calls = parts[-1]
    layer_l2, layer_nz, layer_pos = stats[..., 0], stats[..., 1].round().long(), stats[..., 2].round()
    sizes = torch.tensor([c.numel for c in calls], dtype=torch.float64)
    nonzero = layer_nz.sum(1)
    return {
        "l2_energy": layer_l2.sum(1),
        "nonzero": nonzero,
        "density": nonzero.double() / sizes.sum(),
        "layer_l2": layer_l2,
        "layer_density": layer_nz.double() / sizes,
        "layer_positive": layer_pos / sizes,
        "layers": [c.name for c in calls],
    }
