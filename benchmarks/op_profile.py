"""Which kernels a plain+FGSM training step of SmallCNN spends its time in (CPU, torch.profiler).

    python benchmarks/op_profile.py [--steps 20] [--threads 2] [--batch-size 64]

The step is the capstone's without DP (FGSM input gradient at the clean digits, then a forward and backward at the
adversarial ones, SGD): the floor under every DP mode's step. Prints each ATen op's share of the self CPU time.
"""

import argparse
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from secure_ml.attacks.evasion import fgsm
from secure_ml.models import SmallCNN


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = SmallCNN()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(args.batch_size, 1, 28, 28, generator=gen), torch.randint(0, 10, (args.batch_size,), generator=gen)

    def step():
        x_adv = fgsm(net, x, y, 0.0308)
        opt.zero_grad()
        F.cross_entropy(net(x_adv), y).backward()
        opt.step()

    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    print(f"plain+FGSM step, batch {args.batch_size}, {args.threads} threads: {total / args.steps / 1e3:.1f} ms of ATen self time per step")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]:
        print(f"  {e.key:<40} {100 * e.self_cpu_time_total / total:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
