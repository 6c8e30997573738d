"""The experimental fused Pallas IGC kernel (igc_jax/igc/fused.py) in interpret mode on CPU: its
outputs and gradients equal the float64 formula reference (tests/references.py) for both tilings
and every tile shape, and the kernel passes Pallas's Triton lowering at the benchmark's full-size
shapes (what a machine without a GPU can check)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from igc_jax.igc import fused, layers, modes, select
from igc_jax.igc.fused import Blocks
from igc_jax.igc.layers import IGCConv
from references import literal_reference


def _case(seed, N, H, W, c_in, C, L, M, k=3, dtype=jnp.float32):
    kx, kp, ks = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (N, H, W, c_in), dtype)
    primary = jax.random.normal(kp, (k, k, c_in // L, C), dtype)
    secondary = jax.random.normal(ks, (1, 1, C // M, C), dtype)
    return x, primary, secondary


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grads(f, x, primary, secondary, cotangent):
    y, vjp = jax.vjp(f, x, primary, secondary)
    return y, vjp(cotangent)


def _assert_close(actual, expected, rtol):
    scale = float(jnp.max(jnp.abs(expected)))
    np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32),
                               rtol=rtol, atol=rtol * scale)


# (N, H, W, c_in, C, L, M, stride, blocks): odd and unequal spatial sizes, L = 1, M = 1, a widening
# layer, the official CIFAR quirk (C/M = 2L), and tiles smaller than the layer so every grid axis
# has several programs and ragged (masked) tails.
CASES = [
    (2, 5, 7, 8, 8, 4, 2, 1, None),                                   # fma, the L24M2 pattern
    (1, 7, 5, 6, 6, 6, 1, 2, None),                                   # M = 1: depthwise + full 1×1
    (1, 5, 5, 4, 4, 1, 4, 1, None),                                   # L = 1: regular conv + scale
    (1, 7, 7, 8, 16, 4, 4, 2, Blocks("fma", pixels=8, groups=2, out=2, l=2)),  # widening, tails
    (1, 6, 5, 8, 16, 4, 2, 1, None),                                  # quirk: r = C/(M·L) = 2
    (1, 5, 5, 32, 32, 2, 16, 1, None),                                # dot, the L16M16 pattern
    (1, 7, 5, 48, 48, 3, 16, 2, Blocks("dot", pixels=16, groups=8, out=2, k=8)),  # dot, tails
]


@pytest.mark.parametrize("N, H, W, c_in, C, L, M, stride, blocks", CASES)
def test_fused_equals_formula(N, H, W, c_in, C, L, M, stride, blocks):
    """Output and the gradients w.r.t. input, primary and secondary (float32) against the float64
    step-by-step reference (tests/references.py), which shares no code with igc_jax."""
    x, primary, secondary = _case(0, N, H, W, c_in, C, L, M)
    args = dict(L=L, M=M, strides=(stride, stride), padding=((1, 1), (1, 1)))
    f = functools.partial(fused.igc_fused, blocks=blocks, **args)
    out_shape = jax.eval_shape(f, x, primary, secondary).shape
    cot = jax.random.normal(jax.random.key(1), out_shape)
    y, grads = _value_and_grads(f, x, primary, secondary, cot)
    with jax.enable_x64(True):
        f64 = [np.asarray(a, np.float64) for a in (x, primary, secondary, cot)]
        y_ref, grads_ref = _value_and_grads(functools.partial(literal_reference, **args), *f64)
    _assert_close(y, y_ref, 1e-5)
    for g, g_ref in zip(grads, grads_ref):
        _assert_close(g, g_ref, 1e-5)


@pytest.mark.parametrize("L, M, tiling", [(4, 2, "fma"), (2, 16, "dot")])
def test_bfloat16(L, M, tiling):
    """bfloat16 in and out, fp32 accumulation: within bfloat16 rounding of the float32 result."""
    x, primary, secondary = _case(2, 1, 5, 5, L * M, L * M, L, M)
    x16, p16, s16 = (a.astype(jnp.bfloat16) for a in (x, primary, secondary))
    y = fused.igc_fused(x16, p16, s16, L=L, M=M)
    assert y.dtype == jnp.bfloat16
    assert fused.default_blocks(L, M, L * M, L * M).tiling == tiling
    y_ref = modes.igc_composed(*(a.astype(jnp.float32) for a in (x16, p16, s16)), L=L, M=M)
    _assert_close(y, y_ref, 2e-2)


def test_igcconv_fused_mode_equals_composed():
    """The mode works through the layer: same parameters, same output (stride 2)."""
    x = jax.random.normal(jax.random.key(3), (2, 9, 7, 12))
    kwargs = dict(features=12, L=3, strides=(2, 2))
    params = IGCConv(mode="composed", **kwargs).init(jax.random.key(4), x)
    y = IGCConv(mode="fused", **kwargs).apply(params, x)
    _assert_close(y, IGCConv(mode="composed", **kwargs).apply(params, x), 1e-5)


def test_auto_does_not_pick_fused():
    """No GPU measurement shows the kernel faster yet, so `auto` must not select it anywhere."""
    assert "fused" not in modes.MODES and "fused" in layers.ALL_MODES
    shape = select.LayerShape(L=24, M=2, C_in=48, C=48)
    assert all(select.select_mode(shape, select.ModeContext(b)) != "fused"
               for b in ("cpu", "gpu", "tpu"))


# Full-size layer shapes of the GPU benchmark: CIFAR IGC-L24M2 (batch 256, float32) and ImageNet
# IGC-L16M16 / IGC-L100M2 (batch 128, bfloat16), incl. stride-2 and widening layers.
GPU_SHAPES = [
    ((256, 32, 32, 48), 48, 24, 2, 1, jnp.float32, "fma"),
    ((256, 32, 32, 48), 96, 24, 4, 2, jnp.float32, "fma"),
    ((128, 56, 56, 256), 256, 16, 16, 1, jnp.bfloat16, "dot"),
    ((128, 14, 14, 1024), 2048, 16, 128, 2, jnp.bfloat16, "dot"),
    ((128, 56, 56, 200), 200, 100, 2, 1, jnp.bfloat16, "fma"),
]


@pytest.mark.parametrize("x_shape, C, L, M, stride, dtype, tiling", GPU_SHAPES)
def test_lowers_to_triton_at_full_size(x_shape, C, L, M, stride, dtype, tiling):
    """The compiled (non-interpret) kernel passes Pallas's Triton lowering: one Triton call."""
    S = jax.ShapeDtypeStruct
    c_in = x_shape[-1]
    text = fused.lower_for_gpu(S(x_shape, dtype), S((3, 3, c_in // L, C), dtype),
                                    S((1, 1, C // M, C), dtype), L=L, M=M, strides=(stride, stride))
    assert text.count("__gpu$xla.gpu.triton") == 1 and f"igc_fused_{tiling}" in text


@pytest.mark.parametrize("make, match", [
    (lambda: Blocks("fma", pixels=24), "pixels=24 is not a power of two"),
    (lambda: Blocks("mma"), "tiling 'mma'"),
    (lambda: fused.resolve_blocks((1, 4, 4, 8), (3, 3, 2, 16), (1, 1, 8, 16), 4, 2,
                                       Blocks("dot")), "needs C/M == L"),
    (lambda: fused.resolve_blocks((1, 4, 4, 8), (3, 3, 2, 8), (1, 1, 4, 8), 4, 4, None),
     r"secondary kernel \(1, 1, 4, 8\) does not fit"),
    pytest.param(
        lambda: fused.igc_fused(*_case(0, 1, 3, 3, 4, 4, 2, 2), L=2, M=2, interpret=False),
        "GPU \\(Triton\\) only",
        marks=pytest.mark.skipif(jax.default_backend() == "gpu", reason="compiles there")),
])
def test_bad_input_is_a_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
