"""Load a torchvision MNIST split into memory as tensors, with a clear error when it is missing."""

from pathlib import Path
from typing import Tuple

import numpy as np
import torch

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
    from torchvision.datasets import MNIST  # here, not at the top: read_raw's caller (the start-up prefetch) must not pay for it

    try:
        ds = MNIST(root=str(root), train=train, download=download)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError...
        reason = first_line(exc)
        missing = [name for name in RAW_FILES if not (raw / name).is_file()]
        if raw.is_dir() and missing and len(missing) < len(RAW_FILES) and not download:  # torchvision wants all four
            raise DataNotFoundError(
                f"MNIST's raw file{'s' if len(missing) > 1 else ''} {', '.join(missing)} {'are' if len(missing) > 1 else 'is'} "
                f"missing from '{raw}' (torchvision reads all four); put {'them' if len(missing) > 1 else 'it'} back (or pass --data.download true)"
            ) from None
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
    return pixels(ds.data, ds.targets)


def pixels(images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(N, 28, 28)`` images and labels → float32 ``(N, 1, 28, 28)`` in ``[0, 1]`` and int64 ``(N,)``."""
    return images.unsqueeze(1).to(torch.float32).div_(255.0).contiguous(), labels.to(torch.int64).clone()


def read_idx(path: str) -> torch.Tensor:
    """A uint8 IDX file (MNIST's raw format) as a tensor of its shape: the bytes torchvision's MNIST reads.

    Not torchvision's reader: importing torchvision costs the start-up prefetch (:mod:`secure_ml.prefetch`) ~1 s of
    its head start (it pulls torchvision.models and torch._dynamo). Any deviation only loses the prefetch (its digest
    differs), never changes a result.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 3:
        raise ValueError(f"{path} is not a uint8 IDX file")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims).copy())


def read_raw(data_dir: str, train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`load_mnist`'s tensors straight from ``<data_dir>/MNIST/raw`` without torchvision (no download, no checks: OSError/ValueError when unreadable)."""
    raw = Path(data_dir).expanduser() / "MNIST" / "raw"
    names = RAW_FILES[:2] if train else RAW_FILES[2:]
    return pixels(read_idx(str(raw / names[0])), read_idx(str(raw / names[1])))


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
