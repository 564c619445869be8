"""A probe of a net before training: does it map the digits to one logit per class? (Lightning-free)"""

from typing import List

import torch
from torch import nn

from secure_ml.errors import ConfigError, first_line

NUM_CLASSES = 10  # the digits' labels 0..9


def digit_shape(datamodule) -> tuple:
    """One image's shape in the datamodule's data (1x28x28 when there is none to look at)."""
    for name in ("val_dataset", "test_dataset", "train_dataset"):
        ds = getattr(datamodule, name, None)
        if hasattr(ds, "tensors") and len(ds.tensors[0]):
            return tuple(ds.tensors[0].shape[1:])
    return (1, 28, 28)


def check_net_output(net: nn.Module, shape: tuple, num_classes: int) -> None:
    """One ConfigError naming ``--model.net`` unless ``net`` maps a ``(1, *shape)`` batch to ``(1, num_classes)`` logits.

    A probe forward of one zero image without gradients, in eval mode (no batch-norm statistics move), before any
    training: a net that does not fit the digits would otherwise die in the first batch with torch's message.
    """
    name = type(net).__name__
    param = next(net.parameters(), None)
    probe = torch.zeros((1, *shape), device=param.device if param is not None else None)
    flags = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        with torch.no_grad():
            out = net(probe)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = first_line(exc)
        raise ConfigError(f"--model.net: {name} cannot take a batch of {'x'.join(map(str, shape))} digits ({first})") from None
    finally:
        for m, training in flags:
            m.training = training
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"--model.net: {name} returns a {type(out).__name__}; it must return one tensor of logits")
    if tuple(out.shape) != (1, num_classes):
        raise ConfigError(
            f"--model.net: {name} maps a batch of one {'x'.join(map(str, shape))} digit to shape {tuple(out.shape)}; "
            f"it must give (1, {num_classes}): one logit per class"
        )
    if not torch.isfinite(out).all():  # e.g. a normalisation that divides by 0: every step would train NaN weights
        raise ConfigError(
            f"--model.net: {name} gives non-finite logits ({out.flatten().tolist()[:3]}...) for a blank digit; check its init_args"
        )


def nonfinite_parameters(net: nn.Module) -> List[str]:
    """Names of ``net``'s parameters holding a NaN or an infinity (run after every training step: one sync, ~70 µs for SmallCNN).

    Fast path: a NaN or an infinity anywhere makes its tensor's sum non-finite, so finite sums clear every tensor; only
    a non-finite sum (or a finite tensor whose sum overflows) pays the element-wise check, which names the culprits.
    """
    named = list(net.named_parameters())
    if not named:
        return []
    with torch.no_grad():
        if torch.isfinite(torch.stack([p.sum() for _, p in named])).all():
            return []
        finite = torch.stack([torch.isfinite(p).all() for _, p in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


def describe_nonfinite(names: List[str]) -> str:
    """``"conv1.weight"`` or ``"conv1.weight and 3 more parameters"``."""
    return names[0] + (f" and {len(names) - 1} more parameter{'s' if len(names) > 2 else ''}" if len(names) > 1 else "")
