"""IGCConv against naive references (spec §1): every mode of igc_jax.ops, outputs and gradients.

The reference builds the dense kernel with explicit loops over
    W[o, i, s] = W^d_{m'}[l', l] · W^p_l[m', m, s],   o = l'·M + m', i = l·M_in + m,
reading W^p_l[m', m, s] = primary[s, m, l·M + m'] and
W^d_{m'}[l', l] = secondary[0, 0, l, m'·L + l'] (Flax grouped layout: group g owns the g-th contiguous block of input and output channels), then
convolves in float64. The references use nothing from igc_jax.kernels or igc_jax.ops.
"""
from __future__ import annotations

import functools

import chex
import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax import lax

from igc_jax import kernels, layers, native, ops
from igc_jax.layers import IGCConv, same_padding

# `native` needs a C++ compiler; where none is found its own tests say so (tests/test_native.py).
MODES = [m for m in ops.MODES if m != "native" or native.available()]
_DN = ("NHWC", "HWIO", "NHWC")


# ----------------------------------------------------------------------------- references

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
        y, g = value_and_grads(apply_fn(module.clone(mode=mode)), *(a.astype(dtype) for a in args))
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


def test_auto_resolves_to_a_tested_mode():
    """`auto` is one of the modes checked above, and IGCConv(mode='auto') computes exactly it."""
    assert {ops.select_mode(), ops.select_mode("cpu"), ops.select_mode("gpu")} <= set(ops.MODES)
    L, M_in, M, k, stride, H, W = CASES[2]
    args, _, _, module = reference_case(reference, L=L, M_in=M_in, M=M, k=k, stride=stride, H=H,
                                        W=W)
    with jax.enable_x64(True):
        y_auto = apply_fn(module.clone(mode="auto"))(*args[:3])
        y_mode = apply_fn(module.clone(mode=ops.select_mode()))(*args[:3])
    np.testing.assert_array_equal(y_auto, y_mode)


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
                                            dimension_numbers=_DN, feature_group_count=L)
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
    with pytest.raises(flax.errors.ScopeParamShapeError, match=r"\(1, 1, 2, 8\).*\(1, 1, 4, 8\)"):
        module.apply({"params": params}, x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batch_norm_equals_flax(dtype):
    """layers.BatchNorm: nn.BatchNorm's variables, outputs, gradients and running averages."""
    x = (3.0 * jax.random.normal(jax.random.key(0), (4, 5, 3, 6)) + 1.5).astype(dtype)
    ct = jax.random.normal(jax.random.key(1), x.shape)
    kw = dict(momentum=0.9, epsilon=2e-5, dtype=dtype)
    ours, ref = layers.BatchNorm(use_running_average=False, **kw), nn.BatchNorm(
        use_running_average=False, **kw)
    v_ours, v_ref = ours.init(jax.random.key(2), x), ref.init(jax.random.key(2), x)
    chex.assert_trees_all_equal(v_ours, v_ref)
    params = {"scale": jnp.linspace(0.5, 2.0, 6), "bias": jnp.linspace(-1.0, 1.0, 6)}

    def run(module, variables):
        def loss(p, x):
            y, state = module.apply({"params": p, "batch_stats": variables["batch_stats"]}, x,
                                    mutable=["batch_stats"])
            # The running averages feed the loss too, so their gradient path is checked.
            stats = state["batch_stats"]
            return jnp.sum(jnp.sin(y.astype(jnp.float32)) * ct) + jnp.sum(
                stats["mean"] ** 2 + 3.0 * stats["var"]), (y, state)
        (_, (y, state)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, x)
        return y, state, grads

    tol = dict(rtol=2e-2, atol=2e-2) if dtype == jnp.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(run(ours, v_ours)), jax.tree.leaves(run(ref, v_ref))):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)
    eval_ours = layers.BatchNorm(use_running_average=True, **kw)
    eval_ref = nn.BatchNorm(use_running_average=True, **kw)
    np.testing.assert_allclose(
        np.asarray(eval_ours.apply({"params": params, "batch_stats": v_ref["batch_stats"]}, x),
                   np.float32),
        np.asarray(eval_ref.apply({"params": params, "batch_stats": v_ref["batch_stats"]}, x),
                   np.float32), **tol)
