"""Non-private (optionally adversarial) pretraining on procedural digits (synth.py): no MNIST pixel is trained on.

Reports accuracy on the 800 real validation digits (zero-shot transfer) and saves the weights for hx.py --init.
"""

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("HX_THREADS", "1")))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from hx import accuracy, attack, evaluate, load_data, shift_aug  # noqa: E402
from nets import build  # noqa: E402
from synth import VERSION, dataset  # noqa: E402


def synth_cached(n, seed, version=VERSION):
    path = os.path.join(HERE, f".cache_synth_v{version}_{n}_{seed}.pt")
    if os.path.exists(path):
        return torch.load(path)
    if version != VERSION:
        raise SystemExit(f"no cached digits of generator version {version}: only the current version ({VERSION}) can be drawn")
    t = time.time()
    out = dataset(n, seed)
    torch.save(out, path)
    print(f"generated {n} digits in {time.time() - t:.0f}s", flush=True)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--net", default="pap_tanh")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--adv_eps", type=float, default=0.0)
    p.add_argument("--adv_steps", type=int, default=5)
    p.add_argument("--attack", default="pgd")
    p.add_argument("--aug", default="shift")
    p.add_argument("--out", required=True)
    p.add_argument("--full_eval", action="store_true")
    p.add_argument(
        "--synth_version",
        type=int,
        default=VERSION,
        help="an older generator's cached digits (v1: the templates drawn before any digit was looked at)",
    )
    a = p.parse_args()
    xs, ys = synth_cached(a.n, a.seed, a.synth_version)
    _, _, xva, yva, xte, yte = load_data(os.path.join(HERE, "../../../shared/data"))
    g = torch.Generator().manual_seed(a.seed)
    torch.manual_seed(a.seed)
    net = build(a.net)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    steps = a.epochs * (len(ys) // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps)
    t0 = time.time()
    for ep in range(a.epochs):
        perm = torch.randperm(len(ys), generator=g)
        net.train()
        for i in range(0, len(ys) - a.batch + 1, a.batch):
            idx = perm[i : i + a.batch]
            x, y = xs[idx], ys[idx]
            if a.aug == "shift":
                x = shift_aug(x, g)
            if a.adv_eps > 0:
                e = a.adv_eps * min(1.0, (ep + 1) / max(1, a.epochs // 3))
                x = attack(net, x, y, a.attack, e, a.adv_steps, g)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        print(f"epoch {ep + 1} loss {loss.item():.3f} val(real) {accuracy(net, xva, yva):.4f} [{time.time() - t0:.0f}s]", flush=True)
    torch.save(net.state_dict(), a.out)
    if a.full_eval:
        print("test", evaluate(net, xte, yte), flush=True)


if __name__ == "__main__":
    main()
