"""``secure-ml sweep``: the lab's exercises, a cross-threat grid and a Pareto search, run on an Optuna study.

Modules: :mod:`.spec` (the sweep file), :mod:`.options` and :mod:`.validate` (checked against the real
CLI parser), :mod:`.plan` (points × repeats and their seeds), :mod:`.scheduler` and :mod:`.engine`
(workers over one study), :mod:`.runner` and :mod:`.policy` (one point), :mod:`.results` and
:mod:`.report` (results.csv, figures, summary.md), :mod:`.cli` (the command).
"""
