"""Sponge examples: inputs that maximise a network's activation energy (Shumailov et al., 2021).

"Sponge Examples: Energy-Latency Attacks on Neural Networks" (EuroS&P 2021) crafts
inputs that make as many activations as possible non-zero (L0, defeating zero-skipping
accelerators) or as large as possible (L2, the energy proxy). We keep the seed's naive
Gaussian "sponges" for comparison and add the real gradient-ascent attack.

Capturing activations. ``SmallCNN`` calls ``torch.relu`` functionally, so forward hooks
on ``nn.ReLU`` modules would see nothing, and hooks on the layers that *feed* a ReLU
need to know the architecture. Instead, :class:`ReluRecorder` is a
``torch.overrides.TorchFunctionMode`` active during one forward pass: every call to
``torch.relu``, ``F.relu``, ``Tensor.relu`` (and their in-place forms) passes through it,
and ``nn.ReLU.forward`` calls ``F.relu``, so module and functional ReLUs are covered with
no knowledge of the model. A mode is not re-entered while it handles a call, so
``F.relu`` → ``torch.relu`` is recorded once. Recorded tensors stay in the autograd
graph, which is what the attack differentiates. Torch-function modes are thread-local.
"""

import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_RELUS = {torch.relu, torch.relu_, F.relu, F.relu_, torch.Tensor.relu, torch.Tensor.relu_}
OBJECTIVES = ("l2", "l0")


class ReluRecorder(TorchFunctionMode):
    """Records ``(pre_activation, post_activation)`` of every ReLU call made while active."""

    def __init__(self) -> None:
        super().__init__()
        self.records: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS:
            inp = args[0] if args else kwargs["input"]
            if func in (torch.relu_, F.relu_, torch.Tensor.relu_) or kwargs.get("inplace") or (len(args) > 1 and args[1] is True):
                inp = inp.clone()  # in-place ReLU overwrites its input
            out = func(*args, **kwargs)
            self.records.append((inp, out))
            return out
        return func(*args, **kwargs)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Temporarily put ``model`` in eval mode (dropout/batch-norm fixed), restoring every submodule's flag after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def _model_device_dtype(model: nn.Module, x: torch.Tensor) -> Tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (``x``'s when it has none)."""
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (x.device, x.dtype if x.is_floating_point() else torch.float32)


def _records(model: nn.Module, x: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Run ``model(x)`` under a :class:`ReluRecorder` and return its records (ValueError if none)."""
    recorder = ReluRecorder()
    with recorder:
        model(x)
    if not recorder.records:
        raise ValueError(f"{type(model).__name__} made no ReLU calls; activation energy is undefined for it")
    return recorder.records


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    """Sum every dimension but the first."""
    return t.flatten(1).sum(1)


def _objective(records: List[Tuple[torch.Tensor, torch.Tensor]], objective: str, temperature: float) -> torch.Tensor:
    """Per-sample sponge objective: sum of squared post-ReLU values (l2) or of sigmoid(pre/T) (l0)."""
    if objective == "l2":
        return sum(_per_sample(out.pow(2)) for _, out in records)
    # Differentiable count of positive pre-activations; unlike tanh(post-ReLU) it still has a
    # gradient for dead units (ReLU's gradient is zero there), so it can switch them on.
    return sum(_per_sample(torch.sigmoid(inp / temperature)) for inp, _ in records)


