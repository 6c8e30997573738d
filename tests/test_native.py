"""The C++ FFI kernels of igc_jax/native: exact against XLA, reproducible, and a clear failure."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from igc_jax.igc import kernels, layers, modes, native

pytestmark = pytest.mark.skipif(not native.available(),
                                reason=f"native kernel unavailable: {native.build_error()}")


@pytest.mark.parametrize("N,H,W", [(9, 3, 5), (2, 33, 33), (1, 1, 1)])
def test_mixing_gradient_equals_xla(N, H, W):
    """dQ = y1ᵀ·dy summed in image chunks (1 to 16 images each) equals XLA's dot."""
    k = jax.random.split(jax.random.key(N), 3)
    y1 = jax.random.normal(k[0], (N, H, W, 20))
    Q = jax.random.normal(k[1], (20, 12))
    ct = jax.random.normal(k[2], (N, H, W, 12))
    ref = jax.grad(lambda a, b: jnp.sum((a @ b) * ct), (0, 1))(y1, Q)
    got = jax.grad(lambda a, b: jnp.sum(native.mix(a, b) * ct), (0, 1))(y1, Q)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("L,M", [(6, 1), (12, 2), (3, 4), (6, 4), (24, 8), (2, 8)])
def test_secondary_equals_mixing_matrix(L, M, x64):
    """The sparse secondary kernel (C/L = M) computes x @ mixing_matrix, values and gradients;
    C = L·M from 6 to 192 covers whole vectors and tails of 8 (float32) and 4 (float64) lanes."""
    with jax.enable_x64(x64):
        dt = jnp.float64 if x64 else jnp.float32
        C = L * M
        k = jax.random.split(jax.random.key(L * M), 3)
        y1 = jax.random.normal(k[0], (3, 4, 5, C), dt)
        sec = jax.random.normal(k[1], (1, 1, C // M, C), dt)
        ct = jax.random.normal(k[2], (3, 4, 5, C), dt)

        def dense(y, s):
            return jnp.sum(y @ kernels.mixing_matrix(s, L, M) * ct)

        def sparse(y, s):
            return jnp.sum(native.secondary(y, kernels.shuffle(s[0, 0], M)) * ct)

        tol = 1e-12 if x64 else 1e-5
        np.testing.assert_allclose(sparse(y1, sec), dense(y1, sec), rtol=tol)
        for r, g in zip(jax.grad(dense, (0, 1))(y1, sec), jax.grad(sparse, (0, 1))(y1, sec)):
            np.testing.assert_allclose(g, r, rtol=tol, atol=tol)


def _layer_grads(x, p, s, L, M, stride=1):
    def loss(x, p, s):
        y = layers.igc_apply(x, p, s, L=L, M=M, strides=(stride, stride), padding=((1, 1), (1, 1)),
                          mode="native")
        return jnp.sum(jnp.sin(y))
    return jax.jit(jax.grad(loss, (0, 1, 2)))(x, p, s)


def test_gradients_are_bit_reproducible():
    """Images go to threads dynamically; partial sums per image keep results bit-identical."""
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (16, 8, 8, 48))
    p = jax.random.normal(k[1], (3, 3, 2, 48))
    s = jax.random.normal(k[2], (1, 1, 24, 48))
    first = _layer_grads(x, p, s, 24, 2)
    for _ in range(3):
        for a, b in zip(first, _layer_grads(x, p, s, 24, 2)):
            np.testing.assert_array_equal(a, b)


def test_bfloat16_is_computed_in_float32():
    k = jax.random.split(jax.random.key(1), 2)
    x = jax.random.normal(k[0], (2, 6, 6, 8)).astype(jnp.bfloat16)
    p = jax.random.normal(k[1], (3, 3, 2, 8)).astype(jnp.bfloat16)
    y = native.primary_conv(x, p, 4, (1, 1), ((1, 1), (1, 1)))
    ref = modes.conv(x.astype(jnp.float32), p.astype(jnp.float32), padding=((1, 1), (1, 1)),
                     groups=4)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(y.astype(jnp.float32), ref.astype(jnp.bfloat16).astype(jnp.float32),
                               rtol=1e-2, atol=1e-2)


def test_compiler_failure_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("IGC_JAX_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    with pytest.raises(native.NativeUnavailable,
                       match="compiling igc_kernels.cc with false failed"):
        native._build()
    assert os.listdir(tmp_path) == []  # no half-written library left behind


def test_built_library_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("IGC_JAX_NATIVE_CACHE", str(tmp_path))
    path = native._build()
    assert path.parent == tmp_path and path.stat().st_size > 0

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again")
    monkeypatch.setattr(native.build.subprocess, "run", no_compiler)
    assert native._build() == path


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("cin_g,cout_g,L", [(1, 2, 5), (2, 4, 6), (4, 8, 3), (2, 1, 12), (4, 2, 5),
                                            (8, 4, 3), (2, 2, 7), (3, 6, 2)])
@pytest.mark.parametrize("stride", [1, 2])
def test_primary_conv_paths_equal_grouped_conv(cin_g, cout_g, L, stride, x64):
    """Both paths of the primary kernel (lane shuffles for small groups, C_in/L ≤ 2·C/L; gathered
    rows for the rest, here 3 → 6), with channel tails, against XLA's grouped conv and gradients."""
    with jax.enable_x64(x64):
        dt = jnp.float64 if x64 else jnp.float32
        k = jax.random.split(jax.random.key(cin_g * 10 + cout_g), 3)
        x = jax.random.normal(k[0], (2, 7, 6, cin_g * L), dt)
        w = jax.random.normal(k[1], (3, 3, cin_g, cout_g * L), dt)
        pad = ((1, 1), (1, 1))
        ref = modes.conv(x, w, (stride, stride), pad, groups=L)
        ct = jax.random.normal(k[2], ref.shape, dt)

        def loss(f):
            return lambda x, w: jnp.sum(f(x, w) * ct)
        got_f = lambda x, w: native.primary_conv(x, w, L, (stride, stride), pad)  # noqa: E731
        ref_f = lambda x, w: modes.conv(x, w, (stride, stride), pad, groups=L)  # noqa: E731
        tol = 1e-12 if x64 else 1e-5
        np.testing.assert_allclose(got_f(x, w), ref, rtol=tol, atol=tol)
        for g, r in zip(jax.grad(loss(got_f), (0, 1))(x, w), jax.grad(loss(ref_f), (0, 1))(x, w)):
            np.testing.assert_allclose(g, r, rtol=tol, atol=10 * tol)
