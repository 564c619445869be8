"""Membership inference every epoch, and the empirical privacy audit (a lower bound on ε) from it."""

from typing import Optional

import torch

from secure_ml.attacks.membership import SCORE_KINDS, balance, membership_metrics, model_scores
from secure_ml.callbacks._common import EpochMetricCallback, check_min, held_out, members, on_device, subsample
from secure_ml.errors import ConfigError
from secure_ml.privacy.audit import empirical_epsilon_lower_bound


class MembershipInferenceCallback(EpochMetricCallback):
    """Threshold attacks on training members vs held-out non-members (equal counts).

    Logs ``mia/auc`` (the seed's max-confidence attack), ``mia/loss_auc``,
    ``mia/entropy_auc``, ``mia/modified_entropy_auc``, and for the strongest of those
    attacks ``mia/tpr@1%fpr``, ``mia/tpr@0.1%fpr`` and ``mia/advantage``. It also logs
    ``privacy/epsilon_lower_bound``: the ε that the *loss* attack (fixed in advance, so
    the bound stays valid) certifies at ``confidence`` via Clopper–Pearson intervals. On
    a correct DP run it can never exceed the accountant's ``privacy/epsilon``.

    Args:
        max_samples: members and non-members used per side each epoch (the smaller set caps it).
        delta: δ of the audit; null takes the model's ``dp.delta`` (or 1e-5).
        confidence: confidence level of the audit's lower bound.
        every_n_epochs: run every n-th epoch (and always on the last one and in test).
        enabled: false switches the callback off (``--<key>.enabled false`` on the CLI).
        seed: seed of the member/non-member subsample.
    """

    def __init__(
        self,
        max_samples: int = 1000,
        delta: Optional[float] = None,
        confidence: float = 0.95,
        every_n_epochs: int = 1,
        seed: int = 0,
        enabled: bool = True,
    ):
        check_min(max_samples, "MembershipInferenceCallback max_samples", 2)
        check_min(every_n_epochs, "MembershipInferenceCallback every_n_epochs")
        if delta is not None and not 0 < delta < 1:
            raise ConfigError(f"MembershipInferenceCallback delta must be in (0, 1); got {delta}")
        if not 0 < confidence < 1:
            raise ConfigError(f"MembershipInferenceCallback confidence must be in (0, 1); got {confidence}")
        self.max_samples, self.delta, self.confidence, self.every_n_epochs, self.seed = max_samples, delta, confidence, every_n_epochs, seed
        self.enabled = enabled

    def _evaluate(self, pl_module, stage: str) -> dict:
        trainer = pl_module.trainer
        mx, my = members(trainer)
        nx, ny = held_out(trainer, stage)
        mx, my = subsample(mx, my, self.max_samples, self.seed)
        nx, ny = subsample(nx, ny, self.max_samples, self.seed + 1)
        mx, my, nx, ny = balance(mx, my, nx, ny, torch.Generator().manual_seed(self.seed + 2))
        net = pl_module.net
        with torch.no_grad():
            ms = model_scores(net, *on_device(pl_module, mx, my))
            ns = model_scores(net, *on_device(pl_module, nx, ny))
        reports = {kind: membership_metrics(ms[kind], ns[kind]) for kind in SCORE_KINDS}
        best = max(reports.values(), key=lambda r: r.auc)
        delta = self.delta if self.delta is not None else getattr(getattr(pl_module, "dp", None), "delta", 1e-5)
        audit = empirical_epsilon_lower_bound(ms["loss"], ns["loss"], delta=delta, confidence=self.confidence)
        out = {"mia/auc": reports["confidence"].auc}
        out.update({f"mia/{kind}_auc": reports[kind].auc for kind in SCORE_KINDS if kind != "confidence"})
        out.update({"mia/tpr@1%fpr": best.tpr_at_1pct_fpr, "mia/tpr@0.1%fpr": best.tpr_at_01pct_fpr, "mia/advantage": best.advantage})
        out["privacy/epsilon_lower_bound"] = audit.epsilon_lb
        return out
