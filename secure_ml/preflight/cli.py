"""``secure-ml preflight --serve-config configs/serve.yaml --model release/ [--metrics metrics.json] [--max-epsilon E] ...``.

Prints one line per checklist item of docs/deployment.md that a program can check, PASS / FAIL / SKIP,
with the fix under each failure; exit status 1 when any item fails, 0 otherwise, 2 for bad arguments.
"""

import math
import sys
from pathlib import Path
from typing import List, Optional

from secure_ml.errors import ConfigError
from secure_ml.preflight import model_checks as mc
from secure_ml.preflight import service_checks as sc
from secure_ml.preflight.deployment import gates_from, inspect
from secure_ml.tools.args import OneLineParser


def _parser() -> OneLineParser:
    p = OneLineParser(prog="secure-ml preflight", description="Check a deployment against docs/deployment.md before it serves.")
    p.add_argument("--serve-config", required=True, help="the serve.yaml the service will run with")
    p.add_argument("--model", required=True, help="what --ckpt_path of secure-ml serve will be (a release directory from secure-ml export)")
    p.add_argument("--metrics", default=None, help="metrics.json of `secure-ml test` with the gates, for this model's checkpoint")
    p.add_argument("--gates", default=None, help="gates to re-check the metrics against (default configs/gates.yaml when present)")
    p.add_argument("--max-epsilon", type=float, default=None, help="the privacy budget (default: the gates' privacy/epsilon limit)")
    p.add_argument("--max-delta", type=float, default=1e-5, help="largest acceptable δ (default 1e-5)")
    p.add_argument("--data-dir", default=None, help="MNIST folder: measure the input policy's false positives on its held-out test split")
    p.add_argument(
        "--max-false-positive-rate", type=float, default=None, help="(default: the gates' sponge/false_positive_rate, else 0.02)"
    )
    p.add_argument("--tls-proxy", action="store_true", help="a TLS-terminating proxy is the only way to reach server.host:port")
    p.add_argument("--logrotate", default=None, help="logrotate config file or folder (default /etc/logrotate.conf and /etc/logrotate.d)")
    return p


def _limit(gates, metric: str) -> Optional[float]:
    return next((g.threshold for g in gates if g.metric == metric and g.op in ("<=", "<")), None)


def run_checks(argv: List[str]) -> List[sc.Check]:
    args = _parser().parse_args(argv)
    for flag, value, high in (
        ("--max-epsilon", args.max_epsilon, math.inf),
        ("--max-delta", args.max_delta, 1.0),  # a δ of 1 guarantees nothing
        ("--max-false-positive-rate", args.max_false_positive_rate, 1.0),  # a rate, not a percentage: 5 passed any policy
    ):
        if value is not None and not 0 < value < high:  # NaN compares false: "ε > nan" would pass any model
            bound = "a finite number > 0" if high == math.inf else f"in (0, {high:g})"
            raise ConfigError(f"secure-ml preflight: {flag} must be {bound}; got {value}")
    default_gates = Path("configs/gates.yaml")
    gates_path = Path(args.gates) if args.gates else (default_gates if default_gates.is_file() else None)
    gates = gates_from(gates_path)
    max_eps = args.max_epsilon if args.max_epsilon is not None else _limit(gates, "privacy/epsilon")
    max_fpr = args.max_false_positive_rate
    max_fpr = max_fpr if max_fpr is not None else (_limit(gates, "sponge/false_positive_rate") or 0.02)
    dep = inspect(args.serve_config, args.model)
    checks = [sc.config_check(dep)]
    if dep.config is not None:
        checks += [
            sc.guards_check(dep),
            sc.keys_check(dep),
            sc.admin_check(dep),
            sc.bind_check(dep, args.tls_proxy),
            sc.docs_check(dep),
            sc.log_writable_check(dep),
            sc.rotated_check(dep, Path(args.logrotate) if args.logrotate else None),
            sc.rate_limit_check(dep),
            sc.extraction_check(dep),
            sc.output_check(dep),
        ]
    checks += [mc.integrity_check(dep), mc.release_check(dep)]
    if dep.config is not None:
        checks += [mc.policy_check(dep), mc.false_positive_check(dep, args.data_dir, max_fpr)]
    checks += [mc.budget_check(dep, max_eps, args.max_delta), mc.gates_check(dep, Path(args.metrics) if args.metrics else None, gates)]
    return checks


def preflight_main(argv: List[str]) -> int:
    checks = run_checks(argv)
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.status:4}  {c.name:{width}}  {c.detail}")
        if c.status != "PASS" and c.fix:
            print(f"{'':4}  {'':{width}}  fix: {c.fix}")
    failed = [c.name for c in checks if c.failed]
    summary = f"{len(failed)} of {len(checks)} checks failed: {', '.join(failed)}" if failed else f"all {len(checks)} checks passed"
    print(f"secure-ml preflight: {summary}", file=sys.stderr)
    return 1 if failed else 0
