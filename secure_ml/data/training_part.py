"""The training part before sanitization: the seeded draw, the clean validation hold-back, the label flips. Lightning-free.

:class:`secure_ml.data.MNISTDataModule` and the start-up prefetch (:mod:`secure_ml.prefetch`) both build
the sanitizer's input here, so they build the same tensors from the same settings.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from secure_ml.data.poisoning import PoisonConfig, flip_labels
from secure_ml.errors import ConfigError


def draw(pool: int, size: int, flag: str, seed: int) -> torch.Tensor:
    """``size`` distinct rows of ``range(pool)`` in a seeded random order; ConfigError naming ``--data.<flag>`` when ``size > pool``."""
    if size > pool:
        raise ConfigError(f"--data.{flag} ({size}) is larger than the {pool} digits available in that split")
    return torch.randperm(pool, generator=torch.Generator().manual_seed(seed))[:size]


@dataclass
class TrainingPart:
    """Rows of the training split: the validation hold-back, the training part, its (poisoned) labels and the flipped rows."""

    val_idx: torch.Tensor
    train_idx: torch.Tensor
    labels: torch.Tensor  # labels of train_idx after poisoning
    poisoned: Optional[torch.Tensor]  # rows of train_idx whose label was flipped; None without poisoning


def training_part(labels: torch.Tensor, train_size: int, val_size: int, seed: int, poison: PoisonConfig) -> TrainingPart:
    """Draw ``train_size`` rows (``seed``), hold the first ``val_size`` back, flip the rest's labels as ``poison`` says."""
    idx = draw(len(labels), train_size, "train_size", seed)
    val_idx, train_idx = idx[:val_size], idx[val_size:]
    y = labels[train_idx]
    if poison.rate == 0:
        return TrainingPart(val_idx, train_idx, y, None)
    gen = torch.Generator().manual_seed(poison.seed)
    y, poisoned = flip_labels(y, poison.rate, 10, poison.target_label, gen)
    return TrainingPart(val_idx, train_idx, y, poisoned)
