"""The secure-ml CLI: every config parses, fit/test run in-process, bad input gives one clear line."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from secure_ml.cli import cli_main, main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
BASE = REPO / "configs" / "capstone.yaml"
SMOKE = REPO / "configs" / "smoke.yaml"


def _is_training_config(path: Path) -> bool:
    return not path.name.startswith("serve")


@pytest.mark.parametrize("config", [c for c in CONFIGS if _is_training_config(c)], ids=lambda p: p.name)
def test_every_training_config_parses(config, capsys):
    args = ["fit", "--config", str(BASE)] + (["--config", str(config)] if config != BASE else []) + ["--print_config"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["net"]["class_path"] == "secure_ml.models.SmallCNN"
    assert "data" in printed and "trainer" in printed
    cli = cli_main(["--config", str(BASE)] + (["--config", str(config)] if config != BASE else []), run=False)
    assert cli.datamodule.poisson_sampling == cli.model.dp.enabled  # the link: DP always gets Poisson sampling


@pytest.mark.parametrize("config", [c for c in CONFIGS if not _is_training_config(c)], ids=lambda p: p.name)
def test_every_serving_config_parses(config, monkeypatch):
    from secure_ml.serving.settings import load_serve_config

    monkeypatch.setenv("SECURE_ML_API_KEYS", "a-client-key-0123456789")  # serve.yaml keeps keys out of the file

    assert load_serve_config(str(config)).guards in (True, False)


def test_every_config_is_covered():
    assert {c.name for c in CONFIGS} >= {"capstone.yaml", "smoke.yaml", "serve.yaml", "gates.yaml"}


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
    common = [
        "--config",
        str(BASE),
        "--config",
        str(SMOKE),
        "--data.data_dir",
        str(tiny_mnist),
        "--data.download",
        "false",
        "--data.train_size",
        "500",
        "--data.val_size",
        "100",
        "--data.test_size",
        "100",
        "--data.batch_size",
        "32",
    ]
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
    main(["predict", *common, "--ckpt_path", str(ckpt)])
    rows = (tmp_path / "lightning_logs" / "version_3" / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("index,label,p0") and len(rows) == 1 + 100


def _run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "secure_ml", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--data.poison.rate", "1.5"], "--data.poison.rate"),
        (["--model.adversarial.epsilon", "-0.1"], "--model.adversarial.epsilon"),
        (["--data.train_size", "100000"], "--data.train_size"),
        (["--data.sanitizer.method", "magic"], "data.sanitizer.method"),
        (["--optimizer", "torch.optim.Adam"], "--optimizer"),
        (["--data.poisson_sampling", "false"], "model.dp.enabled"),
        (["--model.net", "torch.nn.BatchNorm2d", "--model.net.num_features", "1"], "--model.net"),
    ],
    ids=["poison-rate", "negative-eps", "train-size", "sanitizer", "top-level-optimizer", "poisson-off", "batchnorm"],
)
@pytest.mark.slow
def test_bad_input_is_one_clear_error(tiny_mnist, tmp_path, extra, needle):
    proc = _run_cli(
        "fit",
        "--config",
        str(BASE),
        "--config",
        str(SMOKE),
        "--data.data_dir",
        str(tiny_mnist),
        "--data.download",
        "false",
        "--data.train_size",
        "500",
        "--data.val_size",
        "100",
        "--data.test_size",
        "100",
        *extra,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_missing_data_says_where_files_go(tmp_path):
    proc = _run_cli("fit", "--config", str(BASE), "--data.data_dir", str(tmp_path / "none"), "--data.download", "false", cwd=tmp_path)
    assert proc.returncode == 2
    assert "MNIST/raw" in proc.stderr and "--data.data_dir" in proc.stderr and "Traceback" not in proc.stderr
