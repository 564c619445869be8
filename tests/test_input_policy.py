"""Input policy: each bad-input kind gets its reason and a number-free detail; sponges are rejected, also by an
attacker who knows the policy; clean non-member digits pass; calibration is exact about its budget."""

import json
import re
from collections import Counter

import pytest
import torch

from secure_ml.attacks.sponge import activation_energy, craft_sponges, gaussian_sponges
from secure_ml.attacks.sponge_adaptive import adaptive_sponges, worst_accepted_ratio
from secure_ml.defenses import InputPolicy, PolicyDecision
from secure_ml.defenses.calibration import (
    activation_scores,
    calibrate_activation_limits,
    default_checks,
    leave_one_out_rejected,
    violated,
)
from secure_ml.defenses.input_policy import REASONS
from tests.helpers.models import trained_small_cnn, trained_tanh_cnn


@pytest.fixture(scope="module")
def setup(real_data_dir):
    model, x, _, xt, _ = trained_small_cnn(str(real_data_dir))
    # The model trained on x[:2000]; calibrate on 800 digits it never saw (the size of the validation
    # split) and measure on the 2,000 test digits.
    policy = InputPolicy.calibrate(model, x[2000:2800], false_positive_rate=0.005)
    return model, policy, xt


@pytest.fixture(scope="module")
def clean_q995(setup):
    model, _, xt = setup
    e = activation_energy(model, xt)
    return float(torch.quantile(e["l2_energy"], 0.995)), float(torch.quantile(e["density"], 0.995))


def reasons(decisions):
    return Counter(d.reason for d in decisions)


@pytest.mark.slow
def test_calibration_sets_every_limit_and_keeps_clean_non_members(setup):
    model, policy, xt = setup
    assert policy.max_energy is not None and policy.max_density is not None and len(policy.max_layer_density) == 3
    assert policy.max_variance == 0.22  # fixed, not calibrated
    decisions = policy.check_batch(xt, model)
    assert sum(not d.allowed for d in decisions) <= 10, reasons(decisions)  # ≤ 0.5% of 2,000 non-members
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
    nan_and_big = (good * 5).clone()
    nan_and_big[0, 0, 0] = float("nan")
    assert policy.check(nan_and_big, model).reason == "non_finite"  # order: finite before range
    assert policy.check((good * 5).long(), model).reason == "dtype"  # order: dtype before range


@pytest.mark.slow
def test_details_carry_no_statistic_or_limit(setup):
    """A 422 names the failed check only: the detail is one fixed sentence per check, whatever the input."""
    model, policy, xt = setup
    sponges = craft_sponges(model, xt[:6], steps=30, lr=0.01, objective="l2")
    noisy = craft_sponges(model, torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(5)), steps=30, lr=0.01)
    by_reason = {}
    for d in policy.check_batch(torch.cat([sponges, noisy, xt[:4] * 3, xt[:4] - 0.5]), model):
        by_reason.setdefault(d.reason, set()).add(d.detail)
    assert "energy" in by_reason and "range" in by_reason
    assert by_reason["range"] == {"pixel values must lie in [0, 1]"}  # the public input contract, not the offending values
    limits = [policy.max_energy, policy.max_density, *policy.max_layer_density]
    for reason in ("energy", "variance"):
        for detail in by_reason.get(reason, ()):
            assert not re.search(r"\d", detail), detail
    for detail in set().union(*by_reason.values()):
        assert not any(f"{v:.3g}" in detail for v in limits)
    with pytest.raises(ValueError, match="reason"):
        PolicyDecision(False, "activation energy 150.4 exceeds 0.001")
    assert set(REASONS) >= {"ok", "energy", "variance", "range"}


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


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sign", "adam"])
@pytest.mark.parametrize("objective", ["l2", "l0"])
@pytest.mark.parametrize("start", ["noise", "digits"])
def test_crafted_sponges_are_rejected_and_need_the_activation_checks(setup, objective, start, optimizer):
    model, policy, xt = setup
    x0 = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(2)) if start == "noise" else xt[:8]
    sponges = craft_sponges(model, x0, steps=30, lr=0.01, objective=objective, optimizer=optimizer)
    assert sponges.min() >= 0 and sponges.max() <= 1  # they pass a naive range check...
    assert reasons(policy.check_batch(sponges, model)) == {"energy": 8}  # ...but not the activation checks
    # Negative control: the pixel checks alone (range, variance) let every one of them through.
    assert reasons(InputPolicy().check_batch(sponges, model))["ok"] == 8
    if start == "digits":
        assert reasons(policy.check_batch(x0, model))["ok"] == 8  # their starting points were fine


