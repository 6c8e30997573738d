"""The IGCV2 layer: one convolution as a product of K structured-sparse kernels (spec §6).

    x' = P_K W_K … P_2 W_2 P_1 W_1 x

W_1 is a kh×kw group convolution with G_1 groups (C_in → C), each W_l (l ≥ 2) a 1×1 group
convolution with G_l groups (C → C), and P_l = shuffle(G_l) the channel shuffle after factor l
(`kernels.shuffle`). With K = 2, G_1 = L and G_2 = M this is IGCV1's layer, `IGCConv`, exactly:
its `primary` and `secondary` kernels are `factor1` and `factor2` here (`from_igc_params`).

K_l = C / G_l is the width of one branch of factor l (channels per group). The complementary
condition of IGCV2 (Xie et al., CVPR 2018) asks for exactly one path from every input channel to
every output channel; `path_counts` counts them for any chain of grouped factors and shuffles (also
IGCV3's, whose looser condition asks for at least one), and for this layer with C_in = C the
condition holds exactly when ∏ K_l = C. The balance condition: the parameter count
C·(S·K_1 + Σ_{l≥2} K_l) (S = kh·kw) is smallest when S·K_1 = K_2 = … = K_K; `balanced_factors`
finds the best integer branch widths.

Like an IGC layer it is one dense convolution (`compose_kernel`), and it is computed in one of
`MODES`, all equal: `grouped` (the K grouped convolutions and shuffles, literally), `composed` (the
dense kernel, one convolution) and `grouped_mix` (the grouped spatial convolution, then every 1×1
factor and shuffle as one C×C matrix, `mixing_matrix`). At K = 2 every IGC mode of
`igc_jax.igc.modes` applies too.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from igc_jax.igc import kernels, modes
from igc_jax.igc.layers import check_layer_geometry, he_normal, same_padding


# ----------------------------------------------------------------------------- paths

@dataclasses.dataclass(frozen=True)
class Factor:
    """One factor of a chain: a group convolution to `features` channels in `groups` groups, then
    `shuffle(·, shuffle)` (None: no shuffle). Only the channel connectivity matters here."""
    features: int
    groups: int
    shuffle: int | None = None


def group_mask(c_in: int, c_out: int, groups: int) -> np.ndarray:
    """(c_in, c_out) 0/1 int64: 1 where output o's group holds input i (contiguous blocks)."""
    if groups <= 0 or c_in % groups or c_out % groups:
        raise ValueError(f"group convolution: {c_in} inputs and {c_out} outputs do not split into "
                         f"{groups} groups")
    i = np.arange(c_in)[:, None] // (c_in // groups)
    o = np.arange(c_out)[None, :] // (c_out // groups)
    return (i == o).astype(np.int64)


def path_counts(c_in: int, factors: Sequence[Factor]) -> np.ndarray:
    """(c_in, C) int64: the number of paths from input channel i to output channel o through the
    chain (group connectivity of each factor, then its shuffle)."""
    counts = np.eye(c_in, dtype=np.int64)
    width = c_in
    for f in factors:
        counts = counts @ group_mask(width, f.features, f.groups)
        width = f.features
        if f.shuffle is not None:
            counts = counts[:, kernels.shuffle_indices(width, f.shuffle)]
    return counts


def exactly_one_path(counts: np.ndarray) -> bool:
    """IGCV2's complementary condition: one path joins every (input, output) pair."""
    return bool(np.all(counts == 1))


def at_least_one_path(counts: np.ndarray) -> bool:
    """The looser condition (IGCV3's chain): the composed kernel can be dense."""
    return bool(np.all(counts >= 1))


def layer_factors(c_in: int, features: int, groups: Sequence[int]) -> tuple[Factor, ...]:
    """The chain of a K-factor layer: factor l has G_l groups and shuffle(G_l) after it."""
    return tuple(Factor(features, g, g) for g in groups)


# ----------------------------------------------------------------------------- balance

