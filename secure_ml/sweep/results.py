"""The study as a table: one row per point × repeat (grid) or per trial (search), written as ``results.csv``.

Columns: ``point``, ``repeat``, the axes (a named axis by its label, a plain one by its dotted
option), ``status`` (ok / failed / interrupted / pending) and ``error`` (one line), ``wall_s``, ``trial``
and ``run`` (the trial's folder under the sweep's, ``runs/<study hash>/<trial>``), the
seeds, ``assumed`` (metrics that hold by construction rather than measured), ``gates`` (failed
security gates), the point's other overrides, extra columns of the evaluator, then every scorecard
metric (``privacy/epsilon`` is ε). The study is the source of truth; the CSV is rewritten from it.
"""

from typing import Any, Dict, List

from secure_ml.report.metric_names import GROUPS, describe

FIXED = ["point", "repeat"]
STATUS = ["status", "error", "wall_s", "assumed", "gates", "trial", "run", "worker"]


def _metric_order(key: str):
    m = describe(key)
    return (GROUPS.index(m.group) if m is not None and m.group in GROUPS else len(GROUPS), key)


def _row(trial, status: str) -> Dict[str, Any]:
    ua = trial.user_attrs
    row: Dict[str, Any] = {"status": status, "error": ua.get("error", "")}
    row["wall_s"] = ua.get("wall_s")
    row["assumed"] = " ".join(ua.get("assumed", []))
    row["gates"] = ua.get("gates", "")
    row["trial"], row["run"], row["worker"] = trial.number, ua.get("run"), ua.get("worker")
    row.update(ua.get("axes", {}))
    row.update({k: v for k, v in ua.get("seeds", {}).items()})
    for k, v in ua.get("overrides", {}).items():
        row.setdefault(k, v if not isinstance(v, (list, dict)) else str(v))
    row.update(ua.get("extra", {}))
    row.update({("metric", k): v for k, v in ua.get("metrics", {}).items()})
    return row


def _pick(trials: List[Any], key: str):
    """The trial that stands for a job: its latest COMPLETE trial, else its latest trial that failed with an error, else its latest attempt."""
    from optuna.trial import TrialState

    mine = [t for t in trials if t.user_attrs.get("key") == key and not t.system_attrs.get("sweep:duplicate")]
    for wanted in (lambda t: t.state == TrialState.COMPLETE, lambda t: t.user_attrs.get("status") == "failed", lambda t: True):
        hits = [t for t in mine if wanted(t) and (t.state.is_finished() or t.state == TrialState.RUNNING)]
        if hits:
            return max(hits, key=lambda t: t.number)
    return None


def grid_rows(plan, trials: List[Any]) -> List[Dict[str, Any]]:
    """One row per job of ``plan`` (pending jobs included, without metrics)."""
    from optuna.trial import TrialState

    rows = []
    for job in plan.jobs:
        t = _pick(trials, job.key)
        if t is None:
            row = {"status": "pending", **job.payload["attrs"]["axes"]}
        else:
            status = "running" if t.state == TrialState.RUNNING else t.user_attrs.get("status", "interrupted")
            row = _row(t, status)
        row.update({"point": job.label, "repeat": job.repeat})
        rows.append(row)
    return rows


def search_rows(trials: List[Any], front_numbers: List[int], budget: int) -> List[Dict[str, Any]]:
    """One row per finished trial of a search; ``pareto`` marks the front.

    An interrupted trial (Ctrl-C, a stopped worker) does not use the budget: a resumed search runs another in its
    place, so once ``budget`` trials are finished it is no longer listed (it would make the sweep look unfinished).
    """
    from optuna.trial import TrialState

    finished = [t for t in trials if not t.system_attrs.get("sweep:duplicate") and t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    spent = sum(1 for t in finished if t.state == TrialState.COMPLETE or t.user_attrs.get("status") == "failed")
    rows = []
    for t in finished:
        if spent >= budget and t.state == TrialState.FAIL and t.user_attrs.get("status") != "failed":
            continue
        row = _row(t, t.user_attrs.get("status", "interrupted"))
        row.update({"point": f"trial {t.number}", "repeat": 0, "pareto": t.number in front_numbers})
        rows.append(row)
    return rows


def frame(rows: List[Dict[str, Any]], axes: List[str]):
    """A pandas DataFrame with the columns in results.csv order (metric columns named by their key)."""
    import pandas as pd

    metric_keys = sorted({k[1] for r in rows for k in r if isinstance(k, tuple)}, key=_metric_order)
    plain = [k for r in rows for k in r if not isinstance(k, tuple)]
    head = FIXED + [a for a in axes if a not in FIXED] + STATUS
    others = [k for k in dict.fromkeys(plain) if k not in head]
    data = [{**{k: r.get(k) for k in head + others}, **{m: r.get(("metric", m)) for m in metric_keys}} for r in rows]
    return pd.DataFrame(data, columns=head + others + metric_keys)


def write_csv(df, path) -> None:
    df.to_csv(path, index=False)