@pytest.mark.slow
def test_one_dimensional_policy_lets_density_sponges_through(setup):
    """An L2-only limit is a line an L0 attacker stays under; the density checks catch what it misses."""
    model, policy, xt = setup
    l2_only = InputPolicy(max_energy=policy.max_energy)
    sponges = craft_sponges(model, xt[:8], steps=30, lr=0.01, objective="l0")
    assert reasons(l2_only.check_batch(sponges, model))["ok"] >= 6
    assert reasons(policy.check_batch(sponges, model)) == {"energy": 8}


@pytest.mark.slow
def test_adaptive_attacker_gains_at_most_the_bound(setup, clean_q995):
    """The attacker knows every limit and keeps its costliest accepted iterate: still ≤ 1.2x the clean 99.5th percentile."""
    model, policy, xt = setup
    q_energy, q_density = clean_q995
    x0 = xt[20:28]
    for objective in ("l2", "l0"):
        sponges, accepted = adaptive_sponges(model, policy, x0, objective=objective, steps=60, lr=0.03)
        assert accepted.all()
        assert all(d.allowed for d in policy.check_batch(sponges, model))  # what it returns really passes
        e = activation_energy(model, sponges)
        assert worst_accepted_ratio(e["l2_energy"], accepted, q_energy) <= 1.2
        assert worst_accepted_ratio(e["density"], accepted, q_density) <= 1.1
        gain = e["l2_energy"] if objective == "l2" else e["density"]
        start = activation_energy(model, x0)["l2_energy" if objective == "l2" else "density"]
        assert (gain > start).all()  # it did climb: the bound holds against a working attacker
    # Negative controls, same attacker: without activation checks it goes far past the bound; with
    # the L2 limit alone it raises the density well beyond what the full policy allows.
    free, ok = adaptive_sponges(model, InputPolicy(), x0, objective="l2", steps=60, lr=0.03)
    assert worst_accepted_ratio(activation_energy(model, free)["l2_energy"], ok, q_energy) > 1.5
    dense, ok = adaptive_sponges(model, InputPolicy(max_energy=policy.max_energy), x0, objective="l0", steps=60, lr=0.03)
    assert worst_accepted_ratio(activation_energy(model, dense)["density"], ok, q_density) > 1.15


@pytest.mark.slow
def test_batch_mixes_reasons_and_runs_one_forward(setup):
    model, policy, xt = setup
    batch = xt[:4].clone()
    batch[1, 0, 0, 0] = float("nan")
    batch[2] *= 3
    batch[3] = craft_sponges(model, xt[3:4], steps=30, lr=0.01, objective="l0")[0]
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


def test_energy_limit_needs_the_model_with_the_same_layers(setup):
    model, policy, xt = setup
    with pytest.raises(ValueError, match="needs the model"):
        policy.check(xt[0])
    assert InputPolicy().check(xt[0]).allowed  # defaults: no model needed
    two_layers = InputPolicy(max_layer_density=(0.9, 0.9))
    with pytest.raises(ValueError, match="bounds 2 hidden layers but the model has 3"):
        two_layers.check(xt[0], model)


def test_dict_round_trip_versions_and_validation(setup):
    _, policy, _ = setup
    d = json.loads(json.dumps(policy.to_dict()))
    assert d["shape"] == [1, 28, 28] and d["version"] == 5 and len(d["max_layer_density"]) == 3
    assert d["max_layer_energy"] is None and d["max_layer_positive"] is None  # a ReLU net: the density checks apply
    assert InputPolicy.from_dict(d) == policy
    v3 = {k: v for k, v in d.items() if k not in ("max_reconstruction", "reconstruction_net")}
    assert InputPolicy.from_dict({**v3, "version": 3}) == policy  # a stored version-3 policy loads unchanged
    v2 = {k: v for k, v in v3.items() if k not in ("max_layer_energy", "max_layer_positive")}
    assert InputPolicy.from_dict({**v2, "version": 2}) == policy  # a stored version-2 policy loads unchanged
    with pytest.raises(ValueError, match="unknown InputPolicy field"):
        InputPolicy.from_dict({**d, "version": 2})  # version 2 had no per-layer energy/positive limits
    v1 = {"shape": [1, 28, 28], "min_value": 0.0, "max_value": 1.0, "max_variance": 0.2, "max_energy": None, "max_density": None}
    assert InputPolicy.from_dict(v1) == InputPolicy(max_variance=0.2)  # a v1 policy without activation limits still loads
    with pytest.raises(ValueError, match="version-1 policy"):
        InputPolicy.from_dict({**v1, "max_energy": 150.0})  # its energy was measured on ReLU calls: refuse, don't reinterpret
    with pytest.raises(ValueError, match="unsupported InputPolicy version"):
        InputPolicy.from_dict({**d, "version": 6})
    with pytest.raises(ValueError, match="unknown InputPolicy field"):
        InputPolicy.from_dict({**d, "max_abs_value": 3.0})
    with pytest.raises(ValueError, match="min_value must be below max_value"):
        InputPolicy(min_value=1.0, max_value=0.0)
    with pytest.raises(ValueError, match="max_energy"):
        InputPolicy(max_energy=-1.0)
    with pytest.raises(ValueError, match="max_layer_density"):
        InputPolicy(max_layer_density=[0.5, -1])
    with pytest.raises(ValueError, match="max_layer_energy"):
        InputPolicy(max_layer_energy="12")
    with pytest.raises(ValueError, match="max_layer_positive"):
        InputPolicy(max_layer_positive=[])
    with pytest.raises(ValueError, match="shape"):
        InputPolicy(shape=(0, 28))


