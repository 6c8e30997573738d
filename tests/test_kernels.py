"""Property tests of the kernel algebra in igc_jax.igc.kernels (spec §1): shuffles, P,
block-diagonal embedding, the composed kernel W = Pᵀ W^d P W^p and its factorisation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from igc_jax.igc import kernels

settings.register_profile("igc-kernels", max_examples=25, deadline=None)
settings.load_profile("igc-kernels")

small = st.integers(1, 6)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def channels_and_block(draw):
    """(C, B) with B dividing C."""
    L, M = draw(small), draw(small)
    return L * M, draw(st.sampled_from([L, M]))


def _rand(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@given(small, small, seeds)
def test_shuffle_L_then_M_is_identity(L, M, seed):
    x = _rand(seed, 2, 3, L * M)
    np.testing.assert_array_equal(kernels.shuffle(kernels.shuffle(x, L), M), x)
    np.testing.assert_array_equal(kernels.unshuffle(kernels.shuffle(x, L), L), x)
    np.testing.assert_array_equal(kernels.shuffle(kernels.unshuffle(x, M), M), x)


@given(channels_and_block())
def test_shuffle_matches_spec_index_rule(cb):
    """Spec §1 step 2: output channel j·B + g takes input channel g·(C/B) + j."""
    C, B = cb
    y = np.asarray(kernels.shuffle(np.arange(C, dtype=np.float32), B))
    for g in range(B):
        for j in range(C // B):
            assert y[j * B + g] == g * (C // B) + j
    np.testing.assert_array_equal(kernels.shuffle_indices(C, B), y.astype(int))


@given(small, small)
def test_secondary_partition_holds_mth_channel_of_every_primary_partition(L, M):
    y = np.asarray(kernels.shuffle(np.arange(L * M, dtype=np.float32), L)).reshape(M, L)
    for m in range(M):
        np.testing.assert_array_equal(y[m], [l * M + m for l in range(L)])


@given(channels_and_block())
def test_permutation_matrix_is_a_permutation(cb):
    C, B = cb
    P = kernels.permutation_matrix(C, B)
    assert set(np.unique(P)) <= {0.0, 1.0}
    np.testing.assert_array_equal(P.sum(0), np.ones(C))
    np.testing.assert_array_equal(P.sum(1), np.ones(C))
    np.testing.assert_array_equal(P @ P.T, np.eye(C))


@given(channels_and_block(), seeds)
def test_permutation_matrix_applies_the_shuffle(cb, seed):
    C, B = cb
    v = _rand(seed, C)
    np.testing.assert_array_equal(kernels.permutation_matrix(C, B) @ v, kernels.shuffle(v, B))


@given(small, small)
def test_shuffle_back_is_the_transpose(L, M):
    """P_M = P_Lᵀ: the shuffle with B = M undoes the one with B = L."""
    np.testing.assert_array_equal(kernels.permutation_matrix(L * M, M),
                                  kernels.permutation_matrix(L * M, L).T)


@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.sampled_from([1, 3]), seeds)
def test_block_diagonal_zero_pattern(groups, cin_g, cout_g, k, seed):
    kernel = _rand(seed, k, k, cin_g, groups * cout_g)
    dense = np.asarray(kernels.block_diagonal(kernel, groups))
    assert dense.shape == (k, k, groups * cin_g, groups * cout_g)
    for a in range(groups):
        for b in range(groups):
            block = dense[:, :, a * cin_g:(a + 1) * cin_g, b * cout_g:(b + 1) * cout_g]
            expected = kernel[:, :, :, b * cout_g:(b + 1) * cout_g] if a == b else 0.0
            np.testing.assert_array_equal(block, np.broadcast_to(expected, block.shape))


def _igc_kernels(seed: int, L: int, M: int, k: int):
    rng = np.random.default_rng(seed)
    primary = rng.standard_normal((k, k, M, L * M)).astype(np.float32)
    secondary = rng.standard_normal((1, 1, L, L * M)).astype(np.float32)
    return primary, secondary


@given(small, small, st.sampled_from([1, 3]), seeds)
def test_compose_is_the_matrix_product(L, M, k, seed):
    """W[s] = blockdiag(W^p)[s] · P_Lᵀ · blockdiag(W^d) · P_Mᵀ (row-vector form of Pᵀ W^d P W^p)."""
    primary, secondary = _igc_kernels(seed, L, M, k)
    C = L * M
    Wp = np.asarray(kernels.block_diagonal(primary, L), np.float64)
    Wd = np.asarray(kernels.block_diagonal(secondary, M), np.float64)[0, 0]
    P_L, P_M = kernels.permutation_matrix(C, L), kernels.permutation_matrix(C, M)
    expected = np.einsum("hwio,oj->hwij", Wp, P_L.T @ Wd @ P_M.T)
    np.testing.assert_allclose(kernels.compose_kernel(primary, secondary, L, M), expected,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernels.mixing_matrix(secondary, L, M), P_L.T @ Wd @ P_M.T,
                               rtol=1e-6, atol=1e-6)


@given(small, small, st.sampled_from([1, 3]), seeds)
def test_compose_decompose_round_trip(L, M, k, seed):
    primary, secondary = _igc_kernels(seed, L, M, k)
    W = np.asarray(kernels.compose_kernel(primary, secondary, L, M), np.float64)
    p2, s2 = kernels.decompose_kernel(W, L, M)
    assert p2.shape == primary.shape and s2.shape == secondary.shape
    np.testing.assert_allclose(kernels.compose_kernel(p2, s2, L, M), W, rtol=1e-4, atol=1e-4)
    assert kernels.is_igc_kernel(W, L, M)


@given(st.integers(2, 6), st.integers(2, 6), st.sampled_from([1, 3]), seeds)
def test_random_dense_kernel_is_not_igc(L, M, k, seed):
    W = _rand(seed, k, k, L * M, L * M)
    assert not kernels.is_igc_kernel(W, L, M)
    with pytest.raises(ValueError, match="rank > 1"):
        kernels.decompose_kernel(W, L, M)


@given(small, st.sampled_from([1, 3]), seeds)
def test_every_dense_kernel_is_igc_with_L_1(M, k, seed):
    """L = 1 is a regular convolution (spec §1), so every dense kernel factors."""
    W = _rand(seed, k, k, M, M)
    p, s = kernels.decompose_kernel(W, 1, M)
    np.testing.assert_allclose(kernels.compose_kernel(p, s, 1, M), W, rtol=1e-4, atol=1e-4)


@given(small, small, st.sampled_from([1, 9, 25]))
def test_param_count_formula(L, M, S):
    G = L * M
    n = kernels.igc_param_count(L, M, S)
    assert n == M * S * G + L * G  # primary (kh, kw, M, G) + secondary (1, 1, L, G)
    assert n * L * M == G * G * (S * M + L)  # = G²·(S/L + 1/M)


def test_sum_fusion_kernel_is_all_ones():
    np.testing.assert_array_equal(kernels.sum_fusion_kernel(12, 4), np.ones((1, 1, 3, 12)))


@pytest.mark.parametrize("call, numbers", [
    (lambda: kernels.shuffle(np.zeros(10), 4), ["10", "B=4"]),
    (lambda: kernels.unshuffle(np.zeros(9), 2), ["9", "B=2"]),
    (lambda: kernels.shuffle_indices(6, 4), ["6", "B=4"]),
    (lambda: kernels.block_diagonal(np.zeros((3, 3, 2, 6)), 4), ["C_out=6", "groups=4"]),
    (lambda: kernels.compose_kernel(np.zeros((3, 3, 2, 6)), np.zeros((1, 1, 3, 6)), 4, 2),
     ["6", "L=4"]),
    (lambda: kernels.compose_kernel(np.zeros((3, 3, 2, 6)), np.zeros((1, 1, 2, 6)), 3, 2),
     ["(1, 1, 2, 6)", "(1, 1, 3, 6)", "M=2"]),
    (lambda: kernels.decompose_kernel(np.zeros((3, 3, 4, 6)), 2, 3), ["(3, 3, 4, 6)", "6"]),
])
def test_errors_name_the_numbers(call, numbers):
    with pytest.raises(ValueError) as err:
        call()
    for n in numbers:
        assert n in str(err.value)
