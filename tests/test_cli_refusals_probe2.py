"""Bad input found by the second probe of the commands (2026-12-04), each now one line naming its flag, before anything is
written. Before: ``--ckpt_path last`` tested (and ``fit`` resumed from) a freshly initialised net with exit 0, ``best`` and
``hpc`` ended in tracebacks; a fit or test into a finished run's folder replaced its ``last.ckpt``/``config.yaml``; a
resumed ``target_epsilon`` run spent past its target; seeds above 2**63 crashed in torch; ``s3://`` without s3fs, and a
resume with nothing left to train (exit 0)."""

from pathlib import Path
from types import SimpleNamespace

import pytest

import secure_ml.train_cli  # noqa: F401 (Lightning binds its log handler at import: now, not to a test's captured stderr)
from secure_ml.ckpt_arg import check_ckpt_arg
from secure_ml.cli import main
from secure_ml.errors import ConfigError
from secure_ml.privacy.calibration import noise_for_epsilon
from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.engine import check_target_on_resume
from secure_ml.privacy.private import epsilon_of
from secure_ml.run_folder import check_new_run_folder
from tests.helpers.data import smoke_args
from tests.helpers.serving import fit_checkpoint

SIZES = (300, 100, 100)  # fit_checkpoint()'s


def _refused(argv, tmp_path, monkeypatch, capsys, data_dir) -> str:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([argv[0], *smoke_args(data_dir, sizes=SIZES), "--trainer.default_root_dir", str(tmp_path / "runs"), *argv[1:]])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("secure-ml: error:")]
    assert exc.value.code == 2 and len(err) == 1, err
    return err[0][len("secure-ml: error: ") :]


@pytest.mark.parametrize("word", ["last", "best", "hpc", "registry", "registry:model:latest"])
@pytest.mark.parametrize("subcommand", ["fit", "test", "predict"])
def test_lightnings_checkpoint_words_are_refused(subcommand, word):
    with pytest.raises(ConfigError, match=rf"^--ckpt_path {word}: give the checkpoint file's path"):
        check_ckpt_arg(subcommand, word)


