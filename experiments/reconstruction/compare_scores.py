"""Which reconstruction score separates crafted sponges from clean digits: the comparison behind ``FAINT = 0.3``.

    python experiments/reconstruction/compare_scores.py --ckpt <run>/checkpoints/last.ckpt [--data-dir ../shared/data]

Uses the product's autoencoder (``ReconstructionConfig()`` from the cache, trained if missing). Crafts 200 sponges per
cell from test digits (sign/Adam x L2/L0 x 20/100 steps, lr 0.01) and 200 from noise, then, for each candidate score,
sets the limit as the policy would for one of four checks on the 800 validation digits (their maximum plus 0.1 x
(maximum - median)) and prints the test digits' false positives and the share of each cell above the limit.
Candidates: whole-image L1 and L2, L1 on pixels below 0.2 / 0.3 / 0.5, and MagNet's Jensen-Shannon divergence
between the classifier's softmax (T = 10) on the image and on its reconstruction.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sponge_attacks import load_net  # noqa: E402

from secure_ml.attacks.sponge import craft_sponges  # noqa: E402
from secure_ml.data import MNISTDataModule  # noqa: E402
from secure_ml.defenses.reconstruction import ReconstructionConfig, load_or_train  # noqa: E402


def scores(ae, net, x):
    with torch.no_grad():
        r = ae(x)
        e = r - x
        p, q = F.softmax(net(x) / 10, 1), F.softmax(net(r) / 10, 1)
        m = (p + q) / 2
        out = {"L1": e.abs().flatten(1).sum(1), "L2": e.square().flatten(1).sum(1)}
        for t in (0.2, 0.3, 0.5):
            out[f"L1 x<{t}"] = (e.abs() * (x < t)).flatten(1).sum(1)
        out["JSD T=10"] = 0.5 * ((p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1))
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--cache-dir", default="~/.cache/secure-ml/reconstruction")
    ap.add_argument("--per-cell", type=int, default=200)
    a = ap.parse_args()
    net, ae = load_net(a.ckpt), load_or_train(ReconstructionConfig(), a.cache_dir, print)
    dm = MNISTDataModule(data_dir=a.data_dir, download=False)
    dm.setup("fit")
    xv, xt = dm.val_dataset.tensors[0], dm.test_dataset.tensors[0]
    g = torch.Generator().manual_seed(1)
    digits = xt[torch.randperm(len(xt), generator=g)[: a.per_cell]]
    cells = {"20 noise sign L2": craft_sponges(net, torch.rand(a.per_cell, 1, 28, 28, generator=g), steps=20, lr=0.01)}
    for steps in (20, 100):
        for optimizer in ("sign", "adam"):
            for objective in ("l2", "l0"):
                s = craft_sponges(net, digits, steps=steps, lr=0.01, objective=objective, optimizer=optimizer)
                cells[f"{steps} {optimizer} {objective.upper()}"] = s
    sv, st = scores(ae, net, xv), scores(ae, net, xt)
    sc = {k: scores(ae, net, v) for k, v in cells.items()}
    print(f"{'score':<9} {'FP /' + str(len(xt)):>8}  " + "  ".join(f"{k:>16}" for k in cells))
    for name, v in sv.items():
        top, med = float(v.max()), float(v.median())
        limit = top + 0.1 * (top - med)
        fp = int((st[name] > limit).sum())
        print(f"{name:<9} {fp:>8}  " + "  ".join(f"{float((sc[k][name] > limit).double().mean()):>16.3f}" for k in cells))


if __name__ == "__main__":
    main()
