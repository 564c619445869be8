"""The scorecard callbacks reuse the evaluation loop's own forward (EvalRecord) only when it covered the split in order."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import secure_ml.callbacks.sponge as sponge_module
from secure_ml.callbacks import MembershipInferenceCallback, SpongeCallback
from secure_ml.callbacks.eval_record import EvalRecord
from secure_ml.data import MNISTDataModule
from secure_ml.module import SecureClassifier
from tests.helpers.training import quiet_trainer
from tests.test_sponge import ActNet


def _rows(n=10):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def net():
    return ActNet(nn.ReLU()).eval()


def _loop(net, record, batches):
    with torch.no_grad():
        for b in batches:
            net(b)
            record.batch((b,))


def test_record_of_the_split_in_order_keeps_logits_and_activations(net):
    rows = _rows()
    rec = EvalRecord(net, rows, activations=True)
    _loop(net, rec, [rows[:4], rows[4:8], rows[8:]])
    assert (
        not net._forward_hooks and not net.fc1._forward_hooks
    )  # removed with the last row: the attacks other callbacks run next are not recorded
    with torch.no_grad():
        net(rows[:2])
    assert rec.finish()
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(rec.logits), net(rows))
    assert len(rec.calls) == 3 and all(len(c) == 2 for c in rec.calls)  # conv's input is the image: two hidden layers


@pytest.mark.parametrize(
    "case",
    ["shuffled", "partial", "two forwards", "a batch past the split", "empty split"],
)
def test_record_is_dropped_unless_complete_and_aligned(case, net):
    rows = _rows()
    rec = EvalRecord(net, rows if case != "empty split" else rows[:0])
    if case == "shuffled":
        _loop(net, rec, [rows[4:8], rows[:4], rows[8:]])
    elif case == "partial":
        _loop(net, rec, [rows[:4], rows[4:8]])
    elif case == "a batch past the split":
        _loop(net, rec, [rows, rows[:2]])
    elif case == "two forwards":
        with torch.no_grad():
            net(rows[:5])
            _loop(net, rec, [rows[:5], rows[5:]])
    assert not rec.finish()
    assert not net._forward_hooks and not net.fc1._forward_hooks


class ShuffledValidation(MNISTDataModule):
    def val_dataloader(self):
        return DataLoader(self.val_dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))


class TrustingRecord(EvalRecord):
    """Negative control: takes every batch without checking that it is the split's next rows."""

    def batch(self, batch) -> None:
        outputs, self._outputs = self._outputs, []
        self.logits.append(outputs[-1].cpu())
        if self._recorder is not None:
            self.calls.append(list(self._recorder.calls)[1:])
            self._recorder.calls.clear()
        self.seen += len(batch[0])


def _fit_and_compare(dm_class, data_dir, tmp_path, test: bool = False):
    """Fit one epoch with the sponge and membership callbacks (and ``test``); return (logged, own-forward) metric pairs per key."""
    dm = dm_class(data_dir=str(data_dir), download=False, train_size=300, val_size=100, test_size=60, batch_size=50)
    callbacks = [SpongeCallback(n_sponges=4, craft_steps=3, latency_repeats=1), MembershipInferenceCallback(max_samples=80)]
    trainer = quiet_trainer(tmp_path, callbacks=callbacks, inference_mode=True)  # as the CLI runs validate/test
    model = SecureClassifier(net=ActNet(nn.ReLU()))
    trainer.fit(model, dm)
    if test:
        callbacks[0].enabled = False
        trainer.test(model, dm, verbose=False)
        callbacks = callbacks[1:]
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    model.eval()
    pairs = {}
    for cb in callbacks:  # the same weights, each callback's own forward
        for key, value in cb.evaluate(model, "test" if test else "val").items():
            if key != "sponge/latency_ratio":  # a timing
                pairs[key] = (logged[key], float(value))
    return pairs


@pytest.mark.parametrize("shuffled", [False, True])
def test_callbacks_log_the_same_numbers_from_the_loop_record_as_from_their_own_forward(shuffled, tiny_mnist, tmp_path, monkeypatch):
    used = []
    real = sponge_module.energy_from_calls
    monkeypatch.setattr(sponge_module, "energy_from_calls", lambda parts: used.append(1) or real(parts))
    pairs = _fit_and_compare(ShuffledValidation if shuffled else MNISTDataModule, tiny_mnist, tmp_path)
    assert bool(used) is not shuffled  # a shuffled loader's rows are not the split's order: the record is dropped
    for key, (logged, own) in pairs.items():
        assert logged == pytest.approx(own, rel=1e-6, abs=1e-9), key


def test_control_a_record_taken_without_the_alignment_check_logs_wrong_numbers(tiny_mnist, tmp_path, monkeypatch):
    import secure_ml.callbacks._common as common

    monkeypatch.setattr(common, "EvalRecord", TrustingRecord)
    pairs = _fit_and_compare(ShuffledValidation, tiny_mnist, tmp_path)
    assert any(logged != pytest.approx(own, rel=1e-6, abs=1e-9) for logged, own in pairs.values())


def test_membership_in_test_scores_the_test_loop_forward(tiny_mnist, tmp_path, monkeypatch):
    import secure_ml.callbacks.membership as module

    recorded = []
    real = module.membership_inference
    monkeypatch.setattr(
        module, "membership_inference", lambda *a, **kw: recorded.append(kw["nonmember_logits"] is not None) or real(*a, **kw)
    )
    pairs = _fit_and_compare(MNISTDataModule, tiny_mnist, tmp_path, test=True)
    assert recorded == [True, True, False]  # fit's validation and test used their loop's logits; the own-forward check did not
    assert "mia/loss_auc" in pairs
    for key, (logged, own) in pairs.items():
        assert logged == pytest.approx(own, rel=1e-6, abs=1e-9), key
