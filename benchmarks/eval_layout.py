"""The scorecard's attacks and RMIA's reference model with channels-last weights (as secure-ml runs them) against the default format.

    python benchmarks/eval_layout.py [--data-dir ../shared/data] [--rounds 3] [--threads 2]

Two measures, each alternating the arms round by round (the order swapping every round) in one process, on real digits:

1. the robustness and sponge callbacks' ``evaluate`` at ``configs/capstone.yaml``'s sizes on 800 validation digits
   (SmallCNN at seed 0; no validation record, so the sponge check also scores its calibration digits itself);
2. RMIA's reference model as ``secure-ml test`` trains it for the capstone (SmallCNN, SGD 0.01/0.9, FGSM ε 0.0308,
   book-keeping DP σ 1 and C 1, batch 64, 303 steps on 1,000 digits: ``train_reference_models``).

The ``default`` arm switches :func:`secure_ml.models.layout.channels_last` off where those two call it. Prints the
median seconds of each arm and the speed-up, and the largest difference between the two arms' results (float rounding).
"""

import argparse
import contextlib
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

import secure_ml.attacks.reference_models as reference_models  # noqa: E402
import secure_ml.callbacks._common as common  # noqa: E402
from secure_ml.adversarial import AdversarialConfig  # noqa: E402
from secure_ml.callbacks import RobustnessCallback, SpongeCallback  # noqa: E402
from secure_ml.data.mnist import load_mnist  # noqa: E402
from secure_ml.models import SmallCNN  # noqa: E402

warnings.filterwarnings("ignore", message="Secure RNG turned off")
CAPSTONE = yaml.safe_load((REPO / "configs" / "capstone.yaml").read_text())
ON = {"callbacks": common.channels_last, "reference": reference_models.channels_last}


def arm(channels_last: bool) -> None:
    """Point the two call sites at the real context manager, or at one that does nothing."""
    for module, key in ((common, "callbacks"), (reference_models, "reference")):
        module.channels_last = ON[key] if channels_last else (lambda net, enabled=True: contextlib.nullcontext())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")
    torch.set_num_threads(a.threads)
    x, y = load_mnist(a.data_dir, train=True, download=False)[:2]
    torch.manual_seed(0)
    net = SmallCNN()
    dm = types.SimpleNamespace(train_dataset=TensorDataset(x[:7200], y[:7200]), val_dataset=TensorDataset(x[7200:8000], y[7200:8000]))
    trainer = types.SimpleNamespace(datamodule=dm, testing=False, sanity_checking=False)
    pl = types.SimpleNamespace(net=net, trainer=trainer, device=torch.device("cpu"), private=None)
    callbacks = {"robustness": RobustnessCallback(**CAPSTONE["robustness"]), "sponge": SpongeCallback(**CAPSTONE["sponge"])}
    recipe = reference_models.ReferenceRecipe(
        SmallCNN, lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), 303, 64, AdversarialConfig(epsilon=0.0308), 1.0, 1.0
    )
    times = {}
    results = {True: {}, False: {}}
    for cb in callbacks.values():  # warm-up, both arms
        for on in (True, False):
            arm(on)
            cb.evaluate(pl, "val")
    for r in range(a.rounds):
        for on in (True, False) if r % 2 == 0 else (False, True):
            arm(on)
            for key, cb in callbacks.items():
                start = time.perf_counter()
                results[on][key] = cb.evaluate(pl, "val")
                times.setdefault((key, on), []).append(time.perf_counter() - start)
            start = time.perf_counter()
            ref = reference_models.train_reference_models(recipe, x[:1000], y[:1000], 1, 0)[0]
            times.setdefault(("reference model", on), []).append(time.perf_counter() - start)
            results[on]["reference model"] = torch.cat([p.detach().flatten() for p in ref.parameters()])
    arm(True)
    print(f"threads={a.threads} rounds={a.rounds}")
    print(f"{'':18s} {'default s':>10s} {'channels-last s':>16s} {'speed-up':>9s}")
    for key in (*callbacks, "reference model"):
        slow, fast = statistics.median(times[(key, False)]), statistics.median(times[(key, True)])
        print(f"{key:18s} {slow:10.3f} {fast:16.3f} {slow / fast:8.2f}x")
    for key in callbacks:
        differ = {k: (results[False][key][k], v) for k, v in results[True][key].items() if v != results[False][key][k]}
        print(f"{key}: metrics that differ between the arms: {differ or 'none'}")
    diff = float((results[True]["reference model"] - results[False]["reference model"]).abs().max())
    print(f"reference model: largest weight difference between the arms {diff:.2e} (float rounding)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
