"""Ways to compute one IGC layer. All take the same parameters and give the same result.

Each mode is a pure function `(x, primary, secondary, *, L, M, strides, padding) -> y` with
x NHWC, primary (kh, kw, C_in/L, C) with L groups, secondary (1, 1, C/M, C) with M groups,
padding explicit ((top, bottom), (left, right)) so strided layers match the official code's
symmetric padding (XLA's 'SAME' pads stride-2 layers asymmetrically).

- `grouped`:  two grouped XLA convolutions with the shuffles between (the paper, literally).
- `composed`: compose the dense kernel W = Pᵀ W^d P W^p, then one dense convolution.
- `shift`:    primary conv as kh·kw shifted views and one matmul batched over the L groups, the
              secondary conv as a matmul batched over the M groups (no grouped convolution).
`auto` picks one per backend (see `select_mode`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from igc_jax import kernels

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


MODES: dict[str, Callable] = {
    "grouped": igc_grouped,
    "composed": igc_composed,
    "shift": igc_shift,
}


def select_mode(backend: str | None = None) -> str:
    """The mode `auto` uses on a backend (measurements: benchmarks/results/layer_modes.md)."""
    backend = backend or jax.default_backend()
    return "composed" if backend == "cpu" else "grouped"


def igc_apply(x, primary, secondary, *, L, M, strides=(1, 1), padding=((1, 1), (1, 1)),
              mode: str = "auto"):
    """Compute an IGC layer with the named mode (`auto`: `select_mode()`)."""
    if mode == "auto":
        mode = select_mode()
    if mode not in MODES:
        raise ValueError(f"unknown IGC computation mode {mode!r}; choose from auto, {', '.join(MODES)}")
    return MODES[mode](x, primary, secondary, L=L, M=M, strides=strides, padding=padding)
