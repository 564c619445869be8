"""What building LightningCLI's parsers costs a command: every subcommand's parser vs only the named one's.

    python benchmarks/cli_parser.py [--rounds 5]

In one process (imports paid once, before the clock), alternately: ``secure-ml fit --config configs/capstone.yaml
--print_config`` as :class:`secure_ml.train_cli.SecureMLCLI` runs it (the parser of ``fit`` alone, see
``SecureMLCLI.subcommands``) and the same with Lightning's own ``subcommands`` (the parsers of fit, validate, test and
predict, as LightningCLI builds them). ``--print_config`` stops after the parse, so the clock covers the parser's
construction and the parse of the capstone's config; the printed config goes to a buffer, and the two must be equal.
Prints the median seconds of each and their difference.
"""

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning.pytorch.cli import LightningCLI  # noqa: E402

from secure_ml.train_cli import SecureMLCLI, cli_main  # noqa: E402

ARGS = ["fit", "--config", str(REPO / "configs" / "capstone.yaml"), "--print_config"]


class EveryParserCLI(SecureMLCLI):
    """SecureMLCLI with LightningCLI's subcommands: all four parsers built, whichever is named."""

    subcommands = staticmethod(LightningCLI.subcommands)


def timed(cli_class) -> tuple:
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli_main(list(ARGS), cli_class=cli_class)
    return time.perf_counter() - start, out.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    timed(SecureMLCLI)  # warm-up: first-use imports (jsonargparse's type resolution, docstring parsing) in neither column
    times = {SecureMLCLI: [], EveryParserCLI: []}
    printed = {}
    for r in range(args.rounds):
        for cls in (SecureMLCLI, EveryParserCLI) if r % 2 == 0 else (EveryParserCLI, SecureMLCLI):
            seconds, printed[cls] = timed(cls)
            times[cls].append(seconds)
    if printed[SecureMLCLI] != printed[EveryParserCLI]:
        print("FAIL  the two parsers printed different configs")
        return 1
    one, every = statistics.median(times[SecureMLCLI]), statistics.median(times[EveryParserCLI])
    print(f"rounds={args.rounds}: fit's parser alone {one:.2f} s, all four parsers {every:.2f} s; saved {every - one:.2f} s per command")
    print(f"  runs (fit alone): {', '.join(f'{t:.2f}' for t in times[SecureMLCLI])}")
    print(f"  runs (all four):  {', '.join(f'{t:.2f}' for t in times[EveryParserCLI])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
