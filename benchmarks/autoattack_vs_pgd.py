"""AutoAttack next to PGD-20 on a checkpoint's test digits: robust accuracy, what each stage adds, wall time.

    python benchmarks/autoattack_vs_pgd.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt \\
        [--data-dir ../shared/data] [--samples 2000] [--offset 0] [--epsilon 0.1] [--variants standard untargeted]

The test digits are the capstone's (``MNISTDataModule`` defaults: 2,000 digits drawn with seed 42).
Wall and CPU seconds are printed (one thread: on an idle machine wall ≈ CPU). PGD-20 is the scorecard's PGD (random start, step 2.5·ε/20). Variants: ``standard`` is the
scorecard's AutoAttack (APGD-CE, APGD-T over 9 target classes, Square 5,000 queries; 100 APGD
iterations); ``untargeted`` swaps APGD-T for one untargeted APGD-DLR run; ``no-square`` drops Square.
A digit counts as robust only if every stage fails on it; ``remaining`` shows how many survive each.
``--offset`` starts at that test digit, so the 2,000 digits can be attacked in chunks (each digit is attacked on
its own, so chunk accuracies weighted by their sizes give the whole set's).
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from secure_ml.attacks import pgd  # noqa: E402
from secure_ml.attacks.autoattack import AutoAttackConfig, autoattack  # noqa: E402
from secure_ml.data import MNISTDataModule  # noqa: E402
from secure_ml.release.checkpoint import build_model, net_description, net_state, read_checkpoint  # noqa: E402

VARIANTS = {
    "standard": {},
    "untargeted": {"dlr": "untargeted"},
    "no-square": {"square_queries": 0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--offset", type=int, default=0, help="first test digit (chunks of the 2,000)")
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--variants", nargs="+", default=["standard"], choices=sorted(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = read_checkpoint(Path(args.ckpt))
    model = build_model(net_description(ckpt), net_state(ckpt, Path(args.ckpt)), f"--ckpt: '{args.ckpt}'").eval()
    dm = MNISTDataModule(data_dir=args.data_dir, download=False)
    dm.setup("predict")
    x, y = dm.test_dataset.tensors
    x, y = x[args.offset : args.offset + args.samples], y[args.offset : args.offset + args.samples]
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    print(
        f"{len(y)} test digits from #{args.offset}, ε = {args.epsilon:g}, {torch.get_num_threads()} thread(s); clean accuracy {clean:.4f}"
    )
    t, cpu = time.perf_counter(), time.process_time()
    x_pgd = torch.cat(
        [
            pgd(model, x[i : i + 500], y[i : i + 500], args.epsilon, 20, generator=torch.Generator().manual_seed(0))
            for i in range(0, len(y), 500)
        ]
    )
    with torch.no_grad():
        pgd_acc = (model(x_pgd).argmax(1) == y).float().mean().item()
    print(
        f"PGD-20                     accuracy {pgd_acc:.4f}   {time.perf_counter() - t:7.1f} s wall, {time.process_time() - cpu:7.1f} s CPU"
    )
    for name in args.variants:
        t, cpu = time.perf_counter(), time.process_time()
        result = autoattack(model, x, y, AutoAttackConfig(epsilon=args.epsilon, **VARIANTS[name]))
        print(
            f"AutoAttack ({name:<10})    accuracy {result.accuracy:.4f}   {time.perf_counter() - t:7.1f} s   remaining {result.remaining}"
        )


if __name__ == "__main__":
    main()
