"""``secure-ml sweep --config configs/sweeps/<name>.yaml [--repeats N] [--storage URL] [--n-jobs K] [--seed S]``.

Validates the sweep file (nothing runs when an option name, a value or a report entry is wrong),
runs the pending points with a progress bar (one worker here, or ``--n-jobs`` worker processes),
then writes ``<out>/<name>/results.csv``, the figures and ``summary.md``. Exit status 0 when every
point has a result, 1 when some failed or are still pending, 130 on Ctrl-C (run again to resume).
"""

import argparse
import os
import sys
import time
from typing import List

import yaml

from secure_ml.cli_errors import check_seed
from secure_ml.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise ConfigError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="secure-ml sweep", description="Run a sweep of secure-ml trainings on an Optuna study.")
    p.add_argument("--config", required=True, help="the sweep file, e.g. configs/sweeps/privacy-budget.yaml")
    p.add_argument("--repeats", type=int, default=None, help="runs per grid point (default: the file's 'repeats')")
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default sqlite:///<out>/<name>/study.db; journal:<path>, redis://, postgresql://...)",
    )
    p.add_argument("--n-jobs", type=int, default=1, help="worker processes on this machine (default 1: in this process)")
    p.add_argument("--seed", type=int, default=None, help="explicit seeds: repeat r uses S + r for seed_everything and the DP seeds")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every point, e.g. data.data_dir=../shared/data"
    )
    p.add_argument("--out", default="sweeps", help="folder holding <name>/ (default sweeps)")
    p.add_argument("--retry-failed", action="store_true", help="run points that failed before again")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each point's checkpoints (default: deleted after its test)")
    p.add_argument("--report-only", action="store_true", help="write results.csv, figures and summary.md from the study; run nothing")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / n-jobs)")
    p.add_argument(
        "--stale-after", type=float, default=120.0, help="seconds without a heartbeat after which a running point counts as dead"
    )
    return p


def _options(argv: List[str]):
    from secure_ml.sweep.plan import SweepOptions

    a = _parser().parse_args(argv)
    overrides = {}
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE; got '{item}'")
        overrides[key.strip()] = yaml.safe_load(value)
    if a.n_jobs < 1:
        raise ConfigError(f"--n-jobs must be >= 1; got {a.n_jobs}")
    if a.repeats is not None and a.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1; got {a.repeats}")
    if a.seed is not None:
        check_seed(a.seed, "--seed")
    if a.threads is not None and a.threads < 1:
        raise ConfigError(f"--threads must be >= 1 (leave it out for cores / n-jobs); got {a.threads}")
    beat = SweepOptions.beat_interval
    if not 2 * beat <= a.stale_after < float("inf"):  # below the heartbeat's interval every live point looks dead: run twice
        raise ConfigError(
            f"--stale-after must be a finite number of seconds >= {2 * beat:g} (twice the {beat:g} s heartbeat); got {a.stale_after:g}"
        )
    return SweepOptions(
        config=a.config,
        repeats=a.repeats,
        storage=a.storage,
        n_jobs=a.n_jobs,
        seed=a.seed,
        set=overrides,
        out=a.out,
        retry_failed=a.retry_failed,
        keep_checkpoints=a.keep_checkpoints,
        stale_after=a.stale_after,
        report_only=a.report_only,
        threads=a.threads,
    )


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def sweep_main(argv: List[str]) -> int:
    from secure_ml.sweep.engine import mark_stale, open_study, siblings
    from secure_ml.sweep.plan import make_plan
    from secure_ml.sweep.progress import Progress, run_with_progress
    from secure_ml.sweep.report import write_report
    from secure_ml.sweep.validate import validate

    options = _options(argv)
    plan = make_plan(options)
    validate(plan)
    study = open_study(plan)
    meta = {"command": "secure-ml sweep " + " ".join(argv), "n_jobs": options.n_jobs, "load_start": _load()}
    status = 0
    if not options.report_only:
        start = time.perf_counter()  # the policy sweep's one training counts too
        stale = mark_stale(study, options.stale_after)
        if stale:
            print(f"secure-ml sweep: {stale} point(s) left running by a stopped worker will run again", file=sys.stderr)
        if plan.sweep.kind == "policy" and not plan.sweep.policy.get("checkpoint"):
            from secure_ml.sweep import policy as pol

            print("secure-ml sweep: training the policy sweep's model (once)", file=sys.stderr)
            pol.train_model(plan.sweep.bases, {**plan.sweep.set, **options.set}, plan.out_dir)
        try:
            run_with_progress(plan, study, Progress(plan, study, siblings(study, plan)))
        except KeyboardInterrupt:
            print("\nsecure-ml sweep: interrupted; run the same command again to resume", file=sys.stderr)
            status = 130
        meta.update(wall_s=time.perf_counter() - start, load_end=_load(), date=time.strftime("%Y-%m-%d %H:%M"))
        _save_run(plan.out_dir, meta)
    else:
        saved = _last_run(plan.out_dir)  # the run's command and wall time, not this report's
        meta = {**saved, "report_command": meta["command"]} if saved else meta
    trials = study.get_trials(deepcopy=False) + siblings(study, plan)
    front = [t.number for t in study.best_trials] if plan.sweep.is_search and study.get_trials(deepcopy=False) else []
    report = write_report(plan, trials, front, meta)
    counts = report["counts"]
    done = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"secure-ml sweep: {done}; wrote {report['csv']}, {report['summary']} and {len(report['figures'])} figure(s)", file=sys.stderr)
    if status == 0 and any(s != "ok" for s in counts):
        status = 1
    return status


RUN_FILE = "last-run.json"


def _save_run(out_dir, meta) -> None:
    """``<sweep>/last-run.json``: the command, wall time and load averages of the last run, so ``--report-only`` keeps them."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RUN_FILE).write_text(json.dumps(meta, indent=1))


def _last_run(out_dir) -> dict:
    import json

    try:
        return json.loads((out_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
