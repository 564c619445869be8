"""RMIA (reference models) next to the four threshold attacks, on one checkpoint and one member/non-member split.

    python benchmarks/rmia_vs_threshold.py --run lightning_logs/version_0 [--references 1 4] [--seed 0]

Rebuilds the run's data and model from its ``config.yaml`` and ``checkpoints/last.ckpt``, then uses
the split of ``ReferenceMIACallback``: 1,000 training members (canaries excluded) against 1,000 of
the test digits; the reference models train on the other 1,000 test digits with the target's
recipe; RMIA's population records are the 800 validation digits. Prints AUC, TPR at 1% FPR and TPR
at 0.1% FPR with its 95% interval (:mod:`secure_ml.attacks.low_fpr`), the ceiling e^ε·FPR + δ that
the checkpoint's accountant ε allows, and the wall time of training the references.
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402

from secure_ml.attacks.low_fpr import dp_tpr_bound, tpr_at_fpr  # noqa: E402
from secure_ml.attacks.membership import SCORE_KINDS, membership_metrics, model_scores  # noqa: E402
from secure_ml.attacks.reference_mia import RMIASettings, rmia  # noqa: E402
from secure_ml.attacks.reference_models import train_reference_models  # noqa: E402
from secure_ml.callbacks.reference_mia import target_recipe  # noqa: E402
from secure_ml.data.canaries import without_canaries  # noqa: E402
from secure_ml.privacy.engine import epsilon_from_state  # noqa: E402
from secure_ml.privacy.ledger import DP_STATE_KEY  # noqa: E402
from secure_ml.train_cli import cli_main  # noqa: E402


def row(name, sm, sn, eps, delta) -> str:
    auc = membership_metrics(sm, sn).auc
    at1, at01 = tpr_at_fpr(sm, sn, 0.01), tpr_at_fpr(sm, sn, 0.001)
    bound = f"{dp_tpr_bound(eps, delta, 0.001):.4f}" if eps is not None else "none"
    return (
        f"{name:<22} AUC {auc:.4f}   TPR@1%FPR {at1.tpr:.4f}   TPR@0.1%FPR {at01.tpr:.4f} "
        f"[{at01.tpr_low:.4f}, {at01.tpr_high:.4f}]   DP ceiling at 0.1%: {bound}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a `secure-ml fit` run folder (config.yaml, checkpoints/last.ckpt)")
    parser.add_argument("--references", type=int, nargs="+", default=[1])
    parser.add_argument("--offline-a", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    for key in ("ckpt_path", "weights_only"):  # options of the `fit` subcommand; built here without one
        config.pop(key, None)
    config["trainer"]["logger"] = False
    cli = cli_main(config, run=False)
    model, dm = cli.model, cli.datamodule
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["state_dict"])
    model._resume_dp_state = ckpt.get(DP_STATE_KEY)
    net = model.net.eval()
    eps = epsilon_from_state(model._resume_dp_state, model.dp.delta) if model._resume_dp_state else None
    dm.setup("fit")
    mx, my = without_canaries(dm, *dm.train_dataset.tensors)
    tx, ty = dm.test_dataset.tensors
    zx, zy = dm.val_dataset.tensors
    perm = torch.randperm(len(ty), generator=torch.Generator().manual_seed(args.seed))
    half = len(ty) // 2
    nx, ny, rx, ry = tx[perm[:half]], ty[perm[:half]], tx[perm[half:]], ty[perm[half:]]
    pick = torch.randperm(len(my), generator=torch.Generator().manual_seed(args.seed + 1))[:half]
    mx, my = mx[pick], my[pick]
    print(
        f"{run}: {len(my)} members vs {len(ny)} non-members; accountant ε = {eps if eps is None else round(eps, 3)}, δ = {model.dp.delta:g}"
    )
    ms, ns = model_scores(net, mx, my), model_scores(net, nx, ny)
    for kind in SCORE_KINDS:
        print(row(f"threshold ({kind})", ms[kind], ns[kind], eps, model.dp.delta))
    recipe = target_recipe(model, dm, cli.trainer.max_epochs, None, len(without_canaries(dm, *dm.train_dataset.tensors)[1]))
    refs = []
    for count in sorted(args.references):
        t = time.perf_counter()
        refs += train_reference_models(recipe, rx, ry, count - len(refs), seed=args.seed + 7 * len(refs))
        trained = time.perf_counter() - t
        scores = rmia(net, refs, torch.cat([mx, nx]), torch.cat([my, ny]), zx, zy, RMIASettings(args.offline_a))
        print(
            row(f"RMIA ({count} reference)", scores[: len(my)], scores[len(my) :], eps, model.dp.delta) + f"   (+{trained:.0f} s training)"
        )


if __name__ == "__main__":
    main()
