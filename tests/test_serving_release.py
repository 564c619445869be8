"""`secure-ml export`: the release artifact holds only allow-listed keys, its weights are verified, and any registered net is served."""

import json

import httpx
import pytest
import torch
from safetensors import safe_open

import secure_ml.models as models
from secure_ml.cli import main as secure_ml_main
from secure_ml.errors import ConfigError
from secure_ml.models import SmallCNN
from secure_ml.release.artifact import MANIFEST, WEIGHTS, load_release
from secure_ml.release.checkpoint import read_checkpoint
from secure_ml.serving.startup import load_served_model
from tests.helpers.serving import KEY_A, base_config, fit_checkpoint, release_of, running, write_checkpoint

pytestmark = pytest.mark.serving

# What a release may carry (issue 9, item 2), written out here independently of the code: every key path
# of manifest.json must match one of these ("*" = any key at that level, checked by its own rule below).
ALLOWED = {
    "format",
    "version",
    "net.class_path",
    "net.init_args.*",
    "weights.file",
    "weights.sha256",
    "input_policy.shape",
    "input_policy.min_value",
    "input_policy.max_value",
    "input_policy.max_variance",
    "input_policy.max_energy",
    "input_policy.max_density",
    "input_policy.max_layer_density",  # the sponge merge's per-layer density limits
    "input_policy.max_layer_energy",  # per-layer L2 limits (bounded activations: tanh, GELU, SiLU)
    "input_policy.max_layer_positive",  # per-layer positive-share limits (same)
    "input_policy.max_reconstruction",  # the autoencoder check's limits (policy version 5: one per error)
    "input_policy.reconstruction_net",  # its weights: base64 safetensors of an autoencoder trained on procedural digits only
    "input_policy.version",  # InputPolicy.to_dict()'s format version
    "privacy.dp",
    "privacy.accountant",
    "privacy.noise_multiplier",
    "privacy.sample_rate",
    "privacy.steps",
    "privacy.selection_steps",  # steps that influenced which checkpoint was kept (issue 9, item 3)
    "privacy.delta",
    "privacy.epsilon",
}


def key_paths(obj, prefix=""):
    """Every key path of nested mappings (lists are leaves), e.g. ``callbacks.Scorecard.history``."""
    if not isinstance(obj, dict) or not obj:
        yield prefix
        return
    for k, v in obj.items():
        yield from key_paths(v, f"{prefix}.{k}" if prefix else str(k))


def not_allowed(paths, net_args):
    out = []
    for p in paths:
        if p.startswith("net.init_args."):
            ok = p.split(".", 2)[2] in net_args
        else:
            ok = p in ALLOWED or p in {"net.init_args", "input_policy"}  # empty init_args / a null policy
        if not ok:
            out.append(p)
    return out


def run_cli(argv, capsys):
    """``(exit status, stderr)`` of ``secure-ml ARGV`` run in process (0 when it returns normally)."""
    try:
        secure_ml_main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_artifact_of_a_dp_fit_holds_only_allow_listed_keys(tmp_path, capsys):
    """Attack: look for anything computed from the members in the artifact. Control: the training checkpoint is full of it."""
    from secure_ml.privacy.ledger import ledger_from_checkpoint

    ckpt_path = fit_checkpoint()
    capsys.readouterr()  # the fit's own output
    code, err = run_cli(["export", "--ckpt_path", str(ckpt_path), "--output", str(tmp_path / "rel")], capsys)
    assert code == 0 and "ε = " in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == [MANIFEST, WEIGHTS]
    manifest = json.loads((tmp_path / "rel" / MANIFEST).read_text())
    net_args = set(SmallCNN.__init__.__code__.co_varnames[1 : SmallCNN.__init__.__code__.co_argcount])
    assert not_allowed(key_paths(manifest), net_args) == []
    with safe_open(str(tmp_path / "rel" / WEIGHTS), "pt") as f:
        assert set(f.keys()) == set(SmallCNN().state_dict()) and not (f.metadata() or {})  # tensors of the net only
    ckpt = read_checkpoint(ckpt_path)
    ledger = ledger_from_checkpoint(ckpt)
    assert manifest["privacy"] == json.loads(json.dumps(ledger)) and manifest["privacy"]["dp"] is True
    assert f"{ledger['epsilon']:.3g} at" in err and f"({ledger['accountant']}, {ledger['selection_steps']} steps" in err  # ε's own steps
    assert manifest["input_policy"] is not None  # the capstone's SpongeCallback calibrated one
    # negative control: the same check on the training checkpoint finds its non-private contents
    leaked = not_allowed(key_paths({k: v for k, v in ckpt.items() if k != "state_dict"}), net_args)
    assert any(p.startswith("callbacks.Scorecard.history") for p in leaked)  # per-epoch train/loss, train/acc, MIA scores
    assert any(p.startswith("optimizer_states") for p in leaked)
    served = load_served_model(str(tmp_path / "rel"))
    assert served.warnings == [] and served.source.startswith("release artifact")
    trained = load_served_model(str(ckpt_path))
    for name, tensor in served.model.state_dict().items():
        assert torch.equal(tensor, trained.model.state_dict()[name])


