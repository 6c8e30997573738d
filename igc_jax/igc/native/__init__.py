"""C++ XLA FFI kernels for an IGC layer on CPU (igc_kernels.cc), built on first use: mode `native`.

Why native code: on CPU, XLA's grouped convolution and every pure-XLA rewrite of it (modes.py)
stay 7–27× above the layer's roofline (fwd+bwd, benchmarks/results/cpu.md); these kernels do
exactly the primary conv's multiply-adds, vectorised along NHWC channels, and the mixing
matrix's gradient without XLA's transposed copies.

The shared library is compiled with the system's C++ compiler (`$CXX`, else g++) against jaxlib's
FFI headers the first time it is needed, and cached in `$IGC_JAX_NATIVE_CACHE` (default
~/.cache/igc_jax/native) under a name that hashes the source, compiler, flags, jaxlib and CPU;
`available()` is False (with `build_error()` saying why) when that fails, and `auto` then uses the
pure-XLA modes.
"""
from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from igc_jax.igc.native import build
from igc_jax.igc.native.build import NativeUnavailable

SOURCE = pathlib.Path(__file__).with_name("igc_kernels.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
TARGETS = {"igc_primary_forward": "IgcPrimaryForward",
           "igc_primary_kernel_grad": "IgcPrimaryKernelGrad",
           "igc_mixing_grad": "IgcMixingGrad",
           "igc_secondary_forward": "IgcSecondaryForward",
           "igc_secondary_weight_grad": "IgcSecondaryWeightGrad"}
# Secondary groups M the sparse secondary kernel handles (vector lanes repeat a group's M inputs).
SECONDARY_GROUPS = (1, 2, 4, 8)


def _build() -> pathlib.Path:
    """The kernels' library, built against this jaxlib's FFI headers (cached, `build.build`)."""
    return build.build(SOURCE, FLAGS, key=(jax.__version__, jax.ffi.include_dir()),
                       args=("-isystem", jax.ffi.include_dir()))


@functools.cache
def _register() -> str | None:
    """Build, load and register the FFI targets once per process; the error text, or None."""
    import ctypes
    try:
        lib = ctypes.cdll.LoadLibrary(str(_build()))
        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
    except (NativeUnavailable, OSError, AttributeError) as e:
        return str(e)
    return None


def available() -> bool:
    """Whether the native kernel is built and registered (builds it on the first call)."""
    return jax.default_backend() == "cpu" and _register() is None


def build_error() -> str | None:
    """Why `available()` is False, or None."""
    if jax.default_backend() != "cpu":
        return f"the native kernel is CPU-only (backend: {jax.default_backend()})"
    return _register()


def _require() -> None:
    error = build_error()
    if error:
        raise NativeUnavailable(f"IGC mode 'native' is unavailable: {error}")


def _attrs(L, strides, padding) -> dict:
    (pt, _), (pl, _) = padding
    return dict(L=np.int64(L), sh=np.int64(strides[0]), sw=np.int64(strides[1]),
                pt=np.int64(pt), pl=np.int64(pl))


def _out_hw(x_shape, kernel_shape, strides, padding):
    (pt, pb), (pl, pr) = padding
    Ho = (x_shape[1] + pt + pb - kernel_shape[0]) // strides[0] + 1
    Wo = (x_shape[2] + pl + pr - kernel_shape[1]) // strides[1] + 1
    return Ho, Wo


def _compute_dtype(dtype):
    """The kernel runs in float32 or float64; other floats (bfloat16) are computed in float32."""
    return dtype if dtype in (jnp.float32, jnp.float64) else jnp.float32


def _call(target: str, out_shape, *args, **attrs):
    """Runs a registered kernel in float32 or float64 (bfloat16 in float32); args[0]'s dtype out."""
    _require()
    dt = _compute_dtype(args[0].dtype)
    out = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(tuple(out_shape), dt),
                           vmap_method="sequential")(*(a.astype(dt) for a in args), **attrs)
    return out.astype(args[0].dtype)


