"""Threshold (ROC) audit: a statistical lower bound on ε from a membership attack on ordinary members vs non-members.

Not to be confused with the one-run canary audit (:mod:`secure_ml.privacy.one_run_audit`), which inserts
canaries by coin flip and can certify a large ε for a non-private run. This one needs no change to the
training set: it reads the ROC of a threshold attack on the training members against held-out digits.

For an (ε, δ)-DP mechanism every membership test ("member iff score ≥ t") satisfies

    TPR ≤ e^ε · FPR + δ      and      1 − FPR ≤ e^ε · (1 − TPR) + δ,

so each ROC point certifies ε ≥ max(log((TPR − δ) / FPR), log((1 − FPR − δ) / (1 − TPR))).
Following Jagielski et al. (2020) and Nasr et al. (2021) we replace TPR by its Clopper–Pearson
lower bound and FPR by its upper bound (both make either ratio smaller), so the bound holds
with the requested confidence instead of only in expectation.

Two corrections keep the bound honest when it is the maximum over many thresholds:
the miscoverage α = 1 − confidence is split between the TPR and FPR intervals and, by
default, Bonferroni-divided over the thresholds examined, so "ε_lb > true ε" has probability
at most α overall. Integer counts per threshold are needed for Clopper–Pearson, which is why
the ROC is counted here with ``searchsorted`` rather than taken from torchmetrics' rates.

With a few thousand samples this bound is weak by design (even a perfect attack on 1000
members certifies only ε ≈ log(1000) at best, and far less after the intervals); it is a sanity
check that must never exceed the accountant's ε for a correct DP run, not an estimate of ε.
"""

from dataclasses import asdict, dataclass
from typing import Dict

import numpy as np
import torch
from scipy.stats import beta

from secure_ml.attacks.scores import check_scores


@dataclass
class EpsilonLowerBound:
    """``epsilon_lb``: conservative bound (0 when nothing is significant); ``epsilon_point``: from raw rates (may be inf).

    ``threshold``, ``tpr`` and ``fpr`` describe the ROC point (raw rates) that gives ``epsilon_lb``
    (or ``epsilon_point`` when ``epsilon_lb`` is 0).
    """

    epsilon_lb: float
    epsilon_point: float
    threshold: float
    tpr: float
    fpr: float
    delta: float
    confidence: float
    n_members: int
    n_nonmembers: int

    def to_dict(self) -> Dict[str, float]:
        """Plain dict for loggers."""
        return asdict(self)


def clopper_pearson(k: np.ndarray, n: int, alpha: float) -> "tuple[np.ndarray, np.ndarray]":
    """One-sided exact binomial bounds ``(lower, upper)`` on a rate from ``k`` successes of ``n``, each at level 1 − α."""
    k = np.asarray(k, dtype=np.float64)
    lower = np.where(k > 0, beta.ppf(alpha, k, n - k + 1), 0.0)
    upper = np.where(k < n, beta.ppf(1 - alpha, k + 1, n - k), 1.0)
    return lower, upper


def _epsilons(tpr: np.ndarray, fpr: np.ndarray, delta: float) -> np.ndarray:
    """Per-point ε certified by the two DP inequalities; −inf where neither applies, +inf for zero denominators."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(tpr - delta > 0, np.log(np.maximum(tpr - delta, 1e-300)) - np.log(fpr), -np.inf)
        b = np.where(1 - fpr - delta > 0, np.log(np.maximum(1 - fpr - delta, 1e-300)) - np.log(1 - tpr), -np.inf)
    return np.maximum(a, b)


def epsilon_lower_bound_from_counts(
    tp: np.ndarray, fp: np.ndarray, n_members: int, n_nonmembers: int, delta: float, confidence: float = 0.95, bonferroni: bool = True
) -> "tuple[float, float, int, int]":
    """``(ε_lb, ε_point, index_lb, index_point)`` over ROC points given as true/false-positive counts."""
    if n_members < 1 or n_nonmembers < 1:
        raise ValueError(f"need at least one member and one non-member; got {n_members} and {n_nonmembers}")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must lie in [0, 1); got {delta}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    tp, fp = np.asarray(tp, dtype=np.int64), np.asarray(fp, dtype=np.int64)
    if tp.shape != fp.shape or tp.ndim != 1 or len(tp) == 0:
        raise ValueError(f"tp and fp must be equal-length non-empty 1-d arrays; got shapes {tp.shape} and {fp.shape}")
    if (tp < 0).any() or (tp > n_members).any() or (fp < 0).any() or (fp > n_nonmembers).any():
        raise ValueError("counts must lie in [0, n_members] (tp) and [0, n_nonmembers] (fp)")
    alpha = (1.0 - confidence) / 2.0 / (len(tp) if bonferroni else 1)
    tpr_lo, _ = clopper_pearson(tp, n_members, alpha)
    _, fpr_hi = clopper_pearson(fp, n_nonmembers, alpha)
    eps_lb = _epsilons(tpr_lo, fpr_hi, delta)
    eps_pt = _epsilons(tp / n_members, fp / n_nonmembers, delta)
    i_lb, i_pt = int(np.argmax(eps_lb)), int(np.argmax(eps_pt))
    return max(float(eps_lb[i_lb]), 0.0), max(float(eps_pt[i_pt]), 0.0), i_lb, i_pt


def threshold_epsilon_lower_bound(
    member_scores: torch.Tensor,
    nonmember_scores: torch.Tensor,
    delta: float,
    confidence: float = 0.95,
    bonferroni: bool = True,
) -> EpsilonLowerBound:
    """Largest ε certified, at ``confidence``, by any threshold attack "member iff score ≥ t" on these scores.

    Scores follow the membership convention (higher = more likely member); every distinct score
    is a threshold. ``bonferroni=False`` drops the multiple-threshold correction (only valid if
    the threshold was fixed in advance, e.g. chosen on separate data).
    """
    m, n = (s.numpy() for s in check_scores(member_scores, nonmember_scores))
    thresholds = np.unique(np.concatenate([m, n]))[::-1]  # descending; t = max(...) first
    m_sorted, n_sorted = np.sort(m), np.sort(n)
    tp = len(m) - np.searchsorted(m_sorted, thresholds, side="left")  # count of scores >= t
    fp = len(n) - np.searchsorted(n_sorted, thresholds, side="left")
    eps_lb, eps_pt, i_lb, i_pt = epsilon_lower_bound_from_counts(tp, fp, len(m), len(n), delta, confidence, bonferroni)
    i = i_lb if eps_lb > 0 else i_pt
    return EpsilonLowerBound(
        epsilon_lb=eps_lb,
        epsilon_point=eps_pt,
        threshold=float(thresholds[i]),
        tpr=float(tp[i] / len(m)),
        fpr=float(fp[i] / len(n)),
        delta=float(delta),
        confidence=float(confidence),
        n_members=len(m),
        n_nonmembers=len(n),
    )
