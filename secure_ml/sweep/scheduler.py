"""Worker loops over one Optuna study: every grid point runs once, whatever the number of workers.

Grid sweeps use Optuna's ``GridSampler`` over ``{"point": labels, "repeat": [0..R-1]}``. In a fresh
study it gives trial *n* grid point *n*, so workers that share the study (processes of one
``--n-jobs`` run, or machines on one ``--storage``) never draw the same point. Re-runs (resume) add
the rest: a point is *done* when a COMPLETE trial (or, unless ``retry_failed``, a trial that failed
with an error) carries its configuration key; a point is *held* while a WAITING trial or a RUNNING
trial with a live heartbeat carries it. Pending points are queued as WAITING trials with their grid
id (Optuna pops each WAITING trial for exactly one ``ask()``), and after every ``ask()`` a worker
drops the trial (PRUNED, ``sweep:duplicate``) when the point is done or an older trial holds it, so
no point runs twice even when two workers queue the same one. Searches (``run_search``) ask the
study's multi-objective sampler until the trial budget is used.
"""

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from secure_ml.sweep.storage import Heartbeat, is_live

DUPLICATE = "sweep:duplicate"


@dataclass(frozen=True)
class Job:
    """One run of a grid point: its label, repeat index, configuration key (a hash) and payload (the point, its seeds)."""

    label: str
    repeat: int
    key: str
    payload: Any = None


@dataclass
class Worker:
    """One worker's view: the study, its jobs, how to run one, and the liveness settings."""

    study: Any
    run: Callable[[Any, int, Dict[str, Any]], Any]  # (job or params, trial number, trial attrs) -> PointResult
    jobs: List[Job] = field(default_factory=list)
    index: int = 0
    retry_failed: bool = False
    beat_interval: float = 10.0
    stale_after: float = 120.0
    on_finish: Optional[Callable[[Any], None]] = None
    prior_done: frozenset = frozenset()  # keys finished in earlier studies of this sweep (another grid or --repeats)
    run_dir: Optional[Callable[[int], str]] = None  # trial number -> its run folder, relative to the sweep's (results.csv's 'run')

    @property
    def storage(self):
        return self.study._storage


def identity(trial) -> Optional[Tuple[str, int]]:
    """``(point label, repeat)`` of a trial, from its user attributes or its parameters (None before either is set)."""
    for source in (trial.user_attrs, trial.params):
        if "point" in source and "repeat" in source:
            return str(source["point"]), int(source["repeat"])
    return None


def is_final_failure(trial, failures_from: float = 0) -> bool:
    """A trial that failed with an error (not interrupted), numbered ``failures_from`` or later (``--retry-failed`` retries older ones)."""
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL and trial.user_attrs.get("status") == "failed" and trial.number >= failures_from


def first_new_trial(study, retry_failed: bool) -> float:
    """``failures_from`` for a worker starting now: 0 (every failure is final), or the next trial number with ``--retry-failed``."""
    return len(study.get_trials(deepcopy=False)) if retry_failed else 0


def done_keys(trials, failures_from: float = 0) -> set:
    from optuna.trial import TrialState

    return {
        t.user_attrs.get("key")
        for t in trials
        if "key" in t.user_attrs
        and (t.state == TrialState.COMPLETE or is_final_failure(t, failures_from))
        and not t.system_attrs.get(DUPLICATE)
    }


def holders(trials, now: float, stale_after: float) -> Dict[Tuple[str, int], int]:
    """``{(label, repeat): lowest trial number}`` over WAITING trials and RUNNING trials with a live heartbeat."""
    from optuna.trial import TrialState

    out: Dict[Tuple[str, int], int] = {}
    for t in trials:
        if t.system_attrs.get(DUPLICATE):
            continue
        if t.state == TrialState.WAITING or (t.state == TrialState.RUNNING and is_live(t, now, stale_after)):
            ident = identity(t)
            if ident is not None:
                out[ident] = min(out.get(ident, t.number), t.number)
    return out


def grid_ids(sampler, jobs: List[Job]) -> Dict[Tuple[str, int], int]:
    """Each job's grid id in ``sampler`` (its shuffled grid; private but stable, and pinned by tests/test_sweep.py)."""
    names = list(sampler._param_names)
    index = {tuple(grid): i for i, grid in enumerate(sampler._all_grids)}
    return {(j.label, j.repeat): index[tuple({"point": j.label, "repeat": j.repeat}[n] for n in names)] for j in jobs}


def _settled(worker: Worker, number: int, deadline: float):
    """All trials, once every unfinished trial numbered below ``number`` shows its identity (they set it within milliseconds)."""
    while True:
        trials = worker.study.get_trials(deepcopy=False)
        unknown = [t for t in trials if t.number < number and not t.state.is_finished() and identity(t) is None]
        if not unknown or time.time() > deadline:
            return trials
        time.sleep(0.05)


