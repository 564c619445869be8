"""Book-keeping (BK) DP-SGD clipping (Bu et al. 2023, "fastDP"): per-sample norms and the clipped sum from ONE backward pass.

Pure torch, no Lightning. The API::

    clipper = BookKeepingClipper(net, max_grad_norm=C)          # refuses unsupported layers (ConfigError)
    with clipper.recording():                                    # forward hooks keep each layer's input
        per_sample_loss, logits = mixed_loss(net, x, y, x_adv, ratio)   # one or several forwards
    grads, norms = clipper.clipped_sum(per_sample_loss)          # [Σ_i c_i ∇ℓ_i per param], (B,) norms

or, for training, the optimizer wrapper (Opacus's stage names; noise and divisor as ``ReferenceDPOptimizer``)::

    opt = BookKeepingDPOptimizer(torch.optim.SGD(net.parameters(), lr=0.01), clipper, σ, expected_batch_size, generator)
    opt.step_hooks.append(lambda o: accountant.step(noise_multiplier=σ, sample_rate=q))
    with opt.recording():
        per_sample_loss, _ = mixed_loss(net, x, y, x_adv, ratio)
    opt.backward(per_sample_loss)     # = clip_and_accumulate: the clipped sum BEFORE noise, kept in opt.summed
    opt.step()                        # [all_reduce] → add_noise (σ·C) → scale_grad (÷ expected batch) → p.grad → hooks → step
    opt.zero_grad()

How: during ``recording()`` a forward hook on every Linear/Conv2d/GroupNorm/LayerNorm keeps the
layer's input ``a`` and a gradient edge to its output. ``clipped_sum`` runs one
``torch.autograd.grad(loss.sum(), <layer outputs>)`` — autograd then skips every weight-gradient
product — and, per layer, turns ``(a, g)`` into per-sample squared norms and a clipped sum
(:mod:`secure_ml.privacy.bookkeeping_layers`). Clip factors are Opacus's ``min(1, C/(‖∇ℓ_i‖ + 1e-6))``
on the flat norm over all parameters. Several forwards of the same samples (clean + adversarial)
are extra positions of one per-sample gradient: one row per person, clipped once, cross terms
included. Nothing is written to ``.grad`` or ``.grad_sample``; records are dropped after each
``clipped_sum`` and nothing is recorded outside ``recording()`` (e.g. an attack's forward).

Distributed (DDP): each rank calls ``backward``; set ``opt.all_reduce`` to an in-place SUM
all-reduce of a list of tensors and ``opt.noise_on_this_rank`` to ``rank == 0``, and pass the
*global* expected batch size: rank 0 adds the noise once, the sum of clipped sums is reduced, and
every rank divides alike. The net itself must not be wrapped in DDP's gradient all-reduce for these parameters.
"""

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from secure_ml.errors import ConfigError
from secure_ml.privacy.bookkeeping_layers import LAYERS
from secure_ml.privacy.reference import ReferenceDPOptimizer


def _check_net(net: nn.Module, flag: str) -> List[Tuple[str, nn.Module]]:
    """Supported layers holding trainable parameters; ConfigError naming the first layer that cannot be clipped."""
    layers, owner = [], {}
    for path, module in net.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        name = path or "(root)"
        if type(module) not in LAYERS or any(n not in ("weight", "bias") for n, _ in own):
            raise ConfigError(
                f"{flag}: layer '{name}' ({type(module).__name__}) has parameters the book-keeping backend cannot clip; "
                "use --model.dp.backend opacus"
            )
        for n, p in own:
            if id(p) in owner:
                raise ConfigError(
                    f"{flag}: parameter '{name}.{n}' is shared with layer '{owner[id(p)]}'; the book-keeping backend cannot clip "
                    "parameters shared between layers; use --model.dp.backend opacus"
                )
            owner[id(p)] = name
        layers.append((name, module))
    return layers


