"""Label-flip detection: confident_knn (ours) next to cleanlab's confident learning and the old baselines, same data, same seeds.

    python benchmarks/label_flip.py [--data-dir ../shared/data] [--scenarios capstone random20] [--cnn-epochs 3] [--no-cleanlab]

Data: the capstone draw of ``configs/capstone.yaml`` (8,000 training digits, seed 42; the first 800
are the clean validation split, the other 7,200 are poisoned). Scenarios (poison seed 0):

* ``capstone``: 10% of the 7,200 labels flipped to class 0 (targets: F1 >= 0.95);
* ``random20``: 20% flipped to random other classes (target: F1 >= 0.90);
* extras: ``random10``, ``random5``, ``target3`` (10% to class 3), ``target0_20`` (20% to class 0).

Methods on the same poisoned labels:

* ``confident_knn`` (ours, ``--data.sanitizer.method confident_knn``, defaults), with ``action: remove``
  and ``relabel`` (the relabel row also reports the share of flagged digits given back their true label
  and the wrong labels left in the training set); run twice, at 1 thread and at the default thread
  count, and the flags compared (``identical``);
* ``cleanlab``: ``cleanlab.filter.find_label_issues`` (defaults) on 3-fold cross-validated SmallCNN
  probabilities (stratified folds, seed 42; Adam lr 1e-3, batch 64, ``--cnn-epochs`` epochs, seeded);
* ``knn`` and ``isolation_forest``: the previous sanitizer and the seed's, at their defaults.

Wall and CPU seconds (this process) are single measurements on whatever machine runs this (the lead re-runs it on a quiet one).
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from secure_ml.data import MNISTDataModule, PoisonConfig, SanitizerConfig, detection_scores, sanitize  # noqa: E402

SCENARIOS = {
    "capstone": (0.1, 0),
    "random20": (0.2, None),
    "random10": (0.1, None),
    "random5": (0.05, None),
    "target3": (0.1, 3),
    "target0_20": (0.2, 0),
}


def capstone_training_part(data_dir: str, rate: float, target):
    """``(images, noisy labels, true labels, poisoned rows)`` of the capstone's 7,200 training digits."""
    cap = yaml.safe_load((REPO / "configs" / "capstone.yaml").read_text())["data"]
    sizes = {k: cap[k] for k in ("train_size", "val_size", "test_size", "seed")}
    clean = MNISTDataModule(data_dir=data_dir, download=False, **sizes)
    clean.setup("validate")  # not "fit": no split key is needed
    x, y_true = clean.train_dataset.tensors
    poisoned_dm = MNISTDataModule(data_dir=data_dir, download=False, poison=PoisonConfig(rate=rate, target_label=target), **sizes)
    poisoned_dm.setup("validate")
    x_p, y_noisy = poisoned_dm.train_dataset.tensors
    assert torch.equal(x, x_p)
    return x, y_noisy, y_true, poisoned_dm.poisoned_indices


