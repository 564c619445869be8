"""Procedural handwritten-like digits: a data-independent prior (no MNIST pixel is read).

Each class has a few stroke templates (control points in a unit box, y down). A sample jitters the
control points, applies a random affine map, draws the strokes with a random pen width as a distance
field (anti-aliased), and normalises like MNIST: the ink's bounding box is fit into 20x20 pixels
(aspect kept) and the centre of mass is put at the centre of the 28x28 image.
"""

import math

import torch

VERSION = 2  # bump when the templates or the sampler change (the cache of generated digits is keyed on it)

# (points, smooth): smooth strokes are Catmull-Rom splines through the points, the others polylines.
T = {
    0: [
        [([(0.5, 0.0), (0.85, 0.2), (0.9, 0.55), (0.7, 0.95), (0.35, 0.98), (0.1, 0.65), (0.15, 0.25), (0.5, 0.0), (0.75, 0.12)], True)],
        [([(0.55, 0.02), (0.9, 0.35), (0.75, 0.9), (0.3, 0.95), (0.1, 0.5), (0.3, 0.08), (0.6, 0.0)], True)],
    ],
    1: [
        [([(0.5, 0.0), (0.5, 1.0)], False)],
        [([(0.3, 0.2), (0.55, 0.0), (0.5, 1.0)], False)],
        [([(0.3, 0.2), (0.55, 0.0), (0.5, 1.0)], False), ([(0.25, 1.0), (0.75, 1.0)], False)],
    ],
    2: [
        [([(0.12, 0.25), (0.4, 0.0), (0.78, 0.08), (0.8, 0.38), (0.45, 0.7), (0.08, 1.0)], True), ([(0.08, 1.0), (0.92, 0.97)], False)],
        [([(0.15, 0.2), (0.45, 0.0), (0.8, 0.15), (0.7, 0.5), (0.15, 0.95), (0.3, 0.78), (0.5, 0.9), (0.92, 0.97)], True)],
    ],
    3: [
        [
            ([(0.12, 0.12), (0.5, 0.0), (0.82, 0.17), (0.72, 0.42), (0.38, 0.5)], True),
            ([(0.38, 0.5), (0.8, 0.6), (0.85, 0.85), (0.5, 1.0), (0.1, 0.88)], True),
        ],
        [([(0.15, 0.05), (0.85, 0.05), (0.45, 0.45)], False), ([(0.45, 0.45), (0.85, 0.65), (0.75, 0.95), (0.4, 1.0), (0.1, 0.85)], True)],
    ],
    4: [
        [([(0.62, 0.0), (0.08, 0.66), (0.92, 0.66)], False), ([(0.7, 0.3), (0.68, 1.0)], False)],
        [([(0.2, 0.0), (0.12, 0.6), (0.9, 0.58)], False), ([(0.78, 0.0), (0.72, 1.0)], False)],
        [([(0.2, 0.0), (0.15, 0.5), (0.45, 0.62), (0.9, 0.52)], True), ([(0.8, 0.05), (0.75, 1.0)], False)],
    ],
    5: [
        [
            ([(0.88, 0.0), (0.28, 0.0), (0.22, 0.45)], False),
            ([(0.22, 0.45), (0.55, 0.36), (0.85, 0.6), (0.72, 0.95), (0.35, 1.0), (0.1, 0.85)], True),
        ],
        [
            ([(0.25, 0.0), (0.2, 0.45)], False),
            ([(0.25, 0.0), (0.85, 0.02)], False),
            ([(0.2, 0.45), (0.6, 0.4), (0.85, 0.7), (0.55, 1.0), (0.12, 0.9)], True),
        ],
    ],
    6: [
        [
            (
                [(0.72, 0.0), (0.35, 0.25), (0.15, 0.65), (0.3, 0.96), (0.62, 0.98), (0.8, 0.75), (0.6, 0.55), (0.32, 0.58), (0.18, 0.72)],
                True,
            )
        ],
        [([(0.6, 0.0), (0.3, 0.4), (0.2, 0.8), (0.45, 1.0), (0.75, 0.85), (0.65, 0.6), (0.35, 0.65)], True)],
    ],
    7: [
        [([(0.08, 0.02), (0.92, 0.0), (0.4, 1.0)], False)],
        [([(0.08, 0.02), (0.92, 0.0), (0.4, 1.0)], False), ([(0.35, 0.5), (0.8, 0.48)], False)],
        [([(0.1, 0.1), (0.3, 0.0), (0.92, 0.02)], True), ([(0.92, 0.02), (0.6, 0.45), (0.45, 1.0)], True)],
    ],
    8: [
        [([(0.5, 0.48), (0.8, 0.24), (0.5, 0.0), (0.2, 0.22), (0.5, 0.48), (0.86, 0.75), (0.5, 1.0), (0.14, 0.75), (0.5, 0.48)], True)],
        [
            ([(0.5, 0.45), (0.75, 0.22), (0.5, 0.0), (0.25, 0.22), (0.5, 0.45)], True),
            ([(0.5, 0.45), (0.85, 0.72), (0.5, 1.0), (0.15, 0.72), (0.5, 0.45)], True),
        ],
    ],
    9: [
        [([(0.82, 0.28), (0.5, 0.48), (0.2, 0.3), (0.45, 0.0), (0.8, 0.12), (0.82, 0.28)], True), ([(0.82, 0.2), (0.75, 1.0)], False)],
        [([(0.8, 0.25), (0.5, 0.45), (0.2, 0.28), (0.5, 0.0), (0.8, 0.2)], True), ([(0.8, 0.2), (0.7, 0.7), (0.45, 1.0)], True)],
    ],
}

