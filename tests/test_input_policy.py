"""Input policy: each bad-input kind gets its reason; sponges are rejected; clean held-out digits pass."""

import json
from collections import Counter

import pytest
import torch

from secure_ml.attacks.sponge import craft_sponges, gaussian_sponges
from secure_ml.defenses import InputPolicy, PolicyDecision
from tests.helpers.models import trained_small_cnn


@pytest.fixture(scope="module")
def setup(real_data_dir):
    model, x, _, xt, _ = trained_small_cnn(str(real_data_dir))
    # Calibrate on 4,000 training-split digits the model never saw; hold out the 2,000 test digits.
    policy = InputPolicy.calibrate(model, x[2000:6000], false_positive_rate=0.005)
    return model, policy, xt


def reasons(decisions):
    return Counter(d.reason for d in decisions)


def test_calibration_sets_every_limit_and_keeps_clean_digits(setup):
    model, policy, xt = setup
    assert policy.max_energy is not None and policy.max_density is not None
    assert 0.1 < policy.max_variance < 0.25
    decisions = policy.check_batch(xt, model)
    kept = sum(d.allowed for d in decisions) / len(decisions)
    assert kept >= 0.99, reasons(decisions)
    assert all(d.reason == "ok" and d.detail == "" for d in decisions if d.allowed)


def test_each_bad_input_kind_has_its_reason(setup):
    model, policy, xt = setup
    good = xt[0]
    assert policy.check(good, model) == PolicyDecision(True, "ok")
    assert policy.check(good[0], model).allowed  # (28, 28) is unsqueezed
    cases = {
        "shape": [torch.zeros(3, 28, 28), torch.zeros(1, 1, 28, 28), torch.zeros(784), torch.zeros(1, 32, 32)],
        "dtype": [(good * 255).to(torch.uint8), good > 0.5, good.long(), good.tolist()],
        "non_finite": [
            good.clone().index_put_((torch.tensor([0]), torch.tensor([3]), torch.tensor([4])), torch.tensor(float("nan"))),
            torch.where(good > 0.5, torch.tensor(float("inf")), good),
        ],
        "range": [good * 5.2, good - 0.1, (good - 0.1307) / 0.3081],  # the last: a normalised digit
        "variance": [(torch.arange(784).reshape(1, 28, 28) % 2).float()],  # 0/1 checkerboard: variance 0.25
    }
    for reason, inputs in cases.items():
        for x in inputs:
            d = policy.check(x, model)
            assert (d.allowed, d.reason) == (False, reason), (reason, d)
            assert d.detail, (reason, x)
    d = policy.check(good * 5.2, model)
    assert "[0, 1]" in d.detail and "max 5.2" in d.detail
    nan_and_big = (good * 5).clone()
    nan_and_big[0, 0, 0] = float("nan")
    assert policy.check(nan_and_big, model).reason == "non_finite"  # order: finite before range
    assert policy.check((good * 5).long(), model).reason == "dtype"  # order: dtype before range


def test_half_precision_is_accepted(setup):
    model, policy, xt = setup
    assert policy.check(xt[1].half(), model).allowed and policy.check(xt[1].double(), model).allowed


def test_gaussian_sponges_are_rejected(setup):
    model, policy, _ = setup
    g = torch.Generator().manual_seed(1)
    raw = gaussian_sponges(50, [5.0], g)  # the seed notebook's sponge
    assert reasons(policy.check_batch(raw, model)) == {"range": 50}
    clipped = gaussian_sponges(50, [0.5, 1.0, 2.0, 5.0], g, clamp=True)
    r = reasons(policy.check_batch(clipped, model))
    assert r["ok"] == 0 and set(r) <= {"variance", "energy"}, r


@pytest.mark.parametrize("objective", ["l2", "l0"])
@pytest.mark.parametrize("start", ["noise", "digits"])
def test_crafted_sponges_are_rejected(setup, objective, start):
    model, policy, xt = setup
    x0 = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(2)) if start == "noise" else xt[:8]
    sponges = craft_sponges(model, x0, steps=30 if objective == "l2" else 20, lr=0.05, objective=objective)
    assert sponges.min() >= 0 and sponges.max() <= 1  # they pass a naive range check...
    r = reasons(policy.check_batch(sponges, model))
    assert r["ok"] == 0, r  # ...but not the energy / variance checks
    if objective == "l0":
        assert r == {"energy": 8}
    if start == "digits":
        assert reasons(policy.check_batch(x0, model))["ok"] == 8  # their starting points were fine


def test_batch_mixes_reasons_and_runs_one_forward(setup):
    model, policy, xt = setup
    batch = xt[:4].clone()
    batch[1, 0, 0, 0] = float("nan")
    batch[2] *= 3
    batch[3] = craft_sponges(model, xt[3:4], steps=20, lr=0.05, objective="l0")[0]
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        decisions = policy.check_batch(batch, model)
    finally:
        handle.remove()
    assert [d.reason for d in decisions] == ["ok", "non_finite", "range", "energy"]
    assert calls == [2]  # one forward, over the two images that survived the static checks
    assert policy.check_batch(batch[:0], model) == []
    assert reasons(policy.check_batch(torch.zeros(5, 3, 28, 28), model)) == {"shape": 5}
    assert [d.allowed for d in policy.check_batch(xt[:3, 0], model)] == [True] * 3  # (B, 28, 28)


def test_energy_limit_needs_the_model(setup):
    _, policy, xt = setup
    with pytest.raises(ValueError, match="needs the model"):
        policy.check(xt[0])
    assert InputPolicy().check(xt[0]).allowed  # defaults: no model needed
    assert InputPolicy().max_variance == 0.22


def test_dict_round_trip_and_validation(setup):
    _, policy, _ = setup
    d = json.loads(json.dumps(policy.to_dict()))
    assert d["shape"] == [1, 28, 28]
    assert InputPolicy.from_dict(d) == policy
    with pytest.raises(ValueError, match="unknown InputPolicy field"):
        InputPolicy.from_dict({**d, "max_abs_value": 3.0})
    with pytest.raises(ValueError, match="min_value must be below max_value"):
        InputPolicy(min_value=1.0, max_value=0.0)
    with pytest.raises(ValueError, match="max_energy"):
        InputPolicy(max_energy=-1.0)
    with pytest.raises(ValueError, match="shape"):
        InputPolicy(shape=(0, 28))


def test_calibrate_keeps_given_limits_and_rejects_dirty_data(setup):
    model, _, xt = setup
    p = InputPolicy.calibrate(model, xt[:500], false_positive_rate=0.01, max_variance=None, max_density=None)
    assert p.max_variance is None and p.max_density is None and p.max_energy is not None
    # Only the energy limit is calibrated, so it alone spends the budget: ⌊0.01 · 500⌋ = 5 rejected.
    assert sum(not d.allowed for d in p.check_batch(xt[:500], model)) == 5
    with pytest.raises(ValueError, match="calibration images fail"):
        InputPolicy.calibrate(model, torch.cat([xt[:10], xt[:1] * 4]))
    with pytest.raises(ValueError, match="false_positive_rate"):
        InputPolicy.calibrate(model, xt[:10], false_positive_rate=0.0)
