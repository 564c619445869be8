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
from secure_ml.callbacks.scorecard import GateFailure
from secure_ml.errors import ConfigError, Stopped
from secure_ml.run_folder import pin_run_folder
from secure_ml.sigterm_watch import SigtermRelay, SigtermWatch
from secure_ml.spawn_ranks import rank_error
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
    from secure_ml.spawn_ranks import use_rank_launcher

    for strategy in ("auto", "ddp"):
        trainer = Trainer(strategy=strategy, accelerator="cpu", devices=1 if strategy == "auto" else 2, enable_progress_bar=False)
        launcher, watch = trainer.strategy.launcher, SigtermWatch()
        use_rank_launcher(trainer, watch, "fit", False)
        assert trainer.strategy.launcher is launcher and watch.forward is None


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


def _traceback_text(exc: BaseException) -> str:
    """What torch hands the CLI when a rank raised: the rank's formatted traceback, as text."""
    import traceback

    try:
        raise exc
    except BaseException:
        return "\n-- Process 1 terminated with the following error:\n" + traceback.format_exc()


@pytest.mark.parametrize(
    "raised, status",
    [
        (ConfigError("--data.test_size (20000) is larger than the 2000 digits available in that split"), 2),
        (GateFailure("security gate failed: adv/fgsm_acc@0.1 >= 0.8: measured 0.2109\nand a second line"), 2),
        (Stopped("fit stopped by SIGTERM after 1 complete epoch (step 15); resume with --ckpt_path x"), 143),
    ],
)
def test_a_rank_refusal_comes_back_as_one_line_with_its_exit_status(raised, status):
    from torch.multiprocessing.spawn import ProcessRaisedException

    try:  # chained, as a rank's refusal often is
        raise KeyError("inner")
    except KeyError:
        text = _traceback_text(raised)
    error = rank_error(ProcessRaisedException(text, 1, 123))
    assert type(error) is type(raised) and str(error) == str(raised) and error.exit_status == status


def test_a_rank_misconfiguration_is_the_one_line_config_error_of_one_process():
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from torch.multiprocessing.spawn import ProcessRaisedException

    text = _traceback_text(MisconfigurationException("You requested to check 0.0001 of the train dataloader\nmore"))
    error = rank_error(ProcessRaisedException(text, 0, 1))
    assert (
        isinstance(error, ConfigError)
        and str(error) == "the configuration was refused: You requested to check 0.0001 of the train dataloader"
    )


def test_a_message_that_quotes_a_traceback_is_still_the_message():
    from torch.multiprocessing.spawn import ProcessRaisedException

    raised = ConfigError('a line that looks like a frame:\n  File "x.py", line 1, in <module>\nValueError: not the exception')
    error = rank_error(ProcessRaisedException(_traceback_text(raised), 0, 1))
    assert isinstance(error, ConfigError) and str(error) == str(raised)


def test_a_rank_bug_keeps_its_traceback():
    from torch.multiprocessing.spawn import ProcessRaisedException

    for raised in (RuntimeError("a bug"), ValueError("secure_ml.errors.ConfigError: quoted in a bug's message")):
        exc = ProcessRaisedException(_traceback_text(raised), 0, 1)
        assert rank_error(exc) is exc
    try:  # a bug while handling a refusal: the bug is what the rank died of
        raise ConfigError("refused")
    except ConfigError:
        exc = ProcessRaisedException(_traceback_text(RuntimeError("then a bug")), 0, 1)
    assert "ConfigError: refused" in exc.msg and rank_error(exc) is exc


