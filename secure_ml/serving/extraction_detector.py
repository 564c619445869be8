"""Per-client model-extraction detection: PRADA plus simple rate and novelty signals.

PRADA (Juuti et al., "PRADA: Protecting against DNN Model Stealing Attacks", EuroS&P 2019), Algorithm 1,
per client: for a query ``x`` predicted as class ``c``, ``d`` = the minimum L2 distance from ``x`` to the
client's growing set ``G_c`` of past class-``c`` queries; ``d`` joins the distance sample ``D``; if
``d > T_c`` then ``x`` joins ``G_c``, ``d`` joins ``DG_c`` and ``T_c = max(T_c, mean(DG_c) - std(DG_c))``.
Once ``|D| >= N`` (``min_distances``), the Shapiro-Wilk statistic ``W`` of ``D`` is computed
(``scipy.stats.shapiro``); ``W < delta`` raises the alarm. Natural queries give roughly normal distances;
synthetic ones (Jacobian augmentation steps of fixed size, noise around seeds, repeats) do not.
A sample with zero spread (all distances equal, e.g. one image replayed) counts as ``W = 0``.

Extra signals: ``rate`` (more than ``rate_max_queries`` in ``rate_window_s``) and ``novelty`` (among the
last ``novelty_window`` queries, the fraction whose top probability is below ``low_confidence`` exceeds
``novelty_max_fraction``). Both are off unless configured.

Bounded memory: ``G_c`` is a ring buffer of uint8 images (784 B each; ``max_queries_per_client`` per
client split over the classes), ``D`` keeps the last ``window`` distances, and at most ``max_clients``
clients are tracked (least recently seen forgotten; block decisions live in ``blocklist`` and survive it).
Worst case ``max_clients * max_queries_per_client * 784`` bytes. A Sybil attacker with many keys splits
its queries across clients: per-key detection cannot see that; rate-limit key issuance.

Per replica: each replica's detector sees only the queries routed to it. Its *decisions* (throttle,
block) reach every replica through ``rate_limit.storage: redis://...``; to keep *detection* as fast as
on one replica, route each API key to one replica (sticky routing on the ``X-API-Key`` header). Without
it, an attacker spread over R replicas needs about R times as many queries before any replica has
``min_distances`` of them.
"""

import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from secure_ml.serving.settings import ExtractionConfig


@dataclass
class Verdict:
    query_index: int
    signals: List[str] = field(default_factory=list)  # signals in alarm on this query
    new_signals: List[str] = field(default_factory=list)  # signals that were not in alarm on the previous query
    w: Optional[float] = None

    @property
    def alarm(self) -> bool:
        return bool(self.signals)


class _ClientState:
    def __init__(self, cfg: ExtractionConfig, num_classes: int):
        self.per_class_cap = max(1, cfg.max_queries_per_client // num_classes)
        self.growing: Dict[int, np.ndarray] = {}
        self.fill: Dict[int, int] = {}  # number of stored rows (saturates at the cap)
        self.head: Dict[int, int] = {}  # next ring-buffer slot
        self.growing_dists: Dict[int, deque] = {}
        self.thresholds: Dict[int, float] = {}
        self.distances: deque = deque(maxlen=cfg.window)
        self.times: deque = deque()
        self.low_conf: deque = deque(maxlen=cfg.novelty_window)
        self.n_queries = 0
        self.first_alert_query: Optional[int] = None
        self.alerts: Counter = Counter()
        self.alarmed_queries = 0
        self.active: set = set()
        self.last_w: Optional[float] = None

    def min_distance(self, c: int, x: np.ndarray) -> Optional[float]:
        n = self.fill.get(c, 0)
        if n == 0:
            return None
        stored = self.growing[c][:n].astype(np.float32) / 255.0
        return float(np.sqrt(((stored - x) ** 2).sum(axis=1).min()))

    def add(self, c: int, x: np.ndarray) -> None:
        if c not in self.growing:
            self.growing[c] = np.zeros((self.per_class_cap, x.size), dtype=np.uint8)
            self.fill[c], self.head[c] = 0, 0
            self.growing_dists[c] = deque(maxlen=self.per_class_cap)
        self.growing[c][self.head[c]] = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        self.head[c] = (self.head[c] + 1) % self.per_class_cap
        self.fill[c] = min(self.fill[c] + 1, self.per_class_cap)


def shapiro_w(distances) -> float:
    d = np.asarray(distances, dtype=np.float64)
    if np.ptp(d) <= 1e-12:
        return 0.0
    from scipy import stats  # imported on first use: scipy.stats costs ~1 s of the service's start-up

    return float(stats.shapiro(d).statistic)


class ExtractionDetector:
    def __init__(self, cfg: ExtractionConfig, num_classes: int = 10, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.num_classes = num_classes
        self.clock = clock
        self._clients: OrderedDict[str, _ClientState] = OrderedDict()
        self._lock = threading.Lock()

    # ---- observing queries -----------------------------------------------------------------------
    def _state(self, client: str) -> _ClientState:
        state = self._clients.pop(client, None) or _ClientState(self.cfg, self.num_classes)
        self._clients[client] = state
        while len(self._clients) > self.cfg.max_clients:
            self._clients.popitem(last=False)
        return state

    def observe(self, client: str, x, label: int, top_probability: float) -> Verdict:
        """Record one answered query (``x``: any array of pixels in [0, 1]) and say which signals are in alarm."""
        flat = np.asarray(x, dtype=np.float32).reshape(-1)
        cfg = self.cfg
        with self._lock:
            s = self._state(client)
            s.n_queries += 1
            verdict = Verdict(query_index=s.n_queries)
            d = s.min_distance(label, flat)
            if d is None:
                s.add(label, flat)
            else:
                s.distances.append(d)
                if d > s.thresholds.get(label, 0.0):
                    s.add(label, flat)
                    dg = s.growing_dists[label]
                    dg.append(d)
                    s.thresholds[label] = max(s.thresholds.get(label, 0.0), float(np.mean(dg) - np.std(dg)))
            if len(s.distances) >= cfg.min_distances:
                s.last_w = verdict.w = shapiro_w(s.distances)
                if verdict.w < cfg.delta:
                    verdict.signals.append("prada")
            if cfg.rate_max_queries is not None:
                now = self.clock()
                s.times.append(now)
                while s.times and s.times[0] < now - cfg.rate_window_s:
                    s.times.popleft()
                if len(s.times) > cfg.rate_max_queries:
                    verdict.signals.append("rate")
                while len(s.times) > cfg.rate_max_queries + 1:
                    s.times.popleft()
            if cfg.novelty_max_fraction is not None:
                s.low_conf.append(top_probability < cfg.low_confidence)
                if len(s.low_conf) == s.low_conf.maxlen and np.mean(s.low_conf) > cfg.novelty_max_fraction:
                    verdict.signals.append("novelty")
            verdict.new_signals = [sig for sig in verdict.signals if sig not in s.active]
            s.active = set(verdict.signals)
            if verdict.alarm:
                s.alarmed_queries += 1
                if s.first_alert_query is None:
                    s.first_alert_query = s.n_queries
                s.alerts.update(verdict.new_signals)
            return verdict

    # ---- reporting -------------------------------------------------------------------------------
    def snapshot(self) -> Dict[str, Dict]:
        with self._lock:
            return {
                c: {
                    "queries": s.n_queries,
                    "alarmed_queries": s.alarmed_queries,
                    "first_alert_query": s.first_alert_query,
                    "alerts": dict(s.alerts),
                    "w": s.last_w,
                    "stored": sum(s.fill.values()),
                }
                for c, s in self._clients.items()
            }
