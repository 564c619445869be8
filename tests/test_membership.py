"""Membership-inference scores and metrics on constructed distributions with known answers."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from torch import nn

from secure_ml.attacks.low_fpr import dp_tpr_bound, tpr_at_fpr
from secure_ml.attacks.membership import (
    SCORE_KINDS,
    balance,
    membership_inference,
    membership_metrics,
    membership_scores,
    model_scores,
    roc_curve,
)
from secure_ml.attacks.reference_mia import RMIASettings, rmia, rmia_scores
from secure_ml.attacks.reference_models import ReferenceRecipe, train_reference_models


def sk_auc(m, n):
    return roc_auc_score(np.r_[np.ones(len(m)), np.zeros(len(n))], np.r_[np.asarray(m), np.asarray(n)])


def test_perfectly_separated_scores():
    r = membership_metrics(torch.arange(100.0) + 100, torch.arange(100.0))
    assert r.auc == pytest.approx(1.0)
    assert r.advantage == pytest.approx(1.0)
    assert r.balanced_accuracy == pytest.approx(1.0)
    assert r.tpr_at_1pct_fpr == pytest.approx(1.0) and r.tpr_at_01pct_fpr == pytest.approx(1.0)
    assert r.threshold == 100.0  # lowest member score: everything >= it is a member


def test_identical_scores_are_chance():
    s = torch.linspace(-3, 3, 50)
    r = membership_metrics(s, s.clone())
    assert r.auc == pytest.approx(0.5)
    assert r.advantage == pytest.approx(0.0, abs=1e-6)
    assert r.balanced_accuracy == pytest.approx(0.5, abs=1e-6)
    const = membership_metrics(torch.ones(10), torch.ones(10))  # every score tied
    assert const.auc == pytest.approx(0.5) and const.tpr_at_1pct_fpr == 0.0


def test_hand_computed_small_case():
    m, n = torch.tensor([3.0, 2.0, 1.0]), torch.tensor([2.0, 0.0, -1.0])
    # Pairs (member > non-member, ties count ½): 3 → 3, 2 → 2.5, 1 → 2; 7.5 / 9.
    r = membership_metrics(m, n)
    assert r.auc == pytest.approx(7.5 / 9)
    fpr, tpr, thr = roc_curve(m, n)
    assert thr.tolist() == [math.inf, 3.0, 2.0, 1.0, 0.0, -1.0]
    assert fpr.tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 1])
    assert r.advantage == pytest.approx(2 / 3)  # t = 1: TPR 1, FPR 1/3
    assert r.balanced_accuracy == pytest.approx(5 / 6)
    assert r.threshold == 1.0
    assert r.tpr_at_1pct_fpr == pytest.approx(1 / 3)  # only FPR = 0 qualifies


def test_tpr_at_low_fpr_exact_boundaries():
    nonmembers = torch.arange(1000.0)  # threshold t flags exactly #{i >= t} non-members
    members = torch.cat(
        [
            torch.full((100,), 2000.0),  # FPR 0
            torch.full((50,), 998.5),  # FP = 1 → FPR 0.1%: counts for the 0.1% target (≤)
            torch.full((70,), 997.5),  # FP = 2 → 0.2%
            torch.full((200,), 989.5),  # FP = 10 → exactly 1%
            torch.full((80,), 988.5),  # FP = 11 → 1.1%: too many
            torch.full((500,), -1.0),
        ]
    )
    r = membership_metrics(members, nonmembers)
    assert r.tpr_at_01pct_fpr == pytest.approx(0.15)
    assert r.tpr_at_1pct_fpr == pytest.approx(0.42)
    assert r.auc == pytest.approx(sk_auc(members, nonmembers))


def test_advantage_and_balanced_accuracy_exact():
    # Members: 8 high, 2 low; non-members: 3 high, 7 low → at t = 1, TPR 0.8, FPR 0.3.
    m = torch.tensor([1.0] * 8 + [0.0] * 2)
    n = torch.tensor([1.0] * 3 + [0.0] * 7)
    r = membership_metrics(m, n)
    assert r.advantage == pytest.approx(0.5)
    assert r.balanced_accuracy == pytest.approx(0.75)
    assert r.auc == pytest.approx(sk_auc(m, n))
    # The attack needs "higher = member": reversed scores give no advantage.
    assert membership_metrics(-m, -n).advantage == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "scale,shift",
    [(1.0, 0.3), (1e-7, 1e-7), (50.0, 100.0)],  # tiny or huge scores: a sigmoid would tie them
)
def test_auc_matches_sklearn(scale, shift):
    g = torch.Generator().manual_seed(1)
    m = (torch.randn(700, generator=g, dtype=torch.float64) + 0.4) * scale + shift
    n = torch.randn(500, generator=g, dtype=torch.float64) * scale + shift
    m[:50] = n[:50]  # exact ties across the two sets
    r = membership_metrics(m, n)
    assert r.auc == pytest.approx(sk_auc(m, n), abs=1e-6)
    assert 0.5 < r.auc < 0.9


def test_scores_match_formulas():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 0, 2])
    s = membership_scores(logits, y)
    p = torch.softmax(logits.double(), 1).numpy()
    for i in range(3):
        pi, yi = p[i], int(y[i])
        assert s["confidence"][i].item() == pytest.approx(pi.max())
        assert s["loss"][i].item() == pytest.approx(np.log(pi[yi]))
        assert s["entropy"][i].item() == pytest.approx(np.sum(pi * np.log(pi)))
        mentr = -(1 - pi[yi]) * np.log(pi[yi]) - sum(pi[j] * np.log(1 - pi[j]) for j in range(3) if j != yi)
        assert s["modified_entropy"][i].item() == pytest.approx(-mentr)


def test_modified_entropy_penalises_confident_mistakes():
    confident_right = torch.tensor([[10.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.3, 0.2, 0.1]])
    confident_wrong = torch.tensor([[0.0, 10.0, 0.0]])
    y = torch.tensor([0])
    score = {
        name: [membership_scores(z, y)[k].item() for k in SCORE_KINDS]
        for name, z in [("right", confident_right), ("unsure", unsure), ("wrong", confident_wrong)]
    }
    for k in range(len(SCORE_KINDS)):
        assert score["right"][k] > score["unsure"][k]
    ent, mentr = SCORE_KINDS.index("entropy"), SCORE_KINDS.index("modified_entropy")
    assert score["wrong"][ent] > score["unsure"][ent]  # plain entropy ignores the label...
    assert score["wrong"][mentr] < score["unsure"][mentr]  # ...modified entropy does not
    extreme = membership_scores(torch.tensor([[0.0, 200.0]]), torch.tensor([0]))
    assert all(torch.isfinite(v).all() for v in extreme.values())


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="member_scores is empty"):
        membership_metrics(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="nonmember_scores contains NaN"):
        membership_metrics(torch.tensor([1.0]), torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="member_y has 2"):
        balance(torch.zeros(3, 2), torch.zeros(2), torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="logits"):
        membership_scores(torch.zeros(3), torch.zeros(3, dtype=torch.long))


def memorised_model():
    """A linear model trained to memorise random labels of 64 random points (strong membership signal)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (160,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x[:64]), y[:64]).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, x, y


