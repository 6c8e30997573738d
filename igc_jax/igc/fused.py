"""Experimental: a fused Pallas kernel for the IGC layer's forward pass, mode `fused`.

Not in the default registry (`igc_jax.igc.modes.MODES`) and never chosen by `auto`: no GPU run of
`benchmarks/gpu_fused.py` has shown it faster yet. `IGCConv(mode="fused")` still selects it.

Why: written as two grouped convolutions (mode `grouped`), an IGC layer writes the primary output
y1 (N·H·W·C values) to HBM and reads it back for the secondary conv, in two launches; with small M
the primary conv does few multiply-adds per byte and that traffic dominates. This kernel computes
primary conv → shuffle(L) → secondary 1×1 conv → shuffle(M) while y1 stays in registers: HBM sees
x, the (small) weights and the output, each output element written once.

Index algebra (spec §1). C output channels, K_i = C_in/L inputs and K_o = C/L outputs per primary
group, G_s = C/M channels per secondary group, r = G_s/L (r = 1 in the standard layer, M = K_o;
r = 2 in the official CIFAR code's quirk layer):

    y1[p, l, j]     = Σ_s Σ_k x[p + s, l·K_i + k] · primary[s, k, l·K_o + j]
    out[p, o·M + g] = Σ_t Σ_l y1[p, l, g·r + t] · secondary[0, 0, t·L + l, g·G_s + o]

Both shuffles are index arithmetic in the weight layouts and the output store; nothing moves.

Two tilings (`Blocks.tiling`), both over a tile of `pixels` output pixels (flattened N·Ho·Wo, so
any spatial size and stride works; halo and padding are masked gather loads):
- `fma`: primary as fp32 multiply-adds (CUDA cores / VPU), for small K_i, K_o (M = 1, 2, ...) where
  a tensor-core tile would be mostly zeros. Program = (pixel tile, `groups` secondary groups g,
  `out` outputs o); it loops over blocks of `l` primary groups, building y1[:, l-block, g·r + t]
  and contracting it at once into the output with a (tensor-core when ≥ 16) matmul.
- `dot`: primary as tensor-core matmuls (K_i, K_o ≥ 16, r = 1, e.g. L16M16). Program = (pixel
  tile, `groups` values of j, `out` values of o); it loops over the L primary groups,
  y1[:, l, j-block] = Σ_s x_tap[:, l, k-block] @ W^p, then adds y1 ⊗ W^d (fp32 multiply-adds)
  into a (pixels, out, groups) accumulator.

Written for GPU (Triton lowering; every block size a power of two, which Triton requires) and run
on CPU in Pallas interpret mode. The TPU version can follow the same tiling: Mosaic has no gather,
so the pixel tile would become a BlockSpec'd strip of rows plus halo and the tap offsets static
slices; the block sizes are already parameters (`Blocks`).

The backward pass is a `custom_vjp` over mode `grouped` (the paper's literal two convolutions), so
the layer trains; the tests check both against the float64 reference.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from igc_jax.igc import kernels, modes

TILINGS = ("fma", "dot")


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Tile sizes of the fused kernel (powers of two).

    pixels: output pixels per program; groups: secondary groups g (`fma`) or primary outputs j
    (`dot`) per program; out: secondary outputs o per program; l: primary groups per step (`fma`);
    k: primary inputs per matmul (`dot`); num_warps, num_stages: Triton launch parameters.
    """
    tiling: str
    pixels: int = 32
    groups: int = 1
    out: int = 32
    l: int = 32
    k: int = 16
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        if self.tiling not in TILINGS:
            raise ValueError(f"Blocks: tiling {self.tiling!r} is not one of {TILINGS}")
        for name in ("pixels", "groups", "out", "l", "k"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"Blocks: {name}={v} is not a power of two (Triton needs one)")


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, b: int) -> int:
    return _cdiv(a, b) * b


