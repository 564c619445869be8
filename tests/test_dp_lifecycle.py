"""The accountant across a module's life: a second fit continues it, a budget cannot be overspent, a selected checkpoint pays for its selection."""

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from opacus.accountants import create_accountant

from secure_ml.callbacks import PrivacyBudget, Scorecard
from secure_ml.callbacks.scorecard import GateFailure
from secure_ml.module import SecureClassifier
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.ledger import ledger_from_checkpoint
from tests.helpers.training import quiet_trainer, small_datamodule

K = 13  # Poisson batches per epoch: 400 training digits, batch 32


def _dm(root):
    return small_datamodule(root)


_trainer = quiet_trainer


def _model(backend="auto"):  # auto: the book-keeping mode for SmallCNN
    return SecureClassifier(dp=DPConfig(enabled=True, backend=backend, noise_seed=0))


def _eps(steps, q=1 / K, sigma=1.0, delta=1e-5):
    acc = create_accountant("prv")
    acc.history = [(sigma, q, steps)]
    return acc.get_epsilon(delta=delta)


@pytest.mark.slow
def test_a_second_fit_continues_the_accountant(tiny_mnist, tmp_path):
    model = _model()
    t1 = _trainer(tmp_path / "a")
    t1.fit(model, _dm(tiny_mnist))
    assert model.private.steps == K and float(t1.callback_metrics["privacy/epsilon"]) == pytest.approx(_eps(K), rel=1e-6)
    t2 = _trainer(tmp_path / "b")
    t2.fit(model, _dm(tiny_mnist))  # the same, already trained weights: their ε can only grow
    assert model.private.steps == 2 * K
    assert float(t2.callback_metrics["privacy/epsilon"]) == pytest.approx(_eps(2 * K), rel=1e-6)


@pytest.mark.slow
def test_resume_from_a_checkpoint_continues_the_accountant_in_the_default_mode(tiny_mnist, tmp_path):
    first = _model()
    t1 = _trainer(tmp_path, limit_val_batches=0)
    t1.fit(first, _dm(tiny_mnist))
    assert first.private.mode == "bk" and first.private.steps == K
    t1.save_checkpoint(tmp_path / "one.ckpt")
    resumed = _model()
    t2 = _trainer(tmp_path, epochs=2, limit_val_batches=0)
    t2.fit(resumed, _dm(tiny_mnist), ckpt_path=str(tmp_path / "one.ckpt"))
    assert resumed.private.mode == "bk" and resumed.private.steps == 2 * K == t2.global_step
    assert float(t2.callback_metrics["privacy/epsilon"]) == pytest.approx(_eps(2 * K), rel=1e-6)


class CountBatches(Callback):
    def __init__(self):
        self.epochs = set()

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.add(trainer.current_epoch)


@pytest.mark.slow
def test_budget_holds_even_when_lightning_must_run_min_epochs(tiny_mnist, tmp_path):
    budget = _eps(8)  # reached after 8 of the first epoch's 13 steps
    model, seen = _model(), CountBatches()
    trainer = _trainer(tmp_path, epochs=3, min_epochs=3, callbacks=[PrivacyBudget(max_epsilon=budget), seen], limit_val_batches=0)
    trainer.fit(model, _dm(tiny_mnist))
    assert seen.epochs == {0, 1, 2}  # Lightning did run the minimum epochs...
    assert model.private.steps == 8 and trainer.global_step == 8  # ...without a single noisy step past the budget
    assert model.private.epsilon(1e-5) <= budget * (1 + 1e-9)


class LogEpochScore(Callback):
    """A monitored metric that is best at epoch 0, so the kept 'best' checkpoint is not the last one."""

    def __init__(self):
        self.selection_seen = {}

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            pl_module.log("sel/score", -float(trainer.current_epoch))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        best = trainer.checkpoint_callback.best_model_path
        if batch_idx == 0 and best:  # the kept file as the previous epoch end left it
            state = torch.load(best, weights_only=True)["secure_ml_dp"]
            self.selection_seen[trainer.current_epoch] = (state["steps"], state["selection_steps"])


