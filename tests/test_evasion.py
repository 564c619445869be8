import torch
import torch.nn.functional as F

from secure_ml.attacks import fgsm, pgd
from secure_ml.models import SmallCNN


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
