"""Every metric name the scorecard logs, in one registry: callbacks log these names; the table, the
dashboard, the gates and the tests read them from here.

Fixed names are :data:`METRICS` entries; attack metrics carry their radius in the name and are built by
:func:`at` (``at(FGSM_ACC, 0.1)`` → ``"adv/fgsm_acc@0.1"``), so a changed ``epsilons`` list changes the
names in one place and every reader follows. :func:`describe` answers for any logged key, and
:func:`check_known` refuses a misspelt name (a gate on it could never pass or fail meaningfully).
"""

from dataclasses import dataclass
from typing import Dict, Optional


@dataclass(frozen=True)
class Metric:
    """A scorecard metric: its key, a human label, its group and whether higher is better (None: neither)."""

    key: str
    label: str
    group: str
    higher_is_better: Optional[bool] = None
    per_rank: bool = False  # measured apart on every DDP rank (a timing): averaged over ranks, not one rank's value


def _m(key: str, label: str, group: str, higher: Optional[bool] = None, per_rank: bool = False) -> Metric:
    return Metric(key, label, group, higher, per_rank)


METRICS: Dict[str, Metric] = {
    m.key: m
    for m in (
        _m("train/loss", "training loss (members, not private)", "utility", False),
        _m("train/acc", "training accuracy (members, not private)", "utility", True),
        _m("val/loss", "validation loss", "utility", False),
        _m("val/acc", "validation accuracy", "utility", True),
        _m("test/loss", "test loss", "utility", False),
        _m("test/acc", "Clean accuracy", "utility", True),
        _m("adv/clean_acc", "clean accuracy (attacked subset)", "evasion", True),
        _m("mia/auc", "Membership-inference AUC (confidence)", "membership", False),
        _m("mia/loss_auc", "MIA AUC, loss attack", "membership", False),
        _m("mia/entropy_auc", "MIA AUC, entropy attack", "membership", False),
        _m("mia/modified_entropy_auc", "MIA AUC, modified-entropy attack", "membership", False),
        _m("mia/tpr@1%fpr", "MIA TPR at 1% FPR (strongest attack)", "membership", False),
        _m("mia/tpr@0.1%fpr", "MIA TPR at 0.1% FPR (strongest attack; ≥ 1,000 non-members)", "membership", False),
        _m("mia/tpr@0.1%fpr_low", "MIA TPR at 0.1% FPR, 95% interval low", "membership", False),
        _m("mia/tpr@0.1%fpr_high", "MIA TPR at 0.1% FPR, 95% interval high", "membership", False),
        _m("mia/dp_tpr_bound@0.1%fpr", "most TPR at 0.1% FPR (ε, δ)-DP allows: e^ε·0.001 + δ", "membership", None),
        _m("mia/rmia_auc", "RMIA AUC (reference models)", "membership", False),
        _m("mia/rmia_tpr@1%fpr", "RMIA TPR at 1% FPR", "membership", False),
        _m("mia/rmia_tpr@0.1%fpr", "RMIA TPR at 0.1% FPR", "membership", False),
        _m("mia/rmia_tpr@0.1%fpr_low", "RMIA TPR at 0.1% FPR, 95% interval low", "membership", False),
        _m("mia/rmia_tpr@0.1%fpr_high", "RMIA TPR at 0.1% FPR, 95% interval high", "membership", False),
        _m("mia/advantage", "MIA advantage max(TPR - FPR)", "membership", False),
        _m("privacy/epsilon", "ε (accountant)", "privacy", False),
        _m("privacy/noise_multiplier", "σ (noise multiplier)", "privacy", None),
        _m("privacy/epsilon_lower_bound", "ε lower bound (threshold audit: loss MIA on members vs held-out)", "privacy", None),
        _m("privacy/audit_epsilon_lower_bound", "ε lower bound (one-run canary audit)", "privacy", None),
        _m("privacy/audit_guess_accuracy", "one-run audit: correct canary guesses", "privacy", None),
        _m("sponge/reject_rate", "Sponge inputs rejected", "sponge", True),
        _m("sponge/reject_rate_gaussian", "Gaussian sponges rejected", "sponge", True),
        _m("sponge/reject_rate_crafted", "crafted sponges rejected", "sponge", True),
        _m("sponge/false_positive_rate", "clean digits rejected", "sponge", False),
        _m("sponge/energy_ratio", "crafted / clean activation energy", "sponge", None),
        _m("sponge/density_ratio", "crafted / clean activation density", "sponge", None),
        _m("sponge/latency_ratio", "crafted / clean forward latency", "sponge", None, per_rank=True),
        _m("poison/precision", "label-flip detection precision", "poison", True),
        _m("poison/recall", "label-flip detection recall", "poison", True),
        _m("poison/f1", "label-flip detection F1", "poison", True),
    )
}

