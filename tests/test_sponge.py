"""Sponge examples: activation capture, energy-raising crafting, the seed's Gaussian sponges and the report."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secure_ml.attacks.sponge import (
    ReluRecorder,
    SpongeReport,
    activation_energy,
    craft_sponges,
    gaussian_sponges,
    sponge_report,
)
from secure_ml.models.small_cnn import SmallCNN
from tests.helpers.models import trained_small_cnn


@pytest.fixture(scope="module")
def untrained() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def model(real_data_dir) -> SmallCNN:
    """The briefly trained SmallCNN shared with test_input_policy.py (trained once per session)."""
    return trained_small_cnn(str(real_data_dir))[0]


@pytest.fixture(scope="module")
def digits(real_data_dir) -> torch.Tensor:
    return trained_small_cnn(str(real_data_dir))[3][:12]


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def manual_relus(m: SmallCNN, x: torch.Tensor):
    """The three post-ReLU tensors of SmallCNN, written out by hand."""
    z = (x - m.mean) / m.std
    a1 = torch.relu(m.conv1(z))
    a2 = torch.relu(m.conv2(m.pool(a1)))
    a3 = torch.relu(m.fc1(torch.flatten(m.pool(a2), 1)))
    return [a1, a2, a3]


def test_recorder_sees_functional_module_and_method_relus():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x):
            return F.relu(self.act(self.lin(x)).relu() - 0.1)

    rec = ReluRecorder()
    with rec:
        Mixed()(torch.randn(2, 4))
    assert len(rec.records) == 3  # nn.ReLU → F.relu → torch.relu counted once, then .relu(), then F.relu


@pytest.mark.parametrize("which", ["untrained", "model"])
def test_activation_energy_matches_hand_computation(which, request):
    model = request.getfixturevalue(which)
    x = noise(5)
    e = activation_energy(model, x)
    with torch.no_grad():
        acts = manual_relus(model, x)
    l2 = sum(a.double().pow(2).flatten(1).sum(1) for a in acts)
    nonzero = sum((a > 0).flatten(1).sum(1) for a in acts)
    assert torch.allclose(e["l2_energy"], l2)
    assert torch.equal(e["nonzero"], nonzero)
    assert torch.allclose(e["density"], nonzero.double() / (16 * 28 * 28 + 32 * 14 * 14 + 128))


def test_model_without_relu_is_rejected():
    with pytest.raises(ValueError, match="no ReLU"):
        activation_energy(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), noise(2))


@pytest.mark.parametrize("start", ["noise", "digits"])
def test_l2_crafting_raises_energy_and_stays_in_range(model, digits, start):
    x0 = noise(12) if start == "noise" else digits
    sponges = craft_sponges(model, x0, steps=15, lr=0.05, objective="l2")
    before, after = activation_energy(model, x0)["l2_energy"], activation_energy(model, sponges)["l2_energy"]
    assert (after > 1.3 * before).all()
    assert sponges.min() >= 0.0 and sponges.max() <= 1.0


@pytest.mark.parametrize("start", ["noise", "digits"])
def test_l0_crafting_raises_density(model, digits, start):
    x0 = noise(12, seed=1) if start == "noise" else digits
    sponges = craft_sponges(model, x0, steps=15, lr=0.05, objective="l0")
    before, after = activation_energy(model, x0)["density"], activation_energy(model, sponges)["density"]
    assert (after > before + 0.02).all()
    assert sponges.min() >= 0.0 and sponges.max() <= 1.0


def test_unclamped_and_epsilon_bounded_crafting(model, digits):
    free = craft_sponges(model, digits, steps=10, lr=0.1, clamp=False)
    assert free.max() > 1.0 or free.min() < 0.0
    near = craft_sponges(model, digits, steps=10, lr=0.05, epsilon=0.1)
    assert (near - digits).abs().max() <= 0.1 + 1e-6
    assert (activation_energy(model, near)["l2_energy"] > activation_energy(model, digits)["l2_energy"]).all()


def test_crafting_is_side_effect_free_and_works_under_no_grad():
    torch.manual_seed(0)
    m = SmallCNN().train()
    m.fc2.eval()  # a deliberately mixed state must survive
    with torch.no_grad():
        s = craft_sponges(m, noise(3), steps=2, lr=0.05)
    assert not s.requires_grad and s.grad_fn is None
    assert all(p.grad is None for p in m.parameters())
    assert m.training and m.conv1.training and not m.fc2.training  # eval mode was temporary
    assert torch.equal(craft_sponges(m, noise(3), steps=2, lr=0.05), s)  # deterministic


def test_crafting_validates_arguments(model):
    with pytest.raises(ValueError, match="objective"):
        craft_sponges(model, noise(1), objective="l1")
    with pytest.raises(ValueError, match="lr"):
        craft_sponges(model, noise(1), lr=0.0)
    with pytest.raises(ValueError, match="floating-point"):
        craft_sponges(model, torch.zeros(1, 1, 28, 28, dtype=torch.uint8))


def test_gaussian_sponges():
    a = gaussian_sponges(4, [0.5, 5.0], torch.Generator().manual_seed(0))
    b = gaussian_sponges(4, [0.5, 5.0], torch.Generator().manual_seed(0))
    assert a.shape == (8, 1, 28, 28) and torch.equal(a, b)
    assert a[:4].std() < 1.0 < a[4:].std()  # scale-major order
    c = gaussian_sponges(4, [5.0], torch.Generator().manual_seed(0), clamp=True, shape=(28, 28))
    assert c.shape == (4, 28, 28) and c.min() == 0.0 and c.max() == 1.0
    with pytest.raises(ValueError, match="scales"):
        gaussian_sponges(4, [0.0])


def test_sponge_report(model, digits):
    sponges = craft_sponges(model, digits, steps=10, lr=0.05)
    r = sponge_report(model, digits, sponges, repeats=3)
    assert isinstance(r, SpongeReport)
    assert r.energy_ratio == pytest.approx(r.sponge_energy / r.clean_energy) and r.energy_ratio > 1.3
    assert r.density_ratio == pytest.approx(r.sponge_density / r.clean_density)
    assert r.clean_latency_s > 0 and r.sponge_latency_s > 0
    assert set(r.to_dict()) >= {"energy_ratio", "density_ratio", "latency_ratio"}
    with pytest.raises(ValueError, match="one shape"):
        sponge_report(model, digits, digits[:, :, :14], repeats=1)
