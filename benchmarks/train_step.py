"""Time one full training step of SmallCNN under five recipes, on the same batch of real MNIST digits.

Run from the repository root::

    /work/venv/bin/python benchmarks/train_step.py [--steps 50] [--warmup 5] [--batch-size 64]
        [--data-dir ../shared/data] [--device auto] [--json results.json]
        [--max-seconds 90] [--malloc-heap]

A step is forward, backward, optimizer step and zero_grad, with SGD(lr=0.01, momentum=0.9):

1. ``plain``           cross-entropy on the clean batch.
2. ``plain+fgsm``      FGSM examples (ε = 0.0308), adversarial-only loss (the project's ratio 1.0).
3. ``opacus-hooks+fgsm`` DP mode ``hooks``: Opacus with materialised per-sample gradients (the mode for mixed
                       clean/adversarial losses and DDP).
3b. ``opacus-ghost+fgsm`` DP mode ``ghost``: Opacus ghost clipping (the default when each sample has one forward,
                       as in the capstone): norms without per-sample gradients, two backward passes.
4. ``ref-dp+fgsm``     DP mode ``reference``: ``per_sample_gradients`` (torch.func) + ``ReferenceDPOptimizer``.
5. ``seed-loop+fgsm``  the seed notebook's ``dp_sgd_step`` (a Python loop over samples, per-tensor clipping).
6. ``bk+fgsm``         DP mode ``bk``: book-keeping clipping (:mod:`secure_ml.privacy.bookkeeping`): norms and clipped sum
                       from one backward (the default, ``--model.dp.backend auto``, wherever the net's layers allow it).

The DP variants call :func:`secure_ml.privacy.steps.dp_step`, the very function ``SecureClassifier.training_step``
calls (attack with the mode's hooks off, zero_grad, forward, backward, noise reseed, optimizer step), so the
benchmark cannot drift from what users run.

Every variant times a step on the same fixed batch. Variants are interleaved step by step (the order
rotating every round) so machine noise hits them alike; the table reports medians, and then checks the
targets for each Opacus mode: Opacus ≤ 1.5× plain+FGSM, reference ≤ 1.2× Opacus, and both ≥ 1.3× faster than the seed loop;
and for BK (issue 10): bk+fgsm ≤ 1.25× plain+fgsm, equal to the reference clipper (σ = 0) to 1e-5, and peak memory
≤ 1.2× plain+fgsm's (one subprocess per variant, see ``benchmarks/bk_bench.py``; ``--no-memory`` skips it).
``--malloc-heap`` (diagnostic, glibc only) shows how much of the DP cost on CPU is page faults on the
large per-sample gradient buffers rather than arithmetic.
"""

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bk_bench import bk_equals_reference, measure_memory, memory_probe  # noqa: E402 (this folder is on sys.path)
from opacus.data_loader import DPDataLoader  # noqa: E402
from seed_notebook import dp_sgd_step  # noqa: E402
from step_timing import keep_large_blocks_in_heap, measure  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from secure_ml.adversarial import AdversarialConfig, mixed_loss  # noqa: E402
from secure_ml.attacks import fgsm  # noqa: E402
from secure_ml.data.mnist import load_mnist  # noqa: E402
from secure_ml.models import SmallCNN  # noqa: E402
from secure_ml.privacy.config import DPConfig  # noqa: E402
from secure_ml.privacy.engine import make_private  # noqa: E402
from secure_ml.privacy.steps import dp_step  # noqa: E402

EPSILON = 0.0308  # the seed's 0.1 in normalised units, in pixel units
RATIO = 1.0  # the project's default: adversarial-only loss
POOL = 8000  # digits behind the Poisson loader (sets the sample rate, hence the expected batch size)
# variant name → (--model.dp.backend, step mode); each runs secure_ml.privacy.steps.dp_step, the code SecureClassifier runs
DP_VARIANTS = {
    "opacus-hooks+fgsm": ("opacus", "hooks"),
    "opacus-ghost+fgsm": ("opacus", "ghost"),
    "ref-dp+fgsm": ("reference", "reference"),
    "bk+fgsm": ("bk", "bk"),
}
warnings.filterwarnings("ignore", message="Secure RNG turned off")  # Opacus, once per make_private
warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus hooks; the input needs no grad


