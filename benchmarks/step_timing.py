"""Timing helpers of ``benchmarks/train_step.py``: interleaved per-step timing and a glibc allocator diagnostic."""

import ctypes
import time
from typing import Callable, Dict, List

import torch


def measure(variants: Dict[str, Callable[[], None]], steps: int, warmup: int, device, budget_s: float) -> Dict[str, List[float]]:
    """Per-step milliseconds of each variant; one step of every variant per round, the order rotating.

    Stops after ``budget_s`` seconds of timed rounds (at least 3 rounds) so a busy machine cannot stall it.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    sync()
    times: Dict[str, List[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(steps):
        if r >= 3 and time.perf_counter() - start > budget_s:
            break
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            variants[name]()
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def keep_large_blocks_in_heap() -> bool:
    """glibc: serve big blocks from the heap instead of fresh mmaps, which page-fault on every first touch.

    Opacus's (64, 128, 1568) per-sample fc1 gradient is 51 MB, above glibc's 32 MB ceiling for its
    dynamic mmap threshold, so by default every step maps, faults in and unmaps it (and its copies).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 30)) and bool(libc.mallopt(-1, 2**31 - 1))  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False
