"""Per-layer book-keeping maths: per-sample squared gradient norms and clipped sums from (activation, output-gradient) pairs.

Each supported layer type has one function ``f(module, calls) -> (sq_norms, clip)``:

- ``calls`` is a list of ``(a, g)``, one per forward call of the layer recorded in the step
  (the clean and the adversarial forward of a mixed loss are two calls; so is a layer applied
  twice in one forward): ``a`` the layer's input, ``g`` the gradient of the summed per-sample
  loss with respect to the layer's output. All calls of one step share the batch axis (dim 0).
- ``sq_norms`` is ``(B,)``: each sample's squared gradient norm over this layer's trainable parameters,
  ``‖Σ_calls G_i‖²`` — so cross terms between calls (clean × adversarial) are included.
- ``clip(c)`` returns ``{param name: Σ_i c_i · G_i}`` for a ``(B,)`` vector of clip factors ``c``.

Per weight, the squared norm comes from whichever is cheaper (as in fastDP, Bu et al. 2023):
the *ghost norm* ``Σ_{t,s} (a_t·a_s)(g_t·g_s)`` (cost ∝ T²(d+p), T positions over all calls)
or the materialised per-sample gradient ``G_i = Σ_t g_t a_tᵀ`` (cost ∝ T·d·p). With T = 1 the
ghost norm is ``‖a‖²‖g‖²``. A ghost-norm weight's clipped sum is the layer's ordinary weight
gradient with ``g`` scaled by ``c`` (one matmul / one convolution backward); a materialised one is
``einsum(c, G)``; a convolution's ``G`` comes from im2col and one batched matmul when its input patch is
small (``IM2COL_MAX_PATCH``), else from one grouped convolution backward. Written here rather than taken from a library: Opacus's ghost clipping needs a
second backward pass and fastDP is not packaged for current torch.
"""

import operator
from functools import reduce
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Calls = List[Tuple[Tensor, Tensor]]
Clip = Callable[[Tensor], Dict[str, Tensor]]


def _trainable(module: nn.Module, name: str) -> bool:
    p = getattr(module, name, None)
    return p is not None and p.requires_grad


def _ghost_cheaper(t: int, d: int, p: int) -> bool:
    """Ghost norm T²(d+p) against materialising T·d·p (per sample, per group)."""
    return t * (d + p) < d * p


# Per-sample conv weight gradients: im2col + one batched matmul when a group's input patch is this small
# (d = C_in/G · kh · kw), else one grouped convolution backward. Measured side by side on the 2-core CPU (batch 64,
# 3×3 kernels, 28/14/7-pixel maps): im2col is 4.6× faster at C_in = 1 (SmallCNN's conv1: 0.22 against 1.00 ms),
# still ahead or level up to C_in = 4 (d = 36), and 2–15× slower from C_in = 8, where the grouped kernel wins.
IM2COL_MAX_PATCH = 36
# im2col holds kh·kw copies of the layer's input: above this many elements (512 MiB of float32) the grouped kernel is used.
IM2COL_MAX_ELEMENTS = 2**27


def _im2col_cheaper(d: int, elements: int) -> bool:
    return d <= IM2COL_MAX_PATCH and elements <= IM2COL_MAX_ELEMENTS


def _pair_norms(a: Tensor, g: Tensor) -> Tensor:
    """``Σ_{t,s} (a_t·a_s)(g_t·g_s)`` for a ``(N, T, d)`` and g ``(N, T, p)``, returned as ``(N,)``."""
    if a.shape[1] == 1:
        return a.square().sum((1, 2)) * g.square().sum((1, 2))
    return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))


def _cat(ts: List[Tensor], dim: int) -> Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts, dim)


def linear(m: nn.Linear, calls: Calls) -> Tuple[Tensor, Clip]:
    a = [x.reshape(x.shape[0], -1, x.shape[-1]) for x, _ in calls]  # (B, T, d)
    g = [y.reshape(y.shape[0], -1, y.shape[-1]) for _, y in calls]  # (B, T, p)
    sq = a[0].new_zeros(a[0].shape[0])
    parts: Dict[str, Callable[[Tensor], Tensor]] = {}
    if _trainable(m, "weight"):
        t = sum(x.shape[1] for x in a)
        if _ghost_cheaper(t, m.in_features, m.out_features):
            a_all, g_all = _cat(a, 1), _cat(g, 1)
            sq = sq + _pair_norms(a_all, g_all)
            parts["weight"] = lambda c: (g_all * c[:, None, None]).flatten(0, 1).t() @ a_all.flatten(0, 1)
        else:
            per_sample = sum(torch.bmm(gi.transpose(1, 2), ai) for ai, gi in zip(a, g))  # (B, p, d)
            sq = sq + per_sample.square().sum((1, 2))
            parts["weight"] = lambda c: torch.einsum("b,bpd->pd", c, per_sample)
    if _trainable(m, "bias"):
        gb = sum(gi.sum(1) for gi in g)  # (B, p)
        sq = sq + gb.square().sum(1)
        parts["bias"] = lambda c: c @ gb
    return sq, lambda c: {k: f(c) for k, f in parts.items()}


