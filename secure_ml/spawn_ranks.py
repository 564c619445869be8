"""Runs under Lightning's multiprocessing launcher (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``) end the way ``ddp``
runs do (CLI layer).

There the ranks are child processes of the CLI, which only waits for them, and torch hands it a rank's exception as the
*text* of its traceback. So a refusal inside a rank (a ConfigError in setup, a failed gate) printed ~80 lines of
``ProcessRaisedException`` and exited 1 instead of the one ``secure-ml: error:`` line and exit 2; and a SIGTERM to the
CLI reached no rank (the whole fit trained on), while one that reached a rank hung the CLI for good: Lightning's
``SIGTERMException`` is a ``SystemExit``, which torch's wrapper lets through, so rank 0 exited without its result and the
launcher waited on it forever.

:func:`use_rank_launcher` puts in :class:`RankLauncher`, whose ranks turn that stop into :class:`Stopped` with the message
a ``ddp`` run prints; the CLI forwards its SIGTERM to the ranks (``launcher.kill``), and :func:`rank_error` rebuilds a
rank's SecureMLError (message and exit status) from the traceback text.
"""

import functools
import importlib
import os
from contextlib import contextmanager
from typing import Iterator

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException

from secure_ml.errors import ConfigError, SecureMLError, Stopped
from secure_ml.run_checkpoints import stopped_message


class RankLauncher(_MultiProcessingLauncher):
    """Lightning's multiprocessing launcher whose ranks report a SIGTERM stop as :class:`Stopped` (an ordinary exception,
    which torch passes to the CLI) instead of exiting without a result. ``run`` is ``(subcommand, test_after_fit)``."""

    run = ("fit", False)
    watch = None  # the CLI's SigtermWatch (main process only: not pickled into the ranks)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "watch": None}  # Lightning's drops the processes of an earlier launch

    def launch(self, function, *args, trainer=None, **kwargs):
        if self.watch is not None and self.watch.came:  # before the ranks exist: they would never see it
            raise SIGTERMException
        return super().launch(function, *args, trainer=trainer, **kwargs)

    def _wrapping_function(self, process_idx, trainer, function, args, kwargs, return_queue, global_states=None) -> None:
        if trainer is not None:
            connector = trainer._signal_connector
            # registered at the stage's start; the CLI is this rank's parent (spawn and fork alike)
            connector._sigterm_notifier_fn = functools.partial(_note_sigterm, connector, os.getppid())
        try:
            super()._wrapping_function(process_idx, trainer, function, args, kwargs, return_queue, global_states)
        except SIGTERMException:
            if process_idx != 0:  # rank 0 reports; the CLI then waits for it alone
                return
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()  # the message reads the run's folder without a collective
            raise Stopped(stopped_message(trainer, *self.run)) from None


def _note_sigterm(connector, cli_pid: int, signum, frame) -> None:
    """A rank's SIGTERM handler in place of Lightning's. Lightning's runs a collective inside the signal handler, which
    pairs with whatever collective the other rank is in (a gradient all-reduce): with the signal forwarded to every rank
    the fit hung. And every rank stops at the end of a batch on its own flag, so a rank that alone got the signal
    stopped alone, and the others died on a closed connection. Here only rank 0 notes it (the training loop broadcasts
    rank 0's flag before every batch, so all ranks stop at the same one), and every rank passes it on to the CLI, which
    forwards its first SIGTERM to every rank and reports it even when it came in hooks where no loop looks."""
    if connector.trainer.global_rank == 0:
        connector.received_sigterm = True
    if os.getppid() == cli_pid:  # the CLI also hears it (a stop in hooks no loop watches still exits 143); orphaned: no one
        os.kill(cli_pid, signum)


def use_rank_launcher(trainer, watch, subcommand: str, test_after_fit: bool) -> None:
    """Under Lightning's multiprocessing launcher: put :class:`RankLauncher` in its place and have ``watch`` (the CLI's
    :class:`~secure_ml.sigterm_watch.SigtermWatch`) forward a SIGTERM to the ranks. Other launchers: nothing."""
    launcher = trainer.strategy.launcher
    if not isinstance(launcher, _MultiProcessingLauncher):
        return
    if not isinstance(launcher, RankLauncher):
        launcher = RankLauncher(trainer.strategy, start_method=launcher._start_method)
        trainer.strategy._launcher = launcher
    launcher.run, launcher.watch = (subcommand, test_after_fit), watch
    watch.forward = launcher.kill


@contextmanager
def rank_errors(watch) -> Iterator[None]:
    """Around a run: a rank's SecureMLError comes out as itself (:func:`rank_error`), and a rank killed by a SIGTERM (it
    came while the rank was starting or ending, outside Lightning's handler) as Lightning's stop."""
    try:
        yield
    except ProcessRaisedException as exc:
        raise rank_error(exc) from None
    except ProcessExitedException as exc:
        if not (watch.came or exc.signal_name == "SIGTERM"):  # a rank SIGTERM killed before or after Lightning watched
            raise
        raise SIGTERMException from None


def _last_exception(text: str):
    """``(type name, message)`` of the exception a formatted traceback ends with: the first unindented line after the
    last ``Traceback (most recent call last):`` (its frames are indented), the message running to the end of the text."""
    lines = text.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line == "Traceback (most recent call last):"]
    if not starts:
        return None
    for i in range(starts[-1] + 1, len(lines)):
        if lines[i] and not lines[i].startswith(" "):
            name, _, first = lines[i].partition(": ")
            return name, "\n".join([first, *lines[i + 1 :]]).strip()
    return None


def rank_error(exc: BaseException) -> BaseException:
    """The SecureMLError a rank raised, rebuilt from the traceback text in ``exc`` (torch's ``ProcessRaisedException``)
    as its own class and message; Lightning's MisconfigurationException as the ConfigError the CLI makes of it in one
    process; ``exc`` itself for any other exception (a bug keeps its traceback)."""
    found = _last_exception(str(getattr(exc, "msg", "") or exc))
    module, _, name = found[0].rpartition(".") if found else ("", "", "")
    if not module.startswith(("secure_ml.", "lightning.")):
        return exc
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return exc
    if isinstance(cls, type) and issubclass(cls, MisconfigurationException):
        return ConfigError(f"the configuration was refused: {found[1].splitlines()[0] if found[1] else name}")
    if not (isinstance(cls, type) and issubclass(cls, SecureMLError)):
        return exc
    try:
        return cls(found[1])
    except Exception:  # a constructor that takes more than the message: keep the message and the exit status
        error = SecureMLError(found[1])
        error.exit_status = cls.exit_status
        return error
