"""Validation of membership scores, shared by every attack and audit that turns scores into rates or bounds."""

from typing import Tuple

import torch


def score_vector(scores, name: str) -> torch.Tensor:
    """``scores`` flattened to float64 on the CPU; ValueError naming ``name`` when empty or not finite."""
    s = torch.as_tensor(scores).detach().flatten().to("cpu", torch.float64)
    if s.numel() == 0:
        raise ValueError(f"{name} is empty; need at least one score")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return s


def check_scores(member_scores, nonmember_scores) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both score sets through :func:`score_vector` (higher = "more likely a member")."""
    return score_vector(member_scores, "member_scores"), score_vector(nonmember_scores, "nonmember_scores")
