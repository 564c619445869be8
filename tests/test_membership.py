"""Membership-inference scores and metrics on constructed distributions with known answers."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from secure_ml.attacks.membership import (
    SCORE_KINDS,
    balance,
    membership_inference,
    membership_metrics,
    membership_scores,
    roc_curve,
)


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
        reports = membership_inference(model, x[:64], y[:64], x[64:], y[64:], batch_size=10, generator=g)
    assert set(reports) == set(SCORE_KINDS)
    for rep in reports.values():
        assert rep.n_members == rep.n_nonmembers == 64  # the 96 non-members were subsampled
    assert reports["loss"].auc > 0.9
    assert reports["modified_entropy"].auc > 0.9
    assert all(p.grad is None for p in model.parameters())
    again = membership_inference(model, x[:64], y[:64], x[64:], y[64:], batch_size=64, generator=torch.Generator().manual_seed(3))
    assert again["loss"].to_dict() == pytest.approx(reports["loss"].to_dict())


def test_balance_subsamples_the_larger_set():
    mx, my = torch.arange(10.0)[:, None], torch.arange(10)
    nx, ny = torch.arange(4.0)[:, None], torch.arange(4)
    a = balance(mx, my, nx, ny, torch.Generator().manual_seed(0))
    b = balance(mx, my, nx, ny, torch.Generator().manual_seed(0))
    assert len(a[0]) == len(a[2]) == 4
    assert torch.equal(a[0], b[0]) and torch.equal(a[0][:, 0].long(), a[1])  # pairs kept together
    assert len(set(a[1].tolist())) == 4 and torch.equal(a[2], nx)