@pytest.mark.slow
def test_a_selected_checkpoint_reports_epsilon_over_every_compared_epoch(tiny_mnist, tmp_path):
    score = LogEpochScore()
    best_cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="sel/score", mode="max", filename="best", save_on_train_epoch_end=True)
    last_cb = ModelCheckpoint(dirpath=tmp_path / "ck", filename="last", enable_version_counter=False, save_on_train_epoch_end=True)
    model = _model()
    trainer = _trainer(tmp_path, epochs=3, callbacks=[score, best_cb, last_cb], enable_checkpointing=True)
    trainer.fit(model, _dm(tiny_mnist))
    best = torch.load(best_cb.best_model_path, weights_only=True)
    assert best["epoch"] == 0 and best_cb.best_model_path != last_cb.best_model_path  # best ≠ last
    assert score.selection_seen == {1: (K, K), 2: (K, 2 * K)}  # kept up to date at every epoch end
    ledger = ledger_from_checkpoint(best)
    assert ledger["steps"] == K and ledger["selection_steps"] == 3 * K
    assert ledger["epsilon"] == pytest.approx(_eps(3 * K), rel=1e-6) and ledger["epsilon"] > _eps(K) * 1.2
    last = ledger_from_checkpoint(torch.load(last_cb.best_model_path, weights_only=True))
    assert last["steps"] == last["selection_steps"] == 3 * K  # not selected by a metric: its own steps

    fresh = _model()  # what `secure-ml test --ckpt_path best` does in a new process
    tester = _trainer(tmp_path, callbacks=[Scorecard(gates={"privacy/epsilon": f"<= {_eps(K) * 1.01}"}, log_figure=False)])
    with pytest.raises(GateFailure, match="privacy/epsilon"):  # the gate sees the selection ε, not the file's own
        tester.test(fresh, _dm(tiny_mnist), ckpt_path=best_cb.best_model_path)
    assert float(tester.callback_metrics["privacy/epsilon"]) == pytest.approx(_eps(3 * K), rel=1e-6)

    # Resuming a fit from the selected file: its weights already cost the 3K steps its selection compared, so this
    # epoch's K new steps compose on top of those (found by a review: they used to replace them and count as free).
    resumed = _model()
    t3 = _trainer(tmp_path / "resumed", epochs=2, limit_val_batches=0)
    t3.fit(resumed, _dm(tiny_mnist), ckpt_path=best_cb.best_model_path)
    assert t3.global_step == 2 * K  # the file's K trained steps and this epoch's K
    assert resumed.private.steps == 4 * K
    assert float(t3.callback_metrics["privacy/epsilon"]) == pytest.approx(_eps(4 * K), rel=1e-6)
    assert ledger_from_checkpoint({"secure_ml_dp": resumed.private.state_dict()})["epsilon"] == pytest.approx(_eps(4 * K), rel=1e-6)


@pytest.mark.slow
def test_weights_trained_on_without_dp_report_no_epsilon(tiny_mnist, tmp_path):
    first = _model()
    t1 = _trainer(tmp_path, limit_val_batches=0)
    t1.fit(first, _dm(tiny_mnist))
    t1.save_checkpoint(tmp_path / "dp.ckpt")
    plain = SecureClassifier(dp=DPConfig(enabled=False))
    checker = _trainer(tmp_path / "check")
    checker.test(plain, _dm(tiny_mnist), ckpt_path=str(tmp_path / "dp.ckpt"))
    assert "privacy/epsilon" in checker.callback_metrics  # the control: the DP file's own weights report its ε
    t2 = _trainer(tmp_path / "plain", epochs=2, limit_val_batches=0)
    t2.fit(plain, small_datamodule(tiny_mnist, dp=False), ckpt_path=str(tmp_path / "dp.ckpt"))  # one more epoch, not private
    tester = _trainer(tmp_path / "test")
    tester.test(plain, small_datamodule(tiny_mnist, dp=False))
    assert "privacy/epsilon" not in tester.callback_metrics  # a stale ε would pass an ε gate for non-private weights