def _drop(worker: Worker, trial) -> None:
    from optuna.trial import TrialState

    worker.storage.set_trial_system_attr(trial._trial_id, DUPLICATE, True)
    worker.study.tell(trial, state=TrialState.PRUNED)


def _execute(worker: Worker, trial, job_or_params: Any, attrs: Dict[str, Any], values_of: Callable[[Any], Optional[list]]):
    """Run one claimed trial with a heartbeat and record it: COMPLETE with its values, or FAIL with the error line."""
    from optuna.trial import TrialState

    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if worker.run_dir is not None:
        trial.set_user_attr("run", worker.run_dir(trial.number))
    try:
        with Heartbeat(worker.storage, trial._trial_id, worker.beat_interval):
            result = worker.run(job_or_params, trial.number, attrs)
    except KeyboardInterrupt:
        trial.set_user_attr("status", "interrupted")
        worker.study.tell(trial, state=TrialState.FAIL)
        raise
    trial.set_user_attr("metrics", result.metrics)
    trial.set_user_attr("wall_s", round(result.wall_s, 3))
    if result.extra:
        trial.set_user_attr("extra", result.extra)
    if result.gate_failures:
        trial.set_user_attr("gates", "; ".join(result.gate_failures))
    values = values_of(result) if result.error is None else None
    if result.error is None and values is None:
        result.error = "an objective metric was not measured"
    trial.set_user_attr("status", "ok" if result.error is None else "failed")
    if result.error is not None:
        trial.set_user_attr("error", result.error)
        worker.study.tell(trial, state=TrialState.FAIL)
    else:
        worker.study.tell(trial, values)
    if worker.on_finish is not None:
        worker.on_finish(result)
    return result


def run_grid(worker: Worker) -> int:
    """Run pending grid points until none is left that another worker does not hold; returns the number run here."""
    from optuna.trial import TrialState, create_trial

    sampler = worker.study.sampler
    by_ident = {(j.label, j.repeat): j for j in worker.jobs}
    ids = grid_ids(sampler, worker.jobs)
    labels = list(dict.fromkeys(j.label for j in worker.jobs))
    repeats = sorted({j.repeat for j in worker.jobs})
    failures_from = first_new_trial(worker.study, worker.retry_failed)
    ran = 0
    while True:
        trials = worker.study.get_trials(deepcopy=False)
        done = done_keys(trials, failures_from) | worker.prior_done
        held = holders(trials, time.time(), worker.stale_after)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        pending = [j for j in worker.jobs if j.key not in done and (j.label, j.repeat) not in held]
        if not pending and not waiting:
            return ran
        if not waiting:
            touched = {t.system_attrs.get("grid_id") for t in trials if t.system_attrs.get("search_space") == sampler._search_space}
            if all(ids[(j.label, j.repeat)] in touched for j in pending):  # the sampler would only re-propose visited points
                job = pending[worker.index % len(pending)]
                worker.study.add_trial(
                    create_trial(
                        state=TrialState.WAITING,
                        system_attrs={"grid_id": ids[(job.label, job.repeat)], "search_space": sampler._search_space},
                        user_attrs={"point": job.label, "repeat": job.repeat, "key": job.key},
                    )
                )
        trial = worker.study.ask()
        ident = (trial.suggest_categorical("point", labels), trial.suggest_categorical("repeat", repeats))
        job = by_ident[ident]
        trial.set_user_attr("point", job.label)
        trial.set_user_attr("repeat", job.repeat)
        trial.set_user_attr("key", job.key)
        trials = _settled(worker, trial.number, time.time() + 5.0)
        older = holders([t for t in trials if t.number < trial.number], time.time(), worker.stale_after)
        if job.key in done_keys(trials, failures_from) | worker.prior_done or ident in older:
            _drop(worker, trial)
            continue
        attrs = {"worker": worker.index, **(job.payload.get("attrs", {}) if isinstance(job.payload, dict) else {})}
        _execute(worker, trial, job, attrs, lambda r: [r.wall_s])
        ran += 1


def run_search(worker: Worker, budget: int, suggest: Callable[[Any], Dict[str, Any]], objectives: Dict[str, str]) -> int:
    """Ask the study's sampler for new trials until ``budget`` trials are done, failed or held; returns the number run here."""
    from optuna.trial import TrialState

    ran = 0
    while True:
        trials = worker.study.get_trials(deepcopy=False)
        now = time.time()
        used = sum(
            1
            for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.WAITING)
            or is_final_failure(t)
            or (t.state == TrialState.RUNNING and is_live(t, now, worker.stale_after))
        )
        if used >= budget:
            return ran
        trial = worker.study.ask()
        params = suggest(trial)

        def values_of(result) -> Optional[list]:
            values = [result.metrics.get(m) for m in objectives]
            return None if any(v is None for v in values) else values

        _execute(worker, trial, params, {"worker": worker.index}, values_of)
        ran += 1
