"""The collector's pause during the CLI's start-up (:mod:`secure_ml.startup_gc`)."""

import gc

import pytest

from secure_ml import startup_gc


@pytest.fixture
def collector():
    was = gc.isenabled()
    yield
    startup_gc._paused = False
    gc.unfreeze()
    (gc.enable if was else gc.disable)()


def test_pause_then_resume_freezes_and_switches_the_collector_back_on(collector):
    gc.enable()
    gc.unfreeze()
    startup_gc.pause()
    assert not gc.isenabled()
    startup_gc.resume()
    assert gc.isenabled() and gc.get_freeze_count() > 0
    gc.unfreeze()
    startup_gc.resume()  # twice: nothing more
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_resume_without_pause_leaves_a_callers_collector_alone(collector):
    gc.disable()  # a host process that runs without the collector
    startup_gc.resume()
    assert not gc.isenabled() and gc.get_freeze_count() == 0


def test_the_environment_switches_it_off(collector, monkeypatch):
    monkeypatch.setenv("SECURE_ML_GC_PAUSE", "0")
    gc.enable()
    startup_gc.pause()
    assert gc.isenabled()


def test_main_from_python_does_not_pause(collector, monkeypatch):
    """``main(args)`` from a caller's process (tests, notebooks) keeps its collector as it is, even when the command fails."""
    from secure_ml.cli import main

    gc.enable()
    seen = []
    monkeypatch.setattr("secure_ml.cli._train", lambda argv: seen.append(gc.isenabled()) or 0)
    main(["fit", "--print_config"])
    assert seen == [True] and gc.isenabled()


def test_the_command_line_pauses_until_the_run_and_resumes_even_when_it_fails(collector, monkeypatch):
    import sys

    from secure_ml.cli import main
    from secure_ml.errors import ConfigError

    def failing(argv):
        seen.append(gc.isenabled())
        raise ConfigError("refused before the classes were built")

    gc.enable()
    seen = []
    monkeypatch.setenv("SECURE_ML_PREFETCH", "0")
    monkeypatch.setattr(sys, "argv", ["secure-ml", "fit"])
    monkeypatch.setattr("secure_ml.cli._train", failing)
    with pytest.raises(SystemExit):
        main()
    assert seen == [False] and gc.isenabled()
