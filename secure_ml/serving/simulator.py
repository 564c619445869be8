"""Model-extraction attack simulator: steal a copy of the served model over real HTTP, and time the detector.

Attacker (``--api-key``): starts from ``seeds`` real held-out digits (test split [0, seeds)) and grows
its query set by Jacobian-based augmentation (Papernot et al., "Practical Black-Box Attacks against
Machine Learning", 2017): each round it trains a fresh SmallCNN copy on the labels received so far and
adds ``clip(x + lam * sign(d copy(x)[label] / dx))`` for every known ``x``; the set doubles per round
until the query budget. ``--mode noise`` adds Gaussian noise around known points instead.

How the attacker learns it was detected: under ``extraction.action: block`` the service answers 403
(``extraction_suspected``, then ``blocked``), which the simulator sees directly. Under ``flag`` or
``throttle`` the answers do not change, so with ``--admin-key`` it reads
``secure_ml_extraction_first_alert_query{client=<key hash>}`` from ``/metrics`` (the operator's view).

Benign client (``--benign-api-key``): replays held-out digits (test split [1000, 1000 + n)) and counts
how many of its queries the detector flagged or refused: that share is the false-positive rate. Its
answers are also the real model's labels for measuring the copy's agreement, unless ``--ckpt_path``
gives the model itself. Agreement = share of those held-out digits where copy and model agree, for the
copy trained on the labels obtained *before* detection, and for the copy trained on all of them.

Every loop is bounded by the query budgets and ``time_limit``; the URL must be a loopback address.
"""

import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import urlparse

import httpx
import torch

from secure_ml.errors import ConfigError
from secure_ml.serving.auth import client_id
from secure_ml.serving.metrics import parse_prometheus
from secure_ml.serving.substitute import agreement, jacobian_augment, train_copy

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
EVAL_OFFSET = 1000


@dataclass
class SimulatorConfig:
    url: str
    api_key: str
    benign_api_key: Optional[str] = None
    admin_key: Optional[str] = None
    mode: str = "jacobian"
    queries: int = 2000
    seeds: int = 100
    lam: float = 0.1
    noise_std: float = 0.1
    benign_queries: int = 1000
    epochs: int = 10
    data_dir: Optional[str] = None
    ckpt_path: Optional[str] = None
    qps: float = 90.0
    time_limit: float = 600.0
    seed: int = 0
    torch_threads: Optional[int] = 1


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"--url: {url!r} is not a loopback address; the simulator only attacks a local service")


class Client:
    """One API key's paced, bounded HTTP session; 429s are waited out (Retry-After) within the deadline."""

    def __init__(self, url: str, key: str, qps: float, deadline: float):
        self.http = httpx.Client(base_url=url, timeout=10.0, headers={"X-API-Key": key})
        self.interval = 1.0 / qps if qps > 0 else 0.0
        self.deadline = deadline
        self.next_at = time.monotonic()
        self.sent = self.retries = 0

    def predict(self, x: torch.Tensor) -> Optional[dict]:
        """``{"status", "label"}``; None once out of time."""
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
            self.sent += 1
            return {"status": r.status_code, "label": r.json().get("label") if r.status_code == 200 else None}
        return None

    def close(self) -> None:
        self.http.close()


def _metrics(url: str, admin_key: Optional[str]) -> Dict:
    if admin_key is None:
        return {}
    r = httpx.get(url + "/metrics", headers={"X-API-Key": admin_key}, timeout=10.0)
    return parse_prometheus(r.text) if r.status_code == 200 else {}


def _metric(metrics: Dict, name: str, key: str) -> Optional[float]:
    return metrics.get((name, (("client", client_id(key)),)))


def run_attack(cfg: SimulatorConfig, seeds: torch.Tensor, deadline: float) -> Dict:
    client = Client(cfg.url, cfg.api_key, cfg.qps, deadline)
    g = torch.Generator().manual_seed(cfg.seed)
    xs: List[torch.Tensor] = []
    ys: List[int] = []
    pending, detected_at, copy, invalid = seeds, None, None, 0
    try:
        while client.sent < cfg.queries and detected_at is None and len(pending):
            for x in pending[: cfg.queries - client.sent]:
                out = client.predict(x)
                if out is None:
                    break
                if out["status"] == 403:
                    detected_at = client.sent
                    break
                invalid += out["status"] == 422
                if out["status"] == 200:
                    xs.append(x)
                    ys.append(out["label"])
            if detected_at is not None or client.sent >= cfg.queries or time.monotonic() >= deadline or not xs:
                break
            known_x, known_y = torch.stack(xs), torch.tensor(ys)
            if cfg.mode == "jacobian":
                copy = train_copy(known_x, known_y, cfg.epochs, cfg.seed)
                pending = jacobian_augment(copy, known_x, known_y, cfg.lam)
            else:
                pending = (known_x + cfg.noise_std * torch.randn(known_x.shape, generator=g)).clamp(0.0, 1.0)
    finally:
        client.close()
    return {
        "x": torch.stack(xs) if xs else torch.empty(0, 1, 28, 28),
        "y": torch.tensor(ys, dtype=torch.long),
        "sent": client.sent,
        "retries": client.retries,
        "invalid": invalid,
        "detected_at_403": detected_at,
    }