def test_export_reports_the_steps_its_epsilon_counts(monkeypatch, capsys):
    """ε of a selected checkpoint counts the selection steps: the line says so rather than showing the trained steps."""
    import secure_ml.release.cli as release_cli
    from secure_ml.release.artifact import Release

    privacy = {"dp": True, "accountant": "rdp", "steps": 125, "selection_steps": 375, "delta": 1e-5, "epsilon": 1.23}
    manifest = {"privacy": privacy, "net": {"class_path": "secure_ml.models.SmallCNN"}, "input_policy": None}
    monkeypatch.setattr(release_cli, "export_checkpoint", lambda *a: Release(None, None, manifest, "0" * 64))
    assert release_cli.export_main(["--ckpt_path", "x.ckpt", "--output", "rel"]) == 0
    assert "ε = 1.23 at δ = 1e-05 (rdp, 375 steps counted for checkpoint selection, 125 trained)" in capsys.readouterr().err
    privacy["selection_steps"] = 125  # control: the same count is said once
    release_cli.export_main(["--ckpt_path", "x.ckpt", "--output", "rel"])
    assert "(rdp, 125 steps)," in capsys.readouterr().err


def test_export_refuses_a_model_trained_without_dp(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "plain.ckpt")
    code, err = run_cli(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "rel")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "without DP" in err and not (tmp_path / "rel").exists()
    code, err = run_cli(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "rel"), "--allow_non_dp"], capsys)
    assert code == 0 and "NO differential privacy" in err
    assert json.loads((tmp_path / "rel" / MANIFEST).read_text())["privacy"] == {"dp": False}
    code, err = run_cli(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "rel"), "--allow_non_dp"], capsys)
    assert code == 2 and "not an empty directory" in err  # never overwrites


def test_export_of_unreadable_input_or_unwritable_output_is_one_line(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "plain.ckpt")
    (tmp_path / "text.ckpt").write_text("hello\n")  # the weights-only unpickler raised KeyError on it (from a review)
    for argv, message in (
        (["--ckpt_path", str(tmp_path / "text.ckpt"), "--output", str(tmp_path / "rel")], "is not a readable PyTorch checkpoint"),
        (["--ckpt_path", str(ckpt), "--output", str(tmp_path / "text.ckpt" / "rel"), "--allow_non_dp"], "--output: cannot write"),
    ):
        code, err = run_cli(["export", *argv], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_tampered_weights_are_refused(tmp_path, capsys, monkeypatch):
    """Attack: swap the weights after export (another model's, or one flipped byte). Control: the untouched artifact loads."""
    monkeypatch.setenv("SECURE_ML_API_KEYS", KEY_A)
    rel = release_of(write_checkpoint(tmp_path / "a.ckpt"), tmp_path / "rel")
    assert load_release(rel).manifest["weights"]["sha256"]  # control: loads as exported
    torch.manual_seed(1)
    other = release_of(write_checkpoint(tmp_path / "b.ckpt", SmallCNN()), tmp_path / "other")
    original = (rel / WEIGHTS).read_bytes()
    for tampered in ((other / WEIGHTS).read_bytes(), original[:-1] + bytes([original[-1] ^ 1])):
        (rel / WEIGHTS).write_bytes(tampered)
        code, err = run_cli(["serve", "--ckpt_path", str(rel), "--port", "0"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "does not match the manifest" in err, err
    (rel / WEIGHTS).write_bytes(original)
    manifest = json.loads((rel / MANIFEST).read_text())
    manifest["metrics"] = {"train/acc": 0.99}  # a manifest that smuggles a training metric is not ours
    (rel / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="'metrics', which a release never carries"):
        load_release(rel)


class TinyMLP(torch.nn.Module):
    """A second net for the test, registered in secure_ml.models by monkeypatch (stores its constructor args)."""

    def __init__(self, hidden: int = 8, num_classes: int = 3):
        super().__init__()
        self.hidden, self.num_classes = hidden, num_classes
        self.body = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(784, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.body(x)


def test_any_registered_net_is_exported_and_served(tmp_path, monkeypatch):
    """A registered net other than SmallCNN, with its own init_args, round-trips through export and answers over HTTP."""
    monkeypatch.setattr(models, "TinyMLP", TinyMLP, raising=False)
    monkeypatch.setattr(models, "__all__", [*models.__all__, "TinyMLP"])
    torch.manual_seed(0)
    rel = release_of(write_checkpoint(tmp_path / "mlp.ckpt", TinyMLP(hidden=5)), tmp_path / "rel")
    manifest = json.loads((rel / MANIFEST).read_text())
    assert manifest["net"] == {"class_path": "secure_ml.models.TinyMLP", "init_args": {"hidden": 5, "num_classes": 3}}
    with running(base_config(tmp_path, extraction={"enabled": False}), ckpt=rel) as srv:
        r = httpx.post(srv.url + "/predict", json={"image": [[0.0] * 28] * 28}, headers={"X-API-Key": KEY_A})
    assert r.status_code == 200 and len(r.json()["probabilities"]) == 3
    monkeypatch.setattr(models, "__all__", [n for n in models.__all__ if n != "TinyMLP"])  # control: unregistered -> refused
    with pytest.raises(ConfigError, match="is not one of secure_ml.models"):
        load_served_model(str(rel))


def test_training_checkpoint_is_served_with_one_warning_line(tmp_path):
    plain = write_checkpoint(tmp_path / "weights-only.ckpt")
    assert load_served_model(str(plain)).warnings == []  # control: nothing but weights and hyper-parameters
    full = write_checkpoint(tmp_path / "full.ckpt", callbacks={"Scorecard": {"history": [{"train/acc": 0.9}]}}, optimizer_states=[])
    served = load_served_model(str(full))
    assert len(served.warnings) == 1 and "non-private" in served.warnings[0] and "callbacks" in served.warnings[0]
    assert "\n" not in served.warnings[0]
