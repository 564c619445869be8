"""The sanitizer's label-flip detection on the idle core while the CLI imports Lightning: a verified, speculative prefetch.

``secure-ml fit`` and ``secure-ml test`` spend their first ~4 s importing Lightning and parsing the command line on one
core, then ~2 s in ``confident_knn`` on one core (single-threaded by design, so its output never depends on the thread
count; ``benchmarks/phase_times.py``). :func:`start`, called by :func:`secure_ml.cli.main` before torch is imported, forks
a child from the ``data`` settings the command line names (:mod:`secure_ml.prefetch_guess`: its ``--config`` files,
then its ``--data.*`` flags, over the DataModule's defaults); the child builds the training part the DataModule will sanitize
(:func:`secure_ml.data.training_part.training_part`) and runs :func:`detect_label_flips` on it.

The DataModule's sanitizer :func:`claim`\\ s the result **only if its own inputs hash to the child's digest**: the images,
the labels and every detector argument (BLAKE2b). The child's settings are a guess, not a parse (jsonargparse needs the
classes, which need Lightning): a guess that differs in any way costs the idle core's time, nothing else; the detector
then runs in the process as before. Its output is the same either way (``tests/test_prefetch.py`` compares them).

Why fork rather than ``multiprocessing``: the child must start before torch is imported in the parent (a fork after
torch's thread pools exist can hang), and it needs no pickled callable. ``SECURE_ML_PREFETCH=0`` switches it off.
The child is killed and reaped at the parent's exit when nothing claimed it (an error before the data's set-up), and
on Linux it dies with the parent even when that is killed outright (``PR_SET_PDEATHSIG``). It runs at the parent's
priority: a lower one would leave the parent waiting on it on a busy machine.
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
from typing import Optional, Sequence

from secure_ml.prefetch_guess import data_settings

WAIT_S = 120.0  # the longest the parent waits for the child's answer before computing itself


@dataclass
class _Child:
    pid: int
    fd: int
    creator: int  # the pid that forked it: a forked rank inherits the record but must not read the pipe


_pending: Optional[_Child] = None


def digest(images, labels, detector_args: tuple) -> bytes:
    """BLAKE2b of the detector's whole input: both tensors (dtype, shape, bytes) and its arguments."""
    h = hashlib.blake2b(digest_size=32)
    for t in (images, labels):
        a = t.detach().cpu().contiguous().numpy()
        h.update(repr((str(a.dtype), a.shape)).encode())
        h.update(a.data)
    h.update(repr(detector_args).encode())
    return h.digest()


def _child(settings: dict, out) -> None:
    import gc

    gc.disable()  # a short life that ends in os._exit: no collection walks the imports' objects (secure_ml.startup_gc)
    import torch

    from secure_ml.data.label_noise import detect_label_flips
    from secure_ml.data.mnist import read_raw
    from secure_ml.data.poisoning import PoisonConfig
    from secure_ml.data.sanitization import SanitizerConfig, detector_args
    from secure_ml.data.training_part import training_part

    cfg = SanitizerConfig(**(settings.get("sanitizer") or {}))
    if cfg.method != "confident_knn":
        return
    torch.set_num_threads(1)
    x, y = read_raw(str(settings["data_dir"]), train=True)
    part = training_part(
        y, int(settings["train_size"]), int(settings["val_size"]), int(settings["seed"]), PoisonConfig(**(settings.get("poison") or {}))
    )
    images, args = x[part.train_idx], detector_args(cfg)
    pickle.dump(digest(images, part.labels, args), out)
    out.flush()
    pickle.dump(detect_label_flips(images, part.labels, *args), out)
    out.flush()


def _die_with(parent: int) -> None:
    """Linux: SIGKILL this child when the CLI dies, even by SIGKILL before its exit handlers run (else it computes on as an orphan)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the CLI died before the line above
        os._exit(1)


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
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        r, w = os.pipe()
    except OSError:
        return
    try:
        pid = os.fork()
    except OSError:  # a process limit, no memory: the run goes on without it
        os.close(r)
        os.close(w)
        return
    if pid == 0:  # the child: quiet, never returns into the CLI
        status = 1
        try:
            _die_with(parent)
            os.close(r)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
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
