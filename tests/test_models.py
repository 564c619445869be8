"""Every registered net: forward shapes, registry round-trip, Opacus per-sample gradients, non-zero input gradients; TanhCNN in the bk DP mode."""

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from secure_ml.adversarial import AdversarialConfig, adversarial_examples, mixed_loss
from secure_ml.attacks import fgsm
from secure_ml.attacks.evasion import input_gradient
from secure_ml.errors import ConfigError
from secure_ml.models import SmallCNN, TanhCNN, build_net, net_spec, registered_nets
from secure_ml.models.pool import MaxPool2d
from secure_ml.privacy.bookkeeping import BookKeepingClipper
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.modes import resolve_mode
from secure_ml.privacy.reference import ReferenceDPOptimizer, per_sample_gradients

NETS = sorted(registered_nets())


def _net(name, **kw):
    torch.manual_seed(0)
    return registered_nets()[name](**kw)


def test_registry_lists_the_nets():
    assert {"SmallCNN", "TanhCNN"} <= set(NETS)


@pytest.mark.parametrize("name", NETS)
def test_forward_shape_and_num_classes(name):
    x = torch.rand(3, 1, 28, 28)
    assert _net(name)(x).shape == (3, 10)
    assert _net(name, num_classes=7)(x).shape == (3, 7)


@pytest.mark.parametrize("name", NETS)
def test_registry_round_trip_rebuilds_the_same_net(name):
    net = _net(name, num_classes=7)
    spec = net_spec(net)
    assert spec["class_path"] == f"secure_ml.models.{name}" and spec["init_args"]["num_classes"] == 7
    clone = build_net(spec)
    assert type(clone) is type(net) and net_spec(clone) == spec
    clone.load_state_dict(net.state_dict())
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(clone(x), net(x))


@pytest.mark.parametrize("name", NETS)
def test_opacus_per_sample_gradients_match_single_sample_gradients(name):
    net = _net(name)
    assert ModuleValidator.validate(net, strict=True) == []
    gsm = GradSampleModule(net, loss_reduction="sum")
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 5, 9])
    F.cross_entropy(gsm(x), y, reduction="sum").backward()
    samples = {n: p.grad_sample.clone() for n, p in net.named_parameters()}
    gsm._close()
    for i in (0, 3):
        net.zero_grad()
        F.cross_entropy(net(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        for n, p in net.named_parameters():
            assert samples[n].shape == (4, *p.shape)
            torch.testing.assert_close(samples[n][i], p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NETS)
def test_attacks_get_nonzero_input_gradients(name):
    net = _net(name).eval()
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    grad = input_gradient(net, x, y)
    assert (grad.flatten(1).abs().sum(1) > 0).all()
    x_adv = fgsm(net, x, y, 0.1)
    assert (x_adv - x).abs().amax() > 0.05


def test_tanh_cnn_is_small_and_validates_its_arguments():
    assert sum(p.numel() for p in TanhCNN().parameters()) == 26_010
    assert sum(p.numel() for p in TanhCNN().parameters()) < sum(p.numel() for p in SmallCNN().parameters()) / 7
    assert any(isinstance(m, torch.nn.Tanh) for m in TanhCNN().modules())
    assert any(isinstance(m, torch.nn.ReLU) for m in TanhCNN(activation="relu").modules())
    with pytest.raises(ConfigError, match="activation"):
        TanhCNN(activation="sigmoid")
    with pytest.raises(ConfigError, match="hidden"):
        TanhCNN(hidden=0)


def test_tanh_cnn_trains_in_the_bk_mode_with_the_reference_clipped_sum():
    """`--model.dp.backend auto` (hardened.yaml) puts TanhCNN in the book-keeping mode; its clipped sum of each person's
    clean+adversarial gradient equals the torch.func reference (padded strided 8x8 conv, stride-1 max-pools, tanh)."""
    net = _net("TanhCNN")
    assert resolve_mode(DPConfig(), mixed=True, distributed=False, net=net).name == "bk"
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    x_adv = adversarial_examples(net, x, y, AdversarialConfig(epsilon=0.1, ratio=0.5, attack="pgd", pgd_steps=2))

    def sample_loss(forward, xi, yi, xai):
        loss, logits = mixed_loss(forward, xi[None], yi[None], xai[None], 0.5)
        return loss.sum(), logits[0]

    ref = list(per_sample_gradients(net, sample_loss, x, y, x_adv)[0].values())
    norms = torch.stack([r.flatten(1).norm(dim=1) for r in ref], 1).norm(dim=1)
    clip = float(norms.median())
    assert (norms > clip).any() and (norms < clip).any()  # both branches of the clip factor
    expected = ReferenceDPOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), 0.0, clip, 8).clip_and_accumulate(ref)
    clipper = BookKeepingClipper(net, clip)
    with clipper.recording():
        loss, _ = mixed_loss(net, x, y, x_adv, 0.5)
    got, bk_norms = clipper.clipped_sum(loss)
    clipper.close()
    torch.testing.assert_close(bk_norms, norms, rtol=1e-4, atol=1e-6)
    for ours, theirs in zip(got, expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", [(3, 4, 28, 28), (2, 3, 7, 7), (5, 2, 14, 13), (1, 1, 2, 3)])
def test_fast_max_pool_equals_max_pool2d_without_gradients(stride, shape, monkeypatch):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, 0] = float("nan")  # NaN propagates in both
    expected = F.max_pool2d(x, 2, stride)
    native = []
    monkeypatch.setattr(torch.nn.MaxPool2d, "forward", lambda self, t: native.append(1) or F.max_pool2d(t, 2, stride))
    with torch.no_grad():
        got = MaxPool2d(2, stride)(x)
    assert not native, "the gradient-free call must take the fast path"
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


def test_fast_max_pool_uses_the_native_kernel_when_a_gradient_is_recorded():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = MaxPool2d(2, 2)(x)
    assert out.grad_fn is not None and "MaxPool" in type(out.grad_fn).__name__  # first-max gradients, as nn.MaxPool2d
    with torch.no_grad():
        assert torch.equal(MaxPool2d(2, 2)(x), out)


@pytest.mark.parametrize("name", NETS)
def test_nets_give_the_same_logits_with_and_without_gradients(name):
    net = _net(name).eval()
    x = torch.rand(16, 1, 28, 28, requires_grad=True)
    with torch.no_grad():
        fast = net(x)
    assert torch.equal(fast, net(x).detach())
