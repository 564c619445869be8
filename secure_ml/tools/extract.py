"""``secure-ml extract``: run the extraction attack of :mod:`secure_ml.attacks.extraction` against a live service over HTTP.

Attacker (``--api-key``): seeds are held-out digits (test split [0, seeds)); the attack itself is
:func:`secure_ml.attacks.extraction.steal`, whose oracle here is a paced HTTP client (429s are waited
out within the deadline). Under ``extraction.action: block`` the service answers 403, which the
attacker sees; under ``flag`` or ``throttle`` the answers do not change, so with ``--admin-key`` the
report reads ``secure_ml_extraction_first_alert_query{client=<key hash>}`` from ``/metrics``.

Benign client (``--benign-api-key``): replays held-out digits (test split [1000, 1000 + n)) and counts how
many were flagged or refused by the detector: the false-positive rate. Its answers are also the real
model's labels for measuring the copy's agreement, unless ``--ckpt_path`` gives the model itself.

Every loop is bounded by the query budgets and ``--time-limit``; the URL must be a loopback address.
"""

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import httpx
import torch

from secure_ml.attacks.extraction import agreement, steal, train_copy
from secure_ml.errors import ConfigError
from secure_ml.tools.args import OneLineParser
from secure_ml.tools.http_client import HttpOracle, check_loopback, client_metric, read_metrics