def _forward(x, w, L, strides, padding):
    Ho, Wo = _out_hw(x.shape, w.shape, strides, padding)
    return _call("igc_primary_forward", (x.shape[0], Ho, Wo, w.shape[3]), x, w,
                 **_attrs(L, strides, padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def primary_conv(x, w, L: int, strides: tuple, padding: tuple):
    """The primary group conv of an IGC layer: x NHWC, w (kh, kw, C_in/L, C), explicit padding."""
    return _forward(x, w, L, strides, padding)


def _primary_fwd(x, w, L, strides, padding):
    return _forward(x, w, L, strides, padding), (x, w)


def _input_grad(dy, w, L, strides, padding, x_shape):
    """dx as a stride-1 primary conv of dy (dilated by the stride) with the flipped kernel.

    dx[h, (l, ci)] = Σ_{i', j', o} dyd[h + i' - p', ...] · w[kh-1-i', kw-1-j', ci, (l, o)] with
    p' = kh-1-pt: the same L groups with the roles of C_in/L and C/L swapped, so the forward
    kernel computes it, padding included. Strided layers first spread dy on the input grid.
    """
    kh, kw, cin_g, C = w.shape
    _, H, W, _ = x_shape
    (pt, _), (pl, _) = padding
    sh, sw = strides
    if (sh, sw) != (1, 1):
        dy = jax.lax.pad(dy, jnp.zeros((), dy.dtype),
                         ((0, 0, 0), (0, 0, sh - 1), (0, 0, sw - 1), (0, 0, 0)))
    top, left = kh - 1 - pt, kw - 1 - pl  # bottom, right: whatever makes the output H × W
    pad = ((top, H + kh - 1 - dy.shape[1] - top), (left, W + kw - 1 - dy.shape[2] - left))
    wt = w[::-1, ::-1].reshape(kh, kw, cin_g, L, C // L).transpose(0, 1, 4, 3, 2)
    return _forward(dy, wt.reshape(kh, kw, C // L, L * cin_g), L, (1, 1), pad)


def _primary_bwd(L, strides, padding, residuals, dy):
    x, w = residuals
    dx = _input_grad(dy, w, L, strides, padding, x.shape)
    dw = _call("igc_primary_kernel_grad", w.shape, x, dy, **_attrs(L, strides, padding))
    return dx, dw.astype(w.dtype)


primary_conv.defvjp(_primary_fwd, _primary_bwd)


@jax.custom_vjp
def mix(y1, Q):
    """y1 @ Q over the channels of NHWC y1: XLA's dot forward; Q's gradient by the C++ kernel.

    dQ = y1ᵀ·dy contracts over every pixel; XLA's CPU dot first copies both operands transposed
    (channel-major), which took longer than the product itself (benchmarks/results/cpu.md).
    """
    return y1 @ Q


def _mix_fwd(y1, Q):
    return mix(y1, Q), (y1, Q)


def _mix_bwd(residuals, dy):
    y1, Q = residuals
    return dy @ Q.T, _call("igc_mixing_grad", Q.shape, y1, dy).astype(Q.dtype)


mix.defvjp(_mix_fwd, _mix_bwd)


@jax.custom_vjp
def secondary(y1, wt):
    """Shuffle(L) → secondary conv → shuffle(M) when C/L = M, with the secondary's own MACs.

    wt = shuffle(secondary[0, 0], M), shape (L, C): y[..., o·M + g] = Σ_t wt[t, o·M + g] ·
    y1[..., t·M + g]. M× fewer multiply-adds than the dense mixing matrix (`mix`); M in
    SECONDARY_GROUPS.
    """
    return _call("igc_secondary_forward", y1.shape, y1, wt)


def _secondary_fwd(y1, wt):
    return secondary(y1, wt), (y1, wt)


def _secondary_bwd(residuals, dy):
    y1, wt = residuals
    T, C = wt.shape
    # dy1[t·M + g] = Σ_o wt[t, o·M + g] dy[o·M + g]: the same product with wt's blocks transposed.
    wt_t = wt.reshape(T, T, C // T).transpose(1, 0, 2).reshape(T, C)
    dy1 = _call("igc_secondary_forward", dy.shape, dy, wt_t)
    dwt = _call("igc_secondary_weight_grad", wt.shape, y1, dy)
    return dy1, dwt.astype(wt.dtype)


secondary.defvjp(_secondary_fwd, _secondary_bwd)
