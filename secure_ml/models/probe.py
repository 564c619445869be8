"""A probe of a net before training: does it map the digits to one logit per class? (Lightning-free)"""

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