def _spawn_fit(tiny_mnist, cwd, *extra, wait=True):
    args = smoke_args(tiny_mnist, "--data.batch_size", "32", "--trainer.strategy", "ddp_spawn", "--trainer.devices", "2")
    cmd = [sys.executable, "-m", "secure_ml", "fit", *args, "--trainer.accelerator", "cpu", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_spawn_refusal_in_a_rank_is_one_line(tiny_mnist, tmp_path):
    """A ConfigError raised in the ranks' setup: ``secure-ml: error:`` and exit 2, as under ddp (it was ~80 lines of
    ProcessRaisedException and exit 1), and no run folder left behind."""
    proc = _spawn_fit(tiny_mnist, tmp_path, "--data.test_size", "20000")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("secure-ml: error: --data.test_size (20000) is larger than")
    assert "Traceback" not in proc.stderr and not (tmp_path / "lightning_logs").exists()


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_spawn_stops_on_sigterm_like_ddp(tiny_mnist, tmp_path):
    """A SIGTERM to the CLI reaches the ranks, which stop at the same batch: one line naming the checkpoint to resume
    from and exit 143 (it used to train the whole fit, and a SIGTERM to a rank hung the CLI for good)."""
    import signal
    import time

    proc = _spawn_fit(tiny_mnist, tmp_path, "--trainer.max_epochs", "200", wait=False)
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("ddp_spawn did not stop within 120 s of a SIGTERM")
    assert proc.returncode == 143, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("secure-ml: error: fit stopped by SIGTERM after") and "resume with --ckpt_path" in line


def test_a_sigterm_before_the_launch_starts_no_rank(tmp_path):
    """One that came before the ranks exist would never reach them (they trained the whole fit): the launch is
    Lightning's stop instead, and a rank that the forwarded signal killed while it was starting reads as that stop too."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from torch.multiprocessing.spawn import ProcessExitedException

    from secure_ml.spawn_ranks import RankLauncher, rank_errors, use_rank_launcher

    trainer = _spawn_trainer(tmp_path)
    watch = SigtermWatch()
    use_rank_launcher(trainer, watch, "fit", False)
    launcher = trainer.strategy.launcher
    assert isinstance(launcher, RankLauncher) and watch.forward == launcher.kill
    assert pickle.loads(pickle.dumps(launcher)).watch is None  # the ranks get no watch (nor the CLI behind it)
    watch.came = True
    started = []
    with pytest.raises(SIGTERMException):
        launcher.launch(lambda: started.append(1), trainer=trainer)
    assert started == [] and launcher.procs == []
    died = ProcessExitedException("process 0 terminated with signal SIGTERM", 0, 123, -15, "SIGTERM")
    with pytest.raises(SIGTERMException), rank_errors(watch):
        raise died
    watch.came = False  # the signal went to the rank alone (before or after Lightning's handler): still a stop
    with pytest.raises(SIGTERMException), rank_errors(watch):
        raise died
    crashed = ProcessExitedException("process 0 terminated with exit code 1", 0, 123, 1)
    with pytest.raises(ProcessExitedException), rank_errors(watch):  # a crash is reported as torch reports it
        raise crashed


def test_a_forked_rank_does_not_forward_the_clis_sigterm():
    """ddp_fork: a rank inherits the CLI's handler, and the launcher's processes are the CLI's children, not the rank's
    (``AssertionError: can only test a child process``)."""
    forwarded = []
    with SigtermWatch() as watch:
        watch.forward = forwarded.append
        watch._pid += 1  # as in a forked rank: another process than the one that entered the watch
        watch._note(15, None)
        assert watch.came and forwarded == []
        watch._pid -= 1
        watch.came = False
        watch._note(15, None)
        watch._note(15, None)
    assert forwarded == [15]  # the CLI forwards its first SIGTERM only: a rank passes its own up to it


def test_a_rank_passes_its_sigterm_to_the_cli_and_only_rank_0_notes_it(monkeypatch):
    """No collective in the handler (Lightning's broadcast hung against the other rank's all-reduce); the CLI hears every
    rank's SIGTERM; an orphaned rank (its CLI gone, the parent now init) signals no one."""
    from types import SimpleNamespace

    from secure_ml import spawn_ranks

    sent = []
    monkeypatch.setattr(spawn_ranks.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(spawn_ranks.os, "getppid", lambda: 4242)
    for rank in (0, 1):
        connector = SimpleNamespace(trainer=SimpleNamespace(global_rank=rank), received_sigterm=False)
        spawn_ranks._note_sigterm(connector, 4242, 15, None)
        assert connector.received_sigterm == (rank == 0)
    assert sent == [(4242, 15), (4242, 15)]
    spawn_ranks._note_sigterm(SimpleNamespace(trainer=SimpleNamespace(global_rank=0), received_sigterm=False), 777, 15, None)
    assert len(sent) == 2
