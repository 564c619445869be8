"""Checkpoint loading (safe unpickling), config validation and the `secure-ml serve` command line."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from secure_ml.cli import main as secure_ml_main
from secure_ml.errors import ConfigError
from secure_ml.models import SmallCNN
from secure_ml.release.checkpoint import UnsafeCheckpointError
from secure_ml.serving.config_loading import config_from_dict, load_serve_config
from secure_ml.serving.startup import build_policy, load_served_model
from tests.helpers.data import REPO
from tests.helpers.serving import KEY_A, digit_body, fit_checkpoint, release_of, trained_checkpoint, write_checkpoint

pytestmark = pytest.mark.serving


class Payload:
    """Unpickling this runs ``os.system(touch marker)``: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_ckpt(tmp_path):
    marker = tmp_path / "PWNED"
    path = write_checkpoint(tmp_path / "evil.ckpt", extra_payload=Payload(marker))
    return path, marker


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        secure_ml_main(argv)
    err = capsys.readouterr().err
    return exc.value.code, err


def test_malicious_checkpoint_refused_without_running_it(evil_ckpt):
    path, marker = evil_ckpt
    with pytest.raises(UnsafeCheckpointError, match="refused to load checkpoint.*nothing in the file was executed") as exc:
        load_served_model(str(path))
    assert "posix.system" in str(exc.value) or "system" in str(exc.value)
    assert "weights_only=False" not in str(exc.value)  # no advice to disable the safe loader
    assert not marker.exists()


