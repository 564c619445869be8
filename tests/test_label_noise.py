"""The confident_knn label-flip detector on synthetic seven-segment digits: mechanics, pruning, determinism."""

import numpy as np
import pytest
import torch

from secure_ml.data import SanitizerConfig, detection_scores, flip_labels, sanitize
from secure_ml.data.label_noise import _flags, detect_label_flips, loo_neighbours, noisy_pair_matrix, posteriors
from secure_ml.errors import ConfigError
from tests.helpers.segments import segment_digits


@pytest.fixture(scope="module")
def digits():
    return segment_digits(600, seed=0)


def _flip(labels, rate, target, seed=1):
    return flip_labels(labels, rate, 10, target, torch.Generator().manual_seed(seed))


def test_targeted_flips_found_and_localised_where_pixel_knn_fails(digits):
    images, labels = digits
    noisy, poisoned = _flip(labels, 0.1, 0)
    found = detect_label_flips(images, noisy)
    assert detection_scores(found.flagged, poisoned) == (1.0, 1.0, 1.0)
    # The transition estimate puts the noise where it is: every pair "labelled 0, looks like j", nothing else.
    assert found.noisy_pairs == [(0, j) for j in range(1, 10)]
    assert torch.equal(found.proposed[poisoned], labels[poisoned])  # relabel proposals are the true classes
    _, _, _, pixel = sanitize(images, noisy, SanitizerConfig(method="knn"), poisoned)
    assert pixel.f1 < 0.5  # shifted glyphs defeat pixel-space neighbours


def test_random_flips_and_clean_data(digits):
    images, labels = digits
    noisy, poisoned = _flip(labels, 0.2, None)
    found = detect_label_flips(images, noisy)
    assert detection_scores(found.flagged, poisoned)[2] >= 0.98
    assert len(found.noisy_pairs) >= 40  # random flips: most of the 90 pairs carry noise (targeted: 9)
    clean = detect_label_flips(images, labels)
    assert len(clean.flagged) == 0 and clean.noisy_pairs == []


def test_flags_need_a_noisy_pair_or_no_agreeing_neighbour():
    labels = np.array([0, 1, 2, 3])
    probs = np.array(
        [
            [0.1, 0.9, 0, 0, 0, 0, 0, 0, 0, 0],  # labelled 0, looks like 1: pair (0, 1)
            [0, 0.2, 0.8, 0, 0, 0, 0, 0, 0, 0],  # labelled 1, looks like 2: pair (1, 2)
            [0, 0, 0, 1.0, 0, 0, 0, 0, 0, 0],  # labelled 2, no neighbour agrees
            [0, 0, 0, 0.9, 0.1, 0, 0, 0, 0, 0],  # labelled 3, agrees
        ]
    )
    noisy = np.zeros((10, 10), dtype=bool)
    noisy[0, 1] = True
    assert _flags(labels, probs, noisy).tolist() == [True, False, True, False]


def test_pair_rates_come_from_the_confident_joint():
    # 20 digits that look like class 1: 18 labelled 1, 2 labelled 0; 20 that look like class 0, all labelled 0.
    labels = np.array([1] * 18 + [0] * 2 + [0] * 20)
    probs = np.zeros((40, 10))
    probs[:20, 1], probs[:20, 0] = 0.9, 0.1
    probs[20:, 0], probs[20:, 1] = 0.9, 0.1
    rates, noisy = noisy_pair_matrix(labels, probs, min_pair_rate=0.05)
    assert rates[0, 1] == pytest.approx(2 / 20) and noisy[0, 1] and noisy.sum() == 1
    _, strict = noisy_pair_matrix(labels, probs, min_pair_rate=0.2)  # 10% < 20%: pruned as model confusion
    assert not strict.any()


def test_neighbours_exclude_self_even_with_duplicates_and_votes_can_be_withdrawn():
    features = np.array([[0.0], [0.0], [1.0], [5.0], [5.1]])
    idx, w = loo_neighbours(features, k=2)
    assert all(i not in row for i, row in enumerate(idx)) and w.shape == (5, 2)
    labels = np.array([0, 0, 1, 1, 1])
    p = posteriors(labels, idx, w, 2)
    assert np.allclose(p.sum(1), 1) and p[0, 0] > 0.5
    withdrawn = posteriors(labels, idx, w, 2, voters=np.array([False, True, True, True, True]))
    assert withdrawn[1, 0] == 0 and withdrawn[1, 1] == 1  # row 1 loses row 0's vote
    alone = posteriors(labels, idx, w, 2, voters=np.zeros(5, dtype=bool))
    assert np.allclose(alone, p)  # a row never loses every vote


def test_refinement_withdraws_flipped_votes():
    images, labels = segment_digits(300, seed=0)
    noisy, poisoned = _flip(labels, 0.2, 0, seed=2)  # 60 flips into class 0 (a quarter of each class): they vouch for each other
    once = detect_label_flips(images, noisy, refine_rounds=0)
    refined = detect_label_flips(images, noisy, refine_rounds=1)
    assert detection_scores(once.flagged, poisoned)[0] < 0.9  # without refinement, honest digits near the flipped ones are flagged
    assert detection_scores(refined.flagged, poisoned) == (1.0, 1.0, 1.0)


def test_deterministic_and_independent_of_the_thread_count(digits):
    images, labels = digits
    noisy, _ = _flip(labels, 0.2, None)
    before = torch.get_num_threads()
    runs = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        try:
            runs.append(detect_label_flips(images, noisy))
        finally:
            torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    for run in runs[1:]:
        assert torch.equal(run.flagged, runs[0].flagged) and torch.equal(run.proposed, runs[0].proposed)
        assert np.array_equal(run.pair_rates, runs[0].pair_rates)


def test_sanitize_remove_and_relabel(digits):
    images, labels = digits
    noisy, poisoned = _flip(labels, 0.1, None)
    _, y, kept, rep = sanitize(images, noisy, SanitizerConfig(method="confident_knn"), poisoned)
    assert rep.f1 >= 0.98 and len(y) == len(labels) - rep.removed and torch.equal(y, noisy[kept])
    _, y2, kept2, rep2 = sanitize(images, noisy, SanitizerConfig(method="confident_knn", action="relabel"), poisoned)
    assert len(kept2) == len(labels) and rep2.removed == 0 and rep2.relabelled >= 58
    assert (y2 != labels).sum() <= 1


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(min_pair_rate=1.0), "--data.sanitizer.min_pair_rate"),
        (dict(refine_rounds=-1), "--data.sanitizer.refine_rounds"),
        (dict(feature_dims=0), "--data.sanitizer.feature_dims"),
    ],
)
def test_bad_options_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        SanitizerConfig(method="confident_knn", **kwargs)


def test_k_larger_than_the_data_is_one_sentence():
    images, labels = segment_digits(8, seed=0)
    with pytest.raises(ConfigError, match="--data.sanitizer.k"):
        detect_label_flips(images, labels, k=10)
