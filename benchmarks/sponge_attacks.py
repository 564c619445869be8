"""Sponge defence on a capstone-like model: reject rates per attacker, false positives, and the adaptive attacker.

    python benchmarks/sponge_attacks.py [--ckpt CKPT] [--data-dir ../shared/data] [--per-cell 200] [--steps 10,20,100] [--reconstruction]

Without ``--ckpt`` it first trains the capstone (``secure-ml fit --config configs/capstone.yaml``, scorecard
callbacks off). Non-member data: the datamodule's validation digits (the run's own split — ``data.train_size``, ``val_size``,
``test_size``, ``seed`` — from the ``config.yaml`` beside its ``checkpoints/`` folder, else the defaults; ``--val-size`` overrides) calibrate the policy exactly as
the SpongeCallback does for the checkpoint (``InputPolicy.calibrate``: α = 0.5% split over the checks that apply to the
net's activations, headroom 0.1);
false positives are measured on the 2,000 test digits (95% Clopper–Pearson interval), plus a resampling
check (R random splits of the validation + test non-members into the same sizes: the spread a different validation
draw gives).

Attackers (targets: ≥ 99% rejected, ≤ 0.5% false positives, adaptive worst accepted energy ≤ 1.2x clean q99.5):
* crafted: signed-gradient or Adam ascent (lr 0.01) on the L2 or L0 objective, from uniform noise or from
  test digits, for each ``--steps`` budget; the seed's Gaussian sponges;
* adaptive (:func:`secure_ml.attacks.sponge_adaptive.adaptive_sponges`): knows every limit and keeps its
  costliest accepted iterate; its worst accepted L2 energy and density over the clean (test) 99.5th percentile.
Peers in the same run, on the same sponges: the pixel checks alone (range, variance: the seed's kind of
check) and a one-dimensional policy (the calibrated L2 limit alone). With ``--reconstruction`` our policy
also has the autoencoder check (``--sponge.reconstruction true``: trained on procedural digits, cached under
``--reconstruction-cache``), and the policy without it runs alongside as the peer "no AE".
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402
from scipy.stats import beta  # noqa: E402

from secure_ml.attacks.sponge import activation_energy, craft_sponges, gaussian_sponges  # noqa: E402
from secure_ml.attacks.sponge_adaptive import adaptive_sponges  # noqa: E402
from secure_ml.data import MNISTDataModule  # noqa: E402
from secure_ml.defenses import InputPolicy  # noqa: E402
from secure_ml.defenses.calibration import POLICY_CHECKS, violated  # noqa: E402
from secure_ml.defenses.reconstruction import ReconstructionConfig, encode, load_or_train  # noqa: E402
from secure_ml.models import SmallCNN  # noqa: E402
from secure_ml.models.registry import build_net  # noqa: E402


def clopper_pearson(k: int, n: int, level: float = 0.95):
    a = (1 - level) / 2
    return (beta.ppf(a, k, n - k + 1) if k > 0 else 0.0), (beta.ppf(1 - a, k + 1, n - k) if k < n else 1.0)


def train_capstone(data_dir: str, root: Path):
    from secure_ml.cli import cli_main

    args = ["fit", "--config", str(REPO / "configs/capstone.yaml"), "--data.data_dir", data_dir, "--data.download", "false"]
    args += ["--robustness.enabled", "false", "--membership.enabled", "false", "--sponge.enabled", "false"]
    args += ["--trainer.default_root_dir", str(root), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    cli = cli_main(args)
    return cli.model.net.eval()


def load_net(path: str):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    spec = (ckpt.get("hyper_parameters") or {}).get("net")
    net = build_net(spec) if isinstance(spec, dict) and spec.get("init_args") is not None else SmallCNN()
    net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    return net.eval()


SPLIT_KEYS = ("train_size", "val_size", "test_size", "seed")  # what decides which digits are members, validation, test


def run_split(ckpt, val_size=None) -> dict:
    """The data split of the run that wrote ``ckpt``: ``SPLIT_KEYS`` from its ``config.yaml`` next to ``checkpoints/``
    (the datamodule's defaults when there is none, said on stdout); ``val_size`` overrides."""
    config = Path(ckpt).resolve().parents[1] / "config.yaml" if ckpt else None
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {} if config is not None and config.is_file() else None
    split = {k: data[k] for k in SPLIT_KEYS if k in data} if data is not None else {}
    if val_size is not None:
        split["val_size"] = val_size
    print(
        f"data split: {split or 'the datamodule defaults'} ({'from ' + str(config) if data is not None else 'no config.yaml beside the checkpoint'})"
    )
    return split


def rejected(policy: InputPolicy, net, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor([not d.allowed for d in policy.check_batch(x, net)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", help="a `secure-ml fit` checkpoint (default: train the capstone first)")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--per-cell", type=int, default=200, help="crafted sponges per attacker x start x objective x steps")
    ap.add_argument("--steps", default="10,20,100", help="ascent budgets of the crafted sponges")
    ap.add_argument("--adaptive", type=int, default=48, help="adaptive sponges per objective x start")
    ap.add_argument("--adaptive-steps", type=int, default=300)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-size", type=int, help="validation digits of the split (default: the run's config.yaml, else 800)")
    ap.add_argument("--reconstruction", action="store_true", help="add the autoencoder check to our policy (peer: without it)")
    ap.add_argument("--reconstruction-cache", default="~/.cache/secure-ml/reconstruction")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    net = load_net(a.ckpt) if a.ckpt else train_capstone(a.data_dir, Path("/tmp/secure_ml_sponge_bench"))
    dm = MNISTDataModule(data_dir=a.data_dir, download=False, **run_split(a.ckpt, a.val_size))
    dm.setup("fit")
    xv, xt, yt = dm.val_dataset.tensors[0], dm.test_dataset.tensors[0], dm.test_dataset.tensors[1]
    with torch.no_grad():
        acc = (net(xt).argmax(1) == yt).float().mean().item()
    extra = {}
    if a.reconstruction:
        extra["reconstruction_net"] = encode(load_or_train(ReconstructionConfig(), a.reconstruction_cache, print))
    ours = InputPolicy.calibrate(net, xv, **extra)
    peers = {"ours": ours, "pixel only": InputPolicy(), "L2 only": InputPolicy(max_energy=ours.max_energy)}
    if a.reconstruction:
        peers["no AE"] = InputPolicy.calibrate(net, xv)
    clean = activation_energy(net, xt)
    q_e, q_d = float(torch.quantile(clean["l2_energy"], 0.995)), float(torch.quantile(clean["density"], 0.995))
    print(f"model: {type(net).__name__}, test accuracy {acc:.3f}; policy calibrated on {len(xv)} validation digits (non-members)")
    bounded = [check for check in POLICY_CHECKS if getattr(ours, f"max_{check}") is not None]
    print(
        f"  limits/clean q99.5: energy {ours.max_energy / q_e:.3f}, density {(ours.max_density or 1.0) / q_d:.3f}; "
        f"checks: {', '.join(bounded)}; hidden layers {len(clean['layers'])}"
    )

    print(f"\nfalse positives on {len(xt)} test digits (non-members), 95% Clopper-Pearson:")
    for name, p in peers.items():
        k = int(rejected(p, net, xt).sum())
        lo, hi = clopper_pearson(k, len(xt))
        print(f"  {name:<11} {k:>3}/{len(xt)} = {k / len(xt):.4f}  [{lo:.4f}, {hi:.4f}]")
    pool = torch.cat([xv, xt])
    scores, gen = ours.scores(net, pool), torch.Generator().manual_seed(a.seed)
    static = rejected(InputPolicy(), net, pool)
    fps = []
    for _ in range(a.resamples):
        perm = torch.randperm(len(pool), generator=gen)
        cal, mea = perm[: len(xv)], perm[len(xv) :]
        p = InputPolicy.from_scores({k: v[cal] for k, v in scores.items()}, **extra)
        lim = {check: getattr(p, f"max_{check}") for check in POLICY_CHECKS}
        flags = torch.stack(list(violated({k: v[mea] for k, v in scores.items()}, lim).values())).any(0) | static[mea]
        fps.append(flags.double().mean())
    fps = torch.stack(fps)
    print(
        f"  resampled ({a.resamples} random {len(xv)}/{len(pool) - len(xv)} splits of {len(pool)} non-members): "
        f"mean {fps.mean():.4f}, 90th pct {torch.quantile(fps, 0.9):.4f}, share > 0.005: {(fps > 0.005).double().mean():.2f}"
    )

    if a.reconstruction:  # what the check costs a request: the service checks one image per request
        times = {"ours": [], "no AE": []}
        for i in range(200):
            for name in ("ours", "no AE") if i % 2 == 0 else ("no AE", "ours"):
                t = time.perf_counter()
                peers[name].check(xt[i].double(), net)  # float64: what the service parses a request into
                times[name].append(time.perf_counter() - t)
        med = {k: float(torch.tensor(v).median()) * 1e3 for k, v in times.items()}
        print(
            f"  one image's policy check (float64 as the service parses it; median of 200, alternating): ours {med['ours']:.2f} ms, no AE {med['no AE']:.2f} ms"
        )
    print(f"\ncrafted sponges rejected ({a.per_cell} per cell; lr 0.01; energy/density: median over clean q99.5):")
    print("  (effective: the crafted inputs that cost more than clean, L2 energy or density above the clean q99.5; worst accepted: energy)")
    no_ae = f" {'no AE':>6}" if a.reconstruction else ""
    head = f"  {'steps':>5} {'attack':<6} {'obj':<3} {'start':<6} {'ours':>6} {'[95% lo]':>8}{no_ae} {'L2 only':>8} {'pixel':>6} {'energy':>7} {'density':>7}"
    print(head + f" {'effective':>10} {'ours on eff.':>12} {'worst accepted':>15}")
    g = torch.Generator().manual_seed(a.seed + 1)
    digits = xt[torch.randperm(len(xt), generator=g)[: a.per_cell]]
    totals, totals_no_ae = {}, {}
    for steps in [int(s) for s in a.steps.split(",")]:
        for optimizer in ("sign", "adam"):
            for objective in ("l2", "l0"):
                for start in ("noise", "digits"):
                    x0 = torch.rand(a.per_cell, 1, 28, 28, generator=g) if start == "noise" else digits
                    s = craft_sponges(net, x0, steps=steps, lr=0.01, objective=objective, optimizer=optimizer)
                    r = {name: rejected(p, net, s) for name, p in peers.items()}
                    e = activation_energy(net, s)
                    n_rej = int(r["ours"].sum())
                    totals.setdefault(steps, [0, 0])
                    totals[steps][0] += n_rej
                    totals[steps][1] += len(s)
                    acc_e = e["l2_energy"][~r["ours"]]
                    worst = f"{float(acc_e.max()) / q_e:.3f}" if len(acc_e) else "-"
                    eff = (e["l2_energy"] > q_e) | (e["density"] > q_d)
                    on_eff = f"{float(r['ours'][eff].double().mean()):.3f}" if eff.any() else "-"
                    no_ae_cell = f" {float(r['no AE'].double().mean()):>6.3f}" if a.reconstruction else ""
                    if a.reconstruction:
                        totals_no_ae[steps] = totals_no_ae.get(steps, 0) + int(r["no AE"].sum())
                    print(
                        f"  {steps:>5} {optimizer:<6} {objective:<3} {start:<6} {n_rej / len(s):>6.3f} {clopper_pearson(n_rej, len(s))[0]:>8.3f}"
                        f"{no_ae_cell} {float(r['L2 only'].double().mean()):>8.3f} {float(r['pixel only'].double().mean()):>6.3f} "
                        f"{float(e['l2_energy'].median()) / q_e:>7.2f} {float(e['density'].median()) / q_d:>7.3f} "
                        f"{int(eff.sum()):>10} {on_eff:>12} {worst:>15}"
                    )
    for steps, (k, n) in totals.items():
        without = f"; without the autoencoder {totals_no_ae[steps] / n:.4f}" if a.reconstruction else ""
        print(
            f"  all {steps:>3}-step sponges: ours rejects {k}/{n} = {k / n:.4f} (95% lower bound {clopper_pearson(k, n)[0]:.4f}){without}"
        )
    gs = gaussian_sponges(a.per_cell // 4, [0.5, 1.0, 2.0, 5.0], torch.Generator().manual_seed(a.seed + 2))
    print(
        "  Gaussian sponges (seed notebook): "
        + ", ".join(f"{n} {float(rejected(p, net, gs).double().mean()):.3f}" for n, p in peers.items())
    )

    print(
        f"\nadaptive attacker ({a.adaptive} per objective x start, {a.adaptive_steps} steps, lr 0.02): worst ACCEPTED input / clean q99.5"
    )
    for name, p in peers.items():
        worst_e = worst_d = 0.0
        cells = []
        for objective in ("l2", "l0"):
            for start in ("noise", "digits"):
                x0 = torch.rand(a.adaptive, 1, 28, 28, generator=g) if start == "noise" else digits[: a.adaptive]
                s, _ = adaptive_sponges(net, p, x0, objective=objective, steps=a.adaptive_steps, lr=0.02)
                ok = ~rejected(p, net, s)  # judged by the policy itself
                if ok.any():
                    e = activation_energy(net, s[ok])
                    we, wd = float(e["l2_energy"].max()) / q_e, float(e["density"].max()) / q_d
                    worst_e, worst_d = max(worst_e, we), max(worst_d, wd)
                    cells.append(f"{objective}/{start}: {we:.3f}/{wd:.3f} ({int(ok.sum())} accepted)")
                else:
                    cells.append(f"{objective}/{start}: none accepted")
        print(f"  {name:<11} energy {worst_e:.3f}, density {worst_d:.3f}   [{'; '.join(cells)}]")
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
