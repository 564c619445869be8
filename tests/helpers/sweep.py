"""Sweep test helpers: a fake point runner (no Lightning) and a worker entry point for multi-process tests."""

import os
import time
from pathlib import Path
from typing import List, Optional

from secure_ml.sweep.runner import PointResult
from secure_ml.sweep.scheduler import Job

REPO = Path(__file__).resolve().parents[2]


def jobs(labels: List[str], repeats: int) -> List[Job]:
    return [Job(label, r, f"key-{label}-{r}", {"attrs": {"axes": {"p": label}}}) for label in labels for r in range(repeats)]


def open_grid_study(storage: str, name: str, labels: List[str], repeats: int):
    import optuna

    from secure_ml.sweep.engine import grid_sampler
    from secure_ml.sweep.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=name,
        storage=open_storage(storage),
        sampler=grid_sampler({"point": labels, "repeat": list(range(repeats))}),
        load_if_exists=True,
    )


class FakeRunner:
    """Records each run as a file ``<label>-<repeat>-<pid>-<n>`` in ``marks`` and fails the labels in ``fail``."""

    def __init__(self, marks: Path, fail=(), sleep: float = 0.0):
        self.marks, self.fail, self.sleep = Path(marks), set(fail), sleep
        self.marks.mkdir(parents=True, exist_ok=True)

    def __call__(self, job: Job, number: int, attrs) -> PointResult:
        (self.marks / f"{job.label}-{job.repeat}-{os.getpid()}-{number}").write_text("")
        time.sleep(self.sleep)
        if job.label in self.fail:
            return PointResult(error=f"{job.label} is broken", wall_s=self.sleep)
        return PointResult(metrics={"test/acc": 0.5 + 0.01 * job.repeat}, wall_s=self.sleep)


def fake_worker(storage: str, name: str, labels: List[str], repeats: int, index: int, marks: str, sleep: float, start_at: Optional[float]):
    """Entry point of a worker process in tests: waits until ``start_at`` so the workers really start together."""
    from secure_ml.sweep.scheduler import Worker, run_grid

    study = open_grid_study(storage, name, labels, repeats)
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    return run_grid(Worker(study, FakeRunner(Path(marks), sleep=sleep), jobs(labels, repeats), index=index))
