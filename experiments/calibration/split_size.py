"""How the calibration split's size and the headroom move the input policy's false positives and its sponge rejection.

    OMP_NUM_THREADS=1 python experiments/calibration/split_size.py --ckpt <run>/checkpoints/last.ckpt [--data-dir ../shared/data]

Pools the non-members of the checkpoint's split (its validation digits, ``data.val_size`` of its run, + 2,000 test digits) and scores them once with the
policy's checks (the product's autoencoder included). Then, for ``--resamples`` random splits per design, calibrates on
N digits of the pool (``InputPolicy.from_scores``, the policy's own budget α = 0.5 % over its checks) and measures
the false positives on the rest of the pool and the share of crafted sponges rejected. Sponges: 20-step
sign/Adam x L2/L0 ascents (lr 0.01), ``--per-cell`` each from noise and from training members (not in the pool).
Prints, per design, the mean false positives, their 95th percentile, the share of splits above 0.5 %, and the
rejection's mean, 5th percentile and share of splits below 0.99.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from sponge_attacks import load_net, rejected, run_split  # noqa: E402

from secure_ml.attacks.sponge import craft_sponges  # noqa: E402
from secure_ml.data import MNISTDataModule  # noqa: E402
from secure_ml.defenses import InputPolicy  # noqa: E402
from secure_ml.defenses.calibration import POLICY_CHECKS, violated  # noqa: E402
from secure_ml.defenses.reconstruction import ReconstructionConfig, encode, load_or_train  # noqa: E402


def flags(policy: InputPolicy, scores: dict, static: torch.Tensor) -> torch.Tensor:
    """Which images ``policy`` rejects, from their precomputed scores (``static``: the pixel checks' verdicts)."""
    limits = {check: getattr(policy, f"max_{check}") for check in POLICY_CHECKS}
    return torch.stack(list(violated(scores, limits).values())).any(0) | static


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--cache-dir", default="~/.cache/secure-ml/reconstruction")
    ap.add_argument("--per-cell", type=int, default=100)
    ap.add_argument("--resamples", type=int, default=400)
    ap.add_argument("--designs", default="800:0.1,800:0.3,1200:0.1,1600:0.1,1600:0", help="N:headroom pairs")
    a = ap.parse_args()
    net = load_net(a.ckpt)
    blob = encode(load_or_train(ReconstructionConfig(), a.cache_dir, print))
    dm = MNISTDataModule(data_dir=a.data_dir, download=False, **run_split(a.ckpt))
    dm.setup("fit")
    pool = torch.cat([dm.val_dataset.tensors[0], dm.test_dataset.tensors[0]])
    members = dm.train_dataset.tensors[0]
    holder = InputPolicy(reconstruction_net=blob)  # limit-free: only its scoring is used
    pool_scores, pool_static = holder.scores(net, pool), rejected(InputPolicy(), net, pool)
    g = torch.Generator().manual_seed(1)
    starts = members[torch.randperm(len(members), generator=g)[: a.per_cell]]
    sponges = []
    for optimizer in ("sign", "adam"):
        for objective in ("l2", "l0"):
            for x0 in (torch.rand(a.per_cell, 1, 28, 28, generator=g), starts):
                sponges.append(craft_sponges(net, x0, steps=20, lr=0.01, objective=objective, optimizer=optimizer))
    sponges = torch.cat(sponges)
    sponge_scores, sponge_static = holder.scores(net, sponges), rejected(InputPolicy(), net, sponges)
    print(f"{len(pool)} non-members, {len(sponges)} crafted 20-step sponges; {a.resamples} random splits per design")
    print(f"  {'N':>5} {'headroom':>8} {'FP mean':>8} {'FP q95':>7} {'P(FP>0.5%)':>10} {'rej mean':>8} {'rej q05':>7} {'P(rej<0.99)':>11}")
    for design in a.designs.split(","):
        n, headroom = int(design.split(":")[0]), float(design.split(":")[1])
        gen = torch.Generator().manual_seed(0)
        fps, rej = [], []
        for _ in range(a.resamples):
            perm = torch.randperm(len(pool), generator=gen)
            cal, rest = perm[:n], perm[n:]
            p = InputPolicy.from_scores({k: v[cal] for k, v in pool_scores.items()}, headroom=headroom, reconstruction_net=blob)
            fps.append(flags(p, {k: v[rest] for k, v in pool_scores.items()}, pool_static[rest]).double().mean())
            rej.append(flags(p, sponge_scores, sponge_static).double().mean())
        fps, rej = torch.stack(fps), torch.stack(rej)
        print(
            f"  {n:>5} {headroom:>8.2f} {fps.mean():>8.4f} {torch.quantile(fps, 0.95):>7.4f} {(fps > 0.005).double().mean():>10.3f} "
            f"{rej.mean():>8.4f} {torch.quantile(rej, 0.05):>7.4f} {(rej < 0.99).double().mean():>11.3f}"
        )


if __name__ == "__main__":
    main()
