"""The seed notebook's SmallCNN, taking pixel-space inputs in [0, 1]."""

import torch
from torch import nn

from secure_ml.errors import ConfigError
from secure_ml.models.pool import MaxPool2d

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def normalisation(net: str, mean: float, std: float) -> tuple:
    """``(mean, std)`` as floats; ConfigError naming the flag unless both are finite and std > 0 (std 0 trains NaN weights)."""
    mean, std = float(mean), float(std)
    if not -float("inf") < mean < float("inf"):
        raise ConfigError(f"--model.net.init_args.mean ({net}) must be a finite number; got {mean}")
    if not 0 < std < float("inf"):
        raise ConfigError(f"--model.net.init_args.std ({net}) must be a finite number > 0; got {std}")
    return mean, std


MAX_PARAMETERS = 10**9  # 4 GB of float32 weights before gradients and optimizer state: a typo on MNIST-sized digits


def check_size(net: str, parameters: int) -> None:
    """ConfigError naming the flags when widths would give more than MAX_PARAMETERS (else torch's allocation error inside
    jsonargparse reached the user as "Does not validate against any of the Union subtypes")."""
    if parameters > MAX_PARAMETERS:
        raise ConfigError(
            f"--model.net.init_args ({net}) would have {parameters:,} parameters ({4 * parameters / 2**30:,.0f} GiB of float32 "
            f"weights), over the limit of {MAX_PARAMETERS:,}: lower its widths or num_classes"
        )


class SmallCNN(nn.Module):
    """conv(1→16, 3x3, pad 1) → ReLU → maxpool → conv(16→32) → ReLU → maxpool → fc(1568→128) → ReLU → fc(128→10).

    The MNIST normalisation is the first operation of ``forward``, so callers (attacks,
    the inference service) work in pixel space ``[0, 1]``. The constants are plain
    floats, not buffers: Opacus's strict validator rejects modules with buffers, and
    the ReLUs are out-of-place for the same reason (in-place ops break its hooks).

    Args:
        num_classes: number of output logits.
        mean: pixel mean subtracted before the first convolution.
        std: pixel standard deviation divided out before the first convolution.
    """

    def __init__(self, num_classes: int = 10, mean: float = MNIST_MEAN, std: float = MNIST_STD):
        super().__init__()
        self.num_classes = int(num_classes)
        if self.num_classes < 1:  # nn.Linear's own error reached the CLI as "Does not validate against any of the Union subtypes"
            raise ConfigError(f"--model.net.init_args.num_classes (SmallCNN) must be >= 1; got {num_classes}")
        check_size("SmallCNN", 206_922 + 129 * (self.num_classes - 10))
        self.mean, self.std = normalisation("SmallCNN", mean, std)
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = MaxPool2d(2, 2)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)
