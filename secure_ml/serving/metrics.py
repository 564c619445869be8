"""Service counters and latency percentiles, rendered in the Prometheus text exposition format.

Fed once per request by the audit layer (so the counts match the audit log line for line). Label
values are bounded: endpoints outside the known routes count as ``other``, so a fuzzer walking random
paths cannot grow memory. Latencies are a ring buffer of the last ``window`` requests; the quantiles
are computed over it on each scrape.
"""

import math
import threading
from collections import Counter, deque
from typing import Dict, Iterable, List, Optional, Tuple

KNOWN_ENDPOINTS = ("/predict", "/health", "/metrics", "/docs", "/openapi.json")


def _quantile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    idx = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[idx]


def _fmt(value: float) -> str:
    return "NaN" if isinstance(value, float) and math.isnan(value) else repr(value) if isinstance(value, float) else str(value)


def _labels(pairs: Iterable[Tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{v!s}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


class Metrics:
    def __init__(self, window: int = 10_000):
        self._lock = threading.Lock()
        self.requests: Counter = Counter()  # (endpoint, status)
        self.rejections: Counter = Counter()  # reason
        self.rate_limited = 0
        self.audit_failures = 0
        self.latencies: deque = deque(maxlen=window)  # /predict only, seconds
        self.latency_sum = 0.0
        self.latency_count = 0

    def observe(self, record: Dict) -> None:
        endpoint = record["endpoint"] if record["endpoint"] in KNOWN_ENDPOINTS else "other"
        status = int(record["status"])
        with self._lock:
            self.requests[(endpoint, status)] += 1
            if status >= 400:
                self.rejections[str(record.get("reason"))[:64]] += 1
            if status == 429:
                self.rate_limited += 1
            if endpoint == "/predict":
                seconds = record["latency_ms"] / 1000.0
                self.latencies.append(seconds)
                self.latency_sum += seconds
                self.latency_count += 1

    def audit_failure(self) -> None:
        with self._lock:
            self.audit_failures += 1

    def latency_quantiles(self, qs=(0.5, 0.9, 0.99)) -> Dict[float, float]:
        with self._lock:
            values = sorted(self.latencies)
        return {q: _quantile(values, q) for q in qs}

    def render(self, detector_lines: Optional[List[str]] = None) -> str:
        with self._lock:
            requests = sorted(self.requests.items())
            rejections = sorted(self.rejections.items())
            rate_limited, audit_failures = self.rate_limited, self.audit_failures
            lsum, lcount = self.latency_sum, self.latency_count
        out = ["# HELP secure_ml_requests_total HTTP requests by endpoint and status.", "# TYPE secure_ml_requests_total counter"]
        out += [f"secure_ml_requests_total{_labels([('endpoint', e), ('status', s)])} {n}" for (e, s), n in requests]
        out += ["# HELP secure_ml_rejections_total Requests answered 4xx/5xx, by reason.", "# TYPE secure_ml_rejections_total counter"]
        out += [f"secure_ml_rejections_total{_labels([('reason', r)])} {n}" for r, n in rejections]
        out += [
            "# HELP secure_ml_rate_limited_total Requests answered 429.",
            "# TYPE secure_ml_rate_limited_total counter",
            f"secure_ml_rate_limited_total {rate_limited}",
            "# HELP secure_ml_audit_failures_total Requests failed closed because the audit line could not be written.",
            "# TYPE secure_ml_audit_failures_total counter",
            f"secure_ml_audit_failures_total {audit_failures}",
            "# HELP secure_ml_predict_latency_seconds /predict latency (quantiles over the recent window).",
            "# TYPE secure_ml_predict_latency_seconds summary",
        ]
        for q, v in self.latency_quantiles().items():
            out.append(f"secure_ml_predict_latency_seconds{_labels([('quantile', q)])} {_fmt(v)}")
        out += [f"secure_ml_predict_latency_seconds_sum {lsum!r}", f"secure_ml_predict_latency_seconds_count {lcount}"]
        out += detector_lines or []
        return "\n".join(out) + "\n"


def parse_prometheus(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """Inverse of ``render`` for our own lines: ``{(name, ((label, value), ...)): number}`` (for clients and tests)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = tuple(tuple(kv.split("=", 1)) for kv in rest.rstrip("}").split(",") if kv) if rest else ()
        out[(name, tuple((k, v.strip('"')) for k, v in labels))] = float(value)
    return out
