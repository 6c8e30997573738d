"""`igc_jax.igc.depthwise`: both modes of a depthwise conv equal a float64 NumPy reference, forward
and both gradients, and the module's parameter is `nn.Conv`'s."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from igc_jax.igc import native
from igc_jax.igc.depthwise import DepthwiseConv, depthwise_apply, depthwise_shape

MODES = ["grouped", pytest.param("native", marks=pytest.mark.skipif(
    not native.available(), reason=f"native kernels: {native.build_error()}"))]
# (N, H, W, C, stride): IGCV3's shapes in small (stride 2 on even and odd sizes, 1×1 and 2×2 maps,
# more channels than one vector).
CASES = [(2, 8, 8, 16, 1), (2, 8, 8, 24, 2), (1, 7, 5, 8, 2), (3, 1, 1, 40, 1), (2, 2, 2, 12, 1),
         (1, 9, 9, 3, 2)]


def reference(x: np.ndarray, w: np.ndarray, stride: int, r: np.ndarray):
    """y, and the gradients of Σ y·r by x and w, by loops over the taps in float64."""
    N, H, W, C = x.shape
    kh, kw = w.shape[:2]
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    y = np.zeros((N, Ho, Wo, C))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            window = (slice(None), slice(i, i + stride * Ho, stride),
                      slice(j, j + stride * Wo, stride))
            y += xp[window] * w[i, j, 0]
            dw[i, j, 0] = (xp[window] * r).sum((0, 1, 2))
            dxp[window] += r * w[i, j, 0]
    return y, dxp[:, kh // 2:kh // 2 + H, kw // 2:kw // 2 + W], dw


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("N,H,W,C,stride", CASES)
def test_forward_and_gradients_equal_the_reference(mode, N, H, W, C, stride):
    rng = np.random.default_rng([N, H, W, C, stride])
    x, w = rng.standard_normal((N, H, W, C)), rng.standard_normal((3, 3, 1, C))
    y_ref, dx_ref, dw_ref = reference(x, w, stride, r := rng.standard_normal(
        (N, (H - 1) // stride + 1, (W - 1) // stride + 1, C)))

    def f(x, w):
        return depthwise_apply(x, w, strides=(stride, stride), mode=mode)

    x32, w32 = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
    y, vjp = jax.vjp(f, x32, w32)
    dx, dw = vjp(jnp.asarray(r, jnp.float32))
    for ours, ref in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
        np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("mode", MODES)
def test_the_parameter_is_nn_convs_and_so_is_the_output(mode):
    """Same name, shape and initial values as `nn.Conv(C, groups=C)` under the same key, the
    same output (converted weights and checkpoints do not depend on the mode)."""
    x = jax.random.normal(jax.random.key(1), (2, 9, 9, 32))
    ours = DepthwiseConv(strides=(2, 2), mode=mode)
    flax_conv = nn.Conv(32, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                        feature_group_count=32, use_bias=False,
                        kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"))
    v, v_flax = ours.init(jax.random.key(0), x), flax_conv.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, v_flax)
    np.testing.assert_array_equal(v["params"]["kernel"], v_flax["params"]["kernel"])
    np.testing.assert_allclose(ours.apply(v, x), flax_conv.apply(v, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_bfloat16_compute_returns_bfloat16(mode):
    x = jax.random.normal(jax.random.key(1), (1, 6, 6, 8))
    layer = DepthwiseConv(mode=mode, dtype=jnp.bfloat16)
    v = layer.init(jax.random.key(0), x)
    assert v["params"]["kernel"].dtype == jnp.float32
    assert layer.apply(v, x).dtype == jnp.bfloat16


def test_shape_and_bad_input():
    shape = depthwise_shape((4, 16, 12, 96), strides=(2, 2))
    assert (shape.L, shape.M, shape.C_in, shape.C, shape.size, shape.depthwise) == (
        96, 1, 96, 96, (16, 12), True)
    assert shape.describe() == "depthwise 96 3×3, stride 2"
    x, w = jnp.zeros((1, 4, 4, 8)), jnp.zeros((3, 3, 1, 8))
    with pytest.raises(ValueError, match="unknown depthwise computation mode 'split'"):
        depthwise_apply(x, w, mode="split")
    with pytest.raises(ValueError, match="kernel"):
        depthwise_apply(x, jnp.zeros((3, 3, 2, 8)), mode="grouped")
