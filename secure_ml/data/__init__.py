"""Data: MNIST loading, poisoning, sanitization, canaries, sampling (functional, Lightning-free) and the Lightning DataModule.

``MNISTDataModule`` is imported on first use (module ``__getattr__``), so ``import secure_ml.data.poisoning`` and the
other functional modules do not import Lightning (``tests/test_serving_startup.py`` checks it).
"""

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


def __getattr__(name: str):
    if name == "MNISTDataModule":
        from secure_ml.data.datamodule import MNISTDataModule

        return MNISTDataModule
    raise AttributeError(f"module 'secure_ml.data' has no attribute '{name}'")
