"""The scorecard printed by ``secure-ml test``: the seed's four metrics first, then the rest by group."""

from typing import Mapping

SEED_ROWS = [
    ("Clean accuracy", "test/acc"),
    ("FGSM accuracy @ 0.1", "adv/fgsm_acc@0.1"),
    ("Membership-inference AUC", "mia/auc"),
    ("Sponge inputs rejected", "sponge/reject_rate"),
]


def scorecard_table(metrics: Mapping[str, float]) -> str:
    rows = [(label, key, metrics[key]) for label, key in SEED_ROWS if key in metrics]
    seen = {key for _, key, _ in rows}
    rows += [("", key, metrics[key]) for key in sorted(metrics) if key not in seen and "/" in key]
    width = max([len(k) for _, k, _ in rows] + [6])
    lwidth = max([len(label) for label, _, _ in rows] + [6])
    lines = [f"{'Scorecard':<{lwidth}}  {'metric':<{width}}  value", "-" * (lwidth + width + 12)]
    lines += [f"{label:<{lwidth}}  {key:<{width}}  {value:.4f}" for label, key, value in rows]
    return "\n".join(lines)
