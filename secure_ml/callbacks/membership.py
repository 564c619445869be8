"""Membership inference every epoch, and the threshold (ROC) audit: a lower bound on ε from the loss attack."""

from typing import Optional

import torch

from secure_ml.attacks.low_fpr import dp_tpr_bound, tpr_at_fpr
from secure_ml.attacks.membership import membership_inference
from secure_ml.callbacks._common import EpochMetricCallback, check_min, held_out, members
from secure_ml.data.canaries import without_canaries
from secure_ml.errors import TORCH_SEED_MAX, ConfigError, check_seed
from secure_ml.privacy.engine import epsilon_from_state
from secure_ml.privacy.threshold_audit import threshold_epsilon_lower_bound

LOW_FPR = 0.001  # the FPR of mia/tpr@0.1%fpr


def dp_delta(pl_module, override: Optional[float] = None) -> float:
    """``override``, else the model's ``dp.delta``, else 1e-5."""
    return override if override is not None else getattr(getattr(pl_module, "dp", None), "delta", 1e-5)


def accountant_epsilon(pl_module, delta: float) -> Optional[float]:
    """The accountant's ε of the model being evaluated (None for a non-DP model or before the first step)."""
    private = getattr(pl_module, "private", None)
    if private is not None:
        return private.epsilon(delta)
    dp_state = getattr(pl_module, "dp_state", None)  # `test --ckpt_path`: the checkpoint's accountant state
    state = dp_state() if dp_state is not None else None
    return epsilon_from_state(state, delta) if state is not None else None


class MembershipInferenceCallback(EpochMetricCallback):
    """Threshold attacks on training members vs held-out non-members (equal counts).

    Logs ``mia/auc`` (the seed's max-confidence attack), ``mia/loss_auc``, ``mia/entropy_auc``,
    ``mia/modified_entropy_auc``, and for the strongest of those attacks ``mia/tpr@1%fpr``,
    ``mia/advantage`` and, only when the non-members can resolve 0.1% (≥ 1,000 of them),
    ``mia/tpr@0.1%fpr`` with its interval ``mia/tpr@0.1%fpr_low`` / ``_high`` (see
    :mod:`secure_ml.attacks.low_fpr`) and, for a DP model, ``mia/dp_tpr_bound@0.1%fpr`` = e^ε·0.001 + δ,
    the most any attack may reach there. It also logs ``privacy/epsilon_lower_bound``: the ε
    that the *loss* threshold attack certifies at ``confidence`` via Clopper–Pearson intervals
    (the threshold audit; it needs no canaries and is weak by design: 0 on every run of a few
    thousand digits, DP or not). The one-run canary audit is ``privacy/audit_epsilon_lower_bound``.
    One-run audit canaries are not counted as members here.

    Args:
        max_samples: members and non-members used per side each epoch (the smaller set caps it).
        delta: δ of the audit and of the DP bound; null takes the model's ``dp.delta`` (or 1e-5).
        confidence: confidence level of the audit's lower bound and of the TPR interval.
        every_n_epochs: run every n-th epoch (and always on the last one and in test).
        enabled: false switches the callback off (``--<key>.enabled false`` on the CLI).
        seed: seed of the member/non-member subsample.
    """

    record_stages = ("val", "test")  # the non-members' logits come from the loop's own forward when it covered them all

    def __init__(
        self,
        max_samples: int = 1000,
        delta: Optional[float] = None,
        confidence: float = 0.95,
        every_n_epochs: int = 1,
        seed: int = 0,
        enabled: bool = True,
    ):
        check_min(max_samples, "--membership.max_samples", 2)
        check_min(every_n_epochs, "--membership.every_n_epochs")
        if delta is not None and not 0 < delta < 1:
            raise ConfigError(f"--membership.delta must be in (0, 1); got {delta}")
        if not 0 < confidence < 1:
            raise ConfigError(f"--membership.confidence must be in (0, 1); got {confidence}")
        check_seed(seed, "--membership.seed", TORCH_SEED_MAX)
        self.max_samples, self.delta, self.confidence, self.every_n_epochs, self.seed = max_samples, delta, confidence, every_n_epochs, seed
        self.enabled = enabled

    def _evaluate(self, pl_module, stage: str) -> dict:
        trainer = pl_module.trainer
        mx, my = without_canaries(trainer.datamodule, *members(trainer))
        nx, ny = held_out(trainer, stage)
        gen = torch.Generator().manual_seed(self.seed)
        logits = torch.cat(self.recorded.logits) if self.recorded is not None else None  # the loop's forward of the non-members
        result = membership_inference(pl_module.net, mx, my, nx, ny, generator=gen, max_samples=self.max_samples, nonmember_logits=logits)
        reports, best = result.reports, result.reports[result.strongest]
        delta = dp_delta(pl_module, self.delta)
        loss_m, loss_n = result.member_scores["loss"], result.nonmember_scores["loss"]
        audit = threshold_epsilon_lower_bound(loss_m, loss_n, delta=delta, confidence=self.confidence)
        out = {"mia/auc": reports["confidence"].auc}
        out.update({f"mia/{kind}_auc": rep.auc for kind, rep in reports.items() if kind != "confidence"})
        out.update({"mia/tpr@1%fpr": best.tpr_at_1pct_fpr, "mia/advantage": best.advantage})
        low = tpr_at_fpr(result.member_scores[result.strongest], result.nonmember_scores[result.strongest], LOW_FPR, self.confidence)
        if low is not None:  # refused below 1,000 non-members: 0.1% of them is less than one sample
            out.update({"mia/tpr@0.1%fpr": low.tpr, "mia/tpr@0.1%fpr_low": low.tpr_low, "mia/tpr@0.1%fpr_high": low.tpr_high})
            eps = accountant_epsilon(pl_module, delta)
            if eps is not None:
                out["mia/dp_tpr_bound@0.1%fpr"] = dp_tpr_bound(eps, delta, LOW_FPR)
        out["privacy/epsilon_lower_bound"] = audit.epsilon_lb
        return out
