"""A run-time precondition of the Opacus modes: convolutions see activations in the default memory format.

Opacus 1.6 computes a Conv2d's per-sample gradients from the unfolded input, and on an input in channels-last memory
(``x.contiguous(memory_format=torch.channels_last)``, or a net converted with ``.to(memory_format=...)``) they come out
silently wrong (``tests/test_dp_modes.py`` compares them with single-sample gradients). Wrong per-sample gradients mean
wrong clipping, so the run would not be private at the ε it reports. Memory format is a property of the tensors a
forward produces, not of the net, so it is checked where it happens: a forward pre-hook on each Conv2d, for as long as
an Opacus mode is installed. The book-keeping mode's norms are right on that layout (tested); the reference mode
(torch.func) differentiates each sample itself. Neither is guarded.
"""

from functools import partial
from typing import List

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from secure_ml.errors import ConfigError


def _refuse(name: str, module: nn.Module, inputs: tuple) -> None:
    x = inputs[0] if inputs else None
    if isinstance(x, Tensor) and x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        raise ConfigError(
            f"--model.net layer '{name}' ({type(module).__name__}) receives a channels-last tensor, for which Opacus computes wrong "
            "per-sample gradients; use --model.dp.backend bk or reference, or keep the net's activations in the default memory format"
        )


def refuse_channels_last(net: nn.Module) -> List[RemovableHandle]:
    """Forward pre-hooks on every Conv2d of ``net`` that raise a ConfigError on a channels-last input; remove them when done."""
    return [m.register_forward_pre_hook(partial(_refuse, name)) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
