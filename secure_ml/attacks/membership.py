"""Black-box membership inference: per-sample scores and threshold-attack metrics.

Scores (higher = "more likely a training member"):

* ``confidence``  — max softmax probability (the seed notebook's attack);
* ``loss``        — negative per-sample cross-entropy (Yeom et al., 2018);
* ``entropy``     — negative prediction entropy;
* ``modified_entropy`` — negative modified entropy of Song & Mittal, "Systematic Evaluation
  of Privacy Risks of Machine Learning Models" (USENIX Security 2021):
  ``Mentr(p, y) = −(1 − p_y)·log p_y − Σ_{i≠y} p_i·log(1 − p_i)``.

Each score feeds a threshold attack "member iff score ≥ t"; :func:`membership_metrics`
sweeps every threshold. The ROC and AUC are counted here in integers and float64 rather than
taken from torchmetrics: its ``binary_roc``/``binary_auroc`` accumulate in float32, so an AUC
of exactly 0.55 came out as 0.55000001 and failed a ``mia/auc <= 0.55`` gate, and it applies a
sigmoid to scores outside [0, 1], which merges nearby losses such as 1e-7 and 2e-7 into ties.
Ties count one half (the Mann–Whitney statistic); ``tests/test_membership.py`` checks both
against torchmetrics and scikit-learn.
"""

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from secure_ml.attacks.scores import check_scores
from secure_ml.models.batching import EVAL_BATCH

SCORE_KINDS = ("confidence", "loss", "entropy", "modified_entropy")


@dataclass
class MembershipReport:
    """Threshold-attack metrics for one score kind.

    ``tpr_at_1pct_fpr`` / ``tpr_at_01pct_fpr``: the largest TPR among ROC points whose FPR is
    at most 1% / 0.1% (the point FPR = TPR = 0 always qualifies, so they are ≥ 0; with fewer
    than 1000 non-members only FPR = 0 meets 0.1%). ``advantage`` = max(TPR − FPR) and
    ``balanced_accuracy`` = max ½(TPR + 1 − FPR) = ½(1 + advantage), both at ``threshold``.
    """

    auc: float
    balanced_accuracy: float
    advantage: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    threshold: float
    n_members: int
    n_nonmembers: int

    def to_dict(self) -> Dict[str, float]:
        """Plain dict for loggers."""
        return asdict(self)


def _counts(m: torch.Tensor, n: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ascending distinct pooled scores and, per distinct score, how many members and non-members hold it."""
    uniq, inverse = torch.unique(torch.cat([m, n]), return_inverse=True)
    members = torch.bincount(inverse[: len(m)], minlength=len(uniq))
    nonmembers = torch.bincount(inverse[len(m) :], minlength=len(uniq))
    return uniq, members, nonmembers


def roc_curve(member_scores: torch.Tensor, nonmember_scores: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(fpr, tpr, thresholds)`` of "member iff score ≥ t", from (0, 0) at t = +inf down to (1, 1).

    One point per distinct score plus the leading (0, 0); rates are integer counts divided in float64.
    """
    m, n = check_scores(member_scores, nonmember_scores)
    uniq, members, nonmembers = _counts(m, n)
    zero = torch.zeros(1, dtype=torch.long)
    tpr = torch.cat([zero, members.flip(0).cumsum(0)]).to(torch.float64) / len(m)
    fpr = torch.cat([zero, nonmembers.flip(0).cumsum(0)]).to(torch.float64) / len(n)
    thresholds = torch.cat([torch.tensor([math.inf], dtype=torch.float64), uniq.flip(0).to(torch.float64)])
    return fpr, tpr, thresholds


def auc_score(member_scores: torch.Tensor, nonmember_scores: torch.Tensor) -> float:
    """P(member score > non-member score) + ½·P(equal), the area under :func:`roc_curve`, exact in float64."""
    m, n = check_scores(member_scores, nonmember_scores)
    _, members, nonmembers = _counts(m, n)
    below = nonmembers.cumsum(0) - nonmembers  # non-members strictly below each distinct score
    twice_wins = (members * (2 * below + nonmembers)).sum().item()  # an integer: exact
    return twice_wins / (2 * len(m) * len(n))


def _tpr_at(fpr: torch.Tensor, tpr: torch.Tensor, target: float) -> float:
    """Largest TPR among ROC points with FPR ≤ ``target`` (with a 1e-9 float tolerance)."""
    return tpr[fpr <= target + 1e-9].max().item()


def membership_metrics(member_scores: torch.Tensor, nonmember_scores: torch.Tensor) -> MembershipReport:
    """AUC, best balanced accuracy, advantage and TPR at 1% / 0.1% FPR of a threshold attack on the scores."""
    m, n = check_scores(member_scores, nonmember_scores)
    fpr, tpr, thresholds = roc_curve(m, n)
    auc = auc_score(m, n)
    gap = tpr - fpr
    best = int(torch.argmax(gap))
    advantage = max(gap[best].item(), 0.0)
    return MembershipReport(
        auc=auc,
        balanced_accuracy=0.5 * (1.0 + advantage),
        advantage=advantage,
        tpr_at_1pct_fpr=_tpr_at(fpr, tpr, 0.01),
        tpr_at_01pct_fpr=_tpr_at(fpr, tpr, 0.001),
        threshold=thresholds[best].item(),
        n_members=len(m),
        n_nonmembers=len(n),
    )


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """Stable ``log(1 − exp(a))`` for ``a ≤ 0`` (Mächler 2012), floored at log(tiny) instead of −inf."""
    a = a.clamp(max=0.0)
    out = torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))
    return out.clamp(min=math.log(torch.finfo(a.dtype).tiny))


