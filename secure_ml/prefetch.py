"""The sanitizer's label-flip detection on the idle core while the CLI imports Lightning: a verified, speculative prefetch.

``secure-ml fit`` and ``secure-ml test`` spend their first ~4 s importing Lightning and parsing the command line on one
core, then ~2 s in ``confident_knn`` on one core (single-threaded by design, so its output never depends on the thread
count; ``benchmarks/phase_times.py``). :func:`start`, called by :func:`secure_ml.cli.main` before torch is imported, forks
a child that reads the ``data`` settings the command line names (its ``--config`` files, then its ``--data.*`` flags,
over the DataModule's defaults), builds the training part the DataModule will sanitize
(:func:`secure_ml.data.training_part.training_part`) and runs :func:`detect_label_flips` on it.

The DataModule's sanitizer :func:`claim`\\ s the result **only if its own inputs hash to the child's digest**: the images,
the labels and every detector argument (BLAKE2b). The child's settings are a guess, not a parse (jsonargparse needs the
classes, which need Lightning): a guess that differs in any way costs the idle core's time, nothing else; the detector
then runs in the process as before. Its output is the same either way (``tests/test_prefetch.py`` compares them).

Why fork rather than ``multiprocessing``: the child must start before torch is imported in the parent (a fork after
torch's thread pools exist can hang), and it needs no pickled callable. ``SECURE_ML_PREFETCH=0`` switches it off.
The child is killed and reaped at the parent's exit when nothing claimed it (``--print_config``, an error, ``predict``).
"""

import atexit
import contextlib
import hashlib
import os
import pickle
import select
import signal
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence

# MNISTDataModule's defaults for the keys the child reads (tests/test_prefetch.py checks them against its signature).
DATA_DEFAULTS = {"data_dir": "./data", "train_size": 8000, "val_size": 800, "seed": 42}
DATA_CLASSES = ("secure_ml.data.MNISTDataModule", "secure_ml.data.datamodule.MNISTDataModule", "MNISTDataModule")
SUBCOMMANDS = ("fit", "validate", "test")  # predict never sets up the training part
WAIT_S = 120.0  # the longest the parent waits for the child's answer before computing itself


@dataclass
class _Child:
    pid: int
    fd: int
    creator: int  # the pid that forked it: a forked rank inherits the record but must not read the pipe


_pending: Optional[_Child] = None


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _data_section(section) -> Optional[dict]:
    if not isinstance(section, dict):
        return None
    if "class_path" in section:
        return section.get("init_args") or {} if section["class_path"] in DATA_CLASSES else None
    return section


def data_settings(argv: Sequence[str]) -> Optional[dict]:
    """The ``data`` settings ``argv`` (after ``secure-ml``) would give MNISTDataModule, or None when not worth a guess."""
    import yaml

    args: List[str] = list(argv)
    if not args or args[0] not in SUBCOMMANDS or any(a in ("-h", "--help") or a.startswith("--print_config") for a in args):
        return None
    settings: dict = {}
    i = 1
    while i < len(args):
        flag, _, inline = args[i].partition("=")
        value = inline if "=" in args[i] else (args[i + 1] if i + 1 < len(args) else None)
        step = 1 if "=" in args[i] else 2
        if flag in ("-c", "--config") and value is not None:
            try:
                with open(value, encoding="utf-8") as f:
                    loaded = yaml.safe_load(f) or {}
            except (OSError, yaml.YAMLError):
                return None
            data = _data_section(loaded.get("data", {})) if isinstance(loaded, dict) else None
            if data is None:
                return None
            _merge(settings, data)
        elif flag == "--data" or flag.startswith("--data.class_path"):
            return None  # a whole data spec: not guessed
        elif flag.startswith("--data.") and value is not None:
            keys = flag[len("--data.") :].split(".")
            keys = keys[1:] if keys[0] == "init_args" else keys
            node = settings
            for key in keys[:-1]:
                node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else None
                if node is None:
                    return None
            try:
                node[keys[-1]] = yaml.safe_load(value)
            except yaml.YAMLError:
                return None
        else:
            step = 1
        i += step
    return {**DATA_DEFAULTS, **settings}


