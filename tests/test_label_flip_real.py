"""confident_knn on real digits: a 3,000-digit draw of the capstone scenario (the full 7,200-digit figures: benchmarks/label_flip.py)."""

import pytest

from secure_ml.data import MNISTDataModule, PoisonConfig, SanitizerConfig

pytestmark = pytest.mark.slow


def _report(real_data_dir, method, rate, target):
    dm = MNISTDataModule(
        data_dir=str(real_data_dir),
        download=False,
        train_size=3000,  # 300 validation + 2,700 poisoned training digits: the capstone's proportions, 37% of its size
        val_size=300,
        test_size=10,
        seed=42,
        poison=PoisonConfig(rate=rate, target_label=target),
        sanitizer=SanitizerConfig(method=method),
    )
    dm.setup("validate")
    return dm.sanitization_report


@pytest.mark.parametrize("rate, target, target_f1", [(0.1, 0, 0.95), (0.2, None, 0.90)], ids=["capstone-10%-to-0", "random-20%"])
def test_confident_knn_meets_the_f1_targets_and_beats_pixel_knn(real_data_dir, rate, target, target_f1):
    ours = _report(real_data_dir, "confident_knn", rate, target)
    baseline = _report(real_data_dir, "knn", rate, target)
    assert ours.f1 >= target_f1 and ours.recall >= 0.98
    assert ours.f1 >= baseline.f1 + 0.03
