"""A callback recording the cyclic collector's state when training and testing start (``gc_probe.jsonl`` in the cwd)."""

import gc
import json

from lightning.pytorch import Callback


class GcProbe(Callback):
    def _record(self, stage: str) -> None:
        with open("gc_probe.jsonl", "a") as f:
            f.write(json.dumps({"stage": stage, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}) + "\n")

    def on_train_start(self, trainer, pl_module):
        self._record("train")

    def on_test_start(self, trainer, pl_module):
        self._record("test")
