"""Exploration harness for the hardened recipe (issue 12): DP-SGD by per-sample gradients (torch.func),
Poisson sampling with q = 1/K, PRV accounting, adversarial training variants, evaluation on all 2,000 test digits.

Not part of the package: the record of the search. One config per process; results appended to results.jsonl.
"""

import argparse
import json
import math
import os
import secrets
import sys
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

torch.set_num_threads(int(os.environ.get("HX_THREADS", "1")))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from nets import build  # noqa: E402


def load_data(data_dir, sanitizer="knn"):
    cache = os.path.join(HERE, f".cache_{sanitizer}.pt")
    if os.path.exists(cache):
        return torch.load(cache)
    out = _load_data(data_dir, sanitizer)
    torch.save(out, cache)
    return out


def _load_data(data_dir, sanitizer):
    from secure_ml.data.datamodule import MNISTDataModule
    from secure_ml.data.poisoning import PoisonConfig
    from secure_ml.data.sanitization import SanitizerConfig

    dm = MNISTDataModule(data_dir=data_dir, download=False, poison=PoisonConfig(0.1, 0), sanitizer=SanitizerConfig(sanitizer, "remove"))
    dm.setup("fit")
    xtr, ytr = dm.train_dataset.tensors
    xva, yva = dm.val_dataset.tensors
    xte, yte = dm.test_dataset.tensors
    return xtr.clone(), ytr.clone(), xva.clone(), yva.clone(), xte.clone(), yte.clone()


def shift_aug(x, gen, max_shift=2):
    """Random integer translations by up to max_shift pixels (zero padding), one per image."""
    n = len(x)
    p = max_shift
    xp = F.pad(x, (p, p, p, p))
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    rows = dy[:, None] + torch.arange(28)[None, :]  # (n, 28)
    cols = dx[:, None] + torch.arange(28)[None, :]
    idx_r = rows[:, :, None].expand(n, 28, 28)
    idx_c = cols[:, None, :].expand(n, 28, 28)
    b = torch.arange(n)[:, None, None].expand(n, 28, 28)
    return xp[:, 0][b, idx_r, idx_c].unsqueeze(1)


def attack(net, x, y, kind, eps, steps, gen, loss="ce", x_nat_logits=None):
    """Adversarial examples for training (input gradient only)."""
    if eps <= 0 or kind == "none":
        return None
    x0 = x.detach()
    if kind == "fgsm":  # FGSM with random start (Wong et al. 2020), step 1.25 eps
        delta = (torch.rand(x0.shape, generator=gen) * 2 - 1) * eps
        xa = (x0 + delta).clamp(0, 1).requires_grad_(True)
        (g,) = torch.autograd.grad(_adv_loss(net, xa, y, loss, x_nat_logits), xa)
        xa = x0 + (xa.detach() - x0 + 1.25 * eps * g.sign()).clamp(-eps, eps)
        return xa.clamp(0, 1).detach()
    alpha = 2.5 * eps / steps
    if loss == "kl":
        xa = (x0 + 0.001 * torch.randn(x0.shape, generator=gen)).clamp(0, 1)
    else:
        xa = (x0 + (torch.rand(x0.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_adv_loss(net, xa, y, loss, x_nat_logits), xa)
        xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x0 - eps), x0 + eps).clamp(0, 1)
    return xa.detach()


def _adv_loss(net, xa, y, loss, nat_logits):
    out = net(xa)
    if loss == "kl":
        return F.kl_div(F.log_softmax(out, 1), F.softmax(nat_logits, 1), reduction="sum")
    return F.cross_entropy(out, y, reduction="sum")


def make_loss(net, mode, ratio, beta):
    """Per-sample loss of one person: xs is (K, 1, 28, 28) clean views, xa (K, ...) adversarial views or None."""

    def f(params, x, xa, y):
        yk = y.expand(len(x))
        if mode == "clean":
            return F.cross_entropy(functional_call(net, params, (x,)), yk)
        la = functional_call(net, params, (xa,))
        if mode == "adv":
            if ratio >= 1:
                return F.cross_entropy(la, yk)
            lc = functional_call(net, params, (x,))
            return (1 - ratio) * F.cross_entropy(lc, yk) + ratio * F.cross_entropy(la, yk)
        lc = functional_call(net, params, (x,))  # trades
        kl = F.kl_div(F.log_softmax(la, 1), F.softmax(lc, 1), reduction="batchmean")
        return F.cross_entropy(lc, yk) + beta * kl

    return f


