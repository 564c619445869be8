"""Label-flipping poisoning (the seed's attack), returning the ground-truth poisoned indices."""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from secure_ml.errors import TORCH_SEED_MAX, ConfigError, check_seed


@dataclass
class PoisonConfig:
    """Label-flip poisoning of the training split.

    Args:
        rate: share of training samples whose label is flipped, in [0, 1].
        target_label: flip every chosen sample to this class (the seed: 0); null flips each to a random other class.
        seed: seed of the generator that picks the samples and the random classes.
    """

    rate: float = 0.0
    target_label: Optional[int] = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_seed(self.seed, "--data.poison.seed", TORCH_SEED_MAX)
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"--data.poison.rate must be in [0, 1]; got {self.rate}")
        if self.target_label is not None and self.target_label < 0:
            raise ConfigError(f"--data.poison.target_label must be a class index >= 0 or null; got {self.target_label}")


def flip_labels(
    labels: torch.Tensor,
    rate: float,
    num_classes: int = 10,
    target_label: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flip ``int(rate * len(labels))`` labels; return ``(new_labels, poisoned_indices)``.

    With a ``target_label`` only samples of another class are candidates, so every
    poisoned sample really carries a wrong label and the count is exact (the seed also
    "flipped" samples already in the target class). Without one, each chosen label moves
    to a uniformly random *other* class. ``poisoned_indices`` is sorted.
    """
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"poison rate must be in [0, 1]; got {rate}")
    if target_label is not None and not 0 <= target_label < num_classes:
        raise ConfigError(f"--data.poison.target_label must be in [0, {num_classes - 1}]; got {target_label}")
    n_poison = int(rate * len(labels))
    candidates = torch.arange(len(labels))
    if target_label is not None:
        candidates = candidates[labels != target_label]
    if n_poison > len(candidates):
        raise ConfigError(
            f"--data.poison.rate {rate} asks for {n_poison} flips but only {len(candidates)} "
            f"samples are not already of class {target_label}"
        )
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:n_poison]]
    chosen, _ = torch.sort(chosen)
    new = labels.clone()
    if target_label is not None:
        new[chosen] = target_label
    else:
        shift = torch.randint(1, num_classes, (n_poison,), generator=generator)
        new[chosen] = (labels[chosen] + shift) % num_classes
    return new, chosen
