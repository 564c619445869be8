"""A small tempered-sigmoid CNN for DP-SGD (Papernot et al. 2021; the MNIST net of Tramèr & Boneh 2021)."""

import torch
from torch import nn

from secure_ml.errors import ConfigError
from secure_ml.models.pool import MaxPool2d
from secure_ml.models.small_cnn import MNIST_MEAN, MNIST_STD, check_size, normalisation

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class TanhCNN(nn.Module):
    """conv(1→c1, 8x8, stride 2, pad 2) → act → maxpool(2, stride 1) → conv(c1→c2, 4x4, stride 2) → act →
    maxpool(2, stride 1) → fc(16·c2→hidden) → act → fc(hidden→num_classes).

    With the defaults it has 26,010 parameters (SmallCNN: 206,922): DP noise grows with the parameter
    count, and bounded (tanh) activations keep clipped gradients informative (Papernot et al.).
    Like SmallCNN it takes pixel-space inputs in [0, 1] and normalises them first; no buffers and
    no in-place ops, so Opacus can compute per-sample gradients.

    Args:
        num_classes: number of output logits.
        conv1_channels: channels of the first convolution.
        conv2_channels: channels of the second convolution.
        hidden: width of the hidden fully connected layer.
        activation: ``tanh`` (tempered sigmoid) or ``relu``.
        mean: pixel mean subtracted before the first convolution.
        std: pixel standard deviation divided out before the first convolution.
    """

    def __init__(
        self,
        num_classes: int = 10,
        conv1_channels: int = 16,
        conv2_channels: int = 32,
        hidden: int = 32,
        activation: str = "tanh",
        mean: float = MNIST_MEAN,
        std: float = MNIST_STD,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"--model.net.init_args.activation (TanhCNN) must be one of {', '.join(ACTIVATIONS)}; got '{activation}'")
        for name, value in (
            ("num_classes", num_classes),
            ("conv1_channels", conv1_channels),
            ("conv2_channels", conv2_channels),
            ("hidden", hidden),
        ):
            if int(value) < 1:
                raise ConfigError(f"--model.net.init_args.{name} (TanhCNN) must be >= 1; got {value}")
        c1, c2, h, k = (int(v) for v in (conv1_channels, conv2_channels, hidden, num_classes))
        check_size("TanhCNN", 65 * c1 + (16 * c1 + 1) * c2 + (16 * c2 + 1) * h + (h + 1) * k)
        self.num_classes, self.conv1_channels, self.conv2_channels, self.hidden = (
            int(num_classes),
            int(conv1_channels),
            int(conv2_channels),
            int(hidden),
        )
        self.activation = activation
        self.mean, self.std = normalisation("TanhCNN", mean, std)
        act = ACTIVATIONS[activation]
        self.features = nn.Sequential(
            nn.Conv2d(1, self.conv1_channels, 8, stride=2, padding=2),
            act(),
            MaxPool2d(2, 1),
            nn.Conv2d(self.conv1_channels, self.conv2_channels, 4, stride=2),
            act(),
            MaxPool2d(2, 1),
        )
        self.classifier = nn.Sequential(nn.Linear(self.conv2_channels * 16, self.hidden), act(), nn.Linear(self.hidden, self.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.classifier(torch.flatten(self.features(x), 1))
