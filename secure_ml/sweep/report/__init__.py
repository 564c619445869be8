"""The sweep's report: ``results.csv``, one PNG per figure and ``summary.md`` (tables, one sentence each, figures).

Report entries are listed in the sweep file (``report:``), each with a ``kind``:
``metrics`` (points × metrics), ``lines`` (a metric along an axis), ``attack-curve`` (Exercise 1),
``frontier`` (Exercise 3), ``roc`` (Exercise 4), ``ablation`` (Exercise 5) and ``pareto`` (the search).
Every sentence is computed from the table above it (see :mod:`secure_ml.sweep.stats` for the rule
that calls a difference measurable).
"""

import datetime
import os
from typing import Any, Dict, List

from secure_ml.sweep.report.ablation import ablation_section
from secure_ml.sweep.report.attack import attack_section
from secure_ml.sweep.report.basic import lines_section, metrics_section
from secure_ml.sweep.report.common import Context, Section, md_table
from secure_ml.sweep.report.privacy import frontier_section, pareto_section
from secure_ml.sweep.report.roc import roc_section
from secure_ml.sweep.results import frame, grid_rows, search_rows, write_csv

KINDS = {
    "metrics": metrics_section,
    "lines": lines_section,
    "attack-curve": attack_section,
    "frontier": frontier_section,
    "roc": roc_section,
    "ablation": ablation_section,
    "pareto": pareto_section,
}


def results_frame(plan, trials: List[Any], front_numbers: List[int]):
    axes = list(dict.fromkeys(a for p in plan.sweep.points for a in p.axes))
    rows = search_rows(trials, front_numbers, plan.sweep.search.trials) if plan.sweep.is_search else grid_rows(plan, trials)
    return frame(rows, axes), axes


def write_report(plan, trials: List[Any], front_numbers: List[int], meta: Dict[str, Any]) -> Dict[str, Any]:
    """Write results.csv, the figures and summary.md into the sweep folder; returns counts by status and the paths."""
    import matplotlib

    matplotlib.use("Agg")
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    df, axes = results_frame(plan, trials, front_numbers)
    write_csv(df, out / "results.csv")
    ctx = Context(df, out, axes, plan)
    sections: List[Section] = []
    for spec in plan.sweep.report:
        try:
            sections += KINDS[spec["kind"]](ctx, spec)
        except Exception as exc:  # a figure must not cost the results: the CSV is written already
            sections.append(Section(spec.get("title", spec["kind"]), "", f"This section could not be drawn: {type(exc).__name__}: {exc}"))
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    (out / "summary.md").write_text(_summary(plan, df, sections, counts, meta))
    return {
        "counts": counts,
        "csv": out / "results.csv",
        "summary": out / "summary.md",
        "figures": [s.figure for s in sections if s.figure],
    }


def _summary(plan, df, sections: List[Section], counts: Dict[str, int], meta: Dict[str, Any]) -> str:
    sweep = plan.sweep
    lines = [f"# Sweep `{sweep.name}`", ""]
    if sweep.description:
        lines += [sweep.description.strip(), ""]
    runs = f"{len(sweep.points)} points × {sweep.repeats} repeat(s)" if not sweep.is_search else f"a search of {sweep.search.trials} trials"
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines += [f"- Command: `{meta.get('command', '')}`", f"- Runs: {runs} — {status or 'none yet'}"]
    walls = [w for w in df.get("wall_s", []).tolist() if isinstance(w, (int, float)) and w == w] if len(df) else []
    if meta.get("wall_s") is not None:
        lines.append(
            f"- Wall time of the last invocation: {meta['wall_s']:.0f} s on {os.cpu_count()} cores, {meta.get('n_jobs', 1)} worker(s); "
            f"load average {meta.get('load_start', '?')} at the start, {meta.get('load_end', '?')} at the end ({meta.get('date', '')})"
        )
    if walls:
        lines.append(f"- Sum of the points' wall times: {sum(walls):.0f} s")
    if meta.get("report_command"):
        lines.append(f"- Report rewritten from the study with `{meta['report_command']}`")
    lines += [
        "- Cells are mean ± sample std over repeats; a difference smaller than its repeat spread (√(s₁² + s₂²)) is called "
        '"no measurable difference"; with one repeat the spread is unknown.',
        "",
    ]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.table:
            lines += [s.table, ""]
        lines += [s.sentence, ""]
        if s.figure:
            lines += [f"![{s.title}]({s.figure})", ""]
    failed = df[df["status"] != "ok"] if len(df) else df
    if len(failed):
        lines += ["## Points without a result", "", md_table(["point", "repeat", "status", "error"], _failed_rows(failed)), ""]
    lines.append(f"_Written {datetime.datetime.now().isoformat(timespec='seconds')} from {plan.storage_url} (study `{plan.study_name}`)._")
    return "\n".join(lines) + "\n"


def _failed_rows(failed) -> List[List[str]]:
    return [[r["point"], r["repeat"], r["status"], str(r.get("error") or "").replace("|", "\\|")] for _, r in failed.iterrows()]
