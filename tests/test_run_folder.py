"""A refused run removes the ``version_N`` folder it created before it wrote anything of its own; anything else stays."""

import os
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
from torch.utils.tensorboard import SummaryWriter

from secure_ml import run_folder
from secure_ml.errors import ConfigError, Stopped, TrainingDiverged
from secure_ml.run_folder import FolderOnRefusal, untouched
from secure_ml.train_cli import cli_main
from tests.helpers.data import smoke_args


def _started(folder, hparams_only=True):
    """What a run writes before its first batch: config.yaml, an empty checkpoints/ and an event file (hparams at most)."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("seed_everything: 42\n")
    with SummaryWriter(str(folder)) as writer:
        if hparams_only:
            writer.add_hparams({"lr": 0.01}, {}, run_name=".")
    return folder


def test_untouched_means_nothing_of_the_run_own(tmp_path):
    me = {os.getpid()}
    assert untouched(_started(tmp_path / "a"), me)
    ckpt = _started(tmp_path / "b")
    (ckpt / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    assert not untouched(ckpt, me)
    metric = _started(tmp_path / "c")
    with SummaryWriter(str(metric)) as writer:
        writer.add_scalar("train/loss", 1.0, 0)
    assert not untouched(metric, me) and untouched(metric, me, metrics_ok=True)  # metrics_ok: a resume that trained nothing
    assert not untouched(ckpt, me, metrics_ok=True)  # a checkpoint is never a start file
    other = _started(tmp_path / "d")
    (other / "notes.txt").write_text("mine")
    assert not untouched(other, me)
    # A run that raced this one into the same version_N: its event file carries its own pid (and its metrics may still
    # be in its writer's buffer, so the file itself looks empty).
    raced = _started(tmp_path / "e")
    for mine in list(raced.glob("events.out.tfevents.*")):
        head, _, uid = mine.name.rpartition(".")
        mine.rename(raced / f"{head.rpartition('.')[0]}.{os.getpid() + 1}.{uid}")
    assert not untouched(raced, me) and untouched(raced, {os.getpid() + 1})
    no_events = tmp_path / "f"
    no_events.mkdir()
    (no_events / "config.yaml").write_text("seed_everything: 42\n")
    assert not untouched(no_events, me)  # nothing shows that this run wrote it


def _trainer(folder, rank_zero=True):
    return SimpleNamespace(logger=SimpleNamespace(log_dir=str(folder)), is_global_zero=rank_zero)


@pytest.mark.parametrize(
    "case, error, kept",
    [
        ("refused", ConfigError("no"), False),
        ("crashed", RuntimeError("bug"), True),  # not a refusal: what it left may help find the bug
        ("finished", None, True),
        ("rank1", ConfigError("no"), True),
        ("existed", ConfigError("no"), True),
        ("stopped", Stopped("SIGTERM"), True),  # what a stopped run was run with is part of what happened
        ("diverged", TrainingDiverged("NaN weights"), True),
    ],
)
def test_only_a_refused_run_loses_the_folder_it_created(tmp_path, case, error, kept):
    folder = tmp_path / "lightning_logs" / "version_0"
    if case == "existed":
        _started(folder)
    guard = FolderOnRefusal(_trainer(folder, rank_zero=case != "rank1"))
    with pytest.raises(type(error)) if error else nullcontext(), guard:
        if case != "existed":
            _started(folder)
        if error:
            raise error
    assert folder.is_dir() == kept


@pytest.mark.slow
def test_a_refused_fit_leaves_no_run_folder(tiny_mnist, tmp_path, monkeypatch):
    """DP refuses --trainer.gradient_clip_val once the run has started (config.yaml and an event file written)."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", *smoke_args(tiny_mnist, "--data.batch_size", "32"), "--trainer.gradient_clip_val", "1.0"]
    with pytest.raises(ConfigError, match="gradient_clip_val"):
        cli_main(args)
    assert not (tmp_path / "lightning_logs" / "version_0").exists()
    # Negative control: the same refusal with the removal off leaves the started folder behind.
    monkeypatch.setattr(run_folder, "untouched", lambda folder, writers, metrics_ok=False: False)
    with pytest.raises(ConfigError, match="gradient_clip_val"):
        cli_main(args)
    assert (tmp_path / "lightning_logs" / "version_0" / "config.yaml").is_file()


def test_the_folders_above_it_that_the_run_created_go_too(tmp_path):
    """``--trainer.default_root_dir new/`` refused: new/lightning_logs/version_0, and new/ itself, were this run's."""
    folder = tmp_path / "new" / "lightning_logs" / "version_0"
    with pytest.raises(ConfigError), FolderOnRefusal(_trainer(folder)):
        _started(folder)
        raise ConfigError("no")
    assert not (tmp_path / "new").exists() and tmp_path.is_dir()
    (tmp_path / "kept" / "lightning_logs").mkdir(parents=True)
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    folder = tmp_path / "kept" / "lightning_logs" / "version_0"
    with pytest.raises(ConfigError), FolderOnRefusal(_trainer(folder)):
        _started(folder)
        raise ConfigError("no")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["lightning_logs", "notes.txt"]
