"""Read MNIST's held-out test split (``<dir>/MNIST/raw/t10k-*``) with numpy: public digits for the service and the attacker.

Why not :func:`secure_ml.data.mnist.load_mnist`: importing ``secure_ml.data`` loads the Lightning
datamodule and torchvision, which ``secure-ml serve`` and ``secure-ml extract`` must not pay for; the
IDX format is a 16-byte header and raw bytes, so ``numpy.frombuffer`` reads it exactly as torchvision
does. Only the *test* split can be read here: the service calibrates its input policy on digits that
were never training members, and the attacker's seeds are held-out digits too.
"""

import struct
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

from secure_ml.errors import DataNotFoundError

IMAGES, LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def _read_idx(path: Path, magic: int, header: str) -> Tuple[Tuple[int, ...], np.ndarray]:
    data = path.read_bytes()
    size = struct.calcsize(header)
    fields = struct.unpack(header, data[:size]) if len(data) >= size else (None,)
    if fields[0] != magic:
        raise DataNotFoundError(f"'{path.name}' is not an MNIST IDX file (bad header)")
    return fields[1:], np.frombuffer(data, dtype=np.uint8, offset=size)


def load_test_digits(data_dir: str, option: str = "--data-dir") -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of the test split: float32 ``(N, 1, 28, 28)`` in [0, 1] and int64 ``(N,)``."""
    raw = Path(data_dir).expanduser() / "MNIST" / "raw"
    try:
        (n, rows, cols), pixels = _read_idx(raw / IMAGES, 0x00000803, ">IIII")
        (m,), labels = _read_idx(raw / LABELS, 0x00000801, ">II")
    except OSError:
        raise DataNotFoundError(f"{option}: the MNIST test split ({IMAGES}, {LABELS}) is not in <dir>/MNIST/raw of '{data_dir}'") from None
    if (rows, cols) != (28, 28) or pixels.size != n * 28 * 28 or labels.size != m or m != n:
        raise DataNotFoundError(f"{option}: the MNIST test split in '{data_dir}' is truncated or not 28x28")
    images = torch.from_numpy(pixels.reshape(n, 1, 28, 28).astype(np.float32) / 255.0)
    return images, torch.from_numpy(labels.astype(np.int64))
