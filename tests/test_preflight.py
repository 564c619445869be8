"""secure-ml preflight: a deployment that passes every item, and one broken item at a time that it must catch."""

import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from secure_ml.preflight.cli import preflight_main, run_checks

REPO = Path(__file__).resolve().parents[1]
CLIENT, ADMIN = "client-key-0123456789abcdef", "admin-key-0123456789abcdef"
LEDGER = {"dp": True, "accountant": "prv", "noise_multiplier": 1.0, "sample_rate": 0.008, "steps": 339, "delta": 1e-5, "epsilon": 1.2}
GOOD_METRICS = {
    "privacy/epsilon": 1.2,
    "mia/auc": 0.51,
    "adv/fgsm_acc@0.1": 0.85,
    "sponge/reject_rate": 0.95,
    "sponge/false_positive_rate": 0.01,
}


def _model():
    from secure_ml.models import SmallCNN

    torch.manual_seed(0)
    return SmallCNN().eval()


def _policy(model, data_dir: Path) -> dict:
    from secure_ml.data.mnist import load_mnist
    from secure_ml.defenses.input_policy import InputPolicy

    x, _ = load_mnist(str(data_dir), train=True, download=False)  # training-split digits: never the test split preflight measures on
    return InputPolicy.calibrate(model, x[:400], false_positive_rate=0.002).to_dict()


class Deployment:
    """A passing deployment in ``tmp_path``; tests break one piece and expect exactly that item to fail."""

    def __init__(self, tmp_path: Path, data_dir: Path, monkeypatch):
        from secure_ml.release.artifact import weights_sha256, write_release

        self.tmp, self.data_dir = tmp_path, data_dir
        monkeypatch.setenv("SECURE_ML_API_KEYS", CLIENT)
        monkeypatch.setenv("SECURE_ML_ADMIN_KEYS", ADMIN)
        model = _model()
        self.release = tmp_path / "release"
        write_release(self.release, model, _policy(model, data_dir), LEDGER)
        (tmp_path / "logs").mkdir()
        self.serve = {"audit": {"path": str(tmp_path / "logs" / "serve-audit.jsonl")}}
        self.logrotate = tmp_path / "logrotate.conf"
        self.logrotate.write_text(f"# secure-ml request logs\n{tmp_path}/logs/*.jsonl {{\n    daily\n    rotate 30\n}}\n")
        self.metrics = {"test": dict(GOOD_METRICS), "gates": [{"gate": "mia/auc <= 0.55", "passed": True}]}
        self.metrics["weights_sha256"] = weights_sha256(model)  # what `secure-ml test` writes: the weights it measured
        self.extra: list = []

    def argv(self) -> list:
        (self.tmp / "serve.yaml").write_text(yaml.safe_dump(self.serve))
        (self.tmp / "metrics.json").write_text(json.dumps(self.metrics))
        return [
            "--serve-config", str(self.tmp / "serve.yaml"),
            "--model", str(self.release),
            "--metrics", str(self.tmp / "metrics.json"),
            "--gates", str(REPO / "configs" / "gates.yaml"),
            "--logrotate", str(self.logrotate),
            "--data-dir", str(self.data_dir),
            *self.extra,
        ]  # fmt: skip

    def failed(self) -> set:
        return {c.name for c in run_checks(self.argv()) if c.failed}


@pytest.fixture
def dep(tmp_path, tiny_mnist, monkeypatch):
    return Deployment(tmp_path, tiny_mnist, monkeypatch)


def test_a_deployment_that_follows_the_checklist_passes_every_item(dep, capsys):
    assert preflight_main(dep.argv()) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    names = [line.split()[1] for line in lines if not line.startswith(" ")]
    assert names == [
        "serve-config", "guards", "api-keys", "admin-key", "bind-address", "api-docs", "request-log", "request-log-rotated",
        "rate-limit", "extraction-detector", "output-rounding", "artefact-integrity", "release-artefact", "input-policy",
        "policy-false-positives", "privacy-budget", "security-gates",
    ]  # fmt: skip
    assert all(line.startswith("PASS") for line in lines) and "all 17 checks passed" in out.err
    assert "ε = 1.2 at δ = 1e-05" in out.out and "5 gate(s) pass" in out.out


