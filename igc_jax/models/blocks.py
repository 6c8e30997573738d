"""Layers shared by the CIFAR and ImageNet networks, written as the official MXNet code builds them.

Each helper creates its Flax submodules under an explicit flat name (e.g. `stage2_unit1_igc1`), so
the parameter tree reads like the network table and maps one-to-one onto the MXNet symbol names.
They must be called from inside a `@nn.compact` method (the submodules attach to that module).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from igc_jax.igc.depthwise import DepthwiseConv, depthwise_shape
from igc_jax.igc.layers import IGCConv, he_normal, igc_layer_shape, same_padding
from igc_jax.igc.select import ModePlan
from igc_jax.models.norm import BatchNorm
from igc_jax.models.pointwise import PointwiseConv


@dataclasses.dataclass(frozen=True)
class Compute:
    """How a network computes, not what: the same parameters and function under every choice.

    plan: every IGC layer's computation mode, by layer shape, decided before the network is built
      (`igc_jax.igc.select.decide`).
    bn_axis: the mesh axis BatchNorm averages its batch statistics over when the step runs per
      device (`shard_map`): the global batch's statistics. None: this device's batch only.
    """
    plan: ModePlan = ModePlan()
    bn_axis: str | None = None

# BatchNorm epsilon of every official network (spec §2).
BN_EPSILON = 2e-5
# Uniform ±sqrt(1 / fan_in): the official classifier (MXNet Xavier, factor 'in', magnitude 1), and
# PyTorch's default for Conv2d and Linear weights (kaiming_uniform with a = √5: gain sqrt(1/3),
# bound gain·sqrt(3 / fan_in)).
uniform_fan_in = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
classifier_init = uniform_fan_in

# `model.init`: how the conv kernels and the classifier start (BatchNorm: scale 1, bias 0 in all).
#   he_normal      the official IGCV1 code: convs N(0, 2 / fan_in), classifier ±sqrt(1/fan_in),
#                  bias 0
#   torch_default  torch.nn's defaults: convs and classifier ±sqrt(1/fan_in), bias ±sqrt(1/fan_in)
#   mxnet_xavier   the official IGCV3 code, MXNet's Xavier(rnd_type="gaussian", factor_type="in",
#                  magnitude=2) on every weight: convs and classifier N(0, 2 / fan_in), bias 0
INITS = ("he_normal", "torch_default", "mxnet_xavier")


def check_init(init: str) -> None:
    """ValueError unless `init` is one of INITS."""
    if init not in INITS:
        raise ValueError(f"model.init must be one of {', '.join(INITS)}, got {init!r}")


def conv_init(init: str) -> Callable:
    """The kernel initialiser of every conv (regular, grouped, IGC primary and secondary)."""
    return uniform_fan_in if init == "torch_default" else he_normal


def classifier_kernel_init(init: str) -> Callable:
    """MXNet Xavier's N(0, 2 / fan_in) (IGCV3), else uniform ±sqrt(1/fan_in) (IGCV1, torch)."""
    return he_normal if init == "mxnet_xavier" else classifier_init


def classifier_bias_init(init: str, fan_in: int) -> Callable:
    """Zero (MXNet) or torch.nn.Linear's uniform ±1/sqrt(fan_in)."""
    if init != "torch_default":
        return nn.initializers.zeros
    bound = 1.0 / fan_in ** 0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                    bound)

# A 3×3 "layer" of a residual unit: (x, features, strides, index 1 or 2) -> y, before BatchNorm;
# it names its own submodule (`{unit}_conv{index}` or `{unit}_igc{index}`).
Layer = Callable[[Any, int, int, int], Any]