def dp_gradient(f, params, x, xa, y, C, chunk):
    """Sum over the batch of per-person gradients clipped to C (flat clipping, Opacus's 1e-6), and the unclipped norms."""
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    norms = []
    has_adv = xa is not None
    for s in range(0, len(y), chunk):
        xs, ys = x[s : s + chunk], y[s : s + chunk]
        if has_adv:
            g = vmap(grad(f), in_dims=(None, 0, 0, 0))(params, xs, xa[s : s + chunk], ys)
        else:
            g = vmap(grad(lambda p, a, b: f(p, a, None, b)), in_dims=(None, 0, 0))(params, xs, ys)
        n = torch.sqrt(sum(v.flatten(1).pow(2).sum(1) for v in g.values()))
        c = (C / (n + 1e-6)).clamp(max=1.0)
        for k in total:
            total[k] += torch.einsum("i,i...->...", c, g[k])
        norms.append(n)
    return total, torch.cat(norms) if norms else torch.zeros(0)


@torch.no_grad()
def accuracy(net, x, y, bs=1000):
    return sum((net(x[i : i + bs]).argmax(1) == y[i : i + bs]).sum().item() for i in range(0, len(y), bs)) / len(y)


def evaluate(net, xte, yte, full=True, bs=500, pgd_eps=0.1, pgd_steps=20):
    from secure_ml.attacks import fgsm, pgd

    net.eval()
    out = {"clean": accuracy(net, xte, yte)}
    if not full:
        return out
    g = torch.Generator().manual_seed(0)
    for e in (0.0308, 0.1):
        xa = torch.cat([fgsm(net, xte[i : i + bs], yte[i : i + bs], e) for i in range(0, len(yte), bs)])
        out[f"fgsm@{e}"] = accuracy(net, xa, yte)
    xa = torch.cat([pgd(net, xte[i : i + bs], yte[i : i + bs], pgd_eps, pgd_steps, None, True, g) for i in range(0, len(yte), bs)])
    out[f"pgd{pgd_steps}@{pgd_eps}"] = accuracy(net, xa, yte)
    return out


def mia_auc(net, xtr, ytr, xte, yte):
    from secure_ml.attacks.membership import SCORE_KINDS, membership_metrics, model_scores

    with torch.no_grad():
        m = model_scores(net, xtr, ytr)
        n = model_scores(net, xte, yte)
    return max(membership_metrics(m[k], n[k]).auc for k in SCORE_KINDS)