def _tls(d):
    d.serve["server"] = {"host": "0.0.0.0"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "breakage, expected",
    [
        (_tls, {"bind-address"}),
        (lambda d: d.serve.update(auth={"api_keys": ["client-key-in-the-file-0123"]}), {"api-keys"}),
        (lambda d: d.serve.update(auth={"min_key_length": 8}), {"api-keys"}),
        (lambda d: d.serve.update(rate_limit={"enabled": False}), {"rate-limit", "guards"}),
        (lambda d: d.serve.update(extraction={"enabled": False}), {"extraction-detector", "guards"}),
        (lambda d: d.serve["audit"].update(path=str(d.tmp / "missing" / "audit.jsonl")), {"request-log", "request-log-rotated"}),
        (lambda d: d.logrotate.write_text("/var/log/other/*.log {\n daily\n}\n"), {"request-log-rotated"}),
        (lambda d: d.serve.update(policy={"from_checkpoint": False}), {"input-policy"}),
        (lambda d: d.serve.update(output={"precision": None}), {"output-rounding"}),
        (lambda d: d.serve.update(server={"docs": True}), {"api-docs"}),
        (lambda d: d.extra.extend(["--max-epsilon", "1.0"]), {"privacy-budget"}),
        (lambda d: d.metrics["test"].update({"mia/auc": 0.7}), {"security-gates"}),
        (lambda d: d.metrics["test"].update({"privacy/epsilon": 2.5}), {"security-gates"}),
        (lambda d: d.metrics["gates"].append({"gate": "adv/pgd_acc@0.1 >= 0.5", "passed": False}), {"security-gates"}),
        # logrotate's glob: `*` stops at `/`, so a stanza one folder up does not rotate logs/serve-audit.jsonl (it passed)
        (lambda d: d.logrotate.write_text(f"{d.tmp}/*.jsonl {{\n daily\n}}\n"), {"request-log-rotated"}),
        # a "forever" block under memory:// is lifted by any restart, a rolling key rotation included
        (lambda d: d.serve.update(extraction={"block_seconds": 0.0}), {"extraction-detector"}),
        # another run of the same recipe has the same ε: only the weights' digest tells its report apart (it passed before)
        (lambda d: d.metrics.update(weights_sha256="0" * 64), {"security-gates"}),
        (lambda d: d.metrics.pop("weights_sha256"), {"security-gates"}),
    ],
    ids=["plain-http", "keys-in-file", "short-min-length", "no-rate-limit", "no-detector", "log-unwritable", "not-rotated", "policy-uncalibrated",
         "full-probabilities", "docs-on", "over-budget", "gate-fails", "report-of-another-model", "recorded-gate-failed",
         "rotated-one-folder-up", "forever-block-in-memory",
         "report-of-other-weights-same-epsilon", "report-without-weights"],
)  # fmt: skip
def test_each_broken_item_is_caught_and_only_it(dep, breakage, expected, capsys):
    breakage(dep)
    assert dep.failed() == expected
    assert preflight_main(dep.argv()) == 1
    out = capsys.readouterr()
    assert out.out.count("fix: ") >= len(expected) and "checks failed" in out.err


def _noise_digits(root: Path) -> None:
    """A test split of uniform noise images: the calibrated policy must reject them (its false positives then exceed any limit)."""
    import numpy as np

    from tests.helpers.data import write_idx

    g = np.random.default_rng(0)
    write_idx(root / "MNIST" / "raw", "t10k", (g.random((50, 28, 28)) * 255).astype(np.uint8), g.integers(0, 10, 50).astype(np.uint8))


def test_false_positives_are_measured_on_held_out_digits(dep):
    _noise_digits(dep.tmp / "noise")  # "clean" digits the policy rejects: its false-positive rate is then far over the limit
    dep.extra += ["--data-dir", str(dep.tmp / "noise")]
    assert dep.failed() == {"policy-false-positives"}
    dep.extra = []
    checks = {c.name: c for c in run_checks([a for a in dep.argv() if a != str(dep.data_dir)][:-1])}  # no --data-dir
    assert checks["policy-false-positives"].status == "SKIP" and not checks["policy-false-positives"].failed


def test_plain_http_passes_behind_a_declared_tls_proxy(dep):
    _tls(dep)
    dep.extra.append("--tls-proxy")
    assert dep.failed() == set()


def test_short_client_key_and_missing_admin_key(dep, monkeypatch):
    monkeypatch.setenv("SECURE_ML_API_KEYS", "short")
    monkeypatch.delenv("SECURE_ML_ADMIN_KEYS")
    assert dep.failed() == {"api-keys", "admin-key"}


def test_tampered_weights_are_refused_by_the_integrity_item(dep, capsys):
    weights = dep.release / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    failed = dep.failed()
    assert {"artefact-integrity", "release-artefact", "input-policy", "privacy-budget"} <= failed
    preflight_main(dep.argv())
    assert "does not match the manifest" in capsys.readouterr().out


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_checkpoint_with_pickled_code_fails_and_never_runs_it(dep, capsys):
    ckpt = dep.tmp / "evil.ckpt"
    with open(ckpt, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Payload()}, f)
    dep.release = ckpt
    assert "artefact-integrity" in dep.failed()
    preflight_main(dep.argv())
    out = capsys.readouterr().out
    assert "safe loader" in out and "this must never run" not in out


def test_a_training_checkpoint_loads_but_is_not_a_release(dep):
    ckpt = dep.tmp / "last.ckpt"
    model = _model()
    torch.save({"state_dict": {"net." + k: v for k, v in model.state_dict().items()}, "optimizer_states": [], "callbacks": {}}, ckpt)
    dep.release = ckpt
    failed = dep.failed()
    assert "release-artefact" in failed and "artefact-integrity" not in failed
    assert "privacy-budget" in failed  # no DP ledger in it: no ε


