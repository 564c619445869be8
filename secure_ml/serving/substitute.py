"""The attacker's substitute model: train a fresh SmallCNN on stolen labels, grow the query set, score agreement.

Jacobian-based dataset augmentation follows Papernot et al., "Practical Black-Box Attacks against Machine
Learning" (AsiaCCS 2017): ``x + lam * sign(d F_y(x) / dx)`` with ``F`` the substitute and ``y`` the label
the victim returned for ``x``. Seeds are explicit: the same call gives the same copy.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from secure_ml.models import SmallCNN


def train_copy(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> SmallCNN:
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


def agreement(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Optional[float]:
    if len(x) == 0:
        return None
    with torch.no_grad():
        return float((model(x).argmax(1) == labels).float().mean())


def jacobian_augment(copy: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(copy(x).gather(1, y[:, None]).sum(), x)
    return (x + lam * grad.sign()).clamp(0.0, 1.0).detach()
