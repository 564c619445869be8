"""The progress bar over points (with an ETA from this invocation's pace), fed by polling the study."""

import math
import os
import sys
import time
from typing import Any, List

from secure_ml.sweep.scheduler import done_keys, first_new_trial, is_final_failure


class Progress:
    """A tqdm bar over the sweep's points (grid) or trial budget (search); :meth:`refresh` reads the study."""

    def __init__(self, plan, study, earlier: List[Any]):
        from tqdm import tqdm

        self.plan, self.study = plan, study
        self.prior = done_keys(earlier, math.inf if plan.options.retry_failed else 0)
        self.failures_from = first_new_trial(study, plan.options.retry_failed)
        total = plan.sweep.search.trials if plan.sweep.is_search else len(plan.jobs)
        # A copy of stderr: points send file descriptors 1 and 2 to their log while they run.
        self.stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
        done, failed = self._count()
        self.bar = tqdm(total=total, initial=done, desc=plan.sweep.name, unit="point", file=self.stream, dynamic_ncols=True)
        self.bar.set_postfix(failed=failed)

    def _count(self):
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        if self.plan.sweep.is_search:
            done = [t for t in trials if t.state == TrialState.COMPLETE or is_final_failure(t)]
            return len(done), sum(1 for t in done if t.state == TrialState.FAIL)
        keys = done_keys(trials, self.failures_from) | self.prior
        failed = {t.user_attrs.get("key") for t in trials if is_final_failure(t, self.failures_from)}
        return sum(1 for j in self.plan.jobs if j.key in keys), sum(1 for j in self.plan.jobs if j.key in failed)

    def refresh(self, *_: Any) -> None:
        done, failed = self._count()
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        self.bar.set_postfix(failed=failed)

    def close(self) -> None:
        self.refresh()
        self.bar.close()
        self.stream.close()


def run_with_progress(plan, study, progress: Progress) -> None:
    """Run the sweep's workers (here when ``--n-jobs 1``, else as processes) while the bar follows the study."""
    from secure_ml.sweep.engine import run_worker, spawn_workers

    try:
        if plan.options.n_jobs == 1:
            run_worker(plan, 0, on_finish=progress.refresh)
            return
        procs = spawn_workers(plan, plan.options.n_jobs)
        try:
            while any(p.poll() is None for p in procs):
                progress.refresh()
                time.sleep(1.0)
        except KeyboardInterrupt:
            for p in procs:  # they got the same Ctrl-C; give them time to mark their points interrupted
                try:
                    p.wait(timeout=60)
                except Exception:
                    p.terminate()
            raise
        bad = [i for i, p in enumerate(procs) if p.returncode not in (0, None)]
        if bad:
            logs = ", ".join(str(plan.out_dir / "logs" / f"worker-{i}.log") for i in bad)
            print(f"secure-ml sweep: worker(s) {bad} stopped with an error; see {logs}", file=sys.stderr)
    finally:
        progress.close()