def cnn_oof_probabilities(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 42) -> np.ndarray:
    """Out-of-fold softmax probabilities of SmallCNN, 3 stratified folds."""
    from sklearn.model_selection import StratifiedKFold

    from secure_ml.models import SmallCNN

    probs = np.zeros((len(y), 10))
    folds = StratifiedKFold(3, shuffle=True, random_state=seed).split(np.zeros(len(y)), y.numpy())
    for fold, (train, held) in enumerate(folds):
        torch.manual_seed(seed + fold)
        net = SmallCNN()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(seed + fold)
        train = torch.from_numpy(train)
        for _ in range(epochs):
            order = train[torch.randperm(len(train), generator=gen)]
            for i in range(0, len(order), 64):
                b = order[i : i + 64]
                loss = torch.nn.functional.cross_entropy(net(x[b]), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            held_t = torch.from_numpy(held)
            probs[held] = torch.cat([torch.softmax(net(x[held_t[i : i + 512]]), 1) for i in range(0, len(held), 512)]).numpy()
    return probs


class Clock:
    """Wall and CPU (this process) seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self):
        return f"{self.wall:.1f} | {self.cpu:.1f}"


def row(name, flagged, poisoned, clock, extra=""):
    p, r, f = detection_scores(torch.as_tensor(flagged), poisoned)
    return f"| {name} | {len(flagged)} | {p:.3f} | {r:.3f} | {f:.3f} | {clock} | {extra} |"


def cleanlab_on_our_posteriors(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Ablation: cleanlab's default pruning on the first-round k-NN posteriors of confident_knn (our features, cleanlab's rule)."""
    from cleanlab.filter import find_label_issues

    from secure_ml.data.digit_features import digit_features
    from secure_ml.data.label_noise import loo_neighbours, posteriors, single_threaded

    with single_threaded():
        neighbours, weights = loo_neighbours(digit_features(x), 10)
        probs = posteriors(y.numpy(), neighbours, weights, 10)
    return np.flatnonzero(find_label_issues(y.numpy(), probs))


def run_scenario(name: str, args) -> list:
    rate, target = SCENARIOS[name]
    x, y, y_true, poisoned = capstone_training_part(args.data_dir, rate, target)
    lines = []
    cfg = SanitizerConfig(method="confident_knn")
    threads = torch.get_num_threads()
    with Clock() as clock:
        _, _, _, ours = sanitize(x, y, cfg, poisoned)
    torch.set_num_threads(1)
    try:
        _, _, _, ours_1 = sanitize(x, y, cfg, poisoned)
    finally:
        torch.set_num_threads(threads)
    same = "identical at 1 and {} threads: {}".format(threads, "yes" if ours_1.flagged == ours.flagged else "NO")
    lines.append(row("confident_knn (ours), remove", ours.flagged, poisoned, clock, same))
    with Clock() as clock:
        _, y_rel, _, rel = sanitize(x, y, SanitizerConfig(method="confident_knn", action="relabel"), poisoned)
    flagged = torch.as_tensor(rel.flagged, dtype=torch.int64)
    restored = (y_rel[flagged] == y_true[flagged]).float().mean().item() if len(flagged) else 0.0
    wrong_left = int((y_rel != y_true).sum())
    lines.append(
        row(
            "confident_knn (ours), relabel",
            rel.flagged,
            poisoned,
            clock,
            f"true label restored {restored:.3f}; wrong labels left {wrong_left}",
        )
    )
    if not args.no_cleanlab:
        from cleanlab.filter import find_label_issues

        with Clock() as clock:
            probs = cnn_oof_probabilities(x, y, args.cnn_epochs)
            issues = np.flatnonzero(find_label_issues(y.numpy(), probs))
        acc = (probs.argmax(1) == y_true.numpy()).mean()
        lines.append(
            row(
                "cleanlab, 3-fold SmallCNN probabilities",
                issues.tolist(),
                poisoned,
                clock,
                f"{args.cnn_epochs} epochs; OOF acc vs true labels {acc:.3f}",
            )
        )
    with Clock() as clock:
        issues = cleanlab_on_our_posteriors(x, y)
    lines.append(row("cleanlab, our k-NN posteriors (ablation)", issues.tolist(), poisoned, clock, "our features, cleanlab's pruning"))
    for method in ("knn", "isolation_forest"):
        with Clock() as clock:
            _, _, _, rep = sanitize(x, y, SanitizerConfig(method=method), poisoned)
        lines.append(row(method, rep.flagged, poisoned, clock, "defaults"))
    return [
        f"\n### {name}: {len(poisoned)}/{len(y)} labels flipped to {'class ' + str(target) if target is not None else 'random other classes'}"
    ] + lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--scenarios", nargs="+", default=["capstone", "random20"], choices=sorted(SCENARIOS))
    parser.add_argument("--cnn-epochs", type=int, default=3)
    parser.add_argument("--no-cleanlab", action="store_true")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    header = ["| method | flagged | precision | recall | F1 | wall s | CPU s | notes |", "|---|---|---|---|---|---|---|---|"]
    for name in args.scenarios:
        lines = run_scenario(name, args)
        print("\n".join(lines[:1] + header + lines[1:]), flush=True)


if __name__ == "__main__":
    main()
