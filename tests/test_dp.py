"""DP-SGD: the reference clipper against Opacus, hook hygiene around attacks, accounting, no silent non-DP."""

import pytest
import torch
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader, TensorDataset

from secure_ml.adversarial import AdversarialConfig, adversarial_examples, mixed_loss
from secure_ml.errors import ConfigError
from secure_ml.models import SmallCNN
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.engine import make_private, poisson_sample_rate
from secure_ml.privacy.reference import per_sample_gradients


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _poisson_loader(x, y, batch_size=32):
    return DPDataLoader.from_data_loader(DataLoader(TensorDataset(x, y), batch_size=batch_size), generator=torch.Generator().manual_seed(0))


def _twins():
    torch.manual_seed(1)
    a = SmallCNN()
    b = SmallCNN()
    b.load_state_dict(a.state_dict())
    return a, b


def _reference_per_sample(net, x, y, x_adv, ratio):
    def sample_loss(forward, xi, yi, xai):
        loss, logits = mixed_loss(forward, xi[None], yi[None], xai[None], ratio)
        return loss.sum(), logits[0]

    grads, _, _ = per_sample_gradients(net, sample_loss, x, y, x_adv)
    return list(grads.values())


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_reference_matches_opacus_with_zero_noise(ratio):
    x_all, y_all = _data()
    x, y = x_all[:32], y_all[:32]
    opacus_net, ref_net = _twins()
    loader = _poisson_loader(x_all, y_all)
    adv = AdversarialConfig(epsilon=0.05, ratio=ratio)

    per_sample = _reference_per_sample(ref_net, x, y, adversarial_examples(ref_net, x, y, adv), ratio)
    norms = torch.stack([g.reshape(32, -1).norm(dim=1) for g in per_sample], 1).norm(dim=1)
    clip = float(norms.median())  # some samples clipped, some not: both branches exercised
    cfg = DPConfig(noise_multiplier=0.0, max_grad_norm=clip)

    priv = make_private(opacus_net, torch.optim.SGD(opacus_net.parameters(), lr=0.1), loader, cfg, total_steps=10, mode="hooks")
    with priv.attack_context():  # the project's pattern: the attack runs with hooks off
        x_adv = adversarial_examples(opacus_net, x, y, adv)
    assert all(getattr(p, "grad_sample", None) is None for p in opacus_net.parameters()), (
        "the attack polluted Opacus's per-sample gradients"
    )
    loss, _ = mixed_loss(opacus_net, x, y, x_adv, ratio)
    loss.mean().backward()
    priv.optimizer.pre_step()  # clip_and_accumulate → add_noise (σ=0) → scale_grad
    opacus_grads = [p.grad.clone() for p in opacus_net.parameters()]

    ref = make_private(
        ref_net,
        torch.optim.SGD(ref_net.parameters(), lr=0.1),
        loader,
        DPConfig(backend="reference", noise_multiplier=0.0, max_grad_norm=clip),
        10,
    )
    assert ref.expected_batch_size == priv.expected_batch_size
    ref.optimizer.set_grad_samples(per_sample)
    ref.optimizer.pre_step()
    for p, g in zip(ref_net.parameters(), opacus_grads):
        assert torch.allclose(p.grad, g, atol=1e-5, rtol=0), (p.grad - g).abs().max()

    for i in range(32):  # each clipped per-sample gradient has flat norm ≤ C
        one = ref.optimizer.clip_and_accumulate([g[i : i + 1] for g in per_sample])
        assert torch.sqrt(sum((c**2).sum() for c in one)) <= clip * (1 + 1e-5)
    priv.close()


def test_attack_without_disabled_hooks_would_pollute():
    """Negative control: the check above can fail."""
    x_all, y_all = _data()
    net = SmallCNN()
    priv = make_private(net, torch.optim.SGD(net.parameters(), lr=0.1), _poisson_loader(x_all, y_all), DPConfig(), 10, mode="hooks")
    x, _y = x_all[:8], y_all[:8]
    with torch.enable_grad():
        net(x.clone().requires_grad_(True)).sum().backward()
    assert any(getattr(p, "grad_sample", None) is not None for p in net.parameters())
    priv.close()


