"""SecureClassifier inside a real Trainer: DP accounting, Poisson sampling, resume, and DP that cannot be lost."""

import pytest
import torch
from opacus.accountants import create_accountant
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from secure_ml.adversarial import AdversarialConfig
from secure_ml.data import PoisonConfig, SanitizerConfig
from secure_ml.errors import ConfigError
from secure_ml.module import DP_STATE_KEY, SecureClassifier
from secure_ml.privacy.bookkeeping import BookKeepingDPOptimizer
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.engine import make_private, poisson_sample_rate
from secure_ml.privacy.reference import ReferenceDPOptimizer
from tests.helpers.training import quiet_trainer, small_datamodule

_dm = small_datamodule
_trainer = quiet_trainer


def _model(backend="opacus", **dp):
    return SecureClassifier(
        adversarial=AdversarialConfig(epsilon=0.05, ratio=0.5), dp=DPConfig(enabled=True, backend=backend, noise_seed=0, **dp)
    )


def _expected_epsilon(sigma, q, steps, delta, mechanism):
    acc = create_accountant(mechanism)
    acc.history = [(sigma, q, steps)]
    return acc.get_epsilon(delta=delta)


@pytest.mark.slow
@pytest.mark.parametrize("backend, mechanism", [("opacus", "prv"), ("reference", "rdp"), ("bk", "prv")])
def test_dp_fit_logs_accountant_epsilon_with_poisson_sampling(tiny_mnist, tmp_path, backend, mechanism):
    model = _model(backend, accountant=mechanism)
    trainer = _trainer(tmp_path, epochs=2)
    trainer.fit(model, _dm(tiny_mnist))
    loader = trainer.train_dataloader
    assert isinstance(loader.batch_sampler, UniformWithReplacementSampler) and poisson_sample_rate(loader) == 1 / 13
    expected_opt = DPOptimizer if backend == "opacus" else ReferenceDPOptimizer
    assert isinstance(trainer.optimizers[0], expected_opt)
    steps = model.private.steps
    assert steps == 2 * len(loader) == trainer.global_step
    eps = float(trainer.callback_metrics["privacy/epsilon"])
    assert eps == pytest.approx(_expected_epsilon(1.0, 1 / 13, steps, 1e-5, mechanism), rel=1e-6)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    assert all(getattr(p, "grad_sample", None) is None for p in model.net.parameters())


def test_poisson_batches_vary_in_size(tiny_mnist):
    dm = _dm(tiny_mnist)
    dm.setup("fit")
    loader = dm.train_dataloader()
    epochs = [[len(b[1]) for b in loader] for _ in range(3)]
    # a shuffled loader would give 12×32 + 16 = 400 exactly, every epoch; a Poisson epoch can total 400 now and then
    assert all(len(set(sizes)) > 1 for sizes in epochs) and any(sum(sizes) != 400 for sizes in epochs)


@pytest.mark.slow
def test_target_epsilon_calibrates_noise(tiny_mnist, tmp_path):
    model = _model(target_epsilon=3.0, accountant="rdp")
    trainer = _trainer(tmp_path, epochs=2)
    trainer.fit(model, _dm(tiny_mnist))
    assert model.private.noise_multiplier != 1.0
    assert float(trainer.callback_metrics["privacy/epsilon"]) == pytest.approx(3.0, abs=0.05)


@pytest.mark.slow
def test_resume_continues_epsilon(tiny_mnist, tmp_path):
    straight = _model()
    t = _trainer(tmp_path / "a", epochs=2)
    t.fit(straight, _dm(tiny_mnist))
    eps_straight = float(t.callback_metrics["privacy/epsilon"])

    first = _model()
    t1 = _trainer(tmp_path / "b", epochs=1, enable_checkpointing=True)
    t1.fit(first, _dm(tiny_mnist))
    ckpt = tmp_path / "b" / "one.ckpt"
    t1.save_checkpoint(ckpt)
    assert DP_STATE_KEY in torch.load(ckpt, weights_only=True)  # accountant state is plain data
    eps_one = float(t1.callback_metrics["privacy/epsilon"])

    resumed = _model()
    t2 = _trainer(tmp_path / "b", epochs=2)
    t2.fit(resumed, _dm(tiny_mnist), ckpt_path=str(ckpt))
    assert resumed.private.steps == straight.private.steps
    assert float(t2.callback_metrics["privacy/epsilon"]) == pytest.approx(eps_straight, rel=1e-9)
    assert eps_straight > eps_one


def test_resuming_dp_from_a_non_dp_checkpoint_is_refused(tiny_mnist, tmp_path):
    plain = SecureClassifier()
    t = _trainer(tmp_path, epochs=1)
    t.fit(plain, _dm(tiny_mnist, dp=False))
    t.save_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(ConfigError, match="accountant"):
        _trainer(tmp_path, epochs=2).fit(_model(), _dm(tiny_mnist), ckpt_path=str(tmp_path / "plain.ckpt"))


def test_dp_cannot_be_lost_to_a_plain_optimizer(tiny_mnist, tmp_path, monkeypatch):
    model = _model()
    monkeypatch.setattr(model, "configure_optimizers", lambda: torch.optim.SGD(model.parameters(), lr=0.01))
    with pytest.raises(ConfigError, match="not be private"):
        _trainer(tmp_path).fit(model, _dm(tiny_mnist))


def test_dp_refuses_shuffled_loader_and_gradient_clipping(tiny_mnist, tmp_path):
    with pytest.raises(ConfigError, match="Poisson"):
        _trainer(tmp_path).fit(_model(), _dm(tiny_mnist, dp=False))
    with pytest.raises(ConfigError, match="gradient_clip_val"):
        _trainer(tmp_path, gradient_clip_val=1.0).fit(_model(), _dm(tiny_mnist))


