"""Bad input found by probing the commands (2026-12-04), each now one line naming its flag. Before: a seed numpy
refuses ended fit and every sweep point in Lightning's ValueError traceback, isolation_forest's seed -1 in
scikit-learn's, a one-digit sponge calibration reported a false-positive rate of 0 (the test then rejected every
clean digit), and ``test``/``validate``/``predict`` without ``--ckpt_path`` scored a freshly initialised net, exit 0."""

import pytest
import torch

import secure_ml.train_cli  # noqa: F401 (Lightning binds its log handler at import: now, not to a test's captured stderr)
from secure_ml.callbacks.sponge import SpongeCallback
from secure_ml.cli import main
from secure_ml.cli_errors import SEED_MAX, check_seed
from secure_ml.data.sanitization import SanitizerConfig
from secure_ml.defenses.calibration import leave_one_out_rejected
from secure_ml.errors import ConfigError
from tests.helpers.data import smoke_args


def test_the_weaknesses_are_real():
    """Negative controls: what the checks stand in front of."""
    from lightning.pytorch import seed_everything
    from sklearn.ensemble import IsolationForest

    with pytest.raises(ValueError, match="not in bounds"):
        seed_everything(-1)
    with pytest.raises(ValueError, match="random_state"):
        IsolationForest(random_state=-1).fit([[0.0], [1.0]])
    assert not leave_one_out_rejected({"energy": torch.tensor([5.0])}, ("energy",), 0).any()  # one digit: "nothing rejected"


@pytest.mark.parametrize("seed, ok", [(0, True), (SEED_MAX, True), (-1, False), (SEED_MAX + 1, False), (True, True), (None, True)])
def test_check_seed(seed, ok):
    if ok:
        check_seed(seed, "--seed_everything")
    else:
        with pytest.raises(ConfigError, match=rf"^--seed_everything must be in 0..{SEED_MAX} .*got {seed}$"):
            check_seed(seed, "--seed_everything")


def test_sanitizer_seed_and_sponge_calibration_size_are_checked():
    with pytest.raises(ConfigError, match=r"^--data.sanitizer.seed must be in 0..4294967295 \(the seeds numpy accepts\); got -1$"):
        SanitizerConfig(method="isolation_forest", seed=-1)
    with pytest.raises(ConfigError, match=r"^--sponge.calibration_samples must be >= 2; got 1$"):
        SpongeCallback(calibration_samples=1)
    SpongeCallback(calibration_samples=2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, start",
    [
        (["test"], "secure-ml test needs --ckpt_path"),
        (["validate"], "secure-ml validate needs --ckpt_path"),
        (["predict"], "secure-ml predict needs --ckpt_path"),
        (["fit", "--seed_everything", "-1"], "--seed_everything must be in 0..4294967295"),
        (["fit", "--model.net.init_args.num_classes", "-1"], "--model.net.init_args.num_classes (SmallCNN) must be >= 1"),
    ],
)
def test_the_cli_refuses_in_one_line(tiny_mnist, tmp_path, monkeypatch, capsys, argv, start):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([argv[0], *smoke_args(tiny_mnist), *argv[1:]])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("secure-ml: error:")]
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("secure-ml: error: " + start), err
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("*.ckpt"))


def test_sweep_refuses_a_seed_numpy_refuses(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--config", "configs/sweeps/does-not-matter.yaml", "--seed", "-5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err == ["secure-ml: error: --seed must be in 0..4294967295 (the seeds numpy accepts); got -5"], err


def test_settings_errors_name_their_flag():
    """They named the class (``RobustnessCallback batch_size must be >= 1``), or, for SmallCNN's num_classes, nothing:
    jsonargparse's "Does not validate against any of the Union subtypes"."""
    from secure_ml.callbacks import MembershipInferenceCallback, OneRunAuditCallback, ReferenceMIACallback, RobustnessCallback
    from secure_ml.models import SmallCNN, TanhCNN

    for build, flag in (
        (lambda: SmallCNN(num_classes=-1), "--model.net.init_args.num_classes (SmallCNN)"),
        (lambda: TanhCNN(hidden=0), "--model.net.init_args.hidden (TanhCNN)"),
        (lambda: TanhCNN(activation="gelu"), "--model.net.init_args.activation (TanhCNN)"),
        (lambda: RobustnessCallback(batch_size=0), "--robustness.batch_size"),
        (lambda: RobustnessCallback(epsilons=[2.0]), "--robustness.epsilons"),
        (lambda: MembershipInferenceCallback(delta=2.0), "--membership.delta"),
        (lambda: ReferenceMIACallback(steps=0), "--reference_mia.steps"),
        (lambda: OneRunAuditCallback(every_n_epochs=0), "--audit.every_n_epochs"),
    ):
        with pytest.raises(ConfigError) as exc:
            build()
        assert str(exc.value).startswith(flag), str(exc.value)


@pytest.mark.parametrize(
    "make, kwargs",
    [
        ("SmallCNN", {}),
        ("SmallCNN", {"num_classes": 3}),
        ("TanhCNN", {}),
        ("TanhCNN", {"conv1_channels": 5, "conv2_channels": 7, "hidden": 11, "num_classes": 4}),
    ],
)
def test_the_size_limit_counts_every_parameter(monkeypatch, make, kwargs):
    """The limit's count is the net's: at its exact parameter count the net builds, one below it is refused."""
    import secure_ml.models as models
    import secure_ml.models.small_cnn as small_cnn

    cls = getattr(models, make)
    count = sum(p.numel() for p in cls(**kwargs).parameters())
    monkeypatch.setattr(small_cnn, "MAX_PARAMETERS", count)
    cls(**kwargs)
    monkeypatch.setattr(small_cnn, "MAX_PARAMETERS", count - 1)
    with pytest.raises(ConfigError, match=rf"^--model.net.init_args \({make}\) would have {count:,} parameters"):
        cls(**kwargs)


def test_widths_no_machine_holds_are_refused_before_allocating():
    """``hidden 1e10`` reached the user as jsonargparse's "Does not validate against any of the Union subtypes" (torch's
    allocation error inside its Union adaptation)."""
    from secure_ml.models import SmallCNN, TanhCNN

    with pytest.raises(ConfigError, match=r"^--model.net.init_args \(TanhCNN\) would have 5,230,000,009,274 parameters"):
        TanhCNN(hidden=10**10)
    with pytest.raises(ConfigError, match=r"^--model.net.init_args \(SmallCNN\) would have"):
        SmallCNN(num_classes=10**8)


def test_a_sweep_seed_whose_repeats_leave_the_range_is_refused_before_it_starts(tmp_path):
    """Repeat r runs with ``--seed`` + r: ``--seed 4294967295`` and two repeats failed in the second repeat's every point."""
    from pathlib import Path

    from secure_ml.sweep.plan import SweepOptions, make_plan

    config = str(Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "ablation-cpu.yaml")
    make_plan(SweepOptions(config=config, repeats=1, seed=SEED_MAX, out=str(tmp_path)))  # one repeat: the seed itself
    with pytest.raises(ConfigError, match=r"^--seed plus the 2 repeats \(seed \+ repeat\) must be in 0..4294967295 .*got 4294967296$"):
        make_plan(SweepOptions(config=config, repeats=2, seed=SEED_MAX, out=str(tmp_path)))
