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
    raw = root / "MNIST" / "raw"
    names = RAW_FILES[:2] if train else RAW_FILES[2:]
    try:
        ds = MNIST(root=str(root), train=train, download=download)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError...
        reason = first_line(exc)
        if all((raw / name).is_file() for name in names):  # there, but not readable: not a download problem
            raise DataNotFoundError(
                f"MNIST's files {names[0]} / {names[1]} in '{raw}' could not be read ({reason}); "
                "replace them with torchvision's originals (or delete them and pass --data.download true)"
            ) from None
        raise DataNotFoundError(
            f"MNIST was not found in '{root / 'MNIST' / 'raw'}'"
            + (" and could not be downloaded" if download else " (download is off)")
            + f" ({reason}). Put torchvision's raw files ({', '.join(RAW_FILES)}) in "
            f"'<DIR>/MNIST/raw' and pass --data.data_dir <DIR>, or run on a connected "
            f"machine with --data.download true."
        ) from None
    _check(ds.data, ds.targets, raw, names)
    images = ds.data.unsqueeze(1).to(torch.float32).div_(255.0)
    return images.contiguous(), ds.targets.to(torch.int64).clone()


def _check(images: torch.Tensor, labels: torch.Tensor, raw: Path, names: Tuple[str, str]) -> None:
    """One ``DataNotFoundError`` line when the two files do not hold one 28x28 image per digit label
    (torchvision reads each file alone and compares neither their lengths nor the labels' range)."""
    where = f"in '{raw}'"
    if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise DataNotFoundError(f"{names[0]} {where} holds images of shape {tuple(images.shape[1:])}, not 28x28: not MNIST")
    if labels.dim() != 1 or len(labels) != len(images):
        raise DataNotFoundError(
            f"{names[1]} {where} holds {labels.numel()} labels for the {len(images)} images of {names[0]}: "
            "the files are mismatched or corrupted; replace them with torchvision's originals"
        )
    if len(labels) and not (int(labels.min()) >= 0 and int(labels.max()) <= 9):
        bad = labels[(labels < 0) | (labels > 9)]
        raise DataNotFoundError(
            f"{names[1]} {where} holds labels outside 0-9 (e.g. {int(bad[0])}, {len(bad)} in all): the file is corrupted; "
            "replace it with torchvision's original"
        )
