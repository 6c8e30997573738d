"""The ImageNet networks of spec §3 (224×224 input), laid out as the released MXNet symbol files.

ResNet-18 layout: 7×7/2 conv (pad 3) → BN → ReLU → 3×3/2 max-pool (pad 1) → four stages of two
post-activation basic units (the first unit of stages 2–4 has stride 2) → global average pool →
dense. IGC nets replace every 3×3 conv by an IGC layer with the stage's L primary groups and
C_out / L secondary groups, and group every 1×1 projection with that L. IGC-L100M2 doubles L
(not M) per stage and its stem (100) is narrower than stage 1 (200), so its first unit has a
stride-1 projection with 100 groups.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from igc_jax.models import blocks

NUM_STAGES = 4
UNITS_PER_STAGE = 2
BN_MOMENTUM = 0.9


class ResNet18(nn.Module):
    """ResNet-18 with regular convs (`L` None) or IGC layers with L[s] primary groups in stage s."""
    stem_width: int
    widths: Sequence[int]
    num_classes: int
    L: Sequence[int] | None = None
    init_scheme: str = "he_normal"   # `model.init` (`Module.init` is taken)
    dtype: Any = jnp.float32
    compute: blocks.Compute = blocks.Compute()

    @nn.compact
    def __call__(self, x, train: bool):
        x = blocks.conv(x.astype(self.dtype), self.stem_width, 7, 2, name="stem_conv",
                        init=self.init_scheme, dtype=self.dtype)
        x = nn.relu(blocks.batch_norm(x, momentum=BN_MOMENTUM, train=train, name="stem_bn",
                                      compute=self.compute, dtype=self.dtype))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for s, features in enumerate(self.widths, start=1):
            L = None if self.L is None else self.L[s - 1]
            for u in range(1, UNITS_PER_STAGE + 1):
                name = f"stage{s}_unit{u}"
                strides = 2 if s > 1 and u == 1 else 1
                x = blocks.residual_unit(
                    x, name=name, features=features, strides=strides,
                    layer=self._layer_fn(name, L), proj_groups=L or 1, momentum=BN_MOMENTUM,
                    train=train, compute=self.compute, init=self.init_scheme, dtype=self.dtype)
        return blocks.classifier(x, self.num_classes, self.init_scheme)

    def _layer_fn(self, name: str, L: int | None):
        def layer(y, features, strides, k):
            if L is None:
                return blocks.conv(y, features, 3, strides, name=f"{name}_conv{k}",
                                   init=self.init_scheme, dtype=self.dtype)
            return blocks.igc(y, features, strides, L=L, M=features // L, sum_fusion=False,
                              compute=self.compute, name=f"{name}_igc{k}", init=self.init_scheme,
                              dtype=self.dtype)
        return layer


def resnet18(*, stem_width: int, widths: Sequence[int], init: str = "he_normal",
             num_classes: int, dtype: Any = jnp.float32,
             compute: blocks.Compute = blocks.Compute()) -> ResNet18:
    """ResNet-18 (C = 64 or 69 in the paper)."""
    widths = _check_widths(stem_width, widths)
    blocks.check_init(init)
    return ResNet18(stem_width=stem_width, widths=widths, num_classes=num_classes, init_scheme=init,
                    dtype=dtype, compute=compute)


def igc_resnet18(*, stem_width: int, widths: Sequence[int], L: Sequence[int],
                 init: str = "he_normal", num_classes: int, dtype: Any = jnp.float32,
                 compute: blocks.Compute = blocks.Compute()) -> ResNet18:
    """IGC-LxMy+Ident. on the ResNet-18 layout: stage s has L[s] primary groups, M = width/L[s]."""
    widths = _check_widths(stem_width, widths)
    blocks.check_init(init)
    if not isinstance(L, (tuple, list)) or len(L) != NUM_STAGES or not all(
            map(blocks.is_positive_int, L)):
        raise ValueError(f"model.L must be {NUM_STAGES} positive integers (one per stage), got {L}")
    c_in = stem_width
    for s, (width, groups) in enumerate(zip(widths, L), start=1):
        for what, channels in (("input", c_in), ("width", width)):
            if channels % groups:
                raise ValueError(f"stage {s}: {what} {channels} channels are not divisible by "
                                f"L={groups}")
        c_in = width
    return ResNet18(stem_width=stem_width, widths=widths, num_classes=num_classes, L=tuple(L),
                    init_scheme=init, dtype=dtype, compute=compute)


def _check_widths(stem_width: int, widths: Sequence[int]) -> tuple[int, ...]:
    blocks.check_positive_ints(stem_width=stem_width)
    if not isinstance(widths, (tuple, list)) or len(widths) != NUM_STAGES or not all(
            map(blocks.is_positive_int, widths)):
        raise ValueError(f"model.widths must be {NUM_STAGES} positive integers, got {widths!r}")
    return tuple(widths)
