"""Per-epoch security callbacks: thin Lightning shells over the attack and metric functions."""

from secure_ml.callbacks.membership import MembershipInferenceCallback
from secure_ml.callbacks.predictions import PredictionWriter
from secure_ml.callbacks.privacy_budget import PrivacyBudget
from secure_ml.callbacks.robustness import RobustnessCallback
from secure_ml.callbacks.scorecard import Scorecard
from secure_ml.callbacks.sponge import SpongeCallback

__all__ = ["MembershipInferenceCallback", "PredictionWriter", "PrivacyBudget", "RobustnessCallback", "Scorecard", "SpongeCallback"]
