"""Procedural handwritten-like digits: a data-independent prior for private training.

No pixel of any dataset is read. Each class has a few hand-drawn stroke templates
(:mod:`secure_ml.data.procedural_templates`); a sample jitters the control points, bends the
strokes with a smooth random warp, applies a random rotation/shear/width change, draws them with a
random pen width as an anti-aliased distance field, and is normalised the way MNIST was: the ink's
bounding box fits 20x20 pixels (aspect kept) and its centre of mass sits at the centre of 28x28.
A net pretrained on these digits starts DP-SGD from a useful point at no privacy cost (the same
reason Tramèr & Boneh 2021 use data-independent ScatterNet features, and Tang et al. 2023 learn
priors from random processes). Hand-written because no maintained library draws such digits.
"""

from functools import cache
from typing import Tuple

import torch

from secure_ml.data.procedural_templates import TEMPLATES

VERSION = 1  # bump on any change to the templates or the sampler (priors are cached under it)
SIZE = 28
BOX = 20.0  # MNIST's size-normalised box
SAMPLES_PER_SPAN = 8


def _catmull_rom(p: torch.Tensor) -> torch.Tensor:
    """Points on the Catmull-Rom spline through ``p`` (k, d), SAMPLES_PER_SPAN per span."""
    p = torch.cat([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
    t = torch.linspace(0, 1, SAMPLES_PER_SPAN + 1)[:-1, None]
    spans = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        spans.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3))
    return torch.cat(spans + [p[-2:-1]])


def _polyline(p: torch.Tensor) -> torch.Tensor:
    t = torch.linspace(0, 1, SAMPLES_PER_SPAN + 1)[:-1, None]
    return torch.cat([p[i] + (p[i + 1] - p[i]) * t for i in range(len(p) - 1)] + [p[-1:]])


@cache
def _curve_matrix(k: int, smooth: bool) -> torch.Tensor:
    """(m, k) linear map from k control points to m points on the curve (both curves are linear in their points)."""
    return (_catmull_rom if smooth else _polyline)(torch.eye(k))


def _uniform(shape, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _style_points(strokes, m: int, jitter: float, g: torch.Generator) -> torch.Tensor:
    """Segments (m, S, 2, 2) of m jittered copies of one style."""
    segs = []
    for pts, smooth in strokes:
        base = torch.tensor(pts)
        ctrl = base + jitter * torch.randn((m, *base.shape), generator=g)
        curve = _curve_matrix(len(pts), smooth) @ ctrl  # (m, c, 2)
        segs.append(torch.stack([curve[:, :-1], curve[:, 1:]], 2))
    return torch.cat(segs, 1)


def _deform(segs: torch.Tensor, g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Warp, rotate/shear/stretch, scale into the box and centre the ink's mass; returns (segments in pixels, pen widths)."""
    m = len(segs)
    pts = segs.reshape(m, -1, 2)
    freq = _uniform((m, 2, 2, 2), -6.0, 6.0, g)  # (digit, axis, wave, coordinate)
    phase = _uniform((m, 2, 2), 0.0, 6.2832, g)
    amp = _uniform((m, 2, 2), 0.0, 0.04, g)
    pts = pts + (amp[:, None] * torch.sin(torch.einsum("mpc,mawc->mpaw", pts, freq) + phase[:, None])).sum(-1)
    angle = torch.deg2rad(_uniform(m, -15.0, 15.0, g))
    shear, stretch = _uniform(m, -0.35, 0.35, g), _uniform(m, 0.6, 1.25, g)
    rot = torch.stack([torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)], 1).reshape(m, 2, 2)
    lin = torch.zeros(m, 2, 2)
    lin[:, 0, 0], lin[:, 0, 1], lin[:, 1, 1] = stretch, shear, 1.0
    pts = (pts - 0.5) @ (rot @ lin).transpose(1, 2)
    width = _uniform(m, 1.2, 4.0, g)
    lo, hi = pts.min(1).values, pts.max(1).values
    scale = (BOX - width) / (hi - lo).max(1).values.clamp_min(1e-3)
    pts = (pts - (lo + hi)[:, None] / 2) * scale[:, None, None]
    segs = pts.reshape(segs.shape)
    length = (segs[:, :, 1] - segs[:, :, 0]).norm(dim=-1)
    com = ((segs[:, :, 0] + segs[:, :, 1]) / 2 * length[..., None]).sum(1) / length.sum(1, keepdim=True).clamp_min(1e-6)
    return segs - com[:, None, None], width


def _grid() -> torch.Tensor:
    c = torch.arange(SIZE) + 0.5 - SIZE / 2
    return torch.stack(torch.meshgrid(c, c, indexing="xy"), -1).reshape(-1, 2)


def _render(segs: torch.Tensor, width: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Ink in [0, 1] of every pixel: a round pen of ``width`` pixels with a one-pixel soft edge."""
    grid = _grid()
    out = []
    for s in range(0, len(segs), chunk):
        a, b = segs[s : s + chunk, :, 0], segs[s : s + chunk, :, 1]
        ab = b - a
        ap = grid[None, :, None, :] - a[:, None]  # (m, pixels, segments, 2)
        t = ((ap * ab[:, None]).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)[:, None]).clamp(0, 1)
        dist = (ap - t[..., None] * ab[:, None]).square().sum(-1).min(-1).values.sqrt()
        out.append((width[s : s + chunk, None] / 2 - dist + 0.5).clamp(0, 1))
    return torch.cat(out).reshape(-1, 1, SIZE, SIZE)


def procedural_digits(n: int, generator: torch.Generator, jitter: float = 0.045) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` digits (float32 (n, 1, 28, 28) in [0, 1]) with balanced labels (int64 (n,)), drawn from ``generator``."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    labels = torch.arange(n) % 10
    images = torch.zeros(n, 1, SIZE, SIZE)
    for label in range(10):
        rows = torch.nonzero(labels == label).squeeze(1)
        styles = TEMPLATES[label]
        choice = torch.randint(len(styles), (len(rows),), generator=generator)
        for s, strokes in enumerate(styles):
            idx = rows[choice == s]
            if len(idx):
                segs, width = _deform(_style_points(strokes, len(idx), jitter, generator), generator)
                images[idx] = _render(segs, width)
    return images, labels