# More styles seen among real handwriting (kept apart so the first set stays readable).
EXTRA = {
    2: [
        [
            (
                [
                    (0.1, 0.3),
                    (0.25, 0.05),
                    (0.6, 0.0),
                    (0.8, 0.25),
                    (0.6, 0.6),
                    (0.2, 0.9),
                    (0.1, 0.8),
                    (0.3, 0.72),
                    (0.6, 0.95),
                    (0.95, 0.95),
                ],
                True,
            )
        ]
    ],
    3: [[([(0.1, 0.2), (0.35, 0.0), (0.75, 0.05), (0.75, 0.35), (0.35, 0.48), (0.8, 0.6), (0.85, 0.85), (0.5, 1.0), (0.1, 0.88)], True)]],
    5: [
        [([(0.3, 0.02), (0.22, 0.5), (0.6, 0.42), (0.85, 0.7), (0.6, 0.98), (0.15, 0.9)], True), ([(0.3, 0.02), (0.9, 0.0)], False)],
        [([(0.85, 0.0), (0.3, 0.05), (0.25, 0.45), (0.65, 0.45), (0.8, 0.72), (0.6, 0.95), (0.2, 0.95)], True)],
    ],
    7: [
        [([(0.05, 0.22), (0.12, 0.02), (0.92, 0.0)], False), ([(0.92, 0.0), (0.55, 0.5), (0.42, 1.0)], True)],
        [([(0.1, 0.05), (0.9, 0.05), (0.7, 0.4), (0.55, 1.0)], True)],
    ],
    8: [
        [
            (
                [
                    (0.82, 0.12),
                    (0.5, 0.0),
                    (0.2, 0.15),
                    (0.35, 0.4),
                    (0.7, 0.6),
                    (0.8, 0.85),
                    (0.5, 1.0),
                    (0.2, 0.85),
                    (0.3, 0.6),
                    (0.65, 0.35),
                    (0.8, 0.12),
                ],
                True,
            )
        ],
        [
            (
                [
                    (0.6, 0.45),
                    (0.8, 0.2),
                    (0.55, 0.0),
                    (0.3, 0.15),
                    (0.45, 0.45),
                    (0.75, 0.7),
                    (0.55, 1.0),
                    (0.2, 0.85),
                    (0.35, 0.6),
                    (0.6, 0.45),
                ],
                True,
            )
        ],
    ],
    9: [
        [
            ([(0.8, 0.15), (0.5, 0.0), (0.2, 0.2), (0.35, 0.45), (0.75, 0.35), (0.8, 0.15)], True),
            ([(0.8, 0.15), (0.8, 0.6), (0.6, 1.0)], True),
        ]
    ],
    0: [[([(0.6, 0.0), (0.2, 0.2), (0.1, 0.65), (0.4, 1.0), (0.8, 0.8), (0.85, 0.3), (0.6, 0.0)], True)]],
    6: [[([(0.8, 0.05), (0.45, 0.1), (0.2, 0.5), (0.25, 0.9), (0.6, 1.0), (0.8, 0.75), (0.55, 0.5), (0.2, 0.65)], True)]],
    4: [[([(0.45, 0.0), (0.1, 0.6), (0.95, 0.6)], False), ([(0.65, 0.2), (0.62, 1.0)], False)]],
    1: [[([(0.6, 0.0), (0.45, 1.0)], True)]],
}
for _c, _styles in EXTRA.items():
    T[_c] = T[_c] + _styles


