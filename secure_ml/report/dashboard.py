"""The security dashboard: per-epoch curves and the final scorecard bars, as one matplotlib figure."""

from typing import Dict, List, Mapping, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from secure_ml.report.metric_names import AUTOATTACK_ACC, FGSM_ACC, PGD_ACC, split

# The final bars: (label, candidate keys) — the first key present is drawn. Attack families show their largest radius.
BAR_KEYS = [
    ("clean acc", ("test/acc", "val/acc")),
    ("MIA AUC", ("mia/auc",)),
    ("MIA loss AUC", ("mia/loss_auc",)),
    ("sponges rejected", ("sponge/reject_rate",)),
    ("clean rejected", ("sponge/false_positive_rate",)),
]
BAR_FAMILIES = ((FGSM_ACC, "FGSM acc"), (PGD_ACC, "PGD acc"), (AUTOATTACK_ACC, "AutoAttack acc"))


def _bars(final: Mapping[str, float]) -> List[Tuple[str, float]]:
    bars = [(label, next((final[k] for k in ks if k in final), None)) for label, ks in BAR_KEYS[:1]]
    for prefix, label in BAR_FAMILIES:
        family = [(split(k)[1], k) for k in final if split(k)[0] == prefix and split(k)[1] is not None]
        if family:
            radius, key = max(family)
            bars.append((f"{label}@{radius:g}", final[key]))
    bars += [(label, next((final[k] for k in ks if k in final), None)) for label, ks in BAR_KEYS[1:]]
    return [(label, v) for label, v in bars if v is not None]


def _series(history: List[Dict[str, float]], key: str):
    pts = [(h["epoch"], h[key]) for h in history if key in h]
    return [p[0] for p in pts], [p[1] for p in pts]


def _curves(ax, history, keys, title, ylabel, ylim=None) -> None:
    for key in keys:
        xs, ys = _series(history, key)
        if xs:
            ax.plot(xs, ys, marker="o", label=key)
    ax.set_title(title, y=1.0, pad=6)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def dashboard_figure(
    history: List[Dict[str, float]], final: Optional[Mapping[str, float]] = None, title: str = "secure-ml security dashboard"
):
    """``history``: one dict of metrics per epoch (with an ``epoch`` key); ``final``: the metrics for the bars (default: last epoch)."""
    final = dict(final if final is not None else (history[-1] if history else {}))
    keys = set().union(*history) if history else set()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    _curves(axes[0, 0], history, [k for k in ("train/acc", "val/acc") if k in keys], "Accuracy", "accuracy", (0, 1.02))
    _curves(axes[0, 1], history, sorted(k for k in keys if k.startswith("adv/")), "Robustness (FGSM / PGD, pixel ε)", "accuracy", (0, 1.02))
    ax = axes[1, 0]
    _curves(
        ax,
        history,
        sorted(k for k in keys if k.startswith("mia/") and k.endswith("auc")),
        "Membership inference & privacy",
        "AUC",
        (0.4, 1.02),
    )
    eps_keys = [k for k in ("privacy/epsilon", "privacy/epsilon_lower_bound") if k in keys]
    if eps_keys:
        twin = ax.twinx()
        for key, style in zip(eps_keys, ("-s", "--^")):
            xs, ys = _series(history, key)
            twin.plot(xs, ys, style, color="black" if key == "privacy/epsilon" else "dimgray", label=key)
        twin.set_ylabel("ε (accountant; empirical lower bound)")
        twin.set_ylim(bottom=0)
        twin.legend(fontsize=8, loc="center right")
    ax = axes[1, 1]
    bars = _bars(final)
    if bars:
        labels, values = zip(*bars)
        rects = ax.bar(
            labels,
            values,
            color=(["#2ecc71", "#e67e22", "#d35400", "#a04000", "#3498db", "#2980b9", "#e74c3c", "#95a5a6"] * 2)[: len(values)],
        )
        ax.bar_label(rects, labels=[f"{v:.3f}" for v in values], fontsize=8)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("value (0–1)")
    eps = final.get("privacy/epsilon")
    ax.set_title("Scorecard" + (f" (ε = {eps:.2f})" if eps is not None else ""), y=1.0, pad=6)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    # Fixed margins, not tight_layout(): measuring every tick label's extent took ~70% of the figure's render time
    # (benchmarks/callback_share.py), and the layout of this 2x2 figure does not depend on its numbers.
    fig.subplots_adjust(left=0.07, right=0.93, bottom=0.14, top=0.92, wspace=0.3, hspace=0.32)
    return fig
