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
from typing import Iterator, List, Optional, Set

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize


def _restrided(w: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """A copy with ``memory_format``'s strides even when ``w`` is already contiguous in it too (one input channel: ``.contiguous``
    would return ``w`` itself, whose strides torch's convolution reads as the default format)."""
    return torch.empty_like(w, memory_format=memory_format).copy_(w)


_ACTIVE: Set[int] = set()  # ids of the weights an enclosing block converted (alive until it restores them): nested blocks leave them


def _convertible(m: nn.Module) -> Optional[nn.Parameter]:
    """The Conv2d's own weight Parameter when converting it is meaningful: not lazy, not computed by a parametrization."""
    if not isinstance(m, nn.Conv2d) or parametrize.is_parametrized(m, "weight"):
        return None
    w = m._parameters.get("weight")
    if not isinstance(w, nn.Parameter) or is_lazy(w) or id(w) in _ACTIVE or w.dim() != 4 or not w.is_contiguous():
        return None
    return w


@contextmanager
def channels_last(net: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, every ``nn.Conv2d`` weight of ``net`` in the default format is channels-last; restored on exit.

    Skipped: lazy (uninitialised) weights, weights computed by ``torch.nn.utils.parametrize`` (reading them would run the
    parametrization), and weights an enclosing block already converted. The new tensors are made outside inference mode,
    so a block entered under ``torch.inference_mode`` does not leave inference tensors behind.
    """
    converted: List[nn.Parameter] = []
    try:
        if enabled:
            with torch.inference_mode(False), torch.no_grad():
                for m in net.modules():
                    w = _convertible(m)
                    if w is not None:
                        w.data = _restrided(w.data, torch.channels_last)
                        converted.append(w)
                        _ACTIVE.add(id(w))
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for w in converted:
                w.data = _restrided(w.data, torch.contiguous_format)
                _ACTIVE.discard(id(w))
