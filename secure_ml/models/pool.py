"""2x2 max-pooling whose gradient-free forward is two elementwise maxima.

Why not ``nn.MaxPool2d`` alone: on the CPU, ``torch.max_pool2d`` computes the argmax indices even when
nothing will differentiate through them, and for a 2x2 window that is ~6x slower than
``torch.maximum`` of shifted views (``benchmarks/callback_share.py``: pooling was 20–30% of the
scorecard callbacks' time, whose forwards mostly run without gradients). When autograd records the
call (training, attacks, per-sample gradients) this is ``nn.MaxPool2d``'s own kernel, so gradients
and Opacus are unchanged; without gradients the values are the same numbers (a maximum is exact, NaN
propagates in both), checked in ``tests/test_models.py``.
"""

import torch
from torch import nn


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with a fast path for a 2x2 window, stride 1 or 2, no padding, when no gradient is recorded."""

    def __init__(self, kernel_size: int = 2, stride: int = 2):
        super().__init__(kernel_size, stride)
        self._fast = kernel_size in (2, (2, 2)) and stride in (1, 2, (1, 1), (2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast or x.dim() != 4 or min(x.shape[-2:]) < 2 or (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        s = self.stride if isinstance(self.stride, int) else self.stride[0]
        h, w = x.shape[-2:]
        if s == 2:  # floor mode: an odd last row/column is dropped, as max_pool2d does
            x = x[..., : h - h % 2, : w - w % 2]
            rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
            return torch.maximum(rows[..., 0::2], rows[..., 1::2])
        rows = torch.maximum(x[..., :-1, :], x[..., 1:, :])
        return torch.maximum(rows[..., :-1], rows[..., 1:])
