"""`IGCConv`: the interleaved group convolution as a Flax linen module (spec §1); the networks'
1×1 projections (`PointwiseConv`) and BatchNorm (`BatchNorm`), each as flax's own but faster on CPU.

It holds exactly two parameters, the compact grouped kernels of the primary (kh×kw, L groups) and
secondary (1×1, M groups) convolutions, and computes the layer with any mode of
`igc_jax.igc.modes`; `auto` asks `igc_jax.igc.select` with the module's explicit `ModeContext`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from igc_jax.igc import kernels, modes, select
from igc_jax.igc.select import LayerShape, ModeContext

# Every mode a layer can be asked for by name.
ALL_MODES = modes.MODES
MODE_NAMES = ("auto", *ALL_MODES)

# He-normal, std = sqrt(2 / fan_in), fan_in = (C_in / groups)·kh·kw (spec §2); not truncated.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def same_padding(kernel_size: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Symmetric padding k // 2 on each side, as the official MXNet code (pad=1 for 3×3)."""
    return tuple((k // 2, k // 2) for k in kernel_size)


def check_layer_geometry(kernel_size: Sequence[int], strides: Sequence[int]) -> None:
    """ValueError naming them when the kernel size or strides cannot make an IGC layer."""
    if len(kernel_size) != 2 or any(k < 1 or k % 2 == 0 for k in kernel_size):
        raise ValueError(f"IGC layer: kernel size {tuple(kernel_size)} must be two odd sizes ≥ 1")
    if len(strides) != 2 or any(s < 1 for s in strides):
        raise ValueError(f"IGC layer: strides {tuple(strides)} must be two integers ≥ 1")


def check_mode(mode: str) -> None:
    """ValueError unless `mode` is `auto` or a computation mode (the layer's precondition)."""
    if mode not in MODE_NAMES:
        raise ValueError(f"unknown IGC computation mode {mode!r}; choose from "
                         f"{', '.join(MODE_NAMES)}")


def resolve_mode(mode: str, shape: LayerShape, context: ModeContext | None) -> str:
    """The concrete mode of one layer: `mode` itself, or for `auto` `select.select_mode`'s choice
    in `context` (default: this process's `select.detect_context()`)."""
    check_mode(mode)
    if mode != "auto":
        return mode
    return select.select_mode(shape, context or select.detect_context())


def igc_apply(x, primary, secondary, *, L, M, strides=(1, 1), padding=((1, 1), (1, 1)),
              mode: str = "auto", context: ModeContext | None = None):
    """The IGC layer as a function of its two kernels, computed by `mode` (see `resolve_mode`)."""
    kernels.check_igc_shapes(x.shape[-1], primary.shape, secondary.shape, L, M)
    kh, kw, _, C = primary.shape
    shape = LayerShape(L=L, M=M, C_in=x.shape[-1], C=C, kernel=(kh, kw), strides=tuple(strides),
                       size=tuple(x.shape[1:3]))
    name = resolve_mode(mode, shape, context)
    return ALL_MODES[name](x, primary, secondary, L=L, M=M, strides=tuple(strides),
                           padding=tuple(map(tuple, padding)))


class IGCConv(nn.Module):
    """Primary group conv (L groups) → shuffle(L) → secondary 1×1 group conv (M groups)
    → shuffle(M).

    Attributes:
      features: output width C (= L·M in the paper's layers).
      L: number of primary groups.
      M: number of secondary groups; default C / L. The official CIFAR residual code uses C_in / L
        in the first layer of a downsampling unit (spec §2's quirk), which is why it is separate.
      sum_fusion: fix the secondary kernel to all-ones blocks (SumFusion); then it is no parameter.
      mode: `auto`, or one of `ALL_MODES`; every mode gives the same output and gradients.
      context: what `auto` may use (backend, native kernels); None: `select.detect_context()`.
      kernel_init: of both kernels (fan_in = kh·kw·C_in/L and C/M); default He-normal (spec §2).
    """
    features: int
    L: int
    M: int | None = None
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: Sequence[tuple[int, int]] | None = None
    sum_fusion: bool = False
    mode: str = "auto"
    context: ModeContext | None = None
    kernel_init: Callable = he_normal
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @property
    def secondary_groups(self) -> int:
        if self.M is not None:
            return self.M
        if self.L <= 0:
            raise ValueError(f"IGC layer: L={self.L} must be positive")
        return self.features // self.L

    @nn.compact
    def __call__(self, x):
        c_in = x.shape[-1]
        M = self.secondary_groups
        check_layer_geometry(self.kernel_size, self.strides)
        kh, kw = self.kernel_size
        L = self.L
        kernels.check_igc_shapes(c_in, (kh, kw, c_in // L if L > 0 else 0, self.features),
                                 (1, 1, self.features // M if M > 0 else 0, self.features), L, M)
        primary = self.param("primary", self.kernel_init, (kh, kw, c_in // self.L, self.features),
                             self.param_dtype)
        if self.sum_fusion:
            secondary = kernels.sum_fusion_kernel(self.features, M, self.param_dtype)
        else:
            secondary = self.param("secondary", self.kernel_init,
                                   (1, 1, self.features // M, self.features), self.param_dtype)
        dtype = self.dtype or x.dtype
        padding = self.padding if self.padding is not None else same_padding(self.kernel_size)
        return igc_apply(x.astype(dtype), primary.astype(dtype), secondary.astype(dtype),
                         L=self.L, M=M, strides=tuple(self.strides), padding=padding,
                         mode=self.mode, context=self.context)

    def layer_shape(self, input_shape: tuple[int, ...]) -> LayerShape:
        """What `auto` decides from, for an NHWC input of `input_shape`."""
        return LayerShape(L=self.L, M=self.secondary_groups, C_in=input_shape[-1],
                          C=self.features, kernel=tuple(self.kernel_size),
                          strides=tuple(self.strides), size=tuple(input_shape[1:3]))


class PointwiseConv(nn.Conv):
    """`nn.Conv` with a 1×1 kernel and no padding, computed as a matmul batched over the groups.

    Same parameter (`kernel`, (1, 1, C_in/groups, C)), initialisation and result as `nn.Conv`, so
    summaries and converted checkpoints see a plain conv. Why: on CPU XLA's grouped 1×1 stride-2
    convolution (the +Ident. projections) and its gradient measured about 25× slower than this.
    """

    @nn.compact
    def __call__(self, inputs):
        groups = self.feature_group_count
        if tuple(self.kernel_size) != (1, 1) or inputs.shape[-1] % groups or self.features % groups:
            raise ValueError(f"PointwiseConv: kernel {tuple(self.kernel_size)}, {inputs.shape[-1]} "
                             f"inputs and {self.features} outputs do not form a 1×1 conv in "
                             f"{groups} groups")
        kernel = self.param("kernel", self.kernel_init,
                            (1, 1, inputs.shape[-1] // groups, self.features), self.param_dtype)
        sh, sw = self.strides
        dtype = self.dtype or jnp.result_type(inputs, kernel)
        return modes.pointwise_grouped(inputs[:, ::sh, ::sw].astype(dtype), kernel.astype(dtype),
                                       groups)


def _batch_stats(x32, axis_name: str | None):
    """Mean and (fast, clipped) variance over every axis but the channels, as nn.BatchNorm; with
    `axis_name`, over the whole batch of that mesh axis (equal shards: the mean of the shards'
    moments), in one all-reduce of the two moments."""
    axes = tuple(range(x32.ndim - 1))
    moments = jnp.stack([jnp.mean(x32, axes), jnp.mean(jnp.square(x32), axes)])
    if axis_name is not None:
        moments = lax.pmean(moments, axis_name)
    mean, mean_sq = moments
    return mean, jnp.maximum(0.0, mean_sq - jnp.square(mean))


def _normalize(x, mean, var, scale, bias, epsilon):
    a = scale * lax.rsqrt(var + epsilon)
    return ((x.astype(jnp.float32) - mean) * a + bias).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x, scale, bias, epsilon: float, axis_name: str | None = None):
    """BatchNorm with the batch's own statistics: (y, mean, var), reductions in float32.

    With `axis_name` (inside `shard_map`) the statistics are the global batch's, and the gradient
    is that of the global batch's BatchNorm: one all-reduce of (Σdy, Σdy·x̂) per layer in the
    backward pass; the parameter gradients stay per-shard sums (the step averages them once).
    The hand-written gradient takes one reduction pass (Σdy, Σdy·x) and one elementwise pass;
    XLA's autodiff of the same formula made nn.BatchNorm + ReLU 3× slower (18 vs 6 ms fwd+bwd at
    128×32×32×48 on the 2-core CPU), a large part of an IGC net's step there.
    """
    mean, var = _batch_stats(x.astype(jnp.float32), axis_name)
    return _normalize(x, mean, var, scale, bias, epsilon), mean, var


def _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name):
    y, mean, var = batch_norm_train(x, scale, bias, epsilon, axis_name)
    return (y, mean, var), (x, mean, var, scale)


def _batch_norm_train_bwd(epsilon, axis_name, residuals, cotangents):
    x, mean, var, scale = residuals
    dy, dmean, dvar = cotangents  # dmean, dvar: from whatever used the returned statistics
    n = x.size // x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    x32, dy32 = x.astype(jnp.float32), dy.astype(jnp.float32)
    inv = lax.rsqrt(var + epsilon)
    dbias = jnp.sum(dy32, axes)
    dscale = (jnp.sum(dy32 * x32, axes) - mean * dbias) * inv
    a = scale * inv
    if axis_name is None:
        total_dbias, total_dscale, total_dmean, total_dvar = dbias, dscale, dmean, dvar
    else:  # the global batch's sums: every shard's x moved the shared statistics
        n = n * lax.psum(1, axis_name)
        total_dbias, total_dscale, total_dmean, total_dvar = lax.psum(
            jnp.stack([dbias, dscale, dmean, dvar]), axis_name)
    # dx = a·dy + coef·(x - mean) + const: through y, and through the returned mean and variance.
    coef = (2.0 * total_dvar - a * inv * total_dscale) / n
    const = (total_dmean - a * total_dbias) / n
    dx = a * dy32 + coef * (x32 - mean) + const
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.Module):
    """nn.BatchNorm over the last axis with the same variables, initialisation, statistics and
    running averages (fast variance, float32 reductions), and a hand-written gradient
    (`batch_norm_train`). `axis_name`: inside `shard_map`, the mesh axis whose whole batch the
    statistics cover (None: this shard's batch only; the running averages are then averaged over
    the shards by the step, as each device's own BatchNorm in the authors' multi-GPU MXNet)."""
    use_running_average: bool
    momentum: float = 0.99
    epsilon: float = 1e-5
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, shape, jnp.float32)
        scale = self.param("scale", nn.initializers.ones, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, shape, jnp.float32)
        if self.use_running_average:
            y = _normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
        else:
            y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, self.axis_name)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y.astype(self.dtype)


def planned_modes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[str, str]]:
    """{layer path: (layer shape, concrete mode)} of every IGCConv in `model`, from shapes alone.

    Runs `model.init` under `jax.eval_shape` (nothing compiles, no arrays are made) and asks each
    layer which mode it resolves to, so a run can log and save its choices before compiling.
    """
    found: dict[str, tuple[str, str]] = {}

    def interceptor(next_fun, args, kwargs, ctx):
        module = ctx.module
        if isinstance(module, IGCConv) and ctx.method_name == "__call__":
            shape = module.layer_shape(args[0].shape)
            found["/".join(module.path)] = (shape.describe(),
                                            resolve_mode(module.mode, shape, module.context))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                          jnp.zeros((1, *input_shape), jnp.float32), train=False))
    return found
