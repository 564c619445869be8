"""One-run privacy audit (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023).

m canaries each join the training set independently with probability 1/2 (a coin S_i ∈ {−1, +1}).
After training, every canary gets a score (higher = "looks trained on"); the auditor guesses "in"
(T_i = +1) for the k₊ highest scores, "out" (T_i = −1) for the k₋ lowest and abstains on the rest,
so r = k₊ + k₋ guesses are made, of which v = #{T_i = S_i} are correct.

The paper's main theorem (Thm. 3.1 with the approximate-DP extension, computed as in its Appendix D
``p_value_DP_audit``): if training is (ε, δ)-DP then for every v

    P[W ≥ v] ≤ f(v) + 2mδ · max_{i ∈ 1..v} (f(v − i) − f(v)) / i,    f(u) = P[Binomial(r, e^ε / (1 + e^ε)) ≥ u].

The right-hand side is a p-value for the null "training is (ε, δ)-DP"; the lower bound at confidence
1 − β is the largest ε whose p-value is still below β (found like Appendix D's ``get_eps_audit``: an
upper bracket stepped by 1, then bisection; the low end is returned, so the bound errs low).
Choosing the best of several (k₊, k₋) after seeing the scores would be a multiple test: each choice
is tried at β / (number of choices) (Bonferroni), so the reported bound keeps its confidence.

Written here rather than taken from a library: none on the package index implements this bound
(ML Privacy Meter and Opacus do not); the paper's Appendix D code is ~30 lines and is followed exactly.
"""

import math
from dataclasses import asdict, dataclass
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from scipy.stats import binom

from secure_ml.attacks.scores import score_vector


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[≥ v correct of r guesses on m canaries] under (ε, δ)-DP: the paper's bound (Appendix D ``p_value_DP_audit``)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m; got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1]; got {epsilon} and {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of ε-DP randomized response
    tail = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))  # below[i-1] = P[v - i <= Binomial < v]
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(tail + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float = 0.05, iterations: int = 30) -> float:
    """Largest ε (to 2^-iterations of the bracket) whose p-value is below ``beta``: ``(ε, δ)``-DP is rejected at level β."""
    if not 0 < beta < 1:
        raise ValueError(f"beta must lie in (0, 1); got {beta}")
    lo, hi = 0.0, 1.0
    if p_value(m, r, v, lo, delta) >= beta:
        return 0.0
    while p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, hi + 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class OneRunAudit:
    """The audit's outcome: the bound, the guesses that gave it and the numbers behind it."""

    epsilon_lb: float
    k_plus: int
    k_minus: int
    guesses: int  # r
    correct: int  # v
    canaries: int  # m
    included: int
    delta: float
    confidence: float

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def canary_scores(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Label-calibrated loss scores: log p(yᵢ | xᵢ) − mean over all canaries j of log p(yᵢ | xⱼ).

    The plain loss ranks every canary of the label the model favours for canary-like inputs as "in";
    subtracting that label's average log-probability over the canaries removes the shared prior and
    leaves what is specific to canary i. It uses the model's outputs only (never the coins), so the
    theorem's guarantee holds for it like for any guess made from the trained model.
    """
    if log_probs.dim() != 2 or labels.shape != log_probs.shape[:1]:
        raise ValueError(f"need log-probabilities (m, C) and labels (m,); got {tuple(log_probs.shape)} and {tuple(labels.shape)}")
    labels = labels.long()
    own = log_probs.gather(1, labels[:, None]).squeeze(1)
    return own - log_probs.mean(0)[labels]


def count_correct(scores: torch.Tensor, included: torch.Tensor, k_plus: int, k_minus: int) -> int:
    """Correct guesses when "in" is guessed for the ``k_plus`` highest scores and "out" for the ``k_minus`` lowest (ties by index)."""
    order = torch.argsort(scores, stable=True)  # ascending
    out_guess, in_guess = order[:k_minus], order[len(order) - k_plus :] if k_plus else order[:0]
    return int(included[in_guess].sum()) + int((~included[out_guess]).sum())


def guess_counts(m: int, fractions: Sequence[float]) -> Tuple[Tuple[int, int], ...]:
    """``(k₊, k₋)`` pairs: k₊ = k₋ = round(fraction·m/2) for each fraction (distinct, non-empty)."""
    pairs = sorted({(k, k) for f in fractions if (k := min(round(f * m / 2), m // 2)) > 0})
    if not pairs:
        raise ValueError(f"no guess count from fractions {list(fractions)} with m = {m}")
    return tuple(pairs)


def one_run_audit(
    scores, included, delta: float, confidence: float = 0.95, guess_fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.5)
) -> OneRunAudit:
    """The ε lower bound from canary ``scores`` (higher = "trained on") and their secret coins ``included``.

    Each fraction f guesses k₊ = k₋ = f·m/2 (so r = f·m); the best bound over the fractions is reported,
    each tried at level (1 − confidence) / len(fractions).
    """
    s = score_vector(scores, "canary scores")
    inc = torch.as_tensor(included).detach().flatten().to("cpu", torch.bool)
    if len(inc) != len(s):
        raise ValueError(f"{len(s)} canary scores but {len(inc)} inclusion coins")
    if not 0 <= delta < 1 or not 0 < confidence < 1:
        raise ValueError(f"need delta in [0, 1) and confidence in (0, 1); got {delta} and {confidence}")
    pairs = guess_counts(len(s), guess_fractions)
    beta = (1 - confidence) / len(pairs)
    best = None
    for k_plus, k_minus in pairs:
        v = count_correct(s, inc, k_plus, k_minus)
        eps = epsilon_lower_bound(len(s), k_plus + k_minus, v, delta, beta)
        if best is None or eps > best[0]:
            best = (eps, k_plus, k_minus, v)
    eps, k_plus, k_minus, v = best
    return OneRunAudit(eps, k_plus, k_minus, k_plus + k_minus, v, len(s), int(inc.sum()), delta, confidence)
