"""The secure-ml CLI: every config parses, fit/test run in-process, bad input gives one clear line."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from secure_ml.cli import cli_main, main
from tests.helpers.data import make_mnist_dir, smoke_args

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
BASE = REPO / "configs" / "capstone.yaml"
SMOKE = REPO / "configs" / "smoke.yaml"


def _is_training_config(path: Path) -> bool:
    return not path.name.startswith("serve")


@pytest.mark.slow
@pytest.mark.parametrize("config", [c for c in CONFIGS if _is_training_config(c)], ids=lambda p: p.name)
def test_every_training_config_parses(config, capsys):
    args = ["fit", "--config", str(BASE)] + (["--config", str(config)] if config != BASE else []) + ["--print_config"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    own_net = (yaml.safe_load(config.read_text()) or {}).get("model", {}).get("net", {}).get("class_path")
    assert printed["model"]["net"]["class_path"] == (own_net or "secure_ml.models.SmallCNN")
    assert "data" in printed and "trainer" in printed
    cli = cli_main(["--config", str(BASE)] + (["--config", str(config)] if config != BASE else []), run=False)
    assert cli.datamodule.poisson_sampling == cli.model.dp.enabled  # the link: DP always gets Poisson sampling


@pytest.mark.parametrize("config", [c for c in CONFIGS if not _is_training_config(c)], ids=lambda p: p.name)
def test_every_serving_config_parses(config, monkeypatch):
    from secure_ml.serving.config_loading import load_serve_config

    monkeypatch.setenv("SECURE_ML_API_KEYS", "a-client-key-0123456789")  # serve.yaml keeps keys out of the file

    assert load_serve_config(str(config)).guards in (True, False)


def test_every_config_is_covered():
    assert {c.name for c in CONFIGS} >= {"capstone.yaml", "smoke.yaml", "serve.yaml", "gates.yaml", "hardened.yaml"}


def test_hardened_is_a_delta_that_keeps_the_capstone_data_and_stays_within_epsilon_1_5(capsys):
    delta = yaml.safe_load((REPO / "configs" / "hardened.yaml").read_text())
    assert set(delta.get("data", {})) <= {"batch_size", "val_size"}  # same digits, same poisoning, same sanitizer
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(BASE), "--config", str(REPO / "configs" / "hardened.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    capstone = yaml.safe_load(BASE.read_text())
    for key in ("train_size", "test_size"):
        assert printed["data"][key] == capstone["data"][key]
    # more of the same 8,000 digits held out as non-members, and every one of them calibrates the input policy
    assert printed["data"]["val_size"] == printed["sponge"]["calibration_samples"] == 1600 > capstone["data"]["val_size"]
    for key in ("poison", "sanitizer"):
        assert {k: printed["data"][key][k] for k in capstone["data"][key]} == capstone["data"][key]
    dp = printed["model"]["dp"]
    assert dp["enabled"] and dp["target_epsilon"] <= 1.5 and dp["delta"] == 1e-5
    assert printed["model"]["net"]["class_path"] == "secure_ml.models.TanhCNN"
    assert printed["prior"]["enabled"] and printed["ema"]["enabled"] and printed["sponge"]["reconstruction"]
    assert not printed["model"]["dp"].get("noise_seed") and not printed["data"].get("sampling_seed")  # DP randomness stays secret


def test_capstone_has_the_seed_numbers():
    cfg = yaml.safe_load(BASE.read_text())
    assert cfg["data"]["train_size"] == 8000 and cfg["data"]["test_size"] == 2000 and cfg["data"]["batch_size"] == 64
    assert cfg["data"]["poison"] == {"rate": 0.1, "target_label": 0}
    assert cfg["data"]["sanitizer"]["method"] != "none"
    dp = cfg["model"]["dp"]
    assert dp["enabled"] and dp["noise_multiplier"] == 1.0 and dp["max_grad_norm"] == 1.0
    assert cfg["model"]["adversarial"]["epsilon"] == pytest.approx(0.1 * 0.3081, abs=1e-4)
    assert cfg["model"]["optimizer"]["init_args"] == {"lr": 0.01, "momentum": 0.9}
    assert cfg["trainer"]["max_epochs"] == 3


def _scalars(log_dir: Path):
    ea = EventAccumulator(str(log_dir))
    ea.Reload()
    return set(ea.Tags()["scalars"])


@pytest.mark.slow
def test_fit_then_test_in_process(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = smoke_args(tiny_mnist, "--data.batch_size", "32")
    main(["fit", *common])
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "config.yaml").exists()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    tags = _scalars(run)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "privacy/epsilon", "poison/precision", "poison/recall", "poison/f1"):
        assert key in tags, key
    main(["test", *common, "--ckpt_path", str(ckpt)])
    assert "test/acc" in _scalars(tmp_path / "lightning_logs" / "version_1")
    with pytest.raises(SystemExit) as exc:  # evaluating on another member/non-member split is refused
        main(["test", *common, "--data.val_size", "50", "--ckpt_path", str(ckpt)])
    assert exc.value.code == 2
    assert not (tmp_path / "lightning_logs" / "version_2").exists()  # the refused test's folder is removed (run_folder)
    main(["predict", *common, "--ckpt_path", str(ckpt)])
    rows = (tmp_path / "lightning_logs" / "version_2" / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("index,label,p0") and len(rows) == 1 + 100


@pytest.mark.slow
def test_test_after_fit_reports_what_a_separate_test_reports(tiny_mnist, tmp_path, monkeypatch):
    """``fit --test_after_fit true`` tests the last checkpoint in the same process: the same scorecard as ``secure-ml test
    --config <run>/config.yaml --ckpt_path last.ckpt`` afterwards, with EMA on (the averaged weights are what a checkpoint
    holds and what is tested)."""
    from lightning.pytorch.callbacks import WeightAveraging

    from secure_ml.callbacks.ema import EMACallback

    monkeypatch.chdir(tmp_path)
    common = smoke_args(tiny_mnist, "--data.batch_size", "32", "--ema.enabled", "true")
    cli = cli_main(["fit", *common, "--test_after_fit", "true"])
    run = tmp_path / "lightning_logs" / "version_0"
    ckpt_path = run / "checkpoints" / "last.ckpt"
    in_process = json.loads((run / "metrics.json").read_text())["test"]
    assert yaml.safe_load((run / "config.yaml").read_text())["test_after_fit"] is True
    main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt_path)])  # the fit's own config: the flag is ignored
    separate = json.loads((tmp_path / "lightning_logs" / "version_1" / "metrics.json").read_text())["test"]
    assert "test/acc" in separate and set(in_process) == set(separate)
    timed = {k for k in separate if "latency" in k}  # wall-clock ratios differ between any two runs
    assert {k: v for k, v in in_process.items() if k not in timed} == {k: v for k, v in separate.items() if k not in timed}
    # Under test the module held the checkpoint's weights, the average...
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    held = cli.model.state_dict()
    assert all(torch.equal(held[k], v) for k, v in ckpt["state_dict"].items())
    # ...negative control: Lightning's own WeightAveraging hook, on that load, would have put the raw last iterate back.
    ema = next(cb for cb in cli.trainer.callbacks if isinstance(cb, EMACallback))
    WeightAveraging.on_load_checkpoint(ema, cli.trainer, cli.model, ckpt)
    assert not all(torch.equal(cli.model.state_dict()[k], v) for k, v in ckpt["state_dict"].items())


def test_test_after_fit_picks_the_last_checkpoint_even_when_the_best_was_rewritten_later(tmp_path):
    """At the end of a DP fit the monitored (best) files are rewritten (privacy.selection): the newest file is then the
    best epoch's, and testing it would not be what ``secure-ml test --ckpt_path last.ckpt`` reports."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from secure_ml.run_checkpoints import checkpoint_to_test

    last, best = tmp_path / "last.ckpt", tmp_path / "best-epoch0.ckpt"
    last.write_bytes(b"epoch 2")
    best.write_bytes(b"epoch 0")
    os.utime(last, ns=(1_000_000_000, 1_000_000_000))
    os.utime(best, ns=(2_000_000_000, 2_000_000_000))  # rewritten after the last epoch's save
    monitored = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max")
    monitored.best_model_path = str(best)
    everything = ModelCheckpoint(dirpath=tmp_path, filename="last", enable_version_counter=False)
    everything.best_model_path = str(last)
    assert max((last, best), key=lambda p: p.stat().st_mtime_ns) == best  # "the newest file" would be the wrong one
    assert checkpoint_to_test(SimpleNamespace(checkpoint_callbacks=[monitored, everything])) == str(last)
    last.unlink()  # no last*.ckpt: the latest save of a ModelCheckpoint that monitors nothing, else the first one's best
    other = tmp_path / "epoch=2-step=9.ckpt"
    other.write_bytes(b"epoch 2")
    everything.best_model_path = str(other)
    assert checkpoint_to_test(SimpleNamespace(checkpoint_callbacks=[monitored, everything])) == str(other)
    assert checkpoint_to_test(SimpleNamespace(checkpoint_callbacks=[monitored])) == str(best)
    assert checkpoint_to_test(SimpleNamespace(checkpoint_callbacks=[])) is None


