"""`IGCConv`: the interleaved group convolution as a Flax linen module (spec §1); the networks'
1×1 projections (`PointwiseConv`) and BatchNorm (`BatchNorm`), each as flax's own but faster on CPU.

It holds exactly two parameters, the compact grouped kernels of the primary (kh×kw, L groups) and
secondary (1×1, M groups) convolutions, and computes the layer with any mode of `igc_jax.ops`.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from igc_jax import kernels, ops

# He-normal, std = sqrt(2 / fan_in), fan_in = (C_in / groups)·kh·kw (spec §2); not truncated.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def same_padding(kernel_size: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Symmetric padding k // 2 on each side, as the official MXNet code (pad=1 for 3×3)."""
    return tuple((k // 2, k // 2) for k in kernel_size)


def check_igc_shape(c_in: int, features: int, L: int, M: int, kernel_size: Sequence[int],
                    strides: Sequence[int]) -> None:
    """Raise ValueError naming the numbers when an IGC layer of these sizes cannot exist."""
    if L <= 0 or M <= 0:
        raise ValueError(f"IGC layer: L={L} and M={M} must be positive")
    if c_in % L:
        raise ValueError(f"IGC layer: {c_in} input channels are not divisible by L={L}")
    if features % L:
        raise ValueError(f"IGC layer: {features} output channels are not divisible by L={L}")
    if features % M:
        raise ValueError(
            f"IGC layer: {features} output channels are not divisible into M={M} secondary groups")
    if len(kernel_size) != 2 or any(k < 1 or k % 2 == 0 for k in kernel_size):
        raise ValueError(f"IGC layer: kernel size {tuple(kernel_size)} must be two odd sizes ≥ 1")
    if len(strides) != 2 or any(s < 1 for s in strides):
        raise ValueError(f"IGC layer: strides {tuple(strides)} must be two integers ≥ 1")


class IGCConv(nn.Module):
    """Primary group conv (L groups) → shuffle(L) → secondary 1×1 group conv (M groups) → shuffle(M).

    Attributes:
      features: output width C (= L·M in the paper's layers).
      L: number of primary groups.
      M: number of secondary groups; default C / L. The official CIFAR residual code uses C_in / L in
        the first layer of a downsampling unit (spec §2's quirk), which is why it is separate.
      sum_fusion: fix the secondary kernel to all-ones blocks (SumFusion); then it is no parameter.
      mode: `auto`, or a key of `igc_jax.ops.MODES`; every mode gives the same output and gradients.
    """
    features: int
    L: int
    M: int | None = None
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: Sequence[tuple[int, int]] | None = None
    sum_fusion: bool = False
    mode: str = "auto"
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
        check_igc_shape(c_in, self.features, self.L, M, self.kernel_size, self.strides)
        kh, kw = self.kernel_size
        primary = self.param("primary", he_normal, (kh, kw, c_in // self.L, self.features),
                             self.param_dtype)
        if self.sum_fusion:
            secondary = kernels.sum_fusion_kernel(self.features, M, self.param_dtype)
        else:
            secondary = self.param("secondary", he_normal, (1, 1, self.features // M, self.features),
                                   self.param_dtype)
        dtype = self.dtype or x.dtype
        padding = self.padding if self.padding is not None else same_padding(self.kernel_size)
        return ops.igc_apply(x.astype(dtype), primary.astype(dtype), secondary.astype(dtype),
                             L=self.L, M=M, strides=tuple(self.strides), padding=padding,
                             mode=self.mode)


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
                             f"inputs and {self.features} outputs do not form a 1×1 conv in {groups} groups")
        kernel = self.param("kernel", self.kernel_init,
                            (1, 1, inputs.shape[-1] // groups, self.features), self.param_dtype)
        sh, sw = self.strides
        dtype = self.dtype or jnp.result_type(inputs, kernel)
        return ops.pointwise_grouped(inputs[:, ::sh, ::sw].astype(dtype), kernel.astype(dtype), groups)


def _batch_stats(x32):
    """Mean and (fast, clipped) variance over every axis but the channels, as nn.BatchNorm."""
    axes = tuple(range(x32.ndim - 1))
    mean = jnp.mean(x32, axes)
    return mean, jnp.maximum(0.0, jnp.mean(jnp.square(x32), axes) - jnp.square(mean))


def _normalize(x, mean, var, scale, bias, epsilon):
    a = scale * lax.rsqrt(var + epsilon)
    return ((x.astype(jnp.float32) - mean) * a + bias).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon: float):
    """BatchNorm with the batch's own statistics: (y, mean, var), reductions in float32.

    The hand-written gradient takes one reduction pass (Σdy, Σdy·x) and one elementwise pass;
    XLA's autodiff of the same formula made nn.BatchNorm + ReLU 3× slower (18 vs 6 ms fwd+bwd at
    128×32×32×48 on the 2-core CPU), a large part of an IGC net's step there.
    """
    mean, var = _batch_stats(x.astype(jnp.float32))
    return _normalize(x, mean, var, scale, bias, epsilon), mean, var


def _batch_norm_train_fwd(x, scale, bias, epsilon):
    y, mean, var = batch_norm_train(x, scale, bias, epsilon)
    return (y, mean, var), (x, mean, var, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
    x, mean, var, scale = residuals
    dy, dmean, dvar = cotangents  # dmean, dvar: from whatever used the returned statistics
    n = x.size // x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    x32, dy32 = x.astype(jnp.float32), dy.astype(jnp.float32)
    inv = lax.rsqrt(var + epsilon)
    dbias = jnp.sum(dy32, axes)
    dscale = (jnp.sum(dy32 * x32, axes) - mean * dbias) * inv
    a = scale * inv
    # dx = a·dy + coef·(x - mean) + const: through y, and through the returned mean and variance.
    coef = (2.0 * dvar - a * inv * dscale) / n
    const = (dmean - a * dbias) / n
    dx = a * dy32 + coef * (x32 - mean) + const
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.Module):
    """nn.BatchNorm over the last axis with the same variables, initialisation, statistics and
    running averages (fast variance, float32 reductions), and a hand-written gradient
    (`batch_norm_train`). Batch statistics are global under jit + NamedSharding (GSPMD)."""
    use_running_average: bool
    momentum: float = 0.99
    epsilon: float = 1e-5
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
            y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y.astype(self.dtype)
