"""``--trainer.strategy ddp_spawn`` (Lightning's multiprocessing launcher): the ranks start from a pickle of the Trainer,
and the main process keeps its own copy."""

import os
import pickle
import subprocess
import sys

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from secure_ml.callbacks.ema import EMACallback, WarmupEMA
from secure_ml.run_folder import pin_run_folder
from secure_ml.sigterm_watch import SigtermRelay, SigtermWatch
from tests.helpers.data import REPO, smoke_args


def _spawn_trainer(root) -> Trainer:
    return Trainer(
        strategy="ddp_spawn", devices=2, accelerator="cpu", default_root_dir=root, callbacks=[ModelCheckpoint()], enable_progress_bar=False
    )


def test_a_rank_and_the_main_process_agree_on_the_run_folder(tmp_path):
    """A rank resolves the folder on its copy and creates it; the main process then resolves the same one (before the fix:
    the next free version, so ``--test_after_fit`` wrote its report beside the fit instead of into its folder)."""
    unpinned = _spawn_trainer(tmp_path / "a")
    rank = pickle.loads(pickle.dumps(unpinned))
    (tmp_path / "a" / "lightning_logs" / f"version_{rank.logger.version}").mkdir(parents=True)
    assert unpinned.logger.version != rank.logger.version  # negative control: what the main process saw before

    pinned = _spawn_trainer(tmp_path / "b")
    pin_run_folder(pinned)
    rank = pickle.loads(pickle.dumps(pinned))
    (tmp_path / "b" / "lightning_logs" / f"version_{rank.logger.version}").mkdir(parents=True)
    assert pinned.logger.version == rank.logger.version == 0
    assert pinned.checkpoint_callback.dirpath == rank.checkpoint_callback.dirpath
    assert pinned.checkpoint_callback.dirpath == str(tmp_path / "b" / "lightning_logs" / "version_0" / "checkpoints")


def test_pin_leaves_other_launchers_alone(tmp_path):
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path, callbacks=[ModelCheckpoint()], enable_progress_bar=False)
    pin_run_folder(trainer)
    assert trainer.checkpoint_callback.dirpath is None and trainer.logger._version is None


def test_the_cli_callbacks_survive_a_pickle():
    """What ddp_spawn pickles: the EMA's average function and the SIGTERM relay (without its process-local watch)."""
    ema = pickle.loads(pickle.dumps(EMACallback(decay=0.9, enabled=True)))
    assert isinstance(ema._kwargs["avg_fn"], WarmupEMA) and ema._kwargs["avg_fn"].decay == 0.9
    watch = SigtermWatch()
    relay = SigtermRelay(watch)
    assert pickle.loads(pickle.dumps(relay)).watch is None and relay.watch is watch


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_spawn_fit_then_test_in_one_run_folder(tiny_mnist, tmp_path):
    """A 2-rank ``ddp_spawn`` fit with EMA and ``--test_after_fit``: it starts (it used to die pickling a closure), tests
    the fit's last checkpoint and writes the report into the fit's folder."""
    args = smoke_args(tiny_mnist, "--data.batch_size", "32", "--ema.enabled", "true")
    args += ["--trainer.strategy", "ddp_spawn", "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--test_after_fit", "true"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "secure_ml", "fit", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = tmp_path / "lightning_logs"
    assert sorted(p.name for p in logs.iterdir()) == ["version_0"]
    run = logs / "version_0"
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert f"checkpoint path at {os.path.join('lightning_logs', 'version_0', 'checkpoints', 'last.ckpt')}" in proc.stdout + proc.stderr
