"""Run several ``secure-ml`` command lines in ONE fresh Python process, each with its own stderr.

    python -m tests.helpers.cli_batch CASES.json RESULTS.json

``CASES.json`` maps a case id to ``{"argv": [...], "cwd": "..."}``. Each case calls
:func:`secure_ml.cli.main` (the console entry point) as the console script does (``sys.argv`` set, no arguments), with file descriptor 2 pointed at a file of its own,
(and ``sys.stderr`` a stream on that descriptor), so everything a case writes to stderr — our one-line errors, Lightning's log records, a traceback
printed by ``logging`` or by an uncaught exception — lands in that case's text, whichever stream object
a handler captured. An exception escaping ``main`` is printed there as a traceback, as the interpreter
would print it. ``RESULTS.json`` maps the id to ``{"code": exit status, "stderr": text}``.

Why: a subprocess per bad-input case paid the ~12 s import of Lightning each time (most of the CLI
tests' wall time). Cases share one process, so they must be ones that stop before training.
"""

import contextlib
import json
import os
import sys
import tempfile
import traceback


def _run(argv, cwd) -> int:
    from secure_ml.cli import main

    os.chdir(cwd)
    saved_argv, sys.argv = sys.argv, ["secure-ml", *argv]  # as the console script is called: main() reads sys.argv
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # reported as the interpreter would, in this case's stderr
        traceback.print_exc()
        return 1
    finally:
        sys.argv = saved_argv
    return 0


def run_cases(cases: dict) -> dict:
    results = {}
    # One stderr stream on *file descriptor 2 itself*: log handlers that capture it keep writing to whichever case's
    # file fd 2 points at (a per-case stream object would be closed under a handler that captured it).
    stream = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 - must outlive every case (handlers hold it)
    null = open(os.devnull, "w")  # noqa: SIM115 - stdout, shared by the cases for the same reason
    for case_id, case in cases.items():
        with tempfile.TemporaryFile(mode="w+") as err:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(err.fileno(), 2)
            try:
                with contextlib.redirect_stdout(null), contextlib.redirect_stderr(stream):
                    code = _run(case["argv"], case["cwd"])
                    stream.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            err.seek(0)
            results[case_id] = {"code": code, "stderr": err.read()}
    return results


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    results = run_cases(cases)
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)
