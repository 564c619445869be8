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
