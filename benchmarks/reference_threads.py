"""What RMIA's reference model costs on one thread and on two: would training it beside the fit pay?

    python benchmarks/reference_threads.py [--data-dir ../shared/data] [--rounds 2]

Trains the capstone's reference model (SmallCNN, SGD 0.01/0.9, FGSM ε 0.0308 on every example, DP σ 1 and C 1, batch
64, 303 steps on 1,000 population digits: ``secure_ml.attacks.reference_models``) in a fresh process per run, on 2 and
on 1 intra-op threads, alternating. Training it in a one-thread process beside the fit only pays if one thread costs
well under twice what two threads cost: on 2 cores the fit then runs beside it and is slowed by as much.
"""

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from secure_ml.adversarial import AdversarialConfig
from secure_ml.attacks.reference_models import ReferenceRecipe, train_reference_models
from secure_ml.data.mnist import load_mnist
from secure_ml.models import SmallCNN
x, y = load_mnist(sys.argv[2], False, False)
recipe = ReferenceRecipe(SmallCNN, lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), 303, 64, AdversarialConfig(epsilon=0.0308), 1.0, 1.0)
start = time.perf_counter()
train_reference_models(recipe, x[:1000], y[:1000], 1, 0)
print(time.perf_counter() - start)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = {2: [], 1: []}
    for r in range(args.rounds):
        for threads in (2, 1) if r % 2 == 0 else (1, 2):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(threads), args.data_dir], env=env, capture_output=True, text=True, check=True
            )
            times[threads].append(float(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}: {threads} thread(s) {times[threads][-1]:.2f} s", flush=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"median: 2 threads {two:.2f} s, 1 thread {one:.2f} s = {one / two:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
