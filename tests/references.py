"""Float64 references of the IGC layer that use nothing of igc_jax (spec §1).

The formula reference builds the dense kernel with explicit loops over
    W[o, i, s] = W^d_{m'}[l', l] · W^p_l[m', m, s],   o = l'·M + m', i = l·M_in + m,
reading W^p_l[m', m, s] = primary[s, m, l·M + m'] and
W^d_{m'}[l', l] = secondary[0, 0, l, m'·L + l'] (Flax grouped layout: group g owns the g-th
contiguous block of input and output channels), then convolves; the literal reference runs spec
§1's steps one by one.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


@functools.cache
def formula_indices(kh: int, kw: int, L: int, M_in: int, M: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into (primary, secondary) of the two factors of every dense-kernel entry."""
    C = L * M
    p_shape, s_shape = (kh, kw, M_in, C), (1, 1, L, C)
    ip = np.zeros((kh, kw, L * M_in, C), dtype=np.int64)
    i_d = np.zeros_like(ip)
    for lp in range(L):
        for mp in range(M):
            for l in range(L):
                for m in range(M_in):
                    for h in range(kh):
                        for w in range(kw):
                            o, i = lp * M + mp, l * M_in + m
                            ip[h, w, i, o] = np.ravel_multi_index((h, w, m, l * M + mp), p_shape)
                            i_d[h, w, i, o] = np.ravel_multi_index((0, 0, l, mp * L + lp), s_shape)
    return ip, i_d


def formula_kernel(primary, secondary, L: int, M: int):
    """Dense HWIO kernel of the layer from the formula; numpy in, numpy out; jax in, jax out."""
    kh, kw, M_in, _ = primary.shape
    ip, i_d = formula_indices(kh, kw, L, M_in, M)
    return primary.reshape(-1)[ip] * secondary.reshape(-1)[i_d]


def naive_conv(x: np.ndarray, W: np.ndarray, strides, padding) -> np.ndarray:
    """Convolution by loops over output pixels and taps, numpy float64."""
    (pt, pb), (pl, pr) = padding
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    kh, kw = W.shape[:2]
    sh, sw = strides
    Ho, Wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    y = np.zeros((x.shape[0], Ho, Wo, W.shape[-1]))
    for i in range(Ho):
        for j in range(Wo):
            for a in range(kh):
                for b in range(kw):
                    y[:, i, j] += xp[:, i * sh + a, j * sw + b] @ W[a, b]
    return y


def dense_conv(x, W, strides, padding):
    return lax.conv_general_dilated(x, W, tuple(strides), tuple(padding), dimension_numbers=_DN,
                                    precision=lax.Precision.HIGHEST)


def reference(x, primary, secondary, *, L, M, strides, padding):
    """The layer as one dense convolution with the formula's kernel (differentiable, float64)."""
    return dense_conv(x, formula_kernel(primary, secondary, L, M), strides, padding)


def literal_reference(x, primary, secondary, *, L, M, strides, padding):
    """The layer step by step as spec §1 lists it: per-group convolutions on channel slices and
    shuffles by the index rule (output j·B + g takes input g·(C/B) + j). Also covers M ≠ C/L."""
    def grouped(y, k, groups, strides, padding):
        cin, cout = y.shape[-1] // groups, k.shape[-1] // groups
        return jnp.concatenate(
            [dense_conv(y[..., g * cin:(g + 1) * cin], k[..., g * cout:(g + 1) * cout], strides,
                        padding) for g in range(groups)], axis=-1)

    def shuffle(y, B):
        C = y.shape[-1]
        src = np.zeros(C, dtype=np.int64)
        for g in range(B):
            for j in range(C // B):
                src[j * B + g] = g * (C // B) + j
        return y[..., src]

    y = shuffle(grouped(x, primary, L, strides, padding), L)
    return shuffle(grouped(y, secondary, M, (1, 1), ((0, 0), (0, 0))), M)
