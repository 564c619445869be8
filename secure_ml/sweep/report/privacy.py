"""``frontier`` (Exercise 3: metrics against the accountant's ε) and ``pareto`` (the multi-objective search's front)."""

import math
from typing import Any, Dict, List

import yaml

from secure_ml.sweep.report.common import Context, Section, cells, md_table, name_of, save, slug
from secure_ml.sweep.spec import nest
from secure_ml.sweep.stats import better, diff, inline, label, verdict

EPS = "privacy/epsilon"


def frontier_section(ctx: Context, spec: Dict[str, Any]) -> List[Section]:
    ys = spec.get("y", ["test/acc", "mia/auc"])
    by = spec.get("rows", ["point"])
    df = ctx.ok
    eps = dict(cells(df, by, EPS))
    cols = {y: dict(cells(df, by, y)) for y in ys}
    groups = sorted(cols[ys[0]], key=lambda g: eps[g].mean if not eps[g].empty else math.inf)
    rows = [[name_of(g), eps[g].text() if not eps[g].empty else "∞ (no DP)"] + [cols[y][g].text() for y in ys] for g in groups]
    table = md_table([" / ".join(by), "ε"] + [f"`{y}`" for y in ys], rows)
    private = [g for g in groups if not eps[g].empty]
    public = [g for g in groups if eps[g].empty]
    sentences = []
    for y in ys[:2]:
        if len(private) >= 2:
            lo, hi = private[0], private[-1]
            sentences.append(
                f"From ε = {eps[lo].mean:.2f} ({name_of(lo)}) to ε = {eps[hi].mean:.2f} ({name_of(hi)}), {inline(y)} changes by "
                f"{verdict(diff(cols[y][lo], cols[y][hi]))}"
                + (f"; without DP it differs from the latter by {verdict(diff(cols[y][hi], cols[y][public[0]]))}" if public else "")
                + "."
            )
    sentences.append(_audit(df, by, groups, eps))
    figure = _frontier_figure(ctx, spec, groups, eps, cols, ys[:2])
    return [Section(spec.get("title", "Privacy budget"), table, " ".join(s for s in sentences if s), figure)]


def _audit(df, by, groups, eps) -> str:
    lb = dict(cells(df, by, "privacy/epsilon_lower_bound"))
    pairs = [(g, lb[g], eps[g]) for g in groups if g in lb and not lb[g].empty and not eps[g].empty]
    if not pairs:
        return ""
    over = [(g, b, e) for g, b, e in pairs if b.mean > e.mean]
    if over:
        names = ", ".join(f"{name_of(g)} ({b.mean:.2f} > {e.mean:.2f})" for g, b, e in over)
        return f"The empirical ε lower bound exceeds the accountant's ε for {names}: a privacy bug or a wrong δ."
    top = max(b.mean for _, b, _ in pairs)
    return f"The empirical ε lower bound (one-run audit) never exceeds the accountant's ε (largest bound {top:.2f})."


