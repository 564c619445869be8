"""ε lower bounds: the threshold (ROC) audit and the one-run canary audit — zero without signal, positive with it, never above a known ε."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, binom

from secure_ml.privacy.one_run_audit import canary_scores, count_correct, epsilon_lower_bound, guess_counts, one_run_audit, p_value
from secure_ml.privacy.threshold_audit import (
    clopper_pearson,
    epsilon_lower_bound_from_counts,
    threshold_epsilon_lower_bound,
)


def randomized_response(eps: float, n: int, seed: int):
    """Scores of an exactly ε-DP test: members say 1 w.p. e^ε/(1+e^ε), non-members w.p. 1/(1+e^ε)."""
    g = torch.Generator().manual_seed(seed)
    p = math.exp(eps) / (1 + math.exp(eps))
    return (torch.rand(n, generator=g) < p).double(), (torch.rand(n, generator=g) < 1 - p).double()


def test_identical_distributions_give_zero():
    s = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    assert threshold_epsilon_lower_bound(s, s.clone(), delta=1e-5).epsilon_lb == 0.0
    g = torch.Generator().manual_seed(1)
    r = threshold_epsilon_lower_bound(torch.randn(2000, generator=g), torch.randn(2000, generator=g), delta=1e-5)
    assert r.epsilon_lb == 0.0
    assert r.epsilon_point > 0  # the raw max over thresholds is noise; the interval removes it


def test_separated_distributions_exact_value():
    n, delta, conf = 1000, 1e-5, 0.95
    r = threshold_epsilon_lower_bound(torch.arange(1000.0) + 1000, torch.arange(1000.0), delta, conf)
    # Best point: t = 1000 with TP = 1000, FP = 0; α is split over 2 intervals × 2000 thresholds.
    alpha = (1 - conf) / 2 / 2000
    tpr_lo, fpr_hi = alpha ** (1 / n), 1 - alpha ** (1 / n)
    expected = max(math.log((tpr_lo - delta) / fpr_hi), math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
    assert r.epsilon_lb == pytest.approx(expected)
    assert r.epsilon_lb > 4
    assert (r.threshold, r.tpr, r.fpr) == (1000.0, 1.0, 0.0)
    assert r.epsilon_point == math.inf


def test_partly_separated_is_positive_and_bounded_by_point():
    g = torch.Generator().manual_seed(2)
    m, n = torch.randn(3000, generator=g) + 2.0, torch.randn(3000, generator=g)
    r = threshold_epsilon_lower_bound(m, n, delta=1e-5)
    assert 0.5 < r.epsilon_lb < r.epsilon_point
    loose = threshold_epsilon_lower_bound(m, n, delta=1e-5, bonferroni=False)
    strict = threshold_epsilon_lower_bound(m, n, delta=1e-5, confidence=0.999)
    big_delta = threshold_epsilon_lower_bound(m, n, delta=0.05)
    assert loose.epsilon_lb > r.epsilon_lb > strict.epsilon_lb
    assert big_delta.epsilon_lb < r.epsilon_lb


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0])
def test_never_exceeds_true_epsilon_of_randomized_response(eps):
    lbs, points = [], []
    for seed in range(25):
        m, n = randomized_response(eps, 2000, seed)
        r = threshold_epsilon_lower_bound(m, n, delta=0.0)
        lbs.append(r.epsilon_lb)
        points.append(r.epsilon_point)
    assert max(lbs) <= eps
    assert min(lbs) > 0.6 * eps  # not vacuous: the test sits exactly on the e^ε boundary
    assert max(points) > eps  # the raw estimate does overshoot, which is why intervals are needed


def test_clopper_pearson_matches_beta_quantiles():
    lo, hi = clopper_pearson(np.array([0, 3, 10]), 10, 0.025)
    assert lo[0] == 0.0 and hi[2] == 1.0
    assert lo[1] == pytest.approx(beta.ppf(0.025, 3, 8))
    assert hi[1] == pytest.approx(beta.ppf(0.975, 4, 7))
    assert hi[0] == pytest.approx(1 - 0.025 ** (1 / 10))


def test_from_counts_validates():
    with pytest.raises(ValueError, match="delta"):
        epsilon_lower_bound_from_counts(np.array([1]), np.array([0]), 10, 10, delta=1.5)
    with pytest.raises(ValueError, match="confidence"):
        epsilon_lower_bound_from_counts(np.array([1]), np.array([0]), 10, 10, delta=0.0, confidence=1.0)
    with pytest.raises(ValueError, match="counts"):
        epsilon_lower_bound_from_counts(np.array([11]), np.array([0]), 10, 10, delta=0.0)
    with pytest.raises(ValueError, match="member_scores is empty"):
        threshold_epsilon_lower_bound(torch.tensor([]), torch.tensor([1.0]), delta=0.0)


# ---- one-run canary audit (Steinke, Nasr & Jagielski 2023) ---------------------------------------------------


def test_p_value_is_the_binomial_tail_without_delta():
    q = math.exp(1.0) / (1 + math.exp(1.0))
    assert p_value(1000, 100, 75, 1.0, 0.0) == pytest.approx(binom.sf(74, 100, q))
    assert p_value(1000, 100, 0, 1.0, 0.0) == 1.0


def test_p_value_delta_term_follows_the_theorem():
    # P[W ≥ v] ≤ f(v) + 2mδ · max_i (f(v − i) − f(v)) / i with f(u) = P[Binomial(r, q) ≥ u], written out term by term.
    m, r, v, eps, delta = 1000, 100, 75, 0.5, 1e-4
    q = math.exp(eps) / (1 + math.exp(eps))

    def f(u):
        return binom.sf(u - 1, r, q)

    expected = f(v) + 2 * m * delta * max((f(v - i) - f(v)) / i for i in range(1, m + 1))
    assert p_value(m, r, v, eps, delta) == pytest.approx(expected, rel=1e-9)
    assert p_value(m, r, v, eps, delta) > p_value(m, r, v, eps, 0.0)


def test_epsilon_lower_bound_closed_form_when_every_guess_is_right():
    # δ = 0, v = r: p-value q^r; the bound solves q^r = β, i.e. ε = log(q / (1 − q)) with q = β^(1/r).
    for r in (10, 100, 500):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(r, r, r, 0.0, 0.05) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)
    assert epsilon_lower_bound(1000, 100, 50, 1e-5) == 0.0  # chance-level guessing certifies nothing
    assert epsilon_lower_bound(1000, 500, 500, 1e-5) < epsilon_lower_bound(1000, 500, 500, 0.0)  # δ costs


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0])
def test_one_run_audit_never_exceeds_the_epsilon_of_randomized_response(eps):
    """Canaries whose score is an ε-DP randomized response of their coin: the audit's 95% bound may exceed ε in 5% of runs, no more."""
    bounds = []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        included = torch.rand(1000, generator=g) < 0.5
        truthful = torch.rand(1000, generator=g) < math.exp(eps) / (1 + math.exp(eps))
        bit = torch.where(truthful, included, ~included).double()
        scores = bit + 1e-3 * torch.rand(1000, generator=g, dtype=torch.float64)  # ranks within each bit are noise
        bounds.append(one_run_audit(scores, included, delta=0.0, guess_fractions=[1.0]).epsilon_lb)
    assert sum(b > eps for b in bounds) <= 3  # 1 of 20 expected; P[Binomial(20, 0.05) >= 4] = 0.016
    assert np.median(bounds) > 0.5 * eps  # and it is not vacuous: the test sits exactly on the e^ε / (1 + e^ε) boundary


