"""The ε of a *selected* checkpoint: keep each kept file's ``selection_steps`` up to date (Lightning-free).

Choosing the best of several epochs by a validation metric makes the chosen weights depend on
every model that was compared, so the ε that may be reported for the chosen file is the
accountant's ε after the last compared step, not after the file's own steps. Each checkpoint's
DP state records ``steps`` (trained) and ``selection_steps`` (the steps of every model that
influenced its selection, ≥ ``steps``); :func:`refresh_selected_checkpoints` raises the latter in
the files a monitored ModelCheckpoint keeps, at every epoch end and at the end of fit.
:func:`secure_ml.privacy.private.epsilon_from_state` and :func:`secure_ml.privacy.ledger.ledger_from_checkpoint`
report ε over ``selection_steps``.
"""

import os
from typing import Any, Dict, Iterable

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from secure_ml.privacy.ledger import DP_STATE_KEY


def _load(fs, path: str) -> Dict[str, Any]:
    with fs.open(path, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)  # our own file, but never unpickle code


def _save(fs, path: str, ckpt: Dict[str, Any]) -> None:
    tmp = f"{path}.selection-tmp"
    with fs.open(tmp, "wb") as f:
        torch.save(ckpt, f)
    if isinstance(fs, LocalFileSystem):
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of it
    else:
        fs.mv(tmp, path)


def refresh_selected_checkpoints(paths: Iterable[str], steps: int) -> int:
    """Raise ``selection_steps`` to ``steps`` in each DP checkpoint at ``paths`` (missing or non-DP files are left alone).

    Returns how many files were rewritten.
    """
    changed = 0
    for path in sorted({str(p) for p in paths}):
        fs, path = url_to_fs(path)
        if not fs.exists(path):
            continue
        ckpt = _load(fs, path)
        state = ckpt.get(DP_STATE_KEY) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict) or int(state.get("selection_steps", 0) or 0) >= steps:
            continue
        state["selection_steps"] = int(steps)
        _save(fs, path, ckpt)
        changed += 1
    return changed
