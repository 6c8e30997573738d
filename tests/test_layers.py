"""IGCConv against the float64 references of tests/references.py (spec §1): every mode, outputs
and all three gradients.
"""
from __future__ import annotations

import functools

import flax.errors
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax import lax

from igc_jax.igc import kernels, layers, native, select
from igc_jax.igc.layers import IGCConv, same_padding

# `native` needs a C++ compiler; where none is found its own tests say so (tests/test_native.py).
MODES = [m for m in layers.ALL_MODES if m != "native" or native.available()]


from references import dense_conv, formula_kernel, literal_reference, naive_conv, reference  # noqa: E402,F401


# ----------------------------------------------------------------------------- helpers

def layer(features, L, M=None, k=3, stride=1, mode="auto", sum_fusion=False):
    return IGCConv(features, L, M, kernel_size=(k, k), strides=(stride, stride), mode=mode,
                   sum_fusion=sum_fusion)


def apply_fn(module):
    def f(x, primary, secondary):
        return module.apply({"params": {"primary": primary, "secondary": secondary}}, x)
    return f


@functools.partial(jax.jit, static_argnums=0)
def value_and_grads(f, x, primary, secondary, cotangent):
    """Output and the gradients of <f(x, primary, secondary), cotangent> w.r.t. all three."""
    y, vjp = jax.vjp(f, x, primary, secondary)
    return y, vjp(cotangent)


def random_case(seed, *, N, H, W, c_in, k, features, L, M):
    """Float64 input, primary and secondary kernels."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, H, W, c_in)), rng.standard_normal((k, k, c_in // L, features)),
            rng.standard_normal((1, 1, features // M, features)))


def assert_close(actual, expected, rtol):
    scale = max(float(np.max(np.abs(expected))), 1.0)
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol,
                               atol=rtol * scale)


@functools.cache
def reference_case(ref, *, L, M_in, M, k, stride, H, W, layer_M=None, seed=0):
    """Random float64 inputs, a cotangent, and `ref`'s output and gradients (cached per case)."""
    features, c_in = L * M, L * M_in
    if layer_M is not None:  # a secondary group count other than features / L
        M, features = layer_M, L * M
    x, p, s = random_case(seed, N=2, H=H, W=W, c_in=c_in, k=k, features=features, L=L, M=M)
    f_ref = functools.partial(ref, L=L, M=M, strides=(stride, stride), padding=same_padding((k, k)))
    with jax.enable_x64(True):
        cot = np.random.default_rng(seed + 1).standard_normal(jax.eval_shape(f_ref, x, p, s).shape)
        y_ref, g_ref = value_and_grads(f_ref, x, p, s, cot)
    return (x, p, s, cot), y_ref, g_ref, layer(features, L, layer_M, k, stride)


def check_mode_against(ref, *, mode, dtype=np.float64, rtol=1e-10, **case):
    """Outputs and gradients (input, primary, secondary) of IGCConv(mode) equal `ref`'s."""
    args, y_ref, g_ref, module = reference_case(ref, **case)
    with jax.enable_x64(True):
        y, g = value_and_grads(apply_fn(module.clone(mode=mode)),
                               *(a.astype(dtype) for a in args))
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, rtol)
    for name, a, b in zip(("input", "primary", "secondary"), g, g_ref):
        assert a.shape == b.shape, name
        assert_close(a, b, rtol)


# (L, M_in, M, k, stride, H, W): c_in = L·M_in, features = L·M. Every kernel size × stride, L = 1,
# M = 1, odd (and unequal) spatial sizes, and a widening layer (M_in ≠ M) as at a stage change.
CASES = [
    (1, 3, 3, 3, 1, 7, 5),
    (3, 1, 1, 3, 2, 7, 7),
    (2, 3, 3, 5, 1, 5, 7),
    (3, 2, 2, 5, 2, 9, 7),
    (2, 2, 4, 1, 1, 5, 5),
    (4, 1, 2, 1, 2, 7, 5),
]