def test_one_run_audit_guesses_and_validation():
    scores = torch.arange(10.0)
    included = torch.tensor([0, 0, 1, 0, 1, 0, 1, 1, 1, 1], dtype=torch.bool)
    assert count_correct(scores, included, k_plus=3, k_minus=2) == 5  # top 3 all in, bottom 2 both out
    assert count_correct(-scores, included, k_plus=3, k_minus=2) == 1  # top 3 are rows 0-2 (one in), bottom 2 rows 8-9 (in)
    r = one_run_audit(scores, included, delta=0.0, guess_fractions=[0.5, 1.0])
    assert (r.canaries, r.included) == (10, 6) and r.guesses in (4, 10) and r.epsilon_lb >= 0.0
    with pytest.raises(ValueError, match="coins"):
        one_run_audit(scores, included[:5], delta=0.0)
    with pytest.raises(ValueError, match="canary scores contains NaN"):
        one_run_audit(torch.tensor([float("nan")] * 10), included, delta=0.0)
    with pytest.raises(ValueError, match="no guess count"):
        guess_counts(10, [0.01])


def test_canary_scores_remove_the_label_prior():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.5, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    logp = probs.log()
    scores = canary_scores(logp, labels)
    prior = logp.mean(0)
    assert torch.allclose(scores, torch.stack([logp[0, 0] - prior[0], logp[1, 0] - prior[0], logp[2, 1] - prior[1]]))
    # the plain loss ranks canary 2 last (p = 0.5 < 0.8); against its label's prior (mean p ≈ 0.2) it is the most trained-on
    assert int(scores.argmax()) == 2 and int(logp.gather(1, labels[:, None]).squeeze(1).argmax()) == 0
    with pytest.raises(ValueError, match="labels"):
        canary_scores(logp, labels[:2])
