"""A sweep made concrete: its output folder, storage, study name and jobs (points × repeats, each with a configuration key).

Shared by the coordinating ``secure-ml sweep`` process and its worker processes (both build the
same plan from the same options), and Lightning-free.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from secure_ml.errors import check_seed
from secure_ml.sweep.scheduler import Job
from secure_ml.sweep.spec import Sweep, load_sweep
from secure_ml.sweep.storage import default_storage

# Options that say where things are, not what is computed: left out of a point's configuration key,
# so machines with different data paths share results.
LOCATION_KEYS = ("data.data_dir", "data.download", "data.num_workers")


@dataclass
class SweepOptions:
    """The command line of ``secure-ml sweep`` (plain data: it travels to worker processes as JSON)."""

    config: str
    repeats: Optional[int] = None
    storage: Optional[str] = None
    n_jobs: int = 1
    seed: Optional[int] = None
    set: Dict[str, Any] = field(default_factory=dict)
    out: str = "sweeps"
    retry_failed: bool = False
    keep_checkpoints: bool = False
    stale_after: float = 120.0
    beat_interval: float = 10.0
    report_only: bool = False
    threads: Optional[int] = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "SweepOptions":
        return cls(**json.loads(text))


@dataclass
class Plan:
    sweep: Sweep
    options: SweepOptions
    out_dir: Path
    storage_url: str
    study_name: str
    jobs: List[Job]
    base_seed: int = 0

    def run_dir(self, number: int) -> Path:
        """The folder of this study's trial ``number``: ``runs/<study hash>/<number>``, so sibling studies never share one."""
        return self.out_dir / "runs" / self.study_name.rsplit(".", 1)[-1] / f"{number:04d}"

    def seeds(self, repeat: int) -> Dict[str, Any]:
        """Overrides giving repeat ``repeat`` its own randomness.

        Without ``--seed``: ``seed_everything`` is the base config's plus the repeat (initial weights and
        data order differ) and the DP noise and Poisson-sampling seeds stay unset, i.e. fresh and secret
        for every run. With ``--seed S``: all three are S + repeat, so the sweep can be replayed exactly.
        """
        if self.options.seed is None:
            return {"seed_everything": self.base_seed + repeat}
        s = self.options.seed + repeat
        return {"seed_everything": s, "model.dp.noise_seed": s, "data.sampling_seed": s}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_name(sweep: Sweep, repeats: int, config: Any = None) -> str:
    """``<name>.<hash>``: Optuna fixes a study's parameter choices, so a changed grid or ``--repeats`` opens a
    sibling study, and the results of the earlier ones still count (each grid job carries its configuration key).
    A search's trials carry no such key, so its hash also covers ``config`` (the base texts, ``set``, ``--set``,
    the test runs, ``--seed``): a search whose configuration changed starts a study of its own rather than
    reporting the old trials as the new configuration's."""
    if sweep.search is not None:
        space = {k: asdict(v) for k, v in sweep.search.space.items()}
        return f"{sweep.name}.{_digest([space, sweep.search.objectives, config])[:8]}"
    return f"{sweep.name}.{_digest([[p.label for p in sweep.points], repeats])[:8]}"


def base_seed(texts: List[str]) -> int:
    """The ``seed_everything`` the stacked base configs end with (0 when none sets an integer)."""
    seed = 0
    for text in texts:
        value = (yaml.safe_load(text) or {}).get("seed_everything") if text.strip() else None
        if isinstance(value, int) and not isinstance(value, bool):
            seed = value
    return seed


def make_plan(options: SweepOptions) -> Plan:
    """Load the sweep file and derive everything a coordinator or worker needs (no Lightning import)."""
    sweep = load_sweep(options.config, options.repeats)
    if options.seed is not None:  # repeat r runs with seed + r: the last one must still be a seed (it failed mid-sweep)
        check_seed(options.seed + sweep.repeats - 1, f"--seed plus the {sweep.repeats} repeats (seed + repeat)")
    out_dir = Path(options.out) / sweep.name
    storage = options.storage or default_storage(out_dir)
    bases = [Path(b).read_text() for b in sweep.bases]
    cli_set = {k: v for k, v in options.set.items() if k not in LOCATION_KEYS}
    search_config = [sweep.kind, bases, sweep.set, cli_set, sweep.test_set, sweep.test_grid, options.seed]
    plan = Plan(sweep, options, out_dir, storage, study_name(sweep, sweep.repeats, search_config), [], base_seed(bases))
    for point in sweep.points:
        for r in range(sweep.repeats):
            seeds = plan.seeds(r)
            payload = {
                "overrides": {**sweep.set, **point.overrides, **seeds, **options.set},
                "test_runs": [{**sweep.test_set, **combo, **point.test_overrides} for combo in sweep.test_grid],
                "assume": point.assume,
                "attrs": {"axes": point.axes, "overrides": point.overrides, "assumed": sorted(point.assume), "seeds": seeds},
            }
            identity = [sweep.kind, bases, sweep.set, cli_set, point.overrides, point.test_overrides, point.assume]
            identity += [sweep.test_set, sweep.test_grid, sweep.policy, seeds, r]
            plan.jobs.append(Job(point.label, r, _digest(identity), payload))
    return plan
