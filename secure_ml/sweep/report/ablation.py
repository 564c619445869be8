"""``ablation`` (Exercise 5): each defence off vs everything on, per threat, with the repeat spread."""

import math
from typing import Any, Dict, List

from secure_ml.sweep.report.common import Context, Section, cells, md_table, need, save, slug
from secure_ml.sweep.stats import Cell, Diff, better, diff, inline, label, verdict


def ablation_section(ctx: Context, spec: Dict[str, Any]) -> List[Section]:
    """``axis``: the named axis of variants; ``reference``: its all-on label; ``metrics``: ``{threat: metric}``;
    ``names``: optional ``{variant: defence}`` (default: the variant's label without ``no-``)."""
    axis = need(spec, "axis", "ablation")
    reference = need(spec, "reference", "ablation")
    threats: Dict[str, str] = need(spec, "metrics", "ablation")
    df = ctx.ok
    variants = [g[0] for g, _ in cells(df, [axis], next(iter(threats.values()))) if g[0] != reference]
    table_rows, findings, deltas = [], [], {}
    for threat, metric in threats.items():
        col = {g[0]: c for g, c in cells(df, [axis], metric)}
        ref = col.get(reference, Cell.of([]))
        row = [threat, f"`{metric}`", ref.text()]
        deltas[metric] = {}
        for v in variants:
            c = col.get(v, Cell.of([]))
            if c.empty and metric == "privacy/epsilon" and not ref.empty:  # DP off: no finite ε, no guarantee
                deltas[metric][v] = Diff(math.inf, math.nan, True)
                row.append("ε = ∞ (no guarantee)")
                continue
            if c.empty or ref.empty:
                row.append("not measured" if not ref.empty else "–")
                continue
            d = diff(ref, c)
            deltas[metric][v] = d
            row.append(verdict(d))
        table_rows.append(row)
        findings.append(_finding(threat, metric, deltas[metric], spec.get("names") or {}))
    assumed = _assumed(ctx, axis)
    table = md_table(["threat", "metric", f"{reference} (all on)"] + [f"{v}: Δ" for v in variants], table_rows)
    sentence = "; ".join(findings) + "."
    if assumed:
        sentence += f" ({assumed})"
    figure = _figure(ctx, spec, deltas, variants)
    return [Section(spec.get("title", "Defence ablation"), table, sentence[0].upper() + sentence[1:], figure)]


def defence_name(variant: str, names: Dict[str, str]) -> str:
    """The defence a variant switches off: ``names[variant]``, else the label without its ``no-`` prefix."""
    if variant in names:
        return names[variant]
    return variant[3:].replace("-", " ") if variant.startswith("no-") else f"the '{variant}' variant"


def _finding(threat: str, metric: str, deltas, names: Dict[str, str]) -> str:
    direction = better(metric)
    if direction is None or not deltas:
        return f"{threat}: no direction to rank {inline(metric)} by"
    harm = {v: (-d.value if direction else d.value) for v, d in deltas.items()}  # > 0: turning the defence off hurts
    worst = max(harm, key=harm.get)
    d, who = deltas[worst], defence_name(worst, names)
    if math.isinf(d.value):
        return f"{who} contributes most to {threat} (without it there is no finite {inline(metric)})"
    if harm[worst] <= 0:
        return f"for {threat}, switching off no single defence worsens {inline(metric)}"
    if d.measurable is False:
        return f"for {threat}, switching off no single defence measurably worsens {inline(metric)} (largest: {who}, {verdict(d)})"
    return f"{who} contributes most to {threat} ({inline(metric)} {verdict(d)} without it)"


def _assumed(ctx: Context, axis: str) -> str:
    if "assumed" not in ctx.df.columns:
        return ""
    rows = ctx.df[(ctx.df["assumed"].fillna("") != "") & (ctx.df["status"] == "ok")]
    parts = sorted({f"{r[axis]}: {r['assumed']}" for _, r in rows.iterrows() if axis in rows.columns})
    return "set by construction, not measured: " + "; ".join(parts) if parts else ""


def _figure(ctx: Context, spec, deltas, variants) -> str:
    import matplotlib.pyplot as plt

    metrics = [m for m in deltas if deltas[m]] or list(deltas)[:1]
    cols = min(4, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols + 0.5, 2.9 * rows), squeeze=False)
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    for ax, m in zip(axes.flat, metrics):
        vs = [v for v in variants if v in deltas[m] and not math.isinf(deltas[m][v].value)]
        vals = [deltas[m][v].value for v in vs]
        errs = [0 if math.isnan(deltas[m][v].spread) else deltas[m][v].spread for v in vs]
        worse = [(x < 0) if better(m) is not False else (x > 0) for x in vals]  # red: worse without the defence
        ax.bar(range(len(vs)), vals, yerr=errs, capsize=3, color=["#c44e52" if w else "#4c72b0" for w in worse])
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(vs)), vs, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"Δ {label(m)}", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(spec.get("title", "Defence ablation") + ": each variant minus all on (red: worse without the defence)", fontsize=9)
    return save(fig, ctx, slug(spec.get("title", "ablation")))
