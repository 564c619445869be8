"""Open a sweep's study, build a worker for it, and run workers: here (one job) or as processes (``--n-jobs``)."""

import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from secure_ml.errors import ConfigError
from secure_ml.sweep.plan import Plan
from secure_ml.sweep.scheduler import Worker, done_keys, run_grid, run_search
from secure_ml.sweep.storage import is_live, open_storage


def grid_sampler(space):
    import optuna

    class Grid(optuna.samplers.GridSampler):
        """GridSampler without ``study.stop()`` after a trial: workers use ask/tell and stop by themselves (see scheduler)."""

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return Grid(space, seed=0)


def _sampler(plan: Plan, worker_index: int):
    import optuna

    search = plan.sweep.search
    if search is None:
        return grid_sampler({"point": list(dict.fromkeys(j.label for j in plan.jobs)), "repeat": list(range(plan.sweep.repeats))})
    seed = plan.options.seed if plan.options.seed is not None else search.seed
    seed = None if seed is None else seed + worker_index  # workers of one study must not propose the same trials
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, max(2, search.trials // 3)))


def open_study(plan: Plan, worker_index: int = 0):
    """The plan's study (created on first use), with its sampler."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(plan.storage_url)
    search = plan.sweep.search
    directions = list(search.objectives.values()) if search is not None else ["minimize"]  # grid trials report their wall time
    try:
        return optuna.create_study(
            study_name=plan.study_name, storage=storage, sampler=_sampler(plan, worker_index), directions=directions, load_if_exists=True
        )
    except ValueError as exc:
        raise ConfigError(f"study '{plan.study_name}' in {plan.storage_url} does not match this sweep: {exc}") from None


def earlier_trials(study, plan: Plan) -> List[Any]:
    """Trials of the sweep's sibling studies in the same storage (an earlier grid or --repeats)."""
    storage = study._storage
    out = []
    for s in storage.get_all_studies():
        if s.study_name != plan.study_name and s.study_name.rsplit(".", 1)[0] == plan.sweep.name:
            out.extend(storage.get_all_trials(s._study_id, deepcopy=False))
    return out


def siblings(study, plan: Plan) -> List[Any]:
    """The earlier studies' trials that count in this sweep's report: a grid's (each carries its job key, so only the
    jobs of this plan are picked), none for a search (another space or configuration: its front is not this one's)."""
    return earlier_trials(study, plan) if not plan.sweep.is_search else []


def mark_stale(study, stale_after: float) -> int:
    """RUNNING trials whose worker stopped beating (a crash): FAIL, marked interrupted, so their points run again."""
    from optuna.trial import TrialState

    now, n = time.time(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_live(t, now, stale_after):
            study._storage.set_trial_user_attr(t._trial_id, "status", "interrupted")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            n += 1
    return n


def _runner(plan: Plan) -> Callable:
    from secure_ml.sweep.runner import run_train_point

    sweep = plan.sweep
    if sweep.kind == "policy":
        from secure_ml.sweep import policy as pol

        cfg = pol.settings(sweep.policy)
        train = {**sweep.set, **plan.options.set}
        ckpt = Path(cfg.checkpoint) if cfg.checkpoint else pol.train_model(sweep.bases, train, plan.out_dir)
        evaluator = pol.PolicyEvaluator(sweep.bases, train, ckpt, cfg)
        return lambda job, number, attrs: evaluator.evaluate(
            pol.policy_overrides(job.payload["overrides"]), job.payload["attrs"]["seeds"]["seed_everything"]
        )

    if sweep.is_search:
        seeds = plan.seeds(0) if plan.options.seed is not None else {}  # --seed: every trial replayable

        def run_params(params: Dict[str, Any], number: int, attrs) -> Any:
            overrides = {**sweep.set, **params, **seeds, **plan.options.set}
            tests = [{**sweep.test_set, **combo} for combo in sweep.test_grid]
            return run_train_point(sweep.bases, overrides, tests, plan.run_dir(number), plan.options.keep_checkpoints)

        return run_params

    def run_job(job, number: int, attrs) -> Any:
        p = job.payload
        result = run_train_point(sweep.bases, p["overrides"], p["test_runs"], plan.run_dir(number), plan.options.keep_checkpoints)
        if result.error is None:
            result.metrics.update(p["assume"])  # metrics that hold by construction; results.csv names them in 'assumed'
        return result

    return run_job


def suggest(search) -> Callable:
    def _suggest(trial) -> Dict[str, Any]:
        out = {}
        for name, p in search.space.items():
            if p.kind == "categorical":
                out[name] = trial.suggest_categorical(name, list(p.choices))
            elif p.kind == "int":
                out[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                out[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
        trial.set_user_attr("overrides", out)
        return out

    return _suggest


def run_worker(plan: Plan, index: int = 0, on_finish: Optional[Callable] = None) -> int:
    """Run this worker's share of the sweep; returns the number of points it ran."""
    import torch

    torch.set_num_threads(plan.options.threads or max(1, (os.cpu_count() or 1) // max(1, plan.options.n_jobs)))
    study = open_study(plan, index)
    prior = frozenset(done_keys(earlier_trials(study, plan), math.inf if plan.options.retry_failed else 0))
    worker = Worker(
        study,
        _runner(plan),
        plan.jobs,
        index,
        plan.options.retry_failed,
        plan.options.beat_interval,
        plan.options.stale_after,
        on_finish,
        prior,
        None if plan.sweep.kind == "policy" else (lambda n: str(plan.run_dir(n).relative_to(plan.out_dir))),
    )
    if plan.sweep.is_search:
        return run_search(worker, plan.sweep.search.trials, suggest(plan.sweep.search), plan.sweep.search.objectives)
    return run_grid(worker)


def spawn_workers(plan: Plan, n: int) -> List[subprocess.Popen]:
    """``n`` worker processes (``python -m secure_ml.sweep.worker``), each logging to ``<out>/logs/worker-<i>.log``."""
    logs = plan.out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        with open(logs / f"worker-{i}.log", "a") as log:
            cmd = [sys.executable, "-m", "secure_ml.sweep.worker", plan.options.to_json(), str(i)]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()))
    return procs
