"""Per-epoch security callbacks: thin Lightning shells over the attack and metric functions."""

from secure_ml.callbacks.ema import EMACallback
from secure_ml.callbacks.membership import MembershipInferenceCallback
from secure_ml.callbacks.one_run_audit import OneRunAuditCallback
from secure_ml.callbacks.predictions import PredictionWriter
from secure_ml.callbacks.prior import ProceduralPrior
from secure_ml.callbacks.privacy_budget import PrivacyBudget
from secure_ml.callbacks.reference_mia import ReferenceMIACallback
from secure_ml.callbacks.robustness import RobustnessCallback
from secure_ml.callbacks.scorecard import Scorecard
from secure_ml.callbacks.sponge import SpongeCallback

__all__ = [
    "EMACallback",
    "MembershipInferenceCallback",
    "OneRunAuditCallback",
    "PredictionWriter",
    "PrivacyBudget",
    "ProceduralPrior",
    "ReferenceMIACallback",
    "RobustnessCallback",
    "Scorecard",
    "SpongeCallback",
]
