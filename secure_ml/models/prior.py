"""A data-independent prior: non-private (adversarial) pretraining on procedural digits, cached on disk.

Lightning-free; :class:`secure_ml.callbacks.ProceduralPrior` calls :func:`load_or_pretrain` before DP training
starts. No record of any dataset is touched, so the prior costs no privacy budget; DP-SGD then fine-tunes it
on the private data. Adversarial pretraining (PGD) makes the prior robust, which DP adversarial fine-tuning keeps.
"""

import hashlib
import io
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from secure_ml.attacks import pgd
from secure_ml.data.procedural import VERSION, procedural_digits
from secure_ml.errors import ConfigError
from secure_ml.models.registry import describe_net


@dataclass
class PriorConfig:
    """Pretraining on procedural digits.

    Args:
        digits: procedural digits drawn (balanced classes).
        epochs: passes over them.
        batch_size: minibatch size.
        lr: peak learning rate of Adam under a one-cycle schedule.
        adv_epsilon: L∞ radius (pixels) of PGD adversarial pretraining, ramped up over the first third of the epochs; 0 trains on clean digits.
        adv_steps: PGD iterations per adversarial example.
        max_shift: random translation of each digit by up to this many pixels.
        seed: seed of the digits, the batch order, the shifts and the PGD starts (no privacy role: no private data is involved).
    """

    digits: int = 20000
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    adv_epsilon: float = 0.12
    adv_steps: int = 5
    max_shift: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("digits", "epochs", "batch_size", "adv_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--prior.{name} must be >= 1; got {getattr(self, name)}")
        if not 0 < self.lr < float("inf"):  # NaN fails too
            raise ConfigError(f"--prior.lr must be a finite number > 0; got {self.lr}")
        if not 0.0 <= self.adv_epsilon <= 1.0:
            raise ConfigError(f"--prior.adv_epsilon must be in [0, 1] (pixels); got {self.adv_epsilon}")
        if not 0 <= self.max_shift <= 8:
            raise ConfigError(f"--prior.max_shift must be in [0, 8]; got {self.max_shift}")


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random integer offset in [-max_shift, max_shift]² (zero fill)."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    return padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def pretrain(net: nn.Module, cfg: PriorConfig, log: Optional[Callable[[str], None]] = None) -> None:
    """Train ``net`` in place on ``cfg.digits`` procedural digits (PGD adversarial training when ``adv_epsilon`` > 0)."""
    g = torch.Generator().manual_seed(cfg.seed)
    x, y = procedural_digits(cfg.digits, g)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    per_epoch = max(1, cfg.digits // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * per_epoch)
    ramp = max(1, cfg.epochs // 3)
    was_training = net.training
    net.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(y), generator=g)
        eps = cfg.adv_epsilon * min(1.0, (epoch + 1) / ramp)
        for i in range(per_epoch):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb, yb = random_shift(x[idx], cfg.max_shift, g), y[idx]
            if eps > 0:
                xb = pgd(net, xb, yb, eps, cfg.adv_steps, None, True, g)
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if log is not None:
            log(f"prior: epoch {epoch + 1}/{cfg.epochs}, PGD ε {eps:.3f}, last loss {loss.item():.3f}")
    net.train(was_training)


def cache_key(net: nn.Module, cfg: PriorConfig) -> str:
    """Hash of everything the pretrained weights depend on: generator version, net description, initial weights, settings."""
    digest = hashlib.sha256()
    digest.update(f"procedural-v{VERSION}|{describe_net(net)}|{sorted(asdict(cfg).items())}".encode())
    for name, tensor in sorted(net.state_dict().items()):
        buffer = io.BytesIO()
        torch.save(tensor.detach().cpu(), buffer)
        digest.update(name.encode() + buffer.getvalue())
    return digest.hexdigest()[:20]


def load_or_pretrain(
    net: nn.Module, cfg: PriorConfig, cache_dir: Optional[str], log: Optional[Callable[[str], None]] = None, write: bool = True
) -> Dict[str, str]:
    """Load the prior for ``net`` from ``cache_dir`` or pretrain it (and store it there when ``write``); returns what happened."""
    key = cache_key(net, cfg)
    path = Path(os.path.expanduser(cache_dir)) / f"prior-{key}.pt" if cache_dir else None
    if path is not None and path.is_file():
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return {"source": "cache", "path": str(path), "key": key}
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            raise ConfigError(f"the cached prior '{path}' cannot be loaded ({exc}); delete it or set --prior.cache_dir elsewhere") from None
    pretrain(net, cfg, log)
    if path is not None and write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
        tmp.replace(path)
    return {"source": "pretrained", "path": str(path) if path else "", "key": key}