def digest(images, labels, detector_args: tuple) -> bytes:
    """BLAKE2b of the detector's whole input: both tensors (dtype, shape, bytes) and its arguments."""
    h = hashlib.blake2b(digest_size=32)
    for t in (images, labels):
        a = t.detach().cpu().contiguous().numpy()
        h.update(repr((str(a.dtype), a.shape)).encode())
        h.update(a.data)
    h.update(repr(detector_args).encode())
    return h.digest()


def read_idx(path: str):
    """A uint8 IDX file (MNIST's raw format) as a tensor of its shape: the bytes torchvision's MNIST reads.

    Not torchvision's reader: importing torchvision costs the child ~1 s of its head start (it pulls torchvision.models
    and torch._dynamo). Any deviation only loses the prefetch (the digest differs), never changes a result.
    """
    import numpy as np
    import torch

    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 3:
        raise ValueError(f"{path} is not a uint8 IDX file")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims).copy())


def _child(settings: dict, out) -> None:
    from pathlib import Path

    import torch

    from secure_ml.data.label_noise import detect_label_flips
    from secure_ml.data.poisoning import PoisonConfig
    from secure_ml.data.sanitization import SanitizerConfig, detector_args
    from secure_ml.data.training_part import training_part

    cfg = SanitizerConfig(**(settings.get("sanitizer") or {}))
    if cfg.method != "confident_knn":
        return
    torch.set_num_threads(1)
    raw = Path(str(settings["data_dir"])).expanduser() / "MNIST" / "raw"
    x = read_idx(str(raw / "train-images-idx3-ubyte")).unsqueeze(1).to(torch.float32).div_(255.0)  # as load_mnist
    y = read_idx(str(raw / "train-labels-idx1-ubyte")).to(torch.int64)
    part = training_part(
        y, int(settings["train_size"]), int(settings["val_size"]), int(settings["seed"]), PoisonConfig(**(settings.get("poison") or {}))
    )
    images, args = x[part.train_idx], detector_args(cfg)
    pickle.dump(digest(images, part.labels, args), out)
    out.flush()
    pickle.dump(detect_label_flips(images, part.labels, *args), out)
    out.flush()


def start(argv: Sequence[str]) -> None:
    """Fork the child for ``argv`` unless switched off, already running, torch is loaded, this is a non-zero local rank, or there is nothing to guess."""
    global _pending
    if os.environ.get("SECURE_ML_PREFETCH", "1") == "0" or _pending is not None or "torch" in sys.modules or not hasattr(os, "fork"):
        return
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return
    settings = data_settings(argv)
    if settings is None:
        return
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: quiet, low priority, never returns into the CLI
        status = 1
        try:
            os.close(r)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.nice(10)
            with os.fdopen(w, "wb") as out:
                _child(settings, out)
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    _pending = _Child(pid, r, os.getpid())
    atexit.register(cancel)


def _load(f, fd: int):
    if not select.select([fd], [], [], WAIT_S)[0]:
        raise TimeoutError
    return pickle.load(f)


def _reap(child: _Child) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(child.pid, 0)


def claim(images, labels, detector_args: tuple):
    """The child's :class:`FlipDetection` if it computed it from exactly these inputs, else None (then compute it here)."""
    global _pending
    child, _pending = _pending, None
    if child is None or child.creator != os.getpid():
        return None
    try:
        with os.fdopen(child.fd, "rb") as f:
            if _load(f, child.fd) != digest(images, labels, detector_args):
                return None
            return _load(f, child.fd)
    except (EOFError, OSError, TimeoutError, pickle.UnpicklingError):
        return None
    finally:
        _reap(child)


def cancel() -> None:
    """Kill and reap an unclaimed child (at exit)."""
    global _pending
    child, _pending = _pending, None
    if child is not None and child.creator == os.getpid():
        os.close(child.fd)
        _reap(child)