def test_calibration_budget_is_exact_and_keeps_given_limits(setup):
    model, _, xt = setup
    p = InputPolicy.calibrate(model, xt[:500], false_positive_rate=0.01, headroom=0.0, max_density=None, max_layer_density=None)
    assert p.max_density is None and p.max_layer_density is None and p.max_energy is not None
    # One calibrated check spends the whole budget: k = ⌊0.01 · 501⌋ − 1 = 4 of the 500 digits lie above it.
    assert sum(not d.allowed for d in p.check_batch(xt[:500], model)) == 4
    roomy = InputPolicy.calibrate(model, xt[:500], false_positive_rate=0.01, max_density=None, max_layer_density=None)
    assert roomy.max_energy > p.max_energy  # headroom lifts the limit
    with pytest.raises(ValueError, match="calibration images fail"):
        InputPolicy.calibrate(model, torch.cat([xt[:10], xt[:1] * 4]))
    with pytest.raises(ValueError, match="false_positive_rate"):
        InputPolicy.calibrate(model, xt[:10], false_positive_rate=0.0)


def _leave_one_out_vs_refits(model, xt, checks, k=1, headroom=0.1):
    """(closed-form leave-one-out rejections, the same decided by refitting the limits without each of 120 digits)."""
    scores = activation_scores(model, xt[:120])
    closed_form = leave_one_out_rejected(scores, checks, k, headroom)
    refits = []
    for i in range(120):
        keep = torch.arange(120) != i
        limits = calibrate_activation_limits({n: v[keep] for n, v in scores.items()}, checks, k, headroom)
        refits.append(any(bool(f[0]) for f in violated({n: v[i : i + 1] for n, v in scores.items()}, limits).values()))
    return closed_form, torch.tensor(refits)


def test_leave_one_out_false_positives_match_refits(setup):
    """The callback's fit-time false-positive estimate equals refitting the policy without each digit."""
    model, _, xt = setup
    closed_form, refits = _leave_one_out_vs_refits(model, xt, ("energy", "density", "layer_density"))
    # Medians and per-layer means move slightly without digit i: allow one disagreement.
    assert (closed_form != refits).sum() <= 1 and closed_form.sum() >= 1


# --- bounded activations (tanh): the density limits bound nothing, the per-layer checks take their budget ---


@pytest.fixture(scope="module")
def tanh_setup(real_data_dir):
    model, x, _, xt, _ = trained_tanh_cnn(str(real_data_dir))
    return model, InputPolicy.calibrate(model, x[2000:2800], false_positive_rate=0.005), xt  # 800 non-members, as above


def test_tanh_policy_bounds_every_layer_and_keeps_clean_non_members(tanh_setup):
    model, policy, xt = tanh_setup
    assert float(activation_energy(model, xt[:50])["density"].min()) == 1.0  # tanh is never exactly zero...
    assert policy.max_density is None and policy.max_layer_density is None  # ...so no vacuous density limit,
    assert policy.max_energy is not None and len(policy.max_layer_energy) == len(policy.max_layer_positive) == 3  # but these
    assert all(v < 1.0 for v in policy.max_layer_positive)  # a positive-share limit that binds
    decisions = policy.check_batch(xt, model)
    assert sum(not d.allowed for d in decisions) <= 10, reasons(decisions)  # ≤ 0.5% of 2,000 held-out non-members
    assert default_checks(activation_scores(model, xt[:100])) == ("energy", "layer_energy", "layer_positive")


