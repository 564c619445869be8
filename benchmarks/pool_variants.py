"""Two rewrites of SmallCNN's ReLU + 2x2 max-pool that the profiler suggested, timed against the net as it is.

    python benchmarks/pool_variants.py [--data-dir ../shared/data] [--rounds 5] [--steps 60]

``torch.profiler`` puts ``max_pool2d_with_indices`` and ``threshold_backward`` at about 40 % of a plain+FGSM step
(``benchmarks/op_profile.py``), so two variants with the same numbers were tried, each with an SGD run from the same
initial weights on the same real digits, alternating with the current net round by round:

* ``pool-then-relu``: ``relu(pool(conv(x)))`` instead of ``pool(relu(conv(x)))`` (max commutes with ReLU, values and
  gradients alike: the ReLU runs on a quarter of the elements);
* ``maxima-pool``: the 2x2 pool as elementwise maxima of four strided views, with a backward that routes the gradient to
  the first maximum in row-major order, as ``max_pool2d`` does (no int64 indices).

Prints ms per step, the ratio to the current net and whether the weights after the run are bit-identical to its own.
Both were slower on this 2-core machine (2026-12-04), so neither is in ``secure_ml/models``.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from secure_ml.attacks.evasion import fgsm  # noqa: E402
from secure_ml.data.mnist import load_mnist  # noqa: E402
from secure_ml.models import SmallCNN  # noqa: E402


class PoolThenRelu(SmallCNN):
    def forward(self, x):
        x = (x - self.mean) / self.std
        x = torch.relu(self.pool(self.conv1(x)))
        x = torch.relu(self.pool(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class _MaximaPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        h, w = x.shape[-2:]
        x = x[..., : h - h % 2, : w - w % 2]
        a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
        top, bottom = torch.maximum(a, b), torch.maximum(c, d)
        ctx.save_for_backward(top >= bottom, a >= b, c >= d)  # ties go to the earlier position, as in max_pool2d
        ctx.shape = (h, w)
        return torch.maximum(top, bottom)

    @staticmethod
    def backward(ctx, g):
        in_top, first_a, first_c = ctx.saved_tensors
        out = g.new_zeros(g.shape[:-2] + ctx.shape)
        g_top = torch.where(in_top, g, 0.0)
        g_bottom = g - g_top
        out[..., 0::2, 0::2] = torch.where(first_a, g_top, 0.0)
        out[..., 0::2, 1::2] = torch.where(first_a, 0.0, g_top)
        out[..., 1::2, 0::2] = torch.where(first_c, g_bottom, 0.0)
        out[..., 1::2, 1::2] = torch.where(first_c, 0.0, g_bottom)
        return out


class _Pool(nn.Module):
    def forward(self, x):
        return _MaximaPool.apply(x)


class MaximaPool(SmallCNN):
    def __init__(self):
        super().__init__()
        self.pool = _Pool()


def run(cls, xs, ys, steps: int, batch: int = 64):
    torch.manual_seed(0)
    net = cls()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step(i):
        lo = (i * batch) % (len(ys) - batch)
        x, y = xs[lo : lo + batch], ys[lo : lo + batch]
        x_adv = fgsm(net, x, y, 0.0308)
        opt.zero_grad()
        F.cross_entropy(net(x_adv), y).backward()
        opt.step()

    for i in range(5):
        step(i)
    start = time.perf_counter()
    for i in range(5, 5 + steps):
        step(i)
    return (time.perf_counter() - start) / steps * 1e3, [p.detach().clone() for p in net.parameters()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args(argv)
    xs, ys = load_mnist(args.data_dir, True, False)
    variants = {"current": SmallCNN, "pool-then-relu": PoolThenRelu, "maxima-pool": MaximaPool}
    ratios = {name: [] for name in variants if name != "current"}
    for r in range(args.rounds):
        base_ms, base_w = run(SmallCNN, xs, ys, args.steps)
        line = [f"round {r + 1}: current {base_ms:.2f} ms"]
        for name, cls in list(variants.items())[1:]:
            ms, w = run(cls, xs, ys, args.steps)
            same = all(torch.equal(p, q) for p, q in zip(base_w, w))
            ratios[name].append(ms / base_ms)
            line.append(f"{name} {ms:.2f} ms ({ms / base_ms:.2f}x, weights {'identical' if same else 'DIFFER'})")
        print("; ".join(line), flush=True)
    for name, rs in ratios.items():
        print(f"{name}: median {statistics.median(rs):.2f}x the current net's step (range {min(rs):.2f}-{max(rs):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