def test_bad_arguments_are_one_line(dep, capsys):
    from secure_ml.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["preflight", "--model", str(dep.release)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("secure-ml: error: secure-ml preflight:") and "--serve-config" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "flag, value, words",
    [
        ("--max-epsilon", "nan", "must be a finite number > 0"),
        ("--max-delta", "nan", "must be in (0, 1)"),
        ("--max-false-positive-rate", "nan", "must be in (0, 1)"),
        # a rate, not a percentage: 5 (meaning 5 %) passed any policy ("limit 500.00%"); a δ of 2 guarantees nothing
        ("--max-false-positive-rate", "5", "must be in (0, 1); got 5.0"),
        ("--max-delta", "2", "must be in (0, 1); got 2.0"),
    ],
)
def test_a_budget_out_of_range_is_refused_not_passed(dep, flag, value, words, capsys):
    """NaN compares false: "ε > nan" was never true, so the privacy-budget item passed any model (from a review)."""
    from secure_ml.cli import main

    dep.extra.extend([flag, value])
    with pytest.raises(SystemExit) as exc:
        main(["preflight", *dep.argv()])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and f"{flag} {words}" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "text", ["a: [\n", "- 1\n", "scorecard: [1]\n", "scorecard:\n  gates: [1]\n"], ids=["yaml", "list", "section", "gates"]
)
def test_a_malformed_gates_file_is_one_line(dep, text, capsys):
    from secure_ml.cli import main

    (dep.tmp / "bad-gates.yaml").write_text(text)
    argv = dep.argv()
    argv[argv.index("--gates") + 1] = str(dep.tmp / "bad-gates.yaml")
    with pytest.raises(SystemExit) as exc:
        main(["preflight", *argv])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "--gates" in err and len(err.splitlines()) == 1, err


def test_a_malformed_metrics_file_fails_its_item(dep):
    dep.metrics["gates"] = "abc"  # was an AttributeError traceback
    assert dep.failed() == {"security-gates"}
    dep.metrics["gates"] = [{"passed": False}]  # a recorded gate without its name
    assert dep.failed() == {"security-gates"}


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda p: p.pop("epsilon"), "manifest privacy.epsilon must be a number >= 0"),
        (lambda p: p.update(epsilon="low"), "manifest privacy.epsilon must be a number >= 0"),
        (lambda p: p.update(delta=None), "manifest privacy.delta must be a number in (0, 1)"),
        (lambda p: p.update(dp="yes"), "manifest privacy.dp must be true or false"),
    ],
)
def test_a_ledger_without_numeric_epsilon_fails_its_items_not_preflight(dep, edit, words, capsys):
    """From a review: preflight died with a raw KeyError/ValueError (no checklist at all) on such a manifest."""
    assert dep.failed() == set()  # the control: the untouched release passes
    manifest = json.loads((dep.release / "manifest.json").read_text())
    edit(manifest["privacy"])
    (dep.release / "manifest.json").write_text(json.dumps(manifest))
    assert {"artefact-integrity", "privacy-budget"} <= dep.failed()
    preflight_main(dep.argv())
    out = capsys.readouterr().out
    assert words in out and "Traceback" not in out


def test_the_serve_config_is_read_by_serves_own_reader(dep):
    """A serve.yaml that ``secure-ml serve`` refuses fails ``serve-config`` with serve's own sentence (preflight had a copy
    of the reader whose unknown-option message did not list the known options)."""
    from secure_ml.errors import ConfigError
    from secure_ml.preflight.deployment import inspect
    from secure_ml.serving.config_loading import load_serve_config

    dep.serve["rate_limit"] = {"per_secnod": 5}
    dep.argv()
    with pytest.raises(ConfigError) as served:
        load_serve_config(str(dep.tmp / "serve.yaml"))
    assert "unknown option rate_limit.per_secnod (known: " in str(served.value)
    assert inspect(str(dep.tmp / "serve.yaml"), str(dep.release)).problems["config"] == str(served.value)
    assert "serve-config" in dep.failed()


def test_a_forever_block_kept_in_a_block_file_passes(dep):
    """``block_seconds: 0`` under memory:// fails (a restart lifts it) unless ``extraction.block_file`` keeps the blocks."""
    dep.serve["extraction"] = {"block_seconds": 0.0}
    assert dep.failed() == {"extraction-detector"}
    dep.serve["extraction"]["block_file"] = str(dep.tmp / "logs" / "blocks.jsonl")
    assert dep.failed() == set()


def test_a_block_file_serve_would_refuse_fails_the_item(dep):
    """preflight passed a block file in a missing folder, and serve then refused to start on it."""
    dep.serve["extraction"] = {"block_file": str(dep.tmp / "missing" / "blocks.jsonl")}
    assert dep.failed() == {"extraction-detector"}
    (dep.tmp / "dir.jsonl").mkdir()
    dep.serve["extraction"] = {"block_file": str(dep.tmp / "dir.jsonl")}
    assert dep.failed() == {"extraction-detector"}
