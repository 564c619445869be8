"""The CLI's watch for SIGTERM over a whole subcommand (CLI layer).

Lightning watches for SIGTERM only while its stage runs, and resets its flag when the stage starts: one that comes in
setup (the prior's pretraining, restoring a checkpoint, ``on_fit_start``) was forgotten and the whole fit ran, and one
in the last hooks (``on_fit_end``: the dashboard), after Lightning has put the default handler back, killed the process
without a line. :class:`SigtermWatch` notes every SIGTERM of the subcommand (chaining a host process's own handler);
:class:`SigtermRelay` stops the run at the start of a stage when one came before it.
"""

import os
import signal
import threading
from typing import Callable, Optional

from lightning.pytorch import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException


class SigtermWatch:
    """A context manager: while it is on, a SIGTERM sets :attr:`came` (and still reaches the handler it replaced, when
    that one is Python's); the handler is put back on exit. Off the main thread, where handlers cannot be set, it is inert."""

    def __init__(self):
        self.came = False
        self.forward: Optional[Callable[[int], None]] = None  # also signals the ranks (set by secure_ml.spawn_ranks)
        self._previous = None
        self._on = False
        self._pid = os.getpid()  # the process that entered the watch: the CLI's

    def __enter__(self) -> "SigtermWatch":
        self._on = threading.current_thread() is threading.main_thread()
        if self._on:
            self._previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def __exit__(self, *exc) -> bool:
        if self._on:  # None: the handler was set outside Python
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
        return False

    def _note(self, signum, frame) -> None:
        first, self.came = not self.came, True
        # Once (a rank passes its own SIGTERM up here: secure_ml.spawn_ranks), and only in the CLI's process: a rank
        # forked from it (ddp_fork) inherits this handler, and the launcher's processes are not that rank's children.
        if first and self.forward is not None and os.getpid() == self._pid:
            self.forward(signum)
        if callable(self._previous):  # a host process's own handler (``cli_main`` called from Python) still runs
            self._previous(signum, frame)


class SigtermRelay(Callback):
    """Stops the run at the first hook of every stage when ``watch`` saw a SIGTERM before Lightning watched,
    as Lightning does after a batch.

    Pickled (``ddp_spawn`` starts its ranks from a pickle of the Trainer) it carries no watch: a signal handler is the
    process's own, and each spawned rank's Lightning watches for its own SIGTERM.
    """

    def __init__(self, watch: Optional[SigtermWatch] = None):
        self.watch = watch

    def __getstate__(self) -> dict:
        return {**self.__dict__, "watch": None}

    def _relay(self, trainer, pl_module) -> None:
        if self.watch is not None and self.watch.came:
            raise SIGTERMException

    on_sanity_check_start = on_train_start = on_validation_start = on_test_start = on_predict_start = _relay
