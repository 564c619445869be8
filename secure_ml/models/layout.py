"""A net's convolution weights in channels-last memory for the length of a block (the scorecard's attacks, RMIA's reference models).

On the CPU, ``torch.max_pool2d_with_indices`` — the pooling kernel whenever autograd records the call, as in every
attack and training step — is several times slower on default-format (NCHW) activations than on channels-last ones,
and convolutions whose weight is channels-last produce channels-last activations. Measured on the 2-core CPU
(``python benchmarks/channels_last.py --data-dir ../shared/data``): SmallCNN's plain+FGSM step 1.40× faster and the
book-keeping DP step 1.25× faster in channels-last. The fit itself keeps the default format: the book-keeping
clipper gains less there than a plain step, so its cost over a plain step would exceed issue 10's 1.25× (README,
Known limits). The values are the same numbers up to float rounding (a convolution's sums run in another order).

The conversion is in place (``p.data``, as ``nn.Module.to`` does): the same ``Parameter`` objects, so optimizers and
hooks keep their references, and on exit each weight converted goes back to the default format with its current
values. Not for the Opacus modes: their guard (:mod:`secure_ml.privacy.layout`) refuses channels-last activations.
"""

from contextlib import contextmanager
from typing import Iterator, List

import torch
from torch import nn


def _restrided(w: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """A copy with ``memory_format``'s strides even when ``w`` is already contiguous in it too (one input channel: ``.contiguous``
    would return ``w`` itself, whose strides torch's convolution reads as the default format)."""
    return torch.empty_like(w, memory_format=memory_format).copy_(w)


@contextmanager
def channels_last(net: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, every ``nn.Conv2d`` weight of ``net`` in the default format is channels-last; restored on exit."""
    converted: List[nn.Parameter] = []
    if enabled:
        for m in net.modules():
            w = getattr(m, "weight", None) if isinstance(m, nn.Conv2d) else None
            if isinstance(w, torch.Tensor) and w.dim() == 4 and w.is_contiguous():
                with torch.no_grad():
                    w.data = _restrided(w.data, torch.channels_last)
                converted.append(w)
    try:
        yield
    finally:
        with torch.no_grad():
            for w in converted:
                w.data = _restrided(w.data, torch.contiguous_format)
