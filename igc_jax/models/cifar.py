"""The CIFAR / SVHN networks of spec §2 (32×32 input), as the official MXNet code builds them.

Stem 3×3 conv (width C) → BN → ReLU, three stages of widths C, 2C, 4C (the first layer of stages 2
and 3 has stride 2), global average pool, dense. Plain nets (D = 3B+2) stack B conv→BN→ReLU
layers per stage; residual nets (`+Ident.`, D = 6B+2) stack B post-activation basic units.
A "layer" is a regular 3×3 conv (`RegConv-Wc`, C = c) or an IGC layer (`IGC-LxMy`, C = x·y, L
fixed across stages and M doubling).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from igc_jax.models import blocks

NUM_STAGES = 3
# BatchNorm running-average momentum of the official code: plain nets 0.99, residual nets 0.9.
PLAIN_BN_MOMENTUM = 0.99
RESIDUAL_BN_MOMENTUM = 0.9


def blocks_per_stage(depth: int, residual: bool) -> int:
    """B from D: D = 3B + 2 (plain, one layer per block) or 6B + 2 (residual, two per unit)."""
    per_block = 2 if residual else 1
    layers = depth - 2
    if depth < 2 + NUM_STAGES * per_block or layers % (NUM_STAGES * per_block):
        form = "6B+2, B ≥ 1 (e.g. 8, 20, 26)" if residual else "3B+2, B ≥ 1 (e.g. 8, 20, 26)"
        kind = "residual" if residual else "plain"
        raise ValueError(f"depth {depth} is not of the form {form} for a {kind} CIFAR network")
    return layers // (NUM_STAGES * per_block)


class CifarNet(nn.Module):
    """One CIFAR network; build it with `regconv` or `igc` below rather than directly.

    Attributes:
      depth: D, counting the stem and the classifier.
      width: C, the stem and stage-1 width (L·M for IGC nets).
      L: primary groups of every IGC layer; None builds regular 3×3 convs (RegConv).
      residual: `+Ident.` (post-activation basic units, identity shortcuts).
      downsample_quirk: official residual IGC code: the first IGC layer of a unit has C_in / L
        secondary groups (not C_out / L); it differs only in the first unit of stages 2 and 3.
      sum_fusion: fix each secondary kernel to all-ones blocks (SumFusion).
      init_scheme: `model.init`, one of `blocks.INITS`: the official He-normal, or PyTorch's
        defaults.
    """
    depth: int
    width: int
    num_classes: int
    L: int | None = None
    residual: bool = False
    downsample_quirk: bool = True
    sum_fusion: bool = False
    init_scheme: str = "he_normal"   # `model.init` (`Module.init` is taken)
    dtype: Any = jnp.float32
    compute: blocks.Compute = blocks.Compute()

    def _layer(self, x, features: int, strides: int, prefix: str, index: str,
               secondary_groups: int):
        """A 3×3 layer before its BN, named `{prefix}_conv{index}` or `{prefix}_igc{index}`."""
        if self.L is None:
            return blocks.conv(x, features, 3, strides, name=f"{prefix}_conv{index}",
                               init=self.init_scheme, dtype=self.dtype)
        return blocks.igc(x, features, strides, L=self.L, M=secondary_groups,
                          sum_fusion=self.sum_fusion, compute=self.compute,
                          name=f"{prefix}_igc{index}", init=self.init_scheme, dtype=self.dtype)

    @nn.compact
    def __call__(self, x, train: bool):
        B = blocks_per_stage(self.depth, self.residual)
        momentum = RESIDUAL_BN_MOMENTUM if self.residual else PLAIN_BN_MOMENTUM
        x = blocks.conv(x.astype(self.dtype), self.width, 3, 1, name="stem_conv",
                        init=self.init_scheme, dtype=self.dtype)
        bn = dict(momentum=momentum, train=train, compute=self.compute, dtype=self.dtype)
        x = nn.relu(blocks.batch_norm(x, name="stem_bn", **bn))
        L = self.L or 1
        for s in range(1, NUM_STAGES + 1):
            features = self.width * 2 ** (s - 1)
            for b in range(1, B + 1):
                strides = 2 if s > 1 and b == 1 else 1
                if self.residual:
                    x = self._unit(x, f"stage{s}_unit{b}", features, strides, L, momentum, train)
                else:
                    name = f"stage{s}_layer{b}"
                    x = self._layer(x, features, strides, name, "", features // L)
                    x = nn.relu(blocks.batch_norm(x, name=f"{name}_bn", **bn))
        return blocks.classifier(x, self.num_classes, self.init_scheme)

    def _unit(self, x, name: str, features: int, strides: int, L: int, momentum: float,
              train: bool):
        c_in = x.shape[-1]

        def layer(y, f, st, k):
            # Official residual IGC code: the first layer's secondary groups are C_in / L.
            quirk = k == 1 and self.downsample_quirk
            return self._layer(y, f, st, name, str(k), (c_in if quirk else f) // L)

        return blocks.residual_unit(x, name=name, features=features, strides=strides,
                                    layer=layer, proj_groups=L, momentum=momentum, train=train,
                                    compute=self.compute, init=self.init_scheme, dtype=self.dtype)


def regconv(*, depth: int, width: int, residual: bool = False, init: str = "he_normal",
            num_classes: int, dtype: Any = jnp.float32,
            compute: blocks.Compute = blocks.Compute()) -> CifarNet:
    """`RegConv-W{width}` (+Ident. when `residual`)."""
    blocks.check_positive_ints(depth=depth, width=width)
    blocks.check_init(init)
    blocks_per_stage(depth, residual)
    return CifarNet(depth=depth, width=width, num_classes=num_classes, residual=residual,
                    init_scheme=init, dtype=dtype, compute=compute)


def igc(*, depth: int, L: int, M: int, residual: bool = False, downsample_quirk: bool = True,
        sum_fusion: bool = False, init: str = "he_normal", num_classes: int,
        dtype: Any = jnp.float32, compute: blocks.Compute = blocks.Compute()) -> CifarNet:
    """`IGC-L{L}M{M}` (+Ident. when `residual`; SumFusion when `sum_fusion`): width C = L·M."""
    blocks.check_positive_ints(depth=depth, L=L, M=M)
    blocks.check_init(init)
    blocks_per_stage(depth, residual)
    return CifarNet(depth=depth, width=L * M, num_classes=num_classes, L=L, residual=residual,
                    downsample_quirk=downsample_quirk, sum_fusion=sum_fusion, init_scheme=init,
                    dtype=dtype, compute=compute)