def default_blocks(L: int, M: int, c_in: int, C: int, tiling: str | None = None) -> Blocks:
    """Tile sizes for a layer. tiling None: `dot` when the primary groups fill a 16×16 tensor-core
    tile and the layer is standard (C/M == L), else `fma`.

    Not tuned on a GPU yet (benchmarks/gpu_fused.py times both tilings and a few sizes).
    """
    k_i, k_o, g_s = c_in // L, C // L, C // M
    if tiling is None:
        tiling = "dot" if g_s == L and k_i >= 16 and k_o >= 16 else "fma"
    if tiling == "dot":
        groups, out = min(_pow2(k_o), 32), min(_pow2(L), 16)
        return Blocks("dot", pixels=32, groups=groups, out=out, k=min(_pow2(k_i), 32),
                      num_warps=8 if 32 * groups * out > 8192 else 4)  # accumulator registers
    return Blocks(tiling, pixels=32, groups=min(_pow2(M), 2), out=min(_pow2(g_s), 64),
                  l=min(_pow2(L), 32))


def resolve_blocks(x_shape, primary_shape, secondary_shape, L: int, M: int,
                   blocks: Blocks | None) -> Blocks:
    """`blocks` (default `default_blocks`), or ValueError naming the numbers when the fused kernel
    cannot compute this layer with them."""
    c_in, C = x_shape[-1], primary_shape[-1]
    kernels.check_igc_shapes(c_in, primary_shape, secondary_shape, L, M)
    if (C // M) % L:
        raise ValueError(f"fused IGC: secondary groups of C/M={C // M} channels are not whole "
                         f"multiples of L={L}")
    blocks = blocks or default_blocks(L, M, c_in, C)
    if blocks.tiling == "dot" and C // M != L:
        raise ValueError(f"fused IGC: the `dot` tiling needs C/M == L, got C/M={C // M}, L={L}")
    return blocks


def _pixel_coords(pix, Ho: int, Wo: int):
    """(n, ho, wo) of flattened output pixels."""
    n = pix // (Ho * Wo)
    rem = pix - n * (Ho * Wo)
    ho = rem // Wo
    return n, ho, rem - ho * Wo


def _tap_base(pix, valid, tap, geom):
    """Flat offset of input pixel (n, ho·sh + i − pt, wo·sw + j − pl) channel 0, and its mask."""
    (H, W, Ho, Wo, c_in), (sh, sw), (pt, pl_) = geom
    i, j = tap
    n, ho, wo = _pixel_coords(pix, Ho, Wo)
    hi, wi = ho * sh + i - pt, wo * sw + j - pl_
    inside = valid & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
    return ((n * H + hi) * W + wi) * c_in, inside


def _gather(ref, offsets, mask):
    """Masked gather from a flat ref; masked lanes read 0 (the zero padding of the conv)."""
    return plgpu.load(ref.at[jnp.where(mask, offsets, 0)], mask=mask, other=0)


def _scatter(ref, offsets, value, mask):
    """Masked scatter into a flat ref. Masked lanes get an out-of-range offset: the GPU skips them,
    and interpret mode drops them (an in-range one would write back a stale value there)."""
    plgpu.store(ref.at[jnp.where(mask, offsets, ref.shape[0])], value.astype(ref.dtype), mask=mask)


def _acc_dtype(dtype):
    """Accumulate in float32 (float64 for float64 inputs, which only interpret mode runs)."""
    return jnp.promote_types(dtype, jnp.float32)


def _pixel_tile(P: int, num_pixels: int, taps, geom):
    """This program's P output pixels (flat indices), which of them exist, and each tap's
    (input base offset, inside-the-image mask) for them."""
    pix = pl.program_id(0) * P + jnp.arange(P, dtype=jnp.int32)
    valid = pix < num_pixels
    return pix, valid, [_tap_base(pix, valid, tap, geom) for tap in taps]


def _matmul(a, b, dtype):
    """a @ b in `dtype`, accumulated in `_acc_dtype`. Triton's dot needs every dim ≥ 16; below
    that, multiply-adds."""
    acc = _acc_dtype(dtype)
    if min(a.shape + b.shape) >= 16:
        return jnp.dot(a.astype(dtype), b.astype(dtype), preferred_element_type=acc)
    return jnp.sum(a.astype(acc)[:, :, None] * b.astype(acc)[None], axis=1)


def _fma_kernel(x_ref, wp_ref, wd_ref, o_ref, *, geom, dims, blocks: Blocks, num_pixels: int):
    """`fma` tiling: out[pixels, o-block, g-block] for one pixel tile."""
    L, M, C, k_i, r, taps = dims
    P, TG, TO, TL = blocks.pixels, blocks.groups, blocks.out, blocks.l
    acc_t = _acc_dtype(x_ref.dtype)
    pix, valid, bases = _pixel_tile(P, num_pixels, taps, geom)
    g0, o0 = pl.program_id(1) * TG, pl.program_id(2) * TO

    def l_block(lb, acc):
        l = lb * TL + jnp.arange(TL, dtype=jnp.int32)
        y1 = [jnp.zeros((P, TL), acc_t) for _ in range(TG * r)]
        for s, (base, inside) in enumerate(bases):
            offsets = base[:, None] + l[None, :] * k_i
            mask = inside[:, None] & (l < L)[None, :]

            def k_step(k, y1, s=s, offsets=offsets, mask=mask):
                xv = _gather(x_ref, offsets + k, mask).astype(acc_t)
                return [y + xv * wp_ref[s, k, pl.ds(lb * TL, TL), (g0 + q // r) * r + q % r]
                        .astype(acc_t)[None, :] for q, y in enumerate(y1)]

            y1 = jax.lax.fori_loop(0, k_i, k_step, y1)
        return [a + sum(_matmul(y1[g * r + t],
                                wd_ref[g0 + g, t, pl.ds(lb * TL, TL), pl.ds(o0, TO)], x_ref.dtype)
                        for t in range(r))
                for g, a in enumerate(acc)]

    acc = [jnp.zeros((P, TO), acc_t) for _ in range(TG)]
    acc = jax.lax.fori_loop(0, _cdiv(L, TL), l_block, acc)
    o = o0 + jnp.arange(TO, dtype=jnp.int32)
    for g, a in enumerate(acc):
        offsets = pix[:, None] * C + o[None, :] * M + (g0 + g)
        mask = valid[:, None] & (o < C // M)[None, :] & (g0 + g < M)
        _scatter(o_ref, offsets, a, mask)


def _dot_kernel(x_ref, wp_ref, wd_ref, o_ref, *, geom, dims, blocks: Blocks, num_pixels: int):
    """`dot` tiling (r = 1, so g = j, o = l'): out[pixels, o-block, j-block] for one pixel tile."""
    L, M, C, k_i, _, taps = dims
    P, TJ, TO, TK = blocks.pixels, blocks.groups, blocks.out, blocks.k
    acc_t = _acc_dtype(x_ref.dtype)
    pix, valid, bases = _pixel_tile(P, num_pixels, taps, geom)
    j0, o0 = pl.program_id(1) * TJ, pl.program_id(2) * TO
    k = jnp.arange(TK, dtype=jnp.int32)

    def group(l, acc):
        y1 = jnp.zeros((P, TJ), acc_t)
        for s, (base, inside) in enumerate(bases):
            def k_block(kb, y1, s=s, base=base, inside=inside):
                kk = kb * TK + k
                mask = inside[:, None] & (kk < k_i)[None, :]
                xv = _gather(x_ref, base[:, None] + l * k_i + kk[None, :], mask)
                wp = wp_ref[s, l, pl.ds(kb * TK, TK), pl.ds(j0, TJ)]
                return y1 + _matmul(xv, wp, x_ref.dtype)

            y1 = jax.lax.fori_loop(0, _cdiv(k_i, TK), k_block, y1)
        y1 = y1.astype(x_ref.dtype).astype(acc_t)  # the precision `grouped` stores y1 at
        wd = wd_ref[l, pl.ds(o0, TO), pl.ds(j0, TJ)].astype(acc_t)
        return acc + y1[:, None, :] * wd[None, :, :]

    acc = jax.lax.fori_loop(0, L, group, jnp.zeros((P, TO, TJ), acc_t))
    o = o0 + jnp.arange(TO, dtype=jnp.int32)
    j = j0 + jnp.arange(TJ, dtype=jnp.int32)
    offsets = pix[:, None, None] * C + o[None, :, None] * M + j[None, None, :]
    mask = valid[:, None, None] & (o < L)[None, :, None] & (j < M)[None, None, :]
    _scatter(o_ref, offsets, acc, mask)


def _fma_weights(primary, secondary, L: int, M: int, blocks: Blocks):
    """wp[s, k, l, j] = primary[s, k, l·K_o + j]; wd[g, t, l, o] = secondary[t·L + l, g·G_s + o]."""
    kh, kw, k_i, C = primary.shape
    g_s = C // M
    r = g_s // L
    Lp = _round_up(L, blocks.l)
    wp = primary.reshape(kh * kw, k_i, L, C // L)
    wp = jnp.pad(wp, ((0, 0), (0, 0), (0, Lp - L), (0, (_round_up(M, blocks.groups) - M) * r)))
    wd = secondary.reshape(r, L, M, g_s).transpose(2, 0, 1, 3)
    wd = jnp.pad(wd, ((0, _round_up(M, blocks.groups) - M), (0, 0), (0, Lp - L),
                      (0, _round_up(g_s, blocks.out) - g_s)))
    return wp, wd


def _dot_weights(primary, secondary, L: int, M: int, blocks: Blocks):
    """wp[s, l, k, j] = primary[s, k, l·K_o + j]; wd[l, o, j] = secondary[l, j·L + o] (r = 1)."""
    kh, kw, k_i, C = primary.shape
    k_o = C // L
    wp = primary.reshape(kh * kw, k_i, L, k_o).transpose(0, 2, 1, 3)
    wp = jnp.pad(wp, ((0, 0), (0, 0), (0, _round_up(k_i, blocks.k) - k_i),
                      (0, _round_up(k_o, blocks.groups) - k_o)))
    wd = secondary.reshape(L, M, L).transpose(0, 2, 1)
    wd = jnp.pad(wd, ((0, 0), (0, _round_up(L, blocks.out) - L),
                      (0, _round_up(M, blocks.groups) - M)))
    return wp, wd


def _forward(x, primary, secondary, L: int, M: int, strides, padding, interpret: bool,
             blocks: Blocks):
    """One pallas_call computing the whole layer."""
    N, H, W, c_in = x.shape
    kh, kw, k_i, C = primary.shape
    (pt, pb), (pl_, pr) = padding
    sh, sw = strides
    Ho, Wo = (H + pt + pb - kh) // sh + 1, (W + pl_ + pr - kw) // sw + 1
    num_pixels = N * Ho * Wo
    taps = tuple((i, j) for i in range(kh) for j in range(kw))
    geom = ((H, W, Ho, Wo, c_in), (sh, sw), (pt, pl_))
    dims = (L, M, C, k_i, C // M // L, taps)
    if blocks.tiling == "fma":
        kernel, (wp, wd) = _fma_kernel, _fma_weights(primary, secondary, L, M, blocks)
        outs = C // M  # o runs over a secondary group
    else:
        kernel, (wp, wd) = _dot_kernel, _dot_weights(primary, secondary, L, M, blocks)
        outs = L
    grid = (_cdiv(num_pixels, blocks.pixels), _cdiv(M, blocks.groups), _cdiv(outs, blocks.out))
    call = pl.pallas_call(
        functools.partial(kernel, geom=geom, dims=dims, blocks=blocks, num_pixels=num_pixels),
        out_shape=jax.ShapeDtypeStruct((num_pixels * C,), x.dtype),
        grid=grid,
        interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps,
                                             num_stages=blocks.num_stages),
        name=f"igc_fused_{blocks.tiling}",
    )
    out = call(x.reshape(-1), wp.astype(x.dtype), wd.astype(x.dtype))
    return out.reshape(N, Ho, Wo, C)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _fused(x, primary, secondary, L, M, strides, padding, interpret, blocks):
    return _forward(x, primary, secondary, L, M, strides, padding, interpret, blocks)


def _fused_fwd(x, primary, secondary, L, M, strides, padding, interpret, blocks):
    out = _forward(x, primary, secondary, L, M, strides, padding, interpret, blocks)
    return out, (x, primary, secondary)


def _fused_bwd(L, M, strides, padding, interpret, blocks, residuals, g):
    reference = functools.partial(modes.igc_grouped, L=L, M=M, strides=strides, padding=padding)
    _, vjp = jax.vjp(reference, *residuals)
    return vjp(g)


_fused.defvjp(_fused_fwd, _fused_bwd)


def igc_fused(x, primary, secondary, *, L: int, M: int, strides: Sequence[int] = (1, 1),
              padding=((1, 1), (1, 1)), interpret: bool | None = None,
              blocks: Blocks | None = None, platform: str | None = None):
    """The IGC layer as one fused Pallas kernel (same signature and result as `modes.igc_grouped`).

    platform: the backend the step is compiled for (default: this process's; "gpu" when lowering
    for CUDA elsewhere). interpret: run the kernel in Pallas interpret mode; default True unless
    the platform is GPU. The compiled kernel is Triton (GPU) only. blocks: tile sizes, default
    `default_blocks`.
    """
    blocks = resolve_blocks(x.shape, primary.shape, secondary.shape, L, M, blocks)
    platform = platform or jax.default_backend()
    if interpret is None:
        interpret = platform != "gpu"
    if not interpret and platform != "gpu":
        raise ValueError(f"fused IGC: the compiled kernel is GPU (Triton) only, backend is "
                         f"{platform!r}; pass interpret=True or use another mode")
    return _fused(x, primary, secondary, L, M, tuple(strides), tuple(map(tuple, padding)),
                  bool(interpret), blocks)


def lower_for_gpu(x, primary, secondary, *, L: int, M: int, strides: Sequence[int] = (1, 1),
                  padding=((1, 1), (1, 1)), blocks: Blocks | None = None,
                  device_kind: str = "NVIDIA H200") -> str:
    """The compiled forward kernel lowered for CUDA as StableHLO text (a Triton custom call).

    Works on any backend (arguments may be `jax.ShapeDtypeStruct`s): the target GPU is an abstract
    device of `device_kind`, so a machine without a GPU can check that the kernel passes Pallas's
    Triton lowering at the real shapes. Triton's own compiler (TTIR → PTX) runs only on the GPU.
    """
    blocks = resolve_blocks(x.shape, primary.shape, secondary.shape, L, M, blocks)
    forward = functools.partial(_forward, L=L, M=M, strides=tuple(strides),
                                padding=tuple(map(tuple, padding)), interpret=False, blocks=blocks)
    target = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=None, platform="cuda")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",),
                                                                  abstract_device=target)):
        exported = jax.export.export(
            jax.jit(forward), platforms=["cuda"],
            disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
        )(x, primary, secondary)
    return exported.mlir_module()


# The experimental modes, by name: `IGCConv(mode=...)` accepts them, `auto` never picks them.
EXPERIMENTAL_MODES = {"fused": igc_fused}
