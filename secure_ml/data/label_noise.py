"""Label-flip detection by confident k-NN: neighbour votes in a digit feature space, pruned by a noise-transition estimate.

1. Features (``digit_features``): deskewed oriented-gradient histograms, PCA to ``dims``. No model
   is trained, so nothing memorises the flipped labels.
2. Out-of-sample label posteriors: each digit's ``k`` nearest *other* digits vote with their labels,
   weighted by inverse distance (leave-one-out k-NN; a digit never votes for itself).
3. Noise-transition estimate: cleanlab's confident joint (per-class confidence thresholds) counts,
   for each pair (label i, looks like j), the digits confidently seen as j but labelled i; divided by
   all digits confidently seen as j, that is the estimated rate at which class j's digits carry label
   i. A pair is *noisy* when that rate is at least ``min_pair_rate``. Targeted flips (all into one
   class) make the nine pairs into that class noisy and leave the other 81 at the feature space's
   own confusion level, so honest-but-confusable digits elsewhere are not flagged; random flips make
   every pair noisy.
4. A digit is flagged when its neighbours' majority j differs from its label i and (i, j) is a noisy
   pair, or when none of its neighbours shares its label.
5. ``refine_rounds`` times: the flagged digits' votes are withdrawn, posteriors recomputed, step 3-4
   repeated (a flipped digit no longer vouches for the digits it was flipped towards).

The proposed label of a digit (for ``action: relabel``) is its final neighbourhood majority.

Deterministic: no randomness, and the computation runs on one thread (torch and BLAS), so results do
not depend on ``torch.set_num_threads`` or the core count. Not differentially private: it reads every
training record before DP-SGD starts (ε covers the set it keeps).
"""

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from secure_ml.data.digit_features import digit_features
from secure_ml.errors import ConfigError


@dataclass
class FlipDetection:
    """What the detector found: flagged rows, a proposed label per row, and the estimated pair rates."""

    flagged: torch.Tensor  # sorted int64 row indices
    proposed: torch.Tensor  # int64 label per row: the final neighbourhood majority
    pair_rates: np.ndarray  # (C, C): estimated share of class-j digits (column) that carry label i (row)
    noisy_pairs: List[Tuple[int, int]]  # (label, looks like) pairs whose rate reached min_pair_rate


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch and BLAS on one thread (restored afterwards): float reductions then never depend on the thread count."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def loo_neighbours(features: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows (brute-force Euclidean) and their inverse-distance weights."""
    from sklearn import config_context
    from sklearn.neighbors import NearestNeighbors

    n = len(features)
    with config_context(working_memory=64):  # distance blocks of 64 MiB, not one 400 MiB matrix for 7,200 digits
        dist, idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(features).kneighbors(features)
    is_self = idx == np.arange(n)[:, None]
    is_self[~is_self.any(axis=1), -1] = True  # a row with exact duplicates may not list itself: drop its farthest
    keep = ~is_self
    idx, dist = idx[keep].reshape(n, k), dist[keep].reshape(n, k)
    return idx, 1.0 / (dist + 1e-6)


def posteriors(
    labels: np.ndarray, neighbours: np.ndarray, weights: np.ndarray, num_classes: int, voters: Optional[np.ndarray] = None
) -> np.ndarray:
    """Weighted neighbour label shares ``(N, C)``; ``voters`` (bool per row) withdraws votes, unless a row would lose all of them."""
    w = weights if voters is None else weights * voters[neighbours]
    empty = w.sum(axis=1) == 0
    w = np.where(empty[:, None], weights, w)
    votes = np.zeros((len(labels), num_classes))
    for c in range(num_classes):
        votes[:, c] = (w * (labels[neighbours] == c)).sum(axis=1)
    return votes / votes.sum(axis=1, keepdims=True)


def noisy_pair_matrix(labels: np.ndarray, probs: np.ndarray, min_pair_rate: float) -> Tuple[np.ndarray, np.ndarray]:
    """``(rates, noisy)``: cleanlab's confident joint normalised per looked-like class, and which off-diagonal pairs reach ``min_pair_rate``."""
    from cleanlab.count import compute_confident_joint

    joint = compute_confident_joint(labels, probs)
    rates = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1)
    noisy = rates >= min_pair_rate
    np.fill_diagonal(noisy, False)
    return rates, noisy


def _flags(labels: np.ndarray, probs: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    majority = probs.argmax(axis=1)
    own = probs[np.arange(len(labels)), labels]
    return ((majority != labels) & noisy[labels, majority]) | (own == 0)


def detect_label_flips(
    images: torch.Tensor,
    labels: torch.Tensor,
    k: int = 10,
    min_pair_rate: float = 0.005,
    refine_rounds: int = 1,
    dims: int = 50,
    num_classes: int = 10,
) -> FlipDetection:
    """Flag training rows whose label disagrees with similar-looking digits in a pair the noise estimate calls noisy (see the module doc)."""
    n = len(labels)
    if n <= k:
        raise ConfigError(f"--data.sanitizer.k ({k}) must be smaller than the number of training samples ({n})")
    y = labels.numpy().astype(np.int64)
    with single_threaded():
        neighbours, weights = loo_neighbours(digit_features(images, dims), k)
        probs = posteriors(y, neighbours, weights, num_classes)
        rates, noisy = noisy_pair_matrix(y, probs, min_pair_rate)
        flagged = _flags(y, probs, noisy)
        for _ in range(refine_rounds):
            probs = posteriors(y, neighbours, weights, num_classes, voters=~flagged)
            rates, noisy = noisy_pair_matrix(y, probs, min_pair_rate)
            flagged = _flags(y, probs, noisy)
    pairs = [(int(i), int(j)) for i, j in zip(*np.nonzero(noisy))]
    return FlipDetection(
        flagged=torch.from_numpy(np.flatnonzero(flagged)),
        proposed=torch.from_numpy(probs.argmax(axis=1)),
        pair_rates=rates,
        noisy_pairs=pairs,
    )