class SeedConfig:
    clip_norm = 1.0
    noise_multiplier = 1.0


def build_variants(init: Dict[str, torch.Tensor], pool_x, pool_y, x, y, batch_size: int, device) -> Dict[str, Callable[[], None]]:
    """One closure per variant, each on its own copy of the same initial SmallCNN."""

    def fresh():
        net = SmallCNN().to(device)
        net.load_state_dict(init)
        return net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def poisson_loader():
        return DPDataLoader.from_data_loader(DataLoader(TensorDataset(pool_x, pool_y), batch_size=batch_size))

    variants: Dict[str, Callable[[], None]] = {}

    net1, opt1 = fresh()

    def plain():
        F.cross_entropy(net1(x), y).backward()
        opt1.step()
        opt1.zero_grad()

    net2, opt2 = fresh()

    def plain_fgsm():
        x_adv = fgsm(net2, x, y, EPSILON)
        per_sample, _ = mixed_loss(net2, x, y, x_adv, RATIO)
        per_sample.mean().backward()
        opt2.step()
        opt2.zero_grad()

    adv = AdversarialConfig(epsilon=EPSILON, ratio=RATIO)

    def private_variant(backend: str, mode: str) -> Callable[[], None]:
        """The step users run: secure_ml.privacy.steps.dp_step in ``mode`` (attack with hooks off, forward, backward, noisy step)."""
        net, opt = fresh()
        cfg = DPConfig(enabled=True, backend=backend, noise_multiplier=1.0, max_grad_norm=1.0)
        private = make_private(net, opt, poisson_loader(), cfg, total_steps=1000, mode=mode)
        return lambda: dp_step(private, net, private.optimizer, x, y, adv)

    net5, opt5 = fresh()

    def seed_fgsm():
        x_adv = fgsm(net5, x, y, EPSILON)
        dp_sgd_step(net5, x_adv, y, SeedConfig, device)  # the seed notebook's own function (benchmarks/seed_notebook.py)
        opt5.step()
        opt5.zero_grad()

    variants["plain"] = plain
    variants["plain+fgsm"] = plain_fgsm
    for name, (backend, mode) in DP_VARIANTS.items():
        variants[name] = private_variant(backend, mode)
    variants["seed-loop+fgsm"] = seed_fgsm
    return variants


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50, help="timed rounds (one step of each variant per round)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--data-dir", default=str(REPO.parent / "shared" / "data"), help="holds MNIST/raw (default: ../shared/data from the repo root)"
    )
    ap.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    ap.add_argument("--json", metavar="PATH", help="also write the numbers here")
    ap.add_argument("--max-seconds", type=float, default=90.0, help="stop the timed rounds early after this long")
    ap.add_argument(
        "--malloc-heap",
        action="store_true",
        help="diagnostic: tell glibc to keep blocks up to 1 GiB in the heap (no mmap page faults per step)",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes (one subprocess per variant)")
    ap.add_argument("--memory-probe", metavar="VARIANT", help=argparse.SUPPRESS)  # internal: measure one variant, print JSON
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        ap.error("--steps and --batch-size must be >= 1, --warmup >= 0")

    malloc_heap = keep_large_blocks_in_heap() if args.malloc_heap else False
    if args.malloc_heap and not malloc_heap:
        print("warning: --malloc-heap needs glibc; ignored", file=sys.stderr)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    images, labels = load_mnist(args.data_dir, train=True, download=False)
    pool_x, pool_y = images[:POOL], labels[:POOL]
    x, y = pool_x[: args.batch_size].to(device), pool_y[: args.batch_size].to(device)
    torch.manual_seed(0)
    init = SmallCNN().state_dict()
    variants = build_variants(init, pool_x, pool_y, x, y, args.batch_size, device)
    if args.memory_probe:
        step = variants.pop(args.memory_probe)
        variants.clear()
        print(json.dumps(memory_probe(step, device)))
        return 0

    t_start = time.perf_counter()
    times = measure(variants, args.steps, args.warmup, device, args.max_seconds)
    ms = {name: statistics.median(t) for name, t in times.items()}
    base = ms["plain+fgsm"]

    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(
        f"device={device} torch={torch.__version__} threads={threads} batch={args.batch_size} "
        f"warmup={args.warmup} steps={len(times['plain'])}/{args.steps} malloc_heap={malloc_heap} ({time.perf_counter() - t_start:.1f}s)"
    )
    print(f"{'variant':<18} {'ms/step':>9} {'min':>8} {'x plain+fgsm':>13}")
    for name, t in times.items():
        print(f"{name:<18} {ms[name]:9.2f} {min(t):8.2f} {ms[name] / base:12.2f}x")

    ref, seed = ms["ref-dp+fgsm"], ms["seed-loop+fgsm"]
    targets = []
    for mode in ("opacus-ghost+fgsm", "opacus-hooks+fgsm"):  # ghost: the project's default for ratio 0/1; hooks: otherwise
        opacus = ms[mode]
        targets += [
            (f"{mode} <= 1.5x plain+fgsm", opacus / base, opacus <= 1.5 * base),
            (f"ref-dp+fgsm <= 1.2x {mode}", ref / opacus, ref <= 1.2 * opacus),
            (f"{mode} >= 1.3x faster than seed loop", seed / opacus, seed >= 1.3 * opacus),
        ]
    targets.append(("ref-dp+fgsm >= 1.3x faster than seed loop", seed / ref, seed >= 1.3 * ref))
    bk = ms["bk+fgsm"]
    diff = bk_equals_reference(init, x, y, EPSILON, RATIO)
    targets.append(("bk+fgsm <= 1.25x plain+fgsm", bk / base, bk <= 1.25 * base))
    memory = {}
    if not args.no_memory:
        probe_argv = ["--batch-size", str(args.batch_size), "--data-dir", args.data_dir, "--device", str(device)]
        memory = measure_memory(["plain+fgsm"] + [n for n in times if n.endswith("+fgsm") and n != "plain+fgsm"], __file__, probe_argv)
        print(
            f"\n{'variant':<18} {'peak MB':>9} {'step MB':>9} {'peak x':>7} {'step x':>7}   (peak: whole process; step: tensors a step allocates)"
        )
        ref_mem = memory["plain+fgsm"]
        for name, m in memory.items():
            if m is not None and ref_mem is not None:
                print(
                    f"{name:<18} {m['peak_mb']:9.1f} {m['step_mb']:9.1f} {m['peak_mb'] / ref_mem['peak_mb']:6.2f}x {m['step_mb'] / ref_mem['step_mb']:6.2f}x"
                )
        if ref_mem is not None and memory.get("bk+fgsm") is not None:
            m = memory["bk+fgsm"]
            targets += [
                ("bk+fgsm peak memory <= 1.2x plain+fgsm", m["peak_mb"] / ref_mem["peak_mb"], m["peak_mb"] <= 1.2 * ref_mem["peak_mb"]),
                ("bk+fgsm step memory <= 1.2x plain+fgsm", m["step_mb"] / ref_mem["step_mb"], m["step_mb"] <= 1.2 * ref_mem["step_mb"]),
            ]
    print()
    for label, ratio, ok in targets:
        print(f"{'PASS' if ok else 'FAIL'}  {label}  (ratio {ratio:.2f})")
    print(
        f"{'PASS' if diff <= 1e-5 else 'FAIL'}  bk+fgsm clipped sum and norms equal the reference clipper (sigma=0) to 1e-5  (max diff {diff:.1e})"
    )

    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": str(device),
                    "torch": torch.__version__,
                    "threads": threads,
                    "batch_size": args.batch_size,
                    "warmup": args.warmup,
                    "steps": len(times["plain"]),
                    "malloc_heap": malloc_heap,
                    "median_ms": ms,
                    "all_ms": times,
                    "ratio_to_plain_fgsm": {k: v / base for k, v in ms.items()},
                    "targets": [{"target": label, "ratio": ratio, "pass": ok} for label, ratio, ok in targets],
                    "memory_mb": memory,
                    "bk_max_diff_to_reference": diff,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
