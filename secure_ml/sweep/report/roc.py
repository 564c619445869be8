"""``roc`` (Exercise 4): crafted-sponge rejection vs clean false positives for each input-policy check."""

import math
from typing import Any, Dict, List

from secure_ml.sweep.report.common import Context, Section, cells, md_table, save, slug
from secure_ml.sweep.stats import diff, verdict

FPR, TPR, GAUSS = "sponge/false_positive_rate", "sponge/reject_rate_crafted", "sponge/reject_rate_gaussian"


def roc_section(ctx: Context, spec: Dict[str, Any]) -> List[Section]:
    df = ctx.ok
    op = spec.get("operating_point") or ctx.plan.sweep.policy.get("operating_point")
    marks = list(spec.get("marks", []))
    fpr, tpr, gauss = (dict(cells(df, ["point"], m)) for m in (FPR, TPR, GAUSS))
    info = {r["point"]: r for _, r in df.drop_duplicates("point").iterrows()}
    points = [g[0] for g in fpr]
    limit_cols = [c for c in df.columns if str(c).startswith("limit.")]
    rows = []
    for p in points:
        r = info[p]
        target = r.get("policy.false_positive_rate")
        setting = f"target {target:g}" if isinstance(target, float) and not math.isnan(target) else f"limit {r.get('policy.threshold')}"
        limits = ", ".join(f"{c[6:]}={r[c]:.4g}" for c in limit_cols if isinstance(r.get(c), float) and not math.isnan(r[c]))
        rows.append([p, r.get("policy.check", ""), setting, limits, fpr[(p,)].text(4), tpr[(p,)].text(), gauss[(p,)].text()])
    n_clean = int(df["clean_digits"].max()) if "clean_digits" in df.columns and len(df) else 0
    table = md_table(
        [
            "point",
            "check",
            "setting",
            "limits",
            f"clean rejected (of {n_clean})",
            "crafted rejected",
            "Gaussian rejected",
        ],
        rows,
    )
    sentence = _sentence(op, marks, points, info, fpr, tpr)
    figure = _figure(ctx, spec, points, info, fpr, tpr, op, marks)
    return [Section(spec.get("title", "Sponge threshold ROC"), table, sentence, figure)]


def _sentence(op, marks, points, info, fpr, tpr) -> str:
    out = []
    if op in points:
        f, t = fpr[(op,)], tpr[(op,)]
        out.append(f"At the operating point ({op}) the policy rejects {t.text()} of crafted sponges and {f.text(4)} of clean digits.")
        singles = [p for p in points if info[p].get("policy.check") not in ("all", None) and p not in marks]
        within = [p for p in singles if not fpr[(p,)].empty and fpr[(p,)].mean <= f.mean]
        if within:
            best = max(within, key=lambda p: tpr[(p,)].mean)
            ties = [p for p in within if p != best and tpr[(p,)].text() == tpr[(best,)].text()]
            out.append(
                f"The best single check at no more false positives is {best} ({tpr[(best,)].text()} rejected; "
                f"difference to the operating point {verdict(diff(t, tpr[(best,)]))})"
                + (f"; tied with {', '.join(repr(p) for p in ties)}." if ties else ".")
            )
    for m in marks:
        if m in points:
            out.append(f"The point '{m}' rejects {tpr[(m,)].text()} of crafted sponges at {fpr[(m,)].text(4)} clean false positives.")
    return " ".join(out) or "No operating point was evaluated."


def _figure(ctx: Context, spec, points, info, fpr, tpr, op, marks) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    checks = [c for c in dict.fromkeys(info[p].get("policy.check") for p in points) if isinstance(c, str)]
    for check in checks:
        pts = sorted(
            (fpr[(p,)].mean, tpr[(p,)].mean) for p in points if info[p].get("policy.check") == check and p not in marks and p != op
        )
        pts = [(x, y) for x, y in pts if not (math.isnan(x) or math.isnan(y))]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, label=check)
    for p, style in [(op, "*"), *[(m, "D") for m in marks]]:
        if p in points and not fpr[(p,)].empty:
            ax.scatter([fpr[(p,)].mean], [tpr[(p,)].mean], marker=style, s=90, color="black", zorder=5)
            ax.annotate(p, (fpr[(p,)].mean, tpr[(p,)].mean), fontsize=6, xytext=(4, -8), textcoords="offset points")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("clean non-member digits rejected (false-positive rate)", fontsize=8)
    ax.set_ylabel("crafted sponges rejected", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(spec.get("title", "Sponge threshold ROC"), fontsize=9)
    return save(fig, ctx, slug(spec.get("title", "roc")))
