"""Generic report kinds: ``metrics`` (a table of points × metrics) and ``lines`` (a metric along one axis, one line per series)."""

import math
from typing import Any, Dict, List

from secure_ml.sweep.report.common import Context, Section, cells, md_table, name_of, need, ordered, save, slug
from secure_ml.sweep.stats import Cell, better, diff, extremes, inline, label, verdict


def metrics_section(ctx: Context, spec: Dict[str, Any]) -> List[Section]:
    """Rows = groups of ``rows`` (default: the point), columns = ``metrics``; the sentence compares the best and worst row on ``focus``."""
    metrics = need(spec, "metrics", "metrics")
    by = spec.get("rows", ["point"])
    focus = spec.get("focus", metrics[0])
    df = where(ctx.ok, spec)
    columns = {m: dict(cells(df, by, m)) for m in metrics}
    groups = list(columns[metrics[0]])
    table = md_table(
        [" / ".join(by)] + [f"`{m}`" for m in metrics], [[name_of(g)] + [columns[m][g].text() for m in metrics] for g in groups]
    )
    ex = extremes(list(columns[focus].items()), focus)
    if ex is None:
        sentence = f"Fewer than two rows measured {inline(focus)}, so there is nothing to compare."
    else:
        best, b, worst, w = ex
        sentence = (
            f"{label(focus)} is {b.mean:.3f} for every row: no difference."
            if b.mean == w.mean
            else f"{label(focus)} is best for {name_of(best)} ({b.text()}) and worst for {name_of(worst)} ({w.text()}): {verdict(diff(w, b))}."
        )
    figure = None
    if spec.get("figure", True) and groups:
        figure = _bars(ctx, spec.get("title", focus), groups, columns[focus], focus)
    return [Section(spec.get("title", "Metrics"), table, sentence, figure)]


def _bars(ctx: Context, title: str, groups, col: Dict[tuple, Cell], metric: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(groups) + 2), 3.4))
    means = [col[g].mean for g in groups]
    errs = [0 if math.isnan(col[g].std) else col[g].std for g in groups]
    ax.bar(range(len(groups)), means, yerr=errs, capsize=3, color="#4c72b0")
    ax.set_xticks(range(len(groups)), [name_of(g) for g in groups], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(label(metric), fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, ctx, slug(title))


def where(df, spec: Dict[str, Any]):
    """Rows matching the entry's ``where: {column: value}`` filter (all rows without one)."""
    for column, value in (spec.get("where") or {}).items():
        if column not in df.columns:
            return df.iloc[0:0]
        df = df[df[column] == value]
    return df


def lines_section(ctx: Context, spec: Dict[str, Any]) -> List[Section]:
    """For each metric of ``y``: a table series × ``x`` values and a figure; the sentence names the series that changes most and least.

    ``series`` are the axes drawn as separate lines (default: every other axis); a row without a value on a
    series axis (e.g. no flip target at poison rate 0) belongs to every line. ``where`` keeps matching rows only.
    """
    x = need(spec, "x", "lines")
    ys = need(spec, "y", "lines")
    series = [c for c in (spec.get("series") or [a for a in ctx.axes if a != x]) if c in ctx.df.columns]
    df = where(ctx.ok, spec)
    xs = ordered(where(ctx.df, spec)[x].tolist()) if x in ctx.df.columns else []
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs):
        xs = sorted(xs)  # a grid written out of order still draws one line left to right, and the trend runs low to high
    groups = [g for g in _series(df, series)]
    sections = []
    for y in ys:
        grid = {g: dict(cells(df[_member(df, series, g)], [x], y)) for g in groups}
        rows = [[name_of(g) or "all"] + [by_x.get((v,), Cell.of([])).text() for v in xs] for g, by_x in grid.items()]
        table = md_table([" / ".join(series) or "series"] + [f"{x} = {v:g}" if isinstance(v, float) else f"{x} = {v}" for v in xs], rows)
        sections.append(Section(f"{spec.get('title', y)}: {label(y)}", table, _trend(grid, xs, x, y), _figure(ctx, spec, grid, xs, x, y)))
    return sections


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _series(df, series) -> List[tuple]:
    """Distinct series keys among rows that have a value on every series axis (first-seen order)."""
    keys: List[tuple] = []
    for _, row in df.iterrows():
        key = tuple(row[c] for c in series)
        if not any(_missing(v) for v in key) and key not in keys:
            keys.append(key)
    return keys or [()]


def _member(df, series, g):
    import pandas as pd

    mask = pd.Series(True, index=df.index)
    for c, v in zip(series, g):
        mask &= df[c].isna() | (df[c] == v)
    return mask


def _trend(grid, xs, x: str, y: str) -> str:
    """How ``y`` changes between the first and last ``x`` that some series measured, per series (most and least),
    then which series is best and worst at that last ``x`` (e.g. detection F1 exists only where labels were flipped)."""
    measured = [v for v in xs if any(not by_x.get((v,), Cell.of([])).empty for by_x in grid.values())]
    if len(measured) < 2:
        return f"Only one value of {x} has a measured {inline(y)}, so there is no trend to report."
    lo, hi = measured[0], measured[-1]
    changes = []
    for g, by_x in grid.items():
        first, last = by_x.get((lo,), Cell.of([])), by_x.get((hi,), Cell.of([]))
        if not first.empty and not last.empty:
            changes.append((name_of(g) or "all", diff(first, last)))
    if not changes:
        return f"No series measured {inline(y)} at both {x} = {lo} and {hi}."
    changes.sort(key=lambda nd: abs(nd[1].value), reverse=True)
    head = f"From {x} = {lo} to {hi}, {inline(y)} changes"
    if len(changes) == 1:
        return f"{head} by {verdict(changes[0][1])}."
    (big, d_big), (small, d_small) = changes[0], changes[-1]
    out = f"{head} most for {big} ({verdict(d_big)}) and least for {small} ({verdict(d_small)})."
    ex = extremes([(name_of(g) or "all", by_x.get((hi,), Cell.of([]))) for g, by_x in grid.items()], y)
    if ex is not None:
        best, b, worst, w = ex
        word = ("best", "worst") if better(y) is not None else ("highest", "lowest")
        if b.text() == w.text():
            out += f" At {x} = {hi} every series is at {b.text()}."
        else:
            out += f" At {x} = {hi} it is {word[0]} for {best} ({b.text()}) and {word[1]} for {worst} ({w.text()}): {verdict(diff(w, b))}."
    return out


def _figure(ctx: Context, spec, grid, xs, x: str, y: str) -> str:
    import matplotlib.pyplot as plt

    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
    pos = xs if numeric else list(range(len(xs)))
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for g, by_x in grid.items():
        pts = [(p, by_x[(v,)]) for p, v in zip(pos, xs) if (v,) in by_x and not by_x[(v,)].empty]
        if pts:
            ax.errorbar(
                [p for p, _ in pts],
                [c.mean for _, c in pts],
                yerr=[0 if math.isnan(c.std) else c.std for _, c in pts],
                marker="o",
                capsize=3,
                label=name_of(g) or "all",
            )
    if not numeric:
        ax.set_xticks(pos, [str(v) for v in xs])
    ax.set_xlabel(x, fontsize=8)
    ax.set_ylabel(label(y), fontsize=8)
    ax.set_title(spec.get("title", y), fontsize=9)
    ax.grid(alpha=0.3)
    if len(grid) > 1:
        ax.legend(fontsize=7)
    return save(fig, ctx, slug(f"{spec.get('title', 'lines')}-{y}"))
