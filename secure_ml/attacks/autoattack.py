"""AutoAttack (Croce & Hein, ICML 2020) through torchattacks' maintained implementations. Lightning-free.

The ensemble, run in this order on the digits every earlier attack failed on:

* **APGD-CE** — step-size-free PGD on the cross-entropy;
* **APGD-T** (``dlr: targeted``, the default and standard AutoAttack's choice) — APGD on the targeted
  DLR loss against each of the ``target_classes`` most likely wrong classes; the DLR loss is
  invariant to the logits' scale, so a net that saturates its softmax cannot hide behind flat
  cross-entropy gradients, and the targeted form is the stronger of the two in Croce & Hein's
  evaluation. ``dlr: untargeted`` (APGD-DLR) costs one run instead of ``target_classes``;
* **Square** — a black-box random search (``square_queries`` forwards, no gradients): it catches
  gradient masking, where the gradient attacks fail because the gradient is useless, not because the
  net is robust. FAB-T, the fourth attack of standard AutoAttack, is left out: it rarely lowers the
  robust accuracy after APGD-T (Croce & Hein) and is the costliest.

torchattacks facts this wrapper relies on or fixes (checked with torchattacks 3.5.1):
inputs must be pixels in [0, 1] and the model must return logits (checked here: out-of-range inputs
raise); its ``AutoAttack`` class leaves APGD at 10 iterations (the paper uses 100: ``steps``); every
attack calls ``torch.random.manual_seed(seed)`` on the *global* generator, which here runs inside
``torch.random.fork_rng`` so an evaluation during training cannot reset the training randomness;
each attack switches the model to eval mode and restores its mode (done here too). With a fixed
``seed`` and ``batch_size`` the result is deterministic.
"""

from dataclasses import dataclass, field
from typing import Dict, Literal, Optional

import torch
import torchattacks
from torch import nn

from secure_ml.errors import TORCH_SEED_MAX, ConfigError, check_seed


@dataclass
class AutoAttackConfig:
    """AutoAttack settings (L∞, pixel units).

    Args:
        epsilon: L∞ radius in pixel units; null switches AutoAttack off.
        dlr: ``targeted`` (APGD-T over ``target_classes`` classes, standard AutoAttack) or ``untargeted`` (APGD-DLR, ``target_classes``× cheaper).
        target_classes: wrong classes APGD-T targets, most likely first (standard: 9, every other MNIST class).
        steps: iterations of each APGD run (standard AutoAttack: 100).
        square_queries: Square's query budget per digit (standard: 5000); 0 drops the black-box check for gradient masking.
        test_samples: held-out digits attacked by ``secure-ml test`` (null: all of them, 2,000 in the capstone).
        val_samples: digits attacked at each validation epoch during fit (0: skip AutoAttack during fit).
        batch_size: digits per attack call.
        seed: seed of the attacks' random starts and searches (and of the subsample).
    """

    epsilon: Optional[float] = 0.1
    dlr: Literal["targeted", "untargeted"] = "targeted"
    target_classes: int = 9
    steps: int = 100
    square_queries: int = 5000
    test_samples: Optional[int] = None
    val_samples: int = 0
    batch_size: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        check_seed(self.seed, "--robustness.autoattack.seed", TORCH_SEED_MAX)
        if self.epsilon is not None and not 0 < self.epsilon <= 1:
            raise ConfigError(f"--robustness.autoattack.epsilon must be in (0, 1] (pixel units) or null; got {self.epsilon}")
        if self.dlr not in ("targeted", "untargeted"):
            raise ConfigError(f"--robustness.autoattack.dlr must be 'targeted' or 'untargeted'; got '{self.dlr}'")
        for name, low in (("target_classes", 1), ("steps", 1), ("square_queries", 0), ("val_samples", 0), ("batch_size", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"--robustness.autoattack.{name} must be >= {low}; got {getattr(self, name)}")
        if self.test_samples is not None and self.test_samples < 1:
            raise ConfigError(f"--robustness.autoattack.test_samples must be >= 1 or null (all); got {self.test_samples}")


@dataclass
class AutoAttackResult:
    """``robust``: per digit, correct on the clean input and on every attack; ``remaining``: digits still robust after each stage."""

    robust: torch.Tensor
    x_adv: torch.Tensor
    remaining: Dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.robust.float().mean().item() if len(self.robust) else 0.0


def _attacks(model: nn.Module, cfg: AutoAttackConfig, n_classes: int) -> Dict[str, torchattacks.attack.Attack]:
    eps, seed = cfg.epsilon, cfg.seed
    out = {"apgd-ce": torchattacks.APGD(model, norm="Linf", eps=eps, steps=cfg.steps, n_restarts=1, seed=seed, loss="ce")}
    if cfg.dlr == "targeted":
        apgdt = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=cfg.steps, n_restarts=1, seed=seed, n_classes=n_classes)
        apgdt.n_target_classes = min(cfg.target_classes, n_classes - 1)  # torchattacks fixes it to n_classes - 1
        out["apgd-t"] = apgdt
    else:
        out["apgd-dlr"] = torchattacks.APGD(model, norm="Linf", eps=eps, steps=cfg.steps, n_restarts=1, seed=seed, loss="dlr")
    if cfg.square_queries > 0:
        out["square"] = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=cfg.square_queries, n_restarts=1, seed=seed)
    return out


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AutoAttackConfig) -> AutoAttackResult:
    """Robust accuracy of ``model`` (logits out, pixels in [0, 1] in) under the AutoAttack ensemble of ``cfg``."""
    if cfg.epsilon is None:
        raise ValueError("AutoAttackConfig.epsilon is None: AutoAttack is switched off")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"AutoAttack needs pixels in [0, 1]; got values in [{x.min().item():.3g}, {x.max().item():.3g}]")
    was_training = model.training
    model.eval()
    device = x.device
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            robust = torch.zeros(len(y), dtype=torch.bool, device=device)
            x_adv = x.detach().clone()
            for i in range(0, len(y), cfg.batch_size):
                robust[i : i + cfg.batch_size] = _predict(model, x[i : i + cfg.batch_size]) == y[i : i + cfg.batch_size]
            remaining = {"clean": int(robust.sum())}
            n_classes = model(x[:1]).shape[1] if len(x) else 10
            for name, attack in _attacks(model, cfg, n_classes).items():
                idx = robust.nonzero().flatten()
                for j in range(0, len(idx), cfg.batch_size):
                    b = idx[j : j + cfg.batch_size]
                    adv = attack(x[b], y[b]).detach()
                    if (adv - x[b]).abs().max() > cfg.epsilon + 1e-5 or adv.min() < 0 or adv.max() > 1:
                        raise RuntimeError(f"torchattacks {name} left the ε-ball or [0, 1]")
                    fooled = _predict(model, adv) != y[b]
                    robust[b[fooled]] = False
                    x_adv[b[fooled]] = adv[fooled]
                remaining[name] = int(robust.sum())
    finally:
        model.train(was_training)
    return AutoAttackResult(robust.cpu(), x_adv, remaining)
