"""`IGCConv`: the interleaved group convolution as a Flax linen module (spec §1).

It holds exactly two parameters, the compact grouped kernels of the primary (kh×kw, L groups) and
secondary (1×1, M groups) convolutions, and computes the layer with the mode it is given, one of
`igc_jax.igc.modes` (a network's modes come from its `select.ModePlan`); `auto` applies
`igc_jax.igc.select`'s rules in this process's context. `layer_shapes` lists a network's IGC
layers (and depthwise convs, `igc_jax.igc.depthwise`) from shapes alone, which is what a plan is
decided from.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from igc_jax.igc import kernels, modes, select
from igc_jax.igc.select import LayerShape

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


def resolve_mode(mode: str, shape: LayerShape) -> str:
    """The concrete mode of one layer: `mode` itself, or for `auto` `select.select_mode`'s choice
    in this process's context (`select.detect_context()`)."""
    check_mode(mode)
    if mode != "auto":
        return mode
    return select.select_mode(shape, select.detect_context())


def igc_layer_shape(input_shape: Sequence[int], features: int, L: int, M: int,
                    kernel_size: Sequence[int] = (3, 3),
                    strides: Sequence[int] = (1, 1)) -> LayerShape:
    """What a mode is chosen by, for an IGC layer on an NHWC input of `input_shape`."""
    return LayerShape(L=L, M=M, C_in=input_shape[-1], C=features, kernel=tuple(kernel_size),
                      strides=tuple(strides), size=tuple(input_shape[1:3]))


def igc_apply(x, primary, secondary, *, L, M, strides=(1, 1), padding=((1, 1), (1, 1)),
              mode: str = "auto"):
    """The IGC layer as a function of its two kernels, computed by `mode` (see `resolve_mode`)."""
    kernels.check_igc_shapes(x.shape[-1], primary.shape, secondary.shape, L, M)
    kh, kw, _, C = primary.shape
    name = resolve_mode(mode, igc_layer_shape(x.shape, C, L, M, (kh, kw), strides))
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
      mode: one of `ALL_MODES` (every mode gives the same output and gradients), or `auto`:
        `select.select_mode` in this process's context.
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
                         mode=self.mode)

    def layer_shape(self, input_shape: tuple[int, ...]) -> LayerShape:
        """What a mode is chosen by, for an NHWC input of `input_shape`."""
        return igc_layer_shape(input_shape, self.features, self.L, self.secondary_groups,
                               self.kernel_size, self.strides)


def layer_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, LayerShape]:
    """{layer path: layer shape} of every layer in `model` that has a computation mode (IGCConv,
    `depthwise.DepthwiseConv`: a module with a `layer_shape` method), from shapes alone.

    Runs `model.init` under `jax.eval_shape` (nothing compiles, no arrays are made) and records
    each IGC layer's input. A network's shapes do not depend on its modes: build `model` with an
    explicit mode (e.g. `ModePlan("grouped")`), so that tracing it decides nothing and builds no
    C++ kernel.
    """
    found: dict[str, LayerShape] = {}

    def interceptor(next_fun, args, kwargs, ctx):
        module = ctx.module
        if hasattr(type(module), "layer_shape") and ctx.method_name == "__call__":
            found["/".join(module.path)] = module.layer_shape(args[0].shape)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                          jnp.zeros((1, *input_shape), jnp.float32), train=False))
    return found


