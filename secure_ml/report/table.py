"""The scorecard printed by ``secure-ml test``: the seed's four metrics first, then the rest by group."""

from typing import List, Mapping, Tuple

from secure_ml.report.metric_names import GROUPS, SEED_KEYS, describe, split


def _seed_rows(metrics: Mapping[str, float]) -> List[str]:
    """Keys of the seed's headline metrics present in ``metrics`` (every radius of a parametrised one, ascending)."""
    keys = []
    for seed_key in SEED_KEYS:
        family = sorted((k for k in metrics if split(k)[0] == seed_key and split(k)[1] is not None), key=lambda k: split(k)[1])
        keys += family if family else ([seed_key] if seed_key in metrics else [])
    return keys


def scorecard_rows(metrics: Mapping[str, float]) -> List[Tuple[str, str, float]]:
    """``(label, key, value)``: the seed's rows first, then every other known metric by group, then unknown keys."""
    first = _seed_rows(metrics)
    rows = [(describe(k).label, k, metrics[k]) for k in first]
    rest = [k for k in metrics if k not in first and "/" in k]
    for group in GROUPS:
        rows += [(describe(k).label, k, metrics[k]) for k in sorted(rest) if describe(k) is not None and describe(k).group == group]
    rows += [("", k, metrics[k]) for k in sorted(rest) if describe(k) is None]
    return rows


def scorecard_table(metrics: Mapping[str, float]) -> str:
    rows = scorecard_rows(metrics)
    width = max([len(k) for _, k, _ in rows] + [6])
    lwidth = max([len(label) for label, _, _ in rows] + [9])
    lines = [f"{'Scorecard':<{lwidth}}  {'metric':<{width}}  value", "-" * (lwidth + width + 12)]
    lines += [f"{label:<{lwidth}}  {key:<{width}}  {value:.4f}" for label, key, value in rows]
    return "\n".join(lines)
