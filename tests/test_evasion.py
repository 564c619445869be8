import pytest
import torch
import torch.nn.functional as F

from secure_ml.attacks import fgsm, pgd
from secure_ml.attacks.autoattack import AutoAttackConfig, autoattack
from secure_ml.errors import ConfigError
from secure_ml.models import SmallCNN
from tests.helpers.attack_models import linear_classifier


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_fgsm_stays_in_ball_and_pixel_range_and_raises_loss():
    net = SmallCNN().eval()
    x, y = _batch()
    eps = 0.0308
    x_adv = fgsm(net, x, y, eps)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert not x_adv.requires_grad
    with torch.no_grad():
        assert F.cross_entropy(net(x_adv), y) > F.cross_entropy(net(x), y)


def test_fgsm_leaves_parameter_grads_untouched_and_works_under_no_grad():
    net = SmallCNN()
    x, y = _batch()
    with torch.no_grad():
        x_adv = fgsm(net, x, y, 0.1)
    assert all(p.grad is None for p in net.parameters())
    assert not torch.equal(x_adv, x)


def test_pgd_bounds_and_stronger_than_fgsm():
    net = SmallCNN().eval()
    x, y = _batch(32)
    eps = 0.1
    x_pgd = pgd(net, x, y, eps, steps=10, generator=torch.Generator().manual_seed(0))
    assert (x_pgd - x).abs().max() <= eps + 1e-6
    assert x_pgd.min() >= 0.0 and x_pgd.max() <= 1.0
    with torch.no_grad():
        assert F.cross_entropy(net(x_pgd), y, reduction="sum") >= F.cross_entropy(net(fgsm(net, x, y, eps)), y, reduction="sum")


def test_epsilon_zero_is_identity():
    net = SmallCNN()
    x, y = _batch(4)
    assert torch.equal(fgsm(net, x, y, 0.0), x)
    assert torch.equal(pgd(net, x, y, 0.0), x)


# ---- AutoAttack (torchattacks) ---------------------------------------------------------------------------------

CHEAP = dict(steps=10, target_classes=3, square_queries=300, batch_size=32)


@pytest.mark.slow
def test_autoattack_is_at_least_as_strong_as_pgd_stays_in_the_ball_and_is_deterministic():
    model, x, y = linear_classifier()
    eps = 0.25
    pgd_acc = (model(pgd(model, x, y, eps, steps=20, generator=torch.Generator().manual_seed(0))).argmax(1) == y).float().mean().item()
    state = torch.random.get_rng_state()
    result = autoattack(model, x, y, AutoAttackConfig(epsilon=eps, **CHEAP))
    assert torch.equal(state, torch.random.get_rng_state())  # torchattacks reseeds the global generator; the wrapper forks it
    assert result.accuracy <= pgd_acc < 0.5  # undefended: PGD already breaks most digits, AutoAttack no fewer
    assert (result.x_adv - x).abs().max() <= eps + 1e-6 and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    fooled = ~result.robust
    assert (model(result.x_adv[fooled]).argmax(1) != y[fooled]).all()  # every digit counted as broken is broken
    assert list(result.remaining) == ["clean", "apgd-ce", "apgd-t", "square"]
    again = autoattack(model, x, y, AutoAttackConfig(epsilon=eps, **CHEAP))
    assert torch.equal(again.robust, result.robust) and torch.equal(again.x_adv, result.x_adv)
    assert not model.training


@pytest.mark.slow
def test_square_catches_gradient_masking_that_fools_pgd():
    """A net behind a rounding layer (zero gradient): the gradient attacks see nothing, the black-box Square breaks it."""
    model, x, y = linear_classifier(quantised=True)
    eps = 0.45  # enough to push a background pixel (≤ 0.24) or a stroke pixel (0.9) across the rounding threshold
    pgd_acc = (model(pgd(model, x, y, eps, steps=20, generator=torch.Generator().manual_seed(0))).argmax(1) == y).float().mean().item()
    gradient_only = autoattack(model, x, y, AutoAttackConfig(epsilon=eps, **{**CHEAP, "square_queries": 0}))
    full = autoattack(model, x, y, AutoAttackConfig(epsilon=eps, **CHEAP))
    assert pgd_acc > 0.9 and gradient_only.accuracy > 0.9  # fooled by the masking
    assert full.accuracy < 0.2  # caught


def test_autoattack_validates():
    model, x, y = linear_classifier()
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
        autoattack(model, x * 2, y, AutoAttackConfig(**CHEAP))
    with pytest.raises(ConfigError, match="--robustness.autoattack.dlr"):
        AutoAttackConfig(dlr="both")
    with pytest.raises(ConfigError, match="--robustness.autoattack.epsilon"):
        AutoAttackConfig(epsilon=2.0)
    untargeted = autoattack(model, x[:8], y[:8], AutoAttackConfig(epsilon=0.25, dlr="untargeted", **{**CHEAP, "square_queries": 0}))
    assert list(untargeted.remaining) == ["clean", "apgd-ce", "apgd-dlr"]
