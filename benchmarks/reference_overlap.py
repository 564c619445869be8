"""Why RMIA's reference model is not trained beside the fit: two two-thread torch processes on two cores.

    python benchmarks/reference_overlap.py --data-dir ../shared/data [--rounds 1] [--delay 4]

Alternates the capstone's ``secure-ml fit --test_after_fit true`` alone with the same command while a second process
trains one reference model with the capstone's recipe (``train_reference_models``: SmallCNN, SGD 0.01/0.9, FGSM at
0.0308, DP σ 1 and C 1, 306 steps of batch 64 on 1,000 test digits, torch's default two threads), started ``--delay``
seconds after the fit (about when its training begins). Prints each arm's wall time and the reference model's own time.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE = """
import sys, time, torch
from secure_ml.adversarial import AdversarialConfig
from secure_ml.attacks.reference_models import ReferenceRecipe, train_reference_models
from secure_ml.data.mnist import load_mnist
from secure_ml.models import SmallCNN
x, y = load_mnist(sys.argv[1], False, False)
recipe = ReferenceRecipe(SmallCNN, lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), 306, 64,
                         AdversarialConfig(epsilon=0.0308, ratio=1.0, attack="fgsm"), 1.0, 1.0)
t = time.perf_counter()
train_reference_models(recipe, x[:1000], y[:1000], 1, 0)
print(f"{time.perf_counter() - t:.1f}")
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--delay", type=float, default=4.0)
    args = ap.parse_args(argv)
    data = str(Path(args.data_dir).resolve())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    fit = [sys.executable, "-m", "secure_ml", "fit", "--config", str(REPO / "configs" / "capstone.yaml")]
    fit += ["--data.data_dir", data, "--data.download", "false", "--test_after_fit", "true"]
    for r in range(args.rounds):
        for beside in (False, True) if r % 2 == 0 else (True, False):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                proc = subprocess.Popen(fit, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                ref = None
                if beside:
                    time.sleep(args.delay)
                    ref = subprocess.run([sys.executable, "-c", REFERENCE, data], env=env, capture_output=True, text=True, check=True)
                proc.wait()
                wall = time.perf_counter() - t0
            own = f", the reference model's training {ref.stdout.strip()} s" if ref else ""
            print(f"round {r + 1}: fit --test_after_fit {'beside a reference model' if beside else 'alone'}: {wall:.1f} s{own}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
