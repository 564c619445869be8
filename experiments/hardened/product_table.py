"""The hardened results table (mean ± std over product runs) from the metrics.json that `secure-ml test` wrote.

usage: python experiments/hardened/product_table.py h1 h2 h3   (run folders under experiments/hardened/runs/)
Each run's figures are those of its latest `secure-ml test` (the newest lightning_logs/version_* holding a metrics.json
with a "test" section); fit and test wall times come from the run's times.txt.
"""

import json
import statistics
import sys
from pathlib import Path

RUNS = Path(__file__).resolve().parent / "runs"
MIA_KEYS = ("mia/auc", "mia/loss_auc", "mia/entropy_auc", "mia/modified_entropy_auc")
ROWS = [
    ("ε (accountant, δ = 1e-5)", "privacy/epsilon", "≤ 1.5"),
    ("clean accuracy", "test/acc", "≥ 0.95"),
    ("FGSM accuracy @ 0.0308", "adv/fgsm_acc@0.0308", "≥ 0.92"),
    ("FGSM accuracy @ 0.1", "adv/fgsm_acc@0.1", "≥ 0.85"),
    ("PGD-20 accuracy @ 0.1", "adv/pgd_acc@0.1", "≥ 0.75"),
    ("AutoAttack accuracy @ 0.1", "adv/autoattack_acc@0.1", "≥ 0.75"),
    ("best threshold-attack MIA AUC (max of 4)", "best_threshold_auc", ""),
    ("RMIA AUC (1 reference model)", "mia/rmia_auc", ""),
    ("best MIA AUC (all attacks above)", "best_mia_auc", "≤ 0.53"),
    ("RMIA TPR @ 1% FPR", "mia/rmia_tpr@1%fpr", ""),
    ("RMIA TPR @ 0.1% FPR", "mia/rmia_tpr@0.1%fpr", ""),
    ("RMIA TPR @ 0.1% FPR, 95% interval high", "mia/rmia_tpr@0.1%fpr_high", ""),
]


def latest_test(run: Path) -> dict:
    found = []
    for metrics in run.glob("lightning_logs/version_*/metrics.json"):
        data = json.loads(metrics.read_text())
        if "test" in data:
            found.append((int(metrics.parent.name.split("_")[1]), data["test"]))
    if not found:
        raise SystemExit(f"{run}: no metrics.json with a test section")
    test = dict(max(found)[1])
    test["best_threshold_auc"] = max(test[k] for k in MIA_KEYS if k in test)
    test["best_mia_auc"] = max(test[k] for k in (*MIA_KEYS, "mia/rmia_auc") if k in test)
    return test


def times(run: Path) -> str:
    path = run / "times.txt"
    return path.read_text().strip().splitlines()[-1] if path.is_file() else "?"


def main(names):
    tests = {name: latest_test(RUNS / name) for name in names}
    print("| metric | " + " | ".join(names) + " | mean ± std | target |")
    print("|---|" + "---|" * (len(names) + 2))
    for label, key, target in ROWS:
        values = [t.get(key) for t in tests.values()]
        if all(v is None for v in values):
            continue
        shown = [f"{v:.4f}" if v is not None else "–" for v in values]
        present = [v for v in values if v is not None]
        spread = statistics.stdev(present) if len(present) > 1 else 0.0
        print(f"| {label} | " + " | ".join(shown) + f" | {statistics.mean(present):.4f} ± {spread:.4f} | {target} |")
    for name in names:
        print(f"{name}: {times(RUNS / name)}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["h1", "h2", "h3"])
