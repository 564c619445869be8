"""The per-epoch security callbacks inside real fit / validate / test runs, the report files and the gates."""

import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from secure_ml.adversarial import AdversarialConfig
from secure_ml.attacks.autoattack import AutoAttackConfig
from secure_ml.callbacks import MembershipInferenceCallback, PrivacyBudget, RobustnessCallback, Scorecard, SpongeCallback
from secure_ml.cli import main
from secure_ml.data import MNISTDataModule
from secure_ml.errors import ConfigError
from secure_ml.module import SecureClassifier
from secure_ml.privacy.config import DPConfig
from secure_ml.report.gates import check_gates, parse_gates
from tests.helpers.data import smoke_args

REPO = Path(__file__).resolve().parents[1]
NAMES = [
    "adv/fgsm_acc@0.0308",
    "adv/fgsm_acc@0.1",
    "adv/pgd_acc@0.1",
    "mia/auc",
    "mia/loss_auc",
    "mia/tpr@1%fpr",
    "mia/advantage",
    "privacy/epsilon_lower_bound",
    "sponge/reject_rate",
    "sponge/reject_rate_gaussian",
    "sponge/reject_rate_crafted",
    "sponge/false_positive_rate",
    "sponge/energy_ratio",
]


def _callbacks(**scorecard):
    return [
        RobustnessCallback(
            max_samples=64, pgd_max_samples=32, pgd_steps=3, autoattack=AutoAttackConfig(steps=5, target_classes=2, square_queries=50)
        ),
        MembershipInferenceCallback(max_samples=100),
        SpongeCallback(n_sponges=8, craft_steps=10, calibration_samples=50, max_samples=50),
        Scorecard(**scorecard),
    ]


def _dm(root, dp=False):
    return MNISTDataModule(
        data_dir=str(root), download=False, train_size=500, val_size=100, test_size=100, batch_size=32, poisson_sampling=dp, sampling_seed=0
    )


def _trainer(tmp_path, callbacks, epochs=1, inference_mode=False, logger=False):
    return Trainer(
        max_epochs=epochs,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=logger,
        callbacks=callbacks,
        inference_mode=inference_mode,
    )


@pytest.mark.slow
@pytest.mark.parametrize("dp", [False, True], ids=["plain", "opacus"])
def test_callbacks_log_every_name_in_fit_validate_and_test(tiny_mnist, tmp_path, dp):
    model = SecureClassifier(adversarial=AdversarialConfig(epsilon=0.03), dp=DPConfig(enabled=dp, noise_seed=0))
    dm = _dm(tiny_mnist, dp)
    trainer = _trainer(tmp_path, _callbacks())
    trainer.fit(model, dm)
    for name in NAMES:
        assert name in trainer.callback_metrics, name
    assert all(getattr(p, "grad_sample", None) is None for p in model.net.parameters())
    # validate/test entry points, also under Lightning's default inference_mode=True
    for inference_mode in (False, True):
        t = _trainer(tmp_path, _callbacks(), inference_mode=inference_mode)
        t.validate(model, dm)
        assert "adv/pgd_acc@0.1" in t.callback_metrics and "sponge/reject_rate" in t.callback_metrics
        t.test(model, dm)
        assert "mia/auc" in t.callback_metrics and "test/acc" in t.callback_metrics
        assert "adv/autoattack_acc@0.1" in t.callback_metrics  # AutoAttack runs in test (on every test digit), not per epoch
    assert all(0.0 <= float(trainer.callback_metrics[n]) <= 1.0 for n in NAMES if "ratio" not in n and "epsilon" not in n)