@pytest.mark.slow
def test_console_run_loses_nothing_it_wrote(tiny_mnist, tmp_path):
    """``python -m secure_ml`` leaves its live objects to the OS at exit (cli.console): the events, the report and the
    checkpoint of a fit and its test are all complete."""
    args = [sys.executable, "-m", "secure_ml", "fit", *smoke_args(tiny_mnist, "--data.batch_size", "32"), "--test_after_fit", "true"]
    args += ["--trainer.callbacks+=tests.helpers.gc_probe.GcProbe"]
    proc = subprocess.run(args, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the collector, paused for the imports and the parse (secure_ml.startup_gc), is on again for the run, their objects frozen
    probes = [json.loads(line) for line in (tmp_path / "gc_probe.jsonl").read_text().splitlines()]
    assert [p["stage"] for p in probes] == ["train", "test"] and all(p["enabled"] and p["frozen"] > 100_000 for p in probes), probes
    run = tmp_path / "lightning_logs" / "version_0"
    assert {"train/loss", "val/acc", "privacy/epsilon", "test/acc", "mia/rmia_auc"} <= _scalars(run)
    assert "test/acc" in json.loads((run / "metrics.json").read_text())["test"] and (run / "dashboard.png").stat().st_size > 0
    assert "Clean accuracy" in proc.stdout  # the scorecard table
    assert "(detected during start-up on the idle core)" in proc.stdout + proc.stderr  # the sanitizer ran beside the imports
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_console_freezes_the_live_objects_after_the_command(monkeypatch):
    import gc

    from secure_ml.cli import console

    monkeypatch.setattr(sys, "argv", ["secure-ml", "preflight", "--help"])
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        with pytest.raises(SystemExit):
            console()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


BAD_INPUT = {
    "poison-rate": (["--data.poison.rate", "1.5"], "--data.poison.rate"),
    "negative-eps": (["--model.adversarial.epsilon", "-0.1"], "--model.adversarial.epsilon"),
    "train-size": (["--data.train_size", "100000"], "--data.train_size"),
    "sanitizer": (["--data.sanitizer.method", "magic"], "data.sanitizer.method"),
    "top-level-optimizer": (["--optimizer", "torch.optim.Adam"], "a top-level optimizer would bypass DP; set --model.optimizer"),
    # parse errors: jsonargparse printed ~170 lines of usage before its own "error:" lines
    "wrong-type": (["--trainer.max_epochs", "abc"], "Parser key \"trainer.max_epochs\"; Expected a <class 'int'>; Given value: abc"),
    "unknown-flag": (["--nonsense", "3"], "unrecognized arguments: --nonsense 3"),
    "poisson-off": (["--data.poisson_sampling", "false"], "model.dp.enabled"),
    "batchnorm": (
        ["--model.net", "torch.nn.BatchNorm2d", "--model.net.num_features", "1", "--sponge.enabled", "false"],
        "cannot be trained with DP-SGD",
    ),
    "no-hidden-activations": (
        ["--model.net", "torch.nn.BatchNorm2d", "--model.net.num_features", "1"],
        "--sponge: BatchNorm2d has no hidden",
    ),
    "pgd-step-size": (["--robustness.pgd_step_size", "-0.01"], "--robustness.pgd_step_size must be a finite number > 0"),
    "craft-lr": (["--sponge.craft_lr", "0"], "--sponge.craft_lr must be a finite number > 0"),
    "max-epochs": (["--trainer.max_epochs", "-5"], "`max_epochs` must be a non-negative integer"),
    "optimizer-lr": (["--model.optimizer.init_args.lr", "-1"], "--model.optimizer: Invalid learning rate"),
    "no-training-batches": (["--trainer.limit_train_batches", "0"], "--trainer.limit_train_batches 0 trains nothing"),
    "unreachable-epsilon": (["--model.dp.target_epsilon", "0.001"], "--model.dp.target_epsilon 0.001 cannot be reached"),
    "net-input": (
        ["--model.net", "torch.nn.Linear", "--model.net.in_features", "784", "--model.net.out_features", "10", "--sponge.enabled", "false"],
        "--model.net: Linear cannot take a batch of 1x28x28 digits",
    ),
    # (before: a traceback after an epoch of training, at the first validation)
    "canary-guesses": (["--data.canaries.count", "1"], "--data.canaries.count 1 with --audit.guess_fractions"),
    # (before: the probe passed and every weight trained to NaN, exit 0)
    "net-std-zero": (["--model.net.init_args.std", "0"], "--model.net.init_args.std (SmallCNN) must be a finite number > 0"),
    # (before: Lightning's traceback when the loader was sized, after the data and the sanitizer had run)
    "limit-fraction": (["--trainer.limit_train_batches", "0.0001"], "the configuration was refused: You requested to check 0.0001"),
    "test-after-fit-without-checkpoints": (
        ["--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false", "--test_after_fit", "true"],
        "--test_after_fit tests the fit's last checkpoint, but this run writes none",
    ),
}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Every bad-input command line of this module run by the console entry point in ONE fresh process
    (``tests.helpers.cli_batch``: each case with its own stderr), so the ~12 s Lightning import is paid once."""
    root = tmp_path_factory.mktemp("cli-bad-input")
    data = make_mnist_dir(root / "data")
    cases = {k: {"argv": ["fit", *smoke_args(data, *extra)], "cwd": str(root)} for k, (extra, _) in BAD_INPUT.items()}
    missing = ["fit", "--config", str(BASE), "--data.data_dir", str(root / "none"), "--data.download", "false"]
    cases["missing-data"] = {"argv": missing, "cwd": str(root)}
    cases["print-config"] = {"argv": ["fit", "--config", str(BASE), "--print_config"], "cwd": str(root)}
    for name, content in BAD_CHECKPOINTS.items():
        (root / f"{name}.ckpt").write_bytes(content)
        cases[f"ckpt-{name}"] = {"argv": ["test", *smoke_args(data, "--ckpt_path", str(root / f"{name}.ckpt"))], "cwd": str(root)}
    (root / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "SECURE_ML_KEY_DIR": str(root / "keys"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.cli_batch", str(root / "cases.json"), str(root / "results.json")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((root / "results.json").read_text())


@pytest.mark.parametrize("case", list(BAD_INPUT))
@pytest.mark.slow
def test_bad_input_is_one_clear_error(bad_input_runs, case):
    run, needle = bad_input_runs[case], BAD_INPUT[case][1]
    assert run["code"] != 0
    # (the needle must come from the error: an echo of the command line, as Lightning's args warning was, would not count)
    assert needle in run["stderr"]
    assert "Traceback" not in run["stderr"] and "Logging error" not in run["stderr"]


@pytest.mark.parametrize("case", ["wrong-type", "unknown-flag", "top-level-optimizer"])
@pytest.mark.slow
def test_parse_errors_are_one_line(bad_input_runs, case):
    lines = bad_input_runs[case]["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("secure-ml: error: "), lines[:5]


BAD_CHECKPOINTS = {
    "text": b"hello\n",
    "empty": b"",
    "truncated": b"PK\x03\x04" + b"\x00" * 64,
    "not-lightning": _torch_bytes({"w": torch.zeros(2)}),
}


@pytest.mark.parametrize("name", list(BAD_CHECKPOINTS))
@pytest.mark.slow
def test_a_bad_checkpoint_file_is_one_clear_error(bad_input_runs, name):
    """Lightning's CLI reads --ckpt_path with a bare torch.load while parsing: each of these was a traceback."""
    run = bad_input_runs[f"ckpt-{name}"]
    assert run["code"] == 2 and "--ckpt_path" in run["stderr"] and "Traceback" not in run["stderr"], run["stderr"][-800:]
    assert len(run["stderr"].strip().splitlines()) == 1, run["stderr"][-800:]


@pytest.mark.slow
def test_missing_data_says_where_files_go(bad_input_runs):
    run = bad_input_runs["missing-data"]
    assert run["code"] == 2
    assert "MNIST/raw" in run["stderr"] and "--data.data_dir" in run["stderr"] and "Traceback" not in run["stderr"]


ARGS_WARNING = "LightningCLI's args parameter"


@pytest.mark.slow
def test_console_run_prints_no_args_warning(bad_input_runs):
    """A command line is parsed once, from sys.argv: Lightning warns on every run when given args as well."""
    run = bad_input_runs["print-config"]
    assert run["code"] == 0 and ARGS_WARNING not in run["stderr"], run["stderr"][-500:]
    assert all(ARGS_WARNING not in r["stderr"] for r in bad_input_runs.values())


@pytest.mark.slow
def test_no_cloud_logging_advert(bad_input_runs):
    run = bad_input_runs["no-hidden-activations"]  # it starts a Trainer, where Lightning prints its litlogger tip
    assert "GPU available" in run["stderr"] and "litlogger" not in run["stderr"], run["stderr"][-500:]


@pytest.mark.slow
def test_no_lightning_pytree_deprecation_line(bad_input_runs):
    run = bad_input_runs["unreachable-epsilon"]  # it gets as far as the fit loop's set-up, where Lightning's _pytree warned
    assert "Loading `train_dataloader`" in run["stderr"] and "LeafSpec" not in run["stderr"], run["stderr"][-500:]


def test_lightning_pytree_still_warns_without_the_filter():
    """Negative control: the line the test above looks for is what this Lightning and torch print."""
    import warnings

    from lightning.pytorch.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tree_flatten({"a": torch.zeros(1), "b": [1, 2]})
    assert any("LeafSpec" in str(w.message) for w in caught)


def test_advert_filter_drops_only_the_advert():
    """Negative control: the filter drops Lightning's tip (as Lightning words it) and keeps other lines."""
    import logging

    from secure_ml.log_filter import DropAdverts

    def record(msg):
        return logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, __file__, 1, msg, None, None)

    tip = "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](https://pypi.org/project/litlogger/)"
    assert not DropAdverts().filter(record(tip))
    assert DropAdverts().filter(record("GPU available: False, used: False"))