# Attack metrics parameterised by their L∞ radius (pixel units): prefix → (label, group).
FGSM_ACC = "adv/fgsm_acc"
PGD_ACC = "adv/pgd_acc"
AUTOATTACK_ACC = "adv/autoattack_acc"
PARAMETRISED: Dict[str, Metric] = {
    FGSM_ACC: _m(FGSM_ACC, "FGSM accuracy", "evasion", True),
    PGD_ACC: _m(PGD_ACC, "PGD accuracy", "evasion", True),
    AUTOATTACK_ACC: _m(AUTOATTACK_ACC, "AutoAttack accuracy", "evasion", True),
}

GROUPS = ("utility", "evasion", "membership", "privacy", "sponge", "poison")
# The seed notebook's four headline metrics, printed first (FGSM rows: every logged radius).
SEED_KEYS = ("test/acc", FGSM_ACC, "mia/auc", "sponge/reject_rate")


def register(metric: Metric) -> Metric:
    """Add a fixed-name metric (for a new callback); re-registering a key with other fields is an error."""
    old = METRICS.get(metric.key)
    if old is not None and old != metric:
        raise ValueError(f"metric {metric.key!r} is already registered differently")
    METRICS[metric.key] = metric
    return metric


# The sponge check's bounds (issue 12): the most an accepted input can carry, over the clean 99.5th percentile.
register(_m("sponge/energy_bound_ratio", "accepted L2 energy bound / clean 99.5th pct", "sponge", False))
register(_m("sponge/density_bound_ratio", "accepted density bound / clean 99.5th pct", "sponge", False))


def register_parametrised(metric: Metric) -> Metric:
    """Add an attack metric family whose keys are ``<prefix>@<radius>``."""
    PARAMETRISED[metric.key] = metric
    return metric


def at(prefix: str, epsilon: float) -> str:
    """``"<prefix>@<epsilon:g>"``, e.g. ``at(FGSM_ACC, 0.0308)`` → ``"adv/fgsm_acc@0.0308"``."""
    if prefix not in PARAMETRISED:
        raise KeyError(f"{prefix!r} is not a parametrised metric")
    return f"{prefix}@{epsilon:g}"


def split(key: str) -> "tuple[str, Optional[float]]":
    """``("adv/fgsm_acc", 0.1)`` for ``"adv/fgsm_acc@0.1"``; ``(key, None)`` for fixed names."""
    prefix, sep, radius = key.partition("@")
    if sep and prefix in PARAMETRISED:
        try:
            return prefix, float(radius)
        except ValueError:
            pass
    return key, None


def describe(key: str) -> Optional[Metric]:
    """The registry entry for a logged key (radius included in the label), or None when unknown."""
    if key in METRICS:
        return METRICS[key]
    prefix, radius = split(key)
    if radius is None:
        return None
    family = PARAMETRISED[prefix]
    return Metric(key, f"{family.label} @ {radius:g}", family.group, family.higher_is_better)


def check_known(key: str, where: str) -> None:
    """ConfigError naming ``where`` when ``key`` is not a scorecard metric."""
    if describe(key) is None:
        from secure_ml.errors import ConfigError

        families = ", ".join(f"{p}@<eps>" for p in PARAMETRISED)
        raise ConfigError(f"{where}: '{key}' is not a scorecard metric (known: {', '.join(sorted(METRICS))}, {families})")
