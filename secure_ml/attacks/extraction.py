"""Model extraction: steal a copy of a classifier through its label oracle (Papernot et al., 2017).

The attacker starts from a few real digits (``seeds``), asks the victim for their labels, trains a fresh
copy (a SmallCNN) on what it got, and grows its query set by Jacobian-based augmentation:
``clip(x + lam * sign(d copy(x)[label] / dx))`` for every known ``x`` ("Practical Black-Box Attacks
against Machine Learning", AsiaCCS 2017); the set doubles per round until the query budget is spent.
``mode="noise"`` adds Gaussian noise around the known points instead (a cruder baseline).

The victim is any ``oracle(x) -> Answer`` (one image in, one answer out): the HTTP client of
``secure-ml extract`` (:mod:`secure_ml.tools.extract`) in practice, the model itself in a test. An answer
is a label, a refusal (the defender detected the attack: the loop stops) or an invalid-input rejection
(the input policy refused the query: it is counted and skipped). Seeds are explicit: the same call
gives the same copy.
"""

from dataclasses import dataclass
from typing import Callable, List, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from secure_ml.models import SmallCNN


@dataclass
class Answer:
    """The victim's reply to one query: a ``label``, or ``refused`` (detected), or ``invalid`` (input policy)."""

    label: Optional[int] = None
    refused: bool = False
    invalid: bool = False


Oracle = Callable[[torch.Tensor], Optional[Answer]]  # None: the attacker is out of time


@dataclass
class Stolen:
    """What the attacker holds after :func:`steal`: its labelled queries and how the victim answered."""

    x: torch.Tensor
    y: torch.Tensor
    sent: int
    invalid: int
    refused_at: Optional[int]  # the number of queries sent when the first refusal came; None: never refused


def train_copy(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    """A fresh SmallCNN trained with Adam on ``(x, y)`` (batches of 64, ``epochs`` passes), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs if len(x) else 0):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def agreement(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Optional[float]:
    """Share of ``x`` where ``model`` predicts ``labels``; None for no digits."""
    if len(x) == 0:
        return None
    with torch.no_grad():
        return float((model(x).argmax(1) == labels).float().mean())


def jacobian_augment(copy: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """One Jacobian step per known point: ``clip(x + lam * sign(grad_x copy(x)[y]), 0, 1)``."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(copy(x).gather(1, y[:, None]).sum(), x)
    return (x + lam * grad.sign()).clamp(0.0, 1.0).detach()


def steal(
    oracle: Oracle,
    seeds: torch.Tensor,
    budget: int,
    mode: Literal["jacobian", "noise"] = "jacobian",
    lam: float = 0.1,
    noise_std: float = 0.1,
    epochs: int = 10,
    seed: int = 0,
) -> Stolen:
    """Query ``oracle`` with ``seeds`` and their augmentations until ``budget`` queries, a refusal or time runs out."""
    if mode not in ("jacobian", "noise"):
        raise ValueError(f"mode must be 'jacobian' or 'noise'; got {mode!r}")
    g = torch.Generator().manual_seed(seed)
    xs: List[torch.Tensor] = []
    ys: List[int] = []
    pending, sent, invalid, refused_at, out_of_time = seeds, 0, 0, None, False
    while sent < budget and refused_at is None and not out_of_time and len(pending):
        for x in pending[: budget - sent]:
            answer = oracle(x)
            if answer is None:
                out_of_time = True
                break
            sent += 1
            if answer.refused:
                refused_at = sent
                break
            invalid += answer.invalid
            if answer.label is not None:
                xs.append(x)
                ys.append(answer.label)
        if refused_at is not None or out_of_time or sent >= budget or not xs:
            break
        known_x, known_y = torch.stack(xs), torch.tensor(ys)
        if mode == "jacobian":
            pending = jacobian_augment(train_copy(known_x, known_y, epochs, seed), known_x, known_y, lam)
        else:
            pending = (known_x + noise_std * torch.randn(known_x.shape, generator=g)).clamp(0.0, 1.0)
    return Stolen(
        x=torch.stack(xs) if xs else torch.empty(0, *seeds.shape[1:]),
        y=torch.tensor(ys, dtype=torch.long),
        sent=sent,
        invalid=invalid,
        refused_at=refused_at,
    )
