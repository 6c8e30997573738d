"""Float64 references of the IGC layer (spec §1) and of the K-factor layer (spec §6) that use
nothing of igc_jax.

The formula reference builds the dense kernel with explicit loops over
    W[o, i, s] = W^d_{m'}[l', l] · W^p_l[m', m, s],   o = l'·M + m', i = l·M_in + m,
reading W^p_l[m', m, s] = primary[s, m, l·M + m'] and
W^d_{m'}[l', l] = secondary[0, 0, l, m'·L + l'] (Flax grouped layout: group g owns the g-th
contiguous block of input and output channels), then convolves; the literal reference runs spec
§1's steps one by one. The K-factor references: the literal steps (per-group convolutions and the
index rule's shuffles, K times), and the dense kernel as a product of loop-built block-diagonal and
shuffle matrices.
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


def _grouped(y, k, groups, strides, padding):
    """A group convolution as per-group dense convolutions on contiguous channel slices."""
    cin, cout = y.shape[-1] // groups, k.shape[-1] // groups
    return jnp.concatenate(
        [dense_conv(y[..., g * cin:(g + 1) * cin], k[..., g * cout:(g + 1) * cout], strides,
                    padding) for g in range(groups)], axis=-1)


def _shuffle_source(C: int, B: int) -> np.ndarray:
    """The index rule: output channel j·B + g takes input channel g·(C/B) + j."""
    src = np.zeros(C, dtype=np.int64)
    for g in range(B):
        for j in range(C // B):
            src[j * B + g] = g * (C // B) + j
    return src


def literal_reference(x, primary, secondary, *, L, M, strides, padding):
    """The layer step by step as spec §1 lists it: per-group convolutions on channel slices and
    shuffles by the index rule (output j·B + g takes input g·(C/B) + j). Also covers M ≠ C/L."""
    y = _grouped(x, primary, L, strides, padding)
    y = y[..., _shuffle_source(y.shape[-1], L)]
    y = _grouped(y, secondary, M, (1, 1), ((0, 0), (0, 0)))
    return y[..., _shuffle_source(y.shape[-1], M)]


# ----------------------------------------------------------------------------- K factors (IGCV2)
# x' = P_K W_K … P_2 W_2 P_1 W_1 x (spec §6): W_1 a kh×kw group conv with G_1 groups, W_l (l ≥ 2)
# 1×1 group convs with G_l groups, P_l the shuffle with B = G_l after factor l.

def kfactor_literal_reference(x, factors, *, groups, strides, padding):
    """The K-factor layer step by step: each factor as per-group convolutions, then its shuffle."""
    y = x
    for l, (k, g) in enumerate(zip(factors, groups)):
        y = _grouped(y, k, g, strides if l == 0 else (1, 1),
                     padding if l == 0 else ((0, 0), (0, 0)))
        y = y[..., _shuffle_source(y.shape[-1], g)]
    return y


def _block_diagonal_loops(kernel: np.ndarray, groups: int) -> np.ndarray:
    """(kh, kw, C_in/G, C_out) grouped → (kh, kw, C_in, C_out) dense, by loops over entries."""
    kh, kw, cin_g, cout = kernel.shape
    cout_g = cout // groups
    dense = np.zeros((kh, kw, cin_g * groups, cout))
    for g in range(groups):
        for i in range(cin_g):
            for o in range(cout_g):
                dense[:, :, g * cin_g + i, g * cout_g + o] = kernel[:, :, i, g * cout_g + o]
    return dense


def kfactor_dense_kernel(factors, groups) -> np.ndarray:
    """The dense HWIO kernel of the K-factor layer, numpy float64: the spatial factor's dense
    kernel times, for each later factor, the shuffle matrix and the factor's dense matrix, and the
    last shuffle (row-vector convention, y = x @ A; a shuffle is y = x[..., src] = x @ S with
    S[src[o], o] = 1)."""
    def shuffle_matrix(C, B):
        S = np.zeros((C, C))
        S[_shuffle_source(C, B), np.arange(C)] = 1.0
        return S

    factors = [np.asarray(f, np.float64) for f in factors]
    C = factors[0].shape[-1]
    Q = shuffle_matrix(C, groups[0])
    for k, g in zip(factors[1:], groups[1:]):
        Q = Q @ _block_diagonal_loops(k, g)[0, 0] @ shuffle_matrix(C, g)
    return np.einsum("hwio,oj->hwij", _block_diagonal_loops(factors[0], groups[0]), Q)


def kfactor_reference(x, factors, *, groups, strides, padding):
    """The K-factor layer as one dense convolution with `kfactor_dense_kernel` (float64; x may be
    a jax array, the kernel is a constant of the factors' values)."""
    return dense_conv(x, kfactor_dense_kernel(factors, groups), strides, padding)