def test_reference_clips_flat_norm_not_per_tensor():
    x, y = _data(8)
    net = SmallCNN()
    from secure_ml.privacy.reference import ReferenceDPOptimizer

    opt = ReferenceDPOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), 0.0, 1e-3, 8)
    grads = _reference_per_sample(net, x, y, x, 0.0)
    summed = opt.clip_and_accumulate(grads)
    total = torch.sqrt(sum((s**2).sum() for s in summed))
    assert total <= 8 * 1e-3 * (1 + 1e-5)  # 8 samples of norm ≤ C, whatever the number of tensors (8 here)


def test_noise_has_std_sigma_c_and_is_seeded():
    from secure_ml.privacy.reference import ReferenceDPOptimizer

    net = SmallCNN()
    zeros = [torch.zeros(0, *p.shape) for p in net.parameters()]  # empty batch: pure noise

    def mk():
        return ReferenceDPOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), 2.0, 0.5, 1, torch.Generator().manual_seed(3))

    a = mk().add_noise(mk().clip_and_accumulate(zeros))
    b = mk().add_noise(mk().clip_and_accumulate(zeros))
    flat = torch.cat([t.flatten() for t in a])
    assert torch.equal(flat, torch.cat([t.flatten() for t in b]))
    assert abs(float(flat.std()) - 1.0) < 0.01  # σ·C = 2.0 × 0.5


def test_shuffled_loader_is_refused():
    x, y = _data(64)
    with pytest.raises(ConfigError, match="Poisson"):
        poisson_sample_rate(DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    assert poisson_sample_rate(_poisson_loader(x, y, 8)) == pytest.approx(1 / 8)


def test_batchnorm_model_is_refused_with_flag_name():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    x, y = _data(64)
    with pytest.raises(ConfigError, match="--model.net") as exc:
        make_private(net, torch.optim.SGD(net.parameters(), lr=0.1), _poisson_loader(x, y), DPConfig(), 10)
    assert "BatchNorm cannot support training with differential privacy" in str(exc.value) and len(str(exc.value)) < 300


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(noise_multiplier=-1.0), "--model.dp.noise_multiplier"),
        (dict(max_grad_norm=0.0), "--model.dp.max_grad_norm"),
        (dict(delta=1.5), "--model.dp.delta"),
        (dict(target_epsilon=-2.0), "--model.dp.target_epsilon"),
        (dict(enabled=True, noise_multiplier=0.0), "--model.dp.noise_multiplier"),
        # YAML's .inf / .nan reach the dataclass (the command line refuses them itself): C = inf trained NaN weights under a
        # normal-looking ε, a NaN target ε gave Opacus's starting σ = 10, a NaN σ a traceback after data loading.
        (dict(enabled=True, max_grad_norm=float("inf")), "--model.dp.max_grad_norm must be a finite number"),
        (dict(enabled=True, max_grad_norm=float("nan")), "--model.dp.max_grad_norm must be a finite number"),
        (dict(enabled=True, noise_multiplier=float("nan")), "--model.dp.noise_multiplier must be a finite number"),
        (dict(enabled=True, noise_multiplier=float("inf")), "--model.dp.noise_multiplier must be a finite number"),
        (dict(enabled=True, target_epsilon=float("nan")), "--model.dp.target_epsilon must be a finite number"),
        (dict(enabled=True, target_epsilon=float("inf")), "--model.dp.target_epsilon must be a finite number"),
        (dict(enabled=True, delta=float("nan")), "--model.dp.delta"),
    ],
)
def test_bad_dp_config_names_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        DPConfig(**kwargs)


