"""Training throughput of DP-SGD + FGSM with 1 vs several DDP processes on CPU (gloo).

    python benchmarks/ddp_throughput.py [--devices 1,2] [--epochs 1] [--data-dir ../shared/data]

Each configuration runs in its own subprocess (Lightning's DDP re-launches the script
per rank); CPU threads are split evenly between ranks (``nproc // devices`` each), so
the comparison is of the same machine used two ways. The timer starts at the first
training batch and stops at the end of the last, on rank 0: start-up, data loading and
sanitization are excluded. Reports samples/s (realised Poisson batch sizes summed over
ranks) and the ratio to the first configuration.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(a) -> None:
    import torch
    from lightning.pytorch import Callback, Trainer

    from secure_ml.adversarial import AdversarialConfig
    from secure_ml.data import MNISTDataModule
    from secure_ml.module import SecureClassifier
    from secure_ml.privacy.config import DPConfig

    class Clock(Callback):
        start = end = None
        samples = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.start is None:
                self.start = time.perf_counter()
            self.samples += len(batch[1])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.end = time.perf_counter()

    dm = MNISTDataModule(
        data_dir=a.data_dir, download=False, train_size=8000, val_size=800, test_size=100, batch_size=64, poisson_sampling=True
    )
    # hooks in both runs: ghost clipping (the 1-process default here) is not available under DDP
    model = SecureClassifier(adversarial=AdversarialConfig(epsilon=0.0308), dp=DPConfig(enabled=True, grad_sample_mode="hooks"))
    clock = Clock()
    trainer = Trainer(
        accelerator=a.accelerator,
        devices=a.devices,
        strategy="ddp" if a.devices > 1 else "auto",
        max_epochs=a.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        inference_mode=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[clock],
    )
    trainer.fit(model, dm)
    samples = trainer.strategy.reduce(torch.tensor(float(clock.samples)), reduce_op="sum")
    if trainer.global_rank == 0:
        Path(a.out).write_text(
            json.dumps({"devices": a.devices, "seconds": clock.end - clock.start, "samples": float(samples), "steps": trainer.global_step})
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="1,2", help="comma-separated process counts to compare")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--accelerator", default="cpu", help="the issue measures CPU processes; 'gpu' works on a GPU machine")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        a.devices = int(a.devices)
        return worker(a)
    rows = []
    for n in [int(d) for d in a.devices.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            threads = str(max(1, (os.cpu_count() or 1) // n))
            env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONPATH": str(REPO)}
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--devices",
                str(n),
                "--epochs",
                str(a.epochs),
                "--accelerator",
                a.accelerator,
                "--data-dir",
                a.data_dir,
                "--out",
                str(out),
            ]
            subprocess.run(cmd, check=True, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
            r = json.loads(out.read_text())
        r["threads_per_rank"] = int(threads)
        r["samples_per_s"] = r["samples"] / r["seconds"]
        rows.append(r)
    base = rows[0]["samples_per_s"]
    print(f"{'processes':>9} {'threads/rank':>12} {'steps':>6} {'samples':>8} {'seconds':>8} {'samples/s':>10} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['devices']:>9} {r['threads_per_rank']:>12} {r['steps']:>6} {r['samples']:>8.0f} {r['seconds']:>8.2f} {r['samples_per_s']:>10.1f} {r['samples_per_s'] / base:>6.2f}"
        )


if __name__ == "__main__":
    main()