def test_relu_policy_keeps_the_density_checks(setup):
    model, policy, xt = setup
    assert default_checks(activation_scores(model, xt[:100])) == ("energy", "density", "layer_density")
    assert policy.max_layer_energy is None and policy.max_layer_positive is None  # ReLU: calibrated as in version 2
    one = InputPolicy.calibrate(model, xt[:300], checks=("layer_energy",))  # asked for explicitly (a threshold sweep's point)
    assert len(one.max_layer_energy) == 3 and one.max_energy is None and one.max_density is None and one.max_layer_density is None
    with pytest.raises(ValueError, match="checks must be"):
        InputPolicy.calibrate(model, xt[:300], checks=("saturation",))


@pytest.mark.parametrize("optimizer", ["sign", "adam"])
@pytest.mark.parametrize("objective", ["l2", "l0"])
def test_tanh_sponges_are_rejected_by_the_layer_checks(tanh_setup, objective, optimizer):
    """Sponges crafted from digits: L2 ones fail the per-layer energy, L0 ones the per-layer positive share."""
    model, policy, xt = tanh_setup
    sponges = craft_sponges(model, xt[:8], steps=40, lr=0.03, objective=objective, optimizer=optimizer)
    assert reasons(policy.check_batch(xt[:8], model))["ok"] == 8  # their starting points pass
    assert reasons(policy.check_batch(sponges, model))["energy"] >= 6
    assert reasons(InputPolicy().check_batch(sponges, model))["ok"] == 8  # the pixel checks alone let all through
    if objective == "l2":  # the per-layer energy limits alone catch them
        assert reasons(InputPolicy(max_layer_energy=policy.max_layer_energy).check_batch(sponges, model))["energy"] >= 6
    else:  # negative control: with the new checks off (the L2 limit alone, as before) they pass
        assert reasons(InputPolicy(max_energy=policy.max_energy).check_batch(sponges, model))["ok"] >= 7
        assert reasons(InputPolicy(max_layer_positive=policy.max_layer_positive).check_batch(sponges, model))["energy"] >= 6


def test_tanh_adaptive_attacker_respects_the_layer_limits(tanh_setup):
    """It knows the per-layer limits too: what it returns passes, and its energy stays ≤ 1.2x the clean 99.5th percentile."""
    model, policy, xt = tanh_setup
    q_energy = float(torch.quantile(activation_energy(model, xt)["l2_energy"], 0.995))
    x0 = xt[20:26]
    for objective in ("l2", "l0"):
        sponges, accepted = adaptive_sponges(model, policy, x0, objective=objective, steps=40, lr=0.03)
        assert accepted.all() and all(d.allowed for d in policy.check_batch(sponges, model))
        stats = activation_energy(model, sponges)
        assert worst_accepted_ratio(stats["l2_energy"], accepted, q_energy) <= 1.2
        assert (stats["layer_l2"] <= torch.tensor(policy.max_layer_energy)).all()
        assert (stats["layer_positive"] <= torch.tensor(policy.max_layer_positive)).all()
        if objective == "l2":
            assert (stats["l2_energy"] > activation_energy(model, x0)["l2_energy"]).all()  # it did climb
    # Negative control: against the pixel checks alone the same attacker goes past the energy limit (tanh saturates,
    # so not by as much as on ReLU nets).
    free, ok = adaptive_sponges(model, InputPolicy(), x0, objective="l2", steps=60, lr=0.03)
    assert worst_accepted_ratio(activation_energy(model, free)["l2_energy"], ok, q_energy) > 1.05 * policy.max_energy / q_energy


@pytest.mark.parametrize("objective, field", [("l2", "max_layer_energy"), ("l0", "max_layer_positive")])
def test_tanh_adaptive_attacker_knows_each_layer_limit(tanh_setup, objective, field):
    """Each per-layer limit alone binds the attacker: it returns inputs that pass (one that ignored the limit would not)."""
    model, policy, xt = tanh_setup
    alone = InputPolicy(**{field: getattr(policy, field)})
    sponges, accepted = adaptive_sponges(model, alone, xt[20:26], objective=objective, steps=40, lr=0.03)
    assert accepted.all() and all(d.allowed for d in alone.check_batch(sponges, model))


def test_leave_one_out_false_positives_match_refits_on_tanh(tanh_setup):
    """The same closed form for the bounded-activation checks (per-layer medians and spreads kept from all N digits)."""
    model, _, xt = tanh_setup
    closed_form, refits = _leave_one_out_vs_refits(model, xt, ("energy", "layer_energy", "layer_positive"))
    assert (closed_form != refits).sum() <= 1 and closed_form.sum() >= 1
