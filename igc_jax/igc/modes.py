"""Ways to compute one IGC layer. All take the same parameters and give the same result.

Each mode is a pure function `(x, primary, secondary, *, L, M, strides, padding) -> y` with
x NHWC, primary (kh, kw, C_in/L, C) with L groups, secondary (1, 1, C/M, C) with M groups,
padding explicit ((top, bottom), (left, right)) so strided layers match the official code's
symmetric padding (XLA's 'SAME' pads stride-2 layers asymmetrically).

- `grouped`:  two grouped XLA convolutions with the shuffles between (the paper, literally).
- `composed`: compose the dense kernel W = Pᵀ W^d P W^p, then one dense convolution.
- `taps`:     primary conv as fused multiply-adds of shifted channel-major planes (hand-written
              VJP), then shuffle·secondary·shuffle as one C×C matmul; for small groups (C_in/L).
- `split`:    primary conv as L dense convolutions on the groups' channels, then the same matmul;
              for few, wide groups.
- `grouped_mix`: primary conv as one grouped XLA convolution, then the same matmul: `grouped`
              without its second grouped convolution and the two shuffles (a candidate of the
              autotuner, `igc_jax.igc.autotune`).
- `native`:   primary conv by a C++ XLA FFI kernel (igc_jax/native, CPU), then the same matmul
              with its weight gradient in C++ too; the fastest on CPU for all but wide groups.
Which one a layer uses is decided in `igc_jax.igc.select` (`auto`'s rules) or measured by
`igc_jax.igc.autotune`.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from igc_jax.igc import kernels, native

Padding = Sequence[tuple[int, int]]
_DN = ("NHWC", "HWIO", "NHWC")


def conv(x, kernel, strides=(1, 1), padding: Padding = ((0, 0), (0, 0)), groups: int = 1):
    """A (grouped) convolution, NHWC × HWIO, explicit padding."""
    return lax.conv_general_dilated(
        x, kernel, window_strides=tuple(strides), padding=tuple(map(tuple, padding)),
        dimension_numbers=_DN, feature_group_count=groups)


def pointwise_grouped(x, kernel, groups: int):
    """A 1×1 grouped convolution as a matmul batched over the groups."""
    _, _, cg, C = kernel.shape
    w = kernel.reshape(cg, groups, C // groups).transpose(1, 0, 2)  # (g, c_in, c_out)
    xg = x.reshape(*x.shape[:-1], groups, cg)
    y = jnp.einsum("...gc,gco->...go", xg, w)
    return y.reshape(*x.shape[:-1], C)


def igc_grouped(x, primary, secondary, *, L, M, strides=(1, 1), padding=((1, 1), (1, 1))):
    y = conv(x, primary, strides, padding, groups=L)
    y = kernels.shuffle(y, L)
    y = conv(y, secondary, groups=M)
    return kernels.shuffle(y, M)


def igc_composed(x, primary, secondary, *, L, M, strides=(1, 1), padding=((1, 1), (1, 1))):
    return conv(x, kernels.compose_kernel(primary, secondary, L, M), strides, padding)


def _window(xp, i: int, j: int, Ho: int, Wo: int, strides):
    """The (i, j) tap's strided window of a padded (..., Hp, Wp) array: (..., Ho, Wo)."""
    sh, sw = strides
    return xp[..., i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw]


def _pad_hw(x, padding):
    return jnp.pad(x, ((0, 0),) * (x.ndim - 2) + tuple(map(tuple, padding)))


def _accumulator(dtype):
    """Sums in at least float32 (bfloat16 inputs), in float64 when x64 inputs come in."""
    return jnp.promote_types(dtype, jnp.float32)


