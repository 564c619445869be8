"""``secure-ml serve`` and ``secure-ml extract``: argv in, exit status out, every user error one line.

Both raise ``SecureMLError`` for bad input; ``secure_ml.cli.main`` prints it as ``secure-ml: error: ...``
and exits 2 (argparse errors take the same path through ``_Parser.error``).
"""

import argparse
import logging
import sys
from typing import List

from secure_ml.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise ConfigError(f"{self.prog}: {message}")


def _serve_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="secure-ml serve", description="Serve a `secure-ml fit` checkpoint behind the security guards.")
    p.add_argument("--ckpt_path", "--ckpt-path", required=True, help="checkpoint written by `secure-ml fit` (or .safetensors)")
    p.add_argument("--config", default=None, help="serve.yaml (defaults apply to anything it leaves out)")
    p.add_argument("--host", default=None, help="listen address (default server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port (default server.port; 0 = any free port)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return p


def serve_main(argv: List[str]) -> int:
    args = _serve_parser().parse_args(argv)
    from secure_ml.serving.config import load_serve_config

    overrides = {k: v for k, v in (("server.host", args.host), ("server.port", args.port)) if v is not None}
    cfg = load_serve_config(args.config, overrides)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from secure_ml.serving.app import build_service
    from secure_ml.serving.model_loading import load_checkpoint
    from secure_ml.serving.policy import build_policy_with_source
    from secure_ml.serving.server import bind_socket, serve_forever

    if cfg.model.torch_threads:
        import torch

        torch.set_num_threads(cfg.model.torch_threads)
    model, stored_policy = load_checkpoint(args.ckpt_path, cfg.model.device)
    policy, source = build_policy_with_source(cfg.policy, model, stored_policy) if cfg.guard_on("policy") else (None, "off")
    service = build_service(cfg, model, policy)
    sock = bind_socket(cfg.server.host, cfg.server.port)
    host, port = sock.getsockname()[:2]
    state = "on" if cfg.guards else "OFF (benchmark baseline: no auth, limits, policy, audit or detector)"
    print(
        f"secure-ml serve: listening on http://{host}:{port} (guards {state}; input policy: {source}; audit log "
        f"{cfg.audit.path if cfg.guard_on('audit') else 'off'})",
        file=sys.stderr,
        flush=True,
    )
    serve_forever(service, sock, args.log_level)
    return 0


def _extract_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="secure-ml extract", description="Model-extraction attack simulator against a running `secure-ml serve`.")
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
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: ../shared/data next to the repository)")
    p.add_argument("--ckpt_path", "--ckpt-path", default=None, help="the real model, for agreement (else the benign replay's labels)")
    p.add_argument("--qps", type=float, default=90.0, help="client-side pacing, queries per second (0 = unpaced)")
    p.add_argument("--time-limit", type=float, default=600.0, help="wall-clock cap in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the report here")
    return p


def extract_main(argv: List[str]) -> int:
    args = _extract_parser().parse_args(argv)
    import httpx

    from secure_ml.serving.simulator import SimulatorConfig, format_report, run_simulation

    sim = SimulatorConfig(**{k: v for k, v in vars(args).items() if k != "json"})
    try:
        report = run_simulation(sim)
    except httpx.TransportError as exc:
        raise ConfigError(f"--url: cannot talk to the service at {args.url} ({type(exc).__name__}: {exc})") from None
    print(format_report(report))
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":  # python -m secure_ml.serving.cli {serve,extract} ... is the same as secure-ml serve|extract
    from secure_ml.cli import main

    main()