def _padded(m: nn.Conv2d, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
    """The input as the convolution sees it and the padding still to apply (non-zero modes and 'same' pad first)."""
    if m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return x, m.padding
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    return F.pad(x, m._reversed_padding_repeated_twice, mode=mode), (0, 0)


def _patches(m: nn.Conv2d, x: Tensor, pad: Tuple[int, int], out_hw: Tuple[int, int]) -> Tensor:
    """im2col as ``(B·G, C_in/G·kh·kw, L)``: a strided view of the padded input, copied once (``F.unfold`` is ~2× slower on CPU)."""
    if any(pad):
        x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
    b, c = x.shape[:2]
    (kh, kw), (dh, dw), (sh, sw) = m.kernel_size, m.dilation, m.stride
    s = x.stride()
    view = x.as_strided((b, c, kh, kw, *out_hw), (s[0], s[1], s[2] * dh, s[3] * dw, s[2] * sh, s[3] * sw))
    return view.reshape(b * m.groups, -1, out_hw[0] * out_hw[1])


def _per_sample_weight(m: nn.Conv2d, x: Tensor, pad: Tuple[int, int], y: Tensor, gy: Tensor) -> Tensor:
    """One call's per-sample weight gradients ``(B, C_out·d)``: im2col + one bmm for small patches, else a grouped convolution."""
    b, cout, d = y.shape[0], m.out_channels, m.weight[0].numel()
    if _im2col_cheaper(d, b * m.groups * d * y.shape[2] * y.shape[3]):
        return torch.bmm(gy.flatten(0, 1), _patches(m, x, pad, y.shape[2:]).transpose(1, 2)).view(b, -1)
    # The weight gradient of the same convolution with the batch folded into the channels and B·G groups (only the
    # weight's shape is read, hence the stride-0 stand-in).
    return torch.ops.aten.convolution_backward(
        y.reshape(1, b * cout, *y.shape[2:]),
        x.reshape(1, -1, *x.shape[2:]),
        y.new_empty(1).expand(b * cout, *m.weight.shape[1:]),
        None,
        m.stride,
        pad,
        m.dilation,
        False,
        (0, 0),
        b * m.groups,
        (False, True, False),
    )[1].view(b, -1)


def conv2d(m: nn.Conv2d, calls: Calls) -> Tuple[Tensor, Clip]:
    groups, cout = m.groups, m.out_channels
    b = calls[0][0].shape[0]
    xs = [_padded(m, x) for x, _ in calls]
    gs = [y.reshape(b, groups, cout // groups, -1) for _, y in calls]  # (B, G, p, L)
    sq = gs[0].new_zeros(b)
    parts: Dict[str, Callable[[Tensor], Tensor]] = {}
    if _trainable(m, "weight"):
        d = m.weight[0].numel()  # C_in/G · kh · kw
        t = sum(g.shape[-1] for g in gs)
        if _ghost_cheaper(t, d, cout // groups):
            a_all = _cat([_patches(m, x, pad, y.shape[2:]) for (x, pad), (_, y) in zip(xs, calls)], 2).transpose(1, 2)  # (B·G, T, d)
            g_all = _cat(gs, 3).flatten(0, 1).transpose(1, 2)  # (B·G, T, p)
            sq = sq + _pair_norms(a_all, g_all).view(b, groups).sum(1)
            del a_all, g_all

            def weight(c: Tensor) -> Tensor:
                out = None
                for (x, pad), (_, y) in zip(xs, calls):  # the ordinary weight gradient of c-scaled output gradients
                    w = torch.ops.aten.convolution_backward(
                        y * c.view(-1, 1, 1, 1), x, m.weight, None, m.stride, pad, m.dilation, False, (0, 0), groups, (False, True, False)
                    )[1]
                    out = w if out is None else out + w
                return out

            parts["weight"] = weight
        else:
            per_sample = reduce(operator.add, (_per_sample_weight(m, x, pad, y, gy) for (x, pad), (_, y), gy in zip(xs, calls, gs)))
            sq = sq + per_sample.square().sum(1)
            parts["weight"] = lambda c: (c @ per_sample).view_as(m.weight)
    if _trainable(m, "bias"):
        gb = sum(g.sum(3) for g in gs).view(b, cout)
        sq = sq + gb.square().sum(1)
        parts["bias"] = lambda c: c @ gb
    return sq, lambda c: {k: f(c) for k, f in parts.items()}


def _sum(t: Tensor, dims: Tuple[int, ...]) -> Tensor:
    return t.sum(dims) if dims else t  # t.sum(()) would reduce every dimension


def _affine(m: nn.Module, calls: Calls, normalise: Callable[[Tensor], Tensor], reduce_dims: Callable[[Tensor], Tuple[int, ...]]):
    """Elementwise-affine norms: per-sample grads are ``Σ g·x̂`` (weight) and ``Σ g`` (bias), always small enough to materialise."""
    b = calls[0][0].shape[0]
    per_sample: Dict[str, Tensor] = {}
    with torch.no_grad():
        if _trainable(m, "weight"):
            per_sample["weight"] = sum(_sum(y * normalise(x), reduce_dims(x)) for x, y in calls)
        if _trainable(m, "bias"):
            per_sample["bias"] = sum(_sum(y, reduce_dims(x)) for x, y in calls)
    sq = sum((v.reshape(b, -1).square().sum(1) for v in per_sample.values()), calls[0][1].new_zeros(b))
    return sq, lambda c: {k: torch.einsum("b,b...->...", c, v) for k, v in per_sample.items()}


def group_norm(m: nn.GroupNorm, calls: Calls) -> Tuple[Tensor, Clip]:
    return _affine(
        m,
        calls,
        lambda x: F.group_norm(x, m.num_groups, None, None, m.eps),
        lambda x: tuple(range(2, x.dim())),
    )


def layer_norm(m: nn.LayerNorm, calls: Calls) -> Tuple[Tensor, Clip]:
    n = len(m.normalized_shape)
    return _affine(m, calls, lambda x: F.layer_norm(x, m.normalized_shape, None, None, m.eps), lambda x: tuple(range(1, x.dim() - n)))


LAYERS: Dict[type, Callable[[nn.Module, Calls], Tuple[Tensor, Clip]]] = {
    nn.Linear: linear,
    nn.Conv2d: conv2d,
    nn.GroupNorm: group_norm,
    nn.LayerNorm: layer_norm,
}
