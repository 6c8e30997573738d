"""`DepthwiseConv`: a depthwise convolution (IGCV3's 3×3 middle conv) with a computation mode.

A depthwise conv is an IGC primary conv with one channel per group (L = C) and no secondary, so
mode `native`'s C++ primary-conv kernel computes it as it is: on CPU, XLA's grouped convolution
with `feature_group_count` = C and its gradient measured 25× slower than that kernel
(benchmarks/results/igcv3.md). The mode comes from the network's `select.ModePlan` like an IGC
layer's (`select.DEPTHWISE_MODES`, decided in `select.decide`); the parameter is the one
`flax.linen.Conv(features=C, feature_group_count=C, use_bias=False)` has, `kernel` of shape
(kh, kw, 1, C), so converted and saved weights do not depend on the mode.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from igc_jax.igc import modes, native, select
from igc_jax.igc.layers import check_layer_geometry, he_normal, same_padding
from igc_jax.igc.select import LayerShape


def depthwise_shape(input_shape: Sequence[int], kernel_size: Sequence[int] = (3, 3),
                    strides: Sequence[int] = (1, 1)) -> LayerShape:
    """What a depthwise conv's mode is chosen by, for an NHWC input of `input_shape`."""
    C = input_shape[-1]
    return LayerShape(L=C, M=1, C_in=C, C=C, kernel=tuple(kernel_size), strides=tuple(strides),
                      size=tuple(input_shape[1:3]), depthwise=True)


def depthwise_apply(x, kernel, *, strides=(1, 1), padding=((1, 1), (1, 1)), mode: str = "auto"):
    """The depthwise conv of NHWC `x` with `kernel` (kh, kw, 1, C) by `mode`: `grouped`,
    `native`, or `auto` (`select.select_mode` in this process's context)."""
    kh, kw, one, C = kernel.shape
    if one != 1 or x.shape[-1] != C:
        raise ValueError(f"depthwise conv: kernel {kernel.shape} on {x.shape[-1]} channels")
    if mode == "auto":
        mode = select.select_mode(depthwise_shape(x.shape, (kh, kw), strides),
                                  select.detect_context())
    padding = tuple(map(tuple, padding))
    if mode == "native":
        return native.primary_conv(x, kernel, C, tuple(strides), padding)
    if mode == "grouped":
        return modes.conv(x, kernel, strides, padding, groups=C)
    raise ValueError(f"unknown depthwise computation mode {mode!r}; choose from auto, "
                     f"{', '.join(select.DEPTHWISE_MODES)}")


class DepthwiseConv(nn.Module):
    """kh×kw depthwise convolution, no bias, symmetric padding k // 2 unless given.

    Attributes:
      mode: `grouped`, `native` or `auto` (see `depthwise_apply`); the same output and gradients.
      kernel_init: of `kernel`, fan_in = kh·kw.
    """
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: Sequence[tuple[int, int]] | None = None
    mode: str = "auto"
    kernel_init: Callable = he_normal
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        check_layer_geometry(self.kernel_size, self.strides)
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, 1, x.shape[-1]),
                            self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, kernel)
        padding = self.padding if self.padding is not None else same_padding(self.kernel_size)
        return depthwise_apply(x.astype(dtype), kernel.astype(dtype), strides=self.strides,
                               padding=padding, mode=self.mode)

    def layer_shape(self, input_shape: tuple[int, ...]) -> LayerShape:
        """What a mode is chosen by, for an NHWC input of `input_shape`."""
        return depthwise_shape(input_shape, self.kernel_size, self.strides)
