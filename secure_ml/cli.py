"""``secure-ml``: one entry point, one error path.

``fit / validate / test / predict`` go to the LightningCLI (:mod:`secure_ml.train_cli`); the other
commands are looked up in :data:`COMMANDS` and imported only when called, so ``secure-ml serve`` and
``secure-ml extract`` never import Lightning. Every ``SecureMLError`` becomes one line on stderr and
exit status 2.
"""

import gc
import importlib
import sys
from typing import Callable, List, Optional

from secure_ml import startup_gc
from secure_ml.errors import SecureMLError

# name: (module, function taking argv and returning an exit status)
COMMANDS = {
    "serve": ("secure_ml.serving.cli", "serve_main"),
    "extract": ("secure_ml.tools.extract", "extract_main"),
    "export": ("secure_ml.release.cli", "export_main"),
    "sweep": ("secure_ml.sweep.cli", "sweep_main"),
    "preflight": ("secure_ml.preflight.cli", "preflight_main"),
}


def cli_main(args: Optional[List[str]] = None, run: bool = True):
    """The LightningCLI (``secure-ml fit|validate|test|predict ...``); see :func:`secure_ml.train_cli.cli_main`."""
    from secure_ml.train_cli import cli_main as build

    return build(args, run)


def run_reporting_errors(command: Callable[[], Optional[int]]) -> None:
    """Run ``command``; a ``SecureMLError`` becomes ``secure-ml: error: <message>`` and its exit status (2; 143 when stopped by SIGTERM)."""
    try:
        status = command()
    except SecureMLError as exc:
        print(f"secure-ml: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_status) from None
    if status:
        raise SystemExit(status)


def _train(argv: Optional[List[str]]) -> int:
    cli_main(argv)
    return 0


def main(args: Optional[List[str]] = None) -> None:
    """The commands (``args`` None: the command line; given, as from Python or a test)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in COMMANDS:
        module, func = COMMANDS[argv[0]]
        run_reporting_errors(lambda: getattr(importlib.import_module(module), func)(argv[1:]))
    else:  # from the command line, LightningCLI reads sys.argv itself (given both, it warns on every run)
        from secure_ml.prefetch import start

        start(argv)  # the sanitizer on the idle core while Lightning imports (a no-op once torch is loaded)
        if args is None:  # the command line only: a caller's own process keeps its collector
            startup_gc.pause()  # until the CLI has built its classes (secure_ml.startup_gc)
        try:
            run_reporting_errors(lambda: _train(None if args is None else argv))
        finally:
            startup_gc.resume()


def console() -> None:
    """Console entry point (``secure-ml`` and ``python -m secure_ml``): :func:`main`, then a quick way out.

    The interpreter's shutdown runs garbage collections over every object torch and Lightning built: 2-3 s of each
    `secure-ml fit`/`test` (``benchmarks/phase_times.py``, "interpreter exit"), walking millions of live objects
    (torch._dynamo, sympy, ... imported via torchmetrics) that the OS reclaims anyway. So garbage is collected once
    here, while finalizers of dead objects still run, and the live objects are frozen (``gc.freeze``) out of the
    shutdown's reach. Files, loggers and checkpoints are closed by then (Lightning's teardown); ``atexit`` handlers,
    ``logging.shutdown`` and the stdio flush still run.
    """
    try:
        main()
    finally:
        gc.collect()
        gc.freeze()


if __name__ == "__main__":
    console()
