"""EMACallback: the average it keeps, what validation and checkpoints see, and that it is off by default."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from secure_ml.adversarial import AdversarialConfig
from secure_ml.callbacks import EMACallback
from secure_ml.callbacks.ema import WarmupEMA
from secure_ml.data import MNISTDataModule
from secure_ml.errors import ConfigError
from secure_ml.module import SecureClassifier
from secure_ml.privacy.config import DPConfig


def _flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


class Probe(Callback):
    """Records the net's weights after every optimizer step, during validation and at the end of each training epoch."""

    def __init__(self):
        self.steps, self.in_validation, self.after_validation = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(_flat(pl_module.net))

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.in_validation.append(_flat(pl_module.net))

    def on_train_epoch_end(self, trainer, pl_module):
        self.after_validation.append(_flat(pl_module.net))


def _fit(root, tmp_path, ema, dp=True):
    dm = MNISTDataModule(
        data_dir=str(root), download=False, train_size=400, val_size=100, test_size=100, batch_size=64, poisson_sampling=dp, sampling_seed=0
    )
    model = SecureClassifier(
        adversarial=AdversarialConfig(epsilon=0.05, ratio=0.5, attack="pgd", pgd_steps=2),
        dp=DPConfig(enabled=dp, noise_seed=0, noise_multiplier=0.5),
    )
    probe = Probe()
    # The probe runs BEFORE the EMA callback: what it sees must not depend on the callback order.
    trainer = Trainer(
        max_epochs=2,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        callbacks=[probe, ema],
    )
    trainer.fit(model, dm)
    return trainer, model, probe


def test_warmup_decay():
    avg = WarmupEMA(0.99)
    a, c = torch.tensor([1.0]), torch.tensor([0.0])
    assert avg(a, c, torch.tensor(1)).item() == pytest.approx(2 / 11)  # early: mostly the new weights
    assert avg(a, c, torch.tensor(10_000)).item() == pytest.approx(0.99)  # later: the configured decay


@pytest.mark.slow
def test_average_is_the_warmed_up_ema_and_is_what_validation_checkpoints_and_the_final_model_use(tiny_mnist, tmp_path):
    ema = EMACallback(decay=0.9, enabled=True)
    trainer, model, probe = _fit(tiny_mnist, tmp_path, ema)
    # the expected average after every step, from the raw iterates (the first update copies the weights)
    averages = [probe.steps[0]]
    for t, w in enumerate(probe.steps[1:], start=1):
        d = min(0.9, (1 + t) / (10 + t))
        averages.append(d * averages[-1] + (1 - d) * w)
    torch.testing.assert_close(_flat(model.net), averages[-1])  # training ended: the model holds the average
    assert not torch.allclose(averages[-1], probe.steps[-1])  # ... which differs from the last iterate
    end_of_first_epoch = len(probe.steps) // 2 - 1
    # during validation the averaged weights are in place (also for callbacks listed before this one), after it the raw ones
    torch.testing.assert_close(probe.in_validation[0], averages[end_of_first_epoch])
    torch.testing.assert_close(probe.after_validation[0], probe.steps[end_of_first_epoch])
    saved = {"state_dict": model.state_dict()}
    ema.on_save_checkpoint(trainer, model, saved)
    assert "current_model_state" in saved  # the raw weights, for resuming
    saved_net = torch.cat([v.flatten() for k, v in saved["state_dict"].items() if k.startswith("net.")])
    torch.testing.assert_close(saved_net, averages[-1])


@pytest.mark.slow
def test_disabled_ema_changes_nothing(tiny_mnist, tmp_path):
    ema = EMACallback(decay=0.9)  # enabled defaults to False
    trainer, model, probe = _fit(tiny_mnist, tmp_path, ema, dp=False)
    assert ema.average is None
    torch.testing.assert_close(_flat(model.net), probe.steps[-1])
    steps_per_epoch = len(probe.steps) // 2
    torch.testing.assert_close(probe.in_validation[0], probe.steps[steps_per_epoch - 1])
    saved = {"state_dict": model.state_dict()}
    ema.on_save_checkpoint(trainer, model, saved)
    assert "current_model_state" not in saved


class StartProbe(Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = _flat(pl_module.net)


@pytest.mark.slow
@pytest.mark.parametrize("resume_with_ema", [False, True])
def test_a_resumed_fit_trains_on_from_the_iterate_not_the_average(tiny_mnist, tmp_path, resume_with_ema):
    """The checkpoint's state_dict holds the average; a resumed fit, with EMA on or off, starts from the raw iterate."""
    trainer, _, probe = _fit(tiny_mnist, tmp_path / "first", EMACallback(decay=0.9, enabled=True), dp=False)
    ckpt = trainer.checkpoint_callback.best_model_path
    saved = torch.load(ckpt, weights_only=True)
    iterate = torch.cat([v.flatten() for k, v in saved["current_model_state"].items() if k.startswith("net.")])
    average = torch.cat([v.flatten() for k, v in saved["state_dict"].items() if k.startswith("net.")])
    torch.testing.assert_close(iterate, probe.steps[-1])
    assert not torch.allclose(iterate, average, atol=1e-4)  # control: starting from the average would be caught
    start = StartProbe()
    dm = MNISTDataModule(data_dir=str(tiny_mnist), download=False, train_size=400, val_size=100, test_size=100, batch_size=64)
    again = Trainer(max_epochs=3, default_root_dir=str(tmp_path / "again"), logger=False, enable_progress_bar=False,
                    enable_model_summary=False, inference_mode=False,
                    callbacks=[start, EMACallback(decay=0.9, enabled=resume_with_ema)])  # fmt: skip
    again.fit(SecureClassifier(dp=DPConfig(enabled=False)), dm, ckpt_path=ckpt)
    torch.testing.assert_close(start.start, iterate)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_decay_outside_0_1_is_a_config_error(decay):
    with pytest.raises(ConfigError, match="--ema.decay"):
        EMACallback(decay=decay)
