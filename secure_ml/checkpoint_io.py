"""Training-side ``--ckpt_path`` loading that never unpickles code, for every path and every torch version.

Lightning loads ``fit/validate/test --ckpt_path`` through the strategy's CheckpointIO, which calls
``torch.load`` with ``weights_only=None``: torch < 2.6 then unpickles anything, and an
``http(s)://`` path goes to ``torch.hub.load_state_dict_from_url`` with ``weights_only=False``
(lightning/fabric/utilities/cloud_io.py). :class:`SafeCheckpointIO` replaces the *load* of the
strategy's CheckpointIO (saving is unchanged) with :func:`safe_load`: ``torch.load(...,
weights_only=True)`` on a local or fsspec path, or on the downloaded bytes of a URL, so a pickled
object other than tensors and plain containers is refused before it is built — exactly as the
inference service and ``secure-ml export`` load checkpoints (``secure_ml/release/checkpoint.py``, whose refusal it shares). ``SecureClassifier.setup``
installs it, before Lightning restores the checkpoint, for the CLI and the Python API alike.
"""

import io
import pickle
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Optional

import torch
from fsspec.core import url_to_fs
from lightning.fabric.plugins import CheckpointIO

from secure_ml.errors import UNREADABLE_CHECKPOINT, ConfigError, SecureMLError, first_line
from secure_ml.release.checkpoint import UnsafeCheckpointError
from secure_ml.release.checkpoint import _refusal_reason as _reason

MAX_DOWNLOAD_BYTES = 4 << 30  # a checkpoint URL larger than this is refused rather than read into memory


def _download(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # http(s) only: checked by the caller
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConfigError(f"--ckpt_path: cannot download '{url}' ({getattr(exc, 'reason', exc)})") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ConfigError(f"--ckpt_path: '{url}' is larger than {MAX_DOWNLOAD_BYTES >> 30} GiB")
    return data


def safe_load(path: Any, map_location: Any = "cpu", timeout: float = 60.0) -> Dict[str, Any]:
    """The checkpoint at a local path, an fsspec URL or an ``http(s)://`` URL, loaded with ``weights_only=True``."""
    where = str(path)
    try:
        if where.startswith(("http://", "https://")):
            return torch.load(io.BytesIO(_download(where, timeout)), map_location=map_location, weights_only=True)
        try:
            fs, local = url_to_fs(where)
        except ImportError as exc:  # s3:// without s3fs, ...
            raise ConfigError(f"--ckpt_path '{where}': reading it needs a package that is not installed ({first_line(exc)})") from None
        if not fs.isfile(local):
            raise ConfigError(f"--ckpt_path: '{where}' does not exist or is not a file")
        with fs.open(local, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=True)
    except SecureMLError:
        raise
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refused to load --ckpt_path '{where}': the safe loader (weights_only) rejected it: {_reason(exc)}; "
            "nothing in the file was executed. Only tensor checkpoints written by `secure-ml fit` load"
        ) from None
    except UNREADABLE_CHECKPOINT as exc:
        first = first_line(exc)
        raise ConfigError(f"--ckpt_path: '{where}' is not a readable PyTorch checkpoint ({first})") from None


def check_checkpoint_file(path: Any) -> Dict[str, Any]:
    """The checkpoint at ``path``; one ConfigError (or UnsafeCheckpointError) unless it loads safely as a Lightning checkpoint."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or "pytorch-lightning_version" not in ckpt:
        raise ConfigError(
            f"--ckpt_path: '{path}' is not a Lightning checkpoint (no state_dict and version): is it one `secure-ml fit` wrote?"
        )
    return ckpt


class SafeCheckpointIO(CheckpointIO):
    """Saves through the wrapped CheckpointIO; loads only through :func:`safe_load` (whatever ``weights_only`` is asked for)."""

    def __init__(self, inner: CheckpointIO):
        self.inner = inner

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(self, path, map_location: Optional[Callable] = None, weights_only: Optional[bool] = None) -> Dict[str, Any]:
        return safe_load(path, map_location=map_location if map_location is not None else "cpu")

    def remove_checkpoint(self, path) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


def install_safe_checkpoint_io(strategy: Any) -> None:
    """Make ``strategy`` load checkpoints with :func:`safe_load` (idempotent)."""
    current = strategy.checkpoint_io
    if not isinstance(current, SafeCheckpointIO):
        strategy.checkpoint_io = SafeCheckpointIO(current)
