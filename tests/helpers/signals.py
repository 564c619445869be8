"""Callbacks that stop a run from outside, as an operator or a scheduler would."""

import os
import signal

from lightning.pytorch import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException


class SigtermAtEpochEnd(Callback):
    """Sends this process a real SIGTERM at the end of training epoch ``epoch`` (Lightning stops after that epoch's saves)."""

    def __init__(self, epoch: int = 0):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


class StopAtEpochStart(Callback):
    """Raises what Lightning raises after a SIGTERM, at the start of epoch ``epoch``: between the previous epoch's
    checkpoints and anything the next epoch does."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise SIGTERMException


class SigtermAtTestBatch(Callback):
    """A real SIGTERM after the first test batch: Lightning stops the test at the next batch."""

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


class SigtermAtTestEpochEnd(Callback):
    """A real SIGTERM where the scorecard's attacks run (after the last test batch), where Lightning does not look."""

    def on_test_epoch_end(self, trainer, pl_module):
        os.kill(os.getpid(), signal.SIGTERM)


class SigtermAtFitEnd(Callback):
    """A real SIGTERM in a fit's last hook, where the scorecard draws its dashboard: Lightning has put back the
    process's own SIGTERM handler by then (the default one kills the process without a word)."""

    def on_fit_end(self, trainer, pl_module):
        os.kill(os.getpid(), signal.SIGTERM)


class SigtermAtSetup(Callback):
    """A real SIGTERM in ``setup``, before Lightning watches for one (it resets its flag when its stage starts)."""

    def setup(self, trainer, pl_module, stage):
        os.kill(os.getpid(), signal.SIGTERM)


class StopEarlyWithSigterm(Callback):
    """At the end of training epoch 0: what early stopping does (``trainer.should_stop``), then a real SIGTERM."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            trainer.should_stop = True
            os.kill(os.getpid(), signal.SIGTERM)
