"""Load a torchvision MNIST split into memory as tensors, with a clear error when it is missing."""

from pathlib import Path
from typing import Tuple

import torch
from torchvision.datasets import MNIST

from secure_ml.errors import DataNotFoundError, first_line

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def load_mnist(data_dir: str, train: bool, download: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: float32 ``(N, 1, 28, 28)`` in ``[0, 1]`` and int64 ``(N,)``.

    torchvision reads ``<data_dir>/MNIST/raw`` and, when ``download`` is true and the
    files are missing, fetches them there. Any failure becomes one ``DataNotFoundError``
    sentence saying where the files must go.
    """
    root = Path(data_dir).expanduser()
    try:
        ds = MNIST(root=str(root), train=train, download=download)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError...
        reason = first_line(exc)
        raise DataNotFoundError(
            f"MNIST was not found in '{root / 'MNIST' / 'raw'}'"
            + (" and could not be downloaded" if download else " (download is off)")
            + f" ({reason}). Put torchvision's raw files ({', '.join(RAW_FILES)}) in "
            f"'<DIR>/MNIST/raw' and pass --data.data_dir <DIR>, or run on a connected "
            f"machine with --data.download true."
        ) from None
    images = ds.data.unsqueeze(1).to(torch.float32).div_(255.0)
    return images.contiguous(), ds.targets.to(torch.int64).clone()
