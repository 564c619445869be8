"""Which reconstruction score separates crafted sponges from clean digits: the comparisons behind ``FAINT`` and ``BACKGROUND``.

    python experiments/reconstruction/compare_scores.py --ckpt <run>/checkpoints/last.ckpt [--data-dir ../shared/data] [--steps 20,100]

Uses the product's autoencoder (``ReconstructionConfig()`` from the cache, trained if missing). Crafts 200 sponges per
cell from test digits (sign/Adam x L2/L0 x ``--steps``, lr 0.01) and 200 per objective from noise (20 signed steps), then, for each candidate score,
sets the limit as the policy would for one of four checks on the run's validation digits (``data.val_size`` of its
config.yaml: the (k+1)-th largest, k from the policy's budget α/4, plus 0.1 x (that - median)) and prints the test
digits' false positives and the share of each cell above the limit.
Candidates (x: the image, r: its reconstruction): whole-image L1 and L2; L1 on pixels with x below 0.2 / 0.3 / 0.5
(version 4 used x < 0.3); on pixels faint in both (x < 0.3 and r < 0.2: version 5; x and r < 0.2); on pixels the
autoencoder leaves faint (r < 0.05 / 0.1 / 0.2, whatever x); MagNet's Jensen-Shannon divergence between the
classifier's softmax (T = 10) on the image and on its reconstruction; and the product's version-5 check
(``v5 pair``: the faint and the background errors of ``reconstruction_error``, each at its own clean spread, one
limit for the pair, calibrated and applied by the policy's own ``calibrate_activation_limits`` / ``violated``).
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sponge_attacks import load_net, run_split  # noqa: E402

from secure_ml.attacks.sponge import craft_sponges  # noqa: E402
from secure_ml.data import MNISTDataModule  # noqa: E402
from secure_ml.defenses.calibration import budget_k, calibrate_activation_limits, order_limit, violated  # noqa: E402
from secure_ml.defenses.reconstruction import ReconstructionConfig, load_or_train, reconstruction_error  # noqa: E402


def scores(ae, net, x):
    with torch.no_grad():
        r = ae(x)
        e = r - x
        p, q = F.softmax(net(x) / 10, 1), F.softmax(net(r) / 10, 1)
        m = (p + q) / 2
        out = {"L1": e.abs().flatten(1).sum(1), "L2": e.square().flatten(1).sum(1)}
        for t in (0.2, 0.3, 0.5):
            out[f"L1 x<{t}"] = (e.abs() * (x < t)).flatten(1).sum(1)
        out["x<.3,r<.2"] = (e.abs() * ((x < 0.3) & (r < 0.2))).flatten(1).sum(1)
        out["x,r<.2"] = (e.abs() * ((x < 0.2) & (r < 0.2))).flatten(1).sum(1)
        for t in (0.05, 0.1, 0.2):
            out[f"r<{t}"] = (e.abs() * (r < t)).flatten(1).sum(1)
        out["JSD T=10"] = 0.5 * ((p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1))
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--cache-dir", default="~/.cache/secure-ml/reconstruction")
    ap.add_argument("--per-cell", type=int, default=200)
    ap.add_argument("--steps", default="20,100", help="ascent budgets of the sponges from digits")
    a = ap.parse_args()
    net, ae = load_net(a.ckpt), load_or_train(ReconstructionConfig(), a.cache_dir, print)
    dm = MNISTDataModule(data_dir=a.data_dir, download=False, **run_split(a.ckpt))
    dm.setup("fit")
    xv, xt = dm.val_dataset.tensors[0], dm.test_dataset.tensors[0]
    g = torch.Generator().manual_seed(1)
    digits = xt[torch.randperm(len(xt), generator=g)[: a.per_cell]]
    noise = torch.rand(a.per_cell, 1, 28, 28, generator=g)
    cells = {f"20 noise sign {o.upper()}": craft_sponges(net, noise, steps=20, lr=0.01, objective=o) for o in ("l2", "l0")}
    for steps in [int(v) for v in a.steps.split(",")]:
        for optimizer in ("sign", "adam"):
            for objective in ("l2", "l0"):
                s = craft_sponges(net, digits, steps=steps, lr=0.01, objective=objective, optimizer=optimizer)
                cells[f"{steps} {optimizer} {objective.upper()}"] = s
    sv, st = scores(ae, net, xv), scores(ae, net, xt)
    sc = {k: scores(ae, net, v) for k, v in cells.items()}
    k = budget_k(len(xv), 0.005, 4)
    print(f"limits: order statistic {k + 1} from the top of {len(xv)} validation scores, + 0.1 x (it - median)")
    print(f"{'score':<10} {'FP /' + str(len(xt)):>8}  " + "  ".join(f"{c:>16}" for c in cells))
    for name, v in sv.items():
        limit = order_limit(v, k, 0.1)
        fp = int((st[name] > limit).sum())
        print(f"{name:<10} {fp:>8}  " + "  ".join(f"{float((sc[c][name] > limit).double().mean()):>16.3f}" for c in cells))
    with torch.no_grad():
        pair = {"reconstruction": reconstruction_error(ae, xv)}
        limits = calibrate_activation_limits(pair, ["reconstruction"], k, 0.1)
        flagged = {c: violated({"reconstruction": reconstruction_error(ae, v)}, limits)["reconstruction"] for c, v in cells.items()}
        fp = int(violated({"reconstruction": reconstruction_error(ae, xt)}, limits)["reconstruction"].sum())
    print(f"{'v5 pair':<10} {fp:>8}  " + "  ".join(f"{float(flagged[c].double().mean()):>16.3f}" for c in cells))


if __name__ == "__main__":
    main()
