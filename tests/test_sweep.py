"""secure-ml sweep: sweep files, the scheduler on a real Optuna study, the report's sentences, and tiny sweeps end to end."""

import csv
import math
import multiprocessing as mp
import re
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from secure_ml.errors import ConfigError
from secure_ml.sweep.options import cli_args
from secure_ml.sweep.scheduler import DUPLICATE, Worker, run_grid
from secure_ml.sweep.spec import expand_grid, load_sweep, nest
from secure_ml.sweep.stats import Cell, diff, verdict
from tests.helpers.sweep import REPO, FakeRunner, fake_worker, jobs, open_grid_study

SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def _write(tmp_path: Path, body: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# ---- sweep files -------------------------------------------------------------------------------


def test_grid_is_the_product_of_its_axes_and_a_list_joins_grids(tmp_path):
    grid = [
        {"data.poison.rate": [0.0], "data.sanitizer.method": ["none", "knn"]},
        {
            "defence": {
                "no-dp": {"model.dp.enabled": False},
                "off": {"test": {"sponge.enabled": False}, "assume": {"sponge/reject_rate": 0}},
            }
        },
    ]
    points = expand_grid(grid, tmp_path / "x.yaml")
    assert [p.label for p in points] == ["rate=0, method=none", "rate=0, method=knn", "no-dp", "off"]
    assert points[1].overrides == {"data.poison.rate": 0.0, "data.sanitizer.method": "knn"}
    assert points[1].axes == {"data.poison.rate": 0.0, "data.sanitizer.method": "knn"}
    assert points[2].overrides == {"model.dp.enabled": False} and points[2].axes == {"defence": "no-dp"}
    assert (
        points[3].overrides == {}
        and points[3].test_overrides == {"sponge.enabled": False}
        and points[3].assume == {"sponge/reject_rate": 0.0}
    )


@pytest.mark.parametrize(
    "body, words",
    [
        ({"base": ["C"], "grid": {"model.dp.noise_multiplier": []}}, ["'model.dp.noise_multiplier'", "empty"]),
        ({"base": ["C"], "grid": {}}, ["'grid'"]),
        ({"base": ["C"], "grid": {"a": [1]}, "search": {"trials": 2}}, ["exactly one of 'grid'"]),
        ({"base": ["C"], "grid": {"a": [1]}, "repeat": 2}, ["unknown key 'repeat'"]),
        ({"base": ["C"], "grid": {"a": [1]}, "repeats": 0}, ["'repeats'"]),
        ({"base": ["missing.yaml"], "grid": {"a": [1]}}, ["missing.yaml", "does not exist"]),
        ({"base": ["C"], "search": {"trials": 3, "objectives": {"test/acc": "up"}, "space": {"a": [1]}}}, ["'test/acc'", "maximize"]),
        (
            {"base": ["C"], "search": {"trials": 3, "objectives": {"test/acc": "maximize"}, "space": {"a": {"low": 2, "high": 1}}}},
            ["'a'", "low"],
        ),
        ({"base": ["C"], "grid": {"x": {"a": {}, "b": {}}, "y": {"a": {}}}}, []),
        # two axes setting one option: the later one silently won, so points labelled apart trained alike
        (
            {"base": ["C"], "grid": {"model.dp.noise_multiplier": [0.5, 2.0], "dp": {"on": {"model.dp.noise_multiplier": 1.0}}}},
            ["axes 'model.dp.noise_multiplier' and 'dp' both set 'model.dp.noise_multiplier'"],
        ),
        # from a review: each of these was a TypeError or optuna's ValueError (during the run) instead of one line
        ({"base": [5], "grid": {"a": [1]}}, ["'base' must list config file paths"]),
        (
            {"base": ["C"], "search": {"trials": 1, "seed": "abc", "objectives": {"test/acc": "maximize"}, "space": {"a": [1]}}},
            ["search.seed must be an integer"],
        ),
        (
            {
                "base": ["C"],
                "search": {"trials": 1, "objectives": {"test/acc": "maximize"}, "space": {"a": {"low": 0.5, "high": 1.0, "step": 0}}},
            },
            ["'a'", "step must be > 0"],
        ),
    ],
)
def test_malformed_sweep_files_name_the_key(tmp_path, body, words):
    body["base"] = [str(REPO / "configs" / "capstone.yaml") if b == "C" else b for b in body["base"]]
    path = _write(tmp_path, body)
    if not words:  # labels "a, a"... are distinct from "b, a": this one is valid
        assert len(load_sweep(str(path)).points) == 2
        return
    with pytest.raises(ConfigError) as exc:
        load_sweep(str(path))
    for w in words:
        assert w in str(exc.value)


def test_extends_merges_set_and_replaces_the_rest(tmp_path):
    base = str(REPO / "configs" / "capstone.yaml")
    _write(tmp_path, {"base": [base], "set": {"a.b": 1, "c.d": 2}, "grid": {"x.y": [1, 2, 3]}, "repeats": 3}, "full.yaml")
    child = _write(tmp_path, {"extends": "full.yaml", "set": {"c.d": 5}, "grid": {"x.y": [1]}}, "full-cpu.yaml")
    sweep = load_sweep(str(child))
    assert sweep.name == "full-cpu" and sweep.set == {"a.b": 1, "c.d": 5} and len(sweep.points) == 1 and sweep.repeats == 3
    assert load_sweep(str(child), repeats=2).repeats == 2


def test_extends_with_a_set_that_is_not_a_mapping_names_it(tmp_path):
    _write(tmp_path, {"base": [str(REPO / "configs" / "capstone.yaml")], "grid": {"x.y": [1]}}, "parent.yaml")
    child = _write(tmp_path, {"extends": "parent.yaml", "set": [1, 2]}, "child.yaml")
    with pytest.raises(ConfigError, match="'set' must be a mapping"):
        load_sweep(str(child))


def test_nest_and_cli_args():
    assert nest({"model.dp.enabled": False, "model.dp.delta": 1e-5, "trainer.max_epochs": 2}) == {
        "model": {"dp": {"enabled": False, "delta": 1e-5}},
        "trainer": {"max_epochs": 2},
    }
    assert cli_args({"a.b": None, "c": [0.1, 0.3], "d": "knn", "e": True}) == ["--a.b=null", "--c=[0.1, 0.3]", "--d=knn", "--e=true"]


# ---- the measurable-difference rule ------------------------------------------------------------


def test_difference_inside_the_repeat_spread_is_not_measurable():
    a, b = Cell.of([0.80, 0.82, 0.81]), Cell.of([0.81, 0.83, 0.80])
    assert "no measurable difference" in verdict(diff(a, b))
    far = Cell.of([0.90, 0.91, 0.92])
    d = diff(a, far)
    assert d.measurable and "no measurable" not in verdict(d) and d.value == pytest.approx(0.1)
    assert "spread unknown" in verdict(diff(Cell.of([0.8]), Cell.of([0.9])))
    assert math.isnan(Cell.of([]).mean) and Cell.of([0.5]).text() == "0.500"


def test_metrics_sentence_follows_the_numbers(tmp_path):
    import pandas as pd

    from secure_ml.sweep.report.basic import metrics_section
    from secure_ml.sweep.report.common import Context

    def sentence(values_a, values_b):
        rows = [{"point": "a", "status": "ok", "test/acc": v} for v in values_a] + [
            {"point": "b", "status": "ok", "test/acc": v} for v in values_b
        ]
        ctx = Context(pd.DataFrame(rows), tmp_path, [], None)
        (section,) = metrics_section(ctx, {"kind": "metrics", "title": "t", "metrics": ["test/acc"], "figure": False})
        return section

    close = sentence([0.80, 0.82, 0.81], [0.81, 0.83, 0.80])
    assert "no measurable difference" in close.sentence and "| a | 0.810 ± 0.010 |" in close.table
    apart = sentence([0.80, 0.81, 0.82], [0.95, 0.96, 0.97])
    assert "best for b" in apart.sentence and "worst for a" in apart.sentence and "no measurable" not in apart.sentence


# ---- the scheduler on a real study (fake points, no Lightning) ---------------------------------


def _marks(folder: Path) -> Counter:
    return Counter("-".join(p.name.split("-")[:2]) for p in folder.iterdir())


def test_grid_runs_each_point_once_resume_runs_none_and_failures_are_recorded(tmp_path):
    storage, labels = f"sqlite:///{tmp_path / 'study.db'}", ["a", "b", "c"]
    study = open_grid_study(storage, "s", labels, 2)
    runner = FakeRunner(tmp_path / "marks", fail={"b"})
    assert run_grid(Worker(study, runner, jobs(labels, 2))) == 6
    assert _marks(tmp_path / "marks") == {f"{x}-{r}": 1 for x in labels for r in range(2)}
    states = {(t.user_attrs["point"], t.user_attrs["repeat"]): (t.state.name, t.user_attrs.get("error")) for t in study.trials}
    assert states[("b", 0)] == ("FAIL", "b is broken") and states[("a", 1)] == ("COMPLETE", None)
    assert run_grid(Worker(study, runner, jobs(labels, 2))) == 0  # resume: nothing left, failures are final
    assert run_grid(Worker(study, runner, jobs(labels, 2), retry_failed=True)) == 2  # unless asked
    assert _marks(tmp_path / "marks")["b-0"] == 2 and _marks(tmp_path / "marks")["a-0"] == 1


def test_a_changed_configuration_runs_again_and_more_repeats_only_add(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_grid_study(storage, "s", ["a"], 1)
    runner = FakeRunner(tmp_path / "marks")
    run_grid(Worker(study, runner, jobs(["a"], 1)))
    changed = [j.__class__(j.label, j.repeat, j.key + "-new", j.payload) for j in jobs(["a"], 1)]
    assert run_grid(Worker(study, runner, changed)) == 1
    from secure_ml.sweep.scheduler import done_keys

    bigger = open_grid_study(storage, "s2", ["a"], 3)  # another --repeats: a sibling study; earlier results count
    prior = frozenset(done_keys(study.get_trials(), False))
    assert run_grid(Worker(bigger, runner, jobs(["a"], 3), prior_done=prior)) == 2


def test_interrupted_and_stale_points_run_again_but_live_ones_are_left_alone(tmp_path):
    from optuna.trial import TrialState

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_grid_study(storage, "s", ["a", "b"], 1)
    for label, beat in (("a", time.time() - 1000), ("b", time.time())):  # a dead worker's point, a live worker's point
        t = study.ask()
        study._storage.set_trial_user_attr(t._trial_id, "point", label)
        study._storage.set_trial_user_attr(t._trial_id, "repeat", 0)
        study._storage.set_trial_user_attr(t._trial_id, "key", f"key-{label}-0")
        study._storage.set_trial_system_attr(t._trial_id, "sweep:beat", beat)
    runner = FakeRunner(tmp_path / "marks")
    assert run_grid(Worker(study, runner, jobs(["a", "b"], 1), stale_after=60)) == 1
    assert _marks(tmp_path / "marks") == {"a-0": 1}
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert [t.user_attrs["point"] for t in complete] == ["a"]
    assert all(not t.system_attrs.get(DUPLICATE) for t in complete)


def test_gridsampler_internals_the_scheduler_relies_on():
    import optuna

    from secure_ml.sweep.engine import grid_sampler

    s = grid_sampler({"point": ["a", "b"], "repeat": [0, 1]})
    assert s._param_names == ["point", "repeat"] and sorted(s._all_grids) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert s._search_space == {"point": ["a", "b"], "repeat": [0, 1]}
    assert isinstance(s, optuna.samplers.GridSampler)


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite", "journal", pytest.param("redis", marks=pytest.mark.redis)])
def test_two_worker_processes_share_one_study_without_duplicates_or_losses(tmp_path, storage):
    import uuid

    if storage == "redis":
        from tests.helpers.serving import redis_url

        url = redis_url()
    else:
        url = f"sqlite:///{tmp_path / 'study.db'}" if storage == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    name = f"s-{uuid.uuid4().hex[:8]}"  # a shared Redis may hold earlier runs' studies
    labels, repeats = [f"p{i}" for i in range(8)], 2
    open_grid_study(url, name, labels, repeats)  # created once, as the coordinator does
    marks = tmp_path / "marks"
    ctx = mp.get_context("spawn")
    start_at = time.time() + 4.0
    procs = [ctx.Process(target=fake_worker, args=(url, name, labels, repeats, i, str(marks), 0.05, start_at)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    runs = _marks(marks)
    assert runs == {f"{x}-{r}": 1 for x in labels for r in range(repeats)}  # none twice, none lost
    pids = {p.name.split("-")[2] for p in marks.iterdir()}
    assert len(pids) == 2  # both workers took part
    study = open_grid_study(url, name, labels, repeats)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == len(labels) * repeats


# ---- every sweep file of the project -----------------------------------------------------------


def test_every_exercise_has_a_sweep_file_and_a_cpu_variant():
    names = {p.stem for p in SWEEPS}
    for name in ("attack-strength", "poisoning-budget", "privacy-budget", "sponge-threshold", "ablation", "cross-threat", "pareto"):
        assert name in names and f"{name}-cpu" in names


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_sweep_file_parses_and_names_only_real_options(path):
    from secure_ml.sweep.plan import SweepOptions, make_plan
    from secure_ml.sweep.validate import validate

    plan = make_plan(SweepOptions(config=str(path)))
    assert plan.jobs or plan.sweep.is_search
    assert plan.sweep.report
    validate(plan)


@pytest.mark.slow
def test_validation_refuses_an_unknown_option_or_a_wrong_type_before_anything_runs(tmp_path, monkeypatch, capsys):
    from secure_ml.cli import main

    monkeypatch.chdir(tmp_path)
    base = [str(REPO / "configs" / "capstone.yaml")]
    for grid, words in (
        ({"model.dp.noise_multipler": [1.0]}, ["grid point", "'model.dp.noise_multipler'", "not a secure-ml fit option"]),
        ({"model.dp.noise_multiplier": ["lots"]}, ["'model.dp.noise_multiplier'", "lots", "float"]),
    ):
        path = _write(tmp_path, {"base": base, "grid": grid, "report": [{"kind": "metrics", "metrics": ["test/acc"]}]})
        with pytest.raises(SystemExit) as exc:
            main(["sweep", "--config", str(path)])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("secure-ml: error:") and len(err.splitlines()) == 1
        for w in words:
            assert w in err
        assert not (tmp_path / "sweeps").exists()  # nothing ran, no study was created
    path = _write(
        tmp_path, {"base": base, "grid": {"trainer.max_epochs": [1]}, "report": [{"kind": "metrics", "metrics": ["test/accuracy"]}]}
    )
    with pytest.raises(ConfigError, match="test/accuracy"):
        from secure_ml.sweep.cli import sweep_main

        sweep_main(["--config", str(path)])


# ---- tiny sweeps end to end --------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, words",
    [
        # --set beats every point's overrides: rows labelled sigma 0.5 and 2.0 both ran sigma 1.0
        (["--set", "model.dp.noise_multiplier=1.0"], "--set model.dp.noise_multiplier sets an option the sweep varies"),
        (["--set", "robustness.pgd_steps=5"], "--set robustness.pgd_steps sets an option the sweep varies"),  # a test.grid axis
        (["--threads", "-2"], "--threads must be >= 1"),  # was torch's traceback
        (["--threads", "0"], "--threads must be >= 1"),  # was silently the default
        (["--stale-after", "0"], "--stale-after must be a finite number of seconds >= 20"),  # every live point looked dead
    ],
)
def test_bad_command_line_options_are_refused_before_anything_runs(tmp_path, monkeypatch, argv, words):
    from secure_ml.sweep.cli import sweep_main

    monkeypatch.chdir(tmp_path)
    body = {
        "base": [str(REPO / "configs" / "capstone.yaml")],
        "grid": {"model.dp.noise_multiplier": [0.5, 2.0]},
        "test": {"grid": {"robustness.pgd_steps": [1, 20]}},
        "report": [{"kind": "metrics", "metrics": ["test/acc"]}],
    }
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError, match=re.escape(words)):
        sweep_main(["--config", str(path), *argv])
    assert not (tmp_path / "sweeps").exists()  # nothing ran, no study was created


def test_a_test_grid_that_keeps_the_metric_names_fails_the_point_instead_of_overwriting():
    """A test.grid over PGD steps: both runs report adv/pgd_acc@0.1, and the row kept only the last one (0.0, not 0.0167)."""
    from secure_ml.sweep.runner import _check_no_overwrite

    seen = {}
    _check_no_overwrite(seen, 0, {"adv/clean_acc": 0.9, "adv/pgd_acc@0.1": 0.0167, "mia/auc": float("nan")})
    _check_no_overwrite(seen, 1, {"adv/clean_acc": 0.9, "adv/pgd_acc@0.3": 0.0, "mia/auc": float("nan")})  # names differ: fine
    with pytest.raises(ConfigError, match=r"test runs 0 and 2 of the point both report adv/pgd_acc@0.1 \(0.0167 vs 0\)"):
        _check_no_overwrite(seen, 2, {"adv/clean_acc": 0.9, "adv/pgd_acc@0.1": 0.0})


def _tiny(tmp_path: Path, data: Path, grid) -> Path:
    body = {
        "description": "two points on the smoke config",
        "base": [str(REPO / "configs" / "capstone.yaml"), str(REPO / "configs" / "smoke.yaml")],
        "set": {
            "data.data_dir": str(data),
            "data.download": False,
            "data.train_size": 300,
            "data.val_size": 60,
            "data.test_size": 80,
            "data.sanitizer.method": "none",
            "model.dp.enabled": False,
            "sponge.enabled": False,
            "membership.max_samples": 60,
            "robustness.max_samples": 32,
            "robustness.pgd_max_samples": 16,
            "robustness.pgd_steps": 2,
        },
        "grid": grid,
        "test": {"set": {"robustness.epsilons": [0.05, 0.1]}},
        "repeats": 1,
        "report": [
            {"kind": "metrics", "title": "Tiny", "metrics": ["test/acc", "adv/fgsm_acc@0.1", "mia/auc"]},
            {"kind": "lines", "title": "Tiny lines", "x": "model.adversarial.epsilon", "y": ["test/acc"]},
        ],
    }
    return _write(tmp_path, body)


def _rows(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_tiny_sweep_end_to_end_with_a_failing_point_and_resume(tiny_mnist, tmp_path, monkeypatch):
    from secure_ml.sweep.cli import sweep_main

    monkeypatch.chdir(tmp_path)
    grid = [{"model.adversarial.epsilon": [0.0, 0.05]}, {"broken": {"val-too-big": {"data.val_size": 5000}}}]
    path = _tiny(tmp_path, tiny_mnist, grid)
    assert sweep_main(["--config", str(path), "--threads", "1"]) == 1  # a point failed: status 1, the others ran
    out = tmp_path / "sweeps" / "tiny"
    rows = _rows(out / "results.csv")
    assert [r["point"] for r in rows] == ["epsilon=0", "epsilon=0.05", "val-too-big"]
    for column in ("point", "repeat", "model.adversarial.epsilon", "status", "error", "wall_s", "test/acc", "adv/fgsm_acc@0.1", "mia/auc"):
        assert column in rows[0]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 2 and {r["model.adversarial.epsilon"] for r in ok} == {"0.0", "0.05"}
    for r in ok:
        assert 0.0 <= float(r["test/acc"]) <= 1.0 and 0.0 <= float(r["adv/fgsm_acc@0.1"]) <= float(r["adv/clean_acc"]) + 1e-9
        assert float(r["wall_s"]) > 0 and r["error"] == ""
    bad = rows[2]
    assert bad["status"] == "failed" and "--data.val_size" in bad["error"] and "\n" not in bad["error"] and bad["test/acc"] == ""
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 1000 for p in pngs)
    summary = (out / "summary.md").read_text()
    assert "| epsilon=0 |" in summary and "Clean accuracy is best for" in summary and "val-too-big" in summary

    before = _count(out)
    start = time.perf_counter()
    assert sweep_main(["--config", str(path)]) == 1  # resume: the failure is still reported...
    assert _count(out) == before  # ...and no point ran again
    assert time.perf_counter() - start < 60
    assert _rows(out / "results.csv") == rows


def _count(out: Path) -> int:
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    return sum(len(storage.get_all_trials(s._study_id)) for s in storage.get_all_studies())


@pytest.mark.slow
def test_tiny_sweep_with_two_worker_processes(tiny_mnist, tmp_path, monkeypatch):
    from secure_ml.sweep.cli import sweep_main

    monkeypatch.chdir(tmp_path)
    path = _tiny(tmp_path, tiny_mnist, {"model.adversarial.epsilon": [0.0, 0.05]})
    assert sweep_main(["--config", str(path), "--n-jobs", "2", "--seed", "3"]) == 0
    out = tmp_path / "sweeps" / "tiny"
    rows = _rows(out / "results.csv")
    assert sorted(r["status"] for r in rows) == ["ok", "ok"]
    assert {r["worker"] for r in rows} <= {"0", "1"}  # scheduling across processes is pinned by the fake-runner test above
    assert {r["seed_everything"] for r in rows} == {"3"} and {r["model.dp.noise_seed"] for r in rows} == {"3"}
    assert (out / "logs" / "worker-0.log").exists() and (out / "logs" / "worker-1.log").exists() and _count(out) == 2


# ---- report kinds on synthetic results (the sentences follow the numbers) -------------------------


def _ctx(tmp_path, rows, axes, plan=None):
    import pandas as pd

    from secure_ml.sweep.report.common import Context

    return Context(pd.DataFrame(rows), tmp_path, axes, plan)


def test_attack_curve_flags_a_model_that_pgd_at_full_range_cannot_break(tmp_path):
    from secure_ml.sweep.report.attack import attack_section

    rows = []
    for model, acc, masked in (("honest", 0.98, 0.0), ("masked", 0.97, 0.45)):
        for r in range(2):
            rows.append(
                {"point": model, "model": model, "status": "ok", "test/acc": acc, "adv/fgsm_acc@0.1": 0.5 + r * 0.01}
                | {"adv/pgd_acc@0.1": 0.40 + r * 0.01, "adv/pgd_acc@1": masked + r * 0.01}
            )
    (section,) = attack_section(_ctx(tmp_path, rows, ["model"]), {"rows": ["model"], "masking_epsilon": 1.0, "reference_epsilon": 0.1})
    assert "Suspected gradient masking" in section.sentence and "masked (0.455" in section.sentence and "honest (" not in section.sentence
    assert "| honest | PGD | 0.980 ± 0.000 | 0.405 ± 0.007 |" in section.table
    assert (tmp_path / section.figure).stat().st_size > 1000
    rows = [r for r in rows if r["model"] == "honest"]
    (section,) = attack_section(_ctx(tmp_path, rows, ["model"]), {"rows": ["model"], "masking_epsilon": 1.0})
    assert "no sign of gradient masking" in section.sentence


def test_ablation_names_the_defence_whose_removal_hurts_most(tmp_path):
    from secure_ml.sweep.report.ablation import ablation_section

    base = {"status": "ok", "test/acc": 0.80, "mia/auc": 0.50, "privacy/epsilon": 1.0, "adv/pgd_acc@0.1": 0.50}
    rows = []
    for r in range(3):
        rows.append({**base, "point": "all-on", "defence": "all-on", "mia/auc": 0.50 + 0.005 * r})
        rows.append({**base, "point": "no-dp", "defence": "no-dp", "mia/auc": 0.60 + 0.005 * r, "privacy/epsilon": float("nan")})
        rows.append({**base, "point": "no-adv", "defence": "no-adv", "adv/pgd_acc@0.1": 0.20 + 0.01 * r, "mia/auc": 0.50 + 0.004 * r})
    spec = {
        "axis": "defence",
        "reference": "all-on",
        "metrics": {"evasion": "adv/pgd_acc@0.1", "membership": "mia/auc", "privacy": "privacy/epsilon"},
    }
    (section,) = ablation_section(_ctx(tmp_path, rows, ["defence"]), spec)
    assert section.sentence.startswith("Adv contributes most to evasion (PGD accuracy @ 0.1 −0.290 ± 0.010 without it)")
    assert (
        "dp contributes most to membership" in section.sentence
        and "dp contributes most to privacy (without it there is no finite" in section.sentence
    )
    assert "ε = ∞ (no guarantee)" in section.table


def test_frontier_sentence_catches_an_audit_above_the_accountant(tmp_path):
    from secure_ml.sweep.report.privacy import frontier_section

    rows = [
        {"point": "s1", "status": "ok", "privacy/epsilon": 0.5, "test/acc": 0.6, "mia/auc": 0.5, "privacy/epsilon_lower_bound": 0.1},
        {"point": "s2", "status": "ok", "privacy/epsilon": 4.0, "test/acc": 0.9, "mia/auc": 0.52, "privacy/epsilon_lower_bound": 4.5},
        {"point": "no-dp", "status": "ok", "test/acc": 0.97, "mia/auc": 0.56},
    ]
    (section,) = frontier_section(_ctx(tmp_path, rows, []), {"y": ["test/acc", "mia/auc"]})
    assert section.table.splitlines()[2].startswith("| s1 | 0.500 |") and "∞ (no DP)" in section.table
    assert "From ε = 0.50 (s1) to ε = 4.00 (s2), clean accuracy changes by +0.300" in section.sentence
    assert "exceeds the accountant's ε for s2 (4.50 > 4.00)" in section.sentence


def test_pareto_front_points_become_config_deltas(tmp_path):
    from types import SimpleNamespace

    from secure_ml.sweep.report.privacy import pareto_section
    from secure_ml.sweep.search import Param

    space = {
        "model.optimizer.init_args.lr": Param("model.optimizer.init_args.lr", "float", low=0.01, high=0.3),
        "data.batch_size": Param("data.batch_size", "categorical", choices=(64, 128)),
    }
    search = SimpleNamespace(objectives={"test/acc": "maximize", "privacy/epsilon": "minimize"}, space=space)
    sweep = SimpleNamespace(
        name="pareto",
        bases=[REPO / "configs" / "capstone.yaml", REPO / "configs" / "smoke.yaml"],
        set={"trainer.max_epochs": 2},
        search=search,
    )
    rows = [
        {
            "point": "trial 0",
            "trial": 0,
            "status": "ok",
            "pareto": True,
            "test/acc": 0.9,
            "privacy/epsilon": 3.0,
            "model.optimizer.init_args.lr": 0.1,
            "data.batch_size": 64,
        },
        {
            "point": "trial 1",
            "trial": 1,
            "status": "ok",
            "pareto": True,
            "test/acc": 0.7,
            "privacy/epsilon": 0.5,
            "model.optimizer.init_args.lr": 0.02,
            "data.batch_size": 128,
        },
        {
            "point": "trial 2",
            "trial": 2,
            "status": "ok",
            "pareto": False,
            "test/acc": 0.6,
            "privacy/epsilon": 3.5,
            "model.optimizer.init_args.lr": 0.2,
            "data.batch_size": 64,
        },
    ]
    plan = SimpleNamespace(sweep=sweep, options=SimpleNamespace(seed=None, set={}))
    (section,) = pareto_section(_ctx(tmp_path, rows, [], plan), {})
    assert "2 of 3 finished trials are Pareto-optimal" in section.sentence
    front0 = yaml.safe_load((tmp_path / "front-0.yaml").read_text())  # sorted by ε: trial 1 first
    assert front0["model"]["optimizer"]["init_args"]["lr"] == 0.02 and front0["data"]["batch_size"] == 128
    assert front0["trainer"]["max_epochs"] == 2 and front0["data"]["train_size"] == 1200  # the sweep's set and smoke.yaml's delta
    assert (tmp_path / "front-0.yaml").read_text().startswith("# Pareto front point 0 of sweep 'pareto' (trial 1)")
    assert not (tmp_path / "front-2.yaml").exists()


@pytest.mark.slow
def test_a_front_file_reproduces_its_trial_through_the_cli(tmp_path):
    from secure_ml.cli import cli_main

    delta = {"model": {"optimizer": {"init_args": {"lr": 0.05}}, "dp": {"noise_multiplier": 0.7}}, "data": {"batch_size": 128}}
    (tmp_path / "front-0.yaml").write_text(yaml.safe_dump(delta))
    cli = cli_main(["--config", str(REPO / "configs" / "capstone.yaml"), "--config", str(tmp_path / "front-0.yaml")], run=False)
    assert cli.model.dp.noise_multiplier == 0.7 and cli.datamodule.batch_size == 128
    assert cli.config["model"]["optimizer"]["init_args"]["lr"] == 0.05 and cli.config["model"]["optimizer"]["init_args"]["momentum"] == 0.9


@pytest.mark.slow
def test_ctrl_c_marks_the_running_point_interrupted_and_the_next_run_resumes_it(tiny_mnist, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys

    from secure_ml.sweep.cli import sweep_main

    path = _tiny(tmp_path, tiny_mnist, {"model.adversarial.epsilon": [0.0, 0.05]})
    body = yaml.safe_load(path.read_text())
    body["set"]["trainer.max_epochs"] = 15  # a point trains for seconds, so the signal below lands inside it, not after it
    path.write_text(yaml.safe_dump(body))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "secure_ml", "sweep", "--config", str(path)], cwd=tmp_path, env=env)
    runs = tmp_path / "sweeps" / "tiny" / "runs"  # runs/<study hash>/<trial>/log.txt
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any("Seed set" in log.read_text(errors="replace") for log in runs.glob("*/0000/log.txt")):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # while the first point trains
    assert proc.wait(120) == 130
    rows = _rows(tmp_path / "sweeps" / "tiny" / "results.csv")
    assert "interrupted" in {r["status"] for r in rows} and "failed" not in {r["status"] for r in rows}
    monkeypatch.chdir(tmp_path)
    assert sweep_main(["--config", str(path)]) == 0  # the interrupted point runs again, the finished one (if any) does not
    assert sorted(r["status"] for r in _rows(tmp_path / "sweeps" / "tiny" / "results.csv")) == ["ok", "ok"]


def test_attack_curve_calls_pgd_weaker_than_fgsm_only_beyond_the_sampling_error(tmp_path):
    from types import SimpleNamespace

    from secure_ml.sweep.report.attack import attack_section

    plan = SimpleNamespace(sweep=SimpleNamespace(test_set={"robustness.max_samples": 1000, "robustness.pgd_max_samples": 300}))
    rows = []
    for model, pgd in (("close", 0.965), ("far", 0.80)):  # FGSM 0.962 / 0.60 at ε = 0.01, both with a tiny repeat spread
        fgsm = 0.962 if model == "close" else 0.60
        for r in range(2):
            rows.append(
                {"point": model, "model": model, "status": "ok", "test/acc": 0.97}
                | {"adv/fgsm_acc@0.01": fgsm + r * 0.001, "adv/pgd_acc@0.01": pgd + r * 0.001}
            )
    (section,) = attack_section(_ctx(tmp_path, rows, ["model"], plan), {"rows": ["model"], "masking_epsilon": 1.0})
    assert "far: PGD is measurably weaker than FGSM at ε = 0.01" in section.sentence
    assert "close: PGD" not in section.sentence  # +0.003 on 300 vs 1,000 digits is sampling noise, not masking


def test_roc_sentence_names_the_operating_point_the_best_single_check_and_its_ties(tmp_path):
    from secure_ml.sweep.report.roc import roc_section

    def row(point, check, fpr, tpr):
        return {"point": point, "status": "ok", "policy.check": check, "policy.false_positive_rate": 0.005}, {
            "sponge/false_positive_rate": fpr,
            "sponge/reject_rate_crafted": tpr,
            "sponge/reject_rate_gaussian": 1.0,
        }

    rows = [a | b for a, b in (row("op", "all", 0.002, 1.0), row("d", "density", 0.001, 0.75), row("l", "layer_density", 0.0, 0.75))]
    rows += [a | b for a, b in (row("e", "energy", 0.001, 0.26), row("v", "variance", 0.05, 0.9))]  # v: better but more false positives
    (section,) = roc_section(_ctx(tmp_path, rows, []), {"operating_point": "op"})
    assert "At the operating point (op) the policy rejects 1.000 of crafted sponges and 0.0020 of clean digits." in section.sentence
    assert "best single check at no more false positives is d (0.750 rejected; difference to the operating point −0.250" in section.sentence
    assert "tied with 'l'." in section.sentence and "'e'" not in section.sentence and "is v" not in section.sentence


def test_lines_sentence_uses_the_measured_ends_and_names_the_best_series_there(tmp_path):
    from secure_ml.sweep.report.basic import lines_section

    rows = [{"point": f"{m}-0", "status": "ok", "rate": 0.0, "method": m, "test/acc": 0.9} for m in ("none", "knn")]
    for rate, f1_knn, f1_none in ((0.1, 0.95, 0.0), (0.2, 0.99, 0.0)):  # F1 exists only where labels were flipped
        rows += [{"point": f"knn-{rate}", "status": "ok", "rate": rate, "method": "knn", "test/acc": 0.88, "poison/f1": f1_knn}]
        rows += [{"point": f"none-{rate}", "status": "ok", "rate": rate, "method": "none", "test/acc": 0.7, "poison/f1": f1_none}]
    spec = {"x": "rate", "y": ["poison/f1"], "series": ["method"], "title": "t"}
    (section,) = lines_section(_ctx(tmp_path, rows, ["rate", "method"]), spec)
    assert section.sentence.startswith("From rate = 0.1 to 0.2, label-flip detection F1 changes most for knn (+0.040")
    assert "At rate = 0.2 it is best for knn (0.990) and worst for none (0.000): +0.990" in section.sentence


def test_lines_sentence_calls_series_level_when_the_table_shows_them_equal(tmp_path):
    from secure_ml.sweep.report.basic import lines_section

    rows = [
        {"point": f"{s}-{x}", "status": "ok", "x": x, "s": s, "mia/auc": auc}
        for s, x, auc in (("a", 0.0, 0.495), ("a", 0.1, 0.5012), ("b", 0.0, 0.496), ("b", 0.1, 0.5009))
    ]
    (section,) = lines_section(_ctx(tmp_path, rows, ["x", "s"]), {"x": "x", "y": ["mia/auc"], "series": ["s"]})
    assert "At x = 0.1 every series is at 0.501." in section.sentence and "best for" not in section.sentence


def test_lines_sorts_a_numeric_axis_written_out_of_order(tmp_path):
    """From a review: a grid [0.5, 0.0, 0.1] drew a V back across the plot and a trend from 0.5 to 0.1 (+0.300)."""
    from secure_ml.sweep.report.basic import lines_section

    rows = [
        {"point": f"e={e}", "status": "ok", "model.adversarial.epsilon": e, "test/acc": acc + 0.001 * r}
        for e, acc in ((0.5, 0.60), (0.0, 0.95), (0.1, 0.90))
        for r in range(2)
    ]
    spec = {"x": "model.adversarial.epsilon", "y": ["test/acc"], "title": "L"}
    (section,) = lines_section(_ctx(tmp_path, rows, ["model.adversarial.epsilon"]), spec)
    header = section.table.splitlines()[0]
    assert header.index("= 0 ") < header.index("= 0.1 ") < header.index("= 0.5 ")
    assert section.sentence.startswith("From model.adversarial.epsilon = 0.0 to 0.5, clean accuracy changes by −0.349")
