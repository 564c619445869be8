from secure_ml.privacy.config import DPConfig
from secure_ml.privacy.reference import ReferenceDPOptimizer, per_sample_gradients

__all__ = ["DPConfig", "ReferenceDPOptimizer", "per_sample_gradients"]
