"""SmallCNN's plain+FGSM and book-keeping DP+FGSM steps with the net in ``channels_last`` memory format, against as it is.

    python benchmarks/channels_last.py [--data-dir ../shared/data] [--steps 80] [--threads 2]

Four variants on the same 64 real training digits, each from the same initial weights, interleaved step by step
(the order rotating every round): ``plain`` and ``bk`` as the project trains (the step ``benchmarks/train_step.py``
times, :func:`secure_ml.privacy.steps.dp_step` for ``bk``), and the same two with ``net.to(memory_format=
torch.channels_last)`` and the batch in that format. Prints median ms per step, each cl variant's speed-up and the
bk/plain ratio (issue 10's target 1: ≤ 1.25) in both formats. Why it is not the default: the book-keeping clipper's
per-sample convolution gradients copy channels_last tensors back to NCHW, so bk gains less than plain and its
ratio to plain rises above 1.25 (README, Known limits).
"""

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from opacus.data_loader import DPDataLoader  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from secure_ml.adversarial import AdversarialConfig, mixed_loss  # noqa: E402
from secure_ml.attacks import fgsm  # noqa: E402
from secure_ml.data.mnist import load_mnist  # noqa: E402
from secure_ml.models import SmallCNN  # noqa: E402
from secure_ml.privacy.config import DPConfig  # noqa: E402
from secure_ml.privacy.engine import make_private  # noqa: E402
from secure_ml.privacy.steps import dp_step  # noqa: E402

EPSILON = 0.0308
warnings.filterwarnings("ignore", message="Secure RNG turned off")


def variant(xs, ys, channels_last: bool, dp: bool):
    """One step closure on its own SmallCNN (seed 0) and the first 64 digits."""
    torch.manual_seed(0)
    net = SmallCNN()
    x, y = xs[:64].clone(), ys[:64].clone()
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    adv = AdversarialConfig(epsilon=EPSILON, ratio=1.0)
    if dp:
        loader = DPDataLoader.from_data_loader(DataLoader(TensorDataset(xs, ys), batch_size=64))
        cfg = DPConfig(enabled=True, backend="bk", noise_multiplier=1.0, max_grad_norm=1.0)
        private = make_private(net, opt, loader, cfg, total_steps=1000, mode="bk")
        return lambda: dp_step(private, net, private.optimizer, x, y, adv)

    def plain():
        per_sample, _ = mixed_loss(net, x, y, fgsm(net, x, y, EPSILON), 1.0)
        per_sample.mean().backward()
        opt.step()
        opt.zero_grad()

    return plain


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--steps", type=int, default=80, help="timed rounds (one step of each variant per round)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    xs, ys = load_mnist(args.data_dir, train=True, download=False)[:2]
    steps = {name: variant(xs, ys, "cl" in name, name.startswith("bk")) for name in ("plain", "plain-cl", "bk", "bk-cl")}
    for step in steps.values():  # warm-up
        for _ in range(10):
            step()
    names, times = list(steps), {name: [] for name in steps}
    for r in range(args.steps):
        for name in names[r % 4 :] + names[: r % 4]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    for name in names:
        print(f"{name:9s} {ms[name]:7.2f} ms/step")
    print(f"channels_last speed-up: plain {ms['plain'] / ms['plain-cl']:.2f}x, bk {ms['bk'] / ms['bk-cl']:.2f}x")
    print(f"bk / plain: as it is {ms['bk'] / ms['plain']:.3f}, channels_last {ms['bk-cl'] / ms['plain-cl']:.3f} (target 1: <= 1.25)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
