"""`--ckpt_path` with `--model.*` flags typed on the command line: before, Lightning's re-parse of the checkpoint's
hyper-parameters dropped them without a word (ε reported at the checkpoint's δ, a resume at the old σ, DP kept on)."""

import json

import pytest
import torch
from jsonargparse import Namespace

from secure_ml.ckpt_hparams import reconcile, typed_model_flags
from secure_ml.cli import main
from secure_ml.errors import ConfigError
from secure_ml.privacy.ledger import ledger_from_checkpoint
from tests.helpers.data import smoke_args


def test_typed_flags_are_read_from_the_command_line():
    argv = ["test", "--config", "a.yaml", "--model.dp.delta", "1e-7", "--model.net.init_args.std=0.3", "--data.batch_size", "8"]
    assert typed_model_flags(argv) == ["model.dp.delta", "model.net.init_args.std"]


def _config(delta=1e-5, sigma=1.0):
    return Namespace(model=Namespace(dp=Namespace(delta=delta, noise_multiplier=sigma, enabled=True)))


def test_delta_from_the_command_line_wins_and_other_differences_are_refused():
    after = _config()
    reconcile(_config(delta=1e-7), after, ["model.dp.delta"])
    assert after["model.dp.delta"] == 1e-7
    reconcile(_config(sigma=1.0), _config(sigma=1.0), ["model.dp.noise_multiplier"])  # equal: nothing to say
    with pytest.raises(ConfigError, match=r"^--model.dp.noise_multiplier 3.0 differs from the checkpoint's 1.0"):
        reconcile(_config(sigma=3.0), _config(sigma=1.0), ["model.dp.noise_multiplier"])
    reconcile(_config(sigma=3.0), _config(sigma=1.0), [])  # control: from a config file (not typed), the checkpoint's wins


@pytest.mark.slow
def test_typed_flags_against_a_dp_checkpoint_end_to_end(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = smoke_args(tiny_mnist, "--data.batch_size", "32", "--robustness.enabled", "false", "--sponge.enabled", "false")
    common += ["--membership.enabled", "false", "--reference_mia.enabled", "false"]
    main(["fit", *common])
    ckpt = str(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    main(["test", *common, "--ckpt_path", ckpt, "--model.dp.delta", "1e-7"])
    reported = json.loads((tmp_path / "lightning_logs" / "version_1" / "metrics.json").read_text())["test"]["privacy/epsilon"]
    assert reported == pytest.approx(ledger_from_checkpoint(saved, 1e-7)["epsilon"], rel=1e-6)
    assert reported > ledger_from_checkpoint(saved, 1e-5)["epsilon"] * 1.05  # a smaller δ costs ε: the flag was not dropped
    for flag, value in (("--model.dp.noise_multiplier", "3.0"), ("--model.dp.enabled", "false")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", ckpt, flag, value])
        err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("INFO: ")]
        assert exc.value.code == 2 and len(err) == 1, err  # one line (Lightning's INFO lines on the seed aside)
        assert err[0].startswith(f"secure-ml: error: {flag}") and "differs from the checkpoint's" in err[0]
