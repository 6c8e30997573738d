"""Ways to compute one IGC layer. All take the same parameters and give the same result.

Each mode is a pure function `(x, primary, secondary, *, L, M, strides, padding) -> y` with
x NHWC, primary (kh, kw, C_in/L, C) with L groups, secondary (1, 1, C/M, C) with M groups,
padding explicit ((top, bottom), (left, right)) so strided layers match the official code's
symmetric padding (XLA's 'SAME' pads stride-2 layers asymmetrically).

- `grouped`:  two grouped XLA convolutions with the shuffles between (the paper, literally).
- `composed`: compose the dense kernel W = Pᵀ W^d P W^p, then one dense convolution.
- `shift`:    primary conv as kh·kw shifted views and one matmul batched over the L groups, the
              secondary conv as a matmul batched over the M groups (no grouped convolution).
- `taps`:     primary conv as fused multiply-adds of shifted channel-major planes (hand-written
              VJP), then shuffle·secondary·shuffle as one C×C matmul; for small groups (C_in/L).
- `split`:    primary conv as L dense convolutions on the groups' channels, then the same matmul;
              for few, wide groups.
- `native`:   primary conv by a C++ XLA FFI kernel (igc_jax/native, CPU), then the same matmul
              with its weight gradient in C++ too; the fastest on CPU for all but wide groups.
`auto` picks one per backend and layer shape (see `select_mode`, measurements in
benchmarks/results/cpu.md).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from igc_jax import kernels, native

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


def _patches(x, kh: int, kw: int, strides, padding):
    """The kh·kw shifted (strided) views of x, stacked on a new axis before the channels."""
    (pt, pb), (pl, pr) = padding
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    Ho = (xp.shape[1] - kh) // sh + 1
    Wo = (xp.shape[2] - kw) // sw + 1
    views = [xp[:, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw, :]
             for i in range(kh) for j in range(kw)]
    return jnp.stack(views, axis=-2)  # (N, Ho, Wo, S, C_in)


def igc_shift(x, primary, secondary, *, L, M, strides=(1, 1), padding=((1, 1), (1, 1))):
    kh, kw, cin_g, C = primary.shape
    p = _patches(x, kh, kw, strides, padding)  # (N, Ho, Wo, S, C_in)
    p = p.reshape(*p.shape[:-1], L, cin_g)
    w = primary.reshape(kh * kw, cin_g, L, C // L)
    y = jnp.einsum("nhwslc,sclo->nhwlo", p, w).reshape(*p.shape[:3], C)
    y = kernels.shuffle(y, L)
    y = pointwise_grouped(y, secondary, M)
    return kernels.shuffle(y, M)


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
    if native_sparse_secondary(LayerShape(L=L, M=M, C_in=x.shape[-1], C=C)):
        return native.secondary(y1, kernels.shuffle(secondary[0, 0], M).astype(y1.dtype))
    return native.mix(y1, kernels.mixing_matrix(secondary, L, M).astype(y1.dtype))


MODES: dict[str, Callable] = {
    "grouped": igc_grouped,
    "composed": igc_composed,
    "shift": igc_shift,
    "taps": igc_taps,
    "split": igc_split,
    "native": igc_native,
}


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """What `select_mode` looks at: the layer's groups, widths, kernel and stride."""
    L: int
    M: int
    C_in: int
    C: int
    kernel: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)


# CPU cost model of `select_mode`, in multiply-adds per output pixel at the dense conv rate.
# `native` (the C++ kernels, igc_jax/native) does the primary conv's own S·C_in·C/L multiply-adds
# as vector FMAs, and the secondary conv's own C·C/M when C/L = M (M in 1, 2, 4, 8), else the
# dense C² mixing matmul, at about NATIVE_COST each. For small groups (3×3, C/L dividing 8,
# C_in/L = C/L or C_in/L ≤ 2·C/L) it picks inputs by lane shuffles in registers; otherwise it first
# gathers every padded input pixel into a C_in/L × C expansion, NATIVE_GATHER_COST per element,
# which makes it lose to `split` for wide groups (ImageNet L4M32, L16M16).
# `composed` does C_in·C·S MACs as one dense conv. `taps` is bound by memory passes over its
# channel-major planes (layout changes, padding, the accumulators of the weight gradient): about
# TAPS_PASS_COST per input channel (× stride², the input pixels per output pixel) and per output
# channel, plus TAPS_FMA_COST per fused multiply-add (S·C_in/L per output channel) and C² for the
# dense secondary matmul. `split` runs L dense convs of C_in/L → C/L channels: XLA's conv is no
# faster per MAC below ~SPLIT_MIN_WIDTH input channels, and many groups mean many small convs, so
# only up to SPLIT_MAX_GROUPS groups are considered. Beyond TAPS_MAX_TERMS terms (S·C_in/L) the
# taps fusions and its gradient accumulator (terms × output size) grow too large.
# Fitted to fwd+bwd on the 2-core machine (ms, native / taps / composed / split; batch 64 for
# CIFAR, 8 for ImageNet; the shared machine's load moves single timings by 2×,
# benchmarks/results/cpu.md has the full table): L24M2 stage 1 14 / 97 / 75 / 152, its 48→96
# stride-2 layer 17 / 52 / 31 / 54, stage 3 6 / 28 / 39 / 16; L4M8 stage 1 15 / 84 / 28 / 39;
# ImageNet L4M32 stage 1 306 / – / 107 / 92, L16M16 458 / – / 494 / 159, L100M2 stage 1
# 29 / 249 / 400 / –, stage 4 32 / 52 / 430 / –.
NATIVE_COST = 1.2
NATIVE_GATHER_COST = 60.0
TAPS_PASS_COST = 100.0
TAPS_FMA_COST = 4.0
TAPS_MAX_TERMS = 72
SPLIT_MIN_WIDTH = 48
SPLIT_MAX_GROUPS = 24