def conv(x, features: int, kernel: int, strides: int, *, name: str, groups: int = 1,
         init: str = "he_normal", dtype: Any = jnp.float32):
    """Regular (or grouped) convolution, no bias, symmetric padding k // 2 like MXNet.

    XLA's 'SAME' pads a stride-2 layer asymmetrically (more at the end), which shifts the sampling
    grid against the official models, so the padding is always explicit.
    """
    conv_type = PointwiseConv if kernel == 1 else nn.Conv  # the 1×1 projections
    return conv_type(features, (kernel, kernel), strides=(strides, strides),
                     padding=same_padding((kernel, kernel)), feature_group_count=groups,
                     use_bias=False, kernel_init=conv_init(init), dtype=dtype, name=name)(x)


def depthwise(x, strides: int, *, compute: Compute, name: str, init: str = "he_normal",
              dtype: Any = jnp.float32):
    """3×3 depthwise conv, no bias, padding 1 (IGCV3); computed by the mode its shape has in
    `compute.plan`. Its parameter is the `kernel` a `conv(..., groups=C)` would have."""
    shape = depthwise_shape(x.shape, (3, 3), (strides, strides))
    return DepthwiseConv(strides=(strides, strides), mode=compute.plan.mode(shape),
                         kernel_init=conv_init(init), dtype=dtype, name=name)(x)


def igc(x, features: int, strides: int, *, L: int, M: int, sum_fusion: bool, compute: Compute,
        name: str, init: str = "he_normal", dtype: Any = jnp.float32):
    """One 3×3 IGC layer: primary (L groups) → shuffle → secondary (M groups) → shuffle, no bias;
    computed by the mode its shape has in `compute.plan`."""
    mode = compute.plan.mode(igc_layer_shape(x.shape, features, L, M, strides=(strides, strides)))
    return IGCConv(features, L, M, strides=(strides, strides), sum_fusion=sum_fusion, mode=mode,
                   kernel_init=conv_init(init), dtype=dtype, name=name)(x)


def batch_norm(x, *, momentum: float, train: bool, name: str, compute: Compute,
               dtype: Any = jnp.float32, epsilon: float = BN_EPSILON):
    """MXNet BatchNorm(fix_gamma=False, eps=2e-5 unless given); statistics are reduced in
    float32."""
    return BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                     axis_name=compute.bn_axis, dtype=dtype, name=name)(x)


def residual_unit(x, *, name: str, features: int, strides: int, layer: Layer, proj_groups: int,
                  momentum: float, train: bool, compute: Compute, init: str = "he_normal",
                  dtype: Any = jnp.float32):
    """Post-activation basic unit: ReLU(BN(layer2(ReLU(BN(layer1(x))))) + shortcut(x)).

    The shortcut is the identity when shapes match, else a 1×1 conv (grouped with `proj_groups`,
    the stage's L in IGC nets) with the unit's stride, then BN.
    """
    y = layer(x, features, strides, 1)
    bn = dict(momentum=momentum, train=train, compute=compute, dtype=dtype)
    y = nn.relu(batch_norm(y, name=f"{name}_bn1", **bn))
    y = layer(y, features, 1, 2)
    y = batch_norm(y, name=f"{name}_bn2", **bn)
    if strides != 1 or x.shape[-1] != features:
        x = conv(x, features, 1, strides, groups=proj_groups, name=f"{name}_proj", init=init,
                 dtype=dtype)
        x = batch_norm(x, name=f"{name}_proj_bn", **bn)
    return nn.relu(x + y)


def classifier(x, num_classes: int, init: str = "he_normal"):
    """Global average pool → dense with bias, in float32 whatever the compute dtype."""
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(num_classes, kernel_init=classifier_kernel_init(init),
                    bias_init=classifier_bias_init(init, x.shape[-1]), dtype=jnp.float32,
                    name="classifier")(x)


def is_positive_int(value: Any) -> bool:
    """The one rule for the networks' integer fields (depth, widths, L, M): an int ≥ 1, not a
    bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_positive_ints(**values: Any) -> None:
    """ValueError naming the first field that breaks `is_positive_int`."""
    for key, value in values.items():
        if not is_positive_int(value):
            raise ValueError(f"model.{key} must be a positive integer, got {value!r}")