@pytest.mark.slow
def test_malicious_checkpoint_cli_subprocess(evil_ckpt):
    path, marker = evil_ckpt
    env = {**os.environ, "SECURE_ML_API_KEYS": KEY_A}
    proc = subprocess.run(
        [sys.executable, "-m", "secure_ml.cli", "serve", "--ckpt_path", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("secure-ml: error: refused to load checkpoint"), proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d / "missing.ckpt", "does not exist"),
        (lambda d: (torch.save({"epoch": 1}, d / "x.ckpt"), d / "x.ckpt")[1], "has no 'state_dict'"),
        (lambda d: ((d / "g.ckpt").write_bytes(b"garbage"), d / "g.ckpt")[1], "refused to load checkpoint"),
        (
            lambda d: (torch.save({"state_dict": {"net.fc2.weight": torch.zeros(10, 128)}}, d / "p.ckpt"), d / "p.ckpt")[1],
            "does not fit SmallCNN",
        ),
        (lambda d: (torch.save({"state_dict": {"net.w": "str"}}, d / "s.ckpt"), d / "s.ckpt")[1], "must map parameter names to tensors"),
    ],
)
def test_bad_checkpoints_one_line_error(tmp_path, capsys, monkeypatch, make, message):
    monkeypatch.setenv("SECURE_ML_API_KEYS", KEY_A)
    code, err = run_cli(["serve", "--ckpt_path", str(make(tmp_path)), "--port", "0"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_nan_weights_refused(tmp_path):
    model = SmallCNN()
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        load_served_model(str(write_checkpoint(tmp_path / "nan.ckpt", model)))


@pytest.mark.parametrize(
    "yaml_text,message",
    [
        ("rate_limit:\n  burst: -1\n", "rate_limit.burst: must be > 0"),
        ("rate_limit:\n  brust: 3\n", "unknown option rate_limit.brust"),
        ("extraction:\n  action: nuke\n", "extraction.action"),
        ("inference:\n  timeout_s: fast\n", "inference.timeout_s: input should be a valid number"),
        ("output:\n  precision: 12\n", "output.precision"),
        ("auth:\n  enabled: yes please\n", "auth.enabled: input should be a valid boolean"),
        ("rate_limit:\n  burst: '10'\n", "rate_limit.burst: input should be a valid integer"),
        ("server: [1, 2]\n", "server: expected a mapping"),
        ("guards: true\n  bad: [\n", "not valid YAML"),
        # keys no client can present (HTTP servers strip blanks and read header bytes as latin-1): every request was 401
        ("auth:\n  api_keys: ['clé-secrète-0123456789']\n", "characters other than printable ASCII"),
        ("auth:\n  api_keys: [' padded-key-0123456789 ']\n", "surrounding blanks"),
    ],
)
def test_bad_config_one_line_error(tmp_path, capsys, monkeypatch, yaml_text, message):
    monkeypatch.setenv("SECURE_ML_API_KEYS", KEY_A)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(yaml_text)
    code, err = run_cli(["serve", "--ckpt_path", str(trained_checkpoint()), "--config", str(cfg)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("key", ["path", "alert_path"])
@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_an_unwritable_request_log_is_refused_at_start_up(tmp_path, capsys, monkeypatch, key, where):
    """Found by probing: a log path under a file ended serve in FileExistsError; a directory started the service, and
    every request, /health included, then answered 503 audit_unavailable."""
    monkeypatch.setenv("SECURE_ML_API_KEYS", KEY_A)
    (tmp_path / "file.txt").write_text("x")
    bad = str(tmp_path / "logs") if where == "a directory" else str(tmp_path / "file.txt" / "x.jsonl")
    (tmp_path / "logs").mkdir()
    good = str(tmp_path / "ok.jsonl")
    paths = {"path": good, "alert_path": str(tmp_path / "ok.alerts.jsonl"), key: bad}
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"audit:\n  path: {paths['path']}\n  alert_path: {paths['alert_path']}\n")
    code, err = run_cli(["serve", "--ckpt_path", str(trained_checkpoint()), "--config", str(cfg)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"serve.yaml: audit.{key}: the request log {bad!r} cannot be written" in err, err


def test_bad_flags_one_line_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SECURE_ML_API_KEYS", KEY_A)
    for argv, message in (
        [["serve"], "--ckpt_path"],
        [["serve", "--ckpt_path", "x", "--port", "abc"], "--port: not a port number"],
        [["serve", "--ckpt_path", str(trained_checkpoint()), "--port", "70000"], "--port: must be in 0..65535, got 70000"],
        [["serve", "--ckpt_path", "x", "--config", str(tmp_path / "nope.yaml")], "--config"],
    ):
        code, err = run_cli(argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_no_keys_is_a_config_error(monkeypatch):
    monkeypatch.delenv("SECURE_ML_API_KEYS", raising=False)
    with pytest.raises(ConfigError, match="SECURE_ML_API_KEYS"):
        load_serve_config(None)


def test_shipped_serve_yaml_matches_defaults(monkeypatch):
    monkeypatch.setenv("SECURE_ML_API_KEYS", KEY_A)
    from secure_ml.serving.settings import ServeConfig

    assert load_serve_config(str(REPO / "configs" / "serve.yaml")) == ServeConfig()
    # and it lists every option (a missing one would also load as its default)
    import dataclasses

    import yaml

    shipped = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    for section in dataclasses.fields(ServeConfig):
        if dataclasses.is_dataclass(section.type):
            listed = set(shipped.get(section.name) or {})
            assert listed == {f.name for f in dataclasses.fields(section.type)}, (section.name, listed)


@pytest.mark.slow
def test_real_fit_checkpoint_loads():
    """A checkpoint written by a real (tiny) `secure-ml fit` run, DP accountant state included, is served with a warning."""
    served = load_served_model(str(fit_checkpoint()))
    model, stored = served.model, served.stored_policy
    assert isinstance(model, SmallCNN) and not model.training
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert stored is not None  # the capstone's SpongeCallback stores its calibrated policy in the checkpoint
    policy, source = build_policy(config_from_dict({"auth": {"api_keys": [KEY_A]}}).policy, model, stored)
    assert source.startswith("calibrated during training") and policy.max_variance is not None
    assert len(served.warnings) == 1 and "non-private" in served.warnings[0] and "callbacks" in served.warnings[0]


def test_checkpoint_policy_is_served(tmp_path):
    """A policy stored by the SpongeCallback is enforced unless policy.from_checkpoint is false."""
    from tests.helpers.serving import base_config, running

    stored = {"shape": [1, 28, 28], "min_value": 0.0, "max_value": 1.0, "max_variance": 0.01, "max_energy": None, "max_density": None}
    ckpt = write_checkpoint(tmp_path / "p.ckpt", callbacks={"SpongeCallback": {"policy": stored}})
    digit = {"image": [[float(i % 7 == 0 and j % 5 == 0) for j in range(28)] for i in range(28)]}  # variance ~0.03
    for from_ckpt, expected in ((True, 422), (False, 200)):
        with running(base_config(tmp_path, policy={"from_checkpoint": from_ckpt}), ckpt=ckpt) as srv:
            r = httpx.post(srv.url + "/predict", json=digit, headers={"X-API-Key": KEY_A})
        assert r.status_code == expected and (expected == 200 or r.json()["reason"] == "variance")


@pytest.mark.slow
def test_serve_subprocess_end_to_end(tmp_path):
    """`secure-ml serve` of a release artifact in a subprocess: serves, logs, and never imports Lightning, torchmetrics or torchvision."""
    env = {**os.environ, "SECURE_ML_API_KEYS": KEY_A}
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"audit:\n  path: {tmp_path / 'audit.jsonl'}\n")
    release = release_of(trained_checkpoint(), tmp_path / "release")
    argv = [
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "secure_ml.cli",
        "serve",
        "--ckpt_path",
        str(release),
        "--config",
        str(cfg),
        "--port",
        "0",
    ]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        imported = []
        for line in proc.stderr:  # -X importtime lines, then "secure-ml serve: listening on http://127.0.0.1:PORT ..."
            if line.startswith("import time:"):
                imported.append(line.rsplit("|", 1)[-1].strip())
            elif "listening on" in line or not line.strip() or proc.poll() is not None:
                break
        assert "listening on" in line and "release artifact" in line, line
        assert "secure_ml.serving.app" in imported  # the probe sees the service's own imports...
        heavy = [m for m in imported if m.split(".")[0] in ("lightning", "pytorch_lightning", "torchmetrics", "torchvision")]
        assert heavy == [], heavy  # ...and none of the training stack
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", line).group(1))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became healthy"
            time.sleep(0.1)
        r = httpx.post(url + "/predict", json=digit_body(torch.zeros(28, 28)), headers={"X-API-Key": KEY_A})
        assert r.status_code == 200 and "label" in r.json()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) >= 2


def test_flags_override_an_empty_section(monkeypatch, tmp_path):
    """`server:` left empty keeps its defaults, and --port/--host still win (the override was dropped: port 8000)."""
    monkeypatch.setenv("SECURE_ML_API_KEYS", KEY_A)
    path = tmp_path / "serve.yaml"
    path.write_text("server:\naudit:\n  path: " + str(tmp_path / "audit.jsonl") + "\n")
    server = load_serve_config(str(path), {"server.port": 8799, "server.host": "0.0.0.0"}).server
    assert (server.port, server.host) == (8799, "0.0.0.0")
    assert load_serve_config(str(path)).server.port == 8000  # control: without the flag, the default


@pytest.mark.parametrize("written", [0.21, None])
def test_calibrate_keeps_the_pixel_limits_as_written(real_data_dir, written):
    """From a red-team review: with `policy.calibrate: true` a tighter `max_variance` (or null) was served as 0.22."""
    from secure_ml.serving.settings import PolicyConfig

    torch.manual_seed(0)
    cfg = PolicyConfig(
        calibrate=True, calibration_data_dir=str(real_data_dir), calibration_samples=300, max_variance=written, min_value=-0.01
    )
    policy, source = build_policy(cfg, SmallCNN().eval())
    assert source.startswith("calibrated at start-up") and policy.max_energy is not None  # the activation limits are calibrated
    assert policy.max_variance == written and policy.min_value == -0.01  # the pixel limits are the file's
