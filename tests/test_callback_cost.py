"""The scorecard's cost trims change no measured number: FGSM shares one input gradient, the dashboard is drawn once per fit."""

import types

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import TensorDataset

from secure_ml.attacks import fgsm
from secure_ml.callbacks import RobustnessCallback, Scorecard
from secure_ml.data import MNISTDataModule
from secure_ml.models import SmallCNN
from secure_ml.module import SecureClassifier
from tests.helpers.data import synthetic_digits


def _accuracy(net, x, y, batch=32):  # batched like the callback: a different batch size may flip a near-tie
    with torch.no_grad():
        return sum((net(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item() for i in range(0, len(y), batch)) / len(y)


def test_fgsm_from_one_shared_gradient_equals_fgsm_per_radius():
    images, labels = synthetic_digits(290, seed=0)
    x, y = torch.from_numpy(images).float().div(255).unsqueeze(1), torch.from_numpy(labels).long()
    torch.manual_seed(0)
    net = SmallCNN()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for i in range(0, 200, 20):  # a few steps: accurate enough that the radii give different accuracies
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[90 + i : 110 + i]), y[90 + i : 110 + i]).backward()
        opt.step()
    net.eval()
    x, y = x[:90], y[:90]  # held out: the net trained on the other 200
    dm = types.SimpleNamespace(val_dataset=TensorDataset(x, y))
    pl = types.SimpleNamespace(net=net, trainer=types.SimpleNamespace(datamodule=dm), device=torch.device("cpu"), private=None)
    eps = [0.0308, 0.1, 0.3]
    cb = RobustnessCallback(epsilons=eps, pgd_epsilon=None, max_samples=80, batch_size=32)  # 3 batches, the last one short
    got = cb.evaluate(pl, "val")
    idx = torch.randperm(90, generator=torch.Generator().manual_seed(0))[:80]  # the callback's subsample (seed 0)
    xs, ys = x[idx], y[idx]
    assert got["adv/clean_acc"] == _accuracy(net, xs, ys)
    for e in eps:
        adv = torch.cat([fgsm(net, xs[i : i + 32], ys[i : i + 32], e) for i in range(0, 80, 32)])
        assert got[f"adv/fgsm_acc@{e:g}"] == _accuracy(net, adv, ys), e
    assert len({got[f"adv/fgsm_acc@{e:g}"] for e in eps}) > 1  # the radii do differ


def test_dashboard_is_drawn_once_per_fit_by_default(tiny_mnist, tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    card = Scorecard()
    trainer = Trainer(max_epochs=2, logger=logger, enable_checkpointing=False, enable_progress_bar=False, callbacks=[card])
    dm = MNISTDataModule(data_dir=str(tiny_mnist), download=False, train_size=200, val_size=50, test_size=50, batch_size=50)
    trainer.fit(SecureClassifier(), dm)
    ea = EventAccumulator(logger.log_dir)
    ea.Reload()
    images = ea.Images("scorecard/dashboard")
    assert len(images) == 1 and images[0].step == trainer.global_step  # the final one, with both epochs' curves
    assert [h["epoch"] for h in card.history] == [0, 1]
