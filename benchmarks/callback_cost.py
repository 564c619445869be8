"""Cost of the per-epoch security callbacks on the capstone scenario (CPU or whatever Lightning picks).

    python benchmarks/callback_cost.py [--repeats 2] [--data-dir ../shared/data]

Trains one capstone epoch (7,200 poisoned+sanitized digits, FGSM, Opacus DP-SGD, batch 64)
with and without the scorecard callbacks of ``configs/capstone.yaml`` (their default
sizes), alternating the two ``--repeats`` times, and reports the median wall time of the
epoch — training, validation and the callbacks, i.e. from the first training batch to the
end of the epoch — and the overhead ratio. Target: ≤ 1.25.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402

from secure_ml.adversarial import AdversarialConfig  # noqa: E402
from secure_ml.callbacks import MembershipInferenceCallback, RobustnessCallback, Scorecard, SpongeCallback  # noqa: E402
from secure_ml.data import MNISTDataModule, PoisonConfig, SanitizerConfig  # noqa: E402
from secure_ml.module import SecureClassifier  # noqa: E402
from secure_ml.privacy.config import DPConfig  # noqa: E402


class EpochClock(Callback):
    def __init__(self):
        self.start = self.seconds = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def run(dm, with_callbacks: bool) -> float:
    cap = yaml.safe_load((REPO / "configs" / "capstone.yaml").read_text())["model"]
    model = SecureClassifier(adversarial=AdversarialConfig(**cap["adversarial"]), dp=DPConfig(**cap["dp"]))
    clock = EpochClock()
    security = (
        [RobustnessCallback(), MembershipInferenceCallback(), SpongeCallback(), Scorecard(log_figure=False)] if with_callbacks else []
    )
    trainer = Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        num_sanity_val_steps=0,
        callbacks=security + [clock],
    )
    trainer.fit(model, dm)
    return clock.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    a = ap.parse_args()
    data = yaml.safe_load((REPO / "configs" / "capstone.yaml").read_text())["data"]
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
    run(dm, True)  # warm-up: first-call costs (allocator, Opacus, torch.func) land in neither column
    times = {False: [], True: []}
    for _ in range(a.repeats):
        for flag in (False, True):
            times[flag].append(run(dm, flag))
    base, full = statistics.median(times[False]), statistics.median(times[True])
    print(f"epoch without security callbacks: {base:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times[False])})")
    print(f"epoch with security callbacks:    {full:.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times[True])})")
    print(f"overhead ratio: {full / base:.3f}  ({'PASS' if full / base <= 1.25 else 'FAIL'} target <= 1.25)")


if __name__ == "__main__":
    main()
