"""Small models trained once per test session on the real digits (callers must not train them further)."""

import functools

import torch
import torch.nn.functional as F

from secure_ml.data.mnist import load_mnist
from secure_ml.models import SmallCNN


def _one_adam_epoch(model: torch.nn.Module, data_dir: str, lr: float):
    """``model`` after one Adam epoch (batch 32) on the first 2,000 real training digits, in eval mode, plus the data."""
    x, y = load_mnist(data_dir, train=True, download=False)
    xt, yt = load_mnist(data_dir, train=False, download=False)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    perm = torch.randperm(2000, generator=g)
    for i in range(0, 2000, 32):
        idx = perm[i : i + 32]
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x, y, xt, yt


@functools.lru_cache(maxsize=2)
def trained_small_cnn(data_dir: str):
    """SmallCNN after one Adam epoch on 2,000 real training digits (~90% test accuracy), plus the data.

    Cached so that test_sponge.py reuses the same model in one pytest process; callers must not train it.
    """
    torch.manual_seed(0)
    return _one_adam_epoch(SmallCNN(), data_dir, lr=2e-3)


@functools.lru_cache(maxsize=1)
def trained_tanh_cnn(data_dir: str):
    """TanhCNN (the hardened config's net) after one Adam epoch on 2,000 real training digits, plus the data.

    Cached per pytest process; callers must not train it.
    """
    from secure_ml.models import TanhCNN

    torch.manual_seed(0)
    return _one_adam_epoch(TanhCNN(), data_dir, lr=3e-3)
