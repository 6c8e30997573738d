"""The kernel algebra of an IGC layer (spec §1), as small pure functions.

An IGC layer computes x' = Pᵀ W^d P W^p x: a primary group convolution W^p (L groups), the channel
shuffle P (B = L), a secondary 1×1 group convolution W^d (M groups) and the shuffle back Pᵀ
(B = M). Because everything after W^p is a 1×1 linear map, the layer equals one dense convolution
whose kernel `compose_kernel` builds.

Layouts follow Flax: activations NHWC, kernels HWIO, a grouped kernel is `(kh, kw, C_in/groups,
C_out)` with contiguous channel blocks per group. With o = l'·M + m', i = l·M + m and tap s:

    W[s, i, o] = W^d_{m'}[l', l] · W^p_l[m', m, s]
    primary[s, m, l·M + m'] = W^p_l[m', m, s],   secondary[0, 0, l, m'·L + l'] = W^d_{m'}[l', l].
"""
from __future__ import annotations

import numpy as np
import jax.numpy as jnp


def shuffle(x, B: int, axis: int = -1):
    """Channel shuffle of the official code: view channels as (B, C/B), transpose, flatten.

    Output channel j·B + g takes input channel g·(C/B) + j.
    """
    C = x.shape[axis]
    if B <= 0 or C % B:
        raise ValueError(f"shuffle: {C} channels are not divisible into B={B} blocks")
    x = jnp.moveaxis(x, axis, -1)
    y = x.reshape(*x.shape[:-1], B, C // B).swapaxes(-1, -2).reshape(x.shape)
    return jnp.moveaxis(y, -1, axis)


def unshuffle(x, B: int, axis: int = -1):
    """Inverse of `shuffle(x, B)`: it is the shuffle with the other factor, C/B."""
    C = x.shape[axis]
    if B <= 0 or C % B:
        raise ValueError(f"unshuffle: {C} channels are not divisible into B={B} blocks")
    return shuffle(x, C // B, axis)


def shuffle_indices(C: int, B: int) -> np.ndarray:
    """`src` with shuffle(x)[..., o] == x[..., src[o]]."""
    if B <= 0 or C % B:
        raise ValueError(f"shuffle: {C} channels are not divisible into B={B} blocks")
    return np.arange(C).reshape(B, C // B).T.reshape(-1)


def permutation_matrix(C: int, B: int) -> np.ndarray:
    """The C×C matrix P with P @ v == shuffle(v, B) for a channel vector v."""
    P = np.zeros((C, C), dtype=np.float32)
    P[np.arange(C), shuffle_indices(C, B)] = 1.0
    return P


def block_diagonal(kernel, groups: int):
    """Embed a grouped kernel (kh, kw, C_in/groups, C_out) in a dense HWIO kernel
    (kh, kw, C_in, C_out).

    Output block k (channels k·C_out/groups ...) only sees input block k: the sparsity of W^p and
    W^d.
    """
    kh, kw, cin_g, cout = kernel.shape
    if groups <= 0 or cout % groups:
        raise ValueError(f"block_diagonal: C_out={cout} is not divisible by groups={groups}")
    cout_g = cout // groups
    k = kernel.reshape(kh, kw, cin_g, groups, cout_g)
    eye = jnp.eye(groups, dtype=kernel.dtype)
    dense = jnp.einsum("hwcgo,kg->hwkcgo", k, eye)  # zero off the diagonal blocks
    return dense.reshape(kh, kw, groups * cin_g, cout)


def mixing_matrix(secondary, L: int, M: int):
    """Q = P_Lᵀ · W^d · P_Mᵀ as a (C, C) matrix acting on row vectors (y = x @ Q).

    `secondary` is the (1, 1, C/M, C) grouped kernel of the secondary conv with M groups; the first
    shuffle has B = L, the second B = M (the official code's order).
    """
    dense = block_diagonal(secondary, M)[0, 0]  # (C, C), y3 = y2 @ dense
    C = dense.shape[0]
    # y2 = shuffle(y1, L) = y1 @ P_Lᵀ; y4 = shuffle(y3, M) = y3 @ P_Mᵀ; so Q = unshuffle(dense, L)
    # on the rows (= shuffle with C/L) and shuffle(., M) on the columns. Static gathers rather than
    # reshape/transpose: XLA 0.11's CPU compiler fails on the gradient of that form inside
    # compose_kernel ("Symbolic expression is not a constant").
    rows = jnp.take(dense, shuffle_indices(C, C // L), axis=0)
    return jnp.take(rows, shuffle_indices(C, M), axis=1)


def compose_kernel(primary, secondary, L: int, M: int):
    """Dense HWIO kernel of the whole layer: W = Pᵀ W^d P W^p (spec §1).

    primary: (kh, kw, C_in/L, C) with L groups; secondary: (1, 1, C/M, C) with M groups.
    """
    kh, kw, cin_g, C = primary.shape
    if C % L:
        raise ValueError(f"compose_kernel: primary has {C} output channels, not divisible by L={L}")
    if secondary.shape != (1, 1, C // M, C):
        raise ValueError(
            f"compose_kernel: secondary kernel has shape {secondary.shape}, expected "
            f"(1, 1, {C // M}, {C}) for C={C}, M={M}")
    Q = mixing_matrix(secondary, L, M).reshape(L, C // L, C)
    p = primary.reshape(kh, kw, cin_g, L, C // L)
    W = jnp.einsum("hwclo,loj->hwlcj", p, Q)  # only the diagonal blocks of W^p are non-zero
    return W.reshape(kh, kw, L * cin_g, C)


def decompose_kernel(W, L: int, M: int, rtol: float = 1e-5):
    """The reverse direction: factor a dense kernel into IGC kernels, or say why it is not one.

    W (kh, kw, C, C) with C = L·M is an IGC kernel iff, for every primary group l and every m',
    the matrix A[l', (m, s)] = W[s, (l, m), (l', m')] has rank ≤ 1 (one path joins each pair).
    Returns (primary, secondary) with compose_kernel(primary, secondary, L, M) ≈ W, or raises
    ValueError naming the first block that is not rank one. numpy, float64.
    """
    W = np.asarray(W, dtype=np.float64)
    kh, kw, Cin, C = W.shape
    if Cin != C or C != L * M:
        raise ValueError(f"decompose_kernel: kernel {W.shape} is not square of width L·M={L * M}")
    S = kh * kw
    # w[s, l, m, l', m']
    w = W.reshape(S, L, M, L, M)
    primary = np.zeros((S, M, L, M))  # [s, m, l, m']  -> reshaped (kh, kw, M, C)
    secondary = np.zeros((L, M, L))  # [l, m', l']     -> (1, 1, L, C) with out m'·L + l'
    scale = np.abs(W).max() or 1.0
    for l in range(L):
        for mp in range(M):
            A = w[:, l, :, :, mp].transpose(2, 1, 0).reshape(L, M * S)  # [l', (m, s)]
            U, sv, Vt = np.linalg.svd(A, full_matrices=False)
            if sv.size > 1 and sv[1] > rtol * scale * max(A.shape):
                raise ValueError(
                    f"decompose_kernel: block (primary group l={l}, m'={mp}) has rank > 1 "
                    f"(second singular value {sv[1]:.3g}); not an IGC kernel for L={L}, M={M}")
            secondary[l, mp, :] = U[:, 0] * sv[0]
            primary[:, :, l, mp] = Vt[0].reshape(M, S).T
    return (primary.reshape(kh, kw, M, C).astype(np.float32),
            secondary.reshape(1, 1, L, C).astype(np.float32))


def is_igc_kernel(W, L: int, M: int, rtol: float = 1e-5) -> bool:
    """Whether the dense kernel W factors as an IGC layer with this (L, M)."""
    try:
        decompose_kernel(W, L, M, rtol)
    except ValueError:
        return False
    return True


def sum_fusion_kernel(C: int, M: int, dtype=jnp.float32):
    """The fixed secondary kernel of SumFusion: all-ones blocks (each secondary group sums its L
    inputs)."""
    return jnp.ones((1, 1, C // M, C), dtype)


def igc_param_count(L: int, M: int, S: int) -> int:
    """Parameters (= multiply-adds per output pixel) of one IGC layer: L·M²·S + M·L²."""
    return L * M * M * S + M * L * L


def four_branch_kernels(kernel):
    """The paper's four-branch view of a regular convolution, as IGC kernels with L = 4, M = N.

    Split a regular kernel (kh, kw, 2K, 2N) into input partitions b and output partitions a, so
    y_a = Σ_b W_ab x_b. Primary branch l = 2a + b applies W_ab to partition b of the duplicated
    input [x1, x2, x1, x2] = concat([x, x]); the fixed 0/1 secondary kernel cross-sums the branches
    (output partition l' gets branches 2(l' mod 2) and 2(l' mod 2) + 1), so the IGC layer maps
    concat([x, x]) to concat([y, y]). Returns (primary (kh, kw, K, 4N), secondary (1, 1, 4, 4N)).
    """
    kh, kw, cin, cout = kernel.shape
    if cin % 2 or cout % 2:
        raise ValueError(f"four_branch_kernels: kernel {kernel.shape} needs an even number of "
                         f"input ({cin}) and output ({cout}) channels for 2 partitions each")
    K, N = cin // 2, cout // 2
    primary = jnp.concatenate([kernel[:, :, b * K:(b + 1) * K, a * N:(a + 1) * N]
                               for a in range(2) for b in range(2)], axis=-1)
    cross_sum = jnp.array([[1, 1, 0, 0], [0, 0, 1, 1]] * 2, kernel.dtype)  # [l', l]
    secondary = jnp.tile(cross_sum.T, (1, N))[None, None]  # [0, 0, l, m'·4 + l'] = cross_sum[l', l]
    return primary, secondary


def check_igc_shapes(c_in: int, primary_shape, secondary_shape, L: int, M: int) -> None:
    """The one check that kernels form an IGC layer on c_in channels: a ValueError naming them.

    Every computation mode and the Flax layer call this; the C++ kernels trust it.
    """
    kh, kw, cin_g, C = primary_shape
    if L <= 0 or M <= 0:
        raise ValueError(f"IGC layer: L={L} and M={M} must be positive")
    if c_in % L:
        raise ValueError(f"IGC layer: {c_in} input channels are not divisible by L={L}")
    if C % L:
        raise ValueError(f"IGC layer: {C} output channels are not divisible by L={L}")
    if C % M:
        raise ValueError(f"IGC layer: {C} output channels are not divisible into M={M} "
                         f"secondary groups")
    if cin_g != c_in // L:
        raise ValueError(f"IGC layer: primary kernel {tuple(primary_shape)} does not fit {c_in} "
                         f"input channels in L={L} groups (expected (kh, kw, {c_in // L}, {C}))")
    if tuple(secondary_shape) != (1, 1, C // M, C):
        raise ValueError(f"IGC layer: secondary kernel {tuple(secondary_shape)} does not fit {C} "
                         f"channels in M={M} groups (expected (1, 1, {C // M}, {C}))")
