"""A converted model ready to use: `load_pretrained(dir)` → module, variables and preprocessing.

    import igc_jax
    net = igc_jax.load_pretrained("converted/l16m16")   # written by python -m igc_jax.convert_mxnet
    logits = net(images)            # uint8 or float 0..255 RGB, NHWC, net.image_size square

The network applies the normalisation its `model.json` records (the authors' mean and std for the
released models); resizing and cropping are the caller's (`eval` in `net.preprocessing` says how
the authors evaluated: short side 256, centre crop 224).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from igc_jax import models
from igc_jax.mxnet import saved
from igc_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A converted network: `module.apply(variables, normalize(x), train=False)` is `self(x)`."""
    module: nn.Module
    variables: dict[str, Any]
    image_size: int
    num_classes: int
    preprocessing: dict[str, Any]

    def normalize(self, images) -> jax.Array:
        """0..255 RGB images → the network's input (per-channel (x - mean) / std, float32)."""
        mean = jnp.asarray(self.preprocessing["mean"], jnp.float32)
        std = jnp.asarray(self.preprocessing["std"], jnp.float32)
        return (jnp.asarray(images, jnp.float32) - mean) / std

    @functools.cached_property
    def _logits(self):
        return jax.jit(lambda v, x: self.module.apply(v, x, train=False))

    def __call__(self, images) -> jax.Array:
        """float32 logits (N, num_classes) of N×image_size×image_size×3 images in 0..255."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise UserError(f"expected images of shape "
                            f"(N, {self.image_size}, {self.image_size}, 3), got {images.shape}")
        return self._logits(self.variables, self.normalize(images))


def load_pretrained(directory: str, conv_mode: str = "auto") -> Pretrained:
    """The model a `convert_mxnet` directory holds, with the preprocessing its model.json records
    (UserError when it records none: the inputs it expects are unknown)."""
    info = saved.load_converted_info(directory)
    if not info.get("preprocessing"):
        raise UserError(f"{directory}/model.json records no preprocessing (not a released model); "
                        f"build it with igc_jax.build_model and normalise the inputs yourself")
    module = models.build_model(info["model"], num_classes=info["num_classes"],
                                plan=conv_mode)
    return Pretrained(module=module, variables=saved.load_converted(directory),
                      image_size=info["image_size"], num_classes=info["num_classes"],
                      preprocessing=info["preprocessing"])
