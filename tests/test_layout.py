"""Channels-last weights for the scorecard's attacks and RMIA's reference models (secure_ml.models.layout)."""

import types

import pytest
import torch
import torch.nn.functional as F
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from secure_ml.adversarial import AdversarialConfig
from secure_ml.callbacks._common import fast_layout_allowed
from secure_ml.models import SmallCNN, TanhCNN
from secure_ml.models.layout import channels_last
from secure_ml.privacy import bookkeeping_layers
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.engine import make_private
from secure_ml.privacy.modes import MODES
from secure_ml.privacy.steps import dp_step


def _strides(net):
    return [m.weight.stride() for m in net.modules() if isinstance(m, nn.Conv2d)]


def _input_gradient(net, x, y):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(net(x), y, reduction="sum"), x)[0]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)


@pytest.mark.parametrize("net_cls", [SmallCNN, TanhCNN])
def test_convolutions_run_channels_last_inside_and_default_after(net_cls, batch):
    torch.manual_seed(0)
    net = net_cls()
    params = list(net.parameters())
    before, values = _strides(net), [p.detach().clone() for p in params]
    conv1 = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert not conv1(batch[0]).is_contiguous(memory_format=torch.channels_last)  # control: the default format outside
    with channels_last(net):
        assert list(net.parameters()) == params  # the same Parameter objects: optimizers and hooks keep them
        assert _strides(net) != before
        # One input channel: the weight is contiguous in both formats, yet the output must come out channels-last.
        assert conv1(batch[0]).is_contiguous(memory_format=torch.channels_last)
    assert _strides(net) == before
    for p, v in zip(params, values):
        assert torch.equal(p, v)


def test_values_written_inside_are_kept(batch):
    torch.manual_seed(0)
    net = SmallCNN()
    with channels_last(net):
        with torch.no_grad():
            net.conv2.weight.add_(1.0)
        expected = net.conv2.weight.detach().clone()
    assert torch.equal(net.conv2.weight, expected)


def test_restored_after_an_exception():
    torch.manual_seed(0)
    net = SmallCNN()
    before = _strides(net)
    with pytest.raises(RuntimeError, match="boom"), channels_last(net):
        raise RuntimeError("boom")
    assert _strides(net) == before


def test_disabled_and_conv_free_nets_are_untouched(batch):
    torch.manual_seed(0)
    net = SmallCNN()
    before = _strides(net)
    with channels_last(net, enabled=False):
        assert _strides(net) == before
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with channels_last(mlp):
        assert mlp(batch[0]).shape == (16, 10)


def test_attack_gradients_are_the_same_numbers(batch):
    torch.manual_seed(0)
    net = SmallCNN()
    x, y = batch
    plain = _input_gradient(net, x, y)
    with channels_last(net):
        fast = _input_gradient(net, x, y)
    assert torch.allclose(fast, plain, atol=1e-6, rtol=1e-4)
    assert torch.equal(fast.sign()[plain.abs() > 1e-6], plain.sign()[plain.abs() > 1e-6])  # FGSM's steps agree


@pytest.mark.parametrize("backend, allowed", [("bk", True), ("opacus", False)])
def test_opacus_modes_keep_the_default_format(backend, allowed, batch):
    """Opacus's guard refuses channels-last activations (its conv per-sample gradients are wrong there): the callbacks
    must not convert under it; the book-keeping mode, correct on either format, may."""
    torch.manual_seed(0)
    net = SmallCNN()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = DPDataLoader.from_data_loader(DataLoader(TensorDataset(*batch), batch_size=4))
    private = make_private(net, opt, loader, DPConfig(enabled=True, backend=backend), total_steps=4)
    try:
        module = types.SimpleNamespace(private=private, net=net)
        assert fast_layout_allowed(module) is allowed
        assert fast_layout_allowed(types.SimpleNamespace(private=None, net=net))
        if not allowed:  # control: converting anyway is refused by the guard
            with channels_last(net), pytest.raises(Exception, match="channels-last"):
                net(batch[0])
    finally:
        private.close()


@pytest.mark.parametrize("ghost", [False, True], ids=["materialised", "ghost-norm"])
def test_a_bk_step_on_channels_last_weights_is_the_same_step(batch, monkeypatch, ghost):
    """RMIA's reference models train channels-last under the book-keeping mode: the step equals the default format's, and the
    optimizer gets default-format gradients (an optimizer that flattens them with .view, as LBFGS does, keeps working)."""
    monkeypatch.setattr(bookkeeping_layers, "_ghost_cheaper", lambda *_: ghost)  # the ghost path's weight gradient is a conv backward
    x, y = batch
    nets = []
    for fast in (False, True):
        torch.manual_seed(0)
        net = SmallCNN()
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        loader = DPDataLoader.from_data_loader(DataLoader(TensorDataset(x, y), batch_size=4))
        private = make_private(net, opt, loader, DPConfig(enabled=True, backend="bk", noise_seed=3), total_steps=4)
        assert private.spec.channels_last and MODES["bk"].channels_last and not MODES["hooks"].channels_last
        with channels_last(net, enabled=fast):
            for _ in range(2):
                dp_step(private, net, private.optimizer, x, y, AdversarialConfig(epsilon=0.05))
            assert all(p.grad.is_contiguous() for p in net.parameters())
        private.close()
        nets.append(net)
    for a, b in zip(*(n.parameters() for n in nets)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), float((a - b).abs().max())


def test_nested_blocks_keep_the_outer_conversion(batch):
    """A one-channel weight is contiguous in both formats: an inner block must not convert it again and restore it early."""
    torch.manual_seed(0)
    net = SmallCNN()
    with channels_last(net):
        inner = _strides(net)
        with channels_last(net):
            pass
        assert _strides(net) == inner
        assert net.conv1(batch[0]).is_contiguous(memory_format=torch.channels_last)


def test_a_failing_or_lazy_weight_leaves_nothing_converted():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 3), nn.LazyConv2d(4, 3))  # an uninitialised lazy branch is skipped, not an error
    before = net[0].weight.stride()
    with channels_last(net):
        assert net[0].weight.stride() != before
    assert net[0].weight.stride() == before


def test_parametrized_weights_are_left_alone():
    """Reading a parametrized weight runs the parametrization (spectral_norm's power iteration in train mode)."""
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    net = nn.Sequential(parametrizations.spectral_norm(nn.Conv2d(3, 4, 3))).train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with channels_last(net):
        pass
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_entered_under_inference_mode_the_weights_still_train(batch):
    torch.manual_seed(0)
    net = SmallCNN()
    with torch.inference_mode(), channels_last(net):
        net(batch[0])
    F.cross_entropy(net(batch[0]), batch[1]).backward()  # inference tensors would refuse this
    assert net.conv1.weight.grad is not None
