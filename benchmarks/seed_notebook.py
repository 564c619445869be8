"""The seed lab notebook's capstone (lab 9) as a script: its training and evaluation, for the end-to-end benchmark.

This is the notebook's algorithm with its numbers (8,000 train / 2,000 test digits, 10% of labels flipped
to class 0, the pixel IsolationForest, FGSM adversarial examples, a per-sample Python-loop "DP-SGD" with
per-tensor clipping, batch 64, 3 epochs, SGD 0.01/0.9; then clean accuracy, FGSM accuracy, the
confidence membership AUC and one Gaussian sponge) with ONE change so that it runs at all: the notebook's
``fgsm_attack`` returns a tensor still attached to the graph and its training loop crashes on the next
backward; here the adversarial batch is detached. Its other known bugs (per-tensor clipping, shuffled
batches, no ε, FGSM clamped to [-3, 3], a rate limiter that never refills) are kept: this script measures
what the seed *costs*, not what it protects.

    python benchmarks/seed_notebook.py --data-dir ../shared/data
"""

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import torchvision.transforms as transforms
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import MNIST


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = self.pool(x)
        x = torch.relu(self.conv2(x))
        x = self.pool(x)
        x = x.view(x.size(0), -1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)


@dataclass
class DefenseConfig:
    epsilon_adv: float = 0.1
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0


def evaluate(model, loader, device):
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for data, target in loader:
            data, target = data.to(device), target.to(device)
            correct += (model(data).argmax(dim=1) == target).sum().item()
            total += target.size(0)
    return 100.0 * correct / total


def poison_labels(dataset, poison_rate=0.1, target_label=0):
    indices = np.random.choice(len(dataset), int(poison_rate * len(dataset)), replace=False)
    poisoned = []
    for i in range(len(dataset)):
        x, y = dataset[i]
        poisoned.append((x, target_label) if i in indices else (x, y))
    return poisoned, indices


def fgsm_attack(model, data, target, epsilon=0.1):
    data.requires_grad = True
    output = model(data)
    loss = nn.CrossEntropyLoss()(output, target)
    model.zero_grad()
    loss.backward()
    perturbed = data + epsilon * data.grad.data.sign()
    return torch.clamp(perturbed, -3, 3).detach()  # .detach(): the one fix (the notebook crashes without it)


def dp_sgd_step(model, data, target, config, device):
    model.train()
    criterion = nn.CrossEntropyLoss(reduction="none")
    per_sample_grads = []
    for i in range(data.size(0)):
        model.zero_grad()
        loss = criterion(model(data[i : i + 1]), target[i : i + 1]).mean()
        loss.backward()
        per_sample_grads.append([p.grad.detach().clone() for p in model.parameters()])
    agg_grads = []
    for param_i in range(len(per_sample_grads[0])):
        stacked = torch.stack([g[param_i] for g in per_sample_grads], dim=0)
        norms = torch.norm(stacked.view(stacked.size(0), -1), dim=1)
        factors = torch.clamp(config.clip_norm / (norms + 1e-6), max=1.0)
        stacked = stacked * factors.view(-1, *([1] * (stacked.dim() - 1)))
        agg = stacked.mean(dim=0)
        agg_grads.append(agg + torch.randn_like(agg) * (config.noise_multiplier * config.clip_norm / data.size(0)))
    for param, grad in zip(model.parameters(), agg_grads):
        param.grad = grad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    np.random.seed(42)
    torch.manual_seed(42)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_dataset = MNIST(root=args.data_dir, train=True, download=False, transform=transform)
    test_dataset = MNIST(root=args.data_dir, train=False, download=False, transform=transform)
    train_data = Subset(train_dataset, np.random.choice(len(train_dataset), min(8000, len(train_dataset)), replace=False))
    test_data = Subset(test_dataset, np.random.choice(len(test_dataset), min(2000, len(test_dataset)), replace=False))
    train_loader = DataLoader(train_data, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_data, batch_size=64, shuffle=False)

    poisoned_data, _ = poison_labels(train_data, poison_rate=0.1, target_label=0)
    x_flat = torch.stack([poisoned_data[i][0].view(-1) for i in range(len(poisoned_data))]).numpy()
    IsolationForest(contamination=0.1, random_state=42).fit_predict(x_flat)

    config = DefenseConfig()
    model = SmallCNN().to(device)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(poisoned_data, batch_size=64, shuffle=True)
    for _ in range(args.epochs):
        for data, target in loader:
            data, target = data.to(device), target.to(device)
            adv = fgsm_attack(model, data, target, epsilon=config.epsilon_adv)
            optimizer.zero_grad()
            dp_sgd_step(model, adv, target, config, device)
            optimizer.step()
    t_train = time.perf_counter() - t0

    clean_acc = evaluate(model, test_loader, device)
    model.eval()
    correct = total = 0
    for data, target in test_loader:
        data, target = data.to(device), target.to(device)
        correct += (model(fgsm_attack(model, data, target, 0.1)).argmax(1) == target).sum().item()
        total += target.size(0)
    fgsm_acc = 100.0 * correct / total

    def confidences(loader):
        out = []
        with torch.no_grad():
            for data, _ in loader:
                out.extend(torch.softmax(model(data.to(device)), dim=1).max(dim=1)[0].cpu().numpy())
        return np.array(out)

    tc, sc = confidences(train_loader), confidences(test_loader)
    mia_auc = roc_auc_score(np.concatenate([np.ones(len(tc)), np.zeros(len(sc))]), np.concatenate([tc, sc]))
    sponge = torch.randn(1, 1, 28, 28) * 5.0
    sponge_allowed = not (sponge.abs().max().item() > 3.0 or sponge.var().item() > 2.0)
    total_s = time.perf_counter() - t0
    print(
        f"seed notebook: clean {clean_acc / 100:.3f}  fgsm@0.1(normalised) {fgsm_acc / 100:.3f}  mia_auc {mia_auc:.3f}  "
        f"sponge allowed {sponge_allowed}  train {t_train:.1f}s  total {total_s:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
