"""End to end: the seed notebook's training + evaluation vs `secure-ml fit` + `secure-ml test` of capstone.yaml.

Both do 3 epochs of DP-SGD with FGSM on the same 8,000 training digits and evaluate on the same 2,000
test digits; secure-ml also runs the sanitizer and the full per-epoch scorecard (FGSM/PGD, four
membership attacks and the audit, sponge crafting and the input policy, the dashboard), writes
checkpoints and TensorBoard logs, and `test` prints the scorecard. Each round runs both (the order
alternating) as fresh processes, so start-up costs count; the medians and their ratio are printed.

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
    seed_cmd = [[py, str(REPO / "benchmarks" / "seed_notebook.py"), "--data-dir", data]]
    times = {"seed notebook": [], "secure-ml fit + test": []}
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="secure-ml-e2e-") as tmp:
            common = ["--config", str(REPO / "configs" / "capstone.yaml"), "--data.data_dir", data, "--data.download", "false"]
            ckpt = str(Path(tmp) / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
            ours = [
                [py, "-m", "secure_ml", "fit", *common, "--trainer.enable_progress_bar", "false"],
                [py, "-m", "secure_ml", "test", *common, "--trainer.enable_progress_bar", "false", "--ckpt_path", ckpt],
            ]
            order = [("seed notebook", seed_cmd), ("secure-ml fit + test", ours)]
            for name, cmds in order if r % 2 == 0 else order[::-1]:
                times[name].append(timed(cmds, tmp))
                print(f"round {r + 1}: {name:<22} {times[name][-1]:6.1f} s", flush=True)
    seed, ours = statistics.median(times["seed notebook"]), statistics.median(times["secure-ml fit + test"])
    print(f"\nmedian over {args.rounds} alternating rounds: seed notebook {seed:.1f} s, secure-ml fit + test {ours:.1f} s")
    ratio = seed / ours
    print(f"{'PASS' if ratio >= 3 else 'FAIL'}  secure-ml >= 3x faster end to end (ratio {ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
