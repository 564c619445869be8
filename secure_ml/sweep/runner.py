"""Run one training point in this (long-lived) process: ``fit``, then one ``test`` per test combination.

The LightningCLI runs in-process (:func:`build_cli`), so the ~5 s import of Lightning and the
parser are paid once per worker, not once per point. During ``fit`` the scorecard callbacks are
off (the sweep reads the *test* metrics; ``poison/*`` and ``privacy/epsilon`` come from ``fit``);
each ``test`` writes ``metrics.json`` into ``<run>/lightning_logs/test-<i>/``. Everything the
runs print goes to ``<run>/log.txt``; an error becomes one line in the results.
"""

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from secure_ml.errors import ConfigError, SecureMLError
from secure_ml.report.metric_names import describe
from secure_ml.sweep.options import cli_args, config_args

# The scorecard callbacks run in test only; fit needs none of them (nor a dashboard image per epoch).
FIT_ONLY = {"robustness.enabled": False, "membership.enabled": False, "sponge.enabled": False, "scorecard.log_figure": False}
QUIET = {"trainer.enable_progress_bar": False, "trainer.enable_model_summary": False}


@dataclass
class PointResult:
    """What one point produced: merged metrics (fit's, then each test's), wall time, gate failures, and an error line."""

    metrics: Dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    error: Optional[str] = None
    gate_failures: List[str] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)  # more columns for results.csv (e.g. a policy's limits)


def one_line(exc: BaseException) -> str:
    """An exception as one line: the message of a SecureMLError, else ``Type: message`` (first line)."""
    if isinstance(exc, SystemExit):
        return f"the secure-ml CLI exited with status {exc.code} (see log.txt)"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, SecureMLError) and text else f"{type(exc).__name__}: {text}".rstrip(": ")


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C code and logging handlers too) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


@contextmanager
def interruptible() -> Iterator[Dict[str, bool]]:
    """Notice Ctrl-C during a point even though Lightning turns it into ``SystemExit(1)`` and then ignores SIGINT.

    Yields a flag set by our SIGINT handler; afterwards Python's default handler is back in place.
    """
    hit = {"interrupted": False}

    def handler(signum, frame):
        hit["interrupted"] = True
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.signal(signal.SIGINT, handler)
    try:
        yield hit
    finally:
        if in_main:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def scalar_metrics(metrics: Mapping[str, Any]) -> Dict[str, float]:
    """The scorecard metrics among ``metrics`` (names the registry knows), as floats."""
    out = {}
    for key, value in metrics.items():
        if describe(key) is None:
            continue
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _run_args(run_dir: Path, version: str) -> Dict[str, Any]:
    return {
        "trainer.default_root_dir": str(run_dir),
        "trainer.logger.init_args.save_dir": str(run_dir),
        "trainer.logger.init_args.version": version,
    }


def _last_checkpoint(log_dir: Path) -> Path:
    ckpts = sorted((log_dir / "checkpoints").glob("*.ckpt"))
    if not ckpts:
        raise RuntimeError(f"fit wrote no checkpoint under {log_dir}")
    last = [c for c in ckpts if c.name == "last.ckpt"]
    return last[0] if last else max(ckpts, key=lambda c: c.stat().st_mtime)


_PARSER = None


def build_cli(args: List[str]):
    """The ``secure-ml`` LightningCLI (``run=False``: parsed and instantiated, not run) with its parser built once per process.

    LightningCLI builds its parser on every call (four subcommand parsers for ``fit|validate|test|predict``,
    about 1.5 s); a worker runs many points, so it builds the single parser of ``run=False`` once and reuses
    it. Everything else (configs, links, callbacks, DP checks) is the CLI's own.
    """
    from secure_ml.train_cli import SecureMLCLI, cli_main

    class _SweepCLI(SecureMLCLI):
        def setup_parser(self, add_subcommands, main_kwargs, subparser_kwargs) -> None:
            global _PARSER
            if _PARSER is not None and not add_subcommands:
                self.parser = _PARSER
                return
            super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
            if not add_subcommands:
                _PARSER = self.parser

    return cli_main(args, run=False, cli_class=_SweepCLI)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _check_no_overwrite(seen: Dict[str, Tuple[int, float]], run: int, metrics: Mapping[str, float]) -> None:
    """ConfigError when test run ``run`` reports a metric an earlier test run of the point reported with another value.

    A point keeps one value per metric name, so a ``test.grid`` axis that does not change the names (PGD steps, say, where
    ``robustness.pgd_epsilon`` does) would keep only its last run's numbers. Equal values (the clean accuracy every test
    run logs) are not a conflict.
    """
    for name, value in metrics.items():
        if name in seen and not _same(seen[name][1], value):
            earlier, before = seen[name]
            raise ConfigError(
                f"test runs {earlier} and {run} of the point both report {name} ({before:.6g} vs {value:.6g}): one row keeps one "
                "value per metric, so a test.grid axis must change the metric names (as robustness.pgd_epsilon does); "
                "make this option a grid axis instead"
            )
        seen.setdefault(name, (run, value))


def run_train_point(
    bases: Sequence[Path],
    overrides: Mapping[str, Any],
    test_runs: Sequence[Mapping[str, Any]],
    run_dir: Path,
    keep_checkpoints: bool = False,
) -> PointResult:
    """``fit`` with ``overrides``, then ``test`` once per entry of ``test_runs`` (extra overrides); never raises except on Ctrl-C.

    The test runs reuse the fit's datamodule (its data is the same) unless a test override changes a ``data.*`` option.
    """
    from secure_ml.callbacks.scorecard import GateFailure

    result = PointResult()
    start = time.perf_counter()
    hit = {"interrupted": False}
    common = config_args(bases) + cli_args({**overrides, **QUIET})
    try:
        with interruptible() as hit, output_to(run_dir / "log.txt"):
            fit = build_cli([*common, *cli_args({**FIT_ONLY, **_run_args(run_dir, "fit")})])
            fit.trainer.fit(fit.model, datamodule=fit.datamodule)
            result.metrics.update(scalar_metrics(fit.trainer.callback_metrics))
            ckpt = _last_checkpoint(run_dir / "lightning_logs" / "fit")
            from_tests: Dict[str, Tuple[int, float]] = {}  # metric → (test run, value)
            for i, extra in enumerate(test_runs):
                version = f"test-{i}"
                test = build_cli([*common, *cli_args({**extra, **_run_args(run_dir, version)})])
                data = fit.datamodule if not any(k.startswith("data.") for k in extra) else test.datamodule
                try:
                    test.trainer.test(test.model, datamodule=data, ckpt_path=str(ckpt))
                except GateFailure as exc:  # the metrics were written before the gates were checked
                    result.gate_failures.append(str(exc))
                report = run_dir / "lightning_logs" / version / "metrics.json"
                metrics = scalar_metrics(json.loads(report.read_text())["test"])
                _check_no_overwrite(from_tests, i, metrics)
                result.metrics.update(metrics)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit from the parser included: the point fails, the sweep goes on
        if hit["interrupted"]:  # Lightning turned Ctrl-C into SystemExit(1)
            raise KeyboardInterrupt from None
        result.error = one_line(exc)
        with open(run_dir / "log.txt", "a") as f:
            traceback.print_exception(exc, file=f)
    finally:
        result.wall_s = time.perf_counter() - start
        if not keep_checkpoints:
            for folder in (run_dir / "lightning_logs").glob("*/checkpoints"):
                shutil.rmtree(folder, ignore_errors=True)
    result.metrics = {k: v for k, v in result.metrics.items() if not math.isnan(v)}
    return result