def test_membership_inference_end_to_end():
    model, x, y = memorised_model()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        result = membership_inference(model, x[:64], y[:64], x[64:], y[64:], batch_size=10, generator=g)
    reports = result.reports
    assert set(reports) == set(SCORE_KINDS)
    assert result.member_scores["loss"].shape == result.nonmember_scores["loss"].shape == (64,)
    assert reports[result.strongest].auc == max(r.auc for r in reports.values())
    for rep in reports.values():
        assert rep.n_members == rep.n_nonmembers == 64  # the 96 non-members were subsampled
    assert reports["loss"].auc > 0.9
    assert reports["modified_entropy"].auc > 0.9
    assert all(p.grad is None for p in model.parameters())
    again = membership_inference(model, x[:64], y[:64], x[64:], y[64:], batch_size=64, generator=torch.Generator().manual_seed(3))
    assert again.reports["loss"].to_dict() == pytest.approx(reports["loss"].to_dict())
    capped = membership_inference(model, x[:64], y[:64], x[64:], y[64:], max_samples=20)
    assert capped.reports["loss"].n_members == capped.reports["loss"].n_nonmembers == 20


def test_balance_subsamples_the_larger_set():
    mx, my = torch.arange(10.0)[:, None], torch.arange(10)
    nx, ny = torch.arange(4.0)[:, None], torch.arange(4)
    a = balance(mx, my, nx, ny, torch.Generator().manual_seed(0))
    b = balance(mx, my, nx, ny, torch.Generator().manual_seed(0))
    assert len(a[0]) == len(a[2]) == 4
    assert torch.equal(a[0], b[0]) and torch.equal(a[0][:, 0].long(), a[1])  # pairs kept together
    assert len(set(a[1].tolist())) == 4 and torch.equal(a[2], nx)


