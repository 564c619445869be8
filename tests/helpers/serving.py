"""Serving test helpers: checkpoints and release artifacts, a quickly trained model, a server factory, raw HTTP, Redis."""

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import httpx
import numpy as np
import pytest
import torch

from secure_ml.models import SmallCNN, net_spec
from secure_ml.serving.app import build_service
from secure_ml.serving.config_loading import config_from_dict
from secure_ml.serving.server import ServerThread
from secure_ml.serving.startup import build_policy, load_served_model
from tests.helpers.data import real_data_dir

REDIS_URL_ENV = "SECURE_ML_TEST_REDIS_URL"

KEY_A = "client-a-key-0123456789"
KEY_B = "client-b-key-9876543210"
ADMIN = "admin-key-abcdefghijkl"


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def write_checkpoint(path: Path, model: Optional[torch.nn.Module] = None, **extra) -> Path:
    """A checkpoint shaped like `secure-ml fit`'s: ``state_dict`` with ``net.`` keys, the net's description in the hyper-parameters."""
    torch.manual_seed(0)
    model = model or SmallCNN()
    state = {"net." + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"net": net_spec(model)}, **extra}, path)
    return path


def release_of(ckpt: Path, out_dir: Path) -> Path:
    """The release artifact of a test checkpoint (trained without DP, so exported with ``allow_non_dp``)."""
    from secure_ml.release.cli import export_checkpoint

    export_checkpoint(str(ckpt), str(out_dir), allow_non_dp=True)
    return out_dir


@functools.lru_cache(maxsize=1)
def trained_checkpoint() -> Path:
    """SmallCNN trained ~1 s on 2,000 real training digits (≈90% test accuracy), cached for the session."""
    from secure_ml.data.mnist import load_mnist

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = load_mnist(str(real_data_dir()), train=True, download=False)
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = SmallCNN()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(2):
            perm = torch.randperm(2000, generator=g)
            for i in range(0, 2000, 64):
                idx = perm[i : i + 64]
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    path = Path(tempfile.mkdtemp(prefix="secure-ml-serving-")) / "trained.ckpt"
    return write_checkpoint(path, model.eval())


@functools.lru_cache(maxsize=1)
def fit_checkpoint() -> Path:
    """``last.ckpt`` of one real tiny DP `secure-ml fit` (capstone + smoke, 300/100/100 real digits), run once per session."""
    import sys

    from secure_ml.cli import cli_main
    from tests.helpers.data import REPO

    root = Path(tempfile.mkdtemp(prefix="secure-ml-fit-"))
    sizes = ["--data.train_size", "300", "--data.val_size", "100", "--data.test_size", "100"]
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = ["secure-ml"]
    os.chdir(root)
    try:
        cli_main(
            ["fit", "--config", str(REPO / "configs/capstone.yaml"), "--config", str(REPO / "configs/smoke.yaml")]
            + ["--data.data_dir", str(real_data_dir()), "--trainer.default_root_dir", str(root), *sizes]
        )
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return next(root.glob("lightning_logs/version_*/checkpoints/last.ckpt"))


def base_config(tmp_path: Path, **sections) -> dict:
    cfg = {
        "model": {"torch_threads": 1},
        "auth": {"api_keys": [KEY_A, KEY_B], "admin_keys": [ADMIN], "failed_qps": 10000.0, "failed_burst": 1000},
        "rate_limit": {"burst": 1000, "max_qps": 10000},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(name, {}).update(values)
        else:
            cfg[name] = values
    return cfg


@contextlib.contextmanager
def running(cfg_dict: dict, ckpt: Optional[Path] = None, model=None, clock=None, policy="config"):
    """Start the service on 127.0.0.1:<free port> in a thread; yields the ServerThread (``.url``, ``.service``)."""
    threads = torch.get_num_threads()
    cfg = config_from_dict(cfg_dict)
    stored, num_classes = None, 10
    if model is None:
        served = load_served_model(str(ckpt or trained_checkpoint()), "auto")
        model, stored, num_classes = served.model, served.stored_policy, served.num_classes
    if policy == "config":
        policy = build_policy(cfg.policy, model, stored)[0] if cfg.guard_on("policy") else None
    service = build_service(cfg, model, policy, clock=clock, num_classes=num_classes)
    srv = ServerThread(service).start()
    try:
        yield srv
    finally:
        srv.stop()
        torch.set_num_threads(threads)


def digit_body(image) -> dict:
    return {"image": np.asarray(image, dtype=float).reshape(28, 28).tolist()}


def audit_lines(path) -> list:
    text = Path(path).read_text() if os.path.exists(path) else ""
    return [json.loads(line) for line in text.splitlines()]


def raw_http(port: int, data: bytes, timeout: float = 5.0, read_limit: int = 1 << 16) -> bytes:
    """Send raw bytes to 127.0.0.1:port, read until the server closes or ``timeout``; bounded."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        try:
            while len(out) < read_limit:
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else -1


ZEROS = {"image": [[0.0] * 28 for _ in range(28)]}


def post(srv, body=ZEROS, key=KEY_A, **kw):
    headers = {"X-API-Key": key} if key is not None else {}
    if isinstance(body, (bytes, str)):
        return httpx.post(srv.url + "/predict", content=body, headers={**headers, "Content-Type": "application/json"}, **kw)
    return httpx.post(srv.url + "/predict", json=body, headers=headers, **kw)


def redis_url() -> str:
    """The test Redis (``$SECURE_ML_TEST_REDIS_URL``, started by .ci/run); in CI its absence fails, elsewhere it skips."""
    url = os.environ.get(REDIS_URL_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"${REDIS_URL_ENV} is not set: .ci/run must start a redis-server for the `redis` tests")
        pytest.skip(f"no Redis for this test (set ${REDIS_URL_ENV}, e.g. redis://127.0.0.1:6390/0)")
    return url


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def private_redis(port: int):
    """A redis-server of the test's own on ``port`` (so that the test can stop it); skips without one, fails in CI."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            assert time.monotonic() < deadline and proc.poll() is None, "the private redis-server did not start"
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
