"""FGSM / PGD accuracy on held-out digits every epoch, and AutoAttack (all test digits in ``secure-ml test``)."""

import time
from typing import List, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from secure_ml.attacks import pgd
from secure_ml.attacks.autoattack import AutoAttackConfig, autoattack
from secure_ml.callbacks._common import EpochMetricCallback, check_min, held_out, on_device, subsample
from secure_ml.errors import TORCH_SEED_MAX, ConfigError, check_seed
from secure_ml.models.batching import EVAL_BATCH
from secure_ml.report.metric_names import AUTOATTACK_ACC, FGSM_ACC, PGD_ACC, at


def _accuracy(net, x, y, batch_size) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            correct += (net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    return correct / max(len(y), 1)


def _input_gradient_and_logits(net, x, y):
    """``(∇ₓ Σ CE, logits)`` from one forward: the gradient :func:`secure_ml.attacks.fgsm` steps along."""
    x = x.detach().clone().requires_grad_(True)
    logits = net(x)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
    return grad, logits.detach()


class RobustnessCallback(EpochMetricCallback):
    """Logs ``adv/clean_acc``, ``adv/fgsm_acc@<eps>`` for each epsilon, ``adv/pgd_acc@<eps>`` and ``adv/autoattack_acc@<eps>`` (pixel units).

    AutoAttack (APGD-CE, APGD-T, Square; :mod:`secure_ml.attacks.autoattack`) runs on
    ``autoattack.test_samples`` held-out digits in ``test`` (all by default) and on
    ``autoattack.val_samples`` digits each validation epoch (0 by default: it is the costliest
    check, see docs/dev/eval.md for its wall time).

    Args:
        epsilons: FGSM radii in pixel units (the seed's 0.0308 and the standard 0.1).
        pgd_epsilon: PGD radius; null skips PGD.
        pgd_steps: PGD iterations.
        pgd_step_size: PGD step; null means 2.5·ε/steps.
        max_samples: held-out digits attacked with FGSM each epoch.
        pgd_max_samples: held-out digits attacked with PGD (the costlier attack) each epoch.
        batch_size: attack batch size.
        every_n_epochs: run every n-th epoch (and always on the last one and in test).
        enabled: false switches the callback off (``--<key>.enabled false`` on the CLI).
        seed: seed of the subsample and of PGD's random start.
        autoattack: AutoAttack settings (``--robustness.autoattack.epsilon null`` switches it off).
    """

    def __init__(
        self,
        epsilons: List[float] = [0.0308, 0.1],
        pgd_epsilon: Optional[float] = 0.1,
        pgd_steps: int = 10,
        pgd_step_size: Optional[float] = None,
        max_samples: int = 256,
        pgd_max_samples: int = 96,
        batch_size: int = EVAL_BATCH,
        every_n_epochs: int = 1,
        seed: int = 0,
        enabled: bool = True,
        autoattack: AutoAttackConfig = AutoAttackConfig(),
    ):
        for e in list(epsilons) + ([pgd_epsilon] if pgd_epsilon is not None else []):
            if not 0 < e <= 1:
                raise ConfigError(f"--robustness.epsilons and --robustness.pgd_epsilon must be in (0, 1] (pixel units); got {e}")
        for name, v in (
            ("max_samples", max_samples),
            ("pgd_max_samples", pgd_max_samples),
            ("batch_size", batch_size),
            ("every_n_epochs", every_n_epochs),
            ("pgd_steps", pgd_steps),
        ):
            check_min(v, f"--robustness.{name}")
        if pgd_step_size is not None and not 0 < pgd_step_size < float("inf"):  # a step <= 0 descends: inflated robustness
            raise ConfigError(f"--robustness.pgd_step_size must be a finite number > 0 (null: 2.5·ε/steps); got {pgd_step_size}")
        self.epsilons, self.pgd_epsilon, self.pgd_steps, self.pgd_step_size = list(epsilons), pgd_epsilon, pgd_steps, pgd_step_size
        self.max_samples, self.pgd_max_samples, self.batch_size = max_samples, pgd_max_samples, batch_size
        check_seed(seed, "--robustness.seed", TORCH_SEED_MAX)
        self.every_n_epochs, self.seed = every_n_epochs, seed
        self.enabled = enabled
        self.autoattack = AutoAttackConfig(**autoattack) if isinstance(autoattack, dict) else autoattack  # a mapping from Python or YAML

    def _evaluate(self, pl_module, stage: str) -> dict:
        net = pl_module.net
        x, y = held_out(pl_module.trainer, stage)
        x, y = on_device(pl_module, *subsample(x, y, self.max_samples, self.seed))
        # FGSM's step is ε·sign(∇ₓ loss) at x for every ε: one input gradient serves all radii (fgsm() computes the same),
        # and the forward that gives it also gives the clean accuracy.
        signs, correct = [], 0
        for i in range(0, len(y), self.batch_size):
            grad, logits = _input_gradient_and_logits(net, x[i : i + self.batch_size], y[i : i + self.batch_size])
            signs.append(grad.sign())
            correct += (logits.argmax(1) == y[i : i + self.batch_size]).sum().item()
        sign = torch.cat(signs) if signs else torch.zeros_like(x)
        out = {"adv/clean_acc": correct / max(len(y), 1)}
        for eps in self.epsilons:
            out[at(FGSM_ACC, eps)] = _accuracy(net, (x + eps * sign).clamp_(0.0, 1.0), y, self.batch_size)
        if self.pgd_epsilon is not None:
            xp, yp = x[: self.pgd_max_samples], y[: self.pgd_max_samples]
            gen = torch.Generator(device=xp.device).manual_seed(self.seed)
            adv = torch.cat(
                [
                    pgd(
                        net,
                        xp[i : i + self.batch_size],
                        yp[i : i + self.batch_size],
                        self.pgd_epsilon,
                        self.pgd_steps,
                        self.pgd_step_size,
                        True,
                        gen,
                    )
                    for i in range(0, len(yp), self.batch_size)
                ]
            )
            out[at(PGD_ACC, self.pgd_epsilon)] = _accuracy(net, adv, yp, self.batch_size)
        out.update(self._autoattack(net, pl_module, stage))
        return out

    def _autoattack(self, net, pl_module, stage: str) -> dict:
        cfg = self.autoattack
        n = cfg.test_samples if stage == "test" else cfg.val_samples
        if cfg.epsilon is None or n == 0:
            return {}
        x, y = held_out(pl_module.trainer, stage)
        x, y = on_device(pl_module, *subsample(x, y, n if n is not None else len(y), cfg.seed))
        start = time.perf_counter()
        result = autoattack(net, x, y, cfg)
        rank_zero_info(
            f"secure-ml: AutoAttack on {len(y)} {stage} digits: {result.accuracy:.4f} robust, {time.perf_counter() - start:.0f} s; {result.remaining}"
        )
        return {at(AUTOATTACK_ACC, cfg.epsilon): result.accuracy}
