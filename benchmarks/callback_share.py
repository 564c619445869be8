"""Share of a capstone epoch spent in the scorecard callbacks, estimated in ONE process (robust to a noisy machine).

    OMP_NUM_THREADS=1 python benchmarks/callback_share.py [--rounds 4] [--steps-per-epoch 99] [--threads 1]

``benchmarks/callback_cost.py`` (whole fits with and without the callbacks) is the figure of record;
on a shared, loaded machine its two arms drift apart by more than the effect. This script alternates,
round by round, 12 DP training steps (the mode the capstone resolves to, FGSM ε = 0.0308, batch 64, real digits),
the validation forward over 800 digits (plain, and with the callbacks' recording hooks: the extra time counts as
theirs), each evaluation callback at ``capstone.yaml``'s sizes (reusing that recorded forward, as in a fit) and
one dashboard figure (built and rendered as TensorBoard does), and reports medians and
``callbacks / (steps_per_epoch · step + validation)`` with the figure once per epoch and once per
3-epoch fit. ``--steps-per-epoch`` defaults to the capstone's 99 Poisson batches.
"""

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402
from opacus.data_loader import DPDataLoader  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from torch.utils.tensorboard._utils import figure_to_image  # noqa: E402

from secure_ml.adversarial import AdversarialConfig  # noqa: E402
from secure_ml.callbacks import MembershipInferenceCallback, RobustnessCallback, SpongeCallback  # noqa: E402
from secure_ml.callbacks.eval_record import EvalRecord  # noqa: E402
from secure_ml.data.mnist import load_mnist  # noqa: E402
from secure_ml.models import SmallCNN  # noqa: E402
from secure_ml.models.batching import EVAL_BATCH  # noqa: E402
from secure_ml.privacy.config import DPConfig  # noqa: E402
from secure_ml.privacy.engine import make_private  # noqa: E402
from secure_ml.report.dashboard import dashboard_figure  # noqa: E402

VAL_BATCH = max(64, EVAL_BATCH)  # MNISTDataModule's validation batch: max(batch_size, EVAL_BATCH)
CAPSTONE = yaml.safe_load((REPO / "configs" / "capstone.yaml").read_text())
HISTORY = [
    {"epoch": e, "train/acc": 0.8, "val/acc": 0.9, "mia/auc": 0.5, "mia/loss_auc": 0.5, "adv/fgsm_acc@0.1": 0.5}
    | {"adv/pgd_acc@0.1": 0.4, "privacy/epsilon": 1.0, "sponge/reject_rate": 1.0}
    for e in range(3)
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps-per-epoch", type=int, default=99)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x, y = load_mnist(a.data_dir, train=True, download=False)
    torch.manual_seed(0)
    net = SmallCNN()
    loader = DPDataLoader.from_data_loader(DataLoader(TensorDataset(x[:7200], y[:7200]), batch_size=64))
    adv = AdversarialConfig(**CAPSTONE["model"]["adversarial"])
    dp = DPConfig(**CAPSTONE["model"]["dp"])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    try:
        from secure_ml.privacy.modes import resolve_mode
        from secure_ml.privacy.steps import dp_step

        mode = resolve_mode(dp, mixed=adv.active and 0 < adv.ratio < 1, distributed=False, net=net)  # as SecureClassifier resolves it
        private = make_private(net, optimizer, loader, dp, 3 * len(loader), mode=mode)

        def step(xb, yb):
            dp_step(private, net, private.optimizer, xb, yb, adv)

    except ImportError:  # a tree from before secure_ml.privacy.steps (main at 16542d0): its own ghost step, as SecureClassifier ran it
        from secure_ml.attacks import fgsm

        private = make_private(net, optimizer, loader, dp, 3 * len(loader), grad_sample_mode="ghost")

        def step(xb, yb):
            with private.hooks_disabled():
                xa = fgsm(net, xb, yb, adv.epsilon)
            private.optimizer.zero_grad()
            private.criterion(net(xa), yb).backward()
            private.optimizer.step()

    dm = types.SimpleNamespace(train_dataset=TensorDataset(x[:7200], y[:7200]), val_dataset=TensorDataset(x[7200:8000], y[7200:8000]))
    trainer = types.SimpleNamespace(datamodule=dm, testing=False, sanity_checking=False)
    pl = types.SimpleNamespace(net=net, trainer=trainer, device=torch.device("cpu"), dp=dp, private=private)
    callbacks = {
        "robustness": RobustnessCallback(**(CAPSTONE.get("robustness") or {})),
        "membership": MembershipInferenceCallback(**(CAPSTONE.get("membership") or {})),
        "sponge": SpongeCallback(**(CAPSTONE.get("sponge") or {})),
    }
    times = {k: [] for k in ["step", "validation", "records", *callbacks, "figure"]}
    xv = x[7200:8000]
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 64 * 12, 64)]
    for _ in range(a.rounds):
        t = time.perf_counter()
        for xb, yb in batches:
            step(xb, yb)
        times["step"].append((time.perf_counter() - t) / len(batches))
        net.eval()
        t = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(xv), VAL_BATCH):
                net(xv[i : i + VAL_BATCH])
        times["validation"].append(time.perf_counter() - t)
        # The same validation forward with the callbacks' recording hooks (EvalRecord): the extra time is theirs.
        t = time.perf_counter()
        records = {k: EvalRecord(net, xv, cb.record_activations) for k, cb in callbacks.items() if "val" in cb.record_stages}
        with torch.no_grad():
            for i in range(0, len(xv), VAL_BATCH):
                net(xv[i : i + VAL_BATCH])
                for r in records.values():
                    r.batch((xv[i : i + VAL_BATCH],))
        complete = {k: r for k, r in records.items() if r.finish()}
        times["records"].append(max(time.perf_counter() - t - times["validation"][-1], 0.0))
        for key, cb in callbacks.items():
            cb.recorded = complete.get(key)
            t = time.perf_counter()
            cb.evaluate(pl, "val")
            times[key].append(time.perf_counter() - t)
            cb.recorded = None
        t = time.perf_counter()
        figure_to_image(dashboard_figure(HISTORY), close=True)
        times["figure"].append(time.perf_counter() - t)
        net.train()
    m = {k: statistics.median(v) for k, v in times.items()}
    epoch = a.steps_per_epoch * m["step"] + m["validation"]
    print(
        f"mode={getattr(private, 'mode', 'ghost')} threads={a.threads} rounds={a.rounds} "
        + " ".join(f"{k}={v:.3f}s" for k, v in m.items())
        + f" epoch={epoch:.1f}s"
    )
    for per_epoch, label in ((1.0, "figure every epoch"), (1 / 3, "figure once per 3-epoch fit")):
        cost = m["records"] + sum(m[k] for k in callbacks) + per_epoch * m["figure"]
        print(f"{label:<28} callbacks {cost:5.2f} s = {cost / epoch:5.1%} of a capstone epoch (target <= 15%)")


if __name__ == "__main__":
    main()
