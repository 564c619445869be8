"""Markdown table of results.jsonl (one row per run; the args that differ from hx.py's defaults)."""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DEFAULTS = None


def defaults():
    import hx

    global DEFAULTS
    if DEFAULTS is None:
        import argparse

        # parse an empty command line with hx's parser by intercepting parse_args
        real = argparse.ArgumentParser.parse_args
        captured = {}

        def fake(self, argv=None, ns=None):
            captured.update(vars(real(self, [])))
            raise SystemExit

        argparse.ArgumentParser.parse_args = fake
        try:
            hx.main([])
        except SystemExit:
            pass
        finally:
            argparse.ArgumentParser.parse_args = real
        DEFAULTS = captured
    return DEFAULTS


def row(r):
    d = defaults()
    skip = {"name", "quick", "no_mia", "save", "data_dir", "chunk", "seed"}
    cfg = " ".join(f"{k}={v}" for k, v in r["args"].items() if k not in skip and d.get(k) != v)
    f = lambda k: f"{r[k]:.3f}" if k in r else "–"  # noqa: E731
    return f"| {r['name']} | {cfg} | {f('clean')} | {f('fgsm@0.0308')} | {f('fgsm@0.1')} | {f('pgd20@0.1')} | {f('mia_auc')} | {r['eps']:.2f} | {r['wall_s']} |"


if __name__ == "__main__":
    print("| run | config (differences from hx.py defaults) | clean | FGSM@.0308 | FGSM@.1 | PGD-20@.1 | MIA AUC | ε | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    with open(os.path.join(HERE, "results.jsonl")) as fh:
        for line in fh:
            print(row(json.loads(line)))