@pytest.mark.slow
def test_ghost_clipping_matches_reference_with_zero_noise():
    x_all, y_all = _data()
    x, y = x_all[:32], y_all[:32]
    ghost_net, ref_net = _twins()
    loader = _poisson_loader(x_all, y_all)
    adv = AdversarialConfig(epsilon=0.05, ratio=1.0)
    per_sample = _reference_per_sample(ref_net, x, y, adversarial_examples(ref_net, x, y, adv), 1.0)
    clip = float(torch.stack([g.reshape(32, -1).norm(dim=1) for g in per_sample], 1).norm(dim=1).median())
    priv = make_private(
        ghost_net,
        torch.optim.SGD(ghost_net.parameters(), lr=0.1),
        loader,
        DPConfig(noise_multiplier=0.0, max_grad_norm=clip),
        10,
        mode="ghost",
    )
    assert priv.mode == "ghost"
    with priv.attack_context():
        x_adv = adversarial_examples(ghost_net, x, y, adv)
    priv.criterion(ghost_net(x_adv), y).backward()
    priv.optimizer.pre_step()
    ref = make_private(
        ref_net,
        torch.optim.SGD(ref_net.parameters(), lr=0.1),
        loader,
        DPConfig(backend="reference", noise_multiplier=0.0, max_grad_norm=clip),
        10,
    )
    ref.optimizer.set_grad_samples(per_sample)
    ref.optimizer.pre_step()
    for p, q in zip(ghost_net.parameters(), ref_net.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=0), (p.grad - q.grad).abs().max()
    priv.close()


def test_mode_is_resolved_once_or_refused_with_the_flag():
    from secure_ml.privacy.modes import resolve_mode

    def name(cfg, mixed, distributed):
        return resolve_mode(cfg, mixed=mixed, distributed=distributed).name

    for mixed in (False, True):  # the default (backend auto): book-keeping, which mixes and runs under DDP
        for distributed in (False, True):
            assert name(DPConfig(), mixed=mixed, distributed=distributed) == "bk"
    opacus = DPConfig(backend="opacus")
    assert name(opacus, mixed=False, distributed=False) == "ghost"
    assert name(opacus, mixed=True, distributed=False) == "hooks"
    assert name(opacus, mixed=False, distributed=True) == "hooks"
    assert name(DPConfig(grad_sample_mode="hooks"), mixed=False, distributed=False) == "hooks"  # an Opacus mode asked for: Opacus
    assert name(DPConfig(backend="reference"), mixed=True, distributed=False) == "reference"
    with pytest.raises(ConfigError, match="--model.adversarial.ratio"):
        resolve_mode(DPConfig(grad_sample_mode="ghost"), mixed=True, distributed=False)
    with pytest.raises(ConfigError, match="--model.dp.grad_sample_mode ghost runs in one process"):
        resolve_mode(DPConfig(grad_sample_mode="ghost"), mixed=False, distributed=True)
    with pytest.raises(ConfigError, match="--model.dp.backend reference runs in one process"):
        resolve_mode(DPConfig(backend="reference"), mixed=False, distributed=True)
    with pytest.raises(ConfigError, match="--model.dp.grad_sample_mode"):
        DPConfig(grad_sample_mode="ghost", backend="reference")


def test_auto_falls_back_to_opacus_for_layers_book_keeping_cannot_clip():
    from secure_ml.privacy.modes import resolve_mode

    net = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 782, 10))  # Opacus: yes; BK: no
    assert resolve_mode(DPConfig(), mixed=False, distributed=False, net=net).name == "ghost"
    assert resolve_mode(DPConfig(), mixed=True, distributed=False, net=net).name == "hooks"
    assert resolve_mode(DPConfig(), mixed=False, distributed=False, net=SmallCNN()).name == "bk"
    with pytest.raises(ConfigError, match=r"layer '0' \(Conv1d\).*--model.dp.backend opacus"):
        resolve_mode(DPConfig(backend="bk"), mixed=False, distributed=False, net=net)
