"""Test data: the real 10,000-digit mirror (fail in CI, skip elsewhere) and tiny synthetic MNIST folders."""

import os
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
REAL_DATA = Path(os.environ.get("SECURE_ML_DATA_DIR", REPO.parent / "shared" / "data"))


def real_data_dir() -> Path:
    """The real MNIST mirror (``$SECURE_ML_DATA_DIR``, default ``../shared/data``); in CI (``CI`` set) its absence fails, elsewhere it skips."""
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


def smoke_args(data_dir, *extra: str, sizes=(500, 100, 100)) -> list:
    """CLI arguments of the capstone + smoke configs on ``data_dir`` (no download), with train/val/test sizes ``sizes`` (None: the smoke's)."""
    args = ["--config", str(REPO / "configs" / "capstone.yaml"), "--config", str(REPO / "configs" / "smoke.yaml")]
    args += ["--data.data_dir", str(data_dir), "--data.download", "false"]
    if sizes is not None:
        for name, n in zip(("train_size", "val_size", "test_size"), sizes):
            args += [f"--data.{name}", str(n)]
    return args + list(extra)