def run_benign(cfg: SimulatorConfig, digits: torch.Tensor, deadline: float) -> Dict:
    client = Client(cfg.url, cfg.benign_api_key, cfg.qps, deadline)
    labels, refused, invalid, answered = [], 0, 0, []
    try:
        for i, x in enumerate(digits):
            out = client.predict(x)
            if out is None:
                break
            refused += out["status"] == 403
            invalid += out["status"] == 422
            if out["status"] == 200:
                labels.append(out["label"])
                answered.append(i)
    finally:
        client.close()
    return {
        "sent": client.sent,
        "refused": refused,
        "invalid": invalid,
        "labels": torch.tensor(labels, dtype=torch.long),
        "answered": answered,
    }


def run_simulation(cfg: SimulatorConfig) -> Dict:
    check_loopback(cfg.url)
    if cfg.queries < 1 or cfg.seeds < 1 or cfg.benign_queries < 0 or cfg.epochs < 1:
        raise ConfigError("--queries, --seeds and --epochs must be >= 1 and --benign-queries >= 0")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    from secure_ml.data.mnist import load_mnist

    t0 = time.monotonic()
    deadline = t0 + cfg.time_limit
    test_x, _ = load_mnist(str(cfg.data_dir or DEFAULT_DATA), train=False, download=False)
    seeds = test_x[: min(cfg.seeds, EVAL_OFFSET)]
    eval_x = test_x[EVAL_OFFSET : EVAL_OFFSET + cfg.benign_queries]
    report: Dict = {"mode": cfg.mode, "query_budget": cfg.queries, "seeds": len(seeds)}

    benign = run_benign(cfg, eval_x, deadline) if cfg.benign_api_key and len(eval_x) else None
    attack = run_attack(cfg, seeds, deadline)
    metrics = _metrics(cfg.url, cfg.admin_key)

    first_alert = _metric(metrics, "secure_ml_extraction_first_alert_query", cfg.api_key)
    candidates = [v for v in (attack["detected_at_403"], first_alert) if v is not None]
    detected_at = int(min(candidates)) if candidates else None
    report.update(
        queries_sent=attack["sent"],
        rate_limit_waits=attack["retries"],
        input_policy_422=attack["invalid"],
        detected=detected_at is not None,
        queries_to_detection=detected_at,
        detection_seen_via=("403" if attack["detected_at_403"] is not None else "metrics") if detected_at is not None else None,
    )

    if cfg.ckpt_path:
        from secure_ml.serving.model_loading import load_model

        real = load_model(cfg.ckpt_path, "cpu")
        with torch.no_grad():
            truth_x, truth = eval_x, real(eval_x).argmax(1)
        report["truth"] = "checkpoint"
    elif benign is not None:
        truth_x, truth = eval_x[benign["answered"]], benign["labels"]
        report["truth"] = "benign replay labels"
    else:
        truth_x, truth = eval_x[:0], torch.empty(0, dtype=torch.long)
        report["truth"] = None
    if attack["detected_at_403"] is not None or first_alert is None:
        n_before = len(attack["y"])  # the loop stopped at the first 403: every label came before it
    else:
        n_before = min(len(attack["y"]), int(first_alert) - 1)  # the detector counts answered queries, like the labels
    report["labels_before_detection"] = n_before
    report["copy_agreement_at_detection"] = agreement(
        train_copy(attack["x"][:n_before], attack["y"][:n_before], cfg.epochs, cfg.seed), truth_x, truth
    )
    report["labels_total"] = len(attack["y"])
    if len(attack["y"]) > n_before:
        report["copy_agreement_final"] = agreement(train_copy(attack["x"], attack["y"], cfg.epochs, cfg.seed), truth_x, truth)
    report["agreement_digits"] = len(truth_x)

    if benign is not None:
        alarmed = _metric(metrics, "secure_ml_extraction_alarmed_queries_total", cfg.benign_api_key) or 0
        flagged = max(benign["refused"], int(alarmed))
        report["benign"] = {
            "queries": benign["sent"],
            "flagged_or_refused": flagged,
            "input_policy_422": benign["invalid"],
            "false_positive_rate": flagged / benign["sent"] if benign["sent"] else None,
            "first_alert_query": _metric(metrics, "secure_ml_extraction_first_alert_query", cfg.benign_api_key),
        }
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    return report


def format_report(r: Dict) -> str:
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = [
        f"extraction simulator ({r['mode']}, {r['seeds']} seed digits, budget {r['query_budget']} queries)",
        f"  queries sent:                 {r['queries_sent']} (rate-limit waits: {r['rate_limit_waits']}, "
        f"refused by the input policy: {r['input_policy_422']})",
        f"  detected:                     {'yes, at query ' + str(r['queries_to_detection']) + ' (seen via ' + r['detection_seen_via'] + ')' if r['detected'] else 'no'}",
        f"  copy agreement at detection:  {pct(r['copy_agreement_at_detection'])} ({r['labels_before_detection']} labels; "
        f"{r['agreement_digits']} held-out digits, truth: {r['truth']})",
    ]
    if "copy_agreement_final" in r:
        lines.append(f"  copy agreement, all labels:   {pct(r['copy_agreement_final'])} ({r['labels_total']} labels)")
    if "benign" in r:
        b = r["benign"]
        lines.append(
            f"  benign replay:                {b['queries']} held-out digits, {b['flagged_or_refused']} flagged/refused by "
            f"the detector, FPR {pct(b['false_positive_rate'])} ({b['input_policy_422']} refused by the input policy)"
        )
    lines.append(f"  elapsed:                      {r['elapsed_s']} s")
    return "\n".join(lines)
