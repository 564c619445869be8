"""End to end: the seed notebook's training + evaluation vs `secure-ml fit` + `secure-ml test` of capstone.yaml.

Three arms per round: the seed notebook's script; ``secure-ml fit`` then ``secure-ml test --ckpt_path last.ckpt`` (two
processes, the issue's measure); and ``secure-ml fit --test_after_fit true`` (the same fit and test in one process:
one start-up, the training set sanitized once).

Both do 3 epochs of DP-SGD with FGSM on the same 8,000 training digits and evaluate on the same 2,000
test digits; secure-ml also runs the sanitizer and the full per-epoch scorecard (FGSM/PGD, four
membership attacks and the audit, sponge crafting and the input policy, the dashboard), writes
checkpoints and TensorBoard logs, and `test` prints the scorecard. Each round runs the three arms (the order
reversed every other round) as fresh processes in fresh folders, so start-up costs count; the medians and the
ratios to the seed are printed.

    python benchmarks/end_to_end.py --data-dir ../shared/data [--rounds 2]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(cmds, cwd) -> float:
    t0 = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    data = str(Path(args.data_dir).resolve())
    py = sys.executable
    common = ["--config", str(REPO / "configs" / "capstone.yaml"), "--data.data_dir", data, "--data.download", "false"]
    common += ["--trainer.enable_progress_bar", "false"]

    def arms(cwd: str) -> dict:
        """Each arm's commands, run in the fresh folder ``cwd``."""
        ckpt = str(Path(cwd) / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
        return {
            "seed notebook": [[py, str(REPO / "benchmarks" / "seed_notebook.py"), "--data-dir", data]],
            "secure-ml fit + test": [
                [py, "-m", "secure_ml", "fit", *common],
                [py, "-m", "secure_ml", "test", *common, "--ckpt_path", ckpt],
            ],
            "fit --test_after_fit": [[py, "-m", "secure_ml", "fit", *common, "--test_after_fit", "true"]],
        }

    names = list(arms("."))
    times = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            with tempfile.TemporaryDirectory(prefix="secure-ml-e2e-") as cwd:
                times[name].append(timed(arms(cwd)[name], cwd))
            print(f"round {r + 1}: {name:<22} {times[name][-1]:6.1f} s", flush=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"\nmedian over {args.rounds} alternating rounds: " + ", ".join(f"{k} {v:.1f} s" for k, v in med.items()))
    for name in ("secure-ml fit + test", "fit --test_after_fit"):
        ratio = med["seed notebook"] / med[name]
        print(f"{'PASS' if ratio >= 3 else 'FAIL'}  {name}: >= 3x faster than the seed notebook end to end (ratio {ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
