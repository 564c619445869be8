"""The start-up prefetch of the sanitizer (secure_ml/prefetch.py): its guess of the settings, and that a result is
taken only when it was computed from the very inputs the DataModule has (fresh interpreters: the fork needs torch unloaded)."""

import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from secure_ml import prefetch, prefetch_guess
from secure_ml.data.datamodule import MNISTDataModule
from secure_ml.data.mnist import load_mnist, read_idx, read_raw
from secure_ml.data.sanitization import SanitizerConfig

REPO = Path(__file__).resolve().parents[1]
CAPSTONE = str(REPO / "configs" / "capstone.yaml")


def _probe(mode: str, argv: list, data: dict, **env) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.prefetch_probe", mode, json.dumps(argv), json.dumps(data)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == (-9 if mode == "killed" else 0), proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _alive(pid: int) -> bool:
    """Running, not a zombie left for a container's init to reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture
def setup(tiny_mnist):
    """A capstone command line on the tiny digits, and the settings its DataModule gets from it."""
    argv = ["fit", "--config", CAPSTONE, "--data.data_dir", str(tiny_mnist), "--data.download=false", "--data.train_size", "500"]
    argv += ["--data.val_size", "100"]
    return argv, {"data_dir": str(tiny_mnist), "train_size": 500, "val_size": 100, "seed": 42}


def test_the_guess_reads_configs_then_flags_over_the_datamodule_defaults(tmp_path):
    delta = tmp_path / "delta.yaml"
    delta.write_text("data:\n  sanitizer:\n    k: 7\n  poison:\n    rate: 0.2\n")
    guess = prefetch_guess.data_settings
    got = guess(["test", "-c", CAPSTONE, "--config", str(delta), "--data.sanitizer.feature_dims=20", "--data.seed", "3"])
    assert got["sanitizer"] == {"method": "confident_knn", "action": "remove", "k": 7, "feature_dims": 20}
    assert got["poison"] == {"rate": 0.2, "target_label": 0} and got["seed"] == 3 and got["train_size"] == 8000
    plain = guess(["fit", "--trainer.max_epochs", "1", "--data.sanitizer.method", "confident_knn"])
    assert plain["data_dir"] == "./data"  # the defaults, and the flag
    assert guess(["fit", "--config", CAPSTONE, "--trainer.strategy", "ddp"]) is not None  # rank 0 is this process


def test_no_guess_where_nothing_would_claim_it_or_the_line_is_not_read(tmp_path):
    (tmp_path / "delta.yaml").write_text("data: {seed: 1}\n")
    (tmp_path / "spawn.yaml").write_text("trainer: {strategy: ddp_spawn}\n")
    os.mkfifo(tmp_path / "fifo")  # read once, by LightningCLI: the guess must not open it (it would also block)
    for argv in (
        ["predict", "--config", CAPSTONE],  # no training part
        ["fit", "--config", CAPSTONE, "--print_config"],
        ["fit", "--help"],
        ["fit", "--config", CAPSTONE, "--data", str(tmp_path / "delta.yaml")],  # a whole data spec is not guessed
        ["fit", "--config", str(tmp_path / "missing.yaml")],
        ["serve", "--config", CAPSTONE],
        ["fit", "--trainer.max_epochs", "1"],  # the default sanitizer (none): nothing to prefetch
        ["fit", "--config", CAPSTONE, "--data.sanitizer.method", "knn"],
        ["fit", "--config", CAPSTONE, "--config", str(tmp_path / "spawn.yaml")],  # spawned ranks set the data up
        ["fit", "--config", CAPSTONE, "--trainer.strategy=ddp_fork"],
        ["fit", "--config", CAPSTONE, "--config", str(tmp_path / "fifo")],
    ):
        assert prefetch_guess.data_settings(argv) is None, argv


def test_the_guess_never_raises_on_what_lightningcli_must_word(tmp_path):
    (tmp_path / "args.yaml").write_text("data: {class_path: secure_ml.data.MNISTDataModule, init_args: 5}\n")
    (tmp_path / "date.yaml").write_text("data:\n  seed: 2024-13-01\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "bytes.ckpt").write_bytes(bytes(range(256)) * 4)
    for argv in (
        ["fit", "--data.seed", "2024-02-30"],  # YAML reads a date, and raises
        ["fit", "--data.seed", "!!int abc"],
        ["fit", "--data.init_args=5"],
        ["fit", "--data.seed", "[" * 5000 + "]" * 5000],  # a recursion limit
        ["fit", "--data.sanitizer", "5", "--data.sanitizer.k", "3"],
        ["fit", "--config"],
        ["fit", "--config", str(tmp_path)],
        *(["fit", "--config", CAPSTONE, "--config", str(tmp_path / n)] for n in ("args.yaml", "date.yaml", "list.yaml", "bytes.ckpt")),
    ):
        assert prefetch_guess.data_settings(argv) is None, argv


def test_the_guess_defaults_are_the_datamodule_defaults():
    params = inspect.signature(MNISTDataModule.__init__).parameters
    assert {k: params[k].default for k in prefetch_guess.DATA_DEFAULTS} == prefetch_guess.DATA_DEFAULTS
    assert SanitizerConfig().method == prefetch_guess.SANITIZER_DEFAULT


def test_the_child_reads_the_tensors_load_mnist_reads(tiny_mnist):
    for train in (True, False):
        x, y = load_mnist(str(tiny_mnist), train=train, download=False)
        rx, ry = read_raw(str(tiny_mnist), train=train)
        assert torch.equal(rx, x) and torch.equal(ry, y) and rx.dtype == x.dtype and ry.dtype == y.dtype
    with pytest.raises(ValueError, match="not a uint8 IDX"):
        read_idx(__file__)


def test_start_does_nothing_once_torch_is_loaded(setup):
    prefetch.start(setup[0])  # this interpreter has torch: a fork now could hang in its thread pools
    assert prefetch._pending is None


def test_a_matching_guess_is_taken_and_equals_the_detection_computed_in_process(setup):
    got = _probe("claim", *setup)
    assert got["child"] and got["claimed"] and got["same"] and got["flagged"] > 0


def test_a_guess_from_other_settings_is_refused_by_the_digest(setup):
    argv, data = setup
    got = _probe("claim", [*argv, "--data.seed", "1"], data)  # the child drew other digits
    assert got["child"] and not got["claimed"]
    missing = _probe("claim", [*argv, "--data.data_dir", "/nonexistent"], data)  # the child failed: computed here
    assert missing["child"] and not missing["claimed"]


def test_negative_control_without_the_digest_a_wrong_detection_would_be_taken(setup):
    argv, data = setup
    got = _probe("nodigest", [*argv, "--data.seed", "1"], data)
    assert got["claimed"] and not got["same"]  # what the check above prevents


def test_the_datamodule_says_when_its_detection_came_from_the_prefetch(setup):
    on = _probe("datamodule", *setup)
    off = _probe("datamodule", *setup, SECURE_ML_PREFETCH="0")
    assert on["prefetched"] and on["summary"].endswith("(detected during start-up on the idle core)")
    assert off["child"] is None and not off["prefetched"]
    assert on["summary"].split(" (detected")[0] == off["summary"]  # the same flags, counts and scores


def test_a_forked_process_cannot_read_the_pipe_and_an_unclaimed_child_is_reaped_at_exit(setup):
    got = _probe("fork", *setup)
    assert got["forked_claim_refused"] and got["parent_claimed"]
    pid = _probe("exit", *setup)["child"]
    assert pid and not Path(f"/proc/{pid}").exists()  # killed and reaped by the parent, not left running


def test_a_cli_killed_outright_takes_its_child_with_it(setup):
    pid = _probe("killed", *setup)["child"]  # SIGKILL: no exit handler ran; the child would sleep for 60 s
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid and not _alive(pid)


def test_a_refused_fork_leaves_the_run_alone_and_no_descriptor_open(setup):
    got = _probe("forkfail", *setup)
    assert got["child"] is None and got["fds_leaked"] == 0
    assert _probe("exit", *setup)["fds_leaked"] == 0
