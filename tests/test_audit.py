"""Empirical ε lower bound: zero without signal, positive with it, never above a known ε."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta

from secure_ml.privacy.audit import (
    clopper_pearson,
    empirical_epsilon_lower_bound,
    epsilon_lower_bound_from_counts,
)


def randomized_response(eps: float, n: int, seed: int):
    """Scores of an exactly ε-DP test: members say 1 w.p. e^ε/(1+e^ε), non-members w.p. 1/(1+e^ε)."""
    g = torch.Generator().manual_seed(seed)
    p = math.exp(eps) / (1 + math.exp(eps))
    return (torch.rand(n, generator=g) < p).double(), (torch.rand(n, generator=g) < 1 - p).double()


def test_identical_distributions_give_zero():
    s = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    assert empirical_epsilon_lower_bound(s, s.clone(), delta=1e-5).epsilon_lb == 0.0
    g = torch.Generator().manual_seed(1)
    r = empirical_epsilon_lower_bound(torch.randn(2000, generator=g), torch.randn(2000, generator=g), delta=1e-5)
    assert r.epsilon_lb == 0.0
    assert r.epsilon_point > 0  # the raw max over thresholds is noise; the interval removes it


def test_separated_distributions_exact_value():
    n, delta, conf = 1000, 1e-5, 0.95
    r = empirical_epsilon_lower_bound(torch.arange(1000.0) + 1000, torch.arange(1000.0), delta, conf)
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
    r = empirical_epsilon_lower_bound(m, n, delta=1e-5)
    assert 0.5 < r.epsilon_lb < r.epsilon_point
    loose = empirical_epsilon_lower_bound(m, n, delta=1e-5, bonferroni=False)
    strict = empirical_epsilon_lower_bound(m, n, delta=1e-5, confidence=0.999)
    big_delta = empirical_epsilon_lower_bound(m, n, delta=0.05)
    assert loose.epsilon_lb > r.epsilon_lb > strict.epsilon_lb
    assert big_delta.epsilon_lb < r.epsilon_lb


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0])
def test_never_exceeds_true_epsilon_of_randomized_response(eps):
    lbs, points = [], []
    for seed in range(25):
        m, n = randomized_response(eps, 2000, seed)
        r = empirical_epsilon_lower_bound(m, n, delta=0.0)
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
        empirical_epsilon_lower_bound(torch.tensor([]), torch.tensor([1.0]), delta=0.0)