def native_in_registers(shape: LayerShape) -> bool:
    """Whether the native primary kernel picks its inputs by lane shuffles in registers (no
    gathered expansion): 3×3, C/L dividing 8, C_in/L in 1, 2, 4, 8 and at most 2·C/L."""
    ci, co = shape.C_in // shape.L, shape.C // shape.L
    return shape.kernel == (3, 3) and 8 % co == 0 and (ci == co or (8 % ci == 0 and ci <= 2 * co))


def native_sparse_secondary(shape: LayerShape) -> bool:
    """Whether `native` runs the secondary conv with its own multiply-adds (`native.secondary`)."""
    return shape.C // shape.L == shape.M and shape.M in native.SECONDARY_GROUPS


def cpu_costs(shape: LayerShape, with_native: bool = True) -> dict[str, float]:
    """Modelled cost per output pixel of each mode `select_mode` considers on CPU."""
    S = shape.kernel[0] * shape.kernel[1]
    C_in, C, L = shape.C_in, shape.C, shape.L
    costs = {"composed": float(C_in * C * S)}
    if with_native:
        gather = 0.0 if native_in_registers(shape) else NATIVE_GATHER_COST * (C_in // L) * C
        secondary = C * C // shape.M if native_sparse_secondary(shape) else C * C
        costs["native"] = NATIVE_COST * (S * (C_in // L) * C + secondary) + gather
    terms = S * (C_in // L)
    if terms <= TAPS_MAX_TERMS:
        passes = C_in * shape.strides[0] * shape.strides[1] + C
        costs["taps"] = TAPS_PASS_COST * passes + TAPS_FMA_COST * C * terms + C * C
    if L <= SPLIT_MAX_GROUPS:
        costs["split"] = float(S * C * max(C_in // L, SPLIT_MIN_WIDTH) + C * C)
    return costs


def select_mode(backend: str | None = None, shape: LayerShape | None = None,
                with_native: bool | None = None) -> str:
    """The mode `auto` uses for a layer shape on a backend.

    GPU/TPU: `grouped` (cuDNN/XLA grouped convolutions are native there). CPU: XLA's grouped
    convolution is 5-50× slower than a dense one (and its gradient seconds per call), so never
    `grouped`; the cheapest of `native` (when its C++ kernel builds here and the run has one
    device: `with_native` defaults to that), `composed`, `taps` and `split` under `cpu_costs`. `shift` (tiny
    matmuls over the groups) was slower than that choice on every measured shape. Without a
    shape: `composed`, correct and never pathological.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "grouped"
    if shape is None:
        return "composed"
    if with_native is None:
        # The FFI kernel has no partitioning rule: under a multi-device jit XLA would all-gather
        # the batch and run it whole on every device, so `auto` keeps it to one-device runs.
        with_native = jax.device_count() == 1 and native.available()
    costs = cpu_costs(shape, with_native)
    return min(costs, key=costs.get)


def check_kernels(c_in: int, primary_shape, secondary_shape, L: int, M: int) -> None:
    """ValueError naming the shapes when the kernels do not form an IGC layer on c_in channels."""
    kh, kw, cin_g, C = primary_shape
    if L <= 0 or M <= 0 or c_in % L or cin_g != c_in // L or C % L:
        raise ValueError(f"IGC layer: primary kernel {tuple(primary_shape)} does not fit {c_in} input "
                         f"channels in L={L} groups (expected (kh, kw, {c_in // max(L, 1)}, C))")
    if C % M or tuple(secondary_shape) != (1, 1, C // M, C):
        raise ValueError(f"IGC layer: secondary kernel {tuple(secondary_shape)} does not fit {C} "
                         f"channels in M={M} groups (expected (1, 1, {C // max(M, 1)}, {C}))")


def igc_apply(x, primary, secondary, *, L, M, strides=(1, 1), padding=((1, 1), (1, 1)),
              mode: str = "auto"):
    """Compute an IGC layer with the named mode (`auto`: `select_mode` for this layer's shape)."""
    check_kernels(x.shape[-1], primary.shape, secondary.shape, L, M)
    if mode == "auto":
        kh, kw, _, C = primary.shape
        mode = select_mode(shape=LayerShape(L=L, M=M, C_in=x.shape[-1], C=C, kernel=(kh, kw),
                                            strides=tuple(strides)))
    if mode not in MODES:
        raise ValueError(f"unknown IGC computation mode {mode!r}; choose from auto, {', '.join(MODES)}")
    return MODES[mode](x, primary, secondary, L=L, M=M, strides=strides, padding=padding)


# The fused Pallas kernel (igc_jax/pallas_igc.py), selectable as mode="fused". `select_mode` must
# not pick it until a GPU run of benchmarks/gpu_fused.py measures it faster; none has yet.
from igc_jax.pallas_igc import igc_fused  # noqa: E402  (pallas_igc imports ops lazily)

MODES["fused"] = igc_fused
