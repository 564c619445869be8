"""What `secure-ml serve` / `extract` / `export` need at start-up: no training stack, only runtime dependencies; one guard order."""

import json
import os
import re
import subprocess
import sys

import pytest

from secure_ml.serving.app import GUARD_ORDER
from tests.helpers.data import REAL_DATA, REPO
from tests.helpers.serving import ADMIN, KEY_A, KEY_B, base_config, release_of, running, trained_checkpoint

pytestmark = pytest.mark.serving
TRAINING_STACK = ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics", "torchvision")


@pytest.mark.slow
def test_extract_runs_without_the_training_stack(tmp_path):
    """The real `secure-ml extract` against a live service, under ``-X importtime``: it imports none of the training stack."""
    from secure_ml.tools.digits import load_test_digits

    load_test_digits(str(REAL_DATA))  # skip/fail like the other real-data tests when the digits are missing
    release = release_of(trained_checkpoint(), tmp_path / "release")
    with running(base_config(tmp_path), ckpt=release) as srv:
        argv = [sys.executable, "-X", "importtime", "-m", "secure_ml.cli", "extract", "--url", srv.url, "--api-key", KEY_A]
        argv += ["--benign-api-key", KEY_B, "--admin-key", ADMIN, "--queries", "30", "--seeds", "10", "--epochs", "1"]
        argv += ["--benign-queries", "10", "--qps", "0", "--data-dir", str(REAL_DATA), "--ckpt_path", str(release)]
        argv += ["--json", str(tmp_path / "report.json")]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "secure_ml.attacks.extraction" in imported and "httpx" in imported  # the probe sees the command's imports...
    assert [m for m in imported if m.split(".")[0] in TRAINING_STACK] == []  # ...and none of the training stack
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["queries_sent"] == 30 and report["benign"]["queries"] == 10 and "extraction simulator" in proc.stdout


@pytest.mark.slow
def test_commands_need_only_runtime_dependencies(tmp_path):
    """.ci/runtime_deps.py passes; control: with prometheus-client dropped from pyproject's dependencies it fails, naming it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([sys.executable, ".ci/runtime_deps.py"], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert ok.returncode == 0 and "work with only the" in ok.stdout, ok.stdout + ok.stderr[-2000:]
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"prometheus-client>=' in pyproject
    (tmp_path / "pyproject.toml").write_text(re.sub(r'\s*"prometheus-client>=[^"]*",', "", pyproject))
    argv = [sys.executable, ".ci/runtime_deps.py", "--pyproject", str(tmp_path / "pyproject.toml")]
    bad = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert bad.returncode != 0 and "prometheus_client" in bad.stdout + bad.stderr, bad.stdout + bad.stderr[-2000:]


def _documented_order() -> list:
    """First column of the guard table marked ``<!-- guard-order -->`` in the README (or, before it is merged, docs/dev/serve.md)."""
    for doc in (REPO / "README.md", REPO / "docs" / "dev" / "serve.md"):
        text = doc.read_text() if doc.exists() else ""
        if "<!-- guard-order -->" in text:
            lines = text.split("<!-- guard-order -->", 1)[1].strip().splitlines()[2:]  # past the header and the |---| row
            rows = lines[: next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))]
            return [re.sub(r"^\d+\.\s*", "", r.split("|")[1].strip()).strip("* ") for r in rows]
    pytest.fail("no guard-order table (<!-- guard-order -->) in README.md or docs/dev/serve.md")


def test_documented_guard_order_matches_the_code():
    assert _documented_order() == list(GUARD_ORDER)


def test_the_functional_data_modules_import_no_training_stack():
    """`secure_ml.data`'s package init imported the DataModule, so `import secure_ml.data.poisoning` loaded Lightning."""
    modules = ["secure_ml.data.poisoning", "secure_ml.data.mnist", "secure_ml.data.sanitization", "secure_ml.data.canaries"]
    lightning = ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics")  # (mnist.py reads MNIST with torchvision)
    code = f"import sys; import {', '.join(modules)}; print(sorted(m for m in sys.modules if m.split('.')[0] in {lightning!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-500:]
