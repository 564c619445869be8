"""What pausing the cyclic collector during the start-up saves (:mod:`secure_ml.startup_gc`): each command with it and
without (``SECURE_ML_GC_PAUSE=1`` / ``0``), alternately.

    python benchmarks/startup_gc.py --data-dir ../shared/data [--rounds 3]

Each round runs, in both arms (the order swapped every round, fresh folders): ``secure-ml fit --print_config`` of the
capstone (imports and the parse, then exit: the start-up alone), ``secure-ml fit`` of the capstone, and ``secure-ml test
--ckpt_path`` of that fit's ``last.ckpt``. Prints every run, the medians and each arm's saving.
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

COMMANDS = ("fit --print_config", "fit", "test")


def run(cmd, cwd, pause: bool) -> float:
    env = {**os.environ, "SECURE_ML_GC_PAUSE": "1" if pause else "0", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse(__doc__, argv)
    base, data = capstone(args.data_dir)
    times = {(cmd, arm): [] for cmd in COMMANDS for arm in (True, False)}
    for r in range(args.rounds):
        for arm in (True, False) if r % 2 == 0 else (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                times[(COMMANDS[0], arm)].append(run([*base, "fit", *data, "--print_config"], tmp, arm))
                times[("fit", arm)].append(run([*base, "fit", *data], tmp, arm))
                ckpt = Path(tmp) / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
                times[("test", arm)].append(run([*base, "test", *data, "--ckpt_path", str(ckpt)], tmp, arm))
            row = ", ".join(f"{cmd} {times[(cmd, arm)][-1]:.2f} s" for cmd in COMMANDS)
            print(f"round {r + 1}, gc pause {'on ' if arm else 'off'}: {row}", flush=True)
    print(f"\nmedians over {args.rounds} alternating rounds:")
    for cmd in COMMANDS:
        on, off = statistics.median(times[(cmd, True)]), statistics.median(times[(cmd, False)])
        print(f"  {cmd:<20} pause on {on:5.2f} s, off {off:5.2f} s: saves {off - on:5.2f} s ({off / on:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
