"""A sweep worker process: ``python -m secure_ml.sweep.worker '<options as JSON>' <index>`` (started by ``secure-ml sweep --n-jobs``).

Several may run on one machine or on many, against one ``--storage``; see :mod:`secure_ml.sweep.scheduler`.
Exit status 0 when it ran out of points, 1 on an error (printed as one line), 130 on Ctrl-C.
"""

import sys

from secure_ml.errors import SecureMLError


def main(argv=None) -> int:
    from secure_ml.sweep.engine import run_worker
    from secure_ml.sweep.plan import SweepOptions, make_plan

    argv = list(sys.argv[1:] if argv is None else argv)
    options, index = SweepOptions.from_json(argv[0]), int(argv[1])
    try:
        ran = run_worker(make_plan(options), index)
    except KeyboardInterrupt:
        print(f"secure-ml sweep worker {index}: interrupted", file=sys.stderr)
        return 130
    except SecureMLError as exc:
        print(f"secure-ml sweep worker {index}: error: {exc}", file=sys.stderr)
        return 1
    print(f"secure-ml sweep worker {index}: ran {ran} point(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