DEFAULT_DATA = Path(os.environ.get("SECURE_ML_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
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


def run_benign(cfg: SimulatorConfig, digits: torch.Tensor, deadline: float) -> Dict:
    oracle = HttpOracle(cfg.url, cfg.benign_api_key, cfg.qps, deadline, "--benign-api-key")
    labels: List[int] = []
    answered: List[int] = []
    refused = invalid = 0
    try:
        for i, x in enumerate(digits):
            answer = oracle(x)
            if answer is None:
                break
            refused += answer.refused
            invalid += answer.invalid
            if answer.label is not None:
                labels.append(answer.label)
                answered.append(i)
    finally:
        oracle.close()
    return {
        "sent": oracle.sent,
        "refused": refused,
        "invalid": invalid,
        "labels": torch.tensor(labels, dtype=torch.long),
        "answered": answered,
    }


CKPT_MATCH = 0.99  # share of the service's answers the --ckpt_path model must give to be taken for the served model


def run_simulation(cfg: SimulatorConfig) -> Dict:
    check_loopback(cfg.url)
    if cfg.queries < 1 or cfg.seeds < 1 or cfg.benign_queries < 0 or cfg.epochs < 1:
        raise ConfigError("--queries, --seeds and --epochs must be >= 1 and --benign-queries >= 0")
    for flag, value in (("--lam", cfg.lam), ("--noise-std", cfg.noise_std), ("--qps", cfg.qps)):
        if not 0 <= value < float("inf"):  # NaN fails too: a NaN image is not JSON
            raise ConfigError(f"{flag} must be a finite number >= 0; got {value}")
    if not 0 < cfg.time_limit < float("inf"):
        raise ConfigError(f"--time-limit must be a number of seconds > 0; got {cfg.time_limit}")
    if cfg.torch_threads is not None and cfg.torch_threads < 1:
        raise ConfigError(f"--torch-threads must be >= 1; got {cfg.torch_threads}")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    real = None
    if cfg.ckpt_path:  # loaded before the first query: a mistyped path must not cost an attack's queries and its report
        from secure_ml.serving.startup import load_served_model

        real = load_served_model(cfg.ckpt_path, "cpu").model
    from secure_ml.tools.digits import load_test_digits

    t0 = time.monotonic()
    deadline = t0 + cfg.time_limit
    test_x, _ = load_test_digits(str(cfg.data_dir or DEFAULT_DATA))
    seeds = test_x[: min(cfg.seeds, EVAL_OFFSET)]
    eval_x = test_x[EVAL_OFFSET : EVAL_OFFSET + cfg.benign_queries]
    report: Dict = {"mode": cfg.mode, "query_budget": cfg.queries, "seeds": len(seeds)}

    benign = run_benign(cfg, eval_x, deadline) if cfg.benign_api_key and len(eval_x) else None
    oracle = HttpOracle(cfg.url, cfg.api_key, cfg.qps, deadline)
    try:
        stolen = steal(oracle, seeds, cfg.queries, cfg.mode, cfg.lam, cfg.noise_std, cfg.epochs, cfg.seed)
    finally:
        oracle.close()
    metrics = read_metrics(cfg.url, cfg.admin_key)

    first_alert = client_metric(metrics, "secure_ml_extraction_first_alert_query", cfg.api_key)
    candidates = [v for v in (stolen.refused_at, first_alert) if v is not None]
    detected_at = int(min(candidates)) if candidates else None
    report.update(
        queries_sent=stolen.sent,
        rate_limit_waits=oracle.retries,
        input_policy_422=stolen.invalid,
        detected=detected_at is not None,
        queries_to_detection=detected_at,
        detection_seen_via=("403" if stolen.refused_at is not None else "metrics") if detected_at is not None else None,
    )

    if real is not None:
        with torch.no_grad():
            truth_x, truth = eval_x, real(eval_x).argmax(1)
            same = float((real(stolen.x).argmax(1) == stolen.y).double().mean()) if len(stolen.y) else None
        # The service's own answers to the attack's queries say whether --ckpt_path is the served model at all: another
        # model's release was reported as "the served model" and its agreement as the copy's fidelity.
        report["ckpt_agrees_with_service"] = same
        report["truth"] = (
            "the served model"
            if same is None or same >= CKPT_MATCH
            else (f"--ckpt_path's model, NOT the served one: it gives the service's answer to only {same:.1%} of the attack's queries")
        )
    elif benign is not None:
        truth_x, truth = eval_x[benign["answered"]], benign["labels"]
        report["truth"] = "benign replay labels"
    else:
        truth_x, truth = eval_x[:0], torch.empty(0, dtype=torch.long)
        report["truth"] = None
    if stolen.refused_at is not None or first_alert is None:
        n_before = len(stolen.y)  # the loop stopped at the first 403: every label came before it
    else:
        n_before = min(len(stolen.y), int(first_alert) - 1)  # the detector counts answered queries, like the labels
    report["labels_before_detection"] = n_before
    copy = train_copy(stolen.x[:n_before], stolen.y[:n_before], cfg.epochs, cfg.seed)
    report["copy_agreement_at_detection"] = agreement(copy, truth_x, truth)
    report["labels_total"] = len(stolen.y)
    if len(stolen.y) > n_before:
        report["copy_agreement_final"] = agreement(train_copy(stolen.x, stolen.y, cfg.epochs, cfg.seed), truth_x, truth)
    report["agreement_digits"] = len(truth_x)

    if benign is not None:
        alarmed = client_metric(metrics, "secure_ml_extraction_alarmed_queries_total", cfg.benign_api_key) or 0
        flagged = max(benign["refused"], int(alarmed))
        report["benign"] = {
            "queries": benign["sent"],
            "flagged_or_refused": flagged,
            "input_policy_422": benign["invalid"],
            "false_positive_rate": flagged / benign["sent"] if benign["sent"] else None,
            "first_alert_query": client_metric(metrics, "secure_ml_extraction_first_alert_query", cfg.benign_api_key),
        }
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    return report


def format_report(r: Dict) -> str:
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    detected = f"yes, at query {r['queries_to_detection']} (seen via {r['detection_seen_via']})" if r["detected"] else "no"
    lines = [
        f"extraction simulator ({r['mode']}, {r['seeds']} seed digits, budget {r['query_budget']} queries)",
        f"  queries sent:                 {r['queries_sent']} (rate-limit waits: {r['rate_limit_waits']}, "
        f"refused by the input policy: {r['input_policy_422']})",
        f"  detected:                     {detected}",
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


def _parser() -> OneLineParser:
    p = OneLineParser(prog="secure-ml extract", description="Model-extraction attack simulator against a running `secure-ml serve`.")
    p.add_argument("--url", required=True, help="service base URL, e.g. http://127.0.0.1:8000 (loopback only)")
    p.add_argument("--api-key", required=True, help="the attacker's API key")
    p.add_argument("--benign-api-key", default=None, help="a second key: replay held-out digits as a benign client (false-positive rate)")
    p.add_argument("--admin-key", default=None, help="read /metrics to learn when the detector fired (flag/throttle actions)")
    p.add_argument("--mode", choices=["jacobian", "noise"], default="jacobian")
    p.add_argument("--queries", type=int, default=2000, help="attacker query budget")
    p.add_argument("--seeds", type=int, default=100, help="real held-out digits the attacker starts from")
    p.add_argument("--lam", type=float, default=0.1, help="Jacobian augmentation step (pixels)")
    p.add_argument("--noise-std", type=float, default=0.1)
    p.add_argument("--benign-queries", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=10, help="training epochs of the copy per round")
    p.add_argument(
        "--data-dir",
        default=None,
        help="MNIST folder whose test split is read (default: $SECURE_ML_DATA_DIR, else ../shared/data next to the repository)",
    )
    p.add_argument("--ckpt_path", "--ckpt-path", default=None, help="the served release artifact (or checkpoint), for agreement")
    p.add_argument("--qps", type=float, default=90.0, help="client-side pacing, queries per second (0 = unpaced)")
    p.add_argument("--time-limit", type=float, default=600.0, help="wall-clock cap in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the report here")
    return p


def extract_main(argv: List[str]) -> int:
    args = _parser().parse_args(argv)
    if args.json and not Path(args.json).parent.is_dir():
        raise ConfigError(f"--json: the folder of '{args.json}' does not exist")
    if args.json and Path(args.json).is_dir():  # checked before the first query: the report must not be lost after the attack
        raise ConfigError(f"--json: '{args.json}' is a directory; name a file")
    sim = SimulatorConfig(**{k: v for k, v in vars(args).items() if k != "json"})
    try:
        report = run_simulation(sim)
    except httpx.TransportError as exc:
        raise ConfigError(f"--url: cannot talk to the service at {args.url} ({type(exc).__name__})") from None
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