# ---- TPR at a low FPR: refused when unresolvable, an interval that covers, the DP ceiling ----------------------


def test_tpr_at_low_fpr_is_refused_when_the_nonmembers_cannot_resolve_it():
    m, n = torch.randn(999, generator=torch.Generator().manual_seed(0)), torch.randn(999)
    assert tpr_at_fpr(m, n, 0.001) is None  # 999 · 0.001 < 1: not even one false positive to spend
    rep = tpr_at_fpr(m, torch.randn(1000), 0.001)
    assert rep is not None and rep.n_nonmembers == 1000


def test_tpr_at_fpr_point_matches_the_roc_and_the_interval_brackets_it():
    members = torch.cat([torch.full((150,), 2000.0), torch.full((850,), -1.0)])
    rep = tpr_at_fpr(members, torch.arange(1000.0), 0.001, epsilon=1.0, delta=1e-5)
    assert rep.tpr == pytest.approx(membership_metrics(members, torch.arange(1000.0)).tpr_at_01pct_fpr) == pytest.approx(0.15)
    assert rep.tpr_low < 0.15 < rep.tpr_high
    # 1,000 non-members cannot place the 0.1% threshold: with probability 0.999^1000 = 0.37 it flags none of them,
    # so no TPR there can be excluded from below, and no TPR at 0.1% contradicts ε = 1 at this sample size.
    assert rep.tpr_low == 0.0 and rep.dp_bound == pytest.approx(math.e * 0.001 + 1e-5) and not rep.violates_dp
    at_1pct = tpr_at_fpr(members, torch.arange(1000.0), 0.01, epsilon=1.0, delta=1e-5)
    assert at_1pct.tpr_low > 0.1 > at_1pct.dp_bound and at_1pct.violates_dp  # at 1% the same attack does contradict ε = 1
    assert not tpr_at_fpr(members, torch.arange(1000.0), 0.01, epsilon=3.0, delta=1e-5).violates_dp


def test_tpr_interval_covers_the_true_tpr_at_its_confidence():
    # Members ~ N(1, 1), non-members ~ N(0, 1): at FPR f the true TPR is 1 − Φ(Φ⁻¹(1 − f) − 1).
    true_tpr = float(norm.sf(norm.isf(0.01) - 1.0))
    g = torch.Generator().manual_seed(0)
    misses, widths = 0, []
    for _ in range(200):
        rep = tpr_at_fpr(torch.randn(1000, generator=g) + 1.0, torch.randn(1000, generator=g), 0.01)
        misses += not rep.tpr_low <= true_tpr <= rep.tpr_high
        widths.append(rep.tpr_high - rep.tpr_low)
    assert misses <= 10  # ≤ 5% expected at 95% (binomial slack: 10 of 200)
    assert np.mean(widths) < 0.2  # informative, not [0, 1]


