"""TPR at a low FPR with an honest confidence interval, next to what (ε, δ)-DP allows there.

With ``n`` non-members, a threshold tuned to FPR ``f`` rests on about ``n·f`` false positives: with
1,000 non-members, a "TPR at 0.1% FPR" rests on one. Its interval must therefore cover the
uncertainty of the threshold as well as of the TPR. Construction (miscoverage α split in four):

* the true threshold ``t*`` (true FPR exactly ``f``) flags ``FP(t*) ~ Binomial(n, f)`` of the
  non-members, so with probability ≥ 1 − α/2 it lies between the thresholds where the empirical count
  of flagged non-members is ``k_lo`` and ``k_hi`` (the binomial's α/4 and 1 − α/4 quantiles);
* TPR is monotone in the threshold, so TPR(t*) lies between the true TPRs at those two thresholds,
  each bounded one-sidedly by Clopper–Pearson at level α/4 (the thresholds depend only on the
  non-members, so the member counts at them are binomial).

Below ``n·f < 1`` no threshold can even express the FPR and :func:`tpr_at_fpr` returns None: the
caller reports nothing rather than a TPR at FPR 0. Any (ε, δ)-DP training run satisfies
TPR ≤ e^ε·FPR + δ for every test; ``dp_bound`` is that ceiling at ``f``, and ``tpr_low > dp_bound``
is evidence (at the interval's confidence) that the run is not (ε, δ)-DP.
"""

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional

import numpy as np
from scipy.stats import binom

from secure_ml.attacks.scores import check_scores
from secure_ml.privacy.threshold_audit import clopper_pearson


@dataclass
class TprAtFpr:
    """``tpr``: at the loosest threshold whose empirical FPR is ≤ ``target_fpr``; ``[tpr_low, tpr_high]``: its interval."""

    target_fpr: float
    tpr: float
    tpr_low: float
    tpr_high: float
    fpr: float
    confidence: float
    dp_bound: Optional[float]
    n_members: int
    n_nonmembers: int

    @property
    def violates_dp(self) -> bool:
        """True when even the interval's lower end exceeds the DP ceiling (False when no ε was given)."""
        return self.dp_bound is not None and self.tpr_low > self.dp_bound

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def dp_tpr_bound(epsilon: float, delta: float, fpr: float) -> float:
    """The largest TPR an (ε, δ)-DP mechanism allows at ``fpr``: min(1, e^ε·fpr + δ)."""
    if epsilon < 0 or not 0 <= delta < 1 or not 0 <= fpr <= 1:
        raise ValueError(f"need epsilon >= 0, delta in [0, 1) and fpr in [0, 1]; got {epsilon}, {delta}, {fpr}")
    return 1.0 if math.isinf(epsilon) else min(1.0, math.exp(epsilon) * fpr + delta)


def tpr_at_fpr(
    member_scores,
    nonmember_scores,
    target_fpr: float,
    confidence: float = 0.95,
    epsilon: Optional[float] = None,
    delta: float = 0.0,
) -> Optional[TprAtFpr]:
    """TPR of "member iff score ≥ t" at ``target_fpr`` with its interval; None when ``n_nonmembers·target_fpr < 1``."""
    if not 0 < target_fpr < 1 or not 0 < confidence < 1:
        raise ValueError(f"target_fpr and confidence must lie in (0, 1); got {target_fpr} and {confidence}")
    m, n = (s.numpy() for s in check_scores(member_scores, nonmember_scores))
    if len(n) * target_fpr < 1:
        return None
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([m, n]))[::-1]])
    tp = len(m) - np.searchsorted(np.sort(m), thresholds, side="left")
    fp = len(n) - np.searchsorted(np.sort(n), thresholds, side="left")
    alpha = (1 - confidence) / 4
    k_point = math.floor(len(n) * target_fpr + 1e-9)
    k_lo, k_hi = (int(binom.ppf(q, len(n), target_fpr)) for q in (alpha, 1 - alpha))
    point = int(tp[fp <= k_point].max())
    high = int(tp[fp <= k_hi].max())
    low = int(tp[fp >= k_lo].min()) if k_lo > 0 else 0
    lo_bound, _ = clopper_pearson(np.array([low]), len(m), alpha)
    _, hi_bound = clopper_pearson(np.array([high]), len(m), alpha)
    return TprAtFpr(
        target_fpr=target_fpr,
        tpr=point / len(m),
        tpr_low=float(lo_bound[0]),
        tpr_high=float(hi_bound[0]),
        fpr=float(fp[fp <= k_point].max()) / len(n),
        confidence=confidence,
        dp_bound=dp_tpr_bound(epsilon, delta, target_fpr) if epsilon is not None else None,
        n_members=len(m),
        n_nonmembers=len(n),
    )
