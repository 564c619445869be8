"""Which study a sweep's results belong to, where each run's files go, and what a front file holds (from a review).

The runs are a fake ``run_train_point`` (no training): each writes the overrides it got into its run folder and
scores them, so these tests pin the bookkeeping, not the models. Before the fixes:
* a search whose ``set`` changed ran nothing and reported the old trials under the new configuration (exit 0);
* a search whose space changed merged the old study's trials into the report, marked ``pareto`` by a trial number
  that restarts in every study, and wrote front files with ``batch_size: 32.0`` or ``.nan``;
* sibling studies wrote into the same ``runs/<number>`` folders, overwriting finished points' logs and metrics;
* front files left out the command line's ``--set`` and ``--seed``;
* a search interrupted once exited 1 forever, listing the replaced trial as "without a result".
"""

import csv
import json
from pathlib import Path

import pytest
import yaml

from secure_ml.errors import ConfigError
from secure_ml.sweep.runner import PointResult
from tests.helpers.sweep import REPO

BASES = [str(REPO / "configs" / "capstone.yaml"), str(REPO / "configs" / "smoke.yaml")]
SPACE = {"model.optimizer.init_args.lr": {"low": 0.01, "high": 0.5, "log": True}, "data.batch_size": [32, 64]}


class FakePoint:
    """Stands in for ``run_train_point``: records every call, writes the overrides into the run folder, scores them."""

    def __init__(self, interrupt_first: bool = False):
        self.calls, self.interrupt_first = [], interrupt_first

    def __call__(self, bases, overrides, tests, run_dir: Path, keep_checkpoints) -> PointResult:
        self.calls.append(dict(overrides))
        if self.interrupt_first and len(self.calls) == 1:
            raise KeyboardInterrupt
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "got.json").write_text(json.dumps(overrides, default=str))
        lr = float(overrides.get("model.optimizer.init_args.lr", 0.1))
        return PointResult(metrics={"test/acc": 1.0 - abs(lr - 0.1), "privacy/epsilon": lr * 10}, wall_s=0.01)


@pytest.fixture
def fake_point(monkeypatch):
    def install(**kwargs) -> FakePoint:
        fake = FakePoint(**kwargs)
        monkeypatch.setattr("secure_ml.sweep.runner.run_train_point", fake)
        return fake

    return install


def _search(tmp_path: Path, trials: int = 2, space=None, **set_) -> Path:
    body = {
        "description": "a tiny search",
        "base": BASES,
        "set": {"data.train_size": 300, **set_},
        "search": {
            "trials": trials,
            "sampler": "random",
            "seed": 0,
            "objectives": {"test/acc": "maximize", "privacy/epsilon": "minimize"},
            "space": space or SPACE,
        },
        "report": [{"kind": "pareto", "title": "P"}],
    }
    path = tmp_path / "srch.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _rows(tmp_path: Path):
    with open(tmp_path / "sweeps" / "srch" / "results.csv") as f:
        return list(csv.DictReader(f))


def _run(tmp_path, *argv) -> int:
    from secure_ml.sweep.cli import sweep_main

    return sweep_main(["--config", str(tmp_path / "srch.yaml"), "--threads", "1", *argv])


@pytest.mark.slow
def test_a_search_whose_configuration_changed_runs_a_study_of_its_own(tmp_path, monkeypatch, fake_point):
    monkeypatch.chdir(tmp_path)
    fake = fake_point()
    _search(tmp_path)
    assert _run(tmp_path) == 0 and len(fake.calls) == 2
    first = _rows(tmp_path)
    assert [r["status"] for r in first] == ["ok", "ok"]
    assert _run(tmp_path) == 0 and len(fake.calls) == 2  # the control: an unchanged search resumes, nothing runs again

    _search(tmp_path, **{"data.train_size": 200})  # another configuration: the old scores do not describe it
    assert _run(tmp_path) == 0 and len(fake.calls) == 4
    assert all(c["data.train_size"] == 200 for c in fake.calls[2:])
    second = _rows(tmp_path)
    assert len(second) == 2 and {r["run"] for r in second}.isdisjoint(r["run"] for r in first)
    for rows, size in ((first, 300), (second, 200)):  # every run kept its own folder: nothing was overwritten
        for r in rows:
            got = json.loads((tmp_path / "sweeps" / "srch" / r["run"] / "got.json").read_text())
            assert got["data.train_size"] == size and float(got["model.optimizer.init_args.lr"]) == pytest.approx(
                float(r["model.optimizer.init_args.lr"])
            )


