"""The one-run privacy audit as a scorecard callback: scores the datamodule's canaries and logs the ε lower bound."""

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from secure_ml.callbacks._common import EpochMetricCallback, check_min
from secure_ml.callbacks.membership import dp_delta
from secure_ml.data.canaries import make_canaries
from secure_ml.errors import ConfigError
from secure_ml.models.batching import EVAL_BATCH
from secure_ml.models.registry import device_and_dtype
from secure_ml.privacy.one_run_audit import canary_scores, guess_counts, one_run_audit


def _log_probs(net: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Log-softmax outputs ``(m, C)`` in float64 on the CPU (no grad; the net's device for the forward)."""
    device, dtype = device_and_dtype(net, x)
    with torch.no_grad():
        return torch.cat(
            [F.log_softmax(net(x[i : i + batch_size].to(device, dtype)).double(), 1).cpu() for i in range(0, len(x), batch_size)]
        )


class OneRunAuditCallback(EpochMetricCallback):
    """Logs ``privacy/audit_epsilon_lower_bound`` and ``privacy/audit_guess_accuracy`` when the data has canaries.

    The canaries come from ``--data.canaries`` (off by default; ``configs/audit.yaml`` turns them on).
    Each canary's score is its log-probability of its label under the model minus that label's mean
    log-probability over all canaries (a black-box, label-calibrated loss attack,
    :func:`~secure_ml.privacy.one_run_audit.canary_scores`); the audit guesses "in" for the highest and "out" for the lowest scores and converts the
    count of correct guesses into a lower bound on ε at ``confidence`` (Steinke, Nasr & Jagielski
    2023; :mod:`secure_ml.privacy.one_run_audit`). On a correct (ε, δ)-DP run it stays below the
    accountant's ``privacy/epsilon`` with probability ≥ ``confidence``; a model that memorises its
    canaries gets a large bound. The canaries' seed is saved in the checkpoint, so ``secure-ml test``
    audits the checkpoint with the canaries it was trained with.

    Args:
        delta: δ of the audit; null takes the model's ``dp.delta`` (or 1e-5).
        confidence: confidence of the lower bound.
        guess_fractions: guess on this fraction of the canaries (half "in", half "out"); the best is reported, Bonferroni-corrected.
        every_n_epochs: run every n-th epoch (and always on the last one and in test).
        enabled: false switches the callback off (it does nothing anyway without canaries).
    """

    def __init__(
        self,
        delta: Optional[float] = None,
        confidence: float = 0.95,
        guess_fractions: List[float] = [0.05, 0.1, 0.2, 0.5],
        every_n_epochs: int = 1,
        enabled: bool = True,
    ):
        if delta is not None and not 0 < delta < 1:
            raise ConfigError(f"--audit.delta must be in (0, 1); got {delta}")
        if not 0 < confidence < 1:
            raise ConfigError(f"--audit.confidence must be in (0, 1); got {confidence}")
        if not guess_fractions or any(not 0 < f <= 1 for f in guess_fractions):
            raise ConfigError(f"--audit.guess_fractions must be a non-empty list of values in (0, 1]; got {guess_fractions}")
        check_min(every_n_epochs, "--audit.every_n_epochs")
        self.delta, self.confidence, self.guess_fractions = delta, confidence, list(guess_fractions)
        self.every_n_epochs, self.enabled = every_n_epochs, enabled
        self._trained_with: Optional[Dict[str, Any]] = None  # the canaries the model was trained with (from the checkpoint)

    def _differs(self, trainer) -> bool:
        """True when the checkpoint's canaries are not the datamodule's (a new secret seed, or none configured now)."""
        current, saved = getattr(trainer.datamodule, "canary_set", None), self._trained_with
        return saved is not None and (
            current is None or (saved["seed"], saved["count"], saved["kind"]) != (current.seed, len(current.y), current.kind)
        )

    def on_fit_start(self, trainer, pl_module) -> None:
        if self._differs(trainer):  # after the checkpoint is restored: a resumed fit would train on other canaries
            raise ConfigError(
                "resuming an audited fit needs the checkpoint's canaries: set --data.canaries.seed (and count, kind) as in the first fit"
            )

    def _canaries(self, trainer):
        """``(x, y, included)`` of the canaries the model was trained with, or None when there are none."""
        if self._differs(trainer):
            saved = self._trained_with
            return make_canaries(saved["count"], saved["kind"], saved["seed"])
        current = getattr(trainer.datamodule, "canary_set", None)
        return None if current is None else (current.x, current.y, current.included)

    def _evaluate(self, pl_module, stage: str) -> dict:
        canaries = self._canaries(pl_module.trainer)
        if canaries is None:
            return {}
        x, y, included = canaries
        self._check_guesses(len(y))  # (a checkpoint's canaries are known only now)
        scores = canary_scores(_log_probs(pl_module.net, x), y)
        audit = one_run_audit(scores, included, dp_delta(pl_module, self.delta), self.confidence, self.guess_fractions)
        return {"privacy/audit_epsilon_lower_bound": audit.epsilon_lb, "privacy/audit_guess_accuracy": audit.correct / audit.guesses}

    def state_dict(self) -> Dict[str, Any]:
        current = getattr(getattr(self, "_datamodule", None), "canary_set", None)
        if current is not None:
            return {"seed": current.seed, "count": len(current.y), "kind": current.kind}
        return dict(self._trained_with) if self._trained_with is not None else {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._trained_with = dict(state_dict) if state_dict else None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._datamodule = trainer.datamodule
        cfg = getattr(trainer.datamodule, "canaries", None)
        if self.enabled and cfg is not None and cfg.count > 0:  # before any training, not at the first validation
            self._check_guesses(cfg.count)

    def _check_guesses(self, m: int) -> None:
        """ConfigError unless ``guess_fractions`` give at least one guess on ``m`` canaries."""
        try:
            guess_counts(m, self.guess_fractions)
        except ValueError:
            raise ConfigError(
                f"--data.canaries.count {m} with --audit.guess_fractions {self.guess_fractions} gives no guess "
                "(each fraction f guesses round(f·count/2) canaries each way); raise the count or the fractions"
            ) from None
