"""Where the time of `secure-ml fit --test_after_fit true` of capstone.yaml goes, phase by phase (wall clock).

    python benchmarks/phase_times.py --data-dir ../shared/data [--exit-rounds 4]

Runs the capstone's fit and its test in one process with :class:`PhaseClock` appended to ``--trainer.callbacks``; the
clock prints seconds since the parent started the process at each Lightning hook, and this script sums them into
phases: start-up (Python, imports, the CLI's parse), data (Trainer set-up, reading the digits, poisoning, the
sanitizer), training (the epochs' batches), validation with the scorecard callbacks, the end of fit (checkpoints,
dashboard), and the test: its loop, its callbacks (the RMIA reference model among them), the report, and the
interpreter's shutdown.

Then ``--exit-rounds`` alternating runs of ``secure-ml fit --config configs/capstone.yaml --print_config`` (imports,
parse, exit) started through :func:`secure_ml.cli.main` and through the console entry point
:func:`secure_ml.cli.console` (which leaves the live objects to the OS at exit): the medians show what the shutdown's
garbage collections cost each command.
"""

import argparse
import atexit
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]


def _stamp(what: str) -> None:
    print(f"[phase] {time.time() - float(os.environ['PHASE_T0']):.3f} {what}", file=sys.stderr, flush=True)


class PhaseClock(Callback):
    """Prints ``[phase] <seconds since PHASE_T0> <hook>`` at the hooks that bound the phases."""

    def __init__(self):
        _stamp("parsed")  # the CLI instantiates callbacks once its imports and the parse are done
        atexit.register(_stamp, "atexit")  # the command has returned; what follows is the interpreter's shutdown

    def setup(self, trainer, pl_module, stage):
        _stamp(f"setup_{stage}")  # after the datamodule's setup (the sanitizer)

    def on_train_epoch_start(self, *args):
        _stamp("train_start")

    def on_validation_start(self, trainer, *args):
        _stamp("val_start" if not trainer.sanity_checking else "sanity_start")

    def on_validation_end(self, trainer, *args):
        _stamp("val_end" if not trainer.sanity_checking else "sanity_end")

    def on_fit_end(self, *args):
        _stamp("fit_end")

    def on_test_epoch_end(self, *args):
        _stamp("test_loop_end")  # runs before the scorecard callbacks' test hooks (this callback is listed first)

    def on_test_end(self, *args):
        _stamp("test_callbacks_end")


def phases(stamps: list) -> dict:
    """Seconds per phase from ``[(t, hook), ...]`` in order; the end is ``(t, "exit")``."""
    out = dict.fromkeys(("start-up", "data + sanitizer", "training batches", "validation + scorecard + checkpoints", "end of fit"), 0.0)
    out.update(dict.fromkeys(("test set-up + loop", "test callbacks (RMIA, ...)", "report + teardown", "interpreter exit"), 0.0))
    phase_after = {
        "parsed": "data + sanitizer",
        "setup_fit": "validation + scorecard + checkpoints",
        "sanity_start": "validation + scorecard + checkpoints",
        "sanity_end": "validation + scorecard + checkpoints",
        "train_start": "training batches",
        "val_start": "validation + scorecard + checkpoints",
        "val_end": "validation + scorecard + checkpoints",
        "fit_end": "end of fit",
        "setup_test": "test set-up + loop",
        "test_loop_end": "test callbacks (RMIA, ...)",
        "test_callbacks_end": "report + teardown",
        "atexit": "interpreter exit",
    }
    prev_t, phase = 0.0, "start-up"
    for t, hook in stamps:
        out[phase] += t - prev_t
        prev_t, phase = t, phase_after.get(hook, phase)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--exit-rounds", type=int, default=4, help="runs of each exit arm (0: skip)")
    args = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "secure_ml", "fit", "--config", str(REPO / "configs" / "capstone.yaml")]
    cmd += ["--data.data_dir", str(Path(args.data_dir).resolve()), "--data.download", "false", "--trainer.enable_progress_bar", "false"]
    cmd += ["--test_after_fit", "true", "--trainer.callbacks+=phase_times.PhaseClock"]
    with tempfile.TemporaryDirectory(prefix="secure-ml-phases-") as cwd:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")]),
            "PHASE_T0": repr(time.time()),
        }
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        total = time.time() - float(env["PHASE_T0"])
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    stamps = [(float(t), hook) for _, t, hook in (line.split() for line in proc.stderr.splitlines() if line.startswith("[phase] "))]
    for name, seconds in phases(stamps + [(total, "exit")]).items():
        print(f"{name:<38} {seconds:6.1f} s")
    print(f"{'total':<38} {total:6.1f} s")
    if args.exit_rounds:
        exit_costs(args.exit_rounds)
    return 0


def exit_costs(rounds: int) -> None:
    """``secure-ml fit --print_config`` through cli.main (the interpreter's own shutdown) and cli.console, alternating."""
    argv = ["fit", "--config", str(REPO / "configs" / "capstone.yaml"), "--print_config"]
    arms = {
        "cli.main (plain shutdown)": [sys.executable, "-c", "from secure_ml.cli import main; main()", *argv],
        "cli.console (python -m secure_ml)": [sys.executable, "-m", "secure_ml", *argv],
    }
    times = {name: [] for name in arms}
    for r in range(rounds):
        for name in list(arms) if r % 2 == 0 else list(arms)[::-1]:
            t0 = time.perf_counter()
            subprocess.run(arms[name], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - t0)
    print(f"\nsecure-ml fit --print_config, median of {rounds}:")
    for name, t in times.items():
        print(f"  {name:<36} {statistics.median(t):5.2f} s  ({', '.join(f'{x:.2f}' for x in t)})")


if __name__ == "__main__":
    sys.exit(main())
