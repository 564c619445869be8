"""The attacker's and the benign client's HTTP side of ``secure-ml extract``: a paced, bounded session per API key whose
answers are :class:`~secure_ml.attacks.extraction.Answer` s, and the service's ``/metrics`` read with an admin key.

An answer that is neither a label nor a refusal of the query (a refused key, a failing service) is one ConfigError:
it must not read as an attack that went undetected. No Lightning.
"""

import ipaddress
import time
from typing import Dict, Optional, Tuple
from urllib.parse import urlparse

import httpx
import torch

from secure_ml.attacks.extraction import Answer
from secure_ml.errors import ConfigError
from secure_ml.serving.auth import client_id


def check_loopback(url: str) -> None:
    """ConfigError unless ``url`` names a loopback host: the simulator only attacks a local service."""
    host = urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"--url: {url!r} is not a loopback address; the simulator only attacks a local service")


class HttpOracle:
    """One API key's paced, bounded HTTP session; ``__call__`` is an :data:`~secure_ml.attacks.extraction.Oracle`."""

    def __init__(self, url: str, key: str, qps: float, deadline: float, flag: str = "--api-key"):
        self.http = httpx.Client(base_url=url, timeout=10.0, headers={"X-API-Key": key})
        self.flag = flag  # named when the service refuses the key
        self.interval = 1.0 / qps if qps > 0 else 0.0
        self.deadline = deadline
        self.next_at = time.monotonic()
        self.sent = self.retries = 0

    def __call__(self, x: torch.Tensor) -> Optional[Answer]:
        body = {"image": x.reshape(28, 28).tolist()}
        for _ in range(20):
            now = time.monotonic()
            if now >= self.deadline:
                return None
            if now < self.next_at:
                time.sleep(self.next_at - now)
            self.next_at = max(now, self.next_at) + self.interval
            r = self.http.post("/predict", json=body)
            if r.status_code == 429:
                self.retries += 1
                time.sleep(min(float(r.headers.get("Retry-After", "1")), max(0.0, self.deadline - time.monotonic())))
                continue
            _check_answer(r, self.flag, "/predict")
            self.sent += 1
            return Answer(
                label=r.json().get("label") if r.status_code == 200 else None, refused=r.status_code == 403, invalid=r.status_code == 422
            )
        return None

    def close(self) -> None:
        self.http.close()


ANSWERS = (200, 403, 422)  # a label, a refusal by the input policy or the extraction detector, an invalid image


def _check_answer(r: httpx.Response, flag: str, path: str) -> None:
    """ConfigError for an answer that is neither a label nor a refusal of the query: a refused key (401) or a failing service
    must not read as an attack that went undetected."""
    if r.status_code in ANSWERS:
        return
    try:
        body = r.json()
        code = (body.get("reason") or body.get("error")) if isinstance(body, dict) else None
    except ValueError:
        code = None
    reason = f"HTTP {r.status_code}" + (f" {code}" if isinstance(code, str) else "")
    if r.status_code == 401:
        raise ConfigError(f"{flag}: the service refused the key on {path} ({reason})")
    raise ConfigError(f"the service answered {path} with {reason}; the run would not measure the detector")


def parse_metrics(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """``{(sample name, sorted label pairs): value}`` of a Prometheus text page (``prometheus_client``'s parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value) for family in text_string_to_metric_families(text) for s in family.samples
    }


def read_metrics(url: str, admin_key: Optional[str]) -> Dict:
    """The service's ``/metrics`` read with an admin key (parsed); {} without a key; ConfigError when it is not served."""
    if admin_key is None:
        return {}
    r = httpx.get(url + "/metrics", headers={"X-API-Key": admin_key}, timeout=10.0)
    if r.status_code != 200:  # no page is not "no alert"
        _check_answer(r if r.status_code != 403 else httpx.Response(401, json={"error": "not an admin key"}), "--admin-key", "/metrics")
    return parse_metrics(r.text)


def client_metric(metrics: Dict, name: str, key: str) -> Optional[float]:
    """The sample ``name`` of the client that holds API key ``key`` (labelled by its hash), or None."""
    return metrics.get((name, (("client", client_id(key)),)))