class BookKeepingClipper:
    """Per-sample clipping of ``net``'s gradient from one backward pass (see the module docstring).

    Args:
        net: a plain ``nn.Module``; every module with trainable parameters must be an ``nn.Linear``,
            ``nn.Conv2d``, ``nn.GroupNorm`` or ``nn.LayerNorm`` (exact types), and no parameter may be shared between two of them.
        max_grad_norm: C, the per-sample flat-norm bound.
        flag: the option named in refusals.
    """

    def __init__(self, net: nn.Module, max_grad_norm: float, flag: str = "--model.net"):
        if not max_grad_norm > 0:
            raise ConfigError(f"--model.dp.max_grad_norm must be > 0; got {max_grad_norm}")
        self.max_grad_norm = float(max_grad_norm)
        self.layers = _check_net(net, flag)
        # The trainable parameters, in net.parameters() order: clipped_sum's grads line up with this list.
        self.params: List[nn.Parameter] = [p for p in net.parameters() if p.requires_grad]
        self._slots: Dict[int, Tuple[int, str]] = {}  # id(param) -> (layer index, "weight" | "bias")
        for i, (_, module) in enumerate(self.layers):
            for n, p in module.named_parameters(recurse=False):
                if p.requires_grad:
                    self._slots[id(p)] = (i, n)
        self._recording = False
        self._records: List[List[Tuple[Tensor, object]]] = [[] for _ in self.layers]
        self._handles = [module.register_forward_hook(self._hook(i)) for i, (_, module) in enumerate(self.layers)]

    def _hook(self, index: int) -> Callable:
        def hook(module: nn.Module, inputs: Tuple[Tensor, ...], output: Tensor) -> None:
            if self._recording and isinstance(output, Tensor) and output.requires_grad:
                # The input (autograd keeps it anyway for the weight gradient) and an edge, not the output itself: its storage is freed.
                self._records[index].append((inputs[0].detach(), get_gradient_edge(output)))

        return hook

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record the layers' inputs for the next :meth:`clipped_sum` (any earlier, unused records are dropped)."""
        self.discard()
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    def discard(self) -> None:
        """Drop all records (frees the activations they hold)."""
        self._records = [[] for _ in self.layers]

    @property
    def recorded_calls(self) -> int:
        return sum(len(r) for r in self._records)

    def clipped_sum(self, per_sample_loss: Tensor) -> Tuple[List[Tensor], Tensor]:
        """``([Σ_i c_i ∇_p ℓ_i for p in params], norms)`` for a ``(B,)`` loss built inside :meth:`recording`.

        ``norms[i]`` is sample i's gradient norm over all trainable parameters before clipping and
        ``c_i = min(1, C / (norms[i] + 1e-6))``. ``B = 0`` gives zero sums and an empty ``norms``.
        """
        records, self._records = self._records, [[] for _ in self.layers]
        if per_sample_loss.dim() != 1:
            raise ValueError(f"clipped_sum needs a (B,) per-sample loss; got shape {tuple(per_sample_loss.shape)}")
        b = per_sample_loss.shape[0]
        if b == 0:
            return [torch.zeros_like(p) for p in self.params], per_sample_loss.new_zeros(0)
        flat = [(i, a) for i, calls in enumerate(records) for a, _ in calls]
        if not flat:
            raise RuntimeError("clipped_sum: no layer was recorded; run the forward(s) inside clipper.recording()")
        if any(a.shape[0] != b for _, a in flat):
            raise ValueError(f"clipped_sum: a recorded forward has a batch size other than the loss's {b}")
        outs = torch.autograd.grad(per_sample_loss.sum(), [e for calls in records for _, e in calls], allow_unused=True)
        calls_of: List[List[Tuple[Tensor, Tensor]]] = [[] for _ in self.layers]
        for (i, a), g in zip(flat, outs):
            if g is not None:  # None: that output did not reach the loss
                calls_of[i].append((a, g))
        del records, flat, outs
        with torch.no_grad():
            sq = per_sample_loss.new_zeros(b)
            clips = []
            for i, (_, module) in enumerate(self.layers):
                calls, calls_of[i] = calls_of[i], None  # the clip closure keeps only what it needs
                layer_sq, clip = LAYERS[type(module)](module, calls) if calls else (0.0, None)
                del calls
                sq = sq + layer_sq
                clips.append(clip)
            norms = sq.sqrt()
            factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            summed = [clip(factor) if clip is not None else {} for clip in clips]
        grads = []
        for p in self.params:
            i, name = self._slots[id(p)]
            grads.append(summed[i][name].view_as(p) if name in summed[i] else torch.zeros_like(p))
        return grads, norms

    def close(self) -> None:
        """Remove the hooks (the clipper cannot be used afterwards)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.discard()


class BookKeepingDPOptimizer(ReferenceDPOptimizer):
    """DP optimizer over a :class:`BookKeepingClipper`: ``backward`` (clip_and_accumulate) → ``step`` ([all_reduce] → add_noise → scale_grad).

    Noise and scaling are :class:`ReferenceDPOptimizer`'s ``add_noise``/``scale_grad`` done in place (noise
    std σ·C on the sum, division by the *expected* batch size; the same values, tested); ``step_hooks`` as
    there. ``opt.summed`` holds the clipped sum before noise (``step`` then reuses its storage for
    ``p.grad``), ``opt.last_norms`` the last per-sample norms.

    Args:
        optimizer: the optimizer over (a superset of) the clipper's parameters.
        clipper: the clipper attached to the net.
        noise_multiplier: σ.
        expected_batch_size: N·q (global, under DDP).
        generator: the noise generator, on the parameters' device.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        clipper: BookKeepingClipper,
        noise_multiplier: float,
        expected_batch_size: float,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__(optimizer, noise_multiplier, clipper.max_grad_norm, expected_batch_size, generator)
        self.clipper = clipper
        self.all_reduce: Optional[Callable[[List[Tensor]], None]] = None  # in-place SUM across ranks
        self.noise_on_this_rank = True
        self.summed: Optional[List[Tensor]] = None
        self.last_norms: Optional[Tensor] = None

    def recording(self):
        return self.clipper.recording()

    def clip_and_accumulate(self, per_sample_loss: Tensor) -> List[Tensor]:  # type: ignore[override]
        """The clipped sum before noise, one tensor per ``clipper.params`` entry (the BK stage: no per-sample gradients needed)."""
        self.summed, self.last_norms = self.clipper.clipped_sum(per_sample_loss)
        return self.summed

    backward = clip_and_accumulate

    def add_noise_(self, summed: List[Tensor]) -> List[Tensor]:
        """:meth:`add_noise` in place (the same noise stream and values; no extra copy of the gradient)."""
        std = self.noise_multiplier * self.max_grad_norm
        if std and summed:
            noise = [torch.normal(0.0, std, s.shape, device=s.device, dtype=s.dtype, generator=self.generator) for s in summed]
            torch._foreach_add_(summed, noise)
        return summed

    def scale_grad_(self, noised: List[Tensor]) -> List[Tensor]:
        """:meth:`scale_grad` in place: divide by the expected batch size."""
        if noised:
            torch._foreach_div_(noised, self.expected_batch_size)
        return noised

    def pre_step(self) -> None:
        if self.summed is None:
            raise RuntimeError("BookKeepingDPOptimizer.step() needs backward(per_sample_loss) first")
        summed, self.summed = self.summed, None
        if self.noise_on_this_rank:
            self.add_noise_(summed)
        if self.all_reduce is not None:
            self.all_reduce(summed)
        self.scale_grad_(summed)
        slot = {id(p): k for k, p in enumerate(self.clipper.params)}
        for p in self.params:
            if id(p) in slot:
                p.grad = summed[slot[id(p)]].to(p.dtype).contiguous()  # default format, also for a channels-last weight
        for hook in self.step_hooks:
            hook(self)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.summed = None
        self.clipper.discard()
        self.original_optimizer.zero_grad(set_to_none)

    def __repr__(self) -> str:
        return f"BookKeepingDPOptimizer({self.original_optimizer!r})"
