"""Every registered net: forward shapes, registry round-trip, Opacus per-sample gradients, non-zero input gradients."""

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from secure_ml.attacks import fgsm
from secure_ml.attacks.evasion import input_gradient
from secure_ml.errors import ConfigError
from secure_ml.models import SmallCNN, TanhCNN, build_net, net_spec, registered_nets

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
