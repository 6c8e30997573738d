"""The K-factor (IGCV2) layer against the float64 references of tests/references.py (spec §6):
every mode, outputs and all gradients; exactly IGCConv at K = 2 under the parameter mapping; the
path counts of the complementary condition; the balanced factors.
"""
from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from igc_jax.igc import kernels, kfactor, native
from igc_jax.igc.kfactor import Factor, KFactorConv
from igc_jax.igc.layers import IGCConv, same_padding

from references import (kfactor_dense_kernel, kfactor_literal_reference, kfactor_reference,  # noqa: E402
                        naive_conv, reference)

# (c_in, features, groups, k, stride, H, W): IGCV2-like chains with depthwise and grouped spatial
# factors, K = 2, 3, 4, widening (c_in ≠ C), 1×1 and 5×5, odd unequal sizes, stride 2.
CASES = [
    (8, 8, (8, 2, 4), 3, 1, 5, 7),          # depthwise, K_l = (1, 4, 2): ∏ = C
    (12, 12, (6, 4, 3), 3, 2, 7, 7),        # K_l = (2, 3, 4)
    (6, 12, (3, 4, 6, 2), 5, 1, 5, 5),      # K = 4, widening
    (16, 16, (16, 4, 4), 1, 2, 5, 7),       # 1×1 spatial factor
    (6, 6, (2, 3), 3, 2, 7, 5),             # K = 2: an IGC layer with L = 2, M = 3
]
MODES = [m for m in kfactor.modes_for(2) if m != "native" or native.available()]


def random_factors(seed, c_in, features, groups, k):
    rng = np.random.default_rng(seed)
    shapes = [(k, k, c_in // groups[0], features)] + [
        (1, 1, features // g, features) for g in groups[1:]]
    return [rng.standard_normal(s) for s in shapes]


def assert_close(actual, expected, rtol):
    scale = max(float(np.max(np.abs(expected))), 1.0)
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol,
                               atol=rtol * scale)


@functools.cache
def reference_case(c_in, features, groups, k, stride, H, W, seed=0):
    """Inputs, a cotangent, and the literal reference's output and gradients (float64)."""
    x = np.random.default_rng(seed).standard_normal((2, H, W, c_in))
    factors = random_factors(seed + 1, c_in, features, groups, k)
    f_ref = functools.partial(kfactor_literal_reference, groups=groups,
                              strides=(stride, stride), padding=same_padding((k, k)))
    with jax.enable_x64(True):
        y_ref, vjp = jax.vjp(f_ref, x, factors)
        cot = np.random.default_rng(seed + 2).standard_normal(y_ref.shape)
        g_ref = vjp(cot)
    return x, factors, cot, np.asarray(y_ref), g_ref


@pytest.mark.parametrize("c_in, features, groups, k, stride, H, W", CASES)
def test_references_agree(c_in, features, groups, k, stride, H, W):
    """numpy loops (dense kernel, loop convolution) == jax dense kernel == jax step by step."""
    x, factors, _, y_literal, _ = reference_case(c_in, features, groups, k, stride, H, W)
    args = dict(strides=(stride, stride), padding=same_padding((k, k)))
    y_np = naive_conv(x, kfactor_dense_kernel(factors, groups), **args)
    np.testing.assert_allclose(y_literal, y_np, rtol=1e-12, atol=1e-12)
    with jax.enable_x64(True):
        np.testing.assert_allclose(kfactor_reference(x, factors, groups=groups, **args), y_np,
                                   rtol=1e-12, atol=1e-12)
        if len(groups) == 2:    # and the IGC layer's own reference (spec §1's formula)
            L, M = groups
            np.testing.assert_allclose(reference(x, *factors, L=L, M=M, **args), y_np,
                                       rtol=1e-12, atol=1e-12)


def check_mode(case, mode, dtype=np.float64, rtol=1e-10):
    c_in, features, groups, k, stride, H, W = case
    x, factors, cot, y_ref, g_ref = reference_case(*case)
    layer = KFactorConv(features, groups, kernel_size=(k, k), strides=(stride, stride), mode=mode)

    def f(x, factors):
        return layer.apply({"params": {f"factor{l}": w for l, w in enumerate(factors, 1)}}, x)

    with jax.enable_x64(True):
        y, vjp = jax.vjp(jax.jit(f), x.astype(dtype), [w.astype(dtype) for w in factors])
        g = vjp(cot.astype(dtype))
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, rtol)
    assert_close(g[0], g_ref[0], rtol)
    for l, (a, b) in enumerate(zip(g[1], g_ref[1]), start=1):
        assert a.shape == b.shape, l
        assert_close(a, b, rtol)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[:3]}-k{c[3]}s{c[4]}")