@pytest.mark.slow
def test_fgsm_accuracy_falls_as_epsilon_grows(tiny_mnist, tmp_path):
    model = SecureClassifier()
    dm = _dm(tiny_mnist)
    _trainer(tmp_path, [], epochs=4).fit(model, dm)
    model.eval()
    cb = RobustnessCallback(epsilons=[0.02, 0.1, 0.3], pgd_epsilon=0.3, pgd_steps=10, max_samples=100)
    trainer = _trainer(tmp_path, [cb])
    trainer.validate(model, dm)  # attaches the trainer
    out = cb.evaluate(model, "val")
    accs = [out["adv/clean_acc"], out["adv/fgsm_acc@0.02"], out["adv/fgsm_acc@0.1"], out["adv/fgsm_acc@0.3"]]
    assert accs[0] > 0.9
    assert all(a >= b for a, b in itertools.pairwise(accs)) and accs[-1] < accs[0] - 0.3
    assert out["adv/pgd_acc@0.3"] <= out["adv/fgsm_acc@0.3"]


@pytest.mark.slow
def test_empirical_lower_bound_never_exceeds_accountant_epsilon(tiny_mnist, tmp_path):
    from secure_ml.privacy.threshold_audit import threshold_epsilon_lower_bound

    model = SecureClassifier(dp=DPConfig(enabled=True, noise_multiplier=3.0, noise_seed=0))
    trainer = _trainer(tmp_path, [MembershipInferenceCallback(max_samples=100)], epochs=3)
    trainer.fit(model, _dm(tiny_mnist, dp=True))
    lb, eps = float(trainer.callback_metrics["privacy/epsilon_lower_bound"]), float(trainer.callback_metrics["privacy/epsilon"])
    assert 0.0 <= lb <= eps
    # The check can fail: with 100 + 100 samples a perfect attack would certify more than this ε.
    perfect = threshold_epsilon_lower_bound(torch.ones(100), torch.zeros(100), delta=1e-5).epsilon_lb
    assert perfect > eps


@pytest.mark.slow
def test_privacy_budget_stops_before_epsilon_passes_it(tiny_mnist, tmp_path):
    model = SecureClassifier(dp=DPConfig(enabled=True, noise_seed=0))
    trainer = _trainer(tmp_path, [PrivacyBudget(max_epsilon=4.0)], epochs=20)
    trainer.fit(model, _dm(tiny_mnist, dp=True))
    eps = model.private.epsilon(1e-5)
    assert eps <= 4.0 and model.private.steps < 20 * 13
    over = model.private.accountant
    over.history = list(over.history) + [(1.0, model.private.sample_rate, 1)]
    assert over.get_epsilon(1e-5) > 4.0  # one more step would have passed the budget
    with pytest.raises(ConfigError, match="DP run"):
        _trainer(tmp_path, [PrivacyBudget(1.0)]).fit(SecureClassifier(), _dm(tiny_mnist))
    # a fresh run whose first step alone passes the budget: said so (it read "already spent (ε before training: None)")
    with pytest.raises(ConfigError, match=r"max_epsilon 0.1 is below the ε of one more step \(\d"):
        _trainer(tmp_path, [PrivacyBudget(0.1)]).fit(SecureClassifier(dp=DPConfig(enabled=True, noise_seed=0)), _dm(tiny_mnist, dp=True))
    # the resumed model has spent ~4: a budget below it is "already spent"
    with pytest.raises(ConfigError, match=r"max_epsilon 2.0 is already spent \(ε before training: [34]"):
        _trainer(tmp_path, [PrivacyBudget(2.0)], epochs=21).fit(model, _dm(tiny_mnist, dp=True))


