"""Data-independent digit features for label-noise detection: deskewing, oriented-gradient histograms, PCA.

A label flip does not change pixels, so a detector must ask whether a digit's label agrees with
digits that *look* like it. Raw pixel distances confuse slanted or shifted digits; two classic,
training-free fixes bring leave-one-out k-NN on 7,200 MNIST digits from 93% to 98.5% accuracy:

* deskewing (LeCun et al.): recentre each digit on its centre of mass and undo its shear, from
  the image's second moments;
* histograms of oriented gradients (Dalal & Triggs): gradient magnitude, soft-binned into
  ``bins`` signed orientations, averaged over overlapping cells, square-rooted and L2-normalised.

We write them here (about 40 lines of batched torch) rather than use ``skimage.feature.hog``:
that one loops over images in Python (seconds per thousand digits) and would add a dependency.
PCA is scikit-learn's, with the deterministic covariance eigensolver.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

CHUNK = 512  # images per batch: keeps the (chunk, bins, H, W) histogram in cache-sized memory


def deskew(images: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` in [0, 1] → the same digits recentred on their centre of mass with their shear undone (bilinear)."""
    img = images[:, 0].to(torch.float32)
    _, h, w = img.shape
    rows = torch.arange(h, dtype=torch.float32)
    cols = torch.arange(w, dtype=torch.float32)
    total = img.sum((1, 2)).clamp_min(1e-6)
    m_r = (img.sum(2) * rows).sum(1) / total
    m_c = (img.sum(1) * cols).sum(1) / total
    d_r = rows[None, :, None] - m_r[:, None, None]
    d_c = cols[None, None, :] - m_c[:, None, None]
    var_r = (d_r**2 * img).sum((1, 2)) / total
    cov = (d_r * d_c * img).sum((1, 2)) / total
    shear = cov / var_r.clamp_min(1e-6)
    ii, jj = torch.meshgrid(rows, cols, indexing="ij")
    c_r, c_c = (h - 1) / 2, (w - 1) / 2
    # Output pixel (i, j) reads the input at (i - c + m_r, j + shear * (i - c) - c + m_c).
    src_r = ii[None] - c_r + m_r[:, None, None]
    src_c = jj[None] + shear[:, None, None] * (ii[None] - c_r) - c_c + m_c[:, None, None]
    grid = torch.stack([src_c / (w - 1) * 2 - 1, src_r / (h - 1) * 2 - 1], dim=-1)
    return F.grid_sample(img[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def oriented_gradients(images: torch.Tensor, bins: int = 12, cell: int = 3) -> torch.Tensor:
    """``(N, 1, H, W)`` → ``(N, F)``: signed gradient orientations soft-binned into ``bins``, pooled over 2·cell-pixel cells at stride ``cell``."""
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.t()]).unsqueeze(1)
    out = []
    for start in range(0, len(images), CHUNK):
        x = images[start : start + CHUNK].to(torch.float32)
        g = F.conv2d(x, kernels, padding=1)
        gx, gy = g[:, :1], g[:, 1:]
        magnitude = torch.sqrt(gx * gx + gy * gy)
        position = torch.remainder(torch.atan2(gy, gx), 2 * math.pi) * (bins / (2 * math.pi))
        low = position.floor()
        frac = position - low
        low = low.to(torch.int64) % bins
        hist = torch.zeros(x.shape[0], bins, x.shape[2], x.shape[3])
        hist.scatter_add_(1, low, magnitude * (1 - frac))
        hist.scatter_add_(1, (low + 1) % bins, magnitude * frac)
        pooled = F.avg_pool2d(hist, kernel_size=2 * cell, stride=cell, padding=cell // 2)
        flat = torch.sqrt(pooled).reshape(x.shape[0], -1)
        out.append(flat / (flat.norm(dim=1, keepdim=True) + 1e-8))
    return torch.cat(out)


def digit_features(images: torch.Tensor, dims: int = 50) -> np.ndarray:
    """Deskew → oriented-gradient histograms → PCA to ``dims`` components (fewer when there are fewer samples); float64 ``(N, dims)``."""
    from sklearn.decomposition import PCA

    hog = oriented_gradients(deskew(images)).numpy().astype(np.float64)
    dims = max(1, min(dims, hog.shape[0] - 1, hog.shape[1]))
    return PCA(n_components=dims, svd_solver="covariance_eigh").fit_transform(hog)