def membership_scores(logits: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Every score kind of :data:`SCORE_KINDS` from logits ``(N, C)`` and labels ``(N,)``, float64."""
    if logits.dim() != 2 or y.shape != logits.shape[:1]:
        raise ValueError(f"need logits (N, C) and labels (N,); got {tuple(logits.shape)} and {tuple(y.shape)}")
    logp = F.log_softmax(logits.double(), dim=1)
    p = logp.exp()
    y = y.long()
    logp_y = logp.gather(1, y[:, None]).squeeze(1)
    p_y = logp_y.exp()
    entropy = -(p * logp).sum(1)
    others = torch.ones_like(p, dtype=torch.bool).scatter_(1, y[:, None], False)
    mentr = -(1.0 - p_y) * logp_y - (p * _log1mexp(logp) * others).sum(1)
    return {"confidence": p.max(1).values, "loss": logp_y, "entropy": -entropy, "modified_entropy": -mentr}


def model_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH) -> Dict[str, torch.Tensor]:
    """Batched forward passes under ``torch.no_grad()`` on the model's device → per-sample scores on CPU.

    The model's train/eval mode is left as the caller set it (use eval for dropout/batch-norm models).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    p = next(model.parameters(), None)
    device = p.device if p is not None else x.device
    parts: Dict[str, list] = {k: [] for k in SCORE_KINDS}
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device=device, dtype=p.dtype if p is not None else x.dtype)
            scores = membership_scores(model(xb).cpu(), y[i : i + batch_size].cpu())  # float64 on CPU (MPS has none)
            for k in SCORE_KINDS:
                parts[k].append(scores[k])
    return {k: torch.cat(v) for k, v in parts.items()}


def balance(
    member_x: torch.Tensor,
    member_y: torch.Tensor,
    nonmember_x: torch.Tensor,
    nonmember_y: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    max_samples: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Subsample (without replacement, from ``generator``) to equal counts: the smaller set's size, capped at ``max_samples``."""
    for name, xs, ys in (("member", member_x, member_y), ("nonmember", nonmember_x, nonmember_y)):
        if len(xs) == 0:
            raise ValueError(f"{name}_x is empty; need at least one sample")
        if len(xs) != len(ys):
            raise ValueError(f"{name}_x has {len(xs)} samples but {name}_y has {len(ys)}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1; got {max_samples}")
    k = min(len(member_x), len(nonmember_x), max_samples or len(member_x))

    def take(xs: torch.Tensor, ys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if len(xs) == k:
            return xs, ys
        gen_device = generator.device if generator is not None else "cpu"
        idx = torch.randperm(len(xs), generator=generator, device=gen_device)[:k].sort().values
        return xs[idx.to(xs.device)], ys[idx.to(ys.device)]

    mx, my = take(member_x, member_y)
    nx, ny = take(nonmember_x, nonmember_y)
    return mx, my, nx, ny


@dataclass
class MembershipInference:
    """Every threshold attack's report, and the per-sample scores they came from (``SCORE_KINDS`` → tensor)."""

    reports: Dict[str, MembershipReport]
    member_scores: Dict[str, torch.Tensor]
    nonmember_scores: Dict[str, torch.Tensor]

    @property
    def strongest(self) -> str:
        """The score kind with the highest AUC."""
        return max(self.reports, key=lambda k: self.reports[k].auc)


def membership_inference(
    model: nn.Module,
    member_x: torch.Tensor,
    member_y: torch.Tensor,
    nonmember_x: torch.Tensor,
    nonmember_y: torch.Tensor,
    batch_size: int = EVAL_BATCH,
    generator: Optional[torch.Generator] = None,
    max_samples: Optional[int] = None,
    nonmember_logits: Optional[torch.Tensor] = None,
) -> MembershipInference:
    """Run every threshold attack of :data:`SCORE_KINDS` on equal-size member / non-member sets.

    Both sets are subsampled with ``generator`` to the smaller one's size, capped at ``max_samples``
    (a fresh ``torch.Generator`` seeded 0 when ``None``, so results are reproducible). Inputs may live
    on any device; each batch goes to the model's device. ``nonmember_logits``: the model's logits of
    every ``nonmember_x`` row, already computed (the evaluation loop's forward); the same subsample of
    them is scored instead of a second forward.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if nonmember_logits is not None and nonmember_logits.shape[:1] != nonmember_x.shape[:1]:
        raise ValueError(f"nonmember_logits has {len(nonmember_logits)} rows for {len(nonmember_x)} non-members")
    # Row positions ride through the subsample in place of the non-member images when their logits are given.
    rows = torch.arange(len(nonmember_x)) if nonmember_logits is not None else nonmember_x
    mx, my, nx, ny = balance(member_x, member_y, rows, nonmember_y, generator, max_samples)
    ms = model_scores(model, mx, my, batch_size)
    if nonmember_logits is None:
        ns = model_scores(model, nx, ny, batch_size)
    else:
        ns = membership_scores(nonmember_logits[nx.to(nonmember_logits.device)].cpu(), ny.cpu())
    return MembershipInference({k: membership_metrics(ms[k], ns[k]) for k in SCORE_KINDS}, ms, ns)