@pytest.mark.slow
def test_a_changed_space_reports_only_its_own_trials_and_a_true_front(tmp_path, monkeypatch, fake_point):
    monkeypatch.chdir(tmp_path)
    fake_point()
    _search(tmp_path, trials=3, space={"model.optimizer.init_args.lr": SPACE["model.optimizer.init_args.lr"]})
    assert _run(tmp_path) == 0
    _search(tmp_path, trials=3)  # data.batch_size joins the space: a new study
    assert _run(tmp_path) == 0
    rows = _rows(tmp_path)
    assert len(rows) == 3 and all(r["data.batch_size"] in ("32", "64") for r in rows)  # no NaN-padded rows of the old space
    points = [(float(r["test/acc"]), float(r["privacy/epsilon"]), r["pareto"] == "True") for r in rows]
    for acc, eps, on_front in points:  # the front is exactly the non-dominated rows
        dominated = any(a >= acc and e <= eps and (a, e) != (acc, eps) for a, e, _ in points)
        assert on_front == (not dominated)
    for front in (tmp_path / "sweeps" / "srch").glob("front-*.yaml"):
        assert type(yaml.safe_load(front.read_text())["data"]["batch_size"]) is int  # not 32.0, never .nan


@pytest.mark.slow
def test_front_files_hold_the_command_lines_set_and_seed(tmp_path, monkeypatch, fake_point):
    monkeypatch.chdir(tmp_path)
    fake = fake_point()
    _search(tmp_path, trials=1)
    assert _run(tmp_path, "--set", "model.adversarial.ratio=0.25", "--set", "data.download=false", "--seed", "7") == 0
    assert fake.calls[0]["model.adversarial.ratio"] == 0.25 and fake.calls[0]["seed_everything"] == 7
    front = yaml.safe_load((tmp_path / "sweeps" / "srch" / "front-0.yaml").read_text())
    assert front["model"]["adversarial"]["ratio"] == 0.25 and front["seed_everything"] == 7 and front["model"]["dp"]["noise_seed"] == 7
    assert "download" not in front.get("data", {})  # a data location is the user's own, not part of the recipe


@pytest.mark.slow
def test_an_interrupted_search_finishes_with_exit_0_once_its_budget_is_done(tmp_path, monkeypatch, fake_point):
    monkeypatch.chdir(tmp_path)
    fake_point(interrupt_first=True)
    _search(tmp_path)
    assert _run(tmp_path) == 130
    assert [r["status"] for r in _rows(tmp_path)] == ["interrupted"]  # the control: listed while the budget is not done
    assert _run(tmp_path) == 0  # two more trials run in its place
    assert [r["status"] for r in _rows(tmp_path)] == ["ok", "ok"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, argv, words",
    [
        ({"kind": "policy"}, [], "a 'kind: policy' sweep evaluates a grid of policies; it takes 'grid:', not 'search:'"),
        ({}, ["--retry-failed"], "--retry-failed reruns failed grid points"),
        (
            {"search_space": {"trainer.max_epochs": {"low": 1, "high": 4, "log": True, "step": 2}}},
            [],
            "search.space 'trainer.max_epochs': a log scale takes no step",
        ),
        (
            {"search_space": {"model.optimizer.init_args.lr": {"low": 0.01, "high": 0.3, "log": True, "step": 0.01}}},
            [],
            "a log scale takes no step",
        ),
        (
            {"report": [{"kind": "pareto", "title": "P"}, {"kind": "metrics", "metrics": "test/acc"}]},
            [],
            "report[1].metrics must be a list",
        ),
    ],
)
def test_search_files_refused_before_anything_runs(tmp_path, monkeypatch, fake_point, change, argv, words):
    monkeypatch.chdir(tmp_path)
    fake = fake_point()
    path = _search(tmp_path)
    body = yaml.safe_load(path.read_text())
    if "search_space" in change:
        body["search"]["space"] = change.pop("search_space")
    body.update(change)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        _run(tmp_path, *argv)
    assert fake.calls == [] and not (tmp_path / "sweeps").exists()


def test_a_log_scale_with_an_integer_step_of_one_is_still_accepted(tmp_path):
    from secure_ml.sweep.spec import load_sweep

    path = _search(tmp_path, space={"trainer.max_epochs": {"low": 1, "high": 4, "log": True, "step": 1}})
    assert load_sweep(str(path)).search.space["trainer.max_epochs"].step == 1


def test_an_ablation_reference_that_is_no_label_of_its_axis_is_refused(tmp_path):
    """It used to pass: the report printed dashes and said "no direction to rank clean accuracy by"."""
    from secure_ml.sweep.plan import SweepOptions, make_plan
    from secure_ml.sweep.validate import check_report

    def plan(reference):
        body = {
            "base": BASES,
            "grid": {"defence": {"all-on": {}, "no-adv": {"model.adversarial.epsilon": 0.0}}},
            "report": [{"kind": "ablation", "axis": "defence", "reference": reference, "metrics": {"utility": "test/acc"}}],
        }
        path = tmp_path / "abl.yaml"
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        return make_plan(SweepOptions(config=str(path), out=str(tmp_path / "sweeps")))

    check_report(plan("all-on"))  # the control
    with pytest.raises(ConfigError, match=r"reference 'all_on' is not a label of axis 'defence' \(labels: all-on, no-adv\)"):
        check_report(plan("all_on"))