def test_dp_tpr_bound():
    assert dp_tpr_bound(1.09, 1e-5, 0.001) == pytest.approx(math.exp(1.09) * 0.001 + 1e-5)
    assert dp_tpr_bound(float("inf"), 0.0, 0.001) == 1.0 and dp_tpr_bound(10.0, 0.0, 0.5) == 1.0
    with pytest.raises(ValueError, match="epsilon"):
        dp_tpr_bound(-1.0, 0.0, 0.1)


# ---- RMIA with reference models -------------------------------------------------------------------------------


def _teacher_data(n=1000, d=20, seed=0):
    """A linear teacher's labels on Gaussian inputs, 30% replaced by random labels (atypical records)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, 10, generator=g)).argmax(1)
    atypical = torch.rand(n, generator=g) < 0.3
    y[atypical] = torch.randint(0, 10, (int(atypical.sum()),), generator=g)
    return x, y


def _mlp():
    return nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 10))


def test_dp_reference_models_take_private_steps_reproducibly():
    """A DP target's references replay DP-SGD (main's dp_step): same seed → same model, σ changes it, global RNG untouched."""
    x, y = _teacher_data(n=200)

    def train(sigma):
        recipe = ReferenceRecipe(_mlp, lambda p: torch.optim.SGD(p, lr=0.1), steps=5, batch_size=20, noise_multiplier=sigma)
        return torch.cat([p.detach().flatten() for p in train_reference_models(recipe, x, y, 1, seed=3)[0].parameters()])

    before = torch.random.get_rng_state()
    a, b, noisier = train(1.0), train(1.0), train(50.0)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a, b) and not torch.allclose(a, noisier)


@pytest.mark.slow
def test_rmia_beats_the_threshold_attack_on_an_overfit_model_and_is_chance_without_the_members():
    x, y = _teacher_data()
    members, nonmembers, population, z, others = (slice(i, i + 200) for i in range(0, 1000, 200))
    recipe = ReferenceRecipe(_mlp, lambda p: torch.optim.Adam(p, lr=1e-2), steps=150, batch_size=50)
    target = train_reference_models(recipe, x[members], y[members], 1, seed=99)[0]
    control = train_reference_models(recipe, x[others], y[others], 1, seed=98)[0]  # never saw the members
    refs = train_reference_models(recipe, x[population], y[population], 2, seed=0)
    ex, ey = torch.cat([x[members], x[nonmembers]]), torch.cat([y[members], y[nonmembers]])
    strong = rmia(target, refs, ex, ey, x[z], y[z])
    rmia_report = membership_metrics(strong[:200], strong[200:])
    loss = model_scores(target, ex, ey)["loss"]
    loss_report = membership_metrics(loss[:200], loss[200:])
    assert rmia_report.auc > 0.85
    assert rmia_report.tpr_at_1pct_fpr > 2 * loss_report.tpr_at_1pct_fpr + 0.05  # calibrating per record pays at low FPR
    chance = rmia(control, refs, ex, ey, x[z], y[z])
    assert abs(membership_metrics(chance[:200], chance[200:]).auc - 0.5) < 0.08


def test_rmia_score_is_monotone_in_the_likelihood_ratio_and_validates():
    target_p = torch.tensor([0.9, 0.5, 0.2, 0.9])
    ref_p = torch.tensor([[0.9], [0.1], [0.2], [0.3]])
    s = rmia_scores(target_p, ref_p, torch.tensor([0.5, 0.6]), torch.tensor([[0.5], [0.5]]), RMIASettings(offline_a=1.0))
    # LR = p / p_ref with a = 1: 1.0, 5.0, 1.0, 3.0 — the order of the scores, ties broken consistently
    assert s[1] > s[3] > max(s[0], s[2])
    with pytest.raises(ValueError, match="offline_a"):
        RMIASettings(offline_a=1.5)
    with pytest.raises(ValueError, match="reference probabilities"):
        rmia_scores(target_p, torch.ones(3, 1), torch.ones(2), torch.ones(2, 1))