@pytest.mark.parametrize("L, M_in, M, k, stride, H, W", CASES)
def test_references_agree(L, M_in, M, k, stride, H, W):
    """numpy loops (formula kernel, loop convolution) == jax formula == jax step-by-step."""
    x, p, s = random_case(1, N=2, H=H, W=W, c_in=L * M_in, k=k, features=L * M, L=L, M=M)
    args = dict(L=L, M=M, strides=(stride, stride), padding=same_padding((k, k)))
    y_np = naive_conv(x, formula_kernel(p, s, L, M), args["strides"], args["padding"])
    with jax.enable_x64(True):
        np.testing.assert_allclose(reference(x, p, s, **args), y_np, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(literal_reference(x, p, s, **args), y_np, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L, M_in, M, k, stride, H, W", CASES)
def test_mode_equals_formula(L, M_in, M, k, stride, H, W, mode):
    check_mode_against(reference, L=L, M_in=M_in, M=M, k=k, stride=stride, H=H, W=W, mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_mode_float32(mode):
    """The training dtype: float32 outputs and gradients match the float64 reference."""
    check_mode_against(reference, L=4, M_in=3, M=3, k=3, stride=1, H=9, W=9, mode=mode,
                       dtype=np.float32, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_mode_secondary_groups_other_than_C_over_L(mode):
    """The official CIFAR residual quirk (spec §2): M = C_in/L secondary groups when widening."""
    check_mode_against(literal_reference, L=2, M_in=2, M=4, k=3, stride=2, H=7, W=7, mode=mode,
                       layer_M=2)


@settings(max_examples=3, deadline=None)
@given(L=st.integers(1, 4), M=st.integers(1, 3), widen=st.booleans(), k=st.sampled_from([1, 3, 5]),
       stride=st.sampled_from([1, 2]), H=st.sampled_from([3, 5, 7]), W=st.sampled_from([3, 5, 7]),
       seed=st.integers(0, 1000))
def test_random_layers_every_mode(L, M, widen, k, stride, H, W, seed):
    for mode in MODES:
        check_mode_against(reference, L=L, M_in=M, M=2 * M if widen else M, k=k, stride=stride,
                           H=H, W=W, mode=mode, seed=seed)


CONTEXTS = [select.ModeContext("cpu", native=False), select.ModeContext("gpu"),
            select.ModeContext("tpu")] + (
    [select.ModeContext("cpu", native=True)] if native.available() else [])


@pytest.mark.parametrize("context", CONTEXTS, ids=lambda c: f"{c.backend}-native{c.native}")
@pytest.mark.parametrize("L, M_in, M, k, stride, H, W", CASES[:3])
def test_auto_in_every_context_equals_formula(L, M_in, M, k, stride, H, W, context):
    """The mode `auto` plans in each context (computed on this CPU) against the float64
    reference."""
    case = dict(L=L, M_in=M_in, M=M, k=k, stride=stride, H=H, W=W)
    args, _, _, module = reference_case(reference, **case)
    shape = module.layer_shape(args[0].shape)
    mode = select.decide([shape], "auto", context).mode(shape)
    assert mode == select.select_mode(shape, context)
    check_mode_against(reference, mode=mode, **case)


# ----------------------------------------------------------------------------- parameter count

@pytest.mark.parametrize("L, M, S", [(L, M, k * k) for L, M_in, M, k, *_ in CASES]
                         + [(24, 2, 9), (8, 8, 9), (4, 16, 9), (64, 1, 9), (40, 2, 9), (16, 4, 25)])
def test_param_count(L, M, S):
    k = int(np.sqrt(S))
    x = jax.ShapeDtypeStruct((1, 8, 8, L * M), jnp.float32)
    params = jax.eval_shape(layer(L * M, L, k=k).init, jax.random.key(0), x)["params"]
    assert set(params) == {"primary", "secondary"}
    n = sum(int(np.prod(v.shape)) for v in params.values())
    assert n == L * M * M * S + M * L * L == kernels.igc_param_count(L, M, S)


# ----------------------------------------------------------------------------- special cases

def _data(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("mode", MODES)
def test_L1_is_a_regular_conv_then_channel_scale(mode):
    """L = 1: full k×k primary, secondary = one scale per channel (1×1 conv with C groups)."""
    C, k = 6, 3
    x, p, s = _data(0, 2, 7, 7, C), _data(1, k, k, C, C), _data(2, 1, 1, 1, C)
    pad = same_padding((k, k))
    with jax.enable_x64(True):
        y = apply_fn(layer(C, 1, mode=mode))(x, p, s)
        np.testing.assert_allclose(y, dense_conv(x, p, (1, 1), pad) * s[0, 0, 0], rtol=1e-10)
        np.testing.assert_allclose(y, dense_conv(x, p * s[0, 0], (1, 1), pad), rtol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_M1_is_depthwise_then_pointwise(mode):
    """M = 1: depthwise k×k primary (L = C groups), then one full 1×1 conv (Xception-like)."""
    C, k, stride = 5, 3, 2
    x, p, s = _data(0, 2, 7, 9, C), _data(1, k, k, 1, C), _data(2, 1, 1, C, C)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    Ho, Wo = 4, 5
    depthwise = sum(xp[:, a:a + stride * Ho:stride, b:b + stride * Wo:stride] * p[a, b, 0]
                    for a in range(k) for b in range(k))
    with jax.enable_x64(True):
        y = apply_fn(layer(C, C, 1, k, stride, mode))(x, p, s)
    np.testing.assert_allclose(y, depthwise @ s[0, 0], rtol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_sum_fusion_is_grouped_conv_then_branch_sum(mode):
    """All-ones secondary: output channel (l', m') = Σ_l (primary branch l)[m'] for every l'."""
    L, M, k = 3, 2, 3
    x, p = _data(0, 2, 5, 5, L * M), _data(1, k, k, M, L * M)
    module = layer(L * M, L, mode=mode, sum_fusion=True)
    params = jax.eval_shape(module.init, jax.random.key(0), x)["params"]
    assert set(params) == {"primary"}  # the all-ones kernel is fixed, not learned
    with jax.enable_x64(True):
        y = module.apply({"params": {"primary": p}}, x)
        branches = lax.conv_general_dilated(x, p, (1, 1), same_padding((k, k)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=L)
    summed = np.asarray(branches).reshape(2, 5, 5, L, M).sum(axis=3)
    np.testing.assert_allclose(y, np.tile(summed, (1, 1, 1, L)), rtol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_four_branch_view_of_a_regular_conv(mode):
    """A regular conv over 2 input partitions == IGC (L = 4) over the duplicated input whose
    secondary conv is the fixed 0/1 cross-summation; the output comes out duplicated."""
    K, N, k = 3, 2, 3
    x, W = _data(0, 2, 7, 5, 2 * K), _data(1, k, k, 2 * K, 2 * N)
    with jax.enable_x64(True):
        p, s = kernels.four_branch_kernels(jnp.asarray(W))
        assert p.shape == (k, k, K, 4 * N) and s.shape == (1, 1, 4, 4 * N)
        assert set(np.unique(s)) == {0.0, 1.0}
        y = apply_fn(layer(4 * N, 4, N, k, 1, mode))(np.concatenate([x, x], -1), p, s)
        y_regular = dense_conv(x, W, (1, 1), same_padding((k, k)))
    np.testing.assert_allclose(y, np.concatenate([y_regular, y_regular], -1), rtol=1e-10)


def test_four_branch_rejects_odd_widths():
    with pytest.raises(ValueError, match="5"):
        kernels.four_branch_kernels(jnp.zeros((3, 3, 5, 4)))


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, c_in, numbers", [
    (dict(features=8, L=2), 7, ["7 input channels", "L=2"]),
    (dict(features=9, L=2), 8, ["9 output channels", "L=2"]),  # c_in fine, features not
    (dict(features=8, L=2, M=3), 8, ["8 output channels", "M=3"]),
    (dict(features=8, L=2, M=0), 8, ["M=0"]),
    (dict(features=8, L=2, kernel_size=(2, 2)), 8, ["(2, 2)"]),
    (dict(features=8, L=2, kernel_size=(3,)), 8, ["(3,)"]),
    (dict(features=8, L=2, strides=(0, 1)), 8, ["(0, 1)"]),
])
def test_bad_shapes_raise_before_compiling(kwargs, c_in, numbers):
    """jax.eval_shape only traces: the ValueError comes before anything is compiled."""
    x = jax.ShapeDtypeStruct((1, 7, 7, c_in), jnp.float32)
    with pytest.raises(ValueError) as err:
        jax.eval_shape(IGCConv(**kwargs).init, jax.random.key(0), x)
    for n in numbers:
        assert n in str(err.value)


def test_loaded_secondary_of_wrong_width_is_rejected():
    module = layer(8, 2)
    x = np.zeros((1, 5, 5, 8), np.float32)
    params = {"primary": np.zeros((3, 3, 4, 8), np.float32),
              "secondary": np.zeros((1, 1, 4, 8), np.float32)}  # expected (1, 1, 2, 8)
    # Both shapes are named (flax 0.10.0 names them in the opposite order to flax 0.12.8).
    both = r"\(1, 1, 2, 8\).*\(1, 1, 4, 8\)|\(1, 1, 4, 8\).*\(1, 1, 2, 8\)"
    with pytest.raises(flax.errors.ScopeParamShapeError, match=both):
        module.apply({"params": params}, x)