def _frontier_figure(ctx: Context, spec, groups, eps, cols, ys) -> str:
    import matplotlib.pyplot as plt

    finite = [eps[g].mean for g in groups if not eps[g].empty]
    nodp_x = (max(finite) * 2.0) if finite else 1.0
    fig, axes = plt.subplots(1, len(ys), figsize=(4.6 * len(ys), 3.4), squeeze=False)
    for ax, y in zip(axes[0], ys):
        pts = [(eps[g].mean if not eps[g].empty else nodp_x, cols[y][g], g) for g in groups if not cols[y][g].empty]
        families = list(dict.fromkeys(name_of(g).split("=")[0] for _, _, g in pts))
        for fam in families:  # e.g. noise_multiplier=..., target_epsilon=..., no-dp: one colour each
            mine = [(x, c) for x, c, g in pts if name_of(g).split("=")[0] == fam]
            ax.errorbar(
                [x for x, _ in mine],
                [c.mean for _, c in mine],
                yerr=[0 if math.isnan(c.std) else c.std for _, c in mine],
                fmt="o",
                capsize=3,
                label=fam,
            )
        for x, c, g in pts:
            text = name_of(g).split("=")[-1] if not eps[g].empty else "no DP"
            ax.annotate(text, (x, c.mean), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = _front([(x, c.mean) for x, c, g in pts if not eps[g].empty], maximize=better(y) is not False)
        if front:
            ax.plot(*zip(*front), "--", color="grey", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("ε (accountant, log scale; no DP at the right)", fontsize=8)
        ax.set_ylabel(label(y), fontsize=8)
        ax.grid(alpha=0.3)
        if len(families) > 1:
            ax.legend(fontsize=6)
    fig.suptitle(spec.get("title", "Privacy-utility frontier"), fontsize=9)
    return save(fig, ctx, slug(spec.get("title", "frontier")))


def _front(points, maximize: bool) -> List[tuple]:
    """Non-dominated (x, y) pairs for "small x, large y" (or small y when not ``maximize``), sorted by x."""
    best, out = -math.inf if maximize else math.inf, []
    for x, y in sorted(points):
        if (y > best) if maximize else (y < best):
            out.append((x, y))
            best = y
    return out


def pareto_section(ctx: Context, spec: Dict[str, Any]) -> List[Section]:
    search = ctx.plan.sweep.search
    objectives = search.objectives
    df = ctx.ok
    front = df[df["pareto"] == True] if "pareto" in df.columns else df.iloc[0:0]  # noqa: E712
    params = list(search.space)
    x = EPS if EPS in objectives else next(iter(objectives))
    front = front.sort_values(x) if x in front.columns else front
    rows = []
    for k, (_, r) in enumerate(front.iterrows()):
        rows.append([f"front-{k}", r["trial"]] + [_fmt(r.get(p)) for p in params] + [_fmt(r.get(o)) for o in objectives])
    table = md_table(["file", "trial"] + [f"`{p}`" for p in params] + [f"`{o}`" for o in objectives], rows)
    written = write_fronts(ctx, front, objectives)
    if front.empty:
        sentence = "No trial finished, so there is no front."
    else:
        ys = [o for o in objectives if o != x]
        top = front.sort_values(ys[0], ascending=objectives[ys[0]] == "minimize").iloc[0] if ys else front.iloc[0]
        sentence = (
            f"{len(front)} of {len(df)} finished trials are Pareto-optimal; the front spans {inline(x)} from {front[x].min():.3g} to "
            f"{front[x].max():.3g}"
            + (f", and its best {inline(ys[0])} is {top[ys[0]]:.3f} at {inline(x)} {top[x]:.3g} (trial {top['trial']})" if ys else "")
            + f". Each front point is written as {written}."
        )
    figure = _pareto_figure(ctx, spec, df, front, objectives, x)
    return [Section(spec.get("title", "Pareto front"), table, sentence, figure)]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_fronts(ctx: Context, front, objectives) -> str:
    """``<sweep>/front-<k>.yaml``: the base deltas, the sweep's ``set``, the trial's parameters (in their own type), the
    ``--seed`` seeds and the command line's ``--set`` (data locations aside), as one config delta: what the trial's fit got."""
    from secure_ml.sweep.plan import LOCATION_KEYS

    plan = ctx.plan
    space = plan.sweep.search.space
    seeds = plan.seeds(0) if plan.options.seed is not None else {}
    cli_set = {k: v for k, v in plan.options.set.items() if k not in LOCATION_KEYS}
    for old in ctx.out_dir.glob("front-*.yaml"):
        old.unlink()
    merged: Dict[str, Any] = {}
    for base in plan.sweep.bases[1:]:
        _merge(merged, yaml.safe_load(base.read_text()) or {})
    first = plan.sweep.bases[0]
    for k, (_, r) in enumerate(front.iterrows()):
        delta = dict(merged)
        params = {p: int(_native(r[p])) if space[p].kind == "int" else _native(r[p]) for p in space}
        _merge(delta, nest({**plan.sweep.set, **params, **seeds, **cli_set}))
        scores = ", ".join(f"{o} = {r[o]:.4g}" for o in objectives)
        head = (
            f"# Pareto front point {k} of sweep '{plan.sweep.name}' (trial {r['trial']}): {scores}.\n"
            f"#   secure-ml fit --config {_shown(first)} --config {ctx.out_dir / f'front-{k}.yaml'}\n"
        )
        (ctx.out_dir / f"front-{k}.yaml").write_text(head + yaml.safe_dump(delta, sort_keys=False))
    return f"{ctx.out_dir}/front-<k>.yaml, a config delta over {_shown(first)}"


def _shown(path) -> str:
    """``configs/capstone.yaml`` for a config of the project's configs/ folder, else the path as given."""
    return f"configs/{path.name}" if path.parent.name == "configs" else str(path)


def _native(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _merge(into: Dict[str, Any], delta: Dict[str, Any]) -> None:
    for k, v in delta.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            into[k] = dict(into[k])
            _merge(into[k], v)
        else:
            into[k] = v


def _pareto_figure(ctx: Context, spec, df, front, objectives, x: str) -> str:
    import matplotlib.pyplot as plt

    ys = [o for o in objectives if o != x] or [x]
    fig, axes = plt.subplots(1, len(ys), figsize=(4.6 * len(ys), 3.4), squeeze=False)
    for ax, y in zip(axes[0], ys):
        if x in df.columns and y in df.columns:
            ax.scatter(df[x], df[y], s=14, color="lightgrey", label="trials")
            ax.scatter(front[x], front[y], s=22, color="#c44e52", label="Pareto front")
            for k, (_, r) in enumerate(front.iterrows()):
                ax.annotate(str(k), (r[x], r[y]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label(x), fontsize=8)
        ax.set_ylabel(label(y), fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(spec.get("title", "Pareto front"), fontsize=9)
    return save(fig, ctx, slug(spec.get("title", "pareto")))