def main(argv=None):
    p = argparse.ArgumentParser()
    a = p.add_argument
    a("--name", default="")
    a("--net", default="cnn_tanh")
    a("--epochs", type=float, default=20)
    a("--batch", type=int, default=256)
    a("--lr", type=float, default=0.05)
    a("--momentum", type=float, default=0.0)
    a("--sched", default="const", choices=["const", "cos", "lin"])
    a("--warmup", type=float, default=0.0, help="share of steps with linear warm-up")
    a("--C", type=float, default=1.0)
    a("--eps", type=float, default=1.5)
    a("--delta", type=float, default=1e-5)
    a("--ema", type=float, default=0.0, help="EMA decay per step (0 = off)")
    a("--aug", default="none", choices=["none", "shift"])
    a("--K", type=int, default=1, help="augmentation multiplicity")
    a("--mode", default="clean", choices=["clean", "adv", "trades"])
    a("--attack", default="fgsm", choices=["fgsm", "pgd"])
    a("--adv_eps", type=float, default=0.1)
    a("--adv_steps", type=int, default=5)
    a("--ratio", type=float, default=0.5)
    a("--beta", type=float, default=6.0)
    a("--ramp", type=float, default=0.0, help="share of steps over which the adversarial eps ramps up from 0")
    a("--adv_start", type=float, default=0.0, help="share of steps trained clean before adversarial training starts")
    a("--chunk", type=int, default=256)
    a("--sanitizer", default="knn")
    a("--seed", type=int, default=None)
    a("--quick", action="store_true", help="clean + FGSM only on test, no PGD")
    a("--no_mia", action="store_true")
    a("--save", default="")
    a("--init", default="", help="state dict to start from (e.g. pretrain.py on procedural digits)")
    a("--data_dir", default=os.path.join(HERE, "../../../shared/data"))
    args = p.parse_args(argv)
    t0 = time.time()
    xtr, ytr, xva, yva, xte, yte = load_data(args.data_dir, args.sanitizer)
    n = len(ytr)
    K_steps = math.ceil(n / args.batch)
    q = 1.0 / K_steps
    T = round(args.epochs * K_steps)
    from opacus.accountants import PRVAccountant
    from opacus.accountants.utils import get_noise_multiplier

    if args.eps > 0:
        sigma = get_noise_multiplier(
            target_epsilon=args.eps, target_delta=args.delta, sample_rate=q, steps=T, accountant="prv", epsilon_tolerance=0.005
        )
        acc = PRVAccountant()
        acc.history = [(sigma, q, T)]
        eps_spent = acc.get_epsilon(delta=args.delta)
    else:
        sigma, eps_spent = 0.0, float("inf")
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = build(args.net)
    if args.init:
        net.load_state_dict(torch.load(os.path.join(HERE, args.init) if not os.path.isabs(args.init) else args.init))
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    ema = {k: v.clone() for k, v in params.items()} if args.ema > 0 else None
    mom = {k: torch.zeros_like(v) for k, v in params.items()}
    f = make_loss(net, args.mode, args.ratio, args.beta)
    exp_b = q * n
    print(
        f"n={n} B={args.batch} q={q:.4f} T={T} sigma={sigma:.3f} eps={eps_spent:.3f} params={sum(v.numel() for v in params.values())}",
        flush=True,
    )
    norms_log = []
    for t in range(T):
        frac = t / max(T, 1)
        if args.sched == "cos":
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * frac))
        elif args.sched == "lin":
            lr = args.lr * (1 - frac)
        else:
            lr = args.lr
        if args.warmup > 0 and frac < args.warmup:
            lr *= (frac + 1 / T) / args.warmup
        mask = torch.rand(n, generator=gen) < q
        idx = mask.nonzero().squeeze(1)
        x, y = xtr[idx], ytr[idx]
        if args.aug == "shift":
            xk = torch.stack([shift_aug(x, gen) for _ in range(args.K)], 1)  # (B, K, 1, 28, 28)
        else:
            xk = x.unsqueeze(1).expand(-1, args.K, -1, -1, -1)
        xa = None
        if args.mode != "clean" and len(y) > 0 and frac >= args.adv_start:
            e = args.adv_eps * min(1.0, (frac - args.adv_start) / args.ramp) if args.ramp > 0 else args.adv_eps
            with torch.no_grad():
                for k, v in net.named_parameters():
                    v.copy_(params[k])
            flat = xk.reshape(-1, 1, 28, 28)
            yk = y.repeat_interleave(args.K)
            if args.mode == "trades":
                with torch.no_grad():
                    nat = net(flat)
                xa = attack(net, flat, yk, args.attack, e, args.adv_steps, gen, "kl", nat)
            else:
                xa = attack(net, flat, yk, args.attack, e, args.adv_steps, gen)
            if xa is not None:
                xa = xa.reshape(xk.shape)
        mode_now = args.mode if xa is not None else "clean"
        fn = f if mode_now == args.mode else make_loss(net, "clean", 0, 0)
        if len(y) > 0:
            gsum, norms = dp_gradient(fn, params, xk, xa, y, args.C, args.chunk)
            norms_log.append(norms.median().item())
        else:
            gsum = {k: torch.zeros_like(v) for k, v in params.items()}
        for k in params:
            g = (gsum[k] + sigma * args.C * torch.randn(params[k].shape, generator=gen)) / exp_b
            mom[k] = args.momentum * mom[k] + g
            params[k] = params[k] - lr * mom[k]
        if ema is not None:
            d = min(args.ema, (1 + t) / (10 + t))
            for k in params:
                ema[k] = d * ema[k] + (1 - d) * params[k]
        if (t + 1) % max(1, T // 10) == 0 or t == T - 1:
            with torch.no_grad():
                for k, v in net.named_parameters():
                    v.copy_(params[k])
            msg = f"step {t + 1}/{T} lr={lr:.4f} med|g|={norms_log[-1] if norms_log else 0:.3f} val={accuracy(net, xva, yva):.4f}"
            if ema is not None:
                for k, v in net.named_parameters():
                    with torch.no_grad():
                        v.copy_(ema[k])
                msg += f" ema_val={accuracy(net, xva, yva):.4f}"
            print(msg, f"[{time.time() - t0:.0f}s]", flush=True)
    train_s = time.time() - t0
    res = {"name": args.name, "args": vars(args), "n": n, "sigma": sigma, "eps": eps_spent, "T": T, "train_s": round(train_s)}
    with torch.no_grad():
        for k, v in net.named_parameters():
            v.copy_(params[k])
    res["raw_clean"] = accuracy(net, xte, yte)
    if ema is not None:
        with torch.no_grad():
            for k, v in net.named_parameters():
                v.copy_(ema[k])
    res.update(evaluate(net, xte, yte, full=True) if not args.quick else evaluate_quick(net, xte, yte))
    if not args.no_mia:
        res["mia_auc"] = mia_auc(net, xtr, ytr, xte, yte)
    res["wall_s"] = round(time.time() - t0)
    if args.save:
        torch.save(net.state_dict(), os.path.join(HERE, args.save) if not os.path.isabs(args.save) else args.save)
    print("RESULT", json.dumps({k: v for k, v in res.items() if k != "args"}), flush=True)
    with open(os.path.join(HERE, "results.jsonl"), "a") as fh:
        fh.write(json.dumps(res) + "\n")
    return res


def evaluate_quick(net, xte, yte, bs=500):
    from secure_ml.attacks import fgsm

    net.eval()
    out = {"clean": accuracy(net, xte, yte)}
    xa = torch.cat([fgsm(net, xte[i : i + bs], yte[i : i + bs], 0.1) for i in range(0, len(yte), bs)])
    out["fgsm@0.1"] = accuracy(net, xa, yte)
    return out


if __name__ == "__main__":
    main()
