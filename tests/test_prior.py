"""The procedural-digit prior: the generator, the pretraining and its cache, and the callback that applies it."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from secure_ml.callbacks import ProceduralPrior
from secure_ml.data import MNISTDataModule
from secure_ml.data.mnist import load_mnist
from secure_ml.data.procedural import procedural_digits
from secure_ml.errors import ConfigError
from secure_ml.models import TanhCNN
from secure_ml.models.prior import PriorConfig, cache_key, load_or_pretrain, pretrain, random_shift
from secure_ml.module import SecureClassifier
from secure_ml.privacy.config import DPConfig

TINY = PriorConfig(digits=60, epochs=1, batch_size=30, adv_epsilon=0.05, adv_steps=1)


def _digits(n, seed):
    return procedural_digits(n, torch.Generator().manual_seed(seed))


def _centroid_accuracy(x_fit, y_fit, x, y):
    centroids = torch.stack([x_fit[y_fit == c].flatten(1).mean(0) for c in range(10)])
    return (torch.cdist(x.flatten(1), centroids).argmin(1) == y).float().mean().item()


def test_digits_are_mnist_shaped_balanced_and_seeded():
    x, y = _digits(100, 0)
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1 and (x.flatten(1).amax(1) == 1).all()  # every digit has full ink
    assert torch.bincount(y, minlength=10).tolist() == [10] * 10
    torch.testing.assert_close(_digits(100, 0)[0], x)
    assert not torch.equal(_digits(100, 1)[0], x)
    # MNIST's normalisation: ink centred by mass, inside a 20-pixel box (plus the anti-aliased edge)
    grid = torch.arange(28) + 0.5
    mass = x[:, 0].sum((1, 2))
    com_r = (x[:, 0].sum(2) * grid).sum(1) / mass
    com_c = (x[:, 0].sum(1) * grid).sum(1) / mass
    assert (com_r - 14).abs().max() < 1.5 and (com_c - 14).abs().max() < 1.5
    rows = (x[:, 0] > 0.5).any(2)
    heights = 28 - rows.int().argmax(1) - rows.flip(1).int().argmax(1)
    assert heights.max() <= 21 and heights.float().mean() > 15


def test_classes_are_distinct_and_labels_match_the_drawings():
    x, y = _digits(200, 0)
    xt, yt = _digits(100, 1)
    assert _centroid_accuracy(x, y, xt, yt) > 0.6
    shuffled = y[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    assert _centroid_accuracy(x, shuffled, xt, yt) < 0.3  # control: shuffled labels learn nothing


def test_random_shift_moves_each_image_by_its_own_offset():
    x = torch.zeros(50, 1, 28, 28)
    x[:, 0, 14, 14] = 1.0
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    pos = out[:, 0].flatten(1).argmax(1)
    dr, dc = pos // 28 - 14, pos % 28 - 14
    assert out.shape == x.shape and (out.flatten(1).sum(1) == 1).all()
    assert dr.abs().max() <= 2 and dc.abs().max() <= 2 and len(set(zip(dr.tolist(), dc.tolist()))) > 5
    assert random_shift(x, 0, torch.Generator()) is x


def test_pretraining_is_cached_per_net_and_settings(tmp_path):
    torch.manual_seed(0)
    net = TanhCNN()
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    first = load_or_pretrain(net, TINY, str(tmp_path))
    assert first["source"] == "pretrained" and (tmp_path / f"prior-{first['key']}.pt").is_file()
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    again = TanhCNN()
    again.load_state_dict(initial)
    second = load_or_pretrain(again, TINY, str(tmp_path))
    assert second == {**first, "source": "cache"}
    for k in trained:
        assert torch.equal(again.state_dict()[k], trained[k])
    # a different start or different settings is a different prior
    assert cache_key(TanhCNN(), TINY) != first["key"]
    fresh = TanhCNN()
    fresh.load_state_dict(initial)
    assert cache_key(fresh, PriorConfig(digits=61, epochs=1, batch_size=30)) != first["key"]


def test_a_corrupt_cache_file_is_a_config_error(tmp_path):
    net = TanhCNN()
    (tmp_path / f"prior-{cache_key(net, TINY)}.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cached prior"):
        load_or_pretrain(net, TINY, str(tmp_path))


@pytest.mark.parametrize("field, value", [("digits", 0), ("epochs", 0), ("lr", 0.0), ("adv_epsilon", 1.5), ("max_shift", 9)])
def test_prior_settings_are_validated(field, value):
    with pytest.raises(ConfigError, match=f"--prior.{field}"):
        PriorConfig(**{field: value})


class _Start(Callback):
    def on_fit_start(self, trainer, pl_module):
        self.weights = {k: v.clone() for k, v in pl_module.net.state_dict().items()}


@pytest.mark.slow
def test_callback_loads_the_prior_before_dp_training(tiny_mnist, tmp_path):
    torch.manual_seed(0)
    model = SecureClassifier(net=TanhCNN(), dp=DPConfig(enabled=True, noise_seed=0))
    expected = TanhCNN()
    expected.load_state_dict(model.net.state_dict())
    load_or_pretrain(expected, TINY, None)
    prior = ProceduralPrior(enabled=True, digits=60, epochs=1, batch_size=30, adv_epsilon=0.05, adv_steps=1, cache_dir=str(tmp_path))
    start = _Start()
    dm = MNISTDataModule(
        data_dir=str(tiny_mnist),
        download=False,
        train_size=300,
        val_size=60,
        test_size=60,
        batch_size=64,
        poisson_sampling=True,
        sampling_seed=0,
    )
    trainer = Trainer(
        max_epochs=1,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        callbacks=[prior, start],
    )
    trainer.fit(model, dm)
    assert prior.outcome["source"] == "pretrained"
    for k, v in expected.state_dict().items():
        assert torch.equal(start.weights[k], v), k  # DP training started from the prior
    off = _Start()
    Trainer(
        max_epochs=1,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        callbacks=[ProceduralPrior(enabled=False), off],
    ).fit(SecureClassifier(net=TanhCNN(), dp=DPConfig(enabled=True, noise_seed=0)), dm)
    assert not torch.equal(off.weights["features.0.weight"], expected.state_dict()["features.0.weight"])


@pytest.mark.slow
def test_the_prior_alone_recognises_real_digits(real_data_dir):
    x, y = load_mnist(str(real_data_dir), train=False, download=False)
    x, y = x[:1000], y[:1000]
    torch.manual_seed(0)
    net = TanhCNN()
    with torch.no_grad():
        before = (net(x).argmax(1) == y).float().mean().item()
    pretrain(net, PriorConfig(digits=3000, epochs=3, adv_epsilon=0.0))
    with torch.no_grad():
        after = (net(x).argmax(1) == y).float().mean().item()
    assert before < 0.2 and after > 0.6, (before, after)
