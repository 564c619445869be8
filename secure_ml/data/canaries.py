"""Canaries for the one-run privacy audit (:mod:`secure_ml.privacy.one_run_audit`). Torch only.

``count`` canaries are generated from a seed; each joins the training set independently with
probability 1/2 (the coin is drawn from the same seeded generator, never from the global one).
They are added *after* sanitization, so they are ordinary DP-covered training records: counted in N
and in the Poisson sample rate, clipped and noised like every digit. The audit therefore measures
DP training, not the sanitizer (which could otherwise drop them).

Kinds (all labels uniformly random, so only memorisation can fit them):

* ``border`` — blank images whose ink is a random 30% of the 4-pixel frame around the 20×20 box in
  which every MNIST digit is centred: a direction the real digits never use, so an included canary's
  gradient does not compete with the data (the idea of Jagielski et al.'s ClipBKD, 2020);
* ``noise`` — uniform noise images (out of distribution, but all alike, hence harder to memorise).

The seed is secret by default (a fresh ``secrets`` draw per run, shared by every process of a
distributed run); the audit callback keeps it in the checkpoint so ``secure-ml test`` can rebuild the
same canaries and coins. The datamodule's keyed split check covers them too (seed, count, kind and coins), and the datamodule keeps
them in its checkpoint state, so a secret-seed run's canaries come back in ``test`` and a resumed ``fit``.
"""

import secrets
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import torch
from torch.utils.data import TensorDataset

from secure_ml.errors import ConfigError, check_seed

KINDS = ("border", "noise")
CANARY_SEED_MAX = 2**63 - 1  # torch generators take it; the secret default is a 62-bit draw
FRAME = 4  # MNIST digits sit in the central 20x20 box of the 28x28 image
FRAME_INK = 0.3


@dataclass
class CanaryConfig:
    """One-run audit canaries (off unless ``count`` > 0).

    Args:
        count: m, the number of canaries; each is added to the training set with probability 1/2 (0: no audit).
        kind: ``border`` (ink only in the frame real digits leave blank; easy to audit) or ``noise`` (uniform noise).
        seed: seed of the canaries and of their coins; null (default) draws a secret one per run (kept in the checkpoint).
    """

    count: int = 0
    kind: Literal["border", "noise"] = "border"
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        check_seed(self.seed, "--data.canaries.seed", CANARY_SEED_MAX)
        if self.count < 0:
            raise ConfigError(f"--data.canaries.count must be >= 0; got {self.count}")
        if self.kind not in KINDS:
            raise ConfigError(f"--data.canaries.kind must be one of {', '.join(KINDS)}; got '{self.kind}'")


@dataclass
class CanarySet:
    """All m canaries (``x``, ``y``), their coins ``included`` and the seed; included ones are training rows ``first_row`` onwards."""

    x: torch.Tensor
    y: torch.Tensor
    included: torch.Tensor
    seed: int
    kind: str
    first_row: int


def make_canaries(count: int, kind: str, seed: int, n_classes: int = 10) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, included)`` for ``count`` 28×28 canaries of ``kind``, all drawn from one generator seeded ``seed``."""
    if kind not in KINDS:
        raise ValueError(f"unknown canary kind '{kind}'; use one of {KINDS}")
    g = torch.Generator().manual_seed(seed)
    if kind == "border":
        frame = torch.ones(28, 28, dtype=torch.bool)
        frame[FRAME:-FRAME, FRAME:-FRAME] = False
        x = torch.zeros(count, 1, 28, 28)
        x[:, 0, frame] = (torch.rand(count, int(frame.sum()), generator=g) < FRAME_INK).float()
    else:
        x = torch.rand(count, 1, 28, 28, generator=g)
    y = torch.randint(0, n_classes, (count,), generator=g)
    included = torch.rand(count, generator=g) < 0.5
    return x, y, included


def _secret_seed() -> int:
    """A fresh secret seed, the same on every process of an initialised process group (rank 0's)."""
    seed = [secrets.randbits(62)]  # within CANARY_SEED_MAX
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.broadcast_object_list(seed, src=0)
    return int(seed[0])


def with_canaries(train: TensorDataset, cfg: CanaryConfig, n_classes: int = 10) -> Tuple[TensorDataset, Optional[CanarySet]]:
    """``train`` with the included canaries appended (unchanged, and None, when ``cfg.count`` is 0)."""
    if cfg.count == 0:
        return train, None
    x_train, y_train = train.tensors
    seed = cfg.seed if cfg.seed is not None else _secret_seed()
    x, y, included = make_canaries(cfg.count, cfg.kind, seed, n_classes)
    canaries = CanarySet(x, y, included, seed, cfg.kind, first_row=len(y_train))
    x_all = torch.cat([x_train, x[included].to(x_train.dtype)])
    y_all = torch.cat([y_train, y[included].to(y_train.dtype)])
    return TensorDataset(x_all, y_all), canaries


def without_canaries(datamodule, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The training rows that are not canaries (all of them when the datamodule inserted none)."""
    canaries = getattr(datamodule, "canary_set", None)
    return (x, y) if canaries is None else (x[: canaries.first_row], y[: canaries.first_row])
