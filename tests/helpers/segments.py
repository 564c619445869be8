"""Seven-segment digits: synthetic digits told apart by shape (not position), so deskewing and gradient features see them."""

import numpy as np
import torch

# Segments a..g of a seven-segment display: (row0, row1, col0, col1) on a 16x10 glyph.
_SEGMENTS = {
    "a": (0, 2, 1, 9),
    "b": (1, 8, 8, 10),
    "c": (8, 15, 8, 10),
    "d": (14, 16, 1, 9),
    "e": (8, 15, 0, 2),
    "f": (1, 8, 0, 2),
    "g": (7, 9, 1, 9),
}
_DIGITS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abfgcd")


def segment_digits(n: int, seed: int, noise: float = 0.15):
    """``(images (n, 1, 28, 28) float32 in [0, 1], labels (n,) int64)``: balanced classes, each glyph shifted by up to 3 px, plus noise."""
    g = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    g.shuffle(labels)
    images = g.random((n, 28, 28)) * noise
    for i, k in enumerate(labels):
        r, c = 6 + g.integers(-3, 4), 9 + g.integers(-3, 4)
        for seg in _DIGITS[k]:
            r0, r1, c0, c1 = _SEGMENTS[seg]
            images[i, r + r0 : r + r1, c + c0 : c + c1] = 0.9 + 0.1 * g.random()
    return torch.from_numpy(images.astype(np.float32)).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
