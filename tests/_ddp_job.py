"""DP training runs for tests/test_ddp.py, launched as a script so Lightning's DDP can spawn ranks.

    python tests/_ddp_job.py --data DIR --out DIR --devices 2 [--backend opacus|bk] [--fixed] [--noise 0] [--batch-size 32]
    python tests/_ddp_job.py --jobs JOBS.json    # {"out dir": [args of one run], ...}: the runs one after another

With ``--jobs`` the ranks are launched once and run every job in turn, each with its own Trainer, model
and data (the process group started by the first fit is reused): each launch costs two Python start-ups
importing Lightning, which were most of a test's time.

``--fixed`` replaces the Poisson draw by a fixed sequence of *global* batches (rank r
takes every world_size-th index of each), so 1- and 2-process runs see the same global
batches and must end with the same parameters. Each rank writes ``rank{r}.pt``. A one-process run may also be
called in-process (``main(argv)``), which saves the test a Python start-up.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader

from secure_ml.adversarial import AdversarialConfig
from secure_ml.data import MNISTDataModule
from secure_ml.data.sampling import EmptySafeDistributedPoissonSampler
from secure_ml.module import SecureClassifier
from secure_ml.privacy.config import DPConfig


def _global_batch(step: int, n: int, size: int):
    return torch.randperm(n, generator=torch.Generator().manual_seed(1000 + step))[:size].tolist()


class FixedSingle(UniformWithReplacementSampler):
    def __iter__(self):
        for t in range(self.steps):
            yield _global_batch(t, self.num_samples, 24)


class FixedDistributed(EmptySafeDistributedPoissonSampler):
    def __iter__(self):
        for t in range(self.num_batches):
            yield _global_batch(t, self.total_size, 24)[self.rank :: self.num_replicas]


class CountEmpty(Callback):
    empty = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.empty += int(len(batch[1]) == 0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--fixed", action="store_true")
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--backend", default="opacus", help="--model.dp.backend (opacus → hooks under DDP; bk)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--scorecard", action="store_true", help="add the security callbacks")
    a = ap.parse_args(argv)

    dm = MNISTDataModule(
        data_dir=a.data,
        download=False,
        train_size=500,
        val_size=100,
        test_size=100,
        batch_size=a.batch_size,
        poisson_sampling=True,
        sampling_seed=0,
    )
    if a.fixed:
        original = dm.train_dataloader

        def fixed_loader():
            loader = original()
            q = loader.batch_sampler.sample_rate
            if a.devices > 1:
                sampler = FixedDistributed(total_size=len(loader.dataset), sample_rate=q, shuffle=False)
            else:
                sampler = FixedSingle(num_samples=len(loader.dataset), sample_rate=q)
            return DataLoader(loader.dataset, batch_sampler=sampler, collate_fn=loader.collate_fn)

        dm.train_dataloader = fixed_loader
    dp = DPConfig(enabled=True, backend=a.backend, noise_seed=0)
    dp.noise_multiplier = a.noise  # σ = 0 is refused by validation; the equivalence test needs it
    torch.manual_seed(0)
    model = SecureClassifier(adversarial=AdversarialConfig(epsilon=0.05, ratio=0.5), dp=dp)
    counter = CountEmpty()
    security = []
    if a.scorecard:
        from secure_ml.callbacks import MembershipInferenceCallback, PredictionWriter, RobustnessCallback, Scorecard, SpongeCallback

        security = [
            RobustnessCallback(max_samples=32, pgd_max_samples=16, pgd_steps=2),
            MembershipInferenceCallback(max_samples=64),
            SpongeCallback(n_sponges=4, craft_steps=3, calibration_samples=40, max_samples=40),
            Scorecard(log_figure=False),
            PredictionWriter(),
        ]
    trainer = Trainer(
        accelerator="cpu",
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
        limit_val_batches=1.0 if a.scorecard else 0,
        callbacks=[counter, *security],
        default_root_dir=a.out,
    )
    trainer.fit(model, dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    test_metrics = None
    if a.scorecard:  # the test stage too: its report is written by rank 0 only (after a broadcast every rank joins)
        test_metrics = {k: float(v) for k, v in trainer.test(model, datamodule=dm, verbose=False)[0].items()}
        trainer.predict(model, datamodule=dm, return_predictions=False)  # predictions.csv, written by rank 0 alone
    flat = torch.cat([p.detach().flatten() for p in model.net.parameters()])
    eps = model.private.epsilon(dp.delta) if a.noise > 0 else None
    torch.save(
        {
            "params": flat,
            "epsilon": eps,
            "steps": model.private.steps,
            "sample_rate": model.private.sample_rate,
            "optimizer": type(trainer.optimizers[0]).__name__,
            "mode": model.private.mode,
            "empty": counter.empty,
            "global_step": trainer.global_step,
            "metrics": metrics,
            "test_metrics": test_metrics,
        },
        Path(a.out) / f"rank{trainer.global_rank}.pt",
    )


def run_jobs(path: str) -> None:
    """Every run of the JSON file ``path`` ({out dir: [args]}), in its order."""
    for out, args in json.loads(Path(path).read_text()).items():
        main([*args, "--out", out])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--jobs":
        run_jobs(sys.argv[2])
    else:
        main()