def activation_energy(model: nn.Module, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-sample ``l2_energy`` (Σ post-ReLU²), ``nonzero`` (count > 0) and ``density`` (share > 0), on CPU.

    One forward pass under ``torch.no_grad()`` in eval mode on the model's device.
    """
    if x.dim() < 2:
        raise ValueError(f"x must be a batch (B, ...); got shape {tuple(x.shape)}")
    device, dtype = _model_device_dtype(model, x)
    with torch.no_grad(), _eval_mode(model):
        records = _records(model, x.to(device=device, dtype=dtype))
        # float32 on the device (MPS has no float64), float64 once on the CPU.
        l2 = sum(_per_sample(out.float().pow(2)) for _, out in records).cpu().double()
        nonzero = sum(_per_sample(out > 0) for _, out in records).cpu()
        total = sum(out[0].numel() for _, out in records)
    return {"l2_energy": l2, "nonzero": nonzero, "density": nonzero.double() / total}


def gaussian_sponges(
    n: int,
    scales: Sequence[float],
    generator: Optional[torch.Generator] = None,
    shape: Tuple[int, ...] = (1, 28, 28),
    clamp: bool = False,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """The seed's sponges: ``n`` images of N(0, s²) noise per scale ``s``, stacked scale-major, shape ``(n·len(scales), *shape)``.

    ``clamp`` clips them to [0, 1] so they pass a naive range check.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive numbers; got {list(scales)}")
    gen_device = generator.device if generator is not None else (device or torch.device("cpu"))
    noise = [torch.randn((n, *shape), generator=generator, device=gen_device) * float(s) for s in scales]
    x = torch.cat(noise)
    if clamp:
        x = x.clamp_(0.0, 1.0)
    return x.to(device) if device is not None else x


def craft_sponges(
    model: nn.Module,
    x_init: torch.Tensor,
    steps: int = 50,
    lr: float = 0.01,
    objective: str = "l2",
    clamp: bool = True,
    epsilon: Optional[float] = None,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Signed-gradient ascent on the activation energy from ``x_init``; returns detached sponges like ``x_init`` (device, dtype).

    ``objective`` is ``"l2"`` (Σ post-ReLU²) or ``"l0"`` (Σ sigmoid(pre-activation / temperature));
    ``clamp`` keeps pixels in [0, 1]; ``epsilon`` optionally bounds ‖x − x_init‖∞ (stealthy sponges).
    The gradient is taken w.r.t. the input only (``torch.autograd.grad``), so no ``.grad`` is left
    on the parameters, and the attack works inside ``torch.no_grad()``. The sign step makes ``lr``
    a per-pixel step size, independent of the objective's scale.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {steps}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0; got {lr}")
    if epsilon is not None and epsilon < 0:
        raise ValueError(f"epsilon must be >= 0 or None; got {epsilon}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if not x_init.is_floating_point():
        raise ValueError(f"x_init must be a floating-point tensor; got {x_init.dtype}")
    out_device = x_init.device
    device, dtype = _model_device_dtype(model, x_init)
    x0 = x_init.detach().to(device=device, dtype=dtype)
    if clamp:
        x0 = x0.clamp(0.0, 1.0)
    x = x0.clone()
    with torch.enable_grad(), _eval_mode(model):
        for _ in range(steps):
            x.requires_grad_(True)
            score = _objective(_records(model, x), objective, temperature).sum()
            (grad,) = torch.autograd.grad(score, x)
            x = x.detach() + lr * grad.sign()
            if epsilon is not None:
                x = torch.min(torch.max(x, x0 - epsilon), x0 + epsilon)
            if clamp:
                x = x.clamp(0.0, 1.0)
    return x.detach().to(device=out_device, dtype=x_init.dtype)


def _paired_latency(model: nn.Module, a: torch.Tensor, b: torch.Tensor, repeats: int) -> Tuple[float, float]:
    """Median wall time in seconds of ``model(a)`` and ``model(b)``, interleaved over ``repeats`` rounds after a warm-up.

    Interleaving exposes both inputs to the same machine load (other processes, clock changes).
    """
    cuda = a.device.type == "cuda"
    times: Tuple[List[float], List[float]] = ([], [])
    with torch.no_grad():
        for i in range(repeats + 1):
            for x, out in ((a, times[0]), (b, times[1])):
                if cuda:
                    torch.cuda.synchronize(x.device)
                start = time.perf_counter()
                model(x)
                if cuda:
                    torch.cuda.synchronize(x.device)
                if i:  # round 0 is the warm-up
                    out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


@dataclass
class SpongeReport:
    """Mean activation energy/density of clean vs sponge inputs, their ratios, and median batch forward latency."""

    clean_energy: float
    sponge_energy: float
    energy_ratio: float
    clean_density: float
    sponge_density: float
    density_ratio: float
    clean_latency_s: float
    sponge_latency_s: float
    latency_ratio: float

    def to_dict(self) -> Dict[str, float]:
        """Plain dict for loggers."""
        return asdict(self)


def sponge_report(model: nn.Module, clean_x: torch.Tensor, sponge_x: torch.Tensor, repeats: int = 20) -> SpongeReport:
    """Compare sponge and clean batches: energy/density ratios (sponge / clean) and median forward latency.

    Latency: median of ``repeats`` interleaved whole-batch forwards (``time.perf_counter``,
    synchronising only on CUDA). Dense hardware has no zero-skipping, so latency barely
    depends on density there (Shumailov et al. target sparsity-exploiting accelerators).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    if clean_x.shape[1:] != sponge_x.shape[1:]:
        raise ValueError(f"clean_x and sponge_x must hold images of one shape; got {tuple(clean_x.shape)} and {tuple(sponge_x.shape)}")
    clean, sponge = activation_energy(model, clean_x), activation_energy(model, sponge_x)
    ce, se = clean["l2_energy"].mean().item(), sponge["l2_energy"].mean().item()
    cd, sd = clean["density"].mean().item(), sponge["density"].mean().item()
    device, dtype = _model_device_dtype(model, clean_x)
    with _eval_mode(model):
        cl, sl = _paired_latency(model, clean_x.to(device=device, dtype=dtype), sponge_x.to(device=device, dtype=dtype), repeats)
    ratio = lambda a, b: a / b if b > 0 else float("inf")  # noqa: E731
    return SpongeReport(ce, se, ratio(se, ce), cd, sd, ratio(sd, cd), cl, sl, ratio(sl, cl))
