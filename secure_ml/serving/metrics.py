"""``/metrics``: the service's counters, latency quantiles and detector state, exposed with ``prometheus-client``.

One ``CollectorRegistry`` per service (two services in one process never mix counts). The request
counters are fed once per request by the request-log layer, so they match the log line for line.
Label values are bounded: endpoints outside the known routes count as ``other`` (a fuzzer walking
random paths cannot grow memory), reasons and statuses are fixed strings of this package, and the
detector's ``client`` label covers at most ``extraction.max_clients`` key hashes (its LRU).

``prometheus_client``'s ``Summary`` exports no quantiles, so ``secure_ml_predict_latency_seconds``
comes from a custom collector over a ring buffer of the last ``window`` requests (quantiles computed
on each scrape), like the detector's per-client series.
"""

import math
import threading
from collections import deque
from typing import Callable, Dict, Iterator, List

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

KNOWN_ENDPOINTS = ("/predict", "/health", "/ready", "/metrics", "/docs", "/openapi.json")
QUANTILES = (0.5, 0.9, 0.99)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def _quantile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


class Metrics:
    """Request counters plus collectors for latency, the inference queue and the extraction detector."""

    def __init__(self, window: int = 10_000):
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "secure_ml_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=self.registry
        )
        self._rejections = Counter("secure_ml_rejections", "Requests answered 4xx/5xx, by reason.", ["reason"], registry=self.registry)
        self._rate_limited = Counter("secure_ml_rate_limited", "Requests answered 429.", registry=self.registry)
        self._audit_failures = Counter(
            "secure_ml_audit_failures", "Requests failed closed because the request-log line could not be written.", registry=self.registry
        )
        self._lock = threading.Lock()
        self._latencies: deque = deque(maxlen=window)  # /predict only, seconds
        self._latency_sum = 0.0
        self._latency_count = 0
        self._sources: List[Callable[[], Iterator[Metric]]] = [self._latency_metrics]
        self.registry.register(self)

    # ---- fed by the request-log layer --------------------------------------------------------------
    def observe(self, record: Dict) -> None:
        endpoint = record["endpoint"] if record["endpoint"] in KNOWN_ENDPOINTS else "other"
        status = int(record["status"])
        self._requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self._rejections.labels(str(record.get("reason"))[:64]).inc()
        if status == 429:
            self._rate_limited.inc()
        if endpoint == "/predict":
            seconds = record["latency_ms"] / 1000.0
            with self._lock:
                self._latencies.append(seconds)
                self._latency_sum += seconds
                self._latency_count += 1

    def audit_failure(self) -> None:
        self._audit_failures.inc()

    # ---- custom collectors ---------------------------------------------------------------------------
    def add_source(self, source: Callable[[], Iterator[Metric]]) -> None:
        """Another generator of metric families, collected on every scrape."""
        self._sources.append(source)

    def collect(self) -> Iterator[Metric]:  # the prometheus_client collector protocol
        for source in self._sources:
            yield from source()

    def describe(self) -> List[Metric]:
        return []  # unknown until collected: no name clash is possible within this registry

    def _latency_metrics(self) -> Iterator[Metric]:
        with self._lock:
            values, total, count = sorted(self._latencies), self._latency_sum, self._latency_count
        m = Metric("secure_ml_predict_latency_seconds", "/predict latency (quantiles over the recent window).", "summary")
        for q in QUANTILES:
            m.add_sample("secure_ml_predict_latency_seconds", {"quantile": str(q)}, _quantile(values, q))
        m.add_sample("secure_ml_predict_latency_seconds_sum", {}, total)
        m.add_sample("secure_ml_predict_latency_seconds_count", {}, count)
        yield m

    def render(self) -> bytes:
        return generate_latest(self.registry)


def gauge(name: str, doc: str, value: Callable[[], float]) -> Callable[[], Iterator[Metric]]:
    """A source yielding one unlabelled gauge read at scrape time."""

    def source() -> Iterator[Metric]:
        yield GaugeMetricFamily(name, doc, value=value())

    return source


def detector_source(snapshot: Callable[[], Dict[str, Dict]]) -> Callable[[], Iterator[Metric]]:
    """The extraction detector's per-client series (``client`` = key hash; at most ``extraction.max_clients``)."""

    def source() -> Iterator[Metric]:
        snap = snapshot()
        queries = CounterMetricFamily(
            "secure_ml_extraction_queries", "Answered queries seen by the detector, per client.", labels=["client"]
        )
        alarmed = CounterMetricFamily(
            "secure_ml_extraction_alarmed_queries", "Queries answered while in alarm, per client.", labels=["client"]
        )
        alerts = CounterMetricFamily("secure_ml_extraction_alerts", "Alarm onsets per client and signal.", labels=["client", "signal"])
        first = GaugeMetricFamily(
            "secure_ml_extraction_first_alert_query", "Index of the client's query that first raised an alarm.", labels=["client"]
        )
        w = GaugeMetricFamily("secure_ml_extraction_shapiro_w", "Last Shapiro-Wilk W of the client's distances.", labels=["client"])
        for client, v in snap.items():
            queries.add_metric([client], v["queries"])
            alarmed.add_metric([client], v["alarmed_queries"])
            for signal, n in sorted(v["alerts"].items()):
                alerts.add_metric([client, signal], n)
            if v["first_alert_query"] is not None:
                first.add_metric([client], v["first_alert_query"])
            if v["w"] is not None:
                w.add_metric([client], v["w"])
        yield from (queries, alarmed, alerts, first, w)

    return source