def test_lightning_still_warns_on_args_and_argv(monkeypatch):
    """Negative control for the test above: the warning it looks for is what Lightning emits given both."""
    from lightning.pytorch.cli import LightningCLI

    from secure_ml.data.datamodule import MNISTDataModule
    from secure_ml.module import SecureClassifier

    monkeypatch.setattr(sys, "argv", ["secure-ml", "fit", "--print_config"])
    with pytest.warns(UserWarning, match=ARGS_WARNING), pytest.raises(SystemExit):
        LightningCLI(SecureClassifier, MNISTDataModule, args=["fit", "--config", str(BASE), "--print_config"])


def test_cli_batch_reports_an_escaping_exception_as_a_traceback(tmp_path, monkeypatch):
    """Negative control for the batch runner: an exception escaping ``main`` shows up as a traceback in its own
    case's stderr (so the bad-input tests would see one), and a one-line error stays in its own case."""
    import secure_ml.cli
    from tests.helpers.cli_batch import run_cases

    real_main = secure_ml.cli.main

    def main(args=None):
        if sys.argv[1] == "crash":
            raise RuntimeError("boom")
        return real_main(args)

    monkeypatch.setattr(secure_ml.cli, "main", main)
    results = run_cases({"crash": {"argv": ["crash"], "cwd": str(tmp_path)}, "bad": {"argv": ["export"], "cwd": str(tmp_path)}})
    assert results["crash"]["code"] == 1 and "Traceback" in results["crash"]["stderr"] and "boom" in results["crash"]["stderr"]
    assert results["bad"]["code"] == 2 and "--ckpt_path" in results["bad"]["stderr"] and "boom" not in results["bad"]["stderr"]
