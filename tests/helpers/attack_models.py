"""Small models for the evaluation tests: a trained undefended classifier and a gradient-masked one (synthetic digits)."""

import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers.data import synthetic_digits


def synthetic_tensors(n: int, seed: int):
    """``(x, y)``: :func:`synthetic_digits` as float pixels in [0, 1] and long labels."""
    images, labels = synthetic_digits(n, seed)
    return torch.from_numpy(images).float().div(255).unsqueeze(1), torch.from_numpy(labels).long()


class Quantised(nn.Module):
    """A classifier behind a non-differentiable first layer: pixels rounded to {0, 1} (``torch.round`` has zero gradient).

    Gradient attacks see a zero gradient everywhere and make no progress, although a black-box
    search flips pixels across 0.5 easily: the textbook case of gradient masking.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150, lr: float = 0.05, seed: int = 0) -> nn.Module:
    """Full-batch Adam on cross-entropy; returns the model in eval mode with no gradients left."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def linear_classifier(quantised: bool = False, seed: int = 0):
    """A linear classifier on 600 synthetic digits (behind the rounding layer when ``quantised``), and 64 test digits."""
    x, y = synthetic_tensors(600, seed)
    torch.manual_seed(seed)
    inner = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    model = Quantised(inner) if quantised else inner
    if quantised:
        train(inner, torch.round(x), y)
    else:
        train(model, x, y)
    xt, yt = synthetic_tensors(64, seed + 1)
    return model, xt, yt
