"""A fit stopped from outside (SIGTERM, Ctrl-C) says so, exits non-zero, and leaves checkpoints whose ε is right."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from secure_ml.cli import main
from secure_ml.privacy.ledger import ledger_from_checkpoint
from tests.helpers.data import smoke_args
from tests.helpers.signals import StopAtEpochStart
from tests.test_dp_lifecycle import K, LogEpochScore, _dm, _eps, _model, _trainer


@pytest.mark.slow
def test_a_fit_stopped_at_an_epoch_boundary_leaves_the_selected_file_paying_for_its_selection(tiny_mnist, tmp_path):
    """The best file (epoch 0) was compared with epoch 1's model before the stop: its ε must cover 2K steps, not K."""
    best_cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="sel/score", mode="max", filename="best", save_on_train_epoch_end=True)
    trainer = _trainer(tmp_path, epochs=3, callbacks=[LogEpochScore(), StopAtEpochStart(2), best_cb], enable_checkpointing=True)
    with pytest.raises(SIGTERMException):
        trainer.fit(_model(), _dm(tiny_mnist))
    ledger = ledger_from_checkpoint(torch.load(best_cb.best_model_path, weights_only=True))
    assert ledger["steps"] == K and ledger["selection_steps"] == 2 * K
    assert ledger["epsilon"] == pytest.approx(_eps(2 * K), rel=1e-6)


@pytest.mark.slow
def test_sigterm_stops_fit_with_one_line_and_exit_143(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = smoke_args(tiny_mnist, "--data.batch_size", "32", "--trainer.max_epochs", "3")
    with pytest.raises(SystemExit) as exc:
        main(["fit", *common, "--trainer.callbacks+=tests.helpers.signals.SigtermAtEpochEnd"])
    assert exc.value.code == 143  # it exited 0, as a finished fit does
    last = "lightning_logs/version_0/checkpoints/last.ckpt"
    err = capsys.readouterr().err
    assert f"secure-ml: error: fit stopped by SIGTERM after 1 complete epoch (step 12); resume with --ckpt_path {last}" in err
    assert torch.load(tmp_path / last, weights_only=True)["epoch"] == 0


@pytest.mark.slow
def test_sigterm_in_a_test_names_what_finished_and_what_to_run(tiny_mnist, tmp_path, monkeypatch, capsys):
    """From reviews. (1) A SIGTERM during --test_after_fit's test read as a stopped fit ("resume with --ckpt_path"),
    which trains nothing and writes no report: it now names the test to run. (2) A SIGTERM during the test's last hooks
    (the scorecard's attacks), where Lightning does not look, exited 0 as if none had come: it exits 143, after the
    report it finished. (3) One in the fit's last hook (on_fit_end, where Lightning no longer watches) killed the
    process without a word: it now exits 143 without starting the --test_after_fit test. (4) One at the last epoch's
    end read as a fit to resume, which would train nothing: it names the test to run."""
    monkeypatch.chdir(tmp_path)
    off = ["--robustness.enabled", "false", "--sponge.enabled", "false", "--membership.enabled", "false"]
    common = smoke_args(tiny_mnist, "--data.batch_size", "32", *off, "--reference_mia.enabled", "false", sizes=(500, 100, 200))
    run = "lightning_logs/version_0"  # the test set is two batches: a SIGTERM after the first stops the test
    with pytest.raises(SystemExit) as exc:
        main(["fit", *common, "--test_after_fit", "true", "--trainer.callbacks+=tests.helpers.signals.SigtermAtTestBatch"])
    assert exc.value.code == 143
    err = capsys.readouterr().err
    test_it = f"`secure-ml test --config {run}/config.yaml --ckpt_path {run}/checkpoints/last.ckpt`"
    assert "error: fit finished, but its --test_after_fit test was stopped by SIGTERM before it finished and no report" in err
    assert test_it in err and not (tmp_path / run / "metrics.json").exists()

    with pytest.raises(SystemExit) as exc:
        signal = "--trainer.callbacks+=tests.helpers.signals.SigtermAtTestEpochEnd"
        main(["test", *common, signal, "--ckpt_path", f"{run}/checkpoints/last.ckpt"])
    assert exc.value.code == 143  # it was 0
    assert "error: test received SIGTERM during its last hooks and finished them first" in capsys.readouterr().err
    assert (tmp_path / "lightning_logs" / "version_1" / "metrics.json").is_file()  # what it finished is kept

    with pytest.raises(SystemExit) as exc:
        main(["fit", *common, "--test_after_fit", "true", "--trainer.callbacks+=tests.helpers.signals.SigtermAtFitEnd"])
    assert exc.value.code == 143  # it was -15: killed in on_fit_end without a line
    assert "error: fit finished (SIGTERM came during its last hooks), so its --test_after_fit test was not started" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "lightning_logs" / "version_2" / "metrics.json").exists()

    with pytest.raises(SystemExit) as exc:  # at the last epoch's end Lightning stops as after any epoch: nothing to resume
        main(["fit", *common, "--test_after_fit", "true", "--trainer.callbacks+=tests.helpers.signals.SigtermAtEpochEnd"])
    assert exc.value.code == 143
    run = "lightning_logs/version_3"
    err = capsys.readouterr().err
    assert (
        "error: fit trained to its end (step 12, 1 complete epoch) and was stopped by SIGTERM after it, so its --test_after_fit test" in err
    )
    assert f"`secure-ml test --config {run}/config.yaml --ckpt_path {run}/checkpoints/last.ckpt`" in err and "resume" not in err


@pytest.mark.slow
def test_sigterm_before_lightning_watches_stops_the_fit_and_a_host_handler_still_runs(tiny_mnist, tmp_path, monkeypatch, capsys):
    """From a review of the CLI's own SIGTERM handler. (1) A SIGTERM in setup (before Lightning watches, and it resets
    its flag when its stage starts) was noted and forgotten: all epochs trained. It now stops the fit at the stage's
    start. (2) A host process's own handler (``cli_main`` from Python) is still called, and restored afterwards.
    (3) A fit that early stopping had ended is not offered a resume that would train what the stop ruled out."""
    import signal

    monkeypatch.chdir(tmp_path)
    off = ["--robustness.enabled", "false", "--sponge.enabled", "false", "--membership.enabled", "false"]
    common = smoke_args(tiny_mnist, "--data.batch_size", "32", *off, "--reference_mia.enabled", "false")
    calls = []

    def host_handler(signum, frame):
        calls.append(signum)

    host = signal.signal(signal.SIGTERM, host_handler)
    try:
        with pytest.raises(SystemExit) as exc:
            main(["fit", *common, "--trainer.max_epochs", "3", "--trainer.callbacks+=tests.helpers.signals.SigtermAtSetup"])
        assert exc.value.code == 143
        assert "error: fit stopped by SIGTERM after 0 complete epochs (step 0); it had saved no checkpoint yet" in capsys.readouterr().err
        assert not list(tmp_path.glob("lightning_logs/version_0/checkpoints/*.ckpt"))  # it used to train all three epochs
        assert calls == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is host_handler  # called, and put back

        with pytest.raises(SystemExit) as exc:
            main(["fit", *common, "--trainer.max_epochs", "3", "--trainer.callbacks+=tests.helpers.signals.StopEarlyWithSigterm"])
        assert exc.value.code == 143
        err = capsys.readouterr().err
        assert "error: fit trained to its end (step 12, 1 complete epoch) and was stopped by SIGTERM after it" in err
        assert "nothing to resume" in err and "resume with" not in err
        assert calls == [signal.SIGTERM, signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is host_handler
    finally:
        signal.signal(signal.SIGTERM, host)
