"""Gradient-masking checks for a saved net: PGD with more steps and restarts, PGD at growing ε (accuracy must
fall to ~0), input-gradient norms, and AutoAttack (torchattacks, standard: APGD-CE, APGD-T, FAB-T, Square) on a subset."""

import argparse
import json
import os
import sys
import time

import torch

torch.set_num_threads(int(os.environ.get("HX_THREADS", "1")))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from hx import accuracy, load_data  # noqa: E402
from nets import build  # noqa: E402


def pgd_restarts(net, x, y, eps, steps, restarts, seed=0):
    from secure_ml.attacks import pgd

    g = torch.Generator().manual_seed(seed)
    robust = torch.ones(len(y), dtype=torch.bool)
    for _ in range(restarts):
        xa = pgd(net, x, y, eps, steps, 2.5 * eps / steps, True, g)
        with torch.no_grad():
            robust &= net(xa).argmax(1) == y
    return robust.float().mean().item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--net", default="pap_tanh")
    p.add_argument("--weights", required=True)
    p.add_argument("--n", type=int, default=500, help="test digits for the expensive attacks")
    p.add_argument("--aa", action="store_true")
    a = p.parse_args()
    _, _, _, _, xte, yte = load_data("")
    net = build(a.net)
    net.load_state_dict(torch.load(os.path.join(HERE, a.weights)))
    net.eval()
    x, y = xte[: a.n], yte[: a.n]
    out = {"weights": a.weights, "n": a.n, "clean": accuracy(net, x, y)}
    xg = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(net(xg), y, reduction="sum")
    (gr,) = torch.autograd.grad(loss, xg)
    gn = gr.flatten(1).abs().sum(1)
    out["input_grad_l1_median"] = gn.median().item()
    out["input_grad_zero_share"] = (gn == 0).float().mean().item()
    t = time.time()
    out["pgd20@0.1"] = pgd_restarts(net, x, y, 0.1, 20, 1)
    out["pgd100x5@0.1"] = pgd_restarts(net, x, y, 0.1, 100, 5)
    for e in (0.2, 0.3, 0.5):
        out[f"pgd50@{e}"] = pgd_restarts(net, x, y, e, 50, 1)
    out["pgd_s"] = round(time.time() - t)
    print(json.dumps(out), flush=True)
    if a.aa:
        import torchattacks

        t = time.time()
        aa = torchattacks.AutoAttack(net, norm="Linf", eps=0.1, version="standard", n_classes=10, seed=0)
        xa = torch.cat([aa(x[i : i + 250], y[i : i + 250]) for i in range(0, len(y), 250)])
        out["autoattack@0.1"] = accuracy(net, xa, y)
        out["aa_s"] = round(time.time() - t)
        sq = torchattacks.Square(net, norm="Linf", eps=0.1, n_queries=5000, n_restarts=1, seed=0)
        xs = torch.cat([sq(x[i : i + 250], y[i : i + 250]) for i in range(0, len(y), 250)])
        out["square5000@0.1"] = accuracy(net, xs, y)
    print("CHECK", json.dumps(out), flush=True)
    with open(os.path.join(HERE, "checks.jsonl"), "a") as fh:
        fh.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