@pytest.mark.slow
def test_dashboard_and_hparams_in_tensorboard_and_policy_in_checkpoint(tiny_mnist, tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    cbs = _callbacks(figure_every_n_epochs=1)  # the default draws it once, at the end of fit (tests/test_callback_cost.py)
    trainer = _trainer(tmp_path, cbs, epochs=2, logger=logger)
    trainer.fit(SecureClassifier(), _dm(tiny_mnist))
    ea = EventAccumulator(logger.log_dir)
    ea.Reload()
    assert "scorecard/dashboard" in ea.Tags()["images"] and len(ea.Images("scorecard/dashboard")) == 2
    assert "_hparams_/session_start_info" in ea.PluginTagToContent("hparams")
    assert [h["epoch"] for h in cbs[-1].history] == [0, 1]
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    state = torch.load(tmp_path / "c.ckpt", weights_only=True)["callbacks"]
    assert state["SpongeCallback"]["policy"]["max_energy"] > 0
    assert [h["epoch"] for h in state["Scorecard"]["history"]] == [0, 1]


def test_gates_parse_and_check():
    gates = parse_gates({"mia/auc": "<= 0.55", "adv/fgsm_acc@0.1": ">= 0.8"})
    assert check_gates(gates, {"mia/auc": 0.5, "adv/fgsm_acc@0.1": 0.9}) == []
    failures = check_gates(gates, {"mia/auc": 0.6})
    assert len(failures) == 2 and "mia/auc <= 0.55" in failures[0] and "not measured" in failures[1]
    with pytest.raises(ConfigError, match="mia/auc"):
        parse_gates({"mia/auc": "about 0.5"})


def _delta_with_gates(tmp_path, gates) -> Path:
    """A delta config that holds only the gates (the Scorecard is a CLI key, so nothing else is repeated)."""
    path = tmp_path / "gates.yaml"
    path.write_text(yaml.safe_dump({"scorecard": {"gates": gates}}))
    return path


@pytest.mark.slow
def test_secure_ml_test_writes_report_and_gates_fail_the_exit(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = smoke_args(tiny_mnist, "--data.batch_size", "32")
    main(["fit", *common])
    ckpt = str(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    main(["test", *common, "--config", str(_delta_with_gates(tmp_path, {"mia/auc": "<= 1.0"})), "--ckpt_path", ckpt])
    report = tmp_path / "lightning_logs" / "version_1"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["gates"] == [{"gate": "mia/auc <= 1", "passed": True}]
    assert {"test/acc", "adv/fgsm_acc@0.1", "mia/auc", "sponge/reject_rate", "privacy/epsilon"} <= set(metrics["test"])
    assert [h["epoch"] for h in metrics["history"]] == [0]
    # the tested weights' digest is the one `secure-ml export` puts in the manifest (preflight ties report and artefact by it)
    from secure_ml.release.cli import export_checkpoint

    assert metrics["weights_sha256"] == export_checkpoint(ckpt, str(tmp_path / "release")).manifest["weights"]["sha256"]
    assert (report / "dashboard.png").stat().st_size > 10_000
    assert "Membership-inference AUC" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["test", *common, "--config", str(_delta_with_gates(tmp_path, {"test/acc": ">= 1.01"})), "--ckpt_path", ckpt])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "security gate failed" in err and "test/acc >= 1.01" in err
    assert (tmp_path / "lightning_logs" / "version_2" / "metrics.json").exists()  # the report is written before failing
    # configs/gates.yaml itself: only gates, stacked on the capstone; the base's callbacks and their arguments stay.
    with pytest.raises(SystemExit) as exc:
        main(["test", *common, "--config", str(REPO / "configs" / "gates.yaml"), "--ckpt_path", ckpt])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "security gate failed" in err and "adv/fgsm_acc@0.1 >= 0.8" in err
    report = json.loads((tmp_path / "lightning_logs" / "version_3" / "metrics.json").read_text())
    assert {g["gate"] for g in report["gates"]} == {
        "mia/auc <= 0.55",
        "privacy/epsilon <= 3",
        "adv/fgsm_acc@0.1 >= 0.8",
        "sponge/reject_rate >= 0.9",
        "sponge/false_positive_rate <= 0.02",
    }
    assert {"adv/fgsm_acc@0.0308", "adv/pgd_acc@0.1"} <= set(report["test"])  # RobustnessCallback kept the base's epsilons
