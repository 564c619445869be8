"""Gates compare the metric a callback measured, not a float32 rounding of it (an exact 0.55 AUC failed `<= 0.55`)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from sklearn.metrics import roc_auc_score
from torch import nn

from secure_ml.attacks.membership import auc_score, membership_metrics, roc_curve
from secure_ml.callbacks._common import log_all
from secure_ml.report.gates import as_floats, check_gates, parse_gates

# Values a callback can measure exactly that float32 moves across the threshold: 0.55 → 0.55000001 (up),
# 54/60 = 0.9 → 0.89999998 (down), and an ε of 3.00000005 → 3.0 (a fail becomes a pass).
MEASURED = {"mia/auc": 0.55, "sponge/reject_rate": 54 / 60, "privacy/epsilon": 3.00000005}
GATES = {"mia/auc": "<= 0.55", "sponge/reject_rate": ">= 0.9", "privacy/epsilon": "<= 3.0"}


def test_auc_exactly_at_a_gate_threshold():
    nonmembers = torch.arange(20.0)
    members = torch.full((20,), 10.5)  # each member beats 11 of the 20 non-members: 220 / 400 = 0.55 exactly
    report = membership_metrics(members, nonmembers)
    assert report.auc == 0.55
    assert check_gates(parse_gates({"mia/auc": "<= 0.55"}), {"mia/auc": report.auc}) == []


def test_auc_and_roc_agree_with_sklearn_under_heavy_ties():
    g = torch.Generator().manual_seed(0)
    m = torch.randint(0, 7, (301,), generator=g).double()
    n = torch.randint(0, 5, (173,), generator=g).double()
    expected = roc_auc_score(np.r_[np.ones(301), np.zeros(173)], np.r_[m.numpy(), n.numpy()])
    assert auc_score(m, n) == pytest.approx(expected, abs=1e-12)
    fpr, tpr, thresholds = roc_curve(m, n)
    assert fpr.dtype == tpr.dtype == torch.float64
    assert float(torch.trapezoid(tpr, fpr)) == pytest.approx(expected, abs=1e-12)  # the curve's area is the AUC
    assert thresholds[1:].tolist() == sorted(set(m.tolist()) | set(n.tolist()), reverse=True)


class _Net(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=2)

    val_dataloader = train_dataloader


class _Measures(Callback):
    def on_validation_epoch_end(self, trainer, pl_module):
        log_all(pl_module, MEASURED)


def test_logged_metrics_reach_the_gates_unrounded(tmp_path):
    trainer = Trainer(
        max_epochs=1, callbacks=[_Measures()], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(_Net())
    logged = as_floats(trainer.callback_metrics)
    assert {k: logged[k] for k in MEASURED} == MEASURED
    failures = check_gates(parse_gates(GATES), logged)
    assert len(failures) == 1 and failures[0].startswith("privacy/epsilon <= 3")


def test_logged_metrics_are_made_on_the_modules_device():
    """From a review: the float64 metrics were CPU tensors whatever the module's device, and Lightning keeps a logged
    tensor where it is, so `sync_dist` under DDP on GPUs would all-reduce CPU tensors with NCCL (which has none). A
    recording module on the meta device (no GPU here) shows where they are made; MPS (no float64) keeps the CPU."""

    from secure_ml.report.gates import as_metric

    logged = {}
    module = SimpleNamespace(device=torch.device("meta"), trainer=SimpleNamespace(world_size=2))
    module.log = lambda key, value, **kw: logged.update({key: (value, kw["sync_dist"])})
    log_all(module, {"mia/auc": 0.55})
    value, synced = logged["mia/auc"]
    assert value.device.type == "meta" and value.dtype == torch.float64 and synced
    assert as_metric(0.55, "mps").device.type == "cpu" and as_metric(0.55).device.type == "cpu"


def _sync_on_ranks(rank: int, world_size: int, port: int, ops: dict, values: list, out: str) -> None:
    """One rank of a gloo group: every rank logs the same ``values`` under the equal-values op, and its own timing
    (1 + rank) under the timing's op; rank 0 writes what Lightning's sync makes of them, and of the mean."""
    import os

    import torch.distributed as dist
    from lightning.fabric.utilities.distributed import _sync_ddp

    from secure_ml.report.gates import as_metric

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    synced = {op: [_sync_ddp(as_metric(v), reduce_op=op).item() for v in values] for op in (ops["mia/auc"], "mean")}
    synced["timing"] = _sync_ddp(as_metric(1.0 + rank), reduce_op=ops["sponge/latency_ratio"]).item()
    if rank == 0:
        torch.save(synced, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_value_equal_on_three_ranks_syncs_to_itself_and_a_timing_is_averaged(tmp_path):
    """From reviews: Lightning's default sync is a mean, and a float64 mean over 3 ranks of 0.1 is 0.10000000000000002,
    which fails a gate "<= 0.1" the one-process run passes. The scorecard's values are the same on every rank, so
    log_all syncs them with the reduction it names (max): exact. The mean is the negative control. A timing each rank
    measures apart (sponge/latency_ratio) is averaged, not replaced by the slowest rank's."""
    import socket

    import torch.multiprocessing as mp

    logged = {}
    module = SimpleNamespace(device=torch.device("cpu"), trainer=SimpleNamespace(world_size=3))
    module.log = lambda key, value, **kw: logged.update({key: kw["reduce_fx"]})
    log_all(module, {"mia/auc": 0.1, "sponge/latency_ratio": 2.0})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    values, out = [0.1, 0.7, 0.55], str(tmp_path / "synced.pt")
    mp.spawn(_sync_on_ranks, args=(3, port, logged, values, out), nprocs=3)
    synced = torch.load(out)
    assert synced[logged["mia/auc"]] == values
    assert synced["mean"] != values  # the default sync moves a value: what the test would catch
    assert check_gates(parse_gates({"mia/auc": "<= 0.1"}), {"mia/auc": synced["mean"][0]})  # and a gate fails on it
    assert synced["timing"] == pytest.approx(2.0)  # ranks measured 1, 2 and 3; max would report 3
