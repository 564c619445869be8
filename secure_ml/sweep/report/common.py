"""Shared pieces of the sweep report: grouping rows into cells, Markdown tables, figures."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from secure_ml.errors import ConfigError
from secure_ml.sweep.stats import Cell


@dataclass
class Section:
    """One report entry: a title, a Markdown table, the sentence under it, and its figure (a PNG path relative to the sweep folder)."""

    title: str
    table: str
    sentence: str
    figure: Optional[str] = None
    notes: List[str] = field(default_factory=list)


@dataclass
class Context:
    """What a report kind may read: the results frame, the sweep folder, the axis columns, and the plan."""

    df: Any
    out_dir: Path
    axes: List[str]
    plan: Any

    @property
    def ok(self):
        return self.df[self.df["status"] == "ok"]


def need(spec: Dict[str, Any], key: str, kind: str) -> Any:
    if key not in spec:
        raise ConfigError(f"report entry of kind '{kind}' needs '{key}'")
    return spec[key]


def ordered(values: Sequence[Any]) -> List[Any]:
    """Distinct values in first-seen order (NaN/None dropped)."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and v != v):
            continue
        if v not in out:
            out.append(v)
    return out


def cells(df, by: Sequence[str], metric: str) -> List[Tuple[tuple, Cell]]:
    """``[(group values, Cell over the repeats)]`` in first-seen order; groups lacking the metric get an empty Cell."""
    if metric not in df.columns:
        return [(key, Cell.of([])) for key in _groups(df, by)]
    out = []
    for key in _groups(df, by):
        mask = _mask(df, by, key)
        out.append((key, Cell.of(df.loc[mask, metric].tolist())))
    return out


def _groups(df, by: Sequence[str]) -> List[tuple]:
    keys = []
    for _, row in df.iterrows():
        key = tuple(row[c] if c in df.columns else None for c in by)
        if key not in keys:
            keys.append(key)
    return keys


def _mask(df, by: Sequence[str], key: tuple):
    import pandas as pd

    mask = pd.Series(True, index=df.index)
    for c, v in zip(by, key):
        if c not in df.columns:
            continue
        mask &= df[c].isna() if v is None or (isinstance(v, float) and v != v) else df[c] == v
    return mask


def name_of(key: tuple) -> str:
    return ", ".join(_fmt(v) for v in key if v is not None and not (isinstance(v, float) and v != v))


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def save(fig, ctx: Context, name: str) -> str:
    """Write ``fig`` as ``<sweep>/<name>.png`` and return that name (the summary links it)."""
    import matplotlib.pyplot as plt

    path = ctx.out_dir / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def slug(text: str) -> str:
    text = "".join(c if c.isascii() and c.isalnum() else "-" for c in text.lower())
    while "--" in text:
        text = text.replace("--", "-")
    return text.strip("-")[:60] or "figure"
