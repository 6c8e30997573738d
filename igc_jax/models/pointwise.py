"""`PointwiseConv`: the networks' 1×1 projections, flax's `nn.Conv` computed as a grouped matmul."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from igc_jax.igc import modes


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
