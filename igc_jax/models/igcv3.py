"""IGCV3-D (Sun, Li, Liu, Wang, "IGCV3: Interleaved Low-Rank Group Convolutions", BMVC 2018) as
the authors released it (spec §7): their MXNet `symbols/igcv3.py` and `models/igcv3-symbol.json`.

Stem: 3×3 stride-2 conv to 32 → BN → ReLU6. Seven stages (t, c, n, s) of n blocks; each block:
1×1 group conv in 2 groups to t·C_in → BN (no activation) → shuffle(2) → 3×3 depthwise conv,
stride s on the first block → BN → ReLU6 → 1×1 group conv in 2 groups to c → BN (linear), and
the identity added on blocks 2…n of a stage (never on the first). The expansion is kept at t = 1.
Head: 1×1 conv to 1280 → BN → ReLU6 → global average pool → dense with bias. BatchNorm eps 1e-5.
No IGC layer; the depthwise convs are the layers with a computation mode (`blocks.depthwise`:
`grouped`, or `native`, which `auto` picks on CPU where the C++ kernels built), from the
network's `ModePlan` like IGC layers' modes.

Widths (`layout`): pytorchcv's rule, the one behind its published igcv3_w1 / w3d4 / wd2 / wd4
parameter counts: every stage width and the stem become make_even(int(c·w)); the head stays
1280 unless w > 1. `width_quirk=True` follows the official builder's arithmetic instead (its
`MNetV2Gen`, Python 2): round-half-up instead of int, and the expansion of the first block of
stages 2…7 computed from the previous stage's width multiplied by w a second time (made even by
adding 1 to the unmultiplied width); the head is int(1280·w) + 1 for w > 1. At w = 1 the two
agree; at w < 1 they differ only in those first blocks' expansion widths.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from igc_jax.igc import kernels
from igc_jax.models import blocks

# The official table, (t, c, n, s) per stage: `MNETV2_CONFIGS_MAP[(224, 224)]` of symbols/igcv3.py,
# its only entry (the builder uses it for every input size).
STAGES = ((1, 16, 1, 1), (6, 24, 4, 2), (6, 32, 6, 2), (6, 64, 8, 2), (6, 96, 6, 1),
          (6, 160, 6, 2), (6, 320, 1, 1))
STEM_WIDTH = 32
HEAD_WIDTH = 1280
GROUPS = 2                   # of both 1×1 group convs, and the shuffle between expansion and dw
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9            # MXNet's BatchNorm default (PyTorch's momentum 0.1)
# The widths pytorchcv publishes (igcv3_w1, igcv3_w3d4, igcv3_wd2, igcv3_wd4).
WIDTHS = (1.0, 0.75, 0.5, 0.25)


@dataclasses.dataclass(frozen=True)
class Block:
    """One inverted residual block: c_in → expanded (1×1, 2 groups) → depthwise → c_out."""
    c_in: int
    expanded: int
    c_out: int
    stride: int
    residual: bool


@dataclasses.dataclass(frozen=True)
class Layout:
    """Every width of one IGCV3-D network: stem, the blocks of each stage, head."""
    stem: int
    stages: tuple[tuple[Block, ...], ...]
    head: int

    def blocks(self) -> tuple[Block, ...]:
        return tuple(b for stage in self.stages for b in stage)


def _make_even(n: int) -> int:
    return n if n % 2 == 0 else n + 1


def _round_half_up(x: float) -> int:
    """Python 2's round() of a non-negative number (the official builder's)."""
    return math.floor(x + 0.5)


def layout(width: float = 1.0, width_quirk: bool = False) -> Layout:
    """The widths of IGCV3-D at width multiplier `width` (see the module docstring)."""
    if width_quirk:
        scale = lambda c: _make_even(_round_half_up(c * width))     # noqa: E731
        head = int(HEAD_WIDTH * width) + 1 if width > 1.0 else HEAD_WIDTH
    else:
        scale = lambda c: _make_even(int(c * width))                # noqa: E731
        head = _make_even(int(HEAD_WIDTH * width)) if width > 1.0 else HEAD_WIDTH
    stem = scale(STEM_WIDTH)
    c_in = quirk_in = stem
    stages = []
    for t, c, n, s in STAGES:
        c = scale(c)
        first = _round_half_up(quirk_in * t) if width_quirk else c_in * t
        stage = [Block(c_in, first, c, s, residual=False)]
        stage += [Block(c, c * t, c, 1, residual=True) for _ in range(n - 1)]
        stages.append(tuple(stage))
        c_in = c
        if width_quirk:  # `in_c = int(round(c*multiplier)); if in_c%2!=0: in_c=c+1`
            quirk_in = _round_half_up(c * width)
            quirk_in = quirk_in if quirk_in % 2 == 0 else c + 1
    return Layout(stem, tuple(stages), head)


def relu6(x):
    """min(max(x, 0), 6): MXNet's clip(0, 6), PyTorch's ReLU6."""
    return jnp.clip(x, 0, 6)


class IGCV3(nn.Module):
    """IGCV3-D with the widths of `layout`; build it with `igcv3` below.

    Parameter names: `stem_conv`, `stem_bn`; `stage{s}_unit{u}_{expand,depthwise,linear}` and
    their `_bn`; `head_conv`, `head_bn`; `classifier`.
    """
    layout: Layout
    num_classes: int
    init_scheme: str = "mxnet_xavier"   # `model.init` (`Module.init` is taken)
    dtype: Any = jnp.float32
    compute: blocks.Compute = blocks.Compute()

    def _conv(self, x, features: int, kernel: int, strides: int, name: str, groups: int = 1):
        return blocks.conv(x, features, kernel, strides, groups=groups, name=name,
                           init=self.init_scheme, dtype=self.dtype)

    def _bn(self, x, name: str, train: bool):
        return blocks.batch_norm(x, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, train=train,
                                 name=name, compute=self.compute, dtype=self.dtype)

    @nn.compact
    def __call__(self, x, train: bool):
        lay = self.layout
        x = self._conv(x.astype(self.dtype), lay.stem, 3, 2, "stem_conv")
        x = relu6(self._bn(x, "stem_bn", train))
        for s, stage in enumerate(lay.stages, start=1):
            for u, b in enumerate(stage, start=1):
                name = f"stage{s}_unit{u}"
                y = self._conv(x, b.expanded, 1, 1, f"{name}_expand", groups=GROUPS)
                y = kernels.shuffle(self._bn(y, f"{name}_expand_bn", train), GROUPS)
                y = blocks.depthwise(y, b.stride, compute=self.compute, name=f"{name}_depthwise",
                                     init=self.init_scheme, dtype=self.dtype)
                y = relu6(self._bn(y, f"{name}_depthwise_bn", train))
                y = self._conv(y, b.c_out, 1, 1, f"{name}_linear", groups=GROUPS)
                y = self._bn(y, f"{name}_linear_bn", train)
                x = x + y if b.residual else y
        x = self._conv(x, lay.head, 1, 1, "head_conv")
        x = relu6(self._bn(x, "head_bn", train))
        return blocks.classifier(x, self.num_classes, self.init_scheme)


def igcv3(*, width: float = 1.0, width_quirk: bool = False, init: str = "mxnet_xavier",
          num_classes: int, dtype: Any = jnp.float32,
          compute: blocks.Compute = blocks.Compute()) -> IGCV3:
    """IGCV3-D at width multiplier `width` (1.0, 0.75, 0.5, 0.25 published); `width_quirk`: the
    official builder's width arithmetic instead of pytorchcv's (they agree at 1.0)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (
            math.isfinite(width) and width > 0):
        raise ValueError(f"model.width must be a finite number > 0, got {width!r}")
    if not isinstance(width_quirk, bool):
        raise ValueError(f"model.width_quirk must be True or False, got {width_quirk!r}")
    blocks.check_init(init)
    lay = layout(float(width), width_quirk)
    narrowest = min([lay.stem] + [min(b.expanded, b.c_out) for b in lay.blocks()])
    if narrowest < GROUPS:
        raise ValueError(f"model.width={width} leaves a layer with {narrowest} channels; IGCV3's "
                         f"group convs need at least {GROUPS}")
    return IGCV3(layout=lay, num_classes=num_classes, init_scheme=init, dtype=dtype,
                 compute=compute)
