"""Security gates: thresholds on scorecard metrics, e.g. ``{"mia/auc": "<= 0.55", "adv/fgsm_acc@0.1": ">= 0.8"}``."""

import math
import operator
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping

import torch

from secure_ml.errors import ConfigError
from secure_ml.report.metric_names import check_known

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
_RULE = re.compile(r"^\s*(<=|>=|==|<|>)\s*([-+0-9.eE]+|inf)\s*$")


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float

    def passes(self, value: float) -> bool:
        return not math.isnan(value) and _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


def parse_gates(rules: Mapping[str, str], flag: str = "--scorecard.gates") -> List[Gate]:
    """``{metric: "<op> <number>"}`` → gates; a clear error naming ``flag`` and the bad rule."""
    gates = []
    for metric, rule in rules.items():
        check_known(metric, flag)
        m = _RULE.match(str(rule))
        if not m:
            raise ConfigError(f"{flag}: the gate for '{metric}' must look like '<= 0.55' (ops: <=, >=, <, >, ==); got '{rule}'")
        gates.append(Gate(metric, m.group(1), float(m.group(2))))
    return gates


def check_gates(gates: List[Gate], metrics: Mapping[str, float]) -> List[str]:
    """Human-readable failures (empty when every gate passes); a metric that was not measured fails its gate."""
    failures = []
    for g in gates:
        if g.metric not in metrics:
            failures.append(f"{g}: '{g.metric}' was not measured (is its callback configured?)")
        elif not g.passes(float(metrics[g.metric])):
            failures.append(f"{g}: measured {float(metrics[g.metric]):.4g}")
    return failures


# Lightning's ``reduce_fx`` for a value every rank computes alike (ε, the scorecard's scores): exact, where the default
# mean is not always (a float64 mean over 3, 6 or 7 ranks of 0.1 is 0.10000000000000002).
SAME_ON_EVERY_RANK = "max"


def as_metric(value, device=None) -> torch.Tensor:
    """A float64 scalar for ``self.log``: Lightning stores a Python float as float32, so an AUC of exactly 0.55 read back
    as 0.55000001 and failed a ``<= 0.55`` gate, and ε = 3.00000005 passed ``<= 3.0``; float64 tensors stay float64.

    Made on ``device`` (the module's): Lightning keeps a logged tensor where it is, and a ``sync_dist`` under DDP on GPUs
    all-reduces it with NCCL, which has no CPU tensors. MPS has no float64, so there it stays on the CPU (one device,
    nothing to sync)."""
    if device is not None and torch.device(device).type == "mps":
        device = None
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def as_floats(metrics: Mapping) -> Dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out