def branch_widths(C: int, groups: Sequence[int]) -> tuple[int, ...]:
    """K_l = C / G_l, the channels of one branch of each factor."""
    return tuple(C // g for g in groups)


def param_count(c_in: int, C: int, groups: Sequence[int], S: int = 9) -> int:
    """Parameters (= multiply-adds per output pixel) of a K-factor layer:
    S·(C_in/G_1)·C + Σ_{l≥2} (C/G_l)·C; for C_in = C it is C·(S·K_1 + Σ_{l≥2} K_l)."""
    return S * (c_in // groups[0]) * C + sum((C // g) * C for g in groups[1:])


def _ordered_factorizations(n: int, k: int):
    """Every k-tuple of positive integers whose product is n."""
    if k == 1:
        yield (n,)
        return
    for d in range(1, n + 1):
        if n % d == 0:
            for rest in _ordered_factorizations(n // d, k - 1):
                yield (d, *rest)


@functools.cache
def balanced_factors(C: int, K: int, S: int = 9) -> tuple[int, ...]:
    """The branch widths (K_1, …, K_K), ∏ K_l = C (the complementary condition), that minimise
    the parameter count C·(S·K_1 + Σ_{l≥2} K_l) (the balance condition, S·K_1 = K_2 = … = K_K,
    where integers allow it); ties go to the lexicographically smallest. The groups are C / K_l.
    """
    for name, v in (("C", C), ("K", K), ("S", S)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"balanced_factors: {name}={v!r} must be a positive integer")
    return min(_ordered_factorizations(C, K),
               key=lambda w: (S * w[0] + sum(w[1:]), w))


# ----------------------------------------------------------------------------- kernels

def check_shapes(c_in: int, shapes: Sequence[Sequence[int]], groups: Sequence[int]) -> None:
    """ValueError naming the numbers unless the kernels form a K-factor layer on c_in channels:
    factor 1 (kh, kw, C_in/G_1, C), factor l ≥ 2 (1, 1, C/G_l, C)."""
    if len(groups) < 2 or len(shapes) != len(groups):
        raise ValueError(f"K-factor layer: needs K ≥ 2 factors, one group count per kernel; got "
                         f"{len(shapes)} kernels and groups {tuple(groups)}")
    if any(not isinstance(g, int) or isinstance(g, bool) or g < 1 for g in groups):
        raise ValueError(f"K-factor layer: groups {tuple(groups)} must be positive integers")
    kh, kw, cin_g, C = shapes[0]
    if c_in % groups[0] or C % groups[0] or cin_g != c_in // groups[0]:
        raise ValueError(f"K-factor layer: factor 1 kernel {tuple(shapes[0])} does not fit {c_in} "
                         f"input channels in G_1={groups[0]} groups")
    for l, (shape, g) in enumerate(zip(shapes[1:], groups[1:]), start=2):
        if C % g or tuple(shape) != (1, 1, C // g, C):
            raise ValueError(f"K-factor layer: factor {l} kernel {tuple(shape)} does not fit {C} "
                             f"channels in G_{l}={g} groups (expected (1, 1, {C // g or 0}, {C}))")


def mixing_matrix(pointwise: Sequence[Any], groups: Sequence[int]):
    """The (C, C) matrix Q (y = x @ Q) of P_K W_K … P_2 W_2 P_1: the first shuffle, then every
    1×1 factor and its shuffle. `pointwise` are factors 2…K, `groups` all K group counts. At
    K = 2 it is `kernels.mixing_matrix(secondary, L, M)`."""
    C = pointwise[0].shape[-1]
    # Row i of P_1ᵀ·(…) is row shuffle⁻¹(i): the inverse of shuffle(G_1) is shuffle(C / G_1).
    Q = jnp.take(kernels.block_diagonal(pointwise[0], groups[1])[0, 0],
                 kernels.shuffle_indices(C, C // groups[0]), axis=0)
    Q = jnp.take(Q, kernels.shuffle_indices(C, groups[1]), axis=1)
    for w, g in zip(pointwise[1:], groups[2:]):
        Q = jnp.take(Q @ kernels.block_diagonal(w, g)[0, 0], kernels.shuffle_indices(C, g), axis=1)
    return Q


def compose_kernel(factors: Sequence[Any], groups: Sequence[int]):
    """The dense HWIO kernel (kh, kw, C_in, C) of the whole layer: W = P_K W_K … P_1 W_1."""
    check_shapes(factors[0].shape[2] * groups[0], [f.shape for f in factors], groups)
    spatial = kernels.block_diagonal(factors[0], groups[0])
    return jnp.einsum("hwio,oj->hwij", spatial, mixing_matrix(factors[1:], groups))


# ----------------------------------------------------------------------------- modes

def kfactor_grouped(x, factors, *, groups, strides=(1, 1), padding=((1, 1), (1, 1))):
    """The K grouped convolutions with a shuffle after each (the paper, literally)."""
    y = kernels.shuffle(modes.conv(x, factors[0], strides, padding, groups=groups[0]), groups[0])
    for w, g in zip(factors[1:], groups[1:]):
        y = kernels.shuffle(modes.pointwise_grouped(y, w, g), g)
    return y


def kfactor_composed(x, factors, *, groups, strides=(1, 1), padding=((1, 1), (1, 1))):
    """One dense convolution with the composed kernel."""
    return modes.conv(x, compose_kernel(factors, groups), strides, padding)


def kfactor_grouped_mix(x, factors, *, groups, strides=(1, 1), padding=((1, 1), (1, 1))):
    """The grouped spatial convolution, then the rest of the chain as one C×C matmul."""
    y = modes.conv(x, factors[0], strides, padding, groups=groups[0])
    return y @ mixing_matrix(factors[1:], groups).astype(y.dtype)


MODES: dict[str, Callable] = {
    "grouped": kfactor_grouped,
    "composed": kfactor_composed,
    "grouped_mix": kfactor_grouped_mix,
}


def modes_for(K: int) -> tuple[str, ...]:
    """The modes a K-factor layer can run: `MODES`, and at K = 2 every IGC mode as well."""
    return tuple(MODES) if K != 2 else tuple(dict.fromkeys((*MODES, *modes.MODES)))


def kfactor_apply(x, factors: Sequence[Any], *, groups: Sequence[int], strides=(1, 1),
                  padding=((1, 1), (1, 1)), mode: str = "grouped"):
    """The K-factor layer as a function of its kernels, computed by `mode` (`modes_for(K)`)."""
    groups = tuple(groups)
    check_shapes(x.shape[-1], [f.shape for f in factors], groups)
    if mode not in modes_for(len(groups)):
        raise ValueError(f"unknown K-factor computation mode {mode!r} for K={len(groups)}; "
                         f"choose from {', '.join(modes_for(len(groups)))}")
    strides, padding = tuple(strides), tuple(map(tuple, padding))
    if mode in MODES:
        return MODES[mode](x, factors, groups=groups, strides=strides, padding=padding)
    L, M = groups
    return modes.MODES[mode](x, factors[0], factors[1], L=L, M=M, strides=strides,
                             padding=padding)


# ----------------------------------------------------------------------------- the module

def from_igc_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """IGCConv's parameters as a K = 2 layer's: primary → factor1, secondary → factor2 (the same
    arrays: IGCConv(C, L, M) equals KFactorConv(C, groups=(L, M)))."""
    return {"factor1": params["primary"], "factor2": params["secondary"]}


def to_igc_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `from_igc_params` (K = 2 only)."""
    if set(params) != {"factor1", "factor2"}:
        raise ValueError(f"to_igc_params: a K = 2 layer has factor1 and factor2, got "
                         f"{sorted(params)}")
    return {"primary": params["factor1"], "secondary": params["factor2"]}


class KFactorConv(nn.Module):
    """x' = P_K W_K … P_1 W_1 x (see the module docstring), K = len(groups) ≥ 2.

    Attributes:
      features: output width C.
      groups: (G_1, …, G_K): G_1 groups of the kh×kw factor (C_in → C), G_l of the 1×1 factor l.
      mode: one of `modes_for(K)`; every mode gives the same output and gradients.
      kernel_init: of every factor (fan_in = kh·kw·C_in/G_1, C/G_l); default He-normal.
    Parameters: `factor1` (kh, kw, C_in/G_1, C) and `factor{l}` (1, 1, C/G_l, C) for l = 2…K.
    """
    features: int
    groups: Sequence[int]
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: Sequence[tuple[int, int]] | None = None
    mode: str = "grouped"
    kernel_init: Callable = he_normal
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        check_layer_geometry(self.kernel_size, self.strides)
        groups, C, c_in = tuple(self.groups), self.features, x.shape[-1]
        kh, kw = self.kernel_size
        shapes = [(kh, kw, c_in // max(groups[0], 1), C)] + [
            (1, 1, C // max(g, 1), C) for g in groups[1:]]
        check_shapes(c_in, shapes, groups)
        factors = [self.param(f"factor{l}", self.kernel_init, shape, self.param_dtype)
                   for l, shape in enumerate(shapes, start=1)]
        dtype = self.dtype or x.dtype
        padding = self.padding if self.padding is not None else same_padding(self.kernel_size)
        return kfactor_apply(x.astype(dtype), [f.astype(dtype) for f in factors], groups=groups,
                             strides=self.strides, padding=padding, mode=self.mode)


def complementary_groups(C: int, K: int, S: int = 9) -> tuple[int, ...]:
    """The groups (G_1, …, G_K) = C / K_l of `balanced_factors(C, K, S)`."""
    return tuple(C // w for w in balanced_factors(C, K, S))


__all__ = ["Factor", "KFactorConv", "MODES", "at_least_one_path", "balanced_factors",
           "branch_widths", "check_shapes", "complementary_groups", "compose_kernel",
           "exactly_one_path", "from_igc_params", "group_mask", "kfactor_apply", "layer_factors",
           "mixing_matrix", "modes_for", "param_count", "path_counts", "to_igc_params"]
