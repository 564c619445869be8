"""Reference DP-SGD: per-sample gradients with ``torch.func`` and a clipper shaped like Opacus's DPOptimizer.

The seed notebook looped over samples in Python and clipped each parameter tensor on
its own, so a sample's total norm could reach sqrt(#tensors)·C. Here the per-sample
gradient is computed for the whole batch at once (``vmap(grad(...))``) and clipped on its
flat norm across *all* parameters, with Opacus's constants: factor
``min(1, C / (‖g‖ + 1e-6))``, noise std ``σ·C`` on the sum, division by the *expected*
batch size. Tests check it against Opacus to 1e-5.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap


def per_sample_gradients(
    model: nn.Module,
    sample_loss: Callable[..., Tuple[torch.Tensor, Any]],
    *batch: torch.Tensor,
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, Any]:
    """Per-sample gradients of ``sample_loss``, vectorised over the batch with ``torch.func``.

    ``sample_loss(forward, *sample)`` receives ``forward`` (the model as a function of a
    batch) and one sample of each tensor in ``batch`` (leading dimension removed) and
    returns ``(scalar loss, aux)``. Returns ``({name: (B, *param.shape)}, losses (B,),
    stacked aux)``. ``model`` must not carry Opacus hooks.
    """
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(p: Dict[str, torch.Tensor], *sample: torch.Tensor):
        def forward(x: torch.Tensor) -> torch.Tensor:
            return functional_call(model, (p, buffers), (x,))

        return sample_loss(forward, *sample)

    if len(batch[0]) == 0:
        grads = {k: torch.zeros((0, *v.shape), dtype=v.dtype, device=v.device) for k, v in params.items()}
        return grads, batch[0].new_zeros(0), None
    grads, (losses, aux) = vmap(grad_and_value(loss_one, has_aux=True), in_dims=(None,) + (0,) * len(batch))(params, *batch)
    return grads, losses, aux


class ReferenceDPOptimizer(torch.optim.Optimizer):
    """Wraps an optimizer like ``opacus.optimizers.DPOptimizer``, but is fed per-sample gradients explicitly.

    ``set_grad_samples(per_sample_grads)`` then ``step()`` runs the same named stages as Opacus:
    ``clip_and_accumulate`` → ``add_noise`` → ``scale_grad``, then the wrapped optimizer's step.
    ``step_hooks`` (for example an Opacus accountant's ``step``) are called once per noisy step.
    The ``reference`` step mode (:func:`secure_ml.privacy.steps.reference_step`) feeds it.

    Args:
        optimizer: the optimizer over the model's parameters.
        noise_multiplier: σ.
        max_grad_norm: C.
        expected_batch_size: N·q, the divisor of the noisy sum (Opacus's ``loss_reduction="mean"``).
        generator: generator for the noise, on the parameters' device.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        generator: Optional[torch.Generator] = None,
    ):
        # Deliberately no super().__init__: like Opacus's DPOptimizer, state lives in the wrapped optimizer.
        self.original_optimizer = optimizer
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.generator = generator
        self.step_hooks: List[Callable[[ReferenceDPOptimizer], None]] = []
        self._grad_samples: Optional[Sequence[torch.Tensor]] = None

    @property
    def params(self) -> List[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    @property
    def param_groups(self) -> List[dict]:
        return self.original_optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: List[dict]) -> None:
        self.original_optimizer.param_groups = value

    @property
    def state(self):
        return self.original_optimizer.state

    @property
    def defaults(self) -> dict:
        return self.original_optimizer.defaults

    def set_grad_samples(self, grad_samples: Sequence[torch.Tensor]) -> None:
        """Per-sample gradients, one ``(B, *p.shape)`` tensor per entry of ``params``, in order."""
        self._grad_samples = grad_samples

    def clip_and_accumulate(self, grad_samples: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Sum of per-sample gradients, each clipped to ``max_grad_norm`` on its flat norm over all parameters."""
        n = len(grad_samples[0])
        if n == 0:
            return [torch.zeros(g.shape[1:], dtype=g.dtype, device=g.device) for g in grad_samples]
        flat_norms = torch.stack([g.reshape(n, -1).norm(2, dim=1) for g in grad_samples], dim=1).norm(2, dim=1)
        factor = (self.max_grad_norm / (flat_norms + 1e-6)).clamp(max=1.0)
        return [torch.einsum("i,i...", factor, g) for g in grad_samples]

    def add_noise(self, summed: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Add N(0, (σ·C)²) noise to each summed gradient."""
        std = self.noise_multiplier * self.max_grad_norm
        if std == 0:
            return list(summed)
        return [s + torch.normal(0.0, std, s.shape, device=s.device, dtype=s.dtype, generator=self.generator) for s in summed]

    def scale_grad(self, noised: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Divide by the expected batch size (not the realised one: that would leak it)."""
        return [g / self.expected_batch_size for g in noised]

    def pre_step(self) -> None:
        if self._grad_samples is None:
            raise RuntimeError("ReferenceDPOptimizer.step() needs set_grad_samples() first")
        grads = self.scale_grad(self.add_noise(self.clip_and_accumulate(self._grad_samples)))
        for p, g in zip(self.params, grads):
            p.grad = g.view_as(p).to(p.dtype)
        self._grad_samples = None
        for hook in self.step_hooks:
            hook(self)

    def step(self, closure: Optional[Callable[[], float]] = None):
        if closure is not None:
            with torch.enable_grad():
                closure()
        self.pre_step()
        return self.original_optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._grad_samples = None
        self.original_optimizer.zero_grad(set_to_none)

    def state_dict(self):
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.original_optimizer.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"ReferenceDPOptimizer({self.original_optimizer!r})"