def _catmull_rom(p, n=16):
    """Points on the Catmull-Rom spline through p (k, 2), n per segment."""
    p = torch.cat([p[:1] * 2 - p[1:2], p, p[-1:] * 2 - p[-2:-1]])
    t = torch.linspace(0, 1, n + 1)[:-1, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    out.append(p[-2:-1])
    return torch.cat(out)


def _polyline(p, n=16):
    t = torch.linspace(0, 1, n + 1)[:-1, None]
    return torch.cat([p[i] + (p[i + 1] - p[i]) * t for i in range(len(p) - 1)] + [p[-1:]])


def _segments(label, g, jitter):
    styles = T[label]
    strokes = styles[int(torch.randint(len(styles), (1,), generator=g))]
    segs = []
    for pts, smooth in strokes:
        p = torch.tensor(pts) + jitter * torch.randn(len(pts), 2, generator=g)
        c = _catmull_rom(p) if smooth else _polyline(p)
        segs.append(torch.stack([c[:-1], c[1:]], 1))
    return torch.cat(segs)  # (S, 2, 2)


def _warp(segs, g, amp=0.04):
    """A smooth random displacement (two sine waves per axis) of every point."""
    out = segs.clone()
    for axis in (0, 1):
        for _ in range(2):
            w = (torch.rand(2, generator=g) * 2 - 1) * 6.0
            ph = float(torch.rand(1, generator=g)) * 6.283
            a = amp * float(torch.rand(1, generator=g))
            out[..., axis] = out[..., axis] + a * torch.sin(segs @ w + ph)
    return out


def _affine(segs, g):
    r = lambda lo, hi: lo + (hi - lo) * float(torch.rand(1, generator=g))  # noqa: E731
    a = math.radians(r(-15, 15))
    sh = r(-0.35, 0.35)
    sx = r(0.6, 1.25)
    m = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ torch.tensor([[sx, sh], [0.0, 1.0]])
    return (segs - 0.5) @ m.T


def _render(segs, width, grid):
    """Ink in [0, 1] of each grid point (P, 2) for segments (S, 2, 2): a pen of `width` with a 1-pixel soft edge."""
    a, b = segs[:, 0], segs[:, 1]
    ab = b - a
    ap = grid[:, None, :] - a[None]
    t = ((ap * ab[None]).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)[None]).clamp(0, 1)
    d = (ap - t[..., None] * ab[None]).norm(dim=-1).min(1).values
    return (width / 2 - d + 0.5).clamp(0, 1)


def _geometry(label, g, jitter):
    """Segments in output pixels (centre of mass of the ink near the image centre) and the pen width."""
    segs = _affine(_warp(_segments(label, g, jitter), g), g)
    width = 1.2 + 2.8 * float(torch.rand(1, generator=g))  # pen width in output pixels
    pts = segs.reshape(-1, 2)
    lo, hi = pts.min(0).values, pts.max(0).values
    scale = (20 - width) / (hi - lo).max().clamp_min(1e-3)
    segs = (segs - (lo + hi) / 2) * scale
    length = (segs[:, 1] - segs[:, 0]).norm(dim=-1)
    com = ((segs[:, 0] + segs[:, 1]) / 2 * length[:, None]).sum(0) / length.sum().clamp_min(1e-6)  # ink's centre of mass
    return segs - com, width


_GRID = torch.stack(torch.meshgrid(torch.arange(28) + 0.5 - 14, torch.arange(28) + 0.5 - 14, indexing="xy"), -1).reshape(-1, 2)


def _render_batch(geoms):
    """Ink of each pixel for a batch of (segments, width): a pen with a 1-pixel soft edge."""
    s_max = max(len(s) for s, _ in geoms)
    segs = torch.full((len(geoms), s_max, 2, 2), 1e3)
    for i, (s, _) in enumerate(geoms):
        segs[i, : len(s)] = s
    width = torch.tensor([w for _, w in geoms])
    a, b = segs[:, :, 0], segs[:, :, 1]  # (M, S, 2)
    ab = b - a
    ap = _GRID[None, :, None, :] - a[:, None]  # (M, P, S, 2)
    t = ((ap * ab[:, None]).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)[:, None]).clamp(0, 1)
    d = (ap - t[..., None] * ab[:, None]).norm(dim=-1).min(-1).values  # (M, P)
    return (width[:, None] / 2 - d + 0.5).clamp(0, 1).reshape(-1, 1, 28, 28)


def digit(label, g, jitter=0.045):
    """One 28x28 image in [0, 1] of class `label`."""
    return _render_batch([_geometry(label, g, jitter)])[0]


def dataset(n, seed=0, batch=128):
    """n synthetic digits (balanced classes) and their labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    xs = []
    for i in range(0, n, batch):
        xs.append(_render_batch([_geometry(int(c), g, 0.045) for c in y[i : i + batch]]))
    return torch.cat(xs), y


if __name__ == "__main__":
    import sys

    x, y = dataset(100, 1)
    import numpy as np

    rows = [torch.cat(list(x[i * 10 : (i + 1) * 10, 0]), 1) for i in range(10)]
    img = (torch.cat(rows, 0).numpy() * 255).astype(np.uint8)
    from PIL import Image

    Image.fromarray(img).resize((560, 560), Image.NEAREST).save(sys.argv[1] if len(sys.argv) > 1 else "/tmp/synth.png")
