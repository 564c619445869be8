"""Shared fixtures: the real 10,000-digit mirror and tiny synthetic MNIST folders written to tmp_path."""

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """``../shared/data``; in CI (CI set) its absence is a failure, never a skip."""
    if not (REAL_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        if os.environ.get("CI"):
            pytest.fail(f"the real MNIST mirror is missing at {REAL_DATA}")
        pytest.skip(f"real MNIST mirror not found at {REAL_DATA}")
    return REAL_DATA


def synthetic_digits(n: int, seed: int):
    """Learnable fake digits: class k lights a 6x6 block at a class-specific spot, plus noise."""
    g = np.random.default_rng(seed)
    labels = g.integers(0, 10, n).astype(np.uint8)
    images = (g.random((n, 28, 28)) * 60).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = 2 + 8 * (k // 4), 2 + 6 * (k % 4)
        images[i, r : r + 6, c : c + 6] = 230
    return images, labels


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{prefix}-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 0x00000803, len(images), 28, 28))
        f.write(images.tobytes())
    with open(folder / f"{prefix}-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 0x00000801, len(labels)))
        f.write(labels.tobytes())


def make_mnist_dir(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    raw = root / "MNIST" / "raw"
    write_idx(raw, "train", *synthetic_digits(n_train, seed))
    write_idx(raw, "t10k", *synthetic_digits(n_test, seed + 1))
    return root


@pytest.fixture
def tiny_mnist(tmp_path) -> Path:
    return make_mnist_dir(tmp_path / "data")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
