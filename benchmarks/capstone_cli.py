"""The capstone's command lines, for the benchmarks that time whole ``secure-ml`` commands alternately
(``prefetch_gain.py``, ``startup_gc.py``): their flags and the command's pieces."""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse(doc: str, argv=None) -> argparse.Namespace:
    """``--data-dir`` and ``--rounds`` (the alternating rounds), with ``doc``'s first line as the description."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--rounds", type=int, default=3)
    return ap.parse_args(argv)


def capstone(data_dir: str) -> tuple:
    """``(python -m secure_ml, the capstone's --config and data flags)``: add the subcommand between them."""
    data = ["--config", str(REPO / "configs" / "capstone.yaml"), "--data.data_dir", str(Path(data_dir).resolve())]
    return [sys.executable, "-m", "secure_ml"], data + ["--data.download", "false", "--trainer.enable_progress_bar", "false"]
