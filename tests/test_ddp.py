"""Lightning DDP + Opacus on CPU (gloo, 2 processes): every two-process run in ONE launch (a subprocess with a timeout)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from opacus.accountants import create_accountant

from tests.helpers.data import make_mnist_dir

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

JOB = Path(__file__).with_name("_ddp_job.py")
REPO = JOB.parents[1]
# The two-process runs of this module: name → the job's arguments (tests/_ddp_job.py).
RUNS = {
    "two": ["--fixed", "--noise", "0"],
    "poisson": ["--batch-size", "2"],
    "bk-two-0": ["--fixed", "--noise", "0", "--backend", "bk"],
    "bk-two-1": ["--fixed", "--noise", "1", "--backend", "bk"],
    "bk-poisson": ["--batch-size", "2", "--backend", "bk"],
    "scorecard": ["--scorecard"],
}


def _results(out):
    return [torch.load(p, weights_only=True) for p in sorted(out.glob("rank*.pt"))]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mnist_dir(tmp_path_factory.mktemp("ddp-data"))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, data):
    """Every run of RUNS with ``--devices 2``, launched once (two start-ups in all, not two per run): name → per-rank results."""
    root = tmp_path_factory.mktemp("ddp")
    jobs = {str(root / name): ["--data", str(data), "--devices", "2", *args] for name, args in RUNS.items()}
    for out in jobs:
        Path(out).mkdir()
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(JOB), "--jobs", str(root / "jobs.json")], capture_output=True, text=True, timeout=900, env=env, cwd=root
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"_root": root, **{name: _results(root / name) for name in RUNS}}


def _run_here(tmp_path, data, name, *args):
    """A ONE-process run in this process (one thread, as the subprocesses run): no start-up paid, same job code."""
    from tests._ddp_job import main

    out = tmp_path / name
    out.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["--data", str(data), "--out", str(out), "--devices", "1", *args])
    finally:
        torch.set_num_threads(threads)
    return _results(out)


def test_two_processes_equal_one_process_with_zero_noise(tmp_path, data, two_processes):
    two = two_processes["two"]
    one = _run_here(tmp_path, data, "one", "--fixed", "--noise", "0")
    assert len(two) == 2 and len(one) == 1
    assert two[0]["optimizer"] == "DistributedDPOptimizer" and one[0]["optimizer"] == "DPOptimizer"
    assert torch.equal(two[0]["params"], two[1]["params"])  # identical on every rank
    assert two[0]["global_step"] == one[0]["global_step"] > 0
    assert not torch.equal(one[0]["params"], torch.zeros_like(one[0]["params"]))
    assert torch.allclose(two[0]["params"], one[0]["params"], atol=1e-6, rtol=0), (two[0]["params"] - one[0]["params"]).abs().max()


def test_poisson_ddp_survives_empty_batches_and_accounts_globally(two_processes):
    ranks = two_processes["poisson"]
    assert len(ranks) == 2
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    assert ranks[0]["steps"] == ranks[1]["steps"] == ranks[0]["global_step"] == 200  # no rank skipped a step
    assert ranks[0]["empty"] + ranks[1]["empty"] > 0  # the case that used to hang did occur
    acc = create_accountant("prv")
    acc.history = [(1.0, ranks[0]["sample_rate"], ranks[0]["steps"])]
    assert ranks[0]["sample_rate"] == pytest.approx(1 / 200)  # the global rate, not the per-rank one
    assert ranks[0]["epsilon"] == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-9)


@pytest.mark.parametrize("noise", ["0", "1"])
def test_book_keeping_two_processes_equal_one_process(tmp_path, data, two_processes, noise):
    """Same global batches, same noise seed: equal only if the clipped sums are summed across ranks and the noise is added once."""
    two = two_processes[f"bk-two-{noise}"]
    one = _run_here(tmp_path, data, "one", "--fixed", "--noise", noise, "--backend", "bk")
    assert [r["mode"] for r in two + one] == ["bk"] * 3
    assert torch.equal(two[0]["params"], two[1]["params"])  # identical on every rank
    assert two[0]["global_step"] == one[0]["global_step"] > 0
    assert torch.allclose(two[0]["params"], one[0]["params"], atol=1e-6, rtol=0), (two[0]["params"] - one[0]["params"]).abs().max()


def test_book_keeping_poisson_ddp_survives_empty_batches_and_accounts_globally(two_processes):
    ranks = two_processes["bk-poisson"]
    assert [r["mode"] for r in ranks] == ["bk", "bk"]
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    assert ranks[0]["steps"] == ranks[1]["steps"] == ranks[0]["global_step"] == 200
    assert ranks[0]["empty"] + ranks[1]["empty"] > 0
    acc = create_accountant("prv")
    acc.history = [(1.0, ranks[0]["sample_rate"], ranks[0]["steps"])]
    assert ranks[0]["sample_rate"] == pytest.approx(1 / 200)
    assert ranks[0]["epsilon"] == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-9)


def test_scorecard_callbacks_under_ddp_agree_across_ranks(two_processes):
    ranks = two_processes["scorecard"]
    assert len(ranks) == 2
    for key in ("adv/fgsm_acc@0.1", "adv/pgd_acc@0.1", "mia/auc", "privacy/epsilon_lower_bound", "sponge/reject_rate", "val/acc"):
        assert key in ranks[0]["metrics"], key
        assert ranks[0]["metrics"][key] == pytest.approx(ranks[1]["metrics"][key]), key


def test_scorecard_test_stage_under_ddp_writes_one_report(two_processes):
    """``trainer.test`` and ``trainer.predict`` under DDP: both ranks finish (the report's folder is a broadcast every rank
    joins; asked on rank 0 alone, rank 1 exited and rank 0 died in the broadcast), rank 0 writes metrics.json with the
    ranks' test metrics and predictions.csv with a row per test digit."""
    ranks = two_processes["scorecard"]
    assert [r["test_metrics"] is not None for r in ranks] == [True, True]
    for key in ("test/acc", "adv/fgsm_acc@0.1", "mia/auc", "sponge/reject_rate"):
        assert ranks[0]["test_metrics"][key] == pytest.approx(ranks[1]["test_metrics"][key]), key
    report = json.loads((two_processes["_root"] / "scorecard" / "metrics.json").read_text())
    assert report["test"]["test/acc"] == pytest.approx(ranks[0]["test_metrics"]["test/acc"])
    rows = (two_processes["_root"] / "scorecard" / "predictions.csv").read_text().splitlines()  # predict: the same broadcast
    assert rows[0].startswith("index,label,p0") and len(rows) == 1 + 100
