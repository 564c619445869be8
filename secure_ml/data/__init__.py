from secure_ml.data.datamodule import MNISTDataModule
from secure_ml.data.poisoning import PoisonConfig, flip_labels
from secure_ml.data.sanitization import SanitizationReport, SanitizerConfig, detection_scores, sanitize

__all__ = [
    "MNISTDataModule",
    "PoisonConfig",
    "SanitizationReport",
    "SanitizerConfig",
    "detection_scores",
    "flip_labels",
    "sanitize",
]