def _taps_forward(xc, primary, L, strides, padding):
    """Primary conv on channel-major x (C_in, N, H, W) -> (C, N, Ho, Wo), as fused multiply-adds.

    Every output plane (l, o) is a sum of kh·kw·C_in/L shifted input planes times scalar weights:
    one elementwise XLA fusion, vectorised along image rows, reading x once; no grouped conv.
    """
    kh, kw, cin_g, C = primary.shape
    acc = _accumulator(xc.dtype)
    xp = _pad_hw(xc, padding)
    xp = xp.reshape(L, cin_g, *xp.shape[1:])
    Ho = (xp.shape[3] - kh) // strides[0] + 1
    Wo = (xp.shape[4] - kw) // strides[1] + 1
    w = primary.astype(acc).reshape(kh, kw, cin_g, L, C // L)[..., None, None, None]
    y = jnp.zeros((L, C // L, xc.shape[1], Ho, Wo), acc)
    for i in range(kh):
        for j in range(kw):
            v = _window(xp, i, j, Ho, Wo, strides).astype(acc)
            for c in range(cin_g):
                y = y + v[:, c, None] * w[i, j, c]
    return y.reshape(C, *y.shape[2:]).astype(xc.dtype)


def _taps_input_grad(dy, primary, L, strides, padding, in_shape):
    """Gradient w.r.t. x: the transposed conv, again as fused multiply-adds (flipped taps).

    dy is dilated by the stride (interior padding) and padded so that a stride-1 window of the
    flipped kernel lands on x's grid: dx[h] = Σ_i dyd[h + i] · w[kh - 1 - i].
    """
    kh, kw, cin_g, C = primary.shape
    C_in, N, H, W = in_shape
    acc = _accumulator(dy.dtype)
    Ho, Wo = dy.shape[2:]
    (pt, _), (pl, _) = padding
    sh, sw = strides
    cfg_h = (kh - 1 - pt, H - 1 + pt - (Ho - 1) * sh, sh - 1)
    cfg_w = (kw - 1 - pl, W - 1 + pl - (Wo - 1) * sw, sw - 1)
    dyd = lax.pad(dy, jnp.zeros((), dy.dtype), ((0, 0, 0), (0, 0, 0), cfg_h, cfg_w))
    dyd = dyd.reshape(L, C // L, N, H + kh - 1, W + kw - 1)
    w = primary.astype(acc).reshape(kh, kw, cin_g, L, C // L).transpose(0, 1, 4, 3, 2)
    w = w[..., None, None, None]  # (kh, kw, cout_g, L, cin_g, 1, 1, 1)
    dx = jnp.zeros((L, cin_g, N, H, W), acc)
    for i in range(kh):
        for j in range(kw):
            v = dyd[..., i:i + H, j:j + W].astype(acc)
            for o in range(C // L):
                dx = dx + v[:, o, None] * w[kh - 1 - i, kw - 1 - j, o]
    return dx.reshape(in_shape).astype(dy.dtype)


def _chunk(n: int, most: int = 4) -> int:
    """Images per step of the weight-gradient loop: the largest divisor of n up to `most`."""
    return max(c for c in range(1, min(n, most) + 1) if n % c == 0)


def _taps_kernel_grad(xc, dy, kernel_shape, L, strides, padding):
    """Gradient w.r.t. the primary kernel, as fused multiply-adds accumulated over images.

    dW[i, j, c, (l, o)] = Σ_{n,h,w} x_win(i,j)[(l, c), n, h, w] · dy[(l, o), n, h, w]. A loop over
    chunks of images adds the products per output pixel into an accumulator (one elementwise
    fusion per step, like the forward pass); the pixel sum is one matrix-vector product at the
    end. XLA's own reductions of these products (autodiff's choice), or one small matmul per tap,
    measured 3-30× slower on CPU.
    """
    kh, kw, cin_g, C = kernel_shape
    cout_g = C // L
    _, N, Ho, Wo = dy.shape
    acc_t = _accumulator(dy.dtype)
    xp = _pad_hw(xc, padding)
    xp = xp.reshape(L, cin_g, *xp.shape[1:])
    d = dy.reshape(L, cout_g, N, Ho, Wo)
    k = _chunk(N)

    def products(t):
        xs = lax.dynamic_slice_in_dim(xp, t * k, k, axis=2).astype(acc_t)
        ds = lax.dynamic_slice_in_dim(d, t * k, k, axis=2).astype(acc_t)
        v = jnp.stack([_window(xs, i, j, Ho, Wo, strides)
                       for i in range(kh) for j in range(kw)])  # (S, L, cin_g, k, Ho, Wo)
        return sum(v[:, :, :, None, n] * ds[None, :, None, :, n] for n in range(k))

    acc = lax.fori_loop(1, N // k, lambda t, acc: acc + products(t), products(0))
    g = acc.reshape(-1, Ho * Wo) @ jnp.ones((Ho * Wo,), acc_t)
    g = g.reshape(kh, kw, L, cin_g, cout_g).transpose(0, 1, 3, 2, 4)
    return g.reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _taps_primary(xc, primary, L, strides, padding):
    return _taps_forward(xc, primary, L, strides, padding)


def _taps_primary_fwd(xc, primary, L, strides, padding):
    return _taps_forward(xc, primary, L, strides, padding), (xc, primary)


def _taps_primary_bwd(L, strides, padding, residuals, dy):
    xc, primary = residuals
    dx = _taps_input_grad(dy, primary, L, strides, padding, xc.shape)
    dw = _taps_kernel_grad(xc, dy, primary.shape, L, strides, padding)
    return dx, dw.astype(primary.dtype)


_taps_primary.defvjp(_taps_primary_fwd, _taps_primary_bwd)


def igc_taps(x, primary, secondary, *, L, M, strides=(1, 1), padding=((1, 1), (1, 1))):
    """Primary conv as fused multiply-adds over channel-major planes; the rest as one matmul.

    x goes channel-major (C_in, N, H, W), where each primary output plane is a weighted sum of
    kh·kw·C_in/L shifted input planes (`_taps_forward`, with a hand-written VJP: XLA's autodiff of
    it reduces over the wrong axes and is ~100× slower). Shuffle(L), the secondary conv and
    shuffle(M) are one C×C matrix (`kernels.mixing_matrix`), applied to the channel-major planes
    by one matmul; then a transpose back to NHWC. Multiply-adds per pixel: S·C_in·C/L + C², i.e.
    IGC's count with the secondary done densely (M× its own). For small C_in/L only: the fusion
    has S·C_in/L terms.
    """
    xc = jnp.transpose(x, (3, 0, 1, 2))
    y1 = _taps_primary(xc, primary, L, tuple(strides), tuple(map(tuple, padding)))
    Q = kernels.mixing_matrix(secondary, L, M).astype(y1.dtype)
    # The matmul stays channel-major and the result is transposed after it: an NHWC matmul makes
    # XLA fuse the transpose into the taps' loop, which then writes strided and runs ~5× slower.
    return jnp.transpose(jnp.einsum("cd,cnhw->dnhw", Q, y1), (1, 2, 3, 0))


def igc_split(x, primary, secondary, *, L, M, strides=(1, 1), padding=((1, 1), (1, 1))):
    """Primary conv as L dense convolutions on the groups' channel slices; the rest as one matmul.

    IGC's own primary multiply-adds, each at XLA's dense-conv rate; worth it when the groups are
    few and wide (ImageNet L4M32: 2× faster than `composed`). Shuffle(L), secondary conv and
    shuffle(M) are one C×C matrix (`kernels.mixing_matrix`).
    """
    _, _, cin_g, C = primary.shape
    cout_g = C // L
    y1 = jnp.concatenate(
        [conv(x[..., l * cin_g:(l + 1) * cin_g], primary[..., l * cout_g:(l + 1) * cout_g],
              strides, padding) for l in range(L)], axis=-1)
    return y1 @ kernels.mixing_matrix(secondary, L, M).astype(y1.dtype)


def igc_grouped_mix(x, primary, secondary, *, L, M, strides=(1, 1), padding=((1, 1), (1, 1))):
    """Primary conv as one grouped convolution; shuffle(L), secondary conv and shuffle(M) as one
    C×C matrix (`kernels.mixing_matrix`) applied by a matmul.

    Why a candidate: XLA lowers a grouped 1×1 convolution with few channels per group poorly on
    accelerators (TPU: the group converter's extra spatial dimension; GPU: no tensor-core padding),
    while a dense C×C matmul is what they run best; M× the secondary's multiply-adds buy that.
    """
    y1 = conv(x, primary, strides, padding, groups=L)
    return y1 @ kernels.mixing_matrix(secondary, L, M).astype(y1.dtype)


def igc_native(x, primary, secondary, *, L, M, strides=(1, 1), padding=((1, 1), (1, 1))):
    """Primary conv by the C++ FFI kernel (igc_jax/native, CPU), then the secondary conv.

    The kernel does the primary conv's own S·C_in·C/L multiply-adds per pixel, vectorised along the
    NHWC channels, forward and backward. When C/L = M (the paper's IGC-L·M layers) shuffle(L),
    secondary conv and shuffle(M) run as a C++ kernel with the secondary's own C/M multiply-adds
    per output (`native.secondary`); otherwise as one C×C matrix (`kernels.mixing_matrix`) applied
    by an XLA matmul, its weight gradient in C++ (`native.mix`).
    """
    y1 = native.primary_conv(x, primary, L, tuple(strides), tuple(map(tuple, padding)))
    C = secondary.shape[-1]
    if native_sparse_secondary(L, M, C):
        return native.secondary(y1, kernels.shuffle(secondary[0, 0], M).astype(y1.dtype))
    return native.mix(y1, kernels.mixing_matrix(secondary, L, M).astype(y1.dtype))


MODES: dict[str, Callable] = {
    "grouped": igc_grouped,
    "composed": igc_composed,
    "taps": igc_taps,
    "split": igc_split,
    "grouped_mix": igc_grouped_mix,
    "native": igc_native,
}


def native_sparse_secondary(L: int, M: int, C: int) -> bool:
    """Whether `native` runs the secondary conv with its own multiply-adds (`native.secondary`):
    C/L = M (the paper's IGC-L·M layers) and M a group size the kernel's vector lanes repeat."""
    return C // L == M and M in native.SECONDARY_GROUPS
