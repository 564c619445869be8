"""Refuse a bad sweep before anything runs: every option name and value is parsed by the real CLI, every report entry checked."""

from secure_ml.errors import ConfigError
from secure_ml.report.metric_names import check_known
from secure_ml.sweep.options import OptionChecker, check_all, checker_for
from secure_ml.sweep.plan import Plan

REPORT_METRIC_KEYS = ("metrics", "y", "focus", "clean", "x")
LIST_KEYS = ("metrics", "y", "series", "rows")  # report keys the sections iterate (``metrics`` may also be a mapping)


def check_report(plan: Plan) -> None:
    from secure_ml.sweep.report import KINDS

    where = str(plan.sweep.path)
    for i, spec in enumerate(plan.sweep.report):
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"{where}: report[{i}].kind must be one of {', '.join(KINDS)}; got {kind!r}")
        if kind == "pareto" and not plan.sweep.is_search:
            raise ConfigError(f"{where}: report[{i}]: a 'pareto' entry needs a 'search' sweep")
        names = []
        for key in LIST_KEYS:
            if isinstance(spec.get(key), str):  # the report would iterate its characters: one section per letter
                raise ConfigError(f"{where}: report[{i}].{key} must be a list, not the string {spec[key]!r} (write [{spec[key]}])")
        for key in REPORT_METRIC_KEYS:
            value = spec.get(key)
            if key == "x" and kind == "lines":
                continue  # lines: x is an axis, not a metric
            names += value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value] if value else []
        axes = {a for p in plan.sweep.points for a in p.axes} | {"point"}
        columns = [spec.get("x")] if kind == "lines" else []
        columns += list(spec.get("series") or []) + list(spec.get("rows") or []) + list(spec.get("where") or {})
        columns += [spec["axis"]] if kind == "ablation" and "axis" in spec else []
        for column in columns:
            if column not in axes and not plan.sweep.is_search:
                raise ConfigError(
                    f"{where}: report[{i}] ({kind}) names '{column}', which is not an axis of the grid (axes: {', '.join(sorted(axes))})"
                )
        if kind == "ablation" and spec.get("reference") is not None:
            labels = list(dict.fromkeys(p.axes[spec["axis"]] for p in plan.sweep.points if spec.get("axis") in p.axes))
            if spec["reference"] not in labels:
                raise ConfigError(
                    f"{where}: report[{i}] (ablation): reference {spec['reference']!r} is not a label of axis "
                    f"'{spec.get('axis')}' (labels: {', '.join(map(str, labels))})"
                )
        for name in names:
            if isinstance(name, str):
                check_known(name, f"{where}: report[{i}] ({kind})")
    if plan.sweep.is_search:
        for metric in plan.sweep.search.objectives:
            check_known(metric, f"{where}: search.objectives")


def validate(plan: Plan) -> OptionChecker:
    """ConfigError naming the file and the key for anything a point would trip over; returns the parser (reused for seeds)."""
    sweep = plan.sweep
    where = str(sweep.path)
    if sweep.is_search and sweep.kind == "policy":
        raise ConfigError(f"{where}: a 'kind: policy' sweep evaluates a grid of policies; it takes 'grid:', not 'search:'")
    if sweep.is_search and plan.options.retry_failed:
        raise ConfigError(
            "--retry-failed reruns failed grid points; a search's failed trial is part of its budget (fix the cause: "
            "a changed configuration starts a new study)"
        )
    check_report(plan)
    _check_set_is_no_axis(plan)
    checker = checker_for(sweep.bases)
    items = [("set", sweep.set), ("--set", plan.options.set)]  # then every point with them
    if sweep.kind == "policy":
        from secure_ml.sweep import policy as pol

        pol.settings(sweep.policy)
        for p in sweep.points:
            pol.check_point(p.label, p.overrides, where)
            items.append((f"grid point '{p.label}'", pol.training_overrides(p.overrides)))
    else:
        items += [(f"grid point '{p.label}'", {**sweep.set, **p.overrides}) for p in sweep.points]
        items += [(f"grid point '{p.label}' (test)", {**sweep.set, **sweep.test_set, **p.test_overrides}) for p in sweep.points]
        items += [("test.grid", {**sweep.set, **sweep.test_set, **combo}) for combo in sweep.test_grid]
    if sweep.is_search:
        for name, p in sweep.search.space.items():
            values = list(p.choices) if p.kind == "categorical" else [int(p.low), int(p.high)] if p.kind == "int" else [p.low, p.high]
            items += [("search.space", {name: v}) for v in values]
    check_all(checker, where, items)
    return checker


def _check_set_is_no_axis(plan: Plan) -> None:
    """``--set`` wins over every point's own overrides: on an axis it would give every point one value under many labels."""
    sweep = plan.sweep
    axes = {k for p in sweep.points for k in p.overrides} | {k for combo in sweep.test_grid for k in combo}
    axes |= set(sweep.search.space) if sweep.is_search else set()
    clash = sorted(k for k in plan.options.set if k in axes)
    if clash:
        raise ConfigError(
            f"--set {clash[0]} sets an option the sweep varies ({sweep.path}); every point would run with the --set value "
            "under its own label: drop the --set, or change the sweep file"
        )
