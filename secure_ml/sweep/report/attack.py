"""``attack-curve``: accuracy vs attack radius per model and attack, with ART's gradient-masking check.

ART's ``SecurityCurve`` runs PGD with ε equal to the whole pixel range (1.0), 100 iterations and a
step of ε/50, and suspects obfuscated gradients when accuracy stays above chance (1 / classes):
an honest model must fall to chance when the attacker may change every pixel freely. The sweep's
test grid runs that attack (``masking_epsilon``); the summary names any model that fails it, and
any radius where PGD (iterative) does measurably *better* than FGSM (one step), another sign. PGD
attacks only the first ``robustness.pgd_max_samples`` of FGSM's ``robustness.max_samples`` digits, so
"measurably" there also requires the gap to exceed twice the binomial standard error of the two subsets
(read from the sweep's ``test.set``; the callback's defaults otherwise).
"""

import math
from typing import Any, Dict, List

from secure_ml.report.metric_names import split
from secure_ml.sweep.report.common import Context, Section, cells, md_table, name_of, save, slug
from secure_ml.sweep.stats import Cell, diff, verdict


def _radii(df, family: str) -> List[float]:
    out = []
    for col in df.columns:
        prefix, radius = split(str(col))
        if prefix == family and radius is not None:
            out.append(radius)
    return sorted(set(out))


def attack_section(ctx: Context, spec: Dict[str, Any]) -> List[Section]:
    families = spec.get("families", {"FGSM": "adv/fgsm_acc", "PGD": "adv/pgd_acc"})
    by = spec.get("rows", ["point"])
    clean = spec.get("clean", "test/acc")
    chance = float(spec.get("chance", 0.1))
    masking = float(spec.get("masking_epsilon", 1.0))
    reference = float(spec.get("reference_epsilon", 0.1))
    df = ctx.ok
    radii = sorted({r for f in families.values() for r in _radii(df, f) if r != masking})
    models = [g for g, _ in cells(df, by, clean)]
    curves: Dict[str, Dict[tuple, List[Cell]]] = {}
    rows = []
    for name, family in families.items():
        curves[name] = {}
        for g in models:
            clean_cell = dict(cells(df, by, clean)).get(g, Cell.of([]))
            line = [clean_cell] + [dict(cells(df, by, f"{family}@{r:g}")).get(g, Cell.of([])) for r in radii]
            curves[name][g] = line
            rows.append([name_of(g), name] + [c.text() for c in line])
    table = md_table(["model", "attack", "ε = 0 (clean)"] + [f"ε = {r:g}" for r in radii], rows)
    sentences = [_compare(curves, models, radii, reference)]
    sentences.append(_masking(df, by, models, families, masking, chance))
    sentences += _pgd_vs_fgsm(curves, models, radii, _subset_sizes(ctx))
    figure = _figure(ctx, spec, curves, models, radii, chance)
    return [Section(spec.get("title", "Accuracy under attack"), table, " ".join(s for s in sentences if s), figure)]


def _compare(curves, models, radii, reference: float) -> str:
    name = "PGD" if "PGD" in curves else next(iter(curves))
    if reference not in radii or len(models) < 2:
        return ""
    i = radii.index(reference) + 1
    ranked = sorted(((g, curves[name][g][i]) for g in models if not curves[name][g][i].empty), key=lambda gc: gc[1].mean, reverse=True)
    if len(ranked) < 2:
        return ""
    (best, b), (worst, w) = ranked[0], ranked[-1]
    if b.mean == w.mean:
        return f"Under {name} at ε = {reference:g}, every model is at {b.mean:.3f} accuracy."
    return (
        f"Under {name} at ε = {reference:g}, {name_of(best)} keeps the most accuracy ({b.text()}) and {name_of(worst)} the least "
        f"({w.text()}): {verdict(diff(w, b))}."
    )


def _masking(df, by, models, families, masking: float, chance: float) -> str:
    key = f"{families.get('PGD', 'adv/pgd_acc')}@{masking:g}"
    measured = [(g, c) for g, c in cells(df, by, key) if not c.empty]
    if not measured:
        return f"PGD at ε = {masking:g} (ART's gradient-masking check) was not run, so gradient masking was not checked."
    suspect = [(g, c) for g, c in measured if c.mean > chance]
    if not suspect:
        worst = max(c.mean for _, c in measured)
        return (
            f"PGD at ε = {masking:g} drives every model to at most {worst:.3f} accuracy, at or below chance ({chance:g}): "
            "no sign of gradient masking (ART's check)."
        )
    names = ", ".join(f"{name_of(g)} ({c.text()})" for g, c in suspect)
    return f"Suspected gradient masking: PGD at ε = {masking:g} leaves {names} above chance ({chance:g}), so its robustness figures may be overstated."


def _subset_sizes(ctx: Context) -> Dict[str, int]:
    """Digits attacked by FGSM and PGD in the sweep's test runs (the RobustnessCallback's defaults: 256 and 96)."""
    test_set = getattr(getattr(ctx.plan, "sweep", None), "test_set", None) or {}
    fgsm = int(test_set.get("robustness.max_samples", 256))
    return {"FGSM": fgsm, "PGD": min(fgsm, int(test_set.get("robustness.pgd_max_samples", 96)))}


def _sampling_error(f: float, nf: int, p: float, np_: int) -> float:
    """Binomial standard error of the difference of two accuracies measured on ``nf`` and ``np_`` digits."""
    return math.sqrt(max(f * (1 - f), 0.0) / max(nf, 1) + max(p * (1 - p), 0.0) / max(np_, 1))


def _pgd_vs_fgsm(curves, models, radii, sizes: Dict[str, int]) -> List[str]:
    if "PGD" not in curves or "FGSM" not in curves:
        return []
    out = []
    for g in models:
        for i, r in enumerate(radii, start=1):
            p, f = curves["PGD"][g][i], curves["FGSM"][g][i]
            if p.empty or f.empty or not diff(f, p).measurable or p.mean <= f.mean:
                continue
            if p.mean - f.mean <= 2 * _sampling_error(f.mean, sizes["FGSM"], p.mean, sizes["PGD"]):
                continue  # inside the sampling error of the two subsets (PGD attacks fewer digits)
            out.append(f"{name_of(g)}: PGD is measurably weaker than FGSM at ε = {r:g} ({p.text()} vs {f.text()}), a masking symptom.")
    return out


def _figure(ctx: Context, spec, curves, models, radii, chance: float) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 3.4), sharey=True, squeeze=False)
    xs = [0.0] + radii
    for ax, (name, lines) in zip(axes[0], curves.items()):
        for g in models:
            pts = [(x, c) for x, c in zip(xs, lines[g]) if not c.empty]
            ax.errorbar(
                [x for x, _ in pts],
                [c.mean for _, c in pts],
                yerr=[0 if math.isnan(c.std) else c.std for _, c in pts],
                marker="o",
                capsize=3,
                label=name_of(g),
            )
        ax.axhline(chance, linestyle=":", color="grey", linewidth=1)
        ax.set_title(f"{name} accuracy vs attack ε (dotted: chance)", fontsize=9)
        ax.set_xlabel("ε (pixel units, L∞)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy", fontsize=8)
    axes[0][0].legend(fontsize=7)
    return save(fig, ctx, slug(spec.get("title", "attack-curve")))
