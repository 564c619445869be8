"""Cost of the four scorecard callbacks on a capstone epoch, with a per-callback breakdown.

    python benchmarks/callback_cost.py [--repeats 2] [--epochs 3] [--data-dir ../shared/data] [--threads N]

Fits the capstone (``configs/capstone.yaml``: 7,200 poisoned+sanitized digits, FGSM, DP-SGD in
the mode the capstone resolves to, batch 64, its 3 epochs) with and without the scorecard
callbacks at the sizes ``capstone.yaml`` gives them (robustness, membership, sponge, scorecard —
the dashboard figure included, logged to a TensorBoard logger in a temporary folder, as in a real
run), alternating the two ``--repeats`` times after one warm-up fit. The clock runs from the first
training batch to the end of ``on_fit_end`` (training, validation, the callbacks and their
end-of-fit work); it reports the median time per epoch, the overhead ratio against the target
(≤ 1.15, issue 10), the median seconds each callback spent per epoch, and the training batches' own
seconds per epoch in each arm (does anything the callbacks leave behind slow the steps that follow?).
"""

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from secure_ml.adversarial import AdversarialConfig  # noqa: E402
from secure_ml.data import MNISTDataModule, PoisonConfig, SanitizerConfig  # noqa: E402
from secure_ml.module import SecureClassifier  # noqa: E402
from secure_ml.privacy.config import DPConfig  # noqa: E402
from secure_ml.train_cli import SCORECARD_CALLBACKS  # noqa: E402

TARGET = 1.15
CAPSTONE = yaml.safe_load((REPO / "configs" / "capstone.yaml").read_text())
SPENT = defaultdict(list)  # callback key → seconds per epoch


class FitClock(Callback):
    """First training batch → end of on_fit_end (listed last, so the other callbacks' end-of-fit work is inside)."""

    def __init__(self):
        self.start = self.seconds = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.start is None:
            self.start = time.perf_counter()

    def on_fit_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


class BatchClock(Callback):
    """Seconds inside training batches (batch start → batch end), summed over the fit."""

    def __init__(self):
        self.t0, self.seconds = None, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seconds += time.perf_counter() - self.t0


def _timed(key, method):
    def run(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            SPENT[key][-1] += time.perf_counter() - t0

    return run


def scorecard_callbacks():
    """The capstone's four callbacks, each hook timed into SPENT[key]."""
    out = []
    for key, cls in SCORECARD_CALLBACKS.items():
        cb = cls(**(CAPSTONE.get(key) or {}))
        hooks = ("on_validation_epoch_start", "on_validation_batch_end", "on_validation_epoch_end", "on_train_epoch_end")
        # (the recording hooks' work inside the net's forward, EvalRecord, is in the with-callbacks arm's epoch, not in these)
        for hook in (*hooks, "on_train_epoch_start", "on_save_checkpoint", "on_fit_end"):
            if getattr(type(cb), hook) is not getattr(Callback, hook):
                setattr(cb, hook, _timed(key, getattr(cb, hook)))
        out.append(cb)
    return out


def run(dm, with_callbacks: bool, log_dir: str, epochs: int) -> tuple:
    """(seconds per epoch, training batches' seconds per epoch) of one fit; SPENT[key] gets each callback's seconds per epoch."""
    model = SecureClassifier(adversarial=AdversarialConfig(**CAPSTONE["model"]["adversarial"]), dp=DPConfig(**CAPSTONE["model"]["dp"]))
    clock, batches = FitClock(), BatchClock()
    for key in SCORECARD_CALLBACKS:
        SPENT[key].append(0.0)
    trainer = Trainer(
        max_epochs=epochs,
        logger=TensorBoardLogger(log_dir, name="bench", default_hp_metric=False),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        num_sanity_val_steps=0,
        callbacks=[batches, *(scorecard_callbacks() if with_callbacks else []), clock],
    )
    trainer.fit(model, dm)
    for key in SCORECARD_CALLBACKS:
        spent = SPENT[key].pop()
        if with_callbacks:
            SPENT[key].append(spent / epochs)
    return clock.seconds / epochs, batches.seconds / epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=CAPSTONE["trainer"]["max_epochs"], help="epochs per fit (default: the capstone's)")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    data = CAPSTONE["data"]
    dm = MNISTDataModule(
        data_dir=a.data_dir,
        download=False,
        train_size=data["train_size"],
        val_size=data["val_size"],
        test_size=data["test_size"],
        batch_size=data["batch_size"],
        poison=PoisonConfig(**data["poison"]),
        sanitizer=SanitizerConfig(**data["sanitizer"]),
        poisson_sampling=True,
    )
    with tempfile.TemporaryDirectory(prefix="secure-ml-callback-cost-") as log_dir:
        run(dm, True, log_dir, 1)  # warm-up: first-call costs (allocator, Opacus, torch.func, matplotlib) land in neither column
        for key in SCORECARD_CALLBACKS:
            SPENT[key].clear()
        times, steps = {False: [], True: []}, {False: [], True: []}
        for r in range(a.repeats):
            for flag in (False, True) if r % 2 == 0 else (True, False):  # the order alternates: drift hits both arms alike
                epoch, in_steps = run(dm, flag, log_dir, a.epochs)
                times[flag].append(epoch)
                steps[flag].append(in_steps)
    base, full = statistics.median(times[False]), statistics.median(times[True])
    paired = [f / b for f, b in zip(times[True], times[False])]  # each repeat's two fits ran back to back
    own = sum(statistics.median(spent) for spent in SPENT.values())
    print(f"torch threads={torch.get_num_threads()} repeats={a.repeats} epochs per fit={a.epochs}")
    print(f"epoch without security callbacks: {base:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times[False])})")
    print(f"epoch with security callbacks:    {full:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times[True])})")
    for key, spent in SPENT.items():
        print(f"  {key:<11} {statistics.median(spent):6.2f} s/epoch  ({statistics.median(spent) / base:6.1%} of the bare epoch)")
    print(f"  all hooks   {own:6.2f} s/epoch  ({own / base:6.1%} of the bare epoch)")
    print(
        f"training batches alone, s/epoch: without {statistics.median(steps[False]):.2f}, with {statistics.median(steps[True]):.2f}"
        f"  (runs without: {', '.join(f'{t:.2f}' for t in steps[False])}; with: {', '.join(f'{t:.2f}' for t in steps[True])})"
    )
    print(f"paired ratios (with / without, per repeat): {', '.join(f'{p:.3f}' for p in paired)}; median {statistics.median(paired):.3f}")
    print(f"overhead ratio: {full / base:.3f}  ({'PASS' if full / base <= TARGET else 'FAIL'} target <= {TARGET})")


if __name__ == "__main__":
    main()