def test_user_optimizer_is_wrapped_by_dp(tiny_mnist, tmp_path):
    for backend, expected in (("auto", BookKeepingDPOptimizer), ("opacus", DPOptimizer)):
        model = SecureClassifier(optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), dp=DPConfig(enabled=True, backend=backend, noise_seed=0))
        trainer = _trainer(tmp_path, limit_train_batches=2, limit_val_batches=0)
        trainer.fit(model, _dm(tiny_mnist))
        opt = trainer.optimizers[0]
        assert isinstance(opt, expected) and isinstance(opt.original_optimizer, torch.optim.Adam)


def test_poisoning_metrics_are_logged(tiny_mnist, tmp_path):
    trainer = _trainer(tmp_path)
    dm = _dm(tiny_mnist, dp=False, poison=PoisonConfig(rate=0.1, target_label=0), sanitizer=SanitizerConfig(method="knn"))
    trainer.fit(SecureClassifier(adversarial=AdversarialConfig(epsilon=0.03)), dm)
    m = trainer.callback_metrics
    assert float(m["poison/recall"]) > 0.5 and 0 < float(m["poison/precision"]) <= 1 and float(m["poison/f1"]) > 0
    assert float(m["poison/precision"]) == pytest.approx(dm.sanitization_report.precision)


@pytest.mark.slow
def test_clean_training_learns_synthetic_digits(tiny_mnist, tmp_path):
    trainer = _trainer(tmp_path, epochs=3)
    model = SecureClassifier(adversarial=AdversarialConfig(epsilon=0.03, ratio=0.5))
    dm = _dm(tiny_mnist, dp=False)
    trainer.fit(model, dm)
    trainer.test(model, dm)
    assert float(trainer.callback_metrics["test/acc"]) > 0.9


@pytest.mark.parametrize("backend", ["opacus", "reference", "bk"])
def test_scheduler_steps_on_the_dp_optimizer(tiny_mnist, tmp_path, backend):
    model = SecureClassifier(
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        dp=DPConfig(enabled=True, backend=backend, noise_seed=0),
    )
    trainer = _trainer(tmp_path, epochs=2)
    trainer.fit(model, _dm(tiny_mnist))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.25)


def test_sample_rate_is_consistent_when_1_over_q_rounds_down():
    """N = 6283, batch 64: K = 99 batches, and int(1 / (1/99)) = 98 in floating point — Opacus's default."""
    from torch.utils.data import TensorDataset

    from secure_ml.data.sampling import MaskSeeds, train_loader
    from secure_ml.models import SmallCNN

    ds = TensorDataset(torch.rand(6283, 1, 28, 28), torch.randint(0, 10, (6283,)))
    loader = train_loader(ds, 64, seed=0, poisson=True, masks=MaskSeeds(0))
    assert int(1 / (1 / 99)) == 98 and len(loader) == 99 and sum(1 for _ in loader) == 99
    assert poisson_sample_rate(loader) == 1 / 99
    expected = {}
    for backend in ("opacus", "reference", "bk"):
        net = SmallCNN()
        priv = make_private(net, torch.optim.SGD(net.parameters(), lr=0.1), loader, DPConfig(backend=backend), total_steps=99)
        expected[backend] = priv.expected_batch_size
        assert priv.sample_rate == 1 / 99
        priv.close()
    assert expected["opacus"] == expected["reference"] == expected["bk"] == 63


def test_unreachable_target_epsilon_and_large_delta_are_config_errors(tiny_mnist, tmp_path):
    with pytest.raises(ConfigError, match="--model.dp.target_epsilon"):
        _trainer(tmp_path).fit(_model(target_epsilon=0.01, accountant="rdp"), _dm(tiny_mnist))
    with pytest.raises(ConfigError, match="--model.dp.delta"):
        _trainer(tmp_path).fit(_model(delta=0.01), _dm(tiny_mnist))  # N = 400: 1/N = 0.0025


@pytest.mark.slow
def test_unbounded_training_stops_at_the_privacy_budget(tiny_mnist, tmp_path):
    from secure_ml.callbacks import PrivacyBudget

    model = _model()
    trainer = _trainer(tmp_path, epochs=-1, callbacks=[PrivacyBudget(max_epsilon=3.0)], limit_val_batches=0)
    trainer.fit(model, _dm(tiny_mnist))
    assert model.private.steps > 0 and model.private.epsilon(1e-5) <= 3.0


@pytest.mark.slow
@pytest.mark.parametrize("backend, mode", [("opacus", "ghost"), ("auto", "bk")])
def test_single_forward_modes_train_with_exact_accounting_and_empty_batches(tiny_mnist, tmp_path, backend, mode):
    from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping

    model = SecureClassifier(
        adversarial=AdversarialConfig(epsilon=0.05, ratio=1.0), dp=DPConfig(enabled=True, backend=backend, noise_seed=0)
    )
    trainer = _trainer(tmp_path, epochs=1)
    dm = small_datamodule(tiny_mnist, batch_size=2)  # expected batch 2: some batches are empty
    trainer.fit(model, dm)
    optimizer_class = {"ghost": DPOptimizerFastGradientClipping, "bk": BookKeepingDPOptimizer}[mode]
    assert model.private.mode == mode and isinstance(trainer.optimizers[0], optimizer_class)
    assert model.private.steps == trainer.global_step == 200
    eps = float(trainer.callback_metrics["privacy/epsilon"])
    assert eps == pytest.approx(_expected_epsilon(1.0, 1 / 200, 200, 1e-5, "prv"), rel=1e-6)
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and torch.isfinite(trainer.callback_metrics["val/acc"])
    assert all(torch.isfinite(p).all() for p in model.net.parameters())
