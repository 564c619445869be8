"""`--ckpt_path` for fit/validate/test never unpickles code: a marker-file payload, from disk and from a loopback URL."""

import contextlib
import functools
import http.server
import threading

import pytest
import torch
from lightning.fabric.utilities.cloud_io import _load as lightning_load
from lightning.pytorch import Trainer

from secure_ml.checkpoint_io import UnsafeCheckpointError
from secure_ml.cli import main as cli_main
from secure_ml.data import MNISTDataModule
from secure_ml.models import SmallCNN
from secure_ml.module import SecureClassifier
from tests.helpers.data import REPO


class Payload:
    """Unpickling this creates ``path`` (``open(path, "w")``): the marker that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious(tmp_path):
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "site" / "evil.ckpt"
    ckpt.parent.mkdir()
    state = {"net." + k: v for k, v in SmallCNN().state_dict().items()}
    torch.save({"state_dict": state, "epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.6.0", "x": Payload(marker)}, ckpt)
    return ckpt, marker


@contextlib.contextmanager
def _serve(folder):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _dm(root):
    return MNISTDataModule(data_dir=str(root), download=False, train_size=500, val_size=100, test_size=100, batch_size=32)


def test_the_payload_runs_under_lightning_own_url_loader(tmp_path, monkeypatch):
    """Negative control: Lightning's loader unpickles a URL with weights_only=False, so the marker does appear."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # torch.hub caches downloads by file name: keep it in tmp
    ckpt, marker = _malicious(tmp_path)
    with _serve(ckpt.parent) as url:
        lightning_load(f"{url}/evil.ckpt", map_location="cpu")
    assert marker.exists()


@pytest.mark.parametrize("where", ["local", "url"])
@pytest.mark.parametrize("fn", ["fit", "validate", "test"])
def test_trainer_refuses_pickled_code(tiny_mnist, tmp_path, where, fn):
    ckpt, marker = _malicious(tmp_path)
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    with _serve(ckpt.parent) as url:
        path = str(ckpt) if where == "local" else f"{url}/evil.ckpt"
        with pytest.raises(UnsafeCheckpointError, match="nothing in the file was executed"):
            getattr(trainer, fn)(SecureClassifier(), _dm(tiny_mnist), ckpt_path=path)
    assert not marker.exists()


@pytest.mark.slow
def test_cli_prints_one_line_for_a_malicious_url(tiny_mnist, tmp_path, monkeypatch, capsys):
    ckpt, marker = _malicious(tmp_path)
    monkeypatch.chdir(tmp_path)
    with _serve(ckpt.parent) as url:
        args = ["fit", "--config", str(REPO / "configs" / "capstone.yaml"), "--config", str(REPO / "configs" / "smoke.yaml")]
        args += ["--data.data_dir", str(tiny_mnist), "--data.download", "false", "--data.train_size", "500", "--data.val_size", "100"]
        args += ["--data.test_size", "100", "--ckpt_path", f"{url}/evil.ckpt"]
        with pytest.raises(SystemExit) as exit_info:
            cli_main(args)
    assert exit_info.value.code == 2 and not marker.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("secure-ml: error: refused to load --ckpt_path") and "Traceback" not in "\n".join(err)


def test_a_genuine_checkpoint_still_resumes_from_a_url(tiny_mnist, tmp_path):
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_train_batches=2)
    trainer.fit(SecureClassifier(), _dm(tiny_mnist))
    (tmp_path / "site").mkdir()
    trainer.save_checkpoint(tmp_path / "site" / "good.ckpt")
    with _serve(tmp_path / "site") as url:
        tester = Trainer(logger=False, enable_progress_bar=False, limit_test_batches=1)
        tester.test(SecureClassifier(), _dm(tiny_mnist), ckpt_path=f"{url}/good.ckpt")
    assert "test/acc" in tester.callback_metrics
