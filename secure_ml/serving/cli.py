"""``secure-ml serve``: argv in, exit status out, every user error one line (``secure_ml.cli.main`` prints it, exit 2)."""

import argparse
import logging
import sys
from typing import List

from secure_ml.tools.args import OneLineParser


def _parser() -> OneLineParser:
    p = OneLineParser(prog="secure-ml serve", description="Serve a release artifact (`secure-ml export`) behind the security guards.")
    p.add_argument(
        "--ckpt_path",
        "--ckpt-path",
        required=True,
        help="release directory written by `secure-ml export` (or a `secure-ml fit` checkpoint: served with a warning)",
    )
    p.add_argument("--config", default=None, help="serve.yaml (defaults apply to anything it leaves out)")
    p.add_argument("--host", default=None, help="listen address (default server.host, 127.0.0.1)")
    p.add_argument("--port", type=_port, default=None, help="listen port (default server.port; 0 = any free port)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return p


def _port(text: str) -> int:
    """``--port``'s value, refused by argparse (one line naming the flag) outside 0..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535, got {port}")
    return port


def serve_main(argv: List[str]) -> int:
    args = _parser().parse_args(argv)
    from secure_ml.serving.config_loading import load_serve_config

    overrides = {k: v for k, v in (("server.host", args.host), ("server.port", args.port)) if v is not None}
    cfg = load_serve_config(args.config, overrides)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from secure_ml.serving.app import build_service
    from secure_ml.serving.server import bind_socket, serve_forever
    from secure_ml.serving.startup import prepare

    served, policy, source = prepare(cfg, args.ckpt_path)
    for line in served.warnings:
        print(f"secure-ml serve: {line}", file=sys.stderr, flush=True)
    service = build_service(cfg, served.model, policy, num_classes=served.num_classes)
    sock = bind_socket(cfg.server.host, cfg.server.port)
    host, port = sock.getsockname()[:2]
    state = "on" if cfg.guards else "OFF (benchmark baseline: no auth, limits, policy, audit or detector)"
    print(
        f"secure-ml serve: listening on http://{host}:{port} (guards {state}; model: {served.source}; input policy: {source}; "
        f"limits: {cfg.rate_limit.storage.split('://')[0]}; audit log {cfg.audit.path if cfg.guard_on('audit') else 'off'})",
        file=sys.stderr,
        flush=True,
    )
    serve_forever(service, sock, args.log_level)
    return 0


if __name__ == "__main__":  # python -m secure_ml.serving.cli serve ... is the same as secure-ml serve ...
    from secure_ml.cli import main

    main()