@pytest.mark.parametrize("mode", list(kfactor.MODES))
def test_mode_equals_reference(case, mode):
    check_mode(case, mode)


@pytest.mark.parametrize("mode", MODES)
def test_k2_every_igc_mode_equals_reference(mode):
    """At K = 2 the layer is an IGC layer, so every IGC mode (also `taps`, `split`, `native`)
    computes it."""
    check_mode(CASES[-1], mode)


@pytest.mark.parametrize("mode", list(kfactor.MODES))
def test_mode_float32(mode):
    check_mode(CASES[1], mode, dtype=np.float32, rtol=1e-4)


@pytest.mark.parametrize("L, M, c_in, stride", [(2, 3, 6, 1), (4, 4, 8, 2), (3, 2, 6, 2),
                                                 (6, 1, 6, 1), (1, 5, 5, 1)])
@pytest.mark.parametrize("mode", ["grouped", "composed", "grouped_mix"])
def test_k2_is_igcconv_under_the_parameter_mapping(L, M, c_in, stride, mode):
    """KFactorConv(C, groups=(L, M)) with factor1 = primary, factor2 = secondary is IGCConv(C, L,
    M): the same outputs and parameter shapes (IGCConv's own modes compute it)."""
    C = L * M
    x = np.random.default_rng(3).standard_normal((2, 7, 7, c_in))
    igc = IGCConv(C, L, M, strides=(stride, stride), mode=mode)
    with jax.enable_x64(True):
        params = igc.init(jax.random.key(0), jnp.asarray(x))["params"]
        mapped = kfactor.from_igc_params(params)
        k2 = KFactorConv(C, (L, M), strides=(stride, stride), mode=mode)
        shapes = jax.tree.map(jnp.shape, k2.init(jax.random.key(0), jnp.asarray(x))["params"])
        assert shapes == jax.tree.map(jnp.shape, mapped)
        y_igc = igc.apply({"params": params}, x)
        y_k2 = k2.apply({"params": mapped}, x)
    np.testing.assert_allclose(y_k2, y_igc, rtol=1e-12, atol=1e-12)
    assert kfactor.to_igc_params(mapped) == dict(params)
    np.testing.assert_allclose(kfactor.compose_kernel([params["primary"], params["secondary"]],
                                                      (L, M)),
                               kernels.compose_kernel(params["primary"], params["secondary"], L,
                                                      M), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- paths

def _factorizations(C: int, K: int):
    """Every ordered K-tuple of positive integers with product C (written out here)."""
    if K == 1:
        return [(C,)]
    return [(d, *rest) for d in range(1, C + 1) if C % d == 0
            for rest in _factorizations(C // d, K - 1)]


@pytest.mark.parametrize("C, K", [(8, 3), (12, 3), (24, 3), (36, 3), (16, 4), (30, 2)])
def test_exactly_one_path_iff_the_branch_widths_multiply_to_C(C, K):
    """IGCV2's complementary condition for the layer's chain (shuffle(G_l) after each factor): a
    single path joins every input and output channel exactly when ∏ K_l = C; more groups leave
    pairs unjoined, fewer join some pairs twice."""
    divisors = [d for d in range(1, C + 1) if C % d == 0]
    for groups in itertools.product(divisors, repeat=K):
        counts = kfactor.path_counts(C, kfactor.layer_factors(C, C, groups))
        product = math.prod(C // g for g in groups)
        assert counts.sum() == C * product            # each output has ∏ K_l paths
        assert kfactor.exactly_one_path(counts) == (product == C), groups


@pytest.mark.parametrize("c_in, features, groups, k, stride, H, W", CASES)
def test_path_counts_are_the_composed_kernel_of_all_ones_factors(c_in, features, groups, k,
                                                                  stride, H, W):
    """With every kernel entry 1, each entry of the composed dense kernel counts the paths from
    its input to its output channel: `path_counts` is the kernel's connectivity."""
    ones = [np.ones_like(w) for w in random_factors(0, c_in, features, groups, k)]
    with jax.enable_x64(True):
        dense = np.asarray(kfactor.compose_kernel(ones, groups))
    counts = kfactor.path_counts(c_in, kfactor.layer_factors(c_in, features, groups))
    for tap in dense.reshape(-1, c_in, features):
        np.testing.assert_array_equal(tap, counts)


def test_path_counts_of_chains():
    """IGC at K = 2 is complementary; without the shuffles the group convs stay block-diagonal
    (some pairs unjoined); IGCV3's block (1×1 in 2 groups → shuffle(2) → depthwise → 1×1 in 2
    groups) joins every pair, several times: the looser condition."""
    assert kfactor.exactly_one_path(kfactor.path_counts(24, kfactor.layer_factors(24, 24,
                                                                                  (12, 2))))
    no_shuffle = kfactor.path_counts(24, [Factor(24, 12), Factor(24, 2)])
    assert not kfactor.at_least_one_path(no_shuffle)
    igcv3 = kfactor.path_counts(32, [Factor(192, 2, 2), Factor(192, 192), Factor(16, 2)])
    assert kfactor.at_least_one_path(igcv3) and not kfactor.exactly_one_path(igcv3)
    np.testing.assert_array_equal(igcv3, 48)         # each pair: 96 / 2 expanded channels
    no_igcv3_shuffle = kfactor.path_counts(32, [Factor(192, 2), Factor(192, 192), Factor(16, 2)])
    assert not kfactor.at_least_one_path(no_igcv3_shuffle)


# ----------------------------------------------------------------------------- balance

@pytest.mark.parametrize("C, K, S", [(64, 2, 9), (64, 3, 9), (256, 3, 9), (96, 3, 9), (72, 4, 9),
                                     (48, 3, 1), (36, 2, 25)])
def test_balanced_factors_minimise_the_parameter_count(C, K, S):
    widths = kfactor.balanced_factors(C, K, S)
    assert math.prod(widths) == C and len(widths) == K
    cost = S * widths[0] + sum(widths[1:])
    assert cost == min(S * w[0] + sum(w[1:]) for w in _factorizations(C, K))
    groups = kfactor.complementary_groups(C, K, S)
    assert groups == tuple(C // w for w in widths)
    assert kfactor.param_count(C, C, groups, S) == C * cost
    counts = kfactor.path_counts(C, kfactor.layer_factors(C, C, groups))
    assert kfactor.exactly_one_path(counts)


def test_balanced_factors_known_values():
    """S·K_1 = K_2 = … where integers allow: C = 64, K = 3, S = 9 gives K_1 = 1, K_2 = K_3 = 8
    (9·0.92 ≈ 8.3 is the real optimum); K = 2 gives IGC-L32M2 (K_1 = 2, K_2 = 32)."""
    assert kfactor.balanced_factors(64, 3) == (1, 8, 8)
    assert kfactor.balanced_factors(64, 2) == (2, 32)
    assert kfactor.complementary_groups(64, 2) == (32, 2)
    with pytest.raises(ValueError, match="K=0 must be a positive integer"):
        kfactor.balanced_factors(64, 0)


@pytest.mark.parametrize("c_in, features, groups, k, stride, H, W", CASES)
def test_param_count_is_the_modules(c_in, features, groups, k, stride, H, W):
    x = jax.ShapeDtypeStruct((1, H, W, c_in), jnp.float32)
    params = jax.eval_shape(KFactorConv(features, groups, kernel_size=(k, k)).init,
                            jax.random.key(0), x)["params"]
    assert sorted(params) == [f"factor{l}" for l in range(1, len(groups) + 1)]
    n = sum(math.prod(v.shape) for v in params.values())
    assert n == kfactor.param_count(c_in, features, groups, k * k)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("features, groups, c_in, mode, message", [
    (12, (5, 4, 3), 12, "grouped", "G_1=5"),
    (12, (6, 5), 12, "grouped", "G_2=5"),
    (12, (12,), 12, "grouped", "needs K ≥ 2 factors"),
    (12, (6, 0), 12, "grouped", "must be positive integers"),
    (12, (6, 4, 3), 12, "taps", "unknown K-factor computation mode 'taps' for K=3"),
])
def test_bad_layers_raise_one_line(features, groups, c_in, mode, message):
    layer = KFactorConv(features, groups, mode=mode)
    x = jax.ShapeDtypeStruct((1, 5, 5, c_in), jnp.float32)
    with pytest.raises(ValueError, match=message) as err:
        jax.eval_shape(layer.init, jax.random.key(0), x)
    assert "\n" not in str(err.value)
