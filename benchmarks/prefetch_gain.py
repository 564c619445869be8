"""What the start-up prefetch of the sanitizer saves: `secure-ml fit` (and `test`) with it and without, alternately.

    python benchmarks/prefetch_gain.py --data-dir ../shared/data [--rounds 3]

Each round runs the capstone's ``secure-ml fit --test_after_fit true`` and ``secure-ml test --ckpt_path last.ckpt``
twice, with ``SECURE_ML_PREFETCH=1`` (the default: confident_knn runs in a forked child while the CLI imports
Lightning, :mod:`secure_ml.prefetch`) and ``SECURE_ML_PREFETCH=0`` (it runs in the process after the imports), the arms'
order swapped every round, each in a fresh folder. Prints the medians, the saving and whether every prefetched run
said it took the child's detection.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from capstone_cli import capstone, parse  # noqa: E402 (this folder)

MARK = "(detected during start-up on the idle core)"


def run(cmd, cwd, prefetch: bool):
    env = {**os.environ, "SECURE_ML_PREFETCH": "1" if prefetch else "0", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, MARK in proc.stdout + proc.stderr


def main(argv=None) -> int:
    args = parse(__doc__, argv)
    base, data = capstone(args.data_dir)
    times = {(cmd, arm): [] for cmd in ("fit --test_after_fit", "test") for arm in (True, False)}
    marked = {True: [], False: []}
    for r in range(args.rounds):
        for arm in (True, False) if r % 2 == 0 else (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                t, m = run([*base, "fit", *data, "--test_after_fit", "true"], tmp, arm)
                times[("fit --test_after_fit", arm)].append(t)
                marked[arm].append(m)
                ckpt = Path(tmp) / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
                t, m = run([*base, "test", *data, "--ckpt_path", str(ckpt)], tmp, arm)
                times[("test", arm)].append(t)
                marked[arm].append(m)
            print(
                f"round {r + 1}, prefetch {'on ' if arm else 'off'}: fit --test_after_fit {times[('fit --test_after_fit', arm)][-1]:.1f} s, "
                f"test {times[('test', arm)][-1]:.1f} s",
                flush=True,
            )
    print(f"\nmedians over {args.rounds} alternating rounds:")
    for cmd in ("fit --test_after_fit", "test"):
        on, off = statistics.median(times[(cmd, True)]), statistics.median(times[(cmd, False)])
        print(f"  {cmd:<22} prefetch on {on:5.1f} s, off {off:5.1f} s: saves {off - on:4.1f} s ({off / on:.2f}x)")
    print(
        f"prefetched runs that took the child's detection: {sum(marked[True])}/{len(marked[True])}; "
        f"runs without it that did: {sum(marked[False])}/{len(marked[False])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