def test_a_folder_and_a_release_are_not_checkpoints(tmp_path):
    from secure_ml.models import SmallCNN
    from secure_ml.release.artifact import write_release

    write_release(tmp_path / "release", SmallCNN(), None, {"dp": False})
    with pytest.raises(ConfigError, match=r"^--ckpt_path '.*release' is a release folder \(secure-ml export"):
        check_ckpt_arg("test", str(tmp_path / "release"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^--ckpt_path '.*empty' is a folder; secure-ml fit needs a training checkpoint file"):
        check_ckpt_arg("fit", str(tmp_path / "empty"))


@pytest.mark.parametrize(
    "url, words",
    [("s3://bucket/x.ckpt", "reading it needs a package that is not installed (Install s3fs"), ("nosuch://b/x.ckpt", "Protocol not known")],
)
def test_a_remote_checkpoint_it_cannot_read_is_one_line(url, words):
    """s3fs is not a dependency: ``s3://`` ended in its ImportError traceback (after the run folder was made)."""
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401

        if url.startswith("s3://"):
            pytest.skip("s3fs is installed here")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="^--ckpt_path '" + url.replace(".", r"\.") + "': " + words.replace("(", r"\(")):
        check_ckpt_arg("test", url)


def _trainer_in(folder, logger=True, root=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    logged = SimpleNamespace(log_dir=str(folder)) if logger else None
    return SimpleNamespace(logger=logged, default_root_dir=str(root), checkpoint_callbacks=[ModelCheckpoint(filename="last")])


def test_a_run_folder_that_holds_a_run_is_not_written_again_by_a_fit(tmp_path, monkeypatch):
    folder = tmp_path / "lightning_logs" / "version_0"
    check_new_run_folder(_trainer_in(folder), None)  # absent: a new run
    folder.mkdir(parents=True)
    check_new_run_folder(_trainer_in(folder), None)  # empty
    (folder / "config.yaml").write_text("seed_everything: 1\n")
    (folder / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match=r"^the run folder .*version_0 already holds another run \(checkpoints, config.yaml\)"):
        check_new_run_folder(_trainer_in(folder), None)
    inside = folder / "checkpoints" / "last.ckpt"
    check_new_run_folder(_trainer_in(folder), str(inside))  # resuming that run in its own folder
    check_new_run_folder(_trainer_in(folder), f"file://{inside}")  # as an fsspec URL
    (tmp_path / "link").symlink_to(tmp_path / "lightning_logs")
    check_new_run_folder(_trainer_in(folder), str(tmp_path / "link" / "version_0" / "checkpoints" / "last.ckpt"))  # by a symlink
    with pytest.raises(ConfigError):  # another run's checkpoint
        check_new_run_folder(_trainer_in(folder), str(tmp_path / "other" / "last.ckpt"))
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank the launcher started: rank 0 wrote the folder
    check_new_run_folder(_trainer_in(folder), None)
    monkeypatch.delenv("LOCAL_RANK")
    # without a logger the run folder is default_root_dir, and a second fit there replaced its checkpoints/last.ckpt
    root = tmp_path / "nolog"
    check_new_run_folder(_trainer_in(None, logger=False, root=root), None)
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    with pytest.raises(ConfigError, match=r"already holds another run \(last.ckpt\)"):
        check_new_run_folder(_trainer_in(None, logger=False, root=root), None)


def test_a_resume_under_a_multiprocessing_launcher_is_not_taken_for_one_that_trained_nothing():
    """ddp_spawn: the ranks train in other processes, and this one's global_step stays 0 (every resume was refused)."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    from secure_ml.errors import NothingTrained
    from secure_ml.run_checkpoints import check_trained_on

    def trainer(launcher):
        loop = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(completed=1)))
        return SimpleNamespace(global_step=0, received_sigterm=False, strategy=SimpleNamespace(launcher=launcher), fit_loop=loop,
                               max_epochs=1, max_steps=-1)  # fmt: skip

    with pytest.raises(NothingTrained):
        check_trained_on(trainer(None), "last.ckpt", 7)
    check_trained_on(trainer(object.__new__(_MultiProcessingLauncher)), "last.ckpt", 7)


def _state(sigma, q, steps):
    """A PrivateTraining.state_dict after ``steps`` steps at (σ, q), as a checkpoint holds it."""
    acc = {"history": [(sigma, q, steps)], "mechanism": "prv"}
    return {"accountant": acc, "mechanism": "prv", "noise_multiplier": sigma, "sample_rate": q, "steps": steps, "selection_steps": steps}


def test_a_resumed_target_epsilon_run_cannot_train_past_its_target():
    q, steps, delta, target = 64 / 6480, 102, 1e-5, 1.5
    sigma = noise_for_epsilon(target, delta, q, steps, "prv")
    state = _state(sigma, q, steps // 3)  # one of three epochs trained
    cfg = DPConfig(enabled=True, target_epsilon=target, delta=delta, accountant="prv")
    assert epsilon_of(state, delta, 3 * steps) > 2.0  # negative control: the weakness is real (2.7 in the probe)
    check_target_on_resume(cfg, state, steps)  # the calibrated length: ε <= the target
    with pytest.raises(
        ConfigError, match=r"^--model.dp.target_epsilon 1.5: the checkpoint's σ = .* training on to 306 steps would spend ε = 2"
    ):
        check_target_on_resume(cfg, state, 3 * steps)
    with pytest.raises(ConfigError, match=r"has no end, so no ε"):
        check_target_on_resume(cfg, state, 0)  # unbounded (max_epochs -1)
    check_target_on_resume(DPConfig(enabled=True, noise_multiplier=1.0, delta=delta, accountant="prv"), state, 3 * steps)  # no target
    # a best checkpoint of step 34 whose selection compared models up to step 68: resuming to 102 steps spends 68 + 68
    best = {**state, "selection_steps": 2 * steps // 3}
    with pytest.raises(ConfigError, match=r"training on to 136 steps would spend"):
        check_target_on_resume(cfg, best, steps)


@pytest.mark.parametrize(
    "build, flag",
    [
        (lambda s: __import__("secure_ml.data.poisoning", fromlist=["PoisonConfig"]).PoisonConfig(seed=s), "--data.poison.seed"),
        (lambda s: __import__("secure_ml.data.canaries", fromlist=["CanaryConfig"]).CanaryConfig(count=1, seed=s), "--data.canaries.seed"),
        (lambda s: __import__("secure_ml.data", fromlist=["MNISTDataModule"]).MNISTDataModule(seed=s), "--data.seed"),
        (lambda s: __import__("secure_ml.callbacks", fromlist=["RobustnessCallback"]).RobustnessCallback(seed=s), "--robustness.seed"),
        (lambda s: __import__("secure_ml.callbacks", fromlist=["MembershipInferenceCallback"]).MembershipInferenceCallback(seed=s), "--membership.seed"),
        (lambda s: __import__("secure_ml.callbacks", fromlist=["SpongeCallback"]).SpongeCallback(seed=s), "--sponge.seed"),
        (lambda s: __import__("secure_ml.callbacks", fromlist=["ReferenceMIACallback"]).ReferenceMIACallback(seed=s), "--reference_mia.seed"),
        (lambda s: __import__("secure_ml.callbacks.prior", fromlist=["ProceduralPrior"]).ProceduralPrior(seed=s), "--prior.seed"),
        (lambda s: __import__("secure_ml.attacks.autoattack", fromlist=["AutoAttackConfig"]).AutoAttackConfig(seed=s), "--robustness.autoattack.seed"),
    ],
)  # fmt: skip
def test_every_seed_flag_has_one_range(build, flag):
    """Above 2**63 they ended in torch's "Overflow when unpacking long long" (some after the first epoch); negative ones
    were taken by some flags and refused by others. The canaries' seed is secret by default, a 62-bit draw: 0..2**63-1."""
    high = 2**63 - 1 if flag == "--data.canaries.seed" else 2**62  # torch generators' range, with room for derived seeds
    for bad in (2**64 + 5, -1):
        with pytest.raises(ConfigError, match=rf"^{flag} must be in 0..{high}"):
            build(bad)
    build(high)


def test_the_overflow_is_real():
    import torch

    with pytest.raises(ValueError, match="Overflow"):
        torch.Generator().manual_seed(2**64 + 5)


@pytest.mark.slow
def test_the_cli_refuses_lightnings_words_and_a_taken_folder_before_writing(real_data_dir, tmp_path, monkeypatch, capsys):
    ckpt = fit_checkpoint()
    assert _refused(["test", "--ckpt_path", "last"], tmp_path, monkeypatch, capsys, real_data_dir).startswith("--ckpt_path last: give")
    assert _refused(["fit", "--ckpt_path", "best"], tmp_path, monkeypatch, capsys, real_data_dir).startswith("--ckpt_path best: give")
    assert not (tmp_path / "runs").exists()
    taken = tmp_path / "runs" / "lightning_logs" / "version_0"
    (taken / "checkpoints").mkdir(parents=True)
    (taken / "config.yaml").write_text("kept: true\n")
    (taken / "checkpoints" / "last.ckpt").write_bytes(b"the run's weights")
    message = _refused(["fit", "--trainer.logger.init_args.version", "0"], tmp_path, monkeypatch, capsys, real_data_dir)
    assert message.startswith("the run folder") and "already holds another run (checkpoints, config.yaml)" in message
    assert (taken / "checkpoints" / "last.ckpt").read_bytes() == b"the run's weights"
    # A test may report into a fit's folder (`secure-ml test --config $RUN/config.yaml` of a run whose config names its
    # version), but keeps the fit's config.yaml: it replaced it with its own.
    main(["test", *smoke_args(real_data_dir, sizes=SIZES), "--trainer.default_root_dir", str(tmp_path / "runs"), f"--ckpt_path={ckpt}",
          "--trainer.logger.init_args.version", "0"])  # fmt: skip
    assert (taken / "config.yaml").read_text() == "kept: true\n" and (taken / "metrics.json").is_file()
    assert (taken / "checkpoints" / "last.ckpt").read_bytes() == b"the run's weights"


@pytest.mark.slow
def test_a_resume_with_nothing_left_to_train_is_refused(real_data_dir, tmp_path, monkeypatch, capsys):
    """fit_checkpoint() trained the smoke config's epochs: resuming it with the same ones trained nothing, exit 0."""
    message = _refused(["fit", f"--ckpt_path={fit_checkpoint()}"], tmp_path, monkeypatch, capsys, real_data_dir)
    assert message.startswith(f"--ckpt_path {fit_checkpoint()} had trained to its end already") and "nothing was left to train" in message
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "runs" / "lightning_logs" / "version_0").exists()


@pytest.mark.parametrize(
    "text, words",
    [("", "holds no settings"), ("# only a comment\n", "holds no settings"), ("- a\n- b\n", "must hold a mapping of options (key: value lines), not a list"), ("42\n", "must hold a mapping of options (key: value lines), not a int")],
)  # fmt: skip
def test_a_config_file_without_options_is_named(tmp_path, text, words):
    """jsonargparse said "Unexpected config: # only a comment" (or nothing at all after the colon, for an empty file)."""
    from secure_ml.cli_errors import check_config_files

    bad = tmp_path / "delta.yaml"
    bad.write_text(text)
    for argv in (["fit", "--config", str(bad)], ["fit", f"--config={bad}"], ["-c", str(bad), "fit"]):
        with pytest.raises(ConfigError, match="^--config " + str(bad) + " " + words.replace("(", r"\(").replace(")", r"\)")):
            check_config_files(argv)
    check_config_files(["fit", "--config", "configs/capstone.yaml", "--config", str(tmp_path / "missing.yaml")])  # jsonargparse's
    check_config_files(["fit", "--config"])  # a flag without its value: jsonargparse's


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path):
    """PyYAML keeps the last of two ``data:`` blocks: the first one's val_size was dropped without a word."""
    import yaml

    from secure_ml.cli_errors import check_config_files

    text = "data:\n  train_size: 600\n  val_size: 100\ndata:\n  train_size: 700\n"
    assert yaml.safe_load(text) == {"data": {"train_size": 700}}  # negative control: what the check stands in front of
    (tmp_path / "dup.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"^--config .*dup.yaml: line 4: key 'data' appears twice in one mapping"):
        check_config_files(["fit", "--config", str(tmp_path / "dup.yaml")])
    (tmp_path / "nested.yaml").write_text("model:\n  dp:\n    enabled: true\n    enabled: false\n")
    with pytest.raises(ConfigError, match=r"line 4: key 'enabled' appears twice"):
        check_config_files(["fit", "--config", str(tmp_path / "nested.yaml")])
    check_config_files(
        ["fit", *[a for f in ("capstone", "hardened", "full_eval", "gates", "smoke") for a in ("--config", f"configs/{f}.yaml")]]
    )
    (tmp_path / "merge.yaml").write_text("base: &b\n  train_size: 500\ndata:\n  <<: *b\n  train_size: 600\n")  # an override, as YAML means
    check_config_files(["fit", "--config", str(tmp_path / "merge.yaml")])
    (tmp_path / "merge_dup.yaml").write_text("base: &b\n  a: 1\ndata:\n  <<: *b\n  train_size: 600\n  train_size: 700\n")
    with pytest.raises(ConfigError, match=r"line 6: key 'train_size' appears twice"):
        check_config_files(["fit", "--config", str(tmp_path / "merge_dup.yaml")])
    (tmp_path / "listkey.yaml").write_text("? [1, 2]\n: x\n")  # unhashable: left to jsonargparse (it was a TypeError traceback)
    check_config_files(["fit", "--config", str(tmp_path / "listkey.yaml")])


@pytest.mark.parametrize(
    "gates, off, dp, words",
    [
        ({"mia/auc": "<= 0.55"}, "membership", True, "'mia/auc' is measured by the --membership.* callback, which is off"),
        ({"mia/rmia_auc": "<= 0.6"}, "reference_mia", True, "'mia/rmia_auc' is measured by the --reference_mia.* callback"),
        ({"adv/fgsm_acc@0.1": ">= 0.5"}, "robustness", True, "'adv/fgsm_acc@0.1' is measured by the --robustness.* callback"),
        ({"sponge/reject_rate": ">= 0.9"}, "sponge", True, "'sponge/reject_rate' is measured by the --sponge.* callback"),
        (
            {"privacy/audit_epsilon_lower_bound": "<= 3"},
            "audit",
            True,
            "'privacy/audit_epsilon_lower_bound' is measured by the --audit.* callback",
        ),
        ({"privacy/epsilon": "<= 3"}, None, False, "'privacy/epsilon' exists only for a DP model"),
    ],
)
def test_a_gate_nothing_in_the_test_can_measure_is_refused_before_it_runs(gates, off, dp, words):
    """It failed after the whole test (an hour with configs/full_eval.yaml) as "'mia/auc' was not measured"."""
    from secure_ml import callbacks as c
    from secure_ml.callbacks.scorecard import check_gates_measurable

    built = {"membership": c.MembershipInferenceCallback, "reference_mia": c.ReferenceMIACallback, "robustness": c.RobustnessCallback}
    built.update(sponge=c.SpongeCallback, audit=c.OneRunAuditCallback)
    scorecard = c.Scorecard(gates=gates)
    trainer = SimpleNamespace(callbacks=[cls(enabled=key != off) for key, cls in built.items()] + [scorecard])
    module = SimpleNamespace(dp=SimpleNamespace(enabled=dp))
    with pytest.raises(ConfigError, match="^--scorecard.gates: " + words.replace(".*", r"\.\*").replace("(", r"\(")):
        check_gates_measurable(trainer, module)
    trainer.callbacks = [cls() for cls in built.values()] + [scorecard]
    check_gates_measurable(trainer, SimpleNamespace(dp=SimpleNamespace(enabled=True)))  # all on, DP: every gate measurable


def test_gate_syntax_errors_name_the_flag():
    from secure_ml.report.gates import parse_gates

    with pytest.raises(ConfigError, match=r"^--scorecard.gates: the gate for 'mia/auc' must look like '<= 0.55'"):
        parse_gates({"mia/auc": "about 0.5"})
    with pytest.raises(ConfigError, match=r"^--gates: 'mia/acu' is not a scorecard metric"):
        parse_gates({"mia/acu": "<= 0.5"}, "--gates")


@pytest.mark.slow
def test_the_cli_refuses_a_gate_whose_callback_is_off_before_testing(real_data_dir, tmp_path, monkeypatch, capsys):
    gates = ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "gates.yaml"), "--membership.enabled", "false"]
    message = _refused(["test", f"--ckpt_path={fit_checkpoint()}", *gates], tmp_path, monkeypatch, capsys, real_data_dir)
    assert message.startswith("--scorecard.gates: 'mia/auc' is measured by the --membership.* callback, which is off"), message
    assert not list(tmp_path.rglob("metrics.json"))
